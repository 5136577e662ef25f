"""SimCLR v1 against v2 with few labels, on one pretrained encoder: the README's table.

  python benchmarks/quality.py --cifar data/cifar10 --minutes 20 --workdir runs/q20
  python benchmarks/v2_table.py --workdir runs/q20

For each label fraction (default 1 % and 10 %), with the `simclr-jax` commands a user runs:
- fine-tuned from h (v1: `simclr-jax finetune`), which also trains the same network from
  random init on the same labels (supervised from scratch, `finetune.baseline`);
- fine-tuned from head layer 1 (v2: `--config.finetune.from_projection=1`);
- the distilled student (v2: `simclr-jax distill` of the head-layer-1 model: a network of the
  same size at random init, trained on the teacher's predictions for every training image).
Each fine-tuning runs at least `--min-steps` updates (`finetune.epochs` raised for the small
fractions: at 1 % of 10,000 images and batch 64, 30 epochs would be 30 steps). Each command
runs in its own copy of the workdir (config.json and the checkpoint), because finetune.json
holds one fine-tuning setting. Writes benchmarks/results/v2_table.json (or --out) and prints
the markdown table, with each model's wall time (fine-tuning or distillation; the student's
includes neither its teacher's fine-tuning nor the pretraining).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def simclr_jax(*args: str) -> None:
  cmd = [sys.executable, "-m", "simclr_jax", *args]
  print("$ " + " ".join(cmd[1:]), flush=True)
  subprocess.run(cmd, check=True)


def copy_run(src: str, dst: str) -> str:
  """config.json and the checkpoints of `src` in `dst` (the data stay where config.json says)."""
  if os.path.exists(dst):
    shutil.rmtree(dst)
  os.makedirs(dst)
  shutil.copy(os.path.join(src, "config.json"), dst)
  shutil.copytree(os.path.join(src, "checkpoints"), os.path.join(dst, "checkpoints"))
  return dst


def finetune_epochs(n_train: int, fraction: float, val_fraction: float, batch: int,
                    min_steps: int) -> int:
  """Epochs that give at least `min_steps` updates (and at least the default 30)."""
  n_fit = max(1, round(n_train * fraction * (1 - val_fraction)))
  return max(30, math.ceil(min_steps / max(1, n_fit // min(batch, n_fit))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a pretrained run (quality.py --workdir)")
  p.add_argument("--fractions", default="0.01,0.1")
  p.add_argument("--min-steps", type=int, default=300)
  p.add_argument("--distill-epochs", type=int, default=10)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "v2_table.json"))
  args = p.parse_args(argv)
  fractions = [float(f) for f in args.fractions.split(",")]
  with open(os.path.join(args.workdir, "config.json")) as f:
    config = json.load(f)
  ft = config["finetune"]
  import numpy as np
  with np.load(config["data"]["path"].format(split=config["data"]["train_split"])) as d:
    n_train = len(d["labels"])

  rows: dict[str, dict[float, dict]] = {}
  for fraction in fractions:
    epochs = finetune_epochs(n_train, fraction, ft["val_fraction"], ft["batch_size"],
                             args.min_steps)
    common = [f"--config.finetune.label_fractions=({fraction},)",
              f"--config.finetune.epochs={epochs}"]
    for layer in (0, 1):
      w = copy_run(args.workdir, f"{args.workdir.rstrip('/')}_v2/head{layer}_{fraction:g}")
      simclr_jax("finetune", "--workdir", w, *common,
                 f"--config.finetune.from_projection={layer}",
                 f"--config.finetune.baseline={layer == 0}")
      with open(os.path.join(w, "finetune.json")) as f:
        for r in json.load(f)["results"]:
          name = "scratch" if r["init"] == "scratch" else f"head{layer}"
          rows.setdefault(name, {})[fraction] = {
              "test_accuracy": r["test_accuracy"], "seconds": r["seconds"],
              "epochs": epochs, "best_epoch": r.get("best_epoch"), "n_fit": r["n_fit"]}
    # The v2 student: of the head-layer-1 model, the teacher of the paper's best results.
    simclr_jax("distill", "--workdir", w, f"--config.distill.epochs={args.distill_epochs}")
    with open(os.path.join(w, "distill.json")) as f:
      r = json.load(f)["results"][0]
    rows.setdefault("distilled", {})[fraction] = {
        "test_accuracy": r["test_accuracy"], "seconds": r["seconds"],
        "teacher_test_accuracy": r["teacher_test_accuracy"], "steps": r["steps"]}

  names = {"head0": "fine-tuned from h (v1)", "head1": "fine-tuned from head layer 1 (v2)",
           "distilled": "distilled student of the head-layer-1 model (v2)",
           "scratch": "supervised from scratch"}
  lines = ["| model | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |",
           "| --- |" + " ---: |" * len(fractions)]
  for key, label in names.items():
    lines.append(f"| {label} | " + " | ".join(
        f"{rows[key][f]['test_accuracy']:.4f} ({rows[key][f]['seconds']:.0f} s)"
        for f in fractions) + " |")
  table = "\n".join(lines)
  print(table)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"command": "python benchmarks/v2_table.py " + " ".join(
                   sys.argv[1:] if argv is None else argv),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "workdir": os.path.abspath(args.workdir), "n_train": n_train,
               "distill_epochs": args.distill_epochs, "rows": rows, "table": table}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

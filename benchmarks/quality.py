"""What a SimCLR pretraining of a fixed wall-clock budget is worth: CIFAR-10 linear probes.

  python benchmarks/quality.py --cifar data/cifar10 --minutes 20

`--cifar` is the folder of cifar10_train.npz and cifar10_test.npz (`images` uint8 NHWC,
`labels`; README.md § Data says how to make them). The protocol is the one a PyTorch SimCLR is
measured with on the same kind of machine: pretraining on 10,000 training images (a stratified
subset, fixed seed; ResNet-18 with the CIFAR stem, Adam 1e-3, the `simclr_cifar` augmentations,
NT-Xent at temperature 0.5) for as many steps as fit the budget, compilation included; then a
logistic probe trained on the features of those 10,000 images and scored on 10,000 test
images, for the pretrained encoder, the same architecture at random init, and the raw pixels.
Defaults: width 0.25 and batch 128, what fits 20 minutes on a 2-core CPU (`--width 1
--batch 256` is the full ResNet-18 of the PyTorch peer; benchmarks/README.md has both). The budget decides the step count, so the learning rate is constant (a schedule needs
the number of steps in advance).

The probe is `simclr_jax.evaluate.fit_probe`, the probe of `simclr-jax linear-eval`: features
standardised, C picked from eval.c_grid by validation log-loss on a stratified 20 % of the
probe's training set, then refitted on all of it. `--probe logistic_jax` (default) minimises
scikit-learn's LogisticRegression objective with a jitted L-BFGS (seconds instead of minutes
on 3,072 raw pixels); `--probe logistic` uses scikit-learn itself.

Runs on every device the machine has (one emulated CPU device per core), like
`simclr-jax pretrain`. Writes benchmarks/results/quality.json (or --out) and prints a markdown
row. No checkpoint is written: this measures quality per wall-clock minute, not resumption.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def subset_npz(src: str, dst: str, n: int, seed: int = 0) -> int:
  """`n` examples of `src`, stratified by label with a fixed seed, in file order, into `dst`.

  Not the first `n`: a copy stored class by class would give the first few classes only.
  """
  import numpy as np
  from simclr_jax.data import labels as labels_lib
  if not os.path.exists(src):
    raise SystemExit(f"error: no {src}: --cifar must be the folder of cifar10_train.npz and "
                     "cifar10_test.npz (README.md § Data)")
  with np.load(src) as d:
    labels = np.asarray(d["labels"])
    idx = (labels_lib.stratified_fraction(labels, n / len(labels), seed) if n < len(labels)
           else np.arange(len(labels)))
    np.savez(dst, images=d["images"][idx], labels=labels[idx])
  return len(idx)


def make_config(data_path: str, args):
  from simclr_jax.configs import cifar10
  c = cifar10.get_config()
  c.data.path = data_path
  c.data.workers = args.workers
  c.model.width_multiplier = args.width
  c.optim.name = "adam"
  c.optim.learning_rate = args.lr
  c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 0.0
  c.optim.schedule = "constant"
  c.train.batch_size = args.batch
  c.train.steps = 10**9         # the wall-clock budget ends the loop
  c.model.online_head = False
  c.eval.batch_size = 500
  return c


def pretrain_for(config, minutes: float, log_every: int):
  """Trains until `minutes` of wall time (compile included) are spent; (state, setup, info)."""
  import jax
  import numpy as np
  from simclr_jax import train
  from simclr_jax import state as state_lib
  from simclr_jax.data import pipeline, sources

  t_start = time.perf_counter()
  source = sources.make_source(config.data, config.data.train_split)
  setup = state_lib.build(config, len(source))
  init_rng, augment_key = state_lib.run_keys(config.seed)
  state = state_lib.init_state(setup, init_rng)
  step_fn = train.make_train_step(setup, augment_key)
  data_iter = iter(pipeline.pretrain_dataset(
      source, global_batch_size=config.train.batch_size, seed=config.seed,
      process_index=0, process_count=1, workers=config.data.workers,
      prefetch=config.data.prefetch))
  deadline = t_start + 60.0 * minutes
  steps, losses, compile_s, t_first = 0, [], None, None
  # The step time is only known after a step; stop when the next one would overrun.
  step_s = 0.0
  while time.perf_counter() + step_s < deadline:
    t0 = time.perf_counter()
    batch = train.device_batch(setup.mesh, next(data_iter))
    state, metrics = step_fn(state, batch)
    loss = float(jax.device_get(metrics["loss"]))   # one sync per step: the budget is wall time
    steps += 1
    losses.append(loss)
    dt = time.perf_counter() - t0
    if compile_s is None:
      compile_s, t_first = time.perf_counter() - t_start, time.perf_counter()
    else:
      step_s = dt if step_s == 0.0 else 0.9 * step_s + 0.1 * dt
    if steps % log_every == 0:
      print(f"step {steps}  loss {np.mean(losses[-log_every:]):.4f}  "
            f"{config.train.batch_size / max(step_s, 1e-9):.1f} img/s  "
            f"{(time.perf_counter() - t_start) / 60:.1f} min", flush=True)
  if hasattr(data_iter, "close"):
    data_iter.close()
  t_end = time.perf_counter()
  timed = steps - 1
  info = {"steps": steps, "seconds": round(t_end - t_start, 1),
          "compile_and_first_step_seconds": round(compile_s or 0.0, 1),
          "images_per_sec": (round(timed * config.train.batch_size / (t_end - t_first), 2)
                             if timed > 0 else None),
          "first_loss": losses[0] if losses else None,
          "last_loss": float(np.mean(losses[-10:])) if losses else None}
  return state, setup, info


def probe_all(config, setup, state, probe: str) -> dict:
  import numpy as np
  from simclr_jax import evaluate
  from simclr_jax import state as state_lib
  from simclr_jax.data import sources

  train_src = sources.make_source(config.data, config.data.train_split)
  test_src = sources.make_source(config.data, config.data.eval_split)
  y_tr, y_te = np.asarray(train_src.labels), np.asarray(test_src.labels)
  ev = config.eval
  solver = "sklearn" if probe == "logistic" else "jax"
  feats = {
      "pretrained": lambda: {"params": state.params, "batch_stats": state.batch_stats},
      "random_init": lambda: state_lib.init_variables(setup.model, config.data, setup.mesh,
                                                      state_lib.run_keys(config.seed)[0]),
  }
  out = {}
  for name in ("pretrained", "random_init", "raw_pixels"):
    t0 = time.perf_counter()
    if name == "raw_pixels":
      x_tr = evaluate.raw_pixels(train_src, ev.batch_size)
      x_te = evaluate.raw_pixels(test_src, ev.batch_size)
    else:
      v = feats[name]()
      x_tr = evaluate.extract_features(setup.model, setup.mesh, v, train_src, ev.batch_size)[0]
      x_te = evaluate.extract_features(setup.model, setup.mesh, v, test_src, ev.batch_size)[0]
    t1 = time.perf_counter()
    r = evaluate.fit_probe(x_tr, y_tr, x_te, y_te, tuple(ev.c_grid), ev.val_fraction,
                           config.seed, ev.select_by, solver)
    r.update(features_seconds=round(t1 - t0, 1), probe_seconds=round(time.perf_counter() - t1, 1),
             dim=int(x_tr.shape[1]))
    print(f"{name:<12s} dim {x_tr.shape[1]:5d}  C={r['C']:g}  test accuracy "
          f"{r['test_accuracy']:.4f}  (features {r['features_seconds']} s, probe "
          f"{r['probe_seconds']} s)", flush=True)
    out[name] = r
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cifar", required=True, help="folder of cifar10_{train,test}.npz")
  p.add_argument("--minutes", type=float, default=20.0, help="pretraining budget, compile incl.")
  p.add_argument("--train-examples", type=int, default=10_000)
  p.add_argument("--test-examples", type=int, default=10_000)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier")
  p.add_argument("--workers", type=int, default=0, help="grain worker processes")
  p.add_argument("--probe", default="logistic_jax", choices=("logistic", "logistic_jax"))
  p.add_argument("--log-every", type=int, default=10)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "quality.json"))
  args = p.parse_args(argv)

  from simclr_jax import logs, startup
  logs.quiet_libraries()
  startup.use_all_cpu_cores()
  import jax

  with tempfile.TemporaryDirectory() as tmp:
    n_train = subset_npz(os.path.join(args.cifar, "cifar10_train.npz"),
                         os.path.join(tmp, "cifar10_train.npz"), args.train_examples)
    n_test = subset_npz(os.path.join(args.cifar, "cifar10_test.npz"),
                        os.path.join(tmp, "cifar10_test.npz"), args.test_examples)
    config = make_config(os.path.join(tmp, "cifar10_{split}.npz"), args)
    print(f"pretraining ResNet-18 x{args.width:g} on {n_train} images, batch {args.batch}, "
          f"Adam {args.lr:g}, {jax.device_count()} devices, {args.minutes:g} min", flush=True)
    state, setup, info = pretrain_for(config, args.minutes, args.log_every)
    print(f"{info['steps']} steps in {info['seconds']} s ({info['images_per_sec']} img/s after "
          f"{info['compile_and_first_step_seconds']} s of compile and first step)", flush=True)
    probes = probe_all(config, setup, state, args.probe)

  result = {
      "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "host": {"machine": platform.machine(), "processor": platform.processor(),
               "cpus": os.cpu_count(), "devices": jax.device_count(),
               "device_kind": jax.devices()[0].device_kind,
               "load_average_at_end": os.getloadavg()},
      "recipe": {"backbone": "resnet18", "cifar_stem": True, "width_multiplier": args.width,
                 "batch_size": args.batch, "optimizer": f"adam {args.lr:g} constant",
                 "temperature": float(config.loss.temperature), "augment": "simclr_cifar",
                 "train_examples": n_train, "test_examples": n_test, "minutes": args.minutes,
                 "probe": args.probe},
      "pretraining": info,
      "probes": probes,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  acc = {k: v["test_accuracy"] for k, v in probes.items()}
  print("\n| steps | img/s | pretrained | random init | raw pixels |\n| --- | --- | --- | --- | --- |")
  print(f"| {info['steps']} | {info['images_per_sec']} | {acc['pretrained']:.4f} | "
        f"{acc['random_init']:.4f} | {acc['raw_pixels']:.4f} |")
  print(f"wrote {args.out}")


if __name__ == "__main__":   # grain's worker processes re-import this file
  main()

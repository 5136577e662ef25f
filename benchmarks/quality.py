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
--batch 256` is the full ResNet-18 of the PyTorch peer; benchmarks/README.md has both). The
budget decides the step count, so the learning rate follows the wall time, not the step:
`--schedule constant` (default) or `cosine` (to 0 at the end of the budget), after
`--warmup` (a fraction of the budget). `--temperature`, `--crop-min`, `--color-strength`
and `--hidden` (the projection head's width) change the recipe.

The probe is `simclr_jax.evaluate.fit_probe`, the probe of `simclr-jax linear-eval`: features
standardised, C picked from eval.c_grid by validation log-loss on a stratified 20 % of the
probe's training set, then refitted on all of it. `--probe logistic_jax` (default) minimises
scikit-learn's LogisticRegression objective with a jitted L-BFGS (seconds instead of minutes
on 3,072 raw pixels); `--probe logistic` uses scikit-learn itself.

Runs on every device the machine has (one emulated CPU device per core), like
`simclr-jax pretrain`. Writes benchmarks/results/quality.json (or --out) and prints a markdown
row. `--features` names the feature sets probed, comma-separated, the first the headline:
each is parts of simclr_jax/readout.py joined by '+' (`h`; `head1`, the projection head's
first layer with its BatchNorm and ReLU, where SimCLR v2 fine-tunes from; `s4_2x2`, `s3_2x2`,
the last two stages' maps average-pooled over a 2x2 grid), e.g. `s3_2x2+s4_2x2+head1,h`.
No checkpoint is written unless `--workdir W`: then W holds config.json, the final state and
the data subsets, and `simclr-jax linear-eval / finetune / distill --workdir W` run on them
(benchmarks/v2_table.py).
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
  c.seed = args.seed
  c.data.path = data_path
  c.data.workers = args.workers
  c.model.width_multiplier = args.width
  c.model.hidden_mlp = args.hidden
  c.loss.temperature = args.temperature
  c.augment.crop_scale = (args.crop_min, 1.0)
  c.augment.color_strength = args.color_strength
  c.optim.name = "adam"
  c.optim.learning_rate = args.lr
  c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 0.0
  # What `simclr-jax finetune` reads from the workdir (--workdir); the loop below sets the
  # learning rate itself, by wall time.
  c.optim.schedule = args.schedule
  c.train.batch_size = args.batch
  c.train.steps = 10**9         # the wall-clock budget ends the loop
  c.model.online_head = False
  c.eval.batch_size = 500
  return c


def learning_rate_at(peak: float, schedule: str, warmup: float, elapsed: float) -> float:
  """The learning rate at `elapsed` (fraction of the budget spent): linear warm-up over the
  first `warmup` of it, then constant or cosine decay to 0 at the end of the budget.

  By wall time, not by step: the budget decides the step count, which is only known at the
  end, and optax's schedules need it in advance.
  """
  import math
  if elapsed < warmup:
    return peak * elapsed / warmup
  if schedule == "constant":
    return peak
  t = min(1.0, (elapsed - warmup) / max(1e-9, 1.0 - warmup))
  return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def pretrain_for(config, minutes: float, log_every: int, warmup: float = 0.0):
  """Trains until `minutes` of wall time (compile included) are spent; (state, setup, info)."""
  import dataclasses
  import jax
  import numpy as np
  import optax
  from simclr_jax import parallel, train
  from simclr_jax import state as state_lib
  from simclr_jax.data import pipeline, sources

  t_start = time.perf_counter()
  source = sources.make_source(config.data, config.data.train_split)
  setup = state_lib.build(config, len(source))
  # Adam with its learning rate in the optimizer state, set before each step by wall time.
  opt = config.optim
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=float(opt.learning_rate),
                                            b1=float(opt.b1), b2=float(opt.b2),
                                            eps=float(opt.eps))
  setup = dataclasses.replace(setup, tx=tx)
  rep = parallel.replicated(setup.mesh)
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
    lr = learning_rate_at(float(opt.learning_rate), opt.schedule, warmup,
                          (t0 - t_start) / (60.0 * minutes))
    hp = dict(state.opt_state.hyperparams,
              learning_rate=jax.device_put(np.float32(lr), rep))
    state = state.replace(opt_state=state.opt_state._replace(hyperparams=hp))
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


def _columns(specs, dims) -> dict:
  """Each spec's columns of one extraction of all the parts the specs name (in
  readout.PARTS order): a feature set per spec without a pass over the images per spec."""
  from simclr_jax import readout
  starts, at = {}, 0
  for part in readout.PARTS:
    if part in dims:
      starts[part], at = at, at + dims[part]
  return {s: [slice(starts[p], starts[p] + dims[p]) for p in readout.parse(s)] for s in specs}


def probe_all(config, setup, state, probe: str, features=("h",), baselines=True) -> dict:
  import numpy as np
  from simclr_jax import evaluate, readout
  from simclr_jax import state as state_lib
  from simclr_jax.data import sources

  train_src = sources.make_source(config.data, config.data.train_split)
  test_src = sources.make_source(config.data, config.data.eval_split)
  y_tr, y_te = np.asarray(train_src.labels), np.asarray(test_src.labels)
  ev = config.eval
  solver = "sklearn" if probe == "logistic" else "jax"
  variables = {
      "pretrained": lambda: {"params": state.params, "batch_stats": state.batch_stats},
      "random_init": lambda: state_lib.init_variables(setup.model, config.data, setup.mesh,
                                                      state_lib.run_keys(config.seed)[0]),
  }
  parts = [p for p in readout.PARTS if any(p in readout.parse(f) for f in features)]
  model = readout.Readout(setup.model, "+".join(parts))
  out = {}
  names = ["pretrained"] + (["random_init", "raw_pixels"] if baselines else [])
  for name in names:
    t0 = time.perf_counter()
    if name == "raw_pixels":
      sets = {"raw": (evaluate.raw_pixels(train_src, ev.batch_size),
                      evaluate.raw_pixels(test_src, ev.batch_size))}
    else:
      v = variables[name]()
      x_tr = evaluate.extract_features(model, setup.mesh, v, train_src, ev.batch_size)[0]
      x_te = evaluate.extract_features(model, setup.mesh, v, test_src, ev.batch_size)[0]
      cols = _columns(features, model.dims(v, (config.data.image_size,) * 2
                                           + (config.data.channels,)))
      pick = lambda x, f: np.concatenate([x[:, c] for c in cols[f]], axis=1)
      sets = {f: (pick(x_tr, f), pick(x_te, f)) for f in features}
    t1 = time.perf_counter()
    for i, (f, (a_tr, a_te)) in enumerate(sets.items()):
      t2 = time.perf_counter()
      r = evaluate.fit_probe(a_tr, y_tr, a_te, y_te, tuple(ev.c_grid), ev.val_fraction,
                             config.seed, ev.select_by, solver)
      r.update(features_seconds=round(t1 - t0, 1),
               probe_seconds=round(time.perf_counter() - t2, 1), dim=int(a_tr.shape[1]))
      key = name if (i == 0 or name == "raw_pixels") else f"{name}_{f}"
      r["features"] = "raw" if name == "raw_pixels" else f
      print(f"{key:<22s} dim {a_tr.shape[1]:5d}  C={r['C']:g}  test accuracy "
            f"{r['test_accuracy']:.4f}  (features {r['features_seconds']} s, probe "
            f"{r['probe_seconds']} s)", flush=True)
      out[key] = r
  return out


def save_workdir(config, state, workdir: str) -> None:
  """config.json and the final state as a checkpoint: `simclr-jax linear-eval / finetune /
  distill --workdir` then run on this encoder."""
  from simclr_jax import checkpoint
  from simclr_jax import workdir as workdir_lib
  config = config.copy_and_resolve_references()
  config.train.steps = int(state.step)
  workdir_lib.write_config(config, workdir)
  manager = checkpoint.make_manager(workdir, 1, 1)
  checkpoint.save(manager, int(state.step), state, force=True)
  manager.wait_until_finished()
  manager.close()


def main(argv=None):
  from simclr_jax import readout
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cifar", required=True, help="folder of cifar10_{train,test}.npz")
  p.add_argument("--minutes", type=float, default=20.0, help="pretraining budget, compile incl.")
  p.add_argument("--train-examples", type=int, default=10_000)
  p.add_argument("--test-examples", type=int, default=10_000)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier")
  p.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                 help="learning rate over the budget's wall time: constant, or cosine to 0")
  p.add_argument("--warmup", type=float, default=0.0, help="fraction of the budget warming up")
  p.add_argument("--temperature", type=float, default=0.5)
  p.add_argument("--crop-min", type=float, default=0.08, help="random crop's smallest area")
  p.add_argument("--color-strength", type=float, default=0.5, help="colour jitter strength")
  p.add_argument("--hidden", type=int, default=512, help="projection head's hidden width")
  p.add_argument("--seed", type=int, default=42)
  p.add_argument("--features", default="h", help="comma-separated feature sets, each of "
                 f"{', '.join(readout.PARTS)} joined by '+' (simclr_jax/readout.py); the first "
                 "is the headline")
  p.add_argument("--no-baselines", action="store_true", help="skip random init and raw pixels")
  p.add_argument("--workdir", help="also save config.json and the final state here, for "
                 "simclr-jax linear-eval / finetune / distill --workdir")
  p.add_argument("--workers", type=int, default=0, help="grain worker processes")
  p.add_argument("--probe", default="logistic_jax", choices=("logistic", "logistic_jax"))
  p.add_argument("--log-every", type=int, default=10)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "quality.json"))
  args = p.parse_args(argv)
  features = tuple(f.strip() for f in args.features.split(",") if f.strip())
  try:
    for f in features or ("",):
      readout.parse(f)
  except ValueError as e:
    p.error(f"--features: {e}")

  from simclr_jax import logs, startup
  logs.quiet_libraries()
  startup.use_all_cpu_cores()
  import jax

  with tempfile.TemporaryDirectory() as tmp:
    # With --workdir the subsets stay beside the checkpoint, where its config.json points.
    data_dir = os.path.abspath(os.path.join(args.workdir, "data")) if args.workdir else tmp
    os.makedirs(data_dir, exist_ok=True)
    n_train = subset_npz(os.path.join(args.cifar, "cifar10_train.npz"),
                         os.path.join(data_dir, "cifar10_train.npz"), args.train_examples)
    n_test = subset_npz(os.path.join(args.cifar, "cifar10_test.npz"),
                        os.path.join(data_dir, "cifar10_test.npz"), args.test_examples)
    config = make_config(os.path.join(data_dir, "cifar10_{split}.npz"), args)
    print(f"pretraining ResNet-18 x{args.width:g} on {n_train} images, batch {args.batch}, "
          f"Adam {args.lr:g}, {jax.device_count()} devices, {args.minutes:g} min", flush=True)
    state, setup, info = pretrain_for(config, args.minutes, args.log_every, args.warmup)
    if args.workdir:
      save_workdir(config, state, args.workdir)
    print(f"{info['steps']} steps in {info['seconds']} s ({info['images_per_sec']} img/s after "
          f"{info['compile_and_first_step_seconds']} s of compile and first step)", flush=True)
    probes = probe_all(config, setup, state, args.probe, features, not args.no_baselines)

  result = {
      "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "host": {"machine": platform.machine(), "processor": platform.processor(),
               "cpus": os.cpu_count(), "devices": jax.device_count(),
               "device_kind": jax.devices()[0].device_kind,
               "load_average_at_end": os.getloadavg()},
      "recipe": {"backbone": "resnet18", "cifar_stem": True, "width_multiplier": args.width,
                 "batch_size": args.batch,
                 "optimizer": f"adam {args.lr:g} {args.schedule} by wall time, warm-up "
                              f"{args.warmup:g} of it",
                 "hidden_mlp": args.hidden, "seed": args.seed,
                 "temperature": float(config.loss.temperature),
                 "augment": {"preset": "simclr_cifar", "crop_scale": [args.crop_min, 1.0],
                             "color_strength": args.color_strength},
                 "train_examples": n_train, "test_examples": n_test, "minutes": args.minutes,
                 "probe": args.probe},
      "pretraining": info,
      "probes": probes,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  acc = {k: v["test_accuracy"] for k, v in probes.items()}
  cols = [k for k in acc if k != "pretrained"]
  print("\n| steps | img/s | pretrained (" + features[0] + ") | " + " | ".join(cols) + " |")
  print("| --- " * (3 + len(cols)) + "|")
  print(f"| {info['steps']} | {info['images_per_sec']} | {acc['pretrained']:.4f} | "
        + " | ".join(f"{acc[k]:.4f}" for k in cols) + " |")
  print(f"wrote {args.out}")


if __name__ == "__main__":   # grain's worker processes re-import this file
  main()

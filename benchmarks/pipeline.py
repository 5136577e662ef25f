"""Host input pipeline throughput vs the train step it feeds (images/s).

  python benchmarks/pipeline.py --cifar /path/to/cifar10_train.npz

Measures, for the cifar10 config (npz, uint8 32x32x3 -> /255) and the sdo config (SolarNet's
sdo-dataset layout: a synthetic tree of 512x512 float16 npz magnetograms with NaN off-disk
pixels, generated in a temporary folder, -> clip/250, flip, mean-of-4x4 resize to 128):

- the grain pipeline (simclr_jax.data.pipeline.pretrain_dataset: shuffle, shard, decode,
  batch, prefetch) with 0, 1 and 2 worker processes: images/s after the first batch, and the
  first batch's latency (worker start-up included);
- the jitted train step of the same config (simclr_jax.train.make_train_step) on random
  batches already on the devices: images/s after compilation. On a CPU host the config's batch
  (512 / 768) takes minutes per step, so a smaller batch is timed (--step_batch_*); the JSON and
  the table say which.

Writes benchmarks/results/pipeline.json and prints a markdown table (benchmarks/README.md).
The pipeline and the step are timed one after the other, not concurrently; on a 2-core host the
workers and the step compete for the same cores in a real run. Never run by the test suite.
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

import numpy as np  # noqa: E402


def make_sdoml_tree(root: str, n: int, size: int = 512, seed: int = 0) -> None:
  """n rows of SolarNet's sdo-dataset layout: a CSV + one compressed 512x512 float16 npz each.

  A disk of radius 0.45*size with noisy field (a few hundred G, some beyond ±250) and NaN
  outside, like an SDOML bz image."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  off_disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 > (0.45 * size) ** 2
  lines = ["path_0_before,peak_flux,datetime,all_found,split"]
  for i in range(n):
    rel = f"Bz/2012/01/{i % 28 + 1:02d}/HMI2012{i:05d}_bz.npz"
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    x = rng.normal(0, 60, (size, size)).astype(np.float32)
    x[rng.random((size, size)) < 0.01] *= 10
    x[off_disk] = np.nan
    np.savez_compressed(os.path.join(root, rel), x=x.astype(np.float16))
    flux = 10.0 ** rng.uniform(-9, -4)
    lines.append(f"{rel},{flux!r},2012-01-01 00:00:00,True,train")
  with open(os.path.join(root, "sdo-dataset-train.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")


def measure_pipeline(source, batch: int, workers: int, batches: int, seed: int = 0) -> dict:
  from simclr_jax.data import pipeline
  ds = pipeline.pretrain_dataset(source, global_batch_size=batch, seed=seed, workers=workers,
                                 prefetch=2)
  t0 = time.perf_counter()
  it = iter(ds)
  next(it)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)
  dt = time.perf_counter() - t0
  assert b["image"].shape[0] == batch
  it.close()
  return {"workers": workers, "batch": batch, "batches_timed": batches,
          "images_per_sec": batches * batch / dt, "first_batch_s": first}


def measure_step(config, batch: int, iters: int, seed: int = 0) -> dict:
  import jax
  from simclr_jax import parallel, train
  from simclr_jax import state as state_lib
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch
  setup = state_lib.build(config, num_train_examples=batch * 100)
  init_rng, augment_key = jax.random.split(jax.random.PRNGKey(seed))
  t0 = time.perf_counter()
  state = state_lib.init_state(setup, init_rng)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  step = train.make_train_step(setup, augment_key)
  rng = np.random.default_rng(seed)
  c = config.data
  lo, hi = c.value_range
  host = {"image": rng.uniform(lo, hi, (batch, c.image_size, c.image_size, c.channels)
                               ).astype(np.float32),
          "label": rng.integers(0, max(1, c.num_classes), batch).astype(np.int32),
          "id": np.arange(batch, dtype=np.int32)}
  dev = parallel.host_to_global(setup.mesh, host)
  t0 = time.perf_counter()
  state, metrics = step(state, dev)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(iters):
    state, metrics = step(state, dev)
  jax.block_until_ready(metrics)
  dt = time.perf_counter() - t0
  return {"batch": batch, "devices": int(setup.mesh.devices.size), "steps_timed": iters,
          "images_per_sec": iters * batch / dt, "seconds_per_step": dt / iters,
          "compile_s": compile_s, "init_s": init_s, "backbone": config.model.backbone,
          "image_size": c.image_size, "channels": c.channels, "config_batch": None}


def measure_step_or_fallback(config, batch: int, iters: int) -> dict:
  """measure_step; if the config's augmentation fails to compile in the sharded step, time the
  step with the colour ops off instead and say so (they are a sliver of a ResNet step)."""
  try:
    return measure_step(config, batch, iters)
  except Exception as e:  # noqa: BLE001 - reported in the JSON, not hidden
    config = config.copy_and_resolve_references()
    config.augment.color_prob = 0.0
    config.augment.grayscale_prob = 0.0
    out = measure_step(config, batch, iters)
    out["note"] = (f"config's augment failed in the sharded train step ({type(e).__name__}: "
                   f"{str(e).splitlines()[0][:200]}); timed with color_prob=grayscale_prob=0")
    return out


def _fmt(x: float) -> str:
  return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def table(results: dict) -> str:
  workers = sorted({p["workers"] for r in results["rows"] for p in r["pipeline"]})
  head = ("| data (config) | " + " | ".join(f"pipeline, {w} workers" for w in workers)
          + " | train step (batch, devices) | pipeline / step |")
  lines = [head, "|" + " --- |" * (len(workers) + 3)]
  for r in results["rows"]:
    rates = {p["workers"]: p["images_per_sec"] for p in r["pipeline"]}
    s = r.get("step")
    step = (f"{_fmt(s['images_per_sec'])} ({s['backbone']}, batch {s['batch']} of "
            f"{s['config_batch']}, {s['devices']} dev{', no colour ops*' if 'note' in s else ''})"
            if s else "not measured")
    ratio = f"{min(rates.values()) / s['images_per_sec']:,.0f}x" if s else ""
    lines.append(f"| {r['name']} | " + " | ".join(_fmt(rates[w]) for w in workers)
                 + f" | {step} | {ratio} |")
  return "\n".join(lines)


def measure_row(row, src, cfg, workers, batch, batches, step_batch, args) -> dict:
  """Fills `row` with the pipeline's rate per worker count and (unless --skip_step) the train
  step's rate for `cfg`, printing each measurement as it lands."""
  row["pipeline"] = []
  for w in workers:
    row["pipeline"].append(measure_pipeline(src, batch, w, batches))
    print(json.dumps(row["pipeline"][-1]), flush=True)
  if not args.skip_step:
    row["step"] = measure_step_or_fallback(cfg, step_batch, args.step_iters)
    row["step"]["config_batch"] = cfg.train.batch_size
    print(json.dumps(row["step"]), flush=True)
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cifar", default="data/cifar10/cifar10_train.npz",
                 help="CIFAR-10 train npz (images uint8 NHWC, labels)")
  p.add_argument("--sdoml_dir", default="", help="existing sdo-dataset folder; default: "
                 "generate --sdoml_files synthetic 512x512 files in a temporary folder")
  p.add_argument("--sdoml_files", type=int, default=160)
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--cifar_batch", type=int, default=512)
  p.add_argument("--cifar_batches", type=int, default=40)
  p.add_argument("--sdo_batch", type=int, default=32)
  p.add_argument("--sdo_batches", type=int, default=8)
  p.add_argument("--step_batch_cifar", type=int, default=64)
  p.add_argument("--step_batch_sdo", type=int, default=16)
  p.add_argument("--step_iters", type=int, default=3)
  p.add_argument("--skip_step", action="store_true")
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pipeline.json"))
  args = p.parse_args(argv)
  workers = [int(w) for w in args.workers.split(",")]

  from simclr_jax import startup
  startup.use_all_cpu_cores()
  from simclr_jax.configs import cifar10, sdo
  from simclr_jax.data import sources

  t_start = time.perf_counter()
  results = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(),
                      "loadavg_start": list(os.getloadavg())}, "rows": []}

  # CIFAR-10 npz.
  cfg = cifar10.get_config()
  cfg.data.path = args.cifar
  src = sources.make_source(cfg.data, "train")
  row = {"name": "CIFAR-10 npz, 32x32x3 (cifar10)", "n": len(src)}
  results["rows"].append(measure_row(row, src, cfg, workers, args.cifar_batch,
                                     args.cifar_batches, args.step_batch_cifar, args))
  del src

  # Synthetic SDOML tree.
  with tempfile.TemporaryDirectory() as tmp:
    root = args.sdoml_dir
    if not root:
      root = tmp
      t0 = time.perf_counter()
      make_sdoml_tree(root, args.sdoml_files)
      print(f"generated {args.sdoml_files} synthetic 512x512 npz in "
            f"{time.perf_counter() - t0:.1f} s", flush=True)
    cfg = sdo.get_config()
    cfg.data.path = root
    src = sources.make_source(cfg.data, "train")
    row = {"name": "SDOML npz 512x512 -> 128, 1 channel (sdo)", "n": len(src),
           "synthetic": not args.sdoml_dir}
    results["rows"].append(measure_row(row, src, cfg, workers, args.sdo_batch,
                                       args.sdo_batches, args.step_batch_sdo, args))

  results["host"]["loadavg_end"] = list(os.getloadavg())
  results["wall_s"] = time.perf_counter() - t_start
  results["table"] = table(results)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(results["table"])
  print(f"wrote {args.out} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":   # grain's spawned workers re-import this file: keep the guard
  main()

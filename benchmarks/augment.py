"""The on-device augmentation's share of a train step, for the cifar10 and sdo configs.

  python benchmarks/augment.py

For each config, on the devices of this host (a CPU host emulates one device per core), two
jitted functions run on the same device-resident, sharded batch:
- the whole train step (simclr_jax.train.make_train_step: two augmented views, encoder,
  projection, NT-Xent, gradients, optimizer update);
- the augmentation alone: both views of every sample with the step's per-sample keys, sharded
  the same way (simclr_jax.augment.view_keys + augment_batch under jit).
Share = augmentation time / step time (target: under 10 %). On a CPU the configs' batches
(512, 768) take minutes per step, so a smaller batch is timed (--batch_*); a ResNet-50 at
128x128 is slow here, so the share is what matters, not the absolute numbers.
Writes benchmarks/results/augment.json and prints a markdown table (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _time(fn, *args, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn(*args))                  # compile + warm up
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / repeats


def measure(name: str, config, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from simclr_jax import augment, parallel, train
  from simclr_jax import state as state_lib

  c = config.data
  setup = state_lib.build(config, num_train_examples=100 * config.train.batch_size)
  init_key, augment_key = state_lib.run_keys(config.seed)
  state = state_lib.init_state(setup, init_key)
  b = config.train.batch_size
  rng = np.random.default_rng(0)
  lo, hi = c.value_range if c.value_range else (0.0, 1.0)
  host = {"image": rng.uniform(lo, hi, (b, c.image_size, c.image_size, c.channels)).astype(
              np.float32),
          "label": np.zeros(b, np.int32), "id": np.arange(b, dtype=np.int32)}
  batch = parallel.host_to_global(setup.mesh, host)
  step = train.make_train_step(setup, augment_key)

  view1, view2 = augment.make_augment(config.augment, c.channels, c.image_size)

  @jax.jit
  def augment_only(images, ids):
    k1, k2 = augment.view_keys(augment_key, ids.astype(jnp.uint32))
    return (augment.augment_batch(view1, k1, images), augment.augment_batch(view2, k2, images))

  t_aug = _time(augment_only, batch["image"], batch["id"], repeats=repeats)
  state, metrics = step(state, batch)                 # compile + warm up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(repeats):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  t_step = (time.perf_counter() - t0) / repeats
  return {"config": name, "backbone": config.model.backbone,
          "image": f"{c.image_size}x{c.image_size}x{c.channels}",
          "preset": config.augment.preset, "batch": b,
          "devices": int(setup.mesh.devices.size),
          "step_s": t_step, "augment_s": t_aug, "augment_share": t_aug / t_step,
          "step_images_per_s": b / t_step}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch_cifar10", type=int, default=64)
  p.add_argument("--batch_sdo", type=int, default=16)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "augment.json"))
  args = p.parse_args()

  from simclr_jax import startup
  startup.use_all_cpu_cores()
  import jax

  from simclr_jax.configs import cifar10, sdo
  rows = []
  for name, module, batch in (("cifar10", cifar10, args.batch_cifar10),
                              ("sdo", sdo, args.batch_sdo)):
    config = module.get_config()
    config.train.batch_size = batch
    rows.append(measure(name, config, args.repeats))
    print(json.dumps(rows[-1]), flush=True)
  result = {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(), "rows": rows}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print("\n| config | backbone | input | preset | batch | devices | step (s) | augment (s) "
        "| augment share |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['backbone']} | {r['image']} | {r['preset']} | {r['batch']} "
          f"| {r['devices']} | {r['step_s']:.2f} | {r['augment_s']:.3f} "
          f"| {100 * r['augment_share']:.1f} % |")


if __name__ == "__main__":
  main()

"""Where the time of a train step goes: XLA's per-op profile of the jitted step, and the
convolutions of a ResNet-18 alone, forward and both gradients.

  python benchmarks/profile_step.py                     # cifar10 recipe, batch 64, 1 device
  python benchmarks/profile_step.py --recipe sdo --batch 8
  python benchmarks/profile_step.py --conv-impl auto     # the CPU default: oneDNN's convolutions

The step runs on XLA's convolutions unless --conv-impl says otherwise (oneDNN's appear as
`ffi_call` thunks).

Part 1 traces two steps of `simclr_jax.train.make_train_step` (the recipe of
benchmarks/train_step.py) with `jax.profiler.trace` and sums the XLA:CPU thunks of the
Perfetto trace by kind (the op name without its number: `ynn_fusion` are the convolutions and
dots XLA hands to its YNNPACK back end, `transpose_copy_fusion` layout copies, ...), with the
share of the total thunk time. Part 2 times, on one device, the forward convolution and the
gradients to the input (dx) and to the kernel (dW) of each 3x3 stage convolution of the
CIFAR ResNet-18 at --batch views, as XLA computes them, in GFLOP/s.
Writes benchmarks/results/profile_step.json (and prints both tables). Never run by the tests.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def thunk_profile(recipe: str, batch: int, conv_impl: str) -> dict:
  import jax
  import numpy as np
  import train_step as bench
  from simclr_jax import train
  from simclr_jax import state as state_lib

  config = bench.recipe_config(recipe, batch, conv_impl=conv_impl)
  config.train.num_devices = 1
  setup = state_lib.build(config, 100 * batch)
  init_key, augment_key = state_lib.run_keys(0)
  state = state_lib.init_state(setup, init_key)
  d = config.data
  lo, hi = d.value_range if d.value_range else (0.0, 1.0)
  rng = np.random.default_rng(0)
  host = {"image": rng.uniform(lo, hi, (batch, d.image_size, d.image_size, d.channels)
                               ).astype(np.float32),
          "label": np.zeros(batch, np.int32), "id": np.arange(batch)}
  device_batch = train.device_batch(setup.mesh, host)
  step = train.make_train_step(setup, augment_key)
  for _ in range(2):                                     # compile, then one warm step
    state, metrics = step(state, device_batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(2):
        state, metrics = step(state, device_batch)
      jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t0) / 2
    (path,) = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    trace = json.load(gzip.open(path))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  by_kind, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    # Thunks only: not the executor's own spans, the Python frames or thread-pool waits.
    if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "Slinky", "PjitFunction")):
      continue
    kind = re.sub(r"\.\d+$", "", name)
    by_kind[kind] += e.get("dur", 0) / 2e6              # seconds per step
    count[kind] += 1
  total = sum(by_kind.values())
  rows = [{"kind": k, "s_per_step": v, "share": v / total, "ops_per_step": count[k] // 2}
          for k, v in by_kind.most_common()]
  return {"recipe": recipe, "batch": batch, "devices": 1, "step_wall_s": wall,
          "thunk_s_per_step": total, "rows": rows}


def conv_layers(batch: int, repeats: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  dn = ("NHWC", "HWIO", "NHWC")

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)

  def dx(x, w, dy):
    return jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]

  def dw(x, w, dy):
    return jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]

  def best(f, *args):
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      times.append(time.perf_counter() - t0)
    return min(times)

  rows = []
  for size, channels in ((32, 64), (16, 128), (8, 256), (4, 512)):   # the four stages
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, channels, channels)), jnp.float32)
    dy = conv(x, w)
    gflop = 2 * batch * size * size * 9 * channels * channels / 1e9
    row = {"input": f"{batch}x{size}x{size}x{channels}", "kernel": f"3x3x{channels}x{channels}",
           "gflop": gflop}
    for name, f, args in (("forward", conv, (x, w)), ("dx", dx, (x, w, dy)),
                          ("dW", dw, (x, w, dy))):
      row[f"{name}_gflops"] = gflop / best(f, *args)
    rows.append(row)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipe", default="cifar10")
  p.add_argument("--batch", type=int, default=64, help="images per step (2 views each)")
  p.add_argument("--conv-impl", default="xla",
                 help="model.conv_impl of the profiled step ('auto': the CPU default, oneDNN)")
  p.add_argument("--conv-batch", type=int, default=128, help="views per convolution timing")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "profile_step.json"))
  args = p.parse_args(argv)
  import jax
  result = {"host": {"device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
                     "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                     "loadavg_start": os.getloadavg()},
            "profile": thunk_profile(args.recipe, args.batch, args.conv_impl),
            "conv_layers": conv_layers(args.conv_batch, args.repeats)}
  prof = result["profile"]
  lines = [f"{args.recipe}, batch {args.batch} ({2 * args.batch} views), 1 device: step "
           f"{prof['step_wall_s']:.2f} s wall, {prof['thunk_s_per_step']:.2f} s of thunks",
           "", "| thunk kind | s / step | share | ops / step |", "| --- | ---: | ---: | ---: |"]
  for r in prof["rows"][:8]:
    lines.append(f"| {r['kind']} | {r['s_per_step']:.3f} | {100 * r['share']:.1f} % "
                 f"| {r['ops_per_step']} |")
  lines += ["", "| 3x3 conv input (NHWC) | GFLOP | forward GFLOP/s | dx GFLOP/s | dW GFLOP/s |",
            "| --- | ---: | ---: | ---: | ---: |"]
  for r in result["conv_layers"]:
    lines.append(f"| {r['input']} | {r['gflop']:.1f} | {r['forward_gflops']:.0f} "
                 f"| {r['dx_gflops']:.0f} | {r['dW_gflops']:.0f} |")
  result["table"] = "\n".join(lines)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(result["table"])
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

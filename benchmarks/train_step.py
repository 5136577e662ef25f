"""Views/s of the jitted SimCLR train step, beside a plain PyTorch step on the same machine.

  python benchmarks/train_step.py --with-torch

For the cifar10 recipe (config cifar10: ResNet-18, CIFAR stem, 32x32x3, batch 256) and the
sdo recipe (config sdo: ResNet-50, 128x128x1, online head, batch 32), both with Adam 1e-3,
this times `simclr_jax.train.make_train_step` (two on-device augmented views, encoder,
projection, NT-Xent, online head where the config has one, gradients, optimizer update) on a
random batch already on the devices:
- per device count (--devices: 1, 2, 'default' = what `simclr-jax pretrain` uses, i.e. on a CPU
  host the count simclr_jax/startup.cpu_devices_for picks for the recipe's config), each in
  its own process, because the number of CPU devices is fixed when the backend starts; on a
  GPU/TPU host a number means the first N devices;
- per compute dtype (model.dtype) and convolution path (model.conv_impl: 'auto' = oneDNN's
  convolutions on a CPU host in float32, models/onednn.py; 'xla' = XLA's own);
- compile time apart (lower + compile), then views/s (2 views per image) over --steps steps
  after --warmup steps, blocking on the result;
- the step's FLOPs (XLA's cost analysis of the compiled step on XLA's convolutions, summed
  over devices: it counts nothing inside oneDNN's custom calls) and its
  peak memory per device (arguments + outputs + temporaries - donated aliases, from XLA's
  memory analysis);
- the machine's float32 and bfloat16 matmul peak (best of several jitted 2048x2048 dots), in
  the same run, so each step's FLOP/s is also given as a share of those peaks.
With --with-torch, benchmarks/torch_reference.py runs the same recipes (eager and
torch.compile) in a subprocess, so the ratios come from one run; it needs the `bench` extra
(`pip install -e .[bench]`).

Writes benchmarks/results/train_step.json and a markdown table (printed, and written next to
the JSON as .md). Never run by the test suite; for a smoke run:
  python benchmarks/train_step.py --recipes cifar10 --devices 1 --batch 8 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RECIPE_BATCH = {"cifar10": 256, "sdo": 32, "digits": 256}   # not always the configs' batches
MARK = "RESULT "                             # prefix of a worker's one JSON line on stdout


def recipe_config(name: str, batch: int | None = None, dtype: str = "float32",
                  conv_impl: str | None = None):
  """The recipe's real config (simclr_jax/configs/<name>.py, default variant) with Adam 1e-3."""
  from simclr_jax.configs import cifar10, digits, sdo
  modules = {"cifar10": cifar10, "sdo": sdo, "digits": digits}
  if name not in modules:
    raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(modules)}")
  c = modules[name].get_config()
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.train.batch_size = batch or RECIPE_BATCH[name]
  c.model.dtype = dtype
  if conv_impl is not None:
    c.model.conv_impl = conv_impl
  return c


def host_info() -> dict:
  import jax
  import jaxlib
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "machine": platform.machine(), "processor": platform.processor(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}


# --- workers (one process each) -----------------------------------------------------------

def matmul_peaks(size: int, trials: int) -> dict:
  """GFLOP/s of a jitted size x size jnp.dot, best of `trials` timings of a few calls each."""
  import jax
  import jax.numpy as jnp
  out = {"matmul_size": size}
  for dtype in ("float32", "bfloat16"):
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    reps, best = 4, float("inf")
    for _ in range(trials):
      t0 = time.perf_counter()
      for _ in range(reps):
        r = dot(a, b)
      jax.block_until_ready(r)
      best = min(best, (time.perf_counter() - t0) / reps)
    out[f"{dtype}_gflops"] = 2 * size**3 / best / 1e9
  return out


def _cost(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):       # older jax: one dict per executable
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def measure_step(recipe: str, batch: int, dtype: str, conv_impl: str | None, steps: int,
                 warmup: int, num_devices: int, config=None) -> dict:
  """One row: `config` (default: `recipe_config` of the arguments; benchmarks/accelerator.py
  passes the real recipes) timed at global batch `batch` on `num_devices` (0 = all)."""
  import jax
  import numpy as np

  from simclr_jax import memory as memory_lib
  from simclr_jax import startup, train
  from simclr_jax import state as state_lib

  config = config or recipe_config(recipe, batch, dtype, conv_impl)
  config.train.num_devices = num_devices
  c = config.data
  setup = state_lib.build(config, num_train_examples=100 * batch)
  devices = int(setup.mesh.devices.size)
  init_key, augment_key = state_lib.run_keys(config.seed)
  t0 = time.perf_counter()
  state = jax.block_until_ready(state_lib.init_state(setup, init_key))
  init_s = time.perf_counter() - t0
  n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))

  rng = np.random.default_rng(0)
  lo, hi = c.value_range if c.value_range else (0.0, 1.0)
  host = {"image": rng.uniform(lo, hi, (batch, c.image_size, c.image_size, c.channels)
                               ).astype(np.float32),
          "label": rng.integers(0, max(1, c.num_classes), batch),
          "id": np.arange(batch)}
  device_batch = train.device_batch(setup.mesh, host)
  step = train.make_train_step(setup, augment_key)

  t0 = time.perf_counter()
  lowered = step.lower(state, device_batch)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0

  # XLA:CPU and XLA:GPU analyse the partitioned (per-device) program: scale to the whole step.
  flops_device = _cost(compiled)
  if startup.conv_path(config.model)[0] == "onednn":
    # XLA counts no FLOPs in custom calls: take them from the same step on XLA's convolutions.
    config.model.conv_impl = "xla"
    xla_setup = state_lib.build(config, num_train_examples=100 * batch)
    flops_device = _cost(train.make_train_step(xla_setup, augment_key).lower(
        state, device_batch).compile())
    config.model.conv_impl = conv_impl
  memory = memory_lib.analysis(compiled)      # per device, peak included

  for _ in range(warmup):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready((state, metrics) if warmup else state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready((state, metrics))
  dt = time.perf_counter() - t0
  loss = float(metrics["loss"])
  return {"backend": "jax", "recipe": recipe, "backbone": config.model.backbone,
          "input": f"{c.image_size}x{c.image_size}x{c.channels}", "batch": batch,
          "dtype": dtype, "conv_impl": conv_impl, "conv_impl_resolved":
          startup.conv_path(config.model)[0], "devices": devices, "params": n_params,
          "init_s": init_s, "lower_s": lower_s, "compile_s": compile_s,
          "steps_timed": steps, "warmup_steps": warmup, "step_s": dt / steps,
          "views_per_s": 2 * batch * steps / dt, "loss_after": loss,
          "flops_per_step": flops_device * devices if flops_device is not None else None,
          "flops_per_step_per_device": flops_device, "memory_bytes_per_device": memory}


def run_worker(args) -> dict:
  """One process: the peaks, or every (recipe, dtype, conv_impl) at one device count."""
  from simclr_jax import startup
  if args.worker == "step" and args.devices == "default":
    # Off a CPU host a no-op, as in `simclr-jax pretrain`; on a CPU host the parent has set
    # JAX_NUM_CPU_DEVICES to the count `simclr-jax pretrain` picks for this worker's recipe.
    startup.use_all_cpu_cores()
  import jax
  info = host_info()
  if args.worker == "peaks":
    return dict(info, **matmul_peaks(args.matmul_size, args.matmul_trials))

  num_devices = 0                        # all devices of this process
  if args.devices != "default" and info["platform"] != "cpu":
    num_devices = int(args.devices)      # accelerators: the first N real devices
    if num_devices > jax.device_count():
      return dict(info, rows=[], skipped=f"{num_devices} devices asked, "
                  f"{jax.device_count()} present")
  rows, seen = [], set()
  for recipe in args.recipes.split(","):
    batch = args.batch or RECIPE_BATCH[recipe]
    for dtype in args.dtypes.split(","):
      for impl in [None] if not args.conv_impls else args.conv_impls.split(","):
        cfg = recipe_config(recipe, batch, dtype)
        if impl is not None and "conv_impl" not in cfg.model:
          print(f"model.conv_impl not in this checkout's config: {impl!r} skipped",
                file=sys.stderr)
          impl = None
        if impl is not None:
          cfg.model.conv_impl = impl
        key = (recipe, dtype, startup.conv_path(cfg.model)[0] if "conv_impl" in cfg.model
               else None)
        if key in seen:                # e.g. 'auto' is 'xla' on a GPU: time it once
          continue
        seen.add(key)
        print(f"[{args.devices} devices] {recipe} {dtype} conv_impl={impl} batch {batch} ...",
              file=sys.stderr, flush=True)
        try:
          row = measure_step(recipe, batch, dtype, impl, args.steps, args.warmup, num_devices)
        except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still run
          row = {"backend": "jax", "recipe": recipe, "dtype": dtype, "conv_impl": impl,
                 "batch": batch, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        row["devices_arg"] = args.devices
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
  return dict(info, rows=rows)


# --- parent -----------------------------------------------------------------------------------

def _spawn(argv: list[str], env_devices: str | None, timeout: float) -> dict:
  """Runs a worker with its CPU device count set through the environment; its last
  'RESULT {...}' stdout line is the answer. stderr (progress) passes through."""
  env = dict(os.environ)
  # Our own device count wins over one inherited from the caller's environment; any other
  # XLA flags the caller set (back ends, threading) pass through unchanged.
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                            env.get("XLA_FLAGS", "")).strip()
  env.pop("JAX_NUM_CPU_DEVICES", None)
  if env_devices is not None:
    env["JAX_NUM_CPU_DEVICES"] = env_devices
  proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout,
                        check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
  if proc.returncode or not lines:
    return {"error": f"{' '.join(argv[1:])}: exit {proc.returncode}, "
                     f"stdout tail: {proc.stdout[-500:]!r}"}
  return json.loads(lines[-1][len(MARK):])


def _torch_rows(args, jax_params: dict) -> dict:
  argv = [sys.executable, os.path.join(ROOT, "benchmarks", "torch_reference.py"),
          "--recipes", args.recipes, "--steps", str(args.steps), "--warmup",
          str(args.warmup), "--modes", args.torch_modes, "--dtypes", args.torch_dtypes,
          "--matmul-size", str(args.matmul_size), "--matmul-trials", str(args.matmul_trials)]
  if args.batch:
    argv += ["--batch", str(args.batch)]
  for recipe, n in jax_params.items():
    argv += [f"--jax-params-{recipe}", str(n)]
  print("torch:", " ".join(argv[1:]), file=sys.stderr, flush=True)
  return _spawn(argv, None, args.timeout)


def _fmt(x, spec=".1f", none="") -> str:
  return none if x is None else format(x, spec)


def table(result: dict) -> str:
  peaks = result.get("peaks", {})
  p32, p16 = peaks.get("float32_gflops"), peaks.get("bfloat16_gflops")
  lines = ["| recipe | backend | conv | dtype | devices | batch | views/s | x torch eager "
           "| compile s | GFLOP/s | % f32 peak | % bf16 peak | peak mem MiB/device |",
           "|" + " --- |" * 13]
  for r in result["rows"]:
    if "error" in r:
      lines.append(f"| {r['recipe']} | {r['backend']} | {r.get('conv_impl') or ''} "
                   f"| {r['dtype']} | {r.get('devices_arg', '')} | {r.get('batch', '')} "
                   f"| error: {r['error'][:80]} |" + " |" * 7)
      continue
    gflops = r.get("gflops_per_s")
    mem = (r.get("memory_bytes_per_device") or {}).get("peak")
    lines.append(
        f"| {r['recipe']} | {r['backend']} | {r.get('conv_impl_resolved') or ''} "
        f"| {r['dtype']} | {r.get('devices', '')} | {r['batch']} | {r['views_per_s']:.1f} "
        f"| {_fmt(r.get('x_torch_eager'), '.2f')} | {_fmt(r.get('compile_s'))} "
        f"| {_fmt(gflops, '.0f')} | {_fmt(gflops and p32 and 100 * gflops / p32, '.0f')} "
        f"| {_fmt(gflops and p16 and 100 * gflops / p16, '.0f')} "
        f"| {_fmt(mem and mem / 2**20, '.0f')} |")
  t = peaks.get("torch", {})
  lines.append("")
  lines.append(f"Matmul peak ({peaks.get('matmul_size')}x{peaks.get('matmul_size')}, best of "
               f"{result['args']['matmul_trials']}): XLA float32 {_fmt(p32, '.0f')} GFLOP/s, "
               f"XLA bfloat16 {_fmt(p16, '.0f')} GFLOP/s"
               + (f"; torch float32 {_fmt(t.get('float32_gflops'), '.0f')}, torch bfloat16 "
                  f"{_fmt(t.get('bfloat16_gflops'), '.0f')} GFLOP/s" if t else "") + ".")
  h = result["host"]
  lines.append(f"Host: {h.get('device_kind')} ({h.get('platform')}), {h.get('cpu_count')} CPUs, "
               f"jax {h.get('jax')}; load average {result['loadavg_start']} at the start. "
               "x torch eager = views/s over the same recipe's float32 torch eager row. "
               "GFLOP/s = XLA's cost analysis of the JAX step (torch rows: the same recipe's "
               "float32 JAX step FLOPs per view); peak memory = arguments + outputs + "
               "temporaries - donated aliases of the compiled JAX step, per device.")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipes", default="cifar10,sdo")
  p.add_argument("--devices", default="1,2,default",
                 help="device counts, one process each; 'default' = what simclr-jax pretrain "
                      "starts (on a CPU host: startup.cpu_devices_for the recipe's config)")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--conv-impls", default="auto,xla",
                 help="model.conv_impl values ('' = the config's own); duplicates after "
                      "resolving 'auto' on this host are timed once")
  p.add_argument("--batch", type=int, default=0, help="override every recipe's batch (smoke)")
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  p.add_argument("--matmul-size", type=int, default=2048)
  p.add_argument("--matmul-trials", type=int, default=5)
  p.add_argument("--with-torch", action="store_true")
  p.add_argument("--torch-modes", default="eager,compile")
  p.add_argument("--torch-dtypes", default="float32")
  p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per subprocess")
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "train_step.json"))
  p.add_argument("--worker", choices=("peaks", "step"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.worker:
    print(MARK + json.dumps(run_worker(args)), flush=True)
    return

  t_start = time.perf_counter()
  result = {"args": vars(args), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
  me = [sys.executable, os.path.abspath(__file__)]
  common = ["--recipes", args.recipes, "--dtypes", args.dtypes, "--conv-impls",
            args.conv_impls, "--batch", str(args.batch), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--matmul-size", str(args.matmul_size),
            "--matmul-trials", str(args.matmul_trials)]
  # The peak of one plain XLA device (no emulated split of the host), as a user's dot gets it.
  peaks = _spawn(me + common + ["--worker", "peaks"], None, args.timeout)
  result["host"] = {k: v for k, v in peaks.items() if not k.endswith("gflops")}
  result["peaks"] = {k: v for k, v in peaks.items() if k.endswith("gflops") or k == "matmul_size"}
  print(json.dumps(peaks), file=sys.stderr, flush=True)
  on_cpu = peaks.get("platform", "cpu") == "cpu"

  rows, workers = [], []
  from simclr_jax import startup
  jobs = []          # (devices arg, recipes, dtypes, conv impls, CPU device count or None)
  for devices in args.devices.split(","):
    if devices == "default" and on_cpu:   # the count `simclr-jax pretrain` picks, per recipe
      for recipe in args.recipes.split(","):
        for dtype in args.dtypes.split(","):
          for impl in args.conv_impls.split(",") if args.conv_impls else [None]:
            n = startup.cpu_devices_for(recipe_config(recipe, args.batch, dtype, impl))
            jobs.append((devices, recipe, dtype, impl, str(n)))
    else:
      jobs.append((devices, args.recipes, args.dtypes, args.conv_impls,
                   devices if on_cpu else None))
  for devices, recipes, dtypes, impls, env_devices in jobs:
    argv = me + common + ["--worker", "step", "--devices", devices]
    argv[argv.index("--recipes") + 1] = recipes
    argv[argv.index("--dtypes") + 1] = dtypes
    argv[argv.index("--conv-impls") + 1] = impls or ""
    w = _spawn(argv, env_devices, args.timeout)
    workers.append({k: v for k, v in w.items() if k != "rows"} | {"devices_arg": devices})
    rows += w.get("rows", [])
  result["workers"] = workers

  # FLOPs per view of each recipe's float32 JAX step: the model's work, to rate torch rows too.
  flops_per_view = {}
  for r in rows:
    if r.get("flops_per_step") and r["dtype"] == "float32":
      flops_per_view.setdefault(r["recipe"], r["flops_per_step"] / (2 * r["batch"]))
  if args.with_torch:
    jax_params = {r["recipe"]: r["params"] for r in rows if "params" in r}
    t = _torch_rows(args, jax_params)
    result["peaks"]["torch"] = t.get("peaks", {})
    result["torch"] = {k: v for k, v in t.items() if k not in ("rows", "peaks")}
    rows += t.get("rows", [{"backend": "torch", "recipe": "-", "dtype": "-",
                            "error": t.get("error", "no rows")}])
  eager = {r["recipe"]: r["views_per_s"] for r in rows
           if r["backend"] == "torch eager" and r.get("dtype") == "float32" and "error" not in r}
  for r in rows:
    if "error" in r:
      continue
    if r["recipe"] in eager:
      r["x_torch_eager"] = r["views_per_s"] / eager[r["recipe"]]
    fpv = (r["flops_per_step"] / (2 * r["batch"]) if r.get("flops_per_step")
           else flops_per_view.get(r["recipe"]))
    r["gflops_per_s"] = fpv * r["views_per_s"] / 1e9 if fpv else None
  result["rows"] = rows
  result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
  result["wall_s"] = time.perf_counter() - t_start
  result["table"] = table(result)

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(result["table"] + "\n")
  print(result["table"])
  print(f"wrote {args.out} and its .md ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
  main()

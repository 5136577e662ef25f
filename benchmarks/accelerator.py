"""What a machine does with the SimCLR step: one command, about 8 minutes on one GPU.

On a GPU host, from a clone (no internet needed once the wheels are there; README below):

  pip install -e ".[cuda12]" && python benchmarks/accelerator.py

A host without internet takes the packages a GPU image may lack (grain, ml-collections, ...)
as wheels made elsewhere: `pip wheel -w wheels ".[cuda12]"` on a connected machine of the same
platform, then `pip install --no-index --find-links wheels -e ".[cuda12]"` there.

It reports, in benchmarks/results/accelerator_<device kind>.json and the same name .md:
- the device kind and count, jax/jaxlib, the CUDA version the backend names (and the driver's,
  by nvidia-smi where it exists);
- for the cifar10, sdo and imagenet recipes (their real configs: ResNet-18 32x32x3, ResNet-50
  128x128x1 with the online head, ResNet-50 224x224x3) in float32 and bfloat16, the train
  step (benchmarks/train_step.py `measure_step`: compile, views/s, XLA's FLOPs and compiled
  memory) at the largest per-device batch that ran, found by trying: doubling from --start
  per device, or where the device reports its memory limit, jumping to the power of two the
  first trial's compiled memory predicts, then halving back on an out-of-memory error;
- peak memory per device from the compiled step and from the device's memory_stats;
- model FLOP/s as a share of the chip's dense peak (CHIP_PEAKS; a measured matmul elsewhere);
- the N-device step against the 1-device step from the same state and batch, where N > 1;
- host images/s per core of the project's sources (FolderSource: JPEG decode + resize to 224;
  SdomlSource: npz decode, NaN -> 0, clip, resize to 128) and the cores a device needs.

Each (recipe, dtype) search runs in its own process on an accelerator (a clean memory peak,
and an out-of-memory error cannot leave the next trial short). `--quick` is the CPU check the
slow tier runs: 8 emulated devices, models shrunk to width 1/16, one batch, one process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import train_step as ts  # noqa: E402  (benchmarks/train_step.py)

RECIPES = ("cifar10", "sdo", "imagenet")
DTYPES = ("float32", "bfloat16")
START = {"cifar10": 128, "sdo": 32, "imagenet": 32}        # per-device batch of the first trial
QUICK_SIZE = {"cifar10": 16, "sdo": 32, "imagenet": 32}    # --quick image sides
# Dense TFLOP/s per JAX device (bfloat16, float32 without tensor cores), from the vendors' data
# sheets; first match of a lowercase substring of device_kind. Float32 matmuls on A100 and later
# may run as TF32 on tensor cores (XLA's default precision), so a float32 share can pass 100 %.
# TPU v3 shows each of a chip's 2 cores as a device (123 per chip); v4 and v5p are one device
# per chip (megacore).
CHIP_PEAKS = (("h100 pcie", 756.0, 51.0), ("h100", 989.0, 67.0), ("h200", 989.0, 67.0),
              ("a100", 312.0, 19.5), ("v100", 125.0, 15.7), ("tpu v5 lite", 197.0, None),
              ("tpu v5e", 197.0, None), ("tpu v5", 459.0, None), ("tpu v4", 275.0, None),
              ("tpu v3", 61.5, None))
OOM = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM")


def recipe_config(name: str, dtype: str, quick: bool):
  """The recipe's real config (`get_config()`), dtype set; --quick shrinks its model and images
  (the same recipe's code path, seconds to compile on a CPU)."""
  import importlib
  c = importlib.import_module(f"simclr_jax.configs.{name}").get_config()
  c.model.dtype = dtype
  if quick:
    c.model.width_multiplier = 1 / 16
    c.model.hidden_mlp, c.model.feat_dim, c.model.online_hidden = 32, 16, 16
    c.data.image_size = QUICK_SIZE[name]
    c.model.conv_impl = "xla"          # oneDNN's runs one device per process
  return c


# --- worker side (one process: JAX started with its devices) ------------------------------------

def run_step(recipe: str, dtype: str, per_device: int, args) -> dict:
  """One trial: train_step.measure_step of the recipe at `per_device` on every device, with the
  device's own memory high-water mark after it."""
  import jax
  c = recipe_config(recipe, dtype, args.quick)
  n = jax.device_count()
  c.train.batch_size = per_device * n
  c.model.remat = bool(args.remat)
  row = ts.measure_step(recipe, per_device * n, dtype, c.model.conv_impl, args.steps,
                        args.warmup, 0, config=c)
  stats = jax.devices()[0].memory_stats() or {}
  row.update(per_device_batch=per_device, device_peak_bytes=stats.get("peak_bytes_in_use"),
             device_bytes_limit=stats.get("bytes_limit"))
  return row


def next_trial(ok: int | None, bad: int | None, row: dict | None, cap: int) -> int | None:
  """The next per-device batch to try, or None when the largest that runs is found: double (or
  jump to what the compiled memory predicts fits the device's limit), else halve the gap."""
  if bad is not None:
    if ok is None:
      return bad // 2 or None
    gap = bad // ok
    return ok * 2 ** (gap.bit_length() // 2) if gap > 2 else None
  if ok >= cap:
    return None
  nxt = 2 * ok
  mem, limit = (row or {}).get("memory_bytes_per_device") or {}, (row or {}).get(
      "device_bytes_limit")
  if limit and mem.get("temp"):
    fits = int((0.9 * limit - (mem["peak"] - mem["temp"])) / (mem["temp"] / ok))
    while 2 * nxt <= min(fits, cap):
      nxt *= 2
  return min(nxt, cap)


def search(recipe: str, dtype: str, args) -> dict:
  """The step at the largest per-device batch that ran (its row), and every trial."""
  b, ok, bad, best, trials = args.start or START[recipe], None, None, None, []
  while b:
    print(f"  {recipe} {dtype} per-device batch {b} ...", file=sys.stderr, flush=True)
    try:
      row, ok = run_step(recipe, dtype, b, args), b
      best = row
      trials.append({"per_device_batch": b, "views_per_s": row["views_per_s"]})
    except Exception as e:  # noqa: BLE001 - out of memory ends the search; others are reported
      msg = " ".join(str(e).split())[:300]
      trials.append({"per_device_batch": b, "error": f"{type(e).__name__}: {msg}"})
      if not any(s in msg for s in OOM):
        break
      bad = b
    b = next_trial(ok, bad, best, args.max_batch)
  return dict(best or {"recipe": recipe, "dtype": dtype, "error": trials[-1]["error"]},
              trials=trials)


def equivalence(recipe: str, args) -> dict:
  """One step of the same state and batch on all N devices and on 1: max relative differences
  of the loss, the gradient norm, the parameter update and the BatchNorm statistics
  (N > 1 only). No warm-up: step 0 at the
  full rate, so that the parameters move."""
  import jax
  import numpy as np
  from simclr_jax import train
  from simclr_jax import state as state_lib
  n = jax.device_count()
  if n < 2:
    return {"devices": n, "skipped": "one device"}
  out = {}
  for m in (n, 1):
    c = recipe_config(recipe, "float32", args.quick)
    c.train.num_devices, c.train.batch_size, c.optim.warmup_epochs = m, 2 * n, 0.0
    setup = state_lib.build(c, 100 * c.train.batch_size)
    init_key, augment_key = state_lib.run_keys(c.seed)
    state = state_lib.init_state(setup, init_key)
    before = jax.device_get(state.params)
    rng = np.random.default_rng(0)
    shape = (2 * n, c.data.image_size, c.data.image_size, c.data.channels)
    host = {"image": rng.uniform(0, 1, shape).astype(np.float32),
            "label": rng.integers(0, 2, 2 * n), "id": np.arange(2 * n)}
    state, metrics = train.make_train_step(setup, augment_key)(
        state, train.device_batch(setup.mesh, host))
    update = jax.tree.map(lambda a, b: np.asarray(a) - b, jax.device_get(state.params), before)
    out[m] = jax.device_get((update, state.batch_stats, metrics))

  def rel(a, b):
    """|a - b| / |b| over a whole tree (norms): per-leaf ratios would blow up on leaves whose
    exact gradient is 0 (a bias before BatchNorm) and whose update is rounding noise."""
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
  (pn, sn, mn), (p1, s1, m1) = out[n], out[1]
  return {"recipe": recipe, "devices": n, "batch": 2 * n, "loss_n": float(mn["loss"]),
          "loss_1": float(m1["loss"]), "loss_rel": rel(mn["loss"], m1["loss"]),
          "grad_norm_rel": rel(mn["l2_grads"], m1["l2_grads"]),
          "update_rel": rel(pn, p1), "batch_stats_rel": rel(sn, s1)}


def versions() -> dict:
  """jax, jaxlib, the backend's own version string (it names CUDA on a GPU) and the driver."""
  import jax
  out = ts.host_info()
  out["platform_version"] = jax.devices()[0].client.platform_version
  smi = shutil.which("nvidia-smi")
  if smi:
    q = subprocess.run([smi, "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True, check=False)
    out["nvidia_smi"] = q.stdout.strip().splitlines()[:1]
  m = re.search(r"cuda[^\d]*(\d+(?:\.\d+)*)", out["platform_version"], re.I)
  out["cuda"] = m.group(1) if m else None
  return out


def run_worker(args) -> dict:
  """The tasks of --tasks: 'host', 'peaks', 'equiv:RECIPE', 'step:RECIPE:DTYPE'."""
  out = {}
  for task in args.tasks.split(","):
    kind, *rest = task.split(":")
    if kind == "host":
      out["host"] = versions()
    elif kind == "peaks":
      out["peaks"] = ts.matmul_peaks(args.matmul_size, 3)
    elif kind == "equiv":
      out["equivalence"] = equivalence(rest[0], args)
    else:
      out.setdefault("rows", []).append(search(rest[0], rest[1], args))
  return out


# --- the host pipeline (parent process: no JAX backend) -----------------------------------------

def jpeg_folder(root: str, n: int) -> None:
  """n JPEGs of ImageNet's typical size (about 400x350, varied), smooth fields plus noise, so
  that they compress like photographs (pure noise would decode several times slower)."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "n0"), exist_ok=True)
  for i in range(n):
    h, w = int(rng.integers(300, 420)), int(rng.integers(350, 500))
    small = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    x = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    x = np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)
    Image.fromarray(x).save(os.path.join(root, "n0", f"{i:05d}.JPEG"), quality=90)


def per_core(source, n: int) -> float:
  """Images/s of `source[i]` in this one process (decode is single-threaded: per core)."""
  source[0]
  t0 = time.perf_counter()
  for i in range(n):
    source[i % len(source)]
  return n / (time.perf_counter() - t0)


def host_pipeline(quick: bool) -> dict:
  from pipeline import make_sdoml_tree  # benchmarks/pipeline.py: SolarNet's layout, synthetic
  from simclr_jax.data.sources import FolderSource, SdomlSource
  n_jpeg, n_npz = (24, 6) if quick else (200, 40)
  with tempfile.TemporaryDirectory(prefix="accelerator_bench_") as tmp:
    jpeg_folder(os.path.join(tmp, "imagenet"), n_jpeg)
    make_sdoml_tree(os.path.join(tmp, "sdo"), n_npz)
    folder = FolderSource(os.path.join(tmp, "imagenet"), "train", 224, 3)
    sdo = SdomlSource(os.path.join(tmp, "sdo"), "train", 128, 1)
    return {"jpeg_224_per_core": per_core(folder, 2 * n_jpeg), "jpeg_images": n_jpeg,
            "sdo_npz_128_per_core": per_core(sdo, 2 * n_npz), "sdo_images": n_npz,
            "cpu_count": os.cpu_count()}


# --- parent: one process per search on an accelerator, one in all for --quick ------------------

def chip_peak(kind: str, dtype: str, measured: dict) -> tuple[float | None, str]:
  """(GFLOP/s, where from): the data sheet's dense peak of this chip, else the matmul here."""
  for key, bf16, fp32 in CHIP_PEAKS:
    if key in kind.lower():
      peak = bf16 if dtype == "bfloat16" else fp32
      if peak:
        return peak * 1e3, f"{key} data sheet"
  return measured.get(f"{dtype}_gflops"), "measured matmul"


def finish(result: dict) -> None:
  """FLOP/s shares and the cores per device, from the rows and the pipeline."""
  kind, n = result["host"]["device_kind"], result["host"]["device_count"]
  pipe = result["pipeline"]
  for r in result["rows"]:
    if "error" in r:
      continue
    r["views_per_s_per_device"] = r["views_per_s"] / n
    r["compiled_peak_bytes"] = (r.get("memory_bytes_per_device") or {}).get("peak")
    peak, src = chip_peak(kind, r["dtype"], result["peaks"])
    r["gflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e9 if r["flops_per_step"] else None
    r["peak_gflops_per_device"], r["peak_source"] = peak, src
    r["peak_share"] = (r["gflops_per_s"] / (peak * n) if peak and r["gflops_per_s"] else None)
    rate = {"imagenet": pipe["jpeg_224_per_core"], "sdo": pipe["sdo_npz_128_per_core"]}.get(
        r["recipe"])
    r["host_cores_per_device"] = r["views_per_s_per_device"] / 2 / rate if rate else None


def _f(x, spec=".1f") -> str:
  return "" if x is None else format(x, spec)


def _mib(b) -> str:
  return _f(b and b / 2**20, ".0f")


def table(result: dict) -> str:
  h, e, p = result["host"], result["equivalence"], result["pipeline"]
  lines = [f"Device: {h['device_count']} x {h['device_kind']} ({h['platform']}); jax "
           f"{h['jax']}, jaxlib {h['jaxlib']}, CUDA {h.get('cuda') or '-'}; {h['cpu_count']} "
           f"host CPUs.", "",
           "| recipe | dtype | batch/device | views/s | views/s/device | compile s "
           "| compiled peak MiB | device peak MiB | TFLOP/s | % of peak | host cores/device |",
           "|" + " --- |" * 11]
  for r in result["rows"]:
    if "error" in r:
      lines.append(f"| {r['recipe']} | {r['dtype']} | error: {r['error'][:100]} |" + " |" * 8)
      continue
    lines.append(
        f"| {r['recipe']} | {r['dtype']} | {r['per_device_batch']} | {r['views_per_s']:.1f} "
        f"| {r['views_per_s_per_device']:.1f} | {r['compile_s']:.1f} "
        f"| {_mib(r['compiled_peak_bytes'])} | {_mib(r['device_peak_bytes'])} "
        f"| {_f(r['gflops_per_s'] and r['gflops_per_s'] / 1e3, '.3g')} "
        f"| {_f(r['peak_share'] and 100 * r['peak_share'], '.1f')} ({r['peak_source']}) "
        f"| {_f(r['host_cores_per_device'], '.2f')} |")
  lines += ["", f"Host pipeline per core: JPEG decode + resize to 224 "
            f"{p['jpeg_224_per_core']:.0f} images/s; SDO npz 512 -> 128 "
            f"{p['sdo_npz_128_per_core']:.0f} images/s (host cores/device = views/s/device / 2 "
            "/ that rate)."]
  if "skipped" in e:
    lines.append(f"N-device = 1-device check: skipped ({e['skipped']}).")
  else:
    lines.append(f"N-device = 1-device check ({e['recipe']}, float32, batch {e['batch']}, "
                 f"{e['devices']} vs 1 device): max relative difference loss "
                 f"{e['loss_rel']:.1e}, gradient norm {e['grad_norm_rel']:.1e}, parameter update "
                 f"{e['update_rel']:.1e}, BatchNorm statistics {e['batch_stats_rel']:.1e}.")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="CPU check: 8 emulated devices, shrunk")
  p.add_argument("--recipes", default=",".join(RECIPES))
  p.add_argument("--dtypes", default=",".join(DTYPES))
  p.add_argument("--start", type=int, default=0, help="first per-device batch (0: per recipe)")
  p.add_argument("--max-batch", type=int, default=1024, help="largest per-device batch tried")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--remat", action="store_true", help="model.remat=True in every step")
  p.add_argument("--matmul-size", type=int, default=8192)
  p.add_argument("--timeout", type=float, default=900, help="seconds per process")
  p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
  p.add_argument("--tasks", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    args.start = args.max_batch = 2
    args.steps, args.warmup, args.matmul_size = 2, 1, 512
  if args.tasks:
    print(ts.MARK + json.dumps(run_worker(args)), flush=True)
    return

  from simclr_jax import startup
  t0 = time.perf_counter()
  cpu = startup.cpu_only()
  # A trial should find the device's memory, not the 75 % JAX preallocates by default.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  me = [sys.executable, os.path.abspath(__file__)] + (argv if argv is not None else sys.argv[1:])
  steps = [f"step:{r}:{d}" for r in args.recipes.split(",") for d in args.dtypes.split(",")]
  groups = ([["host", "peaks", "equiv:cifar10"] + steps] if args.quick
            else [["host", "peaks"], ["equiv:cifar10"]] + [[s] for s in steps])
  result, devices = {"args": vars(args), "rows": []}, "8" if (cpu and args.quick) else None
  for tasks in groups:
    print(f"[{time.perf_counter() - t0:.0f} s] {', '.join(tasks)}", file=sys.stderr, flush=True)
    w = ts._spawn(me + ["--tasks", ",".join(tasks)], devices, args.timeout)
    if "error" in w:
      w = {"rows": [{"recipe": t, "dtype": "", "error": w["error"]} for t in tasks]}
    result["rows"] += w.pop("rows", [])
    result.update(w)
  if "host" not in result:
    sys.exit(f"the worker failed: {result['rows'][0]['error']}")
  result.setdefault("equivalence", {"skipped": "its worker failed"})
  result["pipeline"] = host_pipeline(args.quick)
  finish(result)
  result["wall_s"] = time.perf_counter() - t0
  result["table"] = table(result)
  slug = re.sub(r"[^a-z0-9]+", "_", result["host"]["device_kind"].lower()).strip("_")
  path = os.path.join(args.out_dir, f"accelerator_{slug}")
  os.makedirs(args.out_dir, exist_ok=True)
  with open(path + ".json", "w") as f:
    json.dump(result, f, indent=2)
  with open(path + ".md", "w") as f:
    f.write(result["table"] + "\n")
  print(result["table"])
  print(f"wrote {path}.json and .md ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
  main()

"""Per-device memory of the train step from XLA's compiled memory analysis, without running it.

`compiled_memory(config, devices)` lowers and compiles `train.make_train_step` for abstract
inputs (shapes and shardings only: no state is initialised, no batch is read, nothing runs on
the devices) and returns XLA's figures per device: argument (the replicated train state and
this device's share of the batch), output, alias (outputs written into donated arguments:
the new state), temp (activations kept for the backward pass, gradients, workspace), generated
code, and peak = argument + output + temp - alias.

The device count of a mesh must exist in the process, and XLA:CPU's emulated devices are fixed
when JAX starts (`--xla_force_host_platform_device_count`), so `plan` runs one subprocess per
device count (`python -m simclr_jax.memory`, a JSON request on stdin, one `PLAN {...}` line per
row on stdout). A count the host's accelerators have is compiled there, by their compiler; any
other count is compiled by XLA:CPU on emulated devices. XLA:GPU fuses and assigns buffers
differently from XLA:CPU, so the CPU figures estimate an accelerator's (docs/memory.md has the
check against measured usage).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

FIELDS = ("argument", "output", "alias", "temp", "generated_code")
MARK = "PLAN "          # the prefix of a worker's result lines on stdout
HEADROOM = 0.10         # a card `fits` a plan when peak x (1 + HEADROOM) <= its memory


def analysis(compiled) -> dict | None:
  """XLA's memory analysis of a compiled step per device, in bytes (None where the backend
  gives none), with peak = argument + output + temp - alias: the donated state's buffers are
  reused for the new state, so they count once."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  out = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0) for k in FIELDS}
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def chunk_size_for(per_device_batch: int, chunk: int = 0, chunks: int = 0) -> int:
  """train.chunk_size (views per device per pass; 0 = one pass) from `chunk` itself or from
  `chunks` passes over the 2 x per-device views. ValueError, one line: one the step cannot
  take (odd, or not dividing the views)."""
  views = 2 * per_device_batch
  if chunk and chunks:
    raise ValueError("give --chunk (views per pass) or --chunks (passes), not both")
  if chunks:
    if chunks < 1 or views % chunks or (views // chunks) % 2:
      raise ValueError(f"--chunks={chunks}: the {views} views per device (2 x per-device batch "
                       f"{per_device_batch}) do not split into {chunks} even chunks")
    return 0 if chunks == 1 else views // chunks
  if chunk and (chunk < 0 or chunk % 2 or views % chunk):
    raise ValueError(f"--chunk={chunk}: not an even divisor of the {views} views per device "
                     f"(2 x per-device batch {per_device_batch})")
  return 0 if chunk == views else chunk


def check(batch: int, devices: int) -> int:
  """The per-device batch; ValueError, one line: a device count that does not divide `batch`."""
  if devices < 1 or batch < 1:
    raise ValueError(f"batch {batch} on {devices} devices: both must be positive")
  if batch % devices:
    raise ValueError(f"batch {batch} is not divisible by {devices} devices; use a multiple of "
                     f"{devices}")
  return batch // devices


def planned(config, batch: int, devices: int, remat: bool = False, chunk_size: int = 0,
            dtype: str | None = None, platform: str = "gpu"):
  """A copy of `config` for the plan: the batch, device count, remat and chunk options, the
  dtype ('auto' resolved for `platform`, the accelerator planned for), XLA's convolutions
  (what GPUs and TPUs run; oneDNN's custom calls hide their memory from the analysis) and no
  model.init_from (its file is not needed to know shapes)."""
  from simclr_jax.models import simclr
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.train.batch_size = batch
    c.train.num_devices = devices
    c.train.chunk_size = chunk_size
    c.model.remat = bool(remat)
    c.model.dtype = dtype or c.model.get("dtype", "float32")
    if c.model.dtype == "auto":
      c.model.dtype = simclr.auto_dtype(platform)
    c.model.conv_impl = "xla"
    c.model.init_from = ""
  return c


def abstract_inputs(setup, init_key):
  """(state, batch) as ShapeDtypeStructs with the step's shardings: `init_state` traced, not
  run (jax.eval_shape), and a batch of the config's images, labels and ids."""
  import jax
  import jax.numpy as jnp

  from simclr_jax import parallel
  from simclr_jax import state as state_lib
  rep, shard = parallel.replicated(setup.mesh), parallel.batch_sharded(setup.mesh)
  shapes = jax.eval_shape(lambda key: state_lib.init_state(setup, key), init_key)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)
  d, b = setup.config.data, setup.config.train.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels),
                                         jnp.float32, sharding=shard),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=shard),
           "id": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=shard)}
  return state, batch


def compiled_memory(config, devices: int, n_examples: int = 0) -> dict:
  """XLA's memory analysis (`analysis`) of `config`'s train step on the first `devices`
  devices of this process, plus the compiler and the seconds lower + compile took. Nothing
  runs on the devices. `n_examples` (default 100 batches) sets only the schedule's length."""
  from simclr_jax import state as state_lib
  from simclr_jax import train
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.num_devices = devices
  setup = state_lib.build(config, n_examples or 100 * config.train.batch_size)
  init_key, augment_key = state_lib.run_keys(config.seed)
  state, batch = abstract_inputs(setup, init_key)
  t0 = time.perf_counter()
  compiled = train.make_train_step(setup, augment_key).lower(state, batch).compile()
  seconds = time.perf_counter() - t0
  out = analysis(compiled) or {}
  return dict(out, compiler=compiler(devices), compile_s=round(seconds, 1))


def compiler(devices: int) -> str:
  """Which compiler's figures: 'XLA:CPU for N emulated devices' or 'XLA:GPU on N x <kind>'."""
  import jax
  d = jax.devices()[0]
  if d.platform == "cpu":
    return f"XLA:CPU for {devices} emulated device{'s' if devices > 1 else ''}"
  return f"XLA:{d.platform.upper()} on {devices} x {d.device_kind}"


# --- One process per device count ------------------------------------------------------------

def _row(config, job: dict, devices: int, n_examples: int, platform: str) -> dict:
  row = dict(job, devices=devices, per_device_batch=job["batch"] // devices)
  try:
    c = planned(config, job["batch"], devices, job.get("remat", False),
                job.get("chunk_size", 0), job.get("dtype"), platform)
    row["dtype"] = c.model.dtype
    row.update(compiled_memory(c, devices, n_examples))
  except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still compile
    row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
  return row


def worker(request: dict) -> None:
  """The rows of one device count (this process has its devices), printed as MARK lines."""
  import jax

  from simclr_jax.configs import default
  config = default.with_defaults(request["config"])
  platform = jax.default_backend()
  platform = "gpu" if platform == "cpu" else platform      # 'auto' as on the accelerator
  for job in request["jobs"]:
    print(MARK + json.dumps(_row(config, job, request["devices"], request["n_examples"],
                                 platform)), flush=True)


def accelerators() -> tuple[str, int]:
  """(platform, device count) of this host's accelerators, from a short subprocess (this
  process keeps JAX unstarted, so no GPU memory is taken here); ('cpu', 0) without any."""
  from simclr_jax import startup
  if startup.cpu_only():
    return "cpu", 0
  code = "import jax; print(jax.default_backend(), jax.device_count())"
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=False)
  try:
    platform, count = proc.stdout.split()[-2:]
    return (platform, int(count)) if platform != "cpu" else ("cpu", 0)
  except ValueError:
    return "cpu", 0


def _env(devices: int, emulate: bool) -> dict:
  """A worker's environment: `devices` emulated CPU devices (the caller's other XLA flags
  kept), or the host's accelerators with no memory preallocated (it only compiles)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                             env.get("XLA_FLAGS", "")).strip()
                      + f" --xla_force_host_platform_device_count={devices}").strip()
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  if emulate:
    env["JAX_PLATFORMS"] = "cpu"
  return env


def plan(config, jobs: dict[int, list[dict]], n_examples: int = 0,
         timeout: float | None = None, progress=None) -> list[dict]:
  """A row per job of each device count: `jobs` maps a device count to dicts of batch,
  remat, chunk_size, dtype. Each device count compiles in its own process (`worker`).
  `progress(line)` hears of each process as it starts."""
  platform, count = accelerators()
  request = {"config": json.loads(config.to_json_best_effort()), "n_examples": n_examples}
  rows = []
  for devices, todo in jobs.items():
    emulate = devices > count
    if progress:
      progress(f"{len(todo)} compile(s) on {devices} devices "
               f"({'XLA:CPU, emulated' if emulate else platform}) ...")
    proc = subprocess.run([sys.executable, "-m", "simclr_jax.memory"],
                          env=_env(devices, emulate),
                          input=json.dumps(dict(request, devices=devices, jobs=todo)),
                          capture_output=True, text=True, timeout=timeout, check=False)
    got = [json.loads(line[len(MARK):]) for line in proc.stdout.splitlines()
           if line.startswith(MARK)]
    if proc.returncode or len(got) < len(todo):
      tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-400:]
      got += [dict(job, devices=devices, per_device_batch=job["batch"] // devices,
                   error=f"worker exit {proc.returncode}: {tail}") for job in todo[len(got):]]
    rows += got
  return rows


def fits(peak: int, card_gib: float, headroom: float = HEADROOM) -> bool:
  return peak * (1 + headroom) <= card_gib * 2**30


# --- The table ---------------------------------------------------------------------------------

def _gib(x) -> str:
  """Two decimals; two significant digits below 0.1 GiB (a tiny config's rows)."""
  if x is None:
    return ""
  return f"{x / 2**30:.2f}" if x >= 0.1 * 2**30 else f"{x / 2**30:.2g}"


def options(row: dict) -> str:
  parts = ["remat"] if row.get("remat") else []
  if row.get("chunk_size"):
    passes = 2 * row["per_device_batch"] // row["chunk_size"]
    parts.append(f"{passes} chunks of {row['chunk_size']}")
  return " + ".join(parts) or "plain"


def table(recipe: str, rows: list[dict], cards: list[float], headroom: float) -> str:
  """The markdown table `simclr-jax plan` prints: a row per plan, its notes below."""
  fit_cols = [f"fits {c:g} GB" for c in cards]
  head = ["recipe", "batch", "devices", "per device", "options", "dtype", "argument GiB",
          "temp GiB", "peak GiB", *fit_cols]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in rows:
    cells = [recipe, r["batch"], r["devices"], r["per_device_batch"], options(r),
             r.get("dtype") or ""]
    if "error" in r:
      cells += [f"error: {r['error'][:120]}", "", ""] + [""] * len(cards)
    else:
      cells += [_gib(r.get("argument")), _gib(r.get("temp")), _gib(r.get("peak"))]
      cells += ["yes" if fits(r["peak"], c, headroom) else "no" for c in cards]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  compilers = list(dict.fromkeys(r["compiler"] for r in rows if "compiler" in r))
  lines += ["", f"Computed by {'; '.join(compilers) or 'no compiler (every row failed)'}, "
            "without running a step. Per device: peak = argument + output + temp - alias "
            f"(donated state); fits = peak x {1 + headroom:g} <= the card's GiB. XLA:CPU's "
            "figures estimate an accelerator's (docs/memory.md)."]
  if any(r.get("dtype") == "bfloat16" and "XLA:CPU" in r.get("compiler", "") for r in rows):
    lines.append("XLA:CPU has no bfloat16 convolution (it keeps float32 copies): its bfloat16 "
                 "figures overstate a GPU's; plan bfloat16 on the accelerator.")
  return "\n".join(lines)


if __name__ == "__main__":
  worker(json.loads(sys.stdin.read()))

"""simclr-jax plan: per-device memory of a recipe's train step, from XLA's compiled memory
analysis, without running a step (and without its data).

  simclr-jax plan --config imagenet --batch 4096 --devices 8,32,128 --compare --chunks 8
  simclr-jax plan --config imagenet --batch 512,1024,4096 --devices 1 --remat --chunks 8

For every global batch (--batch; default the config's) and device count (--devices) it
compiles the step (on the host's accelerators where it has that many, else by XLA:CPU on as
many emulated devices, one process per count) and prints argument, temporaries and peak
(argument + output + temp - donated alias) in GiB per device, and whether the peak plus
--headroom fits each card of --gpu_memory (GiB). --remat rematerialises each residual block;
--chunk N (views per device per pass) or --chunks K (K passes over the 2 x per-device views)
sets train.chunk_size; --compare prints plain, remat and (with --chunk/--chunks) remat +
chunks. --config.<field>=value overrides any field. docs/memory.md: what the figures mean,
their caveats, and the tables for the imagenet and sdo recipes.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from simclr_jax import configs, validate
from simclr_jax.cli import shared

_CONFIG = shared.define_config_file()
_BATCH = flags.DEFINE_list("batch", [], "Global batch sizes, comma-separated (default: the "
                           "config's train.batch_size).")
_DEVICES = flags.DEFINE_list("devices", ["1"], "Device counts, comma-separated.")
_REMAT = flags.DEFINE_bool("remat", False, "model.remat: recompute each residual block's "
                           "activations in the backward pass.")
_CHUNK = flags.DEFINE_integer("chunk", 0, "train.chunk_size: views per device per pass (even, "
                              "dividing 2 x the per-device batch); 0 = one pass.")
_CHUNKS = flags.DEFINE_integer("chunks", 0, "Passes: train.chunk_size = 2 x per-device batch "
                               "/ K.")
_COMPARE = flags.DEFINE_bool("compare", False, "Rows for plain, remat and, with --chunk or "
                             "--chunks, remat + chunks (--remat is then ignored).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "auto"], "model.dtype "
                           "(default: the config's; auto = bfloat16, as on GPU/TPU).")
_GPU_MEMORY = flags.DEFINE_list("gpu_memory", ["16", "80"], "Card sizes in GiB for the "
                                "`fits` columns.")
_HEADROOM = flags.DEFINE_float("headroom", 0.10, "A card fits when peak x (1 + headroom) <= "
                               "its memory.")
_N_EXAMPLES = flags.DEFINE_integer("n_examples", 0, "Training examples (the schedule's length "
                                   "only; default 100 x the batch).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")


def _ints(flag, minimum: int = 1) -> list[int]:
  try:
    values = [int(v) for v in flag.value]
  except ValueError:
    values = []
  if not values or min(values) < minimum:
    raise validate.ConfigError(f"--{flag.name}={','.join(flag.value)}: expected integers >= "
                               f"{minimum}, comma-separated")
  return values


def _cards() -> list[float]:
  try:
    return [float(v) for v in _GPU_MEMORY.value]
  except ValueError:
    raise validate.ConfigError(f"--gpu_memory={','.join(_GPU_MEMORY.value)}: expected GiB, "
                               "comma-separated (e.g. 16,80)") from None


def jobs(batches: list[int], device_counts: list[int]) -> dict[int, list[dict]]:
  """Device count -> the compiles it runs, each (batch, remat, chunk_size, dtype); every
  batch, device count and chunk checked first (validate.ConfigError: one line)."""
  from simclr_jax import memory
  chunked = bool(_CHUNK.value or _CHUNKS.value)
  if _COMPARE.value:
    variants = [(False, False), (True, False)] + ([(True, True)] if chunked else [])
  else:
    variants = [(_REMAT.value, chunked)]
  out = {}
  for n in device_counts:
    out[n] = []
    for b in batches:
      try:
        per_device = memory.check(b, n)
        chunk = memory.chunk_size_for(per_device, _CHUNK.value, _CHUNKS.value)
      except ValueError as e:
        raise validate.ConfigError(str(e)) from None
      out[n] += [{"batch": b, "remat": remat, "chunk_size": chunk if chunks else 0,
                  "dtype": _DTYPE.value} for remat, chunks in variants]
  return out


def main(argv):
  shared.no_extra_args(argv)
  from simclr_jax import memory
  config = _CONFIG.value
  recipe = configs.run_name(flags.FLAGS["config"].serialize().split("=", 1)[-1])
  batches = _ints(_BATCH) if _BATCH.value else [int(config.train.batch_size)]
  device_counts = _ints(_DEVICES)
  cards = _cards()
  todo = jobs(batches, device_counts)
  n_examples = _N_EXAMPLES.value
  rows = memory.plan(config, todo, n_examples=n_examples,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
  print(memory.table(recipe, rows, cards, _HEADROOM.value), flush=True)
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump({"recipe": recipe, "cards_gib": cards, "headroom": _HEADROOM.value,
                 "rows": rows}, f, indent=2)
    print(f"wrote {_JSON.value}", flush=True)
  return 1 if any("error" in r for r in rows) else 0


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)

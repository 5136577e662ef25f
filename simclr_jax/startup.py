"""Start-up of a process, before its first JAX computation: what the runs (simclr_jax/api.py:
pretrain, linear_eval, finetune) and the benchmarks set up from a config, in one place.

`start(config)`, in the order JAX needs:
1. the persistent compilation cache (`use_compilation_cache`);
2. model.dtype='auto' resolved (`resolve_dtype`): bfloat16 on GPU/TPU, float32 on CPU, written
   into the config and logged (`model.dtype: bfloat16 (auto, backend gpu)`);
3. the convolution path: model.conv_impl ('auto', 'onednn' or 'xla') decided by
   `models.onednn.resolve_conv_impl`, written into the config as 'onednn' or 'xla' (the model,
   the saved config.json and the report read that), and logged with its reason: `conv: onednn`,
   `conv: xla (backend gpu)`, `conv: xla (model.dtype bfloat16)`, `conv: xla (oneDNN
   convolutions unavailable: no C++ compiler ...)`. An explicit 'onednn' that cannot run here
   is a one-line ValueError;
4. the CPU devices (`cpu_devices_for`): one per process for oneDNN's convolutions (they thread
   over every core themselves), else emulated XLA devices by the batch (`cpu_device_count`);
5. with `multi_host=True`, the multi-host start (simclr_jax/distributed.py).

The CPU device count and the multi-host start must both precede the start of JAX's backends,
while the dtype and the convolution path depend on the backend. Where the backend is known
without starting it (`cpu_only`: JAX told to use the CPU, or no accelerator plugin installed)
they are resolved first, so the device count follows it; elsewhere (a GPU or TPU host) it is resolved
last, from the started backend, and oneDNN's handlers are never built there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil

import jax
from absl import logging

from simclr_jax import distributed
from simclr_jax.cache import user_cache_dir

# Emulated XLA CPU devices: the batch is split over them (shard_map, with BatchNorm statistics
# and NT-Xent negatives from all of them, so the step computes the same thing on any count).
# XLA:CPU's convolutions run faster on small per-device batches than on one large batch per
# core (a ResNet-18 CIFAR step at batch 256: 16 devices 1.6x the rate of 2 on 2 cores), but
# too small a one costs more than it gains (a ResNet-50 at 128x128, batch 32: 16 devices ran
# at 0.8x of 2); benchmarks/README.md has the rates.
MAX_CPU_DEVICES_PER_CORE = 8
MIN_CPU_BATCH_PER_DEVICE = 16


def cpu_device_count(batch_size: int | None = None, processes: int = 1,
                     cores: int | None = None) -> int:
  """CPU devices for a batch of `batch_size` split over `processes`: the largest count, at
  least one per core and at most MAX_CPU_DEVICES_PER_CORE per core, that divides the
  per-process batch into shares of MIN_CPU_BATCH_PER_DEVICE or more; else the largest divisor
  up to one per core. One per core without a batch (or when the processes do not divide it:
  the batch check then names the problem)."""
  cores = cores or os.cpu_count() or 1
  if not batch_size or batch_size % processes:
    return cores
  local = batch_size // processes
  divisors = [n for n in range(1, min(local, MAX_CPU_DEVICES_PER_CORE * cores) + 1)
              if local % n == 0]
  many = [n for n in divisors if n >= cores and local // n >= MIN_CPU_BATCH_PER_DEVICE]
  return max(many) if many else max(n for n in divisors if n <= cores)


def use_all_cpu_cores(num_devices: int | None = None, batch_size: int | None = None,
                      processes: int = 1) -> None:
  """The CPU devices (call before the first JAX operation; accelerators are unaffected):
  `num_devices` emulated XLA devices, else `cpu_device_count(batch_size, processes)`. An
  explicit XLA_FLAGS device count or JAX_NUM_CPU_DEVICES set by the user wins.
  """
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or os.environ.get("JAX_NUM_CPU_DEVICES")):
    return
  n = num_devices or cpu_device_count(batch_size, processes)
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # backends already initialised (e.g. inside tests): keep what exists
    pass


def _accelerator_plugins() -> list[str]:
  """The accelerator plugins JAX would load (PJRT plugins: the `jax_plugins` namespace package
  and entry points, as jax finds them; libtpu), found without loading them."""
  names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
  try:
    import jax_plugins  # pylint: disable=import-outside-toplevel
    names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  if importlib.util.find_spec("libtpu") is not None:
    names.append("libtpu")
  return names


def cpu_only() -> bool:
  """Whether this process computes on the CPU, known without starting JAX's backends: the
  first of JAX_PLATFORMS (jax.config's jax_platforms) when set, else no accelerator plugin
  installed. False where an accelerator may be present: only the started backend tells."""
  platforms = (jax.config.jax_platforms or "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not _accelerator_plugins()


def resolve_dtype(config, platform: str | None = None) -> str:
  """model.dtype, with 'auto' resolved for `platform` (default: the started backend) by
  `models.simclr.auto_dtype`, written into `config` and logged; returns the name."""
  from simclr_jax.models import simclr
  name = config.model.get("dtype", "float32")
  if name == "auto":
    platform = platform or jax.default_backend()
    name = simclr.auto_dtype(platform)
    config.model.dtype = name
    logging.info("model.dtype: %s (auto, backend %s)", name, platform)
  return name


def conv_path(model_cfg, platform: str | None = None) -> tuple[str, str]:
  """('onednn' | 'xla', why) for a config's `model` group on `platform` (default: the started
  backend): `models.onednn.resolve_conv_impl` of its conv_impl and dtype. A config written
  before the field existed ran XLA's convolution."""
  from simclr_jax.models import onednn, simclr
  dtype = model_cfg.get("dtype", "float32")
  if dtype == "auto":
    dtype = simclr.auto_dtype(platform)
  return onednn.resolve_conv_impl(model_cfg.get("conv_impl", "xla"), dtype, platform)


def resolve_conv(config, platform: str | None = None) -> str:
  """model.conv_impl resolved (`conv_path`), written into `config` as 'onednn' or 'xla' and
  logged with its reason; returns it. ValueError: an explicit 'onednn' that cannot run here."""
  from simclr_jax.models import onednn
  impl, why = conv_path(config.model, platform)
  if config.model.get("conv_impl") != impl:
    with config.model.unlocked():      # unlocked: a config from before the field gets it
      config.model.conv_impl = impl
  logging.info(onednn.describe(impl, why))
  return impl


def cpu_devices_for(config) -> int:
  """The CPU device count a run of `config` starts: train.num_devices when set; one per
  process when the convolutions run by oneDNN, which threads each one over all cores itself
  (emulated devices would run concurrent calls that split the cores: measured slower); else
  `cpu_device_count` of the per-process share of train.batch_size (the process count as the
  config or the JAX_NUM_PROCESSES variable gives it). Off a `cpu_only` host the convolution
  path is not resolved here (nothing is built): its CPU devices run no model."""
  if int(config.train.num_devices):
    return int(config.train.num_devices)
  if cpu_only() and conv_path(config.model, "cpu")[0] == "onednn":
    return 1
  processes = distributed.distributed_settings(config).get("num_processes", 1)
  return cpu_device_count(int(config.train.batch_size), processes)


def use_cpu_path_for(config) -> None:
  """`use_all_cpu_cores` with `cpu_devices_for(config)` devices (before the first JAX op)."""
  use_all_cpu_cores(cpu_devices_for(config))


def use_compilation_cache(path: str | None = None) -> str:
  """JAX's persistent compilation cache, so that a second start of the same config (a resume, a
  sweep point, an evaluation script) loads its executables instead of compiling them again.

  The directory: `path`, else one the user set (JAX_COMPILATION_CACHE_DIR or
  jax.config), else `$XDG_CACHE_HOME/simclr_jax/xla` (default ~/.cache/simclr_jax/xla);
  SIMCLR_JAX_COMPILATION_CACHE=0 turns it off. Returns the directory ('' when off). XLA keys
  every entry by the program, the backend, its flags and the jax version, so a changed
  setting compiles anew.
  """
  if os.environ.get("SIMCLR_JAX_COMPILATION_CACHE", "1") == "0":
    return ""
  path = path or jax.config.jax_compilation_cache_dir or user_cache_dir("xla")
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def start(config, multi_host: bool = False) -> str:
  """The start-up of a run of `config` (the module docstring); returns the convolution path
  written into config.model.conv_impl. ValueError: a config that cannot start (an explicit
  'onednn' that cannot run here, an incomplete multi-host setting), before anything runs."""
  use_compilation_cache()
  known = cpu_only()
  if known:
    resolve_dtype(config, "cpu")
    resolve_conv(config, "cpu")       # first: the device count follows the path
  use_cpu_path_for(config)
  if multi_host:
    distributed.initialize_distributed(config)
  if not known:
    resolve_dtype(config)             # from the started backend
    resolve_conv(config)
  return config.model.conv_impl

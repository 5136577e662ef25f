"""Devices and shardings: one 1-D mesh with axis 'data' over every device of every process.

The batch is sharded along 'data'; parameters and optimizer state are replicated. Code that
needs collectives (global BatchNorm, NT-Xent with negatives from every device) runs under
`jax.shard_map` on this mesh, so one code path serves 1 CPU, N GPUs, a TPU slice and many hosts.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


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
  """The default CPU path (call before the first JAX operation; accelerators are unaffected):
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


def cpu_devices_for(config) -> int:
  """The CPU device count the scripts start for a run of `config`: train.num_devices when set;
  one per process when the convolutions run by oneDNN, which threads each one over all cores
  itself (emulated devices would run concurrent calls that split the cores: measured slower);
  else `cpu_device_count` of the per-process share of train.batch_size (the process count as
  the config or the JAX_NUM_PROCESSES variable gives it)."""
  from simclr_jax import distributed
  from simclr_jax.models import simclr as simclr_model
  if int(config.train.num_devices):
    return int(config.train.num_devices)
  if simclr_model.conv_impl(config.model, platform="cpu") == "onednn":
    return 1
  processes = distributed.distributed_settings(config).get("num_processes", 1)
  return cpu_device_count(int(config.train.batch_size), processes)


def use_cpu_path_for(config) -> None:
  """`use_all_cpu_cores` with `cpu_devices_for(config)` devices (before the first JAX op)."""
  use_all_cpu_cores(cpu_devices_for(config))


def user_cache_dir(name: str) -> str:
  """`$XDG_CACHE_HOME/simclr_jax/<name>` (default ~/.cache/simclr_jax/<name>)."""
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache_home, "simclr_jax", name)


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


def make_mesh(num_devices: int = 0) -> Mesh:
  """Mesh('data') over all devices (or the first `num_devices` of a single process).

  Built from an explicit device array, not jax.make_mesh: its default Explicit axis types
  reject the NT-Xent logits matmul (ShardingTypeError).
  """
  devices = jax.devices()
  if num_devices:
    if jax.process_count() > 1:
      raise ValueError("train.num_devices must be 0 (all devices) in a multi-process run")
    if num_devices > len(devices):
      raise ValueError(f"train.num_devices={num_devices} but only {len(devices)} devices exist")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Refuse a global batch the device count does not divide, before anything compiles."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"train.batch_size={global_batch_size} is not divisible by the number of "
                     f"devices ({n}); use a multiple of {n}")


def host_to_global(mesh: Mesh, local_batch):
  """Process-local numpy batch (leading axis = this process's rows) -> global sharded arrays."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


# Multi-host start-up lives in simclr_jax/distributed.py; these names stay here for one release.
from simclr_jax.distributed import (  # noqa: E402,F401
    detect_cluster, distributed_settings, initialize_distributed)

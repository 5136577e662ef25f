"""Devices and shardings: one 1-D mesh with axis 'data' over every device of every process.

The batch is sharded along 'data'; parameters and optimizer state are replicated. Code that
needs collectives (global BatchNorm, NT-Xent with negatives from every device) runs under
`jax.shard_map` on this mesh, so one code path serves 1 CPU, N GPUs, a TPU slice and many hosts.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def use_all_cpu_cores(num_devices: int | None = None) -> None:
  """On a CPU-only host, emulate one XLA device per core (call before the first JAX operation).

  One CPU device runs a convolution on ~1.6 cores only; sharding the batch over one device per
  core nearly doubles throughput here (STACK.md trap 4). Accelerator backends are unaffected.
  An explicit XLA_FLAGS device count or JAX_NUM_CPU_DEVICES set by the user wins.
  """
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or os.environ.get("JAX_NUM_CPU_DEVICES")):
    return
  n = num_devices or os.cpu_count() or 1
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # backends already initialised (e.g. inside tests): keep what exists
    pass


def make_mesh(num_devices: int = 0) -> Mesh:
  """Mesh('data') over all devices (or the first `num_devices` of a single process).

  Built from an explicit device array, not jax.make_mesh, whose Explicit axis types reject
  the NT-Xent logits matmul (STACK.md trap 2).
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


# The environment variables of an explicit multi-host start (as jax.distributed reads them).
_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID", "local_device_ids": "JAX_LOCAL_DEVICE_IDS"}


def _device_ids(value) -> list[int] | None:
  """None | 3 | (0, 1) | "0,1" -> list of ints (None or empty: every local device)."""
  if value is None or value == "" or value == ():
    return None
  if isinstance(value, int):
    return [value]
  if isinstance(value, str):
    return [int(v) for v in value.replace(" ", "").strip("()[]").split(",") if v]
  return [int(v) for v in value]


def distributed_settings(config=None, environ=None) -> dict:
  """The explicit multi-host settings: `config.distributed.*` where set, else the JAX_* variables.

  Unset fields are left out (jax.distributed then fills them from a detected cluster).
  """
  environ = os.environ if environ is None else environ
  d = config.get("distributed") if config is not None else None
  d = d if d is not None else {}
  out = {}
  if d.get("coordinator_address"):
    out["coordinator_address"] = str(d["coordinator_address"])
  if (d.get("num_processes") or 0) > 0:
    out["num_processes"] = int(d["num_processes"])
  if d.get("process_id") is not None and d["process_id"] >= 0:
    out["process_id"] = int(d["process_id"])
  if _device_ids(d.get("local_device_ids")) is not None:
    out["local_device_ids"] = _device_ids(d["local_device_ids"])
  for key, var in _ENV.items():
    if key not in out and environ.get(var, "").strip():
      value = environ[var].strip()
      out[key] = (value if key == "coordinator_address" else
                  _device_ids(value) if key == "local_device_ids" else int(value))
  return out


def detect_cluster():
  """The cluster environment `jax.distributed.initialize()` would auto-detect, or None.

  SLURM (srun), Open MPI (mpirun), Cloud TPU VMs of a multi-host slice, GKE TPU / Kubernetes
  JobSets: JAX's own detectors, so the answer is exactly what a bare initialize() would use
  (mpi4py is opt-in in JAX and is not tried here either).
  """
  try:  # private API (jax 0.10): the list jax.distributed.initialize() itself walks
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    registered = clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # moved: look at the variables ourselves
    return _detect_cluster_from_variables()
  candidates = [env for env in registered if not getattr(env, "opt_in_only_method", False)]
  for env in candidates:
    try:
      if env.is_env_present():
        return env
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("cluster detection %s failed: %s", env.__name__, e)
  return None


def _detect_cluster_from_variables():
  if all(v in os.environ for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                   "SLURM_PROCID", "SLURM_LOCALID")):
    return "SLURM"
  if "OMPI_MCA_orte_hnp_uri" in os.environ:
    return "Open MPI"
  if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "TPU"
  return None


def _cluster_process_count(env) -> int | None:
  try:
    return int(env.get_process_count())
  except Exception:  # pylint: disable=broad-except  (string fallback, API calls that fail)
    return None


def initialize_distributed(config=None) -> bool:
  """Multi-host start; call once per process, before the first JAX computation.

  In this order:
  1. explicit settings, `--config.distributed.*` (coordinator_address, num_processes,
     process_id, local_device_ids) or else JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
     JAX_PROCESS_ID, JAX_LOCAL_DEVICE_IDS: `jax.distributed.initialize` with them (whatever
     is left unset, jax takes from a detected cluster environment, or refuses, naming it);
  2. else a cluster environment JAX auto-detects (SLURM, Open MPI, multi-host Cloud TPU, GKE,
     see `detect_cluster`) with more than one process: `jax.distributed.initialize()`. A
     one-process job (e.g. `sbatch` without `srun`) is left alone: initialising it would only
     narrow the visible GPUs to the task's local id;
  3. else (one plain host) nothing.
  Returns whether the distributed runtime is up. Afterwards `jax.devices()` lists the devices
  of every process and `make_mesh()` spans them all.
  """
  if jax.distributed.is_initialized():
    return True
  settings = distributed_settings(config)
  device_ids = settings.pop("local_device_ids", None)
  env = detect_cluster()
  if settings:
    missing = [k for k in _ENV if k != "local_device_ids" and k not in settings]
    if missing and env is None:
      raise ValueError(
          f"multi-host start with {settings} needs "
          + " and ".join(f"distributed.{k} (or {_ENV[k]})" for k in missing)
          + " too, on every process (no cluster environment to take them from)")
  elif env is None:
    if device_ids is not None:
      logging.warning("distributed.local_device_ids=%s ignored: no multi-host start", device_ids)
    return False
  else:
    name = getattr(env, "__name__", env)
    if not isinstance(env, str) and _cluster_process_count(env) == 1:
      logging.info("%s environment with a single process: no distributed start", name)
      return False
    logging.info("%s environment detected", name)
  if device_ids is not None:
    settings["local_device_ids"] = device_ids
  logging.info("jax.distributed.initialize(%s)",
               ", ".join(f"{k}={v!r}" for k, v in settings.items()))
  jax.distributed.initialize(**settings)
  logging.info("process %d of %d; %d local devices, %d in all", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True

"""Multi-host start-up: `jax.distributed.initialize` from the config, the JAX_* variables or
the cluster environment (public JAX API only), before the first JAX computation."""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging


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


@dataclasses.dataclass(frozen=True)
class Cluster:
  """A cluster environment found in the variables, and its process count (None: unknown)."""
  name: str
  process_count: int | None


def _int(value) -> int | None:
  try:
    return int(value)
  except (TypeError, ValueError):
    return None


def detect_cluster(environ=None) -> Cluster | None:
  """The cluster environment `jax.distributed.initialize()` would auto-detect, or None.

  Read from the variables its detectors read: SLURM under srun (SLURM_JOB_ID,
  SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), Open MPI under mpirun
  (OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE), TPU slices and GKE TPU pods
  (TPU_WORKER_HOSTNAMES, one name per host; MEGASCALE_COORDINATOR_ADDRESS for multislice).
  A Cloud TPU VM that sets none of these (JAX would ask the metadata server) is not seen: set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID there, or call
  `jax.distributed.initialize()` yourself before `pretrain`.
  """
  env = os.environ if environ is None else environ
  if all(v in env for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                            "SLURM_PROCID", "SLURM_LOCALID")):
    return Cluster("SLURM", _int(env["SLURM_NTASKS"]))
  if "OMPI_MCA_orte_hnp_uri" in env:
    return Cluster("Open MPI", _int(env.get("OMPI_COMM_WORLD_SIZE")))
  if env.get("TPU_WORKER_HOSTNAMES", "").strip():
    hosts = [h for h in env["TPU_WORKER_HOSTNAMES"].split(",") if h.strip()]
    return Cluster("TPU", len(hosts))
  if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return Cluster("TPU multislice", None)
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
    if env.process_count == 1:
      logging.info("%s environment with a single process: no distributed start", env.name)
      return False
    logging.info("%s environment detected", env.name)
  if device_ids is not None:
    settings["local_device_ids"] = device_ids
  logging.info("jax.distributed.initialize(%s)",
               ", ".join(f"{k}={v!r}" for k, v in settings.items()))
  jax.distributed.initialize(**settings)
  logging.info("process %d of %d; %d local devices, %d in all", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True

"""Devices and shardings: one 1-D mesh with axis 'data' over every device of every process.

The batch is sharded along 'data'; parameters and optimizer state are replicated. Code that
needs collectives (global BatchNorm, NT-Xent with negatives from every device) runs under
`jax.shard_map` on this mesh, so one code path serves 1 CPU, N GPUs, a TPU slice and many hosts.
How many CPU devices a process starts, and the multi-host start: simclr_jax/startup.py and
simclr_jax/distributed.py.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


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


def check_chunk_size(chunk_size: int, global_batch_size: int, devices: int) -> None:
  """Refuse a chunk size that does not split each device's views into whole chunks of image
  pairs, before anything compiles."""
  if not chunk_size:
    return
  views = 2 * (global_batch_size // devices)
  if chunk_size % 2 or views % chunk_size:
    divisors = [c for c in range(2, views + 1, 2) if views % c == 0]
    raise ValueError(
        f"train.chunk_size={chunk_size}: expected an even number of views that divides the "
        f"{views} views per device (train.batch_size={global_batch_size} on {devices} devices, "
        f"2 views per image), e.g. {', '.join(map(str, divisors[:8]))}; 0 = one pass")


def host_to_global(mesh: Mesh, local_batch):
  """Process-local numpy batch (leading axis = this process's rows) -> global sharded arrays."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)

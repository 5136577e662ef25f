"""orbax CheckpointManager holding the train state and the grain iterator state together.

One checkpoint = one step: `state` (params, batch_stats, optimizer state, step) and `data_iter`
(where the input pipeline stands), so a resumed run sees exactly the batches an uninterrupted
run would have seen. Every process takes part in saving (orbax saves only global
jax.Arrays, and the collective save hangs if a process stays out).
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, checkpoint_every: int, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=max(1, checkpoint_every), create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options, item_names=("state", "data_iter"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None, *, force=False) -> bool:
  """Saves when `step` is on the cadence (or `force`); returns whether a save started."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def abstract(state):
  """Shape/dtype/sharding template of `state`, so restored arrays land where `state`'s live."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def restore(manager: ocp.CheckpointManager, state_template, data_iter=None, step=None):
  """Restores `step` (default: latest) into `state_template`'s structure and shardings.

  `data_iter`, when given, is set in place to the saved position. Returns (state, step).
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  items = {"state": ocp.args.StandardRestore(abstract(state_template))}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], step

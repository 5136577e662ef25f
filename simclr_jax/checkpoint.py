"""orbax CheckpointManager holding the train state and the grain iterator state together.

One checkpoint = one step: `state` (params, batch_stats, optimizer state, step) and `data_iter`
(where the input pipeline stands), so a resumed run sees exactly the batches an uninterrupted
run would have seen. Every process takes part in saving (orbax saves only global
jax.Arrays, and the collective save hangs if a process stays out).

Paths go through `etils.epath`, so a workdir may be anything orbax accepts (a local directory,
`gs://bucket/run`). A save killed midway leaves an orbax tmp directory (`<step>.orbax-
checkpoint-tmp-*`), which orbax never lists as a step (and `make_manager(cleanup=True)`
removes). A finished step that does not restore (a truncated or corrupt file) is caught by
`restore_latest`: it warns, moves that step aside to `workdir/checkpoints_corrupt/` and
restores the previous one.
"""

from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

CHECKPOINTS = "checkpoints"
CORRUPT = "checkpoints_corrupt"


def workdir_path(workdir) -> epath.Path:
  """`workdir` as an epath.Path; local paths made absolute (orbax wants absolute paths)."""
  path = epath.Path(workdir)
  return path if "://" in str(workdir) else path.absolute()


def make_manager(workdir, checkpoint_every: int, keep: int,
                 cleanup: bool = False) -> ocp.CheckpointManager:
  """The run's manager of `workdir/checkpoints`. `cleanup=True` (the training run only, not a
  reader that may run beside it) deletes the tmp directories of saves that never finished."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=max(1, checkpoint_every), create=True,
      cleanup_tmp_directories=cleanup)
  return ocp.CheckpointManager(workdir_path(workdir) / CHECKPOINTS, options=options,
                               item_names=("state", "data_iter"))


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


def _move_aside(manager: ocp.CheckpointManager, steps) -> None:
  """Moves step directories to `<workdir>/checkpoints_corrupt/` (kept, not deleted: they may
  still be of use to someone), then makes every process's manager forget them."""
  if jax.process_index() == 0:
    corrupt = epath.Path(manager.directory).parent / CORRUPT
    corrupt.mkdir(parents=True, exist_ok=True)
    for step in steps:
      src = epath.Path(manager.directory) / str(step)
      dst, n = corrupt / str(step), 1
      while dst.exists():
        dst, n = corrupt / f"{step}.{n}", n + 1
      src.rename(dst)
      logging.warning("moved the unreadable checkpoint %s to %s", src, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("simclr_jax.checkpoint._move_aside")
  manager.reload()


def restore_latest(manager: ocp.CheckpointManager, state_template, data_iter=None):
  """Restores the newest step that restores; returns (state, step).

  A step that fails (a file truncated or corrupted after orbax finished it) is skipped with a
  warning, and the previous one tried. Once one restores, the newer failed ones are moved aside
  (so the run goes on and later saves of those step numbers do not collide). When none
  restores, nothing is moved and the newest step's error is raised: that is what a state of
  another structure (another model or optimizer) gives, not a corrupt file.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  failed, first_error = [], None
  for step in steps:
    try:
      state, step = restore(manager, state_template, data_iter, step)
    except Exception as e:  # noqa: BLE001  orbax/tensorstore/json raise many kinds
      first_error = first_error or e
      failed.append(step)
      logging.warning("checkpoint step %d in %s does not restore (%s: %s); trying the previous "
                      "one", step, manager.directory, type(e).__name__,
                      str(e).splitlines()[0][:300] if str(e) else "")
      continue
    if failed:
      logging.warning("resuming from step %d instead of %d: the newer checkpoint(s) %s could "
                      "not be read", step, failed[0], failed)
      _move_aside(manager, failed)
    return state, step
  raise first_error

"""orbax CheckpointManagers of a run: its latest steps, its best step, and the restores.

The latest steps (`make_manager`, `workdir/checkpoints/`) hold the train state and the grain
iterator state together; the best step (`make_best_manager`, `workdir/checkpoints_best/`)
holds the train state alone. Readers (probes, fine-tuning, export) restore the parameters and
BatchNorm statistics of one of them, the optimizer state left on disk: `restore_for_eval`.

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

from simclr_jax import workdir as workdir_lib


def make_manager(workdir, checkpoint_every: int, keep: int,
                 cleanup: bool = False) -> ocp.CheckpointManager:
  """The run's manager of `workdir/checkpoints`. `cleanup=True` (the training run only, not a
  reader that may run beside it) deletes the tmp directories of saves that never finished."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=max(1, checkpoint_every), create=True,
      cleanup_tmp_directories=cleanup)
  return ocp.CheckpointManager(workdir_lib.path(workdir) / workdir_lib.CHECKPOINTS,
                               options=options,
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
    corrupt = epath.Path(manager.directory).parent / workdir_lib.CORRUPT
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


# ---------------------------------------------------------------------------------------------
# The best checkpoint, and the one readers restore.
# ---------------------------------------------------------------------------------------------

def make_best_manager(workdir, metric: str, mode: str) -> ocp.CheckpointManager:
  """`workdir/checkpoints_best`: the one step of the best `metric` ('max' or 'min')."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: float(m[metric]),
                                         best_mode=mode, create=True)
  return ocp.CheckpointManager(workdir_lib.path(workdir) / workdir_lib.BEST_DIR,
                               options=options, item_names=("state",))


def save_best(manager: ocp.CheckpointManager, step: int, state, metrics: dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
               metrics={k: float(v) for k, v in metrics.items()}, force=True)


def restore_for_eval(workdir, which, template):
  """(variables, step, 'best'|'latest'|'step'): the part of a saved train state that
  `template` names (e.g. params and batch_stats; the optimizer state is not read), of the
  checkpoint `which` (`eval.checkpoint`) chooses.

  'best' falls back to the latest checkpoint (logged) when the run kept no best one (no
  monitored metric); 'latest' is the last saved step; an integer (or digits) is that step.
  `template`: a tree of jax.ShapeDtypeStruct (with shardings) the restored arrays take.
  """
  which = str(which).strip()
  best_dir = workdir_lib.path(workdir) / workdir_lib.BEST_DIR
  if which == "best" and workdir_lib.steps(best_dir):
    manager = ocp.CheckpointManager(best_dir, item_names=("state",))
    kind = "best"
  elif which in ("best", "latest") or which.isdigit():
    if which == "best":
      logging.info("no best checkpoint in %s (no monitored metric): using the latest", workdir)
    manager = make_manager(workdir, 1, 1)
    kind = "latest" if not which.isdigit() else "step"
  else:
    raise ValueError(f"eval.checkpoint={which!r}: expected 'best', 'latest' or a step number")
  try:
    if kind == "step":
      step = int(which)
      if step not in manager.all_steps():
        raise ValueError(f"eval.checkpoint={which!r}: no such step in {manager.directory} "
                         f"(steps: {sorted(manager.all_steps())})")
    else:
      step = manager.latest_step()     # the best directory holds the best step only
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    args = ocp.args.PyTreeRestore(
        item=template, restore_args=ocp.checkpoint_utils.construct_restore_args(template),
        partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
  finally:
    manager.close()
  return restored, int(step), kind

"""Watching a pretraining run: kNN monitor, early stopping, the best checkpoint, and which
checkpoint the probes and fine-tuning read (`eval.checkpoint = best | latest | STEP`).

The best checkpoint lives in its own orbax CheckpointManager, `workdir/checkpoints_best/`,
next to the keep-N latest ones in `workdir/checkpoints/`: orbax keeps one, chosen by the
monitored metric (`best_fn`), so the latest checkpoints still rotate for resuming.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from simclr_jax import checkpoint

BEST_DIR = "checkpoints_best"
MODES = ("max", "min")


# ---------------------------------------------------------------------------------------------
# kNN monitor (cosine similarity, majority vote of the k nearest train features).
# ---------------------------------------------------------------------------------------------

@jax.jit
def _cosine(queries, bank):
  q = queries / jnp.maximum(jnp.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  b = bank / jnp.maximum(jnp.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
  return q @ b.T


def knn_predict(train_x, train_y, query_x, k: int, num_classes: int, chunk: int = 1024):
  """Class of each query by a vote of its k most cosine-similar train features.

  Each neighbour votes with weight 1; ties go to the class whose best neighbour is closest
  (the votes get a tiny bonus of that similarity), so the answer does not depend on class order.
  """
  if k < 1:
    raise ValueError(f"eval.knn_k={k}: must be >= 1")
  k = min(k, len(train_y))
  bank, labels = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32)
  out = []
  for start in range(0, len(query_x), chunk):
    sim = _cosine(jnp.asarray(query_x[start:start + chunk], jnp.float32), bank)
    top_sim, top_idx = jax.lax.top_k(sim, k)
    onehot = jax.nn.one_hot(labels[top_idx], num_classes)              # (q, k, K)
    votes = onehot.sum(1) + 1e-3 * (onehot * top_sim[..., None]).max(1)
    out.append(np.asarray(votes.argmax(1)))
  return np.concatenate(out) if out else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# Early stopping.
# ---------------------------------------------------------------------------------------------

class EarlyStopping:
  """Patience on a monitored value: `update(value)` -> True once `patience` evaluations in a
  row brought no improvement by more than `min_delta` (patience 0 = never stop)."""

  def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0):
    if mode not in MODES:
      raise ValueError(f"train.monitor_mode={mode!r}; expected 'max' or 'min'")
    if patience < 0:
      raise ValueError(f"train.patience={patience}: must be >= 0 (0 = no early stopping)")
    self.patience, self.mode, self.min_delta = int(patience), mode, float(min_delta)
    self.best, self.best_index, self.bad, self.index = None, -1, 0, -1

  def improved(self, value: float) -> bool:
    if self.best is None:
      return True
    if self.mode == "max":
      return value > self.best + self.min_delta
    return value < self.best - self.min_delta

  def update(self, value: float) -> bool:
    """Records one evaluation; returns whether to stop now."""
    self.index += 1
    value = float(value)
    if self.improved(value):
      self.best, self.best_index, self.bad = value, self.index, 0
    else:
      self.bad += 1
    return self.patience > 0 and self.bad >= self.patience

  def state(self) -> dict:
    return {"best": self.best, "best_index": self.best_index, "bad": self.bad,
            "index": self.index}

  def load(self, state: dict) -> None:
    self.best, self.best_index = state["best"], state["best_index"]
    self.bad, self.index = state["bad"], state["index"]


# ---------------------------------------------------------------------------------------------
# The best checkpoint, and the one evaluation reads.
# ---------------------------------------------------------------------------------------------

def make_best_manager(workdir: str, metric: str, mode: str) -> ocp.CheckpointManager:
  if mode not in MODES:
    raise ValueError(f"train.monitor_mode={mode!r}; expected 'max' or 'min'")
  options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: float(m[metric]),
                                         best_mode=mode, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, BEST_DIR)),
                               options=options, item_names=("state",))


def save_best(manager: ocp.CheckpointManager, step: int, state, metrics: dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
               metrics={k: float(v) for k, v in metrics.items()}, force=True)


def abstract_state(setup, seed: int):
  """Shapes, dtypes and (replicated) shardings of the run's TrainState, without computing or
  compiling its init: all a restore needs."""
  c = setup.config.data
  dummy = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, c.channels), jnp.float32)
  rng = jax.random.PRNGKey(seed)

  def _init(rng, x):
    from simclr_jax import train   # train imports this module
    variables = setup.model.init({"params": rng, "dropout": rng}, x, train=False)
    return train.TrainState.create(apply_fn=setup.model.apply, params=variables["params"],
                                   batch_stats=variables.get("batch_stats", {}), tx=setup.tx)

  rep = jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                      jax.eval_shape(_init, rng, dummy))


def _has_steps(path: str) -> bool:
  return os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path))


def restore_for_eval(workdir: str, which, template):
  """(state, step, 'best'|'latest'|'step') chosen by `eval.checkpoint`.

  'best' falls back to the latest checkpoint (logged) when the run kept no best one (no
  monitored metric); 'latest' is the last saved step; an integer (or digits) is that step.
  """
  which = str(which).strip()
  best_dir = os.path.join(workdir, BEST_DIR)
  if which == "best" and _has_steps(best_dir):
    manager = ocp.CheckpointManager(os.path.abspath(best_dir), item_names=("state",))
    kind = "best"
  elif which in ("best", "latest") or which.isdigit():
    if which == "best":
      logging.info("no best checkpoint in %s (no monitored metric): using the latest", workdir)
    manager = checkpoint.make_manager(workdir, 1, 1)
    kind = "latest" if not which.isdigit() else "step"
  else:
    raise ValueError(f"eval.checkpoint={which!r}: expected 'best', 'latest' or a step number")
  try:
    if kind == "best":
      step = manager.latest_step()      # the directory holds the best step only
    elif kind == "step":
      step = int(which)
      if step not in manager.all_steps():
        raise ValueError(f"eval.checkpoint={which!r}: no such step in {manager.directory} "
                         f"(steps: {sorted(manager.all_steps())})")
    else:
      step = None
    state, step = checkpoint.restore(manager, template, step=step)
  finally:
    manager.close()
  return state, int(step), kind

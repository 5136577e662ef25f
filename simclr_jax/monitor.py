"""Watching a pretraining run: kNN monitor, early stopping, and the evaluation during
pretraining that drives them and the best checkpoint (`PretrainMonitor`).

The best checkpoint lives in its own orbax CheckpointManager, `workdir/checkpoints_best/`
(the train state only; simclr_jax/checkpoint.py), next to the keep-N latest ones in
`workdir/checkpoints/`, which resume the run (state and data iterator) and rotate as before.
A state goes there when it beats every earlier evaluation, and orbax keeps one, by the
monitored metric (`best_fn`). The config is checked by simclr_jax/validate.py before any of
this is built (train.pretrain).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax.training.early_stopping import EarlyStopping

from simclr_jax import checkpoint, parallel
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import pipeline, sources
from simclr_jax.data.subset import Subset


# ---------------------------------------------------------------------------------------------
# kNN monitor (cosine similarity, the k nearest train features vote).
# ---------------------------------------------------------------------------------------------

@jax.jit
def _cosine(queries, bank):
  q = queries / jnp.maximum(jnp.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  b = bank / jnp.maximum(jnp.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
  return q @ b.T


def knn_predict(train_x, train_y, query_x, k: int, num_classes: int, temperature: float = 0.0,
                chunk: int = 1024):
  """Class of each query by a vote of its k most cosine-similar train features.

  temperature T > 0: each neighbour votes exp(sim / T), the weighted kNN of InstDisc (Wu et al.
  2018) that solo-learn and most SSL code monitor with (T = 0.07): near neighbours count more.
  T = 0: a plain majority vote; ties go to the class whose best neighbour is closest (the votes
  get a tiny bonus of that similarity), so the answer does not depend on class order.
  """
  k = min(k, len(train_y))
  bank, labels = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32)
  out = []
  for start in range(0, len(query_x), chunk):
    sim = _cosine(jnp.asarray(query_x[start:start + chunk], jnp.float32), bank)
    top_sim, top_idx = jax.lax.top_k(sim, k)
    onehot = jax.nn.one_hot(labels[top_idx], num_classes)              # (q, k, K)
    if temperature > 0:
      # exp((sim - 1) / T): the same ranking as exp(sim / T) without overflow at small T.
      votes = (onehot * jnp.exp((top_sim[..., None] - 1.0) / temperature)).sum(1)
    else:
      votes = onehot.sum(1) + 1e-3 * jnp.where(onehot > 0, top_sim[..., None], -2.0).max(1)
    out.append(np.asarray(votes.argmax(1)))
  return np.concatenate(out) if out else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# Early stopping (pretraining's and fine-tuning's).
# ---------------------------------------------------------------------------------------------

def early_stopping(patience: int, min_delta: float = 0.0) -> EarlyStopping:
  """flax's EarlyStopping, which minimises (negate a value to maximise), set to stop at the
  `patience`-th update in a row without an improvement by more than `min_delta` (flax counts
  `patience` such updates, then stops at the next); patience 0 never stops."""
  return EarlyStopping(min_delta=float(min_delta),
                       patience=patience - 1 if patience > 0 else float("inf"))


# ---------------------------------------------------------------------------------------------
# Evaluation during pretraining: TensorBoard, monitor.json, the best checkpoint, early stopping.
# ---------------------------------------------------------------------------------------------

def eval_interval(every_epochs: float, steps_per_epoch: int) -> int:
  """Steps between two evaluations; 0 = no evaluation. Fractions of an epoch are allowed."""
  return max(1, round(every_epochs * steps_per_epoch)) if every_epochs > 0 else 0


def _log_softmax(x):
  x = x - x.max(1, keepdims=True)
  return x - np.log(np.exp(x).sum(1, keepdims=True))


class PretrainMonitor:
  """Evaluates the model every `eval.every_epochs` epochs of pretraining (and after its last
  step), and acts on `train.monitor`.

  An evaluation embeds the monitor split and the kNN bank (the train split, unaugmented,
  BatchNorm in inference mode) and scores eval/knn_accuracy and, with the online head,
  eval/online_accuracy and eval/online_loss; they go to TensorBoard and workdir/monitor.json.
  A new best of the monitored metric is saved to workdir/checkpoints_best, and `train.patience`
  evaluations without improvement stop the run. A resumed run replays monitor.json up to its
  restored step, so patience and the best value carry over; later entries, and best
  checkpoints past that step, belong to steps the resumed run repeats, and are dropped.
  """

  def __init__(self, config, setup, workdir: str, train_source):
    ev, tr = config.eval, config.train
    self.every = eval_interval(float(ev.every_epochs), setup.steps_per_epoch)
    self.patience = int(tr.patience)
    self.history, self.stopped, self.best_value = [], False, None
    if not self.every:
      return
    self.workdir, self.setup = workdir, setup
    self.metric = str(tr.monitor).removeprefix("eval/")
    self.mode = tr.monitor_mode
    if self.mode == "auto":        # a loss falls as the run improves, an accuracy rises
      self.mode = "min" if self.metric.endswith("loss") else "max"
    self.stopper = early_stopping(self.patience, tr.min_delta)
    self.num_classes = int(config.data.num_classes)
    self.k, self.temperature = int(ev.knn_k), float(ev.knn_temperature)
    self.queries = sources.make_source(config.data, ev.monitor_split or config.data.eval_split)
    self.bank = train_source
    n = int(ev.knn_bank_size)
    if 0 < n < len(train_source):
      rng = np.random.default_rng(config.seed)
      self.bank = Subset(train_source, np.sort(rng.choice(len(train_source), n, replace=False)))
    for name, src in (("kNN bank", self.bank), ("monitor split", self.queries)):
      if not (np.asarray(src.labels) >= 0).any():
        raise ValueError(f"eval.every_epochs > 0: the kNN monitor needs labels, and the {name} "
                         f"{src!r} has none (data.num_classes={self.num_classes})")
    n_dev = setup.mesh.devices.size
    self.batch_size = -(-int(ev.batch_size) // n_dev) * n_dev     # a multiple of the devices
    model = setup.model

    def forward(params, batch_stats, images):
      out = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
      return out["h"], out.get("logits")

    # Replicated outputs: every process gets every row, and takes the same decisions.
    self._forward = jax.jit(forward, out_shardings=parallel.replicated(setup.mesh))
    self.best_manager = checkpoint.make_best_manager(workdir, self.metric, self.mode)

  def _embed(self, state, source):
    sharding = parallel.batch_sharded(self.setup.mesh)
    hs, logits, labels = [], [], []
    for images, y, valid in pipeline.eval_batches(source, self.batch_size):
      x = jax.make_array_from_callback(images.shape, sharding, lambda i, a=images: a[i])
      h, lg = self._forward(state.params, state.batch_stats, x)
      hs.append(np.asarray(h)[:valid])
      labels.append(y[:valid])
      if lg is not None:
        logits.append(np.asarray(lg)[:valid])
    return (np.concatenate(hs), np.concatenate(logits) if logits else None,
            np.concatenate(labels))

  def evaluate(self, state) -> dict[str, float]:
    bank_h, _, bank_y = self._embed(state, self.bank)
    h, logits, y = self._embed(state, self.queries)
    b, q = bank_y >= 0, y >= 0
    pred = knn_predict(bank_h[b], bank_y[b], h[q], self.k, self.num_classes, self.temperature)
    out = {"knn_accuracy": float(np.mean(pred == y[q]))}
    if logits is not None:
      lg, yq = logits[q], y[q]
      out["online_accuracy"] = float(np.mean(lg.argmax(1) == yq))
      out["online_loss"] = float(-np.mean(_log_softmax(lg)[np.arange(len(yq)), yq]))
    return out

  def due(self, step: int, total_steps: int) -> bool:
    return bool(self.every) and (step % self.every == 0 or step == total_steps)

  def _better(self, value: float) -> bool:
    """Strictly better than every earlier evaluation (min_delta is patience's business)."""
    return self.best_value is None or (value > self.best_value if self.mode == "max"
                                       else value < self.best_value)

  def _record(self, entry: dict) -> bool:
    value = entry[self.metric]
    is_best = self._better(value)
    if is_best:
      self.best_value = value
    self.stopper = self.stopper.update(-value if self.mode == "max" else value)
    self.stopped = bool(self.stopper.should_stop)
    self.history.append(entry)
    return is_best

  def resume(self, start: int) -> bool:
    """Replays monitor.json up to step `start`; returns whether the run had stopped there."""
    if not self.every:
      return False
    path = epath.Path(self.workdir) / workdir_lib.HISTORY
    if path.exists():
      for entry in json.loads(path.read_text())["history"]:
        if entry["step"] <= start:
          self._record(entry)
    for step in self.best_manager.all_steps():
      if step > start:
        self.best_manager.delete(step)
    return self.stopped

  def __call__(self, step: int, state, writer) -> bool:
    """Evaluates `state`, the state after `step`; returns whether to stop."""
    t0 = time.perf_counter()
    values = self.evaluate(state)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in values.items()})
    entry = {"step": int(step), "epoch": step / self.setup.steps_per_epoch, **values}
    if self._record(entry):
      checkpoint.save_best(self.best_manager, step, state, values)
    self._write()
    logging.info("step %d: %s (%.1f s)%s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items()), time.perf_counter() - t0,
                 f"; no better {self.metric} for {self.patience} evaluations: stopping"
                 if self.stopped else "")
    return self.stopped

  def _write(self) -> None:
    if jax.process_index() != 0:
      return
    better = max if self.mode == "max" else min
    best = better(self.history, key=lambda e: e[self.metric])    # the first of equals
    report = {"monitor": self.metric, "mode": self.mode, "patience": self.patience,
              "best_step": best["step"], "best": best[self.metric], "stopped": self.stopped,
              "history": self.history}
    path = epath.Path(self.workdir) / workdir_lib.HISTORY
    tmp = path.with_name(path.name + ".tmp")   # replaced whole: a crash leaves the last one
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)

  def close(self) -> None:
    if self.every:
      self.best_manager.wait_until_finished()
      self.best_manager.close()

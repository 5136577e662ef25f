"""Watching a pretraining run: kNN monitor, early stopping, the best checkpoint, the evaluation
during pretraining that drives them (`PretrainMonitor`), and which checkpoint the probes and
fine-tuning read (`eval.checkpoint = best | latest | STEP`).

The best checkpoint lives in its own orbax CheckpointManager, `workdir/checkpoints_best/`
(the train state only), next to the keep-N latest ones in `workdir/checkpoints/`, which resume
the run (state and data iterator) and rotate as before. A state goes there when it beats every
earlier evaluation, and orbax keeps one, by the monitored metric (`best_fn`).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from simclr_jax import checkpoint, parallel
from simclr_jax.data import pipeline, sources

BEST_DIR = "checkpoints_best"
MODES = ("max", "min")


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
  if k < 1:
    raise ValueError(f"eval.knn_k={k}: must be >= 1")
  if temperature < 0:
    raise ValueError(f"eval.knn_temperature={temperature}: must be >= 0 (0 = majority vote)")
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
  return ocp.CheckpointManager(checkpoint.workdir_path(workdir) / BEST_DIR,
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


def _has_steps(path: epath.Path) -> bool:
  return path.is_dir() and any(d.name.isdigit() for d in path.iterdir())


def restore_for_eval(workdir: str, which, template):
  """(state, step, 'best'|'latest'|'step') chosen by `eval.checkpoint`.

  'best' falls back to the latest checkpoint (logged) when the run kept no best one (no
  monitored metric); 'latest' is the last saved step; an integer (or digits) is that step.
  """
  which = str(which).strip()
  best_dir = checkpoint.workdir_path(workdir) / BEST_DIR
  if which == "best" and _has_steps(best_dir):
    manager = ocp.CheckpointManager(best_dir, item_names=("state",))
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


# ---------------------------------------------------------------------------------------------
# Evaluation during pretraining: TensorBoard, monitor.json, the best checkpoint, early stopping.
# ---------------------------------------------------------------------------------------------

HISTORY = "monitor.json"


class _Subset:
  """`source` at indices `idx`: the kNN bank when eval.knn_bank_size caps it."""

  def __init__(self, source, idx):
    self.source, self.idx = source, np.asarray(idx)
    self.labels = np.asarray(source.labels)[self.idx]

  def __len__(self):
    return len(self.idx)

  def __getitem__(self, i):
    return self.source[int(self.idx[i])]


def eval_interval(every_epochs: float, steps_per_epoch: int) -> int:
  """Steps between two evaluations; 0 = no evaluation. Fractions of an epoch are allowed."""
  if every_epochs < 0:
    raise ValueError(f"eval.every_epochs={every_epochs}: must be >= 0 (0 = no evaluation)")
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
    self.every = eval_interval(float(ev.get("every_epochs", 0.0)), setup.steps_per_epoch)
    self.patience = int(tr.get("patience", 0))
    if self.patience and not self.every:
      raise ValueError(f"train.patience={self.patience} stops on evaluations: set "
                       "eval.every_epochs > 0")
    self.history, self.stopped, self.best_value = [], False, None
    if not self.every:
      return
    self.workdir, self.setup = workdir, setup
    self.metric = str(tr.get("monitor", "knn_accuracy")).removeprefix("eval/")
    self.mode = tr.get("monitor_mode", "auto")
    if self.mode == "auto":        # a loss falls as the run improves, an accuracy rises
      self.mode = "min" if self.metric.endswith("loss") else "max"
    known = ("knn_accuracy",) + (("online_accuracy", "online_loss") if setup.num_classes else ())
    if self.metric not in known:
      raise ValueError(f"train.monitor={self.metric!r}: this run evaluates {known} "
                       "(online_* need model.online_head)")
    self.stopper = EarlyStopping(self.patience, self.mode, tr.get("min_delta", 0.0))
    self.num_classes = int(config.data.num_classes)
    self.k, self.temperature = int(ev.knn_k), float(ev.knn_temperature)
    self.queries = sources.make_source(config.data,
                                       ev.get("monitor_split") or config.data.eval_split)
    self.bank = train_source
    n = int(ev.get("knn_bank_size", 0))
    if 0 < n < len(train_source):
      rng = np.random.default_rng(config.seed)
      self.bank = _Subset(train_source, np.sort(rng.choice(len(train_source), n, replace=False)))
    for name, src in (("kNN bank", self.bank), ("monitor split", self.queries)):
      if self.num_classes < 1 or not (np.asarray(src.labels) >= 0).any():
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
    self.best_manager = make_best_manager(workdir, self.metric, self.mode)

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
    self.stopped = self.stopper.update(value)
    self.history.append(entry)
    return is_best

  def resume(self, start: int) -> bool:
    """Replays monitor.json up to step `start`; returns whether the run had stopped there."""
    if not self.every:
      return False
    path = epath.Path(self.workdir) / HISTORY
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
      save_best(self.best_manager, step, state, values)
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
    path = epath.Path(self.workdir) / HISTORY
    tmp = path.with_name(HISTORY + ".tmp")   # replaced whole: a crash leaves the last one
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)

  def close(self) -> None:
    if self.every:
      self.best_manager.wait_until_finished()
      self.best_manager.close()

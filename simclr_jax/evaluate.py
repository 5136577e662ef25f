"""Linear evaluation: frozen encoder features h -> L2-regularised multinomial logistic regression.

The projection head is dropped (SimCLR evaluates h, not z) and BatchNorm runs in inference mode.
The L2 strength is picked on a stratified validation split of the labelled train split (by its
log-loss unless `eval.select_by='accuracy'`), then the probe is refit on the whole (fraction of
the) train split and scored on `data.eval_split`.

Probes (`eval.probes`, any of):
  logistic      scikit-learn's lbfgs: the exact optimum, so the number measures h only;
  logistic_jax  the same objective and protocol, solved by optax L-BFGS on the device
                (simclr_jax/probes.py): seconds where scikit-learn takes minutes on wide
                features (3,072 raw CIFAR pixels: about 20 minutes);
  head          an optax-trained linear or MLP head (the SimCLR blog recipe: Adam 3e-4,
                batch 64, 100 epochs, 8:2 train/val, the least-validation-loss epoch kept);
                the only probe for multi-label sources (sigmoid outputs).
Baselines (`eval.baselines`): `random_init` (the same encoder, untrained) and `raw_pixels`
(flattened decoded pixels), for any source. Every result carries the scores of
simclr_jax/metrics.py (TSS/HSS of `eval.positive_class` on two-class tasks).
The checkpoint read is `eval.checkpoint`: best (by the run's monitored metric, else the
latest), latest, or a step.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from simclr_jax import metrics as metrics_lib
from simclr_jax import parallel, probes, progress, readout, validate
from simclr_jax import state as state_lib
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import labels as labels_lib
from simclr_jax.data import pipeline, sources


def extract_features(model, mesh, variables, source, batch_size: int):
  """h of `model` with `variables` ({'params', 'batch_stats'}, replicated on `mesh`) for every
  example of `source`, in order, and its labels; the batches sharded over the mesh."""
  n_dev = mesh.devices.size
  batch_size = -(-batch_size // n_dev) * n_dev          # a multiple of the device count

  @jax.jit
  def features(variables, images):
    return model.apply(variables, images, train=False)["h"]

  feats, labels = [], []
  sharding = parallel.batch_sharded(mesh)
  bar = progress.Progress("features", len(source), unit="image")
  for images, y, valid in pipeline.eval_batches(source, batch_size):
    images = jax.device_put(images, sharding)
    h = features(variables, images)
    feats.append(np.asarray(jax.device_get(h))[:valid].astype(np.float32))
    labels.append(y[:valid])
    bar.update(sum(map(len, labels)))
  bar.close()
  return np.concatenate(feats), np.concatenate(labels)


PROBES = ("logistic", "logistic_jax", "head")
BASELINES = ("random_init", "raw_pixels")


def raw_pixels(source, batch_size: int = 256) -> np.ndarray:
  """Flattened decoded pixels of every example, in order, from any source."""
  return np.concatenate([images[:valid].reshape(valid, -1)
                         for images, _, valid in pipeline.eval_batches(source, batch_size)])


def fit_probe(x_train, y_train, x_test, y_test, c_grid, val_fraction, seed=0,
              select_by: str = "log_loss", solver: str = "sklearn", scores=None) -> dict:
  """Picks C on a validation split, refits on all of x_train, scores x_test.

  `select_by='log_loss'` (default) picks the C of least validation cross-entropy, a smooth
  score: validation accuracy moves in steps of one example and, on a few hundred validation
  examples, ties across most of the grid, where the tie-break would decide. Ties -> stronger
  regularisation.
  """
  if select_by not in ("log_loss", "accuracy"):
    raise ValueError(f"eval.select_by={select_by!r}; expected 'log_loss' or 'accuracy'")
  if solver not in ("sklearn", "jax"):
    raise ValueError(f"probe solver={solver!r}; expected 'sklearn' or 'jax'")

  def make(c, warm=None):
    if solver == "sklearn":
      return LogisticRegression(C=c, max_iter=2000)
    return probes.LbfgsLogistic(C=c, init=getattr(warm, "params_", None))

  scaler = StandardScaler().fit(x_train)
  x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
  idx_fit, idx_val = train_test_split(np.arange(len(y_train)), test_size=val_fraction,
                                      stratify=y_train, random_state=seed)
  classes = np.unique(y_train)
  val_acc, val_loss, fits, clf = {}, {}, {}, None
  for c in sorted(c_grid):   # ascending C: each warm start is a slightly weaker penalty
    clf = fits[c] = make(c, clf).fit(x_train[idx_fit], y_train[idx_fit])
    proba = clf.predict_proba(x_train[idx_val])   # one pass serves both scores
    val_acc[c] = float(np.mean(clf.classes_[proba.argmax(1)] == y_train[idx_val]))
    val_loss[c] = float(log_loss(y_train[idx_val], proba, labels=classes))
  if select_by == "log_loss":
    best_c = min(c_grid, key=lambda c: (val_loss[c], c))
  else:
    best_c = max(c_grid, key=lambda c: (val_acc[c], -c))
  clf = make(best_c, fits[best_c]).fit(x_train, y_train)
  pred = clf.predict(x_test)
  out = {"C": float(best_c), "val_accuracy": val_acc[best_c], "val_log_loss": val_loss[best_c],
         "train_accuracy": float(clf.score(x_train, y_train)),
         "test_accuracy": float(np.mean(pred == y_test)),
         "n_train": int(len(y_train)), "n_test": int(len(y_test)), "solver": solver}
  if scores is not None:
    out["metrics"] = scores(y_test, pred)
  return out


def fit_head_probe(x_train, y_train, x_test, y_test, ev, seed: int, num_outputs: int,
                   scores) -> dict:
  """The optax head on standardised features: 8:2 fit/val (stratified for single labels)."""
  scaler = StandardScaler().fit(x_train)
  x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
  multilabel = np.ndim(y_train) == 2
  idx_fit, idx_val = train_test_split(np.arange(len(y_train)), test_size=ev.val_fraction,
                                      stratify=None if multilabel else y_train,
                                      random_state=seed)
  predict, info = probes.fit_head(
      x_train[idx_fit], y_train[idx_fit], x_train[idx_val], y_train[idx_val], num_outputs,
      hidden=ev.get("head_hidden", 0), dropout=ev.get("head_dropout", 0.0),
      learning_rate=ev.get("head_learning_rate", 3e-4), batch_size=ev.get("head_batch_size", 64),
      epochs=ev.get("head_epochs", 100), weight_decay=ev.get("head_weight_decay", 0.0),
      seed=seed)
  proba = predict(x_test)
  out = {"best_epoch": info["best_epoch"], "val_loss": min(info["val_loss"]),
         "n_train": int(len(y_train)), "n_test": int(len(y_test)), "solver": "head"}
  if multilabel:
    out["metrics"] = scores(y_test, proba)
    out["test_micro_f1"] = out["metrics"]["micro_f1"]
  else:
    pred = proba.argmax(1)
    out["test_accuracy"] = float(np.mean(pred == y_test))
    out["metrics"] = scores(y_test, pred)
  return out


def linear_eval(workdir: str, config: ml_collections.ConfigDict | None = None) -> dict:
  """Probes the `eval.checkpoint` of `workdir`; writes workdir/linear_eval.json; returns it.

  `config` defaults to the workdir's config.json as saved: a run older than a field lacks it,
  hence the `.get`s of eval fields here (simclr_jax/api.py passes the saved config over every
  default).
  """
  config = config or workdir_lib.load_config(workdir)
  validate.check_fields(config)
  ev = config.eval
  probe_names = tuple(ev.get("probes", ("logistic",)))
  train_src = sources.make_source(config.data, config.data.train_split)
  test_src = sources.make_source(config.data, config.data.eval_split)
  multilabel = getattr(train_src, "multi_hot", None) is not None
  if multilabel and set(probe_names) != {"head"}:
    raise ValueError(f"eval.probes={probe_names!r}: {train_src!r} is multi-label; only the "
                     "'head' probe (sigmoid outputs) scores it")
  if not multilabel and (np.asarray(train_src.labels) < 0).all():
    raise ValueError(f"{train_src!r} has no labels: the linear probe needs a labelled split")
  mesh = parallel.make_mesh(config.train.num_devices)
  model = state_lib.make_model(config)
  # What the probe reads: h, or more of the network (eval.features, simclr_jax/readout.py).
  reader = readout.Readout(model, ev.get("features", "h"))
  variables, step, kind = state_lib.restore(config, workdir, ev.get("checkpoint", "best"), mesh)
  targets = ((train_src.multi_hot, test_src.multi_hot) if multilabel
             else (np.asarray(train_src.labels), np.asarray(test_src.labels)))

  features = {}
  encoders = {"pretrained": lambda: variables}
  if "random_init" in ev.baselines:      # the run's init: the same key as its first state
    encoders["random_init"] = lambda: state_lib.init_variables(
        model, config.data, mesh, state_lib.run_keys(config.seed)[0])
  for name, get_variables in encoders.items():
    def both(get_variables=get_variables):
      v = get_variables()
      return (extract_features(reader, mesh, v, train_src, ev.batch_size)[0],
              extract_features(reader, mesh, v, test_src, ev.batch_size)[0])
    features[name] = both
  if "raw_pixels" in ev.baselines:
    features["raw_pixels"] = lambda: (raw_pixels(train_src, ev.batch_size),
                                      raw_pixels(test_src, ev.batch_size))
  scores = make_scores(config, train_src, multilabel)
  results = []
  for name, get in features.items():
    t0 = time.perf_counter()
    x_tr, x_te = get()
    for probe in probe_names:
      t1 = time.perf_counter()
      rows = _probe_fractions(name, probe, x_tr, targets[0], x_te, targets[1], ev, config.seed,
                              scores, config.data.num_classes)
      for r in rows:
        r["seconds"] = round((time.perf_counter() - t1) / len(rows), 2)
        r["dim"] = int(x_tr.shape[1])
      results += rows
    logging.info("%s features %s extracted and probed in %.1f s", name, x_tr.shape,
                 time.perf_counter() - t0)
  report = {"workdir": os.path.abspath(workdir), "checkpoint_step": int(step),
            "checkpoint": kind, "features": ev.get("features", "h"),
            "train_split": config.data.train_split,
            "eval_split": config.data.eval_split, "results": results}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, workdir_lib.LINEAR_EVAL), "w") as f:
      json.dump(report, f, indent=2)
  return report


def make_scores(config, source, multilabel: bool):
  """scores(y_true, y_pred_or_proba) -> the metrics dict for this config's task."""
  names = getattr(source, "class_names", None)
  positive = config.eval.get("positive_class", -1)
  if multilabel:
    return lambda y, proba: metrics_lib.multilabel(y, proba, class_names=names)
  k = config.data.num_classes
  if k == 2:
    metrics_lib.positive_index(positive, names, 2)      # refuse a bad name before any work
  return lambda y, pred: metrics_lib.classification(y, pred, k, names, positive)


def _probe_fractions(name, probe, x_tr, y_tr, x_te, y_te, ev, seed, scores,
                     num_classes) -> list[dict]:
  out = []
  for fraction in ev.label_fractions:
    if np.ndim(y_tr) == 2:     # multi-label: a plain random fraction (no single class)
      n = len(y_tr)
      idx = (np.sort(np.random.default_rng(seed).choice(n, max(1, round(fraction * n)),
                                                        replace=False))
             if fraction < 1 else np.arange(n))
    else:
      idx = labels_lib.stratified_fraction(y_tr, fraction, seed)
    if probe == "head":
      k = y_tr.shape[1] if np.ndim(y_tr) == 2 else num_classes
      r = fit_head_probe(x_tr[idx], y_tr[idx], x_te, y_te, ev, seed, k, scores)
    else:
      # .get: workdirs written before eval.select_by existed keep working.
      r = fit_probe(x_tr[idx], y_tr[idx], x_te, y_te, tuple(ev.c_grid), ev.val_fraction, seed,
                    ev.get("select_by", "log_loss"),
                    "sklearn" if probe == "logistic" else "jax", scores)
    out.append({"features": name, "probe": probe, "label_fraction": float(fraction), **r})
  return out


def print_report(report: dict) -> None:
  """One line per probe, e.g. `linear probe  pretrained  labels 100%  test accuracy 0.9861`."""
  for r in report["results"]:
    fit = (f"C={r['C']:g}  val {r['val_accuracy']:.4f}" if "C" in r
           else f"best epoch {r['best_epoch']}")
    extra = metrics_lib.headline(r.get("metrics", {}))
    test = f"test accuracy {r['test_accuracy']:.4f}  " if "test_accuracy" in r else ""
    print(f"{r.get('probe', 'logistic'):<12s} {r['features']:<11s} labels "
          f"{r['label_fraction']:>6.1%}  {fit}  {test}{extra}", flush=True)

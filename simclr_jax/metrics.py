"""Classification scores shared by the probes and fine-tuning: plain NumPy in, JSON-ready out.

Single-label (`classification`): accuracy, balanced accuracy (mean per-class recall, the
score that does not reward predicting the majority class), per-class precision / recall / F1
/ support and the confusion matrix (rows = true class, columns = predicted). With two classes
it adds the flare-forecasting skill scores of the positive class (SolarNet: '>=C'):

  TSS = TP / (TP + FN) - FP / (FP + TN)          true skill statistic, in [-1, 1]
  HSS = 2 (TP TN - FN FP) / ((TP + FN)(FN + TN) + (TP + FP)(FP + TN))   Heidke skill score

Both are 0 for a constant or random forecast whatever the class balance, which is why flare
papers report them instead of accuracy (95 % of SDOBenchmark-style samples are quiet). On the
positive-vs-rest table they are scikit-learn's balanced_accuracy_score(adjusted=True) and
cohen_kappa_score; 0.0 where undefined (y_true holds one class only).

Multi-label (`multilabel`, BigEarthNet): sigmoid scores against multi-hot targets; micro and
macro F1 at a threshold, and mAP (mean over classes of average precision, classes without a
positive example skipped because their AP is undefined).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm


def positive_index(positive_class, class_names: Sequence[str] | None, num_classes: int,
                   field: str = "eval.positive_class") -> int:
  """The index of the positive class, given by name ('>=C') or index ('1', 1); -1 = the last."""
  names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
  if isinstance(positive_class, str) and positive_class in names:
    return names.index(positive_class)
  try:
    k = int(positive_class)
  except (TypeError, ValueError):
    k = None
  if k is not None and -num_classes <= k < num_classes:
    return k % num_classes
  raise ValueError(f"{field}={positive_class!r}: expected a class name of {names} or an index "
                   f"in 0..{num_classes - 1} (-1 = the last)")


def binary_scores(is_positive, predicted_positive) -> dict[str, float]:
  """TSS and HSS of boolean forecasts against boolean truths (0.0 where undefined: the truth
  holds one class only, so no skill is measurable)."""
  y, p = np.asarray(is_positive, bool), np.asarray(predicted_positive, bool)
  if y.all() or not y.any():
    return {"tss": 0.0, "hss": 0.0}
  return {"tss": float(skm.balanced_accuracy_score(y, p, adjusted=True)),
          "hss": float(skm.cohen_kappa_score(y, p, labels=[False, True],
                                             replace_undefined_by=0.0))}


def classification(y_true, y_pred, num_classes: int, class_names: Sequence[str] | None = None,
                   positive_class=-1) -> dict:
  """Scores of integer predictions `y_pred` against `y_true` (both (N,), classes 0..K-1)."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  if y_true.shape != y_pred.shape or y_true.ndim != 1:
    raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape}: expected two (N,) arrays")
  labels = np.arange(num_classes)
  names = list(class_names) if class_names else [str(i) for i in labels]
  cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
  p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                   zero_division=0)
  present = cm.sum(1) > 0      # balanced accuracy over the classes that occur
  out = {
      "accuracy": float(np.trace(cm) / max(1, cm.sum())),
      "balanced_accuracy": float(np.mean(np.diag(cm)[present] / cm.sum(1)[present])),
      "macro_f1": float(np.mean(f)),
      "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                        "support": int(s[i])} for i, n in enumerate(names)},
      "confusion_matrix": cm.tolist(),
      "class_names": names,
  }
  if num_classes == 2:
    k = positive_index(positive_class, names, 2)
    tabled = np.isin(y_true, labels) & np.isin(y_pred, labels)    # as in the confusion matrix
    out.update(binary_scores(y_true[tabled] == k, y_pred[tabled] == k), positive_class=names[k])
  return out


def multilabel(targets, scores, threshold: float = 0.5,
               class_names: Sequence[str] | None = None) -> dict:
  """Micro / macro F1 of `scores >= threshold` and mAP of `scores` against multi-hot targets."""
  targets, scores = np.asarray(targets).astype(int), np.asarray(scores, np.float64)
  if targets.shape != scores.shape or targets.ndim != 2:
    raise ValueError(f"targets {targets.shape} and scores {scores.shape}: expected two (N, K) "
                     "arrays")
  pred = (scores >= threshold).astype(int)
  has_pos = targets.sum(0) > 0
  ap = np.full(targets.shape[1], np.nan)
  for k in np.flatnonzero(has_pos):
    ap[k] = skm.average_precision_score(targets[:, k], scores[:, k])
  names = list(class_names) if class_names else [str(i) for i in range(targets.shape[1])]
  return {
      "micro_f1": float(skm.f1_score(targets, pred, average="micro", zero_division=0)),
      "macro_f1": float(skm.f1_score(targets, pred, average="macro", zero_division=0)),
      "mAP": float(np.nanmean(ap)) if has_pos.any() else 0.0,
      "average_precision": {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, ap)},
      "threshold": float(threshold),
  }


def headline(scores: dict) -> str:
  """One short summary line: accuracy (or micro F1) plus TSS/HSS or mAP when present."""
  parts = []
  for key in ("accuracy", "balanced_accuracy", "tss", "hss", "micro_f1", "macro_f1", "mAP"):
    if key in scores and not (key == "macro_f1" and "accuracy" in scores):
      parts.append(f"{key} {scores[key]:.4f}")
  return "  ".join(parts)

"""Scores against confusion matrices and precision/recall curves worked out by hand."""

import numpy as np
import pytest

from simclr_jax import metrics


def test_binary_tss_hss_from_a_hand_counted_table():
  # 10 samples, 3 flares ('>=C' = class 1): TP 2, FN 1, FP 2, TN 5.
  y_true = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
  y_pred = np.array([1, 1, 0, 1, 1, 0, 0, 0, 0, 0])
  s = metrics.classification(y_true, y_pred, 2, class_names=("Quiet", ">=C"),
                             positive_class=">=C")
  assert s["confusion_matrix"] == [[5, 2], [1, 2]]
  assert s["tss"] == pytest.approx(2 / 3 - 2 / 7)
  assert s["hss"] == pytest.approx(2 * (2 * 5 - 1 * 2) / (3 * 6 + 4 * 7))
  assert s["positive_class"] == ">=C"
  assert s["accuracy"] == pytest.approx(0.7)
  assert s["balanced_accuracy"] == pytest.approx((5 / 7 + 2 / 3) / 2)
  assert s["per_class"][">=C"] == pytest.approx(
      {"precision": 0.5, "recall": 2 / 3, "f1": 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), "support": 3})
  # The positive class by index gives the same table; a name that is no class is refused.
  assert metrics.classification(y_true, y_pred, 2, positive_class=1)["tss"] == s["tss"]
  with pytest.raises(ValueError, match=r"eval.positive_class='>=M'.*\['Quiet', '>=C'\]"):
    metrics.classification(y_true, y_pred, 2, class_names=("Quiet", ">=C"),
                           positive_class=">=M")


def test_skill_scores_are_zero_without_skill_and_one_when_perfect():
  y = np.array([0] * 95 + [1] * 5)
  always_quiet = metrics.classification(y, np.zeros(100, int), 2)
  assert always_quiet["accuracy"] == 0.95
  assert always_quiet["tss"] == 0.0 and always_quiet["hss"] == 0.0
  perfect = metrics.classification(y, y, 2)
  assert perfect["tss"] == 1.0 and perfect["hss"] == 1.0


def test_three_classes_per_class_scores_by_hand():
  y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  y_pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2])
  s = metrics.classification(y_true, y_pred, 3)
  assert s["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
  assert s["accuracy"] == pytest.approx(6 / 9)
  assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
  pc = s["per_class"]
  assert (pc["0"]["precision"], pc["0"]["recall"]) == pytest.approx((2 / 3, 2 / 3))
  assert (pc["1"]["precision"], pc["1"]["recall"]) == pytest.approx((1 / 2, 1 / 2))
  assert (pc["2"]["precision"], pc["2"]["recall"]) == pytest.approx((3 / 4, 3 / 4))
  assert s["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
  assert "tss" not in s


def test_multilabel_f1_and_map_by_hand():
  targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
  scores = np.array([[0.9, 0.2, 0.1], [0.8, 0.6, 0.7], [0.3, 0.7, 0.2], [0.1, 0.4, 0.1]])
  s = metrics.multilabel(targets, scores)
  # Class 0 ranked: pos (P 1, R 1/2), neg, pos (P 2/3, R 1): AP = 1/2 + 1/2 * 2/3.
  # Class 1: both positives ranked first: AP 1. Class 2 has no positive: left out of the mean.
  assert s["average_precision"]["0"] == pytest.approx(0.5 + 0.5 * 2 / 3)
  assert s["average_precision"]["1"] == pytest.approx(1.0)
  assert s["average_precision"]["2"] is None
  assert s["mAP"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
  # At 0.5: class 0 TP 1 FP 1 FN 1 (F1 1/2), class 1 F1 1, class 2 one false positive (F1 0);
  # pooled TP 3, FP 2, FN 1.
  assert s["macro_f1"] == pytest.approx((0.5 + 1 + 0) / 3)
  assert s["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match="expected two"):
    metrics.classification(np.zeros(3), np.zeros(4), 2)
  with pytest.raises(ValueError, match=r"expected two \(N, K\)"):
    metrics.multilabel(np.zeros((3, 2)), np.zeros(3))

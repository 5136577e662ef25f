"""Linear probe: the fitting on known data, and linear_eval on a real (tiny) pretraining run."""

import json
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from configs import digits
from simclr_jax import evaluate, train


def test_fit_probe_separates_separable_classes_and_picks_c_on_validation():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 5)) * 5
  y = np.repeat(np.arange(3), 60)
  x = centres[y] + rng.normal(size=(180, 5))
  r = evaluate.fit_probe(x[::2], y[::2], x[1::2], y[1::2], (1e-6, 1.0), 0.25)
  assert r["test_accuracy"] > 0.97 and r["n_train"] == 90 and r["n_test"] == 90
  # C = 1e-6 leaves the weights ~0: probabilities ~1/3 each, validation log-loss ~log(3),
  # far above C = 1's on separable classes; picking by log-loss must take C = 1.
  assert r["C"] == 1.0 and r["val_log_loss"] < 0.5 * np.log(3)


def test_fit_probe_picks_c_by_validation_log_loss_where_accuracy_ties():
  # Well-separated classes: every C classifies the validation split perfectly, so accuracy
  # ties (-> the strongest regularisation), while cross-entropy keeps falling as C grows.
  rng = np.random.default_rng(1)
  y = np.repeat(np.arange(3), 40)
  x = np.eye(3)[y] * 20 + rng.normal(size=(120, 3))
  grid = (0.001, 0.1, 10.0)
  by_acc = evaluate.fit_probe(x, y, x, y, grid, 0.25, seed=3, select_by="accuracy")
  by_loss = evaluate.fit_probe(x, y, x, y, grid, 0.25, seed=3)
  assert by_acc["C"] == 0.001 and by_acc["val_accuracy"] == 1.0
  assert by_loss["C"] == 10.0
  # The reported validation loss is the cross-entropy: with the weights held ~0 (C = 1e-8) on
  # balanced classes every probability is 1/3, so it is log(3).
  flat = evaluate.fit_probe(x, y, x, y, (1e-8,), 0.25, seed=3)
  assert flat["val_log_loss"] == pytest.approx(np.log(3), abs=1e-4)
  with pytest.raises(ValueError, match="select_by"):
    evaluate.fit_probe(x, y, x, y, grid, 0.25, select_by="f1")


def test_fit_probe_on_raw_digits_matches_the_known_level():
  # 8x8 digits with a logistic regression: about 0.96 test accuracy (scikit-learn examples).
  d = load_digits()
  r = evaluate.fit_probe(d.data[:1400], d.target[:1400], d.data[1400:], d.target[1400:],
                         (0.1, 1.0), 0.2)
  assert 0.90 < r["test_accuracy"] < 1.0


def test_linear_eval_on_a_pretrained_run(tmp_path):
  config = digits.get_config("tiny")
  config.eval.baselines = ("random_init",)
  config.eval.label_fractions = (0.25, 1.0)
  workdir = str(tmp_path / "run")
  train.pretrain(config, workdir)
  report = evaluate.linear_eval(workdir)     # config read back from workdir/config.json
  with open(os.path.join(workdir, "linear_eval.json")) as f:
    saved = json.load(f)
  assert saved == report and report["checkpoint_step"] == 2
  got = {(r["features"], r["label_fraction"]): r for r in report["results"]}
  assert set(got) == {("pretrained", 0.25), ("pretrained", 1.0),
                      ("random_init", 0.25), ("random_init", 1.0)}
  for r in got.values():
    assert r["n_test"] == 360
    assert 0.3 < r["test_accuracy"] <= 1.0     # a linear probe of ResNet features on digits
  # A stratified quarter of the 1437 labels: within one example per class of 359.
  assert abs(got[("pretrained", 0.25)]["n_train"] - 1437 / 4) <= 10


def test_linear_eval_without_a_run_names_the_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluate.linear_eval(str(tmp_path))

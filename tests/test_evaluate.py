"""Linear probe: the fitting on known data, and linear_eval on a real (tiny) pretraining run."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from simclr_jax import checkpoint, evaluate, metrics, models, parallel, probes
from simclr_jax import workdir as workdir_lib
from simclr_jax import state as state_lib
from simclr_jax.configs import digits
from simclr_jax.data import sources


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


def test_linear_eval_on_a_pretrained_run(tiny_run, tmp_path):
  # The session's tiny run (tests/conftest.py; best checkpoint: step 2), copied: linear_eval
  # writes into the workdir. The probe's settings go into the run's config.json.
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    saved_config = json.load(f)
  saved_config["eval"].update(baselines=["random_init"], label_fractions=[0.25, 1.0])
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(saved_config, f, indent=2)
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


def test_linear_eval_reads_the_feature_set_of_eval_features(tiny_run, tmp_path):
  # The tiny run: ResNet-18 x1/8 (h: 8 * 64 / 8 = 64 numbers), hidden_mlp 32; the stage maps
  # of 16x16 digits are 2x2 (last) and 4x4, pooled to 2x2 cells of 64 and 32 channels.
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run, workdir)
  config = workdir_lib.load_config(workdir)
  assert (config.model.width_multiplier, config.model.hidden_mlp) == (0.125, 32)
  config.eval.features = "h+head1+s4_2x2+s3_2x2"
  report = evaluate.linear_eval(workdir, config)
  assert report["features"] == "h+head1+s4_2x2+s3_2x2"
  dims = {r["features"]: r["dim"] for r in report["results"]}
  assert dims.pop("raw_pixels", 16 * 16) == 16 * 16         # the baseline reads the pixels
  assert set(dims.values()) == {64 + 32 + 4 * 64 + 4 * 32} and "pretrained" in dims
  assert all(0.3 < r["test_accuracy"] <= 1.0 for r in report["results"])


def test_linear_eval_without_a_run_names_the_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluate.linear_eval(str(tmp_path))


# --- on-device probes ----------------------------------------------------------------------

def _objective(x, y, w, b, c):
  """scikit-learn's LogisticRegression objective in plain NumPy (float64)."""
  z = x @ w + b
  z = z - z.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  return -logp[np.arange(len(y)), y].mean() + 0.5 / (c * len(y)) * (w ** 2).sum()


def test_lbfgs_logistic_reaches_scikit_learns_optimum():
  d = load_digits()
  x = StandardScaler().fit_transform(d.data[:600])
  y = d.target[:600]
  for c in (0.01, 1.0):
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=20000).fit(x, y)
    got = probes.LbfgsLogistic(C=c).fit(x, y)
    w = np.asarray(got.params_["w"], np.float64)
    b = np.asarray(got.params_["b"], np.float64)
    assert _objective(x, y, w, b, c) == pytest.approx(
        _objective(x, y, ref.coef_.T, ref.intercept_, c), rel=1e-4)
    assert np.mean(got.predict(x) == ref.predict(x)) >= 0.99


def test_fit_probe_on_the_device_measures_what_scikit_learn_measures():
  d = load_digits()
  args = (d.data[:1400], d.target[:1400], d.data[1400:], d.target[1400:], (0.1, 1.0), 0.2)
  ref = evaluate.fit_probe(*args)
  got = evaluate.fit_probe(*args, solver="jax",
                           scores=lambda y, p: metrics.classification(y, p, 10))
  assert got["C"] == ref["C"] and got["solver"] == "jax"
  assert abs(got["test_accuracy"] - ref["test_accuracy"]) <= 2 / 397
  assert got["metrics"]["accuracy"] == got["test_accuracy"]
  with pytest.raises(ValueError, match="solver='cuda'"):
    evaluate.fit_probe(*args, solver="cuda")


def test_head_probe_single_and_multi_label_on_known_problems():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 100)
  x = np.eye(3)[y] * 4 + rng.normal(size=(300, 3))
  predict, info = probes.fit_head(x[::2], y[::2], x[1::2][:50], y[1::2][:50], 3, hidden=16,
                                  learning_rate=1e-2, epochs=30)
  assert np.mean(predict(x[1::2]).argmax(1) == y[1::2]) > 0.95
  assert info["val_loss"][info["best_epoch"] - 1] == min(info["val_loss"])
  # Multi-label: label k is on iff feature k > 0; a linear sigmoid head separates that.
  x = rng.normal(size=(400, 4))
  t = (x > 0).astype(np.int8)
  predict, _ = probes.fit_head(x[:300], t[:300], x[300:350], t[300:350], 4,
                               learning_rate=3e-2, epochs=40)
  assert metrics.multilabel(t[350:], predict(x[350:]))["micro_f1"] > 0.9


def test_raw_pixels_of_a_file_source_are_its_pixels(tmp_path):
  rng = np.random.default_rng(0)
  os.makedirs(tmp_path / "a")
  imgs = [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in range(5)]
  for i, im in enumerate(imgs):
    Image.fromarray(im).save(tmp_path / "a" / f"{i}.png")
  src = sources.FolderSource(str(tmp_path), "train", image_size=4, channels=1)
  got = evaluate.raw_pixels(src, batch_size=2)          # batches of 2: the last one padded
  np.testing.assert_allclose(got, np.stack(imgs).reshape(5, -1) / 255.0, atol=1e-7)


def test_probe_features_equal_an_independent_forward_pass_of_the_restored_step(tmp_path):
  config = digits.get_config("tiny")
  config.data.image_size = 16
  workdir = str(tmp_path)
  # The checkpoints are written from one device (a quicker init, and orbax slices no shards);
  # they are read onto the config's 8-device mesh below.
  one_device = config.copy_and_resolve_references()
  one_device.train.num_devices = 1
  setup = state_lib.build(one_device, 1437)
  state = state_lib.init_state(setup, state_lib.run_keys(config.seed)[0])
  manager = checkpoint.make_manager(workdir, 1, 3)
  moved = {}
  scale = jax.jit(lambda params, f: jax.tree.map(lambda p: p * f, params))  # one program
  for step in (1, 2):        # two checkpoints with different weights
    st = state.replace(params=scale(state.params, 1 + 0.1 * step))
    checkpoint.save(manager, step, st, force=True)
  manager.wait_until_finished()
  manager.close()
  mesh = parallel.make_mesh(config.train.num_devices)
  model = state_lib.make_model(config)
  restored, step, kind = state_lib.restore(config, workdir, "1", mesh)
  assert (step, kind) == (1, "step") and set(restored) == {"params", "batch_stats"}
  src = sources.make_source(config.data, "test")
  feats, labels = evaluate.extract_features(model, mesh, restored, src, 64)
  # Independently: orbax alone reads step 1, a fresh encoder module applies it, one device.
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  raw = mngr.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  m = config.model
  encoder = models.make_encoder(m.backbone, m.width_multiplier, m.cifar_stem)
  images = np.stack([src[i]["image"] for i in range(len(src))])
  apply = jax.jit(lambda v, x: encoder.apply(v, x, train=False))   # not op by op: one compile
  ref = apply({"params": raw["params"]["encoder"],
               "batch_stats": raw["batch_stats"]["encoder"]}, images)
  np.testing.assert_allclose(feats, np.asarray(ref), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(labels, src.labels)
  latest, step, _ = state_lib.restore(config, workdir, "best", mesh)   # no best kept: latest
  assert step == 2 and not np.allclose(
      evaluate.extract_features(model, mesh, latest, src, 64)[0], feats)
  with pytest.raises(ValueError, match="eval.checkpoint='7': no such step"):
    state_lib.restore(config, workdir, "7", mesh)
  with pytest.raises(ValueError, match="eval.checkpoint='newest': expected 'best', 'latest'"):
    state_lib.restore(config, workdir, "newest", mesh)

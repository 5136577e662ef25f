"""load_encoder on a workdir and on its export, against an independent forward pass."""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import simclr_jax
from simclr_jax import export
from simclr_jax.models import simclr as simclr_model


@pytest.fixture(scope="module")
def workdir(tiny_run):
  """The session's tiny run (tests/conftest.py): read only here (exports go to tmp_path)."""
  return tiny_run


def _images(n=6, seed=0):
  return np.random.default_rng(seed).random((n, 16, 16, 1), dtype=np.float32)


def _reference_h(workdir, subdir, step, images):
  """h of the whole SimCLR model (encoder, projection, online head) restored by orbax without
  a template, applied in inference mode: none of load_encoder's code."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, subdir), item_names=("state",))
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  model = simclr_model.model_from_config(config.model, num_classes=config.data.num_classes)
  out = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, images,
                    train=False)
  return np.asarray(out["h"]), state


def test_load_encoder_on_a_workdir_matches_the_restored_model(workdir):
  x = _images()
  (best_step,) = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints_best"))]
  assert best_step == 2
  encoder = simclr_jax.load_encoder(workdir)          # default: the best checkpoint
  assert encoder.info["checkpoint"] == "best" and encoder.info["checkpoint_step"] == 2
  assert (encoder.image_size, encoder.channels, encoder.feature_dim) == (16, 1, 64)
  ref, _ = _reference_h(workdir, "checkpoints_best", 2, x)
  h = encoder(x)
  assert h.shape == (6, 64) and h.dtype == np.float32
  np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-6)
  # Fed in chunks: the same features (to float rounding: XLA picks kernels per batch shape).
  np.testing.assert_allclose(encoder(x, batch_size=4), h, rtol=1e-5, atol=1e-6)
  latest = simclr_jax.load_encoder(workdir, "latest")
  assert latest.info["checkpoint_step"] == 3
  ref3, _ = _reference_h(workdir, "checkpoints", 3, x)
  np.testing.assert_allclose(latest(x), ref3, rtol=1e-5, atol=1e-6)
  assert np.abs(ref3 - ref).max() > 1e-4            # a step of training apart: not the same
  with pytest.raises(ValueError, match=r"expected images \(N, H, W, 1\)"):
    encoder(np.zeros((2, 16, 16, 3), np.float32))


def test_export_reads_back_bitwise_without_the_workdir(workdir, tmp_path):
  x = _images(seed=1)
  out = export.export_encoder(workdir, str(tmp_path / "export"))
  moved = str(tmp_path / "elsewhere")                  # no config.json anywhere near it
  shutil.copytree(out, moved)
  assert sorted(os.listdir(moved)) == ["encoder.json", "encoder.npz"]
  loaded = simclr_jax.load_encoder(moved)
  with open(os.path.join(moved, "encoder.json")) as f:
    info = json.load(f)
  assert {k: info[k] for k in ("backbone", "width_multiplier", "cifar_stem", "channels",
                               "image_size", "value_range", "dtype")} == {
      "backbone": "resnet18", "width_multiplier": 0.125, "cifar_stem": True, "channels": 1,
      "image_size": 16, "value_range": [0.0, 1.0], "dtype": "float32"}
  ref, state = _reference_h(workdir, "checkpoints_best", 2, x)
  # The encoder alone: exactly the checkpoint's encoder subtree, no projection head.
  with np.load(os.path.join(moved, "encoder.npz")) as npz:
    assert all(k.startswith(("params/", "batch_stats/")) for k in npz.files)
    assert sum(npz[k].size for k in npz.files if k.startswith("params/")) == sum(
        np.size(v) for v in jax.tree.leaves(state["params"]["encoder"])) == info["parameters"]
  np.testing.assert_array_equal(loaded(x), simclr_jax.load_encoder(workdir)(x))
  np.testing.assert_allclose(loaded(x), ref, rtol=1e-5, atol=1e-6)
  assert loaded.feature_dim == info["feature_dim"] == 64


def test_load_encoder_names_what_it_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither an exported encoder"):
    simclr_jax.load_encoder(str(tmp_path))

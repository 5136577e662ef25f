"""A part used without its extra: one line naming the extra, through the tool, before anything
compiles or is written. `sys.modules[name] = None` is how Python itself blocks an import."""

import numpy as np
import pytest

from helpers import pretrain_cli



def test_tfds_source_without_tensorflow_datasets(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)
  workdir = tmp_path / "run"
  code, errors, err = pretrain_cli(capsys, workdir, "--config.data.source=tfds",
                           "--config.data.tfds.name=mnist", "--config.data.num_classes=0")
  assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
  assert errors[0].endswith("data.source='tfds' needs tensorflow-datasets, which is not "
                            'installed: pip install "simclr_jax[tfds]"'), errors[0]
  assert not workdir.exists()


def test_fits_folder_without_astropy(tmp_path, capsys, monkeypatch):
  # A real FITS file (written by astropy), then astropy blocked as on an install without [fits].
  from astropy.io import fits
  folder = tmp_path / "fits"
  folder.mkdir()
  for i in range(40):
    fits.PrimaryHDU(np.full((16, 16), i, np.float32)).writeto(folder / f"{i:02d}.fits")
  for name in [m for m in __import__("sys").modules if m == "astropy" or m.startswith("astropy.")]:
    monkeypatch.delitem(__import__("sys").modules, name)
  monkeypatch.setitem(__import__("sys").modules, "astropy", None)
  workdir = tmp_path / "run"
  code, errors, err = pretrain_cli(capsys, workdir, "--config.data.source=folder",
                           f"--config.data.path={folder}", "--config.data.num_classes=0")
  assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
  assert "00.fits: reading FITS needs astropy, which is not installed: " \
         'pip install "simclr_jax[fits]"' in errors[0], errors[0]
  assert not workdir.exists()


def test_every_extra_named_in_errors_is_declared():
  import tomllib

  from helpers import ROOT
  from simclr_jax import extras
  with open(f"{ROOT}/pyproject.toml", "rb") as f:
    declared = tomllib.load(f)["project"]["optional-dependencies"]
  for module, (extra, dist) in extras.EXTRAS.items():
    assert any(req.startswith(dist) for req in declared[extra]), (module, extra)
  assert any(req.startswith("onednn-cpu-gomp") for req in declared["cpu"])


@pytest.mark.parametrize("module", ["tensorflow_datasets", "astropy.io.fits"])
def test_require_returns_the_module_when_installed(module):
  import importlib

  from simclr_jax import extras
  assert extras.require(module, "x") is importlib.import_module(module)


def test_tfds_source_opens_through_the_config_with_the_extra():
  # The counterpart of the refusal above, and a regression test: the source's option `name`
  # once collided with the registry's own argument (`get() got multiple values for 'name'`).
  import tensorflow_datasets as tfds

  from simclr_jax import validate
  from simclr_jax.configs import digits
  c = digits.get_config("tiny")
  c.data.source, c.data.tfds.name, c.data.image_size = "tfds", "mnist", 16
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    source = validate.open_source(c.data, "train")
    assert len(source) == 12 and source[0]["image"].shape == (16, 16, 1)

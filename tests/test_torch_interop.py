"""PyTorch interop (simclr_jax/torch_interop.py): torchvision's own ResNets load the exported
state_dict with strict=True and compute simclr_jax's features; model.init_from reads such a
file (or an export) back bitwise, and refuses a mismatched one in one line naming the key.

The fast tests use random parameters and non-trivial BatchNorm statistics (a mapping that
mixed up running_mean and running_var, or a kernel's axes, would change the features); the
slow one trains, exports through the tool, and starts pretraining and fine-tuning from it.
"""

import os
import runpy
import sys

import jax
import numpy as np
import pytest

from helpers import random_weight, run_python
from simclr_jax import export, torch_interop, validate
from simclr_jax import workdir as workdir_lib
from simclr_jax.configs import default


def _config(backbone="resnet18", cifar_stem=True, channels=1, image_size=16, width=1.0):
  c = default.get_config()
  default.shrink(c, batch_size=8, image_size=image_size)
  c.data.source, c.data.channels, c.data.num_classes = "digits", channels, 10
  c.model.backbone, c.model.cifar_stem, c.model.width_multiplier = backbone, cifar_stem, width
  c.model.conv_impl = "xla"
  return c


def _random_variables(model_cfg, channels, seed=0):
  """Encoder variables drawn at random, BatchNorm statistics far from (0, 1), at scales that
  keep the activations of a deep ResNet finite and non-trivial."""
  rng = np.random.default_rng(seed)
  shapes = torch_interop.abstract_encoder(model_cfg, channels)
  return jax.tree_util.tree_map_with_path(
      lambda p, s: random_weight(rng, p, s).astype(np.float32), shapes)


def _encoder(config, variables):
  """What simclr_jax.load_encoder returns, for these variables."""
  from simclr_jax.models import simclr as simclr_model
  info = {"backbone": config.model.backbone, "width_multiplier": 1.0,
          "image_size": config.data.image_size, "channels": config.data.channels}
  return export.Encoder(simclr_model.encoder_from_config(config.model), variables, info)


def _write(config, variables, out) -> dict:
  """export_torchvision's files for `variables` (no workdir): the script's globals."""
  os.makedirs(out, exist_ok=True)
  torch_interop.save(torch_interop.encoder_state_dict(variables),
                     os.path.join(out, torch_interop.ENCODER_FILE))
  info = {"image_size": config.data.image_size, "channels": config.data.channels}
  script = os.path.join(out, torch_interop.SCRIPT_FILE)
  with open(script, "w") as f:
    f.write(torch_interop.script(config.model, info, 0, with_head=False))
  return runpy.run_path(script)


def _relative_error(a, b) -> float:
  return float(np.abs(a - b).max() / np.abs(b).max())


def _torch_features(model, images_nhwc):
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


def _assert_same_features(config, tmp_path, n=4):
  variables = _random_variables(config.model, config.data.channels)
  model = _write(config, variables, str(tmp_path))["load_encoder"]()   # strict=True inside
  assert not model.training
  s, c = config.data.image_size, config.data.channels
  x = np.random.default_rng(1).normal(size=(n, s, s, c)).astype(np.float32)
  h_jax = _encoder(config, variables)(x)
  h_torch = _torch_features(model, x)
  assert h_torch.shape == h_jax.shape
  assert _relative_error(h_torch, h_jax) < 1e-4, _relative_error(h_torch, h_jax)
  return variables


def test_resnet18_cifar_stem_one_channel_computes_the_same_features(tmp_path):
  _assert_same_features(_config(), tmp_path)


def test_resnet50_imagenet_stem_three_channels_computes_the_same_features(tmp_path):
  _assert_same_features(_config("resnet50", cifar_stem=False, channels=3, image_size=32),
                        tmp_path, n=2)


def test_the_script_sizes_conv1_to_the_run():
  lines = torch_interop.encoder_lines(_config().model, 1)
  assert lines == [
      "model = torchvision.models.resnet18(weights=None)",
      "model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)",
      "model.maxpool = torch.nn.Identity()",
      "model.fc = torch.nn.Identity()"]
  # The ImageNet stem on RGB is torchvision's own conv1: only fc goes.
  assert torch_interop.encoder_lines(_config("resnet50", False, 3).model, 3) == [
      "model = torchvision.models.resnet50(weights=None)", "model.fc = torch.nn.Identity()"]


def _saved(config, path, variables=None) -> str:
  variables = variables or _random_variables(config.model, config.data.channels)
  torch_interop.save(torch_interop.encoder_state_dict(variables), str(path))
  return str(path)


def test_init_from_reads_a_state_dict_and_an_export_back_bitwise(tmp_path):
  config = _config()
  variables = _random_variables(config.model, 1)
  template = torch_interop.abstract_encoder(config.model, 1)
  # torchvision's full model writes fc too: ignored, like the counters torch adds.
  import torch
  state_dict = torch_interop.encoder_state_dict(variables)
  state_dict.update({"fc.weight": np.zeros((10, 512), np.float32),
                     "fc.bias": np.zeros(10, np.float32)})
  torch_interop.save(state_dict, str(tmp_path / "with_fc.pt"))
  assert isinstance(torch.load(tmp_path / "with_fc.pt")["bn1.num_batches_tracked"],
                    torch.Tensor)
  assert torch_interop.NPZ_FILE == export.WEIGHTS_FILE
  np.savez(tmp_path / "encoder.npz", **{"/".join(p): v for p, v in _flat(variables).items()})
  for path in (tmp_path / "with_fc.pt", tmp_path):
    loaded = torch_interop.encoder_variables(str(path), template)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in
               zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)))


def _flat(variables):
  from flax import traverse_util
  return traverse_util.flatten_dict(variables)


def _refusal(config) -> str:
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config, "pretrain", data=False)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_init_from_of_another_shape_is_one_line_naming_the_key(tmp_path):
  r18 = _saved(_config(), tmp_path / "r18.pt")
  rgb = _saved(_config(channels=3), tmp_path / "rgb.pt")
  r34 = _saved(_config("resnet34"), tmp_path / "r34.pt")
  c = _config("resnet34")
  c.model.init_from = r18
  assert _refusal(c) == (f"model.init_from: {r18}: no 'layer1.2.bn1.bias', which this "
                         "config's encoder needs (shape (64,))")
  c = _config()
  c.model.init_from = rgb
  assert _refusal(c) == (f"model.init_from: {rgb}: 'conv1.weight' has shape (64, 3, 3, 3); "
                         "this config's encoder needs (64, 1, 3, 3)")
  c.model.init_from = r34
  assert _refusal(c).startswith(f"model.init_from: {r34}: 'layer1.2.bn1.bias' (and ")
  c = _config("resnet50")
  c.model.init_from = r18
  assert _refusal(c) == (f"model.init_from: {r18}: no 'layer1.0.bn3.bias', which this "
                         "config's encoder needs (shape (256,))")
  c.model.init_from = str(tmp_path / "nowhere.pt")
  assert _refusal(c).endswith("nowhere.pt: no such file or folder")
  # The probe reads a checkpoint, not the file its run started from.
  assert validate.check(c, "linear_eval", data=False) is None


def test_init_from_without_torch_names_the_extra(tmp_path, monkeypatch):
  path = _saved(_config(), tmp_path / "r18.pt")
  monkeypatch.setitem(sys.modules, "torch", None)
  c = _config()
  c.model.init_from = path
  assert _refusal(c) == (f"model.init_from={path!r} needs torch, which is not installed: "
                         'pip install "simclr_jax[torch]"')


@pytest.mark.parametrize("field, value, why", [
    ("width_multiplier", 2.0, "model.width_multiplier=2: torchvision's ResNets have width 1"),
    ("backbone", "sk_resnet18", "model.backbone='sk_resnet18': SimCLR v2's selective-kernel"),
])
def test_a_wide_or_sk_encoder_is_refused_in_one_line(field, value, why, tmp_path):
  c = _config()
  c.model[field] = value
  c.model.init_from = str(tmp_path)
  assert _refusal(c).startswith(f"model.init_from: {why}")
  # The export refuses it before reading any checkpoint (this workdir has none).
  workdir = tmp_path / "run"
  workdir_lib.write_config(c, str(workdir))
  with pytest.raises(validate.ConfigError) as e:
    export.export_torchvision(str(workdir), str(tmp_path / "out"))
  assert str(e.value).startswith(why) and "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()


# --- end to end: a trained run, the tool's export, pretraining and fine-tuning from it ----------

@pytest.mark.slow
def test_a_trained_run_exports_to_torchvision_and_starts_runs_again(tmp_path):
  """A full-width ResNet-18 with the CIFAR stem on 1 channel, one training step (BatchNorm's
  running averages moved off their init), exported by the tool with its projection head."""
  import torch

  import simclr_jax
  from simclr_jax import finetuning, parallel, state, train
  from simclr_jax.models import simclr as simclr_model
  config = _config()
  config.train.steps, config.train.num_devices, config.train.checkpoint_every = 1, 1, 1
  workdir, out = str(tmp_path / "run"), str(tmp_path / "torch")
  train.pretrain(config, workdir)
  # The tool, as a user runs it (its absl flags would clash with another command's in this
  # process).
  proc = run_python(["-m", "simclr_jax", "export", "--workdir", workdir, "--out", out,
                     "--format", "torchvision", "--with_head"], timeout=300)
  assert proc.returncode == 0 and "model.maxpool = torch.nn.Identity()" in proc.stdout, (
      proc.stdout + proc.stderr[-2000:])
  assert sorted(os.listdir(out)) == sorted([torch_interop.ENCODER_FILE, torch_interop.HEAD_FILE,
                                            torch_interop.SCRIPT_FILE])

  loader = runpy.run_path(os.path.join(out, torch_interop.SCRIPT_FILE))
  encoder = simclr_jax.load_encoder(workdir)
  stats = encoder.variables["batch_stats"]["bn_stem"]
  assert np.abs(np.asarray(stats["mean"])).max() > 1e-3       # trained statistics
  x = np.random.default_rng(2).random((4, 16, 16, 1), dtype=np.float32)
  h = encoder(x)
  h_torch = _torch_features(loader["load_encoder"](), x)
  assert _relative_error(h_torch, h) < 1e-4, _relative_error(h_torch, h)
  # The projection head, on the same h: z as the SimCLR model computes it.
  restored, _, _ = state.restore(config, workdir, "latest", parallel.make_mesh(1))
  model = simclr_model.model_from_config(config.model, num_classes=0)
  z = np.asarray(model.apply(restored, x, train=False)["z"])
  with torch.no_grad():
    z_torch = loader["load_projection_head"]()(torch.from_numpy(h_torch)).numpy()
  assert _relative_error(z_torch, z) < 1e-4, _relative_error(z_torch, z)

  # model.init_from: the exported file, and an npz export, put back exactly.
  npz = export.export_encoder(workdir, str(tmp_path / "npz"))
  for path in (os.path.join(out, torch_interop.ENCODER_FILE), npz):
    c = _config()
    c.model.init_from = path
    validate.check(c, "pretrain", data=False)
    setup = state.build(c, 64)
    started = state.init_state(setup, state.run_keys(c.seed)[0])
    for part in ("params", "batch_stats"):
      want = jax.tree.leaves(encoder.variables[part])
      got = jax.tree.leaves(getattr(started, part)["encoder"])
      assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))

  # Fine-tuning's baseline starts from it too.
  c = _config()
  c.model.init_from = out
  c.finetune.epochs = 1
  trainer = finetuning.Trainer(c, 10, multilabel=False)
  ft_state = trainer.init(0)
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(ft_state.params["encoder"]), jax.tree.leaves(encoder.variables["params"])))

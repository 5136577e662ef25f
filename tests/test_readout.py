"""The probe's feature sets (simclr_jax/readout.py) against independent references.

The stage maps come from torchvision's own ResNet-18 with the encoder's weights (the
torch_interop export), pooled by torch's adaptive_avg_pool2d; the head's first layer is a
NumPy Dense -> BatchNorm -> ReLU of h. Both sides compute in float64, so the tolerance is
rounding (1e-9), not a float32 one tuned on one CPU. 20x20 images make the last two stages
5x5 and 3x3: odd sides, where adaptive pooling's cells overlap by a row (a split into
disjoint halves, or cells read column-major, would not match).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_weight
from simclr_jax import readout, torch_interop
from simclr_jax.configs import default
from simclr_jax.models import simclr as simclr_model

IMAGE, N, TOL = 20, 3, 1e-9


def _model_config():
  c = default.get_config()
  default.shrink(c, image_size=IMAGE)
  c.model.width_multiplier = 1.0       # torchvision's ResNet-18 has only width 1
  c.model.conv_impl = "xla"            # float64 (oneDNN's path is float32)
  c.model.proj_layers, c.model.hidden_mlp = 3, 24
  return c.model


@pytest.fixture(scope="module")
def case():
  """A float64 SimCLR model, random parameters and BatchNorm statistics far from (0, 1)."""
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    model = simclr_model.model_from_config(_model_config(), 0).clone(dtype=jnp.float64)
    x = rng.uniform(size=(N, IMAGE, IMAGE, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    # float32 values (the torchvision export stores float32), computed in float64 on both sides
    as_f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)
    variables = jax.tree_util.tree_map_with_path(lambda p, s: as_f32(random_weight(rng, p, s)), shapes)
    got = readout.Readout(model, "h+head1+s4_2x2+s3_2x2").parts_of(variables, x)
  return model, variables, x, {k: np.asarray(v) for k, v in got.items()}


def _torchvision(variables, x):
  """h, layer3 and layer4 of torchvision's ResNet-18 (CIFAR stem) with these weights."""
  import torch
  import torchvision
  model = torchvision.models.resnet18(weights=None)
  model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
  model.maxpool, model.fc = torch.nn.Identity(), torch.nn.Identity()
  encoder = {c: variables[c]["encoder"] for c in ("params", "batch_stats")}
  state = {k: torch.from_numpy(np.asarray(v)) for k, v in
           torch_interop.encoder_state_dict(encoder).items()}
  model.load_state_dict(state, strict=True)
  model = model.double().eval()
  with torch.no_grad():
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = model.relu(model.bn1(model.conv1(t)))
    t3 = model.layer3(model.layer2(model.layer1(t)))
    t4 = model.layer4(t3)
    # (N, C, 2, 2) -> (N, 2, 2, C) -> cells row-major, channels within a cell
    cells = lambda m: torch.nn.functional.adaptive_avg_pool2d(m, 2).permute(0, 2, 3, 1)
    return (t4.mean((2, 3)).numpy(), cells(t3).reshape(len(x), -1).numpy(),
            cells(t4).reshape(len(x), -1).numpy(), t3.shape[-1], t4.shape[-1])


def _rel(a, b) -> float:
  return float(np.abs(a - b).max() / np.abs(b).max())


def test_stage_maps_pooled_2x2_are_torchvisions_adaptive_average_pool(case):
  _, variables, x, got = case
  h, s3, s4, side3, side4 = _torchvision(variables, x)
  assert (side3, side4) == (5, 3)      # odd: the cells overlap
  assert got["s3_2x2"].shape == (N, 4 * 256) and got["s4_2x2"].shape == (N, 4 * 512)
  assert _rel(got["h"], h) < TOL
  assert _rel(got["s3_2x2"], s3) < TOL
  assert _rel(got["s4_2x2"], s4) < TOL


def test_head_layer_1_is_dense_batchnorm_relu_of_h_in_numpy(case):
  _, variables, _, got = case
  p, s = variables["params"]["projection"], variables["batch_stats"]["projection"]
  a = got["h"] @ p["dense1"]["kernel"] + p["dense1"]["bias"]
  a = (a - s["bn1"]["mean"]) / np.sqrt(s["bn1"]["var"] + 1e-5) * p["bn1"]["scale"] \
      + p["bn1"]["bias"]
  want = np.maximum(a, 0)
  assert got["head1"].shape == (N, 24) and (want == 0).any() and (want > 0).any()
  assert _rel(got["head1"], want) < TOL


def test_apply_concatenates_the_parts_in_the_order_named(case):
  model, variables, x, got = case
  with jax.enable_x64(True):
    r = readout.Readout(model, "s3_2x2+head1+h")
    out = np.asarray(r.apply(variables, x)["h"])
    dims = r.dims(variables, x.shape[1:])
  assert dims == {"s3_2x2": 1024, "head1": 24, "h": 512}
  np.testing.assert_array_equal(out, np.concatenate([got[k] for k in ("s3_2x2", "head1", "h")],
                                                    axis=1))


def test_remat_blocks_give_the_same_features(case):
  # nn.remat lifts each block (model.remat): its output must still be captured.
  model, variables, x, got = case
  with jax.enable_x64(True):
    again = readout.Readout(model.clone(remat=True), "s4_2x2+s3_2x2").parts_of(variables, x)
  for k, v in again.items():
    assert _rel(np.asarray(v), got[k]) < TOL


@pytest.mark.parametrize("spec,bad", [("h+s5_2x2", "'s5_2x2'"), ("h+h", "(repeated)"),
                                      ("", "''")])
def test_an_unknown_or_repeated_part_is_refused_in_one_line(spec, bad):
  with pytest.raises(ValueError) as e:
    readout.parse(spec)
  msg = str(e.value)
  assert "\n" not in msg and bad in msg and "h, head1, s4_2x2, s3_2x2" in msg

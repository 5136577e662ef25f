"""The encoder as a torchvision ResNet state_dict, both ways: export, and `model.init_from`.

simclr_jax/models/resnet.py follows torchvision's layout (stride on the 3x3, explicit symmetric
paddings, BatchNorm eps 1e-5 on both sides), so the conversion is a renaming plus a transpose:

  simclr_jax (flax)                    torchvision.models.resnet
  conv_stem, bn_stem                   conv1, bn1
  stage{i}_block{j}                    layer{i}.{j-1}
  conv1..conv3, bn1..bn3               the same
  proj_conv, proj_bn                   downsample.0, downsample.1
  conv kernel (H, W, in, out)          weight (out, in, H, W)
  BatchNorm scale, bias                weight, bias
  batch_stats mean, var                running_mean, running_var (+ num_batches_tracked)

torchvision's `fc` is dropped (`model.fc = Identity()`: h, as `load_encoder` gives it); a CIFAR
stem is a 3x3 stride-1 `conv1` and `maxpool = Identity()`. The lines that build that model are
`script(...)`, written beside the export. Only ResNet-18 ... 152 at width 1 have a torchvision
counterpart. torch is imported inside the functions that need it (the [torch] extra).
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import traverse_util

from simclr_jax import extras

ENCODER_FILE = "encoder_torchvision.pt"
HEAD_FILE = "projection_head.pt"
SCRIPT_FILE = "load_in_pytorch.py"
NPZ_FILE = "encoder.npz"          # export.WEIGHTS_FILE: an export_encoder folder
TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# flax's leaf name -> torch's; a kernel is a Conv's or Linear's weight, a scale BatchNorm's.
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
_OIHW = (3, 2, 0, 1)              # flax's conv kernel (H, W, in, out) -> torch's weight
_HWIO = (2, 3, 1, 0)              # and back
# Keys of a torchvision file that the encoder has no use for: the ImageNet classifier, and the
# BatchNorm step counters (read only by momentum=None, in train mode).
_IGNORED = re.compile(r"^fc\.|\.num_batches_tracked$")


def require_torch(what: str):
  """torch, or extras.MissingExtra naming the [torch] extra."""
  return extras.require("torch", what)


def check_convertible(model_cfg) -> None:
  """ValueError (one line) for an encoder torchvision has no model for."""
  backbone, width = model_cfg.backbone, float(model_cfg.width_multiplier)
  if backbone.startswith("sk_"):
    raise ValueError(f"model.backbone={backbone!r}: SimCLR v2's selective-kernel convolutions "
                     "have no torchvision counterpart; only " + ", ".join(TORCHVISION) + " do")
  if backbone not in TORCHVISION:
    raise ValueError(f"model.backbone={backbone!r}: torchvision has no such ResNet; only "
                     + ", ".join(TORCHVISION))
  if width != 1:
    raise ValueError(f"model.width_multiplier={width:g}: torchvision's ResNets have width 1 "
                     "(64 stem channels); a wider or narrower encoder has no torchvision model")


# --- names and arrays ----------------------------------------------------------------------

def _module(name: str) -> str:
  stage = re.fullmatch(r"stage(\d+)_block(\d+)", name)
  if stage:
    return f"layer{stage[1]}.{int(stage[2]) - 1}"
  return {"conv_stem": "conv1", "bn_stem": "bn1", "proj_conv": "downsample.0",
          "proj_bn": "downsample.1"}.get(name, name)


def torch_name(path: tuple[str, ...]) -> str:
  """The torchvision key of an encoder variable, path without its collection:
  ('stage2_block1', 'proj_bn', 'mean') -> 'layer2.0.downsample.1.running_mean'."""
  *modules, leaf = path
  return ".".join([*map(_module, modules), _LEAVES[leaf]])


def _to_torch(path, x: np.ndarray) -> np.ndarray:
  # A Dense kernel (in, out) is Linear's weight transposed, (out, in).
  x = np.asarray(x)
  if path[-1] == "kernel":
    x = x.transpose(_OIHW) if x.ndim == 4 else x.T
  return np.ascontiguousarray(x)


def _from_torch(path, x: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    x = x.transpose(_HWIO) if x.ndim == 4 else x.T
  return np.ascontiguousarray(x)


def _torch_shape(path, shape) -> tuple[int, ...]:
  """The shape `_to_torch` gives an array of `shape`."""
  shape = tuple(shape)
  if path[-1] == "kernel":
    return tuple(shape[i] for i in _OIHW) if len(shape) == 4 else shape[::-1]
  return shape


def _flat(variables) -> dict[tuple[str, ...], np.ndarray]:
  """{(collection, *path): array} of {'params': ..., 'batch_stats': ...}."""
  return {(c, *p): v for c in ("params", "batch_stats")
          for p, v in traverse_util.flatten_dict(variables.get(c, {})).items()}


def _counters(names) -> dict[str, np.ndarray]:
  return {n.rsplit(".", 1)[0] + ".num_batches_tracked": np.zeros((), np.int64)
          for n in names if n.endswith(".running_mean")}


def encoder_state_dict(variables) -> dict[str, np.ndarray]:
  """torchvision's state_dict (numpy arrays) of encoder `variables` {'params', 'batch_stats'}."""
  out = {torch_name(p[1:]): _to_torch(p, v) for p, v in _flat(variables).items()}
  return {**out, **_counters(out)}


def _head_index(name: str, proj_layers: int) -> int:
  # ProjectionHead's Dense -> BN -> ReLU blocks, then `out`, as torch.nn.Sequential indices.
  if name == "out":
    return 3 * (proj_layers - 1)
  kind, i = re.fullmatch(r"(dense|bn)(\d+)", name).groups()
  return 3 * (int(i) - 1) + (kind == "bn")


def head_state_dict(variables, proj_layers: int) -> dict[str, np.ndarray]:
  """The state_dict of `script`'s ProjectionHead for the projection's {'params', 'batch_stats'}."""
  out = {f"{_head_index(p[1], proj_layers)}.{_LEAVES[p[-1]]}": _to_torch(p, v)
         for p, v in _flat(variables).items()}
  return {**out, **_counters(out)}


def save(state_dict: dict[str, np.ndarray], path: str) -> None:
  torch = require_torch("export --format torchvision")
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)


# --- model.init_from ------------------------------------------------------------------------

def _read(path: str) -> tuple[dict[str, np.ndarray], bool]:
  """(arrays by key, whether the keys are torchvision's) of a state_dict file, a folder holding
  one (ENCODER_FILE), or an export_encoder folder (encoder.npz, flax's '/'-joined keys)."""
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, NPZ_FILE)):
      with np.load(os.path.join(path, NPZ_FILE)) as npz:
        return {k: npz[k] for k in npz.files}, False
    if not os.path.exists(os.path.join(path, ENCODER_FILE)):
      raise ValueError(f"{path}: the folder holds neither {NPZ_FILE} (simclr-jax export) nor "
                       f"{ENCODER_FILE} (simclr-jax export --format torchvision)")
    path = os.path.join(path, ENCODER_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file or folder")
  torch = require_torch(f"model.init_from={path!r}")
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001  (pickle's, zipfile's or torch's own error)
    raise ValueError(f"{path}: not a torch state_dict ({type(e).__name__}: {e})") from None
  if not isinstance(loaded, dict) or not all(map(torch.is_tensor, loaded.values())):
    raise ValueError(f"{path}: not a state_dict (a dict of tensors, as model.state_dict() "
                     "gives)")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in loaded.items()}, True


def encoder_variables(path: str, template) -> dict:
  """The encoder's {'params', 'batch_stats'} read from `path` (see `_read`), as numpy arrays in
  the shapes and dtypes of `template` (the same tree: arrays or ShapeDtypeStructs).
  ValueError (one line, naming the parameter): a key missing, left over or of another shape."""
  arrays, torch_keys = _read(os.fspath(path))
  out, used = {}, set()
  for p, want in _flat(template).items():
    key = torch_name(p[1:]) if torch_keys else "/".join(p)
    # Shapes as the file writes them: torch's layout for a torch file.
    need = _torch_shape(p, want.shape) if torch_keys else tuple(want.shape)
    if key not in arrays:
      raise ValueError(f"{path}: no {key!r}, which this config's encoder needs (shape "
                       f"{need})")
    if arrays[key].shape != need:
      raise ValueError(f"{path}: {key!r} has shape {tuple(arrays[key].shape)}; this config's "
                       f"encoder needs {need}")
    x = _from_torch(p, arrays[key]) if torch_keys else arrays[key]
    out[p] = np.asarray(x, want.dtype)
    used.add(key)
  extra = sorted(k for k in arrays if k not in used and not (torch_keys and _IGNORED.search(k)))
  if extra:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    raise ValueError(f"{path}: {extra[0]!r}{more} has no place in this config's encoder: "
                     "another backbone?")
  tree = traverse_util.unflatten_dict(out)
  return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}


def abstract_encoder(model_cfg, channels: int):
  """Shapes and dtypes of the config's encoder variables, traced, not computed or compiled."""
  import jax
  import jax.numpy as jnp

  from simclr_jax.models import simclr as simclr_model
  # 'xla': the parameters are the same whichever convolution, and tracing needs no oneDNN.
  encoder = simclr_model.make_encoder(model_cfg.backbone, model_cfg.width_multiplier,
                                      model_cfg.cifar_stem, conv_impl="xla")
  x = jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32)
  shapes = jax.eval_shape(lambda k, x: encoder.init(k, x, train=False),
                          jax.random.PRNGKey(0), x)
  return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def check_init_from(model_cfg, channels: int) -> None:
  """model.init_from against the config's encoder, before anything compiles (ValueError)."""
  check_convertible(model_cfg)
  encoder_variables(model_cfg.init_from, abstract_encoder(model_cfg, channels))


# --- the lines that build the torch models ---------------------------------------------------

_HEAD_CLASS = '''
class ProjectionHead(torch.nn.Sequential):
  """simclr_jax's projection g(h) -> z (models/heads.py): (Linear -> BatchNorm1d -> ReLU) x
  (proj_layers - 1), then a Linear without bias. z is L2-normalised by the loss, not here."""

  def __init__(self, in_features, hidden_mlp, feat_dim, proj_layers):
    layers = []
    for _ in range(proj_layers - 1):
      layers += [torch.nn.Linear(in_features, hidden_mlp), torch.nn.BatchNorm1d(hidden_mlp),
                 torch.nn.ReLU()]
      in_features = hidden_mlp
    layers.append(torch.nn.Linear(in_features, feat_dim, bias=False))
    super().__init__(*layers)
'''


def encoder_lines(model_cfg, channels: int) -> list[str]:
  """The statements that build torchvision's model for this encoder, as `model`."""
  lines = [f"model = torchvision.models.{model_cfg.backbone}(weights=None)"]
  if model_cfg.cifar_stem:
    lines += [f"model.conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=3, stride=1, "
              "padding=1, bias=False)", "model.maxpool = torch.nn.Identity()"]
  elif channels != 3:
    lines += [f"model.conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=7, stride=2, "
              "padding=3, bias=False)"]
  return lines + ["model.fc = torch.nn.Identity()"]


def script(model_cfg, info: dict, feature_dim: int, with_head: bool) -> str:
  """load_in_pytorch.py: `load_encoder()` (and `load_projection_head()`), eval mode."""
  size, channels = int(info["image_size"]), int(info["channels"])
  body = "\n".join("  " + line for line in encoder_lines(model_cfg, channels))
  text = f'''"""The simclr_jax encoder of {info.get("workdir", "?")} (step {info.get(
      "checkpoint_step", "?")}) in PyTorch.

Input: (N, {channels}, {size}, {size}) float32, prepared as for simclr_jax.load_encoder
(value range {info.get("value_range")}, data source {info.get("data_source")!r}); from
simclr_jax's NHWC arrays: torch.from_numpy(images).permute(0, 3, 1, 2).
Output: h, (N, {feature_dim}).
"""
import os

import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))


def build_encoder():
  """torchvision's {model_cfg.backbone}, sized to the run: conv1 to its channels and stem,
  fc dropped."""
{body}
  return model


def load_encoder():
  model = build_encoder()
  state_dict = torch.load(os.path.join(HERE, "{ENCODER_FILE}"), weights_only=True)
  model.load_state_dict(state_dict, strict=True)
  return model.eval()
'''
  if with_head:
    m = model_cfg
    text += "\n" + _HEAD_CLASS + f'''

def load_projection_head():
  head = ProjectionHead({feature_dim}, {m.hidden_mlp}, {m.feat_dim}, {m.proj_layers})
  state_dict = torch.load(os.path.join(HERE, "{HEAD_FILE}"), weights_only=True)
  head.load_state_dict(state_dict, strict=True)
  return head.eval()
'''
  return text + f'''

if __name__ == "__main__":
  with torch.no_grad():
    h = load_encoder()(torch.zeros(2, {channels}, {size}, {size}))
  print("h:", tuple(h.shape))
'''

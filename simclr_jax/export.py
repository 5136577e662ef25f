"""The pretrained encoder for use elsewhere: `load_encoder` and the export it also reads.

  encoder = simclr_jax.load_encoder("runs/digits")       # a workdir, or an export folder
  h = encoder(images)                                    # (N, H, W, C) -> (N, feature_dim)

From a workdir, `load_encoder` reads config.json and a checkpoint (`checkpoint='best'`: the
best one when the run kept one, else the latest; 'latest'; or a step), through the same
restore as the probes (state.restore). `export_encoder` writes the encoder alone
into a folder: `encoder.npz` (its params and BatchNorm statistics, flat '/'-joined keys, plain
numpy) and `encoder.json` (the model fields that rebuild it, the input it expects, where it
came from, and how a raw file becomes its input: simclr_jax/data/preprocess.py);
`load_encoder(folder)` needs nothing else, and `encoder.embed_files(paths)` reads, prepares and
embeds files as the run prepared its training images. The projection head and the optimizer
state are left out: SimCLR's downstream tasks use h, not z. `export_torchvision` writes the
encoder (and optionally the projection head) as PyTorch state_dicts that torchvision's ResNet
loads (simclr_jax/torch_interop.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from absl import logging

from simclr_jax import extras, parallel, progress, torch_interop, validate
from simclr_jax import state as state_lib
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import preprocess as preprocess_lib
from simclr_jax.models import simclr as simclr_model

CONFIG_FILE = "encoder.json"
WEIGHTS_FILE = "encoder.npz"
# The model fields that rebuild the encoder (models.simclr.encoder_from_config reads these).
MODEL_FIELDS = ("backbone", "width_multiplier", "cifar_stem", "dtype", "conv_impl")
# 2: encoder.json records `preprocess`; a version 1 export loads, and says it lacks it.
FORMAT_VERSION = 2


class Encoder:
  """`encoder(images) -> h`: jitted, BatchNorm in inference mode, float32 features.

  images: (N, H, W, C) float in `value_range`, normalised as the run's data source does;
  `image_size` is the side the encoder was trained at (any side works, the network pools
  globally, but features are comparable at that size). Large inputs are fed `batch_size`
  images at a time. `variables` and `module` are the Flax pieces for code that wants them.
  `preprocess(raw)` turns one stored image (uint8 png, gauss FITS, uint16 bands, ...) into
  the input as the run's source did; `embed_files(paths)` reads, prepares and embeds files.
  """

  def __init__(self, module, variables, info: dict[str, Any]):
    self.module, self.variables, self.info = module, variables, info
    self.image_size = int(info["image_size"])
    self.channels = int(info["channels"])
    self.value_range = tuple(info["value_range"]) if info.get("value_range") else None
    self.preprocessing = info.get("preprocess")     # simclr_jax/data/preprocess.py's spec
    self._apply = jax.jit(lambda v, x: module.apply(v, x, train=False).astype(jnp.float32))
    dummy = jax.ShapeDtypeStruct((1, self.image_size, self.image_size, self.channels),
                                 jnp.float32)
    self.feature_dim = int(jax.eval_shape(self._apply, variables, dummy).shape[-1])

  def __call__(self, images, batch_size: int = 256) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] != self.channels:
      raise ValueError(f"expected images (N, H, W, {self.channels}), got shape {x.shape}")
    out = [np.asarray(self._apply(self.variables, x[i:i + batch_size]))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

  def preprocess(self, raw, file_kind: str = "image") -> np.ndarray:
    """One image as stored (H, W[, C]) -> the encoder's input (S, S, C) float32; `file_kind`
    'fits' or 'npz' for arrays in that file's orientation (row 0 = south)."""
    preprocess_lib.check(self.preprocessing, self._where())
    return preprocess_lib.apply(self.preprocessing, raw, file_kind)

  def embed_files(self, paths, batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
    """h (N, feature_dim) of the files `paths` (png/jpg/tif/bmp, .npy, FITS, .npz), each read
    and prepared by `preprocess`, `batch_size` at a time."""
    preprocess_lib.check(self.preprocessing, self._where())
    paths = [os.fspath(p) for p in paths]
    bar = progress.Progress("embed", len(paths), unit="file") if show_progress else None
    out = []
    for i in range(0, len(paths), batch_size):
      images = np.stack([preprocess_lib.read(self.preprocessing, p)
                         for p in paths[i:i + batch_size]])
      out.append(self(images, batch_size))
      if bar:
        bar.update(min(i + batch_size, len(paths)))
    if bar:
      bar.close()
    return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

  def _where(self) -> str:
    return self.info.get("export") or self.info.get("workdir") or "this encoder"

  def __repr__(self) -> str:
    return (f"Encoder({self.info['backbone']} x{self.info['width_multiplier']}, "
            f"{self.image_size}x{self.image_size}x{self.channels} -> {self.feature_dim})")


def _model_config(info: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({k: info[k] for k in MODEL_FIELDS})


def _info(config, source: dict) -> dict:
  m, d = config.model, config.data
  info = {k: m.get(k, "xla") if k == "conv_impl" else m[k] for k in MODEL_FIELDS}
  info.update(image_size=int(d.image_size), channels=int(d.channels),
              value_range=list(d.value_range) if d.get("value_range") else None,
              data_source=d.source, format_version=FORMAT_VERSION,
              preprocess=preprocess_lib.spec(d), **source)
  return info


def _restore(config, workdir: str, which) -> tuple[dict, dict]:
  """(the whole model's variables, where they came from) of `workdir`'s checkpoint `which`."""
  # On one device, whatever device count the run trained on (a 256 batch trained on 8
  # devices loads on a 3-device machine too). In a multi-process run every process restores
  # together, on all devices, as the probes do.
  mesh = parallel.make_mesh(1 if jax.process_count() == 1 else config.train.num_devices)
  restored, step, kind = state_lib.restore(config, workdir, which, mesh)
  return restored, {"workdir": os.path.abspath(workdir), "checkpoint": kind,
                    "checkpoint_step": step}


def _part(restored: dict, name: str) -> dict:
  """{'params', 'batch_stats'} of one part of the model ('encoder', 'projection')."""
  return {"params": restored["params"][name],
          "batch_stats": restored["batch_stats"].get(name, {})}


def _encoder(config, restored: dict, source: dict) -> Encoder:
  return Encoder(simclr_model.encoder_from_config(config.model), _part(restored, "encoder"),
                 _info(config, source))


def _from_workdir(workdir: str, which) -> Encoder:
  config = workdir_lib.load_config(workdir)
  return _encoder(config, *_restore(config, workdir, which))


def _from_export(path: str) -> Encoder:
  with open(os.path.join(path, CONFIG_FILE)) as f:
    info = json.load(f)
  if info.get("format_version", 1) > FORMAT_VERSION:
    raise ValueError(f"{path}: export format {info['format_version']} is newer than this "
                     f"simclr_jax reads ({FORMAT_VERSION})")
  with np.load(os.path.join(path, WEIGHTS_FILE)) as npz:
    flat = {tuple(k.split("/")): jnp.asarray(npz[k]) for k in npz.files}
  variables = traverse_util.unflatten_dict(flat)
  variables.setdefault("batch_stats", {})
  info["export"] = os.path.abspath(path)
  if not info.get("preprocess"):
    logging.warning("%s: an export of format %s, which records no preprocessing: "
                    "encoder(images) works on prepared arrays, encoder.preprocess and "
                    "embed_files need it exported again", path, info.get("format_version", 1))
  elif info["preprocess"].get("lacks"):
    logging.warning("%s: preprocessing incomplete (%s)", path, info["preprocess"]["lacks"])
  return Encoder(simclr_model.encoder_from_config(_model_config(info)), variables, info)


def load_encoder(workdir_or_export: str, checkpoint="best") -> Encoder:
  """The encoder of a pretraining workdir (its `checkpoint`: 'best', 'latest' or a step) or
  of an `export_encoder` folder, as a callable images -> h (see `Encoder`)."""
  path = os.fspath(workdir_or_export)
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    return _from_export(path)
  if os.path.exists(os.path.join(path, workdir_lib.CONFIG)):
    return _from_workdir(path, checkpoint)
  raise FileNotFoundError(f"{path!r} holds neither an exported encoder ({CONFIG_FILE}) nor a "
                          "pretraining run (config.json)")


def export_encoder(workdir: str, out: str, checkpoint="best") -> str:
  """Writes the encoder of `workdir`'s `checkpoint` to the folder `out`; returns `out`."""
  return write_encoder(_from_workdir(workdir, checkpoint), out)


def write_encoder(encoder: Encoder, out: str) -> str:
  """Writes `encoder` (its variables and info) to the folder `out`; returns `out`."""
  os.makedirs(out, exist_ok=True)
  if any("/" in k for path in traverse_util.flatten_dict(encoder.variables) for k in path):
    raise ValueError("a variable name holds '/', the export's key separator")
  flat = traverse_util.flatten_dict(jax.device_get(encoder.variables), sep="/")
  # Arrays as saved (float32 parameters), so the export computes the same features bitwise.
  np.savez(os.path.join(out, WEIGHTS_FILE), **{k: np.asarray(v) for k, v in flat.items()})
  info = dict({k: v for k, v in encoder.info.items() if k != "export"},
              feature_dim=encoder.feature_dim,
              parameters=int(sum(np.size(v) for v in
                                 jax.tree.leaves(encoder.variables["params"]))))
  with open(os.path.join(out, CONFIG_FILE), "w") as f:
    json.dump(info, f, indent=2)
  return out


def export_torchvision(workdir: str, out: str, checkpoint="best",
                       with_head: bool = False) -> list[str]:
  """Writes the encoder of `workdir`'s `checkpoint` as a torchvision ResNet state_dict
  (torch_interop.ENCODER_FILE; with `with_head` the projection head too, HEAD_FILE) and
  SCRIPT_FILE, the lines that build the torch models and load them; returns the paths written.
  validate.ConfigError: an encoder torchvision has no model for, or no torch."""
  config = workdir_lib.load_config(workdir)
  try:                  # before the restore: a refusal costs nothing
    torch_interop.check_convertible(config.model)
    torch_interop.require_torch("export --format torchvision")
  except (ValueError, extras.MissingExtra) as e:
    raise validate.ConfigError(validate.one_line(e)) from None
  restored, source = _restore(config, workdir, checkpoint)
  restored = jax.device_get(restored)
  encoder = _encoder(config, restored, source)
  os.makedirs(out, exist_ok=True)
  files = {torch_interop.ENCODER_FILE: torch_interop.encoder_state_dict(encoder.variables)}
  if with_head:
    files[torch_interop.HEAD_FILE] = torch_interop.head_state_dict(
        _part(restored, "projection"), config.model.proj_layers)
  paths = []
  for name, state_dict in files.items():
    paths.append(os.path.join(out, name))
    torch_interop.save(state_dict, paths[-1])
  paths.append(os.path.join(out, torch_interop.SCRIPT_FILE))
  with open(paths[-1], "w") as f:
    f.write(torch_interop.script(config.model, encoder.info, encoder.feature_dim, with_head))
  return paths

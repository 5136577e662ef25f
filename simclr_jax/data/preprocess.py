"""Preprocessing that travels with the model: what turns a raw file into the encoder's input.

A source prepares every example the same way: read, scale the values (`normalize`), z-score
bands, flip FITS-oriented arrays north-up, resize to `image_size`. `spec(data_config)` writes
that down as a plain dict (JSON, kept in an export's encoder.json), and `apply(spec, raw)` /
`read(spec, path)` do it to an array or a file, so that someone holding only an export feeds
it new files as the run fed its training images (timm's `pretrained_cfg` plays this role).

  normalize     auto (uint8 /255, uint16 /65535, floats as stored, NaN -> 0) | gauss (NaN ->
                0, clip to ±clip_gauss, / clip_gauss) | none | affine (x * scale + offset)
  band_mean/std per-channel z-score after `normalize` (multispectral sources)
  flip_vertical the file kinds stored with row 0 = south ('fits', 'npz'), flipped north-up
  resize        centre square, then the mean of f x f blocks (integer factor) or PIL bilinear
Each source declares its own fields where it is registered (`register(..., preprocess=fn)`,
simclr_jax/data/sources/registry.py); a source without a declaration records none, and
`apply` then says so.
"""

from __future__ import annotations

import numpy as np

from simclr_jax.data import sources
from simclr_jax.data.sources import folder, pixels, registry

VERSION = 1
RESIZE = ("centre square, then the mean of f x f blocks for an integer factor, else PIL "
          "bilinear (antialiased when shrinking)")
NORMALIZE = pixels.NORMALIZE + ("affine",)
DEFAULTS = {"normalize": "auto", "clip_gauss": 250.0, "scale": 1.0, "offset": 0.0,
            "band_mean": None, "band_std": None, "flip_vertical": []}


def _options(data_cfg) -> dict:
  options = {k: o.default for k, o in registry.SOURCES[data_cfg.source].options.items()}
  return dict(options, **sources.options_of(data_cfg))


def spec(data_cfg) -> dict:
  """The preprocessing of `data_cfg`'s source, as a JSON-able dict; `lacks` names what the
  source could not record (None when complete)."""
  src = registry.SOURCES.get(data_cfg.source)
  out = {"version": VERSION, "source": data_cfg.source, "image_size": int(data_cfg.image_size),
         "channels": int(data_cfg.channels), "resize": RESIZE,
         "value_range": list(data_cfg.value_range) if data_cfg.get("value_range") else None}
  if src is None or src.preprocess is None:
    return dict(out, lacks=f"data.source={data_cfg.source!r} declares no preprocessing")
  path = pixels.split_path(data_cfg.get("path") or "-", data_cfg.get("train_split", "train"),
                           data_cfg.source)
  try:
    fields = src.preprocess(_options(data_cfg), path)
  except (OSError, ValueError, KeyError) as e:      # e.g. band statistics in a file not here
    return dict(out, lacks=f"{type(e).__name__}: {e}")
  unknown = sorted(set(fields) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"data source {data_cfg.source!r}: unknown preprocessing field(s) {unknown}")
  return dict(out, **{**DEFAULTS, **fields}, lacks=None)


def check(spec_: dict | None, where: str) -> None:
  """Refuses, in one line, a spec that cannot prepare files: absent (an export made before
  preprocessing was recorded) or incomplete."""
  if not spec_:
    raise ValueError(f"{where} records no preprocessing (an export made before simclr_jax "
                     "recorded it): export it again from its workdir (simclr-jax export), or "
                     "prepare arrays as its data source did and call encoder(images)")
  if spec_.get("lacks"):
    raise ValueError(f"{where}: its preprocessing is incomplete ({spec_['lacks']}); prepare "
                     "arrays as its data source did and call encoder(images)")


def kind(path: str) -> str:
  """'fits', 'npz' or 'image' (png/jpg/tif/npy): what `flip_vertical` names."""
  low = path.lower()
  if low.endswith(folder.FITS_EXTENSIONS):
    return "fits"
  return "npz" if low.endswith(".npz") else "image"


def apply(spec_: dict, raw, file_kind: str = "image") -> np.ndarray:
  """`raw` (H, W) or (H, W, C) as stored (uint8, uint16, gauss, ...) -> (S, S, C) float32, the
  encoder's input; `file_kind` 'fits' or 'npz' for arrays in that file's orientation."""
  check(spec_, "this encoder")
  x = pixels.hwc(np.asarray(raw), "preprocess")
  pixels.check_channels(x, spec_["channels"], "preprocess")
  how = spec_["normalize"]
  if how == "affine":
    x = x.astype(np.float32) * np.float32(spec_["scale"]) + np.float32(spec_["offset"])
  else:
    x = pixels.normalize(x, how, spec_["clip_gauss"])
  if spec_.get("band_mean") is not None:
    x = (x - np.asarray(spec_["band_mean"], np.float32)) / np.asarray(spec_["band_std"],
                                                                       np.float32)
  if file_kind in spec_["flip_vertical"]:
    x = x[::-1]
  return pixels.resize(x, spec_["image_size"])


def read_raw(path: str) -> np.ndarray:
  """A file's image as stored: png/jpg/tif/bmp, .npy, FITS (first image HDU), or .npz (its one
  array, or `x` / `images`[0])."""
  if kind(path) != "npz":
    return folder.read_image_file(path)[0]
  f = pixels.load_npz(path, "", "an .npz holding one image")
  with f:
    key = next((k for k in ("x", "image") if k in f), f.files[0] if len(f.files) == 1 else None)
    if key is None:
      raise ValueError(f"{path}: {len(f.files)} arrays {sorted(f.files)}; expected one image, "
                       "or one named 'x' or 'image'")
    return np.asarray(f[key])


def read(spec_: dict, path: str) -> np.ndarray:
  """The encoder's input (S, S, C) float32 from the file `path`."""
  try:
    return apply(spec_, read_raw(path), kind(path))
  except ValueError as e:
    text = str(e).replace("preprocess:", "").strip()
    raise ValueError(text if text.startswith(path) else f"{path}: {text}") from None


def describe(spec_: dict | None) -> str:
  """One line for people: what the encoder expects of a file."""
  if not spec_:
    return "no preprocessing recorded"
  if spec_.get("lacks"):
    return f"{spec_['source']} source, incomplete: {spec_['lacks']}"
  parts = [f"{spec_['source']} source", f"normalize {spec_['normalize']}"]
  if spec_.get("normalize") == "gauss":
    parts[-1] += f" (clip ±{spec_['clip_gauss']:g} G)"
  if spec_.get("normalize") == "affine":
    parts[-1] += f" (x * {spec_['scale']:g} + {spec_['offset']:g})"
  if spec_.get("band_mean") is not None:
    parts.append("per-band z-score")
  if spec_.get("flip_vertical"):
    parts.append(f"{'/'.join(spec_['flip_vertical'])} flipped north-up")
  parts.append(f"resized to {spec_['image_size']}x{spec_['image_size']}x{spec_['channels']}")
  return ", ".join(parts)

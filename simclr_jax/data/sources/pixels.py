"""Pixel helpers the sources share: paths, normalisation, centre square, resize, layout checks.

Resizing (to `data.image_size`): a non-square image is first centre-cropped to a square; an
integer downscale (512 -> 128, 256 -> 128) is the mean of each f x f block (area /
antialiased, exact); any other size is PIL bilinear (antialiased when shrinking).
Magnetograms in gauss: NaN -> 0, clip to ±clip G (250), divide by it, so [-1, 1].
"""

from __future__ import annotations

import os

import numpy as np

NORMALIZE = ("auto", "gauss", "none")


def no_data(path: str, what: str, split: str | None = None) -> FileNotFoundError:
  at = f" (split {split!r})" if split else ""
  return FileNotFoundError(f"no data at {path}{at}: expected {what}; set data.path, see "
                           f"README.md § Data for where to get it")


def split_path(path: str, split: str, source: str) -> str:
  """data.path with '{split}' replaced by the split name (without it every split reads the
  same data: fine for unlabelled pretraining, not for a probe's test score)."""
  if not path:
    raise ValueError(f"data.source={source!r} needs data.path ('{{split}}' in it is replaced by "
                     "the split name)")
  return os.path.expanduser(path.replace("{split}", split))


def normalize_gauss(x: np.ndarray, clip: float = 250.0) -> np.ndarray:
  """Magnetogram in gauss -> [-1, 1]: NaN (off-disk) -> 0, clip to ±clip, / clip."""
  x = np.array(x, np.float32)         # a copy: the in-place ops below never touch the input
  np.nan_to_num(x, copy=False, nan=0.0, posinf=clip, neginf=-clip)
  np.clip(x, -clip, clip, out=x)
  x /= np.float32(clip)
  return x


def normalize_auto(x: np.ndarray) -> np.ndarray:
  """uint8 / 255, uint16 / 65535, floats as they are (NaN -> 0)."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.0
  if x.dtype == np.uint16:
    return x.astype(np.float32) / 65535.0
  return np.nan_to_num(np.asarray(x, np.float32), nan=0.0)


def check_normalize(how: str, source: str) -> None:
  if how not in NORMALIZE:
    raise ValueError(f"data.{source}.normalize={how!r}; expected one of {NORMALIZE}")


def normalize(x: np.ndarray, how: str, clip: float) -> np.ndarray:
  """'auto' (normalize_auto), 'gauss' (normalize_gauss with clip) or 'none' (as float32)."""
  if how == "gauss":
    return normalize_gauss(x, clip)
  if how == "auto":
    return normalize_auto(x)
  return np.asarray(x, np.float32)


def center_square(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  s = min(h, w)
  y0, x0 = (h - s) // 2, (w - s) // 2
  return image[y0:y0 + s, x0:x0 + s]


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, C) float32 -> (size, size, C): centre square, then block mean or PIL bilinear."""
  image = center_square(np.asarray(image, np.float32))
  s, c = image.shape[0], image.shape[2]
  if s == size:
    return image
  if s % size == 0:
    # Block mean as two contiguous sums (3x faster than one mean over axes (1, 3)).
    f = s // size
    rows = image.reshape(size, f, s * c).sum(axis=1, dtype=np.float32)
    return rows.reshape(size, size, f, c).sum(axis=2) * np.float32(1.0 / (f * f))
  from PIL import Image
  out = np.empty((size, size, c), np.float32)
  for ch in range(c):
    out[:, :, ch] = np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, ch]), mode="F")
                               .resize((size, size), Image.BILINEAR))
  return out


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
  """`resize` of every image of (N, H, W, C)."""
  return np.stack([resize(im, size) for im in images])


def hwc(x: np.ndarray, where: str, channels_first: bool = False) -> np.ndarray:
  if x.ndim == 2:
    return x[:, :, None]
  if x.ndim == 3:
    return np.moveaxis(x, 0, -1) if channels_first else x
  raise ValueError(f"{where}: array of shape {x.shape}; expected an image (H, W) or "
                   f"{'(C, H, W)' if channels_first else '(H, W, C)'}")


def check_channels(image: np.ndarray, channels: int, where: str) -> None:
  if image.shape[-1] != channels:
    raise ValueError(f"{where}: image has {image.shape[-1]} channel(s) (shape {image.shape}); "
                     f"expected {channels} (data.channels)")


def load_npz(path: str, split: str, what: str):
  if not os.path.exists(path):
    raise no_data(path, what, split)
  try:
    return np.load(path, allow_pickle=False)
  except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
    raise ValueError(f"{path}: cannot read as .npz ({type(e).__name__}: {e}); expected {what}"
                     ) from e


def require(f, keys, path: str) -> None:
  """Refuse an npz without the arrays `keys`, listing the ones it has."""
  missing = [k for k in keys if k not in f]
  if missing:
    raise KeyError(f"{path}: missing {missing}; keys are {sorted(f.keys())}")

"""Host-side contact sheet of views: original | view 1 | view 2 per sample, as uint8 RGB / PNG.

NumPy and pillow only; never inside a jitted step (train.py logs it to TensorBoard once).
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np


def _display_bands(channels: int, bands: Sequence[int] | None) -> list[int]:
  if bands is not None:
    bands = list(bands)
    if len(bands) not in (1, 3) or not all(0 <= b < channels for b in bands):
      raise ValueError(f"bands {bands}: need 1 or 3 channel indices below {channels}")
    return bands
  if channels == 3:
    return [0, 1, 2]
  if channels == 12:
    return [3, 2, 1]  # B04, B03, B02 of the 12 Sentinel-2 L2A bands: true colour
  return [0]


def grid_image(images, v1, v2, value_range=None, bands: Sequence[int] | None = None,
               pad: int = 2) -> np.ndarray:
  """uint8 RGB sheet (rows: samples; columns: original | view1 | view2).

  C == 1 (or any C without RGB bands) shows grayscale, C == 3 RGB, 12 bands B04/B03/B02, or the
  ``bands`` given. ``value_range`` (lo, hi) maps to 0..255; None stretches the 2nd..98th
  percentile of the originals. Originals are resized to the view size. Shape:
  (N * (S + pad) + pad, 3 * (S + pad) + pad, 3) with white separators.
  """
  images, v1, v2 = (np.asarray(x, np.float32) for x in (images, v1, v2))
  if images.ndim != 4 or v1.shape != v2.shape or v1.shape[0] != images.shape[0]:
    raise ValueError(f"shapes {images.shape}, {v1.shape}, {v2.shape}: need (N, H, W, C) "
                     f"originals and two (N, S, S, C) views")
  n, s, sw, c = v1.shape
  sel = _display_bands(c, bands)
  if images.shape[1:3] != (s, sw):
    images = np.asarray(jax.image.resize(images, (n, s, sw, c), "bilinear"))
  panels = [x[..., sel] for x in (images, v1, v2)]
  if value_range is None:
    finite = panels[0][np.isfinite(panels[0])]
    lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
  else:
    lo, hi = value_range
  hi = hi if hi > lo else lo + 1.0
  out = np.full((n * (s + pad) + pad, 3 * (sw + pad) + pad, 3), 255, np.uint8)
  for col, panel in enumerate(panels):
    x = np.nan_to_num((panel - lo) / (hi - lo), nan=0.0)
    x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    if x.shape[-1] == 1:
      x = np.repeat(x, 3, axis=-1)
    for row in range(n):
      y0, x0 = pad + row * (s + pad), pad + col * (sw + pad)
      out[y0:y0 + s, x0:x0 + sw] = x[row]
  return out


def write_grid(path: str, images, v1, v2, value_range=None, bands=None, pad: int = 2) -> str:
  """Save grid_image(...) as a PNG at path (parent directories created); returns path."""
  from PIL import Image  # pillow: only needed here

  sheet = grid_image(images, v1, v2, value_range, bands, pad)
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(sheet).save(path, format="PNG")
  return path

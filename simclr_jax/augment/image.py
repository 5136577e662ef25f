"""Deterministic image functions on ONE image (H, W, C) float32; jit-safe, any channel count.

The registered ops (ops.py) draw their parameters and call these; the tests check these
against NumPy, colorsys and jax.image.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def as_image(image) -> Array:
  image = jnp.asarray(image, jnp.float32)
  if image.ndim != 3:
    raise ValueError(f"expected one image (H, W, C), got shape {image.shape}")
  return image


def hflip(image: Array) -> Array:
  """Left-right flip of (H, W, C)."""
  return image[:, ::-1, :]


def vflip(image: Array) -> Array:
  """Up-down flip of (H, W, C)."""
  return image[::-1, :, :]


def rot90(image: Array, k) -> Array:
  """Rotation by k*90 degrees counter-clockwise (np.rot90 on axes (0, 1)); k may be traced."""
  if image.shape[0] != image.shape[1]:
    raise ValueError(f"rot90 needs a square image, got {image.shape[:2]}")
  # All four rotations, then a select: lax.switch with a traced index fails under shard_map's
  # replication check when the branches mix device-varying and replicated values.
  rotations = jnp.stack([jnp.rot90(image, i, axes=(0, 1)) for i in range(4)])
  return rotations[jnp.asarray(k, jnp.int32) % 4]


def _axis_weights(in_size: int, out_size: int, start, length, antialias: bool) -> Array:
  """(out_size, in_size) bilinear weights of a resize of the slice [start, start+length).

  The formula is jax.image.scale_and_translate's (triangle kernel widened by 1/scale when
  shrinking with antialias, renormalised), restricted to the slice, so the result equals
  ``jax.image.resize(image[start:start+length], ...)`` while start and length stay traced.
  """
  start = jnp.asarray(start, jnp.float32)
  length = jnp.asarray(length, jnp.float32)
  inv_scale = length / out_size
  kernel_scale = jnp.maximum(inv_scale, 1.0) if antialias else 1.0
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale - 0.5 + start
  idx = jnp.arange(in_size, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(sample[:, None] - idx[None, :]) / kernel_scale)
  inside = (idx >= start) & (idx < start + length)
  w = jnp.where(inside[None, :], w, 0.0)
  total = jnp.sum(w, axis=1, keepdims=True)
  return w / jnp.where(total > 0, total, 1.0)


def crop_and_resize(image: Array, box, size, antialias: bool = True) -> Array:
  """Crop ``box = (top, left, height, width)`` (may be traced) and resize it bilinearly.

  Equals ``jax.image.resize(image[top:top+height, left:left+width], (size, size, C),
  'bilinear', antialias=antialias)`` for integer boxes. ``size`` is an int or (h, w).
  """
  image = as_image(image)
  h_in, w_in, _ = image.shape
  out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
  top, left, height, width = box
  wy = _axis_weights(h_in, out_h, top, height, antialias)
  wx = _axis_weights(w_in, out_w, left, width, antialias)
  return jnp.einsum("oh,hwc,pw->opc", wy, image, wx, precision=jax.lax.Precision.HIGHEST)


def resize(image: Array, size, antialias: bool = True) -> Array:
  """Bilinear resize of (H, W, C) to (size, size, C); identity when the size already fits."""
  image = as_image(image)
  out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
  if image.shape[:2] == (out_h, out_w):
    return image
  return jax.image.resize(image, (out_h, out_w, image.shape[2]), "bilinear",
                          antialias=antialias)


def _bilinear_sample(image: Array, yy: Array, xx: Array, fill) -> Array:
  """Sample image at float pixel coordinates (yy, xx) of shape (h, w); outside -> fill."""
  h, w, _ = image.shape
  y0f, x0f = jnp.floor(yy), jnp.floor(xx)
  wy, wx = yy - y0f, xx - x0f
  y0, x0 = y0f.astype(jnp.int32), x0f.astype(jnp.int32)
  out = jnp.zeros(yy.shape + image.shape[2:], image.dtype)
  for dy, wgt_y in ((0, 1.0 - wy), (1, wy)):
    for dx, wgt_x in ((0, 1.0 - wx), (1, wx)):
      yi, xi = y0 + dy, x0 + dx
      valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      v = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
      v = jnp.where(valid[..., None], v, fill)
      out = out + (wgt_y * wgt_x)[..., None] * v
  return out


def affine_warp(image: Array, matrix, offset=(0.0, 0.0), fill=0.0) -> Array:
  """Bilinear warp about the image centre: input = matrix @ (out - c) + c + offset.

  ``matrix`` is 2x2 in (y, x) order, mapping output to input coordinates.
  """
  image = as_image(image)
  h, w, _ = image.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yo, xo = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                        jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
  m = jnp.asarray(matrix, jnp.float32)
  yy = m[0, 0] * yo + m[0, 1] * xo + cy + offset[0]
  xx = m[1, 0] * yo + m[1, 1] * xo + cx + offset[1]
  return _bilinear_sample(image, yy, xx, fill)


def rotate(image: Array, degrees, fill=0.0) -> Array:
  """Rotation by ``degrees`` counter-clockwise about the centre (90 == np.rot90 k=1)."""
  t = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  c, s = jnp.cos(t), jnp.sin(t)
  return affine_warp(image, jnp.array([[c, s], [-s, c]]), fill=fill)


def shift(image: Array, dy, dx, fill=0.0) -> Array:
  """Translation: content moves down by dy and right by dx pixels."""
  return affine_warp(image, jnp.eye(2), (-jnp.asarray(dy, jnp.float32),
                                         -jnp.asarray(dx, jnp.float32)), fill)


def zoom(image: Array, factor, fill=0.0) -> Array:
  """Zoom about the centre by ``factor`` (> 1 magnifies)."""
  inv = 1.0 / jnp.asarray(factor, jnp.float32)
  return affine_warp(image, jnp.eye(2) * inv, fill=fill)


def rgb_to_grayscale(image: Array) -> Array:
  """(H, W, 3) -> (H, W, 1) luma, torchvision's weights."""
  r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  return _GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b


def grayscale(image: Array) -> Array:
  """torchvision Grayscale(num_output_channels=3)."""
  return jnp.broadcast_to(rgb_to_grayscale(image), image.shape)


def ordered_sum(x: Array, axes: Sequence[int]) -> Array:
  """Sum over `axes` (keepdims) by pairwise halving with slices and elementwise adds.

  XLA tiles a reduce by the shape it is compiled for, so jnp.sum of one image inside a vmap
  over 4 or over 32 images can differ in the last bit, and a sample's views would then
  depend on its per-device batch. Elementwise adds of slices have one order for any batch.
  """
  for axis in axes:
    while x.shape[axis] > 1:
      n, half = x.shape[axis], x.shape[axis] // 2
      total = (jax.lax.slice_in_dim(x, 0, half, axis=axis)
               + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis))
      if n % 2:
        total = jnp.concatenate([total, jax.lax.slice_in_dim(x, 2 * half, n, axis=axis)], axis)
      x = total
  return x


def _blend(a: Array, b, ratio) -> Array:
  return jnp.clip(ratio * a + (1.0 - ratio) * b, 0.0, 1.0)


def adjust_brightness(image: Array, factor) -> Array:
  """torchvision adjust_brightness on [0, 1]: clip(x * factor)."""
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: Array, factor) -> Array:
  """torchvision adjust_contrast: blend with the mean of the grayscale image."""
  gray = rgb_to_grayscale(image)
  return _blend(image, ordered_sum(gray, (0, 1)) / gray.size, factor)


def adjust_saturation(image: Array, factor) -> Array:
  """torchvision adjust_saturation: blend with the grayscale image."""
  return _blend(image, rgb_to_grayscale(image), factor)


def rgb_to_hsv(image: Array) -> Array:
  """torchvision's _rgb2hsv, channel-last, all in [0, 1]."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc = jnp.max(image, axis=-1)
  minc = jnp.min(image, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / jnp.where(eqc, 1.0, maxc)
  crd = jnp.where(eqc, 1.0, cr)
  rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
  hr = jnp.where(maxc == r, bc - gc, 0.0)
  hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
  hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
  h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(image: Array) -> Array:
  """HSV -> RGB, channel-last; branch-free form of torchvision's _hsv2rgb (same values).

  channel_n = v - v * s * clip(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1.
  """
  h, s, v = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  k = jnp.mod(jnp.array([5.0, 3.0, 1.0]) + 6.0 * h, 6.0)
  return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(image: Array, hue_factor) -> Array:
  """torchvision adjust_hue: rotate the hue by hue_factor (in turns, [-0.5, 0.5])."""
  hsv = rgb_to_hsv(image)
  h = jnp.mod(hsv[..., 0] + hue_factor, 1.0)
  return hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], -1))


def blur_kernel_size(side: int, frac: float = 0.1) -> int:
  """Odd kernel side for a blur of an image of this side (SimCLR: 10 % -> 23 at 224)."""
  return 2 * max(1, int(frac * side) // 2) + 1


def gaussian_kernel1d(sigma, kernel_size: int) -> Array:
  """Normalised 1-D Gaussian taps; sigma scalar -> (k,), sigma (C,) -> (k, C)."""
  sigma = jnp.asarray(sigma, jnp.float32)
  x = jnp.arange(kernel_size, dtype=jnp.float32) - (kernel_size - 1) / 2.0
  x = x.reshape((kernel_size,) + (1,) * sigma.ndim)
  w = jnp.exp(-0.5 * (x / sigma) ** 2)
  return w / ordered_sum(w, (0,))


def gaussian_blur(image: Array, sigma, kernel_size: int) -> Array:
  """Separable Gaussian blur with reflect padding (torchvision GaussianBlur).

  sigma: a scalar, or one per channel (C,).
  """
  image = as_image(image)
  h, w, c = image.shape
  r = (kernel_size - 1) // 2
  ry, rx = min(r, h - 1), min(r, w - 1)
  taps = gaussian_kernel1d(sigma, kernel_size)
  taps = taps if taps.ndim == 2 else taps[:, None]  # (k, 1 or C)
  out = jnp.pad(image, ((ry, ry), (0, 0), (0, 0)), mode="reflect")
  out = sum(taps[r - ry + i] * out[i:i + h] for i in range(2 * ry + 1))
  out = jnp.pad(out, ((0, 0), (rx, rx), (0, 0)), mode="reflect")
  out = sum(taps[r - rx + i] * out[:, i:i + w] for i in range(2 * rx + 1))
  return out


def solarize(image: Array, threshold, value_range=(0.0, 1.0)) -> Array:
  """Invert values at or above threshold within value_range: x >= t -> lo + hi - x."""
  lo, hi = value_range
  return jnp.where(image >= threshold, lo + hi - image, image)


def adjust_contrast_mean(image: Array, factor, mean: str = "channel") -> Array:
  """(x - m) * factor + m, m the per-channel ('channel') or overall ('global') mean."""
  axes = (0, 1) if mean == "channel" else (0, 1, 2)
  m = ordered_sum(image, axes) / math.prod(image.shape[a] for a in axes)
  return (image - m) * factor + m

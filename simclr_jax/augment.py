"""On-device augmentations for SimCLR: per-sample keys, vmapped, jit-safe, any channel count.

Every random op is a pure function ``op(key, image, ...) -> image`` of ONE image ``(H, W, C)``
float32. Nothing branches in Python on traced values: an op applied with probability ``p``
draws ``u ~ U[0, 1)`` and selects with ``jnp.where(u < p, op(image), image)`` (a probability
that is statically 0 removes the op from the graph, a probability of 1 drops the select), so
views are made inside the jitted train step with ``jax.vmap`` over per-sample keys, as BYOL
does. A view draws all its random numbers in one call and each op reads a fixed slot of them,
so switching one op on or off leaves the randomness of the others unchanged.

Config schema (``config.augment``, an ml_collections ConfigDict; flat)
=====================================================================

``augment.preset`` picks a recipe; every other field is an optional override of that preset
(absent or ``None``: the preset's value). ``get_config(preset, **overrides)`` builds a ConfigDict
holding every field (unset ones as ``None`` placeholders, so ``--config.augment.blur_prob=0.3``
and ``--config.augment.blur_prob='(1.0, 0.1)'`` both work on the command line), and
``resolve(cfg)`` returns the two concrete per-view parameter dicts (log it, print it).

Per-view values (asymmetric views, BYOL-style): ANY field may be given as a pair
``(view1_value, view2_value)``; a single value applies to both views. Ranges are pairs already,
so a per-view range is a pair of pairs: ``crop_scale=((0.08, 1.0), (0.2, 1.0))``.
Examples: ``blur_prob=(1.0, 0.1)``, ``solarize_prob=(0.0, 0.2)``, ``color_strength=0.5``.

Views are made in this fixed order (each op only if enabled)::

    crop (or resize to image_size) -> hflip -> vflip -> rot90 -> rotate+zoom+shift (one
    bilinear warp) -> color jitter -> grayscale -> brightness -> contrast -> gain -> blur -> speckle
    -> noise -> solarize -> clip to value_range

Geometric (any channels)
  crop_scale        (lo, hi) area fraction of torchvision's RandomResizedCrop (10 attempts,
                    then its central-crop fallback); None: no crop, the image is resized to
                    image_size (bilinear, antialiased) when its size differs.
  crop_ratio        (3/4, 4/3) aspect-ratio range, sampled log-uniformly.
  antialias         True: the crop's bilinear resize is antialiased when it shrinks
                    (jax.image.resize semantics, torchvision antialias=True).
  hflip_prob        probability of a left-right flip.
  vflip_prob        probability of an up-down flip.
  rot90_prob        probability of rotating by k*90 degrees, k uniform in {1, 2, 3} (so 0.75
                    gives the four orientations uniformly).
  rotate_prob       probability of a rotation by an angle uniform in
  rotate_degrees    [-rotate_degrees, rotate_degrees] (bilinear, outside filled with fill_value).
  shift_prob        probability of a translation by a whole number of pixels, uniform in
  shift_fraction    [-fraction, fraction] of the side, each axis (outside: fill_value).
  zoom_prob         probability of a zoom about the centre by a factor uniform in
  zoom_range        (lo, hi); > 1 magnifies, < 1 shrinks (outside: fill_value).
  fill_value        value for pixels that rotate/shift/zoom bring in from outside (0.0).

Colour, RGB only (3 channels in [0, 1]; ``make_augment`` refuses them for other channel counts)
  color_prob        probability of torchvision's ColorJitter (SimCLR's RandomApply p=0.8):
  color_strength    s: (brightness, contrast, saturation, hue) = (0.8s, 0.8s, 0.8s, 0.2s),
  color_jitter      or these four given explicitly (None: from color_strength), e.g. BYOL's
                    (0.4, 0.4, 0.2, 0.1). Factors as torchvision: brightness, contrast and
                    saturation uniform in [max(0, 1-x), 1+x], hue in [-x, x]; the four in a
                    random order; each result clipped to [0, 1].
  grayscale_prob    probability of torchvision's Grayscale(3): 0.2989 R + 0.587 G + 0.114 B.

Any channels
  blur_prob         probability of a Gaussian blur (reflect padding, separable),
  blur_sigma        sigma uniform in (lo, hi) (SimCLR: (0.1, 2.0)),
  blur_kernel_frac  kernel side = 2 * max(1, int(frac * side) // 2) + 1 (0.1 -> 23 at 224),
  blur_per_channel  independent sigma per channel instead of one.
  solarize_prob     probability of solarizing: x >= threshold -> lo + hi - x with (lo, hi) =
  solarize_threshold  value_range, or (0, 1) when that is None; threshold None: middle of it.
  brightness_prob   probability of adding a shift uniform in [-delta, delta]
  brightness_delta  (in data units),
  brightness_per_channel  one shift per channel instead of one shared.
  contrast_prob     probability of (x - mean) * f + mean, f uniform in
  contrast_range    (lo, hi),
  contrast_per_channel  one factor per channel instead of one shared,
  contrast_mean     'channel' (per-channel spatial mean) or 'global' (mean over all channels).
  gain_prob         probability of x * g, g uniform in
  gain_range        (lo, hi),
  gain_per_channel  one gain per channel instead of one shared.
  speckle_prob      probability of multiplicative noise x * (1 + n), n ~ N(0, speckle_std^2)
  speckle_std       per pixel,
  speckle_per_channel  independent noise per channel (True) or one map for all channels.
  noise_prob        probability of additive noise x + n, n ~ N(0, noise_std^2) per pixel,
  noise_std
  noise_per_channel independent noise per channel (True) or one map for all channels.
  value_range       (lo, hi) range of the data; views are clipped to it at the end. None: no clip.

Presets (fields not listed keep the base defaults: every ``*_prob`` 0, crop_scale None,
crop_ratio (3/4, 4/3), antialias True, rotate_degrees 45, shift_fraction 0.1, zoom_range
(0.8, 1.2), fill_value 0, color_strength 1.0, color_jitter None, blur_sigma (0.1, 2.0),
blur_kernel_frac 0.1, solarize_threshold None, brightness_delta 0.1, contrast_range (0.8, 1.2),
contrast_mean 'channel', gain_range (0.9, 1.1), speckle_std 0.1, noise_std 0.05, all
``*_per_channel`` False except speckle and noise (True), value_range None)

  none          nothing random; resize to image_size if needed.
  simclr        ImageNet SimCLR: crop_scale (0.08, 1), hflip 0.5, color_prob 0.8 with
                color_strength 1.0, grayscale 0.2, blur_prob 0.5; value_range (0, 1). RGB.
  simclr_cifar  CIFAR SimCLR: as simclr with color_strength 0.5 and no blur. RGB.
  byol          BYOL's asymmetric views: crop_scale (0.08, 1), hflip 0.5, color_prob 0.8 with
                color_jitter (0.4, 0.4, 0.2, 0.1), grayscale 0.2, blur_prob (1.0, 0.1),
                solarize_prob (0.0, 0.2); value_range (0, 1). RGB.
  solarnet      SolarNet magnetograms (1 channel in [-1, 1]): crop_scale (0.5, 1), hflip 0.5,
                vflip 0.5, no intensity ops; value_range (-1, 1). Any channels.
  sentinel2     SimCLR-S2 (12 bands, reflectance scaled to about [0, 1]): hflip 0.5,
                vflip 0.5, rotate 0.5 (45 degrees), shift 0.5 (0.1), zoom 0.5 (0.8, 1.2),
                blur 0.5, brightness 0.5 (0.1), contrast 0.5 (0.8, 1.2), gain 0.5 (0.9, 1.1),
                speckle 0.5 (0.1); no crop; value_range None. Any channels.

Public API
==========

``make_augment(augment_cfg, channels, image_size) -> (view1_fn, view2_fn)``, each
``fn(key, image[H, W, C]) -> image[image_size, image_size, C]`` float32 (input float32 in
value_range, any H, W; uint8 is cast, not rescaled). ValueError naming the op and the channel
count when an RGB-only op is enabled for channels != 3.
``augment_batch(view_fn, keys, images)``: ``jax.vmap`` over per-sample keys (N typed keys,
N x 2 raw keys, or one key that is split).
``two_views(augment_cfg, channels, image_size, key, images, sample_ids=None) -> (v1, v2)``:
sample i uses ``split(fold_in(key, sample_ids[i]))`` for its two views, so a sample's views do
not depend on its device or batch position (default ids arange(N): pass global ids when
``images`` is a shard of a larger batch). ``grid_image(images, v1, v2, value_range=None)`` /
``write_grid(path, ...)``: an original | view1 | view2 contact sheet as uint8 RGB / PNG.

In the train step (the key must change every step)::

    key = jax.random.fold_in(rng, state.step)
    v1, v2 = augment.two_views(config.augment, config.data.channels, config.data.image_size,
                               key, batch["image"])
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

Array = jax.Array
ViewFn = Callable[[Array, Array], Array]

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ---------------------------------------------------------------------------------------------
# Deterministic primitives (also the references the random ops are tested through).
# ---------------------------------------------------------------------------------------------


def _as_image(image) -> Array:
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
  image = _as_image(image)
  h_in, w_in, _ = image.shape
  out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
  top, left, height, width = box
  wy = _axis_weights(h_in, out_h, top, height, antialias)
  wx = _axis_weights(w_in, out_w, left, width, antialias)
  return jnp.einsum("oh,hwc,pw->opc", wy, image, wx, precision=jax.lax.Precision.HIGHEST)


def resize(image: Array, size, antialias: bool = True) -> Array:
  """Bilinear resize of (H, W, C) to (size, size, C); identity when the size already fits."""
  image = _as_image(image)
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
  image = _as_image(image)
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


def _ordered_sum(x: Array, axes: Sequence[int]) -> Array:
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
  return _blend(image, _ordered_sum(gray, (0, 1)) / gray.size, factor)


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
  return w / _ordered_sum(w, (0,))


def gaussian_blur(image: Array, sigma, kernel_size: int) -> Array:
  """Separable Gaussian blur with reflect padding (torchvision GaussianBlur).

  sigma: a scalar, or one per channel (C,).
  """
  image = _as_image(image)
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
  m = _ordered_sum(image, axes) / math.prod(image.shape[a] for a in axes)
  return (image - m) * factor + m


# ---------------------------------------------------------------------------------------------
# Random ops: op(key, image, ..., prob) on one image.
# ---------------------------------------------------------------------------------------------


class _Presampled:
  """Uniforms drawn ahead, passed to an op in place of its key (see _build_view)."""

  def __init__(self, u: Array):
    self.u = u


def _uniforms(key, n: int) -> Array:
  """The op's n uniforms in [0, 1) (u[0] decides whether it applies), from one draw.

  Every threefry call costs 0.1-0.5 s of XLA compile time on CPU, so an op draws all its
  numbers at once, and a view draws all its ops' numbers at once (_Presampled).
  """
  if isinstance(key, _Presampled):
    if key.u.shape[0] < n:
      raise ValueError(f"presampled {key.u.shape[0]} uniforms, op needs {n}")
    return key.u[:n]
  return jax.random.uniform(key, (n,))


def _lerp(u, lo, hi):
  return lo + u * (hi - lo)


def _normals(u: Array) -> Array:
  """Standard normals from uniforms in [0, 1), the inverse-CDF way jax.random.normal uses."""
  u = jnp.clip(u, 1e-7, 1.0 - 1e-7)
  return jnp.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)


def _with_prob(u_apply, prob: float, fn: Callable[[], Array], image: Array) -> Array:
  """fn() if u_apply < prob else image. prob is a Python number: 0 and 1 are static."""
  prob = float(prob)
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn()
  return jnp.where(u_apply < prob, fn(), image)


def _factor_shape(image: Array, per_channel: bool) -> int:
  return image.shape[-1] if per_channel else 1


def random_resized_crop(key, image: Array, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        antialias: bool = True, attempts: int = 10) -> Array:
  """torchvision RandomResizedCrop: 10 (area, log-ratio) draws, first that fits, else fallback.

  All attempts are drawn at once and the first valid one is selected, so the op is jit-safe.
  """
  image = _as_image(image)
  h, w, _ = image.shape
  u = _uniforms(key, 2 * attempts + 2)
  area = float(h * w)
  target = area * _lerp(u[:attempts], scale[0], scale[1])
  aspect = jnp.exp(_lerp(u[attempts:2 * attempts], math.log(ratio[0]), math.log(ratio[1])))
  cw = jnp.round(jnp.sqrt(target * aspect))
  ch = jnp.round(jnp.sqrt(target / aspect))
  valid = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(valid)
  any_valid = jnp.any(valid)
  ch, cw = ch[first], cw[first]
  top = jnp.floor(u[-2] * (h - ch + 1))   # randint(0, h - ch + 1)
  left = jnp.floor(u[-1] * (w - cw + 1))
  # Fallback (static): central crop with the ratio clamped into range.
  in_ratio = w / h
  if in_ratio < min(ratio):
    fw, fh = w, int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    fh, fw = h, int(round(h * max(ratio)))
  else:
    fw, fh = w, h
  ftop, fleft = (h - fh) // 2, (w - fw) // 2
  box = (jnp.where(any_valid, top, ftop), jnp.where(any_valid, left, fleft),
         jnp.where(any_valid, ch, fh), jnp.where(any_valid, cw, fw))
  return crop_and_resize(image, box, size, antialias)


def random_hflip(key, image: Array, prob: float = 0.5) -> Array:
  return _with_prob(_uniforms(key, 1)[0], prob, lambda: hflip(image), image)


def random_vflip(key, image: Array, prob: float = 0.5) -> Array:
  return _with_prob(_uniforms(key, 1)[0], prob, lambda: vflip(image), image)


def random_rot90(key, image: Array, prob: float = 0.75) -> Array:
  """With probability prob rotate by k*90 degrees, k uniform in {1, 2, 3}."""
  u = _uniforms(key, 2)
  k = 1 + jnp.minimum(jnp.floor(u[1] * 3), 2).astype(jnp.int32)
  return _with_prob(u[0], prob, lambda: rot90(image, k), image)


def random_rotate(key, image: Array, prob: float = 1.0, degrees: float = 45.0,
                  fill: float = 0.0) -> Array:
  """Rotation by an angle uniform in [-degrees, degrees] (bilinear, outside -> fill)."""
  u = _uniforms(key, 2)
  angle = _lerp(u[1], -degrees, degrees)
  return _with_prob(u[0], prob, lambda: rotate(image, angle, fill), image)


def random_shift(key, image: Array, prob: float = 1.0, fraction: float = 0.1,
                 fill: float = 0.0) -> Array:
  """Whole-pixel translation uniform in [-fraction, fraction] of each side."""
  u = _uniforms(key, 3)
  h, w, _ = image.shape
  dy = jnp.round(_lerp(u[1], -fraction, fraction) * h)
  dx = jnp.round(_lerp(u[2], -fraction, fraction) * w)
  return _with_prob(u[0], prob, lambda: shift(image, dy, dx, fill), image)


def random_zoom(key, image: Array, prob: float = 1.0, zoom_range=(0.8, 1.2),
                fill: float = 0.0) -> Array:
  """Zoom about the centre by a factor uniform in zoom_range."""
  u = _uniforms(key, 2)
  factor = _lerp(u[1], zoom_range[0], zoom_range[1])
  return _with_prob(u[0], prob, lambda: zoom(image, factor, fill), image)


def random_affine(key, image: Array, rotate_prob: float = 0.0, degrees: float = 45.0,
                  shift_prob: float = 0.0, fraction: float = 0.1, zoom_prob: float = 0.0,
                  zoom_range=(0.8, 1.2), fill: float = 0.0) -> Array:
  """random_rotate, random_zoom and random_shift (in that order) as ONE bilinear warp.

  Each part keeps its own probability; composing them resamples the image once instead of
  three times (less interpolation blur, one gather to compile).
  """
  if rotate_prob <= 0 and shift_prob <= 0 and zoom_prob <= 0:
    return image
  h, w, _ = image.shape
  u = _uniforms(key, 7)
  on = lambda i, p: u[i] < p if 0 < p < 1 else (p >= 1)
  angle = jnp.where(on(0, rotate_prob), _lerp(u[1], -degrees, degrees), 0.0)
  factor = jnp.where(on(2, zoom_prob), _lerp(u[3], zoom_range[0], zoom_range[1]), 1.0)
  dy = jnp.where(on(4, shift_prob), jnp.round(_lerp(u[5], -fraction, fraction) * h), 0.0)
  dx = jnp.where(on(4, shift_prob), jnp.round(_lerp(u[6], -fraction, fraction) * w), 0.0)
  t = jnp.deg2rad(angle)
  c, s = jnp.cos(t), jnp.sin(t)
  m = jnp.array([[c, s], [-s, c]]) / factor
  offset = -(m @ jnp.stack([dy, dx]))
  return affine_warp(image, m, (offset[0], offset[1]), fill)


def color_jitter(key, image: Array, prob: float = 0.8, brightness: float = 0.8,
                 contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2) -> Array:
  """torchvision RandomApply([ColorJitter(b, c, s, h)], p=prob) on RGB in [0, 1]."""
  u = _uniforms(key, 6)
  lo = lambda x: max(0.0, 1.0 - x)
  fb = _lerp(u[1], lo(brightness), 1.0 + brightness)
  fc = _lerp(u[2], lo(contrast), 1.0 + contrast)
  fs = _lerp(u[3], lo(saturation), 1.0 + saturation)
  fh = _lerp(u[4], -hue, hue)
  ops = []  # only the enabled ones, as torchvision skips a zero factor
  if brightness > 0:
    ops.append(lambda x: adjust_brightness(x, fb))
  if contrast > 0:
    ops.append(lambda x: adjust_contrast(x, fc))
  if saturation > 0:
    ops.append(lambda x: adjust_saturation(x, fs))
  if hue > 0:
    ops.append(lambda x: adjust_hue(x, fh))
  if not ops:
    return image
  # A random order: one of the n! permutations from a static table (no sort to compile).
  table = jnp.array(list(itertools.permutations(range(len(ops)))), jnp.int32)
  order = table[jnp.minimum(jnp.floor(u[5] * len(table)), len(table) - 1).astype(jnp.int32)]

  def step(i, x):
    # Every op, then a select of the i-th in this sample's order. Under vmap a lax.switch
    # evaluates every branch anyway, and a switch fails inside shard_map ("pvary is a
    # invariant->variant collective") when its branches close over per-device factors.
    return jnp.stack([op(x) for op in ops])[order[i]]

  def jitter():
    # A loop, not an unrolled sequence: compiling the body once instead of n times saves
    # seconds of XLA time on CPU.
    return jax.lax.fori_loop(0, len(ops), step, image)

  return _with_prob(u[0], prob, jitter, image)


def random_grayscale(key, image: Array, prob: float = 0.2) -> Array:
  return _with_prob(_uniforms(key, 1)[0], prob, lambda: grayscale(image), image)


def random_gaussian_blur(key, image: Array, prob: float = 0.5, sigma=(0.1, 2.0),
                         kernel_size: int | None = None, per_channel: bool = False) -> Array:
  """Gaussian blur, sigma uniform in the range (one per channel or shared)."""
  kernel_size = kernel_size or blur_kernel_size(max(image.shape[:2]))
  n = _factor_shape(image, per_channel)
  u = _uniforms(key, 1 + n)
  s = _lerp(u[1:], sigma[0], sigma[1])
  s = s if per_channel else s[0]
  return _with_prob(u[0], prob, lambda: gaussian_blur(image, s, kernel_size), image)


def random_solarize(key, image: Array, prob: float = 0.2, threshold: float = 0.5,
                    value_range=(0.0, 1.0)) -> Array:
  return _with_prob(_uniforms(key, 1)[0], prob,
                    lambda: solarize(image, threshold, value_range), image)


def random_brightness(key, image: Array, prob: float = 1.0, delta: float = 0.1,
                      per_channel: bool = False) -> Array:
  """x + b, b uniform in [-delta, delta] (one per channel or shared)."""
  u = _uniforms(key, 1 + _factor_shape(image, per_channel))
  b = _lerp(u[1:], -delta, delta)
  return _with_prob(u[0], prob, lambda: image + b, image)


def random_contrast(key, image: Array, prob: float = 1.0, factor_range=(0.8, 1.2),
                    per_channel: bool = False, mean: str = "channel") -> Array:
  """(x - m) * f + m, f uniform in factor_range, m per-channel or global mean."""
  u = _uniforms(key, 1 + _factor_shape(image, per_channel))
  f = _lerp(u[1:], factor_range[0], factor_range[1])
  return _with_prob(u[0], prob, lambda: adjust_contrast_mean(image, f, mean), image)


def random_gain(key, image: Array, prob: float = 1.0, gain_range=(0.9, 1.1),
                per_channel: bool = False) -> Array:
  """x * g, g uniform in gain_range (one per channel or shared)."""
  u = _uniforms(key, 1 + _factor_shape(image, per_channel))
  g = _lerp(u[1:], gain_range[0], gain_range[1])
  return _with_prob(u[0], prob, lambda: image * g, image)


def _noise(key, image: Array, per_channel: bool):
  h, w, c = image.shape
  shape = (h, w, c if per_channel else 1)
  u = _uniforms(key, 1 + math.prod(shape))
  return u[0], _normals(u[1:]).reshape(shape)


def random_speckle(key, image: Array, prob: float = 1.0, std: float = 0.1,
                   per_channel: bool = True) -> Array:
  """x * (1 + n), n ~ N(0, std^2) per pixel (per channel, or one map for all)."""
  u0, n = _noise(key, image, per_channel)
  return _with_prob(u0, prob, lambda: image * (1.0 + std * n), image)


def random_noise(key, image: Array, prob: float = 1.0, std: float = 0.05,
                 per_channel: bool = True) -> Array:
  """x + n, n ~ N(0, std^2) per pixel (per channel, or one map for all)."""
  u0, n = _noise(key, image, per_channel)
  return _with_prob(u0, prob, lambda: image + std * n, image)


# ---------------------------------------------------------------------------------------------
# Config: fields, presets, resolution.
# ---------------------------------------------------------------------------------------------

# field -> kind; the kind validates one view's value (see _parse_single).
FIELDS: dict[str, str] = {
    "crop_scale": "range?", "crop_ratio": "range", "antialias": "bool",
    "hflip_prob": "prob", "vflip_prob": "prob", "rot90_prob": "prob",
    "rotate_prob": "prob", "rotate_degrees": "num",
    "shift_prob": "prob", "shift_fraction": "num",
    "zoom_prob": "prob", "zoom_range": "range", "fill_value": "num",
    "color_prob": "prob", "color_strength": "num", "color_jitter": "jitter?",
    "grayscale_prob": "prob",
    "blur_prob": "prob", "blur_sigma": "range", "blur_kernel_frac": "num",
    "blur_per_channel": "bool",
    "solarize_prob": "prob", "solarize_threshold": "num?",
    "brightness_prob": "prob", "brightness_delta": "num", "brightness_per_channel": "bool",
    "contrast_prob": "prob", "contrast_range": "range", "contrast_per_channel": "bool",
    "contrast_mean": "mean",
    "gain_prob": "prob", "gain_range": "range", "gain_per_channel": "bool",
    "speckle_prob": "prob", "speckle_std": "num", "speckle_per_channel": "bool",
    "noise_prob": "prob", "noise_std": "num", "noise_per_channel": "bool",
    "value_range": "range?",
}

_BASE: dict[str, Any] = dict(
    crop_scale=None, crop_ratio=(3 / 4, 4 / 3), antialias=True,
    hflip_prob=0.0, vflip_prob=0.0, rot90_prob=0.0,
    rotate_prob=0.0, rotate_degrees=45.0, shift_prob=0.0, shift_fraction=0.1,
    zoom_prob=0.0, zoom_range=(0.8, 1.2), fill_value=0.0,
    color_prob=0.0, color_strength=1.0, color_jitter=None, grayscale_prob=0.0,
    blur_prob=0.0, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1, blur_per_channel=False,
    solarize_prob=0.0, solarize_threshold=None,
    brightness_prob=0.0, brightness_delta=0.1, brightness_per_channel=False,
    contrast_prob=0.0, contrast_range=(0.8, 1.2), contrast_per_channel=False,
    contrast_mean="channel",
    gain_prob=0.0, gain_range=(0.9, 1.1), gain_per_channel=False,
    speckle_prob=0.0, speckle_std=0.1, speckle_per_channel=True,
    noise_prob=0.0, noise_std=0.05, noise_per_channel=True,
    value_range=None,
)
assert set(_BASE) == set(FIELDS)

_SIMCLR = dict(crop_scale=(0.08, 1.0), hflip_prob=0.5, color_prob=0.8, color_strength=1.0,
               grayscale_prob=0.2, blur_prob=0.5, value_range=(0.0, 1.0))

PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "simclr": _SIMCLR,
    "simclr_cifar": {**_SIMCLR, "color_strength": 0.5, "blur_prob": 0.0},
    "byol": {**_SIMCLR, "color_jitter": (0.4, 0.4, 0.2, 0.1), "blur_prob": (1.0, 0.1),
             "solarize_prob": (0.0, 0.2)},
    "solarnet": dict(crop_scale=(0.5, 1.0), hflip_prob=0.5, vflip_prob=0.5,
                     value_range=(-1.0, 1.0)),
    "sentinel2": dict(hflip_prob=0.5, vflip_prob=0.5, rotate_prob=0.5, rotate_degrees=45.0,
                      shift_prob=0.5, shift_fraction=0.1, zoom_prob=0.5, zoom_range=(0.8, 1.2),
                      blur_prob=0.5, brightness_prob=0.5, brightness_delta=0.1,
                      contrast_prob=0.5, contrast_range=(0.8, 1.2), gain_prob=0.5,
                      gain_range=(0.9, 1.1), speckle_prob=0.5, speckle_std=0.1),
}

_NOT_GIVEN = object()


def _is_num(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_seq(v, n: int) -> bool:
  return isinstance(v, (tuple, list)) and len(v) == n


def _parse_single(kind: str, v):
  """One view's value normalised (tuples, floats), or _NOT_GIVEN if v is not of this kind."""
  if kind.endswith("?"):
    if v is None:
      return None
    kind = kind[:-1]
  if kind in ("num", "prob"):
    return float(v) if _is_num(v) else _NOT_GIVEN
  if kind == "bool":
    return bool(v) if isinstance(v, (bool, np.bool_)) else _NOT_GIVEN
  if kind == "mean":
    return v if v in ("channel", "global") else _NOT_GIVEN
  if kind == "range":
    return (float(v[0]), float(v[1])) if _is_seq(v, 2) and all(map(_is_num, v)) else _NOT_GIVEN
  if kind == "jitter":
    return tuple(map(float, v)) if _is_seq(v, 4) and all(map(_is_num, v)) else _NOT_GIVEN
  raise AssertionError(kind)


def _check_single(name: str, kind: str, v):
  if kind == "prob" and not 0.0 <= v <= 1.0:
    raise ValueError(f"augment.{name}={v}: a probability must be in [0, 1]")
  if kind.startswith("range") and v is not None and v[0] > v[1]:
    raise ValueError(f"augment.{name}={v}: range must be (lo, hi) with lo <= hi")
  if kind == "num" and v < 0 and name not in ("fill_value",):
    raise ValueError(f"augment.{name}={v}: must be >= 0")


def _per_view(name: str, value):
  """(view1, view2) values of one field: a single value for both, or a pair."""
  kind = FIELDS[name]
  single = _parse_single(kind, value)
  if single is not _NOT_GIVEN:
    pair = (single, single)
  elif _is_seq(value, 2) and all(_parse_single(kind, x) is not _NOT_GIVEN for x in value):
    pair = tuple(_parse_single(kind, x) for x in value)
  else:
    raise ValueError(f"augment.{name}={value!r}: expected a {kind} value or a per-view pair "
                     f"(view1, view2) of them")
  for v in pair:
    _check_single(name, kind, v)
  return pair


def _to_dict(augment_cfg) -> dict:
  if augment_cfg is None:
    return {}
  if isinstance(augment_cfg, str):
    return {"preset": augment_cfg}
  if isinstance(augment_cfg, ml_collections.ConfigDict):
    return augment_cfg.to_dict()
  if isinstance(augment_cfg, Mapping):
    return dict(augment_cfg)
  raise TypeError(f"augment config must be a ConfigDict, mapping or preset name, "
                  f"got {type(augment_cfg).__name__}")


def resolve(augment_cfg) -> tuple[dict, dict]:
  """The concrete (view1, view2) parameter dicts: preset, then non-None overrides, derived."""
  cfg = _to_dict(augment_cfg)
  preset = cfg.pop("preset", None) or "none"
  if preset not in PRESETS:
    raise ValueError(f"augment.preset={preset!r} unknown; presets: {sorted(PRESETS)}")
  unknown = sorted(set(cfg) - set(FIELDS))
  if unknown:
    raise ValueError(f"augment: unknown field(s) {unknown}; fields: {sorted(FIELDS)}")
  merged = {**_BASE, **PRESETS[preset], **{k: v for k, v in cfg.items() if v is not None}}
  views = ({"preset": preset}, {"preset": preset})
  for name in FIELDS:
    for view, v in zip(views, _per_view(name, merged[name])):
      view[name] = v
  for view in views:
    if view["color_jitter"] is None:
      s = view["color_strength"]
      view["color_jitter"] = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    lo, hi = view["value_range"] or (0.0, 1.0)
    if view["solarize_threshold"] is None:
      view["solarize_threshold"] = (lo + hi) / 2.0
    if view["color_jitter"][3] > 0.5:
      raise ValueError(f"augment: hue jitter {view['color_jitter'][3]} must be <= 0.5")
  return views


def get_config(preset: str = "simclr", **overrides) -> ml_collections.ConfigDict:
  """ConfigDict with ``preset`` and every field (unset ones None: the preset's value).

  The None fields are ``placeholder(object)``s, so config_flags parses any literal override.
  """
  unknown = sorted(set(overrides) - set(FIELDS))
  if unknown:
    raise ValueError(f"augment: unknown field(s) {unknown}; fields: {sorted(FIELDS)}")
  cfg = ml_collections.ConfigDict()
  cfg.preset = preset
  for name in FIELDS:
    cfg[name] = config_dict.placeholder(object)
    if overrides.get(name) is not None:
      cfg[name] = overrides[name]
  resolve(cfg)  # fail early on a bad preset or value
  return cfg


# ---------------------------------------------------------------------------------------------
# Composition.
# ---------------------------------------------------------------------------------------------

# One view draws one uniform vector (plus one per noise map): op i reads its fixed slot, so
# switching one op on or off leaves the randomness of the others unchanged.
_CROP_ATTEMPTS = 10


def _slots(channels: int) -> dict[str, tuple[int, int]]:
  sizes = dict(crop=2 * _CROP_ATTEMPTS + 2, hflip=1, vflip=1, rot90=2, affine=7, color=6,
               grayscale=1, brightness=1 + channels, contrast=1 + channels, gain=1 + channels,
               blur=1 + channels, solarize=1)
  offsets, start = {}, 0
  for name, n in sizes.items():
    offsets[name] = (start, n)
    start += n
  return offsets


_RGB_ONLY = (("color_jitter", "color_prob"), ("grayscale", "grayscale_prob"))


def _color_enabled(p) -> bool:
  return p["color_prob"] > 0 and any(x > 0 for x in p["color_jitter"])


def _check_channels(views, channels: int):
  if channels == 3:
    return
  for i, p in enumerate(views, start=1):
    for op, field in _RGB_ONLY:
      enabled = _color_enabled(p) if op == "color_jitter" else p[field] > 0
      if enabled:
        raise ValueError(
            f"augment: {op} is RGB-only (needs 3 channels) but channels={channels} "
            f"(preset {p['preset']!r}, view {i}, {field}={p[field]}); set "
            f"augment.{field}=0.0 or pick a preset for any channel count "
            f"(none, solarnet, sentinel2)")


def _build_view(p: dict, channels: int, image_size: int) -> ViewFn:
  def view(key, image):
    image = _as_image(image)
    if image.shape[-1] != channels:
      raise ValueError(f"augment: image has {image.shape[-1]} channels, expected {channels}")
    slots = _slots(channels)
    u_all = jax.random.uniform(key, (sum(n for _, n in slots.values()),))
    k = lambda op: _Presampled(u_all[slots[op][0]:slots[op][0] + slots[op][1]])
    if p["crop_scale"] is not None:
      image = random_resized_crop(k("crop"), image, image_size, p["crop_scale"],
                                  p["crop_ratio"], p["antialias"], _CROP_ATTEMPTS)
    else:
      image = resize(image, image_size, p["antialias"])
    image = random_hflip(k("hflip"), image, p["hflip_prob"])
    image = random_vflip(k("vflip"), image, p["vflip_prob"])
    if p["rot90_prob"] > 0:
      image = random_rot90(k("rot90"), image, p["rot90_prob"])
    image = random_affine(k("affine"), image, p["rotate_prob"], p["rotate_degrees"],
                          p["shift_prob"], p["shift_fraction"], p["zoom_prob"],
                          p["zoom_range"], p["fill_value"])
    if _color_enabled(p):
      image = color_jitter(k("color"), image, p["color_prob"], *p["color_jitter"])
    image = random_grayscale(k("grayscale"), image, p["grayscale_prob"])
    if p["brightness_prob"] > 0:
      image = random_brightness(k("brightness"), image, p["brightness_prob"],
                                p["brightness_delta"], p["brightness_per_channel"])
    if p["contrast_prob"] > 0:
      image = random_contrast(k("contrast"), image, p["contrast_prob"], p["contrast_range"],
                              p["contrast_per_channel"], p["contrast_mean"])
    if p["gain_prob"] > 0:
      image = random_gain(k("gain"), image, p["gain_prob"], p["gain_range"],
                          p["gain_per_channel"])
    if p["blur_prob"] > 0:
      image = random_gaussian_blur(k("blur"), image, p["blur_prob"], p["blur_sigma"],
                                   blur_kernel_size(image_size, p["blur_kernel_frac"]),
                                   p["blur_per_channel"])
    if p["speckle_prob"] > 0:
      image = random_speckle(jax.random.fold_in(key, 1), image, p["speckle_prob"], p["speckle_std"],
                             p["speckle_per_channel"])
    if p["noise_prob"] > 0:
      image = random_noise(jax.random.fold_in(key, 2), image, p["noise_prob"], p["noise_std"],
                           p["noise_per_channel"])
    value_range = p["value_range"]
    if p["solarize_prob"] > 0:
      image = random_solarize(k("solarize"), image, p["solarize_prob"],
                              p["solarize_threshold"], value_range or (0.0, 1.0))
    if value_range is not None:
      image = jnp.clip(image, value_range[0], value_range[1])
    return image

  return view


def _freeze(p: dict):
  return tuple(sorted(p.items()))


@functools.lru_cache(maxsize=None)
def _view_cached(p, channels: int, image_size: int) -> ViewFn:
  # Cached so equal parameters give the same function object: jit caches then hit.
  return _build_view(dict(p), channels, image_size)


def make_augment(augment_cfg, channels: int, image_size: int) -> tuple[ViewFn, ViewFn]:
  """(view1_fn, view2_fn), each fn(key, image[H, W, C]) -> image[size, size, C] float32.

  Raises ValueError naming the op and the channel count when an RGB-only op is enabled for
  channels != 3.
  """
  channels, image_size = int(channels), int(image_size)
  views = resolve(augment_cfg)
  _check_channels(views, channels)
  return tuple(_view_cached(_freeze(v), channels, image_size) for v in views)


def _is_single_key(keys) -> bool:
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return keys.ndim == 0
  return keys.ndim == 1


def augment_batch(view_fn: ViewFn, keys, images) -> Array:
  """jax.vmap(view_fn) over per-sample keys (N typed keys or N x 2 raw keys).

  A single key is split into one key per sample.
  """
  keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
  if _is_single_key(keys):
    keys = jax.random.split(keys, images.shape[0])
  return jax.vmap(view_fn)(keys, images)


def view_keys(key, sample_ids) -> tuple[Array, Array]:
  """Per-sample keys of view 1 and view 2: split(fold_in(key, id)).

  The train step and `two_views` both use this, so a sample's views depend only on the run's
  key and the sample's id, never on its device or batch row.
  """
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(sample_ids)
  return keys[:, 0], keys[:, 1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _two_views(view1: ViewFn, view2: ViewFn, key, images, sample_ids):
  keys1, keys2 = view_keys(key, sample_ids)
  return augment_batch(view1, keys1, images), augment_batch(view2, keys2, images)


def two_views(augment_cfg, channels: int, image_size: int, key, images, sample_ids=None):
  """Two augmented views of a batch; sample i uses fold_in(key, sample_ids[i]).

  So a sample's views do not depend on its batch position or device; pass the samples'
  global ids when ``images`` is part of a larger batch. Returns (v1, v2).
  """
  view1, view2 = make_augment(augment_cfg, channels, image_size)
  if sample_ids is None:
    sample_ids = jnp.arange(images.shape[0], dtype=jnp.uint32)
  sample_ids = jnp.asarray(sample_ids).astype(jnp.uint32)
  return _two_views(view1, view2, key, images, sample_ids)


# ---------------------------------------------------------------------------------------------
# Contact sheet.
# ---------------------------------------------------------------------------------------------


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

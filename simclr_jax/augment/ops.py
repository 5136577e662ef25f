"""The augmentation ops, registered in the order a view applies them.

Each op is one function `op(u, image, p, size)` (see registry.py) whose `register(...)` names
its config fields with their defaults and meaning, its number of uniform draws and whether it
is RGB-only. Any field may be given per view as a pair `(view1, view2)` (BYOL's asymmetric
views); ranges are pairs already, so a per-view range is a pair of pairs.

To add an op: write one function here, decorated with `register`, at the place in the order
where it should apply (before `clip`), and test it against a NumPy reference. Its fields then
exist in `get_config`, on the command line and in `resolve`; presets need not mention it.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from simclr_jax.augment import image as im
from simclr_jax.augment.registry import Field, lerp, normals, register, with_prob

CROP_ATTEMPTS = 10


def _per_channel(channels: int, size: int) -> int:
  return 1 + channels     # u[0] decides whether the op applies; one factor per channel


def random_resized_crop(u, image, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        antialias: bool = True, attempts: int = CROP_ATTEMPTS):
  """torchvision RandomResizedCrop: `attempts` (area, log-ratio) draws, first that fits,
  else its central-crop fallback; all drawn at once and the first valid selected (jit-safe)."""
  image = im.as_image(image)
  h, w, _ = image.shape
  area = float(h * w)
  target = area * lerp(u[:attempts], scale[0], scale[1])
  aspect = jnp.exp(lerp(u[attempts:2 * attempts], math.log(ratio[0]), math.log(ratio[1])))
  cw = jnp.round(jnp.sqrt(target * aspect))
  ch = jnp.round(jnp.sqrt(target / aspect))
  valid = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(valid)
  any_valid = jnp.any(valid)
  ch, cw = ch[first], cw[first]
  top = jnp.floor(u[2 * attempts] * (h - ch + 1))   # randint(0, h - ch + 1)
  left = jnp.floor(u[2 * attempts + 1] * (w - cw + 1))
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
  return im.crop_and_resize(image, box, size, antialias)


@register(fields=dict(
    crop_scale=Field("range?", None, "(lo, hi) area fraction of torchvision's "
                     "RandomResizedCrop; None: no crop, the image is resized to the view size "
                     "(bilinear) when its size differs"),
    crop_ratio=Field("range", (3 / 4, 4 / 3), "aspect-ratio range, sampled log-uniformly"),
    antialias=Field("bool", True, "the crop's or resize's bilinear shrink is antialiased")),
    draws=2 * CROP_ATTEMPTS + 2, enabled=lambda p: True)
def crop(u, image, p, size):
  if p["crop_scale"] is None:
    return im.resize(image, size, p["antialias"])
  return random_resized_crop(u, image, size, p["crop_scale"], p["crop_ratio"], p["antialias"])


@register(fields=dict(hflip_prob=Field("prob", 0.0, "probability of a left-right flip")),
          draws=1, enabled="hflip_prob")
def hflip(u, image, p, size):
  return with_prob(u[0], p["hflip_prob"], lambda: im.hflip(image), image)


@register(fields=dict(vflip_prob=Field("prob", 0.0, "probability of an up-down flip")),
          draws=1, enabled="vflip_prob")
def vflip(u, image, p, size):
  return with_prob(u[0], p["vflip_prob"], lambda: im.vflip(image), image)


@register(fields=dict(rot90_prob=Field(
    "prob", 0.0, "probability of a rotation by k*90 degrees, k uniform in {1, 2, 3} (0.75 "
    "gives the four orientations uniformly)")), draws=2, enabled="rot90_prob")
def rot90(u, image, p, size):
  k = 1 + jnp.minimum(jnp.floor(u[1] * 3), 2).astype(jnp.int32)
  return with_prob(u[0], p["rot90_prob"], lambda: im.rot90(image, k), image)


@register(fields=dict(
    rotate_prob=Field("prob", 0.0, "probability of a rotation by an angle uniform in "
                      "[-rotate_degrees, rotate_degrees]"),
    rotate_degrees=Field("num", 45.0, "largest rotation angle"),
    zoom_prob=Field("prob", 0.0, "probability of a zoom about the centre by a factor uniform "
                    "in zoom_range (> 1 magnifies)"),
    zoom_range=Field("range", (0.8, 1.2), "zoom factor range"),
    shift_prob=Field("prob", 0.0, "probability of a whole-pixel translation uniform in "
                     "[-shift_fraction, shift_fraction] of the side, each axis"),
    shift_fraction=Field("num", 0.1, "largest shift as a fraction of the side"),
    fill_value=Field("real", 0.0, "value of the pixels rotate/zoom/shift bring in")),
    draws=7)
def affine(u, image, p, size):
  """Rotation, zoom and shift (each with its own probability) as ONE bilinear warp: the image
  is resampled once instead of three times (less interpolation blur, one gather to compile)."""
  h, w, _ = image.shape
  on = lambda i, q: u[i] < q if 0 < q < 1 else (q >= 1)
  deg, frac, (zlo, zhi) = p["rotate_degrees"], p["shift_fraction"], p["zoom_range"]
  angle = jnp.where(on(0, p["rotate_prob"]), lerp(u[1], -deg, deg), 0.0)
  factor = jnp.where(on(2, p["zoom_prob"]), lerp(u[3], zlo, zhi), 1.0)
  dy = jnp.where(on(4, p["shift_prob"]), jnp.round(lerp(u[5], -frac, frac) * h), 0.0)
  dx = jnp.where(on(4, p["shift_prob"]), jnp.round(lerp(u[6], -frac, frac) * w), 0.0)
  t = jnp.deg2rad(angle)
  c, s = jnp.cos(t), jnp.sin(t)
  m = jnp.array([[c, s], [-s, c]]) / factor
  offset = -(m @ jnp.stack([dy, dx]))
  return im.affine_warp(image, m, (offset[0], offset[1]), p["fill_value"])


def _derive_jitter(p: dict) -> None:
  if p["color_jitter"] is None:
    s = p["color_strength"]
    p["color_jitter"] = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
  if p["color_jitter"][3] > 0.5:
    raise ValueError(f"augment.color_jitter hue={p['color_jitter'][3]}: must be <= 0.5")


@register(fields=dict(
    color_prob=Field("prob", 0.0, "probability of torchvision's ColorJitter (SimCLR's "
                     "RandomApply p=0.8)"),
    color_strength=Field("num", 1.0, "s: (brightness, contrast, saturation, hue) = (0.8s, "
                         "0.8s, 0.8s, 0.2s)"),
    color_jitter=Field("jitter?", None, "the four factors given explicitly, e.g. BYOL's "
                       "(0.4, 0.4, 0.2, 0.1); None: from color_strength")),
    draws=6, rgb_only=True, derive=_derive_jitter,
    enabled=lambda p: p["color_prob"] > 0 and any(x > 0 for x in p["color_jitter"]))
def color_jitter(u, image, p, size):
  """torchvision RandomApply([ColorJitter(b, c, s, h)], p) on RGB in [0, 1]: brightness,
  contrast and saturation factors uniform in [max(0, 1-x), 1+x], hue in [-x, x], the enabled
  ones in a random order, each result clipped to [0, 1]."""
  brightness, contrast, saturation, hue = p["color_jitter"]
  lo = lambda x: max(0.0, 1.0 - x)
  fb = lerp(u[1], lo(brightness), 1.0 + brightness)
  fc = lerp(u[2], lo(contrast), 1.0 + contrast)
  fs = lerp(u[3], lo(saturation), 1.0 + saturation)
  fh = lerp(u[4], -hue, hue)
  ops = []  # only the enabled ones, as torchvision skips a zero factor
  if brightness > 0:
    ops.append(lambda x: im.adjust_brightness(x, fb))
  if contrast > 0:
    ops.append(lambda x: im.adjust_contrast(x, fc))
  if saturation > 0:
    ops.append(lambda x: im.adjust_saturation(x, fs))
  if hue > 0:
    ops.append(lambda x: im.adjust_hue(x, fh))
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

  return with_prob(u[0], p["color_prob"], jitter, image)


@register(fields=dict(grayscale_prob=Field(
    "prob", 0.0, "probability of torchvision's Grayscale(3): 0.2989 R + 0.587 G + 0.114 B")),
    draws=1, rgb_only=True, enabled="grayscale_prob")
def grayscale(u, image, p, size):
  return with_prob(u[0], p["grayscale_prob"], lambda: im.grayscale(image), image)


def _factors(u, image, per_channel: bool):
  """The op's factor draws: one per channel, or u[1] shared by all channels."""
  return u[1:1 + image.shape[-1]] if per_channel else u[1:2]


@register(fields=dict(
    brightness_prob=Field("prob", 0.0, "probability of adding a shift uniform in "
                          "[-brightness_delta, brightness_delta] (data units)"),
    brightness_delta=Field("num", 0.1, "largest shift"),
    brightness_per_channel=Field("bool", False, "one shift per channel instead of one")),
    draws=_per_channel, enabled="brightness_prob")
def brightness(u, image, p, size):
  delta = p["brightness_delta"]
  b = lerp(_factors(u, image, p["brightness_per_channel"]), -delta, delta)
  return with_prob(u[0], p["brightness_prob"], lambda: image + b, image)


@register(fields=dict(
    contrast_prob=Field("prob", 0.0, "probability of (x - mean) * f + mean, f uniform in "
                        "contrast_range"),
    contrast_range=Field("range", (0.8, 1.2), "factor range"),
    contrast_per_channel=Field("bool", False, "one factor per channel instead of one"),
    contrast_mean=Field("choice", "channel", "'channel' (per-channel spatial mean) or "
                        "'global' (mean over all channels)", choices=("channel", "global"))),
    draws=_per_channel, enabled="contrast_prob")
def contrast(u, image, p, size):
  f = lerp(_factors(u, image, p["contrast_per_channel"]), *p["contrast_range"])
  return with_prob(u[0], p["contrast_prob"],
                   lambda: im.adjust_contrast_mean(image, f, p["contrast_mean"]), image)


@register(fields=dict(
    gain_prob=Field("prob", 0.0, "probability of x * g, g uniform in gain_range"),
    gain_range=Field("range", (0.9, 1.1), "gain range"),
    gain_per_channel=Field("bool", False, "one gain per channel instead of one")),
    draws=_per_channel, enabled="gain_prob")
def gain(u, image, p, size):
  g = lerp(_factors(u, image, p["gain_per_channel"]), *p["gain_range"])
  return with_prob(u[0], p["gain_prob"], lambda: image * g, image)


@register(fields=dict(
    blur_prob=Field("prob", 0.0, "probability of a Gaussian blur (separable, reflect "
                    "padding)"),
    blur_sigma=Field("range", (0.1, 2.0), "sigma uniform in this range (SimCLR: (0.1, 2.0))"),
    blur_kernel_frac=Field("num", 0.1, "kernel side = 2 * max(1, int(frac * side) // 2) + 1 "
                           "(0.1 -> 23 at 224)"),
    blur_per_channel=Field("bool", False, "an independent sigma per channel")),
    draws=_per_channel, enabled="blur_prob")
def blur(u, image, p, size):
  s = lerp(_factors(u, image, p["blur_per_channel"]), *p["blur_sigma"])
  s = s if p["blur_per_channel"] else s[0]
  kernel = im.blur_kernel_size(size, p["blur_kernel_frac"])
  return with_prob(u[0], p["blur_prob"], lambda: im.gaussian_blur(image, s, kernel), image)


def _noise_draws(channels: int, size: int) -> int:
  return 1 + size * size * channels


def _noise_map(u, image, per_channel: bool):
  """Standard normals (H, W, C or 1); per_channel=False reads a prefix of the same draws."""
  h, w, c = image.shape
  shape = (h, w, c if per_channel else 1)
  return normals(u[1:1 + math.prod(shape)]).reshape(shape)


@register(fields=dict(
    speckle_prob=Field("prob", 0.0, "probability of multiplicative noise x * (1 + n), "
                       "n ~ N(0, speckle_std^2) per pixel"),
    speckle_std=Field("num", 0.1, "noise standard deviation"),
    speckle_per_channel=Field("bool", True, "independent noise per channel, or one map")),
    draws=_noise_draws, own_stream=True, enabled="speckle_prob")
def speckle(u, image, p, size):
  n = _noise_map(u, image, p["speckle_per_channel"])
  return with_prob(u[0], p["speckle_prob"], lambda: image * (1.0 + p["speckle_std"] * n), image)


@register(fields=dict(
    noise_prob=Field("prob", 0.0, "probability of additive noise x + n, "
                     "n ~ N(0, noise_std^2) per pixel"),
    noise_std=Field("num", 0.05, "noise standard deviation"),
    noise_per_channel=Field("bool", True, "independent noise per channel, or one map")),
    draws=_noise_draws, own_stream=True, enabled="noise_prob")
def noise(u, image, p, size):
  n = _noise_map(u, image, p["noise_per_channel"])
  return with_prob(u[0], p["noise_prob"], lambda: image + p["noise_std"] * n, image)


def _derive_threshold(p: dict) -> None:
  if p["solarize_threshold"] is None:
    lo, hi = p["value_range"] or (0.0, 1.0)
    p["solarize_threshold"] = (lo + hi) / 2.0


@register(fields=dict(
    solarize_prob=Field("prob", 0.0, "probability of solarizing: x >= threshold -> "
                        "lo + hi - x, (lo, hi) = value_range or (0, 1)"),
    solarize_threshold=Field("real?", None, "None: the middle of (lo, hi)")),
    draws=1, derive=_derive_threshold, enabled="solarize_prob")
def solarize(u, image, p, size):
  value_range = p["value_range"] or (0.0, 1.0)
  return with_prob(u[0], p["solarize_prob"],
                   lambda: im.solarize(image, p["solarize_threshold"], value_range), image)


@register(fields=dict(
    channel_dropout_prob=Field("prob", 0.0, "probability of dropping channels: each channel "
                               "is set to channel_dropout_fill with probability "
                               "channel_dropout_rate (never all of them: if every channel "
                               "draws a drop, the image is kept)"),
    channel_dropout_rate=Field("prob", 0.2, "per-channel drop probability"),
    channel_dropout_fill=Field("real", 0.0, "value of a dropped channel")),
    draws=_per_channel, enabled="channel_dropout_prob")
def channel_dropout(u, image, p, size):
  """Spectral dropout for multispectral views: the encoder cannot rely on any one band."""
  drop = u[1:1 + image.shape[-1]] < p["channel_dropout_rate"]
  drop = drop & ~jnp.all(drop)
  return with_prob(u[0], p["channel_dropout_prob"],
                   lambda: jnp.where(drop, jnp.float32(p["channel_dropout_fill"]), image), image)


@register(fields=dict(value_range=Field(
    "range?", None, "(lo, hi) range of the data; views are clipped to it at the end. None: no "
    "clip")), enabled=lambda p: p["value_range"] is not None)
def clip(u, image, p, size):
  return jnp.clip(image, p["value_range"][0], p["value_range"][1])

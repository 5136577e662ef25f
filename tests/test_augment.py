"""simclr_jax.augment against independent references (NumPy, colorsys, jax.image).

Images are tiny (4..16 px) and compiled functions are shared through module-level caches:
XLA compile time, not compute, is what these tests spend.
"""

import colorsys
import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from simclr_jax import augment as A

RGB_PRESETS = ("simclr", "simclr_cifar", "byol")
ANY_PRESETS = ("solarnet", "sentinel2", "none")
SIZE = 8  # view size used by the preset tests
IN_SIZE = 10  # originals are larger than the views


def _rng(seed=0):
  return np.random.default_rng(seed)


def _images(n, c, size=IN_SIZE, seed=0, lo=0.0, hi=1.0):
  return _rng(seed).uniform(lo, hi, (n, size, size, c)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jit_batch(augment_key, channels, image_size):
  """Jitted augment_batch of both views of a hashable config, compiled once per test module."""
  cfg = dict(augment_key)
  v1, v2 = A.make_augment(cfg, channels, image_size)
  return (jax.jit(lambda k, x: A.augment_batch(v1, k, x)),
          jax.jit(lambda k, x: A.augment_batch(v2, k, x)))


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


# ------------------------------------------------------------------------------------------
# Geometric ops, exact references.
# ------------------------------------------------------------------------------------------


def test_flips_and_rot90_match_numpy():
  x = _images(1, 3, size=6)[0]
  np.testing.assert_array_equal(A.hflip(x), np.flip(x, axis=1))
  np.testing.assert_array_equal(A.vflip(x), np.flip(x, axis=0))
  np.testing.assert_array_equal(A.apply_op("hflip", jax.random.key(0), x, hflip_prob=1.0), np.flip(x, 1))
  np.testing.assert_array_equal(A.apply_op("vflip", jax.random.key(0), x, vflip_prob=1.0), np.flip(x, 0))
  np.testing.assert_array_equal(A.apply_op("hflip", jax.random.key(0), x, hflip_prob=0.0), x)
  rot = jax.jit(A.rot90)
  for k in range(5):
    np.testing.assert_array_equal(rot(x, k), np.rot90(x, k, axes=(0, 1)))
  # A random rot90 with prob 1 is one of the three proper rotations.
  for seed in range(3):
    y = np.asarray(A.apply_op("rot90", jax.random.key(seed), x, rot90_prob=1.0))
    assert any(np.array_equal(y, np.rot90(x, k, axes=(0, 1))) for k in (1, 2, 3))
  with pytest.raises(ValueError, match="square"):
    A.rot90(np.zeros((4, 5, 1), np.float32), 1)


def test_crop_and_resize_equals_resize_of_slice():
  x = _images(1, 2, size=12, seed=1)[0]
  crop = jax.jit(A.crop_and_resize, static_argnums=(2,))  # box traced: one compile
  for top, left, h, w in [(0, 0, 12, 12), (2, 3, 5, 7), (1, 0, 11, 4), (4, 4, 3, 3),
                          (0, 5, 12, 7)]:
    got = crop(x, (top, left, h, w), 8)
    want = jax.image.resize(x[top:top + h, left:left + w], (8, 8, 2), "bilinear")
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=str((top, left, h, w)))
  # Without antialias, and to a non-square size.
  got = A.crop_and_resize(x, (2, 1, 9, 6), (4, 5), antialias=False)
  want = jax.image.resize(x[2:11, 1:7], (4, 5, 2), "bilinear", antialias=False)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_random_resized_crop_full_box_and_torchvision_fallback():
  x = _images(1, 1, size=12, seed=2)[0]
  key = jax.random.key(3)
  rrc = lambda key, x, size, scale, ratio: A.apply_op("crop", key, x, size, crop_scale=scale,
                                                    crop_ratio=ratio)
  # scale = ratio = 1 on a square: the whole image.
  got = rrc(key, x, 8, (1.0, 1.0), (1.0, 1.0))
  np.testing.assert_allclose(got, jax.image.resize(x, (8, 8, 1), "bilinear"), atol=2e-6)
  # No attempt can fit (ratio 2 at full area): torchvision's central crop, h = round(w / 2).
  got = rrc(key, x, 8, (1.0, 1.0), (2.0, 2.0))
  np.testing.assert_allclose(got, jax.image.resize(x[3:9], (8, 8, 1), "bilinear"), atol=2e-6)
  # Too wide an input: central crop with w = round(h * max(ratio)).
  wide = _images(1, 1, size=16, seed=3)[0][:6]
  got = rrc(key, wide, 4, (1.0, 1.0), (1.0, 1.0))
  np.testing.assert_allclose(got, jax.image.resize(wide[:, 5:11], (4, 4, 1), "bilinear"),
                             atol=2e-6)


def test_rotate_shift_zoom_references():
  x = _images(1, 2, size=7, seed=4)[0]
  rotate = jax.jit(A.rotate)
  # 90 degrees counter-clockwise is np.rot90 (up to the float error of cos(pi/2)).
  np.testing.assert_allclose(rotate(x, 90.0), np.rot90(x, 1, axes=(0, 1)), atol=1e-5)
  np.testing.assert_allclose(rotate(x, 0.0), x, atol=1e-6)
  # A whole-pixel shift moves content and fills with zeros.
  want = np.zeros_like(x)
  want[2:, :-1] = x[:-2, 1:]
  np.testing.assert_allclose(jax.jit(A.shift)(x, 2, -1), want, atol=1e-6)
  # Zoom by 2 about the centre is scale_and_translate with scale 2, translation -size/2.
  y = _images(1, 1, size=8, seed=5)[0]
  want = jax.image.scale_and_translate(y, (8, 8, 1), (0, 1), jnp.array([2.0, 2.0]),
                                       jnp.array([-4.0, -4.0]), "linear", antialias=False)
  np.testing.assert_allclose(jax.jit(A.zoom)(y, 2.0), want, atol=1e-5)
  # The combined random warp is the identity when no part of it applies.
  np.testing.assert_array_equal(A.apply_op("affine", jax.random.key(0), x), x)


# ------------------------------------------------------------------------------------------
# Photometric ops against formulas written in NumPy / colorsys.
# ------------------------------------------------------------------------------------------

GRAY = np.array([0.2989, 0.587, 0.114], np.float32)


def test_torchvision_colour_ops_match_numpy():
  x = _images(1, 3, size=5, seed=6)[0]
  gray = (x * GRAY).sum(-1, keepdims=True)
  np.testing.assert_allclose(A.grayscale(x), np.repeat(gray, 3, -1), atol=1e-6)
  np.testing.assert_allclose(A.apply_op("grayscale", jax.random.key(0), x, grayscale_prob=1.0),
                             np.repeat(gray, 3, -1), atol=1e-6)
  np.testing.assert_allclose(A.adjust_brightness(x, 1.7), np.clip(1.7 * x, 0, 1), atol=1e-6)
  m = gray.mean()
  np.testing.assert_allclose(A.adjust_contrast(x, 1.6), np.clip(1.6 * x + (1 - 1.6) * m, 0, 1),
                             atol=1e-6)
  np.testing.assert_allclose(A.adjust_saturation(x, 0.3),
                             np.clip(0.3 * x + 0.7 * gray, 0, 1), atol=1e-6)
  # Hue: colorsys is an independent HSV implementation.
  for shift in (0.0, 0.13, -0.31):
    want = np.array([[colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
                      for h, s, v in (colorsys.rgb_to_hsv(*px) for px in row)] for row in x])
    np.testing.assert_allclose(A.adjust_hue(x, shift), want, atol=1e-5)
  hsv = np.array([[colorsys.rgb_to_hsv(*px) for px in row] for row in x])
  np.testing.assert_allclose(A.rgb_to_hsv(x), hsv, atol=1e-5)


def test_solarize_matches_numpy():
  x = _images(1, 3, size=5, seed=7)[0]
  np.testing.assert_allclose(A.solarize(x, 0.5), np.where(x >= 0.5, 1 - x, x), atol=1e-7)
  y = x * 2 - 1  # data in [-1, 1]: inverted within the range
  np.testing.assert_allclose(A.solarize(y, 0.2, (-1.0, 1.0)), np.where(y >= 0.2, -y, y),
                             atol=1e-7)
  np.testing.assert_allclose(A.apply_op("solarize", jax.random.key(0), x, solarize_prob=1.0,
                                         solarize_threshold=0.3),
                             np.where(x >= 0.3, 1 - x, x), atol=1e-7)


def test_any_channel_intensity_ops_match_numpy():
  x = _images(1, 5, size=6, seed=8, lo=-1.0, hi=2.0)[0]
  key = jax.random.key(0)
  # Degenerate ranges fix the factor: the op must then be exactly the formula.
  np.testing.assert_allclose(A.apply_op("gain", key, x, gain_prob=1.0, gain_range=(1.3, 1.3)), 1.3 * x, rtol=1e-6)
  mc = x.mean(axis=(0, 1), keepdims=True)
  np.testing.assert_allclose(A.apply_op("contrast", key, x, contrast_prob=1.0,
                                          contrast_range=(0.5, 0.5), contrast_mean="channel"),
                             (x - mc) * 0.5 + mc, atol=1e-6)
  np.testing.assert_allclose(A.apply_op("contrast", key, x, contrast_prob=1.0,
                                          contrast_range=(1.5, 1.5), contrast_mean="global"),
                             (x - x.mean()) * 1.5 + x.mean(), atol=1e-6)
  # Brightness: one additive shift per image (shared) or per channel, within [-delta, delta].
  d = np.asarray(A.apply_op("brightness", key, x, brightness_prob=1.0, brightness_delta=0.2)) - x
  assert np.allclose(d, d.flat[0], atol=1e-6) and abs(d.flat[0]) <= 0.2
  d = np.asarray(A.apply_op("brightness", key, x, brightness_prob=1.0, brightness_delta=0.2,
                              brightness_per_channel=True)) - x
  per_c = d[0, 0]
  np.testing.assert_allclose(d, np.broadcast_to(per_c, d.shape), atol=1e-6)
  assert np.all(np.abs(per_c) <= 0.2) and np.unique(per_c.round(6)).size == 5
  # Per-channel gain: one factor per channel, each within the range.
  g = np.asarray(A.apply_op("gain", key, x, gain_prob=1.0, gain_range=(0.5, 1.5),
                              gain_per_channel=True)) / x
  np.testing.assert_allclose(g, np.broadcast_to(g[0, 0], g.shape), rtol=1e-5)
  assert np.all((g[0, 0] >= 0.5) & (g[0, 0] <= 1.5)) and np.unique(g[0, 0].round(5)).size == 5
  # Probability 0 is the identity.
  np.testing.assert_array_equal(A.apply_op("gain", key, x, gain_prob=0.0, gain_range=(2.0, 2.0)), x)


def test_noise_and_speckle_statistics():
  x = np.full((32, 32, 3), 0.5, np.float32)
  key = jax.random.key(1)
  n = np.asarray(A.apply_op("noise", key, x, noise_prob=1.0, noise_std=0.1)) - x
  assert abs(n.std() - 0.1) < 0.01 and abs(n.mean()) < 0.01
  assert not np.allclose(n[..., 0], n[..., 1])
  n = np.asarray(A.apply_op("noise", key, x, noise_prob=1.0, noise_std=0.1,
                              noise_per_channel=False)) - x
  np.testing.assert_array_equal(n[..., 0], n[..., 2])  # one map for all channels
  s = np.asarray(A.apply_op("speckle", key, x, speckle_prob=1.0, speckle_std=0.2)) / x - 1.0  # multiplicative: x (1 + n)
  assert abs(s.std() - 0.2) < 0.02 and abs(s.mean()) < 0.02


def test_an_op_reads_its_draws_as_documented():
  # apply_op draws the op's uniforms u = uniform(key, (draws,)) itself: the shift is then
  # exactly -delta + 2 delta u[1 + c], per channel.
  x = _images(1, 4, size=5, seed=18)[0]
  key = jax.random.key(9)
  u = np.asarray(jax.random.uniform(key, (5,)))
  got = A.apply_op("brightness", key, x, brightness_prob=1.0, brightness_delta=0.3,
                   brightness_per_channel=True)
  np.testing.assert_allclose(got, x + (-0.3 + 0.6 * u[1:]), atol=1e-6)


def _np_channel_dropout(x, u, prob, rate, fill):
  """NumPy reference: with probability prob (u[0] < prob) each channel c with u[1 + c] < rate
  is set to fill, unless every channel would be."""
  drop = u[1:1 + x.shape[-1]] < rate
  if u[0] >= prob or drop.all():
    return x
  return np.where(drop, np.float32(fill), x)


@pytest.mark.parametrize("seed", range(6))
def test_channel_dropout_matches_numpy(seed):
  x = _images(1, 6, size=4, seed=seed)[0]
  key = jax.random.key(seed)
  u = np.asarray(jax.random.uniform(key, (7,)))
  prob, rate, fill = 0.7, 0.4, -0.5
  got = A.apply_op("channel_dropout", key, x, channel_dropout_prob=prob,
                   channel_dropout_rate=rate, channel_dropout_fill=fill)
  np.testing.assert_array_equal(got, _np_channel_dropout(x, u, prob, rate, fill))


def test_channel_dropout_never_drops_every_channel():
  x = _images(1, 3, size=4, seed=19)[0]
  got = A.apply_op("channel_dropout", jax.random.key(0), x, channel_dropout_prob=1.0,
                   channel_dropout_rate=1.0)
  np.testing.assert_array_equal(got, x)


def test_channel_dropout_in_a_view_drops_the_expected_share():
  n, c = 400, 4
  x = _images(n, c, size=4, seed=20) + 1.0     # in [1, 2]: a dropped channel is exactly 0
  f1, _ = _jit_batch((("preset", "none"), ("channel_dropout_prob", 1.0),
                      ("channel_dropout_rate", 0.25)), c, 4)
  out = np.asarray(f1(_keys(n, seed=4), x))
  dropped = np.all(out == 0.0, axis=(1, 2))            # (n, c)
  kept = np.all(out == x, axis=(1, 2))
  assert np.all(dropped ^ kept)
  # A channel drops with probability 0.25, except in the draws where all four would (then
  # all are kept): 0.25 - 0.25^4.
  _within_3_sigma(dropped.sum(), n * c, 0.25 - 0.25 ** 4)


def test_enabling_an_op_leaves_the_other_ops_draws_unchanged():
  # Brightness with delta 0 applies (x + 0 == x) but must not move the gain's or the
  # crop's random numbers: each op reads a fixed slot of the view's draws.
  x = _images(4, 2, seed=21)
  base = dict(preset="none", crop_scale=(0.3, 1.0), gain_prob=0.5, gain_range=(0.5, 1.5))
  key = jax.random.key(11)
  a = A.two_views(base, 2, SIZE, key, x)
  b = A.two_views({**base, "brightness_prob": 1.0, "brightness_delta": 0.0}, 2, SIZE, key, x)
  c = A.two_views({**base, "gain_prob": 0.0}, 2, SIZE, key, x)
  for va, vb in zip(a, b):
    np.testing.assert_array_equal(va, vb)
  assert not np.allclose(a[0], c[0])    # the gain does act in the base views


def test_unknown_op_and_field_are_named():
  x = np.zeros((4, 4, 1), np.float32)
  with pytest.raises(ValueError, match=r"'posterise' unknown; ops: \['crop'"):
    A.apply_op("posterise", jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"channel_dropout_rat\b.*fields:"):
    A.apply_op("channel_dropout", jax.random.key(0), x, channel_dropout_rat=0.1)
  with pytest.raises(ValueError, match=r"hflip_prob.*already belong to \['hflip'\]"):
    A.register(fields={"hflip_prob": A.Field("prob", 0.0, "")})(lambda u, im, p, s: im)


def test_blur_of_impulse_is_normalised_gaussian():
  x = np.zeros((15, 15, 2), np.float32)
  x[7, 7] = 1.0
  sigma = np.array([1.3, 0.7], np.float32)
  got = np.asarray(A.gaussian_blur(x, sigma, 7))  # per-channel sigma
  r = np.arange(-3, 4)
  for c in range(2):
    g = np.exp(-r ** 2 / (2 * sigma[c] ** 2))
    want = np.zeros((15, 15))
    want[4:11, 4:11] = np.outer(g, g) / np.outer(g, g).sum()
    np.testing.assert_allclose(got[..., c], want, atol=1e-6)
    np.testing.assert_allclose(got[..., c].sum(), 1.0, atol=1e-6)
  # Reflect padding: a constant image stays constant (no dark border).
  const = np.full((6, 6, 1), 0.7, np.float32)
  np.testing.assert_allclose(A.gaussian_blur(const, 2.0, 5), const, atol=1e-6)
  # SimCLR's kernel: 10 % of the side, odd.
  assert [A.blur_kernel_size(s) for s in (8, 32, 96, 224)] == [3, 3, 9, 23]


# ------------------------------------------------------------------------------------------
# Config, presets, composition.
# ------------------------------------------------------------------------------------------


def test_config_schema_presets_and_per_view_values():
  v1, v2 = A.resolve(A.get_config("simclr_cifar"))
  assert v1 == v2
  assert v1["crop_scale"] == (0.08, 1.0) and v1["hflip_prob"] == 0.5
  assert v1["color_prob"] == 0.8 and v1["grayscale_prob"] == 0.2 and v1["blur_prob"] == 0.0
  np.testing.assert_allclose(v1["color_jitter"], (0.4, 0.4, 0.4, 0.1))
  v1, _ = A.resolve({"preset": "simclr"})
  np.testing.assert_allclose(v1["color_jitter"], (0.8, 0.8, 0.8, 0.2))
  assert v1["blur_prob"] == 0.5 and v1["blur_sigma"] == (0.1, 2.0)
  # Asymmetric views (BYOL): per-view pairs, also after the ConfigDict was built.
  v1, v2 = A.resolve(A.get_config("byol"))
  assert (v1["blur_prob"], v2["blur_prob"]) == (1.0, 0.1)
  assert (v1["solarize_prob"], v2["solarize_prob"]) == (0.0, 0.2)
  cfg = A.get_config("simclr")
  cfg.blur_prob = (1.0, 0.1)
  cfg.crop_scale = ((0.08, 1.0), (0.2, 1.0))
  cfg.color_strength = 0.5
  v1, v2 = A.resolve(cfg)
  assert (v1["blur_prob"], v2["blur_prob"]) == (1.0, 0.1)
  assert (v1["crop_scale"], v2["crop_scale"]) == ((0.08, 1.0), (0.2, 1.0))
  assert v1["color_strength"] == v2["color_strength"] == 0.5
  # JSON round trip (config.json: tuples become lists) resolves the same.
  cfg = A.get_config("byol", hflip_prob=(0.5, 1.0), crop_scale=((0.08, 1.0), (0.2, 1.0)))
  assert A.resolve(json.loads(cfg.to_json())) == A.resolve(cfg)
  v1, v2 = A.resolve({"preset": "solarnet"})
  assert v1["crop_scale"] == (0.5, 1.0) and v1["vflip_prob"] == v1["hflip_prob"] == 0.5
  assert v1["color_prob"] == 0 and v1["value_range"] == (-1.0, 1.0)
  assert v1["solarize_threshold"] == 0.0
  with pytest.raises(ValueError, match="unknown"):
    A.resolve({"preset": "simclr", "blur_porb": 0.5})
  with pytest.raises(ValueError, match="presets"):
    A.resolve({"preset": "imagenet21k"})
  with pytest.raises(ValueError, match="probability"):
    A.resolve({"preset": "none", "hflip_prob": 1.5})
  with pytest.raises(ValueError, match="per-view"):
    A.resolve({"preset": "none", "hflip_prob": (0.1, 0.2, 0.3)})


@pytest.mark.parametrize("channels", [1, 12])
@pytest.mark.parametrize("preset", RGB_PRESETS)
def test_rgb_only_ops_refused_for_other_channel_counts(preset, channels):
  with pytest.raises(ValueError, match=rf"color_jitter.*channels={channels}"):
    A.make_augment({"preset": preset}, channels, SIZE)


def test_rgb_only_override_refused_and_named():
  with pytest.raises(ValueError, match=r"grayscale.*channels=12"):
    A.make_augment({"preset": "sentinel2", "grayscale_prob": 0.1}, 12, SIZE)
  with pytest.raises(ValueError, match=r"grayscale.*channels=1"):
    A.make_augment({"preset": "simclr", "color_prob": 0.0}, 1, SIZE)
  with pytest.raises(ValueError, match=r"color_jitter.*channels=4"):
    A.make_augment({"preset": "none", "color_prob": (0.0, 0.5)}, 4, SIZE)
  A.make_augment({"preset": "simclr", "color_prob": 0.0, "grayscale_prob": 0.0}, 1, SIZE)


def _valid(preset, channels):
  return channels == 3 or preset in ANY_PRESETS


@pytest.mark.parametrize("channels", [1, 3, 12])
def test_every_valid_preset_keeps_shape_and_dtype(channels):
  """Traced (eval_shape) for every valid (preset, channels) pair: cheap, no compile."""
  x = jax.ShapeDtypeStruct((2, IN_SIZE, IN_SIZE, channels), jnp.float32)
  for preset in RGB_PRESETS + ANY_PRESETS:
    if not _valid(preset, channels):
      continue
    v1, v2 = jax.eval_shape(
        lambda k, im: A.two_views(preset, channels, SIZE, k, im), jax.random.key(0), x)
    for v in (v1, v2):
      assert v.shape == (2, SIZE, SIZE, channels) and v.dtype == jnp.float32, (preset, v)


# One real (compiled) run per preset, on the channel count it is meant for.
RUNS = [("simclr", 3), ("simclr_cifar", 3), ("byol", 3), ("solarnet", 1), ("sentinel2", 12),
        ("none", 12)]


@pytest.mark.parametrize("preset,channels", RUNS)
def test_preset_runs_deterministic_and_per_sample(preset, channels):
  lo, hi = (-1.0, 1.0) if preset == "solarnet" else (0.0, 1.0)
  x = _images(3, channels, lo=lo, hi=hi, seed=9)
  x[1] = x[0]  # two identical samples must still get different random parameters
  key = jax.random.key(42)
  v1, v2 = A.two_views(preset, channels, SIZE, key, x)
  for v in (v1, v2):
    assert v.shape == (3, SIZE, SIZE, channels) and v.dtype == jnp.float32
    assert np.all(np.isfinite(v))
  cfg_range = A.resolve(preset)[0]["value_range"]
  if cfg_range is not None:
    assert float(v1.min()) >= cfg_range[0] and float(v1.max()) <= cfg_range[1]
  # Same key: the same views, bit for bit.
  w1, w2 = A.two_views(preset, channels, SIZE, key, x)
  np.testing.assert_array_equal(v1, w1)
  np.testing.assert_array_equal(v2, w2)
  if preset == "none":
    np.testing.assert_allclose(v1, jax.image.resize(x, (3, SIZE, SIZE, channels), "bilinear"),
                               atol=1e-6)
    np.testing.assert_array_equal(v1, v2)
    return
  assert not np.allclose(v1[0], v1[1]), "identical samples got identical views"
  assert not np.allclose(v1, v2), "the two views are identical"
  # A sample's views depend on its id, not its batch position.
  perm = np.array([2, 0, 1])
  p1, p2 = A.two_views(preset, channels, SIZE, key, x[perm], sample_ids=perm)
  np.testing.assert_allclose(p1, v1[perm], atol=1e-6)
  np.testing.assert_allclose(p2, v2[perm], atol=1e-6)


def test_two_views_sharded_over_devices_equals_single_device():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  n = jax.device_count()
  x = _images(n, 1, lo=-1.0, hi=1.0, seed=10)
  key = jax.random.key(7)
  ref = A.two_views("solarnet", 1, SIZE, key, x)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  # Inside a jitted step, as the trainer calls it, on a batch sharded over all devices.
  got = jax.jit(lambda k, im: A.two_views("solarnet", 1, SIZE, k, im))(key, xs)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, atol=1e-6)


def test_rgb_views_under_shard_map_equal_single_device():
  # The train step augments inside jax.shard_map (per-device keys from global sample ids).
  # Colour jitter's random op order and rot90 once failed to compile there (replication
  # check on lax.switch); the views must equal those made on one device.
  from jax.sharding import Mesh, PartitionSpec as P

  cfg = A.get_config("simclr_cifar", rot90_prob=0.75)
  n = jax.device_count()
  x = _images(2 * n, 3, seed=12)
  key = jax.random.key(3)
  ref = A.two_views(cfg, 3, SIZE, key, x, sample_ids=np.arange(2 * n))
  view1, view2 = A.make_augment(cfg, 3, SIZE)

  def per_device(images, ids):
    k1, k2 = A.view_keys(key, ids)
    return A.augment_batch(view1, k1, images), A.augment_batch(view2, k2, images)

  mesh = Mesh(np.array(jax.devices()), ("data",))
  got = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                              out_specs=(P("data"), P("data"))))(
      x, np.arange(2 * n, dtype=np.uint32))
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, atol=1e-5)


@pytest.mark.parametrize("channels,cfg", [
    (1, dict(crop_scale=(0.5, 1.0), brightness_prob=0.8, brightness_delta=0.4,
             contrast_prob=0.8, contrast_range=(0.4, 1.6), blur_prob=0.5,
             blur_sigma=(0.1, 1.5), blur_kernel_frac=0.2)),
    (3, dict(color_strength=0.5, blur_prob=0.5, contrast_prob=0.5)),
])
def test_views_are_bitwise_independent_of_the_per_device_batch(channels, cfg):
  # A sample's views must not depend on how many samples share its device: 1 device holding
  # the whole batch and 8 devices holding 2 each give the same bits. Reductions compiled for
  # different batch shapes (a contrast mean, a blur kernel's normaliser) once differed by
  # 1e-7 here, and a tiny net then amplified that to 3e-3 in its gradient norm.
  from jax.sharding import Mesh, PartitionSpec as P

  cfg = A.get_config("simclr" if channels == 3 else "none", value_range=(0.0, 1.0), **cfg)
  n = jax.device_count()
  x = _images(2 * n, channels, size=16, seed=13)
  ids = np.arange(2 * n, dtype=np.uint32)
  key = jax.random.key(5)
  view1, view2 = A.make_augment(cfg, channels, 16)

  def per_device(images, ids):
    k1, k2 = A.view_keys(key, ids)
    return A.augment_batch(view1, k1, images), A.augment_batch(view2, k2, images)

  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = Mesh(np.array(devices), ("data",))
    out.append(jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                                     out_specs=(P("data"), P("data"))))(x, ids))
  for whole, split in zip(*out):
    assert np.asarray(whole).std() > 0.05       # views with real content
    np.testing.assert_array_equal(np.asarray(split), np.asarray(whole))


def _within_3_sigma(count, n, p):
  sigma = math.sqrt(n * p * (1 - p))
  assert abs(count - n * p) <= 3 * sigma + 1e-9, (count, n * p, sigma)


def test_probabilities_apply_to_the_expected_fraction():
  n = 2000
  key = jax.random.key(123)
  # hflip 0.5 on one channel (4x4 images with distinct columns: a flip is always visible).
  x = np.broadcast_to(np.arange(4, dtype=np.float32)[None, None, :, None], (n, 4, 4, 1))
  x = x + _images(n, 1, size=4, seed=11) * 0.1
  f1, f2 = _jit_batch((("preset", "none"), ("hflip_prob", (0.5, 0.0))), 1, 4)
  out = np.asarray(f1(_keys(n), x))
  flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
  same = np.all(out == x, axis=(1, 2, 3))
  assert np.all(flipped ^ same)
  _within_3_sigma(flipped.sum(), n, 0.5)
  np.testing.assert_array_equal(f2(_keys(n), x), x)  # view 2: probability 0
  # grayscale 0.2 on RGB: grey pixels have equal channels.
  x = _images(n, 3, size=4, seed=12)
  f1, _ = _jit_batch((("preset", "none"), ("grayscale_prob", 0.2)), 3, 4)
  out = np.asarray(f1(_keys(n, seed=1), x))
  gray = np.all(np.ptp(out, axis=-1) < 1e-6, axis=(1, 2))
  _within_3_sigma(gray.sum(), n, 0.2)
  # Asymmetric solarize (0.0, 0.2), BYOL-style.
  x = _images(n, 1, size=4, seed=13)
  f1, f2 = _jit_batch((("preset", "none"), ("solarize_prob", (0.0, 0.2)),
                       ("value_range", (0.0, 1.0))), 1, 4)
  np.testing.assert_array_equal(f1(_keys(n, seed=2), x), x)
  out = np.asarray(f2(_keys(n, seed=2), x))
  solar = ~np.all(out == x, axis=(1, 2, 3))
  _within_3_sigma(solar.sum(), n, 0.2)


def test_augment_batch_accepts_raw_and_single_keys():
  x = _images(4, 1, size=4, seed=14)
  f1, _ = _jit_batch((("preset", "none"), ("hflip_prob", 0.5)), 1, 4)
  raw = jax.random.key_data(_keys(4))  # (4, 2) uint32
  v, _ = A.make_augment({"preset": "none", "hflip_prob": 0.5}, 1, 4)
  np.testing.assert_array_equal(A.augment_batch(v, _keys(4), x), f1(_keys(4), x))
  assert A.augment_batch(v, raw, x).shape == x.shape
  assert A.augment_batch(v, jax.random.key(0), x).shape == x.shape


# ------------------------------------------------------------------------------------------
# Contact sheet.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 12])
def test_write_grid_png(tmp_path, channels):
  n, s, pad = 3, 6, 2
  images = _images(n, channels, size=9, seed=15)
  v1 = _images(n, channels, size=s, seed=16)
  v2 = _images(n, channels, size=s, seed=17)
  sheet = A.grid_image(images, v1, v2, (0.0, 1.0), pad=pad)
  assert sheet.dtype == np.uint8
  assert sheet.shape == (n * (s + pad) + pad, 3 * (s + pad) + pad, 3)
  view1 = sheet[pad:pad + s, 2 * pad + s:2 * pad + 2 * s].astype(int)
  bands = {1: [0, 0, 0], 3: [0, 1, 2], 12: [3, 2, 1]}[channels]
  np.testing.assert_allclose(view1, np.round(v1[0][..., bands] * 255), atol=1)
  path = A.write_grid(str(tmp_path / "sub" / f"grid{channels}.png"), images, v1, v2)
  with Image.open(path) as im:
    assert im.format == "PNG"
    assert im.size == (3 * (s + pad) + pad, n * (s + pad) + pad)  # (width, height)

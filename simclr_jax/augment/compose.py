"""Views: the enabled registered ops in registry order, vmapped over per-sample keys.

Nothing branches in Python on traced values: an op applied with probability p draws u ~ U[0, 1)
and selects with `jnp.where(u < p, op(image), image)` (a probability that is statically 0
removes the op from the graph, 1 drops the select), so views are made inside the jitted train
step with `jax.vmap` over per-sample keys, as BYOL does.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from simclr_jax.augment import image as im
from simclr_jax.augment import registry
from simclr_jax.augment.config import FIELDS, resolve
from simclr_jax.augment.presets import PRESETS

Array = jax.Array
ViewFn = Callable[[Array, Array], Array]


def _layout(channels: int, size: int):
  """[(op, start, count, stream)]: the slot of each op in its view's draws (registry order).

  stream 0 is the one uniform vector every view draws; own-stream ops get 1, 2, ...
  """
  out, start, stream = [], 0, 0
  for op in registry.OPS.values():
    n = int(op.draws(channels, size))
    if op.own_stream:
      stream += 1
      out.append((op, 0, n, stream))
    else:
      out.append((op, start, n, 0))
      start += n
  return out, start


def _build_view(p: dict, channels: int, size: int) -> ViewFn:
  layout, shared = _layout(channels, size)
  active = [entry for entry in layout if entry[0].enabled(p)]

  def view(key, image):
    image = im.as_image(image)
    if image.shape[-1] != channels:
      raise ValueError(f"augment: image has {image.shape[-1]} channels, expected {channels}")
    # float32 draws, not the default float type: the same views with jax_enable_x64 on.
    u_all = jax.random.uniform(key, (shared,), jnp.float32)
    for op, start, n, stream in active:
      u = (u_all[start:start + n] if stream == 0
           else jax.random.uniform(jax.random.fold_in(key, stream), (n,), jnp.float32))
      image = op(u, image, p, size)
    return image

  return view


def _safe_presets() -> list[str]:
  """Presets that enable no RGB-only op (for the error message)."""
  safe = []
  for name in sorted(PRESETS):
    views = resolve(name)
    if not any(op.rgb_only and op.enabled(v) for v in views for op in registry.OPS.values()):
      safe.append(name)
  return safe


def _check_channels(views, channels: int):
  if channels == 3:
    return
  for i, p in enumerate(views, start=1):
    for op in registry.OPS.values():
      if op.rgb_only and op.enabled(p):
        f = op.switch
        raise ValueError(
            f"augment: {op.name} is RGB-only (needs 3 channels) but channels={channels} "
            f"(preset {p['preset']!r}, view {i}, {f}={p[f]}); set augment.{f}=0.0 or pick a "
            f"preset for any channel count ({', '.join(_safe_presets())})")


def _freeze(p: dict):
  return tuple(sorted(p.items()))


@functools.lru_cache(maxsize=None)
def _view_cached(p, channels: int, image_size: int) -> ViewFn:
  # Cached so equal parameters give the same function object: jit caches then hit.
  return _build_view(dict(p), channels, image_size)


def make_augment(augment_cfg, channels: int, image_size: int) -> tuple[ViewFn, ViewFn]:
  """(view1_fn, view2_fn), each fn(key, image[H, W, C]) -> image[size, size, C] float32.

  Input float32 in value_range, any H, W (uint8 is cast, not rescaled). Raises ValueError
  naming the op and the channel count when an RGB-only op is enabled for channels != 3.
  """
  channels, image_size = int(channels), int(image_size)
  views = resolve(augment_cfg)
  _check_channels(views, channels)
  return tuple(_view_cached(_freeze(v), channels, image_size) for v in views)


def apply_op(name: str, key, image, size: int | None = None, **fields) -> Array:
  """One registered op on one image with the given fields (others: their defaults).

  Draws the op's uniforms from `key` itself (not from a view's shared vector); for tests and
  for looking at one op alone. `size` defaults to the image's side.
  """
  if name not in registry.OPS:
    raise ValueError(f"augment op {name!r} unknown; ops: {list(registry.OPS)}")
  op = registry.OPS[name]
  unknown = sorted(set(fields) - set(FIELDS))
  if unknown:
    raise ValueError(f"augment: unknown field(s) {unknown}; fields: {sorted(FIELDS)}")
  image = im.as_image(image)
  size = size or image.shape[0]
  p, _ = resolve({"preset": "none", **fields})
  # float32 draws (not the default float type): the same views with jax_enable_x64 on.
  u = jax.random.uniform(key, (int(op.draws(image.shape[-1], size)),), jnp.float32)
  return op(u, image, p, size)


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
  """Two augmented views of a batch; sample i uses split(fold_in(key, sample_ids[i])).

  So a sample's views do not depend on its batch position or device; pass the samples'
  global ids when `images` is part of a larger batch. Returns (v1, v2).
  """
  view1, view2 = make_augment(augment_cfg, channels, image_size)
  if sample_ids is None:
    sample_ids = jnp.arange(images.shape[0], dtype=jnp.uint32)
  sample_ids = jnp.asarray(sample_ids).astype(jnp.uint32)
  return _two_views(view1, view2, key, images, sample_ids)

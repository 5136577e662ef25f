"""The op registry: each augmentation op is one function that declares what it needs.

An op is `fn(u, image, p, size) -> image` on ONE image (H, W, C) float32, where `u` holds the
op's uniform draws in [0, 1), `p` the resolved parameters of the view (every field of every
op, so an op may read a shared one such as `value_range`) and `size` the view's side.
`register` records, next to the function:

- `fields`: name -> Field (kind, default, doc). The config schema, the defaults and the
  validation are built from these; no other list of fields exists.
- `draws`: how many uniforms the op reads, a number or `(channels, size) -> number`. Ops
  read fixed slots of one uniform vector drawn per view (one threefry call: each costs 0.1-0.5 s
  of XLA compile time on CPU); the slots depend only on the registry, the channel count and
  the size, so switching one op on or off leaves the randomness of every other op unchanged.
  `own_stream=True` ops (per-pixel noise maps, too large to draw when unused) read their own
  vector from `fold_in(view_key, k)`, k = 1, 2, ... in registry order.
- `rgb_only`: the op needs 3 channels; `make_augment` refuses it, enabled, for others.
- `enabled`: the name of the probability field (enabled when > 0) or a predicate on `p`;
  disabled ops are left out of the traced graph.
- `derive`: fills parameters computed from others after resolution (may raise ValueError).

Ops apply in registration order, which is the order of `ops.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array

KINDS = ("prob", "num", "real", "bool", "range", "jitter", "choice")


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: `kind` (a KINDS entry, '?' suffix: None allowed), default, doc."""
  kind: str
  default: Any
  doc: str
  choices: tuple = ()

  def __post_init__(self):
    if self.kind.rstrip("?") not in KINDS:
      raise ValueError(f"Field kind {self.kind!r}; expected one of {KINDS} (optionally with ?)")


@dataclasses.dataclass(frozen=True)
class Op:
  name: str
  fn: Callable[[Array, Array, Mapping, int], Array]
  fields: Mapping[str, Field]
  draws: Callable[[int, int], int]
  rgb_only: bool
  own_stream: bool
  enabled: Callable[[Mapping], bool]
  switch: str                           # the field to turn off, named in errors
  derive: Callable[[dict], None] | None

  def __call__(self, u, image, p, size):
    return self.fn(u, image, p, size)


OPS: dict[str, Op] = {}


def register(*, fields: Mapping[str, Field], draws: int | Callable[[int, int], int] = 0,
             rgb_only: bool = False, own_stream: bool = False,
             enabled: str | Callable[[Mapping], bool] | None = None,
             derive: Callable[[dict], None] | None = None):
  """Decorator: adds `fn` to OPS under its own name (see the module docstring)."""

  def wrap(fn):
    name = fn.__name__
    if name in OPS:
      raise ValueError(f"augment op {name!r} registered twice")
    taken = {f: o.name for o in OPS.values() for f in o.fields}
    clash = sorted(set(fields) & set(taken))
    if clash:
      raise ValueError(f"augment op {name!r}: field(s) {clash} already belong to "
                       f"{sorted({taken[f] for f in clash})}")
    probs = [f for f, spec in fields.items() if spec.kind == "prob"]
    if isinstance(enabled, str):
      switch, is_on = enabled, lambda p: p[enabled] > 0
    else:
      switch = probs[0] if probs else next(iter(fields), "")
      is_on = enabled or (lambda p: any(p[f] > 0 for f in probs))
    count = draws if callable(draws) else (lambda channels, size: draws)
    OPS[name] = Op(name, fn, dict(fields), count, rgb_only, own_stream, is_on, switch, derive)
    return fn

  return wrap


def fields() -> dict[str, Field]:
  """Every field of every registered op, in registry order."""
  return {name: spec for op in OPS.values() for name, spec in op.fields.items()}


# Helpers the ops share.

def with_prob(u_apply, prob: float, fn: Callable[[], Array], image: Array) -> Array:
  """fn() if u_apply < prob else image. prob is a Python number: 0 and 1 are static."""
  prob = float(prob)
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn()
  return jnp.where(u_apply < prob, fn(), image)


def lerp(u, lo, hi):
  return lo + u * (hi - lo)


def normals(u: Array) -> Array:
  """Standard normals from uniforms in [0, 1), the inverse-CDF way jax.random.normal uses."""
  u = jnp.clip(u, 1e-7, 1.0 - 1e-7)
  return jnp.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)

"""The `config.augment` schema: a preset plus optional per-field overrides, resolved per view.

`augment.preset` picks a recipe (presets.py); every other field, one per op field in the
registry (ops.py documents each), overrides the preset when set (None: the preset's value).
Any field may be a pair `(view1, view2)`. `get_config(preset, **overrides)` builds a
ConfigDict holding every field (unset ones as None placeholders, so `--config.augment.blur_prob=0.3`
and `--config.augment.blur_prob='(1.0, 0.1)'` both work on the command line); `resolve(cfg)`
returns the two concrete per-view parameter dicts (log it, print it).
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np
from ml_collections import config_dict

from simclr_jax.augment import ops  # noqa: F401  (registers the ops)
from simclr_jax.augment import registry
from simclr_jax.augment.presets import PRESETS

FIELDS = registry.fields()
_NOT_GIVEN = object()


def _is_num(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_seq(v, n: int) -> bool:
  return isinstance(v, (tuple, list)) and len(v) == n


def _parse_single(field: registry.Field, v):
  """One view's value normalised (tuples, floats), or _NOT_GIVEN if v is not of this kind."""
  kind = field.kind
  if kind.endswith("?"):
    if v is None:
      return None
    kind = kind[:-1]
  if kind in ("num", "real", "prob"):
    return float(v) if _is_num(v) else _NOT_GIVEN
  if kind == "bool":
    return bool(v) if isinstance(v, (bool, np.bool_)) else _NOT_GIVEN
  if kind == "choice":
    return v if isinstance(v, str) and v in field.choices else _NOT_GIVEN
  if kind == "range":
    return (float(v[0]), float(v[1])) if _is_seq(v, 2) and all(map(_is_num, v)) else _NOT_GIVEN
  if kind == "jitter":
    return tuple(map(float, v)) if _is_seq(v, 4) and all(map(_is_num, v)) else _NOT_GIVEN
  raise AssertionError(kind)


def _check_single(name: str, field: registry.Field, v):
  if v is None:
    return
  kind = field.kind.rstrip("?")
  if kind == "prob" and not 0.0 <= v <= 1.0:
    raise ValueError(f"augment.{name}={v}: a probability must be in [0, 1]")
  if kind == "range" and v[0] > v[1]:
    raise ValueError(f"augment.{name}={v}: range must be (lo, hi) with lo <= hi")
  if kind in ("num", "jitter") and min(np.atleast_1d(v)) < 0:
    raise ValueError(f"augment.{name}={v}: must be >= 0")


def _per_view(name: str, value):
  """(view1, view2) values of one field: a single value for both, or a pair."""
  field = FIELDS[name]
  single = _parse_single(field, value)
  if single is not _NOT_GIVEN:
    pair = (single, single)
  elif _is_seq(value, 2) and all(_parse_single(field, x) is not _NOT_GIVEN for x in value):
    pair = tuple(_parse_single(field, x) for x in value)
  else:
    what = f"one of {field.choices}" if field.choices else f"a {field.kind} value"
    raise ValueError(f"augment.{name}={value!r}: expected {what} or a per-view pair "
                     f"(view1, view2) of them")
  for v in pair:
    _check_single(name, field, v)
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


def _check_names(names) -> None:
  unknown = sorted(set(names) - set(FIELDS))
  if unknown:
    raise ValueError(f"augment: unknown field(s) {unknown}; fields: {sorted(FIELDS)}")


def resolve(augment_cfg) -> tuple[dict, dict]:
  """The concrete (view1, view2) parameter dicts: defaults, preset, non-None overrides, derived."""
  cfg = _to_dict(augment_cfg)
  preset = cfg.pop("preset", None) or "none"
  if preset not in PRESETS:
    raise ValueError(f"augment.preset={preset!r} unknown; presets: {sorted(PRESETS)}")
  _check_names(cfg)
  defaults = {name: field.default for name, field in FIELDS.items()}
  merged = {**defaults, **PRESETS[preset], **{k: v for k, v in cfg.items() if v is not None}}
  views = ({"preset": preset}, {"preset": preset})
  for name in FIELDS:
    for view, v in zip(views, _per_view(name, merged[name])):
      view[name] = v
  for view in views:
    for op in registry.OPS.values():
      if op.derive is not None:
        op.derive(view)
  return views


def get_config(preset: str = "simclr", **overrides) -> ml_collections.ConfigDict:
  """ConfigDict with `preset` and every field (unset ones None: the preset's value).

  The None fields are `placeholder(object)`s, so config_flags parses any literal override.
  """
  _check_names(overrides)
  cfg = ml_collections.ConfigDict()
  cfg.preset = preset
  for name in FIELDS:
    cfg[name] = config_dict.placeholder(object)
    if overrides.get(name) is not None:
      cfg[name] = overrides[name]
  resolve(cfg)  # fail early on a bad preset or value
  return cfg


def describe() -> str:
  """Every op with its fields, defaults and meaning, in the order a view applies them."""
  lines = []
  for op in registry.OPS.values():
    lines.append(f"{op.name}{' (RGB only)' if op.rgb_only else ''}")
    lines += [f"  {n} = {f.default!r}: {f.doc}" for n, f in op.fields.items()]
  return "\n".join(lines)

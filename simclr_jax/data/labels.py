"""Labels: flux thresholds -> classes, stratified label fractions with a fixed seed.

Classes come from config strings, one per class, in class-index order, as SolarNet writes them:

  ('Quiet: < 1e-6', '>=C: >= 1e-6')           2 classes, names before the colon (optional)
  ('< 1e-6', '< 1e-5', '>= 1e-5')             3 classes: the FIRST class whose condition holds
  ('A-B: < 1e-6', 'C: >= 1e-6 and < 1e-5', 'M+: >= 1e-5')   conditions joined by and / & / ,

A value that no class accepts is an error (the thresholds do not cover the data), never a
silent -1; so is a string that does not parse.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Sequence

import numpy as np

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq}
_COND = re.compile(r"^\s*(<=|>=|==|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_SPLIT = re.compile(r"\s*(?:\band\b|&|,)\s*")


@dataclasses.dataclass(frozen=True)
class ThresholdClass:
  name: str
  conditions: tuple[tuple[str, float], ...]   # (operator, value), all must hold

  def accepts(self, value) -> np.ndarray:
    value = np.asarray(value, np.float64)
    ok = np.ones(value.shape, bool)
    for op, threshold in self.conditions:
      ok &= _OPS[op](value, threshold)
    return ok


def parse_thresholds(strings: Sequence[str]) -> list[ThresholdClass]:
  """Parses class strings such as 'Quiet: < 1e-6' (see the module docstring)."""
  if isinstance(strings, str):
    strings = (strings,)
  if len(strings) < 2:
    raise ValueError(f"data.label_thresholds={tuple(strings)!r}: need at least 2 classes, e.g. "
                     "('< 1e-6', '>= 1e-6')")
  classes = []
  for i, s in enumerate(strings):
    if not isinstance(s, str):
      raise ValueError(f"label threshold {i} is {s!r}; expected a string such as '>= 1e-6'")
    name, _, body = s.rpartition(":") if ":" in s else ("", "", s)
    conditions = []
    for part in _SPLIT.split(body.strip()):
      m = _COND.match(part)
      if not m:
        raise ValueError(
            f"cannot parse label threshold {s!r} (class {i}): expected '[name:] OP NUMBER' with "
            f"OP one of < <= > >= ==, several joined by 'and', e.g. 'C: >= 1e-6 and < 1e-5'")
      conditions.append((m.group(1), float(m.group(2))))
    classes.append(ThresholdClass(name.strip() or body.strip(), tuple(conditions)))
  return classes


def class_names(strings: Sequence[str]) -> list[str]:
  return [c.name for c in parse_thresholds(strings)]


def classes_from_values(values, strings: Sequence[str], where: Sequence[str] | None = None
                        ) -> np.ndarray:
  """Class index per value: the first class whose conditions hold (SolarNet's rule).

  `where[i]` names value i in the error raised when no class accepts it (e.g. 'meta.csv row 7').
  NaN matches no class, so a missing flux is reported too.
  """
  classes = parse_thresholds(strings)
  values = np.asarray(values, np.float64)
  out = np.full(values.shape, -1, np.int32)
  for k in reversed(range(len(classes))):      # reversed: the first matching class wins
    out[classes[k].accepts(values)] = k
  bad = np.flatnonzero(out < 0)
  if len(bad):
    i = int(bad[0])
    at = where[i] if where is not None else f"value {i}"
    raise ValueError(f"{at}: {float(values.flat[i])!r} matches none of the classes "
                     f"{tuple(strings)!r} (data.label_thresholds); {len(bad)} value(s) unmatched")
  return out


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
  """Indices of a stratified subset holding `fraction` of each class (at least one per class).

  Each class keeps round(fraction * n_class) examples, so its share stays within one example
  of its share in the full set.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
  labels = np.asarray(labels)
  if fraction == 1.0:
    return np.arange(len(labels))
  rng = np.random.default_rng(seed)
  keep = []
  for c in np.unique(labels[labels >= 0]):
    idx = np.flatnonzero(labels == c)
    k = max(1, int(round(fraction * len(idx))))
    keep.append(rng.choice(idx, size=k, replace=False))
  return np.sort(np.concatenate(keep))


def group_split(groups: Sequence, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train_idx, val_idx) with whole groups (e.g. active regions) on one side only.

  Groups are shuffled with `seed` and taken into validation until it holds at least
  `val_fraction` of the examples, so no region leaks between train and validation.
  """
  groups = np.asarray(groups)
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"data.sdobenchmark.val_fraction must be in [0, 1), got {val_fraction}")
  uniq = np.unique(groups)
  order = np.random.default_rng(seed).permutation(len(uniq))
  target, taken, val_groups = val_fraction * len(groups), 0, []
  for g in uniq[order]:
    if taken >= target or len(val_groups) == len(uniq) - 1:
      break
    val_groups.append(g)
    taken += int((groups == g).sum())
  in_val = np.isin(groups, np.asarray(val_groups, dtype=groups.dtype))
  return np.flatnonzero(~in_val), np.flatnonzero(in_val)

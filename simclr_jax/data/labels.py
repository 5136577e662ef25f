"""Labels for evaluation: stratified label fractions with a fixed seed."""

from __future__ import annotations

import numpy as np


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

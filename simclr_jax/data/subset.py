"""`Subset`: rows of a random-access source, itself a random-access source (grain's protocol)."""

from __future__ import annotations

import numpy as np


class Subset:
  """Rows `indices` of `source`, in that order: the kNN bank of the monitor, fine-tuning's
  fit and validation splits, the report's sample of a large split.

  `labels`: the source's labels at `indices`, read from `source.labels` when first asked
  for, unless given (a source whose `labels` reads every record, e.g. TFDS, can be sampled
  by reading only the rows taken). `class_names` and `name` are the source's.
  """

  def __init__(self, source, indices, labels=None):
    self.source, self.indices = source, np.asarray(indices)
    self._labels = None if labels is None else np.asarray(labels)
    self.class_names = getattr(source, "class_names", None)
    self.name = getattr(source, "name", repr(source))

  @property
  def labels(self) -> np.ndarray:
    if self._labels is None:
      self._labels = np.asarray(self.source.labels)[self.indices]
    return self._labels

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  def __repr__(self) -> str:
    return f"Subset({self.name}, {len(self)} rows)"

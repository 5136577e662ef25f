"""TFDS datasets through `tfds.data_source` (array_record): random access, no TensorFlow."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from simclr_jax import extras
from simclr_jax.data.sources import pixels
from simclr_jax.data.sources.registry import Option, register


class TfdsSource:
  """`tfds.data_source(name, split=split, data_dir=path)`: random access into a prepared TFDS
  dataset (array_record), never downloading. Images uint8 -> /255 (others as stored), resized.

  Every process opens the whole split; the grain pipeline takes this process's slice of each
  globally shuffled epoch (pipeline.py), which is what `tfds.split_for_jax_process` would do
  without the global shuffle. Splits may be TFDS slices ('train[:90%]'). The data source is
  reopened lazily after unpickling, so grain workers do not receive open file handles.
  """

  def __init__(self, name: str, split: str, data_dir: str, image_size: int, channels: int,
               image_key: str = "image", label_key: str = "label"):
    if not name:
      raise ValueError("data.source='tfds' needs data.tfds.name (e.g. 'cifar10')")
    self.tfds_name, self.split = name, split
    self.data_dir = os.path.expanduser(data_dir) if data_dir else None
    self.image_size, self.channels = image_size, channels
    self.image_key, self.label_key = image_key, label_key or "label"
    self._ds = None
    self._labels = None
    self.name = f"tfds:{name}/{split}"
    n = len(self._source())
    if n == 0:
      raise ValueError(f"{self.name}: empty split")

  def _source(self):
    if self._ds is None:
      tfds = extras.require("tensorflow_datasets", "data.source='tfds'")
      try:
        self._ds = tfds.data_source(self.tfds_name, split=self.split, data_dir=self.data_dir,
                                    download=False)
      except Exception as e:
        raise FileNotFoundError(
            f"no data for tfds {self.tfds_name!r} split {self.split!r} in "
            f"{self.data_dir or 'the default TFDS data_dir'} ({type(e).__name__}: {e}); prepare "
            f"it first with tfds.builder({self.tfds_name!r}, data_dir=...)"
            ".download_and_prepare(file_format='array_record')") from e
    return self._ds

  def __getstate__(self):
    return {**self.__dict__, "_ds": None}

  def __len__(self) -> int:
    return len(self._source())

  @property
  def labels(self) -> np.ndarray:
    """Every example's label (reads the whole split once; the pipeline never needs it)."""
    if self._labels is None:
      ds = self._source()
      self._labels = np.asarray([int(ds[i].get(self.label_key, -1)) for i in range(len(ds))],
                                np.int32)
    return self._labels

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._source()[index]
    if self.image_key not in record:
      raise KeyError(f"{self.name}[{index}]: no feature {self.image_key!r} (data.tfds.image_key); "
                     f"features are {sorted(record)}")
    x = pixels.hwc(np.asarray(record[self.image_key]), f"{self.name}[{index}]")
    pixels.check_channels(x, self.channels, f"{self.name}[{index}]")
    label = record.get(self.label_key, -1)
    return {"image": pixels.resize(pixels.normalize_auto(x), self.image_size),
            "label": np.int32(label if np.ndim(label) == 0 else -1)}

  def __repr__(self) -> str:
    return f"TfdsSource({self.name}, n={len(self)})"


@register("tfds", {
    "name": Option("", "the TFDS dataset, e.g. 'cifar10' (data.path is its data_dir, '' = "
                   "the default)"),
    "image_key": Option("image", "the image feature"),
    "label_key": Option("label", "the int label feature (absent: -1)")},
    preprocess=lambda o, path: {"normalize": "auto"})
def tfds(split: str, *, path: str, image_size: int, channels: int, name: str, image_key: str,
         label_key: str) -> TfdsSource:
  """A prepared TFDS dataset (array_record), never downloading; uint8 /255, resized."""
  return TfdsSource(name, split, path, image_size, channels, image_key, label_key)

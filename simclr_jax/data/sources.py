"""Random-access sources: `source[i] -> {'image': float32 (H, W, C), 'label': int (-1 unlabelled)}`.

Each source implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`), so
grain can shuffle, shard and prefetch it. Sources return decoded, normalised float32 pixels in
`data.value_range`; all random augmentation happens later, on device.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class ArraySource:
  """In-memory images (N, H, W, C) float32 and labels (N,) int (-1 = unlabelled)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None, name: str):
    if images.ndim != 4:
      raise ValueError(f"{name}: images must be (N, H, W, C), got shape {images.shape}")
    self.images = images
    self.labels = (np.full(len(images), -1, np.int32) if labels is None
                   else np.asarray(labels, np.int32))
    if len(self.labels) != len(images):
      raise ValueError(f"{name}: {len(images)} images but {len(self.labels)} labels")
    self.name = name

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"ArraySource({self.name}, n={len(self)}, shape={self.images.shape[1:]})"


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of (N, h, w, C) float32 to (N, size, size, C) with PIL (antialiased)."""
  from PIL import Image
  out = np.empty((len(images), size, size, images.shape[-1]), np.float32)
  for i, im in enumerate(images):
    for ch in range(im.shape[-1]):
      out[i, :, :, ch] = np.asarray(
          Image.fromarray(im[:, :, ch].astype(np.float32), mode="F").resize(
              (size, size), Image.BILINEAR))
  return out


def digits_source(split: str, image_size: int = 32, seed: int = 0) -> ArraySource:
  """scikit-learn's bundled 8x8 digits (1797 images, no download), upsampled, 1 channel in [0, 1].

  Splits: 'train' (1437) and 'test' (360), stratified with a fixed seed; 'all' (1797).
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  d = load_digits()
  x = (d.images.astype(np.float32) / 16.0)[..., None]        # 0..16 -> [0, 1]
  y = d.target.astype(np.int32)
  if split != "all":
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=360, stratify=y, random_state=seed)
    if split == "train":
      x, y = x[idx_train], y[idx_train]
    elif split == "test":
      x, y = x[idx_test], y[idx_test]
    else:
      raise ValueError(f"digits: unknown split {split!r}; expected 'train', 'test' or 'all'")
  return ArraySource(_resize_bilinear(x, image_size), y, f"digits/{split}")


def npz_source(path: str, split: str, channels: int) -> ArraySource:
  """Arrays in an .npz: `images` (N, H, W[, C]) uint8 (-> /255) or float, optional `labels`."""
  path = path.replace("{split}", split)
  if not path:
    raise ValueError("data.source='npz' needs data.path (an .npz file; '{split}' is replaced "
                     "by the split name)")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no data at {path} (data.path, split {split!r}); see README.md "
                            "§ Data for where to get it")
  with np.load(path, allow_pickle=False) as f:
    if "images" not in f:
      raise KeyError(f"{path}: no 'images' array; keys are {sorted(f.keys())}")
    images = f["images"]
    labels = f["labels"] if "labels" in f else None
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] != channels:
    raise ValueError(f"{path}: images have shape {images.shape}; expected (N, H, W, {channels}) "
                     f"for data.channels={channels}")
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  else:
    images = images.astype(np.float32)
  return ArraySource(images, labels, f"npz:{path}")


SOURCES = ("digits", "npz")


def make_source(data_cfg, split: str):
  """The source named by `data_cfg.source` for `split`."""
  name = data_cfg.source
  if name == "digits":
    return digits_source(split, data_cfg.image_size)
  if name == "npz":
    return npz_source(data_cfg.path, split, data_cfg.channels)
  raise ValueError(f"unknown data.source {name!r}; expected one of {SOURCES}")

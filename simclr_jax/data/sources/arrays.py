"""In-memory arrays: scikit-learn's digits and images stored in one .npz."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from simclr_jax.data.sources import pixels
from simclr_jax.data.sources.registry import Option, register


class ArraySource:
  """In-memory images (N, H, W, C) and labels (N,) int (-1 = unlabelled).

  `divide_by`: images are kept in their stored dtype (uint8 CIFAR stays 4x smaller in memory
  and in what is pickled to grain workers) and divided by it, as float32, per example.
  `image_size`: examples of another side are resized to it as they are read.
  `multi_hot` (N, K), when given, rides along in every element as `multi_hot` int8 (K,): the
  scalar `label` stays -1, so the softmax online head and the single-label probe skip them.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray | None, name: str,
               divide_by: float | None = None, multi_hot: np.ndarray | None = None,
               class_names: Sequence[str] | None = None, image_size: int | None = None):
    if images.ndim != 4:
      raise ValueError(f"{name}: images must be (N, H, W, C), got shape {images.shape}")
    self.images = images
    self.labels = (np.full(len(images), -1, np.int32) if labels is None
                   else np.asarray(labels, np.int32))
    if self.labels.ndim != 1 or len(self.labels) != len(images):
      raise ValueError(f"{name}: {len(images)} images but labels of shape {self.labels.shape}; "
                       "expected one int per image (multi-hot targets: the bigearthnet source)")
    self.divide_by = divide_by
    self.multi_hot = None if multi_hot is None else np.asarray(multi_hot, np.int8)
    if self.multi_hot is not None and len(self.multi_hot) != len(images):
      raise ValueError(f"{name}: {len(images)} images but {len(self.multi_hot)} multi-hot rows")
    self.class_names = list(class_names) if class_names is not None else None
    self.resize_to = (image_size if image_size and images.shape[1:3] != (image_size,) * 2
                      else None)
    self.name = name

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    image = self.images[index]
    if self.divide_by is not None:
      image = image.astype(np.float32) / np.float32(self.divide_by)
    if self.resize_to is not None:
      image = pixels.resize(image, self.resize_to)
    out = {"image": image, "label": self.labels[index]}
    if self.multi_hot is not None:
      out["multi_hot"] = self.multi_hot[index]
    return out

  def __repr__(self) -> str:
    return f"ArraySource({self.name}, n={len(self)}, shape={self.images.shape[1:]})"


# A digits model's files are 8-bit images (0..255 -> [0, 1]); scikit-learn's arrays (0..16)
# are divided by 16 by the source itself.
@register("digits", {"split_seed": Option(0, "seed of the stratified train/test split")},
          preprocess=lambda o, path: {"normalize": "auto"})
def digits(split: str, *, path: str, image_size: int, channels: int,
           split_seed: int) -> ArraySource:
  """scikit-learn's bundled 8x8 digits (1797, no download), resized, 1 channel in [0, 1].

  Splits: 'train' (1437) and 'test' (360), stratified with a fixed seed; 'all' (1797).
  `path` is not read.
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  del path
  if channels != 1:
    raise ValueError(f"data.source='digits' gives 1-channel images; data.channels={channels}")
  d = load_digits()
  x = (d.images.astype(np.float32) / 16.0)[..., None]        # 0..16 -> [0, 1]
  y = d.target.astype(np.int32)
  if split not in ("train", "test", "all"):
    raise ValueError(f"digits: unknown split {split!r}; expected 'train', 'test' or 'all'")
  if split != "all":
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=360, stratify=y, random_state=split_seed)
    idx = idx_train if split == "train" else idx_test
    x, y = x[idx], y[idx]
  return ArraySource(pixels.resize_all(x, image_size), y, f"digits/{split}")


@register("npz", {
    "normalize": Option("auto", "auto (uint8 /255, uint16 /65535, floats as stored) | gauss "
                        "(magnetograms in gauss: clip ±clip_gauss, / clip_gauss) | none"),
    "clip_gauss": Option(250.0, "normalize='gauss': clip to ±this many gauss, then / it"),
    "label_key": Option("labels", "the array of int labels (absent: unlabelled)")},
    preprocess=lambda o, path: {"normalize": o["normalize"], "clip_gauss": o["clip_gauss"]})
def npz(split: str, *, path: str, image_size: int, channels: int, normalize: str,
        clip_gauss: float, label_key: str) -> ArraySource:
  """Arrays in an .npz: `images` (N, H, W[, C]) and optional int labels; resized."""
  path = pixels.split_path(path, split, "npz")
  pixels.check_normalize(normalize, "npz")
  with pixels.load_npz(path, split, "an .npz with 'images' (N, H, W[, C])") as f:
    pixels.require(f, ("images",), path)
    images = f["images"]
    labels = f[label_key] if label_key in f else None
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] != channels:
    raise ValueError(f"{path}: images have shape {images.shape}; expected (N, H, W, {channels}) "
                     f"for data.channels={channels}")
  divide_by = None
  if normalize == "auto" and images.dtype in (np.uint8, np.uint16):
    divide_by = 255.0 if images.dtype == np.uint8 else 65535.0   # per example, see ArraySource
  else:
    images = pixels.normalize(images, normalize, clip_gauss)
  return ArraySource(images, labels, f"npz:{path}", divide_by=divide_by, image_size=image_size)

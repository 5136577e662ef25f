"""Multispectral patches: BigEarthNet-S2 (12 bands, multi-label) as an npz."""

from __future__ import annotations

import numpy as np
from absl import logging

from simclr_jax.data.sources import pixels
from simclr_jax.data.sources.arrays import ArraySource
from simclr_jax.data.sources.registry import Option, register


def _band_statistics(options: dict, path: str) -> dict:
  """The z-score of the training file's bands, recorded with the model."""
  with pixels.load_npz(path, "train", "an .npz with 'band_mean' and 'band_std'") as f:
    pixels.require(f, ("band_mean", "band_std"), path)
    return {"normalize": "none", "band_mean": f["band_mean"].astype(float).tolist(),
            "band_std": f["band_std"].astype(float).tolist()}


@register("bigearthnet", {"labels": Option(
    "labels_19", "the multi-hot label array: labels_19 (19 classes) or labels_43")},
    preprocess=_band_statistics)
def bigearthnet(split: str, *, path: str, image_size: int, channels: int,
                labels: str) -> ArraySource:
  """BigEarthNet-S2 patches in one npz, 12 bands z-scored, multi-hot labels.

  `images` uint16 (N, H, W, 12) (L2A reflectance x 10000, bands B01..B12 without B10),
  `band_mean`, `band_std`, multi-hot `labels_19` / `labels_43`.

  Each band -> (x - band_mean) / band_std (about N(0, 1)), resized. Multi-label: `label`
  stays -1 and the multi-hot row travels as `multi_hot` (see ArraySource); set
  data.num_classes = 0.
  """
  path = pixels.split_path(path, split, "bigearthnet")
  with pixels.load_npz(path, split, "an .npz with 'images' (N, H, W, 12) uint16, 'band_mean', "
                       "'band_std' and multi-hot labels") as f:
    pixels.require(f, ("images", "band_mean", "band_std"), path)
    images, mean, std = f["images"], f["band_mean"], f["band_std"]
    multi_hot = f[labels] if labels in f else None
    names_key = labels.replace("labels", "label_names")
    names = f[names_key].tolist() if names_key in f else None
  if multi_hot is None:
    logging.warning("%s: no %r array (data.bigearthnet.labels); examples are unlabelled", path,
                    labels)
  if images.ndim != 4:
    raise ValueError(f"{path}: images have shape {images.shape}; expected (N, H, W, {channels})")
  pixels.check_channels(images[0], channels, path)
  if mean.shape != (channels,) or std.shape != (channels,):
    raise ValueError(f"{path}: band_mean {mean.shape} / band_std {std.shape}; expected "
                     f"({channels},) each")
  x = (images.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
  return ArraySource(pixels.resize_all(x, image_size), None, f"bigearthnet:{path}",
                     multi_hot=multi_hot, class_names=names)

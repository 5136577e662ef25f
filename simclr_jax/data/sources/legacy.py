"""Old flat `data.*` source fields, read for one release: mapped to `data.<source>.<field>`.

Workdirs written before the per-source groups existed hold the flat fields in config.json, and
command lines may still set them. A flat field that is set (not None) and differs from its old
default is used for the configured source, with a warning naming the new field; one that the
configured source has no use for is ignored with a warning (the old code ignored it too). To be
deleted with the placeholders in simclr_jax/configs/default.py.
"""

from __future__ import annotations

from typing import Any

from absl import logging

# old field -> (its old default, {source: new field of data.<source>})
RENAMED: dict[str, tuple[Any, dict[str, str]]] = {
    "label_key": ("", {"npz": "label_key", "tfds": "label_key", "bigearthnet": "labels"}),
    "image_key": ("image", {"tfds": "image_key"}),
    "tfds_name": ("", {"tfds": "name"}),
    "channel": ("", {"hmi": "product", "sdobenchmark": "channel_names"}),
    "time_steps": ((), {"sdoml": "columns", "sdobenchmark": "time_steps"}),
    "normalize": ("auto", {"npz": "normalize", "folder": "normalize"}),
    "clip_gauss": (250.0, {"npz": "clip_gauss", "hmi": "clip_gauss", "sdoml": "clip_gauss",
                           "folder": "clip_gauss"}),
    "flip_vertical": (True, {"hmi": "flip_vertical", "sdoml": "flip_vertical",
                             "folder": "flip_vertical"}),
    "val_fraction": (0.1, {"sdobenchmark": "val_fraction"}),
    "split_seed": (0, {"sdobenchmark": "split_seed"}),
    "skip_missing": (False, {"sdoml": "skip_missing", "sdobenchmark": "skip_missing"}),
    "stats_examples": (2000, {}),       # never read; removed
}


def _same(a, b) -> bool:
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  return norm(a) == norm(b)


def apply(data_cfg, source: str, options: dict) -> dict:
  """`options` of `source` updated from the old flat fields set in `data_cfg`."""
  out = dict(options)
  for old, (old_default, new) in RENAMED.items():
    value = data_cfg.get(old)
    if value is None or _same(value, old_default):
      continue
    if source not in new:
      where = ", ".join(f"data.{s}.{f}" for s, f in new.items()) or "nothing (removed)"
      logging.warning("data.%s=%r is deprecated and ignored for data.source=%r (it became %s)",
                      old, value, source, where)
      continue
    logging.warning("data.%s is deprecated: use data.%s.%s (this run uses %r)", old, source,
                    new[source], value)
    out[new[source]] = value
  return out

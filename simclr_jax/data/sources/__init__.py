"""Random-access sources by name: `source[i] -> {'image': float32 (image_size, image_size, C),
'label': int32 (-1 unlabelled)}` (+ `multi_hot` for multi-label data).

Each source implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`), so
grain can shuffle, shard and prefetch it, and has `labels` (int32 (N,)) for evaluation and
statistics. Sources return decoded, normalised float32 pixels resized to `data.image_size`;
all random augmentation happens later, on device. File-backed sources keep only an index in
memory and read in `__getitem__` (in grain's worker processes when `data.workers > 0`).

| source         | module        | reads                                                 | values   |
| -------------- | ------------- | ----------------------------------------------------- | -------- |
| `digits`       | arrays        | scikit-learn's bundled 8x8 digits                     | [0, 1]   |
| `npz`          | arrays        | `images` (N, H, W[, C]) + optional labels, one .npz   | uint8/255|
| `hmi`          | solar         | HMI SHARP patches npz (gauss)                         | [-1, 1]  |
| `sdoml`        | solar         | SolarNet sdo-dataset: CSV + one npz per time step     | [-1, 1]  |
| `sdobenchmark` | solar         | SDOBenchmark training/ test/: meta_data.csv + jpgs    | [-1, 1]  |
| `folder`       | folder        | class subfolders or flat png/jpg/tif/npy/fits         | see opts |
| `tfds`         | tfds          | `tfds.data_source(name)` (array_record, no TF)        | uint8/255|
| `bigearthnet`  | multispectral | 12-band uint16 npz, per-band z-score, multi-hot       | ~N(0, 1) |

Config: `data.source`, `data.path` ('{split}' replaced by the split name), `data.image_size`,
`data.channels`, `data.label_thresholds` (flux classes, sdoml and sdobenchmark) are common;
each source's own options live in `data.<source>` (`print(sources.describe())` lists them).
To add a source: one function decorated with `register(name, {option: Option(default, doc)})`
in the module of its family, imported below, and its test.
"""

from simclr_jax.data.sources import arrays, folder, multispectral, solar, tfds  # noqa: F401
from simclr_jax.data.sources import legacy
from simclr_jax.data.sources.arrays import ArraySource
from simclr_jax.data.sources.folder import FolderSource, read_image_file
from simclr_jax.data.sources.registry import (SOURCES, Option, describe, get, register,
                                              source_configs)
from simclr_jax.data.sources.solar import SdoBenchmarkSource, SdomlSource
from simclr_jax.data.sources.tfds import TfdsSource


def make_source(data_cfg, split: str):
  """The source named by `data_cfg.source` for `split`, with its `data.<source>` options."""
  name = data_cfg.source
  if name not in SOURCES:
    raise ValueError(f"unknown data.source {name!r}; sources: {', '.join(SOURCES)}")
  thresholds = tuple(data_cfg.get("label_thresholds", ()) or ())
  num_classes = data_cfg.get("num_classes", 0)
  if thresholds and num_classes and len(thresholds) != num_classes:
    raise ValueError(f"data.label_thresholds defines {len(thresholds)} classes but "
                     f"data.num_classes={num_classes}")
  return get(name, split, path=data_cfg.get("path", ""), image_size=data_cfg.image_size,
             channels=data_cfg.channels, label_thresholds=thresholds, **options_of(data_cfg))


def options_of(data_cfg) -> dict:
  """The options `data_cfg` sets in its source's group `data.<source>` (old flat fields
  mapped)."""
  group = data_cfg.get(data_cfg.source)
  options = dict(group.to_dict() if hasattr(group, "to_dict") else group or {})
  return legacy.apply(data_cfg, data_cfg.source, options)

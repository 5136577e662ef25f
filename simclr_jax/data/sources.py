"""Random-access sources: `source[i] -> {'image': float32 (H, W, C), 'label': int (-1 unlabelled)}`.

Each source implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`), so
grain can shuffle, shard and prefetch it, and has `labels` (int32 (N,), -1 = unlabelled) for
evaluation and statistics. Sources return decoded, normalised float32 pixels, resized to
`data.image_size` where they read files; all random augmentation happens later, on device.
File-backed sources keep only an index in memory and read in `__getitem__`, i.e. in grain's
worker processes when `data.workers > 0`; they pickle small.

| `data.source`  | reads                                                     | values            |
| -------------- | --------------------------------------------------------- | ----------------- |
| `digits`       | scikit-learn's bundled 8x8 digits                         | [0, 1]            |
| `npz`          | `images` (N, H, W[, C]) + optional `labels` in one .npz    | uint8 /255        |
| `hmi`          | HMI SHARP patches npz (`images` float16 gauss, `channel`) | [-1, 1] (±250 G)  |
| `sdoml`        | SolarNet sdo-dataset: per-split CSV + one npz (`x`) per time step | [-1, 1]   |
| `sdobenchmark` | SDOBenchmark `training/` `test/`: meta_data.csv + jpgs     | [-1, 1]           |
| `folder`       | class subfolders or a flat folder of png/jpg/tif/npy/fits | see normalize     |
| `tfds`         | `tfds.data_source(name)` (array_record, no TensorFlow)     | uint8 /255        |
| `bigearthnet`  | 12-band uint16 npz, per-band (x - mean) / std, multi-label | ~N(0, 1)          |

`data.path` may contain '{split}', replaced by the split name; without it, every split reads
the same data (fine for unlabelled pretraining, not for a probe's test score).

Magnetograms (`hmi`, `sdoml`, FITS with `data.normalize='gauss'`): NaN -> 0, clip to
±`data.clip_gauss` G (250), divide by it, so [-1, 1]; FITS-derived arrays are stored with row 0
= south and are flipped vertically to north-up when `data.flip_vertical` (SolarNet's transform).

Multi-label (BigEarthNet): `label` stays a scalar, -1, so the softmax online head and the
single-label linear probe skip these examples; the multi-hot targets travel alongside as
`multi_hot` int8 (K,) in every element and batch, and as `source.multi_hot` (N, K) for a
multi-label probe. Set `data.num_classes = 0` (the sentinel2 config does).

Resizing (to `data.image_size`): a non-square image is first centre-cropped to a square; an
integer downscale (512 -> 128, 256 -> 128) is the mean of each f x f block (area /
antialiased, exact); any other size is PIL bilinear (antialiased when shrinking).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from simclr_jax.data import labels as labels_lib

SOURCES = ("digits", "npz", "hmi", "sdoml", "sdobenchmark", "folder", "tfds", "bigearthnet")


def _no_data(path: str, what: str, split: str | None = None) -> FileNotFoundError:
  at = f" (split {split!r})" if split else ""
  return FileNotFoundError(f"no data at {path}{at}: expected {what}; set data.path, see "
                           f"README.md § Data for where to get it")


def _split_path(path: str, split: str, source: str) -> str:
  if not path:
    raise ValueError(f"data.source={source!r} needs data.path ('{{split}}' in it is replaced by "
                     "the split name)")
  return os.path.expanduser(path.replace("{split}", split))


# ---------------------------------------------------------------------------------------------
# Pixels: normalisation and resizing shared by the sources.
# ---------------------------------------------------------------------------------------------

def normalize_gauss(x: np.ndarray, clip: float = 250.0) -> np.ndarray:
  """Magnetogram in gauss -> [-1, 1]: NaN (off-disk) -> 0, clip to ±clip, / clip."""
  x = np.array(x, np.float32)         # a copy: the in-place ops below never touch the input
  np.nan_to_num(x, copy=False, nan=0.0, posinf=clip, neginf=-clip)
  np.clip(x, -clip, clip, out=x)
  x /= np.float32(clip)
  return x


def normalize_auto(x: np.ndarray) -> np.ndarray:
  """uint8 / 255, uint16 / 65535, floats as they are (NaN -> 0)."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.0
  if x.dtype == np.uint16:
    return x.astype(np.float32) / 65535.0
  return np.nan_to_num(np.asarray(x, np.float32), nan=0.0)


def center_square(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  s = min(h, w)
  y0, x0 = (h - s) // 2, (w - s) // 2
  return image[y0:y0 + s, x0:x0 + s]


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, C) float32 -> (size, size, C): centre square, then block mean or PIL bilinear."""
  image = center_square(np.asarray(image, np.float32))
  s, c = image.shape[0], image.shape[2]
  if s == size:
    return image
  if s % size == 0:
    # Block mean as two contiguous sums (3x faster than one mean over axes (1, 3)).
    f = s // size
    rows = image.reshape(size, f, s * c).sum(axis=1, dtype=np.float32)
    return rows.reshape(size, size, f, c).sum(axis=2) * np.float32(1.0 / (f * f))
  from PIL import Image
  out = np.empty((size, size, c), np.float32)
  for ch in range(c):
    out[:, :, ch] = np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, ch]), mode="F")
                               .resize((size, size), Image.BILINEAR))
  return out


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


def _hwc(x: np.ndarray, where: str, channels_first: bool = False) -> np.ndarray:
  if x.ndim == 2:
    return x[:, :, None]
  if x.ndim == 3:
    return np.moveaxis(x, 0, -1) if channels_first else x
  raise ValueError(f"{where}: array of shape {x.shape}; expected an image (H, W) or "
                   f"{'(C, H, W)' if channels_first else '(H, W, C)'}")


def _check_channels(image: np.ndarray, channels: int, where: str) -> None:
  if image.shape[-1] != channels:
    raise ValueError(f"{where}: image has {image.shape[-1]} channel(s) (shape {image.shape}); "
                     f"expected {channels} (data.channels)")


# ---------------------------------------------------------------------------------------------
# In-memory arrays: digits, npz, hmi, bigearthnet.
# ---------------------------------------------------------------------------------------------

class ArraySource:
  """In-memory images (N, H, W, C) and labels (N,) int (-1 = unlabelled).

  `divide_by`: images are kept in their stored dtype (uint8 CIFAR stays 4x smaller in memory
  and in what is pickled to grain workers) and divided by it, as float32, per example.
  `multi_hot` (N, K), when given, rides along in every element (see the module docstring).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray | None, name: str,
               divide_by: float | None = None, multi_hot: np.ndarray | None = None,
               class_names: Sequence[str] | None = None):
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
    self.name = name

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    image = self.images[index]
    if self.divide_by is not None:
      image = image.astype(np.float32) / np.float32(self.divide_by)
    out = {"image": image, "label": self.labels[index]}
    if self.multi_hot is not None:
      out["multi_hot"] = self.multi_hot[index]
    return out

  def __repr__(self) -> str:
    return f"ArraySource({self.name}, n={len(self)}, shape={self.images.shape[1:]})"


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


def _load_npz(path: str, split: str, what: str):
  if not os.path.exists(path):
    raise _no_data(path, what, split)
  try:
    return np.load(path, allow_pickle=False)
  except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
    raise ValueError(f"{path}: cannot read as .npz ({type(e).__name__}: {e}); expected {what}"
                     ) from e


def npz_source(path: str, split: str, channels: int, normalize: str = "auto",
               clip: float = 250.0, label_key: str = "") -> ArraySource:
  """Arrays in an .npz: `images` (N, H, W[, C]) uint8 (-> /255) or float, optional `labels`.

  normalize: 'auto' (uint8 /255, uint16 /65535, floats as stored), 'gauss' (magnetograms:
  clip ±clip G, / clip) or 'none'.
  """
  path = _split_path(path, split, "npz")
  label_key = label_key or "labels"
  with _load_npz(path, split, "an .npz with 'images' (N, H, W[, C])") as f:
    if "images" not in f:
      raise KeyError(f"{path}: no 'images' array; keys are {sorted(f.keys())}")
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
  elif normalize == "auto":
    images = normalize_auto(images)
  elif normalize == "gauss":
    images = normalize_gauss(images, clip)
  elif normalize == "none":
    images = images.astype(np.float32)
  else:
    raise ValueError(f"data.normalize={normalize!r}; expected 'auto', 'gauss' or 'none'")
  return ArraySource(images, labels, f"npz:{path}", divide_by=divide_by)


def hmi_source(path: str, split: str, image_size: int, channels: int = 1, channel: str = "",
               clip: float = 250.0, flip_vertical: bool = True) -> ArraySource:
  """HMI SHARP patches (../shared/data/hmi_sharp_2012_03/hmi_sharp_cea_128.npz layout).

  `images` float16 (N, H, W) in gauss -> NaN 0, clip ±clip, / clip, flipped north-up, resized;
  1 channel. `channel` keeps only 'Br' or 'magnetogram' images ('' = both). No labels.
  """
  path = _split_path(path, split, "hmi")
  if channels != 1:
    raise ValueError(f"data.source='hmi' gives 1-channel magnetograms; data.channels={channels}")
  with _load_npz(path, split, "an .npz with 'images' (N, H, W) in gauss") as f:
    if "images" not in f:
      raise KeyError(f"{path}: no 'images' array; keys are {sorted(f.keys())}")
    images = f["images"]
    kinds = f["channel"] if "channel" in f else None
    groups = f["harpnum"] if "harpnum" in f else None
  if images.ndim != 3:
    raise ValueError(f"{path}: images have shape {images.shape}; expected (N, H, W) magnetograms")
  if channel:
    if kinds is None:
      raise KeyError(f"{path}: data.channel={channel!r} but the file has no 'channel' array")
    keep = kinds == channel
    if not keep.any():
      raise ValueError(f"{path}: no image with channel {channel!r}; channels are "
                       f"{sorted(set(kinds.tolist()))}")
    images = images[keep]
    groups = groups[keep] if groups is not None else None
  x = normalize_gauss(images, clip)
  if flip_vertical:
    x = x[:, ::-1]
  x = np.stack([resize(im[:, :, None], image_size) for im in x])
  src = ArraySource(x, None, f"hmi:{path}" + (f"[{channel}]" if channel else ""))
  src.groups = groups
  return src


# BigEarthNet-S2 per-band statistics (BAND_STATS_S2 of bigearthnet-common 2.8.0, from the TU
# Berlin BigEarthNet code), bands B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12: used when
# the npz carries no `band_mean` / `band_std`.
BIGEARTHNET_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                     "B11", "B12")


def bigearthnet_source(path: str, split: str, image_size: int, channels: int = 12,
                       label_key: str = "") -> ArraySource:
  """BigEarthNet-S2 patches as an npz (../shared/data/bigearthnet_s2_example layout).

  `images` uint16 (N, H, W, 12) (L2A reflectance x 10000) -> (x - band_mean) / band_std per
  band, resized; multi-hot labels from `label_key` ('labels_19' by default, or 'labels_43').
  """
  path = _split_path(path, split, "bigearthnet")
  label_key = label_key or "labels_19"
  with _load_npz(path, split, "an .npz with 'images' (N, H, W, 12) uint16, 'band_mean', "
                 "'band_std' and multi-hot labels") as f:
    missing = [k for k in ("images", "band_mean", "band_std") if k not in f]
    if missing:
      raise KeyError(f"{path}: missing {missing}; keys are {sorted(f.keys())}")
    images, mean, std = f["images"], f["band_mean"], f["band_std"]
    multi_hot = f[label_key] if label_key in f else None
    names_key = label_key.replace("labels", "label_names")
    names = f[names_key].tolist() if names_key in f else None
  if label_key and multi_hot is None:
    logging.warning("%s: no %r array; examples are unlabelled", path, label_key)
  if images.ndim != 4:
    raise ValueError(f"{path}: images have shape {images.shape}; expected (N, H, W, {channels})")
  _check_channels(images[0], channels, path)
  if mean.shape != (channels,) or std.shape != (channels,):
    raise ValueError(f"{path}: band_mean {mean.shape} / band_std {std.shape}; expected "
                     f"({channels},) each")
  x = (images.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
  x = np.stack([resize(im, image_size) for im in x])
  return ArraySource(x, None, f"bigearthnet:{path}", multi_hot=multi_hot, class_names=names)


# ---------------------------------------------------------------------------------------------
# SolarNet's sdo-dataset (SDOML npz + CSV).
# ---------------------------------------------------------------------------------------------

def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
  try:
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      return list(reader.fieldnames or []), rows
  except (UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f"{path}: not a readable CSV ({e})") from e


def _flux_labels(values: list[str], where: list[str], thresholds) -> np.ndarray:
  flux = []
  for v, w in zip(values, where):
    try:
      flux.append(float(v))
    except ValueError:
      raise ValueError(f"{w}: peak_flux {v!r} is not a number") from None
  return labels_lib.classes_from_values(np.asarray(flux), thresholds, where)


class SdomlSource:
  """SolarNet's sdo-dataset: a CSV per split, one npz (key `x`, 2-D, gauss) per time step.

  CSV: `{path}/sdo-dataset-{split}.csv` (or `data.path` naming a .csv, '{split}' replaced);
  file paths in it are relative to the CSV's folder. `columns` are the path columns stacked
  as channels (default: every column starting with 'path_', in CSV order, as SolarNet does).
  Labels: `peak_flux` through `thresholds` (-1 without thresholds).
  Each image: NaN -> 0, clip ±clip G, / clip, vertical flip (north-up), resize to image_size.
  """

  def __init__(self, path: str, split: str, image_size: int, channels: int,
               columns: Sequence[str] = (), thresholds: Sequence[str] = (),
               clip: float = 250.0, flip_vertical: bool = True, skip_missing: bool = False):
    path = _split_path(path, split, "sdoml")
    csv_path = path if path.endswith(".csv") else os.path.join(path, f"sdo-dataset-{split}.csv")
    if not os.path.exists(csv_path):
      raise _no_data(csv_path, "SolarNet's sdo-dataset layout: sdo-dataset-{train,val,test}.csv "
                     "next to the npz folders", split)
    self.root = os.path.dirname(os.path.abspath(csv_path))
    fields, rows = _read_csv(csv_path)
    name = os.path.basename(csv_path)
    columns = list(columns) or [c for c in fields if c.startswith("path_")]
    missing_cols = [c for c in columns if c not in fields]
    if not columns or missing_cols:
      raise ValueError(f"{csv_path}: no column(s) {missing_cols or 'path_*'}; columns are "
                       f"{fields} (data.time_steps names the path columns)")
    if len(columns) != channels:
      raise ValueError(f"{csv_path}: {len(columns)} path column(s) {columns} stack as "
                       f"{len(columns)} channel(s); expected {channels} (data.channels)")
    if not rows:
      raise ValueError(f"{csv_path}: no rows")
    files, keep, dropped = [], [], []
    for i, row in enumerate(rows):
      paths = [row[c] for c in columns]
      bad = [(c, p) for c, p in zip(columns, paths)
             if not p or not os.path.isfile(os.path.join(self.root, p))]
      if bad:
        msg = (f"{name} line {i + 2}: file {bad[0][1]!r} (column {bad[0][0]}) is listed but "
               f"missing under {self.root}; expected an npz with key 'x'")
        if not skip_missing:
          raise FileNotFoundError(msg + " (data.skip_missing=True drops such rows)")
        dropped.append(msg)
        continue
      files.append(paths)
      keep.append(i)
    if dropped:
      logging.warning("%s: dropped %d row(s) with missing files, e.g. %s", csv_path,
                      len(dropped), dropped[0])
    if not files:
      raise ValueError(f"{csv_path}: every row lists a missing file, e.g. {dropped[0]}")
    self.files = files
    rows = [rows[i] for i in keep]
    where = [f"{name} line {i + 2}" for i in keep]
    self.datetimes = [r.get("datetime", "") for r in rows]
    if thresholds:
      if "peak_flux" not in fields:
        raise ValueError(f"{csv_path}: data.label_thresholds set but no 'peak_flux' column")
      self.labels = _flux_labels([r["peak_flux"] for r in rows], where, thresholds)
      self.class_names = labels_lib.class_names(thresholds)
    else:
      self.labels = np.full(len(files), -1, np.int32)
      self.class_names = None
    self.image_size, self.clip, self.flip = image_size, clip, flip_vertical
    self.name = f"sdoml:{csv_path}"

  def __len__(self) -> int:
    return len(self.files)

  def _read(self, rel: str) -> np.ndarray:
    full = os.path.join(self.root, rel)
    try:
      with np.load(full, allow_pickle=False) as f:
        x = f["x"]
    except KeyError:
      raise KeyError(f"{full}: no array 'x' (SDOML npz hold one 2-D image under 'x')") from None
    except Exception as e:
      raise ValueError(f"{full}: cannot read as .npz ({type(e).__name__}: {e})") from e
    if x.ndim != 2:
      raise ValueError(f"{full}: 'x' has shape {x.shape}; expected one 2-D image")
    return x

  def __getitem__(self, index: int) -> dict[str, Any]:
    x = np.stack([self._read(p) for p in self.files[index]], axis=-1)
    x = resize(normalize_gauss(x, self.clip), self.image_size)
    if self.flip:     # after the resize: the same result on 16x fewer pixels
      x = x[::-1]
    return {"image": x, "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"SdomlSource({self.name}, n={len(self)})"


# ---------------------------------------------------------------------------------------------
# SDOBenchmark (jpgs + meta_data.csv).
# ---------------------------------------------------------------------------------------------

# Image times within a sample, from its `start` (SDOBenchmark; SolarNet uses step 3, 11h50).
SDOBENCHMARK_STEPS = (dt.timedelta(0), dt.timedelta(hours=7), dt.timedelta(hours=10, minutes=30),
                      dt.timedelta(hours=11, minutes=50))
_SDOB_TIME = "%Y-%m-%dT%H%M%S"


def _parse_time(s: str) -> dt.datetime:
  return dt.datetime.fromisoformat(s.strip().replace(" ", "T"))


def _read_jpg(path: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode not in ("L", "RGB"):
        raise ValueError(f"mode {im.mode}")
      im = im.convert("L") if im.mode != "L" else im
      return np.asarray(im)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"{path}: corrupt or unreadable image ({type(e).__name__}: {e}); expected "
                     "an 8-bit grayscale JPEG") from e


class SdoBenchmarkSource:
  """SDOBenchmark: `{path}/training|test/meta_data.csv` (`id,start,end,peak_flux`) + jpgs.

  Sample `<AR>_<date>_<k>` lives in `<AR>/<date>_<k>/`, one jpg per channel and time step,
  named `<start + step, %Y-%m-%dT%H%M%S>__<channel>.jpg` (the nearest file within 30 min is
  accepted). `channel_names` x `time_steps` (indices into 0, 7h, 10h30, 11h50) stack as
  channels. Pixels (gray 127.5 = 0 G) -> p / 127.5 - 1 in [-1, 1]; resized to image_size.
  Splits: 'train' and 'val' come from training/, split by active region (`val_fraction` of
  the samples, whole regions, fixed seed); 'test' is test/; 'training' is all of training/.
  """

  def __init__(self, path: str, split: str, image_size: int, channels: int,
               channel_names: Sequence[str] = ("magnetogram",), time_steps: Sequence[int] = (3,),
               thresholds: Sequence[str] = (), val_fraction: float = 0.1, seed: int = 0,
               skip_missing: bool = False):
    path = _split_path(path, split, "sdobenchmark")
    folder = {"train": "training", "val": "training", "training": "training",
              "test": "test"}.get(split)
    if folder is None:
      raise ValueError(f"sdobenchmark: unknown split {split!r}; expected train, val, test or "
                       "training")
    root = os.path.join(path, folder)
    csv_path = os.path.join(root, "meta_data.csv")
    if not os.path.exists(csv_path):
      raise _no_data(csv_path, "SDOBenchmark's training/ and test/ folders with meta_data.csv",
                     split)
    if isinstance(channel_names, str):   # 'magnetogram' or 'magnetogram,continuum'
      channel_names = [c.strip() for c in channel_names.split(",") if c.strip()]
    channel_names = list(channel_names)
    time_steps = list(time_steps)
    bad_steps = [t for t in time_steps if not 0 <= int(t) < len(SDOBENCHMARK_STEPS)]
    if bad_steps or not time_steps:
      raise ValueError(f"sdobenchmark: data.time_steps={tuple(time_steps)}; expected indices "
                       f"in 0..{len(SDOBENCHMARK_STEPS) - 1} (0, 7h, 10h30, 11h50 after start)")
    if len(channel_names) * len(time_steps) != channels:
      raise ValueError(f"sdobenchmark: {len(channel_names)} channel name(s) {channel_names} x "
                       f"{len(time_steps)} time step(s) = {len(channel_names) * len(time_steps)} "
                       f"channels; expected {channels} (data.channels)")
    fields, rows = _read_csv(csv_path)
    need = {"id", "start"} | ({"peak_flux"} if thresholds else set())
    if not need <= set(fields):
      raise ValueError(f"{csv_path}: columns {fields}; expected {sorted(need)}")
    files, groups, keep, dropped = [], [], [], []
    listing: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
      where = f"{csv_path} line {i + 2} (id {row['id']})"
      try:
        ar, rest = row["id"].split("_", 1)
        start = _parse_time(row["start"])
      except ValueError:
        raise ValueError(f"{where}: expected id '<AR>_<YYYY_MM_DD_HH_MM_SS>_<k>' and an ISO "
                         f"start time, got {row['id']!r}, {row['start']!r}") from None
      sample_dir = os.path.join(ar, rest)
      try:
        found = [self._find(root, sample_dir, start + SDOBENCHMARK_STEPS[int(t)], ch, listing)
                 for ch in channel_names for t in time_steps]
      except FileNotFoundError as e:
        if not skip_missing:
          raise FileNotFoundError(f"{where}: {e} (data.skip_missing=True drops such samples)"
                                  ) from None
        dropped.append(f"{where}: {e}")
        continue
      files.append(found)
      groups.append(ar)
      keep.append(i)
    if dropped:
      logging.warning("%s: dropped %d sample(s) with missing images, e.g. %s", csv_path,
                      len(dropped), dropped[0])
    if not files:
      raise ValueError(f"{csv_path}: no usable sample" + (f", e.g. {dropped[0]}" if dropped
                                                          else " (empty CSV)"))
    rows = [rows[i] for i in keep]
    where = [f"{csv_path} line {i + 2}" for i in keep]
    if thresholds:
      labels = _flux_labels([r["peak_flux"] for r in rows], where, thresholds)
      self.class_names = labels_lib.class_names(thresholds)
    else:
      labels = np.full(len(files), -1, np.int32)
      self.class_names = None
    idx = np.arange(len(files))
    if split in ("train", "val"):
      train_idx, val_idx = labels_lib.group_split(groups, val_fraction, seed)
      idx = train_idx if split == "train" else val_idx
      if not len(idx):
        raise ValueError(f"sdobenchmark: split {split!r} is empty (data.val_fraction="
                         f"{val_fraction}, {len(set(groups))} active regions)")
    self.root = root
    self.files = [files[i] for i in idx]
    self.groups = np.asarray([groups[i] for i in idx])
    self.ids = [rows[i]["id"] for i in idx]
    self.labels = labels[idx]
    self.image_size = image_size
    self.name = f"sdobenchmark:{root}[{split}]"

  @staticmethod
  def _find(root, sample_dir, when, channel, listing) -> str:
    name = f"{when.strftime(_SDOB_TIME)}__{channel}.jpg"
    full = os.path.join(root, sample_dir, name)
    if os.path.isfile(full):
      return os.path.join(sample_dir, name)
    d = os.path.join(root, sample_dir)
    if d not in listing:
      listing[d] = sorted(os.listdir(d)) if os.path.isdir(d) else []
    best, best_gap = None, dt.timedelta(minutes=30)
    for f in listing[d]:
      stem, _, ext = f.rpartition(".")
      t, _, ch = stem.partition("__")
      if ext != "jpg" or ch != channel:
        continue
      try:
        gap = abs(dt.datetime.strptime(t, _SDOB_TIME) - when)
      except ValueError:
        continue
      if gap <= best_gap:
        best, best_gap = f, gap
    if best is None:
      raise FileNotFoundError(f"no {channel} image {name} (±30 min) in {d}")
    return os.path.join(sample_dir, best)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    planes = [_read_jpg(os.path.join(self.root, f)) for f in self.files[index]]
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
      raise ValueError(f"{self.root}/{self.files[index][0]}: images of one sample differ in "
                       f"size {sorted(shapes)}")
    x = np.stack(planes, axis=-1).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return {"image": resize(x, self.image_size), "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"SdoBenchmarkSource({self.name}, n={len(self)})"


# ---------------------------------------------------------------------------------------------
# Folders of images.
# ---------------------------------------------------------------------------------------------

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz")
IMAGE_EXTENSIONS = PIL_EXTENSIONS + (".npy",) + FITS_EXTENSIONS


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def read_image_file(path: str) -> tuple[np.ndarray, bool]:
  """(H, W, C) array in its stored dtype, and whether it is FITS (row 0 = south)."""
  low = path.lower()
  try:
    if low.endswith(FITS_EXTENSIONS):
      from astropy.io import fits
      with fits.open(path, memmap=False) as hdus:
        for hdu in hdus:
          if hdu.data is not None and hdu.data.ndim >= 2:
            x = np.asarray(hdu.data)
            x = x.astype(x.dtype.newbyteorder("=") if x.dtype.kind in "ui" else np.float32)
            return _hwc(x, path, channels_first=True), True
      raise ValueError("no image HDU")
    if low.endswith(".npy"):
      return _hwc(np.load(path, allow_pickle=False), path), False
    from PIL import Image
    with Image.open(path) as im:
      im.load()
      if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
      elif im.mode in ("1", "LA", "CMYK", "YCbCr"):
        im = im.convert({"1": "L", "LA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB"}[im.mode])
      x = np.asarray(im)
      if im.mode.startswith("I;16"):
        x = x.astype(np.uint16)
      return _hwc(x, path), False
  except Exception as e:
    if isinstance(e, ValueError) and str(e).startswith(path):
      raise
    raise ValueError(f"{path}: corrupt or unreadable image ({type(e).__name__}: {e}); expected "
                     f"one of {', '.join(IMAGE_EXTENSIONS)}") from e


class FolderSource:
  """Images in `{path}`: class subfolders (label = index of the sorted folder name) or flat
  (unlabelled). png/jpg/tif/bmp via PIL, .npy (H, W[, C]), FITS via astropy (first image HDU;
  (C, H, W) cubes become channels). normalize: 'auto' (uint8 /255, uint16 /65535, floats as
  stored, NaN -> 0), 'gauss' (magnetograms: clip ±clip G, / clip) or 'none'. FITS images are
  flipped north-up when `flip_vertical`. Every image is resized to image_size.
  """

  def __init__(self, path: str, split: str, image_size: int, channels: int,
               normalize: str = "auto", clip: float = 250.0, flip_vertical: bool = True):
    root = _split_path(path, split, "folder")
    if not os.path.isdir(root):
      raise _no_data(root, "a folder of images or of class subfolders", split)
    if normalize not in ("auto", "gauss", "none"):
      raise ValueError(f"data.normalize={normalize!r}; expected 'auto', 'gauss' or 'none'")
    entries = sorted(os.listdir(root))
    flat = [e for e in entries if _is_image(e) and os.path.isfile(os.path.join(root, e))]
    subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e))
               and not e.startswith(".")]
    files, labels, names = [], [], None
    if subdirs:
      names = []
      for d in subdirs:
        imgs = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
          dirnames.sort()
          imgs += [os.path.relpath(os.path.join(dirpath, f), root)
                   for f in sorted(filenames) if _is_image(f)]
        if imgs:
          labels += [len(names)] * len(imgs)
          names.append(d)
          files += imgs
      if flat and files:
        raise ValueError(f"{root}: both images ({flat[0]}, ...) and class subfolders "
                         f"({names[0]}/, ...); expected one layout")
    if not files:
      files, labels, names = flat, [-1] * len(flat), None
    if not files:
      raise ValueError(f"{root}: empty folder, no images; expected files ending in "
                       f"{', '.join(IMAGE_EXTENSIONS)} in it or in class subfolders")
    self.root, self.files = root, files
    self.labels = np.asarray(labels, np.int32)
    self.class_names = names
    self.image_size, self.channels = image_size, channels
    self.normalize, self.clip, self.flip = normalize, clip, flip_vertical
    self.name = f"folder:{root}"

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = os.path.join(self.root, self.files[index])
    x, is_fits = read_image_file(path)
    _check_channels(x, self.channels, path)
    if self.normalize == "gauss":
      x = normalize_gauss(x, self.clip)
    elif self.normalize == "auto":
      x = normalize_auto(x)
    else:
      x = x.astype(np.float32)
    if is_fits and self.flip:
      x = x[::-1]
    return {"image": resize(x, self.image_size), "label": self.labels[index]}

  def __repr__(self) -> str:
    return (f"FolderSource({self.name}, n={len(self)}, "
            f"classes={len(self.class_names) if self.class_names else 0})")


# ---------------------------------------------------------------------------------------------
# TFDS (array_record data sources; no TensorFlow needed).
# ---------------------------------------------------------------------------------------------

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
      raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'cifar10')")
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
      import tensorflow_datasets as tfds
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
      raise KeyError(f"{self.name}[{index}]: no feature {self.image_key!r} (data.image_key); "
                     f"features are {sorted(record)}")
    x = _hwc(np.asarray(record[self.image_key]), f"{self.name}[{index}]")
    _check_channels(x, self.channels, f"{self.name}[{index}]")
    label = record.get(self.label_key, -1)
    return {"image": resize(normalize_auto(x), self.image_size),
            "label": np.int32(label if np.ndim(label) == 0 else -1)}

  def __repr__(self) -> str:
    return f"TfdsSource({self.name}, n={len(self)})"


# ---------------------------------------------------------------------------------------------

def make_source(data_cfg, split: str):
  """The source named by `data_cfg.source` for `split`."""
  name = data_cfg.source
  get = lambda key, default: data_cfg.get(key, default)   # noqa: E731  (older configs)
  thresholds = tuple(get("label_thresholds", ()) or ())
  if thresholds and get("num_classes", 0) and len(thresholds) != data_cfg.num_classes:
    raise ValueError(f"data.label_thresholds defines {len(thresholds)} classes but "
                     f"data.num_classes={data_cfg.num_classes}")
  clip, flip = get("clip_gauss", 250.0), get("flip_vertical", True)
  if name == "digits":
    return digits_source(split, data_cfg.image_size)
  if name == "npz":
    return npz_source(data_cfg.path, split, data_cfg.channels, get("normalize", "auto"), clip,
                      get("label_key", ""))
  if name == "hmi":
    return hmi_source(data_cfg.path, split, data_cfg.image_size, data_cfg.channels,
                      get("channel", ""), clip, flip)
  if name == "sdoml":
    return SdomlSource(data_cfg.path, split, data_cfg.image_size, data_cfg.channels,
                       tuple(get("time_steps", ()) or ()), thresholds, clip, flip,
                       get("skip_missing", False))
  if name == "sdobenchmark":
    return SdoBenchmarkSource(
        data_cfg.path, split, data_cfg.image_size, data_cfg.channels,
        get("channel", "") or "magnetogram", tuple(get("time_steps", ()) or (3,)), thresholds,
        get("val_fraction", 0.1), get("split_seed", 0), get("skip_missing", False))
  if name == "folder":
    return FolderSource(data_cfg.path, split, data_cfg.image_size, data_cfg.channels,
                        get("normalize", "auto"), clip, flip)
  if name == "tfds":
    return TfdsSource(get("tfds_name", ""), split, data_cfg.path, data_cfg.image_size,
                      data_cfg.channels, get("image_key", "image"), get("label_key", ""))
  if name == "bigearthnet":
    return bigearthnet_source(data_cfg.path, split, data_cfg.image_size, data_cfg.channels,
                              get("label_key", ""))
  raise ValueError(f"unknown data.source {name!r}; expected one of {SOURCES}")

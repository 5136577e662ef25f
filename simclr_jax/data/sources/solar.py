"""Solar magnetograms: HMI SHARP patches (npz), SolarNet's SDOML (npz + CSV), SDOBenchmark
(jpgs + meta_data.csv). All give values in [-1, 1] (±250 G for the gauss-valued ones).

FITS-derived arrays (HMI, SDOML) are stored with row 0 = south; `flip_vertical` turns them
north-up (SolarNet's transform). Flux labels (sdoml, sdobenchmark) come from the `peak_flux`
column through `data.label_thresholds` (simclr_jax/data/labels.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from simclr_jax.data import labels as labels_lib
from simclr_jax.data.sources import pixels
from simclr_jax.data.sources.registry import Option, register
from simclr_jax.data.sources.arrays import ArraySource

_CLIP = Option(250.0, "clip to ±this many gauss, then divide by it")
_FLIP = Option(True, "flip the FITS-derived arrays (row 0 = south) north-up")


def _gauss(flipped: tuple[str, ...]):
  """The preprocessing of the gauss-valued sources: clip, scale, `flipped` kinds north-up."""
  return lambda o, path: {"normalize": "gauss", "clip_gauss": o["clip_gauss"],
                          "flip_vertical": list(flipped) if o["flip_vertical"] else []}


@register("hmi", {
    "product": Option("", "keep only 'Br' or 'magnetogram' images ('' = both)"),
    "clip_gauss": _CLIP, "flip_vertical": _FLIP}, preprocess=_gauss(("fits",)))
def hmi(split: str, *, path: str, image_size: int, channels: int, product: str,
        clip_gauss: float, flip_vertical: bool) -> ArraySource:
  """HMI SHARP patches: an npz of `images` float16 (N, H, W) in gauss (+ `channel`, `harpnum`).

  NaN 0, clip, / clip, flipped north-up, resized; 1 channel, no labels. `source.groups` holds
  the HARP numbers (one active region per HARP).
  """
  path = pixels.split_path(path, split, "hmi")
  if channels != 1:
    raise ValueError(f"data.source='hmi' gives 1-channel magnetograms; data.channels={channels}")
  with pixels.load_npz(path, split, "an .npz with 'images' (N, H, W) in gauss") as f:
    pixels.require(f, ("images",), path)
    images = f["images"]
    kinds = f["channel"] if "channel" in f else None
    groups = f["harpnum"] if "harpnum" in f else None
  if images.ndim != 3:
    raise ValueError(f"{path}: images have shape {images.shape}; expected (N, H, W) magnetograms")
  if product:
    if kinds is None:
      raise KeyError(f"{path}: data.hmi.product={product!r} but the file has no 'channel' array")
    keep = kinds == product
    if not keep.any():
      raise ValueError(f"{path}: no image with channel {product!r}; channels are "
                       f"{sorted(set(kinds.tolist()))}")
    images = images[keep]
    groups = groups[keep] if groups is not None else None
  x = pixels.normalize_gauss(images, clip_gauss)
  if flip_vertical:
    x = x[:, ::-1]
  x = pixels.resize_all(x[..., None], image_size)
  src = ArraySource(x, None, f"hmi:{path}" + (f"[{product}]" if product else ""))
  src.groups = groups
  return src


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
    path = pixels.split_path(path, split, "sdoml")
    csv_path = path if path.endswith(".csv") else os.path.join(path, f"sdo-dataset-{split}.csv")
    if not os.path.exists(csv_path):
      raise pixels.no_data(csv_path, "SolarNet's sdo-dataset layout: "
                           "sdo-dataset-{train,val,test}.csv next to the npz folders", split)
    self.root = os.path.dirname(os.path.abspath(csv_path))
    fields, rows = _read_csv(csv_path)
    name = os.path.basename(csv_path)
    columns = list(columns) or [c for c in fields if c.startswith("path_")]
    missing_cols = [c for c in columns if c not in fields]
    if not columns or missing_cols:
      raise ValueError(f"{csv_path}: no column(s) {missing_cols or 'path_*'}; columns are "
                       f"{fields} (data.sdoml.columns names the path columns)")
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
          raise FileNotFoundError(msg + " (data.sdoml.skip_missing=True drops such rows)")
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
    x = pixels.resize(pixels.normalize_gauss(x, self.clip), self.image_size)
    if self.flip:     # after the resize: the same result on 16x fewer pixels
      x = x[::-1]
    return {"image": x, "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"SdomlSource({self.name}, n={len(self)})"


@register("sdoml", {
    "columns": Option((), "CSV path columns stacked as channels (() = every path_* column)"),
    "clip_gauss": _CLIP, "flip_vertical": _FLIP,
    "skip_missing": Option(False, "drop rows whose files are missing (logged) instead of "
                           "stopping with an error")}, thresholds=True,
    preprocess=_gauss(("fits", "npz")))
def sdoml(split: str, *, path: str, image_size: int, channels: int, columns: Sequence[str],
          clip_gauss: float, flip_vertical: bool, skip_missing: bool,
          label_thresholds: Sequence[str]) -> SdomlSource:
  """SolarNet's sdo-dataset: per-split CSV + one npz (`x`, gauss) per time step."""
  return SdomlSource(path, split, image_size, channels, tuple(columns), label_thresholds,
                     clip_gauss, flip_vertical, skip_missing)


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
    path = pixels.split_path(path, split, "sdobenchmark")
    folder = {"train": "training", "val": "training", "training": "training",
              "test": "test"}.get(split)
    if folder is None:
      raise ValueError(f"sdobenchmark: unknown split {split!r}; expected train, val, test or "
                       "training")
    root = os.path.join(path, folder)
    csv_path = os.path.join(root, "meta_data.csv")
    if not os.path.exists(csv_path):
      raise pixels.no_data(csv_path, "SDOBenchmark's training/ and test/ folders with "
                           "meta_data.csv", split)
    if isinstance(channel_names, str):   # 'magnetogram' or 'magnetogram,continuum'
      channel_names = [c.strip() for c in channel_names.split(",") if c.strip()]
    channel_names = list(channel_names)
    time_steps = list(time_steps)
    bad_steps = [t for t in time_steps if not 0 <= int(t) < len(SDOBENCHMARK_STEPS)]
    if bad_steps or not time_steps:
      raise ValueError(f"data.sdobenchmark.time_steps={tuple(time_steps)}; expected indices "
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
          raise FileNotFoundError(f"{where}: {e} (data.sdobenchmark.skip_missing=True drops "
                                  "such samples)") from None
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
        raise ValueError(f"sdobenchmark: split {split!r} is empty (data.sdobenchmark.val_fraction="
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
    return {"image": pixels.resize(x, self.image_size), "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"SdoBenchmarkSource({self.name}, n={len(self)})"


@register("sdobenchmark", {
    "channel_names": Option(("magnetogram",), "image names stacked as channels (jpg suffixes: "
                            "magnetogram, continuum, 171, ...), a tuple or 'a,b'"),
    "time_steps": Option((3,), "step indices 0..3 (0h, 7h, 10h30, 11h50 after the start) "
                         "stacked as channels"),
    "val_fraction": Option(0.1, "split 'val': this share of training/, whole active regions"),
    "split_seed": Option(0, "seed of that active-region split"),
    "skip_missing": Option(False, "drop samples whose images are missing (logged) instead of "
                           "stopping with an error")}, thresholds=True,
    preprocess=lambda o, path: {"normalize": "affine", "scale": 1 / 127.5, "offset": -1.0})
def sdobenchmark(split: str, *, path: str, image_size: int, channels: int,
                 channel_names: Sequence[str], time_steps: Sequence[int], val_fraction: float,
                 split_seed: int, skip_missing: bool,
                 label_thresholds: Sequence[str]) -> SdoBenchmarkSource:
  """SDOBenchmark `training/` and `test/`: meta_data.csv + one jpg per channel and step."""
  return SdoBenchmarkSource(path, split, image_size, channels, channel_names, time_steps,
                            label_thresholds, val_fraction, split_seed, skip_missing)

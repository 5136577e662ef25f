"""Folders of images: class subfolders (label = sorted folder index) or one flat folder."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from simclr_jax import extras
from simclr_jax.data.sources import pixels
from simclr_jax.data.sources.registry import Option, register

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz")
IMAGE_EXTENSIONS = PIL_EXTENSIONS + (".npy",) + FITS_EXTENSIONS


def is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_images(root: str) -> tuple[list[str], list[int], list[str] | None]:
  """(files relative to `root`, labels, class names) of a folder: class subfolders (label =
  index of the sorted folder name, searched recursively) or flat (labels -1, names None)."""
  entries = sorted(os.listdir(root))
  flat = [e for e in entries if is_image(e) and os.path.isfile(os.path.join(root, e))]
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
                 for f in sorted(filenames) if is_image(f)]
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
  return files, labels, names


def read_image_file(path: str) -> tuple[np.ndarray, bool]:
  """(H, W, C) array in its stored dtype, and whether it is FITS (row 0 = south)."""
  low = path.lower()
  if low.endswith(FITS_EXTENSIONS):
    fits = extras.require("astropy.io.fits", f"{path}: reading FITS")
  try:
    if low.endswith(FITS_EXTENSIONS):
      with fits.open(path, memmap=False) as hdus:
        for hdu in hdus:
          if hdu.data is not None and hdu.data.ndim >= 2:
            x = np.asarray(hdu.data)
            x = x.astype(x.dtype.newbyteorder("=") if x.dtype.kind in "ui" else np.float32)
            return pixels.hwc(x, path, channels_first=True), True
      raise ValueError("no image HDU")
    if low.endswith(".npy"):
      return pixels.hwc(np.load(path, allow_pickle=False), path), False
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
      return pixels.hwc(x, path), False
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
    root = pixels.split_path(path, split, "folder")
    if not os.path.isdir(root):
      raise pixels.no_data(root, "a folder of images or of class subfolders", split)
    pixels.check_normalize(normalize, "folder")
    files, labels, names = list_images(root)
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
    pixels.check_channels(x, self.channels, path)
    x = pixels.normalize(x, self.normalize, self.clip)
    if is_fits and self.flip:
      x = x[::-1]
    return {"image": pixels.resize(x, self.image_size), "label": self.labels[index]}

  def __repr__(self) -> str:
    return (f"FolderSource({self.name}, n={len(self)}, "
            f"classes={len(self.class_names) if self.class_names else 0})")


@register("folder", {
    "normalize": Option("auto", "auto (uint8 /255, uint16 /65535, floats as stored, NaN -> 0) "
                        "| gauss (magnetograms: clip ±clip_gauss, / clip_gauss) | none"),
    "clip_gauss": Option(250.0, "normalize='gauss': clip to ±this many gauss, then / it"),
    "flip_vertical": Option(True, "flip FITS images (row 0 = south) north-up")},
    preprocess=lambda o, path: {"normalize": o["normalize"], "clip_gauss": o["clip_gauss"],
                                "flip_vertical": ["fits"] if o["flip_vertical"] else []})
def folder(split: str, *, path: str, image_size: int, channels: int, normalize: str,
           clip_gauss: float, flip_vertical: bool) -> FolderSource:
  """png/jpg/tif/bmp, .npy or FITS files, in class subfolders or flat; each resized."""
  return FolderSource(path, split, image_size, channels, normalize, clip_gauss, flip_vertical)

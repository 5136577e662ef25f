"""Embeddings of a user's own files from a trained encoder, written to a table, with pictures.

  simclr-jax embed --encoder runs/digits --data my_images/ --out embeddings.parquet --plot

  import simclr_jax
  table = simclr_jax.embed("runs/sdo", "fits/*.fits", "emb.npz")   # a workdir or an export

`data` is a folder (class subfolders give labels, as data.source='folder' reads them; else
every image in it, flat) or a glob (`**` recurses). Each file is read and prepared as the
run's source prepared its training images (`Encoder.embed_files`, simclr_jax/data/
preprocess.py), then embedded with the encoder in inference mode. The table:
  .npz      `embeddings` (N, D) float32, `paths` (N,); `labels` (N,) and `class_names` where
            the folder has class subfolders;
  .csv      a `path` column, `label` / `class_name` where there are labels, then h0 .. h{D-1};
  .parquet  the same columns (pyarrow).
With `plot`, OUT's stem + `_map.png` (the embeddings in 2-D, coloured by label) and
`_neighbours.png` (query files and their nearest neighbours) beside it (simclr_jax/pictures.py).
"""

from __future__ import annotations

import csv
import dataclasses
import glob as glob_lib
import os

import numpy as np

from simclr_jax import export, pictures
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import preprocess, sources
from simclr_jax.data.sources import folder

FORMATS = (".npz", ".csv", ".parquet")


@dataclasses.dataclass
class Embeddings:
  paths: list[str]
  embeddings: np.ndarray                  # (N, D) float32
  labels: np.ndarray | None = None        # (N,) int, from class subfolders
  class_names: list[str] | None = None
  written: list[str] = dataclasses.field(default_factory=list)   # the table, the pictures


def list_files(data: str) -> tuple[list[str], np.ndarray | None, list[str] | None]:
  """(paths, labels or None, class names or None) of a folder or a glob, sorted."""
  data = os.path.expanduser(os.fspath(data))
  if os.path.isdir(data):
    files, labels, names = folder.list_images(data)
    paths = [os.path.join(data, f) for f in files]
    return paths, (np.asarray(labels, np.int32) if names else None), names
  paths = sorted(p for p in glob_lib.glob(data, recursive=True) if os.path.isfile(p) and (
      folder.is_image(os.path.basename(p)) or p.lower().endswith(".npz")))
  if not paths:
    raise FileNotFoundError(f"--data {data!r}: no folder, and no file matches it as a glob; "
                            f"expected a folder or a pattern of {', '.join(folder.IMAGE_EXTENSIONS)}"
                            " or .npz files")
  return paths, None, None


def check_out(out: str | None) -> None:
  """Refuses an output name of an unknown kind before anything is read."""
  if out is not None and not out.lower().endswith(FORMATS):
    raise ValueError(f"--out {out!r}: expected a file ending in {', '.join(FORMATS)}")


def _columns(result: Embeddings) -> dict[str, list]:
  cols = {"path": result.paths}
  if result.labels is not None:
    cols["label"] = result.labels.tolist()
    cols["class_name"] = [result.class_names[i] for i in result.labels]
  for j in range(result.embeddings.shape[1]):
    cols[f"h{j}"] = result.embeddings[:, j].tolist()
  return cols


def write_table(result: Embeddings, out: str) -> str:
  """Writes `result` to `out` (.npz, .csv or .parquet: see the module docstring)."""
  check_out(out)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  low = out.lower()
  if low.endswith(".npz"):
    arrays = {"embeddings": result.embeddings, "paths": np.asarray(result.paths)}
    if result.labels is not None:
      arrays.update(labels=result.labels, class_names=np.asarray(result.class_names))
    np.savez(out, **arrays)
  elif low.endswith(".csv"):
    cols = _columns(result)
    with open(out, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(cols)
      # repr of a float32 as float: the shortest text that reads back to the same float32.
      w.writerows(zip(*([repr(float(v)) if isinstance(v, float) else v for v in col]
                        for col in cols.values())))
  else:
    # pyarrow, not pandas: it is what writes parquet either way, and tensorflow-datasets and
    # array_record's users already have it.
    from simclr_jax import extras
    pa = extras.require("pyarrow", "embed --out *.parquet")
    pq = extras.require("pyarrow.parquet", "embed --out *.parquet")
    cols = _columns(result)
    table = pa.table({k: (pa.array(v, pa.float32()) if k.startswith("h") and k[1:].isdigit()
                          else v) for k, v in cols.items()})
    pq.write_table(table, out)
  return out


def _pictures(encoder, result: Embeddings, out: str) -> list[str]:
  stem = os.path.splitext(out)[0]
  title = f"{len(result.paths)} files, {encoder!r}"
  paths = [pictures.embedding_map(result.embeddings, result.labels, stem + "_map.png", title,
                                  result.class_names)]
  images = np.stack([preprocess.read(encoder.preprocessing, p) for p in result.paths])
  paths.append(pictures.neighbour_grid(images, result.embeddings, stem + "_neighbours.png",
                                       value_range=encoder.value_range, title=title,
                                       labels=result.labels))
  return paths


def report_pictures(workdir: str, config, max_points: int = 1000) -> list[str]:
  """The embedding map and the neighbour grid of the run's encoder (best checkpoint, else the
  latest) on up to `max_points` images of its eval split, drawn into workdir/plots; the
  report's lines for them."""
  encoder = export.load_encoder(workdir)
  src = sources.make_source(config.data, config.data.eval_split)
  idx = (np.arange(len(src)) if len(src) <= max_points else
         np.sort(np.random.default_rng(config.seed).choice(len(src), max_points, replace=False)))
  examples = [src[int(i)] for i in idx]
  images = np.stack([e["image"] for e in examples])
  labels = np.asarray([int(e["label"]) for e in examples])
  labels = labels if (labels >= 0).any() else None
  names = getattr(src, "class_names", None)
  h = encoder(images)
  os.makedirs(os.path.join(workdir, workdir_lib.PLOTS), exist_ok=True)
  where = f"{len(idx)} images of split `{config.data.eval_split}`"
  title = f"{os.path.basename(os.path.abspath(workdir))}: {where.replace('`', '')}"
  pictures.embedding_map(h, labels, os.path.join(workdir, workdir_lib.EMBEDDING_MAP), title,
                         names)
  pictures.neighbour_grid(images, h, os.path.join(workdir, workdir_lib.NEIGHBOURS),
                          value_range=encoder.value_range, title=title, labels=labels)
  check = encoder.info.get("checkpoint")
  return [f"The encoder's h ({encoder.feature_dim}-d, {check} checkpoint, step "
          f"{encoder.info.get('checkpoint_step')}) of {where}"
          + (", coloured by label" if labels is not None else "") + ", in 2-D, and queries "
          "(first column) with their nearest neighbours by cosine similarity: what the "
          "encoder finds similar. `simclr-jax embed --plot` draws the same for any files.", "",
          f"![embedding map]({workdir_lib.EMBEDDING_MAP})", "",
          f"![nearest neighbours]({workdir_lib.NEIGHBOURS})"]


def embed(encoder, data: str, out: str | None = None, *, checkpoint="best",
          batch_size: int = 256, plot: bool = False, show_progress: bool = False) -> Embeddings:
  """Embeds the files of `data` (a folder or a glob) with `encoder` (an Encoder, a workdir or
  an export folder; `checkpoint` as load_encoder picks it); writes the table to `out` (and
  with `plot` its pictures). Returns the Embeddings."""
  check_out(out)
  if plot and out is None:
    raise ValueError("plot=True needs out: the pictures are written beside the table")
  paths, labels, names = list_files(data)
  if not isinstance(encoder, export.Encoder):
    encoder = export.load_encoder(encoder, checkpoint)
  h = encoder.embed_files(paths, batch_size, show_progress)
  result = Embeddings(paths, h, labels, names)
  if out is not None:
    result.written.append(write_table(result, out))
    if plot:
      result.written += _pictures(encoder, result, out)
  return result

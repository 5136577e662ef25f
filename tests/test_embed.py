"""Preprocessing recorded with the model, `simclr-jax embed`, and the pictures of h.

References: pixels prepared by hand here (PIL / astropy + NumPy: scale, clip, flip, block
mean), the training sources' own examples, the encoder called on those arrays, tables read
back with csv / pyarrow / numpy, scikit-learn's nearest neighbours.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT
from simclr_jax import embeddings, export, pictures
from simclr_jax.configs import default
from simclr_jax.data import preprocess, sources

FITS_DIR = os.path.join(ROOT, "tests", "data", "hmi_sharp_2012_03", "fits")
HMI_NPZ = os.path.join(ROOT, "tests", "data", "hmi_sharp_2012_03", "hmi_sharp_cea_128.npz")
BEN_NPZ = os.path.join(ROOT, "tests", "data", "bigearthnet_s2_example",
                       "bigearthnet_s2_example.npz")


def _data(source: str, image_size: int, channels: int = 1, path: str = "", **options):
  c = default.get_config().data
  c.source, c.image_size, c.channels, c.path = source, image_size, channels, path
  for k, v in options.items():
    c[source][k] = v
  return c


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
  h, w = x.shape[:2]
  return x.reshape(h // f, f, w // f, f, -1).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
  """40 digits as 32x32 8-bit PNGs (each pixel of the 8x8 digit a 4x4 block) in class folders."""
  from PIL import Image
  from sklearn.datasets import load_digits
  root = tmp_path_factory.mktemp("pngs")
  d = load_digits()
  for i in range(40):
    x = np.kron(np.round(d.images[i] * 255 / 16).astype(np.uint8), np.ones((4, 4), np.uint8))
    os.makedirs(root / f"c{d.target[i]}", exist_ok=True)
    Image.fromarray(x).save(root / f"c{d.target[i]}" / f"{i:03d}.png")
  return str(root)


@pytest.fixture(scope="module")
def encoder(tiny_run):
  return export.load_encoder(tiny_run)


# --- Preprocessing: the sources' own examples, and by hand ---------------------------------

def test_preprocess_of_a_stored_image_equals_the_training_source_example():
  """What the export records turns a raw stored image into exactly what the source fed the
  encoder in training: hmi (gauss, clip, FITS orientation), bigearthnet (per-band z-score)."""
  with np.load(HMI_NPZ) as f:
    raw = f["images"][:3]
  data = _data("hmi", 64, path=HMI_NPZ)
  src = sources.make_source(data, "train")
  spec = preprocess.spec(data)
  assert spec["lacks"] is None and spec["normalize"] == "gauss" and spec["clip_gauss"] == 250
  for i in range(3):
    np.testing.assert_allclose(preprocess.apply(spec, raw[i], "fits"), src[i]["image"],
                               rtol=0, atol=1e-6)
  # Not flipped when the array is not in FITS orientation: the flip is recorded, not assumed.
  assert np.abs(preprocess.apply(spec, raw[0], "image") - src[0]["image"]).max() > 0.1

  data = _data("bigearthnet", 60, channels=12, path=BEN_NPZ)
  src = sources.make_source(data, "train")
  spec = json.loads(json.dumps(preprocess.spec(data)))          # as encoder.json holds it
  with np.load(BEN_NPZ) as f:
    raw, mean = f["images"][:2], f["band_mean"]
  np.testing.assert_allclose(spec["band_mean"], mean, rtol=1e-7)
  for i in range(2):
    np.testing.assert_allclose(preprocess.apply(spec, raw[i]), src[i]["image"], rtol=1e-5,
                               atol=1e-5)


def test_fits_preprocessing_equals_astropy_by_hand():
  """Clip ±250 G, / 250, north-up, centre square, 3x3 block mean (105 -> 35), by hand."""
  from astropy.io import fits
  spec = preprocess.spec(_data("folder", 35, normalize="gauss"))
  for name in sorted(os.listdir(FITS_DIR)):
    path = os.path.join(FITS_DIR, name)
    with fits.open(path) as hdus:
      x = next(h.data for h in hdus if h.data is not None).astype(np.float64)
    assert x.shape == (105, 163)
    x = np.clip(np.nan_to_num(x, nan=0.0), -250, 250) / 250
    x = x[::-1, 29:29 + 105]                                  # north-up, the centre square
    want = _block_mean(x[:, :, None], 3)
    got = preprocess.read(spec, path)
    assert got.shape == (35, 35, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)


# --- simclr-jax embed -------------------------------------------------------------------------

def test_embed_cli_on_pngs_rows_equal_the_encoder_of_the_prepared_files(tiny_run, encoder,
                                                                         digit_pngs, tmp_path):
  out = tmp_path / "emb.csv"
  proc = subprocess.run(
      [sys.executable, "-m", "simclr_jax", "embed", "--encoder", tiny_run, "--data", digit_pngs,
       "--out", str(out), "--plot"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "40 files -> 64-d embeddings, labels from" in proc.stdout
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  paths, labels, _ = embeddings.list_files(digit_pngs)
  assert [r["path"] for r in rows] == paths and len(rows) == 40
  assert [int(r["label"]) for r in rows] == labels.tolist()
  assert [r["class_name"] for r in rows] == [os.path.basename(os.path.dirname(p))
                                             for p in paths]
  got = np.asarray([[float(r[f"h{j}"]) for j in range(64)] for r in rows], np.float32)

  from PIL import Image
  by_hand = np.stack([_block_mean(np.asarray(Image.open(p), np.float64)[:, :, None] / 255, 2)
                      for p in paths])
  prepared = np.stack([encoder.preprocess(np.asarray(Image.open(p))) for p in paths])
  np.testing.assert_allclose(prepared, by_hand, rtol=0, atol=2e-7)
  np.testing.assert_array_equal(got, encoder(prepared))       # the same batch, the same program
  for name in ("emb_map.png", "emb_neighbours.png"):
    from PIL import Image as I
    with I.open(tmp_path / name) as im:
      assert im.size[0] > 300 and im.size[1] > 300


def test_embed_fits_folder_from_an_export_npz_and_parquet(encoder, tmp_path):
  """An export whose recorded preprocessing is the folder source's gauss one, at 35x35:
  `embed` of the HMI FITS folder gives encoder(FITS prepared by hand) row by row."""
  from astropy.io import fits
  info = dict(encoder.info, image_size=35,
              preprocess=preprocess.spec(_data("folder", 35, normalize="gauss")))
  out = export.write_encoder(export.Encoder(encoder.module, encoder.variables, info),
                             str(tmp_path / "export"))
  result = embeddings.embed(out, FITS_DIR, str(tmp_path / "e.npz"))
  names = sorted(os.listdir(FITS_DIR))
  assert result.paths == [os.path.join(FITS_DIR, n) for n in names] and result.labels is None
  by_hand = []
  for name in names:
    with fits.open(os.path.join(FITS_DIR, name)) as hdus:
      x = next(h.data for h in hdus if h.data is not None).astype(np.float64)
    x = (np.clip(np.nan_to_num(x), -250, 250) / 250)[::-1, 29:134]
    by_hand.append(_block_mean(x[:, :, None], 3))
  # Features of arrays that agree to float32 rounding agree to that rounding carried through
  # the network: the rows equal the encoder of the same prepared arrays exactly, and the
  # hand-prepared ones closely.
  loaded = export.load_encoder(out)
  prepared = np.stack([loaded.preprocess(preprocess.read_raw(p), "fits") for p in result.paths])
  np.testing.assert_array_equal(result.embeddings, loaded(prepared))
  np.testing.assert_allclose(prepared, np.stack(by_hand), rtol=0, atol=2e-7)
  with np.load(tmp_path / "e.npz") as f:
    np.testing.assert_array_equal(f["embeddings"], result.embeddings)
    assert f["paths"].tolist() == result.paths and "labels" not in f

  import pyarrow.parquet as pq
  embeddings.write_table(result, str(tmp_path / "e.parquet"))
  table = pq.read_table(tmp_path / "e.parquet").to_pydict()
  assert table["path"] == result.paths
  np.testing.assert_array_equal(np.asarray([table[f"h{j}"] for j in range(64)], np.float32).T,
                                result.embeddings)


def test_an_old_export_loads_and_says_what_it_lacks(tiny_run, encoder, tmp_path, caplog):
  out = export.export_encoder(tiny_run, str(tmp_path / "old"))
  with open(os.path.join(out, "encoder.json")) as f:
    info = json.load(f)
  assert info["preprocess"]["normalize"] == "auto" and info["format_version"] == 2
  del info["preprocess"]
  info["format_version"] = 1                      # as exports were written before this change
  with open(os.path.join(out, "encoder.json"), "w") as f:
    json.dump(info, f)
  with caplog.at_level("WARNING"):
    old = export.load_encoder(out)
  assert "records no preprocessing" in caplog.text
  x = np.random.default_rng(0).uniform(size=(4, 16, 16, 1)).astype(np.float32)
  np.testing.assert_array_equal(old(x), encoder(x))            # the encoder itself still works
  with pytest.raises(ValueError, match="records no preprocessing") as e:
    old.embed_files([os.path.join(FITS_DIR, os.listdir(FITS_DIR)[0])])
  assert "\n" not in str(e.value)


def test_embed_input_errors_are_one_line(tmp_path, digit_pngs):
  with pytest.raises(ValueError, match=r"--out 'e\.txt': expected a file ending in"):
    embeddings.check_out("e.txt")
  with pytest.raises(FileNotFoundError, match="no folder, and no file matches"):
    embeddings.list_files(str(tmp_path / "nothing*.png"))
  paths, labels, names = embeddings.list_files(os.path.join(digit_pngs, "**", "*.png"))
  assert len(paths) == 40 and labels is None and paths == sorted(paths)
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not a png")
  spec = preprocess.spec(_data("folder", 16))
  with pytest.raises(ValueError, match=f"^{bad}: corrupt or unreadable image"):
    preprocess.read(spec, str(bad))


# --- The pictures ---------------------------------------------------------------------------

def test_nearest_neighbours_equal_scikit_learn_cosine():
  from sklearn.neighbors import NearestNeighbors
  h = np.random.default_rng(1).normal(size=(60, 8))
  q = np.array([0, 7, 59])
  nn = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(h)
  want = nn.kneighbors(h[q], return_distance=False)[:, 1:]        # itself first: dropped
  np.testing.assert_array_equal(pictures.nearest(h, q, 5), want)
  labels = np.repeat(np.arange(4), 15)
  picked = pictures.pick_queries(60, 8, labels, seed=0)
  assert sorted(np.bincount(labels[picked], minlength=4)) == [2, 2, 2, 2]


def test_the_digits_report_shows_the_embedding_map_and_neighbours(tiny_run):
  from PIL import Image
  with open(os.path.join(tiny_run, "report.md")) as f:
    text = f.read()
  assert "## 5. Embedding space" in text
  assert "of 360 images of split `test`, coloured by label" in text
  for name in ("embedding_map.png", "neighbours.png"):
    assert f"(plots/{name})" in text
    with Image.open(os.path.join(tiny_run, "plots", name)) as im:
      assert min(im.size) > 300


def test_simclr_jax_embed_is_the_function_after_its_module_is_imported():
  import simclr_jax
  from simclr_jax import report  # noqa: F401  (imports simclr_jax.embeddings)
  assert simclr_jax.embed is embeddings.embed

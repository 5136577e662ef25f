"""Real data formats: fixtures written in each format, values checked against hand-computed
numbers; threshold labels; bad inputs; the bundled real HMI and BigEarthNet samples; stats."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from simclr_jax.configs import cifar10, sdo, sdobenchmark, sentinel2
from simclr_jax.data import labels as labels_lib
from simclr_jax.data import sources, stats

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HMI = os.path.join(DATA, "hmi_sharp_2012_03", "hmi_sharp_cea_128.npz")
HMI_FITS = os.path.join(DATA, "hmi_sharp_2012_03", "fits")
BEN = os.path.join(DATA, "bigearthnet_s2_example", "bigearthnet_s2_example.npz")
FLARES = ("Quiet: < 1e-6", "C: >= 1e-6 and < 1e-5", "M+: >= 1e-5")


# --- labels from thresholds -----------------------------------------------------------------

def test_thresholds_give_classes_first_match_wins():
  flux = [1e-9, 9.99e-7, 1e-6, 5e-6, 1e-5, 3e-4]
  assert labels_lib.classes_from_values(flux, FLARES).tolist() == [0, 0, 1, 1, 2, 2]
  assert labels_lib.class_names(FLARES) == ["Quiet", "C", "M+"]
  # SolarNet's two classes, and first-match semantics without names (4 classes).
  assert labels_lib.classes_from_values(flux, ("< 1e-6", ">= 1e-6")).tolist() == [0, 0, 1, 1, 1, 1]
  four = ("< 1e-7", "<1e-6", "<= 1e-5", "> 1e-5")
  assert labels_lib.classes_from_values(flux, four).tolist() == [0, 1, 2, 2, 2, 3]
  assert labels_lib.class_names(("Quiet: < 1e-6", ">=C: >= 1e-6")) == ["Quiet", ">=C"]


@pytest.mark.parametrize("bad", ["about 1e-6", "<< 1e-6", ">= 1e-6 or < 1e-9", "Quiet:", "< x"])
def test_unparsable_threshold_names_the_string(bad):
  with pytest.raises(ValueError, match="cannot parse label threshold " + repr(bad).replace(
      "(", r"\(").replace(")", r"\)")):
    labels_lib.parse_thresholds(("< 1e-6", bad))


def test_value_outside_every_class_names_where():
  with pytest.raises(ValueError, match=r"meta.csv line 3: 1e-09 matches none"):
    labels_lib.classes_from_values([1e-5, 1e-9], (">= 1e-6", ">= 1e-8 and < 1e-6"),
                                   where=["meta.csv line 2", "meta.csv line 3"])


def test_stratified_fraction_of_threshold_labels_keeps_shares():
  flux = np.concatenate([np.full(70, 1e-8), np.full(21, 2e-6), np.full(9, 4e-5)])
  y = labels_lib.classes_from_values(flux, FLARES)
  for fraction in (0.1, 0.3):
    idx = labels_lib.stratified_fraction(y, fraction, seed=1)
    assert np.all(np.abs(np.bincount(y[idx], minlength=3) - fraction * np.bincount(y)) <= 1)


# --- SolarNet's sdo-dataset (CSV + npz) -------------------------------------------------------

def _field(seed):
  """8x8 field in gauss: a ramp through ±250 G with one NaN (off-disk) pixel."""
  x = (np.arange(64, dtype=np.float32).reshape(8, 8) * 10.0 - 300.0) * (1 if seed == 0 else -1)
  x[0, 0] = np.nan
  return x


def _write_sdoml(root, n=6, columns=("path_0_before", "path_1_before"), split="train"):
  fluxes = [1e-9, 2e-6, 3e-5, 1e-9, 5e-7, 1.5e-6, 2e-9, 8e-6][:n]
  rows = []
  for i in range(n):
    row = {"datetime": f"2012-03-0{i % 9 + 1} 00:00:00", "peak_flux": repr(fluxes[i]),
           "all_found": "True", "split": split}
    for k, c in enumerate(columns):
      rel = f"Bz/2012/03/{i:02d}/HMI2012030{i}_{k}_bz.npz"
      os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
      np.savez(os.path.join(root, rel), x=(_field(k) + i).astype(np.float16 if k else np.float32))
      row[c] = rel
    rows.append(row)
  with open(os.path.join(root, f"sdo-dataset-{split}.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(columns) + ["peak_flux", "datetime", "all_found",
                                                      "split"])
    w.writeheader()
    w.writerows(rows)
  return rows


def test_sdoml_normalises_flips_resizes_and_stacks_time_steps(tmp_path):
  _write_sdoml(tmp_path)
  src = sources.SdomlSource(str(tmp_path), "train", image_size=4, channels=2,
                            thresholds=FLARES)
  assert len(src) == 6 and src.labels.tolist() == [0, 1, 2, 0, 0, 1]
  x = src[0]["image"]
  assert x.shape == (4, 4, 2) and x.dtype == np.float32
  # Output row 0 = input rows 7, 6 (vertical flip); each pixel = mean of a 2x2 block of
  # clip(g, -250, 250) / 250. Block (0, 0) of channel 0: g = 260, 270 (row 7), 180, 190 (row 6).
  assert x[0, 0, 0] == pytest.approx((1.0 + 1.0 + 180 / 250 + 190 / 250) / 4)
  # Last block (3, 3) holds input rows 0-1, cols 6-7: -240, -230, -160, -150 G.
  assert x[3, 3, 0] == pytest.approx((-240 - 230 - 160 - 150) / 250 / 4)
  # Block (3, 0) holds the NaN at (0, 0) -> 0: (0 + -290 -> -250, -220, -210) / 250 / 4.
  assert x[3, 0, 0] == pytest.approx((0 - 250 - 220 - 210) / 250 / 4)
  # Channel 1 is the second CSV column: the negated field (float16 on disk), clipped the same.
  assert x[0, 0, 1] == pytest.approx(-(1.0 + 1.0 + 180 / 250 + 190 / 250) / 4)
  # Row 2 (field + 2), block (1, 1) = input rows 5, 4, cols 2, 3: 122, 132, 42, 52 G.
  assert src[2]["image"][1, 1, 0] == pytest.approx((122 + 132 + 42 + 52) / 4 / 250)
  assert np.abs(np.stack([src[i]["image"] for i in range(6)])).max() <= 1.0
  # One column = one channel; unlabelled without thresholds.
  one = sources.SdomlSource(str(tmp_path / "sdo-dataset-{split}.csv"), "train", 8, 1,
                            columns=("path_1_before",))
  assert one[0]["image"].shape == (8, 8, 1) and one[0]["label"] == -1
  np.testing.assert_allclose(one[0]["image"][:, :, 0],
                             np.nan_to_num(np.clip(-_field(0), -250, 250) / 250)[::-1], atol=1e-3)


def test_sdoml_bad_inputs_name_the_row_and_the_expectation(tmp_path):
  rows = _write_sdoml(tmp_path)
  with pytest.raises(ValueError, match=r"2 path column\(s\).*expected 1 \(data.channels\)"):
    sources.SdomlSource(str(tmp_path), "train", 4, channels=1)
  os.remove(tmp_path / rows[3]["path_1_before"])
  with pytest.raises(FileNotFoundError, match=r"sdo-dataset-train.csv line 5: file "
                     r"'Bz/2012/03/03/HMI20120303_1_bz.npz' \(column path_1_before\) is listed "
                     "but missing"):
    sources.SdomlSource(str(tmp_path), "train", 4, channels=2)
  kept = sources.SdomlSource(str(tmp_path), "train", 4, channels=2, skip_missing=True)
  assert len(kept) == 5
  with open(tmp_path / rows[1]["path_0_before"], "wb") as f:
    f.write(b"not a zip file")
  with pytest.raises(ValueError, match="HMI20120301_0_bz.npz: cannot read as .npz"):
    kept[1]
  with pytest.raises(FileNotFoundError, match=r"no data at .*sdo-dataset-val.csv.*README"):
    sources.SdomlSource(str(tmp_path), "val", 4, channels=2)
  with open(tmp_path / "sdo-dataset-test.csv", "w") as f:
    f.write("path_0_before,peak_flux\n" + rows[0]["path_0_before"] + ",big\n")
  with pytest.raises(ValueError, match="sdo-dataset-test.csv line 2: peak_flux 'big' is not"):
    sources.SdomlSource(str(tmp_path), "test", 4, channels=1, thresholds=FLARES)


# --- SDOBenchmark (meta_data.csv + jpgs) ------------------------------------------------------

def _write_sdobenchmark(root, regions=(11401, 11402, 11403, 11404, 11405), per_region=2,
                        steps=(0, 1, 2, 3)):
  """Each image has four constant 8x8 quadrants (JPEG stores those exactly at quality 95)."""
  import datetime as dt
  values = {}
  for folder, ars in (("training", regions), ("test", (12001,))):
    rows = []
    for ar in ars:
      for k in range(per_region):
        start = dt.datetime(2012, 3, 1 + k, 0, 0, 0)
        sid = f"{ar}_{start.strftime('%Y_%m_%d_%H_%M_%S')}_{k}"
        d = os.path.join(root, folder, str(ar), sid.split("_", 1)[1])
        os.makedirs(d)
        for t in steps:
          # SDOBenchmark's four image times after a sample's start: 0h, 7h, 10h30, 11h50.
          when = start + dt.timedelta(minutes=(0, 420, 630, 710)[t])
          q = np.array([[10 * t + k, 100], [200 + t, 255 - ar % 7]], np.uint8)
          img = np.kron(q, np.ones((8, 8), np.uint8))
          Image.fromarray(img).save(os.path.join(d, f"{when:%Y-%m-%dT%H%M%S}__magnetogram.jpg"),
                                    quality=95)
          values[(sid, t)] = q
        end = start + dt.timedelta(hours=36)
        flux = 2e-6 if (ar + k) % 2 else 1e-8
        rows.append([sid, start.isoformat(), end.isoformat(), flux])
    with open(os.path.join(root, folder, "meta_data.csv"), "w", newline="") as f:
      csv.writer(f).writerows([["id", "start", "end", "peak_flux"]] + rows)
  return values


def test_sdobenchmark_values_time_steps_and_region_split(tmp_path):
  values = _write_sdobenchmark(tmp_path)
  kw = dict(image_size=2, thresholds=("< 1e-6", ">= 1e-6"), val_fraction=0.3, seed=0)
  train = sources.SdoBenchmarkSource(str(tmp_path), "train", channels=1, **kw)
  val = sources.SdoBenchmarkSource(str(tmp_path), "val", channels=1, **kw)
  test = sources.SdoBenchmarkSource(str(tmp_path), "test", channels=1, **kw)
  assert (len(train), len(val), len(test)) == (6, 4, 2)      # whole regions: 3 + 2 of 5
  assert not set(train.groups) & set(val.groups)
  x = train[0]
  sid = train.ids[0]
  # Time step 3 (11h50) by default; 16x16 -> 2x2 is the mean of each constant quadrant,
  # and gray p maps to p / 127.5 - 1 (127.5 = 0 G).
  np.testing.assert_allclose(x["image"][:, :, 0], values[(sid, 3)] / 127.5 - 1, atol=1e-6)
  assert x["label"] == (1 if (int(sid[:5]) + int(sid[-1])) % 2 else 0)
  stacked = sources.SdoBenchmarkSource(str(tmp_path), "test", channels=4, image_size=16,
                                       time_steps=(0, 1, 2, 3))
  sid = stacked.ids[1]
  assert stacked[1]["image"].shape == (16, 16, 4)
  for t in range(4):
    assert stacked[1]["image"][0, 0, t] == pytest.approx(values[(sid, t)][0, 0] / 127.5 - 1)
    assert stacked[1]["image"][15, 15, t] == pytest.approx(values[(sid, t)][1, 1] / 127.5 - 1)


def test_sdobenchmark_bad_inputs(tmp_path):
  _write_sdobenchmark(tmp_path, regions=(11401, 11402), steps=(0, 3))
  with pytest.raises(FileNotFoundError, match=r"meta_data.csv line 2 \(id 11401_2012_03_01_00_"
                     r"00_00_0\): no magnetogram image 2012-03-01T070000__magnetogram.jpg"):
    sources.SdoBenchmarkSource(str(tmp_path), "training", 8, 1, time_steps=(1,))
  with pytest.raises(ValueError, match=r"1 channel name\(s\).*2 time step\(s\) = 2 channels; "
                     r"expected 1 \(data.channels\)"):
    sources.SdoBenchmarkSource(str(tmp_path), "training", 8, channels=1, time_steps=(0, 3))
  src = sources.SdoBenchmarkSource(str(tmp_path), "training", 8, 1)
  bad = os.path.join(src.root, src.files[2][0])
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
  with pytest.raises(ValueError, match=f"{bad}: corrupt or unreadable image"):
    src[2]
  os.remove(bad)
  with pytest.raises(FileNotFoundError, match="meta_data.csv line 4"):
    sources.SdoBenchmarkSource(str(tmp_path), "training", 8, 1)
  assert len(sources.SdoBenchmarkSource(str(tmp_path), "training", 8, 1,
                                        skip_missing=True)) == 3
  with pytest.raises(FileNotFoundError, match="no data at .*nowhere/test/meta_data.csv"):
    sources.SdoBenchmarkSource(str(tmp_path / "nowhere"), "test", 8, 1)


# --- folders of png / tif / npy / FITS --------------------------------------------------------

def test_folder_with_class_subfolders_and_flat(tmp_path):
  rng = np.random.default_rng(0)
  imgs = {}
  for cls in ("cat", "dog"):
    os.makedirs(tmp_path / "train" / cls)
    for i in range(3):
      imgs[(cls, i)] = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
      Image.fromarray(imgs[(cls, i)]).save(tmp_path / "train" / cls / f"{i}.png")
  src = sources.FolderSource(str(tmp_path / "{split}"), "train", image_size=6, channels=3)
  assert len(src) == 6 and src.class_names == ["cat", "dog"]
  assert src.labels.tolist() == [0, 0, 0, 1, 1, 1]
  np.testing.assert_array_equal(src[4]["image"], imgs[("dog", 1)] / np.float32(255.0))
  small = sources.FolderSource(str(tmp_path / "train"), "x", image_size=3, channels=3)
  np.testing.assert_allclose(small[0]["image"][0, 0],
                             imgs[("cat", 0)][:2, :2].reshape(4, 3).mean(0) / 255, atol=1e-6)
  # Flat and unlabelled: uint16 tif (/65535), npy floats (as stored), 8-bit gray png.
  flat = tmp_path / "flat"
  os.makedirs(flat)
  g16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
  Image.fromarray(g16).save(flat / "a.tif")
  np.save(flat / "b.npy", np.full((4, 4), 0.25, np.float32))
  Image.fromarray(np.full((4, 4), 51, np.uint8)).save(flat / "c.png")
  (flat / "notes.txt").write_text("ignored")
  src = sources.FolderSource(str(flat), "train", image_size=4, channels=1)
  assert src.labels.tolist() == [-1, -1, -1] and src.class_names is None
  np.testing.assert_allclose(src[0]["image"][:, :, 0], g16 / 65535.0, rtol=1e-6)
  assert src[1]["image"].max() == 0.25 and src[2]["image"][0, 0, 0] == pytest.approx(0.2)


def test_folder_of_fits_magnetograms(tmp_path):
  from astropy.io import fits
  x = np.array([[np.nan, -300.0, 0.0, 125.0], [50.0, 250.0, 400.0, -125.0]] * 2)   # 4x4 gauss
  fits.PrimaryHDU(x.astype(np.float32)).writeto(tmp_path / "a.fits")
  src = sources.FolderSource(str(tmp_path), "train", image_size=4, channels=1,
                             normalize="gauss")
  got = src[0]["image"][:, :, 0]
  expected = np.array([[0.0, -1.0, 0.0, 0.5], [0.2, 1.0, 1.0, -0.5]] * 2)[::-1]  # north-up
  np.testing.assert_allclose(got, expected, atol=1e-7)
  # The real HMI SHARP FITS files (Rice-compressed, HDU 1, 105x163): centre square, resized.
  real = sources.FolderSource(HMI_FITS, "train", image_size=21, channels=1, normalize="gauss")
  assert len(real) == 2
  with fits.open(os.path.join(HMI_FITS, real.files[0])) as h:
    raw = h[1].data.astype(np.float64)
  square = np.clip(np.nan_to_num(raw[:, 29:134]), -250, 250)[::-1] / 250   # 105 -> 21: f = 5
  np.testing.assert_allclose(real[0]["image"][:, :, 0],
                             square.reshape(21, 5, 21, 5).mean((1, 3)), atol=1e-5)


def test_folder_bad_inputs(tmp_path):
  os.makedirs(tmp_path / "empty" / "sub")
  with pytest.raises(ValueError, match=r"empty.*: empty folder, no images; expected files "
                     r"ending in \.png"):
    sources.FolderSource(str(tmp_path / "empty"), "train", 8, 1)
  os.makedirs(tmp_path / "gray")
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gray" / "g.png")
  src = sources.FolderSource(str(tmp_path / "gray"), "train", 4, channels=3)
  with pytest.raises(ValueError, match=r"g.png: image has 1 channel\(s\).*expected 3 "
                     r"\(data.channels\)"):
    src[0]
  (tmp_path / "gray" / "h.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  with pytest.raises(ValueError, match="h.png: corrupt or unreadable image"):
    sources.FolderSource(str(tmp_path / "gray"), "train", 4, channels=1)[1]
  with pytest.raises(FileNotFoundError, match="no data at .*missing"):
    sources.FolderSource(str(tmp_path / "missing"), "train", 4, 1)


# --- TFDS, npz ----------------------------------------------------------------------------------

def test_tfds_data_source_through_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    raw = tfds.data_source("mnist", split="train")
    src = sources.TfdsSource("mnist", "train", "", image_size=28, channels=1)
    half = sources.TfdsSource("mnist", "train", "", image_size=14, channels=1)
    assert len(src) == 12
    r = raw[5]
    np.testing.assert_array_equal(src[5]["image"], r["image"].astype(np.float32) / 255.0)
    assert src[5]["label"] == r["label"] and src.labels[5] == r["label"]
    block = r["image"][:2, :2, 0].astype(np.float32) / 255.0
    assert half[5]["image"][0, 0, 0] == pytest.approx(block.mean())
    with pytest.raises(ValueError, match=r"image has 1 channel\(s\).*expected 3"):
      sources.TfdsSource("mnist", "train", "", image_size=28, channels=3)[0]


def test_npz_gauss_normalisation(tmp_path):
  np.savez(tmp_path / "m.npz", images=np.array([[[np.nan, 500.0], [-125.0, 25.0]]], np.float16))
  src = sources.get("npz", "train", path=str(tmp_path / "m.npz"), image_size=2, channels=1,
                    normalize="gauss")
  np.testing.assert_allclose(src[0]["image"][:, :, 0], [[0.0, 1.0], [-0.5, 0.1]], atol=1e-7)


# --- the bundled real samples ---------------------------------------------------------------

def test_real_hmi_patches_load():
  src = sources.get("hmi", "train", path=HMI, image_size=32, channels=1)
  assert len(src) == 84 and src[0]["image"].shape == (32, 32, 1) and src[0]["label"] == -1
  with np.load(HMI) as f:
    raw = f["images"].astype(np.float32)
  expected = (np.clip(raw[7], -250, 250) / 250)[::-1].reshape(32, 4, 32, 4).mean((1, 3))
  np.testing.assert_allclose(src[7]["image"][:, :, 0], expected, atol=1e-6)
  assert len(sources.get("hmi", "train", path=HMI, image_size=32, channels=1, product="Br")) == 41
  s = stats.dataset_statistics(src)
  assert s["size"] == 84 and s["unlabelled"] == 84 and s["min"] == -1.0 and s["max"] == 1.0


def test_real_bigearthnet_patches_load():
  src = sources.get("bigearthnet", "train", path=BEN, image_size=120, channels=12)
  with np.load(BEN) as f:
    raw, mean, std, y19 = f["images"], f["band_mean"], f["band_std"], f["labels_19"]
  assert len(src) == 6 and src[0]["image"].shape == (120, 120, 12)
  np.testing.assert_allclose(src[3]["image"][10, 20], (raw[3, 10, 20] - mean) / std, rtol=1e-6)
  el = src[3]
  assert el["label"] == -1 and el["multi_hot"].tolist() == y19[3].tolist()
  s = stats.dataset_statistics(src)
  assert s["multi_label_counts"]["Arable land"] == int(y19[:, 2].sum())
  assert "multi-label" in stats.format_statistics({"train": s})
  small = sources.get("bigearthnet", "train", path=BEN, image_size=32, channels=12)
  assert small[0]["image"].shape == (32, 32, 12)
  with pytest.raises(ValueError, match=r"has 12 channel\(s\).*expected 3"):
    sources.get("bigearthnet", "train", path=BEN, image_size=32, channels=3)


def test_statistics_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 4, 4, 2)).astype(np.float32)
  src = sources.ArraySource(x, np.array([0] * 7 + [1] * 2 + [-1]), "t",
                            class_names=["Quiet", ">=C"])
  s = stats.dataset_statistics(src)
  assert s["class_counts"] == {"Quiet": 7, ">=C": 2} and s["unlabelled"] == 1
  assert s["min"] == pytest.approx(x.min()) and s["max"] == pytest.approx(x.max())
  assert s["mean"] == pytest.approx(x.mean(), abs=1e-6)
  assert s["std"] == pytest.approx(x.std(), rel=1e-5)
  np.testing.assert_allclose(s["channel_std"], x.reshape(-1, 2).std(0), rtol=1e-5)
  assert stats.format_statistics({"train": s}).startswith("- train: 10 (Quiet 7 / >=C 2)")
  sub = stats.dataset_statistics(src, max_examples=4)
  assert sub["n_measured"] == 4 and sub["size"] == 10


# --- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [sdo, sdobenchmark, sentinel2, cifar10])
def test_config_without_its_data_stops_with_a_clear_message(module, tmp_path):
  c = module.get_config()
  c.data.path = str(tmp_path / "absent" / os.path.basename(c.data.path))
  with pytest.raises(FileNotFoundError, match=r"no data at .*absent.*see README.md"):
    sources.make_source(c.data, c.data.train_split)


def test_sdo_config_is_the_solarnet_recipe():
  c = sdo.get_config()
  assert (c.model.backbone, c.data.channels, c.model.hidden_mlp, c.model.feat_dim) == (
      "resnet50", 1, 2048, 64)
  assert (c.optim.name, c.optim.learning_rate, c.optim.warmup_epochs) == ("adam", 1e-3, 10.0)
  assert (c.train.batch_size, c.seed, c.train.epochs, c.data.num_classes) == (768, 42, 1000, 2)
  assert c.augment.preset == "solarnet" and c.data.path == "data/sdo-dataset-ssl-bz-1h-2010-2014"
  s2 = sentinel2.get_config()
  assert (s2.model.backbone, s2.train.batch_size, s2.train.epochs, s2.loss.temperature,
          s2.optim.learning_rate, s2.augment.preset, s2.data.channels) == (
              "resnet152", 32, 50, 0.1, 5e-4, "sentinel2", 12)


# --- 2-step pretraining on the real samples ---------------------------------------------------

# Whole pretraining runs (~15 s each): the slow tier. The everyday tier loads the same samples
# (test_real_hmi_patches_load, test_real_bigearthnet_patches_load) and pretrains on digits.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["hmi", "bigearthnet"])
def test_two_step_pretraining_on_real_samples(name, tmp_path):
  import jax
  from simclr_jax import train
  c = sdo.get_config("tiny") if name == "hmi" else sentinel2.get_config("tiny")
  assert c.data.source == name
  # Compile time dominates; XLA compiles the non-partitionable threefry ~3x faster (model init
  # 25 s -> 7 s CPU here). Only the random stream differs; this test checks that it runs.
  with jax.threefry_partitionable(False):
    metrics = train.pretrain(c, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["epoch"] > 0
  assert os.path.isdir(tmp_path / "checkpoints" / "2")


def test_make_source_dispatch_and_multi_hot_batches(tmp_path):
  from simclr_jax.configs import default
  from simclr_jax.data import pipeline
  c = sdo.get_config("hmi")
  assert len(sources.make_source(c.data, "train")) == 84
  d = default.get_config().data
  d.source, d.path, d.channels, d.image_size = "folder", HMI_FITS, 1, 8
  d.folder.normalize = "gauss"
  assert len(sources.make_source(d, "train")) == 2
  d.source, d.label_thresholds, d.num_classes = "sdoml", ("< 1e-6", ">= 1e-6"), 3
  with pytest.raises(ValueError, match="defines 2 classes but data.num_classes=3"):
    sources.make_source(d, "train")
  d.source, d.label_thresholds = "nope", ()
  with pytest.raises(ValueError, match="unknown data.source 'nope'; sources: digits, npz"):
    sources.make_source(d, "train")
  # Multi-hot targets ride along in every batch; the scalar label stays -1.
  ben = sources.make_source(sentinel2.get_config("tiny").data, "train")
  batch = next(iter(pipeline.pretrain_dataset(ben, global_batch_size=4, seed=0, prefetch=0)))
  assert batch["multi_hot"].shape == (4, 19) and batch["label"].tolist() == [-1] * 4
  assert batch["image"].shape == (4, 32, 32, 12)


# --- names: the registry, per-source options, old flat fields -----------------------------------

def test_unknown_options_and_misplaced_thresholds_name_what_exists(tmp_path):
  with pytest.raises(ValueError, match=r"data.hmi: unknown option\(s\) \['channel'\]; "
                                       r"data.source='hmi' takes \['clip_gauss', "
                                       r"'flip_vertical', 'product'\]"):
    sources.get("hmi", "train", path=HMI, image_size=8, channels=1, channel="Br")
  with pytest.raises(ValueError, match=r"data.label_thresholds=.*'npz' has no flux column; "
                                       r"thresholds apply to sdoml, sdobenchmark"):
    sources.get("npz", "train", path=HMI, image_size=8, channels=1,
                label_thresholds=("< 1e-6", ">= 1e-6"))


def test_npz_images_are_resized_to_the_image_size(tmp_path):
  x = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 2), dtype=np.uint8)
  np.savez(tmp_path / "a.npz", images=x)
  src = sources.get("npz", "train", path=str(tmp_path / "a.npz"), image_size=4, channels=2)
  want = (x[1].astype(np.float32) / 255).reshape(4, 2, 4, 2, 2).mean((1, 3))   # 2x2 blocks
  np.testing.assert_allclose(src[1]["image"], want, atol=1e-6)


def test_old_flat_fields_still_work_with_a_warning_naming_the_new_one(caplog):
  from simclr_jax.configs import default
  d = default.get_config().data
  d.source, d.path, d.channels, d.image_size = "hmi", HMI, 1, 8
  d.channel = "Br"                       # the old flat name of data.hmi.product
  assert len(sources.make_source(d, "train")) == 41
  d.source, d.path = "digits", ""       # digits has no such option: ignored, with a warning
  d.channel = None
  d.time_steps = (0, 1)
  assert len(sources.make_source(d, "train")) == 1437
  messages = [r.getMessage() for r in caplog.records]
  assert any("data.channel is deprecated: use data.hmi.product" in m for m in messages), messages
  assert any("data.time_steps=(0, 1) is deprecated and ignored for data.source='digits' (it "
             "became data.sdoml.columns, data.sdobenchmark.time_steps)" in m for m in messages)

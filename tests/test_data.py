"""Sources and the grain pipeline: values, per-epoch reshuffle, per-process shards, resume."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from simclr_jax.data import labels as labels_lib
from simclr_jax.data import pipeline, sources


def test_digits_splits_values_and_labels():
  train, test = (sources.get("digits", s, path="", image_size=32, channels=1)
                 for s in ("train", "test"))
  assert (len(train), len(test)) == (1437, 360)
  assert train[0]["image"].shape == (32, 32, 1) and train[0]["image"].dtype == np.float32
  # Stratified: each class keeps its share of the 1797 within one example.
  full = np.bincount(load_digits().target, minlength=10)
  assert np.all(np.abs(np.bincount(test.labels, minlength=10) - full * 360 / 1797) <= 1)
  # Upsampling keeps the picture: 4x4 block means of the 32x32 image match the 8x8 digit / 16.
  originals = {tuple(im.ravel()): y for im, y in zip(load_digits().images / 16.0,
                                                     load_digits().target)}
  img = train.images[:, :, :, 0].reshape(-1, 8, 4, 8, 4).mean((2, 4))
  hits = [min(originals, key=lambda o: np.abs(np.array(o) - im.ravel()).sum()) for im in img[:20]]
  assert all(np.abs(np.array(h) - im.ravel()).max() < 0.35 for h, im in zip(hits, img[:20]))
  assert [originals[h] for h in hits] == list(train.labels[:20])
  assert 0.0 <= train.images.min() and train.images.max() <= 1.0


def test_npz_source_scales_uint8_and_reports_bad_input(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
  np.savez(tmp_path / "d_train.npz", images=x, labels=np.arange(6))
  src = sources.get("npz", "train", path=str(tmp_path / "d_{split}.npz"), image_size=4,
                    channels=3)
  # 5x4 stored: the centre 4x4 square (rows 0..3), already at the configured size.
  np.testing.assert_array_equal(src[2]["image"], x[2, :4].astype(np.float32) / 255.0)
  assert src[5]["label"] == 5
  np.savez(tmp_path / "nolabels.npz", images=x[..., 0])
  unlabelled = sources.get("npz", "train", path=str(tmp_path / "nolabels.npz"), image_size=4,
                           channels=1)
  np.testing.assert_array_equal(unlabelled[0]["image"][..., 0], x[0, :4, :, 0] / np.float32(255))
  assert unlabelled[0]["label"] == -1
  with pytest.raises(FileNotFoundError, match="d_test.npz"):
    sources.get("npz", "test", path=str(tmp_path / "d_{split}.npz"), image_size=5, channels=3)
  with pytest.raises(ValueError, match=r"expected \(N, H, W, 1\)"):
    sources.get("npz", "train", path=str(tmp_path / "d_{split}.npz"), image_size=5, channels=1)


class _Indexed:
  """A source whose image is its own index, so batches reveal which examples they hold."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 1), i, np.float32), "label": i % 3}


def _indices(batch):
  return batch["image"][:, 0, 0, 0].astype(int).tolist()


def test_every_epoch_is_a_fresh_permutation():
  it = iter(pipeline.pretrain_dataset(_Indexed(12), global_batch_size=4, seed=3))
  epochs = [sum((_indices(next(it)) for _ in range(3)), []) for _ in range(3)]
  for e in epochs:
    assert sorted(e) == list(range(12))
  assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(12))


def test_processes_get_disjoint_slices_that_make_the_global_batch():
  one = iter(pipeline.pretrain_dataset(_Indexed(24), global_batch_size=8, seed=1))
  two = [iter(pipeline.pretrain_dataset(_Indexed(24), global_batch_size=8, seed=1,
                                        process_index=p, process_count=2)) for p in range(2)]
  for _ in range(6):   # two epochs
    g = next(one)
    p0, p1 = next(two[0]), next(two[1])
    assert not set(_indices(p0)) & set(_indices(p1))
    assert sorted(_indices(p0) + _indices(p1)) == sorted(_indices(g))
    assert sorted(p0["id"].tolist() + p1["id"].tolist()) == sorted(g["id"].tolist())
  with pytest.raises(ValueError, match="not divisible by the number of processes"):
    pipeline.pretrain_dataset(_Indexed(24), global_batch_size=9, seed=1, process_count=2)


def test_iterator_state_resumes_exactly():
  ds = pipeline.pretrain_dataset(_Indexed(10), global_batch_size=4, seed=7)
  straight = iter(ds)
  expected = [_indices(next(straight)) for _ in range(7)]
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  resumed = iter(ds)
  resumed.set_state(state)
  assert [_indices(next(resumed)) for _ in range(4)] == expected[3:]


def test_eval_batches_cover_every_example_once_in_order():
  got = [(_indices({"image": im})[:v], lab[:v].tolist(), v)
         for im, lab, v in pipeline.eval_batches(_Indexed(7), 3)]
  assert [g[0] for g in got] == [[0, 1, 2], [3, 4, 5], [6]]
  assert got[-1][2] == 1


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5])
def test_stratified_fraction_keeps_class_shares(fraction):
  y = np.repeat(np.arange(4), [100, 50, 30, 7])
  idx = labels_lib.stratified_fraction(y, fraction, seed=0)
  counts = np.bincount(y[idx], minlength=4)
  assert np.all(np.abs(counts - fraction * np.bincount(y)) <= 1)
  assert np.all(counts >= 1) and len(set(idx)) == len(idx)
  np.testing.assert_array_equal(idx, labels_lib.stratified_fraction(y, fraction, seed=0))

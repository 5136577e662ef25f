"""grain pipelines: shuffle (reshuffled every epoch), per-process shard, decode, batch, prefetch.

The pretraining stream is one infinite sequence: epoch e is a fresh permutation of the source
(grain folds the epoch into the shuffle seed). Every element carries `id`, its position in
that global sequence: the train step derives each sample's augmentation key from it, so a
sample is augmented the same way whichever process, device or batch row it lands on (that is
what makes N devices equal 1 device). Process p of P takes positions p, p+P, p+2P, ...: every
process sees a disjoint slice of every epoch, and the P per-process batches of step s together
are exactly positions [s*B, (s+1)*B) of the sequence.

Decoding (the source's `__getitem__`: file reads, normalisation, resize) runs where the
iterator runs: with `workers > 0` in grain worker processes (`mp_prefetch`: worker w builds
every `workers`-th batch, `prefetch` batches ahead), else in a background thread of this
process (`prefetch` batches ahead), overlapping the jitted step either way. Both prefetchers
are checkpointable: the iterator state in the orbax checkpoint restores the exact position.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np
from absl import flags


def _with_id(index: int, element: dict[str, Any]) -> dict[str, Any]:
  return {**element, "id": np.int64(index)}


def _as_float32(element: dict[str, Any]) -> dict[str, Any]:
  return {**element, "image": np.asarray(element["image"], np.float32),
          "label": np.int32(element["label"])}


def pretrain_dataset(source, *, global_batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1, workers: int = 0, prefetch: int = 2):
  """Infinite iterable of per-process batches {'image', 'label', 'id'} for pretraining
  (plus 'multi_hot' (B, K) when the source is multi-label, see sources/arrays.py).

  Returns a grain IterDataset; `iter()` of it gives a checkpointable DatasetIterator.
  """
  if global_batch_size % process_count:
    raise ValueError(f"train.batch_size={global_batch_size} is not divisible by the number of "
                     f"processes ({process_count})")
  if len(source) < global_batch_size:
    raise ValueError(f"{source!r} has {len(source)} examples, fewer than one global batch of "
                     f"{global_batch_size} (train.batch_size)")
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)                      # infinite; reseeds the shuffle each epoch
        .map_with_index(_with_id)
        [process_index::process_count]
        .map(_as_float32)
        .batch(global_batch_size // process_count, drop_remainder=True))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain reads absl flags when it starts workers; outside absl.app.run (notebooks,
      # pytest) they are unparsed and grain would raise. Defaults are fine.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch)))
  elif prefetch > 0:
    it_ds = grain.experimental.ThreadPrefetchIterDataset(it_ds, prefetch_buffer_size=prefetch)
  return it_ds


def eval_batches(source, batch_size: int):
  """Every element once, in order, in batches (the last one padded): (images, labels, n_valid)."""
  n = len(source)
  for start in range(0, n, batch_size):
    idx = range(start, min(start + batch_size, n))
    images = np.stack([np.asarray(source[i]["image"], np.float32) for i in idx])
    labels = np.asarray([source[i]["label"] for i in idx], np.int32)
    valid = len(images)
    if valid < batch_size:   # pad to a fixed shape: one compiled function for every batch
      pad = batch_size - valid
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], np.float32)])
      labels = np.concatenate([labels, np.full(pad, -1, np.int32)])
    yield images, labels, valid

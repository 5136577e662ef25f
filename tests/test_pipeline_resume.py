"""Exact resume across processes: iterate K batches, checkpoint (orbax: the train state and the
grain iterator in one Composite, as simclr_jax/checkpoint.py saves them), restore in a NEW
process, iterate M more: the batches equal those of K + M uninterrupted iterations, with
decoding in-process (a prefetch thread) and in 2 grain worker processes.

The two runs are this file executed as a script (grain's workers are spawned processes: the
`__main__` guard below is what keeps them from re-running it; grain spawns its workers).
"""

import os
import sys

import numpy as np
import pytest

from helpers import run_python

pytestmark = pytest.mark.slow     # runs in new processes, with grain's worker processes
K, M, BATCH, N = 3, 4, 4, 10     # 7 batches of 4 from 10 examples: crosses 2 epoch boundaries


def write_sdoml(root: str) -> None:
  """A 10-row SolarNet-layout tree; image i is a ramp offset by 20 * i G (identifies the row)."""
  os.makedirs(os.path.join(root, "Bz"), exist_ok=True)
  lines = ["path_0_before,peak_flux,datetime,split"]
  for i in range(N):
    rel = f"Bz/{i:02d}_bz.npz"
    x = np.arange(256, dtype=np.float32).reshape(16, 16) - 128.0 + 20.0 * i
    np.savez(os.path.join(root, rel), x=x)
    lines.append(f"{rel},{10.0 ** -(5 + i % 4)!r},2012-01-01 00:00:00,train")
  with open(os.path.join(root, "sdo-dataset-train.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")


def make_dataset(root: str, workers: int):
  from simclr_jax.data import pipeline, sources
  src = sources.SdomlSource(root, "train", image_size=8, channels=1,
                            thresholds=("< 1e-6", ">= 1e-6"))
  return pipeline.pretrain_dataset(src, global_batch_size=BATCH, seed=5, workers=workers,
                                   prefetch=2)


def _stack(batches):
  return {k: np.stack([b[k] for b in batches]) for k in ("image", "label", "id")}


def run(mode: str, root: str, workdir: str, out: str, workers: int) -> None:
  """'first': K batches, then save at step K; 'resume': restore, then M batches."""
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  import jax.numpy as jnp
  from simclr_jax import checkpoint

  it = iter(make_dataset(root, workers))
  state = {"params": {"w": jnp.zeros(3)}, "step": jnp.int32(0)}
  manager = checkpoint.make_manager(workdir, checkpoint_every=1, keep=2)
  if mode == "resume":
    state, step = checkpoint.restore(manager, state, it)
    assert step == K and int(state["step"]) == K, (step, state)
  batches = [next(it) for _ in range(K if mode == "first" else M)]
  if mode == "first":
    state = {"params": {"w": jnp.arange(3.0)}, "step": jnp.int32(K)}
    assert checkpoint.save(manager, K, state, it, force=True)
    manager.wait_until_finished()
  import multiprocessing
  children = len(multiprocessing.active_children())   # grain's worker processes, if any
  manager.close()
  it.close()
  np.savez(out, children=children, **_stack(batches))


def _subprocess(mode, root, workdir, out, workers):
  proc = run_python([os.path.abspath(__file__), mode, root, workdir, out, workers])
  assert proc.returncode == 0, f"{mode} (workers={workers}) failed:\n{proc.stderr[-4000:]}"
  with np.load(out) as f:
    return {k: f[k] for k in f}


def test_resume_in_a_new_process_continues_the_exact_stream(tmp_path):
  root = str(tmp_path / "sdoml")
  write_sdoml(root)
  ds = make_dataset(root, workers=0)
  it = iter(ds)
  straight = _stack([next(it) for _ in range(K + M)])
  it.close()
  ids = straight["id"].ravel().tolist()
  assert ids == list(range((K + M) * BATCH))
  # Every epoch is a permutation of the 10 rows (rows are told apart by their offset).
  # Pixel (7, 7) = mean of input rows 0-1 (flipped to the bottom), cols 14-15: -105.5 + 20 i G.
  rows = np.round((straight["image"][:, :, 7, 7, 0] * 250 + 105.5) / 20).astype(int).ravel()
  assert sorted(rows[:N].tolist()) == list(range(N))
  assert sorted(rows[N:2 * N].tolist()) == list(range(N))

  for workers in (0, 2):
    workdir = str(tmp_path / f"run_w{workers}")
    first = _subprocess("first", root, workdir, str(tmp_path / f"first_w{workers}.npz"), workers)
    resumed = _subprocess("resume", root, workdir, str(tmp_path / f"resume_w{workers}.npz"),
                          workers)
    assert int(first["children"]) == int(resumed["children"]) == workers
    for key in ("image", "label", "id"):
      np.testing.assert_array_equal(first[key], straight[key][:K], err_msg=f"{key} w{workers}")
      np.testing.assert_array_equal(resumed[key], straight[key][K:],
                                    err_msg=f"{key} after resume, workers={workers}")


if __name__ == "__main__":   # the guard grain's spawned workers need
  mode_, root_, workdir_, out_, workers_ = sys.argv[1:6]
  run(mode_, root_, workdir_, out_, int(workers_))

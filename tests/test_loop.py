"""The loop around the step: no host sync between log steps, and a second start compiles from the
persistent compilation cache."""

from __future__ import annotations

import glob
import os
import re
import threading
import traceback

import jax
import pytest

from helpers import run_python
from simclr_jax import train
from simclr_jax.configs import digits


def _tiny(steps: int, every: int):
  c = digits.get_config("tiny")
  c.train.steps = steps
  c.train.log_every = every
  c.train.checkpoint_every = every
  c.train.num_devices = 2
  return c


@pytest.fixture
def host_reads(monkeypatch):
  """Every read of a jax.Array's value by the main thread (np.asarray, float, .item,
  jax.device_get, a checkpoint's copy), and every block_until_ready, each with the number of
  train steps dispatched before it.

  jax.transfer_guard cannot show this here: on a CPU backend an array already lives in host
  memory, so the guard sees no transfer and lets every fetch through. Every fetch of a value
  does pass through the array's `_value` (or `copy_to_host_async` first), which is what is
  counted; a read means the loop waited for the step that computed the array.
  """
  from jax._src import array as jax_array
  events, steps = [], [0]
  impl = jax_array.ArrayImpl
  real_value, real_copy, real_block = impl._value, impl.copy_to_host_async, impl.block_until_ready

  def record(what):
    if threading.current_thread() is threading.main_thread():
      events.append((steps[0], what, "".join(traceback.format_stack(limit=8)[:-2])))

  def value(self):
    record("value")
    return real_value.fget(self)

  def copy(self):
    record("copy_to_host_async")
    return real_copy(self)

  def block(self):
    record("block_until_ready")
    return real_block(self)

  real_make = train.make_train_step

  def make_train_step(*args, **kwargs):
    step = real_make(*args, **kwargs)

    def counted(*a):
      out = step(*a)
      steps[0] += 1
      return out
    return counted

  monkeypatch.setattr(impl, "_value", property(value))
  monkeypatch.setattr(impl, "copy_to_host_async", copy)
  monkeypatch.setattr(impl, "block_until_ready", block)
  monkeypatch.setattr(train, "make_train_step", make_train_step)
  return events


@pytest.mark.slow        # an 8-step run on 2 devices, compiled for itself (~25 s)
def test_the_loop_reads_nothing_from_the_devices_between_log_steps(tmp_path, host_reads,
                                                                  monkeypatch):
  """8 steps logged every 4: the host reads the devices before the first step (init, the
  views grid), at the log steps 4 and 8 (metrics, finite flags) and at the steps a checkpoint
  is saved (every 4, and orbax's first save of a fresh run), and after no other step, so each
  step is dispatched while the one before still runs."""
  from simclr_jax import checkpoint
  saved, real_save = [], checkpoint.save

  def save(manager, step, *args, **kwargs):
    saved.append(step)
    return real_save(manager, step, *args, **kwargs)
  monkeypatch.setattr(checkpoint, "save", save)
  last = train.pretrain(_tiny(8, 4), str(tmp_path))
  assert last["loss"] > 0                                # the run logged real metrics
  syncs = {0, 4, 8} | set(saved)
  free = set(range(1, 9)) - syncs
  assert len(free) >= 4, (saved, free)                   # steps left to check
  at = sorted({step for step, _, _ in host_reads})
  assert 4 in at and 8 in at, at                         # the log steps do read (the test sees)
  stray = [(step, what, where) for step, what, where in host_reads if step not in syncs]
  assert not stray, f"host reads after steps {sorted({s for s, _, _ in stray})}: {stray[:2]}"


def _cache_hits(stderr: str) -> list[str]:
  return re.findall(r"Persistent compilation cache hit for '([^']+)'", stderr)


@pytest.mark.slow
def test_a_second_start_loads_the_train_step_from_the_compilation_cache(tmp_path):
  """Two processes of `simclr-jax pretrain` with the same config (the second a new run in a new
  workdir, as a sweep point or a rerun is): the first compiles and writes the cache under
  $XDG_CACHE_HOME/simclr_jax/xla, the second loads its train step and every other program
  that took a second or more to compile from there."""
  cache_home = tmp_path / "cache"
  env = {"XDG_CACHE_HOME": str(cache_home), "JAX_COMPILATION_CACHE_DIR": None,
         "JAX_LOG_COMPILES": "1"}
  runs = []
  for name in ("first", "second"):
    proc = run_python(["-m", "simclr_jax", "pretrain", "--config=digits:tiny",
                       f"--workdir={tmp_path / name}",
                       "--config.train.steps=2", "--config.train.num_devices=1"], **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs.append(proc.stderr)
  assert glob.glob(str(cache_home / "simclr_jax" / "xla" / "*train_step*")), \
      os.listdir(cache_home / "simclr_jax" / "xla")
  assert "jit_train_step" not in _cache_hits(runs[0])
  assert "jit_train_step" in _cache_hits(runs[1]), runs[1][-3000:]


def test_the_cache_can_be_turned_off_and_a_set_directory_wins(tmp_path, monkeypatch):
  from simclr_jax import startup
  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.setenv("SIMCLR_JAX_COMPILATION_CACHE", "0")
    assert startup.use_compilation_cache() == ""
    monkeypatch.delenv("SIMCLR_JAX_COMPILATION_CACHE")
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert startup.use_compilation_cache() == str(tmp_path / "mine")
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert startup.use_compilation_cache() == str(tmp_path / "xdg" / "simclr_jax" / "xla")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)

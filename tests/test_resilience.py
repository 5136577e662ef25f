"""Real processes of `simclr-jax pretrain` on the tiny digits config, interrupted in every way
docs/resuming.md promises to survive, each checked against an uninterrupted run of the same command
(the same 2 CPU devices): a SIGKILL at a random step, a SIGTERM, a truncated latest checkpoint,
and injected NaN pixels. Everything is read back from the workdirs (orbax checkpoints, event
files), nothing from the code under test.

The runs share one module fixture and a persistent XLA compilation cache: the reference runs
first and compiles; the killed, the signalled and the NaN runs then start side by side and
find its executables in the cache, and each restart starts as soon as its run has ended. Six
processes, one compile. The signalled run's restart doubles as the truncated-checkpoint case
(its last checkpoint, the one the SIGTERM saved, is truncated first), while the killed run's
restart sees exactly what the SIGKILL left.

The NaN run is this file executed as a script (see `__main__`): it wraps
`train.device_batch` to turn every pixel of chosen batches into NaN, then runs
`simclr-jax pretrain` in its process.
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, child_env

# Real processes, killed and signalled: the slow tier (the guard's own check below is not).
slow = pytest.mark.slow

STEPS = 6                     # steps of every run (the LR schedule depends on the total)
NAN_STEPS = (2, 4)            # batches turned to NaN in the NaN run, which skips 1 at most
TOOL = ["-m", "simclr_jax"]           # `python -m simclr_jax pretrain ...`


def _flags(workdir, *extra):
  """The arguments of `python` for the run: the tool, `pretrain` and its flags."""
  return [*TOOL, "pretrain", "--config", "digits:tiny",
          "--workdir", str(workdir), f"--config.train.steps={STEPS}",
          "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=10",
          "--config.train.num_devices=1", *extra]


class _Run:
  """A child `python args` with its stdout/stderr in files (no pipe to fill and block)."""

  def __init__(self, name, tmp, args, env):
    self.name, self.log = name, os.path.join(tmp, f"{name}.log")
    self._out = open(self.log, "w")
    self.proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                                 stdout=self._out, stderr=subprocess.STDOUT, text=True)

  def wait(self, timeout=400) -> int:
    try:
      rc = self.proc.wait(timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
      self._out.close()
    return rc

  @property
  def output(self) -> str:
    with open(self.log) as f:
      return f.read()


def _steps_on_disk(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait_for_checkpoint(run: _Run, workdir, step, timeout=300) -> None:
  t0 = time.time()
  while step not in _steps_on_disk(workdir):
    assert run.proc.poll() is None, f"{run.name} ended before step {step}:\n{run.output[-3000:]}"
    assert time.time() - t0 < timeout, f"{run.name}: no checkpoint {step} after {timeout} s"
    time.sleep(0.02)


def _state(workdir, step) -> dict:
  """The saved train state at `step`, as numpy, read by a fresh orbax manager (no template)."""
  import orbax.checkpoint as ocp
  import jax
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  try:
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
  finally:
    mngr.close()
  return jax.tree.map(np.asarray, state)


def _losses(workdir) -> dict[int, list[float]]:
  """{step: every loss logged for it} over all event files (a restart re-logs some steps)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tensorboard.util import tensor_util
  out = {}
  for f in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    acc = EventAccumulator(f, size_guidance={"tensors": 0})
    acc.Reload()
    for ev in acc.Tensors("loss") if "loss" in acc.Tags()["tensors"] else []:
      out.setdefault(ev.step, []).append(float(tensor_util.make_ndarray(ev.tensor_proto)))
  return out


def _assert_trees_equal(a, b, what):
  import jax
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb], what
  for (path, x), (_, y) in zip(la, lb):
    assert x.dtype == y.dtype and np.array_equal(x, y), f"{what}: {jax.tree_util.keystr(path)}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("resilience"))
  env = child_env(JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, "xla_cache"))
  wd = {n: os.path.join(tmp, n) for n in ("straight", "killed", "signalled", "nan")}
  rng = random.Random()
  # A checkpoint appears a step or two after its step ran (orbax saves in the background):
  # kill early enough that the run cannot have ended.
  kill_after, kill_delay = rng.randint(1, STEPS - 4), rng.uniform(0.0, 0.2)
  out = {"kill_after": kill_after, "kill_delay": kill_delay, "workdirs": wd}

  def finish(*runs_):
    for run in runs_:
      out[run.name] = {"rc": run.wait(), "output": run.output}

  straight = _Run("straight", tmp, _flags(wd["straight"]), env)
  # The others start once the reference has compiled (its first checkpoint exists), and so
  # find its executables in the cache; each restart as soon as its run has ended.
  _wait_for_checkpoint(straight, wd["straight"], 1)
  killed = _Run("killed", tmp, _flags(wd["killed"]), env)
  signalled = _Run("signalled", tmp, _flags(wd["signalled"]), env)
  nan = _Run("nan", tmp, [os.path.abspath(__file__), ",".join(map(str, NAN_STEPS)),
                          *_flags(wd["nan"], "--config.train.max_bad_steps=1")], env)
  _wait_for_checkpoint(signalled, wd["signalled"], 1)
  signalled.proc.send_signal(signal.SIGTERM)
  _wait_for_checkpoint(killed, wd["killed"], kill_after)
  time.sleep(kill_delay)
  killed.proc.send_signal(signal.SIGKILL)
  finish(killed)
  out["killed"]["steps"] = _steps_on_disk(wd["killed"])
  killed_again = _Run("killed_again", tmp, _flags(wd["killed"]), env)

  finish(signalled)
  out["signalled"]["steps"] = _steps_on_disk(wd["signalled"])
  out["signalled"]["losses"] = _losses(wd["signalled"])
  reached = max(out["signalled"]["steps"])
  out["signalled"]["state"] = _state(wd["signalled"], reached)
  # The signalled run's last checkpoint, truncated (its largest file cut in half): its restart
  # must fall back to the one before.
  files = [f for f in glob.glob(os.path.join(wd["signalled"], "checkpoints", str(reached),
                                             "state", "**"), recursive=True) if os.path.isfile(f)]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  out["signalled"]["truncated"] = biggest
  # And a save killed midway, as orbax leaves it: a tmp directory holding part of a step.
  tmp_dir = os.path.join(wd["signalled"], "checkpoints",
                         f"{reached + 1}.orbax-checkpoint-tmp-1796140000000000")
  shutil.copytree(os.path.join(wd["signalled"], "checkpoints", str(reached - 1), "state"),
                  os.path.join(tmp_dir, "state"), ignore=shutil.ignore_patterns("d", "ocdbt*"))
  out["signalled"]["tmp_dir"] = tmp_dir
  signalled_again = _Run("signalled_again", tmp, _flags(wd["signalled"]), env)

  finish(straight, nan, killed_again, signalled_again)
  assert out["straight"]["rc"] == 0, out["straight"]["output"][-3000:]
  return out


@slow
def test_sigkill_at_a_random_step_then_restart_is_bitwise_identical(runs):
  wd, k = runs["workdirs"], runs["kill_after"]
  where = f"(killed {runs['kill_delay']:.2f} s after checkpoint {k} appeared)"
  assert runs["killed"]["rc"] == -signal.SIGKILL, (where, runs["killed"]["output"][-2000:])
  assert k in runs["killed"]["steps"] and max(runs["killed"]["steps"]) < STEPS, (
      where, runs["killed"]["steps"])
  again = runs["killed_again"]
  assert again["rc"] == 0, again["output"][-3000:]
  if "does not restore" not in again["output"]:    # (a kill inside orbax's final rename)
    assert f"at step {max(runs['killed']['steps'])}" in again["output"], where
  assert _steps_on_disk(wd["killed"])[-1] == STEPS
  _assert_trees_equal(_state(wd["killed"], STEPS), _state(wd["straight"], STEPS),
                      f"final state {where}")
  ref, got = _losses(wd["straight"]), _losses(wd["killed"])
  assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1)), (where, sorted(got))
  for step, values in got.items():
    assert values == [ref[step][0]] * len(values), (where, step, values, ref[step])


@slow
def test_sigterm_saves_the_step_reached_and_exits_0(runs):
  wd, sig = runs["workdirs"], runs["signalled"]
  assert sig["rc"] == 0, sig["output"][-3000:]
  reached = max(sig["steps"])
  assert reached < STEPS, f"the run ended (step {reached}) before the signal: no test"
  assert f"preempted at step {reached}: checkpoint saved" in sig["output"]
  # The writers were flushed: every step up to the one saved was logged, and none after it.
  assert sorted(sig["losses"]) == list(range(1, reached + 1))
  ref = _losses(wd["straight"])
  assert {s: v[0] for s, v in sig["losses"].items()} == {s: ref[s][0] for s in sig["losses"]}
  # The checkpoint holds the state of that step, bit for bit the uninterrupted run's.
  assert int(sig["state"]["step"]) == reached
  _assert_trees_equal(sig["state"], _state(wd["straight"], reached), f"state at {reached}")


@slow
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(runs):
  # The signalled run's last checkpoint (step `reached`) had a file truncated before its restart,
  # and an unfinished save of the next step was left beside it.
  wd, sig, again = runs["workdirs"], runs["signalled"], runs["signalled_again"]
  reached = max(sig["steps"])
  assert again["rc"] == 0, again["output"][-3000:]
  out = again["output"]
  assert f"checkpoint step {reached} in" in out and "does not restore" in out, out[-3000:]
  assert f"Resuming from {os.path.join(wd['signalled'], 'checkpoints')} at step " \
      f"{reached - 1}" in out
  assert not os.path.exists(sig["tmp_dir"])                  # the unfinished save, cleaned up
  # The bad step is kept aside, not deleted, and a good one of that number replaced it.
  aside = os.path.join(wd["signalled"], "checkpoints_corrupt", str(reached))
  assert os.path.isfile(sig["truncated"].replace(
      os.path.join(wd["signalled"], "checkpoints", str(reached)), aside))
  assert _steps_on_disk(wd["signalled"]) == list(range(1, STEPS + 1))
  _assert_trees_equal(_state(wd["signalled"], STEPS), _state(wd["straight"], STEPS),
                      "final state after the fallback")
  ref, got = _losses(wd["straight"]), _losses(wd["signalled"])
  assert sorted(got) == list(range(1, STEPS + 1))
  for step, values in got.items():
    assert values == [ref[step][0]] * len(values), (step, values, ref[step])


@slow
def test_nan_stops_the_run_naming_the_step_and_keeps_good_checkpoints(runs):
  wd, nan = runs["workdirs"], runs["nan"]
  skipped, fatal = NAN_STEPS
  out = nan["output"]
  assert nan["rc"] not in (0, None), out[-3000:]
  # NaN pixels: a NaN gradient (the loss may stay finite: nothing guarantees it is NaN).
  assert re.search(rf"non-finite (loss|gradient) at step {skipped} .*update skipped \(1 of", out)
  assert re.search(rf"FloatingPointError: non-finite (loss|gradient) at step {fatal} ", out), (
      out[-3000:])
  # Nothing from the failing step on was saved; every checkpoint restores, finite.
  assert _steps_on_disk(wd["nan"]) == list(range(1, fatal))
  states = {s: _state(wd["nan"], s) for s in range(1, fatal)}
  for s, st in states.items():
    assert all(np.isfinite(x).all() for x in jax_leaves(st) if x.dtype.kind == "f"), s
  # Before the first NaN: the clean run's state, bit for bit.
  _assert_trees_equal(states[skipped - 1], _state(wd["straight"], skipped - 1), "before NaN")
  # The skipped step changed nothing but the step count.
  before, after = dict(states[skipped - 1]), dict(states[skipped])
  assert int(before.pop("step")) + 1 == int(after.pop("step"))
  _assert_trees_equal(after, before, "the skipped step")
  # The step after it trained again.
  assert not np.array_equal(jax_leaves(states[skipped + 1]["params"])[0],
                            jax_leaves(states[skipped]["params"])[0])


@slow
def test_a_second_signal_exits_at_once():
  """The first SIGINT only asks to stop (the loop would save and exit 0); a second signal, here
  a SIGTERM during a long sleep, ends the process at once by the signal's default action."""
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "signals"], cwd=ROOT,
                          env=child_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == f"stop requested by {int(signal.SIGINT)}"
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(30)
    assert rc == -signal.SIGTERM and time.time() - t0 < 10, rc
    assert proc.stdout.read() == ""                 # nothing after the sleep ran
  finally:
    if proc.poll() is None:
      proc.kill()


def test_max_bad_steps_0_stops_at_the_first_non_finite_flag():
  from simclr_jax.configs import default
  from simclr_jax import guards

  class Checkpoints:
    directory = "/nowhere/checkpoints"

    def latest_step(self):
      return 8

  assert default.get_config().train.max_bad_steps == 0
  check = guards.FiniteCheck(0, Checkpoints())
  check.add(8, {"finite": np.bool_(True), "loss": np.float32(4.1), "l2_grads": np.float32(2.0)})
  check()                                           # finite: nothing happens
  check.add(9, {"finite": np.bool_(True), "loss": np.float32(4.0), "l2_grads": np.float32(2.0)})
  check.add(10, {"finite": np.bool_(False), "loss": np.float32(np.inf),
                 "l2_grads": np.float32(np.nan)})
  with pytest.raises(FloatingPointError, match=r"non-finite loss at step 10 \(loss inf.*"
                     r"no state from step 10 on was saved; the last checkpoint is step 8"):
    check()
  with pytest.raises(ValueError, match="train.max_bad_steps=-1"):
    guards.FiniteCheck(-1, Checkpoints())


def _signals_child():
  from simclr_jax import guards
  before = {s: signal.getsignal(s) for s in guards.StopSignals.SIGNALS}
  with guards.StopSignals():
    pass
  assert {s: signal.getsignal(s) for s in before} == before     # put back on exit
  with guards.StopSignals() as signals:
    print("ready", flush=True)
    while signals.signum is None:
      time.sleep(0.01)
    print(f"stop requested by {signals.signum}", flush=True)
    time.sleep(60)
    print("the sleep ended", flush=True)


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


if __name__ == "__main__" and sys.argv[1] == "signals":
  _signals_child()
elif __name__ == "__main__":
  # The NaN run: python tests/test_resilience.py STEP[,STEP...] <_flags(...)>
  nan_at = {int(s) for s in sys.argv[1].split(",")}
  assert sys.argv[2:4] == TOOL, sys.argv
  command = sys.argv[4:]                            # pretrain and its flags
  sys.path.insert(0, ROOT)
  from simclr_jax import cli, train
  real_device_batch, batches = train.device_batch, [0]

  def device_batch(mesh, batch):
    batches[0] += 1
    if batches[0] in nan_at:
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return real_device_batch(mesh, batch)

  train.device_batch = device_batch
  sys.exit(cli.main(command))

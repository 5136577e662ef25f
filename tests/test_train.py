"""End-to-end pretraining on the tiny digits config: checkpoints, event files, exact resume."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import hparams, run_python, scalars, tiny_run_config
from simclr_jax import train
from simclr_jax import state as state_lib
from simclr_jax.configs import digits


def _config(steps):
  c = digits.get_config("tiny")
  c.train.steps = steps
  return c


def _params(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return jax.tree.map(np.asarray, state["params"]), int(state["step"])


@pytest.fixture(scope="module")
def runs(tiny_run, tiny_run_after_crash, tmp_path_factory):
  """The session's tiny run (tests/conftest.py): 3 steps, killed right after its step-2
  checkpoint (the workdir as the kill left it: tiny_run_after_crash), then started again with
  the same command; and the same 3-step run uninterrupted (its step program comes from the
  session's compilation cache)."""
  straight = str(tmp_path_factory.mktemp("straight"))
  last = train.pretrain(tiny_run_config(3, evaluate=False), straight)
  after_crash = tiny_run_after_crash
  return dict(interrupted=tiny_run, straight=straight, last=last,
              steps_after_crash=sorted(int(p) for p in os.listdir(
                  os.path.join(after_crash, "checkpoints")) if p.isdigit()),
              after_crash=after_crash, events_after_crash=scalars(after_crash))


def test_killed_run_left_checkpoint_and_events(runs):
  assert 2 in runs["steps_after_crash"] and 3 not in runs["steps_after_crash"]
  params, step = _params(runs["after_crash"], 2)
  assert step == 2
  ev = runs["events_after_crash"]
  for tag in ("loss", "contrastive_accuracy", "learning_rate", "images_per_sec", "l2_grads"):
    assert set(ev[tag]) == {1, 2}, tag
  # The augmentation grid (original | view 1 | view 2) is logged once, as a PNG, at step 0.
  (png,) = [v for v in ev["augment/views"].values()]
  assert png.dtype == object and bytes(png[-1]).startswith(b"\x89PNG")
  # Learning rate logged at step s is the schedule at s-1: linear warm-up from 0 to
  # base_lr * B / 256 over round(warmup_epochs * steps_per_epoch) steps, at most the run's 3.
  c = tiny_run_config(3, evaluate=False)
  peak = c.optim.base_lr * c.train.batch_size / 256
  warmup = min(round(c.optim.warmup_epochs * (1437 // c.train.batch_size)), 3)
  assert ev["learning_rate"][1] == pytest.approx(0.0, abs=1e-12)
  assert ev["learning_rate"][2] == pytest.approx(peak / warmup, rel=1e-5)
  # NT-Xent of an untrained model on 2B = 64 views is near log(2B - 1) ('loss' adds the
  # online head's cross-entropy).
  assert abs(ev["contrastive_loss"][1] - np.log(2 * c.train.batch_size - 1)) < 0.5
  # The config in TensorBoard's HParams tab, flat: runs compare field by field.
  hp = hparams(runs["interrupted"])
  assert hp["optim.name"] == c.optim.name and hp["train.batch_size"] == c.train.batch_size
  assert hp["loss.temperature"] == pytest.approx(c.loss.temperature)
  assert hp["model.backbone"] == "resnet18" and hp["augment.preset"] == c.augment.preset


def test_restarted_run_resumes_exactly(runs):
  resumed, straight = scalars(runs["interrupted"]), scalars(runs["straight"])
  assert set(resumed["loss"]) == {1, 2, 3}
  assert straight["loss"][3] == pytest.approx(runs["last"]["loss"], rel=1e-6)
  for tag in ("loss", "contrastive_accuracy", "learning_rate", "l2_grads"):
    assert resumed[tag][3] == pytest.approx(straight[tag][3], rel=1e-5), tag
  p_resumed, s1 = _params(runs["interrupted"], 3)
  p_straight, s2 = _params(runs["straight"], 3)
  assert s1 == s2 == 3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               p_resumed, p_straight)


def test_batch_size_not_divisible_by_devices_is_refused():
  c = _config(1)
  c.train.batch_size = 12
  with pytest.raises(ValueError, match=r"batch_size=12 .* number of devices \(8\)"):
    state_lib.build(c, 1437)


@pytest.mark.slow
def test_unknown_config_key_is_refused():
  proc = run_python(["-m", "simclr_jax", "pretrain", "--config", "digits",
                     "--workdir", "/nonexistent", "--config.train.bacth_size=3"], timeout=120)
  assert proc.returncode != 0
  assert "bacth_size" in proc.stderr


def test_without_workdir_the_run_goes_to_runs_config_variant_timestamp(tmp_path, monkeypatch,
                                                                      capsys):
  """`--workdir` is optional: runs/<config name>-<variant>-<YYYYmmdd-HHMMSS> under the working
  directory, printed at the start (a run of 0 steps: the naming is what is under test)."""
  import datetime as dt
  import re

  from helpers import command
  monkeypatch.chdir(tmp_path)
  before = dt.datetime.now().replace(microsecond=0)
  code = command("pretrain").run_cli(["simclr-jax pretrain", "--config=digits:tiny",
                                      "--config.train.epochs=0", "--config.train.steps=0",
                                      "--config.train.num_devices=1"])
  after = dt.datetime.now()
  assert code == 0
  (line,) = [l for l in capsys.readouterr().out.splitlines() if l.startswith("workdir: ")]
  m = re.fullmatch(r"workdir: runs/digits-tiny-(\d{8}-\d{6})", line)
  assert m, line
  assert before <= dt.datetime.strptime(m.group(1), "%Y%m%d-%H%M%S") <= after
  assert os.listdir(tmp_path / "runs") == [line.split("/", 1)[1]]
  assert os.path.exists(tmp_path / line.removeprefix("workdir: ") / "config.json")

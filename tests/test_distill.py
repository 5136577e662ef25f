"""SimCLR v2 self-distillation (simclr_jax/distillation.py) on the session's tiny run, fine-tuned for
real: the loss against NumPy, the exact resume after a kill, the bad inputs refused in one line."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import ROOT, child_env, tiny_run_config
from simclr_jax import augment, distillation, finetuning, parallel, validate
from simclr_jax.data import sources


def _config():
  """The tiny run's config (its checkpoints restore into it), fine-tuned for one epoch on 10 %
  of the labels; a student half as wide as the teacher, 6 steps, a checkpoint every 2."""
  c = tiny_run_config(3, evaluate=False)
  c.finetune.epochs = 1
  c.finetune.batch_size = 16
  c.finetune.label_fractions = (0.1,)
  c.finetune.baseline = False
  c.distill.steps = 6
  c.distill.batch_size = 32
  c.distill.checkpoint_every = 2
  c.distill.keep_checkpoints = 5
  c.distill.log_every = 1
  c.distill.student.width_multiplier = 0.0625
  return c


@pytest.fixture(scope="module")
def finetuned(tiny_run, tmp_path_factory):
  """A copy of the session's tiny run, fine-tuned (finetune.json and the saved teacher)."""
  workdir = str(tmp_path_factory.mktemp("distill") / "run")
  shutil.copytree(tiny_run, workdir)
  finetuning.finetune(workdir, _config())
  return workdir


def _copy(finetuned, path) -> str:
  shutil.copytree(finetuned, path)
  return str(path)


def _report(workdir) -> dict:
  with open(os.path.join(workdir, "finetune.json")) as f:
    return json.load(f)


# --- the loss ------------------------------------------------------------------------------------

def _numpy_soft_cross_entropy(student, teacher, tau):
  """-sum_y P_T(y|x; tau) log P_S(y|x; tau), P = softmax(logits / tau): float64, by hand."""
  student, teacher = np.asarray(student, np.float64) / tau, np.asarray(teacher, np.float64) / tau
  p_teacher = np.exp(teacher - teacher.max(1, keepdims=True))
  p_teacher /= p_teacher.sum(1, keepdims=True)
  shifted = student - student.max(1, keepdims=True)
  log_p_student = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  return -(p_teacher * log_p_student).sum(1)


@pytest.mark.parametrize("tau", [0.1, 1.0, 4.0])
def test_distill_loss_is_numpy_cross_entropy_of_the_softened_logits_in_float64(tau):
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(0, 3, (64, 10)), rng.normal(0, 3, (64, 10))
  with jax.enable_x64(True):
    loss = distillation.distill_loss(student, teacher, tau)
    grads = jax.grad(lambda s, t: distillation.distill_loss(s, t, tau).sum(), argnums=(0, 1))(
        student, teacher)
  assert loss.dtype == np.float64
  np.testing.assert_allclose(loss, _numpy_soft_cross_entropy(student, teacher, tau),
                             rtol=1e-12, atol=0)
  # Its gradient: (P_S - P_T) / tau for the student, none for the teacher.
  p = lambda x: np.exp(x / tau) / np.exp(x / tau).sum(1, keepdims=True)
  np.testing.assert_allclose(grads[0], (p(student) - p(teacher)) / tau, rtol=1e-9, atol=1e-15)
  assert not np.any(grads[1])


def test_the_steps_loss_is_numpy_cross_entropy_of_the_two_networks_logits(finetuned):
  """The jitted step's loss for a batch: the NumPy formula over the logits teacher and student
  give for the same augmented views (computed here by modules of their own, outside the step),
  plus label_weight x the labelled examples' cross-entropy summed over the batch / its size."""
  config = _config()
  config.distill.temperature, config.distill.label_weight = 2.5, 0.5
  report = _report(finetuned)
  dist = distillation.build(config, report, 1437)
  teacher_vars = finetuning.load_model(os.path.join(finetuned, report["results"][0]["model"]),
                                       dist.teacher.abstract())
  state = dist.init_state()
  src = sources.make_source(config.data, "train")
  images = np.stack([src[i]["image"] for i in range(32)]).astype(np.float32)
  ids = np.arange(100, 132, dtype=np.int32)           # positions in the data stream
  labels = np.where(np.arange(32) % 3 == 0, src.labels[:32], -1).astype(np.int32)
  keys, _ = augment.view_keys(dist.augment_key, ids.astype(np.uint32))
  views = jax.jit(augment.augment_batch, static_argnums=0)(
      finetuning.geometric_augment(config), keys, images)
  # Fresh modules without a mesh axis (one device: the batch's statistics are the mesh's).
  teacher = finetuning.Classifier(**{k: getattr(dist.teacher.model, k) for k in (
      "model_cfg", "num_outputs", "head_hidden", "head_dropout", "from_projection")})
  student = finetuning.Classifier(dist.student.model.model_cfg, 10)
  t = jax.jit(lambda v, x: teacher.apply(v, x, train=False, bn_train=False))(
      jax.device_get(teacher_vars), views)
  s, _ = jax.jit(lambda v, x: student.apply(v, x, train=True, bn_train=True,
                                            mutable=["batch_stats"]))(
      {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)},
      views)
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  soft = _numpy_soft_cross_entropy(s, t, 2.5).mean()
  log_p = s - s.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  hard = -sum(log_p[i, labels[i]] for i in range(32) if labels[i] >= 0) / 32
  batch = parallel.host_to_global(dist.mesh, {"image": images, "label": labels, "id": ids})
  _, metrics = dist.step(state, teacher_vars, batch)
  assert float(metrics["distill_loss"]) == pytest.approx(soft, rel=2e-5)
  assert float(metrics["label_loss"]) == pytest.approx(hard, rel=2e-5)
  assert float(metrics["loss"]) == pytest.approx(soft + 0.5 * hard, rel=2e-5)


# --- exact resume ------------------------------------------------------------------------------

class Killed(RuntimeError):
  pass


def _kill_at_batch(monkeypatch, n):
  """The run dies as it asks for its n-th batch: steps 1..n-1 done, a checkpoint in flight."""
  real, calls = parallel.host_to_global, []

  def host_to_global(mesh, batch):
    calls.append(1)
    if len(calls) == n:
      raise Killed(f"killed before step {n}")
    return real(mesh, batch)
  monkeypatch.setattr(parallel, "host_to_global", host_to_global)


def _saved(workdir, step):
  """A student's checkpoint as numpy, read by orbax alone (no template, no project code)."""
  d = os.path.join(workdir, "distill", "pretrained_0.1_resnet18_x0.0625", "checkpoints")
  mngr = ocp.CheckpointManager(d, item_names=("state",))
  try:
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    mngr.close()
  return jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, state["state"]))


def _steps(workdir):
  d = os.path.join(workdir, "distill", "pretrained_0.1_resnet18_x0.0625", "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def test_a_killed_distillation_restarted_ends_with_exactly_the_uninterrupted_parameters(
    finetuned, tmp_path, monkeypatch):
  straight, killed = _copy(finetuned, tmp_path / "straight"), _copy(finetuned, tmp_path / "k")
  ref = distillation.distill(straight, _config())
  with monkeypatch.context() as m:
    _kill_at_batch(m, 6)                     # after step 5: the last checkpoint is step 4
    with pytest.raises(Killed):
      distillation.distill(killed, _config())
  assert _steps(killed) == [1, 2, 4]           # (orbax saves the first step too)
  out = distillation.distill(killed, _config())
  assert out["results"][0]["resumed_from_step"] == 4
  assert _steps(killed) == _steps(straight) == [1, 2, 4, 6]
  a, b = _saved(straight, 6), _saved(killed, 6)
  assert [p for p, _ in a] == [p for p, _ in b]
  for (path, x), (_, y) in zip(a, b):      # params, batch_stats, optimizer state, step
    assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)
  assert out["results"][0]["test_accuracy"] == ref["results"][0]["test_accuracy"]
  # Done: a third start redoes nothing (reads result.json) ...
  monkeypatch.setattr(distillation.Distiller, "fit", lambda *a, **k: pytest.fail("fit again"))
  again = distillation.distill(killed, _config())
  assert again["results"] == out["results"]
  # ... and a config the checkpoints were not made with is refused, naming the field.
  other = _config()
  other.distill.temperature = 2.0
  with pytest.raises(validate.ConfigError, match=r"^cannot resume .*distill.pretrained_0.1_resnet18_x0.0625: "
                     r".*\(distill\.temperature: saved 1\.0, new 2\.0\); set the fields back"):
    distillation.distill(killed, other)
  table = open(os.path.join(killed, "distill.md")).read()
  r = out["results"][0]
  assert f"| 10% | {r['teacher_test_accuracy']:.4f} | {r['test_accuracy']:.4f} |" in table
  saved = json.load(open(os.path.join(killed, "distill.json")))
  assert saved == json.loads(json.dumps(again))
  # The teacher scored here is the one fine-tuning scored: it was saved and read back whole.
  assert r["teacher_test_accuracy"] == _report(finetuned)["results"][0]["test_accuracy"]
  assert saved["student_model"]["parameters"] < saved["teacher_model"]["parameters"]


# --- bad input: one line, before anything compiles ----------------------------------------------

def _bad(config, workdir, monkeypatch):
  monkeypatch.setattr(finetuning, "Trainer", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises(validate.ConfigError) as e:
    distillation.distill(workdir, config)
  message = str(e.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("field, value, expected", [
    ("distill.temperature", 0.0, r"^distill\.temperature=0\.0: expected a finite number > 0$"),
    ("distill.temperature", -1.0, r"^distill\.temperature=-1\.0: expected a finite number > 0"),
    ("distill.student.backbone", "resnet7",
     r"^distill\.student\.backbone='resnet7': expected '' \(model\.backbone\) or one of resnet18"),
    ("distill.label_fractions", (0.5,),
     r"^distill\.label_fractions=\(0\.5,\): expected fractions with a fine-tuned 'pretrained' "
     r"model in .*finetune\.json: \[0\.1\]$"),
    ("distill.teacher", "scratch", r"^distill\.teacher='scratch': expected an init finetune\."
     r"json has a model of: pretrained$"),
    ("distill.batch_size", 5000, r"^distill\.batch_size=5000: expected <= 1437"),
])
def test_bad_fields_are_one_line_naming_the_field(finetuned, monkeypatch, field, value,
                                                 expected):
  config = _config()
  *groups, name = field.split(".")
  node = config
  for group in groups:
    node = node[group]
  with node.ignore_type():
    node[name] = value
  assert re.search(expected, _bad(config, finetuned, monkeypatch))


def test_a_workdir_without_a_teacher_is_one_line(finetuned, tmp_path, monkeypatch):
  workdir = _copy(finetuned, tmp_path / "run")
  os.remove(os.path.join(workdir, "finetune.json"))
  assert _bad(_config(), workdir, monkeypatch).startswith(
      f"no {workdir}/finetune.json: distillation needs a fine-tuned teacher; run `simclr-jax "
      f"finetune --workdir {workdir}` first")
  report = _report(finetuned)
  for row in report["results"]:
    del row["model"]                         # a finetune.json from before models were saved
  with open(os.path.join(workdir, "finetune.json"), "w") as f:
    json.dump(report, f)
  assert "names no saved model" in _bad(_config(), workdir, monkeypatch)
  shutil.copy(os.path.join(finetuned, "finetune.json"), workdir)
  shutil.rmtree(os.path.join(workdir, "finetune"))
  assert _bad(_config(), workdir, monkeypatch).endswith(
      "pretrained_0.1: the teacher finetune.json names is not there; run `simclr-jax finetune "
      f"--workdir {workdir}` again")


def test_every_distill_field_has_a_rule():
  from flax import traverse_util
  from simclr_jax.configs import default
  flat = traverse_util.flatten_dict(default.get_config().distill.to_dict(), sep=".")
  assert sorted(f"distill.{k}" for k in flat) == sorted(distillation.RULES)


# --- the command, killed for real (slow: processes) --------------------------------------------

@pytest.mark.slow
def test_simclr_jax_distill_sigkilled_then_rerun_ends_bitwise_equal(finetuned, tmp_path):
  """`simclr-jax distill` in a child process, SIGKILLed once its step-3 checkpoint is on disk,
  then the same command again: the same student, bitwise, as an uninterrupted command's."""
  flags = ["--config.distill.steps=12", "--config.distill.batch_size=32",
           "--config.distill.checkpoint_every=1", "--config.distill.keep_checkpoints=20",
           "--config.distill.student.width_multiplier=0.0625", "--config.train.num_devices=1"]
  env = child_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"))
  command = lambda wd: [sys.executable, "-m", "simclr_jax", "distill", f"--workdir={wd}", *flags]
  straight, killed = _copy(finetuned, tmp_path / "straight"), _copy(finetuned, tmp_path / "k")
  proc = subprocess.run(command(straight), cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "teacher accuracy" in proc.stdout and "student accuracy" in proc.stdout, proc.stdout
  with open(tmp_path / "killed.log", "w") as log:
    child = subprocess.Popen(command(killed), cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
      t0 = time.time()
      while not (os.path.isdir(os.path.join(killed, "distill", "pretrained_0.1_resnet18_x0.0625", "checkpoints"))
                 and 3 in _steps(killed)):
        assert child.poll() is None and time.time() - t0 < 300, open(tmp_path / "killed.log").read()
        time.sleep(0.02)
      child.send_signal(signal.SIGKILL)
      assert child.wait(60) == -signal.SIGKILL
    finally:
      if child.poll() is None:
        child.kill()
  assert max(_steps(killed)) < 12
  proc = subprocess.run(command(killed), cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(os.path.join(killed, "distill.json")))["results"][0][
      "resumed_from_step"] >= 3
  a, b = _saved(straight, 12), _saved(killed, 12)
  for (path, x), (_, y) in zip(a, b):
    assert np.array_equal(x, y), jax.tree_util.keystr(path)

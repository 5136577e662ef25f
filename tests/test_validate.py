"""Bad inputs refused before anything compiles or writes, one line each; resumes checked.

Most inputs go through `simclr-jax pretrain`'s `run_cli` in this process (flags parsed as on
the command line, stderr captured); a few through a real `python -m simclr_jax pretrain` and
`linear-eval` for the exit code and the absence of a traceback.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest
from flax import traverse_util

from helpers import command, run_python
from simclr_jax import resume, train, validate
from simclr_jax.configs import default, digits

CONFIG = "digits:tiny"
pretrain_command = command("pretrain")


def _cli(capsys, workdir, *overrides):
  code = pretrain_command.run_cli(["simclr-jax pretrain", "--config", CONFIG, "--workdir",
                                   str(workdir), *overrides])
  err = capsys.readouterr().err
  return code, [line for line in err.splitlines() if line.startswith("error: ")], err


def _npz(path, images, labels=None):
  arrays = {"images": images}
  if labels is not None:
    arrays["labels"] = labels
  np.savez(path, **arrays)
  return str(path)


def _tiny(**fields):
  c = digits.get_config("tiny")
  for path, value in fields.items():
    group, _, name = path.rpartition(".")
    node = c
    for part in filter(None, group.split(".")):
      node = node[part]
    with node.ignore_type():
      node[name] = value
  return c


# (overrides, regex of the one error line); each checked by `test_refused`.
REFUSED = {
    "features_unknown": (["--config.eval.features=h+s5_2x2"],
                         r"eval\.features='h\+s5_2x2': expected names of h, head1, s4_2x2, "
                         r"s3_2x2 joined by '\+', each once"),
    "temperature_0": (["--config.loss.temperature=0"],
                      r"loss\.temperature=0\.0: expected a finite number > 0"),
    "temperature_negative": (["--config.loss.temperature=-1"],
                             r"loss\.temperature=-1\.0: expected a finite number > 0"),
    "crop_scale_above_1": (["--config.augment.crop_scale=(0.5, 1.5)"],
                           r"augment\.crop_scale=\(0\.5, 1\.5\): expected \(lo, hi\) area "
                           r"fractions with 0 < lo <= hi <= 1"),
    "crop_below_a_pixel": (["--config.augment.crop_scale=(0.001, 1.0)"],
                           r"augment\.crop_scale=\(0\.001, 1\.0\): expected lo >= 0\.0039.* "
                           r"data\.image_size=16"),
    "image_size_0": (["--config.data.image_size=0"],
                     r"data\.image_size=0: expected an integer >= 1"),
    "image_size_below_stride": (["--config.data.image_size=4"],
                                r"data\.image_size=4: expected an integer >= 8 for "
                                r"model\.backbone='resnet18'"),
    "batch_size_0": (["--config.train.batch_size=0"],
                     r"train\.batch_size=0: expected an integer >= 1"),
    "batch_not_divisible": (["--config.train.batch_size=12"],
                            r"train\.batch_size=12 is not divisible by the number of devices "
                            r"\(8\); use a multiple of 8"),
    "batch_above_split": (["--config.train.batch_size=2048"],
                          r"train\.batch_size=2048: expected <= 1437, the number of examples"),
    "unknown_optimizer": (["--config.optim.name=rmsprop"],
                          r"optim\.name='rmsprop': expected one of adam, adamw, sgd, lars"),
    "unknown_preset": (["--config.augment.preset=simclr_v9"],
                       r"augment\.preset='simclr_v9' unknown; presets: \[.*'simclr'"),
    "unknown_source": (["--config.data.source=imagenet"],
                       r"data\.source='imagenet': expected one of digits, npz, .*folder"),
    "rgb_op_on_1_channel": (["--config.augment.color_prob=0.8"],
                            r"augment: color_jitter is RGB-only \(needs 3 channels\) but "
                            r"channels=1 .*set augment\.color_prob=0\.0"),
    "num_devices_above_count": (["--config.train.num_devices=16"],
                                r"train\.num_devices=16 but only 8 devices exist"),
    "negative_epochs": (["--config.train.epochs=-1"],
                        r"train\.epochs=-1: expected an integer >= 0"),
    "keep_checkpoints_0": (["--config.train.keep_checkpoints=0"],
                           r"train\.keep_checkpoints=0: expected an integer >= 1"),
    "value_range_reversed": (["--config.data.value_range=(1.0, 0.0)"],
                             r"data\.value_range=\(1\.0, 0\.0\): expected None or \(lo, hi\) "
                             r"with lo < hi"),
    "unknown_split": (["--config.data.train_split=validation"],
                      r"data\.source='digits'.*digits: unknown split 'validation'; expected "
                      r"'train', 'test' or 'all'"),
    "non_numeric": (["--config.train.batch_size=abc"],
                    r"flag --config\.train\.batch_size=abc: invalid literal for int\(\)"),
    "unknown_key": (["--config.train.bacth_size=3"],
                    r"config\.train\.bacth_size: no such config field; did you mean "
                    r"'batch_size'\?"),
    "thresholds_vs_classes": (["--config.data.label_thresholds=('< 1e-6', '>= 1e-6')"],
                              r"data\.num_classes=10: expected 2, the number of classes "
                              r"data\.label_thresholds="),
    "classes_below_labels": (["--config.data.num_classes=5"],
                             r"data\.num_classes=5: expected >= 10: .* labels up to 9"),
    "patience_without_eval": (["--config.train.patience=3"],
                              r"train\.patience=3: expected 0 when eval\.every_epochs=0"),
    "stray_argument": (["extra"], r"unexpected arguments: \['extra'\]"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(name, tmp_path, capsys):
  overrides, pattern = REFUSED[name]
  workdir = tmp_path / "run"
  code, errors, err = _cli(capsys, workdir, *overrides)
  assert code == 2, err
  assert len(errors) == 1 and "Traceback" not in err, err
  assert "config:" not in err, "the config is dumped only once it is valid"
  assert re.search(pattern, errors[0]), errors[0]
  assert not workdir.exists()


NPZ = {
    "missing": (lambda d: str(d / "missing.npz"), r"no data at .*missing\.npz \(split 'train'\)"),
    "corrupt": (lambda d: (d / "bad.npz").write_bytes(b"not a zip") and str(d / "bad.npz"),
                r"bad\.npz: cannot read as \.npz"),
    "labels_mismatch": (lambda d: _npz(d / "m.npz", np.zeros((40, 16, 16), np.uint8),
                                       np.zeros(39, np.int64)),
                        r"40 images but labels of shape \(39,\)"),
    "channels_mismatch": (lambda d: _npz(d / "rgb.npz", np.zeros((40, 16, 16, 3), np.uint8)),
                          r"images have shape \(40, 16, 16, 3\); expected \(N, H, W, 1\)"),
}


@pytest.mark.parametrize("name", sorted(NPZ))
def test_bad_npz_refused(name, tmp_path, capsys):
  make, pattern = NPZ[name]
  path = make(tmp_path)
  workdir = tmp_path / "run"
  code, errors, err = _cli(capsys, workdir, "--config.data.source=npz",
                           f"--config.data.path={path}", "--config.data.num_classes=0")
  assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
  assert re.search(r"data\.source='npz' data\.path=.*" + pattern, errors[0]), \
      errors[0]
  assert not workdir.exists()


def test_small_npz_is_resized_to_image_size(tmp_path):
  """A fine input, documented (docs/resuming.md): every source
  resizes to data.image_size as it reads, so a 16x16 npz at image_size=32 is upsampled."""
  path = _npz(tmp_path / "small.npz", np.random.default_rng(0).integers(
      0, 255, (40, 16, 16), np.uint8), np.arange(40) % 10)
  c = _tiny(**{"data.source": "npz", "data.path": path, "data.image_size": 32})
  source = validate.check(c)
  assert source[0]["image"].shape == (32, 32, 1)
  assert validate.opened_source(c) is source and validate.opened_source(c) is None


def test_every_default_field_has_a_rule():
  """Each field of simclr_jax/configs/default.py is checked: by RULES, by the augment schema, by its
  source (data.<source>.*), or is a deprecated flat name (simclr_jax/data/sources/legacy.py)."""
  from simclr_jax.data import sources
  flat = traverse_util.flatten_dict(default.get_config().to_dict(), sep=".")
  # distill.*: simclr_jax/distillation.py's RULES, checked by `simclr-jax distill`
  # (tests/test_distill.py: test_every_distill_field_has_a_rule).
  exempt = ("augment.", "distill.") + tuple(f"data.{s}." for s in sources.SOURCES)
  unchecked = [k for k in flat if k not in validate.RULES and not k.startswith(exempt)
               and k.removeprefix("data.") not in sources.legacy.RENAMED]
  assert not unchecked


def test_every_config_file_passes():
  from simclr_jax.configs import cifar10, sdo, sdobenchmark, sentinel2
  for module in (default, digits, cifar10, sdo, sdobenchmark, sentinel2):
    for variant in ((None, "tiny") if module is not default else (None,)):
      c = module.get_config(variant)
      validate.check_fields(c)
      validate.check_cross(c, "pretrain")


def test_allowed_changes_are_listed_and_others_refused():
  saved = json.loads(_tiny().to_json_best_effort())
  c = _tiny(**{"train.steps": 10, "data.workers": 2, "eval.knn_k": 5,
               "augment.crop_scale": (0.5, 1.0)})      # digits' own value: no change
  refused, allowed = resume.compare(saved, c)
  assert not refused
  assert [f for f, _, _ in allowed] == ["data.workers", "eval.knn_k", "train.steps"]
  c = _tiny(**{"seed": 1, "optim.base_lr": 1.0, "augment.blur_prob": 0.1})
  refused, _ = resume.compare(saved, c)
  assert [(f, old, new) for f, old, new in refused] == [
      ("augment.blur_prob", 0.5, 0.1), ("optim.base_lr", 6.0, 1.0), ("seed", 42, 1)]


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
  """The session's tiny run (tests/conftest.py), copied (a resume that is not refused writes
  into it), and the overrides of `--config digits:tiny` that give its config."""
  workdir = tmp_path_factory.mktemp("validate") / "run"
  shutil.copytree(tiny_run, workdir)
  args = ["--config.train.steps=3", "--config.train.num_devices=1",
          "--config.model.online_head=True", "--config.train.report=True"]
  return workdir, args


def _listing(workdir):
  return sorted(os.path.relpath(os.path.join(d, f), workdir)
                for d, _, files in os.walk(workdir / "checkpoints") for f in files)


@pytest.mark.parametrize("change, pattern", [
    ("--config.train.batch_size=16", r"train\.batch_size: saved 32, new 16"),
    ("--config.model.width_multiplier=0.25", r"model\.width_multiplier: saved 0\.125, new 0\.25"),
])
def test_incompatible_resume_is_refused_and_changes_nothing(run, change, pattern, capsys,
                                                            caplog):
  workdir, args = run
  before, listing = (workdir / "config.json").read_bytes(), _listing(workdir)
  assert listing
  code, errors, err = _cli(capsys, workdir, *args, change, "--config.train.steps=2")
  assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
  assert re.search(rf"cannot resume .*{pattern}\)", errors[0]), errors[0]
  assert "config:" not in caplog.text, "a refused resume prints its one line, not the config"
  assert "train.steps" not in errors[0].split("Use a new")[0]   # allowed, so not listed
  assert (workdir / "config.json").read_bytes() == before
  assert _listing(workdir) == listing


def test_compatible_resume_is_allowed(run):
  workdir, _ = run
  same = {"train.num_devices": 1, "model.online_head": True}
  resume.check_resume(_tiny(**same, **{"train.steps": 5, "train.log_every": 5}), workdir)
  with pytest.raises(validate.ConfigError, match=r"\(seed: saved 42, new 7\)"):
    resume.check_resume(_tiny(**same, seed=7), workdir)


def test_linear_eval_checks(run, tmp_path):
  workdir, _ = run
  from simclr_jax.api import check_run
  c = _tiny(**{"train.num_devices": 1, "model.online_head": True, "eval.checkpoint": "9"})
  saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
  with pytest.raises(validate.ConfigError, match=r"eval\.checkpoint='9': expected 'best', "
                     rf"'latest' or a saved step of .*: {re.escape(str(saved))}"):
    check_run(str(workdir), c, "linear_eval")
  with pytest.raises(validate.ConfigError, match=r"no .*/config\.json: is it the workdir"):
    check_run(str(tmp_path), c, "linear_eval")


@pytest.mark.slow
def test_commands_exit_2_without_traceback(run, tmp_path):
  """Real processes: a bad override at parse time, a bad value at validation, and
  linear_eval with a bad override of a run's config."""
  workdir = tmp_path / "run"
  pretrain = ["-m", "simclr_jax", "pretrain"]
  for args, pattern in (
      (["--config.train.bacth_size=3"], "no such config field"),
      (["--config.loss.temperature=0"], r"loss\.temperature=0\.0: expected")):
    proc = run_python([*pretrain, "--config", CONFIG, "--workdir", workdir, *args], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert re.search(rf"^error: .*{pattern}", proc.stderr, re.M)
    assert "Traceback" not in proc.stderr and "config:" not in proc.stderr
    assert not workdir.exists()
  proc = run_python(["-m", "simclr_jax", "linear-eval", "--workdir", run[0],
                     "--config.eval.batch_size=0"], timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert "error: eval.batch_size=0: expected an integer >= 1" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_train_pretrain_checks_too(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(validate.ConfigError, match=r"loss\.temperature=0\.0"):
    train.pretrain(_tiny(**{"loss.temperature": 0.0}), str(workdir))
  assert not workdir.exists()

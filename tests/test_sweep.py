"""scripts/sweep.py: grid and augmentation-pair points, real runs per point, skip on re-run,
tables that hold what each point's own score file says."""

import csv
import json
import os

import pytest
from ml_collections import config_flags  # noqa: F401  (the parser the overrides go through)

from helpers import ROOT, run_python
from simclr_jax import augment, sweep
from simclr_jax.augment import registry


def test_grid_values_split_outside_brackets_and_make_the_product():
  axes = sweep.parse_grid(["optim.name=adam,lars", "augment.crop_scale=(0.2,1.0),(0.5, 1.0)"])
  assert axes == [("optim.name", ["adam", "lars"]),
                  ("augment.crop_scale", ["(0.2,1.0)", "(0.5, 1.0)"])]
  points = sweep.grid_points(axes)
  assert [p.overrides for p in points] == [
      (("optim.name", a), ("augment.crop_scale", c))
      for a in ("adam", "lars") for c in ("(0.2,1.0)", "(0.5, 1.0)")]
  assert len({p.name for p in points}) == 4
  with pytest.raises(ValueError, match="--grid 'optim.name': expected FIELD=V1,V2"):
    sweep.parse_grid(["optim.name"])


def _resolved(point):
  """The two views' parameters the point's overrides give, through the config schema."""
  overrides = dict(point.overrides)
  assert overrides.pop("augment.preset") == "none"
  values = {k.removeprefix("augment."): eval(v) for k, v in overrides.items()}  # noqa: S307
  return augment.config.resolve(augment.get_config("none", **values))


def test_pairs_enable_exactly_the_two_ops_in_both_views():
  ops = ["hflip", "blur", "crop", "gain"]
  points = sweep.pair_points(ops, "simclr_cifar")
  assert [p.labels for p in points] == [(a, b) for i, a in enumerate(ops) for b in ops[i:]]
  for point in points:
    for view in _resolved(point):
      # An op is on when it runs and some field of it differs from its default (crop always
      # runs, as a plain resize when crop_scale is None); clip is every view's last op.
      on = {name for name, op in registry.OPS.items() if name != "clip" and op.enabled(view)
            and any(view[f] != field.default for f, field in op.fields.items())}
      assert on == set(point.labels), point.name
      assert view["value_range"] == (0.0, 1.0)
      if "blur" in point.labels:      # off in simclr_cifar: switched on at even odds
        assert view["blur_prob"] == 0.5
      if "crop" in point.labels:      # the reference preset's own setting
        assert view["crop_scale"] == (0.08, 1.0)
  with pytest.raises(ValueError, match="unknown op 'sharpen'"):
    sweep.pair_points(["sharpen"], "simclr")


def test_sweep_runs_each_point_once_and_tabulates_the_points_own_scores(tmp_path):
  """Two points, one of which cannot start (an unknown optimizer): the good one runs once and
  is skipped on the re-run, the bad one is reported failed, and the sweep goes on."""
  sweep_dir = tmp_path / "sweep"
  argv = ["scripts/sweep.py", "--config=configs/digits.py:tiny", "--grid",
          "optim.name=adam,nosuch", "--metric=probe:accuracy", f"--sweep_dir={sweep_dir}",
          "--config.eval.baselines=()"]
  first = run_python(argv, timeout=600)
  assert first.returncode == 1, first.stderr[-3000:]     # 1: not every point has a score
  assert first.stdout.count("(ran)") == 1
  assert "name=nosuch: probe:accuracy = None (failed (exit" in first.stdout
  again = run_python(argv, timeout=300)
  assert again.stdout.count("(done before)") == 1 and again.stdout.count("(failed") == 1
  with open(sweep_dir / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["optim.name"], r["probe:accuracy"] == "") for r in rows] == [("adam", False),
                                                                           ("nosuch", True)]
  good = sweep_dir / rows[0]["workdir"]
  with open(good / "linear_eval.json") as f:
    (probe,) = [x for x in json.load(f)["results"] if x["features"] == "pretrained"]
  assert json.load(open(good / "config.json"))["optim"]["name"] == "adam"
  assert float(rows[0]["probe:accuracy"]) == pytest.approx(probe["metrics"]["accuracy"])
  assert probe["test_accuracy"] == pytest.approx(probe["metrics"]["accuracy"])
  table = (sweep_dir / "sweep.md").read_text()
  assert "| optim.name | probe:accuracy |" in table and "| nosuch | failed |" in table
  assert (sweep_dir / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_bad_sweep_arguments_exit_2_with_one_line():
  proc = run_python(["scripts/sweep.py", "--config=configs/digits.py:tiny", "--grid",
                     "optim.name=adam", "--metric=probe"], timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: --metric 'probe': expected probe:<key> or finetune:<key>, e.g. probe:accuracy, "
      "finetune:macro_f1, finetune:tss"]

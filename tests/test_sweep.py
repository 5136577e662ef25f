"""simclr-jax sweep: grid and augmentation-pair points, real runs per point, skip on re-run,
tables that hold what each point's own score file says."""

import csv
import json
import os

import pytest
from ml_collections import config_flags  # noqa: F401  (the parser the overrides go through)

from helpers import command, run_python
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


def _in_process(calls):
  """A runner that runs `simclr-jax pretrain`'s own entry point in this process (no process
  start-up per point; the commands are the ones a sweep would start as processes)."""
  pretrain = command("pretrain")

  def runner(cmd):
    tool = len(sweep.TOOL)
    assert tuple(cmd[:tool]) == sweep.TOOL and cmd[tool] == "pretrain", cmd
    calls.append(cmd)
    return pretrain.run_cli(["simclr-jax pretrain", *cmd[tool + 1:]])
  return runner


@pytest.fixture
def compile_cache(tmp_path):
  """JAX's persistent compilation cache for one test: the grid below varies the probe only, so
  every point after the first compiles nothing (the sweep's mechanics are under test here, a
  few seconds a point instead of half a minute)."""
  import jax
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", before[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


@pytest.mark.slow
def test_two_by_two_sweep_writes_four_workdirs_with_their_own_scores_and_reruns_nothing(
    tmp_path, compile_cache):
  sweep_dir = str(tmp_path / "sweep")
  axes = sweep.parse_grid(["eval.select_by=log_loss,accuracy", "eval.c_grid=(0.1,1.0),(0.3,3.0)"])
  points = sweep.grid_points(axes)
  extra = ["--config.train.num_devices=1", "--config.train.batch_size=16",
           "--config.eval.baselines=()"]
  calls = []
  rows = sweep.run("digits:tiny", sweep_dir, points, "probe:accuracy", extra,
                   runner=_in_process(calls))
  assert len(calls) == 4 and [r["status"] for r in rows] == ["ran"] * 4
  paths = sweep.write_tables(sweep_dir, rows, "probe:accuracy", [f for f, _ in axes])
  assert sorted(os.listdir(sweep_dir)) == sorted(
      [p.name for p in points] + ["sweep.csv", "sweep.md", "sweep.png"])
  with open(paths["csv"]) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4
  for point, r in zip(points, table):
    workdir = os.path.join(sweep_dir, r["workdir"])
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["eval"]["select_by"] == point.labels[0]
    assert tuple(saved["eval"]["c_grid"]) == eval(point.labels[1])  # noqa: S307
    with open(os.path.join(workdir, "linear_eval.json")) as f:
      (probe,) = [x for x in json.load(f)["results"] if x["features"] == "pretrained"]
    assert float(r["probe:accuracy"]) == pytest.approx(probe["metrics"]["accuracy"])
    assert probe["C"] in eval(point.labels[1])  # noqa: S307
  assert open(paths["png"], "rb").read().startswith(b"\x89PNG")
  again = sweep.run("digits:tiny", sweep_dir, points, "probe:accuracy", extra,
                    runner=_in_process(calls))
  assert len(calls) == 4 and [r["status"] for r in again] == ["done before"] * 4


@pytest.mark.slow
def test_sweep_cli_reports_a_point_that_cannot_start_and_exits_1(tmp_path):
  sweep_dir = tmp_path / "sweep"
  proc = run_python(["-m", "simclr_jax", "sweep", "--config=digits:tiny", "--grid",
                     "optim.name=nosuch", "--metric=probe:accuracy", f"--sweep_dir={sweep_dir}"],
                    timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "name=nosuch: probe:accuracy = None (failed (exit 2): pretrain)" in proc.stdout
  assert "| nosuch | failed |" in (sweep_dir / "sweep.md").read_text()


@pytest.mark.slow
def test_bad_sweep_arguments_exit_2_with_one_line():
  proc = run_python(["-m", "simclr_jax", "sweep", "--config=digits:tiny", "--grid",
                     "optim.name=adam", "--metric=probe"], timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: --metric 'probe': expected probe:<key> or finetune:<key>, e.g. probe:accuracy, "
      "finetune:macro_f1, finetune:tss"]

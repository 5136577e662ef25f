"""logs.wandb: the scalars, images and config of the TensorBoard files, and the report's plots,
in the workdir's one W&B run; read back from wandb's own offline files (the run-<id>.wandb
transaction log each start writes, and files/media), never through the network."""

import json
import os
import shutil
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from helpers import pretrain_cli, tiny_run_config
from simclr_jax import logs
from simclr_jax import workdir as workdir_lib
from simclr_jax.configs import default


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
  """wandb offline and quiet, its settings and caches in a temporary folder, not ~."""
  home = tmp_path_factory.mktemp("wandb_home")
  for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                      "WANDB_DISABLE_GIT": "true", "WANDB_CONFIG_DIR": home / "config",
                      "WANDB_CACHE_DIR": home / "cache", "WANDB_DATA_DIR": home / "data",
                      "WANDB_ARTIFACT_DIR": home / "artifacts"}.items():
    monkeypatch.setenv(name, str(value))
  monkeypatch.delenv("WANDB_API_KEY", raising=False)


# --- reading an offline run back --------------------------------------------------------------

def _records(path: str):
  """The records of a run-<id>.wandb file: a LevelDB-style log (wandb's own format, which
  `wandb sync` uploads): a 7-byte header (':W&B', magic, version), then 32 KiB blocks of chunks
  (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last), each record one protobuf."""
  from wandb.proto import wandb_internal_pb2
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", path
  pos, chunk = 7, b""
  while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:                # a block's tail too short for a header: padding
      pos += 32768 - pos % 32768
      continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
    chunk += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(chunk)
      yield record
      chunk = b""


def _set(tree: dict, item) -> None:
  keys = list(item.nested_key) or [item.key]
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = json.loads(item.value_json)


def read_wandb(workdir) -> dict:
  """Every start's offline run in workdir/wandb, oldest first: {'ids': [run id per start],
  'config': {...} (all updates), 'history': [{key: value} per wandb.log], 'files': {path
  in the run: local file}}."""
  import wandb
  # run.finish() returns once the run is done, while wandb's service may still be writing the
  # file (it buffers it): stopping the service closes every file.
  wandb.teardown()
  root = os.path.join(workdir, logs.WANDB_DIR)
  runs = sorted(d for d in os.listdir(root) if d.startswith("offline-run-"))
  out = {"ids": [], "config": {}, "history": [], "files": {}}
  for run in runs:
    (log,) = [f for f in os.listdir(os.path.join(root, run)) if f.endswith(".wandb")]
    for record in _records(os.path.join(root, run, log)):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        out["ids"].append(record.run.run_id)
        for item in record.run.config.update:
          _set(out["config"], item)
      elif kind == "config":
        for item in record.config.update:
          _set(out["config"], item)
      elif kind == "history":
        row = {}
        for item in record.history.item:
          _set(row, item)
        out["history"].append(row)
      elif kind == "files":
        for f in record.files.files:
          out["files"][f.path] = os.path.join(root, run, "files", f.path)
  return out


def wandb_scalars(history: list[dict]) -> dict:
  """{tag: {step: value}} of the history rows, a later row winning (as read_events does)."""
  out = {}
  for row in history:
    for tag, value in row.items():
      if not tag.startswith("_") and tag != logs.WANDB_STEP and not isinstance(value, dict):
        out.setdefault(tag, {})[row[logs.WANDB_STEP]] = value
  return {tag: dict(sorted(steps.items())) for tag, steps in out.items()}


def _wandb_config():
  c = default.get_config()
  c.logs.wandb = True
  c.logs.wandb_project = "simclr_jax_test"
  return c


# --- the writer -------------------------------------------------------------------------------

def test_writer_mirrors_tensorboard_to_one_wandb_run_across_a_resume(tmp_path):
  config = _wandb_config()
  workdir = str(tmp_path / "run")
  sheet = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  writer = logs.Writer(workdir, config)       # the first start
  writer.write_images(0, {"augment/views": sheet[None]})
  writer.write_hparams(logs.hparams(config))
  writer.write_scalars(1, {"loss": 5.3, "learning_rate": 0.1})     # not float32-exact
  writer.write_scalars(2, {"loss": 4.7, "learning_rate": np.float32(0.2)})
  writer.close()
  writer = logs.Writer(workdir, config)       # a resume from the step-1 checkpoint
  writer.write_scalars(2, {"loss": 4.6, "learning_rate": 0.2})
  writer.write_scalars(3, {"loss": 4.1, "learning_rate": 0.3})
  writer.close()

  got = read_wandb(workdir)
  with open(os.path.join(workdir, logs.WANDB_ID)) as f:
    run_id = f.read().strip()
  assert got["ids"] == [run_id, run_id]       # both starts continue one W&B run
  # The scalars are TensorBoard's, step for step and bit for bit (float32, as the events).
  tensorboard = logs.read_events(workdir)["scalars"]
  assert wandb_scalars(got["history"]) == tensorboard
  assert tensorboard["loss"] == {1: pytest.approx(5.3), 2: pytest.approx(4.6),
                                 3: pytest.approx(4.1)}
  # The image: one PNG of the same pixels, at step 0.
  (row,) = [r for r in got["history"] if "augment/views" in r]
  image = row["augment/views"]
  assert row[logs.WANDB_STEP] == 0 and image["_type"] == "image-file"
  assert np.array_equal(np.asarray(Image.open(got["files"][image["path"]])), sheet)
  # The config: every field, nested, with its value.
  assert got["config"]["optim"]["name"] == config.optim.name
  assert got["config"]["train"]["batch_size"] == config.train.batch_size
  assert got["config"]["eval"]["c_grid"] == list(config.eval.c_grid)
  assert got["config"]["logs"]["wandb"] is True


def test_without_logs_wandb_wandb_is_not_imported(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)      # any `import wandb` raises
  config = default.get_config()
  writer = logs.Writer(str(tmp_path), config)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_images(0, {"x": np.zeros((2, 2, 1), np.uint8)})
  writer.close()
  old = default.with_defaults({"train": {"steps": 2}})      # a run from before the group
  assert not old.logs.wandb
  assert not logs.wandb_enabled(ml_collections.ConfigDict({"train": {"steps": 2}}))
  assert logs.log_plots(config, str(tmp_path)) == 0
  assert not os.path.exists(tmp_path / logs.WANDB_DIR)


# --- the report's plots -----------------------------------------------------------------------

def test_report_plots_go_to_the_runs_wandb_run(tiny_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run, workdir)              # shared: read only
  plots = sorted(f for f in os.listdir(os.path.join(workdir, workdir_lib.PLOTS))
                 if f.endswith(".png"))
  assert "loss_curve.png" in plots
  assert logs.log_plots(_wandb_config(), workdir) == len(plots)
  got = read_wandb(workdir)
  (row,) = [r for r in got["history"] if any(k.startswith("report/") for k in r)]
  assert row[logs.WANDB_STEP] == max(workdir_lib.steps(os.path.join(workdir, "checkpoints")))
  assert sorted(k for k in row if k.startswith("report/")) == sorted(
      f"report/{p[:-4]}" for p in plots)
  for p in plots:
    logged = got["files"][row[f"report/{p[:-4]}"]["path"]]
    with open(logged, "rb") as a, open(os.path.join(workdir, "plots", p), "rb") as b:
      assert a.read() == b.read(), p             # the report's own file, uploaded as is


# --- the checks -------------------------------------------------------------------------------

def test_without_the_extra_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  workdir = tmp_path / "run"
  code, errors, err = pretrain_cli(capsys, workdir, "--config.logs.wandb=True")
  assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
  assert errors[0].endswith('logs.wandb=True needs wandb, which is not installed: '
                            'pip install "simclr_jax[wandb]"'), errors[0]
  assert not workdir.exists()


def test_a_bad_mode_is_one_line_naming_the_field(tmp_path, capsys):
  code, errors, err = pretrain_cli(capsys, tmp_path / "run", "--config.logs.wandb=True",
                           "--config.logs.wandb_mode=cloud")
  assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
  assert errors[0].endswith("logs.wandb_mode='cloud': expected one of offline, online"), errors[0]


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_pretrain_and_resume_log_to_one_wandb_run(tmp_path):
  from simclr_jax import api
  workdir = str(tmp_path / "run")
  for steps in (2, 3):                            # a run, then a resume that extends it
    config = tiny_run_config(steps, evaluate=False)
    config.train.report = True
    config.logs.wandb = True
    api.pretrain(config, workdir)
  got = read_wandb(workdir)
  assert len(got["ids"]) == 4 and len(set(got["ids"])) == 1   # 2 starts, 2 uploads of plots
  scalars = wandb_scalars(got["history"])
  tensorboard = logs.read_events(workdir)["scalars"]
  assert set(tensorboard["loss"]) == {1, 2, 3} and {"learning_rate", "l2_grads"} <= set(scalars)
  assert scalars == tensorboard
  assert any("augment/views" in r for r in got["history"])
  assert got["config"]["train"]["steps"] == 3 and got["config"]["data"]["source"] == "digits"
  plotted = [r for r in got["history"] if "report/loss_curve" in r]
  assert [r[logs.WANDB_STEP] for r in plotted] == [2, 3]
  with open(got["files"][plotted[-1]["report/loss_curve"]["path"]], "rb") as a, open(
      os.path.join(workdir, workdir_lib.CURVE_PLOT), "rb") as b:
    assert a.read() == b.read()

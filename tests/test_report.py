"""The model report of a real (tiny, resumed) digits run, and the ImageNet / SimCLR-S2 configs."""

import csv
import glob
import json
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml
from PIL import Image

from helpers import scalars
from simclr_jax import augment, logs, report
from simclr_jax.configs import imagenet, sentinel2


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
  """The session's tiny run (tests/conftest.py: 2 steps with a kNN evaluation at step 2, the
  best checkpoint, resumed to 3 by a second start), copied: the report is written into it."""
  workdir = str(tmp_path_factory.mktemp("report") / "run")
  shutil.copytree(tiny_run, workdir)
  # Pixel statistics on 500 sampled digits: the sizes and classes still count every one.
  path = report.write_report(workdir, max_examples=500)
  with open(path) as f:
    return workdir, f.read()


def _per_file_steps(workdir, tag="loss"):
  """Steps of `tag` in each event file separately, oldest file first (tensorboard's reader)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  out = []
  for f in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    acc = EventAccumulator(f, size_guidance={"tensors": 0})
    acc.Reload()
    out.append(sorted(e.step for e in acc.Tensors(tag)) if tag in acc.Tags()["tensors"] else [])
  return sorted(out)


def test_report_has_the_four_parts_and_the_run_metadata(run):
  workdir, text = run
  headings = re.findall(r"^## (.+)$", text, re.M)
  assert headings[:4] == ["1. Parameters", "2. Architecture", "3. Loss curve", "4. Metadata"]
  assert "![loss curve](plots/loss_curve.png)" in text
  with Image.open(os.path.join(workdir, "plots", "loss_curve.png")) as im:
    assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    im.verify()
  # The metadata come from the run's files: two starts, best checkpoint 2, latest 3, the
  # digits split sizes (scikit-learn's 1797 digits, 20 % held out) and classes.
  assert "over 2 start(s)" in text
  assert "best checkpoint: step 2" in text and "latest checkpoint: step 3" in text
  assert "monitored: knn_accuracy (max)" in text
  assert "- train: 1,437 (" in text and "- test: 360 (" in text
  assert "tensor (16, 16, 1), min 0, max 1" in text and "(measured on 500)" in text
  assert "eval/knn_accuracy" in text and "online_accuracy" in text


def test_report_yaml_parses_back_to_the_saved_config(run):
  workdir, text = run
  block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
  with open(os.path.join(workdir, "config.json")) as f:
    assert yaml.safe_load(block) == json.load(f)


def test_loss_curve_has_every_logged_step_across_the_resume(run):
  workdir, text = run
  # The reference: tensorboard's own reader, file by file -- steps 1, 2 in the first start's
  # file, 3 in the second's.
  assert _per_file_steps(workdir) == [[1, 2], [3]]
  logged = scalars(workdir)["loss"]
  with open(os.path.join(workdir, "plots", "loss_curve.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [1, 2, 3]
  for r in rows:
    assert float(r["loss"]) == pytest.approx(logged[int(r["step"])], rel=1e-7)
  assert "3 logged steps" in text
  # The report's reader gives the same points.
  assert logs.read_events(workdir)["scalars"]["loss"] == pytest.approx(logged)


def test_a_step_logged_again_after_a_restart_keeps_the_later_value(tmp_path):
  # A run killed after logging step 3 but before its step-3 checkpoint restarts at 2 and logs
  # step 3 again, into a second event file: the curve has each step once, the later value.
  for values in ({1: 5.0, 2: 4.0, 3: 3.0}, {3: 2.5, 4: 2.0}):
    writer = logs.Writer(str(tmp_path))
    for step, loss in values.items():
      writer.write_scalars(step, {"loss": loss})
    writer.close()
  events = logs.read_events(str(tmp_path))
  assert events["scalars"]["loss"] == {1: 5.0, 2: 4.0, 3: 2.5, 4: 2.0}
  assert len(events["sessions"]) == 2


def test_architecture_total_equals_the_restored_checkpoint(run):
  workdir, text = run
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = mngr.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  total = sum(np.size(x) for x in jax.tree.leaves(state["params"]))
  assert f"| **total** | **{total:,}** |" in text
  rows = re.findall(r"^\| (encoder/\S+|projection|online_head)[^|]* \| ([\d,]+) \|", text, re.M)
  assert sum(int(n.replace(",", "")) for _, n in rows) == total
  assert {name for name, _ in rows} >= {"encoder/stem", "encoder/stage4", "projection",
                                         "online_head"}


def test_imagenet_config_is_the_paper_recipe_and_builds_a_resnet50():
  c = imagenet.get_config()
  assert (c.data.source, c.data.tfds.name) == ("tfds", "imagenet2012")
  assert (c.model.backbone, c.model.cifar_stem, c.train.batch_size, c.train.epochs) == (
      "resnet50", False, 4096, 100)
  assert (c.optim.name, c.optim.base_lr, c.optim.lr_scaling) == ("lars", 0.3, "linear")
  assert c.optim.weight_decay == 1e-6 and c.loss.temperature == 0.1
  assert c.augment.to_dict() == augment.get_config("simclr").to_dict()
  arch = report.architecture(c)        # shapes only: no data is read, nothing computed
  encoder = sum(n for name, n, _ in arch["rows"] if name.startswith("encoder/"))
  # torchvision's resnet50 has 25,557,032 parameters, of which the 1000-way fc is
  # 2048 * 1000 + 1000: the backbone is the rest.
  assert encoder == 25_557_032 - 2_049_000
  assert arch["outputs"]["h"] == 2048 and arch["outputs"]["z"] == 128


def test_sentinel2_config_is_the_simclr_s2_recipe():
  c = sentinel2.get_config()
  assert (c.model.backbone, c.train.batch_size, c.train.epochs) == ("resnet152", 32, 50)
  assert (c.loss.temperature, c.optim.name, c.optim.learning_rate) == (0.1, "adam", 5e-4)

"""Fine-tuning on real orbax checkpoints: a frozen encoder stays bitwise, the protocol's splits
and files, the v2 projection layers, and an SDOBenchmark-layout run scored by TSS/HSS."""

import copy
import csv
import datetime as dt
import json
import os
import shutil
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from helpers import run_python
from simclr_jax import checkpoint, finetuning
from simclr_jax import state as state_lib
from simclr_jax.configs import digits, sdo, sdobenchmark
from simclr_jax.data import sources
from simclr_jax.data.subset import Subset
from simclr_jax.data.sources import solar


def _config():
  c = digits.get_config("tiny")
  c.data.image_size = 16
  c.finetune.epochs = 2
  c.finetune.batch_size = 16
  c.finetune.label_fractions = (0.1,)
  return c


def _workdir(config, path, num_examples):
  """A workdir as pretraining leaves it: config.json and a real orbax checkpoint (step 3) of
  a state whose weights are not those of the seed's init (they were moved by noise)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  setup = state_lib.build(config, num_examples)
  state = state_lib.init_state(setup, state_lib.run_keys(config.seed)[0])
  noise = jax.random.PRNGKey(7)
  move = jax.jit(lambda params: jax.tree.map(      # one program, not one per parameter shape
      lambda p: p + 0.01 * jax.random.normal(noise, p.shape, p.dtype), params))
  state = state.replace(params=move(state.params))
  manager = checkpoint.make_manager(path, 1, 2)
  checkpoint.save(manager, 3, state, force=True)
  manager.wait_until_finished()
  manager.close()
  return str(path), setup


def _saved(workdir, step=3):
  """The checkpoint as numpy, read with orbax alone (no template, no project code)."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
  """The session's tiny pretraining run (tests/conftest.py: latest checkpoint step 3, the best
  step 2), copied: fine-tuning writes finetune.json and finetune.md into the workdir."""
  workdir = str(tmp_path_factory.mktemp("finetune") / "run")
  shutil.copytree(tiny_run, workdir)
  return _config(), workdir


def _bits(tree):
  return [np.asarray(x).view(np.uint8).tobytes() for x in jax.tree.leaves(tree)]


def test_encoder_lr_zero_leaves_encoder_and_projection_layer_bitwise_unchanged(run):
  _, workdir = run
  config = _config()
  config.finetune.encoder_lr = 0.0            # batch_norm 'auto' -> frozen running stats
  config.finetune.from_projection = 1         # SimCLR v2: from the first projection layer
  src = sources.make_source(config.data, "train")
  trainer = finetuning.Trainer(config, 10, multilabel=False)
  pretrained, step, kind = state_lib.restore(config, workdir, "latest", trainer.mesh)
  assert (step, kind) == (3, "latest")
  state = trainer.init(0, pretrained)
  saved = _saved(workdir)
  # The kept projection layer is the pretrained one; the new head reads its 32 units.
  assert set(state.params["projection"]) == {"dense1", "bn1"}
  for group in ("params", "batch_stats"):
    assert _bits(getattr(state, group)["projection"]) == _bits(
        {k: v for k, v in saved[group]["projection"].items() if k in ("dense1", "bn1")})
  assert state.params["head"]["out"]["kernel"].shape == (config.model.hidden_mlp, 10)
  head_before = jax.tree.map(np.asarray, state.params["head"])
  fit, val = np.arange(0, 160), np.arange(160, 200)
  _, last, info = trainer.fit(state, Subset(src, fit), Subset(src, val),
                              src.labels[val], "label", seed=0)
  assert info["epochs_run"] == 2 and int(last.step) == 2 * (160 // 16)
  for group in ("params", "batch_stats"):
    assert _bits(getattr(last, group)["encoder"]) == _bits(saved[group]["encoder"])
    assert _bits(getattr(last, group)["projection"]) == _bits(
        {k: v for k, v in saved[group]["projection"].items() if k in ("dense1", "bn1")})
  # ... while the head did train.
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(head_before), jax.tree.leaves(last.params["head"]))]
  assert all(moved)


def test_from_projection_beyond_the_hidden_layers_is_refused():
  config = _config()
  config.finetune.from_projection = 2        # proj_layers 2 has one hidden layer only
  with pytest.raises(ValueError, match=r"finetune.from_projection=2: expected 0..1"):
    finetuning.Trainer(config, 10, multilabel=False)


def test_bad_fields_name_the_field():
  config = _config()
  config.finetune.batch_norm = "sometimes"
  with pytest.raises(ValueError, match="finetune.batch_norm='sometimes': expected one of train"):
    finetuning.Trainer(config, 10, multilabel=False)


def test_finetune_writes_json_and_table_with_the_protocol_splits(run):
  config, workdir = run
  config = copy.deepcopy(config)
  # Two fractions: each starts from the same pretrained arrays, which the first one's donating
  # train step must not have consumed.
  config.finetune.label_fractions = (0.1, 0.2)
  # 1 device: compile time dominates (the sharded fine-tuning step: the test above, 8 devices).
  config.train.num_devices = 1
  report = finetuning.finetune(workdir, config)
  with open(os.path.join(workdir, "finetune.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(report))
  rows = {(r["init"], r["label_fraction"]): r for r in saved["results"]}
  assert set(rows) == {(i, f) for i in ("pretrained", "scratch") for f in (0.1, 0.2)}
  # round(fraction * n) of each digit class of 1437, then 8:2.
  y = sources.make_source(config.data, "train").labels
  for (_, fraction), r in rows.items():
    per_class = sum(int(round(fraction * n)) for n in np.bincount(y))
    assert r["n_fit"] + r["n_val"] == per_class
    assert r["n_val"] == int(np.ceil(0.2 * per_class))
    assert r["best_epoch"] == int(np.argmin(r["val_loss_curve"])) + 1
    cm = np.asarray(r["metrics"]["confusion_matrix"])
    assert cm.sum() == 360 and r["test_accuracy"] == pytest.approx(np.trace(cm) / 360)
  # Each model scored is saved (the teacher of `simclr-jax distill`): read back, it scores
  # exactly what finetune.json says.
  assert {r["model"] for r in rows.values()} == {
      f"finetune/{i}_{f:g}" for i in ("pretrained", "scratch") for f in (0.1, 0.2)}
  assert saved["classifier"]["num_outputs"] == 10 and saved["classifier"]["head_hidden"] == 0
  trainer = finetuning.Trainer(config, 10, multilabel=False)
  r = rows["pretrained", 0.2]
  model = finetuning.load_model(os.path.join(workdir, r["model"]), trainer.abstract())
  test = sources.make_source(config.data, "test")
  logits = trainer.predict(types.SimpleNamespace(**model), test)
  assert np.mean(logits.argmax(1) == test.labels) == r["test_accuracy"]
  table = open(os.path.join(workdir, "finetune.md")).read()
  for fraction in (0.1, 0.2):
    acc = rows["pretrained", fraction]["test_accuracy"], rows["scratch", fraction]["test_accuracy"]
    assert f"| {fraction:.0%} | {acc[0]:.4f} | {acc[1]:.4f} |" in table


def write_sdobenchmark(root, regions=8, per_region=3, test_regions=2, side=16):
  """SDOBenchmark layout: training/ and test/ with meta_data.csv and one magnetogram jpg per
  sample at 11h50 (time step 3). Flaring samples (>= 1e-6) carry a bright square."""
  rng = np.random.default_rng(0)
  for folder, ars in (("training", range(11400, 11400 + regions)),
                      ("test", range(12000, 12000 + test_regions))):
    rows = []
    for ar in ars:
      for k in range(per_region):
        start = dt.datetime(2012, 3, 1 + k)
        sid = f"{ar}_{start:%Y_%m_%d_%H_%M_%S}_{k}"
        d = os.path.join(root, folder, str(ar), sid.split("_", 1)[1])
        os.makedirs(d)
        flare = (ar + k) % 2 == 0
        img = rng.integers(100, 156, (side, side)).astype(np.uint8)
        if flare:
          img[4:12, 4:12] = 250
        when = start + solar.SDOBENCHMARK_STEPS[3]
        Image.fromarray(img).save(os.path.join(d, f"{when:%Y-%m-%dT%H%M%S}__magnetogram.jpg"))
        rows.append([sid, start.isoformat(), (start + dt.timedelta(hours=36)).isoformat(),
                     3e-6 if flare else 2e-7])
    with open(os.path.join(root, folder, "meta_data.csv"), "w", newline="") as f:
      csv.writer(f).writerows([["id", "start", "end", "peak_flux"]] + rows)


# A second fine-tuning model compiled (~30 s): the slow tier. The everyday tier has the scores
# (test_metrics.test_binary_tss_hss_from_a_hand_counted_table) and fine-tuning end to end on digits.
@pytest.mark.slow
def test_sdobenchmark_finetune_end_to_end_writes_tss_and_hss(tmp_path):
  data = tmp_path / "SDOBenchmark"
  write_sdobenchmark(str(data))
  config = sdobenchmark.get_config("tiny")
  config.data.path = str(data)
  config.data.image_size = 16
  config.finetune.epochs = 2
  config.finetune.batch_size = 8
  config.finetune.baseline = False
  workdir, _ = _workdir(config, tmp_path / "run", 22)
  report = finetuning.finetune(workdir, config)
  with open(os.path.join(workdir, "finetune.json")) as f:
    row = json.load(f)["results"][0]
  m = row["metrics"]
  assert m["positive_class"] == ">=C" and m["class_names"] == ["Quiet", ">=C"]
  # TSS and HSS recomputed from the saved confusion matrix (rows true, columns predicted).
  (tn, fp), (fn, tp) = m["confusion_matrix"]
  assert tn + fp + fn + tp == 6 == row["n_test"]
  assert m["tss"] == pytest.approx((tp / (tp + fn) if tp + fn else 0) - fp / (fp + tn))
  den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
  assert m["hss"] == pytest.approx(2 * (tp * tn - fn * fp) / den if den else 0.0)
  assert report["results"][0]["metrics"] == m
  assert "TSS" in open(os.path.join(workdir, "finetune.md")).read()


@pytest.mark.slow
def test_solarnet_protocol_sdo_pretraining_finetuned_on_sdobenchmark_by_the_documented_command(
    tmp_path):
  """The sdobenchmark config's command for SolarNet's protocol: a workdir pretrained on SDO
  magnetograms (the sdo config, here its tiny variant on the bundled HMI patches, with the full
  recipe's flare classes) fine-tuned on SDOBenchmark by overrides alone, scored by TSS/HSS."""
  data = tmp_path / "SDOBenchmark"
  write_sdobenchmark(str(data))
  full = sdo.get_config()
  config = sdo.get_config("tiny")
  config.data.num_classes = full.data.num_classes
  config.data.label_thresholds = full.data.label_thresholds
  workdir, _ = _workdir(config, tmp_path / "sdo", 84)
  proc = run_python(["-m", "simclr_jax", "finetune", f"--workdir={workdir}",
                     # the documented overrides:
                     "--config.data.source=sdobenchmark", f"--config.data.path={data}",
                     "--config.data.sdobenchmark.skip_missing=True",
                     # a tiny schedule for the test:
                     "--config.finetune.epochs=1", "--config.finetune.batch_size=8",
                     "--config.finetune.baseline=False"], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "finetune.json")) as f:
    row = json.load(f)["results"][0]
  m = row["metrics"]
  assert m["positive_class"] == ">=C" and m["class_names"] == ["Quiet", ">=C"]
  assert row["n_test"] == 6 and sum(map(sum, m["confusion_matrix"])) == 6
  assert {"tss", "hss"} <= set(m)


def test_the_table_names_the_baseline_by_its_start():
  """A baseline from model.init_from (e.g. supervised weights) is not 'from scratch'."""
  from simclr_jax import tables
  report = {"eval_split": "test", "checkpoint": "best", "checkpoint_step": 3, "results": [
      {"init": "pretrained", "label_fraction": 0.1, "test_accuracy": 0.5},
      {"init": "init_from", "label_fraction": 0.1, "test_accuracy": 0.25}]}
  table = tables.fraction_table(report)
  assert "| labels | fine-tuned | supervised from model.init_from |" in table
  assert "| 10% | 0.5000 | 0.2500 |" in table


@pytest.mark.slow      # its own checkpoint and fine-tuning program (~40 s)
def test_from_head_layer_1_of_a_3_layer_head_trains_the_encoder_and_that_layer(tmp_path):
  """SimCLR v2's fine-tuning (google-research/simclr ft_proj_selector=1): the encoder and the
  head's first layer (Dense, BatchNorm; its ReLU) are trained on, under a new linear head; the
  later projection layers are dropped."""
  config = _config()
  config.model.proj_layers = 3                # v2's head: 2 hidden layers, then the output
  config.train.num_devices = 1
  config.finetune.from_projection = 1
  config.finetune.encoder_lr = 0.05
  config.finetune.epochs = 1
  workdir, _ = _workdir(config, tmp_path / "run", 64)
  trainer = finetuning.Trainer(config, 10, multilabel=False)
  pretrained, _, _ = state_lib.restore(config, workdir, "latest", trainer.mesh)
  state = trainer.init(0, pretrained)
  saved = _saved(workdir)
  assert set(saved["params"]["projection"]) == {"dense1", "bn1", "dense2", "bn2", "out"}
  assert set(state.params) == {"encoder", "projection", "head"}
  assert set(state.params["projection"]) == {"dense1", "bn1"}     # dense2, bn2, out: dropped
  assert state.params["head"]["out"]["kernel"].shape == (config.model.hidden_mlp, 10)
  src = sources.make_source(config.data, "train")
  fit, val = np.arange(0, 32), np.arange(32, 48)
  _, last, _ = trainer.fit(state, Subset(src, fit), Subset(src, val), src.labels[val], "label",
                           seed=0)
  assert int(last.step) == 32 // config.finetune.batch_size
  for part in ("encoder", "projection"):      # trained on, from the pretrained values
    before = jax.tree.leaves({k: v for k, v in saved["params"][part].items()
                              if part == "encoder" or k in ("dense1", "bn1")})
    after = jax.tree.leaves(last.params[part])
    assert len(before) == len(after)
    assert all(not np.array_equal(a, b) for a, b in zip(after, before)), part


def test_a_head_layer_past_the_hidden_ones_is_refused_in_one_line():
  config = _config()
  config.model.proj_layers = 3
  config.finetune.from_projection = 3          # 3 layers: 2 hidden, then the output
  with pytest.raises(ValueError, match=r"^finetune\.from_projection=3: expected 0\.\.2 "
                     r"\(model\.proj_layers=3\)$"):
    finetuning.Trainer(config, 10, multilabel=False)

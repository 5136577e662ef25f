"""The run folder's contract: what a pretraining workdir holds, under which names.

  config.json              the run's config: `write_config` at the start, `load_config` after
  checkpoints/<step>/      the latest steps: train state and data position (checkpoint.py)
  checkpoints_best/<step>/ the best step by the monitored metric (checkpoint.py, monitor.py)
  checkpoints_corrupt/     steps that did not restore, moved aside (checkpoint.py)
  monitor.json             the evaluations during pretraining (monitor.py)
  events.out.tfevents*     TensorBoard event files, one per start (logs.Writer)
  linear_eval.json         the linear probe (evaluate.py)
  finetune.json, .md       fine-tuning (finetuning.py)
  finetune/<init>_<frac>/  each fine-tuned model scored there (orbax: params, batch_stats)
  distill.json, .md        self-distillation (distillation.py)
  distill/<init>_<frac>_<student>/  a student's checkpoints (state, data position), result.json
  report.md, plots/        the model report (report.py): loss curve, embedding map, neighbours
  wandb/                   with logs.wandb: the W&B run's files and its id (logs.py)

The bottom of the runtime layer: it imports no simclr_jax module. A workdir may be anything
`etils.epath` opens (a local folder, `gs://bucket/run`).
"""

from __future__ import annotations

import json
import os

import ml_collections
from etils import epath

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
BEST_DIR = "checkpoints_best"
CORRUPT = "checkpoints_corrupt"
HISTORY = "monitor.json"
EVENTS = "events.out.tfevents*"
LINEAR_EVAL = "linear_eval.json"
FINETUNE = "finetune.json"
FINETUNE_TABLE = "finetune.md"
FINETUNE_MODELS = "finetune"
DISTILL = "distill.json"
DISTILL_TABLE = "distill.md"
DISTILL_DIR = "distill"
REPORT = "report.md"
PLOTS = "plots"
CURVE_PLOT = os.path.join(PLOTS, "loss_curve.png")
CURVE_CSV = os.path.join(PLOTS, "loss_curve.csv")
EMBEDDING_MAP = os.path.join(PLOTS, "embedding_map.png")   # the report's pictures of h
NEIGHBOURS = os.path.join(PLOTS, "neighbours.png")


def path(workdir) -> epath.Path:
  """`workdir` as an epath.Path; local paths made absolute (orbax wants absolute paths)."""
  if "://" in str(workdir):
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(workdir))   # etils 1.10's Path has no .absolute()


def read_config(workdir) -> dict | None:
  """The config.json a run saved, as the dict written (fields newer than the run are absent);
  None where the workdir holds none. ValueError: a config.json that is not JSON."""
  file = epath.Path(workdir) / CONFIG
  if not file.exists():
    return None
  return json.loads(file.read_text())


def load_config(workdir) -> ml_collections.ConfigDict:
  """`read_config` as a ConfigDict; FileNotFoundError where the workdir holds no config.json."""
  saved = read_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"no {epath.Path(workdir) / CONFIG}: is {str(workdir)!r} the "
                            "workdir of a pretraining run?")
  return ml_collections.ConfigDict(saved)


def write_config(config, workdir) -> None:
  """workdir/config.json (written whole, then renamed over the old one)."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / (CONFIG + ".tmp")
  tmp.write_text(config.to_json_best_effort(indent=2))
  tmp.replace(workdir / CONFIG)


def steps(directory) -> list[int]:
  """The step folders of a checkpoint directory (orbax's unfinished tmp folders excluded)."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def has_checkpoints(workdir) -> bool:
  return bool(steps(epath.Path(workdir) / CHECKPOINTS))

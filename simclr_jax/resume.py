"""A resume checked against its workdir before the workdir or its config.json is written.

`start_run(config, workdir)`, the start of `train.pretrain`: the config is checked
(simclr_jax/validate.py); when the workdir already has checkpoints, it is compared with the
config.json saved beside them, and a field outside `MAY_CHANGE` that differs refuses the
resume (`validate.ConfigError`), listing each such field with its saved and new value, and
leaving config.json and the checkpoints as they are. Fields in `MAY_CHANGE` may differ; each
change is logged. Only then is the config logged and are the workdir and its config.json
written.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging
from etils import epath
from flax import traverse_util

from simclr_jax import validate
from simclr_jax.validate import ConfigError, fail, one_line
from simclr_jax.workdir import has_checkpoints, write_config

# Fields that may differ between a workdir's config.json and the config that resumes it (an
# entry ending in '.' is a whole group). Each change is logged. Everything else must match:
# the checkpoints hold the model, optimizer state and data position those fields made.
MAY_CHANGE = (
    "train.epochs", "train.steps",      # extend (or shorten) a run; the lr schedule is
                                        # recomputed for the new total (docs/resuming.md)
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.max_bad_steps",
    "train.report",
    "train.num_devices",                # replicated state restores on any device count
    "train.patience", "train.min_delta",
    "data.path",                        # data moved; its shape and channels are checked again
    "data.workers", "data.prefetch", "data.eval_split",
    "model.conv_impl",                  # the same parameters, another convolution kernel
    "model.remat",                      # the same parameters and gradients, less memory
    "train.chunk_size",                 # the same state; BatchNorm groups chunks instead
    "eval.", "finetune.", "distributed.",
    "logs.",                            # where the metrics are mirrored (W&B on or off)
    "distill.",                         # read by `simclr-jax distill` only
)


def may_change(field: str) -> bool:
  return any(field == p or (p.endswith(".") and field.startswith(p)) for p in MAY_CHANGE)


def _comparable(config_dict: dict) -> dict[str, Any]:
  """Flat {field: JSON value}; augment as its resolved per-view values (so a preset's value
  and the same value set explicitly compare equal); other sources' options left out."""
  from simclr_jax import augment
  flat = traverse_util.flatten_dict(config_dict, sep=".")
  source = config_dict.get("data", {}).get("source")
  groups = set(config_dict.get("data", {})) & set(validate.names_of("sources")())
  flat = {k: v for k, v in flat.items()
          if not any(k.startswith(f"data.{g}.") for g in groups if g != source)}
  try:
    views = augment.resolve(config_dict.get("augment") or {})
  except (ValueError, TypeError):
    return flat                         # an augment schema of another version: raw fields
  flat = {k: v for k, v in flat.items() if not k.startswith("augment.")}
  for name in views[0]:
    v1, v2 = json.loads(json.dumps(views[0][name])), json.loads(json.dumps(views[1][name]))
    flat[f"augment.{name}"] = v1 if v1 == v2 else [v1, v2]
  return flat


def compare(saved: dict, config) -> tuple[list, list]:
  """(refused, allowed): [(field, saved value, new value)] between a workdir's config.json
  and `config`. A field only one side has (another version of the code) is not compared."""
  new = _comparable(json.loads(config.to_json_best_effort()))
  old = _comparable(saved)
  refused, allowed = [], []
  for field in sorted(set(old) & set(new)):
    if old[field] != new[field]:
      (allowed if may_change(field) else refused).append((field, old[field], new[field]))
  return refused, allowed


def check_checkpoint(config, workdir) -> None:
  """linear_eval / finetune: the workdir has checkpoints, and the step eval.checkpoint names."""
  workdir = epath.Path(workdir)
  if not has_checkpoints(workdir):
    raise ConfigError(f"no checkpoints in {workdir / 'checkpoints'}: is {str(workdir)!r} the "
                      "workdir of a pretraining run that saved one?")
  which = str(config.eval.get("checkpoint", "best")).strip()
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  if which.isdigit() and int(which) not in steps:
    fail("eval.checkpoint", which, f"'best', 'latest' or a saved step of {workdir}: {steps}")


def check_resume(config, workdir) -> None:
  """Refuses a resume whose config differs from the checkpoints' in a field outside
  MAY_CHANGE; logs the allowed changes. A workdir without checkpoints is not compared."""
  workdir = epath.Path(workdir)
  if not has_checkpoints(workdir):
    return
  path = workdir / "config.json"
  if not path.exists():
    logging.warning("%s has checkpoints but no config.json: the resume is not checked", workdir)
    return
  try:
    saved = json.loads(path.read_text())
  except (ValueError, OSError) as e:
    raise ConfigError(one_line(f"{path}: unreadable ({type(e).__name__}: {e}); its checkpoints "
                               "cannot be checked against this config")) from None
  refused, allowed = compare(saved, config)
  for field, old, new in allowed:
    logging.info("Resume: %s changed from %r to %r (allowed on a resume)", field, old, new)
  if refused:
    diffs = "; ".join(f"{field}: saved {validate.show(old)}, new {validate.show(new)}"
                      for field, old, new in refused)
    raise ConfigError(one_line(
        f"cannot resume {workdir}: its checkpoints were made with another config ({diffs}). "
        f"Use a new --workdir, or set these fields back; on a resume only "
        f"{', '.join(MAY_CHANGE)} may change"))


def start_run(config, workdir):
  """The start of `train.pretrain`: check, resume check, the config logged, then workdir and
  config.json (chief process only). Returns the train split's source."""
  import jax
  source = validate.opened_source(config)
  if source is None:
    source = validate.check(config, "pretrain")
    validate.opened_source(config)
  check_resume(config, workdir)
  # The config once it may run: a refused start prints its one error line, not ~200 lines.
  logging.info("config:\n%s", config)
  if jax.process_index() == 0:
    write_config(config, workdir)
  return source

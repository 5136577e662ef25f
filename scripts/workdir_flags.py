"""Command-line flags of the scripts that read a pretraining workdir (linear_eval, finetune).

`--workdir DIR` plus `--config.<field>=value` overrides applied to the config the run saved in
DIR/config.json (fields it predates take their defaults). absl needs the config flag defined,
with its default, before it parses the command line, so the workdir is read from argv first.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from configs import default


def _workdir_from_argv(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def define(argv=None):
  """(workdir flag, config flag) for the workdir named in argv (default sys.argv)."""
  workdir = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
  flags.mark_flags_as_required(["workdir"])
  path = _workdir_from_argv(sys.argv if argv is None else argv)
  path = os.path.join(path, "config.json") if path else ""
  saved = json.load(open(path)) if path and os.path.exists(path) else {}
  config = config_flags.DEFINE_config_dict(
      "config", default.with_defaults(saved), "The run's config; override fields as --config.x=...")
  return workdir, config


def require_run(workdir: str) -> None:
  """A clear error, before any work, when `workdir` holds no pretraining run."""
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise ValueError(f"no {workdir}/config.json: is it the workdir of a pretraining run?")

"""Flags and start-up of the scripts that read a pretraining workdir (linear_eval, finetune).

`--workdir DIR` plus `--config.<field>=value` overrides applied to the config the run saved in
DIR/config.json (fields it predates take their defaults). absl needs the config flag defined,
with its default, before it parses the command line, so the workdir is read from argv first.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from configs import default
from simclr_jax import logs, parallel


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


def start(argv, workdir: str) -> None:
  """What both scripts do before any work: refuse stray arguments and a workdir without a
  pretraining run (absl usage errors), quiet the libraries' logs, one CPU device per core."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise app.UsageError(f"no {workdir}/config.json: is it the workdir of a pretraining run?")
  logs.quiet_libraries()
  parallel.use_all_cpu_cores()

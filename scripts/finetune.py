"""Fine-tune a pretrained encoder (and train the same classifier from scratch):

  python scripts/finetune.py --workdir runs/digits \
      --config.finetune.label_fractions='(0.05,0.25,0.5,1.0)'

Reads the run's config.json (fields it predates take their defaults), applies the
--config.<field>=... overrides, fine-tunes the `eval.checkpoint` (best by default, else the
latest) on each label fraction, prints one line per model and writes WORKDIR/finetune.json
and WORKDIR/finetune.md (fractions x linear probe / fine-tuned / from scratch).
"""

import json
import os
import sys

# Configs import each other as `configs.<name>`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags
from ml_collections import config_flags

from configs import default
from simclr_jax import logs, parallel

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
flags.mark_flags_as_required(["workdir"])


def _workdir_from_argv(argv) -> str | None:
  """--workdir is needed before flag parsing: the --config.* overrides apply to its config."""
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _define_config(argv):
  workdir = _workdir_from_argv(argv)
  path = os.path.join(workdir, "config.json") if workdir else ""
  saved = json.load(open(path)) if path and os.path.exists(path) else {}
  return config_flags.DEFINE_config_dict("config", default.with_defaults(saved),
                                         "The run's config; override fields as --config.x=...")


_CONFIG = _define_config(sys.argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not os.path.exists(os.path.join(_WORKDIR.value, "config.json")):
    raise app.UsageError(f"no {_WORKDIR.value}/config.json: is it the workdir of a pretraining "
                         "run?")
  logs.quiet_libraries()
  parallel.use_all_cpu_cores()
  from simclr_jax import finetune, metrics
  report = finetune.finetune(_WORKDIR.value, _CONFIG.value)
  for r in report["results"]:
    print(f"{r['init']:<11s} labels {r['label_fraction']:>6.1%}  best epoch {r['best_epoch']:>3d}"
          f"/{r['epochs_run']}  {metrics.headline(r['metrics'])}", flush=True)


if __name__ == "__main__":  # the guard grain's worker processes need
  app.run(main)

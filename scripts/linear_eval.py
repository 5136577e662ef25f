"""Linear probe of a pretrained encoder: `python scripts/linear_eval.py --workdir runs/digits`.

Restores the latest checkpoint of the run in --workdir (with the config it saved), extracts
frozen features h of the labelled train and eval splits, fits a logistic regression, prints
the test accuracy and writes WORKDIR/linear_eval.json.
"""

import os
import sys

# Configs import each other as `configs.<name>`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from simclr_jax import logs, parallel

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()
  parallel.use_all_cpu_cores()
  from simclr_jax import evaluate
  report = evaluate.linear_eval(_WORKDIR.value)
  evaluate.print_report(report)


if __name__ == "__main__":
  app.run(main)

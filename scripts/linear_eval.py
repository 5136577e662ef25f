"""Linear probe of a pretrained encoder: `python scripts/linear_eval.py --workdir runs/digits`.

  python scripts/linear_eval.py --workdir runs/digits \
      --config.eval.label_fractions='(0.05,0.25,0.5,1.0)'

Restores the `eval.checkpoint` of the run in --workdir (with the config it saved, and any
--config.<field>=... overrides), extracts
frozen features h of the labelled train and eval splits, fits a logistic regression, prints
the test accuracy and writes WORKDIR/linear_eval.json.
"""

import os
import sys

# Configs import each other as `configs.<name>`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workdir_flags  # scripts/workdir_flags.py (the script's folder is on sys.path)

_WORKDIR, _CONFIG = workdir_flags.define()


def main(argv):
  workdir_flags.start(argv, _WORKDIR.value, _CONFIG.value, "linear_eval")
  from simclr_jax import evaluate
  report = evaluate.linear_eval(_WORKDIR.value, _CONFIG.value)
  evaluate.print_report(report)


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return workdir_flags.run(main, argv)


if __name__ == "__main__":
  workdir_flags.app_run(main)

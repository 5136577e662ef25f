"""simclr-jax linear-eval: the linear probe of a pretrained encoder.

  simclr-jax linear-eval --workdir runs/digits \
      --config.eval.label_fractions='(0.05,0.25,0.5,1.0)'

Restores the `eval.checkpoint` of the run in --workdir (with the config it saved, and any
--config.<field>=... overrides), extracts frozen features h of the labelled train and eval
splits, fits a logistic regression, prints the test accuracy and writes
WORKDIR/linear_eval.json.
"""

from simclr_jax import api
from simclr_jax.cli import shared

_WORKDIR, _CONFIG = shared.define()


def main(argv):
  shared.start(argv)
  api.linear_eval(_WORKDIR.value, _CONFIG.value, verbose=shared.verbose())


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)

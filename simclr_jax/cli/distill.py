"""simclr-jax distill: SimCLR v2 self-distillation of the fine-tuned models into students.

  simclr-jax finetune --workdir runs/digits --config.finetune.label_fractions='(0.1,1.0)'
  simclr-jax distill --workdir runs/digits --config.distill.student.width_multiplier=0.125

Reads the run's config.json (fields it predates take their defaults), applies the
--config.<field>=... overrides, and for each label fraction with a model in finetune.json
(`distill.label_fractions`, default all) trains a student (`distill.student.*`, default the
run's own backbone) on that teacher's softened predictions over the train split
(`distill.temperature`, `distill.label_weight`). Checkpoints go to WORKDIR/distill/; the same
command resumes a killed run. Prints the teacher's and the student's score per fraction and
writes WORKDIR/distill.json and WORKDIR/distill.md.
"""

from simclr_jax import api
from simclr_jax.cli import shared

_WORKDIR, _CONFIG = shared.define()


def main(argv):
  shared.start(argv)
  api.distill(_WORKDIR.value, _CONFIG.value, verbose=shared.verbose())


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)

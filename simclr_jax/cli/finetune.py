"""simclr-jax finetune: fine-tune a pretrained encoder (and train the same classifier from
scratch).

  simclr-jax finetune --workdir runs/digits \
      --config.finetune.label_fractions='(0.05,0.25,0.5,1.0)'

Reads the run's config.json (fields it predates take their defaults), applies the
--config.<field>=... overrides, fine-tunes the `eval.checkpoint` (best by default, else the
latest) on each label fraction, prints one line per model and writes WORKDIR/finetune.json
and WORKDIR/finetune.md (fractions x linear probe / fine-tuned / from scratch).
"""

from simclr_jax import api
from simclr_jax.cli import shared

_WORKDIR, _CONFIG = shared.define()


def main(argv):
  shared.start(argv)
  api.finetune(_WORKDIR.value, _CONFIG.value, verbose=shared.verbose())


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)

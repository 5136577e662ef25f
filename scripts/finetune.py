"""Fine-tune a pretrained encoder (and train the same classifier from scratch):

  python scripts/finetune.py --workdir runs/digits \
      --config.finetune.label_fractions='(0.05,0.25,0.5,1.0)'

Reads the run's config.json (fields it predates take their defaults), applies the
--config.<field>=... overrides, fine-tunes the `eval.checkpoint` (best by default, else the
latest) on each label fraction, prints one line per model and writes WORKDIR/finetune.json
and WORKDIR/finetune.md (fractions x linear probe / fine-tuned / from scratch).
"""

import os
import sys

# Configs import each other as `configs.<name>`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workdir_flags  # scripts/workdir_flags.py (the script's folder is on sys.path)

_WORKDIR, _CONFIG = workdir_flags.define()


def main(argv):
  workdir_flags.start(argv, _WORKDIR.value, _CONFIG.value, "finetune")
  from simclr_jax import finetune, metrics
  report = finetune.finetune(_WORKDIR.value, _CONFIG.value)
  for r in report["results"]:
    print(f"{r['init']:<11s} labels {r['label_fraction']:>6.1%}  best epoch {r['best_epoch']:>3d}"
          f"/{r['epochs_run']}  {metrics.headline(r['metrics'])}", flush=True)


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return workdir_flags.run(main, argv)


if __name__ == "__main__":  # the guard grain's worker processes need
  workdir_flags.app_run(main)

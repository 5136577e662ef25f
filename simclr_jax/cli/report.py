"""simclr-jax report: the model report of a pretraining run.

  simclr-jax report --workdir runs/digits

Writes WORKDIR/report.md and WORKDIR/plots/loss_curve.png (+ .csv): the run's parameters as
YAML, the per-module parameter table, the loss curve over every logged step (all event files,
resumes included), the metadata (machine, training time, model size, early stopping, best
checkpoint, set sizes, class balance, pixel statistics), the embedding map and nearest-
neighbour grid (plots/embedding_map.png, plots/neighbours.png) and the probe, fine-tuning and
online results the workdir holds (simclr_jax/report.py). Pretraining writes it at its end too; run
this after linear-eval or finetune to add their results.
"""

from absl import flags

from simclr_jax import api
from simclr_jax.cli import shared

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
_DATA_STATS = flags.DEFINE_bool("data_stats", True, "Measure the set sizes, class balance and "
                                "pixel statistics of the config's data (reads the data).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 2000, "Examples the pixel statistics "
                                     "are measured on (0 = all).")
_PICTURES = flags.DEFINE_bool("pictures", True, "Draw the embedding map and the neighbour "
                              "grid of the eval split (restores the encoder, reads the data).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  shared.no_extra_args(argv)
  api.require_run(_WORKDIR.value)
  from simclr_jax import logs, report
  logs.quiet_libraries()
  path = report.write_report(_WORKDIR.value, _DATA_STATS.value, _MAX_EXAMPLES.value,
                             _PICTURES.value)
  print(path, flush=True)


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)      # a known error: one `error:` line, exit 2

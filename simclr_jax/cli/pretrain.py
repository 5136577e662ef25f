"""simclr-jax pretrain: SimCLR pretraining of a config in a workdir.

  simclr-jax pretrain --config digits --workdir runs/digits --linear_eval
  simclr-jax pretrain --config my_config.py --config.train.epochs=5

--config is a packaged config's name (NAME[:variant], listed under --config below) or a config
file of your own (FILE.py[:variant]; simclr_jax/configs/__init__.py shows one);
--config.<field>=value overrides any field. Without --workdir the run goes to
runs/<config name>-<YYYYmmdd-HHMMSS>, printed at the start.

Runs on every device the machine has (on a CPU-only host, one emulated device per core).
Starting again with the same --workdir resumes from its latest checkpoint, if the config is
compatible with the one saved there (docs/resuming.md).
A config that cannot run is refused before anything compiles or writes: `error: ...` on
stderr, exit code 2 (`--verbose`: with its traceback and the config).
"""

from absl import flags

from simclr_jax import api, configs
from simclr_jax.cli import shared

_CONFIG = shared.define_config_file()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, events, reports "
                                "(default runs/<config name>-<YYYYmmdd-HHMMSS>).")
_EVAL = flags.DEFINE_bool("linear_eval", False, "Run the linear probe after pretraining.")


def main(argv):
  shared.no_extra_args(argv)
  spec = flags.FLAGS["config"].serialize().split("=", 1)[-1]      # FILE.py[:variant]
  api.pretrain(_CONFIG.value, _WORKDIR.value, linear_eval=_EVAL.value,
               name=configs.run_name(spec), verbose=shared.verbose())


def run_cli(argv) -> int:
  """`main` for this argv (argv[0] the program name) in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)

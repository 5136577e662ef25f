"""SimCLR pretraining: `python scripts/pretrain.py --config configs/digits.py --workdir runs/digits`.

Without --workdir the run goes to runs/<config name>-<YYYYmmdd-HHMMSS>, printed at the start.

Runs on every device the machine has (on a CPU-only host, one emulated device per core).
Starting again with the same --workdir resumes from its latest checkpoint, if the config is
compatible with the one saved there (docs/resuming.md).
A config that cannot run is refused before anything compiles or writes: `error: ...` on
stderr, exit code 2 (`--verbose`: with its traceback and the config).
"""

import os
import sys

# Configs import each other as `configs.<name>`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging
from ml_collections import config_flags

import workdir_flags  # scripts/workdir_flags.py (the script's folder is on sys.path)
from simclr_jax import logs, startup, validate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, events, reports "
                                "(default runs/<config name>-<YYYYmmdd-HHMMSS>).")
_EVAL = flags.DEFINE_bool("linear_eval", False, "Run the linear probe after pretraining.")


def default_workdir() -> str:
  """runs/<config file name>[-<variant>]-<YYYYmmdd-HHMMSS>, the time of process 0's start (one
  name for every process of a multi-host run)."""
  import time

  import numpy as np
  from jax.experimental import multihost_utils
  spec = flags.FLAGS["config"].serialize().split("=", 1)[-1]      # configs/x.py[:variant]
  path, _, variant = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0] + (f"-{variant}" if variant else "")
  stamp = int(multihost_utils.broadcast_one_to_all(np.int64(time.time())))
  return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}")


def main(argv):
  workdir_flags.no_extra_args(argv)
  logs.quiet_libraries()
  config = _CONFIG.value
  if workdir_flags.verbose():
    logging.info("config:\n%s", config)
  validate.check_fields(config)           # before the start-up reads its fields
  try:
    startup.start(config, multi_host=True)   # cache, conv path (logged), CPU devices, hosts
  except ValueError as e:
    raise validate.ConfigError(validate.one_line(e)) from None
  validate.check(config, "pretrain")
  if _EVAL.value:                         # the probe's needs too, before hours of training
    validate.check(config, "linear_eval")
  from simclr_jax import train  # after the device setup: importing is fine, computing is not
  workdir = _WORKDIR.value or default_workdir()
  print(f"workdir: {workdir}", flush=True)
  train.pretrain(config, workdir)   # logs the config once its resume check passes; a preempted
                                    # run exits here (train.Preempted)
  from simclr_jax import report             # matplotlib, only once the run is done
  report.write_after_pretraining(config, workdir)   # train.report; a failure is logged only
  if _EVAL.value:
    from simclr_jax import evaluate
    evaluate.print_report(evaluate.linear_eval(workdir, config))


def run_cli(argv) -> int:
  """`main` for this argv (argv[0] the program name) in this process; returns the exit code."""
  return workdir_flags.run(main, argv)


if __name__ == "__main__":  # grain's worker processes are spawned and re-import this file
  workdir_flags.app_run(main)

"""SimCLR pretraining: `python scripts/pretrain.py --config configs/digits.py --workdir runs/digits`.

Runs on every device the machine has (on a CPU-only host, one emulated device per core).
Starting again with the same --workdir resumes from its latest checkpoint.
"""

import os
import sys

# Configs import each other as `configs.<name>`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging
from ml_collections import config_flags

from simclr_jax import distributed, logs, parallel

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, events, reports.")
_EVAL = flags.DEFINE_bool("linear_eval", False, "Run the linear probe after pretraining.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()
  config = _CONFIG.value
  parallel.use_all_cpu_cores()
  distributed.initialize_distributed(config)
  from simclr_jax import train  # after the device setup: importing is fine, computing is not
  logging.info("config:\n%s", config)
  train.pretrain(config, _WORKDIR.value)
  if _EVAL.value:
    from simclr_jax import evaluate
    report = evaluate.linear_eval(_WORKDIR.value, config)
    evaluate.print_report(report)


if __name__ == "__main__":  # grain's worker processes are spawned and re-import this file
  app.run(main)

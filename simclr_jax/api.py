"""The runs in Python (a notebook, a script of your own), by the same steps as the tool:

  import simclr_jax
  workdir = simclr_jax.pretrain("digits", "runs/digits")   # a config name, path or ConfigDict
  simclr_jax.linear_eval(workdir)                          # the run's saved config
  simclr_jax.finetune(workdir, config)                     # or a config of your own

Before any work each one quiets the libraries' logs, runs the start-up (simclr_jax/startup.py:
the compilation cache, the convolution path, the CPU devices) and the checks
(simclr_jax/validate.py, simclr_jax/resume.py): a config that cannot run is a one-line
`validate.ConfigError` before anything compiles or writes. The CPU device count is fixed when
JAX first computes, so in a notebook call these before anything else runs on JAX (later, the
devices stay as they were). `simclr-jax pretrain | linear-eval | finetune` (simclr_jax/cli)
are these functions behind flags.
"""

from __future__ import annotations

import os

from absl import logging

from simclr_jax import configs, logs, resume, startup, validate
from simclr_jax import workdir as workdir_lib
from simclr_jax.configs import default


def config_of(config):
  """A ConfigDict as it is; a config name or file path (configs.get) read."""
  return configs.get(config) if isinstance(config, str) else config


def saved_config(workdir: str | None):
  """A pretraining workdir's config.json over every default field (`with_defaults` of
  simclr_jax/configs/default.py), so that a run older than a field takes its default and its
  override; every default where the workdir holds no config.json (`require_run` refuses that
  workdir). ConfigError: a config.json that cannot be read."""
  try:
    saved = (workdir_lib.read_config(workdir) if workdir else None) or {}
  except (ValueError, OSError) as e:
    raise validate.ConfigError(validate.one_line(
        f"{workdir}/{workdir_lib.CONFIG}: unreadable ({type(e).__name__}: {e})")) from None
  if isinstance(saved.get("model"), dict) and "conv_impl" in saved["model"]:
    # The saved value is the convolution the pretraining host ran ('onednn' there may not build
    # here): the start-up chooses again, unless the caller's config says otherwise.
    saved["model"]["conv_impl"] = "auto"
  return default.with_defaults(saved)


def require_run(workdir: str) -> None:
  """Refuses a workdir that holds no pretraining run (every reader of one)."""
  if not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG)):
    raise validate.ConfigError(f"no {workdir}/{workdir_lib.CONFIG}: is it the workdir of a pretraining "
                               "run?")


def _start(config, multi_host: bool = False) -> None:
  logs.quiet_libraries()
  try:
    startup.start(config, multi_host)       # model.conv_impl='onednn' where it cannot run: refused
  except ValueError as e:
    raise validate.ConfigError(validate.one_line(e)) from None


def default_workdir(name: str) -> str:
  """runs/<name>-<YYYYmmdd-HHMMSS>, the time of process 0's start (one name for every process
  of a multi-host run: call it after the start-up)."""
  import time

  import numpy as np
  from jax.experimental import multihost_utils
  stamp = int(multihost_utils.broadcast_one_to_all(np.int64(time.time())))
  return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}")


def pretrain(config, workdir: str | None = None, *, linear_eval: bool = False,
             name: str | None = None, verbose: bool = False) -> str:
  """Pretrains (or resumes: docs/resuming.md) `config` in `workdir`, writes the report, then
  with `linear_eval` runs the probe; returns the workdir. Without a workdir the run goes to
  runs/<name>-<YYYYmmdd-HHMMSS>, printed; `name` defaults to the config's name when `config`
  is one (`configs.run_name`: 'digits', 'sdo-hmi'), else its data.source."""
  if name is None:
    name = configs.run_name(config) if isinstance(config, str) else None
  config = config_of(config)
  logs.quiet_libraries()                  # first: it sets the log level the config is logged at
  if verbose:                             # before the checks, so a refused config is seen
    logging.info("config:\n%s", config)
  validate.check_fields(config)           # before the start-up reads its fields
  _start(config, multi_host=True)         # cache, conv path (logged), CPU devices, hosts
  validate.check(config, "pretrain")
  if linear_eval:                         # the probe's needs too, before hours of training
    validate.check(config, "linear_eval")
  from simclr_jax import train  # after the device setup: importing is fine, computing is not
  workdir = workdir or default_workdir(name or config.data.source)
  print(f"workdir: {workdir}", flush=True)
  train.pretrain(config, workdir)   # logs the config once its resume check passes; a preempted
                                    # run exits here (train.Preempted)
  from simclr_jax import report             # matplotlib, only once the run is done
  report.write_after_pretraining(config, workdir)   # train.report; a failure is logged only
  logs.log_plots(config, workdir)           # logs.wandb: the report's plots, to the run's W&B run
  if linear_eval:
    from simclr_jax import evaluate
    evaluate.print_report(evaluate.linear_eval(workdir, config))
  return workdir


def check_run(workdir: str, config, purpose: str, verbose: bool = False) -> None:
  """What linear_eval and finetune do before any work: refuse a workdir without a pretraining
  run, the start-up, then the config check for `purpose` and the checkpoint eval.checkpoint
  names."""
  require_run(workdir)
  _start(config)
  if verbose:
    logging.info("config:\n%s", config)
  validate.check(config, purpose)
  resume.check_checkpoint(config, workdir)


def linear_eval(workdir: str, config=None, *, verbose: bool = False) -> dict:
  """The linear probe of the run in `workdir` (its `eval.checkpoint`): prints the scores,
  writes workdir/linear_eval.json and returns it. `config`: default the run's saved one."""
  config = saved_config(workdir) if config is None else config_of(config)
  check_run(workdir, config, "linear_eval", verbose)
  from simclr_jax import evaluate
  result = evaluate.linear_eval(workdir, config)
  evaluate.print_report(result)
  return result


def finetune(workdir: str, config=None, *, verbose: bool = False) -> dict:
  """Fine-tunes the run in `workdir` (and trains the same classifier from scratch) on each
  finetune.label_fractions: prints one line per model, writes workdir/finetune.json and
  finetune.md and returns the report. `config`: default the run's saved one."""
  config = saved_config(workdir) if config is None else config_of(config)
  check_run(workdir, config, "finetune", verbose)
  from simclr_jax import finetuning, metrics
  result = finetuning.finetune(workdir, config)
  for r in result["results"]:
    print(f"{r['init']:<11s} labels {r['label_fraction']:>6.1%}  best epoch {r['best_epoch']:>3d}"
          f"/{r['epochs_run']}  {metrics.headline(r['metrics'])}", flush=True)
  return result


def distill(workdir: str, config=None, *, verbose: bool = False) -> dict:
  """SimCLR v2 self-distillation of the models `finetune` saved in `workdir` into students
  (resumes a killed run): prints the teacher's and the student's score per label fraction,
  writes workdir/distill.json and distill.md and returns the report. `config`: default the
  run's saved one (its distill.* fields: simclr_jax/distillation.py)."""
  config = saved_config(workdir) if config is None else config_of(config)
  check_run(workdir, config, "finetune", verbose)
  from simclr_jax import distillation, metrics
  result = distillation.distill(workdir, config)
  for r in result["results"]:
    print(f"labels {r['label_fraction']:>6.1%}  teacher {metrics.headline(r['teacher_metrics'])}"
          f"  student {metrics.headline(r['metrics'])}  ({r['seconds']:.0f} s)", flush=True)
  return result

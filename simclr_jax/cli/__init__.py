"""The command-line tool: `simclr-jax <command> [flags]`, or `python -m simclr_jax <command>`.

One module per command; `main` imports only the chosen one, because absl's flags are global
and several commands define the same flag (--workdir, --config). `simclr-jax <command> --help`
lists the command's flags.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module in simclr_jax/cli, one line for the list)
COMMANDS = {
    "pretrain": ("pretrain", "SimCLR pretraining of a config in a workdir (resumes it)"),
    "linear-eval": ("linear_eval", "the linear probe of a pretrained encoder"),
    "finetune": ("finetune", "fine-tune a pretrained encoder, beside the same model from "
                 "scratch"),
    "distill": ("distill", "SimCLR v2 self-distillation: a student learns from the fine-tuned "
                "teacher"),
    "export": ("export", "the pretrained encoder alone, for simclr_jax.load_encoder"),
    "embed": ("embed", "embeddings of a folder or glob of files (npz, csv or parquet; --plot)"),
    "report": ("report", "the model report of a run (report.md, loss curve)"),
    "sweep": ("sweep", "a grid of pretraining runs scored downstream, one table"),
    "augment-grid": ("augment_grid", "a picture of a config's augmented views"),
    "plan": ("plan", "per-device memory of a recipe's train step, compiled, not run"),
}
PROG = "simclr-jax"


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f"usage: {PROG} <command> [flags]   ({PROG} <command> --help: its flags)", "",
           "commands:"]
  lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
  lines += ["", f"e.g. {PROG} pretrain --config digits --workdir runs/digits --linear_eval"]
  return "\n".join(lines)


def _key_flags_for_help(module, prog: str) -> None:
  """absl's --help lists the key flags of the module named sys.argv[0] (here `prog`) and the
  docstring of __main__: make them the command's (its flags and --verbose) and its docstring."""
  from absl import flags
  for name in (module.__name__, f"{__name__}.shared"):
    for flag in flags.FLAGS.get_key_flags_for_module(name):
      flags.FLAGS.register_key_flag_for_module(prog, flag)
  sys.modules["__main__"].__doc__ = module.__doc__


def main(argv: list[str] | None = None) -> int:
  """Runs `argv` (default sys.argv[1:]): a command and its flags. The command's own exit code
  (absl's app.run exits with it); 0 after the list of commands; 2 for an unknown command."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0
  command, rest = argv[0], ["--help" if a == "-h" else a for a in argv[1:]]
  if command not in COMMANDS:
    print(f"{PROG}: unknown command {command!r}; commands: {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2
  prog = f"{PROG} {command}"
  # sys.argv before the import: the workdir commands read --workdir from it as they define
  # their flags (shared.define), and config_flags reads overrides from it.
  sys.argv = [prog, *rest]
  module = importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")
  _key_flags_for_help(module, prog)
  module.app_run([prog, *rest])
  return 0

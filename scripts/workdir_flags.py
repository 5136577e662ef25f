"""Flags, start-up and error handling of the scripts (pretrain, linear_eval, finetune).

`run(main, argv)` parses the flags and runs `main`; a known error (a bad flag or config
override, a config that simclr_jax/validate.py refuses, a missing or unreadable workdir) is
printed as one line `error: ...` on stderr with exit code 2, without a traceback unless
`--verbose`. It returns the exit code, so tests call a script's `run_cli(argv)` in-process;
`app_run(main)` is the same through absl's app.run (its logging set-up, --help).

`define()`: for the scripts that read a pretraining workdir, `--workdir DIR` plus
`--config.<field>=value` overrides applied to the config the run saved in DIR/config.json
(fields it predates take their defaults; model.conv_impl is this host's, see `define`). absl
needs the config flag defined, with its default, before it parses the command line, so the
workdir is read from argv first.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from configs import default
from simclr_jax import logs, resume, startup, validate

FLAGS = flags.FLAGS
# --verbose: the config is logged before it is checked (else once the start checks pass:
# pretraining logs it at its start, after the resume check), and an error's traceback too.
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print its traceback too, and "
                             "the config before it is checked.")
_unreadable: list[str] = []      # define(): a config.json that could not be read


def verbose(argv=None) -> bool:
  if FLAGS.is_parsed():
    return _VERBOSE.value
  return "--verbose" in (sys.argv if argv is None else argv)


def error_line(e: BaseException) -> str:
  """One line for a known error: config_flags' messages carry a traceback or a repr'd
  newline; keep their first line and the exception's own last line."""
  text = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and e.args else str(e)
  text = text.replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = [lines[0], lines[-1]]
  return re.sub(r"\s+", " ", " ".join(lines)).strip()


def _fail(e: BaseException) -> int:
  if verbose():
    traceback.print_exc()
  print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
  return 2


def _override_name(argv, message: str) -> str | None:
  """The --config.<path> override whose path holds the unknown name quoted in `message`."""
  names = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  key = re.search(r"'(\w+)'", message.replace("\\'", "'"))
  for name in names:
    if key and key.group(1) in name.split("."):
      return name
  return names[0] if names else None


def parse(argv):
  """FLAGS(argv). config_flags reads its overrides from sys.argv (not argv) and defines one
  flag per override as it parses the config; so a second parse in the same process (tests)
  sets sys.argv, drops the previous override flags and needs `--config FILE` in argv."""
  if any(a == "--config" or a.startswith("--config=") for a in argv):
    for name in [n for n in FLAGS if n.startswith("config.")]:
      delattr(FLAGS, name)      # defined again as the config file is parsed
  if FLAGS.is_parsed():
    FLAGS.unparse_flags()
  saved, sys.argv = sys.argv, list(argv)
  try:
    return FLAGS(argv)
  except AttributeError as e:        # config_flags: an override of a field that does not exist
    field = (_override_name(argv, str(e)) or "--config.?").removeprefix("--")
    hint = re.search(r'Did you mean "([^"]+)"', str(e))
    raise validate.ConfigError(f"{field}: no such config field" + (
        f"; did you mean {hint.group(1)!r}?" if hint else "")) from None
  finally:
    sys.argv = saved


def _parse_or_exit(argv):
  try:
    return parse(argv)
  except Exception as e:  # noqa: BLE001  (flags.Error, config_flags' and the config file's)
    sys.exit(_fail(e))


def _call(main, argv) -> int:
  try:
    return main(argv) or 0
  except (validate.ConfigError, app.UsageError) as e:
    return _fail(e)


def run(main, argv) -> int:
  """Parse `argv` and run `main`; the exit code (2: a known error, printed as one line)."""
  try:
    argv = parse(argv)
  except Exception as e:  # noqa: BLE001
    return _fail(e)
  return _call(main, argv)


def app_run(main) -> None:
  """`run` through absl's app.run: its logging handler, --help, faulthandler."""
  app.run(lambda argv: _call(main, argv), flags_parser=_parse_or_exit)


def _workdir_from_argv(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def define(argv=None):
  """(workdir flag, config flag) for the workdir named in argv (default sys.argv)."""
  workdir = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
  flags.mark_flags_as_required(["workdir"])
  path = _workdir_from_argv(sys.argv if argv is None else argv)
  path = os.path.join(path, "config.json") if path else ""
  saved = {}
  if path and os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except (ValueError, OSError) as e:
      _unreadable.append(f"{path}: unreadable ({type(e).__name__}: {e})")
  if isinstance(saved.get("model"), dict) and "conv_impl" in saved["model"]:
    # The saved value is the convolution the pretraining host ran ('onednn' there may not build
    # here): the start-up chooses again, unless --config.model.conv_impl says otherwise.
    saved["model"]["conv_impl"] = "auto"
  config = config_flags.DEFINE_config_dict(
      "config", default.with_defaults(saved), "The run's config; override fields as --config.x=...")
  return workdir, config


def no_extra_args(argv) -> None:
  if len(argv) > 1:
    raise validate.ConfigError(f"unexpected arguments: {argv[1:]}")


def require_run(workdir: str) -> None:
  """Refuses a workdir that holds no pretraining run (every script that reads one)."""
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise validate.ConfigError(f"no {workdir}/config.json: is it the workdir of a pretraining "
                               "run?")


def start(argv, workdir: str, config, purpose: str) -> None:
  """What linear_eval and finetune do before any work: refuse stray arguments and a workdir
  without a pretraining run, quiet the libraries' logs, the start-up (simclr_jax/startup.py:
  the compilation cache, the convolution path, logged, and the CPU devices for it), then the
  config check (simclr_jax/validate.py) and the checkpoint eval.checkpoint names
  (simclr_jax/resume.py)."""
  no_extra_args(argv)
  if _unreadable:
    raise validate.ConfigError(validate.one_line(_unreadable[0]))
  require_run(workdir)
  logs.quiet_libraries()
  try:
    startup.start(config)                 # model.conv_impl='onednn' where it cannot run: refused
  except ValueError as e:
    raise validate.ConfigError(validate.one_line(e)) from None
  if verbose():
    from absl import logging
    logging.info("config:\n%s", config)
  validate.check(config, purpose)
  resume.check_checkpoint(config, workdir)

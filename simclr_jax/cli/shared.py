"""Flags and error handling shared by the subcommands.

`run(main, argv)` parses the flags and runs `main`; a known error (a bad flag or config
override, an unknown config name, a config that simclr_jax/validate.py refuses, a missing or
unreadable workdir) is printed as one line `error: ...` on stderr with exit code 2, without a
traceback unless `--verbose`. It returns the exit code, so tests call a subcommand's
`run_cli(argv)` in-process; `app_run(main, argv)` is the same through absl's app.run (its
logging set-up, --help).

`--config` takes a packaged config's name (`digits`, `sdo:hmi`) or a file path: `parse` puts
the packaged file's path in its place before absl reads it (simclr_jax/configs `path`).

`define()`: for the subcommands that read a pretraining workdir, `--workdir DIR` plus
`--config.<field>=value` overrides applied to the config the run saved in DIR/config.json
(`api.saved_config`). absl needs the config flag defined, with its default, before it parses
the command line, so the workdir is read from argv first.
"""

from __future__ import annotations

import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from simclr_jax import api, configs, validate
from simclr_jax.configs import default

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


def config_paths(argv) -> list[str]:
  """argv with the value of `--config X` / `--config=X` as a file path: a packaged config's
  name resolved (configs.path), a path kept. ValueError: an unknown name."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + configs.path(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = configs.path(out[i + 1])
  return out


def parse(argv):
  """FLAGS(argv), with --config's name resolved (`config_paths`). config_flags reads its
  overrides from sys.argv (not argv) and defines one flag per override as it parses the config;
  so a second parse in the same process (tests) sets sys.argv, drops the previous override
  flags and needs `--config FILE` in argv."""
  argv = config_paths(argv)
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


def app_run(main, argv) -> None:
  """`run` through absl's app.run: its logging handler, --help, faulthandler; exits."""
  app.run(lambda args: _call(main, args), argv=argv, flags_parser=_parse_or_exit)


def define_config_file():
  """--config for the commands that take a config (pretrain, augment-grid): default digits."""
  holder = config_flags.DEFINE_config_file(
      "config", configs.path("digits"), "A packaged config, NAME[:variant] "
      f"({', '.join(configs.names())}), or a config file, FILE.py[:variant]; "
      "--config.<field>=value overrides a field.")
  FLAGS["config"].default_as_str = "'digits'"     # --help: the name, not the installed path
  return holder


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
  try:
    config = api.saved_config(_workdir_from_argv(sys.argv if argv is None else argv))
  except validate.ConfigError as e:     # reported once the flags are parsed (`start`)
    _unreadable.append(str(e))
    config = default.with_defaults({})
  holder = config_flags.DEFINE_config_dict(
      "config", config, "The run's config; override fields as --config.<field>=value.")
  FLAGS["config"].default_as_str = "the config saved in WORKDIR/config.json"   # not all of it
  return workdir, holder


def no_extra_args(argv) -> None:
  if len(argv) > 1:
    raise validate.ConfigError(f"unexpected arguments: {argv[1:]}")


def start(argv) -> None:
  """Before linear-eval's and finetune's work (the rest is api.check_run): refuse stray
  arguments and a config.json that `define` could not read."""
  no_extra_args(argv)
  if _unreadable:
    raise validate.ConfigError(_unreadable[0])

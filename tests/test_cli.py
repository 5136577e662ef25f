"""The `simclr-jax` tool and the packaged configs: names, variants and paths for --config, a
config of one's own built on a packaged one, the list of commands, and each command's --help."""

import importlib
import os
import re

import pytest

import simclr_jax
from helpers import run_python
from simclr_jax import api, cli, configs
from simclr_jax.cli import shared
from simclr_jax.configs import digits, sdo

PACKAGE = os.path.dirname(os.path.abspath(configs.__file__))


def test_names_are_the_recipes_each_with_get_config():
  assert {"cifar10", "digits", "imagenet", "sdo", "sdobenchmark", "sentinel2"} <= set(
      configs.names())
  assert "default" not in configs.names() and "__init__" not in configs.names()
  for name in configs.names():
    assert os.path.exists(configs.path(name))
    assert callable(importlib.import_module(f"simclr_jax.configs.{name}").get_config), name


@pytest.mark.parametrize("spec, want", [
    ("digits", os.path.join(PACKAGE, "digits.py")),
    ("sdo:hmi", os.path.join(PACKAGE, "sdo.py") + ":hmi"),
    ("default", os.path.join(PACKAGE, "default.py")),
    ("my_config.py", "my_config.py"),
    ("my_config.py:variant", "my_config.py:variant"),
    (os.path.join("some", "dir", "digits"), os.path.join("some", "dir", "digits")),
])
def test_a_name_is_the_packaged_file_and_a_path_stays(spec, want):
  assert configs.path(spec) == want


def test_an_unknown_name_is_one_line_listing_the_names():
  with pytest.raises(ValueError) as e:
    configs.path("digts:tiny")
  message = str(e.value)
  assert "\n" not in message and "'digts'" in message
  assert all(name in message for name in configs.names())


def test_get_calls_get_config_as_config_flags_does():
  assert configs.get("digits") == digits.get_config()
  assert configs.get("sdo:hmi") == sdo.get_config("hmi")
  assert configs.get(configs.path("digits") + ":tiny") == digits.get_config("tiny")
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    configs.get("digits:nope")


def test_run_name_is_the_config_name_and_variant():
  assert configs.run_name("digits") == "digits"
  assert configs.run_name("sdo:hmi") == "sdo-hmi"
  assert configs.run_name(configs.path("digits:tiny")) == "digits-tiny"
  assert configs.run_name("a/b/my_config.py") == "my_config"


def _docstring_example() -> str:
  """The `# my_config.py` example of simclr_jax/configs' docstring, as a file's text."""
  block = configs.__doc__.split("# my_config.py\n", 1)[1].split("\n\n  simclr-jax", 1)[0]
  return "\n".join(line.removeprefix("  ") for line in block.splitlines()) + "\n"


def test_a_config_of_ones_own_starts_from_a_packaged_one(tmp_path):
  """The docstring's example, as a user writes it, read by path (no variant: get_config())."""
  (tmp_path / "my_config.py").write_text(_docstring_example())
  c = configs.get(str(tmp_path / "my_config.py"))
  want = digits.get_config()
  assert c.train.epochs == 5 != want.train.epochs
  c.train.epochs = want.train.epochs
  assert c == want
  # A variant goes to get_config(variant), as for the packaged ones.
  (tmp_path / "tiny_too.py").write_text(
      "from simclr_jax.configs import digits\n\n"
      "def get_config(arg=None):\n  c = digits.get_config(arg)\n  c.seed = 7\n  return c\n")
  c = configs.get(f"{tmp_path / 'tiny_too.py'}:tiny")
  assert c.seed == 7 and c.train.steps == digits.get_config("tiny").train.steps
  with pytest.raises(FileNotFoundError, match="no config file"):
    configs.get(str(tmp_path / "missing.py"))


def test_config_flag_values_are_resolved_before_absl_reads_them():
  argv = ["simclr-jax pretrain", "--config", "digits", "--workdir", "w",
          "--config.train.epochs=3"]
  assert shared.config_paths(argv) == [
      "simclr-jax pretrain", "--config", configs.path("digits"), "--workdir", "w",
      "--config.train.epochs=3"]
  assert shared.config_paths(["p", "--config=sdo:hmi"]) == ["p", "--config=" + configs.path(
      "sdo:hmi")]
  assert shared.config_paths(["p", "--config=mine.py:v"]) == ["p", "--config=mine.py:v"]
  with pytest.raises(ValueError, match="unknown config 'nosuch'"):
    shared.config_paths(["p", "--config", "nosuch"])


def test_the_package_exposes_the_runs_and_the_configs():
  assert simclr_jax.pretrain is api.pretrain and simclr_jax.linear_eval is api.linear_eval
  importlib.import_module("simclr_jax.finetuning")   # sets its own attribute on the package
  assert simclr_jax.finetune is api.finetune
  assert simclr_jax.configs is configs


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_the_tool_alone_lists_the_commands(argv, capsys):
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  for name in ("pretrain", "linear-eval", "finetune", "export", "report", "sweep",
               "augment-grid"):
    assert re.search(rf"^  {name} +\S", out, re.M), out


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
  assert cli.main(["pretrian", "--config", "digits"]) == 2
  out, err = capsys.readouterr()
  assert not out and len(err.strip().splitlines()) == 1
  assert err.startswith("simclr-jax: unknown command 'pretrian'; commands: pretrain,")


@pytest.mark.slow
def test_each_command_help_lists_its_own_flags():
  """Real processes (absl's flags are global: one command per process)."""
  proc = run_python(["-m", "simclr_jax", "pretrain", "--help"], timeout=120)
  for flag in ("--config", "--workdir", "--[no]linear_eval", "--[no]verbose"):
    assert f"  {flag}:" in proc.stdout, proc.stdout
  assert "simclr-jax pretrain --config digits" in proc.stdout      # its docstring
  assert "(default: 'digits')" in proc.stdout
  proc = run_python(["-m", "simclr_jax", "linear-eval", "--help"], timeout=120)
  for flag in ("--config", "--workdir", "--[no]verbose"):
    assert f"  {flag}:" in proc.stdout, proc.stdout
  assert "--linear_eval" not in proc.stdout
  proc = run_python(["-m", "simclr_jax", "pretrain", "--config", "nosuch"], timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
      "error: unknown config 'nosuch'"), proc.stderr
  # `import simclr_jax` and its configs' names need no JAX.
  proc = run_python(["-c", "import sys, simclr_jax; print(simclr_jax.configs.names()); "
                     "print('jax' in sys.modules)"], timeout=60)
  assert proc.stdout.split("\n")[1] == "False", proc.stdout + proc.stderr

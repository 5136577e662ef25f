"""The packaged configs: one module per recipe, each with `get_config(variant=None)`.

`names()` lists them; the tool takes a name where it takes a config (`simclr-jax pretrain
--config digits`, `--config sdo:hmi` for a variant) or the path of a config file of your own
(`--config my_config.py`, `--config my_config.py:variant`). In Python, `get(spec)` returns the
ConfigDict for either. default.py holds every field with its default; the recipes start from it.

A config of your own starts from a packaged one and changes a few fields:

  # my_config.py
  from simclr_jax.configs import digits

  def get_config():
    c = digits.get_config()
    c.train.epochs = 5
    return c

  simclr-jax pretrain --config my_config.py --workdir runs/mine

This module imports no JAX: `names`, `path` and `get` of a name are cheap until a config module
itself is imported (they import simclr_jax.augment and the data sources).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_NOT_RECIPES = ("__init__", "default")


def names() -> list[str]:
  """The packaged config names, sorted (every module here but default.py)."""
  return sorted(f[:-3] for f in os.listdir(_HERE)
                if f.endswith(".py") and f[:-3] not in _NOT_RECIPES)


def _is_path(file: str) -> bool:
  return file.endswith(".py") or os.sep in file or (os.altsep or os.sep) in file


def path(spec: str) -> str:
  """The config file for `spec`: a packaged name (`digits`), a name with a variant
  (`sdo:hmi` -> `<package>/sdo.py:hmi`), or a path (`my_config.py[:variant]`), returned as it
  is. ValueError: a name that is not packaged."""
  file, sep, variant = spec.partition(":")
  if _is_path(file):
    return spec
  if file not in names() + ["default"]:     # default: every field, runnable as it is
    raise ValueError(f"unknown config {file!r}: give a file path (my_config.py) or one of "
                     f"{', '.join(names())}")
  return os.path.join(_HERE, f"{file}.py") + sep + variant


def run_name(spec: str) -> str:
  """The name a run of `spec` is known by: the file's name, plus `-<variant>` if any
  (`sdo:hmi` and `/x/sdo.py:hmi` -> `sdo-hmi`); the default workdir and sweep folder use it."""
  file, _, variant = spec.partition(":")
  name = os.path.splitext(os.path.basename(file))[0]
  return name + (f"-{variant}" if variant else "")


def _module(file: str):
  if not _is_path(file):
    return importlib.import_module(f"{__name__}.{file}")  # one module object per packaged config
  if not os.path.exists(file):
    raise FileNotFoundError(f"no config file {file}")
  module_spec = importlib.util.spec_from_file_location(
      f"_simclr_jax_user_config_{run_name(file)}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def get(spec: str):
  """The ConfigDict of `spec` (as `path` takes it). As ml_collections' config_flags does for
  `--config file.py:variant`: `get_config(variant)` when the spec has a `:`, else
  `get_config()` (so a config of your own may take no argument)."""
  path(spec)                              # an unknown name: its ValueError
  file, sep, variant = spec.partition(":")
  return _module(file).get_config(*([variant] if sep else []))

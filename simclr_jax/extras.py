"""The optional parts of the install (pyproject.toml's extras): a part used without its extra
stops with one line that names the extra to install, before anything compiles or is written.

The bottom of the package: it imports no simclr_jax module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# module -> (extra, the distribution that provides it)
EXTRAS = {
    "tensorflow_datasets": ("tfds", "tensorflow-datasets"),
    "astropy": ("fits", "astropy"),
    "torch": ("torch", "torch"),             # simclr_jax/torch_interop.py
    "wandb": ("wandb", "wandb"),             # logs.wandb (simclr_jax/logs.py)
    "pyarrow": ("parquet", "pyarrow"),       # embed --out *.parquet
    "umap": ("umap", "umap-learn"),          # the embedding map (else t-SNE, scikit-learn)
}


class MissingExtra(ImportError):
  """An optional dependency that is not installed; the message is the one line to show."""


def message(module: str, what: str) -> str:
  extra, dist = EXTRAS[module.split(".")[0]]
  return f'{what} needs {dist}, which is not installed: pip install "simclr_jax[{extra}]"'


def installed(module: str) -> bool:
  top = module.split(".")[0]
  if top in sys.modules:             # None there: the import is blocked (python's own rule)
    return sys.modules[top] is not None
  return importlib.util.find_spec(top) is not None


def require(module: str, what: str):
  """`importlib.import_module(module)`, or MissingExtra saying which extra provides it.
  `what`: the feature that needs it, as the user named it ("data.source='tfds'")."""
  if not installed(module):
    raise MissingExtra(message(module, what))
  return importlib.import_module(module)

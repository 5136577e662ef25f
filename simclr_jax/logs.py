"""Log lines a person reads: ours and clu's metric lines, not orbax's per-save chatter."""

from __future__ import annotations

import logging as py_logging

from absl import logging

_CHATTY = ("/orbax/", "/grain/", "/etils/")


class _DropLibraryInfo(py_logging.Filter):
  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not any(
        part in record.pathname for part in _CHATTY)


def quiet_libraries() -> None:
  """Keeps INFO from this project and clu, WARNING and above from orbax, grain and etils."""
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())


def hparams(config) -> dict:
  """The config as TensorBoard's HParams tab takes it: flat 'group.field' keys, each value a
  bool, int, float or string (tuples and None as their text), so runs compare side by side."""
  flat = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, dict):
        walk(name + ".", value)
      elif isinstance(value, (bool, int, float, str)):
        flat[name] = value
      else:
        flat[name] = str(value)
  walk("", config.to_dict() if hasattr(config, "to_dict") else dict(config))
  return flat

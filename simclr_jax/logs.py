"""What a run logs: the log lines a person reads (ours and clu's metric lines, not orbax's
per-save chatter), the config as TensorBoard's hparams, and the scalars read back from the
event files (`read_events`, for the report)."""

from __future__ import annotations

import glob
import logging as py_logging
import os

from absl import logging

from simclr_jax import workdir as workdir_lib

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


def read_events(workdir: str) -> dict:
  """{'scalars': {tag: {step: value}}, 'wall_times': {tag: {step: t}}, 'sessions': [(t0, t1)]}
  from every event file of `workdir`, oldest first.

  clu writes scalars as 0-d tensors of plugin 'scalars' (a writer may name the plugin on a
  tag's first event only); images are skipped. A step logged again by a resumed run (it
  restarts at its last checkpoint, which may precede the last logged step) keeps the later
  value. `sessions`: the first and last wall time of each file, one file per start.
  """
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util

  # Streamed, file by file: a long run's files hold millions of events; scalars are kept.
  per_file = []     # (first wall time, last wall time, {tag: {step: (value, wall time)}})
  for path in glob.glob(os.path.join(workdir, workdir_lib.EVENTS)):
    first, last, plugin, points = None, None, {}, {}
    for e in event_file_loader.EventFileLoader(path).Load():
      first = e.wall_time if first is None else first
      last = e.wall_time if last is None else max(last, e.wall_time)
      for v in e.summary.value:
        plugin.setdefault(v.tag, v.metadata.plugin_data.plugin_name)
        if plugin[v.tag] != "scalars" or not v.HasField("tensor"):
          continue
        x = tensor_util.make_ndarray(v.tensor)
        if x.ndim == 0:
          points.setdefault(v.tag, {})[int(e.step)] = (float(x), float(e.wall_time))
    if first is not None:
      per_file.append((first, last, points))
  values, walls, sessions = {}, {}, []
  # Oldest first, later values win. The first event's time is whole seconds: two starts in
  # one second are ordered by their last event.
  for first, last, points in sorted(per_file, key=lambda f: (f[0], f[1])):
    sessions.append((first, last))
    for tag, steps in points.items():
      for step, (x, t) in steps.items():
        values.setdefault(tag, {})[step] = x
        walls.setdefault(tag, {})[step] = t
  scalars = {t: dict(sorted(s.items())) for t, s in values.items()}
  return {"scalars": scalars, "wall_times": walls, "sessions": sessions}

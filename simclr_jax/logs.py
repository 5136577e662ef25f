"""What a run logs: the log lines a person reads (ours and the metric lines, not orbax's
per-save chatter), the TensorBoard event files (`Writer`: scalars, images, the config as
hparams), and the scalars read back from them (`read_events`, for the report)."""

from __future__ import annotations

import glob
import io
import logging as py_logging
import os
import time
from typing import Any, Mapping

import numpy as np

from absl import logging

from simclr_jax import workdir as workdir_lib

_CHATTY = ("/orbax/", "/grain/", "/etils/")


class _DropLibraryInfo(py_logging.Filter):
  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not any(
        part in record.pathname for part in _CHATTY)


def quiet_libraries() -> None:
  """Keeps INFO from this project, WARNING and above from orbax, grain and etils."""
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


class Writer:
  """Metric lines in the log, and on the chief (`logdir` given) a TensorBoard event file.

  Written with tensorboard's own event writer and summary protos, which need only numpy and
  protobuf: clu's writers (`clu.metric_writers`) import TensorFlow, a 1.4 GB dependency that
  has no wheel for macOS or Linux ARM. The events are the ones clu wrote before (scalars as
  0-d float32 tensors of plugin 'scalars', images as PNG tensors of plugin 'images', hparams
  as the HParams plugin's session start), so runs from either read back the same way.
  """

  def __init__(self, logdir: str | None):
    self._events = None
    if logdir is not None:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      os.makedirs(logdir, exist_ok=True)
      self._events = EventFileWriter(logdir)

  def _add(self, step: int, summary) -> None:
    from tensorboard.compat.proto import event_pb2
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    # The metric line clu's LoggingWriter printed: "[step] a=1.5, b=2".
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items())))
    if self._events is None:        # not the chief: the log line only
      return
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.scalar import summary_v2 as scalar_summary
    summary = summary_pb2.Summary()
    for tag, value in scalars.items():
      summary.value.extend(scalar_summary.scalar_pb(tag, np.asarray(value, np.float32)).value)
    self._add(step, summary)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Each value (H, W, C) or (N, H, W, C), uint8 or float in [0, 1]."""
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()})
    if self._events is None:
      return
    from PIL import Image
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.image import metadata as image_metadata
    from tensorboard.util import tensor_util
    summary = summary_pb2.Summary()
    for tag, value in images.items():
      batch = np.asarray(value)
      batch = batch[None] if batch.ndim == 3 else batch
      if batch.dtype != np.uint8:      # as tf.summary.image converts floats
        batch = (np.clip(batch, 0, 1) * 255 + 0.5).astype(np.uint8)
      # The images plugin's tensor: [width, height, png, png, ...] as strings.
      pngs = []
      for image in batch:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
      strings = [str(batch.shape[2]).encode(), str(batch.shape[1]).encode(), *pngs]
      summary.value.add(
          tag=tag, metadata=image_metadata.create_summary_metadata(
              display_name=tag, description=""),
          tensor=tensor_util.make_tensor_proto(np.array(strings, dtype=object)))
    self._add(step, summary)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self._events is None:
      return
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary
    self._add(0, hparams_summary.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()


def read_events(workdir: str) -> dict:
  """{'scalars': {tag: {step: value}}, 'wall_times': {tag: {step: t}}, 'sessions': [(t0, t1)]}
  from every event file of `workdir`, oldest first.

  Scalars are 0-d tensors of plugin 'scalars' (`Writer`, and clu's before it; a writer may
  name the plugin on a tag's first event only); images are skipped. A step logged again by a resumed run (it
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

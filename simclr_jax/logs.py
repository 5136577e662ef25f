"""What a run logs: the log lines a person reads (ours and the metric lines, not orbax's
per-save chatter), the TensorBoard event files (`Writer`: scalars, images, the config as
hparams), and the scalars read back from them (`read_events`, for the report).

With logs.wandb (the `wandb` extra), `Writer` sends the same scalars and images, and the config,
to Weights & Biases, and `log_plots` adds the report's plots after the run: one W&B run per
workdir, its id kept in workdir/wandb/run_id (`open_wandb`), so that a resumed run continues it.
wandb is imported only then."""

from __future__ import annotations

import glob
import io
import json
import logging as py_logging
import os
import secrets
import string
import time
from typing import Any, Mapping

import numpy as np

from absl import logging
from etils import epath

from simclr_jax import extras
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


def _uint8_batch(value) -> np.ndarray:
  """(N, H, W, C) uint8 of an image or batch, uint8 or float in [0, 1] (as tf.summary.image
  converts floats), so TensorBoard and W&B show the same pixels."""
  batch = np.asarray(value)
  batch = batch[None] if batch.ndim == 3 else batch
  if batch.dtype != np.uint8:
    batch = (np.clip(batch, 0, 1) * 255 + 0.5).astype(np.uint8)
  return batch


def _as_float32(value) -> float:
  """A scalar as the event file stores it, so that W&B's number is TensorBoard's."""
  return float(np.asarray(value, np.float32))


class Writer:
  """Metric lines in the log, and on the chief (`logdir` given) a TensorBoard event file, and
  with `config`'s logs.wandb the workdir's W&B run (`open_wandb`) too.

  Written with tensorboard's own event writer and summary protos, which need only numpy and
  protobuf: clu's writers (`clu.metric_writers`) import TensorFlow, a 1.4 GB dependency that
  has no wheel for macOS or Linux ARM. The events are the ones clu wrote before (scalars as
  0-d float32 tensors of plugin 'scalars', images as PNG tensors of plugin 'images', hparams
  as the HParams plugin's session start), so runs from either read back the same way.
  """

  def __init__(self, logdir: str | None, config=None):
    self._events = self._wandb = None
    if logdir is not None:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      os.makedirs(logdir, exist_ok=True)
      self._events = EventFileWriter(logdir)
      if wandb_enabled(config):
        self._wandb = open_wandb(config, logdir)

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
    if self._wandb is not None:
      self._wandb.log({WANDB_STEP: int(step), **{k: _as_float32(v) for k, v in scalars.items()}})

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
    batches = {tag: _uint8_batch(value) for tag, value in images.items()}
    for tag, batch in batches.items():
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
    if self._wandb is not None:
      import wandb
      logged = {tag: [wandb.Image(im[..., 0] if im.shape[-1] == 1 else im) for im in batch]
                for tag, batch in batches.items()}
      self._wandb.log({WANDB_STEP: int(step),
                       **{t: v[0] if len(v) == 1 else v for t, v in logged.items()}})

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # W&B's run has the whole config already (`open_wandb`: nested, with its real values).
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
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


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


# --- Weights & Biases (logs.wandb) -------------------------------------------------------------

WANDB_DIR = "wandb"                             # workdir/wandb: wandb's own run folders
WANDB_ID = os.path.join(WANDB_DIR, "run_id")    # the workdir's W&B run id
# Every value is logged against the train step as its own metric, W&B's x-axis, instead of
# wandb.log's `step`: that one must increase, and a resumed run logs again from its last
# checkpoint, which may precede the last logged step (wandb would drop those points).
WANDB_STEP = "step"


def wandb_enabled(config) -> bool:
  """logs.wandb of `config` (False for a config without the group: older runs, no config)."""
  group = config.get("logs") if hasattr(config, "get") else None
  return bool(group is not None and group.get("wandb", False))


def open_wandb(config, workdir: str):
  """The workdir's W&B run (`wandb.init`), created at the first start and continued
  (resume='allow') under the id kept in workdir/wandb/run_id by every later one, and by
  `log_plots`; config.logs gives project, entity, name ('' = the workdir's) and mode, and the
  run's config is the whole config, updated at every start (a resume may change some fields).
  wandb writes its files in workdir/wandb (wandb's default place for a remote workdir)."""
  wandb = extras.require("wandb", "logs.wandb=True")
  id_file = epath.Path(workdir) / WANDB_ID
  if id_file.exists():
    run_id = id_file.read_text().strip()
  else:
    # wandb's own form (8 base-36 characters), made here: wandb's helper moved between versions.
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id)
  group = config.logs
  local = "://" not in str(workdir)
  run = wandb.init(
      project=group.wandb_project, entity=group.wandb_entity or None, id=run_id,
      name=group.wandb_name or os.path.basename(os.path.normpath(str(workdir))),
      resume="allow", mode=group.wandb_mode, dir=str(workdir) if local else None)
  run.config.update(json.loads(config.to_json_best_effort()), allow_val_change=True)
  run.define_metric(WANDB_STEP)
  run.define_metric("*", step_metric=WANDB_STEP)
  return run


def log_plots(config, workdir: str) -> int:
  """The report's plots (workdir/plots/*.png) as images of the workdir's W&B run, at the last
  checkpoint's step, when logs.wandb; process 0 only, after `report.write_after_pretraining`.
  A failure is logged, never raised: the run succeeded. Returns the number of plots logged."""
  import jax
  if not wandb_enabled(config) or jax.process_index() != 0:
    return 0
  plots = sorted((epath.Path(workdir) / workdir_lib.PLOTS).glob("*.png"))
  if not plots:
    return 0
  try:
    wandb = extras.require("wandb", "logs.wandb=True")
    run = open_wandb(config, workdir)
    steps = workdir_lib.steps(epath.Path(workdir) / workdir_lib.CHECKPOINTS)
    local = "://" not in str(workdir)
    run.log({WANDB_STEP: steps[-1] if steps else 0, **{
        f"report/{p.stem}": wandb.Image(
            str(p) if local else _png(p.read_bytes())) for p in plots}})
    run.finish()
  except Exception as e:  # noqa: BLE001
    logging.warning("the report's plots were not logged to W&B (%s)", e)
    return 0
  return len(plots)


def _png(data: bytes):
  from PIL import Image
  return Image.open(io.BytesIO(data))

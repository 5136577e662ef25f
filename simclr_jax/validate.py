"""A config checked before anything compiles or writes: one line per problem, `ConfigError`.

`check(config, purpose)` is run by every entry point (simclr_jax/api.py's pretrain,
linear_eval and finetune, which the `simclr-jax` commands call, and `train.pretrain`), in this
order, and stops at the first problem:

1. every field: type, range, allowed values (`RULES`; the allowed names come from the
   registries: optim.OPTIMIZERS, data sources, backbones, augment presets and fields);
2. across fields: the augmentation against the channel count and the image size, the batch
   against the devices and processes, the classes against the label thresholds, the early
   stopping against the evaluation cadence, the image size against the backbone's stride,
   model.init_from's keys and shapes against the encoder (pretraining, fine-tuning);
3. the data: the source is opened and its first example must be (image_size, image_size,
   channels); its labels must fit data.num_classes; a pretraining split must hold a batch.

Each problem is one `ConfigError` line naming the field, its value and what is allowed.
A resume is checked against the workdir in simclr_jax/resume.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
from absl import logging

from simclr_jax import extras

PURPOSES = ("pretrain", "linear_eval", "finetune")
MONITOR_METRICS = ("knn_accuracy", "online_accuracy", "online_loss")


class ConfigError(ValueError):
  """A config, or the data or workdir it names, that cannot run; one line naming the field,
  its value and what is allowed. The tool prints it as `error: ...` and exits 2."""


def one_line(text: str) -> str:
  return " ".join(str(text).split())


# --- field rules --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
  test: Callable[[Any], bool]
  allowed: str | Callable[[], str]


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v) -> bool:
  return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
  bound = (f" in {lo}..{hi}" if hi is not None else f" >= {lo}" if lo is not None else "")
  return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
              f"an integer{bound}")


def number(lo=None, hi=None, lo_open=False, hi_open=False) -> Rule:
  def test(v):
    return _is_num(v) and (lo is None or (v > lo if lo_open else v >= lo)) and (
        hi is None or (v < hi if hi_open else v <= hi))
  if hi is None:
    bound = f" {'>' if lo_open else '>='} {lo}" if lo is not None else ""
  else:
    bound = f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  return Rule(test, f"a finite number{bound}")


def choice(options: Callable[[], Any] | tuple) -> Rule:
  names = options if callable(options) else (lambda: options)
  return Rule(lambda v: isinstance(v, str) and v in tuple(names()),
              lambda: "one of " + ", ".join(map(str, names())))


def seq(item: Rule, nonempty: bool = False) -> Rule:
  allowed = item.allowed if isinstance(item.allowed, str) else None
  return Rule(lambda v: isinstance(v, (tuple, list)) and (len(v) > 0 or not nonempty)
              and all(item.test(x) for x in v),
              lambda: f"a {'non-empty ' if nonempty else ''}tuple of "
                      f"{allowed or item.allowed()} each")


BOOL = Rule(lambda v: isinstance(v, (bool, np.bool_)), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
NAME = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
PROB_OPEN = number(0, 1, hi_open=True)
FRACTION = number(0, 1, lo_open=True)
OPEN_FRACTION = number(0, 1, lo_open=True, hi_open=True)
POSITIVE = number(0, lo_open=True)
NONNEG = number(0)
RANGE = Rule(lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_num, v))
             and v[0] < v[1], "(lo, hi) with lo < hi")


def _readout():
  from simclr_jax import readout   # pylint: disable=import-outside-toplevel
  return readout


def _feature_set(v) -> bool:
  try:
    return isinstance(v, str) and bool(_readout().parse(v))
  except ValueError:
    return False


def names_of(name: str) -> Callable[[], tuple]:
  """Allowed names, read from their modules when first needed: a field refused early does
  not wait for the heavy imports (evaluate and finetune bring scikit-learn and the models)."""
  def names():
    import importlib
    module, attr = {
        "sources": ("simclr_jax.data.sources", "SOURCES"),
        "dtypes": ("simclr_jax.models.simclr", "DTYPES"),
        "optimizers": ("simclr_jax.optim", "OPTIMIZERS"),
        "lr_scalings": ("simclr_jax.optim", "LR_SCALINGS"),
        "schedules": ("simclr_jax.optim", "SCHEDULES"),
        "probes": ("simclr_jax.evaluate", "PROBES"),
        "baselines": ("simclr_jax.evaluate", "BASELINES"),
        "conv_impls": ("simclr_jax.models.onednn", "CONV_IMPLS"),
        "ft_optimizers": ("simclr_jax.finetuning", "OPTIMIZERS"),
        "batch_norm": ("simclr_jax.finetuning", "BATCH_NORM")}.get(name, (None, None))
    if name == "backbones":
      from simclr_jax import models
      return tuple(models.BACKBONES) + tuple(models.SK_BACKBONES)
    return tuple(getattr(importlib.import_module(module), attr))
  return names


RULES: dict[str, Rule] = {
    "seed": integer(0),
    "data.source": choice(names_of("sources")), "data.path": TEXT,
    "data.train_split": NAME, "data.eval_split": NAME,
    "data.image_size": integer(1), "data.channels": integer(1), "data.num_classes": integer(0),
    "data.value_range": Rule(lambda v: v is None or RANGE.test(v), "None or " + RANGE.allowed),
    "data.workers": integer(0), "data.prefetch": integer(0),
    "data.label_thresholds": seq(TEXT),
    "model.backbone": choice(names_of("backbones")),
    "model.width_multiplier": number(1 / 64),
    "model.cifar_stem": BOOL, "model.hidden_mlp": integer(1), "model.feat_dim": integer(1),
    "model.proj_layers": integer(2), "model.dtype": choice(names_of("dtypes")),
    "model.remat": BOOL,
    "model.conv_impl": choice(names_of("conv_impls")), "model.online_head": BOOL,
    "model.online_hidden": integer(0), "model.online_dropout": PROB_OPEN,
    "model.init_from": TEXT,
    "online_eval.learning_rate": POSITIVE, "online_eval.weight_decay": NONNEG,
    "loss.temperature": POSITIVE,
    "optim.name": choice(names_of("optimizers")), "optim.learning_rate": NONNEG,
    "optim.base_lr": NONNEG, "optim.lr_scaling": choice(names_of("lr_scalings")),
    "optim.weight_decay": NONNEG, "optim.momentum": PROB_OPEN, "optim.nesterov": BOOL,
    "optim.b1": PROB_OPEN, "optim.b2": PROB_OPEN, "optim.eps": POSITIVE,
    "optim.trust_coefficient": POSITIVE, "optim.warmup_epochs": NONNEG,
    "optim.schedule": choice(names_of("schedules")), "optim.end_lr_factor": number(0, 1),
    "train.batch_size": integer(1), "train.epochs": integer(0), "train.steps": integer(0),
    "train.num_devices": integer(0), "train.chunk_size": integer(0),
    "train.log_every": integer(1),
    "train.checkpoint_every": integer(1), "train.keep_checkpoints": integer(1),
    "train.patience": integer(0), "train.max_bad_steps": integer(0),
    "train.report": BOOL,
    "train.monitor": Rule(lambda v: isinstance(v, str) and v.removeprefix("eval/")
                          in MONITOR_METRICS, "one of " + ", ".join(MONITOR_METRICS)),
    "train.monitor_mode": choice(("max", "min", "auto")), "train.min_delta": NONNEG,
    "eval.batch_size": integer(1), "eval.val_fraction": OPEN_FRACTION,
    "eval.c_grid": seq(POSITIVE, nonempty=True),
    "eval.select_by": choice(("log_loss", "accuracy")),
    "eval.label_fractions": seq(FRACTION, nonempty=True),
    "eval.baselines": seq(choice(names_of("baselines"))),
    "eval.probes": seq(choice(names_of("probes")), nonempty=True),
    "eval.features": Rule(_feature_set, lambda: "names of " + ", ".join(_readout().PARTS)
                          + " joined by '+', each once (simclr_jax/readout.py)"),
    "eval.every_epochs": NONNEG, "eval.monitor_split": TEXT, "eval.knn_k": integer(1),
    "eval.knn_temperature": NONNEG, "eval.knn_bank_size": integer(0),
    "eval.checkpoint": Rule(lambda v: (_is_int(v) and v >= 0) or (isinstance(v, str) and (
        v in ("best", "latest") or v.isdigit())), "'best', 'latest' or a step number"),
    "eval.positive_class": Rule(lambda v: isinstance(v, str) or _is_int(v),
                                "a class name or index"),
    "eval.head_hidden": integer(0), "eval.head_dropout": PROB_OPEN,
    "eval.head_learning_rate": POSITIVE, "eval.head_weight_decay": NONNEG,
    "eval.head_batch_size": integer(1), "eval.head_epochs": integer(1),
    "finetune.label_fractions": seq(FRACTION, nonempty=True),
    "finetune.val_fraction": OPEN_FRACTION, "finetune.seed": integer(0),
    "finetune.epochs": integer(1), "finetune.batch_size": integer(1),
    "finetune.learning_rate": POSITIVE, "finetune.encoder_lr": NONNEG,
    "finetune.optimizer": choice(names_of("ft_optimizers")), "finetune.weight_decay": NONNEG,
    "finetune.head_hidden": integer(0), "finetune.head_dropout": PROB_OPEN,
    "finetune.from_projection": integer(0), "finetune.batch_norm": choice(names_of("batch_norm")),
    "finetune.patience": integer(0), "finetune.augment": BOOL, "finetune.baseline": BOOL,
    "finetune.eval_batch_size": integer(1),
    "logs.wandb": BOOL, "logs.wandb_project": NAME, "logs.wandb_entity": TEXT,
    "logs.wandb_name": TEXT, "logs.wandb_mode": choice(("offline", "online")),
    "distributed.coordinator_address": TEXT, "distributed.num_processes": integer(0),
    "distributed.process_id": integer(-1),
    "distributed.local_device_ids": Rule(lambda v: isinstance(v, str) or _is_int(v) or (
        seq(integer(0)).test(v)), "a tuple of device ids, e.g. (0, 1)"),
}
_MISSING = object()


def _get(config, path: str):
  node = config
  for part in path.split("."):
    if node is None or not hasattr(node, "get"):
      return _MISSING
    node = node.get(part, _MISSING)
    if node is _MISSING:
      return _MISSING
  return node


def show(value) -> str:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return repr(tuple(value) if isinstance(value, list) else value)


def fail(field: str, value, allowed: str):
  raise ConfigError(one_line(f"{field}={show(value)}: expected {allowed}"))


def check_fields(config) -> None:
  """Every field of RULES that the config has (a workdir written before a field existed
  lacks it). The augment fields have their own schema (simclr_jax/augment): check_cross."""
  for path, rule in RULES.items():
    value = _get(config, path)
    if value is not _MISSING and not rule.test(value):
      fail(path, value, rule.allowed if isinstance(rule.allowed, str) else rule.allowed())


# --- across fields ------------------------------------------------------------------------

def min_image_size(model_cfg) -> int:
  """The backbone's total stride: a smaller image leaves its last stage less than one pixel."""
  return 8 if model_cfg.cifar_stem else 32


def _augment_views(config):
  from simclr_jax import augment
  try:
    augment.make_augment(config.augment, config.data.channels, config.data.image_size)
    return augment.resolve(config.augment)
  except (ValueError, TypeError) as e:
    raise ConfigError(one_line(e)) from None


def check_cross(config, purpose: str) -> None:
  d, m, t = config.data, config.model, config.train
  size = min_image_size(m)
  if d.image_size < size:
    fail("data.image_size", d.image_size, f"an integer >= {size} for model.backbone="
         f"{m.backbone!r} with model.cifar_stem={m.cifar_stem} (it downsamples {size}x)")
  for i, view in enumerate(_augment_views(config), start=1):
    scale = view["crop_scale"]
    if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
      fail("augment.crop_scale", scale, f"(lo, hi) area fractions with 0 < lo <= hi <= 1 "
           f"(view {i})")
    if scale is not None and scale[0] * d.image_size ** 2 < 1:
      fail("augment.crop_scale", scale, f"lo >= {1 / d.image_size ** 2:.3g}: at data.image_size="
           f"{d.image_size} a crop of {scale[0]} of the area is less than one pixel (view {i})")
    ratio = view["crop_ratio"]
    if not 0 < ratio[0] <= ratio[1]:
      fail("augment.crop_ratio", ratio, "(lo, hi) aspect ratios with 0 < lo <= hi")
  thresholds = tuple(d.get("label_thresholds", ()) or ())
  if thresholds:
    from simclr_jax.data import labels
    try:
      labels.parse_thresholds(thresholds)
    except ValueError as e:
      raise ConfigError(one_line(e)) from None
    if d.num_classes and len(thresholds) != d.num_classes:
      fail("data.num_classes", d.num_classes, f"{len(thresholds)}, the number of classes "
           f"data.label_thresholds={thresholds!r} defines (or 0)")
  optim = config.optim
  if optim.learning_rate == 0 and optim.base_lr == 0:
    fail("optim.base_lr", optim.base_lr, "> 0 (or optim.learning_rate > 0)")
  if t.patience and not config.eval.every_epochs:
    fail("train.patience", t.patience, "0 when eval.every_epochs=0 (early stopping acts on "
         "the evaluations during pretraining: set eval.every_epochs > 0)")
  if config.eval.every_epochs and purpose == "pretrain":
    if d.num_classes < 1:
      fail("eval.every_epochs", config.eval.every_epochs, "0 when data.num_classes=0 (the "
           "kNN monitor needs labels)")
    metric = t.monitor.removeprefix("eval/")
    if metric != "knn_accuracy" and not m.online_head:
      fail("train.monitor", t.monitor, "'knn_accuracy' without model.online_head=True")
  if config.get("finetune") is not None and purpose == "finetune":
    check_finetune(config)
  check_devices(config)


def check_finetune(config) -> None:
  """The fine-tuning group against the model (also finetune.Trainer's check)."""
  ft, m = config.finetune, config.model
  if ft.from_projection > m.proj_layers - 1:
    fail("finetune.from_projection", ft.from_projection,
         f"0..{m.proj_layers - 1} (model.proj_layers={m.proj_layers})")


def check_init_from(config) -> None:
  """model.init_from: the file's keys and shapes against the config's encoder (traced, not
  compiled), so that a mismatch is one line naming the parameter before any work."""
  if not config.model.get("init_from"):
    return
  from simclr_jax import torch_interop
  try:
    torch_interop.check_init_from(config.model, config.data.channels)
  except extras.MissingExtra as e:
    raise ConfigError(str(e)) from None
  except ValueError as e:
    raise ConfigError(one_line(f"model.init_from: {e}")) from None


def check_devices(config) -> None:
  """The batch against the device and process counts (jax's backend starts here)."""
  import jax
  from simclr_jax import parallel
  t = config.train
  try:
    mesh = parallel.make_mesh(t.num_devices)
    parallel.check_batch_size(t.batch_size, mesh)
    parallel.check_chunk_size(int(t.get("chunk_size", 0)), t.batch_size, mesh.devices.size)
  except ValueError as e:
    raise ConfigError(one_line(e)) from None
  if t.batch_size % jax.process_count():
    fail("train.batch_size", t.batch_size,
         f"a multiple of the number of processes ({jax.process_count()})")


# --- the data -------------------------------------------------------------------------------

_opened: dict[str, Any] = {}    # {config JSON: its train source}: check(), then resume.start_run


def open_source(data_cfg, split: str):
  """`sources.make_source`, with every error of bad input as one ConfigError line."""
  from simclr_jax.data import sources
  try:
    return sources.make_source(data_cfg, split)
  except extras.MissingExtra as e:
    raise ConfigError(str(e)) from None
  except (ValueError, FileNotFoundError, KeyError, OSError, TypeError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise ConfigError(one_line(f"data.source={data_cfg.source!r} data.path="
                               f"{data_cfg.get('path', '')!r}: {message}")) from None


def check_data(config, purpose: str):
  """Opens the train split and reads its first example; returns the source."""
  d = config.data
  split = d.train_split
  source = open_source(d, split)
  where = f"data.source={d.source!r} split {split!r}"
  if len(source) < 1:
    raise ConfigError(f"{where} is empty ({source!r})")
  try:
    first = source[0]
  except extras.MissingExtra as e:
    raise ConfigError(str(e)) from None
  except Exception as e:  # noqa: BLE001  (a corrupt file: any decoder's error)
    raise ConfigError(one_line(f"{where}: cannot read its first example "
                               f"({type(e).__name__}: {e})")) from None
  image = np.asarray(first["image"])
  want = (d.image_size, d.image_size, d.channels)
  if image.shape != want:
    fail("data.channels" if image.shape[:2] == want[:2] else "data.image_size",
         d.channels if image.shape[:2] == want[:2] else d.image_size,
         f"what {where} gives: its first image has shape {image.shape}, not {want}")
  if not np.isfinite(image).all():
    raise ConfigError(f"{where}: the first image holds NaN or inf values")
  native = getattr(source, "images", None)
  if getattr(source, "resize_to", None) and native is not None:
    logging.info("%s: %dx%d images, resized to %dx%d as they are read", where,
                 native.shape[1], native.shape[2], d.image_size, d.image_size)
  # Every label when they are in memory or the run reads them anyway (tfds computes them by
  # decoding every record); else the first example's.
  in_memory = "labels" in vars(source) if hasattr(source, "__dict__") else False
  need_labels = in_memory or purpose != "pretrain" or config.eval.every_epochs
  labels = np.asarray(source.labels if need_labels and hasattr(source, "labels")
                      else first.get("label", -1)).reshape(-1)
  multi_hot = getattr(source, "multi_hot", None) is not None
  if d.num_classes and not multi_hot and labels.size and labels.max() >= d.num_classes:
    fail("data.num_classes", d.num_classes, f">= {int(labels.max()) + 1}: {where} has labels up "
         f"to {int(labels.max())} (or 0: no classes)")
  if purpose != "pretrain" and not multi_hot and (labels < 0).all():
    raise ConfigError(f"{where} has no labels: {purpose} needs a labelled train split")
  if purpose == "pretrain":
    if len(source) < config.train.batch_size:
      fail("train.batch_size", config.train.batch_size,
           f"<= {len(source)}, the number of examples in {where}")
    if config.eval.every_epochs and not multi_hot and (labels < 0).all():
      fail("eval.every_epochs", config.eval.every_epochs, f"0: {where} has no labels for the "
           "kNN monitor")
  else:
    open_source(d, d.eval_split)
  return source


def check(config, purpose: str = "pretrain", data: bool = True):
  """Every check of the module docstring; raises ConfigError. Returns the train split's
  source (None without `data`), which `start_run` reuses for the same config."""
  if purpose not in PURPOSES:
    raise ValueError(f"purpose={purpose!r}; expected one of {PURPOSES}")
  check_fields(config)
  check_cross(config, purpose)
  if purpose == "pretrain" and _get(config, "logs.wandb") is True:   # logs.Writer imports it
    if not extras.installed("wandb"):
      raise ConfigError(extras.message("wandb", "logs.wandb=True"))
  if purpose != "linear_eval":       # the probe reads a checkpoint, not the file it started from
    check_init_from(config)
  if not data:
    return None
  source = check_data(config, purpose)
  if purpose == "pretrain":
    _opened.clear()
    _opened[config.to_json_best_effort()] = source
  return source


def opened_source(config):
  """The train source `check(config)` opened for this very config (then forgotten), or None."""
  return _opened.pop(config.to_json_best_effort(), None)

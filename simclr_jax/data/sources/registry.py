"""Sources by name: `get(name, split, **kwargs)`, each source declaring its own options.

A source is a function `fn(split, *, path, image_size, channels, [label_thresholds,]
**options)` returning a random-access source (`__len__`, `__getitem__` -> {'image' float32
(image_size, image_size, channels), 'label' int32}, `labels`), registered with `register`:
its options (name -> Option(default, doc)) become the `data.<source>` sub-config, so a field
belongs to one source and means one thing. Unknown sources and options are refused, listing
what exists.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections


@dataclasses.dataclass(frozen=True)
class Option:
  default: Any
  doc: str


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  fn: Callable[..., Any]
  options: Mapping[str, Option]
  thresholds: bool                 # reads classes from a flux column (data.label_thresholds)
  doc: str
  # (options, train split's path) -> the preprocessing fields of simclr_jax/data/preprocess.py
  preprocess: Callable[[dict, str], dict] | None = None


SOURCES: dict[str, Source] = {}
COMMON = ("path", "image_size", "channels")


def register(name: str, options: Mapping[str, Option] | None = None, thresholds: bool = False,
             preprocess: Callable[[dict, str], dict] | None = None):
  """Decorator: `fn` becomes the source `name`; its first docstring line is its summary.
  `preprocess(options, path)`: how it prepares one stored image (simclr_jax/data/preprocess.py),
  recorded with the model so that new files are prepared the same way."""

  def wrap(fn):
    if name in SOURCES:
      raise ValueError(f"data source {name!r} registered twice")
    doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    SOURCES[name] = Source(name, fn, dict(options or {}), thresholds, doc, preprocess)
    return fn

  return wrap


def _lookup(name: str) -> Source:
  if name not in SOURCES:
    raise ValueError(f"unknown data.source {name!r}; sources: {', '.join(SOURCES)}")
  return SOURCES[name]


def get(name: str, split: str, /, **kwargs):   # "/": a source may have an option `name` (tfds)
  """The source `name` for `split`: `path`, `image_size`, `channels`, `label_thresholds` and
  the source's own options as keywords (options left out take their defaults)."""
  src = _lookup(name)
  thresholds = tuple(kwargs.pop("label_thresholds", ()) or ())
  unknown = sorted(set(kwargs) - set(COMMON) - set(src.options))
  if unknown:
    raise ValueError(f"data.{name}: unknown option(s) {unknown}; data.source={name!r} takes "
                     f"{sorted(src.options) or 'none'} (and {', '.join(COMMON)})")
  missing = [k for k in COMMON if k not in kwargs]
  if missing:
    raise ValueError(f"data source {name!r}: missing {missing}")
  if thresholds and not src.thresholds:
    with_flux = [s.name for s in SOURCES.values() if s.thresholds]
    raise ValueError(f"data.label_thresholds={thresholds}: data.source={name!r} has no flux "
                     f"column; thresholds apply to {', '.join(with_flux)}")
  options = {k: o.default for k, o in src.options.items()}
  options.update(kwargs)
  if src.thresholds:
    options["label_thresholds"] = thresholds
  return src.fn(split, **options)


def source_configs() -> ml_collections.ConfigDict:
  """{source: ConfigDict of its options with their defaults}: the `data.<source>` groups."""
  out = ml_collections.ConfigDict()
  for src in SOURCES.values():
    if src.options:
      out[src.name] = ml_collections.ConfigDict({k: o.default for k, o in src.options.items()})
  return out


def describe() -> str:
  """Every source with its options, defaults and meaning."""
  lines = []
  for src in SOURCES.values():
    lines.append(f"{src.name}: {src.doc}")
    lines += [f"  data.{src.name}.{k} = {o.default!r}: {o.doc}" for k, o in src.options.items()]
  return "\n".join(lines)

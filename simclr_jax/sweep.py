"""Sweeps: a grid of config overrides, one pretraining workdir per point, one table of scores.

A point is a tuple of `--config.<field>=<value>` overrides. Each runs as the user would run it
by hand, `simclr-jax pretrain` (which resumes an unfinished workdir) and then the scoring
command, in its own process: a point's compile cache, devices and memory start fresh, and a
crashed point does not take the sweep with it. A point whose score file exists is skipped, so
running the same sweep command again continues where it stopped.

Scores (`metric` = '<stage>:<key>'):
- `probe:<key>`: linear-eval's pretrained-encoder row with the most labels;
- `finetune:<key>`: finetune's pretrained row with the most labels;
`<key>` is looked up in the row's `metrics` (accuracy, balanced_accuracy, macro_f1, tss, hss,
micro_f1, mAP, ...), then in the row itself (test_accuracy).

The augmentation-pair mode is SimCLR-S2's study: for ops a <= b of a list, the views use ops
a and b only (both as the reference preset sets them), so the diagonal is each op alone.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from typing import Sequence

from simclr_jax import workdir as workdir_lib

# The tool as a new process of this Python: `python -m simclr_jax <command> ...`.
TOOL = (sys.executable, "-m", "simclr_jax")
STAGES = {"probe": (workdir_lib.LINEAR_EVAL, "linear-eval"),
          "finetune": (workdir_lib.FINETUNE, "finetune")}


@dataclasses.dataclass
class Point:
  name: str                       # the workdir's folder name
  overrides: tuple                # ((field, value string), ...), in axis order
  labels: tuple                   # one label per axis (the value, or the op pair)


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
  """['optim.name=adam,lars', ...] -> [('optim.name', ['adam', 'lars']), ...].

  Values split on commas outside brackets, so tuples such as `(0.2,1.0)` stay whole.
  """
  axes = []
  for spec in specs:
    field, sep, values = spec.partition("=")
    if not sep or not field or not values:
      raise ValueError(f"--grid {spec!r}: expected FIELD=V1,V2,... e.g. optim.name=adam,lars")
    parts = [v.strip() for v in re.split(r",(?![^()\[\]]*[)\]])", values) if v.strip()]
    if field in dict(axes):
      raise ValueError(f"--grid {field} given twice")
    axes.append((field.removeprefix("config."), parts))
  return axes


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def grid_points(axes) -> list[Point]:
  points = []
  for values in itertools.product(*[v for _, v in axes]):
    overrides = tuple((f, v) for (f, _), v in zip(axes, values))
    name = "-".join(f"{f.split('.')[-1]}={_slug(v)}" for f, v in overrides)
    points.append(Point(name, overrides, tuple(values)))
  return points


def pair_points(ops: Sequence[str], reference_preset: str) -> list[Point]:
  """One point per unordered pair (a, b), a == b included, of the registry's op names."""
  from simclr_jax.augment import presets, registry
  if reference_preset not in presets.PRESETS:
    raise ValueError(f"reference preset {reference_preset!r}; presets: "
                     f"{', '.join(presets.PRESETS)}")
  unknown = [op for op in ops if op not in registry.OPS]
  if unknown:
    raise ValueError(f"--pairs: unknown op {unknown[0]!r}; ops: {', '.join(registry.OPS)}")
  reference = presets.PRESETS[reference_preset]
  points = []
  for i, a in enumerate(ops):
    for b in ops[i:]:
      fields = {}
      for op in dict.fromkeys((a, b)):
        spec = registry.OPS[op]
        for name, field in spec.fields.items():
          if reference.get(name, field.default) != field.default:
            fields[name] = reference[name]
        # An op the reference leaves off is switched on at even odds.
        if spec.switch in spec.fields and not fields.get(spec.switch):
          fields[spec.switch] = 0.5
      if "value_range" in reference:         # keep the reference's clip, an op of every view
        fields["value_range"] = reference["value_range"]
      overrides = (("augment.preset", "none"),) + tuple(
          (f"augment.{k}", _literal(v)) for k, v in sorted(fields.items()))
      points.append(Point(f"pair-{a}+{b}", overrides, (a, b)))
  return points


def _literal(value) -> str:
  """A value as ml_collections' command-line parser reads it back."""
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def score(workdir: str, metric: str):
  """The metric of a finished point, or None when its score file is not there yet."""
  stage, _, key = metric.partition(":")
  path = os.path.join(workdir, STAGES[stage][0])
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rows = json.load(f)["results"]
  init = "features" if stage == "probe" else "init"
  rows = [r for r in rows if r.get(init) == "pretrained"]
  if not rows:
    raise ValueError(f"{path}: no row of the pretrained encoder")
  row = max(rows, key=lambda r: r["label_fraction"])
  for where in (row.get("metrics", {}), row):
    if key in where and isinstance(where[key], (int, float)):
      return float(where[key])
  raise ValueError(f"{path}: no score {key!r}; the row has "
                   f"{sorted(k for k, v in {**row, **row.get('metrics', {})}.items() if isinstance(v, (int, float)))}")


def check_metric(metric: str) -> None:
  stage, sep, key = metric.partition(":")
  if stage not in STAGES or not sep or not key:
    raise ValueError(f"--metric {metric!r}: expected probe:<key> or finetune:<key>, e.g. "
                     "probe:accuracy, finetune:macro_f1, finetune:tss")


def commands(config: str, workdir: str, point: Point, metric: str,
             extra: Sequence[str] = (), eval_extra: Sequence[str] = ()) -> list[list[str]]:
  """The point's pretraining command, then its scoring command (after resumption).

  The probe runs inside pretraining's process (`--linear_eval`): one start-up per point.
  """
  flags = [f"--config.{f}={v}" for f, v in point.overrides] + list(extra)
  pretrain = [*TOOL, "pretrain", f"--config={config}", f"--workdir={workdir}", *flags]
  if metric.partition(":")[0] == "probe":
    return [pretrain + ["--linear_eval", *eval_extra]]
  return [pretrain, [*TOOL, STAGES["finetune"][1], f"--workdir={workdir}", *eval_extra]]


def _subprocess(cmd: list[str]) -> int:
  return subprocess.run(cmd, cwd=os.getcwd()).returncode


def run(config: str, sweep_dir: str, points: list[Point], metric: str,
        extra: Sequence[str] = (), eval_extra: Sequence[str] = (), log=print,
        runner=_subprocess) -> list[dict]:
  """Runs every unfinished point; returns one row per point (score None if it failed).

  `runner(cmd) -> exit code` runs one command (default: a new process).
  """
  check_metric(metric)
  os.makedirs(sweep_dir, exist_ok=True)
  rows = []
  for i, point in enumerate(points):
    workdir = os.path.join(sweep_dir, point.name)
    value = score(workdir, metric)
    status = "done before"
    if value is None:
      for cmd in commands(config, workdir, point, metric, extra, eval_extra):
        log(f"[{i + 1}/{len(points)}] {point.name}: simclr-jax " + " ".join(cmd[len(TOOL):]))
        code = runner(cmd)
        if code != 0:
          status = f"failed (exit {code}): {cmd[len(TOOL)]}"
          break
      else:
        status = "ran"
      value = score(workdir, metric) if status == "ran" else None
    log(f"[{i + 1}/{len(points)}] {point.name}: {metric} = {value} ({status})")
    rows.append({"point": point.name, **{f: v for f, v in point.overrides},
                 "labels": list(point.labels), metric: value, "status": status})
  return rows


def write_tables(sweep_dir: str, rows: list[dict], metric: str, axis_names: Sequence[str],
                 pair_mode: bool = False) -> dict:
  """sweep.csv, sweep.md and sweep.png (bars for one axis, a heat map for two)."""
  paths = {k: os.path.join(sweep_dir, f"sweep.{k}") for k in ("csv", "md", "png")}
  with open(paths["csv"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([*axis_names, metric, "workdir"])
    for r in rows:
      w.writerow([*r["labels"], "" if r[metric] is None else r[metric], r["point"]])
  fmt = lambda v: "failed" if v is None else f"{v:.4f}"
  lines = [f"| {' | '.join(axis_names)} | {metric} |",
           "| " + " | ".join("---" for _ in range(len(axis_names) + 1)) + " |"]
  lines += [f"| {' | '.join(map(str, r['labels']))} | {fmt(r[metric])} |" for r in rows]
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  if len(axis_names) <= 2:
    _plot(paths["png"], rows, metric, axis_names, pair_mode)
  else:                                   # no picture of 3+ axes: the table says it all
    del paths["png"]
  return paths


def _plot(path, rows, metric, axis_names, pair_mode):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  labels = [r["labels"] for r in rows]
  values = [np.nan if r[metric] is None else r[metric] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 4.5))
  if len(axis_names) == 1:
    ax.bar([str(l[0]) for l in labels], values)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(metric)
  else:
    xs = list(dict.fromkeys(l[1] for l in labels))
    ys = list(dict.fromkeys(l[0] for l in labels))
    if pair_mode:                        # one op list on both axes, mirrored
      xs = ys = list(dict.fromkeys([l[0] for l in labels] + [l[1] for l in labels]))
    grid = np.full((len(ys), len(xs)), np.nan)
    for (a, b), v in zip(labels, values):
      grid[ys.index(a), xs.index(b)] = v
      if pair_mode:
        grid[ys.index(b), xs.index(a)] = v
    im = ax.imshow(grid, cmap="viridis")
    for (i, j), v in np.ndenumerate(grid):
      if np.isfinite(v):
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=45, ha="right")
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(axis_names[1])
    ax.set_ylabel(axis_names[0])
    fig.colorbar(im, ax=ax, label=metric)
  ax.set_title(metric)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)

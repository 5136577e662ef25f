"""The model report of a pretraining workdir: `report.md` and `plots/loss_curve.png`.

The four parts of the SolarNet report, then the downstream results the workdir holds:
  1. parameters    config.json as YAML;
  2. architecture  parameters per module of the model the config builds (shapes only), total;
  3. loss curve    every logged step, from all the run's event files (a resumed run writes one
                   per start), drawn to plots/loss_curve.png, its numbers in loss_curve.csv;
  4. metadata      machine, training time, model size, early stopping and the best checkpoint,
                   set sizes, class balance and pixel statistics of the config's data;
  5. embedding    the encoder's h of the eval split in 2-D (UMAP, else t-SNE) coloured by
                   label, and a grid of queries with their nearest neighbours (embeddings.py);
  then the linear probe (linear_eval.json), fine-tuning (finetune.md / finetune.json) and the
  online and kNN evaluation (event files, monitor.json), where present.
Written at the end of pretraining by `simclr-jax pretrain` (`write_after_pretraining`) and by
`simclr-jax report --workdir DIR`.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time

import jax
import numpy as np
# PyYAML is installed with flax, ml_collections and orbax-checkpoint (each requires it).
import yaml
from absl import logging

from simclr_jax import embeddings, logs
from simclr_jax import metrics as metrics_lib
from simclr_jax import state as state_lib
from simclr_jax import tables
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import sources
from simclr_jax.data import stats as stats_lib
from simclr_jax.data.subset import Subset

PLOT, CURVE = workdir_lib.CURVE_PLOT, workdir_lib.CURVE_CSV
# Curves drawn when logged (loss first: the SSL objective; the others share its scale).
CURVE_TAGS = ("loss", "contrastive_loss", "online_loss")


def write_curve(workdir: str, scalars: dict) -> str | None:
  """plots/loss_curve.png (and .csv with the same points); None when no loss was logged."""
  tags = [t for t in CURVE_TAGS if t in scalars]
  if not tags:
    return None
  os.makedirs(os.path.join(workdir, workdir_lib.PLOTS), exist_ok=True)
  steps = sorted(set().union(*(scalars[t] for t in tags)))
  with open(os.path.join(workdir, CURVE), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["step", *tags])
    for s in steps:
      w.writerow([s, *(repr(scalars[t][s]) if s in scalars[t] else "" for t in tags)])
  # The Agg canvas directly: no pyplot, so no global backend is chosen for the caller.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  evals = [t for t in ("eval/knn_accuracy", "eval/online_accuracy") if t in scalars]
  fig = Figure(figsize=(7, 6.5 if evals else 4.5), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(2 if evals else 1, 1, sharex=True, squeeze=False)[:, 0]
  for ax, group, ylabel in zip(axes, (tags, evals), ("loss", "accuracy")):
    for t in group:
      xs = list(scalars[t])
      ax.plot(xs, [scalars[t][s] for s in xs], marker="." if len(xs) < 200 else None, label=t)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
  axes[-1].set_xlabel("step")
  fig.suptitle(f"{os.path.basename(os.path.abspath(workdir))}: {len(steps)} logged steps")
  fig.tight_layout()
  path = os.path.join(workdir, PLOT)
  fig.savefig(path)
  return path


# --- Architecture ---------------------------------------------------------------------------

def _size(tree, bytes_: bool = False) -> int:
  return int(sum(np.prod(x.shape, dtype=np.int64) * (np.dtype(x.dtype).itemsize if bytes_ else 1)
                 for x in jax.tree.leaves(tree)))


def module_rows(params, batch_stats=None) -> list[tuple[str, int, int]]:
  """(module, parameters, BatchNorm statistics) per module: the heads whole, the encoder by
  stem and stage (a stage's blocks together: a ResNet-152 is 50 blocks)."""
  groups: dict[str, list] = {}

  def group(path) -> str:
    if path[0] != "encoder" or len(path) < 2:
      return path[0]
    name = "stem" if "_stem" in path[1] else path[1].split("_block")[0]   # SK: conv_stem1..
    return f"encoder/{name}"

  for tree, col in ((params, 0), (batch_stats or {}, 1)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = tuple(getattr(k, "key", str(k)) for k in path)
      row = groups.setdefault(group(keys), [0, 0, set()])
      row[col] += int(np.prod(leaf.shape, dtype=np.int64))
      if len(keys) > 2 and "_block" in keys[1]:
        row[2].add(keys[1])
  return [(f"{name} ({len(blocks)} blocks)" if blocks else name, n_params, n_stats)
          for name, (n_params, n_stats, blocks) in groups.items()]


def architecture(config) -> dict:
  """Shapes of the run's model (jax.eval_shape of its init: nothing is computed, no mesh is
  built, so process 0 of a multi-host run writes it alone) and what the table needs."""
  d = config.data
  model = state_lib.make_model(config)
  x = jax.ShapeDtypeStruct((2, d.image_size, d.image_size, d.channels), np.float32)

  def init_and_apply(rng, x):
    variables = model.init({"params": rng, "dropout": rng}, x, train=False)
    return variables, model.apply(variables, x, train=False)

  variables, out = jax.eval_shape(init_and_apply, jax.random.PRNGKey(0), x)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return {"rows": module_rows(params, batch_stats), "total": _size(params),
          "batch_stats": _size(batch_stats), "bytes": _size(variables, True),
          "outputs": {k: int(v.shape[-1]) for k, v in out.items()}}


def _architecture_md(config, arch) -> list[str]:
  m = config.model
  head = (f"{m.backbone} (width x{m.width_multiplier:g}, "
          f"{'CIFAR 3x3 stem' if m.cifar_stem else 'ImageNet 7x7 stem'}), "
          f"projection {m.proj_layers} layers {m.hidden_mlp} -> {m.feat_dim}"
          f"{', online head' if 'logits' in arch['outputs'] else ''}"
          f"; input {config.data.image_size}x{config.data.image_size}x{config.data.channels}, "
          f"features h {arch['outputs']['h']}, z {arch['outputs']['z']}, compute {m.dtype}.")
  lines = [head, "", "| module | parameters | % | BatchNorm statistics |",
           "| --- | ---: | ---: | ---: |"]
  for name, n, s in arch["rows"]:
    lines.append(f"| {name} | {n:,} | {100 * n / max(arch['total'], 1):.1f} | {s:,} |")
  lines.append(f"| **total** | **{arch['total']:,}** | 100.0 | {arch['batch_stats']:,} |")
  return lines


# --- Metadata -------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
  h, rem = divmod(int(round(seconds)), 3600)
  return f"{h}:{rem // 60:02d}:{rem % 60:02d} ({seconds:,.0f} s)"


def _utc(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _checkpoint_lines(workdir: str) -> list[str]:
  lines, ckpts, best_dir = [], workdir_lib.CHECKPOINTS, workdir_lib.BEST_DIR
  latest = workdir_lib.steps(os.path.join(workdir, ckpts))
  if latest:
    d = os.path.join(workdir, ckpts, str(latest[-1]))
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    lines.append(f"- latest checkpoint: step {latest[-1]} (`{ckpts}/{latest[-1]}`, "
                 f"{size / 2**20:.1f} MiB with the optimizer state; kept: {latest})")
  best = workdir_lib.steps(os.path.join(workdir, best_dir))
  if best:
    lines.append(f"- best checkpoint: step {best[-1]} (`{best_dir}/{best[-1]}`): what "
                 "the probes, fine-tuning and `load_encoder` read by default")
  else:
    lines.append("- best checkpoint: none kept (no monitored evaluation); the latest is read")
  path = os.path.join(workdir, workdir_lib.HISTORY)
  if os.path.exists(path):
    with open(path) as f:
      h = json.load(f)
    best_entry = next((e for e in h["history"] if e["step"] == h["best_step"]), {})
    last = h["history"][-1] if h["history"] else {}
    lines.append(f"- monitored: {h['monitor']} ({h['mode']}), best {h['best']:.4f} at step "
                 f"{h['best_step']} (epoch {best_entry.get('epoch', float('nan')):.2f})")
    where = f" at step {last['step']} (epoch {last['epoch']:.2f})" if h["stopped"] else ""
    lines.append(f"- early stopping: {'stopped' if h['stopped'] else 'did not stop'}{where}"
                 f" (patience {h['patience'] or 'off'})")
  return lines


def _machine_lines() -> list[str]:
  devs = jax.devices()
  kinds = sorted({d.device_kind for d in devs})
  return [f"- machine (writing this report): {platform.node()}, {platform.platform()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, jax {jax.__version__}",
          f"- devices: {len(devs)} x {', '.join(kinds)} ({jax.default_backend()}), "
          f"{jax.process_count()} process(es)"]


def _sample(source, n: int, seed: int) -> Subset:
  """`n` examples of a large split drawn with `seed`, counted and measured: ImageNet's 1.28M
  labels alone would take a pass over all its records, so only the rows taken are read."""
  idx = np.sort(np.random.default_rng(seed).choice(len(source), n, replace=False))
  return Subset(source, idx, labels=[int(source[int(i)]["label"]) for i in idx])


def data_lines(config, max_examples: int = 2000, max_labels: int = 200_000) -> list[str]:
  """Set sizes, class balance and pixel statistics (data/stats.py) of the train and eval
  splits. Pixels are measured on `max_examples`; a split above `max_labels` examples is
  counted on a sample too. Data that cannot be read gives a line saying so, not a failure
  (a report written on a machine without the data)."""
  d, out = config.data, {}
  lines = []
  for split in dict.fromkeys((d.train_split, d.eval_split)):
    try:
      src = sources.make_source(d, split)
      n = len(src)
      if n > max_labels:
        s = stats_lib.dataset_statistics(_sample(src, max_examples, config.seed))
        s["size"], s["sampled_labels"] = n, True
      else:
        s = stats_lib.dataset_statistics(src, max_examples, config.seed)
      out[split] = s
    except Exception as e:    # noqa: BLE001 -- any reader's error; the report goes on
      lines.append(f"- {split}: data not readable here ({type(e).__name__}: {e})")
  if out:
    lines.insert(0, stats_lib.format_statistics(out))
    if any(s.get("sampled_labels") for s in out.values()):
      lines.append(f"- (classes counted on {max_examples:,} sampled examples)")
  return [f"Source `{d.source}`" + (f" at `{d.path}`" if d.get("path") else "") +
          f", values in {tuple(d.value_range) if d.get('value_range') else 'as stored'}:",
          ""] + lines


def _training_lines(events: dict, config) -> list[str]:
  sc, sessions = events["scalars"], events["sessions"]
  if not sessions:
    return ["- training time: no event files"]
  busy = sum(t1 - t0 for t0, t1 in sessions)
  # From each start's first event (the writer opens after init and restore) to its last.
  lines = [f"- training time: {_duration(busy)} over {len(sessions)} start(s) (event-file "
           f"wall times; first {_utc(sessions[0][0])}, last {_utc(sessions[-1][1])})"]
  if "loss" in sc:
    last = max(sc["loss"])
    epoch = sc.get("epoch", {}).get(last)
    lines.append(f"- steps: {last:,} logged last" + (f" (epoch {epoch:.2f})" if epoch else "")
                 + f", global batch {config.train.batch_size}")
  if "images_per_sec" in sc:
    ips = list(sc["images_per_sec"].values())
    lines.append(f"- throughput: median {np.median(ips):,.1f} img/s over {len(ips)} logs")
  return lines


# --- Results --------------------------------------------------------------------------------

def _load(workdir, name):
  path = os.path.join(workdir, name)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f) if name.endswith(".json") else f.read()
  return None


def _results_lines(workdir: str, scalars: dict) -> list[str]:
  lines = []
  probe = _load(workdir, workdir_lib.LINEAR_EVAL)
  if probe:
    lines += ["### Linear probe", "", f"`linear_eval.json`: checkpoint {probe['checkpoint']} "
              f"(step {probe['checkpoint_step']}), test split `{probe['eval_split']}`, the "
              f"probe reads `{probe.get('features', 'h')}` (eval.features).", "",
              "| features | probe | labels | test accuracy | scores |",
              "| --- | --- | ---: | ---: | --- |"]
    for r in probe["results"]:
      acc = f"{r['test_accuracy']:.4f}" if "test_accuracy" in r else ""
      lines.append(f"| {r['features']} | {r.get('probe', 'logistic')} | "
                   f"{r['label_fraction']:.0%} | {acc} | "
                   f"{metrics_lib.headline(r.get('metrics', {}))} |")
    lines.append("")
  table = _load(workdir, workdir_lib.FINETUNE_TABLE)
  if table is None and _load(workdir, workdir_lib.FINETUNE):
    table = tables.fraction_table(_load(workdir, workdir_lib.FINETUNE))
  if table:
    lines += ["### Fine-tuning", "", table.strip(), ""]
  table = _load(workdir, workdir_lib.DISTILL_TABLE)
  if table:
    lines += ["### Self-distillation (SimCLR v2)", "", table.strip(), ""]
  online = {t: v for t, v in scalars.items()
            if t.startswith("eval/") or t in ("online_accuracy", "online_loss")}
  if online:
    lines += ["### Online evaluation", "", "| metric | last step | last value | best |",
              "| --- | ---: | ---: | ---: |"]
    for t, v in sorted(online.items()):
      s = max(v)
      best = min(v.values()) if t.endswith("loss") else max(v.values())
      lines.append(f"| {t} | {s} | {v[s]:.4f} | {best:.4f} |")
    lines.append("")
  return lines or ["No probe, fine-tuning or online results in this workdir yet."]


# --- The report -----------------------------------------------------------------------------

class _Dumper(yaml.SafeDumper):
  """Groups as blocks, lists inline (`crop_scale: [0.5, 1.0]`): one field per line."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                flow_style=True))


def config_yaml(config: dict) -> str:
  """The config as YAML, in config.json's order; yaml.safe_load gives `config` back."""
  return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _curve_table(scalars: dict, rows: int = 12) -> list[str]:
  """A few evenly spaced logged steps (every one is in plots/loss_curve.csv)."""
  loss = scalars.get("loss", {})
  steps = list(loss)
  if not steps:
    return ["No loss logged yet."]
  pick = sorted({steps[int(round(i))] for i in np.linspace(0, len(steps) - 1,
                                                             min(rows, len(steps)))})
  extra = [t for t in ("contrastive_accuracy", "learning_rate") if t in scalars]
  lines = ["| step | loss | " + " | ".join(extra) + " |",
           "| ---: | ---: |" + " ---: |" * len(extra)]
  for s in pick:
    lines.append(f"| {s} | {loss[s]:.4f} | " + " | ".join(
        f"{scalars[t].get(s, float('nan')):.4g}" for t in extra) + " |")
  return lines


def _embedding_lines(workdir: str, config, max_points: int) -> list[str]:
  if jax.process_count() > 1:
    # The encoder's restore is collective across processes, and only process 0 writes this.
    return [f"Not drawn in a multi-process run: `simclr-jax report --workdir {workdir}` in "
            "one process draws them."]
  try:
    return embeddings.report_pictures(workdir, config, max_points)
  except Exception as e:    # noqa: BLE001 -- no checkpoint or no data here; the report goes on
    return [f"Not drawn here ({type(e).__name__}: {e})."]


def write_report(workdir: str, data_stats: bool = True, max_examples: int = 2000,
                 pictures: bool = True) -> str:
  """Writes workdir/report.md (and plots/); returns its path. Only process 0 writes.
  `pictures`: the embedding map and the neighbour grid of up to `max_examples` (at most
  1000) eval images."""
  path = os.path.join(workdir, workdir_lib.REPORT)
  if jax.process_index() != 0:
    return path
  config = workdir_lib.load_config(workdir)
  events = logs.read_events(workdir)
  scalars = events["scalars"]
  plot = write_curve(workdir, scalars)
  arch = architecture(config)
  name = os.path.basename(os.path.abspath(workdir))
  lines = [f"# Model report: {name}", "", f"Written {_utc(time.time())} from `"
           f"{os.path.abspath(workdir)}`; rewrite it with `simclr-jax report "
           f"--workdir {workdir}`.", "",
           "## 1. Parameters", "", "The run's `config.json`:", "", "```yaml",
           config_yaml(_load(workdir, workdir_lib.CONFIG)).rstrip(), "```", "",
           "## 2. Architecture", ""] + _architecture_md(config, arch) + [
           "", "## 3. Loss curve", ""]
  if plot:
    n = len(scalars.get("loss", {}))
    lines += [f"![loss curve]({PLOT.replace(os.sep, '/')})", "",
              f"{n} logged steps (every one in `{CURVE.replace(os.sep, '/')}`); a sample:", ""]
  lines += _curve_table(scalars)
  lines += ["", "## 4. Metadata", ""] + _machine_lines() + _training_lines(events, config) + [
      f"- model size: {arch['total']:,} parameters, {arch['batch_stats']:,} BatchNorm "
      f"statistics, {arch['bytes'] / 2**20:.2f} MiB as float32 arrays (encoder and heads)"]
  lines += _checkpoint_lines(workdir) + ["", "### Data", ""]
  lines += data_lines(config, max_examples) if data_stats else ["(not measured)"]
  if pictures:
    lines += ["", "## 5. Embedding space", ""] + _embedding_lines(
        workdir, config, min(max_examples, 1000) if max_examples else 1000)
  lines += ["", "## Results", ""] + _results_lines(workdir, scalars)
  with open(path + ".tmp", "w") as f:      # replaced whole: a reader never sees half of it
    f.write("\n".join(lines).rstrip() + "\n")
  os.replace(path + ".tmp", path)
  return path


def write_after_pretraining(config, workdir: str) -> str | None:
  """The report at the end of a completed pretraining run (simclr_jax/api.py), when
  `train.report`; process 0 only. A report that fails is logged, never raised: the run
  succeeded. Returns the report's path, or None."""
  if not config.train.report or jax.process_index() != 0:
    return None
  try:
    path = write_report(workdir)
  except Exception as e:  # noqa: BLE001
    logging.warning("report.md not written (%s): simclr-jax report --workdir %s", e,
                    workdir)
    return None
  logging.info("Model report: %s", path)
  return path

"""Dataset statistics for the model report: set sizes, class balance, tensor min/max/mean/std.

SolarNet's report lists, per split, the size and the examples per class
("train 35,479 (Quiet 30,904 / >=C 4,575)") and the tensor statistics of the normalised input
("(1, 128, 128), min -1, max 1, mean -0.00045, std 0.0396"); `dataset_statistics` computes
those for any source, `format_statistics` writes them as those lines.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def dataset_statistics(source, max_examples: int = 0, seed: int = 0,
                       class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """Size, class counts and pixel statistics of `source` (after its normalisation).

  Labels are counted over every example (from `source.labels`); pixels are measured on all
  examples, or on `max_examples` drawn without replacement with `seed` when > 0 (reading a
  35k-file split just for the report is too slow; `n_measured` says how many were read).
  Mean and std are over every pixel and channel, and per channel, accumulated in float64.
  """
  n = len(source)
  labels = np.asarray(source.labels)
  names = list(class_names or getattr(source, "class_names", None) or [])
  stats: dict[str, Any] = {"name": getattr(source, "name", repr(source)), "size": int(n)}
  labelled = labels[labels >= 0]
  stats["unlabelled"] = int((labels < 0).sum())
  if len(labelled):
    k = max(int(labelled.max()) + 1, len(names))
    counts = np.bincount(labelled, minlength=k)
    names = names + [str(i) for i in range(len(names), k)]
    stats["class_counts"] = {names[i]: int(c) for i, c in enumerate(counts)}
  multi_hot = getattr(source, "multi_hot", None)
  if multi_hot is not None:
    per_class = np.asarray(multi_hot).sum(0)
    mh_names = names if len(names) == len(per_class) else [str(i) for i in range(len(per_class))]
    stats["multi_label_counts"] = {mh_names[i]: int(c) for i, c in enumerate(per_class)}
    stats["labels_per_example"] = float(np.asarray(multi_hot).sum(1).mean())

  idx = np.arange(n)
  if max_examples and max_examples < n:
    idx = np.sort(np.random.default_rng(seed).choice(n, size=max_examples, replace=False))
  count, total, total_sq, lo, hi = 0, None, None, None, None
  shape = None
  for i in idx:
    x = np.asarray(source[int(i)]["image"], np.float64)
    if shape is None:
      shape = x.shape
      total, total_sq = np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
      lo, hi = np.full(x.shape[-1], np.inf), np.full(x.shape[-1], -np.inf)
    flat = x.reshape(-1, x.shape[-1])
    total += flat.sum(0)
    total_sq += (flat * flat).sum(0)
    lo, hi = np.minimum(lo, flat.min(0)), np.maximum(hi, flat.max(0))
    count += flat.shape[0]
  mean_c = total / count
  std_c = np.sqrt(np.maximum(total_sq / count - mean_c ** 2, 0.0))
  mean = total.sum() / (count * len(total))
  std = np.sqrt(max(total_sq.sum() / (count * len(total)) - mean ** 2, 0.0))
  stats.update({
      "n_measured": int(len(idx)),
      "shape": list(shape),               # (H, W, C), as the encoder sees it
      "min": float(lo.min()), "max": float(hi.max()), "mean": float(mean), "std": float(std),
      "channel_min": lo.tolist(), "channel_max": hi.tolist(),
      "channel_mean": mean_c.tolist(), "channel_std": std_c.tolist(),
  })
  return stats


def format_statistics(stats: dict[str, dict[str, Any]]) -> str:
  """Markdown lines, one per split, e.g.
  `- train: 35,479 (Quiet 30,904 / >=C 4,575); tensor (128, 128, 1), min -1, max 1, ...`."""
  lines = []
  for split, s in stats.items():
    parts = f"- {split}: {s['size']:,}"
    if "class_counts" in s:
      parts += " (" + " / ".join(f"{k} {v:,}" for k, v in s["class_counts"].items()) + ")"
    if s.get("unlabelled") and "class_counts" in s:
      parts += f", {s['unlabelled']:,} unlabelled"
    elif s.get("unlabelled") == s["size"] and "multi_label_counts" not in s:
      parts += " (unlabelled)"
    if "multi_label_counts" in s:
      top = sorted(s["multi_label_counts"].items(), key=lambda kv: -kv[1])[:5]
      parts += (f" (multi-label, {s['labels_per_example']:.2f} labels per example; most "
                "frequent: " + ", ".join(f"{k} {v}" for k, v in top) + ")")
    measured = "" if s["n_measured"] == s["size"] else f" (measured on {s['n_measured']:,})"
    parts += (f"; tensor {tuple(s['shape'])}, min {s['min']:.4g}, max {s['max']:.4g}, "
              f"mean {s['mean']:.4g}, std {s['std']:.4g}{measured}")
    lines.append(parts)
  return "\n".join(lines)

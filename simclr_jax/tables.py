"""Markdown tables of downstream results: label fractions as rows, protocols as columns."""

from __future__ import annotations

_COLUMNS = (("linear probe", None), ("fine-tuned", "pretrained"),
            ("supervised from scratch", "scratch"),
            ("supervised from model.init_from", "init_from"))     # finetuning.finetune's inits


def _score(row: dict) -> str:
  m = row.get("metrics", {})
  if "tss" in m:
    return f"{m['accuracy']:.4f} (TSS {m['tss']:.3f}, HSS {m['hss']:.3f})"
  if "mAP" in m:
    return f"micro F1 {m['micro_f1']:.4f}, mAP {m['mAP']:.4f}"
  return f"{row['test_accuracy']:.4f}"


def fraction_table(finetune_report: dict, probe_report: dict | None = None) -> str:
  """Test accuracy (and TSS/HSS or F1/mAP) per label fraction: linear probe (of the pretrained
  features, from linear_eval.json when given), fine-tuned, supervised from scratch (or from
  model.init_from's encoder)."""
  cells: dict[float, dict[str, str]] = {}
  for r in finetune_report["results"]:
    col = next(c for c, init in _COLUMNS if init == r["init"])
    cells.setdefault(r["label_fraction"], {})[col] = _score(r)
  for r in (probe_report or {}).get("results", []):
    if r["features"] == "pretrained" and r["label_fraction"] in cells:
      cells[r["label_fraction"]].setdefault("linear probe", _score(r))
  cols = [c for c, _ in _COLUMNS if any(c in row for row in cells.values())]
  lines = [f"Test split `{finetune_report['eval_split']}`, checkpoint "
           f"{finetune_report['checkpoint']} (step {finetune_report['checkpoint_step']}).", "",
           "| labels | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
  for fraction in sorted(cells):
    lines.append(f"| {fraction:.0%} | " + " | ".join(cells[fraction].get(c, "")
                                                    for c in cols) + " |")
  return "\n".join(lines) + "\n"


def _model(m: dict) -> str:
  return f"{m['backbone']} x{m['width_multiplier']:g}, {m['parameters'] / 1e6:.2f}M parameters"


def distill_table(distill_report: dict) -> str:
  """The student's test accuracy (or TSS/HSS) beside its teacher's, per label fraction, with
  the student's wall time (distill.json)."""
  r = distill_report
  lines = [f"Test split `{r['eval_split']}`. Teacher: the fine-tuned `{r['teacher']}` model "
           f"({_model(r['teacher_model'])}); student: {_model(r['student_model'])}, "
           f"temperature {r['temperature']:g}, label weight {r['label_weight']:g}.", "",
           "| labels | teacher (fine-tuned) | student (distilled) | student's wall time |",
           "| --- | --- | --- | --- |"]
  for row in sorted(r["results"], key=lambda row: row["label_fraction"]):
    teacher = {"test_accuracy": row["teacher_test_accuracy"], "metrics": row["teacher_metrics"]}
    resumed = f" (resumed at step {row['resumed_from_step']})" if row["resumed_from_step"] else ""
    lines.append(f"| {row['label_fraction']:.0%} | {_score(teacher)} | {_score(row)} | "
                 f"{row['seconds']:.0f} s{resumed} |")
  return "\n".join(lines) + "\n"

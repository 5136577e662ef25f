"""SimCLR v2 self-distillation: a fine-tuned teacher labels the train split, a student learns it.

`simclr-jax distill --workdir W` after `simclr-jax finetune`, per label fraction (docs/finetune.md;
fields `distill.*` in simclr_jax/configs/default.py):
  teacher    the model fine-tuning saved at that fraction (finetune.json), frozen, BatchNorm on
             its running averages;
  student    encoder + linear head (finetuning.Classifier) of `distill.student.*`, by default
             the run's own backbone (self-distillation), from random init;
  data       every image of the train split, its labels unused unless `label_weight` > 0 (then
             the fraction's fine-tuning labels add their cross-entropy);
  loss       v2 eq. 2: -sum_y P_T(y|x; tau) log P_S(y|x; tau), P = softmax(logits / tau), the
             batch's mean, + label_weight x the labelled examples' cross-entropy summed over
             the batch / its size (v2 eq. 3 weighs its two sums so);
  resume     orbax checkpoints of the student and the grain iterator in
             workdir/distill/<teacher>_<fraction>_<student>/; a restart continues exactly
             (each step's keys come from the seed, the step and the sample ids); a finished
             fraction (result.json) is not redone; SIGTERM / SIGINT save the step and exit.
The step runs on the fine-tuning mesh (batch sharded on 'data', shard_map for the student's
cross-device BatchNorm). Writes workdir/distill.json and distill.md.

Teacher and student see one augmented view (fine-tuning's crop and flips), not the teacher's
logits of the plain images computed once: v2's choice and the "consistent teaching" of Beyer
et al. 2022: a target from another view labels the crop with what it may no longer show. It
costs a teacher forward pass per step, and no cache to resume. No tau^2 factor (Hinton et al.
have one, v2's formula not); at the default tau 1 they agree.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from simclr_jax import (augment, checkpoint, evaluate, finetuning, guards, parallel, progress,
                        tables, train, validate)
from simclr_jax import state as state_lib
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import pipeline, sources
from simclr_jax.validate import ConfigError

TEACHERS = ("pretrained", "scratch", "init_from")      # finetuning.finetune's inits


RULES = {
    "distill.label_fractions": validate.seq(validate.FRACTION),
    "distill.teacher": validate.choice(TEACHERS),
    "distill.temperature": validate.POSITIVE, "distill.label_weight": validate.NONNEG,
    "distill.epochs": validate.integer(1), "distill.steps": validate.integer(0),
    "distill.batch_size": validate.integer(1),
    "distill.optimizer": validate.choice(finetuning.OPTIMIZERS),
    "distill.learning_rate": validate.POSITIVE, "distill.weight_decay": validate.NONNEG,
    "distill.augment": validate.BOOL, "distill.seed": validate.integer(0),
    "distill.log_every": validate.integer(1), "distill.checkpoint_every": validate.integer(1),
    "distill.keep_checkpoints": validate.integer(1),
    "distill.eval_batch_size": validate.integer(1),
    "distill.student.backbone": validate.Rule(
        lambda v: v == "" or v in validate.names_of("backbones")(),
        lambda: "'' (model.backbone) or one of " + ", ".join(validate.names_of("backbones")())),
    "distill.student.width_multiplier": validate.Rule(
        lambda v: v == 0 or validate.number(1 / 64).test(v),
        "0 (model.width_multiplier) or a finite number >= 1/64"),
}
# Fields that may change on a restart: they shape neither the student's state nor its data.
MAY_CHANGE = ("label_fractions", "log_every", "checkpoint_every", "keep_checkpoints",
              "eval_batch_size")


def distill_loss(student_logits, teacher_logits, temperature):
  """Per example, -sum_y P_T(y|x; tau) log P_S(y|x; tau) with P = softmax(logits / tau) (SimCLR
  v2 eq. 2); no gradient reaches the teacher."""
  p_teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
  return -jnp.sum(p_teacher * jax.nn.log_softmax(student_logits / temperature, axis=-1), -1)


# --- checks: one line each, before anything compiles --------------------------------------------

def _field(config, path: str):
  node = config
  for part in path.split("."):
    node = node.get(part) if node is not None else None
  return node


def run_fields(config, row: dict, student_model: dict) -> dict:
  """What a student's checkpoints were made with (its folder's config.json)."""
  d = {k: v for k, v in config.distill.to_dict().items() if k not in MAY_CHANGE}
  return json.loads(json.dumps({"distill": d, "train_split": config.data.train_split,
                                "teacher_model": row["model"], "student_model": student_model}))


def check(config, workdir) -> tuple[dict, list[float]]:
  """(finetune.json, the label fractions to distil) or a one-line ConfigError: the distill
  fields, the teacher models on disk, the batch against devices, and a restart's config."""
  if config.get("distill") is None:
    raise ConfigError("the config has no 'distill' group: pass one (simclr_jax.distill and "
                      "`simclr-jax distill` add the defaults)")
  for path, rule in RULES.items():
    value = _field(config, path)
    if not rule.test(value):
      validate.fail(path, value, rule.allowed if isinstance(rule.allowed, str) else rule.allowed())
  d = config.distill
  path = epath.Path(workdir) / workdir_lib.FINETUNE
  if not path.exists():
    raise ConfigError(f"no {path}: distillation needs a fine-tuned teacher; run `simclr-jax "
                      f"finetune --workdir {workdir}` first")
  report = json.loads(path.read_text())
  if "classifier" not in report or any("model" not in r for r in report["results"]):
    raise ConfigError(f"{path} names no saved model (fine-tuning before it saved them): run "
                      f"`simclr-jax finetune --workdir {workdir}` again")
  if report["classifier"]["multilabel"]:
    raise ConfigError(f"{path}: a multi-label (sigmoid) teacher; distillation takes softmax "
                      "classifiers only")
  rows = {r["label_fraction"]: r for r in report["results"] if r["init"] == d.teacher}
  if not rows:
    validate.fail("distill.teacher", d.teacher, "an init finetune.json has a model of: "
                  + ", ".join(sorted({r["init"] for r in report["results"]})))
  fractions = [float(f) for f in d.label_fractions] or sorted(rows)
  missing = [f for f in fractions if f not in rows]
  if missing:
    validate.fail("distill.label_fractions", tuple(d.label_fractions),
                  f"fractions with a fine-tuned {d.teacher!r} model in {path}: {sorted(rows)}")
  for f in fractions:
    model = epath.Path(workdir) / rows[f]["model"]
    if not model.exists():
      raise ConfigError(f"{model}: the teacher finetune.json names is not there; run "
                        f"`simclr-jax finetune --workdir {workdir}` again")
  try:
    parallel.check_batch_size(d.batch_size, parallel.make_mesh(config.train.num_devices))
  except ValueError as e:
    validate.fail("distill.batch_size", d.batch_size, str(e).split(": ", 1)[-1])
  if d.batch_size % jax.process_count():
    validate.fail("distill.batch_size", d.batch_size,
                  f"a multiple of the number of processes ({jax.process_count()})")
  for f in fractions:
    saved = epath.Path(workdir) / workdir_lib.DISTILL_DIR / _name(config, f) / "config.json"
    if saved.exists():
      flat = lambda tree: traverse_util.flatten_dict(tree, sep=".")
      old = flat(json.loads(saved.read_text()))
      new = flat(run_fields(config, rows[f], _student_model(config)))
      diffs = [f"{k}: saved {validate.show(old.get(k))}, new {validate.show(v)}"
               for k, v in new.items() if old.get(k) != v]
      if diffs:
        raise ConfigError(validate.one_line(
            f"cannot resume {saved.parent}: its checkpoints were made with another config "
            f"({'; '.join(diffs)}); set the fields back, or delete that folder to start over"))
  return report, fractions


def _name(config, fraction: float) -> str:
  """A student's folder under workdir/distill/: teacher, fraction, student (several students of
  one teacher side by side)."""
  s = _student_model(config)
  return f"{config.distill.teacher}_{float(fraction):g}_{s['backbone']}_x{s['width_multiplier']:g}"


# --- the teacher and the student: finetuning's Classifier ---------------------------------------

def _student_model(config) -> dict:
  s = config.distill.student
  return {"backbone": s.backbone or config.model.backbone,
          "width_multiplier": float(s.width_multiplier or config.model.width_multiplier)}


def _classifier_config(config, model: dict, from_projection: int, head_hidden: int,
                       head_dropout: float):
  c = copy.deepcopy(config)
  with c.unlocked(), c.ignore_type():
    for key, value in model.items():
      if key in c.model and key != "conv_impl":      # the start-up chose this host's path
        c.model[key] = value
    c.model.init_from = ""                           # every weight comes from elsewhere
    c.finetune.from_projection = from_projection
    c.finetune.head_hidden, c.finetune.head_dropout = head_hidden, head_dropout
    c.finetune.eval_batch_size = config.distill.eval_batch_size
  return c


def _tx(d, total_steps: int):
  lr = optax.cosine_decay_schedule(d.learning_rate, max(1, total_steps))
  if d.optimizer == "sgd":
    return optax.sgd(lr, momentum=0.9)
  if d.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=d.weight_decay)
  return optax.adam(lr)


class _Labelled:
  """The train split with labels only where `labels` >= 0 (the labelled fraction), else -1."""

  def __init__(self, source, labels):
    self.source, self.labels = source, labels

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return {"image": self.source[i]["image"], "label": self.labels[i]}


class Distiller:
  """The student's optimizer and jitted step on the teacher's mesh, for one config."""

  def __init__(self, config, teacher: finetuning.Trainer, student: finetuning.Trainer,
               total_steps: int, per_epoch: int):
    self.config, self.d = config, config.distill
    self.teacher, self.student, self.mesh = teacher, student, student.mesh
    self.total_steps, self.per_epoch = total_steps, max(1, per_epoch)
    self.tx = _tx(self.d, total_steps)
    self.view = finetuning.geometric_augment(config) if self.d.augment else None
    self.init_key, self.augment_key = state_lib.run_keys(self.d.seed)
    self.step = self._make_step()

  def init_state(self) -> state_lib.TrainState:
    """The student from random init (`distill.seed`) and its optimizer, replicated: one jitted
    program (as state.init_state), not the optimizer's init op by op."""
    c, model = self.config.data, self.student.model

    def init(key):
      x = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.float32)
      v = model.init(key, x, train=False, bn_train=False)
      state = state_lib.TrainState.create(apply_fn=model.apply, params=v["params"],
                                          batch_stats=v.get("batch_stats", {}), tx=self.tx)
      # A strong int32 step, as a restored one has: a resumed run runs the very executable.
      return state.replace(step=jnp.zeros((), jnp.int32))

    with jax.threefry_partitionable(False):       # ~3x less compile time (state.init_state)
      return jax.jit(init, out_shardings=parallel.replicated(self.mesh))(self.init_key)

  def _make_step(self):
    tau, weight = float(self.d.temperature), float(self.d.label_weight)
    teacher, student, view, augment_key = (self.teacher.model, self.student.model, self.view,
                                           self.augment_key)
    psum = lambda x: jax.lax.psum(x, parallel.DATA)

    def per_device(params, batch_stats, teacher_vars, images, ids, labels):
      if view is not None:      # one view per image, its key from the image's stream position
        keys, _ = augment.view_keys(augment_key, ids.astype(jnp.uint32))
        images = augment.augment_batch(view, keys, images)
      t = teacher.apply(teacher_vars, images, train=False, bn_train=False)
      s, new = student.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                             bn_train=True, mutable=["batch_stats"])
      soft = distill_loss(s, t, tau)
      hard = jnp.where(labels >= 0, optax.softmax_cross_entropy_with_integer_labels(
          s, jnp.maximum(labels, 0)), 0.0)           # summed over the labelled, / batch size
      n = psum(labels.shape[0])
      m = {"distill_loss": psum(soft.sum()) / n, "label_loss": psum(hard.sum()) / n,
           "agreement": psum((s.argmax(-1) == t.argmax(-1)).sum()) / n}
      return m["distill_loss"] + weight * m["label_loss"], (m, new["batch_stats"])

    sharded = jax.shard_map(per_device, mesh=self.mesh,
                            in_specs=(P(), P(), P(), P(parallel.DATA), P(parallel.DATA),
                                      P(parallel.DATA)),
                            out_specs=(P(), (P(), P())))

    def step(state, teacher_vars, batch):
      def loss_fn(params):
        return sharded(params, state.batch_stats, teacher_vars, batch["image"], batch["id"],
                       batch["label"])

      (loss, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      # A non-finite step is not applied, as in pretraining: nothing non-finite is saved.
      state, norms = guards.apply_if_finite(state, loss, grads, stats)
      return state, dict(metrics, loss=loss, l2_grads=norms["l2_grads"], finite=norms["finite"])

    rep = parallel.replicated(self.mesh)
    return jax.jit(step, in_shardings=(rep, rep, parallel.batch_sharded(self.mesh)),
                   out_shardings=(rep, rep), donate_argnums=(0,))

  def fit(self, directory, source, teacher_vars, desc: str):
    """Trains (or resumes) the student in `directory`; returns (state, step started from)."""
    d, mesh, procs = self.d, self.mesh, jax.process_count()
    manager = checkpoint.make_manager(directory, d.checkpoint_every, d.keep_checkpoints,
                                      cleanup=True)
    data_iter = iter(pipeline.pretrain_dataset(
        source, global_batch_size=d.batch_size, seed=d.seed, process_index=jax.process_index(),
        process_count=procs, workers=self.config.data.workers,
        prefetch=self.config.data.prefetch))
    state, start = self.init_state(), 0
    if manager.latest_step() is not None:
      state, start = checkpoint.restore_latest(manager, state, data_iter)
      logging.info("distill: resuming %s at step %d", directory, start)
    check_finite = guards.FiniteCheck(0, manager)
    bar = progress.Progress(desc, self.total_steps, start)
    history, preempted = [], None
    try:
      with guards.StopSignals() as signals:
        for done in range(start + 1, self.total_steps + 1):
          b = next(data_iter)
          batch = parallel.host_to_global(mesh, {"image": b["image"],
                                                 "label": b["label"].astype(np.int32),
                                                 "id": b["id"].astype(np.int32)})
          state, metrics = self.step(state, teacher_vars, batch)
          check_finite.add(done, metrics)
          history.append(metrics)
          log_due = done % d.log_every == 0 or done == self.total_steps
          signalled = signals.signum is not None
          if procs > 1:     # every process stops at the same (log) step: the save is collective
            from jax.experimental import multihost_utils
            signalled = log_due and bool(multihost_utils.process_allgather(
                np.int32(signalled)).any())
          force = done == self.total_steps or signalled
          if log_due or force or manager.should_save(done):
            check_finite()              # before anything of this state is logged or saved
          if log_due:
            last = {k: float(np.mean([h[k] for h in jax.device_get(history)]))
                    for k in ("loss", "distill_loss", "agreement")}
            history = []
            bar.update(done, log=True, epoch=f"{done / self.per_epoch:.2f}", loss=last["loss"],
                       agreement=last["agreement"])
          else:
            bar.update(done)
          checkpoint.save(manager, done, state, data_iter, force=force)
          if signalled:
            preempted = done
            break
        check_finite()
    finally:
      bar.close()
      manager.wait_until_finished()
      manager.close()
      if hasattr(data_iter, "close"):
        data_iter.close()
    if preempted is not None:
      logging.warning("distill: preempted at step %d, checkpoint saved in %s; run the same "
                      "command to resume", preempted, directory)
      raise train.Preempted(preempted)
    return state, start


def build(config, report: dict, num_train: int) -> Distiller:
  """The teacher (finetune.json's classifier), the student (distill.student.*) and their
  Distiller for a train split of `num_train` images."""
  d, cls = config.distill, report["classifier"]
  k = cls["num_outputs"]
  teacher = finetuning.Trainer(_classifier_config(
      config, cls["model"], report["from_projection"], cls["head_hidden"], cls["head_dropout"]),
      k, multilabel=False)
  student = finetuning.Trainer(_classifier_config(config, _student_model(config), 0, 0, 0.0), k,
                               multilabel=False)
  per_epoch = num_train // d.batch_size
  return Distiller(config, teacher, student, d.steps if d.steps > 0 else d.epochs * per_epoch,
                   per_epoch)


def _count(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _write_json(path, obj) -> None:
  """`path` written whole, then renamed over the old one (process 0 only)."""
  if jax.process_index() == 0:
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def distill(workdir: str, config=None) -> dict:
  """Distils the fine-tuned teacher of each label fraction into a student (module docstring);
  writes distill.json and distill.md in `workdir` and returns the report."""
  config = config or workdir_lib.load_config(workdir)
  report, fractions = check(config, workdir)
  d, cls = config.distill, report["classifier"]
  train_src = sources.make_source(config.data, config.data.train_split)
  test_src = sources.make_source(config.data, config.data.eval_split)
  if d.batch_size > len(train_src):
    validate.fail("distill.batch_size", d.batch_size, f"<= {len(train_src)}, the examples of "
                  f"the train split {config.data.train_split!r}")
  y, targets = np.asarray(train_src.labels), np.asarray(test_src.labels)
  scores = evaluate.make_scores(config, train_src, multilabel=False)
  distiller = build(config, report, len(train_src))
  teacher, student, total = distiller.teacher, distiller.student, distiller.total_steps
  per_epoch, student_model = distiller.per_epoch, _student_model(config)
  rows = {r["label_fraction"]: r for r in report["results"] if r["init"] == d.teacher}
  results = []
  for fraction in fractions:
    row, t0 = rows[fraction], time.perf_counter()
    directory = workdir_lib.path(workdir) / workdir_lib.DISTILL_DIR / _name(config, fraction)
    result_file = directory / "result.json"
    if result_file.exists() and workdir_lib.steps(directory / workdir_lib.CHECKPOINTS)[-1:] == [
        total]:
      logging.info("distill: %s is done (%s): not redone", directory, result_file)
      results.append(json.loads(result_file.read_text()))
      continue
    _write_json(directory / "config.json", run_fields(config, row, student_model))
    teacher_vars = finetuning.load_model(epath.Path(workdir) / row["model"], teacher.abstract())
    labels = np.full(len(train_src), -1, np.int32)
    if d.label_weight > 0:         # the labels the teacher was fine-tuned on
      fit_idx, _ = finetuning.label_split(y, fraction, report.get("val_fraction", 0.2),
                                          report.get("seed", 0))
      labels[fit_idx] = y[fit_idx]
    state, start = distiller.fit(directory, _Labelled(train_src, labels), teacher_vars,
                                 f"distill {fraction:.0%}")
    student_scores = scores(targets, student.predict(state, test_src).argmax(1))
    teacher_scores = scores(targets, teacher.predict(
        types.SimpleNamespace(**teacher_vars), test_src).argmax(1))
    if abs(teacher_scores["accuracy"] - row["test_accuracy"]) > 1e-9:
      logging.warning("distill: the teacher %s scores %.4f here, %.4f in finetune.json",
                      row["model"], teacher_scores["accuracy"], row["test_accuracy"])
    result = {"label_fraction": fraction, "teacher": d.teacher, "teacher_model": row["model"],
              "teacher_test_accuracy": teacher_scores["accuracy"],
              "test_accuracy": student_scores["accuracy"], "metrics": student_scores,
              "teacher_metrics": teacher_scores, "steps": total,
              "epochs": round(total / max(1, per_epoch), 3), "batch_size": int(d.batch_size),
              "n_train": len(train_src), "n_labelled": int((labels >= 0).sum()),
              "n_test": len(test_src), "resumed_from_step": start,
              "seconds": round(time.perf_counter() - t0, 1)}
    logging.info("distill labels %.0f%%: teacher %.4f, student %.4f", 100 * fraction,
                 result["teacher_test_accuracy"], result["test_accuracy"])
    _write_json(result_file, result)
    results.append(result)
  out = {"workdir": os.path.abspath(workdir), "eval_split": config.data.eval_split,
         "train_split": config.data.train_split, "teacher": d.teacher,
         "temperature": float(d.temperature), "label_weight": float(d.label_weight),
         "teacher_model": {"backbone": cls["model"]["backbone"],
                           "width_multiplier": cls["model"]["width_multiplier"],
                           "from_projection": report["from_projection"],
                           "parameters": _count(teacher.abstract()["params"])},
         "student_model": {**student_model, "parameters": _count(student.abstract()["params"])},
         "results": results}
  _write_json(epath.Path(workdir) / workdir_lib.DISTILL, out)
  if jax.process_index() == 0:
    (epath.Path(workdir) / workdir_lib.DISTILL_TABLE).write_text(tables.distill_table(out))
  return out

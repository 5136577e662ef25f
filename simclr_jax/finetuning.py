"""Fine-tuning a pretrained encoder into a classifier, and the supervised-from-scratch baseline.

Protocol (config.finetune, fields in simclr_jax/configs/default.py), per label fraction:
  labels     a stratified `fraction` of the labelled train split (fixed `seed`), split 8:2
             (`val_fraction`, stratified) into fit / val; scored on `data.eval_split`;
  model      the encoder (+ the first `from_projection` layers of the projection head:
             SimCLR v2 fine-tunes from the first layer of its 3-layer head) + a new linear or
             MLP head; `scratch` is the same model from random init, same schedule
             (`init_from` instead: its encoder from model.init_from);
  optimizer  optax, the head at `learning_rate`, the encoder at `encoder_lr` (0 = frozen: its
             parameters are carried over untouched, bitwise);
  BatchNorm  `train` (batch statistics averaged over the mesh, running averages updated) or
             `frozen` (running averages of the checkpoint); `auto` = frozen iff encoder_lr 0;
  images     crop and flips of the pretraining recipe (its colour/intensity ops dropped), on
             device inside the jitted step, per-sample keys;
  epochs     validation loss after every epoch, the best epoch's weights kept and scored,
             optional early stopping (`patience`).
The step runs on the pretraining mesh (Mesh('data'), batch sharded, jax.shard_map for the
cross-device BatchNorm). Writes workdir/finetune.json and workdir/finetune.md, and each model
it scores (params and BatchNorm statistics, orbax) to workdir/finetune/<init>_<fraction>/, the
teacher of `simclr-jax distill` (finetune.json: each row's `model`, the classifier's fields).
"""

from __future__ import annotations

import functools
import json
import os
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import PartitionSpec as P
from sklearn.model_selection import train_test_split

from simclr_jax import augment, evaluate, monitor, parallel, probes, progress, tables, validate
from simclr_jax import state as state_lib
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import labels as labels_lib
from simclr_jax.data import pipeline, sources
from simclr_jax.data.subset import Subset
from simclr_jax.models import simclr as simclr_model

BATCH_NORM = ("train", "frozen", "auto")
OPTIMIZERS = ("adam", "adamw", "sgd")


class ProjectionPrefix(nn.Module):
  """The first `layers` Dense -> BN -> ReLU blocks of models.heads.ProjectionHead, same names
  (dense1, bn1, ...), so the pretrained weights load as they are."""

  hidden_mlp: int
  layers: int
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.layers):
      x = nn.Dense(self.hidden_mlp, dtype=self.dtype, name=f"dense{i + 1}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype, axis_name=self.bn_axis_name, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    return x


class Classifier(nn.Module):
  """encoder [-> projection prefix] -> head. `bn_train` drives BatchNorm, `train` dropout."""

  model_cfg: dict
  num_outputs: int
  head_hidden: int = 0
  head_dropout: float = 0.0
  from_projection: int = 0
  bn_axis_name: str | None = None

  def setup(self):
    cfg = self.model_cfg
    # Flax hands dict attributes back frozen (a FrozenDict): attribute access again.
    self.encoder = simclr_model.encoder_from_config(_Attrs(dict(cfg)), self.bn_axis_name)
    if self.from_projection:
      self.projection = ProjectionPrefix(cfg["hidden_mlp"], self.from_projection,
                                         self.bn_axis_name, self.encoder.dtype)
    self.head = probes.Head(self.num_outputs, self.head_hidden, self.head_dropout)

  def __call__(self, x, train: bool, bn_train: bool):
    h = self.encoder(x, bn_train)
    if self.from_projection:
      h = self.projection(h, bn_train)
    return self.head(h.astype(jnp.float32), train)


class _Attrs(dict):
  __getattr__ = dict.__getitem__


def _element(e, target_key):
  return {"image": np.asarray(e["image"], np.float32),
          "target": np.asarray(e[target_key], np.int32)}


def _tx(ft, lr):
  if lr == 0:
    return optax.set_to_zero()
  if ft.optimizer == "sgd":
    return optax.sgd(lr, momentum=0.9)
  if ft.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=ft.weight_decay)
  return optax.adam(lr)


def geometric_augment(config):
  """The crop and flips of the pretraining recipe (view 1), without its other ops."""
  p = augment.resolve(config.augment)[0]
  cfg = augment.get_config("none", crop_scale=p["crop_scale"], crop_ratio=p["crop_ratio"],
                           hflip_prob=p["hflip_prob"], vflip_prob=p["vflip_prob"],
                           value_range=p["value_range"])
  return augment.make_augment(cfg, config.data.channels, config.data.image_size)[0]


class Trainer:
  """The model, optimizer and jitted steps for one config; reused across fractions and inits."""

  def __init__(self, config, num_outputs: int, multilabel: bool):
    ft = config.finetune
    validate.check_fields(config)         # the finetune fields, then against the model
    validate.check_finetune(config)
    self.config, self.ft, self.multilabel = config, ft, multilabel
    self.mesh = parallel.make_mesh(config.train.num_devices)
    self.frozen = ft.encoder_lr == 0
    self.bn_train = (ft.batch_norm == "train" or (ft.batch_norm == "auto" and not self.frozen))
    self.model = Classifier(config.model.to_dict(), num_outputs, ft.head_hidden,
                            ft.head_dropout, ft.from_projection, parallel.DATA)
    self.encoder_keys = ("encoder", "projection") if ft.from_projection else ("encoder",)
    self.tx = optax.multi_transform(
        {"encoder": _tx(ft, ft.encoder_lr), "head": _tx(ft, ft.learning_rate)},
        lambda params: {k: ("encoder" if k in self.encoder_keys else "head") for k in params})
    self.view = geometric_augment(config) if ft.augment else None
    self._train_step = self._make_train_step()
    self._logits = self._make_logits()

  def init(self, seed: int, pretrained=None):
    """Fresh variables (seed); with `pretrained` (a pretraining run's variables, {'params',
    'batch_stats'}: state.restore) its encoder and projection layers are copied in; without,
    the encoder of model.init_from where set (the baseline from, e.g., supervised weights)."""
    c = self.config.data
    dummy = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.float32)
    with jax.threefry_partitionable(False):   # init compiles ~3x faster (see state.init_state)
      variables = jax.jit(functools.partial(self.model.init, train=False, bn_train=False))(
          jax.random.PRNGKey(seed), dummy)
    params, stats = dict(variables["params"]), dict(variables.get("batch_stats", {}))
    if pretrained is not None:
      pre_params, pre_stats = pretrained["params"], pretrained["batch_stats"]
      params["encoder"] = pre_params["encoder"]
      stats["encoder"] = pre_stats["encoder"]
      if self.ft.from_projection:
        kept = {f"{kind}{i}" for i in range(1, self.ft.from_projection + 1)
                for kind in ("dense", "bn")}
        params["projection"] = {k: pre_params["projection"][k] for k in kept}
        stats["projection"] = {k: v for k, v in pre_stats["projection"].items() if k in kept}
    else:
      params, stats = state_lib.with_init_from(self.config.model, params, stats)
    state = state_lib.TrainState.create(apply_fn=self.model.apply, params=params,
                                        batch_stats=stats, tx=self.tx)
    # Copies: the train step donates its state, and the pretrained arrays must outlive it
    # (every label fraction starts from them).
    return jax.device_put(jax.tree.map(jnp.array, state), parallel.replicated(self.mesh))

  def abstract(self) -> dict:
    """Shapes, dtypes and (replicated) shardings of the model's {'params', 'batch_stats'},
    without computing them: what `load_model` restores into."""
    c = self.config.data
    x = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, c.channels), jnp.float32)
    shapes = jax.eval_shape(functools.partial(self.model.init, train=False, bn_train=False),
                            jax.random.PRNGKey(0), x)
    rep = parallel.replicated(self.mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                        {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})})

  def _make_train_step(self):
    model, multilabel, bn_train, view = self.model, self.multilabel, self.bn_train, self.view
    frozen, encoder_keys = self.frozen, self.encoder_keys

    def per_device(params, batch_stats, images, targets, keys):
      if view is not None:
        images = augment.augment_batch(view, keys[:, 0], images)
      out, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, bn_train=bn_train, mutable=["batch_stats"],
                                  rngs={"dropout": keys[0, 1]})
      loss = probes.head_loss(out, targets, multilabel)
      n = jax.lax.psum(loss.shape[0], parallel.DATA)
      return jax.lax.psum(loss.sum(), parallel.DATA) / n, new_vars["batch_stats"]

    sharded = jax.shard_map(per_device, mesh=self.mesh,
                            in_specs=(P(), P(), P(parallel.DATA), P(parallel.DATA),
                                      P(parallel.DATA)),
                            out_specs=(P(), P()))

    def step(state, batch, key):
      key = jax.random.fold_in(key, state.step)
      keys = jax.random.split(key, 2 * batch["image"].shape[0]).reshape(-1, 2, 2)

      def loss_fn(params):
        return sharded(params, state.batch_stats, batch["image"], batch["target"], keys)

      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      if frozen:   # carried over, not re-added: x + 0.0 would turn a -0.0 weight into +0.0
        params = {**params, **{k: state.params[k] for k in encoder_keys}}
      if not bn_train:
        stats = state.batch_stats
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                           batch_stats=stats), loss

    rep = parallel.replicated(self.mesh)
    return jax.jit(step, in_shardings=(rep, parallel.batch_sharded(self.mesh), rep),
                   out_shardings=(rep, rep), donate_argnums=(0,))

  def _make_logits(self):
    model = self.model

    @jax.jit
    def logits(params, batch_stats, images):
      return model.apply({"params": params, "batch_stats": batch_stats}, images, train=False,
                         bn_train=False)
    return logits

  def predict(self, state, source):
    """Logits of every example of `source`, in order."""
    n_dev = self.mesh.devices.size
    bs = -(-self.ft.eval_batch_size // n_dev) * n_dev
    sharding = parallel.batch_sharded(self.mesh)
    out = []
    for images, _, valid in pipeline.eval_batches(source, bs):
      out.append(np.asarray(self._logits(state.params, state.batch_stats,
                                         jax.device_put(images, sharding)))[:valid])
    return np.concatenate(out).astype(np.float64)

  def fit(self, state, fit_src, val_src, val_targets, target_key: str, seed: int):
    """Trains for `epochs` (or until `patience`); returns (best_state, last_state, info)."""
    ft, mesh = self.ft, self.mesh
    n_dev, procs = mesh.devices.size, jax.process_count()
    batch = min(ft.batch_size, len(fit_src)) // n_dev * n_dev
    if batch < n_dev:
      raise ValueError(f"{len(fit_src)} fit examples for {n_dev} devices: raise the label "
                       "fraction or finetune.val_fraction's complement")
    key = jax.random.PRNGKey(seed + 1)
    stopper = monitor.early_stopping(ft.patience)
    best, best_epoch, curve = None, 0, []
    bar = progress.Progress("fine-tune", ft.epochs, unit="epoch")
    for epoch in range(ft.epochs):
      ds = (grain.MapDataset.source(fit_src).shuffle(seed=seed + epoch)
            [jax.process_index()::procs]
            .map(functools.partial(_element, target_key=target_key))
            .batch(batch // procs, drop_remainder=True))
      for b in ds:
        state, _ = self._train_step(state, parallel.host_to_global(mesh, b), key)
      logits = self.predict(state, val_src)
      val = float(np.mean(np.asarray(probes.head_loss(
          jnp.asarray(logits, jnp.float32), jnp.asarray(val_targets), self.multilabel))))
      curve.append(val)
      bar.update(epoch + 1, log=True, **{"val loss": val})
      stopper = stopper.update(val)
      if stopper.has_improved:
        best, best_epoch = jax.device_get(state), epoch  # a host copy: the step donates its input
      if stopper.should_stop:
        break
    bar.close()
    return best, state, {"best_epoch": best_epoch + 1, "epochs_run": len(curve),
                         "val_loss_curve": curve, "batch_size": batch}


def model_name(init: str, fraction: float) -> str:
  """The folder of a fine-tuned model under workdir/finetune/: '<init>_<fraction>'."""
  return f"{workdir_lib.FINETUNE_MODELS}/{init}_{float(fraction):g}"


def save_model(path, state, mesh) -> None:
  """`state`'s params and BatchNorm statistics in the folder `path` (orbax writes a tmp folder
  and renames it when complete: a killed save leaves no model). Every process takes part."""
  variables = jax.device_put({"params": state.params, "batch_stats": state.batch_stats},
                             parallel.replicated(mesh))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(workdir_lib.path(path), variables, force=True)


def load_model(path, template: dict) -> dict:
  """{'params', 'batch_stats'} of a `save_model` folder, as `template` (Trainer.abstract)."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(workdir_lib.path(path), template)


def label_split(y, fraction, val_fraction, seed):
  """(fit_idx, val_idx) of a stratified fraction, split 8:2 (stratified where each class has
  at least 2 examples; else plain random, logged)."""
  if np.ndim(y) == 2:
    n = len(y)
    idx = (np.sort(np.random.default_rng(seed).choice(n, max(2, round(fraction * n)),
                                                      replace=False))
           if fraction < 1 else np.arange(n))
    strat = None
  else:
    idx = labels_lib.stratified_fraction(y, fraction, seed)
    counts = np.unique(y[idx], return_counts=True)[1]
    strat = y[idx] if counts.min() >= 2 else None
    if strat is None:
      logging.info("label fraction %g: a class has < 2 examples, fit/val split not stratified",
                   fraction)
  fit, val = train_test_split(idx, test_size=val_fraction, stratify=strat, random_state=seed)
  return np.sort(fit), np.sort(val)


def finetune(workdir: str, config=None) -> dict:
  """Fine-tunes the `eval.checkpoint` of `workdir` (and trains the scratch baseline) for every
  `finetune.label_fractions`; writes finetune.json and finetune.md there; returns the report."""
  config = config or workdir_lib.load_config(workdir)
  if "finetune" not in config:
    raise ValueError(f"{workdir}/config.json has no 'finetune' group: pass a config "
                     "(simclr_jax.finetune and `simclr-jax finetune` add the defaults)")
  ft = config.finetune
  train_src = sources.make_source(config.data, config.data.train_split)
  test_src = sources.make_source(config.data, config.data.eval_split)
  multilabel = getattr(train_src, "multi_hot", None) is not None
  target_key = "multi_hot" if multilabel else "label"
  y = train_src.multi_hot if multilabel else np.asarray(train_src.labels)
  if not multilabel and (y < 0).all():
    raise ValueError(f"{train_src!r} has no labels: fine-tuning needs a labelled train split")
  targets = test_src.multi_hot if multilabel else np.asarray(test_src.labels)
  k = y.shape[1] if multilabel else config.data.num_classes
  scores = evaluate.make_scores(config, train_src, multilabel)

  trainer = Trainer(config, k, multilabel)
  pretrained, step, kind = state_lib.restore(config, workdir, config.eval.get("checkpoint", "best"),
                                             trainer.mesh)
  inits = {"pretrained": pretrained}
  if ft.baseline:       # from random init, or from model.init_from where set
    inits["init_from" if config.model.get("init_from") else "scratch"] = None
  results = []
  for fraction in ft.label_fractions:
    fit_idx, val_idx = label_split(y, fraction, ft.val_fraction, ft.seed)
    fit_src, val_src = Subset(train_src, fit_idx), Subset(train_src, val_idx)
    for name, pre in inits.items():
      t0 = time.perf_counter()
      state = trainer.init(ft.seed, pre)
      best, _, info = trainer.fit(state, fit_src, val_src, y[val_idx], target_key, ft.seed)
      save_model(os.path.join(workdir, model_name(name, fraction)), best, trainer.mesh)
      logits = trainer.predict(best, test_src)
      if multilabel:
        m = scores(targets, 1 / (1 + np.exp(-logits)))
        head = {"test_micro_f1": m["micro_f1"], "test_mAP": m["mAP"]}
      else:
        m = scores(targets, logits.argmax(1))
        head = {"test_accuracy": m["accuracy"]}
      row = {"init": name, "label_fraction": float(fraction), **head,
             "val_loss": min(info["val_loss_curve"]), **info, "model": model_name(name, fraction),
             "n_fit": len(fit_idx), "n_val": len(val_idx), "n_test": len(test_src), "metrics": m,
             "seconds": round(time.perf_counter() - t0, 1)}
      logging.info("fine-tune %s labels %.0f%%: best epoch %d of %d, %s", name, 100 * fraction,
                   info["best_epoch"], info["epochs_run"], head)
      results.append(row)
  out = {"workdir": os.path.abspath(workdir), "checkpoint_step": step, "checkpoint": kind,
         "train_split": config.data.train_split, "eval_split": config.data.eval_split,
         "seed": int(ft.seed), "val_fraction": float(ft.val_fraction),
         "encoder_lr": float(ft.encoder_lr), "batch_norm": "train" if trainer.bn_train
         else "frozen", "from_projection": int(ft.from_projection),
         # What rebuilds the saved models (simclr_jax/distillation.py: the teacher).
         "classifier": {"model": config.model.to_dict(), "num_outputs": int(k),
                        "multilabel": multilabel, "head_hidden": int(ft.head_hidden),
                        "head_dropout": float(ft.head_dropout)},
         "results": results}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, workdir_lib.FINETUNE), "w") as f:
      json.dump(out, f, indent=2)
    probe = os.path.join(workdir, workdir_lib.LINEAR_EVAL)
    probe = json.load(open(probe)) if os.path.exists(probe) else None
    with open(os.path.join(workdir, workdir_lib.FINETUNE_TABLE), "w") as f:
      f.write(tables.fraction_table(out, probe))
  return out

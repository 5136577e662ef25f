"""SimCLR pretraining: the data-parallel train step, and the loop around it.

Where a run starts, decided in one place (`pretrain`): from the latest checkpoint in the
workdir when there is one (resume is the default), else from scratch with `config.seed`.
The train state and what builds it: simclr_jax/state.py. Evaluation during the run, the best
checkpoint and early stopping: simclr_jax/monitor.py. The report at the end of a run:
simclr_jax/api.py (`report.write_after_pretraining`).

Resilience (docs/resuming.md):
- numerics: the step applies no update whose loss or gradient is non-finite (it keeps the
  previous params, optimizer state and BatchNorm statistics) and reports a flag; the loop
  reads the flags before every log, evaluation and checkpoint save, and stops with a
  FloatingPointError naming the step (or, with `train.max_bad_steps` > 0, skips up to that
  many such steps). A non-finite state is never computed, let alone saved.
- preemption: SIGTERM or SIGINT finishes the step in flight, saves a checkpoint of it, flushes
  the writers and raises `Preempted` (a SystemExit with code 0); a second signal kills the
  process at once (the signal's default action). Both guards: simclr_jax/guards.py.
- resume: from the newest checkpoint that restores (simclr_jax/checkpoint.py:
  `restore_latest`); the event file is flushed before every save, so a killed run loses no
  logged step its checkpoints cover.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import PartitionSpec as P

from simclr_jax import (augment, checkpoint, chunked, guards, logs, losses, monitor, parallel,
                        progress, resume)
from simclr_jax import state as state_lib
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import pipeline


def make_train_step(setup: state_lib.Setup, augment_key):
  """The jitted update `(state, batch) -> (state, metrics)`; `batch` is sharded on 'data'.

  The per-device part (augment, forward, loss) runs under shard_map: BatchNorm averages its
  statistics over 'data' and NT-Xent takes its negatives from every device, so N devices
  compute the loss of the global batch. Gradients are taken outside shard_map, through it:
  JAX transposes the all_gather and the replicated parameters' use, which sums each device's
  contribution, and the result is the gradient of the global loss. With train.chunk_size the
  per-device part takes the gradients itself, chunk by chunk (simclr_jax/chunked.py).
  """
  config, mesh, model = setup.config, setup.mesh, setup.model
  view1, view2 = augment.make_augment(config.augment, config.data.channels,
                                      config.data.image_size)
  temperature = config.loss.temperature
  num_classes = setup.num_classes

  def per_device(params, batch_stats, images, ids, labels, dropout_key):
    # Each sample's keys depend only on its position in the data stream, not on the device.
    k1, k2 = augment.view_keys(augment_key, ids.astype(jnp.uint32))
    x = jnp.concatenate([augment.augment_batch(view1, k1, images),
                         augment.augment_batch(view2, k2, images)])
    dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(parallel.DATA))
    out, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": dropout_key})
    z1, z2 = jnp.split(out["z"], 2)
    loss, metrics = losses.nt_xent(z1, z2, temperature, axis_name=parallel.DATA)
    metrics = dict(metrics, contrastive_loss=loss)
    if num_classes:
      # Online classifier on stop_gradient(h) (inside the model): a running probe of h.
      online_loss, online_accuracy = losses.online_classifier(
          out["logits"], jnp.concatenate([labels, labels]), parallel.DATA)
      metrics.update(online_loss=online_loss, online_accuracy=online_accuracy)
      loss = loss + online_loss
    return loss, (metrics, new_vars["batch_stats"])

  def chunked_per_device(params, batch_stats, images, ids, labels, dropout_key):
    k1, k2 = augment.view_keys(augment_key, ids.astype(jnp.uint32))
    dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(parallel.DATA))
    return chunked.loss_and_grads(
        model.apply, params, batch_stats, augment.augment_batch(view1, k1, images),
        augment.augment_batch(view2, k2, images), chunk_size=chunk_size,
        temperature=temperature, axis_name=parallel.DATA, dropout_key=dropout_key,
        labels=labels, num_classes=num_classes)

  chunk_size = int(config.train.get("chunk_size", 0))
  in_specs = (P(), P(), P(parallel.DATA), P(parallel.DATA), P(parallel.DATA), P())
  if chunk_size:
    # The gradients are taken inside: simclr_jax/chunked.py.
    sharded = jax.shard_map(chunked_per_device, mesh=mesh, in_specs=in_specs,
                            out_specs=(P(), P(), P(), P()))
  else:
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs,
                            out_specs=(P(), (P(), P())))

  def grads_of(state, batch, dropout_key):
    """(loss, metrics, new batch_stats, gradients) of the global batch."""
    args = (state.batch_stats, batch["image"], batch["id"], batch["label"], dropout_key)
    if chunk_size:
      return sharded(state.params, *args)
    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(
        lambda params: sharded(params, *args), has_aux=True)(state.params)
    return loss, metrics, batch_stats, grads

  def train_step(state: state_lib.TrainState, batch):
    dropout_key = jax.random.fold_in(augment_key, state.step)
    loss, metrics, batch_stats, grads = grads_of(state, batch, dropout_key)
    # A non-finite step changes nothing but the step count (guards.apply_if_finite).
    new_state, norms = guards.apply_if_finite(state, loss, grads, batch_stats)
    metrics = dict(metrics, **norms, loss=loss, learning_rate=setup.schedule(state.step),
                   l2_params=optax.tree.norm(new_state.params))
    return new_state, metrics

  rep = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(rep, parallel.batch_sharded(mesh)),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def views_grid(config, source, augment_key, n: int = 8) -> np.ndarray:
  """original | view 1 | view 2 of the first `n` examples, as the train step makes them."""
  n = min(n, len(source))
  images = np.stack([np.asarray(source[i]["image"], np.float32) for i in range(n)])
  v1, v2 = augment.two_views(config.augment, config.data.channels, config.data.image_size,
                             augment_key, images, np.arange(n))
  value_range = config.data.value_range
  return augment.grid_image(images, v1, v2, tuple(value_range) if value_range else None)


def device_batch(mesh, batch) -> dict:
  """A host batch of the data pipeline as the train step takes it: global arrays sharded on
  'data', labels and ids as int32."""
  return parallel.host_to_global(mesh, {
      "image": batch["image"], "label": batch["label"].astype(np.int32),
      # ids seed the per-sample augmentation keys; int32 covers 2^31 samples (ImageNet x 1600).
      "id": batch["id"].astype(np.int32)})


def _average(history: list[dict]) -> dict[str, float]:
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


class Preempted(SystemExit):
  """Raised by `pretrain` after a SIGTERM/SIGINT, once the checkpoint of the step reached is
  saved: a SystemExit with code 0, so a script exits 0 (and runs nothing after pretraining,
  e.g. --linear_eval); an in-process caller may catch it. `.step` is the step saved."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step


def pretrain(config, workdir: str) -> dict[str, float]:
  """Runs (or resumes) SimCLR pretraining in `workdir`; returns the last logged metrics."""
  # The config checked (and on a resume against the workdir's config.json) before anything
  # compiles or writes; then the workdir and its config.json (simclr_jax/resume.py).
  source = resume.start_run(config, workdir)
  is_chief = jax.process_index() == 0
  setup = state_lib.build(config, len(source))
  dataset = pipeline.pretrain_dataset(
      source, global_batch_size=config.train.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      workers=config.data.workers, prefetch=config.data.prefetch)
  data_iter = iter(dataset)
  # Evaluation every eval.every_epochs, the best checkpoint and early stopping (off by default);
  # built first, so that a config it refuses fails before any compiling.
  watch = monitor.PretrainMonitor(config, setup, workdir, source)

  init_rng, augment_key = state_lib.run_keys(config.seed)
  state = state_lib.init_state(setup, init_rng)
  manager = checkpoint.make_manager(workdir, config.train.checkpoint_every,
                                    config.train.keep_checkpoints, cleanup=True)
  if manager.latest_step() is not None:
    state, start = checkpoint.restore_latest(manager, state, data_iter)
    logging.info("Resuming from %s at step %d", manager.directory, start)
  else:
    start = 0
    logging.info("Starting from scratch (seed %d)", config.seed)
  end = setup.total_steps
  if watch.resume(start):
    logging.info("The run stopped early at step %d (train.patience=%d): nothing to do", start,
                 watch.patience)
    end = start

  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s: %d parameters, %d devices, global batch %d, %d steps (%d per epoch)",
               config.model.backbone, n_params, setup.mesh.devices.size,
               config.train.batch_size, setup.total_steps, setup.steps_per_epoch)
  chunk_size = int(config.train.get("chunk_size", 0))
  if chunk_size:
    views = 2 * config.train.batch_size // setup.mesh.devices.size
    logging.info("train.chunk_size=%d: %d passes of %d views per device; BatchNorm normalises "
                 "each chunk over all devices (%d views), not the whole batch of %d "
                 "(simclr_jax/chunked.py)", chunk_size, views // chunk_size, chunk_size,
                 chunk_size * setup.mesh.devices.size, 2 * config.train.batch_size)
  train_step = make_train_step(setup, augment_key)
  # Other processes: log lines only. With logs.wandb, W&B too (the run opens here).
  writer = logs.Writer(str(workdir) if is_chief else None, config)
  if start == 0 and is_chief:
    writer.write_images(0, {"augment/views": views_grid(config, source, augment_key)[None]})
    writer.write_hparams(logs.hparams(config))

  check_finite = guards.FiniteCheck(int(config.train.max_bad_steps), manager)
  multiprocess = jax.process_count() > 1
  history, last, preempted = [], {}, None
  t0, images_since = time.perf_counter(), 0
  bar = progress.Progress("pretrain", setup.total_steps, start)
  try:
    with guards.StopSignals() as signals:
      for step in range(start, end):
        batch = device_batch(setup.mesh, next(data_iter))
        state, metrics = train_step(state, batch)
        done = step + 1
        check_finite.add(done, metrics)
        metrics = {k: v for k, v in metrics.items() if k != "finite"}
        history.append(metrics)
        images_since += config.train.batch_size
        log_due = done % config.train.log_every == 0 or done == setup.total_steps
        signalled = signals.signum is not None
        if multiprocess and log_due:
          # Every process stops at the same step (the save is collective): they agree at log
          # steps, which all of them reach together, instead of syncing at every step.
          from jax.experimental import multihost_utils
          signalled = bool(multihost_utils.process_allgather(np.int32(signalled)).any())
        elif multiprocess:
          signalled = False
        stop = False
        if watch.due(done, setup.total_steps):
          check_finite()
          # images_per_sec counts training only: the steps in flight finish first, then the
          # evaluation's time is taken out of the current window.
          jax.block_until_ready(state)
          t1 = time.perf_counter()
          stop = watch(done, state, writer)
          t0 += time.perf_counter() - t1
        force = done == setup.total_steps or stop or signalled
        save_due = force or manager.should_save(done)
        if log_due or stop or signalled or save_due:
          check_finite()                # before anything of this state is logged or saved
        if log_due or stop or signalled:
          last = _average(history)      # device_get here: one host sync per log, not per step
          dt = time.perf_counter() - t0
          last["images_per_sec"] = images_since / dt
          last["epoch"] = done / setup.steps_per_epoch
          writer.write_scalars(done, last)
          history, t0, images_since = [], time.perf_counter(), 0
        bar.update(done, log=bool(last) and log_due, epoch=f"{done / setup.steps_per_epoch:.1f}",
                   **({"loss": last["loss"], "img/s": last["images_per_sec"]} if last else {}))
        if save_due:
          writer.flush()                # the events of every step a checkpoint covers are on disk
          checkpoint.save(manager, done, state, data_iter, force=force)
        if stop:
          logging.info("Early stop at step %d: see %s", done,
                       epath.Path(workdir) / workdir_lib.HISTORY)
          break
        if signalled:
          preempted = done
          break
      check_finite()
  finally:
    # Also on an exception (a non-finite step, a crash): finish the checkpoint being written
    # and flush the logged metrics, so the restarted run continues from everything reported.
    bar.close()
    manager.wait_until_finished()
    watch.close()
    writer.flush()
    writer.close()
    manager.close()
    if hasattr(data_iter, "close"):
      data_iter.close()
  if preempted is not None:
    logging.warning("preempted at step %d: checkpoint saved in %s, run the same command to "
                    "resume", preempted, epath.Path(workdir) / workdir_lib.CHECKPOINTS)
    raise Preempted(preempted)
  return last

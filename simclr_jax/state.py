"""The train state of a run and what it is built from: the model, the optimizer, the mesh.

`build(config, n)` derives everything pretraining needs from its config (a `Setup`),
`init_state` makes the first TrainState (its encoder read from model.init_from where set),
`run_keys` the run's keys. Readers of a finished run (linear probe, fine-tuning, export) need
only its variables: `restore` reads the parameters and BatchNorm statistics of the checkpoint
`eval.checkpoint` names, into the shapes of the config's model, without building the
optimizer or reading its state.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state

from simclr_jax import checkpoint, optim, parallel
from simclr_jax.models import simclr as simclr_model


class TrainState(train_state.TrainState):
  batch_stats: Any = None


@dataclasses.dataclass
class Setup:
  """Everything a run derives from its config, built once."""
  config: Any
  mesh: Any
  model: Any
  tx: Any
  schedule: Any
  steps_per_epoch: int
  total_steps: int
  num_classes: int


def _num_classes(config) -> int:
  """Classes of the online head: none without model.online_head."""
  return config.data.num_classes if config.model.online_head else 0


def make_model(config):
  """The run's SimCLR model (encoder, projection head, online head iff model.online_head);
  its BatchNorm averages over the mesh axis 'data' when it trains."""
  return simclr_model.model_from_config(config.model, num_classes=_num_classes(config),
                                        bn_axis_name=parallel.DATA)


def build(config, num_train_examples: int) -> Setup:
  mesh = parallel.make_mesh(config.train.num_devices)
  batch_size = config.train.batch_size
  parallel.check_batch_size(batch_size, mesh)
  parallel.check_chunk_size(int(config.train.get("chunk_size", 0)), batch_size, mesh.devices.size)
  steps_per_epoch = max(1, num_train_examples // batch_size)
  total_steps = config.train.steps if config.train.steps > 0 else (
      config.train.epochs * steps_per_epoch)
  num_classes = _num_classes(config)
  model = make_model(config)
  tx, schedule = optim.make_optimizer(config.optim, batch_size, steps_per_epoch, total_steps)
  # The online head gets its own optimizer (and no gradient from the SSL loss, nor gives one to
  # the encoder). A workdir written before `online_eval` existed trained it with `tx`: keep
  # that, so its checkpoints (optimizer state included) still restore.
  if num_classes and config.get("online_eval") is not None:
    tx = optim.with_online_head(tx, optim.online_optimizer(config.online_eval))
  return Setup(config, mesh, model, tx, schedule, steps_per_epoch, total_steps, num_classes)


def _variables(model, data_cfg, rng) -> dict:
  """Fresh Flax variables of `model` (params, batch_stats). Init runs BatchNorm in inference
  mode, which needs no mesh axis, so the same module serves init and the sharded step."""
  x = jnp.zeros((1, data_cfg.image_size, data_cfg.image_size, data_cfg.channels), jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, x, train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _init_on(mesh, fn, rng):
  # Non-partitionable threefry: the same kind of key, ~3x less XLA compile time for init on
  # CPU (tens of seconds for a ResNet); init's outputs are replicated, so nothing is lost.
  with jax.threefry_partitionable(False):
    return jax.jit(fn, out_shardings=parallel.replicated(mesh))(rng)


def init_variables(model, data_cfg, mesh, rng) -> dict:
  """Fresh variables, replicated on `mesh`: those of `init_state` for the same key."""
  return _init_on(mesh, functools.partial(_variables, model, data_cfg), rng)


def init_state(setup: Setup, rng) -> TrainState:
  """Initial state, replicated on the mesh."""
  def _init(rng):
    v = _variables(setup.model, setup.config.data, rng)
    state = TrainState.create(apply_fn=setup.model.apply, params=v["params"],
                              batch_stats=v["batch_stats"], tx=setup.tx)
    # A strong int32 step, as a restored checkpoint has (create's 0 is weakly typed): a resumed
    # run then runs the very executable a fresh one compiled (the same bits, and a compilation
    # cache hit), not one traced for another step type.
    return state.replace(step=jnp.zeros((), jnp.int32))

  return _with_init_from(setup, _init_on(setup.mesh, _init, rng))


def with_init_from(model_cfg, params: dict, batch_stats: dict) -> tuple[dict, dict]:
  """(params, batch_stats) with the encoder's replaced by model.init_from's (as they are where
  it is unset); the heads stay as given. Pretraining's `init_state` and fine-tuning's baseline
  (finetuning.Trainer.init) both start from it."""
  path = model_cfg.get("init_from")
  if not path:
    return params, batch_stats
  from simclr_jax import torch_interop
  loaded = torch_interop.encoder_variables(
      path, {"params": params["encoder"], "batch_stats": batch_stats["encoder"]})
  return ({**params, "encoder": loaded["params"]},
          {**batch_stats, "encoder": loaded["batch_stats"]})


def _with_init_from(setup: Setup, state: TrainState) -> TrainState:
  """`with_init_from` on the initial state. Put in after the jitted init, not inside it, where
  the arrays would be compiled in as constants; the optimizer state stays as initialised, its
  init reads no parameter's value (momenta start at zero)."""
  if not setup.config.model.get("init_from"):
    return state
  params, batch_stats = with_init_from(setup.config.model, state.params, state.batch_stats)
  return state.replace(**jax.device_put({"params": params, "batch_stats": batch_stats},
                                        parallel.replicated(setup.mesh)))


def run_keys(seed: int):
  """(init key, augment key) of a run: one place, so grids and probes see what training saw."""
  return tuple(jax.random.split(jax.random.PRNGKey(seed)))


def abstract_variables(model, data_cfg, mesh) -> dict:
  """Shapes, dtypes and (replicated) shardings of `model`'s variables, without computing or
  compiling its init: all a restore needs."""
  shapes = jax.eval_shape(functools.partial(_variables, model, data_cfg), jax.random.PRNGKey(0))
  rep = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def restore(config, workdir, which, mesh) -> tuple[dict, int, str]:
  """(variables, step, kind) of `workdir`'s checkpoint `which` ('best', 'latest' or a step;
  see checkpoint.restore_for_eval), for readers: {'params', 'batch_stats'} of the config's
  model, replicated on `mesh`. The optimizer is not built and its state not read."""
  template = abstract_variables(make_model(config), config.data, mesh)
  return checkpoint.restore_for_eval(workdir, which, template)

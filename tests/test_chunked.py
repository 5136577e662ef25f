"""The chunked (GradCache) step, train.chunk_size, and remat, model.remat.

* Identity, in float64 where rounding cannot reach (tests/test_parallel.py, steps64): the
  chunked step's loss, gradients and BatchNorm statistics on 1 and 4 devices equal those of an
  independent one-pass reference written here (the global batch, BatchNorm within each group of
  chunks, NT-Xent's global form, jax.grad), with and without remat. Two deliberately wrong
  versions fail the same comparison: negatives from the chunk only, and each chunk's gradient
  kept alone instead of summed.
* With one chunk per device the chunked train step is the plain one (the same new state).
* remat: the gradients of the plain step, in float64 (the issue asks rtol 1e-5).
* Memory: XLA's compiled temporary memory of a step at chunk B/8 is at most 1/4 of the
  one-pass step's.
* A chunk size that does not split the views is refused in one line before compiling.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from simclr_jax import chunked, losses, parallel, train
from simclr_jax import state as state_lib
from simclr_jax.configs import digits
from simclr_jax.models import simclr as simclr_model

BATCH = 16            # global images
IMAGE = 12
TEMPERATURE = 0.3
NUM_CLASSES = 3
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _model_config(remat=False):
  c = digits.get_config("tiny").model
  c.width_multiplier = 0.0625       # 4 channels: a ResNet-18 with every kind of block, in seconds
  c.conv_impl = "xla"               # float64 (oneDNN's path is float32)
  c.online_head = True              # its loss is added chunk by chunk
  c.online_dropout = 0.0
  c.remat = remat
  return c


def _model(bn_axis_name, remat=False):
  model = simclr_model.model_from_config(_model_config(remat), NUM_CLASSES, bn_axis_name)
  return model.clone(dtype=jnp.float64)


@pytest.fixture(scope="module")
def case():
  """float64 variables (BatchNorm statistics moved off their init, so the running-average
  update is visible), two views of a global batch, labels with some missing (-1)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    model = _model(None)
    x = jnp.zeros((1, IMAGE, IMAGE, 1), jnp.float64)
    v = jax.jit(lambda rng: model.init({"params": rng, "dropout": rng}, x, train=False))(
        jax.random.PRNGKey(0))
    f64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
    stats = jax.tree.map(lambda a: a + rng.uniform(0.1, 0.2, a.shape), f64(v["batch_stats"]))
    x1, x2 = (rng.uniform(size=(BATCH, IMAGE, IMAGE, 1)) for _ in range(2))
    labels = rng.integers(-1, NUM_CLASSES, BATCH).astype(np.int32)
    return dict(params=f64(v["params"]), batch_stats=stats, x1=x1, x2=x2, labels=labels)


def reference(case, devices: int, chunk_size: int, remat=False):
  """(loss, gradients, new batch_stats) of one pass over the global batch, BatchNorm grouped as
  the chunked step groups it: group j = chunk j of every device (device k holds images
  k n ... (k + 1) n - 1; its chunk j both views of its images j m ... (j + 1) m - 1)."""
  model = _model(None, remat)
  n, m = BATCH // devices, chunk_size // 2
  groups = [np.concatenate([k * n + j * m + np.arange(m) for k in range(devices)])
            for j in range(n // m)]
  labels2 = np.concatenate([case["labels"], case["labels"]])

  def loss_fn(params):
    z = jnp.zeros((2 * BATCH, 16), jnp.float64)
    logits = jnp.zeros((2 * BATCH, NUM_CLASSES), jnp.float64)
    updates = []
    for idx in groups:
      x = jnp.concatenate([case["x1"][idx], case["x2"][idx]])
      out, new = model.apply({"params": params, "batch_stats": case["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
      rows = np.concatenate([idx, BATCH + idx])
      z, logits = z.at[rows].set(out["z"]), logits.at[rows].set(out["logits"])
      updates.append(new["batch_stats"])
    loss, _ = losses.nt_xent(z[:BATCH], z[BATCH:], TEMPERATURE)
    valid = labels2 >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, np.maximum(labels2, 0))
    online = jnp.sum(jnp.where(valid, ce, 0.0)) / valid.sum()
    stats = jax.tree.map(lambda *s: sum(s) / len(s), *updates)
    return loss + online, stats

  fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, stats), grads = fn.lower(case["params"]).compile(compiler_options=FAST_COMPILE)(
      case["params"])
  return jax.device_get((loss, grads, stats))


def chunked_step(case, devices: int, chunk_size: int, remat=False):
  """The same, by `chunked.loss_and_grads` under shard_map on `devices` devices."""
  model = _model(parallel.DATA, remat)
  mesh = Mesh(np.asarray(jax.devices()[:devices]), (parallel.DATA,))

  def per_device(params, batch_stats, x1, x2, labels):
    loss, _, stats, grads = chunked.loss_and_grads(
        model.apply, params, batch_stats, x1, x2, chunk_size=chunk_size,
        temperature=TEMPERATURE, axis_name=parallel.DATA, dropout_key=jax.random.PRNGKey(0),
        labels=labels, num_classes=NUM_CLASSES)
    return loss, grads, stats

  d = P(parallel.DATA)
  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), d, d, d),
                             out_specs=(P(), P(), P())))
  args = (case["params"], case["batch_stats"], case["x1"], case["x2"], case["labels"])
  return jax.device_get(fn.lower(*args).compile(compiler_options=FAST_COMPILE)(*args))


def _max_rel(a, b):
  """Largest difference over all leaves, relative to each leaf's largest magnitude, or to a
  thousandth of the whole tree's where a leaf is that much smaller: a bias before BatchNorm
  has a gradient of 0 analytically, ~1e-16 of rounding numerically, and no relative error."""
  floor = 1e-3 * max(float(np.abs(y).max()) for y in jax.tree.leaves(b))
  return max(float(np.abs(x - y).max() / max(np.abs(y).max(), floor, 1e-300))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# float64 rounds at ~1e-16: the chunked step and the reference agree to ~1e-15 (measured); a
# missing term of the gradient is off by orders of magnitude more than 1e-9.
TOL = 1e-9


# Data parallelism and remat together (4 devices); one device without remat.
@pytest.mark.parametrize("devices,chunk_size,remat", [(1, 4, False), (4, 2, True)])
def test_chunked_gradients_equal_the_grouped_batchnorm_one_pass_reference(case, devices,
                                                                          chunk_size, remat):
  with jax.enable_x64(True):
    want = reference(case, devices, chunk_size, remat)
    got = chunked_step(case, devices, chunk_size, remat)
    one_group_per_device = reference(case, devices, 2 * BATCH // devices)
  assert got[0].dtype == np.float64
  assert abs(float(got[0]) - float(want[0])) <= TOL * abs(float(want[0]))
  assert _max_rel(got[1], want[1]) < TOL, "gradients"
  assert _max_rel(got[2], want[2]) < TOL, "BatchNorm statistics"
  # BatchNorm by chunk is a different function from BatchNorm over the batch: the reference
  # with one group per device would not match (the test sees the grouping).
  assert _max_rel(got[1], one_group_per_device[1]) > 1e-3


def _per_chunk_negatives(zs, temperature, axis_name):
  """Wrong: each chunk's loss with the negatives of that chunk only."""
  def loss_fn(zs):
    per_chunk = [losses.nt_xent(*chunked.from_chunks(zs[j:j + 1]), temperature)[0]
                 for j in range(zs.shape[0])]
    return jax.lax.pmean(sum(per_chunk) / len(per_chunk), axis_name), {}
  (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(zs)
  return loss, dict(contrastive_accuracy=loss, contrastive_entropy=loss), g


_scan = jax.lax.scan


def _only_last_chunk_scan(f, init, xs, **kwargs):
  """Wrong: the gradient of the last chunk alone (the others' cached gradients forgotten)."""
  def keep_last(total, inputs):
    new, _ = f(init, inputs)
    return jax.tree.map(jnp.subtract, new, init), None
  return _scan(keep_last, init, xs, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["per_chunk_negatives", "other_chunks_forgotten"])
def test_a_wrong_chunked_step_fails_the_comparison(case, monkeypatch, bug):
  if bug == "per_chunk_negatives":
    monkeypatch.setattr(chunked, "contrastive_grads", _per_chunk_negatives)
  else:
    monkeypatch.setattr(chunked.jax.lax, "scan", _only_last_chunk_scan)
  with jax.enable_x64(True):
    want = reference(case, 1, 4)
    got = chunked_step(case, 1, 4)
  assert _max_rel(got[1], want[1]) > 1e-3


def _train_config(chunk_size=0, remat=False, num_devices=2):
  c = digits.get_config("tiny")
  c.data.image_size = IMAGE
  c.model = _model_config(remat)
  c.model.online_head = False
  c.train.batch_size = 8
  c.train.num_devices = num_devices
  c.train.chunk_size = chunk_size
  c.optim.name = "sgd"               # the update is -lr * gradient: new params compare grads
  c.optim.learning_rate = 1.0
  c.optim.momentum = 0.0
  c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 0.0
  c.optim.schedule = "constant"
  return c


def _train_step64(config):
  """One float64 train step of `config` from the same state and batch: the new state."""
  with jax.enable_x64(True):
    setup = state_lib.build(config, 64)
    setup = dataclasses.replace(setup, model=setup.model.clone(dtype=jnp.float64))
    init_rng, key = state_lib.run_keys(0)
    state = state_lib.init_state(setup, init_rng)
    f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    state = state_lib.TrainState.create(apply_fn=setup.model.apply, params=f64(state.params),
                                        batch_stats=f64(state.batch_stats), tx=setup.tx)
    state = jax.device_put(state.replace(step=jnp.zeros((), jnp.int32)),
                           parallel.replicated(setup.mesh))
    rng = np.random.default_rng(1)
    batch = train.device_batch(setup.mesh, {
        "image": rng.uniform(size=(8, IMAGE, IMAGE, 1)).astype(np.float32),
        "label": np.zeros(8, np.int32), "id": np.arange(8)})
    step = train.make_train_step(setup, key)
    params0 = jax.device_get(state.params)
    new, metrics = step.lower(state, batch).compile(compiler_options=FAST_COMPILE)(state, batch)
    new, metrics = jax.device_get((new, metrics))
    return jax.tree.map(np.subtract, params0, new.params), new.batch_stats, metrics


def test_one_chunk_per_device_is_the_plain_step_and_remat_changes_no_gradient():
  """SGD at lr 1: params before - after is the gradient. The issue's bound for remat is rtol
  1e-5; in float64 it holds to TOL."""
  grads, stats, m = _train_step64(_train_config())
  assert m["loss"].dtype == np.float64 and _max_rel(grads, jax.tree.map(np.zeros_like, grads)) > 0
  for other in (_train_step64(_train_config(chunk_size=8)),    # 4 images x 2 views per device
                _train_step64(_train_config(remat=True))):
    assert abs(float(other[2]["loss"]) - float(m["loss"])) < TOL * float(m["loss"])
    assert _max_rel(other[0], grads) < TOL
    assert _max_rel(other[1], stats) < TOL


def test_remat_recomputes_the_blocks_in_the_compiled_step():
  """nn.remat is in the program: the backward pass holds the blocks' forward again (XLA's
  rematerialisation marks survive as more convolutions than the plain step's)."""
  def convolutions(remat):
    setup = state_lib.build(_train_config(remat=remat, num_devices=1), 64)
    init_rng, key = state_lib.run_keys(0)
    state = state_lib.init_state(setup, init_rng)
    batch = train.device_batch(setup.mesh, {
        "image": np.zeros((8, IMAGE, IMAGE, 1), np.float32), "label": np.zeros(8, np.int32),
        "id": np.arange(8)})
    hlo = train.make_train_step(setup, key).lower(state, batch).as_text()
    return hlo.count("stablehlo.convolution")
  assert convolutions(True) > convolutions(False)


def _temp_bytes(chunk_size):
  c = _train_config(chunk_size=chunk_size, num_devices=1)
  c.train.batch_size = 64
  c.data.image_size = 32
  c.model.width_multiplier = 0.25
  setup = state_lib.build(c, 640)
  init_rng, key = state_lib.run_keys(0)
  state = jax.eval_shape(lambda: state_lib.init_state(setup, init_rng))
  rep, shard = parallel.replicated(setup.mesh), parallel.batch_sharded(setup.mesh)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state)
  batch = {"image": jax.ShapeDtypeStruct((64, 32, 32, 1), jnp.float32, sharding=shard),
           "label": jax.ShapeDtypeStruct((64,), jnp.int32, sharding=shard),
           "id": jax.ShapeDtypeStruct((64,), jnp.int32, sharding=shard)}
  compiled = train.make_train_step(setup, key).lower(state, batch).compile(
      compiler_options=FAST_COMPILE)     # LLVM's level: the same buffer assignment
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunks_of_an_eighth_of_the_batch_need_at_most_a_quarter_of_the_temporary_memory():
  plain, chunks = _temp_bytes(0), _temp_bytes(16)     # 128 views, 8 chunks of 16
  print(f"temporary memory: one pass {plain / 2**20:.1f} MiB, 8 chunks {chunks / 2**20:.1f} MiB")
  assert chunks <= plain / 4, (plain, chunks)


@pytest.mark.parametrize("chunk_size", [3, 12, 64])
def test_a_chunk_size_that_does_not_split_the_views_is_refused_in_one_line(chunk_size):
  """The start of a run (validate.check_devices, before anything compiles) and state.build."""
  from simclr_jax import validate
  config = _train_config(chunk_size=chunk_size)      # 8 images on 2 devices: 8 views each
  with pytest.raises(validate.ConfigError) as e:
    validate.check_devices(config)
  msg = str(e.value)
  assert "\n" not in msg and f"train.chunk_size={chunk_size}" in msg and "8 views per device" in msg
  with pytest.raises(ValueError, match=f"train.chunk_size={chunk_size}"):
    state_lib.build(config, 64)
  config.train.chunk_size = 4
  validate.check_devices(config)

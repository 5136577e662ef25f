"""Optimizer factory: masks on a real Flax parameter tree, lr scaling, schedule, errors.

Expected numbers are computed here in NumPy from the definitions (SGD/AdamW/LARS first step,
the warm-up + cosine formula), not read back from optax.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from simclr_jax.optim import (decay_mask, exclude_bias_and_norm, make_optimizer,
                              online_optimizer, peak_learning_rate, with_online_head)

LR = 0.1
WD = 0.01
TC = 0.001


def _cfg(**overrides):
  c = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=LR, base_lr=0.3, lr_scaling="linear", weight_decay=WD,
      momentum=0.9, nesterov=False, b1=0.9, b2=0.999, eps=1e-8, trust_coefficient=TC,
      warmup_epochs=0.0, schedule="constant", end_lr_factor=0.0))
  c.update(overrides)
  return c


class Tiny(nn.Module):
  """Conv (no bias) + BatchNorm + Dense (bias): each kind of leaf the masks must sort."""

  @nn.compact
  def __call__(self, x, train=True):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(3)(x)


@pytest.fixture(scope="module")
def params():
  # The tree (names, nesting, shapes) is exactly what Tiny().init returns; eval_shape gets it
  # without compiling the init. Fresh biases are 0 and BN scales 1, so decaying them by
  # mistake could go unnoticed with zero gradients: fill every leaf with random non-zero values.
  shapes = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.zeros((1, 6, 6, 2)))["params"]
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def _flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


DECAYED = {"['Conv_0']['kernel']", "['Dense_0']['kernel']"}
NOT_DECAYED = {"['BatchNorm_0']['scale']", "['BatchNorm_0']['bias']", "['Dense_0']['bias']"}


def test_mask_on_real_parameter_tree(params):
  assert set(_flat(params)) == DECAYED | NOT_DECAYED
  mask = _flat(decay_mask(params))
  assert {k for k, v in mask.items() if v} == DECAYED
  # The predicate itself, with the path tree_map_with_path hands it.
  got = jax.tree_util.tree_map_with_path(exclude_bias_and_norm, params)
  assert _flat(got) == mask
  # Also under the full variables dict ({'params': ...}) that some trainers pass.
  assert {k for k, v in _flat(decay_mask({"params": params})).items() if v} == {
      "['params']" + k for k in DECAYED}


def _first_step_zero_grads(name, params):
  tx, _ = make_optimizer(_cfg(name=name), batch_size=256, steps_per_epoch=10, total_steps=100)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  return _flat(updates)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars", "adam"])
def test_zero_grads_weight_decay_moves_only_kernels(name, params):
  updates = _first_step_zero_grads(name, params)
  p = _flat(params)
  for k in NOT_DECAYED:
    np.testing.assert_array_equal(updates[k], 0.0, err_msg=f"{name} decayed {k}")
  for k in DECAYED:
    w = p[k].astype(np.float64)
    if name in ("sgd", "adamw"):  # first step: -lr * wd * w
      expected = -LR * WD * w
    elif name == "lars":  # trust ratio tc*|w|/|wd*w| on the decay term: -lr * tc * w
      expected = -LR * TC * w
    else:  # adam + L2: g = wd*w, first step m/sqrt(v) = g/(|g| + eps)
      g = WD * w
      expected = -LR * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(updates[k], expected, rtol=1e-5, err_msg=f"{name} {k}")


def test_lars_trust_ratio_only_on_kernels(params):
  grads = jax.tree.map(lambda x: 0.5 * jnp.cos(3.0 * x) + 0.1, params)
  lars, _ = make_optimizer(_cfg(name="lars"), 256, 10, 100)
  lars_up = _flat(lars.update(grads, lars.init(params), params)[0])
  # Biases/BN: plain momentum SGD, no trust ratio, no decay.
  sgd = optax.sgd(LR, momentum=0.9)
  sgd_up = _flat(sgd.update(grads, sgd.init(params), params)[0])
  g, p = _flat(grads), _flat(params)
  for k in NOT_DECAYED:
    np.testing.assert_allclose(lars_up[k], sgd_up[k], rtol=1e-6)
  for k in DECAYED:  # -lr * tc * |w| / |g + wd w| * (g + wd w)
    u = g[k].astype(np.float64) + WD * p[k]
    expected = -LR * TC * np.linalg.norm(p[k]) / np.linalg.norm(u) * u
    np.testing.assert_allclose(lars_up[k], expected, rtol=1e-5)
    assert not np.allclose(lars_up[k], sgd_up[k], rtol=1e-2)


def test_online_head_has_its_own_optimizer_and_leaves_the_ssl_update_alone(params):
  """On a tree shaped like the model's: LARS updates the encoder and projection exactly as on
  the tree without the head, and the head takes Adam's first step, lr * g / (|g| + eps). (The
  same in the real train step: test_monitor, slow tier.)"""
  tree = {"encoder": params, "projection": params, "online_head": params}
  grads = jax.tree.map(lambda x: 0.5 * jnp.cos(3.0 * x) + 0.1, tree)
  lars, _ = make_optimizer(_cfg(name="lars"), 256, 10, 100)
  tx = with_online_head(lars, online_optimizer(ml_collections.ConfigDict({"learning_rate": 1e-3})))
  got = tx.update(grads, tx.init(tree), tree)[0]
  ssl = {k: v for k, v in tree.items() if k != "online_head"}
  want = lars.update({k: grads[k] for k in ssl}, lars.init(ssl), ssl)[0]
  for part in ("encoder", "projection"):
    assert _flat(got[part]).keys() == _flat(want[part]).keys()
    for k, v in _flat(want[part]).items():
      np.testing.assert_array_equal(_flat(got[part])[k], v, err_msg=f"{part}{k}")
  g = _flat(grads["online_head"])
  for k, u in _flat(got["online_head"]).items():
    np.testing.assert_allclose(u, -1e-3 * g[k] / (np.abs(g[k]) + 1e-8), rtol=1e-5, err_msg=k)
    assert not np.allclose(u, _flat(want["encoder"])[k], rtol=1e-2)     # not LARS's step


def test_no_weight_decay_is_plain_optimizer(params):
  grads = jax.tree.map(jnp.ones_like, params)
  tx, _ = make_optimizer(_cfg(name="adam", weight_decay=0.0), 256, 10, 100)
  ref = optax.adam(LR)
  got = _flat(tx.update(grads, tx.init(params), params)[0])
  want = _flat(ref.update(grads, ref.init(params), params)[0])
  for k in got:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)


def test_lr_scaling_rules():
  absolute = _cfg(learning_rate=0.02, base_lr=0.3, lr_scaling="linear")
  assert peak_learning_rate(absolute, 4096) == pytest.approx(0.02)
  assert peak_learning_rate(_cfg(learning_rate=0.0, base_lr=0.3, lr_scaling="linear"),
                            4096) == pytest.approx(4.8)  # 0.3 * 4096 / 256
  assert peak_learning_rate(_cfg(learning_rate=0.0, base_lr=0.3, lr_scaling="linear"),
                            128) == pytest.approx(0.15)
  assert peak_learning_rate(_cfg(learning_rate=-1.0, base_lr=0.075, lr_scaling="sqrt"),
                            4096) == pytest.approx(4.8)  # 0.075 * 64
  assert peak_learning_rate(_cfg(learning_rate=0.0, base_lr=0.5, lr_scaling="none"),
                            4096) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="quadratic"):
    peak_learning_rate(_cfg(learning_rate=0.0, lr_scaling="quadratic"), 256)


def _np_schedule(step, peak, warmup, total, end_factor):
  if step < warmup:
    return peak * step / warmup
  t = min(step - warmup, total - warmup) / (total - warmup)
  end = end_factor * peak
  return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * t))


@pytest.mark.parametrize("end_lr_factor", [0.0, 0.1])
def test_warmup_cosine_schedule(end_lr_factor):
  steps_per_epoch, total = 10, 125
  cfg = _cfg(learning_rate=0.0, base_lr=0.3, lr_scaling="linear", warmup_epochs=2.5,
             schedule="cosine", end_lr_factor=end_lr_factor)
  _, schedule = make_optimizer(cfg, batch_size=512, steps_per_epoch=steps_per_epoch,
                               total_steps=total)
  peak, warmup = 0.6, 25
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(warmup), peak, rtol=1e-6)
  np.testing.assert_allclose(schedule(total), end_lr_factor * peak, rtol=1e-6, atol=1e-9)
  if end_lr_factor == 0.0:
    np.testing.assert_allclose(schedule((warmup + total) // 2), peak / 2, rtol=1e-6)
  for step in [1, 7, 24, 26, 50, 75, 100, 124, 125, 200]:
    np.testing.assert_allclose(schedule(step),
                               _np_schedule(step, peak, warmup, total, end_lr_factor),
                               rtol=1e-5, atol=1e-6 * peak, err_msg=f"step {step}")


def test_warmup_rounding_constant_schedule_and_tx_uses_schedule(params):
  # round(0.26 * 10) = 3 warm-up steps, then constant.
  cfg = _cfg(name="sgd", momentum=0.0, weight_decay=0.0, learning_rate=0.3,
             warmup_epochs=0.26, schedule="constant")
  tx, schedule = make_optimizer(cfg, batch_size=256, steps_per_epoch=10, total_steps=50)
  np.testing.assert_allclose([schedule(s) for s in range(6)],
                             [0.0, 0.1, 0.2, 0.3, 0.3, 0.3], rtol=1e-6)
  # The optimizer follows the same schedule: SGD without momentum steps by -lr(step) * g.
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for step in range(5):
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(_flat(updates)["['Dense_0']['bias']"], -float(schedule(step)),
                               rtol=1e-6)


def test_no_warmup_starts_at_peak():
  _, schedule = make_optimizer(_cfg(schedule="cosine", warmup_epochs=0.0), 256, 10, 100)
  np.testing.assert_allclose(schedule(0), LR, rtol=1e-6)
  np.testing.assert_allclose(schedule(50), LR / 2, rtol=1e-6)


def test_unknown_names_raise():
  with pytest.raises(ValueError, match=r"'rmsprop'.*adam.*adamw.*sgd.*lars"):
    make_optimizer(_cfg(name="rmsprop"), 256, 10, 100)
  with pytest.raises(ValueError, match="'linear_warmup'"):
    make_optimizer(_cfg(schedule="linear_warmup"), 256, 10, 100)

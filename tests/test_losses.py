"""nt_xent against an independent NumPy reference, and the per-device form against the global.

The reference below is written from the paper (explicit loops, float64, log-sum-exp), not from
simclr_jax.losses, so a shared mistake in the layout or the masks would not cancel out.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from simclr_jax.losses import nt_xent

N_DEV = 8
N_LOCAL = 4
N_GLOBAL = N_DEV * N_LOCAL  # 32 images -> 64 rows; dims chosen distinct for the HLO check
DIM = 6
TAU = 0.5


# ----------------------------------------------------------------------------- reference ----


def np_nt_xent(z1, z2, temperature):
  """Loss, accuracy, entropy of SimCLR's NT-Xent; row k's positive is the other view."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  two_n = z.shape[0]
  n = two_n // 2
  losses, correct, entropies = [], [], []
  for k in range(two_n):
    pos = k + n if k < n else k - n
    others = [j for j in range(two_n) if j != k]
    logits = np.array([z[k] @ z[j] / temperature for j in others])
    m = logits.max()
    lse = m + np.log(np.sum(np.exp(logits - m)))
    losses.append(lse - z[k] @ z[pos] / temperature)
    p = np.exp(logits - lse)
    entropies.append(-np.sum(p * np.log(p)))
    correct.append(float(others[int(np.argmax(logits))] == pos))
  return np.mean(losses), np.mean(correct), np.mean(entropies)


def np_grad_fd(z1, z2, temperature, h=1e-6):
  """Central finite differences of the NumPy loss w.r.t. z1 and z2 (float64)."""
  grads = []
  for which in range(2):
    g = np.zeros_like(z1, dtype=np.float64)
    for idx in np.ndindex(*z1.shape):
      zs = [z1.astype(np.float64).copy(), z2.astype(np.float64).copy()]
      zs[which][idx] += h
      up = np_nt_xent(*zs, temperature)[0]
      zs[which][idx] -= 2 * h
      down = np_nt_xent(*zs, temperature)[0]
      g[idx] = (up - down) / (2 * h)
    grads.append(g)
  return grads


def _views(n, d, seed):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32),
          rng.normal(size=(n, d)).astype(np.float32))


# -------------------------------------------------------------------------------- global ----


@pytest.fixture(scope="module")
def global_value_and_grad():
  # temperature is traced: one compilation per input shape, reused across temperatures.
  return jax.jit(jax.value_and_grad(nt_xent, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
def test_value_and_metrics_match_numpy(global_value_and_grad, temperature):
  z1, z2 = _views(6, 5, seed=1)
  z2 = z1 + 0.7 * z2  # correlated views so the accuracy is neither 0 nor 1
  (loss, metrics), _ = global_value_and_grad(z1, z2, temperature)
  ref_loss, ref_acc, ref_ent = np_nt_xent(z1, z2, temperature)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["contrastive_accuracy"], ref_acc, rtol=1e-6)
  np.testing.assert_allclose(metrics["contrastive_entropy"], ref_ent, rtol=1e-5, atol=1e-6)
  assert 0.0 < ref_acc < 1.0  # argmax does not depend on tau: both outcomes are exercised


def test_gradients_match_numpy_finite_differences(global_value_and_grad):
  z1, z2 = _views(4, 5, seed=2)
  _, (g1, g2) = global_value_and_grad(z1, z2, TAU)
  r1, r2 = np_grad_fd(z1, z2, TAU)
  np.testing.assert_allclose(g1, r1, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g2, r2, rtol=1e-4, atol=1e-6)
  # Both views get a gradient: z2 is not treated as a constant target.
  assert np.abs(r2).max() > 1e-3


def test_identical_views_accuracy_one_and_loss_at_lower_bound(global_value_and_grad):
  z, _ = _views(16, 32, seed=3)
  (loss, metrics), _ = global_value_and_grad(z, z, TAU)
  assert float(metrics["contrastive_accuracy"]) == 1.0
  np.testing.assert_allclose(loss, np_nt_xent(z, z, TAU)[0], rtol=1e-5)

  # Orthonormal identical views: positive logit 1/tau, the 2N - 2 negatives 0, so the loss is
  # log(1 + (2N - 2) exp(-1/tau)); it goes to the cross-entropy bound 0 as tau -> 0.
  n = 8
  q = np.linalg.qr(np.random.default_rng(4).normal(size=(16, 16)))[0][:n].astype(np.float32)
  for tau in (0.5, 0.05):
    (loss, metrics), (g1, _) = global_value_and_grad(q, q, tau)
    np.testing.assert_allclose(loss, np.log1p((2 * n - 2) * np.exp(-1.0 / tau)),
                               rtol=1e-4, atol=1e-7)
    assert float(metrics["contrastive_accuracy"]) == 1.0
    assert np.all(np.isfinite(g1))  # the -1e9 mask gives no NaN even when p -> one-hot
  assert float(loss) < 1e-6


def test_temperature_scaling(global_value_and_grad):
  z1, z2 = _views(8, 5, seed=5)
  z2 = z1 + 0.3 * z2
  # Cosine similarity: rescaling the inputs changes nothing.
  (a, _), _ = global_value_and_grad(z1, z2, TAU)
  (b, _), _ = global_value_and_grad(3.0 * z1, 0.25 * z2, TAU)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  # tau -> inf: uniform softmax over the 2N - 1 candidates.
  (loss, m), _ = global_value_and_grad(z1, z2, 1e5)
  np.testing.assert_allclose(loss, np.log(2 * 8 - 1), rtol=1e-4)
  np.testing.assert_allclose(m["contrastive_entropy"], np.log(2 * 8 - 1), rtol=1e-4)
  # Lower temperature sharpens the softmax: entropy strictly decreases.
  ents = [float(global_value_and_grad(z1, z2, t)[0][1]["contrastive_entropy"])
          for t in (2.0, 0.5, 0.1)]
  assert ents[0] > ents[1] > ents[2]


def test_bfloat16_inputs_computed_in_float32(global_value_and_grad):
  z1, z2 = _views(6, 5, seed=6)
  (loss, _), _ = global_value_and_grad(jnp.asarray(z1, jnp.bfloat16),
                                       jnp.asarray(z2, jnp.bfloat16), TAU)
  assert loss.dtype == jnp.float32
  ref = np_nt_xent(np.asarray(jnp.asarray(z1, jnp.bfloat16), np.float32),
                   np.asarray(jnp.asarray(z2, jnp.bfloat16), np.float32), TAU)[0]
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


# ----------------------------------------------------------------------------- per-device ----


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == N_DEV, "conftest.py should provide 8 CPU devices"
  # Not jax.make_mesh: its Explicit axis types break the logits matmul (ShardingTypeError).
  return Mesh(np.array(jax.devices()), ("data",))


def _sharded_loss(mesh, local_loss):
  return jax.shard_map(local_loss, mesh=mesh, in_specs=(P("data"), P("data")),
                       out_specs=(P(), P()))


@pytest.fixture(scope="module")
def per_device_value_and_grad(mesh):
  f = _sharded_loss(mesh, lambda a, b: nt_xent(a, b, TAU, axis_name="data"))
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def test_per_device_equals_global(global_value_and_grad, per_device_value_and_grad):
  z1, z2 = _views(N_GLOBAL, DIM, seed=7)
  z2 = z1 + 0.8 * z2
  (gl, gm), (gg1, gg2) = global_value_and_grad(z1, z2, TAU)
  (dl, dm), (dg1, dg2) = per_device_value_and_grad(z1, z2)
  np.testing.assert_allclose(dl, gl, rtol=1e-5)
  np.testing.assert_allclose(dl, np_nt_xent(z1, z2, TAU)[0], rtol=1e-5)
  for k in gm:
    np.testing.assert_allclose(dm[k], gm[k], rtol=1e-5)
  assert 0.0 < float(gm["contrastive_accuracy"]) < 1.0  # the metric is actually exercised
  # atol for the float32 noise of entries that are ~0; the scale of the gradient is ~1e-2.
  np.testing.assert_allclose(dg1, gg1, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(dg2, gg2, rtol=1e-5, atol=1e-8)


def test_local_negatives_only_differs(mesh, global_value_and_grad):
  """The classic bug the per-device test must catch: each device only sees its own batch."""
  z1, z2 = _views(N_GLOBAL, DIM, seed=7)
  z2 = z1 + 0.8 * z2

  def local_only(a, b):
    loss, metrics = nt_xent(a, b, TAU)  # no axis_name: negatives from this device only
    return jax.lax.pmean((loss, metrics), "data")

  f = jax.jit(jax.value_and_grad(_sharded_loss(mesh, local_only), argnums=(0, 1),
                                 has_aux=True))
  (bl, _), (bg1, _) = f(z1, z2)
  (gl, _), (gg1, _) = global_value_and_grad(z1, z2, TAU)
  assert abs(float(bl) - float(gl)) > 0.1  # 7 vs 63 candidates per row: clearly lower
  assert not np.allclose(bg1, gg1, rtol=1e-3)


def test_grad_inside_shard_map_wrt_replicated_params(mesh):
  """How the trainer uses it: jax.grad inside shard_map w.r.t. replicated (P()) params.

  With check_vma=True the gradient of the psum-ed (device-invariant) loss w.r.t. invariant
  params is already the global gradient; pmean is then a no-op and psum would count it D
  times. With check_vma=False the per-device gradients need a pmean. pmean is right in both.
  """
  rng = np.random.default_rng(8)
  x1 = rng.normal(size=(N_GLOBAL, 7)).astype(np.float32)
  x2 = (x1 + 0.5 * rng.normal(size=(N_GLOBAL, 7))).astype(np.float32)
  w = rng.normal(size=(7, DIM)).astype(np.float32)
  ref = jax.grad(lambda w: nt_xent(x1 @ w, x2 @ w, TAU)[0])(w)

  def make(reduce, check_vma):
    def step(w, a, b):
      g = jax.grad(lambda w: nt_xent(a @ w, b @ w, TAU, axis_name="data")[0])(w)
      return reduce(g)
    return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                 out_specs=P(), check_vma=check_vma))

  pmean = lambda g: jax.lax.pmean(g, "data")  # noqa: E731
  psum = lambda g: jax.lax.psum(g, "data")  # noqa: E731
  np.testing.assert_allclose(make(lambda g: g, True)(w, x1, x2), ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(make(pmean, True)(w, x1, x2), ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(make(pmean, False)(w, x1, x2), ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(make(psum, True)(w, x1, x2), N_DEV * ref, rtol=1e-5, atol=1e-6)


def _dot_shapes(hlo_text):
  return set(re.findall(r"= (f32\[\d+,\d+\])\{[^}]*\} dot\(", hlo_text))


def test_per_device_logits_are_local_rows_by_global_columns(mesh):
  """Checked on the compiled SPMD program: the logits dot is [2n_local, 2N], never [2N, 2N]."""
  z = jax.ShapeDtypeStruct((N_GLOBAL, DIM), jnp.float32)
  local_logits = f"f32[{2 * N_LOCAL},{2 * N_GLOBAL}]"
  full_logits = f"f32[{2 * N_GLOBAL},{2 * N_GLOBAL}]"

  f = _sharded_loss(mesh, lambda a, b: nt_xent(a, b, TAU, axis_name="data"))
  for fn in (f, jax.value_and_grad(f, argnums=(0, 1), has_aux=True)):
    hlo = jax.jit(fn).lower(z, z).compile().as_text()
    assert local_logits in _dot_shapes(hlo), _dot_shapes(hlo)
    assert full_logits not in hlo

  # Control: the global form does build the full matrix, so the check above can fail.
  hlo = jax.jit(lambda a, b: nt_xent(a, b, TAU)).lower(z, z).compile().as_text()
  assert full_logits in _dot_shapes(hlo)

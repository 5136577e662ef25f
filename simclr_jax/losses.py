"""SimCLR's contrastive loss (NT-Xent), global or per-device with cross-device negatives.

Layout (both forms)
-------------------
For a global batch of N images with projections ``z1`` (view 1) and ``z2`` (view 2), each
``N x d``, the 2N candidates (the columns of the logits) are ordered

    columns = [z1[0], ..., z1[N-1], z2[0], ..., z2[N-1]]

and row ``r`` of the logits is the similarity of candidate ``r`` with every column. Row ``i``
(view 1 of image ``i``) has its positive in column ``N + i``, row ``N + i`` in column ``i``;
the diagonal (self-similarity) is masked out. The loss is the mean over the 2N rows of the
cross-entropy of ``softmax(row)`` against the positive, i.e. each row has 1 positive and
2N - 2 negatives.

* ``axis_name=None`` (global form): the full ``2N x 2N`` logits.
* ``axis_name='data'`` (per-device form, inside ``jax.shard_map`` over a 1-D mesh): each device
  holds ``n = N / D`` images (device ``k`` holds global images ``k*n .. k*n + n - 1``). The
  columns are gathered from every device into the same global order as above, and the device
  computes only its own ``2n`` rows ``[z1_local; z2_local]`` -- i.e. the global rows
  ``k*n + i`` and ``N + k*n + i`` -- against all ``2N`` columns: logits are ``2n x 2N``
  per device and nothing of size ``2N x 2N`` is ever built. The per-row sums are then
  ``psum``-ed and divided by 2N, so every device returns the same global mean, and value
  and gradients equal the global form's on the same global batch.

Gradients inside ``shard_map`` (how a train step uses the per-device form): with the default
``check_vma=True``, ``jax.grad`` of this loss w.r.t. replicated (``P()``) parameters is already
the global gradient -- JAX inserts the cross-device sum when it transposes the implicit
broadcast of the parameters. ``lax.pmean`` on it is then a no-op; ``lax.psum`` would multiply
it by the number of devices. With ``check_vma=False`` each device gets only a partial
gradient and ``pmean`` is required. So: reduce gradients with ``pmean``, never ``psum``
(tests/test_losses.py checks all of these).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

# Large finite negative for the masked self-similarity: exp() underflows to exactly 0, but,
# unlike -inf, (masked - logsumexp) stays finite, so no inf - inf = NaN reaches the gradient
# or the 0 * log(0) of the entropy.
_MASK_VALUE = -1e9


def _l2_normalize(z: jax.Array, eps: float = 1e-12) -> jax.Array:
  # rsqrt(max(|z|^2, eps^2)) instead of z / |z|: a zero vector (e.g. dead ReLU features at
  # init) gives 0, not NaN, in the value and in the gradient.
  sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
  return z * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _row_terms(queries, keys, self_idx, pos_idx, temperature):
  """Per-row cross-entropy, correctness and entropy for ``queries`` against ``keys``.

  queries: (R, d) normalised rows; keys: (C, d) normalised columns; self_idx, pos_idx: (R,)
  column of each row's own copy (masked) and of its positive.
  """
  logits = jnp.einsum("rd,cd->rc", queries, keys) / temperature
  cols = jnp.arange(keys.shape[0])
  self_mask = cols[None, :] == self_idx[:, None]
  logits = jnp.where(self_mask, _MASK_VALUE, logits)

  log_z = jax.nn.logsumexp(logits, axis=-1)
  pos_logit = jnp.take_along_axis(logits, pos_idx[:, None], axis=-1)[:, 0]
  xent = log_z - pos_logit

  # Metrics carry no gradient: they are logged, never optimised.
  logits_sg = jax.lax.stop_gradient(logits)
  log_p = logits_sg - jax.lax.stop_gradient(log_z)[:, None]
  # Masked entries have p == 0 exactly; drop them explicitly rather than rely on 0 * (-1e9).
  entropy = -jnp.sum(jnp.where(self_mask, 0.0, jnp.exp(log_p) * log_p), axis=-1)
  correct = (jnp.argmax(logits_sg, axis=-1) == pos_idx).astype(jnp.float32)
  return xent, correct, entropy


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    axis_name: Any = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Normalised-temperature cross-entropy (SimCLR, Chen et al. 2020, eq. 1).

  Args:
    z1, z2: ``(n, d)`` projections of the two views; row ``i`` of both is the same image.
      Without ``axis_name`` they are the whole batch; with it, this device's shard.
    temperature: softmax temperature tau (logits = cosine similarity / tau).
    axis_name: ``None`` for the global form, or the mesh axis (``'data'``) when called
      inside ``jax.shard_map``; negatives then come from all devices on that axis.

  Returns:
    ``(loss, metrics)``: the mean over all 2N rows of the global batch, and
    ``dict(contrastive_accuracy, contrastive_entropy)`` (fraction of rows whose argmax is
    the positive; mean entropy of each row's softmax over its 2N - 1 candidates). With
    ``axis_name`` these are global values, identical (invariant) on every device, so they
    can be returned with ``out_specs=P()``.

  See the module docstring for the layout of rows and columns.
  """
  if z1.shape != z2.shape or z1.ndim != 2:
    raise ValueError(f"z1 and z2 must both be (n, d); got {z1.shape} and {z2.shape}")
  # The softmax over 2N columns is computed in float32 even for bfloat16 models.
  dtype = jnp.promote_types(z1.dtype, jnp.float32)     # float64 stays float64 (tests)
  z1 = _l2_normalize(z1.astype(dtype))
  z2 = _l2_normalize(z2.astype(dtype))
  n = z1.shape[0]
  queries = jnp.concatenate([z1, z2], axis=0)  # (2n, d): this device's rows

  if axis_name is None:
    n_global, offset, keys = n, 0, queries
  else:
    # tiled all_gather keeps the gradient path: its transpose is a psum_scatter that hands
    # every device the gradient its z received as a *negative* on the other devices. No
    # stop_gradient here (that would drop those terms, cf. lightly PR #1531).
    g1 = jax.lax.all_gather(z1, axis_name, tiled=True)  # (N, d) in global image order
    g2 = jax.lax.all_gather(z2, axis_name, tiled=True)
    keys = jnp.concatenate([g1, g2], axis=0)  # (2N, d), same column order as global form
    n_global = g1.shape[0]
    offset = jax.lax.axis_index(axis_name) * n  # global index of this device's first image

  local = jnp.arange(n)
  # Global column of each local row itself (masked) and of its positive (the other view).
  self_idx = jnp.concatenate([offset + local, n_global + offset + local])
  pos_idx = jnp.concatenate([n_global + offset + local, offset + local])

  xent, correct, entropy = _row_terms(queries, keys, self_idx, pos_idx, temperature)
  sums = (jnp.sum(xent), jnp.sum(correct), jnp.sum(entropy))
  if axis_name is not None:
    # Sum of per-device sums over the global count = global mean. psum makes the result
    # device-invariant, so (under shard_map's vma check) its transpose is a plain broadcast
    # of the cotangent: each row's loss is differentiated exactly once, no factor of D.
    sums = jax.lax.psum(sums, axis_name)
  count = 2 * n_global
  loss, accuracy, ent = (s / count for s in sums)
  return loss, dict(contrastive_accuracy=accuracy, contrastive_entropy=ent)


def online_classifier(logits, labels, axis_name, count=None):
  """The online classifier's (loss, accuracy): mean cross-entropy and accuracy over the
  labelled rows (label >= 0) of every device on `axis_name`, divided by `count` (default: the
  labelled rows of all devices; the chunked step passes the whole batch's count per chunk)."""
  valid = labels >= 0
  if count is None:
    count = jnp.maximum(jax.lax.psum(valid.sum(), axis_name), 1)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  correct = (jnp.argmax(logits, -1) == labels) & valid
  return (jax.lax.psum(jnp.where(valid, ce, 0.0).sum(), axis_name) / count,
          jax.lax.psum(correct.sum(), axis_name) / count)

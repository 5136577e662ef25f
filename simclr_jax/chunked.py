"""SimCLR's large batch in chunks, exactly: the GradCache step (Gao et al. 2021), train.chunk_size.

NT-Xent needs every embedding of the global batch in one loss (each row's negatives are all
the other views), so gradient accumulation over micro-batches would change the loss. GradCache
keeps the loss and bounds the activations instead, in three passes over chunks of
`chunk_size` views per device (each chunk: both views of chunk_size / 2 images):

1. embed every chunk (train-mode forward, nothing kept for a backward pass): z of the batch;
2. the loss of the whole global batch from those z, and its gradient g = dL/dz for every
   embedding (all negatives, from every device, as the one-pass step);
3. each chunk's forward again, and its backward with g as the cotangent of its z: the
   gradient of <z(params), g>, summed over the chunks, is dL/dparams by the chain rule.

Only one chunk's activations are alive at a time (`lax.map` / `lax.scan` over chunks); the
price is a second forward pass. What differs from the one-pass step: BatchNorm normalises each
chunk (over all devices: chunk j of every device is one group) instead of the whole batch, so
the gradient equals that of a one-pass step whose BatchNorm is grouped the same way
(tests/test_chunked.py), not the plain step's; the running statistics are the mean of the
chunks' updates. The online classifier's loss (on stop_gradient(h)) is added chunk by chunk.

Runs inside `jax.shard_map` on the mesh axis 'data'; gradients with respect to the replicated
parameters are taken inside it, where JAX sums every device's contribution when it transposes
their implicit broadcast (simclr_jax/losses.py, module docstring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from simclr_jax import losses


def to_chunks(x1, x2, pairs: int):
  """(n, ...) views 1 and 2 -> (n / pairs, 2 pairs, ...): chunk j holds view 1 then view 2 of
  images j * pairs ... (j + 1) * pairs - 1."""
  k = x1.shape[0] // pairs
  return jnp.concatenate([x1.reshape(k, pairs, *x1.shape[1:]),
                          x2.reshape(k, pairs, *x2.shape[1:])], axis=1)


def from_chunks(zs):
  """The inverse of `to_chunks`: (k, 2 pairs, ...) -> (view 1, view 2), each (n, ...)."""
  pairs = zs.shape[1] // 2
  return (zs[:, :pairs].reshape(-1, *zs.shape[2:]), zs[:, pairs:].reshape(-1, *zs.shape[2:]))


def contrastive_grads(zs, temperature: float, axis_name):
  """NT-Xent of the whole global batch from the chunked embeddings `zs` (k, c, d) of this
  device, and its gradient with respect to each of them (pass 2): (loss, metrics, dL/dzs)."""
  def loss_fn(zs):
    z1, z2 = from_chunks(zs)
    return losses.nt_xent(z1, z2, temperature, axis_name=axis_name)

  (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(zs)
  return loss, metrics, g


def loss_and_grads(apply_fn, params, batch_stats, x1, x2, *, chunk_size: int,
                   temperature: float, axis_name, dropout_key, labels=None,
                   num_classes: int = 0):
  """The chunked step's (loss, metrics, new batch_stats, grads) on this device's views
  `x1`, `x2` (n, H, W, C), inside shard_map over `axis_name`. `apply_fn` is the SimCLR model's
  apply (BatchNorm over `axis_name`); `labels` (n,), -1 = none, for the online head."""
  pairs = chunk_size // 2
  xs = to_chunks(x1, x2, pairs)
  k = xs.shape[0]
  keys = jax.random.split(dropout_key, k)     # chunk j draws the same dropout in passes 1 and 3
  online = bool(num_classes)
  ys = to_chunks(labels, labels, pairs) if online else jnp.zeros(xs.shape[:2], jnp.int32)

  def forward(p, x, key):
    out, new_vars = apply_fn({"params": p, "batch_stats": batch_stats}, x, train=True,
                             mutable=["batch_stats"], rngs={"dropout": key})
    return out, new_vars["batch_stats"]

  # Pass 1: the embeddings (and the online head's logits), one chunk at a time.
  def embed(inputs):
    x, key = inputs
    out, stats = forward(params, x, key)
    return (out["z"], out["logits"] if online else jnp.zeros((), out["z"].dtype)), stats

  (zs, logits), stats = jax.lax.map(embed, (xs, keys))
  # Each chunk updated the running statistics from the same old ones: their mean is one update
  # with the mean of the chunks' batch statistics.
  new_batch_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)

  # Pass 2: the loss of the global batch, and dL/dz for every embedding.
  loss, metrics, gs = contrastive_grads(zs, temperature, axis_name)
  metrics = dict(metrics, contrastive_loss=loss)
  count = jnp.ones((), jnp.float32)
  if online:
    valid = ys >= 0
    count = jnp.maximum(jax.lax.psum(valid.sum(), axis_name), 1).astype(jnp.float32)
    online_loss, online_accuracy = losses.online_classifier(logits, ys, axis_name, count)
    metrics.update(online_loss=online_loss, online_accuracy=online_accuracy)
    loss = loss + online_loss

  # Pass 3: each chunk's forward again and its backward from the cached dL/dz.
  def surrogate(p, x, g, y, key):
    out, _ = forward(p, x, key)
    s = jnp.sum(out["z"] * g)
    if online:
      ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], jnp.maximum(y, 0))
      s = s + jnp.sum(jnp.where(y >= 0, ce, 0.0)) / count
    return s

  def accumulate(total, inputs):
    return jax.tree.map(jnp.add, total, jax.grad(surrogate)(params, *inputs)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(accumulate, zeros, (xs, gs, ys, keys))
  return loss, metrics, new_batch_stats, grads


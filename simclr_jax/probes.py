"""Probes on frozen features that run on the device: an exact L-BFGS logistic regression and
an optax-trained linear / MLP head.

`LbfgsLogistic` minimises scikit-learn's own objective for `LogisticRegression(C)` (multinomial,
L2 on the weights, intercept free): mean cross-entropy + ||W||^2 / (2 C n). The optimum is
unique, so it measures what scikit-learn measures; it only gets there as one jitted
`optax.lbfgs` loop, warm-started along the C grid. On CPU that is seconds where scikit-learn's
lbfgs over 3,072 raw CIFAR pixels took about 20 minutes.

`fit_head` is the SimCLR blog recipe: a linear or MLP head trained with Adam on minibatches
(dropout optional), one jitted scan per epoch, the epoch of least validation loss kept. With a
2-D multi-hot `y` it trains sigmoid outputs with binary cross-entropy (multi-label).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu


# ---------------------------------------------------------------------------------------------
# L-BFGS logistic regression (scikit-learn's objective).
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("max_iter",))
def _lbfgs_solve(params, x, y, l2, max_iter: int, tol):
  def objective(p):
    logits = x @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * l2 * jnp.sum(p["w"] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(p, updates), state

  def keep_going(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    grad = otu.tree_get(state, "grad")
    # scikit-learn's criterion: the largest gradient component (scipy's pgtol).
    gmax = jnp.max(jnp.array([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grad)]))
    return (count == 0) | ((count < max_iter) & (gmax > tol))

  p, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
  return p, otu.tree_get(state, "count"), objective(p)


class LbfgsLogistic:
  """LogisticRegression(C) with scikit-learn's interface (fit / predict_proba / classes_)."""

  def __init__(self, C: float = 1.0, max_iter: int = 2000, tol: float = 1e-5, init=None):
    self.C, self.max_iter, self.tol, self.init = float(C), int(max_iter), float(tol), init

  def fit(self, x, y):
    self.classes_, y_idx = np.unique(y, return_inverse=True)
    x = jnp.asarray(x, jnp.float32)
    k = len(self.classes_)
    params = self.init or {"w": jnp.zeros((x.shape[1], k)), "b": jnp.zeros((k,))}
    self.params_, self.n_iter_, self.objective_ = _lbfgs_solve(
        params, x, jnp.asarray(y_idx, jnp.int32), 1.0 / (self.C * len(y_idx)), self.max_iter,
        self.tol)
    return self

  def predict_proba(self, x):
    logits = jnp.asarray(x, jnp.float32) @ self.params_["w"] + self.params_["b"]
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    return p / p.sum(1, keepdims=True)      # float32 rows sum to 1 only within 1e-7

  def predict(self, x):
    return self.classes_[self.predict_proba(x).argmax(1)]

  def score(self, x, y):
    return float(np.mean(self.predict(x) == np.asarray(y)))


# ---------------------------------------------------------------------------------------------
# optax-trained linear / MLP head (the blog recipe).
# ---------------------------------------------------------------------------------------------

class Head(nn.Module):
  """Linear (hidden=0) or one hidden layer with ReLU and dropout; also the fine-tune head."""

  num_outputs: int
  hidden: int = 0
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, name="out")(x)


def head_loss(logits, y, multilabel: bool):
  """Per-example loss: softmax cross-entropy (int labels) or mean sigmoid BCE (multi-hot)."""
  if multilabel:
    return optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).mean(-1)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def fit_head(x_fit, y_fit, x_val, y_val, num_outputs: int, *, hidden: int = 0,
             dropout: float = 0.0, learning_rate: float = 3e-4, batch_size: int = 64,
             epochs: int = 100, weight_decay: float = 0.0, seed: int = 0):
  """Trains the head on (x_fit, y_fit); returns (predict_fn, info) of the best-val-loss epoch.

  `predict_fn(x)` gives probabilities (softmax, or sigmoid when `y_fit` is 2-D multi-hot).
  `info` holds `best_epoch` (1-based) and the per-epoch `val_loss` curve.
  """
  multilabel = np.ndim(y_fit) == 2
  model = Head(num_outputs, hidden, dropout)
  x_fit, x_val = jnp.asarray(x_fit, jnp.float32), jnp.asarray(x_val, jnp.float32)
  y_fit, y_val = jnp.asarray(y_fit), jnp.asarray(y_val)
  n = x_fit.shape[0]
  batch_size = max(1, min(batch_size, n))
  steps = n // batch_size
  key = jax.random.PRNGKey(seed)
  params = model.init(key, x_fit[:1])["params"]
  tx = optax.adamw(learning_rate, weight_decay=weight_decay) if weight_decay else optax.adam(
      learning_rate)
  opt_state = tx.init(params)

  def loss_fn(p, xb, yb, k):
    logits = model.apply({"params": p}, xb, train=True, rngs={"dropout": k})
    return head_loss(logits, yb, multilabel).mean()

  @jax.jit
  def epoch(params, opt_state, key):
    perm_key, drop_key = jax.random.split(key)
    order = jax.random.permutation(perm_key, n)[:steps * batch_size].reshape(steps, batch_size)

    def step(carry, inp):
      p, s = carry
      idx, i = inp
      grads = jax.grad(loss_fn)(p, x_fit[idx], y_fit[idx], jax.random.fold_in(drop_key, i))
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (order, jnp.arange(steps)))
    val = head_loss(model.apply({"params": params}, x_val), y_val, multilabel).mean()
    return params, opt_state, val

  best, best_loss, best_epoch, curve = params, np.inf, 0, []
  for e in range(epochs):
    params, opt_state, val = epoch(params, opt_state, jax.random.fold_in(key, e + 1))
    curve.append(float(val))
    if curve[-1] < best_loss:     # strict: ties keep the earlier epoch
      best, best_loss, best_epoch = params, curve[-1], e + 1

  act = jax.nn.sigmoid if multilabel else jax.nn.softmax
  predict = jax.jit(lambda x: act(model.apply({"params": best}, x)))
  return (lambda x: np.asarray(predict(jnp.asarray(x, jnp.float32)), np.float64),
          {"best_epoch": best_epoch, "val_loss": curve})

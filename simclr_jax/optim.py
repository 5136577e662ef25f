"""Optimizer factory: adam / adamw / sgd / lars (optax), masks, lr scaling, warm-up + cosine.

Weight decay and the LARS trust ratio apply to weight matrices and conv kernels only; biases
and BatchNorm scale/bias are excluded, as in SimCLR (google-research/simclr) and BYOL: decaying
a BN scale towards 0 fights the normalisation, and the trust ratio ||w|| / ||g|| of a vector
initialised at 0 (a bias) is degenerate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import optax

OPTIMIZERS = ("adam", "adamw", "sgd", "lars")
LR_SCALINGS = ("linear", "sqrt", "none")
SCHEDULES = ("cosine", "constant")

# Leaf names that are never decayed nor LARS-adapted: Dense/Conv 'bias', BatchNorm/LayerNorm
# 'scale' and 'bias'.
_EXCLUDED_LEAF_NAMES = frozenset({"bias", "scale"})


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def exclude_bias_and_norm(path: tuple[Any, ...], leaf: Any) -> bool:
  """True for parameters that DO get weight decay and LARS adaptation (kernels/embeddings).

  ``path`` is a ``jax.tree_util`` key path (e.g. ``params/encoder/conv1/kernel``). Biases and
  normalisation parameters ('bias', 'scale' leaves) return False. ``leaf`` is unused but kept so
  the predicate plugs straight into ``jax.tree_util.tree_map_with_path``.
  """
  del leaf
  return bool(path) and _key_name(path[-1]) not in _EXCLUDED_LEAF_NAMES


def decay_mask(params: Any) -> Any:
  """Boolean tree like ``params``: True where weight decay / the trust ratio apply."""
  return jax.tree_util.tree_map_with_path(exclude_bias_and_norm, params)


def peak_learning_rate(optim_cfg: Any, batch_size: int) -> float:
  """Peak learning rate: ``learning_rate`` if > 0, else ``base_lr`` scaled by the batch size.

  Scaling rules (SimCLR appendix B.1): 'linear' = base_lr * B / 256, 'sqrt' =
  base_lr * sqrt(B) (the paper's choice for LARS with small batches), 'none' = base_lr.
  """
  if optim_cfg.learning_rate > 0:
    return float(optim_cfg.learning_rate)
  rule = optim_cfg.lr_scaling
  if rule == "linear":
    return float(optim_cfg.base_lr) * batch_size / 256.0
  if rule == "sqrt":
    return float(optim_cfg.base_lr) * math.sqrt(batch_size)
  if rule == "none":
    return float(optim_cfg.base_lr)
  raise ValueError(f"Unknown optim.lr_scaling {rule!r}; valid: {', '.join(LR_SCALINGS)}.")


def make_schedule(optim_cfg: Any, peak_lr: float, steps_per_epoch: int,
                  total_steps: int) -> Callable[[Any], Any]:
  """Linear warm-up from 0 to ``peak_lr``, then cosine decay to ``end_lr_factor * peak_lr`` at
  ``total_steps`` ('cosine') or held at ``peak_lr`` ('constant')."""
  warmup_steps = int(round(optim_cfg.warmup_epochs * steps_per_epoch))
  warmup_steps = max(0, min(warmup_steps, total_steps))
  if optim_cfg.schedule == "cosine":
    # alpha is the end value as a fraction of the peak; decay_steps >= 1 so that a run that is
    # all warm-up does not divide by zero.
    main = optax.cosine_decay_schedule(
        init_value=peak_lr, decay_steps=max(1, total_steps - warmup_steps),
        alpha=float(optim_cfg.end_lr_factor))
  elif optim_cfg.schedule == "constant":
    main = optax.constant_schedule(peak_lr)
  else:
    raise ValueError(
        f"Unknown optim.schedule {optim_cfg.schedule!r}; valid: {', '.join(SCHEDULES)}.")
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, peak_lr, transition_steps=warmup_steps)
  return optax.join_schedules([warmup, main], boundaries=[warmup_steps])


def make_optimizer(optim_cfg: Any, batch_size: int, steps_per_epoch: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """Build the optimizer and its learning-rate schedule from ``config.optim``.

  Returns ``(tx, schedule)``; ``schedule(step)`` is the lr that ``tx`` uses at that step (the
  trainer logs it). Per optimizer:

  * 'lars': ``optax.lars`` with momentum and ``trust_coefficient``; decay and trust ratio
    masked by :func:`exclude_bias_and_norm` (SimCLR's default).
  * 'adamw': decoupled weight decay, masked.
  * 'sgd': L2 via ``add_decayed_weights`` (masked) then momentum SGD, as torch.optim.SGD.
  * 'adam': with ``weight_decay > 0``, L2 added to the gradient *before* Adam's
    normalisation (masked) -- what torch.optim.Adam(weight_decay=...) does, and what
    PyTorch SimCLR ports (pl_bolts, SolarNet) that say "Adam" actually ran. Choose 'adamw'
    for decoupled decay.
  """
  name = optim_cfg.name
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}.")
  peak = peak_learning_rate(optim_cfg, batch_size)
  schedule = make_schedule(optim_cfg, peak, steps_per_epoch, total_steps)
  wd = float(optim_cfg.weight_decay)
  # A callable mask is evaluated on the params at init/update time, so the same tx works for
  # any model (and for the online head's params too).
  mask = decay_mask

  if name == "lars":
    tx = optax.lars(
        learning_rate=schedule, weight_decay=wd, weight_decay_mask=mask,
        trust_coefficient=float(optim_cfg.trust_coefficient), trust_ratio_mask=mask,
        momentum=float(optim_cfg.momentum), nesterov=bool(optim_cfg.nesterov))
  elif name == "adamw":
    tx = optax.adamw(
        learning_rate=schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
        eps=float(optim_cfg.eps), weight_decay=wd, mask=mask)
  elif name == "sgd":
    momentum = float(optim_cfg.momentum)
    tx = optax.chain(
        optax.add_decayed_weights(wd, mask=mask),
        optax.sgd(learning_rate=schedule, momentum=momentum or None,
                  nesterov=bool(optim_cfg.nesterov)))
  else:  # adam
    adam = optax.adam(learning_rate=schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
                      eps=float(optim_cfg.eps))
    tx = optax.chain(optax.add_decayed_weights(wd, mask=mask), adam) if wd > 0 else adam
  return tx, schedule


# The online classifier's parameters: params['online_head'] (simclr_jax/models/simclr.py).
ONLINE_HEAD = "online_head"


def online_optimizer(online_cfg: Any) -> optax.GradientTransformation:
  """The online classifier's own optimizer: Adam (AdamW if weight_decay > 0), constant lr.

  Constant, not the SSL schedule: the head must keep up with a representation that moves at
  every step, warm-up and cosine decay of the encoder's lr included.
  """
  lr, wd = float(online_cfg.learning_rate), float(online_cfg.get("weight_decay", 0.0))
  if lr < 0:
    raise ValueError(f"online_eval.learning_rate={lr}: must be >= 0")
  return optax.adamw(lr, weight_decay=wd, mask=decay_mask) if wd > 0 else optax.adam(lr)


def online_labels(params: Any) -> Any:
  """'online' for every leaf of params['online_head'], 'ssl' for the rest."""
  return {name: jax.tree.map(lambda _, n=name: "online" if n == ONLINE_HEAD else "ssl", sub)
          for name, sub in params.items()}


def with_online_head(ssl_tx: optax.GradientTransformation,
                     online_tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`ssl_tx` on the encoder and projection, `online_tx` on the online head (BYOL's optimizer
  masks, via optax.multi_transform). Each sees its own leaves only (the others are masked out),
  so the SSL update is the one `ssl_tx` makes on a model without the head, LARS trust ratios
  and weight decay included."""
  return optax.multi_transform({"ssl": ssl_tx, "online": online_tx}, online_labels)

"""Heads on top of the encoder features h: the SimCLR projection MLP and the online classifier."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """g(h) -> z, the space where NT-Xent is computed.

  proj_layers=2 is SimCLR v1 (and pl_bolts / SolarNet): Dense(hidden_mlp) -> BN -> ReLU ->
  Dense(feat_dim, no bias). proj_layers=3 is SimCLR v2: one more hidden layer, which the v2
  paper found helps, especially for semi-supervised fine-tuning.
  """

  hidden_mlp: int
  feat_dim: int
  proj_layers: int = 2
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def __post_init__(self):
    # Fail at construction, not deep inside the first jitted init.
    if self.proj_layers < 2:
      raise ValueError(
          f"proj_layers must be >= 2 (2 = SimCLR v1, 3 = SimCLR v2), got {self.proj_layers}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, h, train: bool):
    x = h
    for i in range(self.proj_layers - 1):
      x = nn.Dense(self.hidden_mlp, dtype=self.dtype, name=f"dense{i + 1}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=self.dtype, axis_name=self.bn_axis_name,
                       name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    # No bias: z is L2-normalised by the loss, a constant offset only shrinks the usable angles.
    return nn.Dense(self.feat_dim, use_bias=False, dtype=self.dtype, name="out")(x)


class OnlineClassifier(nn.Module):
  """SolarNet / pl_bolts SSLEvaluator: tracks linear-separability of h during pretraining.

  Dropout -> Dense(hidden, no bias) -> BN -> ReLU -> Dropout -> Dense(num_classes). With
  hidden == 0 it is a plain linear classifier Dense(num_classes). Apply it to
  stop_gradient(h) so it never shapes the representation. Dropout draws from the 'dropout' rng
  and is active only when train=True.
  """

  num_classes: int
  hidden: int = 128
  dropout: float = 0.2
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, h, train: bool):
    if self.hidden == 0:
      return nn.Dense(self.num_classes, dtype=self.dtype, name="out")(h)
    x = nn.Dropout(self.dropout, deterministic=not train)(h)
    # No bias: the BatchNorm right after it has its own.
    x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="dense1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype, axis_name=self.bn_axis_name,
                     name="bn1")(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="out")(x)

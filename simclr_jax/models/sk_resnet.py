"""SimCLR v2's selective-kernel ResNet (google-research/simclr, tf2/resnet.py with sk_ratio > 0).

What sk_ratio > 0 changes there, reproduced here layer for layer:
- the 3x3 conv of every bottleneck becomes a selective-kernel conv (Li et al. 2019, SKNet):
  one 3x3 conv to 2x the filters + BN + ReLU, split into two streams; their sum, averaged
  over space, goes through 1x1 (max(filters * sk_ratio, 32), no bias) + BN + ReLU and
  1x1 (2 x filters, no bias); a softmax over the two streams mixes them;
- the projection shortcut is ResNet-D's: 2x2 average pool (stride of the block) then a 1x1
  conv + BN; the first block of EVERY stage projects (as in that code), even when the shape
  does not change;
- the ImageNet stem is ResNet-D's three 3x3 convs (64w/2, 64w/2, 64w; the first strided),
  each + BN + ReLU, then a 3x3/2 max-pool; the CIFAR stem stays one 3x3 conv + BN + ReLU;
- every block's last BN starts at zero (its `init_zero=True`).
Convs have no bias. `SK_BACKBONES` names them `sk_resnet18` ... `sk_resnet200`; 18/34 use
basic blocks, which have no 3x3 to select, so only their stem and shortcuts change.
Every conv runs by `conv_impl` as in ResNet (all of them plain convolutions: no groups, no
dilations, so oneDNN's path takes each one).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.resnet import (BACKBONES, Bottleneck, base_width, conv_function,
                                      conv_kernel_init)

ModuleDef = Any
SK_BACKBONES = {f"sk_{name}": spec for name, spec in BACKBONES.items()}
SK_MIN_DIM = 32


def _pad(k: int):
  # tf2/resnet.py pads (k - 1) // 2 before and the rest after (Conv2dFixedPadding); for the
  # odd kernels used here that is k // 2 on both sides, for any stride.
  return ((k // 2, k // 2), (k // 2, k // 2))


class SKConv(nn.Module):
  """Selective-kernel 3x3 conv (tf2/resnet.py SK_Conv2D)."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  sk_ratio: float
  strides: int = 1
  min_dim: int = SK_MIN_DIM

  @nn.compact
  def __call__(self, x):
    s = (self.strides, self.strides)
    x = self.conv(2 * self.filters, (3, 3), s, padding=_pad(3), name="conv")(x)
    streams = jnp.stack(jnp.split(nn.relu(self.norm(name="bn")(x)), 2, axis=-1))
    g = jnp.mean(streams.sum(0), axis=(1, 2), keepdims=True)
    mid = max(int(self.filters * self.sk_ratio), self.min_dim)
    g = nn.relu(self.norm(name="mix_bn")(self.conv(mid, (1, 1), name="mix_reduce")(g)))
    mixing = self.conv(2 * self.filters, (1, 1), name="mix_expand")(g)
    mixing = jax.nn.softmax(jnp.stack(jnp.split(mixing, 2, axis=-1)), axis=0)
    return (streams * mixing).sum(0)


def _resnet_d_shortcut(block: nn.Module, x, filters_out: int, strides: int):
  if strides > 1:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))   # FixedPadding(2): 0 before, 1 after
    x = nn.avg_pool(x, (2, 2), (strides, strides), padding="VALID")
  else:
    x = nn.avg_pool(x, (2, 2), (1, 1), padding="SAME", count_include_pad=False)
  x = block.conv(filters_out, (1, 1), name="proj_conv")(x)
  return block.norm(name="proj_bn")(x)


class SKBottleneck(nn.Module):
  """1x1 -> selective-kernel 3x3 (strided) -> 1x1 (4x wider), ResNet-D projection."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  sk_ratio: float
  strides: int = 1
  project: bool = False

  @nn.compact
  def __call__(self, x):
    shortcut = x
    if self.project:
      shortcut = _resnet_d_shortcut(self, x, 4 * self.filters, self.strides)
    y = nn.relu(self.norm(name="bn1")(self.conv(self.filters, (1, 1), name="conv1")(x)))
    y = SKConv(self.filters, self.conv, self.norm, self.sk_ratio, self.strides, name="sk")(y)
    y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    return nn.relu(y + shortcut)


class SKBasicBlock(nn.Module):
  """Two 3x3 convs with a ResNet-D projection (tf2/resnet.py ResidualBlock, sk_ratio > 0)."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  sk_ratio: float
  strides: int = 1
  project: bool = False

  @nn.compact
  def __call__(self, x):
    shortcut = x
    if self.project:
      shortcut = _resnet_d_shortcut(self, x, self.filters, self.strides)
    s = (self.strides, self.strides)
    y = self.conv(self.filters, (3, 3), s, padding=_pad(3), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    return nn.relu(y + shortcut)


class SKResNet(nn.Module):
  """Selective-kernel ResNet trunk: stem, four stages, global average pool -> h."""

  stage_sizes: Sequence[int]
  bottleneck: bool = True
  sk_ratio: float = 0.0625          # SimCLR v2's --sk_ratio
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None   # the mesh axis under shard_map: global BatchNorm
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  conv_impl: str = "xla"            # as ResNet's: 'xla' | 'onednn' | 'auto'
  remat: bool = False               # as ResNet's: recompute each block in the backward pass

  @nn.compact
  def __call__(self, x, train: bool):
    if self.sk_ratio <= 0:
      raise ValueError(f"sk_ratio={self.sk_ratio}: must be > 0 (0 is the plain ResNet)")
    width = base_width(self.width_multiplier)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding="VALID",
                             kernel_init=conv_kernel_init,
                             conv_general_dilated=conv_function(self.conv_impl, self.dtype))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, axis_name=self.bn_axis_name)
    x = jnp.asarray(x, self.dtype)
    if self.cifar_stem:
      x = nn.relu(norm(name="bn_stem")(conv(width, (3, 3), padding=_pad(3), name="conv_stem")(x)))
    else:
      for i, (filters, stride) in enumerate(((width // 2, 2), (width // 2, 1), (width, 1))):
        x = conv(filters, (3, 3), (stride, stride), padding=_pad(3), name=f"conv_stem{i + 1}")(x)
        x = nn.relu(norm(name=f"bn_stem{i + 1}")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    block = SKBottleneck if self.bottleneck else SKBasicBlock
    block = nn.remat(block) if self.remat else block
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block(width * 2**i, conv, norm, self.sk_ratio, strides=2 if i > 0 and j == 0 else 1,
                  project=j == 0, name=f"stage{i + 1}_block{j + 1}")(x)
    return jnp.mean(x, axis=(1, 2))


def get_sk_backbone(name: str, sk_ratio: float = 0.0625, **kwargs) -> SKResNet:
  """SKResNet by name ('sk_resnet18' ... 'sk_resnet200'); kwargs go to `SKResNet`."""
  if name not in SK_BACKBONES:
    raise ValueError(f"Unknown backbone {name!r}; selective-kernel backbones: "
                     f"{', '.join(SK_BACKBONES)}.")
  stage_sizes, block_cls = SK_BACKBONES[name]
  return SKResNet(stage_sizes, bottleneck=block_cls is Bottleneck, sk_ratio=sk_ratio, **kwargs)

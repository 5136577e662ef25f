"""ResNet v1 encoders (torchvision layout) without a classifier.

The layout follows torchvision exactly -- BasicBlock for 18/34, Bottleneck with the stride on
the 3x3 conv ("v1.5") for 50 and up, torchvision's explicit paddings -- so parameter counts match
torchvision's published ones and ported weights reproduce its outputs. The module returns the
globally average-pooled features ``h``; SimCLR's heads and the linear probe sit on top of them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from simclr_jax.models import onednn

ModuleDef = Any

# The conv_general_dilated each concrete model.conv_impl gives flax's nn.Conv (None: its own,
# lax.conv_general_dilated). The parameters are the same either way.
CONV_FUNCTIONS = {"xla": None, "onednn": onednn.conv_general_dilated}


def conv_function(conv_impl: str, dtype) -> Callable | None:
  """nn.Conv's `conv_general_dilated` for model.conv_impl: a concrete 'onednn' or 'xla' as it
  is (what the start-up resolved); 'auto' (a model built directly) resolved here by
  `onednn.resolve_conv_impl`, the same decision, logged once."""
  if conv_impl not in CONV_FUNCTIONS:
    conv_impl = _resolved(conv_impl, jnp.dtype(dtype).name, jax.default_backend())
  return CONV_FUNCTIONS[conv_impl]


@functools.cache
def _resolved(conv_impl: str, dtype: str, platform: str) -> str:
  impl, why = onednn.resolve_conv_impl(conv_impl, dtype, platform)
  logging.info(onednn.describe(impl, why))
  return impl


# torchvision's init (kaiming_normal_, fan_out, relu): keeps activations of freshly initialised
# deep ResNets at a sane scale, which matters for SimCLR's large-batch LARS warmup.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # torchvision pads symmetrically (k // 2); Flax's 'SAME' pads (0, 1) for stride 2 on even
  # inputs, which would shift every strided conv by one pixel relative to ported weights.
  return ((k // 2, k // 2), (k // 2, k // 2))


def _last_bn_scale_init(zero: bool) -> Callable:
  return nn.initializers.zeros if zero else nn.initializers.ones


def _shortcut(block: nn.Module, x, out_shape, strides):
  """The residual branch: identity, or torchvision's 1x1 strided conv + BN where shapes change.

  Called inside a block's compact __call__, so the layers get the block's names.
  """
  if x.shape == out_shape:
    return x
  x = block.conv(out_shape[-1], (1, 1), strides, padding="VALID", name="proj_conv")(x)
  return block.norm(name="proj_bn")(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs; used by ResNet-18/34."""

  expansion: ClassVar[int] = 1

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    strides = (self.strides, self.strides)
    y = self.conv(self.filters, (3, 3), strides, padding=_pad(3), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=_pad(3), name="conv2")(y)
    # Zero-init of the last BN scale makes each block start as the identity (Goyal et al. 2017).
    y = self.norm(name="bn2", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    return nn.relu(_shortcut(self, residual, y.shape, strides) + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, as torchvision's v1.5) -> 1x1 (4x wider); used by ResNet-50 and up."""

  expansion: ClassVar[int] = 4

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1), padding="VALID", name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    strides = (self.strides, self.strides)
    y = self.conv(self.filters, (3, 3), strides, padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * self.expansion, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    return nn.relu(_shortcut(self, residual, y.shape, strides) + y)


class ResNet(nn.Module):
  """ResNet v1 trunk: stem, four stages, global average pool. Input NHWC, any channel count."""

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  dtype: Any = jnp.float32
  # Set to the mesh axis ('data') when applied under jax.shard_map: batch statistics are then
  # averaged over all devices (global BN). Per-device BN lets SimCLR "cheat" by recognising
  # same-device positives from the statistics (Chen et al. 2020, section 2.2).
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = False
  # 'xla': lax.conv_general_dilated; 'onednn': oneDNN's (models/onednn.py), faster on CPUs;
  # 'auto': `conv_function` picks. The parameters are the same either way.
  conv_impl: str = "xla"
  # Rematerialise each residual block (model.remat): the backward pass recomputes a block's
  # activations from its input instead of keeping them. The same parameters and gradients.
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    width = base_width(self.width_multiplier)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init,
                             conv_general_dilated=conv_function(self.conv_impl, self.dtype))
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        axis_name=self.bn_axis_name,
    )

    x = jnp.asarray(x, self.dtype)
    if self.cifar_stem:
      # 32x32 inputs cannot afford the 4x stem downsampling (SimCLR paper, appendix B.9).
      x = conv(width, (3, 3), padding=_pad(3), name="conv_stem")(x)
      x = nn.relu(norm(name="bn_stem")(x))
    else:
      x = conv(width, (7, 7), (2, 2), padding=_pad(7), name="conv_stem")(x)
      x = nn.relu(norm(name="bn_stem")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))

    block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(
            filters=width * 2**i,
            conv=conv,
            norm=norm,
            strides=strides,
            zero_init_residual=self.zero_init_residual,
            name=f"stage{i + 1}_block{j + 1}",
        )(x)
    return jnp.mean(x, axis=(1, 2))


def base_width(width_multiplier: float) -> int:
  """Channels of the stem and first stage: 64 * w, rounded (0.25 -> 16)."""
  width = int(round(64 * width_multiplier))
  if width < 1:
    raise ValueError(f"width_multiplier={width_multiplier} gives {width} channels; need >= 1/64.")
  return width


# name -> (stage sizes, block); torchvision's table.
BACKBONES: dict[str, tuple[tuple[int, ...], type[nn.Module]]] = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
    "resnet152": ((3, 8, 36, 3), Bottleneck),
    "resnet200": ((3, 24, 36, 3), Bottleneck),
}


def _lookup(name: str):
  if name not in BACKBONES:
    raise ValueError(f"Unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}.")
  return BACKBONES[name]


def get_backbone(name: str, **kwargs) -> ResNet:
  """ResNet by name ('resnet18' ... 'resnet200'); kwargs go to `ResNet`."""
  stage_sizes, block_cls = _lookup(name)
  return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, **kwargs)


"""Convolutions as matrix products (im2col), for CPUs whose XLA convolutions are slow.

XLA:CPU runs a ResNet's small-channel 3x3 and 1x1 convolutions at a fraction of the speed of
its own matrix products. Gathering each output pixel's receptive field into one row
(im2col: kh*kw strided slices, concatenated on the channel axis) turns the convolution into
one [N*Ho*Wo, kh*kw*C] x [kh*kw*C, O] dot, and its gradients into dots and pad-adds, all of
which XLA runs near the matmul peak. The result is the same convolution up to float rounding
(summation order); `conv_general_dilated` below is a drop-in for `lax.conv_general_dilated`
in `flax.linen.Conv` for the cases a ResNet uses.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

# Above this many taps x input channels the im2col rows get wide enough that XLA's own
# convolution is as fast, and the kh*kw copies of the input cost memory for nothing.
MAX_PATCH_FEATURES = 4096


def _padding(padding, kernel: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return [(0, 0)] * len(kernel)
    raise ValueError(f"im2col conv: padding {padding!r}; expected 'VALID' or explicit pairs")
  return [tuple(p) for p in padding]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels, by im2col + one dot.

  Dilations and groups fall back to XLA's convolution (a ResNet uses neither).
  """
  plain = ((lhs_dilation is None or all(d == 1 for d in lhs_dilation))
           and (rhs_dilation is None or all(d == 1 for d in rhs_dilation))
           and feature_group_count == 1 and batch_group_count == 1 and lhs.ndim == 4)
  kh, kw, cin, cout = rhs.shape
  if dimension_numbers is not None:
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = plain and dn == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                           ("NHWC", "HWIO", "NHWC"))
  if not plain or kh * kw * cin > MAX_PATCH_FEATURES:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  sh, sw = window_strides
  (pt, pb), (pl, pr) = _padding(padding, (kh, kw))
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if (pt, pb, pl, pr) != (0,) * 4 else lhs
  n, h, w, _ = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  taps = [jax.lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                        (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  # Row order (i, j, c) of the patches matches the HWIO kernel reshaped to [kh*kw*C, O].
  return jax.lax.dot_general(patches, rhs.reshape(kh * kw * cin, cout),
                             (((3,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=preferred_element_type)

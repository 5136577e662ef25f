"""SimCLR as one Flax module: encoder f (ResNet or SK-ResNet) + projection g (+ online classifier).

Variable layout -- other code depends on it:
  params['encoder']      the ResNet; `make_encoder(...)` built from the same config applies
                         this subtree alone (an exported encoder). Linear evaluation applies
                         the whole model in inference mode and reads its `h`
  params['projection']   the projection MLP (discarded after pretraining)
  params['online_head']  only when num_classes > 0
batch_stats follows the same names.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.heads import OnlineClassifier, ProjectionHead
from simclr_jax.models.resnet import ResNet, get_backbone
from simclr_jax.models.sk_resnet import SK_BACKBONES, get_sk_backbone

# model.dtype: the names a config may give, and the dtype the encoder computes in ('auto':
# `auto_dtype` of the backend; the start-up writes the name it picks into the config).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "auto": None}


def auto_dtype(platform: str | None = None) -> str:
  """model.dtype='auto' on `platform` (default: the started backend): bfloat16 on GPU and TPU,
  whose matrix units run it at several times float32's rate and whose memory it halves;
  float32 on CPU, where XLA's bfloat16 convolutions run slower than float32 (and oneDNN's
  path is float32)."""
  platform = platform or jax.default_backend()
  return "float32" if platform == "cpu" else "bfloat16"


def make_encoder(backbone: str, width_multiplier: float = 1.0, cifar_stem: bool = False,
                 bn_axis_name: str | None = None, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
  """The encoder alone; apply it to {'params': params['encoder'], 'batch_stats': ...['encoder']}.

  `backbone`: resnet18 ... resnet200, or SimCLR v2's selective-kernel sk_resnet18 ...
  sk_resnet200 (sk_ratio 0.0625 unless given in kwargs). kwargs may set conv_impl ('xla',
  'onednn', 'auto'), for either kind.
  """
  build = get_sk_backbone if backbone in SK_BACKBONES else get_backbone
  return build(backbone, width_multiplier=width_multiplier, cifar_stem=cifar_stem,
               bn_axis_name=bn_axis_name, dtype=dtype, **kwargs)


class SimCLRModel(nn.Module):
  """__call__(x, train) -> dict(h, z[, logits]); all outputs float32 whatever the compute dtype."""

  backbone: str = "resnet50"
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  hidden_mlp: int = 2048
  feat_dim: int = 128
  proj_layers: int = 2
  num_classes: int = 0
  online_hidden: int = 128
  online_dropout: float = 0.2
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  conv_impl: str = "xla"
  remat: bool = False

  def setup(self):
    self.encoder = make_encoder(self.backbone, self.width_multiplier, self.cifar_stem,
                                self.bn_axis_name, self.dtype, conv_impl=self.conv_impl,
                                remat=self.remat)
    self.projection = ProjectionHead(self.hidden_mlp, self.feat_dim, self.proj_layers,
                                     bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    if self.num_classes > 0:
      self.online_head = OnlineClassifier(self.num_classes, hidden=self.online_hidden,
                                          dropout=self.online_dropout,
                                          bn_axis_name=self.bn_axis_name, dtype=self.dtype)

  def __call__(self, x, train: bool):
    h = self.encoder(x, train)
    out = {"h": h, "z": self.projection(h, train)}
    if self.num_classes > 0:
      # stop_gradient: the online head measures the representation, it must not train it.
      out["logits"] = self.online_head(jax.lax.stop_gradient(h), train)
    # The loss and the probes run in float32 even when the network computes in bfloat16 (and
    # in float64 when it computes in float64: the tests' proofs of identities).
    return {k: v.astype(jnp.promote_types(v.dtype, jnp.float32)) for k, v in out.items()}

  def encode(self, x, train: bool = False):
    """h only (model.apply(variables, x, method=SimCLRModel.encode))."""
    h = self.encoder(x, train)
    return h.astype(jnp.promote_types(h.dtype, jnp.float32))


def compute_dtype(name: str):
  """model.dtype ('float32' | 'bfloat16' | 'auto') as the jnp dtype the encoder computes in;
  'auto' (a config that did not go through the start-up) by `auto_dtype` of the backend."""
  if name not in DTYPES:
    raise ValueError(f"Unknown model dtype {name!r}; valid: {', '.join(DTYPES)}.")
  return DTYPES[name] or DTYPES[auto_dtype()]


def _conv_impl(model_cfg) -> str:
  # As the config says: the start-up (simclr_jax/startup.py) made it 'onednn' or 'xla'; an
  # 'auto' of a config that did not go through it is resolved by the encoder. Workdirs written
  # before the field existed used XLA's convolution.
  return model_cfg.get("conv_impl", "xla")


def encoder_from_config(model_cfg, bn_axis_name: str | None = None) -> nn.Module:
  """The encoder of `model_from_config(model_cfg, ...)` alone, for models built around it."""
  return make_encoder(model_cfg.backbone, model_cfg.width_multiplier, model_cfg.cifar_stem,
                      bn_axis_name, compute_dtype(model_cfg.dtype),
                      conv_impl=_conv_impl(model_cfg), remat=model_cfg.get("remat", False))


def model_from_config(model_cfg, num_classes: int, bn_axis_name: str | None = None) -> SimCLRModel:
  """SimCLRModel from the config's `model` group; the online head exists iff online_head and
  num_classes > 0 (unlabelled data has no classes to track)."""
  return SimCLRModel(
      backbone=model_cfg.backbone,
      width_multiplier=model_cfg.width_multiplier,
      cifar_stem=model_cfg.cifar_stem,
      hidden_mlp=model_cfg.hidden_mlp,
      feat_dim=model_cfg.feat_dim,
      proj_layers=model_cfg.proj_layers,
      num_classes=num_classes if model_cfg.online_head else 0,
      online_hidden=model_cfg.online_hidden,
      online_dropout=model_cfg.online_dropout,
      bn_axis_name=bn_axis_name,
      dtype=compute_dtype(model_cfg.dtype),
      conv_impl=_conv_impl(model_cfg),
      # Workdirs written before the field existed kept every activation.
      remat=model_cfg.get("remat", False),
  )

"""Models: ResNet and selective-kernel ResNet encoders, SimCLR projection / online heads and
the SimCLR module."""

from simclr_jax.models.heads import OnlineClassifier, ProjectionHead
from simclr_jax.models.resnet import (
    BACKBONES,
    BasicBlock,
    Bottleneck,
    ResNet,
    get_backbone,
)
from simclr_jax.models.sk_resnet import SK_BACKBONES, SKConv, SKResNet, get_sk_backbone
from simclr_jax.models.simclr import (
    DTYPES,
    SimCLRModel,
    make_encoder,
    model_from_config,
)

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "DTYPES",
    "OnlineClassifier",
    "ProjectionHead",
    "ResNet",
    "SKConv",
    "SKResNet",
    "SK_BACKBONES",
    "SimCLRModel",
    "get_backbone",
    "get_sk_backbone",
    "make_encoder",
    "model_from_config",
]

"""Models: ResNet encoders, SimCLR projection / online heads, and the SimCLR module."""

from simclr_jax.models.heads import OnlineClassifier, ProjectionHead
from simclr_jax.models.resnet import (
    BACKBONES,
    BasicBlock,
    Bottleneck,
    ResNet,
    backbone_features,
    get_backbone,
)
from simclr_jax.models.simclr import (
    SimCLRModel,
    encoder_from_config,
    make_encoder,
    model_from_config,
)

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "OnlineClassifier",
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "backbone_features",
    "encoder_from_config",
    "get_backbone",
    "make_encoder",
    "model_from_config",
]

"""SimCLR in JAX/Flax: contrastive pretraining on your own images, data-parallel on any devices."""

__version__ = "0.1.0"

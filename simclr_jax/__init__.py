"""SimCLR in JAX/Flax: contrastive pretraining on your own images, data-parallel on any devices."""

__version__ = "0.1.0"

__all__ = ["load_encoder", "export_encoder"]


def __getattr__(name):
  # Lazy (PEP 562): `import simclr_jax` stays free of JAX until the encoder is asked for.
  if name in __all__:
    from simclr_jax import export
    return getattr(export, name)
  raise AttributeError(f"module 'simclr_jax' has no attribute {name!r}")

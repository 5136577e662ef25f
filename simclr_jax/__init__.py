"""SimCLR in JAX/Flax: contrastive pretraining on your own images, data-parallel on any devices.

  import simclr_jax
  workdir = simclr_jax.pretrain("digits", "runs/digits")   # simclr_jax/api.py
  simclr_jax.linear_eval(workdir)
  encoder = simclr_jax.load_encoder(simclr_jax.export_encoder(workdir, "exports/digits"))
  config = simclr_jax.configs.get("digits")                # simclr_jax/configs

The command line is `simclr-jax` (simclr_jax/cli).
"""

import importlib

__version__ = "0.1.0"

# name -> the module it lives in, imported when first asked for
_LAZY = {"pretrain": "api", "linear_eval": "api", "finetune": "api", "distill": "api",
         "load_encoder": "export", "export_encoder": "export", "embed": "embeddings"}
__all__ = [*_LAZY, "configs"]


def __getattr__(name):
  # Lazy (PEP 562): `import simclr_jax` stays free of JAX until a function is asked for.
  if name in _LAZY:
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
  if name == "configs":              # a subpackage: importing it sets the attribute for good
    return importlib.import_module(f"{__name__}.configs")
  raise AttributeError(f"module 'simclr_jax' has no attribute {name!r}")

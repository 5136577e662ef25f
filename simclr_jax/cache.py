"""Where simclr_jax keeps what it builds for this user: XLA's compilation cache (startup.py) and
the oneDNN handlers (models/onednn.py). The bottom of the package: it imports no simclr_jax
module, so the models and the start-up both read it without importing each other."""

from __future__ import annotations

import os


def user_cache_dir(name: str) -> str:
  """`$XDG_CACHE_HOME/simclr_jax/<name>` (default ~/.cache/simclr_jax/<name>)."""
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache_home, "simclr_jax", name)

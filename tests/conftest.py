"""Test setup: 8 emulated CPU devices, set before the first JAX operation (device
count flags are read once, when the CPU backend starts)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# One persistent compilation cache for the session, in-process and in the child processes
# (tests/helpers.child_env): many tests compile the same tiny programs, and the scripts would
# otherwise write theirs under the user's ~/.cache.
import tempfile  # noqa: E402

XLA_CACHE = os.environ.setdefault("SIMCLR_JAX_TEST_XLA_CACHE",
                                  tempfile.mkdtemp(prefix="simclr_jax_xla_cache_"))
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
# The oneDNN convolution handlers, built once for the session (and its child processes, which
# inherit the variable) instead of under the user's ~/.cache.
os.environ.setdefault("SIMCLR_JAX_ONEDNN_BUILD_DIR",
                      tempfile.mkdtemp(prefix="simclr_jax_onednn_build_"))

"""Test setup: 8 emulated CPU devices, set before the first JAX operation (XLA reads the device count once)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

"""model.dtype=bfloat16: the encoder and heads compute in bfloat16 while the parameters,
BatchNorm statistics, loss and optimizer stay float32 (the flax examples' and big_vision's
mixed-precision policy); one step from one state against the float32 step."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import parallel, train
from simclr_jax import state as state_lib
from simclr_jax.configs import digits


def _one_step(dtype: str, state0=None):
  c = digits.get_config("tiny")
  c.data.image_size = 16
  c.train.num_devices = 2
  c.train.batch_size = 16
  c.model.dtype = dtype
  c.optim.warmup_epochs = 0.0       # a real update at step 1 (warm-up starts at lr 0)
  setup = state_lib.build(c, 1437)
  init_rng, augment_key = state_lib.run_keys(0)
  if state0 is None:
    state0 = jax.device_get(state_lib.init_state(setup, init_rng))
  state = jax.device_put(state0, parallel.replicated(setup.mesh))
  batch = {"image": np.random.default_rng(1).uniform(size=(16, 16, 16, 1)).astype(np.float32),
           "label": np.arange(16) % 10, "id": np.arange(16)}
  step = train.make_train_step(setup, augment_key)
  device_batch = train.device_batch(setup.mesh, batch)
  hlo = step.lower(state, device_batch).as_text()
  new, metrics = step(state, device_batch)
  return state0, jax.device_get(new), jax.device_get(metrics), hlo


# Two whole train steps compiled (~40 s): the slow tier. The everyday tier checks the policy on
# the model alone (test_models.test_model_from_config: float32 parameters and outputs).
@pytest.mark.slow
def test_bfloat16_step_keeps_float32_state_and_stays_near_the_float32_loss():
  state0, new32, m32, hlo32 = _one_step("float32")
  _, new16, m16, hlo16 = _one_step("bfloat16", state0)
  # The convolutions really run in bfloat16 (and not in the float32 step).
  assert re.search(r"stablehlo.convolution.*bf16", hlo16) and "bf16" not in hlo32
  for tree in (new16.params, new16.batch_stats, new16.opt_state):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if hasattr(x, "dtype") and x.ndim}
    assert dtypes <= {jnp.dtype(jnp.float32)}, dtypes
  assert jnp.dtype(m16["loss"].dtype) == jnp.float32
  # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation): the loss of the
  # same batch from the same parameters agrees to about a percent, not to float32's 1e-6.
  assert np.isfinite(m16["loss"])
  rel = abs(float(m16["loss"]) - float(m32["loss"])) / float(m32["loss"])
  assert rel < 2e-2, (float(m16["loss"]), float(m32["loss"]))
  assert rel > 0          # a bfloat16 step that equalled float32 bitwise would not be one
  assert float(m16["learning_rate"]) > 0 and float(m16["l2_updates"]) > 0
  np.testing.assert_allclose(m16["l2_grads"], m32["l2_grads"], rtol=2e-2)
  # The update points the same way as the float32 one (cosine over all parameters): rounding
  # the activations of this 1/8-width net turns it by some degrees, whereas an unrelated or
  # wrong-signed update would have a cosine near 0 or below.
  d16 = np.concatenate([np.ravel(b - a) for a, b in zip(jax.tree.leaves(state0.params),
                                                          jax.tree.leaves(new16.params))])
  d32 = np.concatenate([np.ravel(b - a) for a, b in zip(jax.tree.leaves(state0.params),
                                                          jax.tree.leaves(new32.params))])
  cosine = float(d16 @ d32 / (np.linalg.norm(d16) * np.linalg.norm(d32)))
  assert cosine > 0.8, cosine


def test_auto_is_bfloat16_on_accelerators_and_float32_on_cpu(monkeypatch, caplog):
  """model.dtype='auto': resolved once at start-up from the backend, written into the config
  (what config.json, the report and an export read) and logged; a model built from an
  unresolved config resolves it the same way."""
  from simclr_jax import startup, validate
  from simclr_jax.models import onednn, simclr
  assert [simclr.auto_dtype(p) for p in ("cpu", "gpu", "tpu")] == [
      "float32", "bfloat16", "bfloat16"]
  c = digits.get_config("tiny")
  c.model.dtype = "auto"
  validate.check_fields(c)                            # a valid value
  # This host (CPU): float32, so the convolutions may take oneDNN's float32 path.
  assert simclr.model_from_config(c.model, 0).dtype == jnp.float32
  with caplog.at_level("INFO"):
    assert startup.resolve_dtype(c, "cpu") == "float32"
  assert c.model.dtype == "float32" and "model.dtype: float32 (auto, backend cpu)" in caplog.text
  # A GPU host (faked as in test_conv.test_an_accelerator_host_builds_nothing).
  monkeypatch.setattr(onednn, "unavailable", lambda: pytest.fail("built off the CPU"))
  monkeypatch.setattr(startup, "cpu_only", lambda: False)
  monkeypatch.setattr(startup, "use_all_cpu_cores", lambda n: None)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  c.model.dtype, c.model.conv_impl = "auto", "auto"
  with caplog.at_level("INFO"):
    assert startup.start(c) == "xla"
  assert c.model.dtype == "bfloat16" and "model.dtype: bfloat16 (auto, backend gpu)" in caplog.text
  assert simclr.model_from_config(c.model, 0).dtype == jnp.bfloat16

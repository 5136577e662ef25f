"""The CPU paths the tool starts (simclr_jax/startup.py): oneDNN's convolutions on one device
per process, else XLA's on emulated devices (up to 8 per core); how many devices each picks,
and that the step each runs is the plain one-device step on XLA's convolutions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import run_python
from simclr_jax import startup


@pytest.mark.parametrize("batch,processes,cores,want", [
    (256, 1, 2, 16),      # 8 per core, 16 examples each
    (512, 1, 2, 16),      # at most 8 per core
    (32, 1, 2, 2),        # 16 examples each: one per core
    (64, 1, 2, 4),
    (100, 1, 2, 5),       # the largest divisor leaving 16 or more each
    (16, 1, 2, 2),        # fewer than 16 each whatever the count: one per core
    (7, 1, 2, 1),         # one per core does not divide 7
    (1, 1, 2, 1),
    (256, 2, 2, 8),       # 128 per process
    (512, 1, 4, 32),
    (None, 1, 2, 2),      # no batch: one per core
    (9, 2, 2, 2),         # the processes do not divide the batch: one per core, the check says
])
def test_cpu_device_count(batch, processes, cores, want):
  assert startup.cpu_device_count(batch, processes, cores) == want


# One train step of the tiny digits config (16x16, ResNet-18 at width 1/8, LARS, batch 64),
# from the seed's state, in a child process started the way `simclr-jax pretrain` starts
# (`startup.start`, or the device count of argv[2]) with model.conv_impl argv[3]; writes the
# metrics, the parameters before and after the step, the device count and the convolution.
_CHILD = r"""
import json, sys
import numpy as np
from simclr_jax.configs import digits
from simclr_jax import startup
c = digits.get_config("tiny")
c.data.image_size = 16
c.train.batch_size = 64
c.train.num_devices = int(sys.argv[2])
c.model.conv_impl = sys.argv[3]
startup.start(c)
import jax
from simclr_jax import train
from simclr_jax import state as state_lib
setup = state_lib.build(c, 1437)
init_rng, augment_key = state_lib.run_keys(0)
state0 = state_lib.init_state(setup, init_rng)
rng = np.random.default_rng(1)
batch = {"image": rng.uniform(size=(64, 16, 16, 1)).astype(np.float32),
         "label": np.arange(64) % 10, "id": np.arange(64)}
step = train.make_train_step(setup, augment_key)
device_batch = train.device_batch(setup.mesh, batch)
before = jax.device_get(state0.params)
new, metrics = step(state0, device_batch)
leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(jax.device_get(t))]
np.savez(sys.argv[1], *leaves(before), *leaves(new.params))
print("METRICS " + json.dumps({k: float(v) for k, v in jax.device_get(metrics).items()}
                               | {"devices": int(setup.mesh.devices.size),
                                  "conv": c.model.conv_impl}))
"""


@pytest.mark.parametrize("conv,want_devices", [("auto", 1), ("xla", startup.cpu_device_count(64))])
@pytest.mark.slow
def test_the_default_cpu_path_computes_the_one_device_step(tmp_path, conv, want_devices):
  """The default start ('auto': oneDNN's convolutions, one device) and the start on XLA's
  convolutions (the batch of 64 split over 4 emulated devices on a 2-core host, BatchNorm
  statistics and NT-Xent negatives from all of them): each one's step from the seed's state
  equals the plain step on one device with XLA's convolutions: the same loss, gradient norm
  and update, up to summation order."""
  out = {}
  for name, devices, impl in (("default", 0, conv), ("one", 1, "xla")):
    proc = run_python(["-c", _CHILD, str(tmp_path / f"{name}.npz"), str(devices), impl])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith("METRICS ")]
    out[name] = json.loads(line[len("METRICS "):])
    with np.load(tmp_path / f"{name}.npz") as z:
      arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    out[name]["before"], out[name]["after"] = arrays[:len(arrays) // 2], arrays[len(arrays) // 2:]
  ours, one = out["default"], out["one"]
  assert (one["devices"], one["conv"]) == (1, "xla")
  assert (ours["devices"], ours["conv"]) == (want_devices, "onednn" if conv == "auto" else "xla")
  for k in ("loss", "contrastive_accuracy", "l2_grads", "l2_updates"):
    np.testing.assert_allclose(ours[k], one[k], rtol=1e-4, err_msg=k)
  for p0, q0 in zip(one["before"], ours["before"]):
    np.testing.assert_array_equal(p0, q0)                  # the same starting state
  for a, b, p in zip(ours["after"], one["after"], one["before"]):
    update = np.linalg.norm(b - p)
    assert np.linalg.norm(a - b) <= 1e-3 * update + 1e-6, (np.linalg.norm(a - b), update)

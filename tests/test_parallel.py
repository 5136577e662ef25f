"""Data parallelism: N devices, and N processes, compute what one device computes.

* The full train step (real augmentations, tiny ResNet-18 with BatchNorm, online head, LARS)
  on a mesh of 8 emulated devices against a mesh of 1, same state and global batch, in
  float64: loss, metrics, the gradients themselves, params / batch_stats / optimizer state
  after the update agree to 1e-9 (measured: 2e-14). A per-device loss (no all_gather) and
  per-device BatchNorm fail the same comparison. In float32, the precision of real runs, the
  forward values agree within the measured spread of two equivalent 1-device computations
  (gradients are not continuous in float32: docs/numerics.md).
* 2 processes x 2 devices (jax.distributed on 127.0.0.1, simclr-jax pretrain) train 3 steps,
  checkpointing each; a second 2-process invocation resumes from their checkpoint to step 4.
  Every logged step and every checkpoint is compared with the same step on 1 device from the
  same state, and the free-running losses with the uninterrupted 1-device run.
* Multi-host start settings, and the batch-size check before anything compiles.

Compile time dominates: every step function is compiled once (at -O0). The 2-process run and
the two bugs' steps are in the slow tier.
"""

import dataclasses
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from simclr_jax import distributed, losses, parallel, train
from simclr_jax import state as state_lib
from simclr_jax.configs import digits
from simclr_jax.data import pipeline, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_DEV = 8
BATCH = 16   # global: 2 images (4 views) per device on 8 devices
RTOL = 1e-5
# The run every comparison uses, in-process and on the command line of the 2-process run.
OVERRIDES = {
    "data.image_size": 16,
    "train.batch_size": BATCH,
    "model.hidden_mlp": 24,         # no dot of the step but the logits is [4, 32]
    "model.online_head": True,      # its loss and accuracy are psum-ed over devices too
    "model.online_dropout": 0.0,    # dropout masks are drawn per device: not invariant
    "optim.warmup_epochs": 0.0,     # a real LARS update from the first step, and an lr that
    "optim.schedule": "constant",   # does not depend on train.steps (3, then resumed to 4)
    "train.checkpoint_every": 1,    # every step of the 2-process run is checked from its state
}
REF_STEPS = 4
# XLA:CPU's LLVM -O2 is half of the step's compile time; -O0 changes no HLO pass: shardings,
# collectives and the math are the same. Used in-process and by the worker processes.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# s per invocation; then every process of it is killed: a process whose jax.distributed peer
# never arrives aborts only after the coordinator's own, much longer, timeout.
WORKER_TIMEOUT = 300


def _config(num_devices: int = 0, steps: int = 3):
  c = digits.get_config("tiny")
  for key, value in OVERRIDES.items():
    group, field = key.split(".")
    c[group][field] = value
  c.train.num_devices = num_devices
  c.train.steps = steps
  return c


# ------------------------------------------------------------------- 2 processes, started first


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _Processes:
  """`simclr-jax pretrain` in N processes x D emulated CPU devices, one coordinator."""

  def __init__(self, workdir, steps, num_processes=2, devices=2, via="flags"):
    self.workdir, self.procs, self.logs = workdir, [], []
    # Process 0 of the first invocation fills a compilation cache, the resumed one reads it
    # (~20 s of CPU less). Results cannot depend on it: both are checked against 1 device.
    cache = os.path.join(os.path.dirname(workdir), "jax_cache")
    port = _free_port()
    for pid in range(num_processes):
      env = {k: v for k, v in os.environ.items()
             if not k.startswith(("JAX_", "XLA_", "TF_CPP"))}
      env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", JAX_COMPILATION_CACHE_DIR=cache,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", XLA_FLAGS=(
          f"--xla_force_host_platform_device_count={devices} "
          f"--xla_backend_optimization_level={FAST_COMPILE['xla_backend_optimization_level']}"))
      cmd = [sys.executable, "-m", "simclr_jax", "pretrain", "--config=digits:tiny",
             f"--workdir={workdir}", f"--config.train.steps={steps}"]
      cmd += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
      if via == "flags":    # both ways of configuring a multi-host start are exercised
        cmd += [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                f"--config.distributed.num_processes={num_processes}",
                f"--config.distributed.process_id={pid}"]
      else:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(pid))
      log = f"{workdir}.steps{steps}.process{pid}.log"
      with open(log, "w") as f:
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f,
                                           stderr=subprocess.STDOUT))
      self.logs.append(log)
    self.deadline = time.monotonic() + WORKER_TIMEOUT

  def wait(self) -> list[int]:
    """Return codes; kills everything on timeout, and the peers of a process that failed (a
    process whose peer is gone would otherwise wait for jax.distributed's own timeout)."""
    while any(p.poll() is None for p in self.procs):
      failed = any(p.poll() not in (None, 0) for p in self.procs)
      if failed or time.monotonic() > self.deadline:
        self.kill()
        pytest.fail(("a process failed" if failed else f"timeout after {WORKER_TIMEOUT} s")
                    + self.tails())
      time.sleep(0.2)
    return [p.returncode for p in self.procs]

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def tails(self, n=3000) -> str:
    out = []
    for log in self.logs:
      with open(log) as f:
        out.append(f"\n--- {log} ---\n" + f.read()[-n:])
    return "".join(out)

  def read_logs(self) -> list[str]:
    out = []
    for log in self.logs:
      with open(log) as f:
        out.append(f.read())
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  run = _Processes(str(tmp_path_factory.mktemp("two_processes") / "run"), steps=3)
  yield run
  run.kill()


# ------------------------------------------------------------------------- in-process steps


def _keep_grads() -> optax.GradientTransformation:
  """Identity transformation whose state is the last gradient: makes grads inspectable."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda updates, state, params=None: (updates, updates))


class _PerDeviceBatchNorm:
  """The model with BatchNorm statistics of each device's own batch (running averages then
  pmean-ed, as per-replica BN implementations do): the bug global BN prevents."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, x, **kwargs):
    out, new_vars = self.model.apply(variables, x, **kwargs)
    return out, jax.lax.pmean(new_vars, parallel.DATA)


_nt_xent = losses.nt_xent


def _local_negatives_only(z1, z2, temperature, axis_name=None):
  """NT-Xent without the all_gather: negatives from this device only, mean over devices."""
  loss, metrics = _nt_xent(z1, z2, temperature)
  return jax.lax.pmean((loss, metrics), axis_name)


def _run_step(setup, state0, batch, augment_key, model=None, patch_loss=False):
  """One train step of `setup` (its model replaced by `model`, its loss by the no-all_gather
  bug when `patch_loss`) from `state0` on `batch`, compiled at -O0."""
  t0, c0 = time.perf_counter(), time.process_time()
  if model is not None:
    setup = dataclasses.replace(setup, model=model)
  with pytest.MonkeyPatch.context() as mp:
    if patch_loss:
      mp.setattr(losses, "nt_xent", _local_negatives_only)
    step = train.make_train_step(setup, augment_key)
    state = jax.device_put(state0, parallel.replicated(setup.mesh))  # fresh: step donates it
    device_batch = train.device_batch(setup.mesh, batch)
    compiled = step.lower(state, device_batch).compile(compiler_options=FAST_COMPILE)
  new_state, metrics = compiled(state, device_batch)
  print(f"compiled and ran a {setup.mesh.devices.size}-device step in "
        f"{time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)")
  return dict(state=jax.device_get(new_state), metrics=jax.device_get(metrics),
              hlo=compiled.as_text(), compiled=compiled, mesh=setup.mesh)


def _rerun(run, state0, batch):
  """`run`'s compiled step again, from `state0` on `batch`."""
  state = jax.device_put(state0, parallel.replicated(run["mesh"]))
  new_state, metrics = run["compiled"](state, train.device_batch(run["mesh"], batch))
  return dict(state=jax.device_get(new_state), metrics=jax.device_get(metrics))


def _permuted(batch):
  """The batch's rows permuted (as the 2-process run interleaves them); images, labels and ids
  together, so each sample keeps its augmentation (its keys follow its id)."""
  perm = np.random.default_rng(0).permutation(BATCH)
  return {k: v[perm] for k, v in batch.items()}


@pytest.fixture(scope="module")
def setups():
  """The runs' common ground: 1- and 8-device setups sharing one tx that keeps the gradient in
  the optimizer state, the initial state (float32), the batches and the augmentation key."""
  config = _config(1)
  source = sources.make_source(config.data, config.data.train_split)
  data = iter(pipeline.pretrain_dataset(source, global_batch_size=BATCH, seed=config.seed,
                                        prefetch=0))
  batches = [next(data) for _ in range(REF_STEPS)]
  init_rng, augment_key = state_lib.run_keys(config.seed)
  setups = {n: state_lib.build(_config(n), len(source)) for n in (1, N_DEV)}
  # One tx object for every run, keeping the gradient in the optimizer state.
  tx = optax.chain(_keep_grads(), setups[1].tx)
  setups = {n: dataclasses.replace(s, tx=tx) for n, s in setups.items()}
  t0, c0 = time.perf_counter(), time.process_time()
  state0 = jax.device_get(state_lib.init_state(setups[1], init_rng))
  print(f"\ninit_state in {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)")
  return dict(setups=setups, tx=tx, state0=state0, batches=batches, augment_key=augment_key)


@pytest.fixture(scope="module")
def steps64(setups):
  """The identity, where rounding cannot reach: one update in float64 (parameters, optimizer
  state and every computation of the network, loss and update) from the same state and global
  batch on 1 device, 8 devices, and 8 devices with the rows permuted (the bugs: `bugs64`).

  float64 rounds at ~1e-16, nine orders of magnitude below the ReLU inputs nearest to 0 in this
  step (~1e-7, see test_eight_devices_equal_one_device_in_float32), so no ReLU takes another
  side between the programs and the gradients are as continuous as the loss: 1 and 8 devices
  agree to 2e-14 (the view pixels, made in float32 by the per-sample augmentation, are the
  same numbers on any device count), and a missing all_gather or per-device BatchNorm is off
  by >1e-3.
  """
  with jax.enable_x64(True):
    tx, batch, key = setups["tx"], setups["batches"][0], setups["augment_key"]
    f64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
    by_n = {}
    for n, setup in setups["setups"].items():
      by_n[n] = dataclasses.replace(setup, model=setup.model.clone(dtype=jnp.float64))
    s0 = setups["state0"]
    state0 = jax.device_get(state_lib.TrainState.create(
        apply_fn=by_n[1].model.apply, params=f64(s0.params), batch_stats=f64(s0.batch_stats),
        tx=tx).replace(step=jnp.zeros((), jnp.int32)))
    assert all(x.dtype == np.float64 for x in jax.tree.leaves(state0.opt_state)
               if np.issubdtype(x.dtype, np.floating))
    out = {"state0": state0, "tx": tx, "one": _run_step(by_n[1], state0, batch, key),
           "eight": _run_step(by_n[N_DEV], state0, batch, key)}
    out["eight_permuted"] = _rerun(out["eight"], state0, _permuted(batch))
  out.update(by_n=by_n, batch=batch, key=key)
  return out


@pytest.fixture(scope="module")
def bugs64(steps64):
  """The two per-device bugs the float64 comparison must catch, each one update from the same
  state and batch on 8 devices: the loss without the all_gather (negatives from the device's
  own rows), and BatchNorm with each device's own statistics."""
  by_n, state0, batch, key = (steps64[k] for k in ("by_n", "state0", "batch", "key"))
  with jax.enable_x64(True):
    per_device_bn = by_n[N_DEV].model.clone(bn_axis_name=None)
    return {"no_gather": _run_step(by_n[N_DEV], state0, batch, key, patch_loss=True),
            "per_device_bn": _run_step(by_n[N_DEV], state0, batch, key,
                                       model=_PerDeviceBatchNorm(per_device_bn))}


@pytest.fixture(scope="module")
def steps(setups):
  """float32, the precision runs use: one update on 1 device, on 8 devices, and on 1 device with
  the rows permuted (an equivalent computation: its spread from the first is float32 rounding
  on this machine); and the 1-device run continued to REF_STEPS steps (the reference of the
  2-process run: same config, seed, data order and keys as simclr-jax pretrain)."""
  state0, batches, key = setups["state0"], setups["batches"], setups["augment_key"]
  out = {"state0": state0, "tx": setups["tx"], "batches": batches,
         "one": _run_step(setups["setups"][1], state0, batches[0], key),
         "eight": _run_step(setups["setups"][N_DEV], state0, batches[0], key)}
  out["one_permuted"] = _rerun(out["one"], state0, _permuted(batches[0]))

  # The 1-device trajectory.
  one = out["one"]
  trajectory = [dict(step=1, metrics=one["metrics"], state=one["state"])]
  state = jax.device_put(one["state"], parallel.replicated(one["mesh"]))
  for i, batch in enumerate(batches[1:], start=2):
    state, metrics = one["compiled"](state, train.device_batch(one["mesh"], batch))
    trajectory.append(dict(step=i, metrics=jax.device_get(metrics),
                           state=jax.device_get(state)))
  out["trajectory"] = trajectory
  return out


# ---------------------------------------------------------------------------- comparisons


def _leaf_scales(tree):
  """Each leaf's L2 norm, floored at 1% of the largest (see _assert_tree_close)."""
  norms = [float(np.linalg.norm(np.ravel(y))) for y in jax.tree.leaves(tree)]
  return [max(n, 1e-2 * max(norms)) for n in norms]


def _differences(a, b):
  """Per leaf of b: (max |a - b|, max |a - b| / the leaf's scale)."""
  out = {}
  for ((path, x), y), scale in zip(zip(jax.tree_util.tree_leaves_with_path(a),
                                       jax.tree.leaves(b)), _leaf_scales(b)):
    d = float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
    out[jax.tree_util.keystr(path)] = (d, d / max(scale, 1e-30))
  return out


def _assert_tree_close(a, b, what, rtol=RTOL):
  """Every entry within RTOL of itself or of its leaf's L2 norm.

  Summing in another order (per-device partial sums, then psum) moves an entry by ~1e-6 of
  the largest terms it is summed from, so entries near zero have no meaningful relative error.
  Leaves that are zero in exact arithmetic (the gradient of a bias right before BatchNorm)
  hold pure rounding noise: their scale is floored at 1% of the tree's largest leaf norm.
  """
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for ((path, x), y), scale in zip(zip(jax.tree_util.tree_leaves_with_path(a),
                                       jax.tree.leaves(b)), _leaf_scales(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * scale,
                               err_msg=f"{what}{jax.tree_util.keystr(path)}")


def _compare(run, ref, rtol):
  """Everything one update produces: `run` against `ref` (1 device)."""
  for k, v in ref["metrics"].items():
    np.testing.assert_allclose(run["metrics"][k], v, rtol=rtol, atol=rtol, err_msg=k)
  s, r = run["state"], ref["state"]
  assert int(s.step) == int(r.step) == 1
  _assert_tree_close(s.opt_state[0], r.opt_state[0], "grads", rtol)
  _assert_tree_close(s.params, r.params, "params", rtol)
  _assert_tree_close(s.batch_stats, r.batch_stats, "batch_stats", rtol)
  _assert_tree_close(s.opt_state[1], r.opt_state[1], "opt_state", rtol)


def _report(name, run, ref):
  s, r = run["state"], ref["state"]
  for what, (a, b) in dict(grads=(s.opt_state[0], r.opt_state[0]), params=(s.params, r.params),
                           batch_stats=(s.batch_stats, r.batch_stats),
                           opt_state=(s.opt_state[1], r.opt_state[1])).items():
    d = _differences(a, b)
    worst = max(d, key=lambda k: d[k][1])
    print(f"{name} vs 1 device, {what}: max |diff| {max(v[0] for v in d.values()):.3g}; "
          f"max |diff| / leaf norm {d[worst][1]:.3g} ({worst})")


# float64: 1 and 8 devices measured 2e-14 apart (of a leaf norm); each bug is off by > 0.4.
RTOL64 = 1e-9


def test_eight_devices_equal_one_device_in_float64(steps64):
  one, eight = steps64["one"], steps64["eight"]
  assert one["mesh"].devices.size == 1 and eight["mesh"].devices.size == N_DEV
  assert all(x.dtype == np.float64 for x in jax.tree.leaves(one["state"].params))
  m = one["metrics"]
  assert m["loss"].dtype == np.float64
  # Not vacuous: a real update that moves every parameter, metrics strictly inside (0, 1).
  assert m["learning_rate"] > 0 and m["l2_updates"] > 0 and np.isfinite(m["loss"])
  assert 0 < m["contrastive_accuracy"] < 1 and 0 <= m["online_accuracy"] < 1
  moved = _differences(one["state"].params, steps64["state0"].params)
  assert min(d for d, _ in moved.values()) > 0, "every parameter changes in the update"
  print()
  for k in sorted(m):
    print(f"metric {k}: 1 device {float(m[k]):.12g}, 8 devices {float(eight['metrics'][k]):.12g}")
  _report("8 devices (float64)", eight, one)
  _compare(eight, one, RTOL64)


def test_step_applies_exactly_one_optimizer_update(steps64):
  """The step's new parameters are one optax update of the old ones with the step's own
  gradient (kept by _keep_grads), computed here outside the step: not zero, not twice."""
  state0, new = steps64["state0"], steps64["one"]["state"]
  grads = new.opt_state[0]
  with jax.enable_x64(True):
    updates, opt_state = jax.jit(steps64["tx"].update)(grads, state0.opt_state, state0.params)
    want = optax.apply_updates(state0.params, updates)
  assert int(new.step) == int(state0.step) + 1 == 1
  _assert_update_close(new.params, want, state0.params, "update", RTOL64)
  _assert_tree_close(new.opt_state[1], opt_state[1], "opt_state", RTOL64)


def test_permuted_rows_equal_one_device(steps64):
  """Which device and row a sample lands on does not matter: its augmentation follows its id."""
  _compare(steps64["eight_permuted"], steps64["one"], RTOL64)


@pytest.mark.slow      # two more compiled steps: the comparison's power, not the step's behaviour
@pytest.mark.parametrize("bug", ["no_gather", "per_device_bn"])
def test_per_device_bugs_fail_the_comparison(steps64, bugs64, bug):
  run, one = bugs64[bug], steps64["one"]
  with pytest.raises(AssertionError):
    _compare(run, one, RTOL64)
  # Not a float-noise failure: the loss itself is clearly off.
  rel = abs(float(run["metrics"]["loss"]) / float(one["metrics"]["loss"]) - 1)
  print(f"\n{bug}: loss {float(run['metrics']['loss']):.6f} vs "
        f"{float(one['metrics']['loss']):.6f} on 1 device")
  _report(bug, run, one)
  assert rel > 1e-3, rel


# The forward pass's values: continuous functions of the parameters and the views.
FORWARD_F32 = ("loss", "contrastive_loss", "contrastive_entropy", "online_loss")


def _within_spread(run, ref, other, what):
  """|run - ref| <= 4 x |other - ref| + 16 float32 ulps of the leaf's largest entry, per leaf:
  `other` is a computation equivalent to `ref` (same math, other summation order), so their
  spread is this machine's float32 rounding of the quantity."""
  for ((path, x), y), z in zip(zip(jax.tree_util.tree_leaves_with_path(run),
                                   jax.tree.leaves(ref)), jax.tree.leaves(other)):
    x, y, z = (np.asarray(a, np.float64) for a in (x, y, z))
    spread = np.abs(z - y).max()
    tol = 4 * spread + 16 * np.finfo(np.float32).eps * np.abs(y).max()
    err = np.abs(x - y).max()
    assert err <= tol, (f"{what}{jax.tree_util.keystr(path)}: |8 devices - 1 device| {err:.3g} > "
                        f"{tol:.3g} (4 x the spread {spread:.3g} of two equivalent 1-device "
                        "computations, + 16 ulps)")


def test_eight_devices_equal_one_device_in_float32(steps):
  """The float32 step on 8 devices within float32 rounding of the 1-device step, the rounding
  measured here, not assumed: the spread between the 1-device step on the batch and on the
  batch with its rows permuted (docs/numerics.md).

  Forward values only (the loss and BatchNorm's statistics): gradients are not continuous.
  One ReLU input of this step sits 6e-7 from zero in float64; float32 BatchNorm statistics
  summed in one order put it on one side, in another order on the other, and the gradient of
  every layer below moves by up to 2 % of its norm (the 1-device step against itself with the
  rows permuted, on a Sapphire Rapids CPU). No tolerance fits that on every machine; the
  gradients' identity is proven in float64 (test_eight_devices_equal_one_device_in_float64).
  """
  one, eight, other = steps["one"], steps["eight"], steps["one_permuted"]
  assert one["mesh"].devices.size == 1 and eight["mesh"].devices.size == N_DEV
  for k in FORWARD_F32:
    _within_spread(eight["metrics"][k], one["metrics"][k], other["metrics"][k], k)
  _within_spread(eight["state"].batch_stats, one["state"].batch_stats,
                 other["state"].batch_stats, "batch_stats")
  print()
  _report("8 devices (float32)", eight, one)
  _report("1 device, rows permuted (float32)", other, one)


def _dot_shapes(hlo_text):
  return set(re.findall(r"= (f32\[\d+,\d+\])\{[^}]*\} dot\(", hlo_text))


def test_compiled_step_logits_are_local_rows_by_global_columns(steps):
  """On the compiled train step: each device's logits are [2n_local, 2N], never [2N, 2N]."""
  local = f"f32[{2 * BATCH // N_DEV},{2 * BATCH}]"
  full = f"f32[{2 * BATCH},{2 * BATCH}]"
  assert local in _dot_shapes(steps["eight"]["hlo"]), _dot_shapes(steps["eight"]["hlo"])
  assert full not in _dot_shapes(steps["eight"]["hlo"])
  assert full in _dot_shapes(steps["one"]["hlo"])   # control: 1 device computes all 2N rows


# --------------------------------------------------------------------------- 2 processes


def _scalars(workdir):
  """{tag: {step: value}} from the TensorBoard event files (logs.Writer writes scalars as tensors)."""
  out = {}
  for f in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    acc = EventAccumulator(f, size_guidance={"tensors": 0})
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
      for ev in acc.Tensors(tag):
        value = tensor_util.make_ndarray(ev.tensor_proto)
        if value.ndim == 0:   # not the images
          out.setdefault(tag, {})[ev.step] = float(value)
  return out


def _restore_state(workdir, step, template):
  """The `state` item of a checkpoint, restored onto one local device whatever wrote it."""
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=one),
                        template)
  with ocp.StandardCheckpointer() as ckpt:
    return jax.device_get(ckpt.restore(
        os.path.join(workdir, "checkpoints", str(step), "state"), target))


def _one_device_step_from_checkpoint(steps, workdir, step):
  """Step `step + 1` computed on 1 device from the 2-process run's checkpoint of `step`."""
  state0, one = steps["state0"], steps["one"]
  restored = _restore_state(workdir, step, state0.replace(opt_state=state0.opt_state[1]))
  assert int(restored.step) == step
  state = restored.replace(opt_state=(state0.opt_state[0], restored.opt_state))  # + grads slot
  new_state, metrics = one["compiled"](jax.device_put(state, parallel.replicated(one["mesh"])),
                                       train.device_batch(one["mesh"], steps["batches"][step]))
  return jax.device_get(metrics), jax.device_get(new_state)


# Gradients are not continuous: a ReLU input within rounding (~1e-6) of 0 takes one side in one
# program and the other side in another. From one and the same state the 1-device step
# compiled at -O0 and at -O2 once gave identical losses but gradients up to 6e-3 of a leaf's
# norm apart (one element of a 4x4 stage-3 feature map switched, and its cotangent reached
# every layer below). So past step 1, what goes through a gradient (gradient and update norms,
# each parameter's update, the momentum) is held to GRAD_RTOL of its own size; forward values
# stay at RTOL. A missing psum, a wrong batch, or a skipped or repeated update is off by far
# more: a skipped update by 100 % of the update, a wrong batch by ~1e-2 of the loss.
GRAD_RTOL = 1e-2
FORWARD = ("loss", "contrastive_loss", "contrastive_accuracy", "contrastive_entropy",
           "online_loss", "online_accuracy", "learning_rate", "l2_params")


def _delta(new, old):
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                      new, old)


def _assert_update_close(run, ref, before, what, rtol):
  """Parameters `run` and `ref`, both one update away from `before`: equal within `rtol` of
  each leaf's update norm (floored as in _assert_tree_close), plus 4 float32 ulps of the
  parameter, the rounding of storing `before + update` in float32."""
  scales = _leaf_scales(_delta(ref, before))
  for ((path, x), y), scale in zip(zip(jax.tree_util.tree_leaves_with_path(run),
                                       jax.tree.leaves(ref)), scales):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    err = np.abs(x.astype(np.float64) - y)
    tol = rtol * scale + 4 * np.spacing(np.abs(y)).astype(np.float64)
    worst = float((err / tol).max())
    assert worst <= 1.0, (f"{what}{jax.tree_util.keystr(path)}: |run - ref| up to {worst:.3g}x "
                          f"the tolerance ({rtol:g} of the update's norm {scale:.3g})")


def _check_steps(steps, workdir, checked):
  """Each step of the 2-process run against the same step on 1 device from the same state:
  step 1 from the common initial state, step s > 1 from the run's own checkpoint of s - 1;
  forward values at RTOL, what goes through a gradient at GRAD_RTOL (the identity of the
  gradients is proven in float64, test_eight_devices_equal_one_device_in_float64).

  Restarting the 1-device computation from the run's state at every step, rather than
  comparing two free-running trajectories, keeps rounding from compounding: a tiny net at a
  large learning rate amplifies a 1e-7 difference to 1e-2 of the loss within four steps, by
  an amount that depends on the CPU's kernels. Chained from the common initial state, these
  checks cover the whole trajectory.
  """
  events = _scalars(workdir)
  template = steps["state0"].replace(opt_state=steps["state0"].opt_state[1])
  for s in checked:
    if s == 1:
      metrics, state = steps["one"]["metrics"], steps["one"]["state"]
      before = template
    else:
      metrics, state = _one_device_step_from_checkpoint(steps, workdir, s - 1)
      before = _restore_state(workdir, s - 1, template)
    metrics = {k: v for k, v in metrics.items() if k != "finite"}   # read by the loop, not logged
    rel = {k: abs(events[k][s] / float(v) - 1) if float(v) else abs(events[k][s])
           for k, v in metrics.items()}
    worst = max((k for k in rel if k in FORWARD), key=rel.get)
    print(f"\nstep {s} of 2 processes vs 1 device from the same state: {worst} {rel[worst]:.2g}"
          f" (largest of the forward values), l2_grads {rel['l2_grads']:.2g}", end="")
    for tag, value in metrics.items():
      rtol = RTOL if tag in FORWARD else GRAD_RTOL
      np.testing.assert_allclose(events[tag][s], value, rtol=rtol, atol=1e-7,
                                 err_msg=f"{tag} at step {s}")
    written = _restore_state(workdir, s, template)
    assert int(written.step) == s
    _assert_tree_close(written.batch_stats, state.batch_stats, f"batch_stats@{s}")
    # The update itself, not the parameters: an update is ~1e-3 of a parameter's size, so a
    # skipped or doubled one would hide inside GRAD_RTOL of the parameters.
    _assert_update_close(written.params, state.params, before.params, f"update@{s}",
                         rtol=GRAD_RTOL)
    _assert_tree_close(written.opt_state, state.opt_state[1], f"opt_state@{s}",
                       rtol=GRAD_RTOL)
  return events


@pytest.mark.slow
def test_two_processes_train_like_one_device_and_resume(two_processes, steps):
  workdir, ref = two_processes.workdir, steps["trajectory"]
  assert two_processes.wait() == [0, 0], two_processes.tails()
  for pid, log in enumerate(two_processes.read_logs()):
    assert f"process {pid} of 2; 2 local devices, 4 in all" in log, log[-3000:]
  assert len(glob.glob(os.path.join(workdir, "events.out.tfevents*"))) == 1  # process 0 only
  events = _check_steps(steps, workdir, [1, 2, 3])
  assert set(events["loss"]) == {1, 2, 3}
  # Each process saved its own data-iterator position into the same checkpoint.
  for pid in range(2):
    with open(os.path.join(workdir, "checkpoints", "3", "data_iter",
                           f"process_{pid}-of-2.json")) as f:
      assert json.load(f)["next_index"] == 3

  # The same workdir again, 2 processes configured through JAX_* variables: resumes at 3.
  resumed = _Processes(workdir, steps=REF_STEPS, via="env")
  try:
    assert resumed.wait() == [0, 0], resumed.tails()
  finally:
    resumed.kill()
  for log in resumed.read_logs():
    assert "Resuming from" in log and "at step 3" in log, log[-3000:]
  events = _check_steps(steps, workdir, [4])
  assert set(events["loss"]) == {1, 2, 3, 4}
  # For the reader only (see _check_steps): the free-running 1-device losses drift from these
  # by an amount that depends on the CPU, so they are printed, not compared.
  print("\n2 processes x 2 devices, loss by step (1 device, free-running from step 1):")
  for s in (1, 2, 3, 4):
    print(f"  {s}: {events['loss'][s]:.7f} ({float(ref[s - 1]['metrics']['loss']):.7f})")


# ----------------------------------------------------------------- start-up and refusals


def test_batch_not_divisible_is_refused_before_compiling(tmp_path):
  compiles = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)

  c = _config(0, steps=1)
  c.train.batch_size = 12
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with pytest.raises(ValueError, match=r"batch_size=12 .* number of devices \(8\)"):
      train.pretrain(c, str(tmp_path))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []


def _cfg(**distributed):
  c = _config()
  for k, v in distributed.items():
    c.distributed[k] = v
  return c


def test_distributed_settings_from_config_then_environment():
  assert distributed.distributed_settings(_cfg(), environ={}) == {}
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "2", "JAX_LOCAL_DEVICE_IDS": "0,1"}
  assert distributed.distributed_settings(_cfg(), environ=env) == dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2,
      local_device_ids=[0, 1])
  # A field set in the config wins over its variable; the others still come from the variables.
  got = distributed.distributed_settings(
      _cfg(coordinator_address="host0:9999", process_id=0, local_device_ids=(3,)), environ=env)
  assert got == dict(coordinator_address="host0:9999", num_processes=4, process_id=0,
                     local_device_ids=[3])


def test_single_host_and_single_task_clusters_start_nothing(monkeypatch):
  for var in list(os.environ):
    if var.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_",
                       "OMPI_", "TPU_", "MEGASCALE_", "KUBERNETES_")):
      monkeypatch.delenv(var)
  assert distributed.detect_cluster() is None
  assert distributed.initialize_distributed(_cfg()) is False
  assert distributed.initialize_distributed(_cfg(local_device_ids=(0,))) is False  # ids alone
  # `sbatch` without srun: a SLURM environment with one task is not a multi-host run.
  for var, value in dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node1", SLURM_NTASKS="1",
                         SLURM_PROCID="0", SLURM_LOCALID="0").items():
    monkeypatch.setenv(var, value)
  assert distributed.detect_cluster() is not None
  assert distributed.initialize_distributed(_cfg()) is False
  assert not jax.distributed.is_initialized()


def test_incomplete_explicit_settings_are_refused(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
              "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(ValueError, match=r"distributed.num_processes .* distributed.process_id"):
    distributed.initialize_distributed(_cfg(coordinator_address="127.0.0.1:1"))
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  with pytest.raises(ValueError, match=r"distributed.coordinator_address \(or JAX_COORDINATOR_"):
    distributed.initialize_distributed(_cfg(num_processes=2))
  assert not jax.distributed.is_initialized()

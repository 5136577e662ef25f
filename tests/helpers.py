"""Helpers shared by the test modules: TensorBoard event readers and the subprocess harness."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scalars(workdir: str) -> dict:
  """{tag: {step: value}} from a workdir's event files.

  Scalars are 0-d tensors (read with Tensors, not Scalars; logs.Writer); images (augment/views)
  come back as their encoded strings.
  """
  # Imported here: scripts that tests run as children import this module too, and need not
  # pay for tensorboard.
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tensorboard.util import tensor_util

  files = glob.glob(os.path.join(workdir, "events.out.tfevents*"))
  assert files, f"no event files in {workdir}"
  out = {}
  for f in files:
    acc = EventAccumulator(f, size_guidance={"tensors": 0})
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
      for ev in acc.Tensors(tag):
        value = tensor_util.make_ndarray(ev.tensor_proto)
        out.setdefault(tag, {})[ev.step] = float(value) if value.ndim == 0 else value
  return out


class SimulatedCrash(RuntimeError):
  """A run stopped by `save_then_crash`."""


def save_then_crash(at_step: int):
  """A stand-in for simclr_jax.checkpoint.save (monkeypatch it in) that saves as usual and, at
  `at_step`, waits for that save and raises SimulatedCrash: a run killed right after its
  checkpoint, in this process."""
  from simclr_jax import checkpoint
  real_save = checkpoint.save

  def save(manager, step, *args, **kwargs):
    saved = real_save(manager, step, *args, **kwargs)
    if step == at_step:
      manager.wait_until_finished()
      raise SimulatedCrash(f"killed after step {step}")
    return saved
  return save


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(**extra) -> dict:
  """The environment of a child Python: this checkout first on PYTHONPATH, CPU only, none of
  this process's JAX_* / XLA_* settings (the 8 emulated test devices stay here) but the test
  session's compilation cache; `extra` on top, where None removes a variable."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  if os.environ.get("SIMCLR_JAX_TEST_XLA_CACHE"):
    env["JAX_COMPILATION_CACHE_DIR"] = os.environ["SIMCLR_JAX_TEST_XLA_CACHE"]
  env.update(extra)
  return {k: v for k, v in env.items() if v is not None}


def run_python(args, timeout: float = 600, **env) -> subprocess.CompletedProcess:
  """`python *args` in ROOT with `child_env(**env)`; output captured as text.

  A timeout (subprocess.TimeoutExpired) fails the test instead of hanging it: a worker whose
  peer never arrives would otherwise wait for jax.distributed's own, much longer timeout.
  """
  return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=child_env(**env),
                        capture_output=True, text=True, timeout=timeout)


def command(name: str):
  """simclr_jax/cli/<name>.py, for its `run_cli(argv)`: the command's own entry point, in this
  process (its absl flags are defined at the first import, once per test process)."""
  import importlib
  return importlib.import_module(f"simclr_jax.cli.{name}")


def pretrain_cli(capsys, workdir, *overrides):
  """`simclr-jax pretrain --config digits:tiny --workdir WORKDIR OVERRIDES` in this process:
  (exit code, its `error: ` lines, all of stderr)."""
  code = command("pretrain").run_cli(["simclr-jax pretrain", "--config", "digits:tiny",
                                      "--workdir", str(workdir), *overrides])
  err = capsys.readouterr().err
  return code, [line for line in err.splitlines() if line.startswith("error: ")], err


def hparams(workdir: str) -> dict:
  """{name: value} of the HParams tab's session start info in a workdir's event files."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tensorboard.plugins.hparams import plugin_data_pb2

  out = {}
  for f in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    acc = EventAccumulator(f)
    acc.Reload()
    try:
      contents = acc.PluginTagToContent("hparams").values()
    except KeyError:                 # a file without hparams (a resumed run's later file)
      continue
    for content in contents:
      info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
      for name, value in info.hparams.items():
        out[name] = getattr(value, value.WhichOneof("kind"))
  return out


def tiny_run_config(steps: int, evaluate: bool):
  """The digits:tiny config with the online head, on one device (compile time dominates: one
  device is the cheapest); `evaluate`: a kNN evaluation every 2 steps (the best checkpoint)."""
  from simclr_jax.configs import digits
  c = digits.get_config("tiny")
  c.train.steps = steps
  c.train.num_devices = 1
  c.model.online_head = True
  if evaluate:
    c.eval.every_epochs = 2 / (1437 // c.train.batch_size)
    c.eval.knn_bank_size = 256
  return c


def random_weight(rng, path, leaf):
  """A draw for one leaf of a ResNet's variables (jax.tree_util.tree_map_with_path): kernels
  at He scale, BatchNorm statistics far from (0, 1), at scales that keep the activations of a
  deep ResNet finite and non-trivial (float64; cast as needed)."""
  import numpy as np
  name, shape = path[-1].key, leaf.shape
  if name == "kernel":
    return rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
  if name in ("scale", "var"):
    return rng.uniform(0.5, 1.5, shape)
  return rng.normal(0, 0.3, shape)         # bias, mean

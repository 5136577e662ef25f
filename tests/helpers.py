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

  clu writes scalars as 0-d tensors (read with Tensors, not Scalars); images (augment/views)
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


def script(name: str):
  """scripts/<name>.py imported once per test process (its absl flags can be defined once),
  for its `run_cli(argv)`: the script's own entry point, in this process."""
  import importlib.util
  key = f"{name}_script"
  if key not in sys.modules:
    if os.path.join(ROOT, "scripts") not in sys.path:
      sys.path.insert(0, os.path.join(ROOT, "scripts"))     # the scripts import workdir_flags
    spec = importlib.util.spec_from_file_location(key, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]


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

"""Test setup: 8 emulated CPU devices, set before the first JAX operation (device
count flags are read once, when the CPU backend starts), through the tool's own start-up
functions (simclr_jax/startup.py)."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The oneDNN convolution handlers, built once for the session (and its child processes, which
# inherit the variable) instead of under the user's ~/.cache.
os.environ.setdefault("SIMCLR_JAX_ONEDNN_BUILD_DIR",
                      tempfile.mkdtemp(prefix="simclr_jax_onednn_build_"))
# One persistent compilation cache for the session, in-process and in the child processes
# (tests/helpers.child_env): many tests compile the same tiny programs, and the tool would
# otherwise write theirs under the user's ~/.cache.
XLA_CACHE = os.environ.setdefault("SIMCLR_JAX_TEST_XLA_CACHE",
                                  tempfile.mkdtemp(prefix="simclr_jax_xla_cache_"))

from simclr_jax import startup  # noqa: E402

startup.use_all_cpu_cores(8)            # a device count the user's XLA_FLAGS gives wins
startup.use_compilation_cache(XLA_CACHE)

# The convolution path is not decided here: a test's config ('auto' by default) is resolved
# where the tool resolves it (startup.resolve_conv) or, built directly, by the model through
# the same function (models/onednn.resolve_conv_impl).


import pytest  # noqa: E402


# --- Two workers for the everyday tier (pytest-xdist; `-n auto --dist loadfile` in pyproject) --

def pytest_xdist_auto_num_workers(config):
  """Two workers (each test file on one, with its module fixtures) for a run that leaves out
  the slow tier (`-m "not slow"`): its tests compile and run in process, mostly on one core
  each. A run with the slow tier stays in one process: its multi-process runs and kills are
  timed against a machine that is not also running another test."""
  if "not slow" in (config.getoption("markexpr") or ""):
    return min(2, os.cpu_count() or 1)
  return 0


# --- The session's one pretraining run, shared by the tests that read a finished run ----------

@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
  """The workdir of a real (tiny) pretraining run, made once per session for every test that
  reads a finished run (test_report, test_export, test_evaluate, test_finetune, test_validate)
  and for the exact-resume test (test_train): a 3-step run stopped right after its step-2
  checkpoint (kNN evaluation at step 2: checkpoints_best/2), continued to 3 steps by a second
  start that writes the report: two event files, latest checkpoint 3. Both starts run one
  train step program (same steps, same schedule): the second loads it from the session's
  compilation cache. Under pytest-xdist the workers share it: the first to need it makes it
  in the session's folder, under a lock, and the others wait for it.

  Shared: read it only; a test that writes into a workdir (a report, linear_eval.json) copies
  it first (shutil.copytree)."""
  import fcntl
  if os.environ.get("PYTEST_XDIST_WORKER"):        # the workers' basetemps share this parent
    base = tmp_path_factory.getbasetemp().parent / "tiny_run"
  else:
    base = tmp_path_factory.getbasetemp() / "tiny_run"
  base.mkdir(exist_ok=True)
  with open(base / "lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)               # released when the file closes
    if not (base / "made").exists():
      _make_tiny_run(base)
      (base / "made").touch()
  workdir = str(base / "run")
  before = _files(workdir)
  yield workdir
  assert _files(workdir) == before, "a test wrote into the shared tiny_run: copy it first"


def _make_tiny_run(base) -> None:
  import shutil

  from helpers import SimulatedCrash, save_then_crash, tiny_run_config
  from simclr_jax import checkpoint, report, train
  workdir = str(base / "run")
  with pytest.MonkeyPatch.context() as mp:     # session-scoped: monkeypatch's own context
    mp.setattr(checkpoint, "save", save_then_crash(2))
    with pytest.raises(SimulatedCrash):
      train.pretrain(tiny_run_config(3, evaluate=True), workdir)
  shutil.copytree(workdir, base / AFTER_CRASH)       # the workdir as the crash left it
  config = tiny_run_config(3, evaluate=False)
  config.train.report = True          # the end of a run writes the report (tiny configs: off)
  train.pretrain(config, workdir)
  report.write_after_pretraining(config, workdir)     # as `simclr-jax pretrain` does
  assert os.path.exists(os.path.join(workdir, "report.md"))
  for plot in ("loss_curve.png", "embedding_map.png", "neighbours.png"):
    assert os.path.exists(os.path.join(workdir, "plots", plot)), plot


AFTER_CRASH = "after_crash"


@pytest.fixture(scope="session")
def tiny_run_after_crash(tiny_run) -> str:
  """A copy of `tiny_run`'s workdir as the simulated crash after the step-2 checkpoint left it
  (before the second start). Shared: read it only."""
  return os.path.join(os.path.dirname(tiny_run), AFTER_CRASH)


def _files(root: str) -> dict:
  """{relative path: (size, mtime)} of every file under root."""
  out = {}
  for d, _, names in os.walk(root):
    for name in names:
      st = os.stat(os.path.join(d, name))
      out[os.path.relpath(os.path.join(d, name), root)] = (st.st_size, st.st_mtime_ns)
  return out

"""benchmarks/accelerator.py --quick on 8 emulated CPU devices: it runs and writes its JSON and
table (issue 25's done-when; the GPU numbers need a GPU)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator.py")


def _env() -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


@pytest.mark.slow
def test_quick_writes_json_and_table(tmp_path):
  env = _env()
  proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out-dir", str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "accelerator_cpu.json") as f:
    result = json.load(f)
  # An independent count of the devices the same environment gives JAX.
  count = subprocess.run([sys.executable, "-c", "import jax; print(len(jax.devices()))"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
  assert result["host"]["device_count"] == int(count) == 8
  assert result["host"]["platform"] == "cpu" and result["host"]["jax"]

  rows = {(r["recipe"], r["dtype"]): r for r in result["rows"]}
  assert set(rows) == {(r, d) for r in ("cifar10", "sdo", "imagenet")
                       for d in ("float32", "bfloat16")}
  for key, r in rows.items():
    assert "error" not in r, (key, r.get("error"))
    assert r["views_per_s"] > 0 and r["compile_s"] > 0, key
    assert r["compiled_peak_bytes"] > 0 and r["devices"] == 8, key
    assert r["device_peak_bytes"] is None           # the CPU reports no memory stats
    assert r["batch"] == 8 * r["per_device_batch"], key
    assert r["trials"][-1]["per_device_batch"] == r["per_device_batch"], key
    assert r["flops_per_step"] > 0 and 0 < r["peak_share"], key
  # The real recipes' shapes, shrunk only in width and image side.
  assert rows["imagenet", "float32"]["backbone"] == "resnet50"
  assert rows["sdo", "float32"]["input"].endswith("x1")

  # One step on 8 devices against 1, float32: the same loss, up to the order of the sums
  # (all-gathered negatives, psum'd BatchNorm statistics and gradients: ~1e-7 relative), which
  # the backward pass through ~20 layers and LARS's trust ratio amplify by at most a few hundred
  # (measured: update 4e-6). 1e-4 leaves room; a real difference (per-device BatchNorm, negatives
  # from one device) is of order 1e-2 or more.
  e = result["equivalence"]
  assert e["devices"] == 8
  for k in ("loss_rel", "grad_norm_rel", "update_rel", "batch_stats_rel"):
    assert 0 <= e[k] < 1e-4, (k, e[k])

  p = result["pipeline"]
  assert p["jpeg_224_per_core"] > 0 and p["sdo_npz_128_per_core"] > 0
  assert rows["imagenet", "float32"]["host_cores_per_device"] > 0

  table = (tmp_path / "accelerator_cpu.md").read_text()
  for recipe in ("cifar10", "sdo", "imagenet"):
    assert f"| {recipe} | float32 |" in table and f"| {recipe} | bfloat16 |" in table
  assert table.strip() == result["table"].strip()

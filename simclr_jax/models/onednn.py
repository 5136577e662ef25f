"""Convolutions by oneDNN on x86 CPUs: a drop-in for `lax.conv_general_dilated` in flax's Conv.

XLA:CPU runs a ResNet's convolutions, and above all their kernel gradients, far below the
matrix-product speed of the same CPU: it lowers a kernel gradient to a convolution over
transposed activations, with layout copies around it. oneDNN (Intel's library under PyTorch's
CPU convolutions) has JIT kernels for all three: forward, input gradient and kernel gradient,
on NHWC activations directly. `conv_general_dilated` below calls them through XLA's FFI, as
custom calls inside the jitted step, with a `jax.custom_vjp` that routes the two gradients to
oneDNN's backward primitives. The parameters and the math are those of XLA's convolution, up
to float rounding (summation order).

The handlers (onednn_conv.cc) are compiled once per source, jaxlib and oneDNN version with the
system's C++ compiler into `$SIMCLR_JAX_ONEDNN_BUILD_DIR`, else
`$XDG_CACHE_HOME/simclr_jax/onednn` (default ~/.cache/simclr_jax/onednn), as
torch.utils.cpp_extension does: a wheel built against one jaxlib's FFI headers would tie the
package to that jaxlib. oneDNN itself comes from the `onednn-cpu-gomp` and
`onednn-devel-cpu-gomp` wheels (x86-64 Linux). `unavailable()` says why the path can't be used
on this host.

`resolve_conv_impl` is the one decision of which convolution a model runs ('auto' -> 'onednn'
or 'xla', and why): the start-up (simclr_jax/startup.py) calls it once and writes the result
into the config; a model built directly with conv_impl='auto' calls it too. The handlers are
only ever built for a CPU backend.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from simclr_jax.cache import user_cache_dir

SOURCE = os.path.join(os.path.dirname(__file__), "onednn_conv.cc")
TARGETS = {"simclr_onednn_conv_forward": "SimclrOnednnConvForward",
           "simclr_onednn_conv_backward_data": "SimclrOnednnConvBackwardData",
           "simclr_onednn_conv_backward_weights": "SimclrOnednnConvBackwardWeights"}


def _locate(dist: str, suffix: str) -> str:
  for f in importlib.metadata.distribution(dist).files or ():
    if str(f).endswith(suffix):   # recorded relative to site-packages: "../../libdnnl.so.3"
      return os.path.realpath(f.locate())
  raise FileNotFoundError(f"{dist} holds no {suffix}")


def build_dir() -> str:
  return os.environ.get("SIMCLR_JAX_ONEDNN_BUILD_DIR") or user_cache_dir("onednn")


def _build() -> str:
  """The handlers' shared library, compiled unless this source and these versions already were."""
  lib = _locate("onednn-cpu-gomp", "/libdnnl.so.3")
  header = _locate("onednn-devel-cpu-gomp", "/oneapi/dnnl/dnnl.hpp")
  include = os.path.dirname(os.path.dirname(os.path.dirname(header)))
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise RuntimeError("no C++ compiler (g++ or $CXX) to build the oneDNN handlers")
  with open(SOURCE, "rb") as f:
    key = hashlib.sha256(f.read() + jax.__version__.encode() + lib.encode()).hexdigest()[:16]
  out = os.path.join(build_dir(), f"simclr_onednn_{key}.so")
  if os.path.exists(out):
    return out
  os.makedirs(build_dir(), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=build_dir())
  os.close(fd)
  cmd = [compiler, "-O2", "-shared", "-fPIC", "-std=c++17", f"-I{jax.ffi.include_dir()}",
         f"-I{include}", SOURCE, lib, f"-Wl,-rpath,{os.path.dirname(lib)}", "-o", tmp]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    os.unlink(tmp)
    raise RuntimeError(f"building {SOURCE} failed: {done.stderr.strip().splitlines()[-1:]}")
  os.replace(tmp, out)   # atomic: processes that build at once all end with a whole file
  return out


@functools.cache
def unavailable() -> str:
  """Why this host can't run `conv_general_dilated` by oneDNN ('' once the handlers are
  registered with XLA)."""
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    return f"oneDNN convolutions are built for x86-64 Linux, not {platform.system()} " \
           f"{platform.machine()}"
  try:
    lib = ctypes.cdll.LoadLibrary(_build())
  except importlib.metadata.PackageNotFoundError as e:
    return f'oneDNN is not installed ({e.args[0]}): pip install "simclr_jax[cpu]"'
  except (OSError, RuntimeError, FileNotFoundError) as e:
    return f"oneDNN convolutions unavailable: {e}"
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return ""


# model.conv_impl values; 'im2col' (convolutions as matrix products, slower than XLA's in every
# recorded benchmark) was removed: a workdir that names it runs XLA's, with the same parameters.
CONV_IMPLS = ("auto", "onednn", "xla")
REMOVED = ("im2col",)


def resolve_conv_impl(conv_impl: str, dtype="float32",
                      platform: str | None = None) -> tuple[str, str]:
  """The convolution a model with model.conv_impl=`conv_impl` runs: ('onednn' | 'xla', why).

  'auto': oneDNN's on a CPU backend, for a float32 encoder, where the handlers build; else XLA's,
  `why` saying what ruled oneDNN out ('backend gpu', 'model.dtype bfloat16', the build's
  error). 'onednn' where it cannot run is a one-line ValueError. 'xla' is XLA's; the removed
  'im2col' is XLA's too. `platform`: the backend (default `jax.default_backend()`, which starts
  JAX's backends); the handlers are built (a C++ compile, once per host) only for 'cpu'.
  `dtype`: the encoder's compute dtype, a name or a jnp dtype.
  """
  if conv_impl in REMOVED:
    return "xla", f"model.conv_impl={conv_impl!r} was removed; XLA's has the same parameters"
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl={conv_impl!r}; expected one of {', '.join(CONV_IMPLS)}")
  if conv_impl == "xla":
    return "xla", "model.conv_impl='xla'"
  platform = platform or jax.default_backend()
  dtype = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  if platform != "cpu":
    why = f"backend {platform}"
  elif dtype != "float32":
    why = f"model.dtype {dtype}"
  else:
    why = unavailable()       # the only call that builds: a CPU backend, float32
  if not why:
    return "onednn", ""
  if conv_impl == "onednn":
    raise ValueError(f"model.conv_impl='onednn': {why}; expected 'auto' or 'xla' on this host")
  return "xla", why


def describe(impl: str, why: str) -> str:
  """The start-up's log line of a `resolve_conv_impl` result: 'conv: xla (backend gpu)'."""
  return f"conv: {impl}" + (f" ({why})" if why else "")


@functools.cache
def _warn_fallback(why: str) -> None:
  logging.warning("model.conv_impl='onednn': %s; XLA's convolutions run instead", why)


def _attrs(strides, pads) -> dict:
  (pt, pb), (pl, pr) = pads
  return {k: np.int64(v) for k, v in zip(("sh", "sw", "pt", "pb", "pl", "pr"),
                                         (*strides, pt, pb, pl, pr))}


def _call(target: str, out_shape, a, b, strides, pads):
  # Under shard_map the result varies over the same mesh axes as the operands (made equal by
  # `_vary_alike`); an FFI call's result type does not infer that itself.
  aval = jax.typeof(a)
  out = jax.ShapeDtypeStruct(out_shape, jnp.float32, manual_axis_type=aval.manual_axis_type,
                             sharding=aval.sharding if not aval.sharding.mesh.empty else None)
  return jax.ffi.ffi_call(target, out)(a, b, **_attrs(strides, pads))


def _vary_alike(x, w):
  """x and w cast to vary over the union of their shard_map axes, as XLA's own convolution
  does implicitly: a kernel replicated over 'data' meets per-device activations, and the
  cast's transpose sums the kernel gradient over the devices."""
  vx, vw = jax.typeof(x).manual_axis_type.varying, jax.typeof(w).manual_axis_type.varying
  if vw - vx:
    x = jax.lax.pcast(x, tuple(sorted(vw - vx)), to="varying")
  if vx - vw:
    w = jax.lax.pcast(w, tuple(sorted(vx - vw)), to="varying")
  return x, w


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  n, h, wd, _ = x.shape
  kh, kw, _, cout = w.shape
  ho = (h + sum(pads[0]) - kh) // strides[0] + 1
  wo = (wd + sum(pads[1]) - kw) // strides[1] + 1
  return _call("simclr_onednn_conv_forward", (n, ho, wo, cout), x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, dy):
  x, w = residuals
  dx = _call("simclr_onednn_conv_backward_data", x.shape, dy, w, strides, pads)
  dw = _call("simclr_onednn_conv_backward_weights", w.shape, x, dy, strides, pads)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` for float32 NHWC inputs and HWIO kernels, by oneDNN.

  Anything else a ResNet does not use (dilations, groups, other dtypes or layouts, negative
  padding) goes to XLA's convolution; so does everything off a CPU backend, or where the
  handlers don't build (a warning, once).
  """
  plain = lhs.ndim == rhs.ndim == 4
  pads = ((jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
           if isinstance(padding, str) else [tuple(p) for p in padding]) if plain else [])
  plain = (plain and lhs.dtype == rhs.dtype == jnp.float32
           and (lhs_dilation is None or all(d == 1 for d in lhs_dilation))
           and (rhs_dilation is None or all(d == 1 for d in rhs_dilation))
           and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type in (None, jnp.float32)
           and all(p >= 0 for pair in pads for p in pair))
  if plain and dimension_numbers is not None:
    plain = (jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))
  if plain:
    # A model made with 'onednn' elsewhere (a saved config, an export) on a host where it
    # can't run: XLA's convolution, said once. Nothing is built off a CPU backend.
    backend = jax.default_backend()
    why = f"backend {backend}" if backend != "cpu" else unavailable()
    if why:
      _warn_fallback(why)
      plain = False
  if not plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  return _conv(*_vary_alike(lhs, rhs), tuple(int(s) for s in window_strides),
               tuple(tuple(int(p) for p in pair) for pair in pads))

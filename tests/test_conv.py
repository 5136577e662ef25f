"""oneDNN's convolution path (models/onednn.py) against XLA's convolution: op by op, under
shard_map, in a step and in both encoder families; and its one decision
(onednn.resolve_conv_impl, through the start-up: simclr_jax/startup.py)."""


import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import parallel, startup, train
from simclr_jax import state as state_lib
from simclr_jax.configs import digits
from simclr_jax.models import onednn, resnet, sk_resnet
from tests import helpers

IMPLS = {"onednn": onednn.conv_general_dilated}
DN = ("NHWC", "HWIO", "NHWC")

# (kernel, stride, padding) of every convolution a ResNet has: CIFAR and ImageNet stems, the
# blocks' 3x3 convs, 1x1 bottleneck and strided shortcut convs.
CASES = [((3, 3), 1, ((1, 1), (1, 1))), ((3, 3), 2, ((1, 1), (1, 1))),
         ((1, 1), 1, "VALID"), ((1, 1), 2, "VALID"), ((7, 7), 2, ((3, 3), (3, 3)))]
# Forms only the oneDNN path takes: flax's 'SAME' (asymmetric for stride 2), uneven explicit pads.
ONEDNN_CASES = [((3, 3), 2, "SAME"), ((3, 3), 1, ((0, 2), (1, 0))), ((5, 5), 3, ((2, 1), (2, 2)))]


def _runs_on_onednn(fn, *args) -> bool:
  hlo = jax.jit(fn).lower(*args).as_text()
  return "simclr_onednn_conv_forward" in hlo and "convolution" not in hlo


@pytest.mark.parametrize("impl,kernel,stride,padding",
                         [(i, *c) for i in IMPLS for c in CASES]
                         + [("onednn", *c) for c in ONEDNN_CASES])
def test_conv_and_its_gradients_equal_xla(impl, kernel, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 9, 10, 5)), jnp.float32)   # odd sizes: edge windows
  w = jnp.asarray(rng.normal(size=kernel + (5, 7)), jnp.float32)

  def xla(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)

  def ours(x, w):
    return IMPLS[impl](x, w, (stride, stride), padding, dimension_numbers=DN)

  if impl == "onednn":   # the custom calls, not a fallback to XLA, are what is compared
    assert _runs_on_onednn(ours, x, w)
    assert "simclr_onednn_conv_backward_weights" in jax.jit(
        jax.grad(lambda x, w: ours(x, w).sum(), argnums=1)).lower(x, w).as_text()
  want = xla(x, w)
  np.testing.assert_allclose(ours(x, w), want, rtol=1e-5, atol=1e-5)
  ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  for got, ref in zip(jax.vjp(ours, x, w)[1](ct), jax.vjp(xla, x, w)[1](ct)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_unsupported_forms_fall_back_to_xla(impl):
  x = jnp.ones((1, 6, 6, 4))
  w = jnp.ones((3, 3, 2, 4))
  got = IMPLS[impl](x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    feature_group_count=2)
  want = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=2)
  np.testing.assert_array_equal(got, want)


def test_onednn_conv_under_shard_map_equals_one_device():
  """A kernel replicated over 8 devices meets per-device activations: the loss and the kernel
  gradient (summed over the devices by the cast's transpose) equal one device's on XLA."""
  mesh = parallel.make_mesh(8)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(16, 9, 9, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)

  def loss(conv_fn, axis=None):
    def f(w, x):
      s = jnp.sum(jnp.sin(conv_fn(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)))
      return jax.lax.psum(s, axis) if axis else s
    return jax.value_and_grad(f)

  sharded = jax.jit(jax.shard_map(loss(onednn.conv_general_dilated, "data"), mesh=mesh,
                                  in_specs=(jax.P(), jax.P("data")), out_specs=jax.P()))
  assert "simclr_onednn_conv_backward_weights" in sharded.lower(w, x).as_text()
  (got, g_got), (want, g_want) = sharded(w, x), jax.jit(loss(jax.lax.conv_general_dilated))(w, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(g_got, g_want, rtol=1e-4, atol=1e-4)


def test_auto_picks_onednn_on_cpu_in_float32_only(monkeypatch):
  assert startup.conv_path({"conv_impl": "auto", "dtype": "float32"}) == ("onednn", "")
  assert startup.conv_path({"conv_impl": "auto", "dtype": "bfloat16"}) == (
      "xla", "model.dtype bfloat16")
  assert startup.conv_path({}) == ("xla", "model.conv_impl='xla'")   # workdirs before the field
  assert startup.conv_path({"conv_impl": "im2col"})[0] == "xla"      # removed: same parameters
  # Off a CPU backend nothing is built: the handlers' check is never called.
  monkeypatch.setattr(onednn, "unavailable", lambda: pytest.fail("built off the CPU"))
  assert startup.conv_path({"conv_impl": "auto", "dtype": "float32"}, "gpu") == (
      "xla", "backend gpu")
  with pytest.raises(ValueError, match=r"^model\.conv_impl='onednn': backend gpu; expected "
                     r"'auto' or 'xla' on this host$"):
    startup.conv_path({"conv_impl": "onednn"}, "gpu")


def test_an_accelerator_host_builds_nothing(monkeypatch, caplog):
  """A GPU host (faked: an accelerator plugin, the backend 'gpu'): the start-up resolves the
  path after the devices, from the backend, and logs it; a model made with 'auto' or with a
  saved 'onednn' runs XLA's convolution; oneDNN's handlers are never built."""
  monkeypatch.setattr(onednn, "unavailable", lambda: pytest.fail("built off the CPU"))
  monkeypatch.setattr(startup, "cpu_only", lambda: False)
  monkeypatch.setattr(startup, "use_all_cpu_cores", lambda n: None)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  c = digits.get_config()
  assert startup.cpu_devices_for(c) == startup.cpu_device_count(c.train.batch_size)
  with caplog.at_level("INFO"):
    assert startup.start(c) == "xla" and c.model.conv_impl == "xla"
  assert "conv: xla (backend gpu)" in caplog.text
  assert resnet.conv_function("auto", jnp.float32) is None            # flax's own: XLA's
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4))
  with caplog.at_level("WARNING"):
    got = onednn.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
  assert "model.conv_impl='onednn': backend gpu; XLA's convolutions run instead" in caplog.text
  np.testing.assert_array_equal(got, jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                                  dimension_numbers=DN))


def test_start_writes_the_path_into_the_config_and_logs_why(caplog):
  c = digits.get_config("tiny")
  with caplog.at_level("INFO"):
    assert startup.resolve_conv(c, "cpu") == "onednn"
  assert c.model.conv_impl == "onednn" and "conv: onednn" in caplog.text
  c.model.dtype = "bfloat16"
  c.model.conv_impl = "auto"
  with caplog.at_level("INFO"):
    assert startup.resolve_conv(c, "cpu") == "xla"
  assert c.model.conv_impl == "xla" and "conv: xla (model.dtype bfloat16)" in caplog.text


@pytest.mark.slow
def test_a_host_that_cannot_build_the_handlers_keeps_xla(tmp_path):
  """No usable compiler: 'auto' resolves to XLA's convolution (and the tool to the emulated
  device rule), an explicit 'onednn' is a one-line error naming the field and the cause."""
  code = ("from absl import logging; logging.set_verbosity(logging.INFO); "
          "from simclr_jax.configs import cifar10; from simclr_jax import startup; "
          "c = cifar10.get_config(); print(startup.start(c), startup.cpu_devices_for(c)); "
          "c.model.conv_impl = 'onednn'; startup.conv_path(c.model, 'cpu')")
  out = helpers.run_python(["-c", code], CXX="/bin/false",
                           SIMCLR_JAX_ONEDNN_BUILD_DIR=str(tmp_path))
  assert out.stdout.split() == ["xla", str(startup.cpu_device_count(256))], out
  assert re.search(r"conv: xla \(oneDNN convolutions unavailable: building .* failed",
                   out.stderr), out.stderr
  assert "ValueError: model.conv_impl='onednn': oneDNN convolutions unavailable: building" \
      in out.stderr, out.stderr
  assert not list(tmp_path.glob("*.so"))
  workdir = tmp_path / "run"
  proc = helpers.run_python(
      ["-m", "simclr_jax", "pretrain", "--config", "digits:tiny", "--workdir", workdir,
       "--config.model.conv_impl=onednn"], CXX="/bin/false",
      SIMCLR_JAX_ONEDNN_BUILD_DIR=str(tmp_path), timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert re.search(r"^error: model\.conv_impl='onednn': oneDNN convolutions unavailable: "
                   r"building .*; expected 'auto' or 'xla' on this host$", proc.stderr, re.M)
  assert "Traceback" not in proc.stderr and not workdir.exists()


@pytest.mark.slow
def test_a_saved_conv_impl_is_chosen_again_for_evaluation(tmp_path):
  """A workdir's config.json records the convolution its pretraining host ran: linear_eval
  (and finetune) choose again on this host, logged, so a saved 'onednn' or the removed
  'im2col' starts where oneDNN cannot build; an explicit override is still checked. The run
  then stops at its missing checkpoints: the start-up is what is tested."""
  saved = json.loads(digits.get_config("tiny").to_json_best_effort())
  env = dict(CXX="/bin/false", SIMCLR_JAX_ONEDNN_BUILD_DIR=str(tmp_path / "build"), timeout=120)
  for impl, override in (("onednn", []), ("im2col", []),
                         ("xla", ["--config.model.conv_impl=onednn"])):
    saved["model"]["conv_impl"] = impl
    (tmp_path / "config.json").write_text(json.dumps(saved))
    proc = helpers.run_python(["-m", "simclr_jax", "linear-eval", "--workdir", tmp_path,
                               *override], **env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    if override:
      assert re.search(r"^error: model\.conv_impl='onednn': oneDNN convolutions unavailable",
                       proc.stderr, re.M), proc.stderr
    else:
      assert "conv: xla (oneDNN convolutions unavailable: building" in proc.stderr, proc.stderr
      assert re.search(r"^error: no checkpoints in ", proc.stderr, re.M), proc.stderr


def test_a_removed_conv_impl_builds_the_same_model_on_xla():
  """A model of a saved config naming the removed 'im2col' (export, report, probes read the
  config as saved) has the same parameters and computes XLA's convolution."""
  assert resnet.conv_function("im2col", jnp.float32) is None          # flax's own: XLA's
  x = jnp.ones((1, 8, 8, 1))
  old, new = (jax.eval_shape(lambda: resnet.get_backbone(
      "resnet18", width_multiplier=0.125, conv_impl=impl).init(jax.random.PRNGKey(0), x,
                                                               train=False))
              for impl in ("im2col", "xla"))
  assert old == new


def test_conv_impl_is_checked():
  m = resnet.get_backbone("resnet18", width_multiplier=0.125, conv_impl="winograd")
  with pytest.raises(ValueError, match=r"model.conv_impl='winograd'; expected one of auto, "
                     r"onednn, xla"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)


@pytest.mark.parametrize("bottleneck", [False, True])     # sk_resnet18 / sk_resnet50 blocks
def test_sk_encoders_on_onednn_equal_xla(bottleneck):
  """The selective-kernel encoders honour conv_impl as ResNet does (the train step tests
  cover ResNet): every convolution of the forward pass and of the gradient (stems, SK convs
  and their mixing, ResNet-D shortcuts) runs by oneDNN ('auto' on this CPU resolves to it),
  and h equals XLA's up to float rounding. Tiny: one block per stage, width 8."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 3)), jnp.float32)
  models = {impl: sk_resnet.SKResNet((1, 1, 1, 1), bottleneck=bottleneck, width_multiplier=0.125,
                                     cifar_stem=not bottleneck, conv_impl=impl)
            for impl in ("xla", "auto")}
  variables = jax.jit(lambda k: models["xla"].init(k, x, train=False))(
      jax.random.key(0, impl="rbg"))          # rbg: a fraction of threefry's compile time
  apply = {i: jax.jit(lambda v, x, i=i: models[i].apply(v, x, train=False)) for i in models}
  hlo = jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(apply["auto"](v, x))))).lower(
      variables, x).as_text()
  assert "simclr_onednn_conv_backward_weights" in hlo and "convolution" not in hlo
  np.testing.assert_allclose(apply["auto"](variables, x), apply["xla"](variables, x),
                             rtol=1e-4, atol=1e-5)


# Two whole train steps compiled (~30 s): the slow tier. The everyday tier has the convolution
# and its gradients op by op, under shard_map and in the SK encoders, and runs every other
# train step on oneDNN ('auto' on this CPU).
@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step_equals_xla_step(impl):
  """The whole SimCLR step (views, encoder, head, NT-Xent, LARS) from one state on 2 devices:
  same parameter tree, same loss, same gradient norm and update, whichever convolution."""
  c = digits.get_config("tiny")
  c.data.image_size = 16
  c.train.num_devices = 2
  c.train.batch_size = 16
  out = {}
  init_rng, augment_key = state_lib.run_keys(0)
  state0 = None
  batch = {"image": np.random.default_rng(1).uniform(size=(16, 16, 16, 1)).astype(np.float32),
           "label": np.arange(16) % 10, "id": np.arange(16)}
  for name in ("xla", impl):
    c.model.conv_impl = name
    setup = state_lib.build(c, 1437)
    if state0 is None:
      state0 = jax.device_get(state_lib.init_state(setup, init_rng))
    state = jax.device_put(state0, parallel.replicated(setup.mesh))
    new, metrics = train.make_train_step(setup, augment_key)(
        state, train.device_batch(setup.mesh, batch))
    out[name] = jax.device_get((new, metrics))
  (s_x, m_x), (s_i, m_i) = out["xla"], out[impl]
  assert jax.tree.structure(s_x.params) == jax.tree.structure(s_i.params)
  for k in ("loss", "contrastive_accuracy", "l2_grads", "l2_updates"):
    np.testing.assert_allclose(m_i[k], m_x[k], rtol=1e-4, err_msg=k)
  for a, b, p in zip(jax.tree.leaves(s_i.params), jax.tree.leaves(s_x.params),
                     jax.tree.leaves(state0.params)):
    step = np.linalg.norm(b - p)
    assert np.linalg.norm(a - b) <= 1e-3 * step + 1e-6, (np.linalg.norm(a - b), step)

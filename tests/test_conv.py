"""im2col convolutions (models/conv.py) against XLA's own convolution, op by op and in a step."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits
from simclr_jax import parallel, train
from simclr_jax.models import conv, resnet

# (kernel, stride, padding) of every convolution a ResNet has: CIFAR and ImageNet stems, the
# blocks' 3x3 convs, 1x1 bottleneck and strided shortcut convs.
CASES = [((3, 3), 1, ((1, 1), (1, 1))), ((3, 3), 2, ((1, 1), (1, 1))),
         ((1, 1), 1, "VALID"), ((1, 1), 2, "VALID"), ((7, 7), 2, ((3, 3), (3, 3)))]


@pytest.mark.parametrize("kernel,stride,padding", CASES)
def test_conv_and_its_gradients_equal_xla(kernel, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 9, 10, 5)), jnp.float32)   # odd sizes: edge windows
  w = jnp.asarray(rng.normal(size=kernel + (5, 7)), jnp.float32)
  dn = ("NHWC", "HWIO", "NHWC")

  def xla(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn)

  def ours(x, w):
    return conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn)

  want = xla(x, w)
  np.testing.assert_allclose(ours(x, w), want, rtol=1e-5, atol=1e-5)
  ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  for got, ref in zip(jax.vjp(ours, x, w)[1](ct), jax.vjp(xla, x, w)[1](ct)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_unsupported_forms_fall_back_to_xla():
  x = jnp.ones((1, 6, 6, 4))
  w = jnp.ones((3, 3, 2, 4))
  got = conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=2)
  want = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=2)
  np.testing.assert_array_equal(got, want)


def test_conv_impl_is_checked():
  m = resnet.get_backbone("resnet18", width_multiplier=0.125, conv_impl="winograd")
  with pytest.raises(ValueError, match=r"model.conv_impl='winograd'; expected one of xla, im2col"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)


def test_train_step_with_im2col_equals_xla_step():
  """The whole SimCLR step (views, encoder, head, NT-Xent, LARS) from one state on 2 devices:
  same parameter tree, same loss, same gradient norm and update, whichever convolution."""
  c = digits.get_config("tiny")
  c.data.image_size = 16
  c.train.num_devices = 2
  c.train.batch_size = 16
  out = {}
  init_rng, augment_key = train.run_keys(0)
  state0 = None
  batch = {"image": np.random.default_rng(1).uniform(size=(16, 16, 16, 1)).astype(np.float32),
           "label": np.arange(16) % 10, "id": np.arange(16)}
  for impl in ("xla", "im2col"):
    c.model.conv_impl = impl
    setup = train.build(c, 1437)
    if state0 is None:
      state0 = jax.device_get(train.init_state(setup, init_rng))
    state = jax.device_put(state0, parallel.replicated(setup.mesh))
    new, metrics = train.make_train_step(setup, augment_key)(
        state, train._device_batch(setup.mesh, batch))
    out[impl] = jax.device_get((new, metrics))
  (s_x, m_x), (s_i, m_i) = out["xla"], out["im2col"]
  assert jax.tree.structure(s_x.params) == jax.tree.structure(s_i.params)
  for k in ("loss", "contrastive_accuracy", "l2_grads", "l2_updates"):
    np.testing.assert_allclose(m_i[k], m_x[k], rtol=1e-4, err_msg=k)
  for a, b, p in zip(jax.tree.leaves(s_i.params), jax.tree.leaves(s_x.params),
                     jax.tree.leaves(state0.params)):
    step = np.linalg.norm(b - p)
    assert np.linalg.norm(a - b) <= 1e-3 * step + 1e-6, (np.linalg.norm(a - b), step)

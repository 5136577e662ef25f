"""Model tests: parameter counts against published references, shapes, BatchNorm, heads.

Big models are only traced (jax.eval_shape: no FLOPs, no memory); everything actually run is a
width-0.125 ResNet-18 on 2x16x16 inputs, so compile time stays small.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from simclr_jax.models import (
    BACKBONES,
    BasicBlock,
    Bottleneck,
    OnlineClassifier,
    ProjectionHead,
    ResNet,
    SimCLRModel,
    SKConv,
    get_backbone,
    make_encoder,
    model_from_config,
)

# 'rbg' keys: on CPU, XLA takes ~25 s to compile a threefry-based init of even the tiny
# ResNet-18 below, ~4 s with rbg. Which PRNG fills the weights is irrelevant to these tests.
KEY = jax.random.key(0, impl="rbg")


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_init(model, shape):
  """Variables as ShapeDtypeStructs: counts and shapes of a ResNet-200 for free."""
  return jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape), train=False))


# ---------------------------------------------------------------- parameter counts (references)

# torchvision's published totals (11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 /
# 60,192,808) minus its fc layer (512*1000+1000 or 2048*1000+1000). torchvision has no
# ResNet-200; 64,673,832 is osmr/imgclsmob's resnet200 (same v1.5 bottleneck) incl. fc.
TORCHVISION_NO_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
    "resnet152": 60_192_808 - 2_049_000,
    "resnet200": 64_673_832 - 2_049_000,
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_resnet_param_count_matches_reference(name):
  variables = abstract_init(get_backbone(name), (1, 224, 224, 3))
  assert n_params(variables["params"]) == TORCHVISION_NO_FC[name]
  h = jax.eval_shape(
      lambda v: get_backbone(name).apply(v, jnp.zeros((1, 224, 224, 3)), train=False), variables)
  expected_features = 512 if name in ("resnet18", "resnet34") else 2048
  assert h.shape == (1, expected_features)


def test_solarnet_param_count():
  # SolarNet's published SSL model has 30,144,938 parameters: a 1-channel ResNet-50 with
  # torchvision's unused 1000-way fc (2048*1000 + 1000), projection 2048->2048->BN->64, online
  # head 2048->128->BN->2. Without that fc the count must be what this model has.
  model = SimCLRModel("resnet50", hidden_mlp=2048, feat_dim=64, proj_layers=2, num_classes=2,
                      online_hidden=128)
  params = abstract_init(model, (1, 64, 64, 1))["params"]
  assert set(params) == {"encoder", "projection", "online_head"}
  assert n_params(params) == 30_144_938 - 2_049_000


@pytest.mark.parametrize("hidden_mlp,feat_dim", [(2048, 128), (96, 24)])
def test_v2_projection_param_count(hidden_mlp, feat_dim):
  d = 512  # ResNet-18 features
  dense_bn = lambda n_in, n_out: n_in * n_out + n_out + 2 * n_out  # kernel, bias, BN scale+bias
  expected = dense_bn(d, hidden_mlp) + dense_bn(hidden_mlp, hidden_mlp) + hidden_mlp * feat_dim
  head = ProjectionHead(hidden_mlp, feat_dim, proj_layers=3)
  params = jax.eval_shape(lambda: head.init(KEY, jnp.zeros((2, d)), train=False))["params"]
  assert n_params(params) == expected


def test_online_classifier_linear_when_hidden_zero():
  head = OnlineClassifier(num_classes=5, hidden=0)
  params = jax.eval_shape(lambda: head.init(KEY, jnp.zeros((2, 64)), train=False))["params"]
  assert n_params(params) == 64 * 5 + 5


# ---------------------------------------------------------------- validation errors


def test_invalid_backbone_name():
  with pytest.raises(ValueError, match=r"resnet17.*resnet18.*resnet200"):
    get_backbone("resnet17")


def test_projection_needs_two_layers():
  with pytest.raises(ValueError, match="proj_layers"):
    ProjectionHead(64, 16, proj_layers=1)


# ---------------------------------------------------------------- shapes, stems, widths

TINY = dict(backbone="resnet18", width_multiplier=0.125, cifar_stem=True, hidden_mlp=32,
            feat_dim=16, num_classes=3, online_hidden=8)


def materialize(abstract, seed=0):
  """Concrete variables for an abstract tree, from numpy: skips compiling model.init (seconds
  of XLA time per model on CPU); the real init is tested by test_no_conv_bias_and_zero_init_*."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(x.shape, x.dtype)
    if name in ("bias", "mean"):
      return jnp.zeros(x.shape, x.dtype)
    fan_in = int(np.prod(x.shape[:-1]))
    return jnp.asarray(rng.normal(size=x.shape) / np.sqrt(fan_in), x.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.fixture(scope="module")
def tiny():
  """A real (not abstract) tiny SimCLR model, shared by the tests that run it."""
  model = SimCLRModel(**TINY)
  x = jax.random.normal(jax.random.key(1, impl="rbg"), (2, 16, 16, 3))
  return model, materialize(abstract_init(model, x.shape)), x


@pytest.mark.parametrize("channels", [1, 3, 12])
@pytest.mark.parametrize("cifar_stem", [True, False])
def test_output_shapes_any_channels(channels, cifar_stem):
  model = SimCLRModel(**{**TINY, "cifar_stem": cifar_stem})
  x = jnp.zeros((2, 16, 16, channels))
  variables = abstract_init(model, x.shape)
  stem = variables["params"]["encoder"]["conv_stem"]["kernel"]
  assert stem.shape == ((3, 3) if cifar_stem else (7, 7)) + (channels, 8)
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out["h"].shape == (2, 64)  # 512 * 0.125
  assert out["z"].shape == (2, 16)
  assert out["logits"].shape == (2, 3)


def test_run_tiny_model(tiny):
  model, variables, x = tiny
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert {k: v.shape for k, v in out.items()} == {"h": (2, 64), "z": (2, 16), "logits": (2, 3)}
  assert all(np.isfinite(v).all() for v in out.values())


def test_cifar_stem_keeps_resolution():
  def stage1_output(cifar_stem):
    encoder = make_encoder("resnet18", 0.125, cifar_stem)
    x = jnp.zeros((2, 32, 32, 3))
    variables = abstract_init(encoder, x.shape)
    _, state = jax.eval_shape(
        lambda v: encoder.apply(v, x, train=False, capture_intermediates=True,
                                mutable=["intermediates"]), variables)
    return state["intermediates"]["stage1_block1"]["__call__"][0].shape

  assert stage1_output(cifar_stem=True) == (2, 32, 32, 8)   # 3x3/1 conv, no max-pool
  assert stage1_output(cifar_stem=False) == (2, 8, 8, 8)    # 7x7/2 conv + 3x3/2 max-pool


@pytest.mark.parametrize("name,w,features,stem_width", [
    ("resnet18", 0.125, 64, 8), ("resnet18", 0.25, 128, 16), ("resnet18", 2.0, 1024, 128),
    ("resnet50", 0.125, 256, 8), ("resnet50", 0.25, 512, 16),
])
def test_width_multiplier(name, w, features, stem_width):
  encoder = get_backbone(name, width_multiplier=w)
  variables = abstract_init(encoder, (1, 32, 32, 3))
  assert variables["params"]["conv_stem"]["kernel"].shape[-1] == stem_width
  h = jax.eval_shape(lambda v: encoder.apply(v, jnp.zeros((1, 32, 32, 3)), train=False), variables)
  assert h.shape == (1, features)


def test_no_conv_bias_and_zero_init_residual():
  # Two-stage trunks keep the compile small; the flag still goes ResNet -> every block.
  trunks = {block.__name__: ResNet((1, 2), block, width_multiplier=0.125, zero_init_residual=True)
            for block in (BasicBlock, Bottleneck)}
  x = jnp.zeros((1, 8, 8, 3))
  variables = jax.jit(lambda: {k: m.init(KEY, x, train=False) for k, m in trunks.items()})()
  for block, last_bn in (("BasicBlock", "bn2"), ("Bottleneck", "bn3")):
    params = variables[block]["params"]
    flat = {"/".join(k.key for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    assert not any("conv" in p.split("/")[-2] and p.endswith("bias") for p in flat)
    zeroed = sorted(p for p in flat if p.endswith(f"{last_bn}/scale"))
    assert zeroed == ["stage1_block1/%s/scale" % last_bn, "stage2_block1/%s/scale" % last_bn,
                      "stage2_block2/%s/scale" % last_bn]
    assert all(np.all(flat[p] == 0) for p in zeroed)
    assert np.all(flat["stage1_block1/bn1/scale"] == 1)
    assert np.all(flat["stage2_block1/proj_bn/scale"] == 1)


# ---------------------------------------------------------------- BatchNorm, heads, subtrees


def test_batchnorm_updates_only_in_train(tiny):
  model, variables, x = tiny
  apply = jax.jit(lambda v, x, train: model.apply(v, x, train=train, mutable=["batch_stats"],
                                                  rngs={"dropout": KEY}), static_argnums=2)
  _, train_state = apply(variables, x, True)
  _, eval_state = apply(variables, x, False)
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(train_state["batch_stats"])
  changed = [not np.allclose(a, b) for a, b in zip(before, after)]
  assert all(changed)  # every BN (encoder, projection, online head) saw the batch
  for a, b in zip(before, jax.tree.leaves(eval_state["batch_stats"])):
    np.testing.assert_array_equal(a, b)


def test_online_head_does_not_train_encoder(tiny):
  model, variables, x = tiny

  def grads(key):
    return jax.grad(lambda p: model.apply({**variables, "params": p}, x, train=False)[key].sum())(
        variables["params"])

  g_logits, g_z = jax.jit(lambda: (grads("logits"), grads("z")))()
  assert all(np.all(g == 0) for g in jax.tree.leaves(g_logits["encoder"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(g_logits["online_head"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(g_z["encoder"]))


def test_online_head_dropout_only_in_train():
  head = OnlineClassifier(num_classes=3, hidden=16, dropout=0.5)
  h = jnp.ones((4, 8))
  variables = materialize(jax.eval_shape(lambda: head.init(KEY, h, train=False)))
  train = jax.jit(lambda key: head.apply(variables, h, train=True, rngs={"dropout": key},
                                         mutable=["batch_stats"])[0])
  assert not np.allclose(train(jax.random.key(1, impl="rbg")), train(jax.random.key(2, impl="rbg")))
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda: head.apply(variables, h, train=True, mutable=["batch_stats"]))
  # Inference: no dropout, BatchNorm from its running statistics, i.e. exactly this NumPy
  # formula (random statistics so that every term matters).
  rng = np.random.default_rng(3)
  stats = {"mean": rng.normal(size=16), "var": rng.uniform(0.5, 2.0, 16)}
  v = {"params": variables["params"], "batch_stats": {"bn1": {
      k: jnp.asarray(x, jnp.float32) for k, x in stats.items()}}}
  p = jax.tree.map(np.asarray, variables["params"])
  x = np.asarray(h) @ p["dense1"]["kernel"]
  x = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * p["bn1"]["scale"] + p["bn1"]["bias"]
  want = np.maximum(x, 0) @ p["out"]["kernel"] + p["out"]["bias"]
  np.testing.assert_allclose(head.apply(v, h, train=False), want, rtol=1e-5, atol=1e-5)


def test_encoder_subtree_alone(tiny):
  # An exported encoder is params['encoder'] applied with make_encoder: the same h.
  model, variables, x = tiny
  encoder = make_encoder(TINY["backbone"], TINY["width_multiplier"], TINY["cifar_stem"])
  sub = {c: variables[c]["encoder"] for c in ("params", "batch_stats")}
  h_alone = jax.jit(lambda v, x: encoder.apply(v, x, train=False))(sub, x)
  h_model = jax.jit(lambda v, x: model.apply(v, x, method=SimCLRModel.encode))(variables, x)
  np.testing.assert_allclose(h_alone, h_model, rtol=1e-6, atol=1e-6)


def model_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      backbone="resnet18", width_multiplier=0.125, cifar_stem=True, hidden_mlp=32, feat_dim=16,
      proj_layers=3, dtype="bfloat16", online_head=True, online_hidden=8, online_dropout=0.2))
  cfg.update(overrides)
  return cfg


def test_model_from_config():
  cfg = model_config()
  model = model_from_config(cfg, num_classes=4)
  assert (model.proj_layers, model.num_classes, model.dtype) == (3, 4, jnp.bfloat16)
  variables = abstract_init(model, (2, 16, 16, 3))
  # Parameters stay float32 (bf16 is compute only); outputs are float32 for the loss.
  assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 16, 16, 3)), train=False), variables)
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
      "h": ((2, 64), jnp.float32), "z": ((2, 16), jnp.float32), "logits": ((2, 4), jnp.float32)}
  no_head = model_from_config(model_config(online_head=False), num_classes=4)
  assert "online_head" not in abstract_init(no_head, (2, 16, 16, 3))["params"]
  with pytest.raises(ValueError, match="float16"):
    model_from_config(model_config(dtype="float16"), num_classes=0)


def test_global_batchnorm_under_shard_map(tiny):
  # With bn_axis_name='data' under shard_map, each device normalises with the statistics of the
  # global batch: outputs and updated batch_stats equal one device running the whole batch.
  # Dropout off: per-device dropout masks cannot match the single-device ones.
  _, variables, _ = tiny
  n = jax.device_count()
  x = jax.random.normal(jax.random.key(2, impl="rbg"), (2 * n, 8, 8, 3))
  mesh = Mesh(np.array(jax.devices()), ("data",))
  model = SimCLRModel(**TINY, online_dropout=0.0)
  sharded_model = SimCLRModel(**TINY, online_dropout=0.0, bn_axis_name="data")

  def step(m):
    return lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": KEY})

  sharded = jax.jit(jax.shard_map(step(sharded_model), mesh=mesh, in_specs=(P(), P("data")),
                                  out_specs=(P("data"), P())))
  out_n, state_n = sharded(variables, x)
  out_1, state_1 = jax.jit(step(model))(variables, x)
  for key in ("h", "z", "logits"):
    np.testing.assert_allclose(out_n[key], out_1[key], rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               state_n["batch_stats"], state_1["batch_stats"])


# ---------------------------------------------------------------- selective-kernel ResNet (v2)


def sk_resnet_count(stage_sizes, w=1, c_in=3, sk_ratio=0.0625, cifar_stem=False,
                    bottleneck=True):
  """Parameters of google-research/simclr tf2/resnet.py's Resnet with sk_ratio > 0, counted
  layer by layer from that code: Conv2dFixedPadding has no bias, BatchNormRelu has 2 per
  channel (gamma, beta), SK_Conv2D is a 3x3 conv to 2f + BN, 1x1 f -> max(f*sk_ratio, 32) + BN,
  1x1 -> 2f; the first block of every BlockGroup projects (ResNet-D: avg-pool, 1x1, BN)."""
  width, bn = 64 * w, lambda c: 2 * c
  if cifar_stem:
    n = 9 * c_in * width + bn(width)
  else:   # three 3x3 convs: c_in -> w/2 -> w/2 -> w, each with BN
    half = width // 2
    n = 9 * c_in * half + bn(half) + 9 * half * half + bn(half) + 9 * half * width + bn(width)
  c = width
  for i, blocks in enumerate(stage_sizes):
    f = width * 2**i
    out = 4 * f if bottleneck else f
    for j in range(blocks):
      if j == 0:
        n += c * out + bn(out)
      if bottleneck:
        mid = max(int(f * sk_ratio), 32)
        n += (c * f + bn(f) + 9 * f * 2 * f + bn(2 * f) + f * mid + bn(mid) + mid * 2 * f
              + f * out + bn(out))
      else:
        n += 9 * c * f + bn(f) + 9 * f * f + bn(f)
      c = out
  return n


@pytest.mark.parametrize("name,w,cifar_stem,c_in", [
    ("sk_resnet50", 1, False, 3), ("sk_resnet50", 1, True, 1), ("sk_resnet18", 1, False, 3),
    ("sk_resnet152", 3, False, 3)])
def test_sk_resnet_param_count_matches_the_count_derived_from_tf2_resnet(name, w, cifar_stem,
                                                                         c_in):
  stage_sizes, block = BACKBONES[name[3:]]
  want = sk_resnet_count(stage_sizes, w, c_in, cifar_stem=cifar_stem,
                         bottleneck=block is Bottleneck)
  encoder = make_encoder(name, w, cifar_stem)
  variables = abstract_init(encoder, (1, 32, 32, c_in))
  assert n_params(variables["params"]) == want
  h = jax.eval_shape(lambda v: encoder.apply(v, jnp.zeros((1, 32, 32, c_in)), train=False),
                     variables)
  assert h.shape == (1, 512 * w if block is BasicBlock else 2048 * w)


def test_sk_resnet_count_matches_the_simclr_v2_paper():
  # SimCLR v2 (Chen et al. 2020b), table 1: ResNet-50 (1x, SK) 35M, ResNet-152 (3x, SK) 795M.
  assert round(sk_resnet_count((3, 4, 6, 3)) / 1e6) == 35
  assert round(sk_resnet_count((3, 8, 36, 3), w=3) / 1e6) == 795


def _np_conv(x, k, stride=1):
  """NHWC conv with zero padding k//2 (k: (kh, kw, cin, cout)), plain loops."""
  kh, kw = k.shape[:2]
  p = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, w = (x.shape[1] + stride - 1) // stride, (x.shape[2] + stride - 1) // stride
  out = np.zeros((x.shape[0], h, w, k.shape[3]))
  for i in range(h):
    for j in range(w):
      patch = p[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[:, i, j] = np.einsum("nhwc,hwcd->nd", patch, k)
  return out


def test_sk_conv_matches_numpy_in_inference():
  conv = functools.partial(nn.Conv, use_bias=False, padding="VALID")
  norm = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)
  layer = SKConv(4, conv, norm, sk_ratio=0.5, strides=2, min_dim=3)
  x = np.random.default_rng(4).normal(size=(2, 6, 6, 3)).astype(np.float32)
  abstract = jax.eval_shape(lambda: layer.init(KEY, jnp.zeros(x.shape)))
  rng = np.random.default_rng(5)
  v = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.5, jnp.float32), abstract)
  v["batch_stats"] = jax.tree.map(jnp.abs, v["batch_stats"])       # variances > 0
  p, st = jax.tree.map(np.asarray, v["params"]), jax.tree.map(np.asarray, v["batch_stats"])
  bn = lambda y, n: ((y - st[n]["mean"]) / np.sqrt(st[n]["var"] + 1e-5) * p[n]["scale"]
                     + p[n]["bias"])
  y = np.maximum(bn(_np_conv(x, p["conv"]["kernel"], stride=2), "bn"), 0)
  a, b = y[..., :4], y[..., 4:]
  g = (a + b).mean(axis=(1, 2), keepdims=True)
  g = np.maximum(bn(g @ p["mix_reduce"]["kernel"][0, 0], "mix_bn"), 0)   # mid = max(2, 3) = 3
  m = g @ p["mix_expand"]["kernel"][0, 0]
  wa, wb = np.exp(m[..., :4]), np.exp(m[..., 4:])
  want = (a * wa + b * wb) / (wa + wb)
  assert p["mix_reduce"]["kernel"].shape == (1, 1, 4, 3)
  np.testing.assert_allclose(layer.apply(v, x), want, rtol=1e-4, atol=1e-4)

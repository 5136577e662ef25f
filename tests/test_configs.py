"""Every packaged config (simclr_jax/configs) builds and runs one train step, shrunk ("tiny").

Configs whose data is not in the repository (CIFAR-10, SDOBenchmark, ImageNet) read a few
generated examples of the same layout instead; everything else (model, heads, optimizer,
augmentations, loss) is the config's own.
"""

import functools
import os

import jax
import numpy as np
import pytest

from simclr_jax import configs, train, validate
from simclr_jax import state as state_lib
from simclr_jax.data import pipeline, sources

CONFIGS = sorted(["default", *configs.names()])


def _rgb_npz(folder, size, n=64, classes=10):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    np.savez(os.path.join(folder, f"x_{split}.npz"),
             images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             labels=np.arange(n) % classes)
  return os.path.join(folder, "x_{split}.npz")


def _tiny(name, tmp_path):
  c = configs.get(name if name == "default" else f"{name}:tiny")
  c.train.num_devices = 1            # compile time dominates: one device is the cheapest
  c.train.batch_size = min(c.train.batch_size, 8)
  if name == "cifar10":
    c.data.path = _rgb_npz(str(tmp_path), 32)
  elif name == "imagenet":           # TFDS imagenet2012 is not here: the same step on npz
    c.data.source = "npz"
    c.data.path = _rgb_npz(str(tmp_path), 48)
    c.data.num_classes = 10
  elif name == "sdobenchmark":
    from test_finetune import write_sdobenchmark
    write_sdobenchmark(str(tmp_path))
    c.data.path = str(tmp_path)
  return c


def test_the_list_is_every_config():
  assert {"default", "digits", "cifar10", "sdo", "sdobenchmark", "sentinel2",
          "imagenet"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_its_checks_and_builds(name, tmp_path):
  """The everyday tier: every recipe's checks, data, model and optimizer, traced, not
  compiled (the session's tiny run compiles and runs digits:tiny)."""
  config = _tiny(name, tmp_path)
  validate.check(config, "pretrain")
  source = sources.make_source(config.data, config.data.train_split)
  setup = state_lib.build(config, len(source))
  variables = state_lib.abstract_variables(setup.model, config.data, setup.mesh)
  assert set(variables["params"]) >= {"encoder", "projection"}
  shapes = jax.eval_shape(functools.partial(state_lib.init_state, setup),
                          state_lib.run_keys(config.seed)[0])
  assert jax.tree.structure(shapes.params) == jax.tree.structure(variables["params"])


# Each case compiles a whole train step (~20 s): the slow tier.
@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_runs_one_step(name, tmp_path):
  config = _tiny(name, tmp_path)
  validate.check(config, "pretrain")
  source = sources.make_source(config.data, config.data.train_split)
  setup = state_lib.build(config, len(source))
  init_rng, augment_key = state_lib.run_keys(config.seed)
  state = state_lib.init_state(setup, init_rng)
  batch = next(iter(pipeline.pretrain_dataset(source, global_batch_size=config.train.batch_size,
                                              seed=0)))
  state, metrics = train.make_train_step(setup, augment_key)(
      state, train.device_batch(setup.mesh, batch))
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1 and bool(metrics["finite"])
  # NT-Xent of 2B views with cosine similarities in [-1, 1] lies in [0, log(2B - 1) + 2 / T].
  bound = np.log(2 * config.train.batch_size - 1) + 2 / config.loss.temperature
  assert 0.0 <= float(metrics["contrastive_loss"]) <= bound

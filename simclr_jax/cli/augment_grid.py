"""simclr-jax augment-grid: a picture of a config's augmentations.

  simclr-jax augment-grid --config cifar10 --out grid.png

Writes a PNG with one row per image: original | view 1 | view 2, made exactly as the train
step makes them for the config's first --n training examples (same keys, same ops). The same
grid is logged to TensorBoard (tab Images, `augment/views`) at the start of every run.
"""

import os

from absl import flags

from simclr_jax.cli import shared

_CONFIG = shared.define_config_file()
_OUT = flags.DEFINE_string("out", "augment_grid.png", "PNG file to write.")
_N = flags.DEFINE_integer("n", 8, "Number of images (rows).")


def main(argv):
  shared.no_extra_args(argv)
  from PIL import Image

  from simclr_jax import state as state_lib
  from simclr_jax import train
  from simclr_jax.data import sources
  config = _CONFIG.value
  source = sources.make_source(config.data, config.data.train_split)
  grid = train.views_grid(config, source, state_lib.run_keys(config.seed)[1], _N.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  Image.fromarray(grid).save(_OUT.value)
  print(f"wrote {_OUT.value}: {_N.value} images x (original, view 1, view 2) of {source!r}")


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)

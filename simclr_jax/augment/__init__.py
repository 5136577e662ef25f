"""On-device augmentations for SimCLR: per-sample keys, vmapped, jit-safe, any channel count.

  registry.py  Field, Op, register: each op declares its fields, draws and channel needs
  image.py     deterministic image functions (flips, warps, colour, blur, ...)
  ops.py       the registered ops, in the order a view applies them (each documents its fields)
  presets.py   recipes as data (simclr, simclr_cifar, byol, solarnet, sentinel2, none)
  config.py    get_config / resolve: preset + overrides -> (view1, view2) parameter dicts
  compose.py   make_augment, augment_batch, view_keys, two_views, apply_op
  grid.py      host-side contact sheet (grid_image, write_grid)

`print(augment.describe())` lists every op and field with its default. Adding an op is one
decorated function in ops.py (and its test); see that module's docstring.

In the train step, each sample's keys come from the run's augment key and the sample's
position in the data stream (its id), so a view does not depend on the device or batch row
that holds the sample, and the ids change every step because the stream moves on::

    view1, view2 = augment.make_augment(config.augment, channels, image_size)
    k1, k2 = augment.view_keys(augment_key, batch["id"].astype(jnp.uint32))
    x = jnp.concatenate([augment.augment_batch(view1, k1, images),
                         augment.augment_batch(view2, k2, images)])
"""

from simclr_jax.augment.compose import (
    ViewFn,
    apply_op,
    augment_batch,
    make_augment,
    two_views,
    view_keys,
)
from simclr_jax.augment.config import FIELDS, describe, get_config, resolve
from simclr_jax.augment.grid import grid_image, write_grid
from simclr_jax.augment.image import (
    adjust_brightness,
    adjust_contrast,
    adjust_contrast_mean,
    adjust_hue,
    adjust_saturation,
    affine_warp,
    blur_kernel_size,
    crop_and_resize,
    gaussian_blur,
    grayscale,
    hflip,
    resize,
    rgb_to_grayscale,
    rgb_to_hsv,
    hsv_to_rgb,
    rot90,
    rotate,
    shift,
    solarize,
    vflip,
    zoom,
)
from simclr_jax.augment.presets import PRESETS
from simclr_jax.augment.registry import OPS, Field, register

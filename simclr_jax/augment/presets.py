"""Augmentation presets: data only, each a dict of field overrides on the ops' defaults.

A preset names only the fields it changes; every other field keeps its op's default (every
probability 0), so an op added later is off in every preset until one asks for it.
"""

from __future__ import annotations

from typing import Any

# ImageNet SimCLR: crop (0.08, 1), flip, colour jitter 0.8 at strength 1, grayscale 0.2,
# blur 0.5. RGB.
_SIMCLR = dict(crop_scale=(0.08, 1.0), hflip_prob=0.5, color_prob=0.8, color_strength=1.0,
               grayscale_prob=0.2, blur_prob=0.5, value_range=(0.0, 1.0))

PRESETS: dict[str, dict[str, Any]] = {
    # Nothing random; resize to the view size if needed.
    "none": {},
    "simclr": _SIMCLR,
    # CIFAR SimCLR: colour strength 0.5, no blur. RGB.
    "simclr_cifar": {**_SIMCLR, "color_strength": 0.5, "blur_prob": 0.0},
    # BYOL's asymmetric views. RGB.
    "byol": {**_SIMCLR, "color_jitter": (0.4, 0.4, 0.2, 0.1), "blur_prob": (1.0, 0.1),
             "solarize_prob": (0.0, 0.2)},
    # SolarNet magnetograms (1 channel in [-1, 1]): crops and flips, no intensity ops.
    "solarnet": dict(crop_scale=(0.5, 1.0), hflip_prob=0.5, vflip_prob=0.5,
                     value_range=(-1.0, 1.0)),
    # SimCLR-S2 (12 bands): geometric, blur and intensity pairs; no crop, no clip.
    "sentinel2": dict(hflip_prob=0.5, vflip_prob=0.5, rotate_prob=0.5, rotate_degrees=45.0,
                      shift_prob=0.5, shift_fraction=0.1, zoom_prob=0.5, zoom_range=(0.8, 1.2),
                      blur_prob=0.5, brightness_prob=0.5, brightness_delta=0.1,
                      contrast_prob=0.5, contrast_range=(0.8, 1.2), gain_prob=0.5,
                      gain_range=(0.9, 1.1), speckle_prob=0.5, speckle_std=0.1),
}


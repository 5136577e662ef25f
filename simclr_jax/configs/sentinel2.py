"""SimCLR-S2 on BigEarthNet Sentinel-2 patches: 12 bands, 120x120.

  simclr-jax pretrain --config sentinel2 --workdir runs/sentinel2

Data: BigEarthNet-S2 as npz files data/bigearthnet/bigearthnet_{train,test}.npz in the layout
of tests/data/bigearthnet_s2_example (`images` uint16 (N, 120, 120, 12) bands B01..B12 without
B10, reflectance x 10000; `band_mean`, `band_std`; multi-hot `labels_19` / `labels_43`), set
with `--config.data.path=...`; without it the run stops with "no data at ... see README.md §
Data". Each band -> (x - mean) / std. Recipe (SimCLR-S2): ResNet-152, batch 32, 50 epochs,
temperature 0.1, Adam 5e-4, augment preset 'sentinel2' (flips, rotation, shift, zoom, blur,
brightness, contrast, gain, speckle; the pairs the post kept).
Multi-label: the multi-hot targets ride along as `multi_hot` (see simclr_jax/data/sources/arrays.py);
the softmax online head and the single-label probe do not use them, so num_classes = 0.
Expect: the post reports only relative F1 comparisons (fine-tuned on 3 % of the labels),
Adam beating SGD, best learning rate 5e-4; no absolute figure to match.

Variants: `--config sentinel2:example` pretrains on the 6 real patches bundled in tests/data
(a smoke run, no download); `--config sentinel2:tiny` is that shrunk for tests (2 steps).
"""

import os

from simclr_jax import augment
from simclr_jax.configs import default

# The bundled sample is in the repository's tests/data (a checkout, not an installed package).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "tests", "data", "bigearthnet_s2_example",
                       "bigearthnet_s2_example.npz")


def get_config(arg=None):
  c = default.get_config()
  c.seed = 42
  c.data.source = "bigearthnet"
  c.data.path = "data/bigearthnet/bigearthnet_{split}.npz"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.bigearthnet.labels = "labels_19"
  c.data.image_size = 120
  c.data.channels = 12
  c.data.num_classes = 0            # multi-label: no softmax online head
  c.data.value_range = (-5.0, 5.0)  # z-scored bands (display only; the preset does not clip)
  c.data.workers = 2

  c.model.backbone = "resnet152"
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = False
  c.model.hidden_mlp = 2048
  c.model.feat_dim = 128
  c.model.proj_layers = 2
  c.model.online_head = False

  c.loss.temperature = 0.1

  c.optim.name = "adam"
  c.optim.learning_rate = 5e-4
  c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 0.0
  c.optim.schedule = "constant"

  c.augment = augment.get_config("sentinel2")

  c.train.batch_size = 32
  c.train.epochs = 50
  if arg in ("example", "tiny"):
    c.data.path = EXAMPLE
    c.data.image_size = 64
    c.data.workers = 0
    c.model.backbone = "resnet18"
    c.model.width_multiplier = 0.25
    c.model.cifar_stem = True
    c.model.hidden_mlp = 256
    c.train.batch_size = 4          # 6 patches: one device, so any machine divides the batch
    c.train.num_devices = 1
    c.train.epochs = 50
  if arg == "tiny":
    default.shrink(c, batch_size=4, image_size=32)
  elif arg not in (None, "", "example"):
    raise ValueError(f"config sentinel2: unknown variant {arg!r}; expected 'example', "
                     "'tiny' or none")
  return c

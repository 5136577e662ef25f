"""The embedded default: SimCLR on scikit-learn's bundled digits, no download, CPU minutes.

  python scripts/pretrain.py --config configs/digits.py --workdir runs/digits --linear_eval

1437 train digits (8x8 upsampled to 32x32, one channel), ResNet-18 CIFAR stem at width 0.25,
views from random resized crops of 50-100 % of the digit, brightness and contrast jitter and
Gaussian blur; LARS lr 6.0, batch 256, 20 epochs (100 steps). Expect on 2 CPU cores, in about
7.5 minutes after the start-up: probe test accuracy 0.986-0.992 for the pretrained encoder
(three seeds; one run of a neighbouring recipe gave 0.975), 0.969 at random initialisation and
0.972 on raw pixels (README.md § Results has the measured numbers and why the 360-digit test
split makes them vary).

`get_config('tiny')` is the same pipeline shrunk for tests (a few steps, width 1/8).
"""

from configs import default


def get_config(arg=None):
  c = default.get_config()
  c.data.source = "digits"
  c.data.image_size = 32
  c.data.channels = 1
  c.data.num_classes = 10
  c.model.backbone = "resnet18"
  c.model.width_multiplier = 0.25
  c.model.cifar_stem = True
  c.model.hidden_mlp = 256
  c.model.feat_dim = 64
  # Crops of at least half the digit: at 8x8 source pixels a 20 % crop is a blurred stroke
  # fragment, and pairs of those taught the encoder less (probe 0.95 vs 0.92 after 10 epochs).
  c.augment.crop_scale = (0.5, 1.0)
  # SimCLR's lesson that crops alone make too easy a task holds here too: two crops of one
  # digit share its stroke brightness, contrast and sharpness, which views can be matched by.
  # Jittering those (the one-channel stand-in for colour distortion) cut the contrastive
  # accuracy after 10 epochs from 0.50 to 0.13 and lifted the 5-fold probe after 20 epochs
  # from 0.969 to 0.982 (lr 3.0); blur on top: 0.983.
  c.augment.brightness_prob = 0.8
  c.augment.brightness_delta = 0.4    # pixels are in [0, 1]
  c.augment.contrast_prob = 0.8
  c.augment.contrast_range = (0.4, 1.6)
  c.augment.blur_prob = 0.5
  c.augment.blur_sigma = (0.1, 1.5)
  c.augment.blur_kernel_frac = 0.2    # 7x7 kernel at 32x32
  c.train.batch_size = 256
  c.train.epochs = 20               # 100 steps
  c.train.log_every = 20
  # A 100-step run wants a larger step than SimCLR's 1000-epoch CIFAR recipe (LARS 1.0):
  # crops only, 10 epochs, 5-fold probe 0.950 at 1.0, 0.966 at 3.0, 0.968 at 6.0; with the
  # jitter and blur above, 20 epochs: 0.983 at 3.0, 0.988 at 6.0, 0.987 at 10.0.
  c.optim.base_lr = 6.0             # LARS: 6.0 * 256 / 256
  c.optim.warmup_epochs = 5.0
  c.eval.baselines = ("random_init", "raw_pixels")
  if arg == "tiny":
    default.shrink(c, batch_size=32, num_devices=0)   # all devices: tests shard this one
    c.eval.batch_size = 64
    c.eval.c_grid = (1.0,)
  elif arg:
    raise ValueError(f"configs/digits.py: unknown variant {arg!r}; expected 'tiny' or none")
  return c

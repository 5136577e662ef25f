"""A first run on your own small images: set the data fields, nothing else.

  simclr-jax pretrain --config small --workdir runs/mine --linear_eval \
      --config.data.source=npz --config.data.path='my_{split}.npz' \
      --config.data.image_size=28 --config.data.channels=1 --config.data.num_classes=10

For a few thousand to a few tens of thousands of images of 16-64 pixels, any channel count,
on a CPU: 600 steps of batch 256 whatever the set's size (8.6-10.4 minutes at 28x28x1 on 2
x86-64 cores, 245-306 img/s; larger images cost more, about in proportion to their pixels),
then the linear probe beside the same encoder at random initialisation and the raw pixels, so
the first run says whether pretraining helped. Labels are optional (data.num_classes=0: no probe); data sources: docs/data.md.
Measured on grayscale CIFAR-10 at 28x28 (10,000 training images, the 10,000 test images),
docs/results.md § A first run on your own images: pretrained 0.458 and 0.473 (seeds 42 and 1)
against 0.334 and 0.335 at random init and 0.280 for the raw pixels.

What it chooses, and why:
- ResNet-18 with the CIFAR stem at width 1/4 (128-d h): on 2 CPU cores width 1/4 runs 3x the
  steps of width 1/2 (111 against 35 img/s), and width 1 does 16x its work
  (docs/results.md § CIFAR-10 in 20 minutes): in minutes, the narrow net sees far more views.
- Batch 256 and LARS with a large step (base_lr 4.8, a tenth of the run as warm-up, cosine):
  the digits recipe's optimizer, which reached 0.99 in 400 steps (docs/results.md).
- Views: random crops of 20-100 % of the image, horizontal flips, brightness and contrast
  jitter and Gaussian blur: the ops that make sense for any channel count (no colour jitter,
  which needs RGB; no vertical flips or rotations, which change what many images show).
- Temperature 0.5, the SimCLR paper's CIFAR value.
Next fields to try, with the evidence there is:
- train.steps: the loss still falls at step 600 (5.15 at 400, 5.07 at 600): longer runs gain.
- model.width_multiplier: 0.5 or 1 where the minutes allow (a GPU): the CPU budget chose 1/4.
- loss.temperature: 0.5 beat 0.2 at batch 64 and 256 on the digits (docs/sweep_digits.md).
- augment.crop_scale: (0.5, 1.0) where a crop of a fifth of the image no longer shows its
  class (the digits recipe's choice for 8x8 digits).
"""

from simclr_jax.configs import default


def get_config(arg=None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"config small: unknown variant {arg!r}; expected 'tiny' or none")
  c = default.get_config()
  c.data.image_size = 32
  c.model.backbone = "resnet18"
  c.model.width_multiplier = 0.25
  c.model.cifar_stem = True
  c.model.hidden_mlp = 256
  c.model.feat_dim = 64
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.hflip_prob = 0.5
  c.augment.brightness_prob = 0.8
  c.augment.brightness_delta = 0.4
  c.augment.contrast_prob = 0.8
  c.augment.contrast_range = (0.4, 1.6)
  c.augment.blur_prob = 0.5
  c.augment.blur_sigma = (0.1, 1.5)
  c.augment.blur_kernel_frac = 0.1
  c.train.batch_size = 256
  c.train.steps = 600
  c.train.log_every = 50
  c.optim.base_lr = 4.8
  c.optim.warmup_epochs = 1.5       # a tenth of the run for 10,000 images (39 steps an epoch)
  c.eval.baselines = ("random_init", "raw_pixels")
  if arg == "tiny":
    default.shrink(c)
  return c

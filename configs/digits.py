"""The embedded default: SimCLR on scikit-learn's bundled digits, no download, CPU minutes.

  python scripts/pretrain.py --config configs/digits.py --workdir runs/digits --linear_eval

1437 train digits (8x8 upsampled to 32x32, one channel), ResNet-18 CIFAR stem at width 0.25,
LARS, batch 256. Expect on 2 CPU cores: see README.md § Results (probe test accuracy of the
pretrained encoder vs the same encoder at random initialisation and raw pixels).

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
  c.train.batch_size = 256
  c.train.epochs = 20               # 100 steps
  c.train.log_every = 20
  c.optim.base_lr = 1.0             # LARS: 1.0 * 256 / 256 (beat 0.3 and Adam 1e-3 here)
  c.optim.warmup_epochs = 5.0
  c.eval.baselines = ("random_init", "raw_pixels")
  if arg == "tiny":
    c.model.width_multiplier = 0.125
    c.model.hidden_mlp = 32
    c.model.feat_dim = 16
    c.train.batch_size = 32
    c.train.steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.eval.batch_size = 64
    c.eval.c_grid = (1.0,)
  elif arg:
    raise ValueError(f"configs/digits.py: unknown variant {arg!r}; expected 'tiny' or none")
  return c

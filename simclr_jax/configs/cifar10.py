"""SimCLR on CIFAR-10 (the SimCLR paper's CIFAR recipe): ResNet-18 with the CIFAR stem, LARS.

  simclr-jax pretrain --config cifar10 --workdir runs/cifar10 --linear_eval

Data: data/cifar10/cifar10_{train,test}.npz relative to the working directory (`images` uint8
NHWC RGB and `labels`; docs/data.md says how to make them; `--config.data.path=...`
elsewhere), /255 into
[0, 1]; without it the run stops with "no data at ... see README.md § Data".
Recipe: ResNet-18 (3x3 stride-1 stem, no max-pool), projection 512 -> 512 -> BN -> ReLU -> 128,
NT-Xent temperature 0.5, LARS (momentum 0.9, weight decay 1e-6, BN and biases excluded) with
base_lr 0.075 x sqrt(batch) (the SimCLR appendix's rule for small batches), 10 warm-up epochs
then cosine, batch 512, 1000 epochs, augment preset 'simclr_cifar' (crop (0.08, 1), flip,
colour jitter strength 0.5 with p 0.8, grayscale 0.2, no blur). Linear probe on 'test'.
Not run to the end here (no GPU); published linear probes for ResNet-18 on CIFAR-10 after
1000 epochs: the official recipe about 91 %, solo-learn 90.74 %. On 2 CPU cores the step runs
at about 25 img/s (51.0 views/s, measured at batch 256: docs/results.md § Speed on CPU), far
from 1000 epochs: use it there for throughput, not for accuracy. What 20 minutes of CPU
pretraining gives (a width-0.25 ResNet-18, 0.5089): benchmarks/quality.py, docs/results.md.
"""

from simclr_jax import augment
from simclr_jax.configs import default


def get_config(arg=None):
  c = default.get_config()
  c.seed = 42
  c.data.source = "npz"
  c.data.path = "data/cifar10/cifar10_{split}.npz"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.value_range = (0.0, 1.0)
  # Decoding CIFAR-10 is a uint8 -> float32 division: a background thread feeds thousands of
  # images/s, and worker processes would only take cores from the step (benchmarks/README.md).
  c.data.workers = 0

  c.model.backbone = "resnet18"
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = True
  c.model.hidden_mlp = 512
  c.model.feat_dim = 128
  c.model.proj_layers = 2

  c.loss.temperature = 0.5

  c.optim.name = "lars"
  c.optim.learning_rate = 0.0
  c.optim.base_lr = 0.075
  c.optim.lr_scaling = "sqrt"
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10.0
  c.optim.schedule = "cosine"

  c.augment = augment.get_config("simclr_cifar")

  c.train.batch_size = 512
  c.train.epochs = 1000
  c.train.checkpoint_every = 1000
  if arg == "tiny":
    default.shrink(c)
  elif arg:
    raise ValueError(f"config cifar10: unknown variant {arg!r}; expected 'tiny' or none")
  return c

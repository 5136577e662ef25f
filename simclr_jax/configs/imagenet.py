"""SimCLR on ImageNet (ILSVRC-2012), the paper's recipe at 100 epochs: ResNet-50, LARS, batch 4096.

  simclr-jax pretrain --config imagenet --workdir runs/imagenet --linear_eval

Data: TFDS `imagenet2012` prepared as array_record (the source reads it through
`tfds.data_source`, never downloading): put ILSVRC2012_img_{train,val}.tar in
~/tensorflow_datasets/downloads/manual, then once
`tfds.builder('imagenet2012').download_and_prepare(file_format='array_record')`; a data_dir
elsewhere goes in `--config.data.path=...`. Splits 'train' (1,281,167) and 'validation'
(50,000), uint8 RGB /255 into [0, 1]. The source resizes each whole image to 224x224 and the
on-device crop takes its random resized crop from that (the paper crops the full-resolution
image: a little less detail in small crops).
Recipe (Chen et al. 2020, sections 4-5 and appendix B.1): ResNet-50
(7x7 stem, 2048-d h), projection 2048 -> 2048 -> BN -> ReLU -> 128, NT-Xent temperature 0.1,
LARS (momentum 0.9, weight decay 1e-6, BN and biases excluded) at 0.3 x B/256 = 4.8, 10
warm-up epochs then cosine, global batch 4096 (global BatchNorm over every device), 100
epochs (31,200 steps), augment preset 'simclr' (crop (0.08, 1), flip, colour jitter strength
1.0 with p 0.8, grayscale 0.2, blur 0.5). The linear probe is `logistic_jax` (L-BFGS on the
device: scikit-learn on 1.28M x 2048 features would take days).
Expect (not run here): the paper's Table B.1 gives 64.6 % top-1 linear evaluation for ResNet-50
at batch 4096 and 100 epochs (69.3 % at 1000 epochs, Table 6). Its linear protocol trains the
probe with SGD on augmented crops; this repository's probe fits frozen features of the
unaugmented images, so expect the same level within a few points, not the digit. It needs
accelerators: the paper trained this in 1.5 hours on 128 TPU v3 cores; on CPU one step of 4096
images takes many minutes. `--config.model.dtype=auto` computes in bfloat16 on accelerators
(the loss and the state stay float32); `simclr-jax plan --config imagenet --devices 8` says
whether the batch fits your cards, and `model.remat` / `train.chunk_size` trade compute for
memory where it does not (docs/memory.md).

`get_config('tiny')` is the same pipeline shrunk for tests (still reads the data).
"""

from simclr_jax import augment
from simclr_jax.configs import default


def get_config(arg=None):
  c = default.get_config()
  c.seed = 42
  c.data.source = "tfds"
  c.data.tfds.name = "imagenet2012"
  c.data.path = ""                  # TFDS data_dir; '' = ~/tensorflow_datasets
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.value_range = (0.0, 1.0)
  c.data.workers = 8                # JPEG decode + resize of 4096 images per step

  c.model.backbone = "resnet50"
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = False
  c.model.hidden_mlp = 2048
  c.model.feat_dim = 128
  c.model.proj_layers = 2
  c.model.dtype = "float32"

  c.loss.temperature = 0.1

  c.optim.name = "lars"
  c.optim.learning_rate = 0.0
  c.optim.base_lr = 0.3
  c.optim.lr_scaling = "linear"     # 0.3 x 4096 / 256 = 4.8
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9
  c.optim.warmup_epochs = 10.0
  c.optim.schedule = "cosine"

  c.augment = augment.get_config("simclr")

  c.train.batch_size = 4096
  c.train.epochs = 100
  c.train.log_every = 50
  c.train.checkpoint_every = 1000   # about every 3 epochs (312 steps per epoch)

  c.eval.batch_size = 1024
  c.eval.probes = ("logistic_jax",)
  c.eval.c_grid = (0.1, 1.0, 10.0)
  if arg == "tiny":
    default.shrink(c, image_size=32)
  elif arg:
    raise ValueError(f"config imagenet: unknown variant {arg!r}; expected 'tiny' or none")
  return c

"""SolarNet's SimCLR on SDO/HMI magnetograms (Jarolim et al.'s SolarNet): SDOML `bz`, 128x128.

  simclr-jax pretrain --config sdo --workdir runs/sdo --linear_eval
  simclr-jax finetune --workdir runs/sdo      # the flare classifier: TSS, HSS

Data: SolarNet's sdo-dataset at data/sdo-dataset-ssl-bz-1h-2010-2014 (relative to the working
directory; `--config.data.path=...` elsewhere): sdo-dataset-{train,val,test}.csv with
`path_0_before` (npz, key `x`, 512x512 gauss) and `peak_flux`. Without it the run stops at
once with "no data at .../sdo-dataset-train.csv ... see README.md § Data". Pixels: NaN -> 0,
clip ±250 G, / 250, flipped north-up, resized to 128 (mean of 4x4 blocks).
Recipe: ResNet-50 (1 input channel, ImageNet stem), projection 2048 -> 2048 -> BN -> ReLU -> 64,
Adam 1e-3 with 10 warm-up epochs then cosine, batch 768, seed 42, 1000 epochs, augment preset
'solarnet' (crop scale (0.5, 1), h/v flips, no intensity ops), online MLP head on 2 classes
(Quiet < 1e-6, >=C >= 1e-6 W/m² GOES peak flux) with its own Adam at 1e-5 and no gradient into
the encoder. Every epoch: kNN and online accuracy and loss on 'val' (TensorBoard, monitor.json);
the best epoch by online validation loss goes to runs/sdo/checkpoints_best, which linear_eval
and finetune read by default; patience 200 epochs. finetune.py trains the encoder plus a
128-hidden head (dropout 0.2; encoder Adam 1e-4, head 1e-3, batch 128, up to 50 epochs,
patience 10) and the same model from scratch, and reports TSS and HSS of '>=C' on 'test'
(finetune.json, finetune.md).
Expect (SolarNet, 2x TITAN RTX, 56,056 s): early stop at epoch 544 (patience 200), best epoch
345; train 35,479 (Quiet 30,904 / >=C 4,575), val 3,686; tensor min -1, max 1, mean -0.00045,
std 0.0396; SSL then fine-tuned on SDOBenchmark: TSS 0.646 (supervised baseline 0.607).

Variants: `--config sdo:hmi` pretrains on the 84 real HMI SHARP patches bundled in
tests/data (unlabelled, a smoke run that needs no download; a tiny model, 2 CPU cores: minutes);
`--config sdo:tiny` is that shrunk to 2 steps of a width-1/8 ResNet-18 for tests.
"""

import os

from simclr_jax import augment
from simclr_jax.configs import default

# The bundled sample is in the repository's tests/data (a checkout, not an installed package).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HMI_SAMPLE = os.path.join(ROOT, "tests", "data", "hmi_sharp_2012_03", "hmi_sharp_cea_128.npz")


def get_config(arg=None):
  c = default.get_config()
  c.seed = 42
  c.data.source = "sdoml"
  c.data.path = "data/sdo-dataset-ssl-bz-1h-2010-2014"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.sdoml.columns = ("path_0_before",)
  c.data.image_size = 128
  c.data.channels = 1
  c.data.num_classes = 2
  c.data.label_thresholds = ("Quiet: < 1e-6", ">=C: >= 1e-6")
  c.data.value_range = (-1.0, 1.0)
  c.data.workers = 4                # npz decode + resize in 4 processes: far above the step
  c.data.prefetch = 2

  c.model.backbone = "resnet50"
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = False        # 128x128 full-disk images: the ImageNet stem
  c.model.hidden_mlp = 2048
  c.model.feat_dim = 64
  c.model.proj_layers = 2
  c.model.online_head = True        # SolarNet's SSLEvaluator: 2048 -> 128 -> 2, dropout 0.2
  c.model.online_hidden = 128
  c.model.online_dropout = 0.2
  c.online_eval.learning_rate = 1e-5  # SolarNet's online evaluator: Adam 1e-5

  c.loss.temperature = 0.5          # pl_bolts SimCLR default, used by SolarNet

  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10.0
  c.optim.schedule = "cosine"

  c.augment = augment.get_config("solarnet")

  c.train.batch_size = 768
  c.train.epochs = 1000
  c.train.checkpoint_every = 500

  # SolarNet validates every epoch, keeps the best epoch and stops after 200 epochs without a
  # better one. Its monitor is a validation loss; here the online head's loss on 'val' (the
  # contrastive loss is not evaluated on val). kNN on a fixed 5,000-image bank: re-embedding
  # all 35k training images every epoch would cost about a third of an epoch each time.
  c.eval.every_epochs = 1.0
  c.eval.monitor_split = "val"
  c.eval.knn_bank_size = 5000
  c.eval.positive_class = ">=C"     # TSS and HSS of the flare class, in probes and fine-tuning
  c.train.patience = 200
  c.train.monitor = "online_loss"
  c.train.monitor_mode = "min"

  # Fine-tuning into the flare classifier (simclr-jax finetune), scored by TSS and HSS on
  # data.eval_split: SolarNet's evaluator head (128 hidden, dropout 0.2) on the encoder, all
  # labels, the epoch of least validation loss kept, stopped after 10 epochs without a better
  # one; the same model from random init is the supervised baseline.
  c.finetune.label_fractions = (1.0,)
  c.finetune.epochs = 50
  c.finetune.batch_size = 128
  c.finetune.learning_rate = 1e-3
  c.finetune.encoder_lr = 1e-4
  c.finetune.head_hidden = 128
  c.finetune.head_dropout = 0.2
  c.finetune.patience = 10
  c.finetune.baseline = True

  if arg in ("hmi", "tiny"):
    c.data.source = "hmi"
    c.data.path = HMI_SAMPLE
    c.data.label_thresholds = ()
    c.data.num_classes = 0          # no flare labels in the sample
    c.eval.every_epochs = 0.0       # nor a monitor, early stopping or fine-tuning
    c.train.patience = 0
    c.data.image_size = 64
    c.data.workers = 0
    c.model.online_head = False
    c.model.backbone = "resnet18"
    c.model.width_multiplier = 0.25
    c.model.cifar_stem = True
    c.model.hidden_mlp = 256
    c.train.batch_size = 32
    c.train.epochs = 20
    c.optim.warmup_epochs = 2.0
  if arg == "tiny":
    default.shrink(c, image_size=32)
  elif arg not in (None, "", "hmi"):
    raise ValueError(f"config sdo: unknown variant {arg!r}; expected 'hmi', 'tiny' or none")
  return c

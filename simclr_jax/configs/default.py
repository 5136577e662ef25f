"""Every field with its default. Other configs start from `get_config()` here and change a few.

Run (a short SimCLR pretraining on the embedded digits data, then the linear probe):

  simclr-jax pretrain --config default --workdir runs/default
  simclr-jax linear-eval --workdir runs/default

Override any field from the command line, e.g. `--config.train.batch_size=128`; a field that
does not exist here is refused (ml_collections raises, naming the key).
"""

import ml_collections
from ml_collections import config_dict

from simclr_jax import augment
from simclr_jax.data import sources


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 42

  # --- data: a random-access source -> grain pipeline (simclr_jax/data) ------------------
  c.data = ml_collections.ConfigDict()
  # Sources and their formats: simclr_jax/data/sources (package docstring).
  c.data.source = "digits"          # digits|npz|hmi|sdoml|sdobenchmark|folder|tfds|bigearthnet
  c.data.path = ""                  # file / folder / TFDS data_dir; '{split}' -> split name
  c.data.train_split = "train"      # split used for pretraining (labels not needed)
  c.data.eval_split = "test"        # split the linear probe reports on
  c.data.image_size = 32            # side of the square crops the encoder sees
  c.data.channels = 1               # input channels (1 magnetogram, 3 RGB, 12 Sentinel-2)
  c.data.num_classes = 10           # for the online head and the probe; 0 = unlabelled
  c.data.value_range = (0.0, 1.0)   # range of the decoded pixels (for augment / display)
  c.data.workers = 0                # grain worker processes for decode (0 = in-process)
  c.data.prefetch = 2               # batches prefetched ahead (per worker; a thread if 0)
  # Labels from a flux column (sdoml, sdobenchmark): one string per class, first match wins,
  # e.g. ('Quiet: < 1e-6', '>=C: >= 1e-6'); () = labels as stored (or none).
  c.data.label_thresholds = ()
  # Each source's own options, data.<source>.<option> (e.g. data.sdoml.columns), with their
  # defaults; `python -c "from simclr_jax.data import sources; print(sources.describe())"`
  # prints every one with its meaning.
  for name, options in sources.source_configs().items():
    c.data[name] = options
  # Deprecated flat names, read for one release (simclr_jax/data/sources/legacy.py maps each
  # to data.<source>.<option> with a warning naming it): label_key, image_key, tfds_name,
  # channel, time_steps, normalize, clip_gauss, flip_vertical, val_fraction, split_seed,
  # skip_missing, stats_examples. None = not set.
  for old in sources.legacy.RENAMED:
    c.data[old] = config_dict.placeholder(object)

  # --- model: encoder + projection (+ online classifier on stop_gradient(h)) ------------
  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet18"     # resnet18|34|50|101|152|200
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = True         # 3x3 stride-1 stem, no max-pool (small images)
  c.model.hidden_mlp = 512          # projection hidden width
  c.model.feat_dim = 128            # projection output z
  c.model.proj_layers = 2           # 2 = SimCLR v1, 3 = SimCLR v2
  # float32 | bfloat16 (activations; parameters, BatchNorm statistics, loss and optimizer stay
  # float32) | auto (bfloat16 on GPU/TPU, float32 on CPU; resolved once at start-up, logged).
  c.model.dtype = "float32"
  # Rematerialise each residual block (nn.remat): its activations are recomputed in the backward
  # pass instead of kept, ~1/3 more compute for much less memory. The same gradients.
  c.model.remat = False
  # auto (onednn on CPU for float32, else xla; resolved once at start-up, which logs why) |
  # onednn | xla. The same parameters whichever kernel (simclr_jax/models/onednn.py).
  c.model.conv_impl = "auto"
  c.model.online_head = False       # train a classifier on stop_gradient(h) when labels exist
  c.model.online_hidden = 128       # 0 = linear online head
  c.model.online_dropout = 0.0
  # '' = random init. Else the encoder's params and BatchNorm statistics come from PATH: a
  # torchvision ResNet state_dict (.pt; `fc.*` ignored), a `simclr-jax export` folder (either
  # format); the heads are initialised as usual. Pretraining starts from it (a resume keeps its
  # checkpoint's weights); fine-tuning's baseline starts from it instead of random init (row
  # 'init_from'). Width 1, resnet18..152 only (simclr_jax/torch_interop.py).
  c.model.init_from = ""

  # --- the online head's own optimizer (simclr_jax/optim.py: online_optimizer) ------------------
  # Adam at a constant 1e-3 (Adam's usual default): the head has to keep up with a representation
  # that changes at every step, within runs of a few hundred steps here (digits: 100).
  # pl_bolts' SSLOnlineEvaluator uses 1e-4; SolarNet 1e-5 over its ~10^5 steps (sdo.py).
  c.online_eval = ml_collections.ConfigDict()
  c.online_eval.learning_rate = 1e-3
  c.online_eval.weight_decay = 0.0  # > 0: AdamW (kernels only)

  # --- loss -----------------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.5

  # --- optimizer (simclr_jax/optim.py) ------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"             # adam | adamw | sgd | lars
  c.optim.learning_rate = 0.0       # > 0: absolute peak lr; else base_lr with lr_scaling
  c.optim.base_lr = 0.3
  c.optim.lr_scaling = "linear"     # linear: base_lr*B/256 | sqrt: base_lr*sqrt(B) | none
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.trust_coefficient = 0.001
  c.optim.warmup_epochs = 10.0
  c.optim.schedule = "cosine"       # cosine | constant (after warm-up)
  c.optim.end_lr_factor = 0.0

  # --- augmentation (simclr_jax/augment: ops.py documents each field, presets.py the recipes)
  # Every augment field exists (None = the preset's value), so any can be set from the
  # command line. Digits are one channel: geometric and intensity ops only, no flips (a
  # mirrored 2 is not a 2).
  c.augment = augment.get_config("none", crop_scale=(0.2, 1.0), value_range=(0.0, 1.0))

  # --- training loop --------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256          # global batch (all devices, all hosts)
  c.train.epochs = 100
  c.train.steps = 0                 # > 0 overrides epochs
  # 0 = all devices. On a CPU-only host the runs emulate the devices: N when set, else the
  # most (1-8 per core) that split the per-process batch into shares of 16 or more, the faster
  # CPU path (simclr_jax/startup.cpu_device_count); one per process for oneDNN's convolutions.
  c.train.num_devices = 0
  # > 0: the chunked (GradCache) step, for a batch whose activations do not fit: views per device
  # per pass (even; divides the 2 x per-device batch). The loss still takes its negatives from
  # the whole global batch and the gradient is exact, but BatchNorm normalises each chunk (over
  # all devices) instead of the whole batch (simclr_jax/chunked.py). 0 = one pass.
  c.train.chunk_size = 0
  c.train.log_every = 10
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  # A step whose loss or gradient is not finite is never applied (the state stays as it was).
  # 0: the run stops there with a FloatingPointError naming the step; N > 0: up to N such steps
  # (in one process's run) are skipped with a warning, the next one stops the run.
  c.train.max_bad_steps = 0
  c.train.report = True             # report.md + plots/ at the end (simclr-jax report)
  # Early stopping on a metric of the evaluation during pretraining (eval.every_epochs > 0):
  # stop once `patience` evaluations in a row brought no improvement by more than min_delta.
  # The best checkpoint by the same metric is kept in workdir/checkpoints_best.
  c.train.patience = 0              # 0 = never stop early
  c.train.monitor = "knn_accuracy"  # knn_accuracy | online_accuracy | online_loss (eval split)
  c.train.monitor_mode = "auto"     # max | min | auto (min for *_loss, else max)
  c.train.min_delta = 0.0

  # --- logs (simclr_jax/logs.py): process 0 writes TensorBoard event files in the workdir -----
  # With logs.wandb (pip install "simclr_jax[wandb]") it sends Weights & Biases the same scalars
  # and images, the config, and after the run the report's plots: one W&B run per workdir, its
  # id kept in WORKDIR/wandb/run_id so that a resumed run continues it, wandb's files in
  # WORKDIR/wandb. Offline by default (nothing leaves the machine unless asked; a compute node
  # often has no network): `wandb sync WORKDIR/wandb/offline-run-*` uploads it later.
  c.logs = ml_collections.ConfigDict()
  c.logs.wandb = False
  c.logs.wandb_project = "simclr_jax"
  c.logs.wandb_entity = ""          # '' = your default entity (wandb login)
  c.logs.wandb_name = ""            # the run's display name; '' = the workdir's name
  c.logs.wandb_mode = "offline"     # offline | online (streams as it trains; needs wandb login)

  # --- linear evaluation (simclr_jax/evaluate.py) -------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.val_fraction = 0.2         # of the labelled train split, to pick the L2 strength
  c.eval.c_grid = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # inverse L2 strengths tried
  c.eval.select_by = "log_loss"     # pick C by validation log_loss (smooth) | accuracy
  c.eval.label_fractions = (1.0,)   # probe with these stratified fractions of the labels
  c.eval.baselines = ()             # ('random_init', 'raw_pixels') to report references too
  # logistic: scikit-learn lbfgs (exact) | logistic_jax: the same objective by optax L-BFGS on
  # the device (seconds on wide features) | head: optax-trained linear/MLP head (blog recipe)
  c.eval.probes = ("logistic",)
  # What the probe reads (simclr_jax/readout.py): 'h' (the encoder output), or parts joined by
  # '+': head1 (the projection head's first layer), s4_2x2 / s3_2x2 (the last two stages'
  # maps average-pooled over a 2x2 grid). README § Results has what each is worth on CIFAR-10.
  c.eval.features = "h"
  # Evaluation during pretraining (simclr_jax/monitor.py), written to TensorBoard as eval/*:
  # a kNN classifier of h (cosine similarity; train split as the bank) and, with
  # model.online_head, the online head's accuracy and loss, on `monitor_split`.
  c.eval.every_epochs = 0.0         # every this many epochs, and after the last step; 0 = off
  c.eval.monitor_split = ""         # '' = data.eval_split
  c.eval.knn_k = 20
  c.eval.knn_temperature = 0.07     # votes exp(sim / T) (InstDisc, solo-learn); 0 = majority
  c.eval.knn_bank_size = 0          # > 0: a fixed random subset of the train split as the bank
  c.eval.checkpoint = "best"        # best (workdir/checkpoints_best, else latest) | latest | STEP
  c.eval.positive_class = "-1"      # two classes: name or index for TSS/HSS (-1 = the last)
  c.eval.head_hidden = 0            # head probe: 0 = linear, else one ReLU layer this wide
  c.eval.head_dropout = 0.0
  c.eval.head_learning_rate = 3e-4  # Adam
  c.eval.head_weight_decay = 0.0    # > 0: AdamW
  c.eval.head_batch_size = 64
  c.eval.head_epochs = 100          # the epoch of least validation loss is kept

  # --- fine-tuning (simclr_jax/finetuning.py; simclr-jax finetune --workdir DIR) -------------
  # Encoder (+ `from_projection` layers of the projection head, SimCLR v2) + a new head, on
  # stratified `label_fractions` of the labelled train split (8:2 fit/val, `seed`), scored on
  # data.eval_split at the epoch of least validation loss.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.label_fractions = (1.0,)
  c.finetune.val_fraction = 0.2
  c.finetune.seed = 0               # label fractions, the fit/val split, head init, batches
  c.finetune.epochs = 30
  c.finetune.batch_size = 64        # global; rounded down to the device count, <= fit size
  c.finetune.learning_rate = 3e-4   # head
  c.finetune.encoder_lr = 3e-5      # encoder (and kept projection layers); 0 = frozen
  c.finetune.optimizer = "adam"     # adam | adamw | sgd (momentum 0.9)
  c.finetune.weight_decay = 0.0
  c.finetune.head_hidden = 0        # 0 = linear head, else one ReLU layer this wide
  c.finetune.head_dropout = 0.0
  c.finetune.from_projection = 0    # SimCLR v2: keep this many projection layers (v2: 1)
  c.finetune.batch_norm = "auto"    # train | frozen | auto (frozen iff encoder_lr == 0)
  c.finetune.patience = 0           # epochs without a better val loss before stopping (0 = off)
  c.finetune.augment = True         # crop + flips of the pretraining recipe on training images
  c.finetune.baseline = True        # also train the same model from random init (supervised)
  c.finetune.eval_batch_size = 256

  # --- self-distillation, SimCLR v2 (simclr_jax/distillation.py; simclr-jax distill --workdir DIR) --
  # After `finetune`: its model (`teacher`) at each label fraction labels every image of the
  # train split, softened by `temperature`; a student (random init) learns those labels on the
  # same augmented views, plus `label_weight` x the cross-entropy of the fraction's labels.
  c.distill = ml_collections.ConfigDict()
  c.distill.label_fractions = ()    # () = every fraction finetune.json has a model of
  c.distill.teacher = "pretrained"  # which fine-tuned model: pretrained | scratch | init_from
  c.distill.temperature = 1.0       # P = softmax(logits / temperature), teacher and student
  c.distill.label_weight = 0.0      # 0 = the teacher's labels alone (v2's distillation)
  c.distill.epochs = 30             # over the whole train split
  c.distill.steps = 0               # > 0 overrides epochs
  c.distill.batch_size = 128        # global
  c.distill.optimizer = "adam"      # adam | adamw | sgd (momentum 0.9); cosine decay
  c.distill.learning_rate = 1e-3
  c.distill.weight_decay = 0.0
  c.distill.augment = True          # fine-tuning's crop + flips, one view for both networks
  c.distill.seed = 0                # student init, data order, augmentation
  c.distill.log_every = 50
  c.distill.checkpoint_every = 200  # steps; a kill loses at most this many
  c.distill.keep_checkpoints = 2
  c.distill.eval_batch_size = 256
  c.distill.student = ml_collections.ConfigDict()
  c.distill.student.backbone = ""   # '' = model.backbone (self-distillation); or a smaller one
  c.distill.student.width_multiplier = 0.0   # 0 = model.width_multiplier

  # --- multi-host start (simclr_jax/distributed.py: initialize_distributed) -------------------
  # Unset here: JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else the cluster
  # JAX detects (SLURM, Open MPI, TPU slices, GKE), else a single process.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # 'host:port' of process 0, the same on every host
  c.distributed.num_processes = 0         # 0 = not set
  c.distributed.process_id = -1           # -1 = not set; 0 .. num_processes-1
  c.distributed.local_device_ids = ()     # () = all local devices; e.g. 0,1 (one GPU per task)
  return c


def shrink(c: ml_collections.ConfigDict, batch_size: int = 16, num_devices: int = 1,
           image_size: int | None = None) -> ml_collections.ConfigDict:
  """The 'tiny' variant every config offers for tests: the same pipeline, shrunk to seconds.

  A ResNet-18 at width 1/8 with small heads, 2 steps, logging and checkpointing every step.
  `num_devices=1` by default because compile time dominates such runs (each extra emulated device
  adds to it);
  0 keeps every device (for tests of the sharded step).
  """
  if image_size:
    c.data.image_size = image_size
  c.data.workers = 0
  c.model.backbone = "resnet18"
  c.model.width_multiplier = 0.125
  c.model.cifar_stem = True
  c.model.hidden_mlp = 32
  c.model.feat_dim = 16
  c.model.online_hidden = 16
  c.train.batch_size = batch_size
  c.train.steps = 2
  c.train.num_devices = num_devices
  c.train.log_every = 1
  c.train.report = False            # the report reads data and imports matplotlib: seconds
  c.train.checkpoint_every = 2
  return c


def _as_default_type(default, value):
  """JSON turns tuples into lists: give them back their tuple form (nested pairs too)."""
  if isinstance(value, list):
    return tuple(_as_default_type(None, v) for v in value)
  return value


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A workdir's saved config.json (a dict) over every default field, so a run written before a
  field existed still takes `--config.<field>=...` overrides (simclr-jax finetune)."""
  def merge(into, values):
    for key, value in values.items():
      if key in into and isinstance(into[key], ml_collections.ConfigDict) and isinstance(
          value, dict):
        merge(into[key], value)
        continue
      with into.ignore_type():
        into[key] = (ml_collections.ConfigDict(value) if isinstance(value, dict)
                     else _as_default_type(into.get(key), value))
  c = get_config()
  with c.unlocked():
    merge(c, saved)
    if "online_eval" not in saved:
      # Written before the online head had its own optimizer: it trained with the SSL one, and
      # the checkpoints' optimizer state has that structure (train.build reads None so).
      with c.ignore_type():
        c.online_eval = None
  return c

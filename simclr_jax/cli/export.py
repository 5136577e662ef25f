"""simclr-jax export: the pretrained encoder alone, for use elsewhere.

  simclr-jax export --workdir runs/digits --out exports/digits

Writes OUT/encoder.npz (the encoder's parameters and BatchNorm statistics) and
OUT/encoder.json (the model fields that rebuild it and the input it expects: image size,
channels, value range), from the `--checkpoint` of the run (best, else latest; or latest, or
a step). Read it back with no config file:

  import simclr_jax
  encoder = simclr_jax.load_encoder("exports/digits")
  h = encoder(images)        # (N, H, W, C) in encoder.value_range -> (N, encoder.feature_dim)

`--format torchvision` writes OUT/encoder_torchvision.pt instead, a state_dict that
torchvision's resnet18 ... resnet152 loads with strict=True once conv1 is sized to the run
(channels, CIFAR stem: 3x3 stride 1 and no max-pool) and fc dropped; `--with_head` adds
OUT/projection_head.pt. OUT/load_in_pytorch.py holds (and the command prints) those lines:

  simclr-jax export --workdir runs/digits_r18 --out exports/digits_r18_torch --format torchvision
  python exports/digits_r18_torch/load_in_pytorch.py    # h: (2, 512)

(width 1 and resnet18 ... 152 only; docs/export.md trains such a run).
"""

from absl import flags

from simclr_jax import api, validate
from simclr_jax.cli import shared

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
_OUT = flags.DEFINE_string("out", None, "Folder to write the encoder to (created).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
_FORMAT = flags.DEFINE_enum("format", "npz", ["npz", "torchvision"],
                            "npz: for simclr_jax.load_encoder; torchvision: PyTorch state_dicts "
                            "for torchvision's ResNet, and the lines that load them.")
_WITH_HEAD = flags.DEFINE_bool("with_head", False, "With --format torchvision: the projection "
                               "head too, as its own state_dict.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  shared.no_extra_args(argv)
  api.require_run(_WORKDIR.value)
  from simclr_jax import export, logs
  logs.quiet_libraries()
  if _FORMAT.value == "torchvision":
    return _torchvision(export)
  if _WITH_HEAD.value:
    raise validate.ConfigError("--with_head needs --format torchvision (the npz export holds "
                               "the encoder only)")
  out = export.export_encoder(_WORKDIR.value, _OUT.value, _CHECKPOINT.value)
  encoder = export.load_encoder(out)
  print(f"{out}: {encoder!r} from {encoder.info['checkpoint']} checkpoint, step "
        f"{encoder.info['checkpoint_step']}", flush=True)


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)      # a known error: one `error:` line, exit 2


def _torchvision(export) -> None:
  paths = export.export_torchvision(_WORKDIR.value, _OUT.value, _CHECKPOINT.value,
                                    _WITH_HEAD.value)
  with open(paths[-1]) as f:
    print(f.read(), flush=True)       # the lines that build and load the torch models
  print("wrote " + ", ".join(paths), flush=True)

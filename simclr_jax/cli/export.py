"""simclr-jax export: the pretrained encoder alone, for use elsewhere.

  simclr-jax export --workdir runs/digits --out exports/digits

Writes OUT/encoder.npz (the encoder's parameters and BatchNorm statistics) and
OUT/encoder.json (the model fields that rebuild it and the input it expects: image size,
channels, value range), from the `--checkpoint` of the run (best, else latest; or latest, or
a step). Read it back with no config file:

  import simclr_jax
  encoder = simclr_jax.load_encoder("exports/digits")
  h = encoder(images)        # (N, H, W, C) in encoder.value_range -> (N, encoder.feature_dim)
"""

from absl import flags

from simclr_jax import api
from simclr_jax.cli import shared

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
_OUT = flags.DEFINE_string("out", None, "Folder to write the encoder to (created).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  shared.no_extra_args(argv)
  api.require_run(_WORKDIR.value)
  from simclr_jax import export, logs
  logs.quiet_libraries()
  out = export.export_encoder(_WORKDIR.value, _OUT.value, _CHECKPOINT.value)
  encoder = export.load_encoder(out)
  print(f"{out}: {encoder!r} from {encoder.info['checkpoint']} checkpoint, step "
        f"{encoder.info['checkpoint_step']}", flush=True)


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)      # a known error: one `error:` line, exit 2

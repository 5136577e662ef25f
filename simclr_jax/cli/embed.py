"""simclr-jax embed: embeddings of your own files from a trained encoder.

  simclr-jax embed --encoder runs/digits --data my_digits/ --out emb.csv --plot
  simclr-jax embed --encoder exports/sdo --data 'hmi/**/*.fits' --out emb.parquet

--encoder is a pretraining workdir (its --checkpoint: best, else latest; or latest, or a step,
as simclr_jax.load_encoder picks it) or an export folder (simclr-jax export). --data is a
folder (class subfolders become a `label` column) or a quoted glob. Each file is read and
prepared as the run prepared its training images (the preprocessing recorded with the model:
normalisation, clip, flips, band statistics, resize), embedded in batches with a progress
line, and written to --out: .npz (`embeddings` (N, D), `paths`), .csv or .parquet (a `path`
column, then h0 .. h{D-1}). --plot adds OUT's stem + _map.png (UMAP or t-SNE, coloured by
label) and _neighbours.png (queries and their nearest neighbours). JAX runs on its default
device: a GPU where jax[cuda] is installed.
"""

from absl import flags

from simclr_jax import validate
from simclr_jax.cli import shared

_ENCODER = flags.DEFINE_string("encoder", None, "A pretraining workdir or an export folder.")
_DATA = flags.DEFINE_string("data", None, "A folder of images (class subfolders: labels) or a "
                            "glob ('**' recurses; quote it).")
_OUT = flags.DEFINE_string("out", None, "The table to write: .npz, .csv or .parquet.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "From a workdir: best | latest | a step.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Files read and embedded at a time.")
_PLOT = flags.DEFINE_bool("plot", False, "Also draw the embedding map and the neighbour grid "
                          "beside --out.")
flags.mark_flags_as_required(["encoder", "data", "out"])


def main(argv):
  shared.no_extra_args(argv)
  from simclr_jax import embeddings, extras, logs
  logs.quiet_libraries()
  if _BATCH.value < 1:
    raise validate.ConfigError(f"--batch_size={_BATCH.value}; expected >= 1")
  try:
    result = embeddings.embed(_ENCODER.value, _DATA.value, _OUT.value, checkpoint=_CHECKPOINT.value,
                         batch_size=_BATCH.value, plot=_PLOT.value, show_progress=True)
  except (ValueError, FileNotFoundError, KeyError, extras.MissingExtra) as e:
    raise validate.ConfigError(shared.error_line(e)) from None
  labels = "" if result.labels is None else f", labels from {len(result.class_names)} folders"
  print(f"{len(result.paths)} files -> {result.embeddings.shape[1]}-d embeddings{labels}; "
        f"wrote {', '.join(result.written)}", flush=True)


def run_cli(argv) -> int:
  """`main` for this argv in this process; returns the exit code."""
  return shared.run(main, argv)


def app_run(argv) -> None:
  shared.app_run(main, argv)      # a known error: one `error:` line, exit 2

"""simclr-jax sweep: a grid of pretraining runs scored downstream, in one folder with one table
and one plot.

  simclr-jax sweep --config digits --grid optim.name=adam,lars \\
      --grid train.batch_size=64,128 --metric probe:accuracy
  simclr-jax sweep --config sentinel2:example --pairs hflip,affine,blur,gain \\
      --metric finetune:micro_f1 --eval_flag=--config.finetune.epochs=5

Every point runs `simclr-jax pretrain --config CONFIG --workdir SWEEP/POINT --config.F=V ...`
(plus any other --config.* flag given here, for every point), then the scoring subcommand
(`linear-eval` for probe:*, `finetune` for finetune:*; --eval_flag adds its flags). A point
whose score file exists is skipped; an unfinished one resumes. Writes SWEEP/sweep.csv,
sweep.md and sweep.png (bars for one axis, a heat map for two or for --pairs). SWEEP is
--sweep_dir, default runs/sweep-<config>-<YYYYmmdd-HHMMSS>.
"""

import argparse
import os
import sys
import time

from simclr_jax import configs, sweep


def main(argv=None):
  p = argparse.ArgumentParser(prog="simclr-jax sweep", description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True,
                 help="a packaged config NAME[:variant] or FILE.py[:variant], as for pretrain")
  p.add_argument("--grid", action="append", default=[], help="FIELD=V1,V2,... (repeatable)")
  p.add_argument("--pairs", default="", help="comma-separated augmentation ops: every pair")
  p.add_argument("--pairs_preset", default="", help="preset the ops' settings come from "
                 "(default: the config's augment.preset)")
  p.add_argument("--metric", default="probe:accuracy",
                 help="probe:<key> or finetune:<key>, e.g. finetune:macro_f1, finetune:tss")
  p.add_argument("--sweep_dir", default="")
  p.add_argument("--eval_flag", action="append", default=[],
                 help="a flag for the scoring subcommand (repeatable)")
  args, extra = p.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  try:
    if bad:
      raise ValueError(f"unknown argument {bad[0]!r}: only --config.<field>=<value> flags pass "
                       "through to every point")
    if bool(args.grid) == bool(args.pairs):
      raise ValueError("give --grid FIELD=V1,V2 (repeatable) or --pairs OP1,OP2,..., not both")
    configs.path(args.config)             # an unknown name: refused before any point starts
    sweep.check_metric(args.metric)
    if args.pairs:
      ops = [o.strip() for o in args.pairs.split(",") if o.strip()]
      # The config's own augment preset is the pairs' reference (reading it runs no step).
      preset = args.pairs_preset or configs.get(args.config).augment.preset
      points = sweep.pair_points(ops, preset)
      axis_names = ["view op a", "view op b"]
    else:
      axes = sweep.parse_grid(args.grid)
      points = sweep.grid_points(axes)
      axis_names = [f for f, _ in axes]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  name = configs.run_name(args.config.partition(":")[0])
  stamp = time.strftime("%Y%m%d-%H%M%S")
  sweep_dir = args.sweep_dir or os.path.join("runs", f"sweep-{name}-{stamp}")
  print(f"sweep of {len(points)} points in {sweep_dir}", flush=True)
  rows = sweep.run(args.config, sweep_dir, points, args.metric, extra, args.eval_flag,
                   log=lambda m: print(m, flush=True))
  paths = sweep.write_tables(sweep_dir, rows, args.metric, axis_names, bool(args.pairs))
  print(open(paths["md"]).read())
  print("wrote " + ", ".join(paths.values()))
  return 0 if all(r[args.metric] is not None for r in rows) else 1


def run_cli(argv) -> int:
  """`main` for this argv (argv[0] the program name) in this process; returns the exit code."""
  return main(argv[1:])


def app_run(argv) -> None:
  sys.exit(run_cli(argv))      # argparse's own flags: absl's are not read here

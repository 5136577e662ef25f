"""A grid of pretraining runs scored downstream, in one folder with one table and one plot.

  python scripts/sweep.py --config configs/digits.py --grid optim.name=adam,lars \\
      --grid train.batch_size=64,128 --metric probe:accuracy
  python scripts/sweep.py --config configs/sentinel2.py:example --pairs hflip,affine,blur,gain \\
      --metric finetune:micro_f1 --eval_flag=--config.finetune.epochs=5

Every point runs `scripts/pretrain.py --config CONFIG --workdir SWEEP/POINT --config.F=V ...`
(plus any other --config.* flag given here, for every point), then the scoring script
(`linear_eval.py` for probe:*, `finetune.py` for finetune:*; --eval_flag adds its flags). A
point whose score file exists is skipped; an unfinished one resumes. Writes SWEEP/sweep.csv,
sweep.md and sweep.png (bars for one axis, a heat map for two or for --pairs). SWEEP is
--sweep_dir, default runs/sweep-<config>-<YYYYmmdd-HHMMSS>.
"""

import argparse
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from simclr_jax import sweep  # noqa: E402  (after the path: configs import as configs.*)


def _augment_preset(config: str) -> str:
  """The config file's own augment preset (the pairs' reference), without running a step."""
  path, _, variant = config.partition(":")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant or None).augment.preset


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="config file[:variant], as for pretrain.py")
  p.add_argument("--grid", action="append", default=[], help="FIELD=V1,V2,... (repeatable)")
  p.add_argument("--pairs", default="", help="comma-separated augmentation ops: every pair")
  p.add_argument("--pairs_preset", default="", help="preset the ops' settings come from "
                 "(default: the config's augment.preset)")
  p.add_argument("--metric", default="probe:accuracy",
                 help="probe:<key> or finetune:<key>, e.g. finetune:macro_f1, finetune:tss")
  p.add_argument("--sweep_dir", default="")
  p.add_argument("--eval_flag", action="append", default=[],
                 help="a flag for the scoring script (repeatable)")
  args, extra = p.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  try:
    if bad:
      raise ValueError(f"unknown argument {bad[0]!r}: only --config.<field>=<value> flags pass "
                       "through to every point")
    if bool(args.grid) == bool(args.pairs):
      raise ValueError("give --grid FIELD=V1,V2 (repeatable) or --pairs OP1,OP2,..., not both")
    sweep.check_metric(args.metric)
    if args.pairs:
      ops = [o.strip() for o in args.pairs.split(",") if o.strip()]
      points = sweep.pair_points(ops, args.pairs_preset or _augment_preset(args.config))
      axis_names = ["view op a", "view op b"]
    else:
      axes = sweep.parse_grid(args.grid)
      points = sweep.grid_points(axes)
      axis_names = [f for f, _ in axes]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  name = os.path.splitext(os.path.basename(args.config.partition(":")[0]))[0]
  sweep_dir = args.sweep_dir or os.path.join("runs", f"sweep-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
  print(f"sweep of {len(points)} points in {sweep_dir}", flush=True)
  rows = sweep.run(args.config, sweep_dir, points, args.metric, extra, args.eval_flag,
                   log=lambda m: print(m, flush=True))
  paths = sweep.write_tables(sweep_dir, rows, args.metric, axis_names, bool(args.pairs))
  print(open(paths["md"]).read())
  print("wrote " + ", ".join(paths.values()))
  return 0 if all(r[args.metric] is not None for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())

"""AutoProg (progressive patches and depth for ViTs) against the baseline, through the bench harness.

Runs `kgrow bench` with the baseline and the chosen AutoProg variants, all in
this process on the same model, data and seeds, and writes results.json /
results.md / curves.png. Modes:

* ``prog``: the paper's manual schedule (4 equal stages, resolution and depth
  from half, MoGrow);
* ``ablation``: the same schedule with each growth operator (RandInit,
  Stacking, Interpolation, MoGrow);
* ``autoprog``: the search (bench method ``autoprog``, from its own module);
* ``replay --schedule-json FILE``: Prog running a fixed schedule, e.g. the
  one an AutoProg run wrote (``GrowthSchedule.to_json()``; a results.json
  holding it under ``schedule`` / ``searched_schedule`` works too).

The default profile is ``standard-vit`` (a DeiT-style ViT on Fashion-MNIST).

Examples:
    python recipes/autoprog.py --mode prog --out runs/prog
    python recipes/autoprog.py --mode ablation --out runs/prog_ablation --seeds 2
    python recipes/autoprog.py --mode prog --profile quick --model vit \\
        --model-arg patch_size=4 --model-arg depth=4 --subset 2000 --epochs 2 --out runs/smoke
    python recipes/autoprog.py --mode replay --schedule-json runs/autoprog/schedule.json \\
        --out runs/replay
"""
from __future__ import annotations

import argparse
import json
import sys

from kgrow import bench
from kgrow.bench import cli as bench_cli
from kgrow.methods.autoprog import OPERATORS
from kgrow.methods.autoprog import bench as ap_bench

MODES = ("prog", "ablation", "autoprog", "replay")


def read_schedule(path: str):
    """A `GrowthSchedule` from a JSON file: `GrowthSchedule.to_json()` output, or a
    dict holding it under "schedule" / "searched_schedule" (e.g. a results file)."""
    from kgrow.schedules import GrowthSchedule
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("searched_schedule", "schedule"):
        if isinstance(data, dict) and key in data and "stages" not in data:
            data = data[key]
    if not isinstance(data, dict) or "stages" not in data:
        raise SystemExit(f"{path}: no growth schedule (a JSON object with 'stages', as "
                         "GrowthSchedule.to_json() writes it).")
    return GrowthSchedule.from_dict(data)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, default="prog")
    parser.add_argument("--operator", choices=sorted(OPERATORS), default="mogrow",
                        help="prog/replay: growth operator of new blocks")
    parser.add_argument("--num-stages", type=int, default=4)
    parser.add_argument("--resolution-scale", type=float, default=0.5)
    parser.add_argument("--depth-scale", type=float, default=0.5)
    parser.add_argument("--adaptive-regularization", action="store_true",
                        help="ramp RandAugment magnitude, drop path and erasing with the stage")
    parser.add_argument("--schedule-json", metavar="FILE", help="replay: the schedule to run")
    parser.add_argument("--no-baseline", action="store_true")
    bench_cli.add_arguments(parser)
    parser.set_defaults(profile="standard-vit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [] if args.no_baseline else ["baseline"]
    options = dict(num_stages=args.num_stages, resolution_scale=args.resolution_scale,
                   depth_scale=args.depth_scale,
                   adaptive_regularization=args.adaptive_regularization)
    if args.mode == "prog":
        name = "prog" if args.operator == "mogrow" else f"prog_{args.operator}"
        bench.register_method(name, ap_bench.factory(args.operator, **options), overwrite=True)
        names.append(name)
    elif args.mode == "ablation":
        for op in ("randinit", "stacking", "interpolation", "mogrow"):
            name = f"prog_{op}"
            bench.register_method(name, ap_bench.factory(op, **options), overwrite=True)
            names.append(name)
    elif args.mode == "autoprog":
        if "autoprog" not in bench.available_methods():
            raise SystemExit("recipes/autoprog.py: the bench method 'autoprog' (the search) "
                             "is not registered in this kgrow.")
        names.append("autoprog")
    else:
        if not args.schedule_json:
            raise SystemExit("--mode replay needs --schedule-json FILE")
        schedule = read_schedule(args.schedule_json)
        name = "prog_replay"
        bench.register_method(name, ap_bench.factory(
            args.operator, schedule=schedule,
            adaptive_regularization=args.adaptive_regularization), overwrite=True)
        names.append(name)
    args.methods = ",".join(names)
    return bench_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())

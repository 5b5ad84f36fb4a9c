"""Step time of a CNN's sub-networks over a grid of widths x depths.

The realization of a growth schedule (the fraction of its FLOPs saving seen
in wall-clock) is a FLOPs-weighted mean of its stages' realizations
`(1 - t) / (1 - f)` (`t`, `f`: the stage's step time and training FLOPs
relative to the full model), so no schedule realizes more than its best
stage. This script measures `t` and `f` for every (width, depth) sub-network
the growth engine builds from the profile's model, timing `train_on_batch`
on one real batch in interleaved rounds (the bench probe's timer), and
prints each cell's realization: the schedule designer's map of which
sub-networks the machine runs at their FLOPs' speed.

Usage:
    python benchmarks/width_depth_grid.py [--profile standard] [--widths 0.25 0.5 0.75 1]
        [--depths 0.3333 0.6667 1] [--rounds 5] [--steps 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--depths", type=float, nargs="+", default=[1 / 3, 2 / 3, 1.0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the grid here")
    args = parser.parse_args()
    if max(args.widths) != 1.0 or max(args.depths) != 1.0:
        raise SystemExit("--widths and --depths must include 1 (the full model is the reference)")

    import keras
    import numpy as np

    from kgrow import flops
    from kgrow.bench import probe, registry, runner
    from kgrow.bench.runner import BenchSpec
    from kgrow.schedules import Stage

    spec = BenchSpec.from_profile(args.profile, methods=[registry.BASELINE], seed=0,
                                  num_seeds=1)
    keras.utils.set_random_seed(0)
    bundle = runner.load_data(spec, 0)
    context = registry.MethodContext(
        model_name=spec.model, model_kwargs=dict(spec.model_kwargs),
        input_shape=tuple(bundle.info.image_shape), num_classes=bundle.info.num_classes,
        train=spec.train, data=bundle, steps_per_epoch=int(bundle.steps_per_epoch),
        label_mode=bundle.info.label_mode)
    cells, variants = [], []
    for width, depth in itertools.product(sorted(args.widths), sorted(args.depths)):
        model = context.build_model()
        if (width, depth) != (1.0, 1.0):
            model = probe._grown(model, Stage(0, width=None if width == 1.0 else width,
                                              depth=None if depth == 1.0 else depth))
        context.compile(model)
        cost = flops.count(model, tuple(context.input_shape)).training
        variants.append(probe.Variant("grid", width, model, tuple(context.input_shape),
                                      float(cost)))
        cells.append((width, depth))
    probe.time_variants(variants, next(iter(bundle.train)), rounds=args.rounds,
                        steps=args.steps)
    full_s = float(np.median(variants[-1].seconds))
    full_f = variants[-1].flops_per_sample
    rows = []
    print(f"{'width':>6} {'depth':>6} {'step ms':>8} {'time':>6} {'FLOPs':>6} {'realization':>11}")
    for (width, depth), v in zip(cells, variants):
        t = float(np.median(v.seconds)) / full_s
        f = v.flops_per_sample / full_f
        r = (1 - t) / (1 - f) if f < 1 else None
        rows.append({"width": width, "depth": depth, "step_ms": 1000 * t * full_s,
                     "time": t, "flops": f, "realization": r,
                     "params": int(v.model.count_params())})
        print(f"{width:6.2f} {depth:6.2f} {1000 * t * full_s:8.1f} {t:6.3f} {f:6.3f} "
              f"{'-' if r is None else f'{r:11.0%}':>11}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"profile": args.profile, "batch": spec.train.batch_size,
                       "rounds": args.rounds, "steps": args.steps, "cells": rows}, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

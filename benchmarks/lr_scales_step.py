"""Step time with per-entry LR scales on every weight against none.

Variance transfer's LR adaptation gives every entry of every weight its own
learning-rate factor (`kgrow.controller.LRScales`); the controller's step
rescales each scaled variable's update after the optimizer's,
`w = old + s (w_new - old)` (a copy and a multiply-add per variable). This
script times `train_on_batch` of the profile's model on one real batch of
its data, with the profile's optimizer, with and without scales on all
trainable variables, interleaved round by round (so load changes hit both
alike), median per round.

Usage:
    python benchmarks/lr_scales_step.py [--profile standard] [--width 1.0] [--rounds 30]
        [--steps 5]
"""
from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _interleaved import round_step_times  # noqa: E402  (benchmarks/ is the script's path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    import keras
    import numpy as np

    from kgrow import models
    from kgrow.bench import runner
    from kgrow.controller import LRScales, TrainingController
    from kgrow.training import compile_with_config

    spec = runner.BenchSpec.from_profile(args.profile)
    train = spec.train
    bundle = runner.load_data(spec, 0)
    x, y = next(iter(bundle.train))
    shape, classes = tuple(bundle.info.image_shape), bundle.info.num_classes

    def build(scaled: bool):
        keras.utils.set_random_seed(0)
        model = models.get(spec.model, shape, classes, width=args.width, **spec.model_kwargs)
        compile_with_config(model, train, int(bundle.steps_per_epoch),
                            label_mode=bundle.info.label_mode)
        ctrl = TrainingController.of(model)
        if scaled:
            rng = np.random.default_rng(0)
            LRScales.of(ctrl).set({v.path: rng.uniform(0.5, 1.5, tuple(v.shape))
                                   for v in model.trainable_weights})
        for _ in range(3):  # trace and warm up
            model.train_on_batch(x, y)
        return model

    runs = {"none": build(False), "per entry": build(True)}
    times = round_step_times(runs, x, y, args.rounds, args.steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{spec.model} width {args.width} ({args.profile}), batch {train.batch_size}, "
          f"{train.optimizer} momentum {train.momentum} weight decay {train.weight_decay}, "
          f"{args.rounds} rounds x {args.steps} steps (interleaved)")
    for name, t in med.items():
        print(f"  LR scales {name:<9} median step {1000 * t:7.1f} ms  "
              f"(min {1000 * min(times[name]):.1f}, max {1000 * max(times[name]):.1f}), "
              f"+{1000 * (t - med['none']):.1f} ms")
    ratios = sorted(a / b for a, b in zip(times["per entry"], times["none"]))
    quart = len(ratios) // 4
    print(f"  per entry / none, paired by round: median {statistics.median(ratios):.3f} "
          f"(quartiles {ratios[quart]:.3f}-{ratios[-1 - quart]:.3f})")


if __name__ == "__main__":
    main()

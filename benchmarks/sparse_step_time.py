"""Step time of masked (90% unstructured) vs dense training on this CPU.

Unstructured masks do not make a dense convolution cheaper: the masked step
runs the same dense kernels plus one multiply per masked variable for the
gradient and one for the weight. This script measures that overhead:
`train_on_batch` of the same ResNet on the same batch, dense and masked,
interleaved round by round (so load changes hit both), median per round.

Usage:
    python benchmarks/sparse_step_time.py [--model resnet20] [--rounds 15] [--steps 10]
"""
from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _interleaved import round_step_times  # noqa: E402  (benchmarks/ is the script's path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--widen", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import keras
    import numpy as np

    from kgrow import models
    from kgrow.controller import Masks, TrainingController
    from kgrow.methods.sparse_training import (layer_densities, maskable_variables,
                                               random_masks)

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, args.size, args.size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, args.batch), 10)

    def build(masked: bool):
        keras.utils.set_random_seed(0)
        model = models.get(args.model, (args.size, args.size, 3), 10, widen=args.widen)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
        ctrl = TrainingController.of(model)
        if masked:
            paths = maskable_variables(model)
            shapes = {p: tuple(v.shape) for p, v in
                      ((v.path, v) for v in model.weights) if p in paths}
            Masks.of(ctrl).set(random_masks(
                shapes, layer_densities(shapes, args.sparsity), rng))
        for _ in range(3):  # trace and warm up
            model.train_on_batch(x, y)
        return model

    runs = {"dense": build(False), "masked": build(True)}
    times = round_step_times(runs, x, y, args.rounds, args.steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.model} widen={args.widen} batch={args.batch} {args.size}x{args.size}x3, "
          f"sparsity {args.sparsity}, {args.rounds} rounds x {args.steps} steps (interleaved)")
    for name, t in med.items():
        print(f"  {name:<7} median step {1000 * t:8.1f} ms  "
              f"(min {1000 * min(times[name]):.1f}, max {1000 * max(times[name]):.1f})")
    print(f"  masked / dense = {med['masked'] / med['dense']:.3f}")


if __name__ == "__main__":
    main()

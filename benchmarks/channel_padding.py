"""Does a narrower convolution cost less on this CPU? Channel counts vs step time.

Width growth saves FLOPs by training fewer channels, but a CPU's convolution
kernels work on blocks of channels (oneDNN uses blocks of 8 on AVX2 and of 16
on AVX-512), so a layer whose channel count is not a multiple of the block
may cost what the next multiple costs. This times the training step (forward
and backward, SGD update) of one 3x3 convolution + BatchNorm + ReLU at
ResNet-20's three stage shapes (28x28, 14x14, 7x7 on Fashion-MNIST) for the
channel counts ResNet-20's widths give, interleaved in rounds, median per
count, and prints time per step and per GFLOP.

Usage:
    python benchmarks/channel_padding.py [--rounds 5] [--steps 10] [--batch 128]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# (spatial size, channel counts): ResNet-20 at widths 0.25 ... 1.0 per stage.
SHAPES = {28: (4, 8, 12, 16), 14: (8, 16, 24, 32), 7: (16, 32, 48, 64)}


def conv_step(spatial, channels, batch):
    inp = keras.Input((spatial, spatial, channels))
    x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    model = keras.Model(inp, x)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    data = tf.random.normal((batch, spatial, spatial, channels))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(data, training=True)))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    # Forward 2*k*k*C*C*H*W per sample; backward about twice that.
    flops = 3 * 2 * 9 * channels * channels * spatial * spatial * batch
    return step, flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cases = [(s, c) for s, counts in SHAPES.items() for c in counts]
    steps = {case: conv_step(*case, args.batch) for case in cases}
    for step, _ in steps.values():  # trace and warm up outside the timing
        step()
        step()
    times = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            step, _ = steps[case]
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            float(step())  # wait for the last step
            times[case].append((time.perf_counter() - start) / (args.steps + 1))
    rows = []
    print(f"3x3 conv + BN + ReLU training step, batch {args.batch}, median of "
          f"{args.rounds} rounds x {args.steps + 1} steps")
    print("spatial  channels   ms/step   ms/GFLOP")
    for case in cases:
        ms = 1e3 * statistics.median(times[case])
        gflop = steps[case][1] / 1e9
        rows.append({"spatial": case[0], "channels": case[1], "ms_per_step": ms,
                     "ms_per_gflop": ms / gflop})
        print(f"{case[0]:>7}  {case[1]:>8}  {ms:8.2f}  {ms / gflop:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "rows": rows,
                       "cpu_flags_avx512": "avx512f" in open("/proc/cpuinfo").read()}, f,
                      indent=1)


if __name__ == "__main__":
    np.random.seed(0)
    main()

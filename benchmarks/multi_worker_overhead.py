"""What kgrow's callbacks cost per epoch under MultiWorkerMirroredStrategy.

Two worker processes on localhost (TF_CONFIG) train the same full-width
ResNet-20 on real Fashion-MNIST (global batch 128), either with plain Keras
(`fit` on the kgrow bundle, no kgrow callback: Keras' own train step) or
with kgrow's callbacks: `Growth` (width 0.5 -> 1.0 at epoch 1, so the
controller's train step and its BatchNorm synchronization run),
`DataSieving` (its prediction hook all-gathers every batch's ids and
predictions) and `ControllerCheckpoint` (the chief writes every epoch).
The epochs after the growth epoch are compared with the same epochs of the
plain run per training step (sieving trains on 90% of the data, so an epoch
has fewer steps), which leaves the growth step out as the target asks. Worker groups
alternate (plain, kgrow, plain, kgrow, ...); the report gives the median
over groups.

Usage:
    python benchmarks/multi_worker_overhead.py [--groups 3] [--epochs 8] [--subset 6400]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def worker(mode, epochs, subset, out, ckpt):
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import kgrow
    from kgrow.callbacks import DataSieving, Growth
    from kgrow.controller import ControllerCheckpoint
    from kgrow.schedules import GrowthSchedule, Stage

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.steps = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._t, self._n = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self._n += 1

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)
            self.steps.append(self._n)

    keras.utils.set_random_seed(0)
    bundle = kgrow.data.load("fashion_mnist", batch_size=128, subset=subset, seed=0)
    with strategy.scope():
        model = kgrow.models.get("resnet20", (28, 28, 1), 10)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
                      metrics=["accuracy"])
    timer = EpochTimer()
    if mode == "plain":
        model.fit(bundle.train, epochs=epochs, verbose=0, callbacks=[timer])
    else:
        schedule = GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)])
        callbacks = [Growth(schedule, initializer="orthogonal", verbose=0),
                     DataSieving(0.1, interval_epochs=1, seed=0),
                     ControllerCheckpoint(ckpt), timer]
        model.fit(bundle.train_with_ids(), epochs=epochs, verbose=0, callbacks=callbacks)
    if index == 0:
        with open(out, "w") as f:
            json.dump({"seconds": timer.seconds, "steps": timer.steps}, f)


def run_group(mode, args, tmp):
    from kgrow.bench.runner import local_tf_configs
    out = os.path.join(tmp, f"{mode}-{time.time_ns()}.json")
    ckpt = os.path.join(tmp, f"ckpt-{time.time_ns()}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--mode", mode, "--epochs", str(args.epochs),
         "--subset", str(args.subset), "--out", out, "--ckpt", ckpt],
        env=dict(env, TF_CONFIG=config), stderr=subprocess.PIPE, text=True)
        for config in local_tf_configs(2)]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode:
            raise RuntimeError(f"worker failed ({mode}):\n{err[-3000:]}")
    with open(out) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=3, help="worker groups per mode")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--subset", type=int, default=6400)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["plain", "kgrow"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one worker process of a group (TF_CONFIG set by run_group)
        worker(args.mode, args.epochs, args.subset, args.out, args.ckpt)
        return
    if args.epochs < 3:
        parser.error("--epochs must be >= 3 (the growth is at epoch 1; epochs 2.. are timed)")
    runs = {"plain": [], "kgrow": []}
    with tempfile.TemporaryDirectory() as tmp:
        for g in range(args.groups):
            for mode in ("plain", "kgrow"):
                print(f"[multi_worker_overhead] group {g + 1}/{args.groups}: {mode}",
                      flush=True)
                runs[mode].append(run_group(mode, args, tmp))
    timed = slice(2, None)  # after the growth epoch (1) and its retrace

    def per_step(run):
        return statistics.median(s / n for s, n in zip(run["seconds"][timed],
                                                       run["steps"][timed]))

    report = {"settings": vars(args) | {"timed_epochs": f"2..{args.epochs - 1}"}, "runs": runs}
    ratios = [per_step(k) / per_step(p) for p, k in zip(runs["plain"], runs["kgrow"])]
    report["step_overhead"] = {"median": statistics.median(ratios) - 1,
                               "per_group": [r - 1 for r in ratios]}
    print(f"kgrow callbacks under 2 workers, per training step of the timed epochs: "
          f"{100 * report['step_overhead']['median']:+.1f}% (groups: "
          f"{', '.join(f'{100 * (r - 1):+.1f}%' for r in ratios)}); plain "
          f"{statistics.median(per_step(p) for p in runs['plain']) * 1e3:.0f} ms/step, kgrow "
          f"{statistics.median(per_step(k) for k in runs['kgrow']) * 1e3:.0f} ms/step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

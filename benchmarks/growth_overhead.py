"""Growth-engine performance: what a growth step costs, and whether a grown
model trains as fast as the same architecture built directly.

Two measurements, both on real Fashion-MNIST:

1. Growth-step overhead inside one `model.fit`: the `grow_width` run of
   `kgrow bench --profile quick` itself (ResNet-20 at half width, 10k
   training images, batch 128, 5 epochs, width 0.5 -> 0.75 -> 1.0 of it in 3
   stages, orthogonal new filters, per-epoch evaluation excluded from the
   training time as in the bench), with a per-batch timer added. Per growth
   step: the seconds spent in surgery + weight/optimizer transfer (the
   `Growth` callback's own timing) plus the extra cost of the first training
   step after the growth (the retrace), estimated as that step's time minus
   the median step time of the epoch. Reported as a fraction of the run's
   training time.
2. Step time of a grown model (built small, grown to full width by the
   `Growth` machinery, trained through the controller's train step) against
   the same architecture built directly and trained by plain Keras, measured
   side by side in one process: rounds of `fit` on the same batches,
   alternating, median step time per model.

Usage:
    python benchmarks/growth_overhead.py [--repeats 3] [--rounds 24] [--steps 10] [--json out.json]
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

from kgrow import data, models, training  # noqa: E402
from kgrow.bench.runner import BenchSpec, run_method  # noqa: E402
from kgrow.callbacks import FullSize, grow_to  # noqa: E402
from kgrow.controller import TrainingController  # noqa: E402
from kgrow.schedules import Stage  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training batch, per epoch."""

    def __init__(self):
        super().__init__()
        self.epochs, self._t = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.epochs[-1].append(time.perf_counter() - self._t)


def _compile(model, steps_per_epoch, epochs):
    config = training.TrainConfig(optimizer="sgd", lr=0.1, epochs=epochs, batch_size=128,
                                  warmup_epochs=0.5, weight_decay=5e-4)
    training.compile_with_config(model, config, steps_per_epoch)
    return model


def growth_overhead(seed=0):
    spec = BenchSpec.from_profile("quick", methods=["grow_width"], seed=seed)
    timer = StepTimer()
    record = run_method("grow_width", spec, seed, verbose=0, log=lambda line: None,
                        extra_callbacks=[timer])
    total, events = record["train_wall_s"], record["method_events"]
    # Every epoch's first step also pays the data pipeline's start-up (the
    # baseline pays it too): measure it on the epochs without growth and only
    # charge growth epochs for what their first step costs beyond that.
    growth_epochs = {e["epoch"] for e in events}
    plain_first = [ep[0] - statistics.median(ep) for i, ep in enumerate(timer.epochs)
                   if i not in growth_epochs]
    epoch_start_s = statistics.median(plain_first) if plain_first else 0.0
    steps = []
    for event in events:
        epoch_steps = timer.epochs[event["epoch"]]
        median = statistics.median(epoch_steps)
        retrace = epoch_steps[0] - median - epoch_start_s
        steps.append({"epoch": event["epoch"], "kind": event["kind"],
                      "surgery_and_transfer_s": event["seconds"],
                      "first_step_s": epoch_steps[0], "median_step_s": median,
                      "retrace_extra_s": retrace})
    grow_steps = [s for s in steps if s["kind"] == "grow"]
    overhead = sum(s["surgery_and_transfer_s"] + s["retrace_extra_s"] for s in grow_steps)
    # The initial shrink happens before the first trace, so only its surgery counts.
    shrink = sum(s["surgery_and_transfer_s"] for s in steps if s["kind"] != "grow")
    return {"total_train_s": total, "test_acc": record["test_acc"], "steps": steps,
            "growth_overhead_s": overhead, "epoch_start_s": epoch_start_s,
            "per_step_fraction": [(s["surgery_and_transfer_s"] + s["retrace_extra_s"]) / total
                                  for s in grow_steps],
            "initial_shrink_s": shrink,
            "overhead_fraction": (overhead + shrink) / total}


def grown_vs_direct(rounds=5, steps=30):
    bundle = data.load("fashion_mnist", subset=128 * steps, batch_size=128, seed=0)
    batches = list(bundle.train.take(steps).as_numpy_iterator())
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])

    keras.utils.set_random_seed(0)
    direct = models.get("resnet20", (28, 28, 1), 10, width=0.5)
    _compile(direct, steps, 1000)

    keras.utils.set_random_seed(0)
    direct_ctrl = models.get("resnet20", (28, 28, 1), 10, width=0.5)
    _compile(direct_ctrl, steps, 1000)
    TrainingController.of(direct_ctrl)  # same train step as the grown model

    keras.utils.set_random_seed(0)
    grown = models.get("resnet20", (28, 28, 1), 10, width=0.5)
    _compile(grown, steps, 1000)
    full = FullSize.of(grown, need_depth=False)
    ctrl = TrainingController.of(grown)
    grown.fit(x[:128], y[:128], batch_size=128, epochs=1, verbose=0)  # build optimizer
    for stage in (Stage(0, width=0.5), Stage(1, width=1.0)):
        current = None if stage.epoch == 0 else Stage(0, width=0.5)
        ctrl.replace_model(grow_to(grown, full, stage, current=current,
                                   initializer="orthogonal"))
    assert sorted(tuple(v.shape) for v in grown.weights) == sorted(
        tuple(v.shape) for v in direct.weights), "grown model differs from the direct one"

    models_by_name = {"grown (controller step)": grown,
                      "direct (controller step)": direct_ctrl,
                      "direct (plain Keras)": direct}
    # Time the compiled train function itself, on a repeating dataset, in
    # interleaved blocks: fit()'s per-epoch setup and callbacks would add
    # noise larger than the effect measured.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(128).repeat()
    iterators = {}
    for name, m in models_by_name.items():
        controller = getattr(m, TrainingController._ATTR, None)
        if controller is not None:
            controller.retrace_now()  # the train function fit would use
        else:
            m.make_train_function(force=True)
        iterators[name] = iter(dataset)
        for _ in range(3):  # trace and warm up
            m.train_function(iterators[name])
    times = {name: [] for name in models_by_name}
    names = list(models_by_name)
    for r in range(rounds):
        for name in names[r % 3:] + names[:r % 3]:  # rotate who runs first
            m, it = models_by_name[name], iterators[name]
            block = []
            for _ in range(steps):
                t = time.perf_counter()
                logs = m.train_function(it)
                float(logs["loss"])  # wait for the step to finish
                block.append(time.perf_counter() - t)
            times[name].append(statistics.median(block))
    medians = {k: statistics.median(v) for k, v in times.items()}

    def paired(a, b):
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {"median_step_s": medians, "rounds": rounds, "steps_per_round": steps,
            # Same train step, grown vs built directly: what growth leaves behind.
            "ratio_grown_over_direct": paired("grown (controller step)",
                                              "direct (controller step)"),
            # The controller's train step against Keras' own.
            "ratio_controller_over_plain": paired("direct (controller step)",
                                                  "direct (plain Keras)")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of the overhead measurement; medians are reported")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out = {}
    if not args.skip_overhead:
        print("[1/2] growth-step overhead in the quick bench's grow_width run ...", flush=True)
        runs = []
        for r in range(args.repeats):
            o = growth_overhead()
            runs.append(o)
            for s in o["steps"]:
                print(f"  run {r}: epoch {s['epoch']} {s['kind']:>15}: surgery+transfer "
                      f"{s['surgery_and_transfer_s']:.2f}s, first step {s['first_step_s']:.2f}s "
                      f"vs median {s['median_step_s']:.3f}s (retrace ~{s['retrace_extra_s']:.2f}s)")
            print(f"  run {r}: training {o['total_train_s']:.1f}s; per growth step "
                  f"{', '.join(f'{100 * f:.2f}%' for f in o['per_step_fraction'])}; first step "
                  f"of an epoch without growth +{o['epoch_start_s']:.2f}s (subtracted)", flush=True)
        per_step = [f for o in runs for f in o["per_step_fraction"]]
        seconds = [s["surgery_and_transfer_s"] + s["retrace_extra_s"] for o in runs
                   for s in o["steps"] if s["kind"] == "grow"]
        surgery = [s["surgery_and_transfer_s"] for o in runs for s in o["steps"]
                   if s["kind"] == "grow"]
        out["overhead"] = {"runs": runs,
                           "median_per_step_fraction": statistics.median(per_step),
                           "max_per_step_fraction": max(per_step),
                           "median_per_step_s": statistics.median(seconds),
                           "median_surgery_and_transfer_s": statistics.median(surgery),
                           "median_total_train_s": statistics.median(
                               o["total_train_s"] for o in runs)}
        o = out["overhead"]
        print(f"  growth step: median {o['median_per_step_s']:.2f}s (surgery+transfer "
              f"{o['median_surgery_and_transfer_s']:.2f}s), {100 * o['median_per_step_fraction']:.2f}% "
              f"of training time (max {100 * o['max_per_step_fraction']:.2f}%; "
              f"{len(per_step)} growth steps in {len(runs)} runs, median training "
              f"{o['median_total_train_s']:.1f}s)")
    print("[2/2] grown vs directly built model, step time side by side ...", flush=True)
    out["step_time"] = grown_vs_direct(args.rounds, args.steps)
    st = out["step_time"]
    for k, v in st["median_step_s"].items():
        print(f"  {k}: median {1000 * v:.1f} ms/step ({st['rounds']} rounds x "
              f"{st['steps_per_round']} steps)")
    print(f"  ratio grown/direct (same train step) = {st['ratio_grown_over_direct']:.3f}")
    print(f"  ratio controller step/plain Keras step = {st['ratio_controller_over_plain']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()

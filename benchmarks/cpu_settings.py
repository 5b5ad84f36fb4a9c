"""CPU settings of the train step: TensorFlow thread pools and XLA (`jit_compile`).

For each (intra-op, inter-op) thread setting a fresh worker process (thread
pools are fixed once TensorFlow starts) builds the model of a bench profile
(default `standard`: full-width ResNet-20, batch 128) on one real
Fashion-MNIST batch and times `train_on_batch` of two copies with identical
weights, Keras' own step (`jit_compile=False`) and the XLA-compiled one,
interleaved in rounds. The workers of all settings run in turn, `--repeats`
times, so a change in the machine's load hits every setting alike; each
setting's step time is compared with the default setting (0, 0: TensorFlow
picks) of the same repeat.

Equality: from identical weights, one step's parameter update of each variant
is compared with the update of Keras' own step at the default threads;
`max_rel_update_diff` = max |delta_a - delta_ref| / max |delta_ref| over all
variables, and the losses are compared. Reordered float32 sums give
differences around 1e-6..1e-4 of an update; anything far above that is a
different computation.

Usage:
    python benchmarks/cpu_settings.py [--profile standard] [--repeats 3]
        [--rounds 4] [--steps 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SETTINGS = [(0, 0), (1, 1), (2, 1), (2, 2), (4, 1)]
REFERENCE = (0, 0)


def worker(profile: str, intra: int, inter: int, rounds: int, steps: int, out: str) -> None:
    """One process: one thread setting, Keras' step and the XLA step side by side."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    import time

    import keras
    import numpy as np

    from kgrow import training
    from kgrow.bench.runner import BenchSpec, load_data

    spec = BenchSpec.from_profile(profile, subset=1024, num_seeds=1)
    keras.utils.set_random_seed(0)
    bundle = load_data(spec, 0)
    x, y = next(iter(bundle.train))
    from kgrow import models
    shape, classes = tuple(bundle.info.image_shape), bundle.info.num_classes
    variants = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)  # identical initial weights
        model = models.get(spec.model, shape, classes, **dict(spec.model_kwargs))
        # Constant learning rate: the profile's warm-up starts at ~0 and would
        # hide any difference of the update.
        train = training.TrainConfig(**{**spec.train.to_dict(), "warmup_epochs": 0.0})
        training.compile_with_config(model, train, int(bundle.steps_per_epoch),
                                     jit_compile=jit)
        variants["xla" if jit else "keras"] = model
    updates, losses = {}, {}
    for name, model in variants.items():
        before = [np.array(v.numpy()) for v in model.trainable_variables]
        loss = model.train_on_batch(x, y, return_dict=True)["loss"]
        updates[name] = [np.array(v.numpy()) - b for v, b in
                         zip(model.trainable_variables, before)]
        losses[name] = float(loss)
    np.savez(out + ".npz", *updates["keras"], *updates["xla"])
    for model in variants.values():  # warm-up beyond the trace
        for _ in range(2):
            model.train_on_batch(x, y)
    seconds = {name: [] for name in variants}
    for _ in range(rounds):
        for name, model in variants.items():
            for _ in range(steps):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                seconds[name].append(time.perf_counter() - start)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"intra": intra, "inter": inter, "losses": losses,
                   "num_vars": len(updates["keras"]),
                   "step_s": {k: statistics.median(v) for k, v in seconds.items()},
                   "actual_intra": tf.config.threading.get_intra_op_parallelism_threads(),
                   "actual_inter": tf.config.threading.get_inter_op_parallelism_threads()},
                  f)


def _max_rel_diff(a, b) -> float:
    import numpy as np
    scale = max(float(np.max(np.abs(r))) for r in b)
    return max(float(np.max(np.abs(x - r))) for x, r in zip(a, b)) / scale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--worker", nargs=3, metavar=("INTRA", "INTER", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.profile, int(args.worker[0]), int(args.worker[1]), args.rounds,
               args.steps, args.worker[2])
        return 0
    import numpy as np
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    results = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for intra, inter in SETTINGS:
                out = os.path.join(tmp, f"{intra}_{inter}_{repeat}.json")
                subprocess.run([sys.executable, os.path.abspath(__file__), "--profile",
                                args.profile, "--rounds", str(args.rounds), "--steps",
                                str(args.steps), "--worker", str(intra), str(inter), out],
                               env=env, check=True)
                with open(out, encoding="utf-8") as f:
                    rec = json.load(f)
                arrays = np.load(out + ".npz")
                n = rec["num_vars"]
                rec["updates"] = ([arrays[f"arr_{i}"] for i in range(n)],
                                  [arrays[f"arr_{i}"] for i in range(n, 2 * n)])
                results[(intra, inter)].append(rec)
                print(f"repeat {repeat + 1}/{args.repeats} threads {intra}/{inter}: "
                      f"keras {1e3 * rec['step_s']['keras']:.1f} ms, "
                      f"xla {1e3 * rec['step_s']['xla']:.1f} ms", flush=True)
    ref_update = results[REFERENCE][0]["updates"][0]
    ref_loss = results[REFERENCE][0]["losses"]["keras"]
    ref_times = [r["step_s"]["keras"] for r in results[REFERENCE]]
    table = []
    print(f"\n{args.profile}: train_on_batch step, median over {args.rounds}x{args.steps} "
          f"steps per repeat; ratios to Keras' step at threads {REFERENCE} of the same repeat "
          f"(median [min-max] over {args.repeats} repeats)")
    print("intra/inter  variant  step ms  time / reference     / keras same process  "
          "max rel update diff  loss diff")
    for setting, recs in results.items():
        for k, name in enumerate(("keras", "xla")):
            ratios = [r["step_s"][name] / t for r, t in zip(recs, ref_times)]
            diff = _max_rel_diff(recs[0]["updates"][k], ref_update)
            # XLA against Keras' step of the same process: paired, so free of drift.
            same = [r["step_s"][name] / r["step_s"]["keras"] for r in recs]
            row = {"intra": setting[0], "inter": setting[1], "variant": name,
                   "ratio_to_keras_same_process": statistics.median(same),
                   "step_ms": 1e3 * statistics.median(r["step_s"][name] for r in recs),
                   "ratio": statistics.median(ratios), "ratio_range": [min(ratios),
                                                                       max(ratios)],
                   "max_rel_update_diff": diff,
                   "loss_diff": abs(recs[0]["losses"][name] - ref_loss)}
            table.append(row)
            print(f"{setting[0]}/{setting[1]:<10} {name:<7} {row['step_ms']:7.1f}  "
                  f"{row['ratio']:.3f} [{min(ratios):.3f}-{max(ratios):.3f}]  "
                  f"{row['ratio_to_keras_same_process']:.3f} [{min(same):.3f}-{max(same):.3f}]"
                  f"  {diff:18.2e}  {row['loss_diff']:.2e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"profile": args.profile, "repeats": args.repeats,
                       "rounds": args.rounds, "steps": args.steps, "rows": table,
                       "cpu_count": os.cpu_count()}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

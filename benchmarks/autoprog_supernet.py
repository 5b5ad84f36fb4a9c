"""AutoProg's elastic supernet: step cost against plain sub-networks, and a search smoke run.

1. `steps`: median CPU seconds per training step (`time.process_time`, which
   other jobs on a shared machine disturb less than wall time) of plain
   ViT sub-networks (fewer blocks, lower resolution) against the supernet
   switched to the same sub-network (gating "cond" and "multiply"), and of
   the supernet switching sub-network every step. Models alternate in
   rounds on the same batch.
2. `smoke`: AutoProg (or the plain baseline) on 2000 Fashion-MNIST images,
   ViT dim 64, depth 6, patch 4, 9 epochs, 3 stages, 1 supernet epoch;
   prints the searched schedule, test accuracy and the search's costs.
3. `scores`: the first search of `standard-vit`'s ViT (dim 128, depth 6,
   patch 4) on 10,000 Fashion-MNIST images, one supernet epoch from the
   initialization: every candidate's scoring loss with the EMA, with and
   without its warm-up, next to the loss with the online weights.

Usage:
    python benchmarks/autoprog_supernet.py steps [--rounds 4] [--steps 8]
    python benchmarks/autoprog_supernet.py smoke [--baseline]
    python benchmarks/autoprog_supernet.py scores
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kgrow  # noqa: E402
from kgrow.controller import TrainingController  # noqa: E402
from kgrow.methods.autoprog.search_callback import AutoProg  # noqa: E402
from kgrow.methods.autoprog.supernet import build_supernet, set_subnetwork  # noqa: E402
from kgrow.models import resize_vit  # noqa: E402
from kgrow.surgery import remove_blocks  # noqa: E402


def _cpu_steps(model, x, y, n, setup=None):
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if setup is not None:
                setup(batch)
            self.t = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.process_time() - self.t)

    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(n), epochs=1, verbose=0,
              callbacks=[Timer()])
    return times


def steps(rounds: int, n: int, dim=64, depth=8, image=32, batch=64) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((batch, image, image, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, batch), 10)
    half = image // 2
    xh = tf.image.resize(x, (half, half)).numpy()
    full = kgrow.models.vit((image, image, 3), 10, depth=depth, dim=dim, heads=4, patch_size=4)
    always = list(range(0, depth, 2))
    shallow = remove_blocks(full, [i for i in range(depth) if i not in always]).model
    runs = {}  # name -> (model, images, setup)

    def add(name, model, images, setup=None):
        if not model.compiled:  # supernet entries share one model
            model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
            TrainingController.of(model)
        t = time.perf_counter()
        _cpu_steps(model, images, y, 2, setup)
        runs[name] = (model, images, setup, time.perf_counter() - t)

    add("plain_d8_r32", keras.models.clone_model(full), x)
    add("plain_d4_r32", shallow, x)
    add("plain_d8_r16", resize_vit(full, half).model, xh)
    add("plain_d4_r16", resize_vit(shallow, half).model, xh)
    for gating in ("cond", "multiply"):
        built = build_supernet(full, always, gating=gating)
        model, info = built.model, built.info["supernet"]
        subnets = {"d8_r32": (depth, None), "d4_r32": (len(always), None),
                   "d8_r16": (depth, (half, half)), "d4_r16": (len(always), (half, half))}
        for key, (d, size) in subnets.items():
            add(f"supernet_{gating}_{key}", model, x,
                lambda b, d=d, size=size, m=model, i=info: set_subnetwork(m, i, d, size))
        cycle = list(subnets.values())
        add(f"supernet_{gating}_switching_every_step", model, x,
            lambda b, m=model, i=info: set_subnetwork(m, i, *cycle[b % len(cycle)]))
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, images, setup, _) in runs.items():
            times[name] += _cpu_steps(model, images, y, n, setup)
    return {"median_step_cpu_s": {k: round(float(np.median(v)), 4) for k, v in times.items()},
            "first_two_steps_wall_s (incl. trace)": {k: round(r[3], 2)
                                                     for k, r in runs.items()}}


def smoke(baseline: bool, epochs=9) -> dict:
    keras.utils.set_random_seed(0)
    bundle = kgrow.data.load("fashion_mnist", batch_size=64, subset=2000, resizable=True, seed=0)
    model = kgrow.models.vit((28, 28, 1), 10, depth=6, dim=64, heads=4, patch_size=4)
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.05), "categorical_crossentropy",
                  metrics=["accuracy"])
    ctrl = TrainingController.of(model)
    ctrl.attach_selection(bundle.selection)
    search = None if baseline else AutoProg(epochs, bundle, num_stages=3, supernet_epochs=1,
                                            verbose=1)
    t = time.perf_counter()
    model.fit(bundle.train, epochs=epochs, callbacks=[] if search is None else [search],
              verbose=2)
    wall = time.perf_counter() - t
    _, acc = model.evaluate(bundle.test, verbose=0)
    out = {"mode": "baseline" if baseline else "autoprog", "train_wall_s": wall,
           "test_acc": float(acc), "controller_traces": ctrl.retrace_count}
    if search is not None:
        keys = ("epoch", "choice", "w", "time_source", "seconds", "score_s", "recycle_s",
                "first_steps", "supernet_step_s", "recycled_trace_s")
        out.update(schedule=search.searched_schedule().to_dict(),
                   search_seconds=search.search_seconds,
                   search_fraction=search.search_seconds / wall,
                   chosen=[{k: e.get(k) for k in keys} for e in search.events
                           if e.get("kind") == "chosen" and e.get("w") is not None])
    return out


class _ScoredOnline(AutoProg):
    """AutoProg that also scores every candidate with the online weights."""

    def candidate_losses(self, candidates=None):
        losses, seconds = super().candidate_losses(candidates)
        candidates = self.search["candidates"] if candidates is None else candidates
        x, y, batch = self._score_arrays()
        online = []
        for cand in candidates:
            self._switch(cand)
            batches = [float(self._score_fn(x[i:i + batch], y[i:i + batch]))
                       for i in range(0, len(x), batch)]
            online.append(sum(batches) / (len(x) // batch))
        self._assigned = None
        self.scored = {"candidates": [dict(c) for c in candidates], "ema": losses,
                       "online": online}
        return losses, seconds


def scores() -> dict:
    class StopAfterSearch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch >= 1

    out = {}
    for warmup in (False, True):
        keras.utils.set_random_seed(0)
        bundle = kgrow.data.load("fashion_mnist", batch_size=128, subset=10_000, seed=0,
                                 resizable=True)
        model = kgrow.models.vit((28, 28, 1), 10, depth=6, dim=128, heads=4, patch_size=4)
        model.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.05),
                      keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
        TrainingController.of(model).attach_selection(bundle.selection)
        search = _ScoredOnline(6, bundle, num_stages=2, supernet_epochs=1, verbose=0,
                               ema_warmup=warmup)
        model.fit(bundle.train, epochs=6, callbacks=[search, StopAfterSearch()], verbose=2)
        chosen = next(e for e in search.events if e.get("kind") == "chosen")
        out["warmup" if warmup else "no_warmup"] = dict(search.scored, choice=chosen["choice"],
                                                        w=chosen["w"])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("steps", "smoke", "scores"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    if args.what == "steps":
        result = steps(args.rounds, args.steps)
    elif args.what == "smoke":
        result = smoke(args.baseline)
    else:
        result = scores()
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()

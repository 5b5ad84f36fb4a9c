"""One small run per method, for the real-process kill -9 tests (test_kill9_methods.py).

    python kill9_script.py SCENARIO CKPT_DIR OUT_NPZ

trains the scenario's model with `ControllerCheckpoint(CKPT_DIR)` (resuming
from it when it holds a checkpoint), then writes the final weights and the
method's own state (EMA copies, masks, partitions, sieving queue and
counts, ...) to OUT_NPZ and its decisions to OUT_NPZ + ".json".

Test-only kill hook: with ``KGROW_TEST_KILL_MARKER`` set, the process
SIGKILLs itself once at the scenario's kill point (only while that marker
file does not exist; it is created just before).
"""
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

import kgrow
from kgrow.callbacks import (AutoProg, DataSieving, Growth, NetworkExpansion,
                             ProgressiveFreezing, SparseTraining, VarianceTransferGrowth)
from kgrow.controller import ControllerCheckpoint, Masks, TrainingController
from kgrow.schedules import GrowthSchedule, Stage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testing_helpers import AtBatch, StepsPerEpoch, kill_now  # noqa: E402


def _kill_at(epoch, batch):
    return AtBatch(epoch, batch, kill_now)


def _kill_on_call(owner, name, nth):
    """SIGKILL inside the `nth` call of `owner.name` (the call never returns)."""
    original, calls = getattr(owner, name), []

    def killing(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            kill_now()
        return original(*args, **kwargs)

    setattr(owner, name, killing)


def _arrays(n, image, channels, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, image, image, channels)).astype("float32")
    y = rng.integers(0, classes, n)
    x[:, :4, :4, :] += y[:, None, None, None] * 0.5  # something to learn
    return x, y


def _bundle(n, image, channels, classes, **kwargs):
    x, y = _arrays(n, image, channels, classes)
    return kgrow.data.from_arrays((x, y), (x[:16], y[:16]), num_classes=classes,
                                  batch_size=16, seed=0, **kwargs)


def _sgd(model):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    return model


def _prefixed(prefix, arrays):
    return {f"{prefix}|{k}": np.asarray(v) for k, v in arrays.items()}


# Each scenario returns (model, data, epochs, callbacks, kill callbacks, report).
# `report()` gives (arrays, decisions) of the method's state after training.

def network_expansion():
    """CNN width expansion 0.5 -> 1 at epoch 2; killed in epoch 3, after the expansion."""
    bundle = _bundle(64, 12, 1, 3)
    model = _sgd(kgrow.models.get("resnet20", (12, 12, 1), 3))
    expand = NetworkExpansion("cnn", num_stages=2, start_width=0.5, verbose=0)
    return (model, bundle.train, 4, [expand], [_kill_at(3, 1)],
            lambda: ({}, {"events": [[e["epoch"], e["kind"]] for e in expand.events]}))


def network_expansion_vit():
    """ViT depth expansion 2 -> 4 blocks from the EMA, weight decay scaled by depth;
    killed in the epoch after it."""
    bundle = _bundle(64, 12, 1, 3)
    model = kgrow.models.get("vit", (12, 12, 1), 3, depth=4, dim=16, heads=2, patch_size=4,
                             drop_path=0.1)
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.05), "categorical_crossentropy")
    TrainingController.of(model).attach_selection(bundle.selection)
    expand = NetworkExpansion("vit", depths=(2, 4), scale_weight_decay=True,
                              steps_per_epoch=bundle.steps_per_epoch, verbose=0)

    def report():
        ema = TrainingController.of(model).ema(NetworkExpansion.EMA_NAME).values()
        # The resumed optimizer runs at the stage's weight decay.
        return (_prefixed("ema", ema),
                {"events": [[e["epoch"], e["kind"]] for e in expand.events],
                 "weight_decay": float(model.optimizer.weight_decay)})

    return model, bundle.train, 3, [expand], [_kill_at(2, 1)], report


def variance_transfer():
    """Three variance-transfer growths; killed right after the second."""
    bundle = _bundle(64, 12, 1, 3)
    model = _sgd(kgrow.models.resnet_cifar(8, (12, 12, 1), 3, width=0.5))
    schedule = GrowthSchedule([Stage(0, width=0.25), Stage(1, width=0.5), Stage(2, width=0.75),
                               Stage(3, width=1.0)])
    grow = VarianceTransferGrowth(schedule, verbose=0)

    def report():
        return ({**_prefixed("partition", grow.partitions),
                 **_prefixed("lr_scale", grow.learning_rate_scales())},
                {"stages": [e["stage"] for e in grow.events]})

    return model, bundle.train, 4, [grow], [_kill_at(2, 0)], report


def autoprog(kill_while_scoring=True):
    """AutoProg: killed while it scores the candidates after the supernet epoch."""
    bundle = _bundle(64, 16, 3, 3, resizable=True)
    model = kgrow.models.vit((16, 16, 3), 3, depth=4, dim=16, heads=2, patch_size=4)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    TrainingController.of(model).attach_selection(bundle.selection)
    search = AutoProg(4, bundle, num_stages=2, supernet_epochs=1, depths=[2, 3, 4],
                      score_samples=32, score_batch_size=16,
                      step_time=lambda c: c["resolution"] ** 2 * c["depth"], verbose=0)
    if kill_while_scoring:
        _kill_on_call(search, "candidate_losses", 1)
    return (model, bundle.train, 4, [search], [],
            lambda: ({}, {"chosen": search.chosen,
                          "schedule": search.searched_schedule().to_json()}))


def autoprog_supernet_steps():
    """AutoProg with step checkpoints: killed in the middle of its supernet epoch."""
    model, data, epochs, callbacks, _, report = autoprog(kill_while_scoring=False)
    return model, data, epochs, callbacks, [_kill_at(0, 2)], report


def _masks(model):
    return _prefixed("mask", {p: m.astype(np.uint8) for p, m in
                              Masks.of(TrainingController.of(model)).get().items()})


def sparse():
    """MEST EM&S; killed in the middle of the second mask update."""
    bundle = _bundle(64, 8, 3, 10)
    model = _sgd(kgrow.models.get("resnet20", (8, 8, 3), 10, width=0.25))
    sparse_cb = SparseTraining(0.7, "ems", update_every=1, search_end=3, seed=5)
    from kgrow.methods.sparse_training import callback as sparse_module
    _kill_on_call(sparse_module, "prune_and_grow", 2)
    return (model, bundle.train, 4, [sparse_cb], [],
            lambda: (_masks(model), {"events": [[e["epoch"], e["kind"], e["sparsity"]]
                                                for e in sparse_cb.events]}))


def freeze():
    """Progressive freezing; killed after two blocks froze."""
    bundle = _bundle(64, 8, 3, 10)
    model = _sgd(kgrow.models.get("resnet20", (8, 8, 3), 10, width=0.25))
    frz = ProgressiveFreezing(0.15, interval=1, start=1)
    return (model, bundle.train, 5, [frz], [_kill_at(3, 1)],
            lambda: ({}, {"frozen": sorted(TrainingController.of(model).frozen),
                          "events": [[e["epoch"], e["blocks"]] for e in frz.events]}))


def _sieve_report(sieve):
    return ({"queue": np.asarray(sieve.state.queue), "active": sieve.state.active,
             "forgets": sieve.forgets, "last_correct": sieve.last_correct},
            {"events": sieve.events})


def sieve():
    """Circular data sieving; killed after two sieving updates."""
    bundle = _bundle(128, 8, 3, 10)
    model = _sgd(kgrow.models.get("resnet20", (8, 8, 3), 10, width=0.25))
    sv = DataSieving(0.25, update_ratio=0.5, interval_epochs=1, seed=11)
    return (model, bundle.train_with_ids(), 4, [sv], [_kill_at(2, 1)],
            lambda: _sieve_report(sv))


def combined():
    """Width growth + MEST + freezing + sieving with step checkpoints; killed mid-epoch."""
    bundle = _bundle(128, 8, 3, 10)
    model = _sgd(kgrow.models.get("resnet20", (8, 8, 3), 10, width=0.5))
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]),
                  initializer="orthogonal", verbose=0)
    sparse_cb = SparseTraining(0.7, "ems", update_every=1, search_end=3, seed=5)
    frz = ProgressiveFreezing(0.05, interval=1, start=2)
    sv = DataSieving(0.25, update_ratio=0.5, interval_epochs=1, seed=11)

    def report():
        arrays, decisions = _sieve_report(sv)
        arrays.update(_masks(model))
        decisions.update(frozen=sorted(TrainingController.of(model).frozen),
                         growth=[[e["epoch"], e["kind"]] for e in grow.events])
        return arrays, decisions

    return (model, bundle.train_with_ids(), 4, [grow, sparse_cb, frz, sv],
            [_kill_at(2, 2)], report)


SCENARIOS = {f.__name__: f for f in (network_expansion, network_expansion_vit,
                                     variance_transfer, autoprog, autoprog_supernet_steps,
                                     sparse, freeze, sieve, combined)}
# Mid-epoch checkpoints every 2 steps; the others save at epoch ends.
STEP_CHECKPOINTS = {"combined": 2, "autoprog_supernet_steps": 2}


def main(scenario, directory, out):
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    model, data, epochs, callbacks, killers, report = SCENARIOS[scenario]()
    save_freq = STEP_CHECKPOINTS.get(scenario, "epoch")
    steps = StepsPerEpoch()
    callbacks = [*callbacks, *killers, steps,
                 ControllerCheckpoint(directory, save_freq=save_freq)]
    model.fit(data, epochs=epochs, verbose=0, callbacks=callbacks)
    arrays, decisions = report()
    arrays.update(_prefixed("weight", {v.path: v.numpy() for v in model.weights}))
    np.savez(out, **{k.replace("/", "|"): v for k, v in arrays.items()})
    decisions["steps_run"] = steps.total
    with open(out + ".json", "w") as f:
        json.dump(decisions, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


if __name__ == "__main__":
    main(*sys.argv[1:4])

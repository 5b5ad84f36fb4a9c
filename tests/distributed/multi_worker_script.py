"""One worker of a 2-worker MultiWorkerMirroredStrategy run (driven by test_multi_worker.py).

    TF_CONFIG=... python multi_worker_script.py OUT_NPZ CKPT_DIR EPOCHS [SCENARIO[+SCENARIO]]

Scenarios (several joined by "+" run one after the other in the same worker
group, which saves starting a group per scenario):

- ``growth`` (default): a small ResNet grown in width and depth by `Growth`,
  with `ControllerCheckpoint` (resumes when CKPT_DIR holds one).
- ``spfde``: sparse training, progressive freezing and data sieving in one
  fit on ``bundle.train_with_ids()``; afterwards the worker records the
  sample ids its replicas get from one distributed pass of the sieved data.
- ``autoprog``: AutoProg's search with *measured* step times (each worker
  times its own steps; the choice must still be the same on both).

Writes each scenario's final weights to OUT_NPZ as ``<scenario>|<path>`` (plus
masks as ``<scenario>|mask|<path>``) and prints one JSON line of the worker's
decisions, ``{"worker": i, "<scenario>": {...}}``.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
out, ckpt, epochs = sys.argv[1:4]
scenario = sys.argv[4] if len(sys.argv) > 4 else "growth"
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import kgrow  # noqa: E402
from kgrow.callbacks import (AutoProg, DataSieving, Growth, ProgressiveFreezing,  # noqa: E402
                             SparseTraining)
from kgrow.controller import ControllerCheckpoint, Masks, TrainingController  # noqa: E402
from kgrow.schedules import GrowthSchedule, Stage  # noqa: E402

tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)


def arrays(n, image, channels, classes):
    x = rng.integers(0, 256, size=(n, image, image, channels)).astype("uint8")
    return x, rng.integers(0, classes, n)


def growth():
    x, y = arrays(96, 12, 1, 3)
    bundle = kgrow.data.from_arrays((x, y), (x[:32], y[:32]), num_classes=3, batch_size=16,
                                    seed=0)
    with strategy.scope():
        model = kgrow.models.get("resnet20", (12, 12, 1), 3, width=0.5)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
                      metrics=["accuracy"])
    schedule = GrowthSchedule([Stage(0, width=0.5, depth=0.5), Stage(1, width=1.0, depth=1.0)],
                              total_epochs=3)
    grow = Growth(schedule, initializer="orthogonal", depth_source="identity", verbose=0)
    history = model.fit(bundle.train, epochs=int(epochs), verbose=0,
                        callbacks=[grow, ControllerCheckpoint(ckpt)])
    return model, {"events": [e["kind"] for e in grow.events],
                   "epochs_run": len(history.history["loss"]),
                   "width": history.history["grow/width"]}


def spfde():
    x, y = arrays(128, 8, 3, 10)  # 96 active: 6 whole batches of 16
    bundle = kgrow.data.from_arrays((x, y), (x[:32], y[:32]), num_classes=10, batch_size=16,
                                    seed=0)
    with strategy.scope():  # no controller yet: Keras' symbolic build must not see the ids
        model = kgrow.models.get("resnet20", (8, 8, 3), 10, width=0.25)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    sparse = SparseTraining(0.7, "ems", update_every=1, search_end=3, seed=5)
    freeze = ProgressiveFreezing(0.1, interval=1, start=1)
    sieve = DataSieving(0.25, update_ratio=0.5, interval_epochs=1, seed=11)
    history = model.fit(bundle.train_with_ids(), epochs=int(epochs), verbose=0,
                        callbacks=[sparse, freeze, sieve, ControllerCheckpoint(ckpt)])
    # The sieved data as tf.distribute deals it out (as fit does): this
    # worker's replicas' sample ids for one pass.
    seen = []
    for batch in strategy.experimental_distribute_dataset(bundle.train_with_ids()):
        for ids in strategy.experimental_local_results(batch[2]["sample_ids"]):
            seen.extend(int(i) for i in ids.numpy())
    ctrl = TrainingController.of(model)
    return model, {
        "epochs_run": len(history.history["loss"]),
        "frozen": sorted(ctrl.frozen),
        "freeze_events": [[e["epoch"], e.get("blocks")] for e in freeze.events],
        "mask_events": [[e["epoch"], e["kind"], e["sparsity"]] for e in sparse.events],
        "queue": [int(i) for i in sieve.state.queue],
        "active": [int(i) for i in np.flatnonzero(sieve.state.active)],
        "forgets": [int(v) for v in sieve.forgets],
        "seen": seen,
        "masks": {p: m.astype(np.uint8) for p, m in Masks.of(ctrl).get().items()}}


def autoprog():
    x, y = arrays(64, 16, 3, 3)
    bundle = kgrow.data.from_arrays((x, y), (x[:16], y[:16]), num_classes=3, batch_size=16,
                                    seed=0, resizable=True)
    with strategy.scope():
        model = kgrow.models.vit((16, 16, 3), 3, depth=4, dim=16, heads=2, patch_size=4)
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    search = AutoProg(int(epochs), bundle, num_stages=2, supernet_epochs=1, depths=[2, 3, 4],
                      score_samples=32, score_batch_size=16, verbose=0)
    history = model.fit(bundle.train, epochs=int(epochs), verbose=0, callbacks=[search])
    return model, {"epochs_run": len(history.history["loss"]), "chosen": search.chosen,
                   "times": [e["times"] for e in search.events if "times" in e]}


arrays_out, reports = {}, {"worker": int(index)}
for name in scenario.split("+"):
    model, report = {"growth": growth, "spfde": spfde, "autoprog": autoprog}[name]()
    arrays_out.update({f"{name}|" + w.path.replace("/", "|"): w.numpy() for w in model.weights})
    for path, mask in report.pop("masks", {}).items():
        arrays_out[f"{name}|mask|" + path.replace("/", "|")] = mask
    reports[name] = report
np.savez(out, **arrays_out)
print(json.dumps(reports))

"""The README's "Growing a model inside model.fit" path, tiny, for real-process resume tests.

    python readme_resume_script.py CKPT_DIR OUT_NPZ

trains with `ControllerCheckpoint(CKPT_DIR)` (resuming from it when it holds a
checkpoint) and writes the final weights (by variable path) to OUT_NPZ, plus
the warnings `fit` raised to OUT_NPZ + ".warnings.json".

Test-only kill hook: with ``KGROW_TEST_KILL`` set to ``mid_epoch`` (epoch 2,
after batch 2), ``after_growth`` (epoch 1 begin, right after the growth step)
or ``during_write`` (the second checkpoint, after its arrays were written),
the process SIGKILLs itself there, once: only while the file named by
``KGROW_TEST_KILL_MARKER`` does not exist (it is created just before).
"""
import json
import os
import sys
import warnings

import keras
import numpy as np
import tensorflow as tf

import kgrow
from kgrow import models
from kgrow.callbacks import Growth
from kgrow.controller import ControllerCheckpoint
from kgrow.controller import checkpoint as ckpt
from kgrow.schedules import GrowthSchedule, Stage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testing_helpers import kill_now  # noqa: E402

EPOCHS = 3


class _Killer(keras.callbacks.Callback):
    def __init__(self, point):
        super().__init__()
        self.point, self.epoch = point, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.point == "after_growth" and epoch == 1:
            kill_now()

    def on_train_batch_end(self, batch, logs=None):
        if self.point == "mid_epoch" and self.epoch == 2 and batch == 2:
            kill_now()


def _kill_during_second_write():
    write_json, calls = ckpt._write_json, []

    def killing_write_json(path, obj):
        calls.append(path)
        if len(calls) == 2:  # arrays.npz of checkpoint 2 is on disk, state.json is not
            kill_now()
        write_json(path, obj)

    ckpt._write_json = killing_write_json


def main(directory, out):
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    point = os.environ.get("KGROW_TEST_KILL", "")
    if point == "during_write":
        _kill_during_second_write()

    bundle = kgrow.data.load("fashion_mnist", batch_size=32, subset=192, seed=0)
    model = models.resnet_cifar(8, (28, 28, 1), 10)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
                  metrics=["accuracy"])
    schedule = GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)], total_epochs=EPOCHS)
    callbacks = [Growth(schedule, initializer="orthogonal", verbose=0)]
    if point in ("mid_epoch", "after_growth"):
        callbacks.append(_Killer(point))
    callbacks.append(ControllerCheckpoint(directory))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(bundle.train, epochs=EPOCHS, verbose=0, callbacks=callbacks)  # as in the README
    np.savez(out, **{v.path: v.numpy() for v in model.weights})
    with open(out + ".warnings.json", "w") as f:
        json.dump([str(w.message) for w in caught], f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

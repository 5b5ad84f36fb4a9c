"""A tiny run with step checkpoints, for the real-process SIGKILL test.

    python step_resume_script.py CKPT_DIR OUT_NPZ

trains 3 epochs of 6 steps with `ControllerCheckpoint(CKPT_DIR, save_freq=2)`
(resuming from it when it holds a checkpoint) and writes the final weights (by variable path) to OUT_NPZ and the number of
steps trained per epoch to OUT_NPZ + ".steps". With ``KGROW_TEST_PAUSE=1`` it
sleeps after every step, so that a test polling CKPT_DIR can kill it mid-epoch.
"""
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import kgrow
from kgrow.controller import ControllerCheckpoint


class _Steps(keras.callbacks.Callback):
    def __init__(self, pause):
        super().__init__()
        self.pause, self.per_epoch = pause, []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1
        if self.pause:
            time.sleep(0.4)


def main(directory, out):
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    bundle = kgrow.data.load("fashion_mnist", batch_size=32, subset=192, seed=0,
                             augment="basic")
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.2, name="drop")(keras.layers.Flatten(name="flat")(h))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(h))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    steps = _Steps(os.environ.get("KGROW_TEST_PAUSE") == "1")
    # The saver last: after a step's save the test may kill the process.
    callbacks = [steps, ControllerCheckpoint(directory, save_freq=2)]
    model.fit(bundle.train, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    np.savez(out, **{v.path: v.numpy() for v in model.weights})
    with open(out + ".steps", "w") as f:
        f.write(" ".join(str(n) for n in steps.per_epoch) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

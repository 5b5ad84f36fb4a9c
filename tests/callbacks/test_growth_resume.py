"""A run killed right after a growth step resumes in the grown architecture and
ends with the same weights as a run that was never interrupted."""
import keras
import pytest
import tensorflow as tf

from kgrow import data, models
from kgrow.callbacks import Growth
from kgrow.controller import ControllerCheckpoint, TrainingController
from kgrow.schedules import GrowthSchedule, Stage
from testing_helpers import CrashAtEpoch, assert_weights_match


_Crash = CrashAtEpoch


def _run(bundle, extra_callbacks, directory=None, crash=None, saver="controller"):
    keras.utils.set_random_seed(7)
    model = models.resnet_cifar(8, (28, 28, 1), 10, width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    TrainingController.of(model).attach_selection(bundle.selection)
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(2, width=1.0)]),
                  initializer="orthogonal", verbose=0)
    callbacks = [grow, *extra_callbacks]
    if directory is not None and saver == "controller":
        callbacks.append(ControllerCheckpoint(directory))
    elif directory is not None:
        # Keras' own callback, placed first: it restores (load_weights) before
        # the Growth callback's on_train_begin runs.
        callbacks.insert(0, keras.callbacks.BackupAndRestore(directory))
    if crash is not None:
        callbacks.append(crash)
    return model, grow, callbacks


# The kgrow rows are slow: ControllerCheckpoint across a growth is also checked by the
# README path under a real SIGKILL (test_resume_kill9.py: killed before the growth
# epoch was saved, and mid-epoch) and by the component matrix (resumed from a
# checkpoint saved after a width or a depth growth).
@pytest.mark.parametrize("saver,saved_growth_epoch", [
    pytest.param("controller", True, marks=pytest.mark.slow),
    pytest.param("controller", False, marks=pytest.mark.slow),
    ("keras_backup_and_restore", True)],
    ids=["kgrow-killed-after-growth-epoch-saved", "kgrow-killed-before-save",
         "keras-BackupAndRestore"])
def test_resume_after_growth_equals_uninterrupted_run(tmp_path, saver, saved_growth_epoch):
    tf.config.experimental.enable_op_determinism()
    try:
        def bundle():
            return data.load("fashion_mnist", subset=192, subset_mode="random", batch_size=32,
                             augment="basic", seed=3)

        b = bundle()
        reference, _, cbs = _run(b, [])
        reference.fit(b.train, epochs=4, verbose=0, callbacks=cbs)

        directory = str(tmp_path / "ckpt")
        b = bundle()
        # The growth happens at the start of epoch 2; the kill comes at its
        # end, after the checkpoint of epoch 2 was written or just before.
        if saved_growth_epoch:
            crashed, grow, cbs = _run(b, [], directory, crash=_Crash(at=2), saver=saver)
        else:
            crashed, grow, cbs = _run(b, [_Crash(at=2)], directory, saver=saver)
        with pytest.raises(RuntimeError, match="simulated kill"):
            crashed.fit(b.train, epochs=4, verbose=0, callbacks=cbs)
        assert [e["epoch"] for e in grow.events] == [0, 2]

        b = bundle()
        resumed, grow, cbs = _run(b, [], directory, saver=saver)  # new object, full size
        history = resumed.fit(b.train, epochs=4, verbose=0, callbacks=cbs)
        # Resumed at the first epoch not saved; the growth is restored (not
        # repeated) when its epoch was saved, and replayed when it was not.
        assert len(history.history["loss"]) == (1 if saved_growth_epoch else 2)
        assert grow.stage_index == 1 and [e["epoch"] for e in grow.events] == [0, 2]
        assert_weights_match(resumed, reference)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()

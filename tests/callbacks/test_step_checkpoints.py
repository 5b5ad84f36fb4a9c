"""Step checkpoints: `ControllerCheckpoint(save_freq=N)` saves mid-epoch, and a run
resumed from such a checkpoint continues that epoch with the batches it had not
seen, ending with the weights of a run never interrupted."""
import importlib.util
import os
import signal
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import data, models
from kgrow.callbacks import Growth
from kgrow.controller import ControllerCheckpoint, TrainingController
from kgrow.controller import checkpoint as ckpt
from kgrow.schedules import GrowthSchedule, Stage
from testing_helpers import (AtBatch, StepsPerEpoch, assert_weights_match,
                             new_mirrored_strategy)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "callbacks", "step_resume_script.py")


@pytest.fixture
def determinism():
    tf.config.experimental.enable_op_determinism()
    yield
    from tensorflow.python.framework import config as tf_config
    tf_config.disable_op_determinism()


_Crash = AtBatch  # raises after batch `batch` of epoch `epoch` (a kill between two steps)



def _ran_out(caught):
    return [str(w.message) for w in caught if "ran out of data" in str(w.message)]


# -- the pipeline ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["arrays-randaugment", "stream"])
def test_resume_pass_serves_the_rest_of_the_same_pass(kind):
    x = np.random.RandomState(0).randint(0, 255, (96, 8, 8, 1), np.uint8)
    y = np.arange(96) % 4
    if kind == "stream":
        bundle = data.from_datasets(tf.data.Dataset.from_tensor_slices((x, y)), None,
                                    num_classes=4, batch_size=16, augment="basic", seed=1)
    else:
        bundle = data.from_arrays((x, y), batch_size=16, augment="deit", seed=1)
    bundle.selection.set_active(np.arange(96) % 5 != 0)  # 76 active: 4 batches
    bundle.selection.set_epoch(2)
    full = [b[0].numpy() for b in bundle.train]
    bundle.selection.resume_pass(3)  # pass 2 again, from its batch 3
    rest = [b[0].numpy() for b in bundle.train]
    assert len(full) == 4 and len(rest) == 1
    np.testing.assert_array_equal(rest[0], full[3])  # same samples, same augmentation
    # The skip is for one pass only; the counter moved on to the next epoch.
    assert int(bundle.selection.skip.numpy()) == 0 and int(bundle.selection.epoch.numpy()) == 3
    assert len(list(bundle.train)) == 4


# -- in-process resume ------------------------------------------------------------------
def _growth_run(directory=None, crash=None, save_freq=4):
    keras.utils.set_random_seed(7)
    bundle = data.load("fashion_mnist", subset=192, subset_mode="random", batch_size=32,
                       augment="basic", seed=3)  # 6 steps per epoch
    model = models.resnet_cifar(8, (28, 28, 1), 10, width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(2, width=1.0)]),
                  initializer="orthogonal", verbose=0)
    steps = StepsPerEpoch()
    callbacks = [grow, steps]
    saver = None
    if directory is not None:
        saver = ControllerCheckpoint(directory, save_freq=save_freq, every_epochs=None)
        callbacks.append(saver)
    if crash is not None:
        callbacks.append(crash)
    return bundle, model, grow, steps, saver, callbacks


def test_mid_epoch_resume_then_growth_equals_uninterrupted_run(tmp_path, determinism):
    bundle, reference, _, steps, _, cbs = _growth_run()
    reference.fit(bundle.train, epochs=3, verbose=0, shuffle=False, callbacks=cbs)
    assert steps.per_epoch == [6, 6, 6]

    directory = str(tmp_path / "ckpt")
    # Saves after global steps 4 (epoch 0) and 8 (epoch 1, step 2); killed after
    # step 4 of epoch 1, so two trained steps are lost.
    bundle, crashed, _, _, _, cbs = _growth_run(directory, crash=_Crash(epoch=1, batch=3))
    with pytest.raises(RuntimeError, match="simulated kill"):
        crashed.fit(bundle.train, epochs=3, verbose=0, shuffle=False, callbacks=cbs)
    names = sorted(n for n in os.listdir(directory) if n.startswith("ckpt-"))
    assert [n.rsplit("-", 1)[0] for n in names] == ["ckpt-000000-s000000004",
                                                     "ckpt-000001-s000000002"]
    assert os.path.basename(ckpt.latest_checkpoint(directory)) == names[-1]
    state = ckpt.read_checkpoint(directory)
    assert (state["epoch"], state["step"]) == (1, 2)

    bundle, resumed, grow, steps, saver, cbs = _growth_run(directory)  # fresh objects
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = resumed.fit(bundle.train, epochs=3, verbose=0, shuffle=False, callbacks=cbs)
    assert (saver.restored_epoch, saver.restored_step) == (1, 2)
    # The rest of epoch 1, then a whole epoch 2 in which the model grows.
    assert steps.per_epoch == [4, 6] and len(history.history["loss"]) == 2
    assert [e["epoch"] for e in grow.events] == [0, 2] and grow.stage_index == 1
    assert not _ran_out(caught)
    assert_weights_match(resumed, reference)
    assert int(resumed.optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy())


def _small_model(batch_norm=False):
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.2, name="drop")(keras.layers.Flatten(name="flat")(h))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(h))
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _small_run(directory=None, crash=None, unknown_length=False, save_freq=2,
               strategy=None):
    keras.utils.set_random_seed(11)
    bundle = data.load("fashion_mnist", subset=192, batch_size=32, augment="basic", seed=5)
    if strategy is None:
        model = _small_model()
    else:
        with strategy.scope():
            model = _small_model(batch_norm=True)
    train = bundle.train
    if unknown_length:
        # A dataset derived from bundle.train: Keras does not know its length
        # and learns it from the first epoch; the selection is attached by hand.
        train = train.filter(lambda x, y: True)
        assert int(train.cardinality()) == tf.data.UNKNOWN_CARDINALITY
        TrainingController.of(model).attach_selection(bundle.selection)
    steps = StepsPerEpoch()
    callbacks = [steps]
    if directory is not None:
        callbacks.append(ControllerCheckpoint(directory, save_freq=save_freq))
    if crash is not None:
        callbacks.append(crash)
    return train, model, steps, callbacks


@pytest.mark.parametrize("unknown_length", [False, True], ids=["bundle", "unknown-length"])
def test_resumed_short_epoch_does_not_cap_later_epochs(tmp_path, determinism, unknown_length):
    train, reference, steps, cbs = _small_run(unknown_length=unknown_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown length: Keras warns at the first epoch end
        reference.fit(train, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
    assert steps.per_epoch == [6, 6]

    directory = str(tmp_path / "ckpt")
    train, crashed, _, cbs = _small_run(directory, _Crash(epoch=0, batch=4),
                                        unknown_length=unknown_length)
    with pytest.raises(RuntimeError, match="simulated kill"):
        crashed.fit(train, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
    assert ckpt.read_checkpoint(directory)["step"] == 4

    train, resumed, steps, cbs = _small_run(directory, unknown_length=unknown_length)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.fit(train, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
    # Without care, Keras would take the short epoch's length for later ones.
    assert steps.per_epoch == [2, 6]
    if not unknown_length:
        assert not _ran_out(caught)
    assert_weights_match(resumed, reference)
    # Dropout's seed generator state came back with the checkpoint.
    seeds = [v for v in resumed.variables if "seed" in v.path]
    assert seeds and all(np.array_equal(v.numpy(), w.numpy())
                         for v, w in zip(seeds, [v for v in reference.variables
                                                 if "seed" in v.path]))


def test_mid_epoch_resume_under_mirrored_strategy(tmp_path, determinism):
    # The reference saves too: a step save averages the replicas' BatchNorm
    # moving statistics, which then differ from a run that never saves.
    train, reference, _, cbs = _small_run(str(tmp_path / "ref"),
                                           strategy=new_mirrored_strategy())
    reference.fit(train, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
    directory = str(tmp_path / "ckpt")
    train, crashed, _, cbs = _small_run(directory, _Crash(epoch=0, batch=2),
                                        strategy=new_mirrored_strategy())
    with pytest.raises(RuntimeError, match="simulated kill"):
        crashed.fit(train, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
    assert ckpt.read_checkpoint(directory)["step"] == 2
    train, resumed, steps, cbs = _small_run(directory, strategy=new_mirrored_strategy())
    resumed.fit(train, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
    assert steps.per_epoch == [4, 6]
    assert_weights_match(resumed, reference)


def test_save_due_at_the_last_step_is_made_at_the_epoch_end(tmp_path):
    train, model, _, _ = _small_run()
    directory = str(tmp_path / "ckpt")
    saver = ControllerCheckpoint(directory, save_freq=3, every_epochs=None)
    model.fit(train, epochs=1, verbose=0, shuffle=False, callbacks=[saver])
    names = sorted(n.rsplit("-", 1)[0] for n in os.listdir(directory) if n.startswith("ckpt-"))
    # Step 3 mid-epoch; step 6 is the epoch's last: saved as "after epoch 0".
    assert names == ["ckpt-000000-s000000003", "ckpt-000001"]
    assert ckpt.read_checkpoint(directory)["step"] == 0


# -- refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"save_freq": 0}, "save_freq"), ({"save_freq": "batch"}, "save_freq"),
    ({"save_freq": True}, "save_freq"), ({"every_epochs": None}, "every_epochs=None"),
    ({"save_freq": 5, "every_epochs": 0}, "every_epochs")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ControllerCheckpoint("somewhere", **kwargs)


def test_step_checkpoints_refuse_data_and_fit_settings_they_cannot_resume(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    saver = ControllerCheckpoint(str(tmp_path / "a"), save_freq=2)
    with pytest.raises(ValueError, match="not a kgrow bundle's `train`"):
        model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=1, verbose=0, callbacks=[saver])
    train, model, _, _ = _small_run()
    with pytest.raises(ValueError, match="steps_per_epoch=None"):
        model.fit(train, epochs=1, steps_per_epoch=3, verbose=0,
                  callbacks=[ControllerCheckpoint(str(tmp_path / "b"), save_freq=2)])


# -- a real SIGKILL -------------------------------------------------------------------------
def _script(directory, out, pause=False):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    if pause:
        env["KGROW_TEST_PAUSE"] = "1"
    return [sys.executable, SCRIPT, str(directory), str(out)], env


# Slow: test_resume_kill9.py's "mid_epoch" case SIGKILLs the README path mid-epoch too.
@pytest.mark.slow
def test_sigkill_mid_epoch_and_restart_equals_uninterrupted_run(tmp_path, determinism):
    directory, out = tmp_path / "ckpt", tmp_path / "out.npz"
    # Slowed down between steps, so that it is killed in the middle of an epoch.
    cmd, env = _script(directory, out, pause=True)
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        # The uninterrupted reference, in this process while the victim starts.
        spec = importlib.util.spec_from_file_location("step_resume_script", SCRIPT)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script.main(str(tmp_path / "ref"), str(tmp_path / "ref.npz"))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and victim.poll() is None:
            latest = ckpt.latest_checkpoint(str(directory)) if directory.exists() else None
            if latest and os.path.basename(latest).startswith("ckpt-000001-s"):
                break
            time.sleep(0.05)
        assert victim.poll() is None, victim.stderr.read()[-3000:]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(60)
    assert not out.exists()
    state = ckpt.read_checkpoint(str(directory))
    assert state["epoch"] == 1 and 0 < state["step"] < 6

    cmd, env = _script(directory, out)  # the same command, not slowed down
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with np.load(tmp_path / "ref.npz") as a, np.load(out) as b:
        assert sorted(a.files) == sorted(b.files)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) <= 1e-6
    with open(str(out) + ".steps") as f:  # the resumed run: the rest of epoch 1, then epoch 2
        assert f.read().split() == [str(6 - state["step"]), "6"]

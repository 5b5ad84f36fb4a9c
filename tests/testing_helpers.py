"""Helpers shared by test modules in several folders (tests/ is on sys.path; the
real-process scripts put it there themselves)."""
import os
import signal

import keras
import numpy as np
import tensorflow as tf


def new_mirrored_strategy():
    """A MirroredStrategy on the 2 logical CPUs with its own collective keys.

    Every MirroredStrategy starts its collective keys at the same numbers and
    the process-wide collective executor caches what it saw per key, so a
    second strategy in one process (another test) would reuse keys with other
    tensor shapes and abort with "Shape mismatch in the collective instance".
    TensorFlow's own tests move each strategy to a fresh key range this way.
    """
    from tensorflow.python.distribute import mirrored_strategy as mirrored_lib
    mirrored_lib.MirroredStrategy._collective_key_base += 100000
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def randomize_weights(model, std=0.3, seed=0):
    """Gives every weight random values (BatchNorm variances stay positive),
    so function-preservation checks do not pass merely because of zeros."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape))
        else:
            v.assign(rng.normal(0, std, v.shape))


def assert_weights_match(model, reference, tol=1e-6):
    """Same variable paths as ``reference`` (a model) and values within ``tol``."""
    want = {v.path: v.numpy() for v in reference.weights}
    assert sorted(want) == sorted(v.path for v in model.weights)
    worst = max(float(np.abs(v.numpy() - want[v.path]).max()) for v in model.weights)
    assert worst <= tol, worst


def simulated_kill():
    raise RuntimeError("simulated kill")


def kill_now():
    """SIGKILLs this process, once: only while the file named by the environment
    variable ``KGROW_TEST_KILL_MARKER`` does not exist (created just before),
    so the same command started again runs through."""
    marker = os.environ.get("KGROW_TEST_KILL_MARKER")
    if not marker or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write("killed\n")
    os.kill(os.getpid(), signal.SIGKILL)


class AtBatch(keras.callbacks.Callback):
    """Calls `action()` after batch `batch` of epoch `epoch` (a kill between two
    steps): `simulated_kill` in-process, `kill_now` in a real process."""

    def __init__(self, epoch, batch, action=simulated_kill):
        super().__init__()
        self.at, self.epoch, self.action = (epoch, batch), None, action

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.action()


class StepsPerEpoch(keras.callbacks.Callback):
    """Batches trained per epoch (`per_epoch`), and in all (`total`)."""

    def __init__(self):
        super().__init__()
        self.per_epoch = []

    @property
    def total(self):
        return sum(self.per_epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


class CrashAtEpoch(keras.callbacks.Callback):
    """Raises at the end of epoch `at`: a run killed after that epoch's checkpoint."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("simulated kill")


def component_states(ctrl):
    """`{component name: get_state()}` of a controller."""
    return {name: c.get_state() for name, c in ctrl.components.items()}


def assert_same_state(a, b, path="state"):
    """Nested dicts/lists/arrays equal exactly; the failure names the path."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=path)
    else:
        assert a == b, path

"""The train step's prediction hook: each batch's predictions with its sample ids."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import kgrow
from kgrow.controller import TrainingController

N, CLASSES = 48, 3


def _bundle(seed=0):
    rng = np.random.default_rng(0)
    x = rng.random((N, 4, 4, 1)).astype("float32")
    y = rng.integers(0, CLASSES, N)
    return kgrow.data.from_arrays((x, y), (x[:8], y[:8]), batch_size=8, seed=seed)


def _model():
    inp = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="head",
                             kernel_initializer=keras.initializers.GlorotUniform(seed=0))(h)
    return keras.Model(inp, out)


class Recorder:
    """A prediction hook: per-sample visit counts and the last prediction seen."""

    def __init__(self):
        self.seen = tf.Variable(tf.zeros([N], tf.int32), trainable=False)
        self.last = tf.Variable(tf.zeros([N, CLASSES]), trainable=False)

    def __call__(self, batch):
        ids = tf.reshape(batch.ids, [-1, 1])
        self.seen.scatter_nd_add(ids, tf.ones_like(batch.ids, tf.int32))
        self.last.scatter_nd_update(ids, batch.y_pred)


def test_hook_sees_each_sample_once_with_its_own_prediction():
    bundle = _bundle()
    model = _model()
    model.compile(keras.optimizers.SGD(0.0), "categorical_crossentropy")  # lr 0: fixed model
    ctrl = TrainingController.of(model)
    recorder = Recorder()
    traces = ctrl.retrace_count
    ctrl.hooks.add_prediction_hook(recorder, name="recorder")
    model.fit(bundle.train_with_ids(), epochs=2, verbose=0)
    assert ctrl.retrace_count == traces + 1
    np.testing.assert_array_equal(recorder.seen.numpy(), np.full(N, 2))
    images = np.zeros((N, 4, 4, 1), "float32")
    for x, _, ids in bundle.train_with_index():
        images[ids.numpy()] = x.numpy()
    np.testing.assert_allclose(recorder.last.numpy(), model(images).numpy(), atol=1e-6)


def test_without_a_hook_ids_are_not_sample_weights():
    weights = []
    for use_ids in (False, True):
        bundle = _bundle()
        model = _model()
        model.compile(keras.optimizers.SGD(0.5), "categorical_crossentropy")
        TrainingController.of(model)
        model.fit(bundle.train_with_ids() if use_ids else bundle.train, epochs=2, verbose=0)
        weights.append(model.get_layer("head").kernel.numpy())
    np.testing.assert_allclose(weights[0], weights[1], atol=1e-6)


def test_hook_without_ids_in_the_data_is_a_clear_error():
    bundle = _bundle()
    model = _model()
    model.compile("sgd", "categorical_crossentropy")
    TrainingController.of(model).hooks.add_prediction_hook(lambda batch: None, name="r")
    with pytest.raises(ValueError, match="train_with_ids"):
        model.fit(bundle.train, epochs=1, verbose=0)


def test_ids_refused_with_mixing():
    rng = np.random.default_rng(0)
    bundle = kgrow.data.from_arrays((rng.random((16, 8, 8, 1)), rng.integers(0, 2, 16)),
                                    batch_size=4, augment="deit")
    with pytest.raises(ValueError, match="mixed sample"):
        bundle.train_with_ids()

"""The controller's train step: same updates as Keras' own, cheaper to trace."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.controller import TrainingController
from kgrow.training import WarmupCosine


class _CountingSchedule(WarmupCosine):
    """WarmupCosine that records the graph each time its ops are built."""

    graphs = []

    def __call__(self, step):
        if not tf.executing_eagerly():
            type(self).graphs.append(id(tf.compat.v1.get_default_graph()))
        return super().__call__(step)


def _model(seed=0):
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="a")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="b")(h)
    out = keras.layers.Dense(3, kernel_initializer=init, name="out")(h)
    return keras.Model(inp, out)


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 6)).astype("float32"),
            keras.utils.to_categorical(rng.integers(0, 3, 64), 3).astype("float32"))


def _optimizer(kind, schedule):
    if kind == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=1e-2)
    return keras.optimizers.AdamW(schedule, weight_decay=1e-2)


def _train(controlled, kind, strategy=None, schedule_cls=WarmupCosine, epochs=3):
    x, y = _data()
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        model = _model()
        model.compile(_optimizer(kind, schedule_cls(0.1, total_steps=40, warmup_steps=5)),
                      "categorical_crossentropy")
    if controlled:
        TrainingController.of(model)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_controller_step_matches_keras_step(kind):
    plain, controlled = _train(False, kind), _train(True, kind)
    for a, b in zip(plain.weights, controlled.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    assert int(plain.optimizer.iterations) == int(controlled.optimizer.iterations) == 12


def test_controller_step_matches_keras_step_under_mirrored_strategy(mirrored_strategy):
    plain = _train(False, "sgd", mirrored_strategy)
    controlled = _train(True, "sgd", mirrored_strategy)
    for a, b in zip(plain.weights, controlled.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


def test_learning_rate_schedule_is_built_once_per_trace():
    # Keras reads the learning rate once more per decayed weight; the
    # controller's step builds the schedule's ops once per traced step.
    _CountingSchedule.graphs = []
    _train(False, "sgd", schedule_cls=_CountingSchedule, epochs=1)
    plain = list(_CountingSchedule.graphs)
    _CountingSchedule.graphs = []
    model = _train(True, "sgd", schedule_cls=_CountingSchedule, epochs=1)
    controlled = list(_CountingSchedule.graphs)
    assert controlled and len(controlled) == len(set(controlled))
    assert len(plain) > len(set(plain)) * len(model.trainable_weights)
    # The patch is gone after the step: eager reads still follow the schedule.
    assert "_get_current_learning_rate" not in vars(model.optimizer)
    lr = float(model.optimizer.learning_rate)
    assert lr == pytest.approx(float(model.optimizer._learning_rate(model.optimizer.iterations)))


def test_train_on_batch_and_fit_agree_on_a_controlled_model():
    # fit reads a tf.data iterator (kgrow's one-function path); train_on_batch
    # hands the train function a Python generator (Keras' own path).
    x, y = _data()
    models = []
    for use_fit in (True, False):
        model = _model()
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy")
        TrainingController.of(model)
        if use_fit:
            model.fit(x[:32], y[:32], batch_size=16, epochs=1, shuffle=False, verbose=0)
        else:
            for i in (0, 16):
                model.train_on_batch(x[i:i + 16], y[i:i + 16])
        models.append(model)
    for a, b in zip(*(m.weights for m in models)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)

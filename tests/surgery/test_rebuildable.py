"""Models that surgery cannot re-create fail with a clear error before training."""
import keras
import numpy as np
import pytest

from kgrow.callbacks import Growth
from kgrow.schedules import GrowthSchedule, Stage
from kgrow.surgery import require_rebuildable, scale_width


@keras.saving.register_keras_serializable(package="kgrow_tests")
def double(t):
    return t * 2.0


class NoConfig(keras.layers.Layer):
    """A layer whose constructor argument is missing from its config."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {"name": self.name}


def small_model(middle):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = middle(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    model.compile("sgd", "mse")
    return model


class Batches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


def fit_with_growth(model):
    schedule = GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)], total_epochs=2)
    batches = Batches()
    model.fit(np.zeros((8, 8, 8, 1)), np.zeros((8, 3)), epochs=2, verbose=0,
              callbacks=[Growth(schedule, verbose=0), batches])
    return batches


def test_growth_refuses_a_python_lambda_before_training():
    model = small_model(keras.layers.Lambda(lambda t: t * 2.0, name="times_two"))
    batches = Batches()
    with pytest.raises(ValueError, match=r"Growth cannot rebuild .*Lambda layers \['times_two'\]"
                       r".*register_keras_serializable") as err:
        schedule = GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)], total_epochs=2)
        model.fit(np.zeros((8, 8, 8, 1)), np.zeros((8, 3)), epochs=2, verbose=0,
                  callbacks=[Growth(schedule, verbose=0), batches])
    assert batches.count == 0
    assert "Rescaling" in str(err.value)


def test_surgery_refuses_a_lambda_with_the_same_message():
    model = small_model(keras.layers.Lambda(lambda t: t * 2.0, name="times_two"))
    with pytest.raises(ValueError, match=r"Graph surgery cannot rebuild .*\['times_two'\]"):
        scale_width(model, 0.5)


def test_growth_refuses_a_layer_without_a_usable_config():
    model = small_model(NoConfig(2.0, name="no_config"))
    with pytest.raises(ValueError, match=r"'no_config' \(NoConfig: TypeError.*factor"):
        fit_with_growth(model)


def test_a_registered_function_in_a_lambda_grows():
    model = small_model(keras.layers.Lambda(double, name="times_two"))
    require_rebuildable(model, every_layer=True)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    before = model.predict(x, verbose=0)
    assert fit_with_growth(model).count == 2
    assert model.get_layer("c1").kernel.shape[-1] == 4
    assert model.get_layer("times_two").function is double
    assert np.isfinite(model.predict(x, verbose=0)).all() and before.shape == (4, 3)

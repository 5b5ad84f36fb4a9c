"""The learning-rate schedule follows the epochs when an epoch's step count changes."""
import keras
import numpy as np
import pytest

import kgrow
from kgrow.controller import ControlledCallback, Phase, TrainingController
from kgrow.training import WarmupCosine

S = 8  # steps of a full epoch (64 samples, batch 8)


class _HalveData(ControlledCallback):
    """A data-sieving stand-in: half the samples from epoch 1 on."""
    phase = Phase.DATA

    def controlled_epoch_begin(self, epoch):
        if epoch == 1:
            self.controller.selection.set_active(np.arange(32))


class _Nothing(ControlledCallback):
    pass


class _LearningRates(keras.callbacks.Callback):
    """The learning rate each step uses, per epoch."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self.epochs[-1].append(float(self.model.optimizer.learning_rate))


def _fit(schedule, callbacks, epochs=3):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4, 4, 1)).astype("float32"), rng.integers(0, 2, 64)
    bundle = kgrow.data.from_arrays((x, y), None, num_classes=2, batch_size=8)
    inp = keras.Input((4, 4, 1))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9), "categorical_crossentropy")
    rates = _LearningRates()
    model.fit(bundle.train, epochs=epochs, verbose=0, callbacks=[*callbacks, rates])
    return model, rates.epochs


def test_a_shorter_epoch_keeps_the_schedule_on_its_epochs():
    schedule = WarmupCosine(0.1, total_steps=3 * S, warmup_steps=2, final_lr=0.001,
                            steps_per_epoch=S)
    model, rates = _fit(schedule, [_HalveData()])
    assert [len(r) for r in rates] == [8, 4, 4]
    plain = WarmupCosine(0.1, total_steps=3 * S, warmup_steps=2, final_lr=0.001)
    for epoch, values in enumerate(rates):
        n = len(values)
        want = [float(plain((epoch + k / n) * S)) for k in range(n)]
        np.testing.assert_allclose(values, want, rtol=1e-6)
    assert int(model.optimizer.iterations) == 16
    # After the last (short) epoch the schedule is at its end, not two thirds in.
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)
    assert float(plain(16)) > 0.02


def test_full_epochs_train_exactly_as_the_optimizer_step_schedule():
    follow = WarmupCosine(0.1, total_steps=3 * S, warmup_steps=2, steps_per_epoch=S)
    steps = WarmupCosine(0.1, total_steps=3 * S, warmup_steps=2)
    a, rates_a = _fit(follow, [_Nothing()])
    assert TrainingController.of(a).clock.done.numpy() == S
    b, rates_b = _fit(steps, [])
    np.testing.assert_allclose(np.concatenate(rates_a), np.concatenate(rates_b), rtol=1e-7)
    for va, vb in zip(a.weights, b.weights):  # the controller's step: Keras' within rounding
        np.testing.assert_allclose(va.numpy(), vb.numpy(), atol=1e-6)


def test_a_schedule_counting_steps_warns_when_an_epoch_changes_length():
    schedule = WarmupCosine(0.1, total_steps=3 * S)  # no steps_per_epoch
    with pytest.warns(UserWarning, match="will not end with the last epoch"):
        _fit(schedule, [_HalveData()])
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 3 * S)
    with pytest.warns(UserWarning, match="CosineDecay counts optimizer steps"):
        _fit(schedule, [_HalveData()])


def test_the_schedule_keeps_its_epoch_length_through_serialization():
    schedule = WarmupCosine(0.1, total_steps=30, warmup_steps=3, steps_per_epoch=10)
    restored = WarmupCosine.from_config(schedule.get_config())
    assert restored.steps_per_epoch == 10 and restored.clock is None
    with pytest.raises(ValueError, match="steps_per_epoch"):
        WarmupCosine(0.1, total_steps=30, steps_per_epoch=0)

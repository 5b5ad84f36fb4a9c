"""EMA shadows: the math against a numpy recurrence, strategy, growth, swap."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.controller import (ORDER_MASKS, TrainingController, decay_for_half_life,
                              half_life_steps, rescale_decay)
from kgrow.controller.ema import resolve_decay, warmup_decay

from ctrl_helpers import make_mlp, mirrored_strategy, regression_data, widen_hidden


class RecordWeights(keras.callbacks.Callback):
    """Weights after every optimizer step (test-side Python, not the controller's)."""

    def on_train_begin(self, logs=None):
        self.history = [{v.path: v.numpy().astype(np.float64) for v in self.model.weights}]

    def on_train_batch_end(self, batch, logs=None):
        self.history.append({v.path: v.numpy().astype(np.float64) for v in self.model.weights})


def _numpy_ema(history, decay):
    """`decay`: a number, or a function of the update index (warm-up)."""
    shadow = dict(history[0])
    for t, weights in enumerate(history[1:]):
        d = decay(t) if callable(decay) else decay
        shadow = {p: d * shadow[p] + (1 - d) * weights[p] for p in shadow}
    return shadow


def _strategy(kind):
    if kind == "mirrored":
        return mirrored_strategy()
    return tf.distribute.get_strategy()


def _fit_recording(kind, emas):
    """One epoch of 6 steps with the EMAs `{name: add_ema kwargs}`; (EMAs, weight history)."""
    with _strategy(kind).scope():
        model = make_mlp()
        model.compile(keras.optimizers.SGD(0.1, momentum=0.5), "mse")
    controller = TrainingController.of(model)
    added = [controller.add_ema(name, **kwargs) for name, kwargs in emas.items()]
    recorder = RecordWeights()
    x, y = regression_data(n=48)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[recorder])
    return added, recorder


@pytest.mark.parametrize("kind", ["default", "mirrored"])
def test_ema_matches_numpy_recurrence(kind):
    (fast, slow), recorder = _fit_recording(
        kind, {"fast": dict(decay=0.7), "slow": dict(half_life_steps=3)})
    assert len(recorder.history) == 7  # initial + 6 steps
    for ema, decay in ((fast, 0.7), (slow, 0.5 ** (1 / 3))):
        expected = _numpy_ema(recorder.history, decay)
        got = ema.values()
        assert set(got) == set(expected)
        for p in expected:
            np.testing.assert_allclose(got[p], expected[p], rtol=1e-5, atol=1e-6)
        # the shadows moved away from both the start and the final weights
        assert not np.allclose(got["hidden/kernel"], recorder.history[0]["hidden/kernel"])
        assert not np.allclose(got["hidden/kernel"], recorder.history[-1]["hidden/kernel"])
    if kind == "mirrored":
        shadow = fast.shadow_variables()["hidden/kernel"]
        replicas = [np.asarray(c.numpy()) for c in shadow.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])


@pytest.mark.parametrize("kind", ["default", "mirrored"])
def test_ema_warmup_matches_numpy_recurrence_and_restarts(kind):
    (warm, plain), recorder = _fit_recording(
        kind, {"warm": dict(decay=0.99, warmup=True), "plain": dict(decay=0.99)})
    shadow = _numpy_ema(recorder.history, lambda t: min(0.99, (1 + t) / (10 + t)))
    for p, value in warm.values().items():
        np.testing.assert_allclose(value, shadow[p], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.values()["hidden/kernel"],
                               _numpy_ema(recorder.history, 0.99)["hidden/kernel"],
                               rtol=1e-5, atol=1e-6)
    # Six updates: the warm average sits much closer to the last weights.
    last = recorder.history[-1]["hidden/kernel"]
    assert (np.abs(warm.values()["hidden/kernel"] - last).max()
            < 0.5 * np.abs(plain.values()["hidden/kernel"] - last).max())
    assert warm.updates == plain.updates == 6
    assert warm.effective_decay == pytest.approx(7 / 16)
    assert plain.effective_decay == pytest.approx(0.99)
    warm.reset_to_model()
    assert warm.updates == 0 and warm.effective_decay == pytest.approx(0.1)
    assert warmup_decay(0.99, 10 ** 6) == pytest.approx(0.99)


def _trained_with_ema():
    """An MLP with an EMA "e" (decay 0.9) after one epoch of fit."""
    model = make_mlp()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    controller = TrainingController.of(model)
    ema = controller.add_ema("e", decay=0.9)
    x, y = regression_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, controller, ema


def test_ema_swap_assign_and_reset():
    model, controller, ema = _trained_with_ema()
    own = {v.path: v.numpy() for v in model.weights}
    shadows = ema.values()
    with ema.swap():
        for v in model.weights:
            np.testing.assert_array_equal(v.numpy(), shadows[v.path])
    for v in model.weights:
        np.testing.assert_array_equal(v.numpy(), own[v.path])
    ema.reset_to_model()
    for p, value in ema.values().items():
        np.testing.assert_array_equal(value, own[p])
    ema.assign_to(make_mlp(seed=5))  # another model with the same paths works
    other = make_mlp(units=5)
    with pytest.raises(ValueError, match="shape"):
        ema.assign_to(other)


def test_ema_carried_through_growth():
    model, controller, ema = _trained_with_ema()
    x, y = regression_data()
    before = ema.values()
    controller.replace_model(widen_hidden(model, 6))
    after = ema.values()
    kernel = model.get_layer("hidden").kernel.numpy()
    np.testing.assert_array_equal(after["hidden/kernel"][:, :4], before["hidden/kernel"])
    np.testing.assert_array_equal(after["hidden/kernel"][:, 4:], kernel[:, 4:])
    np.testing.assert_array_equal(after["out/kernel"][4:], 0.0)  # new weights are zero there
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # EMA keeps updating the grown model
    assert not np.array_equal(ema.values()["hidden/kernel"][:, 4:], kernel[:, 4:])


def test_masks_run_before_ema():
    """A post-update hook at ORDER_MASKS runs before the EMA even if registered after it."""
    model = make_mlp()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    controller = TrainingController.of(model)
    ema = controller.add_ema("e", decay=0.5)
    kernel = model.get_layer("hidden").kernel
    mask = tf.constant(np.tile([1.0, 0.0, 1.0, 0.0], (3, 1)), tf.float32)
    kernel.assign(kernel.numpy() * mask.numpy())
    ema.reset_to_model()

    def reapply_mask(ctx):
        ctx.update(kernel, lambda var, m: var.assign(var * m), mask)

    controller.hooks.add_gradient_transform(
        lambda grads, variables: [g * mask if v is kernel else g
                                  for g, v in zip(grads, variables)], name="mask_grads")
    controller.hooks.add_post_update(reapply_mask, name="masks", order=ORDER_MASKS)
    controller.request_retrace()
    x, y = regression_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(kernel.numpy()[:, 1::2], 0.0)
    np.testing.assert_array_equal(ema.values()["hidden/kernel"][:, 1::2], 0.0)
    assert np.all(ema.values()["hidden/kernel"][:, 0::2] != 0)


def test_half_life_helpers():
    d = decay_for_half_life(50)
    assert d ** 50 == pytest.approx(0.5)
    assert half_life_steps(d) == pytest.approx(50)
    # 0.99996 at 1251 steps/epoch (ImageNet, batch 1024) -> same half-life in epochs at 390
    new = rescale_decay(0.99996, 1251, 390)
    assert half_life_steps(new) / 390 == pytest.approx(half_life_steps(0.99996) / 1251)
    assert resolve_decay(half_life_epochs=2, steps_per_epoch=10) == pytest.approx(0.5 ** (1 / 20))
    with pytest.raises(ValueError, match="exactly one"):
        resolve_decay(0.9, half_life_steps=3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        resolve_decay(half_life_epochs=2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        resolve_decay(1.0)


def test_duplicate_ema_name_rejected():
    controller = TrainingController.of(make_mlp())
    controller.add_ema("e", decay=0.9)
    with pytest.raises(ValueError, match="already exists"):
        controller.add_ema("e", decay=0.5)

"""Optimizer rebuild on growth: slots carried through the plan, new slots zero."""
import keras
import numpy as np
import pytest

from kgrow.controller import TrainingController, clone_optimizer, optimizer_state
from kgrow.controller.optimizer import (load_optimizer_state, optimizer_step, slot_births,
                                       slot_lists)

from ctrl_helpers import make_mlp, mirrored_strategy, regression_data, widen_hidden

OPTIMIZERS = {
    "sgd_momentum": (lambda: keras.optimizers.SGD(0.05, momentum=0.9), {"momentums"}),
    "adam": (lambda: keras.optimizers.Adam(0.01), {"_momentums", "_velocities"}),
    "adamw": (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
              {"_momentums", "_velocities"}),
}


def _slots_by_path(optimizer):
    level = optimizer_state(optimizer)["levels"][0]
    return level["slots"]


def _trained_model(make_opt):
    model = make_mlp()
    model.compile(make_opt(), "mse")
    x, y = regression_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return model


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_slots_of_kept_weights_carried_and_new_slots_zero(name):
    make_opt, expected_slots = OPTIMIZERS[name]
    model = _trained_model(make_opt)
    controller = TrainingController.of(model)
    old_opt = model.optimizer
    assert set(slot_lists(old_opt)) == expected_slots
    old = _slots_by_path(old_opt)
    old_iterations = int(old_opt.iterations.numpy())
    assert old_iterations == 4

    controller.replace_model(widen_hidden(model, 6))

    new_opt = model.optimizer
    assert new_opt is not old_opt and type(new_opt) is type(old_opt)
    assert new_opt.get_config() == old_opt.get_config()
    assert int(new_opt.iterations.numpy()) == old_iterations
    new = _slots_by_path(new_opt)
    assert set(new) == expected_slots
    for slot in expected_slots:
        assert np.any(old[slot]["hidden/kernel"] != 0)  # the check below is not vacuous
        k = new[slot]["hidden/kernel"]
        assert k.shape == (3, 6)
        np.testing.assert_array_equal(k[:, :4], old[slot]["hidden/kernel"])
        np.testing.assert_array_equal(k[:, 4:], 0.0)
        b = new[slot]["hidden/bias"]
        np.testing.assert_array_equal(b[:4], old[slot]["hidden/bias"])
        np.testing.assert_array_equal(b[4:], 0.0)
        o = new[slot]["out/kernel"]
        np.testing.assert_array_equal(o[:4], old[slot]["out/kernel"])
        np.testing.assert_array_equal(o[4:], 0.0)
        np.testing.assert_array_equal(new[slot]["out/bias"], old[slot]["out/bias"])


def test_reset_optimizer_is_a_new_optimizer_on_the_continuing_schedule():
    """A reset (the papers' "new AdamW") restarts the moments and the count Adam's
    bias correction reads, while the LR schedule goes on at the run's step: the
    first update after it is a new AdamW's first update at the schedule's current
    LR, not the 3x larger step of zero moments under the correction of step 5."""
    schedule = keras.optimizers.schedules.CosineDecay(0.01, decay_steps=100)
    model = _trained_model(lambda: keras.optimizers.AdamW(schedule, weight_decay=0.1))
    controller = TrainingController.of(model)
    controller.replace_model(widen_hidden(model, 6), reset_optimizer=True)
    opt = model.optimizer
    assert opt._learning_rate.schedule is schedule  # the same object, continued
    assert int(opt.iterations.numpy()) == 0 and optimizer_step(opt) == 4
    assert float(opt.learning_rate.numpy()) == pytest.approx(float(schedule(4)))
    for slot in _slots_by_path(opt).values():
        for value in slot.values():
            np.testing.assert_array_equal(value, 0.0)

    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    twin.compile(keras.optimizers.AdamW(float(schedule(4)), weight_decay=0.1), "mse")
    x, y = regression_data(n=8, seed=3)
    start = twin.get_weights()
    for m in (model, twin):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert all(np.abs(w - w0).max() > 1e-4 for w, w0 in zip(twin.get_weights(), start))
    for a, b in zip(model.weights, twin.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6, err_msg=a.path)
    assert optimizer_step(opt) == 5
    assert float(opt.learning_rate.numpy()) == pytest.approx(float(schedule(5)))

    # A second reset adds up, and the shifted schedule survives serialization.
    controller.replace_model(widen_hidden(model, 8), reset_optimizer=True)
    opt = model.optimizer
    assert opt._learning_rate.offset == 5 and opt._learning_rate.schedule is schedule
    back = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert float(back.learning_rate.numpy()) == pytest.approx(float(schedule(5)))


def test_reset_with_a_constant_learning_rate_keeps_the_run_step_in_the_state():
    model = _trained_model(lambda: keras.optimizers.Adam(0.01))
    TrainingController.of(model).replace_model(widen_hidden(model, 6), reset_optimizer=True)
    opt = model.optimizer
    assert int(opt.iterations.numpy()) == 0 and optimizer_step(opt) == 4
    clone = clone_optimizer(opt)
    clone.build(model.trainable_variables)
    load_optimizer_state(clone, optimizer_state(opt))
    assert optimizer_step(clone) == 4


def test_amsgrad_and_optimizer_ema_slots_found():
    model = make_mlp()
    opt = keras.optimizers.Adam(0.01, amsgrad=True, use_ema=True)
    opt.build(model.trainable_variables)
    assert set(slot_lists(opt)) == {"_momentums", "_velocities", "_velocity_hats",
                                    "_model_variables_moving_average"}


def test_optimizer_ema_slot_of_new_units_starts_at_new_weight():
    model = _trained_model(lambda: keras.optimizers.SGD(0.05, use_ema=True))
    TrainingController.of(model).replace_model(widen_hidden(model, 6))
    avg = _slots_by_path(model.optimizer)["_model_variables_moving_average"]["hidden/kernel"]
    np.testing.assert_array_equal(avg[:, 4:], model.get_layer("hidden").kernel.numpy()[:, 4:])


def test_loss_scale_optimizer_state_round_trips():
    model = make_mlp()
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.5),
                                              initial_scale=64.0)
    opt.build(model.trainable_variables)
    opt.dynamic_scale.assign(8.0)
    opt.inner_optimizer.momentums[0].assign(np.full((3, 4), 0.25, "float32"))
    state = optimizer_state(opt)
    clone = clone_optimizer(opt)
    clone.build(model.trainable_variables)
    load_optimizer_state(clone, state)
    assert float(clone.dynamic_scale.numpy()) == 8.0
    np.testing.assert_array_equal(clone.inner_optimizer.momentums[0].numpy(), 0.25)


def test_weight_decay_exclusions_carried():
    model = make_mlp()
    opt = keras.optimizers.AdamW(0.01, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_list=[model.get_layer("out").bias], var_names=["hidden/b"])
    model.compile(opt, "mse")
    x, y = regression_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    TrainingController.of(model).replace_model(widen_hidden(model, 6))
    new = model.optimizer
    assert not new._use_weight_decay(model.get_layer("out").bias)
    assert new._use_weight_decay(model.get_layer("out").kernel)
    assert new._exclude_from_weight_decay_pattern.pattern == "hidden/b"


def test_load_rejects_other_optimizer_class():
    model = make_mlp()
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    sgd.build(model.trainable_variables)
    adam = keras.optimizers.Adam()
    adam.build(model.trainable_variables)
    with pytest.raises(ValueError, match="Optimizer state is for"):
        load_optimizer_state(adam, optimizer_state(sgd))


def test_replace_model_validates_plan():
    model = _trained_model(lambda: keras.optimizers.SGD(0.1))
    controller = TrainingController.of(model)
    result = widen_hidden(model, 6)
    incomplete = type(result.plan)({k: v for k, v in result.plan.items() if k != "out/bias"})
    with pytest.raises(KeyError, match="out/bias"):
        controller.replace_model(type(result)(result.model, incomplete))
    with pytest.raises(TypeError, match="GrowthResult"):
        controller.replace_model(result.model)


def test_loss_scale_optimizer_growth_in_fit():
    model = make_mlp()
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05, momentum=0.9),
                                                      initial_scale=128.0), "mse")
    x, y = regression_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    old_opt = model.optimizer
    old_momentum = _slots_by_path(old_opt.inner_optimizer)["momentums"]["hidden/kernel"]
    scale = float(old_opt.dynamic_scale.numpy())
    TrainingController.of(model).replace_model(widen_hidden(model, 6))
    new_opt = model.optimizer
    assert isinstance(new_opt, keras.optimizers.LossScaleOptimizer)
    assert float(new_opt.dynamic_scale.numpy()) == scale
    new_momentum = optimizer_state(new_opt)["levels"][1]["slots"]["momentums"]["hidden/kernel"]
    np.testing.assert_array_equal(new_momentum[:, :4], old_momentum)
    np.testing.assert_array_equal(new_momentum[:, 4:], 0.0)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(new_opt.iterations.numpy()) == 8


def test_growth_model_must_be_built_in_strategy_scope():
    strategy = mirrored_strategy()
    with strategy.scope():
        model = make_mlp()
        model.compile(keras.optimizers.SGD(0.1), "mse")
    controller = TrainingController.of(model)
    with pytest.raises(ValueError, match="controller.scope"):
        controller.replace_model(widen_hidden(model, 6))  # built outside the scope
    assert model.get_layer("hidden").units == 4  # nothing changed


def test_model_with_own_train_step_rejected():
    class Custom(keras.Model):
        def train_step(self, data):
            return {}

    inp = keras.Input((2,))
    model = Custom(inp, keras.layers.Dense(1)(inp))
    with pytest.raises(TypeError, match="own train_step"):
        TrainingController.of(model)


def _partition_reference(model_before, opt_before, new_units, make_opt, x, y, steps):
    """Trains the widened MLP with one optimizer per partition: the old entries
    continue `opt_before`'s Adam (its moments and count), the new ones (hidden
    columns and out rows from `old` on) under a new optimizer."""
    import tensorflow as tf
    old_units = model_before.get_layer("hidden").units
    state = optimizer_state(opt_before)["levels"][0]
    grown = widen_hidden(model_before, new_units).model
    hk, hb = grown.get_layer("hidden").kernel.numpy(), grown.get_layer("hidden").bias.numpy()
    ok, ob = grown.get_layer("out").kernel.numpy(), grown.get_layer("out").bias.numpy()
    old_vars = [tf.Variable(hk[:, :old_units]), tf.Variable(hb[:old_units]),
                tf.Variable(ok[:old_units]), tf.Variable(ob)]
    new_vars = [tf.Variable(hk[:, old_units:]), tf.Variable(hb[old_units:]),
                tf.Variable(ok[old_units:])]
    old_opt, new_opt = make_opt(), make_opt()
    old_opt.build(old_vars)
    new_opt.build(new_vars)
    paths = ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]
    for attr in ("_momentums", "_velocities"):
        for slot, path in zip(getattr(old_opt, attr), paths):
            slot.assign(state["slots"][attr][path])
    old_opt.iterations.assign(opt_before.iterations)
    for step in range(steps):
        xb, yb = x[8 * step:8 * step + 8], y[8 * step:8 * step + 8]
        with tf.GradientTape() as tape:
            kernel = tf.concat([old_vars[0], new_vars[0]], axis=1)
            bias = tf.concat([old_vars[1], new_vars[1]], axis=0)
            out_kernel = tf.concat([old_vars[2], new_vars[2]], axis=0)
            pred = tf.tanh(xb @ kernel + bias) @ out_kernel + old_vars[3]
            loss = tf.reduce_mean(keras.losses.mean_squared_error(yb, pred))
        grads = tape.gradient(loss, old_vars + new_vars)
        old_opt.apply_gradients(zip(grads[:4], old_vars))
        new_opt.apply_gradients(zip(grads[4:], new_vars))
    return {"hidden/kernel": np.concatenate([old_vars[0].numpy(), new_vars[0].numpy()], 1),
            "hidden/bias": np.concatenate([old_vars[1].numpy(), new_vars[1].numpy()]),
            "out/kernel": np.concatenate([old_vars[2].numpy(), new_vars[2].numpy()], 0),
            "out/bias": old_vars[3].numpy()}


@pytest.mark.parametrize("name,atol", [("adam", 1e-6), ("adamw", 2e-4)])
def test_entries_added_by_growth_get_their_own_adam_bias_correction(name, atol, monkeypatch):
    """Moments carried through a growth at step 24: the new entries train as
    under a new Adam started at the growth (their bias correction counts from
    it), the old ones as under the continuing Adam. Under the run's count
    instead, their first update here is half the learning rate (after ~1000
    steps it would be 3x). AdamW's decoupled decay of young entries is
    rescaled with them (tolerance lr * wd * steps)."""
    from kgrow.controller import optimizer as optimizer_module
    make_opt = {"adam": lambda: keras.optimizers.Adam(0.01),
                "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.004)}[name]
    x, y = regression_data()
    x2, y2 = regression_data(n=32, seed=5)

    def grown_and_trained():
        model = make_mlp()
        model.compile(make_opt(), "mse")
        model.fit(x, y, batch_size=8, epochs=6, verbose=0, shuffle=False)
        assert int(model.optimizer.iterations.numpy()) == 24
        before = keras.models.clone_model(model)
        before.set_weights(model.get_weights())
        expected = _partition_reference(before, model.optimizer, 6, make_opt, x2, y2, steps=4)
        TrainingController.of(model).replace_model(widen_hidden(model, 6))
        births = slot_births(model.optimizer)
        model.fit(x2, y2, batch_size=8, epochs=1, verbose=0, shuffle=False)
        return model, births, expected

    model, births, expected = grown_and_trained()
    np.testing.assert_array_equal(births["hidden/kernel"][:, :4], 0)
    np.testing.assert_array_equal(births["hidden/kernel"][:, 4:], 24)
    np.testing.assert_array_equal(births["out/kernel"][4:], 24)
    assert "out/bias" not in births  # no entry is new
    got = {w.path: w.numpy() for w in model.weights}
    for path, value in expected.items():
        np.testing.assert_allclose(got[path], value, rtol=0, atol=atol, err_msg=path)

    # Under the run's count instead, the new entries end far from the reference.
    monkeypatch.setattr(optimizer_module, "bias_correction_scales", lambda level, v: [])
    model, _, expected = grown_and_trained()
    out_kernel = model.get_layer("out").kernel.numpy()
    assert np.abs(out_kernel[4:] - expected["out/kernel"][4:]).max() > 20 * atol


def test_slot_births_follow_growth_and_checkpoints_and_a_reset_clears_them():
    model = _trained_model(lambda: keras.optimizers.Adam(0.01))  # 4 steps
    controller = TrainingController.of(model)
    controller.replace_model(widen_hidden(model, 6))
    x, y = regression_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # steps 5-8
    controller.replace_model(widen_hidden(model, 8))
    births = slot_births(model.optimizer)["hidden/kernel"]
    np.testing.assert_array_equal(births[0], [0, 0, 0, 0, 4, 4, 8, 8])
    clone = clone_optimizer(model.optimizer)
    clone.build(model.trainable_variables)
    load_optimizer_state(clone, optimizer_state(model.optimizer))  # a checkpoint's round trip
    np.testing.assert_array_equal(slot_births(clone)["hidden/kernel"], slot_births(
        model.optimizer)["hidden/kernel"])
    controller.replace_model(widen_hidden(model, 10), reset_optimizer=True)
    assert slot_births(model.optimizer) == {}
    sgd = _trained_model(lambda: keras.optimizers.SGD(0.05, momentum=0.9))
    TrainingController.of(sgd).replace_model(widen_hidden(sgd, 6))
    assert slot_births(sgd.optimizer) == {}  # no bias correction to give


def test_bias_correction_of_new_entries_under_mirrored_strategy():
    import tensorflow as tf
    x, y = regression_data()

    def run(strategy):
        with strategy.scope():
            model = make_mlp()
            model.compile(keras.optimizers.Adam(0.01), "mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        controller = TrainingController.of(model)
        controller.replace_model(widen_hidden(model, 6, scope=controller.scope()))
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        return model

    mirrored = run(mirrored_strategy())
    assert slot_births(mirrored.optimizer)["out/kernel"][4:].min() == 8
    single = run(tf.distribute.get_strategy())
    for a, b in zip(mirrored.weights, single.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5, err_msg=a.path)

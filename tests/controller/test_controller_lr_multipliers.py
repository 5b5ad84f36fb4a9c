"""Per-group LR multipliers equal a reference run with separate optimizers."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.controller import TrainingController

from ctrl_helpers import make_mlp, mirrored_strategy, regression_data

LR = 0.02
OPTIMIZERS = {
    "sgd_momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "sgd_nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.05),
}


def reference_run(make_opt, multiplier, x, y, batch, epochs):
    """Hand-written loop: 'hidden' with lr*multiplier, 'out' with lr, two optimizers."""
    model = make_mlp()
    hidden = model.get_layer("hidden").trainable_weights
    out = model.get_layer("out").trainable_weights
    opt_hidden, opt_out = make_opt(LR * multiplier), make_opt(LR)
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            with tf.GradientTape() as tape:
                pred = model(x[i:i + batch], training=True)
                loss = tf.reduce_mean(keras.losses.mean_squared_error(y[i:i + batch], pred))
            grads = tape.gradient(loss, hidden + out)
            opt_hidden.apply_gradients(zip(grads[:2], hidden))
            opt_out.apply_gradients(zip(grads[2:], out))
    return {v.path: v.numpy() for v in model.weights}


@pytest.mark.parametrize("name,kind", [(n, "default") for n in sorted(OPTIMIZERS)]
                         + [("adamw", "mirrored")])
def test_multiplier_equals_separate_learning_rate(name, kind):
    make_opt = OPTIMIZERS[name]
    x, y = regression_data(n=32)
    strategy = mirrored_strategy() if kind == "mirrored" else tf.distribute.get_strategy()
    with strategy.scope():
        model = make_mlp()
        model.compile(make_opt(LR), "mse")
    controller = TrainingController.of(model)
    controller.set_lr_multipliers({"hidden": 0.25})
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    expected = reference_run(make_opt, 0.25, x, y, batch=8, epochs=2)
    plain = reference_run(make_opt, 1.0, x, y, batch=8, epochs=2)
    for v in model.weights:
        np.testing.assert_allclose(v.numpy(), expected[v.path], atol=1e-6, rtol=0)
    # the multiplier made a difference larger than the tolerance
    assert np.max(np.abs(expected["hidden/kernel"] - plain["hidden/kernel"])) > 1e-3


def test_changing_values_does_not_retrace_and_zero_stops_a_group():
    x, y = regression_data(n=16)
    model = make_mlp()
    model.compile(keras.optimizers.Adam(LR), "mse")
    controller = TrainingController.of(model)
    controller.set_lr_multipliers({r"^out/": 0.5})
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    traces = controller.retrace_count
    controller.set_lr_multipliers({r"^out/": 0.0})
    assert controller.lr_multipliers == {r"^out/": 0.0}
    before = model.get_layer("out").kernel.numpy().copy()
    hidden_before = model.get_layer("hidden").kernel.numpy().copy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert controller.retrace_count == traces
    np.testing.assert_array_equal(model.get_layer("out").kernel.numpy(), before)
    assert not np.array_equal(model.get_layer("hidden").kernel.numpy(), hidden_before)


def test_invalid_rules():
    controller = TrainingController.of(make_mlp())
    with pytest.raises(ValueError, match="match no trainable variable"):
        controller.set_lr_multipliers({"stage9": 0.5})
    with pytest.raises(ValueError, match=">= 0"):
        controller.set_lr_multipliers({"hidden": -1.0})
    with pytest.raises(ValueError, match="several LR-multiplier rules"):
        controller.set_lr_multipliers({"hidden": 0.5, "kernel": 2.0})
    with pytest.raises(ValueError, match="regular expression"):
        controller.set_lr_multipliers({"hid(den": 0.5})

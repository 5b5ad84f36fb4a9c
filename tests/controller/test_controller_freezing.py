"""Freezing: weights bit-identical, backward really skipped, unfreeze continues."""
import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.controller import ControlledCallback, Phase, TrainingController


def make_cnn():
    init = keras.initializers.GlorotUniform(seed=0)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, padding="same", name="c1", kernel_initializer=init)(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Conv2D(3, 3, padding="same", name="c2", kernel_initializer=init)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(2, name="head", kernel_initializer=init)(h)
    return keras.Model(inp, out)


def image_data(n=16):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 6, 6, 1)).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"))


def live_op_types(graph) -> collections.Counter:
    """Op types the function runtime executes: those the outputs or side effects need.

    Ops nothing depends on (e.g. a weight gradient TF's gradient function
    emits but no update consumes) are pruned at run time, so they are not
    counted.
    """
    stack = [t.op for t in graph.outputs] + list(graph.control_outputs)
    seen = {}
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op.type
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return collections.Counter(seen.values())


def traced_step_ops(model, x, y):
    step = tf.function(lambda a, b: model.train_step((a, b)))
    graph = step.get_concrete_function(tf.TensorSpec((None,) + x.shape[1:], tf.float32),
                                       tf.TensorSpec((None,) + y.shape[1:], tf.float32)).graph
    return live_op_types(graph)


def _trained_cnn():
    """A small CNN after one epoch of SGD with momentum (optimizer slots exist)."""
    model = make_cnn()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    x, y = image_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    controller = TrainingController.of(model)
    return model, controller, x, y


def test_frozen_weights_bit_identical_and_bn_in_inference_mode():
    model, controller, x, y = _trained_cnn()
    assert controller.freeze(["c1", "bn1"]) == ["c1", "bn1"]
    assert controller.frozen == ["c1", "bn1"]
    frozen = {v.path: v.numpy().copy() for name in ("c1", "bn1")
              for v in model.get_layer(name).weights}
    others = {v.path: v.numpy().copy() for v in model.get_layer("c2").weights}
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for name in ("c1", "bn1"):
        for v in model.get_layer(name).weights:  # moving mean/variance included
            np.testing.assert_array_equal(v.numpy(), frozen[v.path])
    for v in model.get_layer("c2").weights:
        assert not np.array_equal(v.numpy(), others[v.path])


def test_backward_of_frozen_layers_skipped():
    model = make_cnn()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = image_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # builds the optimizer
    controller = TrainingController.of(model)

    full = traced_step_ops(model, x, y)
    assert full["Conv2DBackpropFilter"] == 2  # c1 and c2 kernels
    assert full["Conv2DBackpropInput"] == 1   # into c2's input (c1 needs it)

    controller.freeze(["c1", "bn1"])  # the front: no backward through it at all
    front = traced_step_ops(model, x, y)
    assert front["Conv2DBackpropFilter"] == 1
    assert front["Conv2DBackpropInput"] == 0

    controller.unfreeze()
    controller.freeze("c2")  # the middle: activation gradient flows, no kernel gradient
    middle = traced_step_ops(model, x, y)
    assert middle["Conv2DBackpropFilter"] == 1
    assert middle["Conv2DBackpropInput"] == 1

    seen = []
    controller.hooks.add_gradient_transform(
        lambda grads, variables: seen.append([v.path for v in variables]) or grads)
    traced_step_ops(model, x, y)
    assert "c2/kernel" not in seen[-1] and "c1/kernel" in seen[-1]


def test_unfreeze_continues_with_kept_slots():
    model, controller, x, y = _trained_cnn()
    opt = model.optimizer
    kernel = model.get_layer("c2").kernel

    def slot():
        return opt.momentums[opt._get_variable_index(kernel)].numpy().copy()

    momentum_before = slot()
    assert np.any(momentum_before != 0)
    controller.freeze("c2")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(slot(), momentum_before)  # untouched while frozen
    frozen_value = kernel.numpy().copy()
    controller.unfreeze("c2")
    assert model.optimizer is opt  # no rebuild was needed
    with tf.GradientTape() as tape:
        loss = keras.losses.mean_squared_error(y[:8], model(x[:8], training=True))
        loss = tf.reduce_mean(loss)
    grad = tape.gradient(loss, kernel.value).numpy()
    model.train_on_batch(x[:8], y[:8])
    # Keras SGD: m' = 0.9 m - lr g, w' = w + m', continuing from the kept m
    m_new = slot()
    np.testing.assert_allclose(m_new, 0.9 * momentum_before - 0.1 * grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kernel.numpy(), frozen_value + m_new, rtol=1e-6, atol=1e-7)


def test_freeze_inside_fit_single_retrace():
    class FreezeAt(ControlledCallback):
        phase = Phase.FREEZE

        def controlled_epoch_begin(self, epoch):
            if epoch == 1:
                self.controller.freeze("c1")
                self.controller.freeze("bn1")  # two changes, one retrace

    model = make_cnn()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    controller = TrainingController.of(model)
    x, y = image_data()
    values = {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            values[epoch] = model.get_layer("c1").kernel.numpy().copy()

    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[FreezeAt(), Snap()])
    assert controller.retrace_count == 2  # initial trace + the epoch-1 boundary
    assert not np.array_equal(values[0], make_cnn().get_layer("c1").kernel.numpy())
    np.testing.assert_array_equal(values[1], values[0])
    np.testing.assert_array_equal(values[2], values[0])


def test_unfreeze_of_layer_frozen_before_optimizer_build_rebuilds_optimizer():
    model = make_cnn()
    model.get_layer("c1").trainable = False
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = image_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # Keras builds without c1
    controller = TrainingController.of(model)
    old_opt = model.optimizer
    controller.unfreeze("c1")
    assert model.optimizer is not old_opt
    assert int(model.optimizer.iterations.numpy()) == 2
    before = model.get_layer("c1").kernel.numpy().copy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(model.get_layer("c1").kernel.numpy(), before)


def test_bad_layer_specs():
    controller = TrainingController.of(make_cnn())
    with pytest.raises(ValueError, match="Unknown layer name"):
        controller.freeze(["c1", "nope"])
    with pytest.raises(ValueError, match="matched no layer"):
        controller.freeze(lambda layer: layer.name.startswith("zzz"))
    with pytest.raises(TypeError, match="predicate"):
        controller.freeze(3)


def test_frozen_nested_model_is_listed_and_unfrozen():
    inner_in = keras.Input((3,))
    inner = keras.Model(inner_in, keras.layers.Dense(4, name="inner_dense")(inner_in),
                        name="inner")
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(inner(inp)))
    controller = TrainingController.of(model)
    controller.freeze("inner")
    assert controller.frozen == ["inner", "inner_dense"]
    assert [v.path for v in model.trainable_weights] == ["head/kernel", "head/bias"]
    assert sorted(controller.unfreeze()) == ["inner", "inner_dense"]
    assert len(model.trainable_weights) == 4 and controller.frozen == []

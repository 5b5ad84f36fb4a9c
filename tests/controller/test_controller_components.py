"""Controller components: masks and per-entry LR scales (added without any
controller change) and the built-in ones, through width and depth growth,
resets, checkpoints, Keras' BackupAndRestore, EarlyStopping's restore of an
earlier architecture, and MirroredStrategy."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import models, surgery
from kgrow.controller import LRScales, Masks, TrainingController

from ctrl_helpers import make_mlp, mirrored_strategy, regression_data
from testing_helpers import assert_same_state, component_states

LR = 0.02
OPTIMIZERS = {
    "sgd_momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.05),
}


def _resnet():
    return models.resnet_cifar(20, (8, 8, 1), 3, width=0.25)


def _images(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, size=n), 3).astype("float32")
    return x, y


def _kernels(model):
    return [v for v in model.weights if v.path.endswith("/kernel")]


def _random_masks(model, seed=0):
    rng = np.random.default_rng(seed)
    return {v.path: rng.random(tuple(v.shape)) < 0.5 for v in _kernels(model)}


def _random_scales(model, seed=0):
    rng = np.random.default_rng(seed)
    return {v.path: rng.uniform(0.1, 2.0, tuple(v.shape)) for v in _kernels(model)}


def _compile(model, opt="sgd_momentum"):
    model.compile(OPTIMIZERS[opt](LR), "categorical_crossentropy")


def _assert_masked_zero(model, masks):
    weights = {v.path: v.numpy() for v in model.weights}
    for path, mask in masks.get().items():
        assert np.all(weights[path][~mask] == 0.0), path
        assert np.any(weights[path][mask] != 0.0), path  # the kept entries did train


def _expected_after(plan, old: dict, model, fill):
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    return {p: plan[p].gather(old[plan[p].source], shapes[p], fill=fill)
            for p in shapes if plan[p].source in old}


GROWTHS = {
    "width": lambda m: surgery.scale_width(m, 2.0, initializer="random"),
    "depth": lambda m: surgery.set_depth(m, [3, 4, 4]),
}


@pytest.mark.parametrize("growth", sorted(GROWTHS))
@pytest.mark.parametrize("new_entry", [0.0, 1.0])
def test_masks_and_scales_follow_the_plan_and_masked_weights_stay_zero(growth, new_entry):
    x, y = _images()
    model = _resnet()
    _compile(model)
    ctrl = TrainingController.of(model)
    masks = Masks.of(ctrl, new_entry=new_entry)
    scales = LRScales.of(ctrl, new_entry=0.5)
    masks.set(_random_masks(model))
    scales.set(_random_scales(model))
    _assert_masked_zero(model, masks)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    _assert_masked_zero(model, masks)

    old_masks, old_scales = masks.get(), scales.get()
    with ctrl.scope():
        result = GROWTHS[growth](model)
    ctrl.replace_model(result)
    expected = _expected_after(result.plan, old_masks, model, fill=new_entry)
    got = masks.get()
    assert sorted(got) == sorted(expected)
    if growth == "depth":
        assert len(got) > len(old_masks)  # inserted blocks got their donors' masks
    else:
        assert any(got[p].shape != old_masks[p].shape for p in got)
    for p in expected:
        np.testing.assert_array_equal(got[p], expected[p].astype(bool))
    for p, s in _expected_after(result.plan, old_scales, model, fill=0.5).items():
        np.testing.assert_allclose(scales.get()[p], s, rtol=1e-6)
    _assert_masked_zero(model, masks)  # growth initializers' values are masked too
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # momentum carried by the plan
    _assert_masked_zero(model, masks)


def test_reset_on_request_and_no_hooks_when_empty():
    model = _resnet()
    _compile(model)
    ctrl = TrainingController.of(model)
    Masks.of(ctrl).set(_random_masks(model))
    LRScales.of(ctrl).set(_random_scales(model))
    assert "masks:gradients" in ctrl.hooks
    with ctrl.scope():
        result = surgery.scale_width(model, 2.0, initializer="random")
    ctrl.replace_model(result, reset=("masks", "lr_scales"))
    assert ctrl.component("masks").get() == {} and ctrl.component("lr_scales").get() == {}
    assert "masks:gradients" not in ctrl.hooks and "masks:weights" not in ctrl.hooks
    with pytest.raises(KeyError, match="no attached component"):
        ctrl.replace_model(surgery.scale_width(model, 1.0), reset=("nope",))


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_lr_scales_equal_separate_optimizers_on_the_partitions(opt):
    # Half of the hidden units train at lr * 0.25, the rest at lr: a
    # reference loop with one optimizer per partition gives the same weights.
    x, y = regression_data(n=32)
    scale = np.where(np.arange(4) < 2, 0.25, 1.0)
    model = make_mlp()
    model.compile(OPTIMIZERS[opt](LR), "mse")
    LRScales.of(TrainingController.of(model)).set(
        {"hidden/kernel": np.broadcast_to(scale, (3, 4)), "hidden/bias": scale})
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)

    ref = make_mlp()
    hidden, out = ref.get_layer("hidden"), ref.get_layer("out")
    # Partition variables: columns 0-1 and 2-3 of the hidden layer.
    parts = {k: [tf.Variable(v.numpy()[..., s]) for v in (hidden.kernel, hidden.bias)]
             for k, s in (("slow", slice(0, 2)), ("fast", slice(2, 4)))}
    opts = {"slow": OPTIMIZERS[opt](LR * 0.25), "fast": OPTIMIZERS[opt](LR),
            "out": OPTIMIZERS[opt](LR)}
    for _ in range(2):
        for i in range(0, len(x), 8):
            with tf.GradientTape() as tape:
                k = tf.concat([parts["slow"][0], parts["fast"][0]], axis=1)
                b = tf.concat([parts["slow"][1], parts["fast"][1]], axis=0)
                h = tf.tanh(x[i:i + 8] @ k + b)
                pred = h @ out.kernel + out.bias
                loss = tf.reduce_mean(keras.losses.mean_squared_error(y[i:i + 8], pred))
            variables = parts["slow"] + parts["fast"] + [out.kernel, out.bias]
            grads = tape.gradient(loss, variables)
            opts["slow"].apply_gradients(zip(grads[:2], parts["slow"]))
            opts["fast"].apply_gradients(zip(grads[2:4], parts["fast"]))
            opts["out"].apply_gradients(zip(grads[4:], [out.kernel, out.bias]))
    kernel = np.concatenate([parts["slow"][0].numpy(), parts["fast"][0].numpy()], axis=1)
    np.testing.assert_allclose(model.get_layer("hidden").kernel.numpy(), kernel, atol=1e-6)
    np.testing.assert_allclose(model.get_layer("out").kernel.numpy(), out.kernel.numpy(),
                               atol=1e-6)
    # The scale made a difference larger than the tolerance.
    plain = make_mlp()
    plain.compile(OPTIMIZERS[opt](LR), "mse")
    plain.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert np.abs(plain.get_layer("hidden").kernel.numpy()[:, :2] - kernel[:, :2]).max() > 1e-3


def test_new_scale_values_do_not_retrace():
    x, y = regression_data(n=16)
    model = make_mlp()
    model.compile(keras.optimizers.SGD(LR), "mse")
    ctrl = TrainingController.of(model)
    scales = LRScales.of(ctrl)
    scales.set({"hidden/kernel": 0.5})
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    traces = ctrl.retrace_count
    scales.set({"hidden/kernel": 0.0})
    before = model.get_layer("hidden").kernel.numpy().copy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert ctrl.retrace_count == traces
    np.testing.assert_array_equal(model.get_layer("hidden").kernel.numpy(), before)


def test_invalid_values_are_refused():
    model = make_mlp()
    ctrl = TrainingController.of(model)
    with pytest.raises(ValueError, match="only 0 and 1"):
        Masks.of(ctrl).set({"hidden/kernel": 0.5})
    with pytest.raises(KeyError, match="no model variable"):
        Masks.of(ctrl).set({"nope/kernel": 1})
    with pytest.raises(ValueError, match="shape"):
        LRScales.of(ctrl).set({"hidden/kernel": np.ones((2, 2))})
    with pytest.raises(ValueError, match=">= 0"):
        LRScales.of(ctrl).set({"hidden/kernel": -1.0})
    with pytest.raises(ValueError, match="0 or 1"):
        Masks(new_entry=0.5)






def _grown_controlled(x, y):
    """A model with every kind of component state, grown once, trained."""
    model = _resnet()
    _compile(model)
    ctrl = TrainingController.of(model)
    Masks.of(ctrl).set(_random_masks(model))
    LRScales.of(ctrl).set(_random_scales(model))
    ctrl.add_ema("ema", decay=0.9)
    ctrl.set_lr_multipliers({"stem_conv": 0.5})
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with ctrl.scope():
        result = surgery.scale_width(model, 2.0, initializer="random")
    ctrl.replace_model(result)
    ctrl.freeze("stage1_block0_conv1")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, ctrl


def test_every_component_saved_and_restored_by_controller_checkpoint(tmp_path):
    x, y = _images()
    model, ctrl = _grown_controlled(x, y)
    ctrl.save(str(tmp_path))
    fresh = _resnet()
    _compile(fresh)
    restored = TrainingController.restore(fresh, str(tmp_path))
    assert list(restored.components) == list(ctrl.components)
    assert_same_state(component_states(ctrl), component_states(restored))
    # Both continue identically (masks, scales and frozen set act again).
    for m in (model, fresh):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    _assert_masked_zero(fresh, restored.component("masks"))
    # A restored checkpoint is the whole truth: components it lacks go away.
    plain = _resnet()
    _compile(plain)
    TrainingController.of(plain).save(str(tmp_path / "plain"))
    TrainingController.restore(model, str(tmp_path / "plain"))
    assert "masks" not in ctrl.components and "masks:weights" not in ctrl.hooks


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("simulated kill")


def test_every_component_survives_keras_backup_and_restore(tmp_path):
    x, y = _images()
    model, ctrl = _grown_controlled(x, y)
    saved = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved.update(component_states(ctrl))

    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    with pytest.raises(RuntimeError, match="simulated kill"):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[Record(), backup, _Crash()])
    fresh = _resnet()
    _compile(fresh)
    TrainingController.of(fresh)  # installs the weight I/O that reads the sidecar
    seen = {}

    class Check(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.update(component_states(TrainingController.of(self.model)))

    fresh.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path)), Check()])
    assert_same_state(saved, seen)
    _assert_masked_zero(fresh, TrainingController.of(fresh).component("masks"))


# Slow: the component matrix's early-stopping test restores every component (masks and
# LR scales among them) across a growth.
@pytest.mark.slow
def test_masks_and_scales_survive_early_stopping_across_growth():
    x, y = _images()
    model = _resnet()
    _compile(model)
    ctrl = TrainingController.of(model)
    masks, scales = Masks.of(ctrl), LRScales.of(ctrl)
    masks.set(_random_masks(model))
    scales.set(_random_scales(model))
    ctrl.set_lr_multipliers({"stem_conv": 0.5})
    ctrl.freeze("stage1_block0_conv1")
    before = component_states(ctrl)
    arch = model.to_json()

    class Grow(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                with ctrl.scope():
                    ctrl.replace_model(surgery.scale_width(model, 2.0, initializer="random"))

    class Score(keras.callbacks.Callback):  # makes epoch 0 (the small model) the best
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = -epoch

    stop = keras.callbacks.EarlyStopping(monitor="score", mode="max", patience=5,
                                         restore_best_weights=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[Grow(), Score(), stop])
    assert stop.best_epoch == 0 and model.to_json() == arch
    after = component_states(ctrl)
    for name in ("masks", "lr_scales", "lr_groups", "frozen"):
        if name in ("masks", "lr_scales"):
            # The arrays of the best epoch, not the grown ones.
            assert_same_state({p: a.shape for p, a in before[name]["arrays"].items()},
                         {p: a.shape for p, a in after[name]["arrays"].items()})
        assert_same_state(before[name], after[name], name)
    _assert_masked_zero(model, masks)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    _assert_masked_zero(model, masks)


# Slow: the component matrix's MirroredStrategy rows check masks and LR scales (with
# every other component) through width and depth growth, replicas agreeing.
@pytest.mark.slow
def test_masks_and_scales_under_mirrored_strategy():
    x, y = _images()
    strategy = mirrored_strategy()
    with strategy.scope():
        model = _resnet()
        _compile(model, "adamw")
    ctrl = TrainingController.of(model)
    masks = Masks.of(ctrl)
    masks.set(_random_masks(model))
    LRScales.of(ctrl).set(_random_scales(model))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    _assert_masked_zero(model, masks)
    with ctrl.scope():
        ctrl.replace_model(surgery.scale_width(model, 2.0, initializer="random"))
    assert all(isinstance(v, tf.distribute.DistributedValues)
               for v in ctrl.component("masks").variables().values())
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    _assert_masked_zero(model, masks)
    # Replicas agree on the trained weights.
    for v in model.trainable_weights:
        values = [t.numpy() for t in getattr(v, "value", v).values]
        np.testing.assert_array_equal(values[0], values[1])

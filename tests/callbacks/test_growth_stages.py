"""Growth with resolution stages and stages chosen at run time."""
import keras
import numpy as np
import pytest

import kgrow
from kgrow import models
from kgrow.callbacks import Growth
from kgrow.controller import Masks, TrainingController
from kgrow.models import interpolate_position_embedding
from kgrow.schedules import GrowthSchedule, Stage


def _bundle(image=16, channels=3, n=32):
    rng = np.random.default_rng(0)
    x = rng.random((n, image, image, channels)).astype("float32")
    y = rng.integers(0, 3, n)
    return kgrow.data.from_arrays((x, y), (x[:8], y[:8]), batch_size=8, resizable=True)


class _Sizes(keras.callbacks.Callback):
    """Input size of the model and of the data, per epoch."""

    def __init__(self, selection):
        super().__init__()
        self.selection, self.model_hw, self.data_hw, self.params = selection, {}, {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.model_hw[epoch] = tuple(self.model.inputs[0].shape[1:3])
        if self.selection is not None:
            self.data_hw[epoch] = self.selection.current_image_size()
        self.params[epoch] = self.model.count_params()


def test_vit_resolution_stages_resample_position_embeddings():
    bundle = _bundle()
    model = models.vit((16, 16, 3), 3, depth=1, dim=16, heads=2, patch_size=4)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    TrainingController.of(model).attach_selection(bundle.selection)
    sizes = _Sizes(bundle.selection)
    grow = Growth(GrowthSchedule([Stage(0, resolution=0.5), Stage(1, resolution=1.0)]),
                  verbose=0)
    history = model.fit(bundle.train, epochs=2, verbose=0, callbacks=[grow, sizes])
    assert sizes.model_hw == {0: (8, 8), 1: (16, 16)}
    assert sizes.data_hw == {0: (8, 8), 1: (16, 16)}
    assert [e["image_size"] for e in grow.events] == [[8, 8], [16, 16]]
    assert model.get_layer("pos_embed").grid == (4, 4)
    assert np.all(np.isfinite(history.history["loss"]))


def test_replace_model_with_resize_vit_carries_state_through_the_resample():
    x = np.random.default_rng(0).random((8, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 3, 3)
    model = models.vit((16, 16, 3), 3, depth=1, dim=16, heads=2, patch_size=4)
    model.compile(keras.optimizers.Adam(1e-2), "categorical_crossentropy")
    ctrl = TrainingController.of(model)
    ema = ctrl.add_ema("ema", decay=0.5)
    Masks.of(ctrl).set({"head/kernel": np.arange(48).reshape(16, 3) % 2})
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    pos = model.get_layer("pos_embed").embeddings
    old_pos, old_shadow = pos.numpy(), ema.values()[pos.path]
    old_slots = {v.path: m.numpy() for v, m in zip(model.optimizer._trainable_variables,
                                                   model.optimizer._momentums)}
    with ctrl.scope():
        result = models.resize_vit(model, 24)
    ctrl.replace_model(result)
    pos = model.get_layer("pos_embed").embeddings
    assert tuple(pos.shape) == (1 + 36, 16)
    np.testing.assert_allclose(pos.numpy(), interpolate_position_embedding(old_pos, 4, 6),
                               atol=1e-6)
    np.testing.assert_allclose(ema.values()[pos.path],
                               interpolate_position_embedding(old_shadow, 4, 6), atol=1e-6)
    slots = {v.path: m.numpy() for v, m in zip(model.optimizer._trainable_variables,
                                               model.optimizer._momentums)}
    assert np.all(slots[pos.path] == 0)  # resampled: slots restart
    np.testing.assert_array_equal(slots["head/kernel"], old_slots["head/kernel"])
    assert Masks.of(ctrl).density()["head/kernel"] == 0.5  # not resampled: kept
    x24 = np.random.default_rng(1).random((8, 24, 24, 3)).astype("float32")
    model.fit(x24, y, batch_size=4, epochs=1, verbose=0)


def test_flexible_input_cnn_changes_only_the_data_size():
    bundle = _bundle(image=8, channels=1)
    inp = keras.Input((None, None, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="head")(
        keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.compile("sgd", "categorical_crossentropy")
    TrainingController.of(model).attach_selection(bundle.selection)
    sizes = _Sizes(bundle.selection)
    schedule = GrowthSchedule([Stage(0, resolution=0.5), Stage(1, resolution=1.0)])
    with pytest.raises(ValueError, match="full_resolution"):
        model.fit(bundle.train, epochs=2, verbose=0, callbacks=[Growth(schedule)])
    grow = Growth(schedule, full_resolution=(8, 8), verbose=0)
    model.fit(bundle.train, epochs=2, verbose=0, callbacks=[grow, sizes])
    assert sizes.data_hw == {0: (4, 4), 1: (8, 8)}
    assert sizes.model_hw == {0: (None, None), 1: (None, None)}


def test_resolution_errors():
    schedule = GrowthSchedule([Stage(0, resolution=0.5), Stage(1, resolution=1.0)])
    fixed = models.resnet_cifar(8, (8, 8, 1), 3)
    with pytest.raises(ValueError, match="no position embedding"):
        Growth(schedule).set_model(fixed)
    vit = models.vit((16, 16, 3), 3, depth=1, dim=16, heads=2, patch_size=4)
    vit.compile("sgd", "categorical_crossentropy")
    x = np.zeros((8, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match="resizable=True"):
        vit.fit(x, np.zeros((8, 3)), epochs=2, verbose=0, callbacks=[Growth(schedule)])


def _resnet():
    return models.resnet_cifar(8, (8, 8, 1), 3, width=0.5)


def _data(n=16):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 8, 8, 1)).astype("float32"),
            keras.utils.to_categorical(rng.integers(0, 3, n), 3))


def test_set_next_stage_from_a_callback_and_stage_chooser():
    x, y = _data()
    full_params = _resnet().count_params()
    schedule = GrowthSchedule([Stage(0, width=0.5), Stage(2, width=1.0)])

    class Choose(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                grow.set_next_stage(width=0.75)

    model = _resnet()
    model.compile("sgd", "categorical_crossentropy")
    grow = Growth(schedule, verbose=0)
    sizes = _Sizes(None)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[grow, Choose(), sizes])
    assert [e["kind"] for e in grow.events] == ["shrink-to-start", "chosen", "grow"]
    assert grow.events[1]["sizes"] == {"epoch": 0, "width": 0.75}
    p = sizes.params
    assert p[0] < p[1] < p[2] == full_params

    # The chooser replaces the scheduled stage at a boundary.
    calls = []

    def chooser(epoch, scheduled, growth):
        calls.append((epoch, scheduled.width))
        return Stage(0, width=0.75)

    model = _resnet()
    model.compile("sgd", "categorical_crossentropy")
    grow = Growth(schedule, stage_chooser=chooser, verbose=0)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[grow])
    assert calls == [(2, 1.0)]
    assert grow.current.width == 0.75 and model.count_params() == p[1]
    # The run-time stage is part of the checkpointed state.
    state = grow._get_state()
    again = Growth(schedule, verbose=0)
    again._set_state(state)
    assert again.current == grow.current and again.stage_index == 1


def test_set_next_stage_is_validated():
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(2, width=1.0)]), verbose=0)
    with pytest.raises(ValueError, match="quantities"):
        grow.set_next_stage(depth=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        grow.set_next_stage(width=1.5)
    with pytest.raises(TypeError, match="not both"):
        grow.set_next_stage(Stage(0, width=0.5), width=0.5)
    assert grow.set_next_stage({"width": 0.6}).width == 0.6

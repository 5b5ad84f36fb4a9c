"""Growth inside one model.fit: schedule, surgery and controller together."""
import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import models
from kgrow.callbacks import FullSize, Growth
from kgrow.schedules import GrowthSchedule, Stage


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 12, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, size=n), 3).astype("float32")
    return x, y


def _resnet():
    return models.resnet_cifar(20, (12, 12, 1), 3, width=0.5)


class _Probe(keras.callbacks.Callback):
    """Compares predictions at the end of an epoch with those at the next epoch's start."""

    def __init__(self, x):
        super().__init__()
        self.x, self.before, self.diffs, self.shapes = x, None, {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.shapes[epoch] = int(self.model.count_params())
        if self.before is not None:
            after = self.model(self.x, training=False).numpy()
            self.diffs[epoch] = float(np.abs(after - self.before).max())

    def on_epoch_end(self, epoch, logs=None):
        self.before = self.model(self.x, training=False).numpy()


def test_full_size_records_groups_and_stage_depths():
    full = FullSize.of(_resnet())
    assert full.stage_depths == [3, 3, 3]
    assert full.depths_at(0.5) == [2, 2, 2]
    # Stages 2 and 3 open with a projection block, which always stays, plus
    # one copyable block; stage 1 is all identity blocks.
    assert full.depths_at(0.1) == [1, 2, 2]
    assert all(v > 0 for v in full.groups.values())


def test_width_and_depth_growth_in_one_fit_is_function_preserving(tmp_path):
    x, y = _data()
    full = _resnet()
    full_shapes = {w.path: tuple(w.shape) for w in full.weights}
    full_params = full.count_params()
    full.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    schedule = GrowthSchedule([Stage(0, width=0.5, depth=0.5), Stage(2, width=1.0, depth=1.0)],
                              total_epochs=3)
    probe = _Probe(x[:16])
    grow = Growth(schedule, initializer="zeros", depth_source="identity", verbose=0)
    log = tmp_path / "log.csv"
    ckpt = tmp_path / "best.keras"
    hist = full.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
                    callbacks=[grow, probe, keras.callbacks.CSVLogger(str(log)),
                               keras.callbacks.ModelCheckpoint(str(ckpt)),
                               keras.callbacks.EarlyStopping(monitor="loss", patience=5)])
    assert len(hist.history["loss"]) == 3
    # Stage 0 is smaller, the last stage is the full architecture again.
    assert probe.shapes[0] < full_params and probe.shapes[2] == full_params
    # The growth at epoch 2 keeps the function (zeros + identity blocks).
    assert probe.diffs[2] < 1e-5, probe.diffs
    assert probe.diffs[1] < 1e-9  # no growth at epoch 1: the model simply continued
    # Same shapes as the model the user built (inserted blocks carry new names).
    grown = {w.path: tuple(w.shape) for w in full.weights}
    assert sorted(grown.values()) == sorted(full_shapes.values())
    assert [e["kind"] for e in grow.events] == ["shrink-to-start", "grow"]
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    # The growth state is in History and in the CSV log, under grow/.
    assert hist.history["grow/width"] == [0.5, 0.5, 1.0]
    assert hist.history["grow/depth"] == [6.0, 6.0, 9.0]  # blocks of the 3-stage ResNet-20
    assert [float(r["grow/params"]) for r in rows] == [probe.shapes[0]] * 2 + [full_params]
    loaded = keras.models.load_model(str(ckpt))
    np.testing.assert_allclose(loaded(x[:4], training=False), full(x[:4], training=False),
                               atol=1e-6)
    assert not any("kgrow" in type(layer).__module__ for layer in loaded.layers
                   if not type(layer).__module__.startswith("kgrow.models"))


# Slow: `Growth` under a strategy is also run by NetworkExpansion's MirroredStrategy test
# (a Growth configuration), the component matrix's and the 2-worker growth test.
@pytest.mark.slow
def test_growth_under_mirrored_strategy(mirrored_strategy):
    x, y = _data(32)
    with mirrored_strategy.scope():
        model = _resnet()
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    grow = Growth(GrowthSchedule.linear(2, num_stages=2, start=0.5), initializer="orthogonal",
                  verbose=0)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[grow])
    assert len(grow.events) == 2
    for v in model.trainable_variables:
        assert isinstance(v.value, tf.distribute.DistributedValues), v.path


def test_schedule_errors_are_raised_before_training():
    model = _resnet()
    model.compile("sgd", "categorical_crossentropy")
    x, y = _data(16)
    bad_group = Growth([Stage(0, width={"nope": 0.5}), Stage(1, width={"nope": 1.0})], verbose=0)
    with pytest.raises(ValueError, match="does not have"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[bad_group])
    late = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(5, width=1.0)]), verbose=0)
    with pytest.raises(ValueError, match="fit runs 3 epochs"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[late])
    with pytest.raises(ValueError, match="initializer"):
        Growth(GrowthSchedule.linear(4, 2), initializer="nope")
    with pytest.raises(ValueError, match="depth_source"):
        Growth(GrowthSchedule.linear(4, 2), depth_source="magic")


def test_no_blocks_means_no_depth_growth():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(8)(inp)))
    with pytest.raises(ValueError, match="no repeated blocks"):
        FullSize.of(model, need_width=False)


class _Snapshot(keras.callbacks.Callback):
    """Predictions and parameter count at the end of every epoch."""

    def __init__(self, x):
        super().__init__()
        self.x, self.outputs, self.params = x, {}, {}

    def on_epoch_end(self, epoch, logs=None):
        self.outputs[epoch] = self.model(self.x, training=False).numpy()
        self.params[epoch] = int(self.model.count_params())


@pytest.mark.parametrize("mode, best_epoch", [("max", 0), ("min", 2)])
def test_early_stopping_restores_best_weights_across_growth(mode, best_epoch):
    # mode="max" on the loss makes the first (small-stage) epoch the best, so
    # the restore has to take the smaller architecture back; mode="min" ends
    # on the full architecture.
    x, y = _data()
    model = _resnet()
    full_params = model.count_params()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    schedule = GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)], total_epochs=3)
    snap = _Snapshot(x[:8])
    stop = keras.callbacks.EarlyStopping(monitor="loss", mode=mode, patience=10,
                                         restore_best_weights=True)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
              callbacks=[Growth(schedule, initializer="zeros", verbose=0), snap, stop])
    assert stop.best_epoch == best_epoch
    assert snap.params[0] < full_params == snap.params[2]
    assert model.count_params() == snap.params[best_epoch]
    np.testing.assert_allclose(model(x[:8], training=False).numpy(), snap.outputs[best_epoch],
                               atol=1e-6)
    # The restored model keeps training (optimizer rebuilt on its variables).
    before = model(x[:8], training=False).numpy()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.abs(model(x[:8], training=False).numpy() - before).max() > 1e-4
    # Plain lists still go through Keras' own set_weights, shape checks included.
    with pytest.raises(ValueError, match="weight"):
        model.set_weights([np.zeros((1,))] * len(model.weights))

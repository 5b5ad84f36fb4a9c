"""Growth inside one model.fit, with Keras' own callbacks attached, and the epoch pipeline."""
import csv
import gc
import importlib.util
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.controller import ControlledCallback, Phase, TrainingController

from ctrl_helpers import make_mlp, mirrored_strategy, regression_data, widen_hidden

HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


class Grow(ControlledCallback):
    phase = Phase.ARCHITECTURE

    def __init__(self, at, units):
        super().__init__()
        self.at, self.units = at, units

    def controlled_epoch_begin(self, epoch):
        if epoch == self.at:
            result = widen_hidden(self.model, self.units, scope=self.controller.scope())
            self.controller.replace_model(result)


@pytest.mark.parametrize("kind", ["default", "mirrored"])
def test_growth_in_fit_with_keras_callbacks(kind, tmp_path):
    strategy = mirrored_strategy() if kind == "mirrored" else tf.distribute.get_strategy()
    with strategy.scope():
        model = make_mlp()
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", metrics=["mae"])
    controller = TrainingController.of(model)
    ema = controller.add_ema("ema", decay=0.9)
    x, y = regression_data(n=32)
    csv_path = tmp_path / "log.csv"
    keras_path = str(tmp_path / "model.keras")
    callbacks = [
        keras.callbacks.ModelCheckpoint(keras_path),
        keras.callbacks.CSVLogger(str(csv_path)),
        keras.callbacks.EarlyStopping(monitor="loss", patience=10),
        Grow(at=1, units=6),
        Grow(at=2, units=8),
    ]
    if HAVE_TENSORBOARD:  # tensorboard is not a kgrow dependency
        callbacks.insert(3, keras.callbacks.TensorBoard(str(tmp_path / "tb")))
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False,
                        validation_data=(x, y), callbacks=callbacks)
    assert model.get_layer("hidden").kernel.shape == (3, 8)
    assert len(history.history["loss"]) == 4
    assert history.history["loss"][-1] < history.history["loss"][0]
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(rows[0])
    loaded = keras.models.load_model(keras_path)
    assert loaded.get_layer("hidden").kernel.shape == (3, 8)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert ema.values()["hidden/kernel"].shape == (3, 8)
    assert int(model.optimizer.iterations.numpy()) == 16
    assert controller.retrace_count == 3  # initial + one per growth boundary
    assert [h for h in controller.growth_history] == [{"hidden": [4, 6]}, {"hidden": [6, 8]}]
    if HAVE_TENSORBOARD:
        assert list((tmp_path / "tb" / "train").iterdir())


def test_epoch_pipeline_runs_in_phase_order_once_per_epoch():
    calls = []

    class Recorder(ControlledCallback):
        def __init__(self, phase, tag):
            super().__init__()
            self.phase, self.tag = phase, tag

        def controlled_epoch_begin(self, epoch):
            calls.append((epoch, self.tag))

    model = make_mlp()
    model.compile("sgd", "mse")
    x, y = regression_data(n=16)
    # deliberately listed against the phase order
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[
        Recorder(Phase.SCHEDULE, "schedule"), Recorder(Phase.DATA, "data"),
        Recorder(Phase.FREEZE, "freeze"), Recorder(Phase.ARCHITECTURE, "grow"),
        Recorder(Phase.FREEZE, "freeze2")])
    assert calls == [(e, t) for e in (0, 1)
                     for t in ("grow", "freeze", "freeze2", "data", "schedule")]
    assert TrainingController.of(model)._callbacks == []  # detached at train end


def test_two_callbacks_driving_the_same_thing_are_refused_when_fit_starts():
    class Driver(ControlledCallback):
        phase = Phase.ARCHITECTURE

        def __init__(self, drives):
            super().__init__()
            self.drives = drives

    model = make_mlp()
    model.compile("sgd", "mse")
    x, y = regression_data(n=16)
    with pytest.raises(ValueError, match="Driver and Driver both drive the architecture"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[Driver(("architecture",)), Driver(("architecture", "masks"))])
    # different things: both run
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[Driver(("architecture",)), Driver(("active data",))])


class _Cycle:
    def __init__(self):
        self.me = self


class _FreezeProbe(ControlledCallback):
    """Records the frozen-object count; at epoch 1 runs a full collection."""
    phase = Phase.ARCHITECTURE

    def __init__(self):
        super().__init__()
        self.seen, self.alive_in_fit = [], {}
        held = _Cycle()  # becomes garbage once fit has begun
        self.before_fit, self._held = weakref.ref(held), held

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._held = None

    def controlled_epoch_begin(self, epoch):
        self.seen.append(gc.get_freeze_count())
        if epoch == 0:
            self.made_in_fit = weakref.ref(_Cycle())
        if epoch == 1:
            gc.collect()
            self.alive_in_fit = {"made in fit": self.made_in_fit() is not None,
                                 "existed before fit": self.before_fit() is not None}


def test_heap_is_frozen_during_fit_only():
    gc.collect()
    assert gc.get_freeze_count() == 0
    model = make_mlp()
    model.compile("sgd", "mse")
    x, y = regression_data(n=16)
    probe = _FreezeProbe()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[probe])
    assert min(probe.seen) > 1000 and gc.get_freeze_count() == 0
    # Garbage made in fit is collected in fit; older garbage waits for its end.
    assert probe.alive_in_fit == {"made in fit": False, "existed before fit": True}
    gc.collect()
    assert probe.before_fit() is None

    TrainingController.of(model).freeze_gc = False
    probe = _FreezeProbe()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[probe])
    assert probe.seen == [0, 0]
    assert probe.alive_in_fit == {"made in fit": False, "existed before fit": False}


def test_next_fit_cleans_up_after_a_fit_that_raised():
    # Keras skips on_train_end when fit raises: the failed fit's callbacks stay
    # attached and the heap frozen until the next fit takes over.
    class Fails(ControlledCallback):
        def controlled_epoch_begin(self, epoch):
            raise RuntimeError("stop")

    model = make_mlp()
    model.compile("sgd", "mse")
    x, y = regression_data(n=16)
    with pytest.raises(RuntimeError, match="stop"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[Fails()])
    assert gc.get_freeze_count() > 0
    probe = _FreezeProbe()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[probe])  # Fails not called
    assert min(probe.seen) > 1000 and gc.get_freeze_count() == 0
    assert TrainingController.of(model)._callbacks == []


def test_heap_frozen_by_the_user_stays_frozen():
    model = make_mlp()
    model.compile("sgd", "mse")
    x, y = regression_data(n=16)
    held = _Cycle()
    gc.freeze()
    try:
        garbage, held = weakref.ref(held), None
        probe = _FreezeProbe()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[probe])
        gc.collect()
        assert probe.seen[0] > 1000 and garbage() is not None  # still frozen
    finally:
        gc.unfreeze()
    gc.collect()
    assert garbage() is None


def test_controller_is_invisible_to_keras_saving(tmp_path):
    model = make_mlp()
    model.compile("adam", "mse")
    controller = TrainingController.of(model)
    controller.add_ema("e", decay=0.9)
    x, y = regression_data(n=16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert not hasattr(loaded, "_kgrow_controller")
    assert len(loaded.weights) == len(model.weights)
    ckpt = tf.train.Checkpoint(model=model)
    names = [n for n, _ in tf.train.list_variables(ckpt.write(str(tmp_path / "tf")))]
    assert not any("kgrow" in n for n in names)


def test_of_is_idempotent_and_validates_inputs():
    model = make_mlp()
    controller = TrainingController.of(model)
    assert TrainingController.of(model) is controller
    with pytest.raises(ValueError, match="already has a controller"):
        TrainingController(model)
    with pytest.raises(TypeError, match="keras.Model"):
        TrainingController.of(object())
    with pytest.raises(TypeError, match="get_state"):
        controller.attach_selection(object())
    with pytest.raises(TypeError, match="callables"):
        controller.register_state("x", None, None)
    from kgrow.controller import ControllerCheckpoint
    with pytest.raises(ValueError, match="save_freq"):
        ControllerCheckpoint("/tmp/x", save_freq=10)

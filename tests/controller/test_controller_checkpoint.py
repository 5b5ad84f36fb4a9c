"""Atomic checkpoints, full-state round trip, and resume after a growth step."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.controller import (ControlledCallback, ControllerCheckpoint, Phase,
                              TrainingController, checkpoint, latest_checkpoint,
                              read_checkpoint, write_checkpoint)

from ctrl_helpers import make_mlp, mirrored_strategy, regression_data, widen_hidden


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = write_checkpoint(str(tmp_path), {"step": 1, "w": np.arange(3.0)}, epoch=1)

    def broken_json(path, obj):  # arrays were already written when this fails
        with open(path, "w") as f:
            f.write('{"step": 2, "w": ')
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_json", broken_json)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(str(tmp_path), {"step": 2, "w": np.arange(5.0)}, epoch=2)
    assert latest_checkpoint(str(tmp_path)) == first
    state = read_checkpoint(str(tmp_path))
    assert state["step"] == 1 and state["w"].tolist() == [0.0, 1.0, 2.0]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_crash_between_rename_and_pointer_update(tmp_path, monkeypatch):
    first = write_checkpoint(str(tmp_path), {"step": 1}, epoch=1)

    def killed(directory, name):
        raise KeyboardInterrupt  # the process dies before `latest` moves

    monkeypatch.setattr(checkpoint, "_replace_latest", killed)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(str(tmp_path), {"step": 2}, epoch=2)
    assert latest_checkpoint(str(tmp_path)) == first
    assert read_checkpoint(str(tmp_path))["step"] == 1
    monkeypatch.undo()
    write_checkpoint(str(tmp_path), {"step": 3}, epoch=3, keep=1)
    assert read_checkpoint(str(tmp_path))["step"] == 3
    assert len([n for n in os.listdir(tmp_path) if n.startswith("ckpt-")]) == 1


def test_keep_prunes_old_checkpoints(tmp_path):
    for epoch in range(1, 5):
        write_checkpoint(str(tmp_path), {"epoch": epoch}, epoch=epoch, keep=2)
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("ckpt-"))
    assert [n.split("-")[1] for n in names] == ["000003", "000004"]
    assert read_checkpoint(str(tmp_path))["epoch"] == 4


def test_split_arrays_round_trip_and_errors():
    state = {"a": [np.ones((2, 2)), {"b": np.int64(3), "c": None}], "d": "x"}
    meta, arrays = checkpoint.split_arrays(state)
    back = checkpoint.join_arrays(meta, arrays)
    np.testing.assert_array_equal(back["a"][0], np.ones((2, 2)))
    assert back["a"][1] == {"b": 3, "c": None} and back["d"] == "x"
    with pytest.raises(TypeError, match="cannot store a set"):
        checkpoint.split_arrays({"bad": {1, 2}})
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        read_checkpoint("/nonexistent/kgrow")


@pytest.mark.parametrize("kind", ["default", "mirrored"])
def test_full_state_round_trip(tmp_path, kind):
    class Selection:
        def __init__(self):
            self.state = {"active": np.array([True, False, True]), "epoch": 0}

        def get_state(self):
            return self.state

        def set_state(self, state):
            self.state = state

    strategy = mirrored_strategy() if kind == "mirrored" else tf.distribute.get_strategy()
    x, y = regression_data(n=16)
    with strategy.scope():
        model = make_mlp()
        model.compile(keras.optimizers.Adam(0.01), "mse")
    controller = TrainingController.of(model)
    controller.add_ema("e", decay=0.8)
    controller.set_lr_multipliers({"out": 0.5})
    selection = Selection()
    controller.attach_selection(selection)
    controller.register_state("schedule", lambda: {"stage": 2}, lambda v: None)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    controller.replace_model(widen_hidden(model, 6, scope=controller.scope()))
    controller.freeze("out")
    controller.save(str(tmp_path), epoch=1)

    with strategy.scope():
        fresh = make_mlp(seed=3)
        fresh.compile(keras.optimizers.Adam(0.01), "mse")
    got = {}
    restored = TrainingController.restore(fresh, str(tmp_path))
    restored.register_state("schedule", lambda: None, lambda v: got.update(v))
    new_selection = Selection()
    restored.attach_selection(new_selection)
    assert restored.epoch == 1 and got == {"stage": 2}
    assert fresh.get_layer("hidden").units == 6 and not fresh.get_layer("out").trainable
    saved_weights = {v.path: v.numpy() for v in model.weights}
    assert sorted(v.path for v in fresh.weights) == sorted(saved_weights)
    for v in fresh.weights:
        np.testing.assert_array_equal(v.numpy(), saved_weights[v.path])
    assert restored.frozen == ["out"]
    assert restored.lr_multipliers == {"out": 0.5}
    np.testing.assert_array_equal(new_selection.state["active"], [True, False, True])
    for p, value in controller.ema("e").values().items():
        np.testing.assert_array_equal(restored.ema("e").values()[p], value)
    assert int(fresh.optimizer.iterations.numpy()) == 2
    np.testing.assert_array_equal(fresh.optimizer._momentums[0].numpy(),
                                  model.optimizer._momentums[0].numpy())
    assert restored.growth_history == [{"hidden": [4, 6]}]
    fresh.fit(x, y, batch_size=8, epochs=1, verbose=0)  # trains on in the restored state
    np.testing.assert_array_equal(fresh.get_layer("out").kernel.numpy(),
                                  saved_weights["out/kernel"])
    assert not np.array_equal(fresh.get_layer("hidden").kernel.numpy(),
                              saved_weights["hidden/kernel"])


class GrowOnce(ControlledCallback):
    """Test-local growth: widen 'hidden' 4 -> 6 at the start of epoch `at`."""
    phase = Phase.ARCHITECTURE

    def __init__(self, at):
        super().__init__()
        self.at = at
        self.grown = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.controller.register_state("grow_once", lambda: {"grown": self.grown},
                                       lambda s: setattr(self, "grown", s["grown"]))

    def controlled_epoch_begin(self, epoch):
        if epoch == self.at and not self.grown:
            result = widen_hidden(self.model, 6, scope=self.controller.scope())
            self.controller.replace_model(result)
            self.grown = True


class CrashAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _compiled_small_model():
    model = make_mlp()
    schedule = keras.optimizers.schedules.CosineDecay(0.02, decay_steps=16)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=0.01), "mse")
    controller = TrainingController.of(model)
    controller.add_ema("ema", decay=0.7)
    controller.add_ema("warm", decay=0.9, warmup=True)
    controller.set_lr_multipliers({"out": 0.5})
    return model, controller


def test_resume_after_growth_matches_uninterrupted_run(tmp_path):
    tf.config.experimental.enable_op_determinism()
    try:
        x, y = regression_data(n=32)
        fit_args = dict(batch_size=8, epochs=4, verbose=0, shuffle=False)

        full, full_ctrl = _compiled_small_model()
        full.fit(x, y, callbacks=[GrowOnce(at=2)], **fit_args)
        assert full.get_layer("hidden").units == 6

        directory = str(tmp_path / "ckpt")
        crashed, _ = _compiled_small_model()
        with pytest.raises(RuntimeError, match="simulated crash"):
            crashed.fit(x, y, callbacks=[GrowOnce(at=2), ControllerCheckpoint(directory),
                                         CrashAtEpochEnd(2)], **fit_args)
        assert read_checkpoint(directory)["epoch"] == 3

        resumed, resumed_ctrl = _compiled_small_model()  # a new object, small architecture
        assert resumed.get_layer("hidden").units == 4
        saver = ControllerCheckpoint(directory)
        history = resumed.fit(x, y, callbacks=[GrowOnce(at=2), saver], **fit_args)
        assert saver.restored_epoch == 3
        assert len(history.history["loss"]) == 1  # only epoch 3 ran
        assert resumed.get_layer("hidden").units == 6
        assert int(resumed.optimizer.iterations.numpy()) == 16
        assert resumed._initial_epoch is None
        full_weights = {v.path: v.numpy() for v in full.weights}
        for v in resumed.weights:
            np.testing.assert_allclose(v.numpy(), full_weights[v.path], atol=1e-6, rtol=0)
        for name in ("ema", "warm"):
            for p, value in full_ctrl.ema(name).values().items():
                np.testing.assert_allclose(resumed_ctrl.ema(name).values()[p], value, atol=1e-6)
        # The warm-up counter came back from the checkpoint, not from zero.
        assert resumed_ctrl.ema("warm").warmup
        assert resumed_ctrl.ema("warm").updates == full_ctrl.ema("warm").updates == 16
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


def test_live_selection_state_saved_and_restored(tmp_path):
    selection_module = pytest.importorskip("kgrow.data.selection")
    model = make_mlp()
    controller = TrainingController.of(model)
    selection = selection_module.LiveSelection(6)
    selection.set_active([1, 4, 5])
    selection.set_image_size(12, 10)
    controller.attach_selection(selection)
    controller.save(str(tmp_path), epoch=2)

    fresh = make_mlp()
    restored = TrainingController.restore(fresh, str(tmp_path))
    other = selection_module.LiveSelection(6)
    restored.attach_selection(other)  # the data owner attaches after the restore
    assert other.active_indices().tolist() == [1, 4, 5]
    assert other.get_state()["image_size"] == [12, 10]

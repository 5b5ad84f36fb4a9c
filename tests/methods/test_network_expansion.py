"""Network Expansion (kgrow.methods.network_expansion): schedules, EMA, both modes in fit."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import models
from kgrow.callbacks import NetworkExpansion
from kgrow.controller import ControllerCheckpoint, TrainingController
from kgrow.controller.optimizer import optimizer_state, optimizer_step
from kgrow.methods.network_expansion import (PAPER_EMA_HALF_LIFE_FRACTION, cnn_schedule,
                                             depth_weight_decay, ema_decay, expand_depth,
                                             expand_width, vit_schedule)
from kgrow.surgery import find_blocks

from testing_helpers import CrashAtEpoch, assert_weights_match, randomize_weights


def _vit(depth=6, drop_path=0.1, image=12, patch=4, classes=3):
    return models.get("vit", (image, image, 1), classes, depth=depth, dim=16, heads=2,
                      patch_size=patch, drop_path=drop_path)


def _data(n=32, image=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, image, image, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, size=n), 3).astype("float32")
    return x, y


def _order(model):
    return [b.layers[0].rsplit("_", 1)[0] for b in find_blocks(model)]


def _weights(model):
    return {v.path: v.numpy() for v in model.weights}


# -- functional form ------------------------------------------------------------

@pytest.mark.parametrize("new_depth, mode, order", [
    (12, "expansion", ["o0", "e0", "o1", "e1", "o2", "e2", "o3", "e3", "o4", "e4", "o5", "e5"]),
    (9, "expansion", ["o0", "o1", "o2", "o3", "e3", "o4", "e4", "o5", "e5"]),
    (9, "stack", ["o0", "o1", "o2", "o3", "o4", "o5", "e3", "e4", "e5"]),
])
def test_expand_depth_inserts_ema_blocks_in_the_paper_order(new_depth, mode, order):
    model = _vit(6)
    ema = TrainingController.of(model).add_ema("slow", decay=0.9)  # a copy of these weights
    shadows = ema.values()
    randomize_weights(model, seed=1)  # the online model moves away from its EMA
    online = _weights(model)
    new = expand_depth(model, ema, new_depth, mode=mode).model
    names = [("e" if "_ins" in b else "o") + b[5] for b in _order(new)]
    assert names == order
    for block in _order(new):
        source = shadows if "_ins" in block else online
        k = block[:6]  # "blockK"
        np.testing.assert_array_equal(new.get_layer(f"{block}_mlp1").kernel.numpy(),
                                      source[f"{k}_mlp1/kernel"])
    # Patch embedding, tokens, position embedding, final norm and head stay online.
    grown = _weights(new)
    outside = [p for p in online if not p.startswith("block")]
    assert len(outside) >= 6
    for path in outside:
        np.testing.assert_array_equal(grown[path], online[path], err_msg=path)
    rates = [new.get_layer(f"{b}_drop_path1").rate for b in _order(new)]
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, new_depth), atol=1e-12)


def test_ema_decay_half_life_and_the_papers_value():
    for half_life, steps in ((2.0, 50), (0.5, 7), (13.85, 1251)):
        d = ema_decay(half_life, steps)
        assert abs(d ** (half_life * steps) - 0.5) < 1e-9
    # The authors' 0.99996 per step, 1,251 steps per epoch, 300 epochs.
    paper = ema_decay(PAPER_EMA_HALF_LIFE_FRACTION * 300, 1251)
    assert abs(paper - 0.99996) < 1e-12
    assert 0.046 < PAPER_EMA_HALF_LIFE_FRACTION < 0.0462
    assert depth_weight_decay(0.05, 9, 12) == pytest.approx(0.0375)
    with pytest.raises(ValueError, match="half-life must be a positive"):
        ema_decay(0, 10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ema_decay(1.0, 0)


def test_schedules():
    assert [(s.epoch, s.width, s.depth) for s in cnn_schedule(10, 3, 0.25, 0.5).stages] == [
        (0, 0.25, 0.5), (3, 0.625, 0.75), (6, 1.0, 1.0)]
    assert [s.epoch for s in cnn_schedule(10, 3, stage_epochs=[0, 5, 8]).stages] == [0, 5, 8]
    assert [(s.epoch, s.width, s.depth) for s in cnn_schedule(
        9, widths=(0.5, 1.0, 1.0), depth_fractions=(0.5, 0.5, 1.0)).stages] == [
        (0, 0.5, 0.5), (3, 1.0, 0.5), (6, 1.0, 1.0)]
    assert [(s.width, s.depth) for s in cnn_schedule(
        8, num_stages=2, start_width=0.5, depth_fractions=(0.5, 1.0)).stages] == [
        (0.5, 0.5), (1.0, 1.0)]
    assert [(s.epoch, s.width, s.depth) for s in cnn_schedule(
        8, widths=(0.25, 0.5, 1.0), start_depth=0.5).stages] == [
        (0, 0.25, 0.5), (2, 0.5, 0.75), (5, 1.0, 1.0)]
    assert [(s.epoch, s.depth) for s in vit_schedule(9, (6, 9, 12)).stages] == [
        (0, 0.5), (3, 0.75), (6, 1.0)]
    with pytest.raises(ValueError, match="at most 2\\*d"):
        vit_schedule(10, (4, 12))
    with pytest.raises(ValueError, match="full model's 12"):
        vit_schedule(10, (6, 9), full_depth=12)


def test_expand_width_keeps_the_function_and_fan_out_changes_it():
    full = models.resnet_cifar(8, (8, 8, 1), 3, width=0.5)
    randomize_weights(full)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    narrow = expand_width(full, full, 0.5).model  # the shrink to a sub-network
    assert narrow.count_params() < full.count_params()
    grown = expand_width(narrow, full, 1.0, current_width=0.5).model
    assert sorted(tuple(v.shape) for v in grown.weights) == sorted(tuple(v.shape) for v in full.weights)
    np.testing.assert_allclose(grown(x), narrow(x), atol=1e-5)
    moved = expand_width(narrow, full, 1.0, current_width=0.5, fan_out=0.5).model
    assert np.abs(np.asarray(moved(x)) - np.asarray(narrow(x))).max() > 1e-4


# -- the callback in fit --------------------------------------------------------

class _Probe(keras.callbacks.Callback):
    """Per epoch: block order, drop-path rates, EMA vs weights, optimizer state."""

    def __init__(self, cb):
        super().__init__()
        self.cb, self.epochs, self.steps = cb, {}, []

    def _ema(self):
        return TrainingController.of(self.model).ema(self.cb.EMA_NAME).values()

    def on_epoch_begin(self, epoch, logs=None):
        blocks = _order(self.model)
        self.epochs[epoch] = {
            "blocks": blocks,
            "rates": [self.model.get_layer(f"{b}_drop_path2").rate for b in blocks],
            "ema_equals_weights": all(np.array_equal(v, _weights(self.model)[p])
                                      for p, v in self._ema().items()),
            "optimizer": optimizer_state(self.model.optimizer)["levels"][0]["slots"],
            "iterations": int(self.model.optimizer.iterations.numpy()),
            "step": optimizer_step(self.model.optimizer),
            "weight_decay": self.model.optimizer.weight_decay}
        self.steps = [{v.path: v.numpy() for v in self.model.weights}]

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({v.path: v.numpy() for v in self.model.weights})

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch]["end_optimizer"] = optimizer_state(
            self.model.optimizer)["levels"][0]["slots"]
        self.epochs[epoch]["ema"] = self._ema()
        self.epochs[epoch]["steps"] = self.steps


def _fit_vit(reset_optimizer=None, max_drop_path=None, epochs=2):
    x, y = _data()
    model = _vit(4)
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.04), "categorical_crossentropy")
    cb = NetworkExpansion("vit", depths=(2, 4), reset_optimizer=reset_optimizer,
                          max_drop_path=max_drop_path, scale_weight_decay=True, verbose=0)
    probe = _Probe(cb)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False,
              callbacks=[cb, probe])
    return model, cb, probe


def test_vit_expansion_in_fit_ema_drop_path_and_weight_decay():
    model, cb, probe = _fit_vit(max_drop_path=0.2)
    first, second = probe.epochs[0], probe.epochs[1]
    assert first["blocks"] == ["block0", "block1"]
    assert second["blocks"] == ["block0", "block0_ins1", "block1", "block1_ins1"]
    np.testing.assert_allclose(first["rates"], [0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(second["rates"], np.linspace(0, 0.2, 4), atol=1e-12)
    # Decay from the paper's half-life (4.6% of the 2-epoch run, 4 steps per epoch).
    assert cb.ema_decay == pytest.approx(ema_decay(PAPER_EMA_HALF_LIFE_FRACTION * 2, 4))
    assert TrainingController.of(model).ema(cb.EMA_NAME).decay == pytest.approx(cb.ema_decay)
    # The EMA restarts as a copy of the grown model, then follows the recurrence.
    assert first["ema_equals_weights"] and second["ema_equals_weights"]
    d = TrainingController.of(model).ema(cb.EMA_NAME).decay
    for epoch in (first, second):
        steps = epoch["steps"]
        assert len(steps) == 5
        for path, got in epoch["ema"].items():
            want = steps[0][path]
            for w in steps[1:]:
                want = d * want + (1 - d) * w[path]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=path)
        moved = [p for p in epoch["ema"] if "mlp1/kernel" in p]
        assert not np.allclose(epoch["ema"][moved[0]], steps[-1][moved[0]])
    # Weight decay scaled by depth / final depth, the compiled value at full depth.
    assert first["weight_decay"] == pytest.approx(0.02)
    assert second["weight_decay"] == pytest.approx(0.04)
    # The ViT default is the paper's: optimizer moments reset at the expansion.
    assert cb.reset_optimizer
    _check_moments(probe, reset=True)


def test_vit_optimizer_moments_carried_on_request():
    _, _, probe = _fit_vit(reset_optimizer=False)
    _check_moments(probe, reset=False)


def _check_moments(probe, reset):
    before, after = probe.epochs[0]["end_optimizer"], probe.epochs[1]["optimizer"]
    assert probe.epochs[1]["step"] == 4  # the LR schedule continues either way
    # A reset is a new optimizer: its count (Adam's bias correction) starts over.
    assert probe.epochs[1]["iterations"] == (0 if reset else 4)
    kernel = "block1_mlp1/kernel"
    moments = [attr for attr in after if kernel in after[attr]]
    assert moments and all(np.abs(before[a][kernel]).max() > 0 for a in moments)
    for attr in moments:
        for path, value in after[attr].items():
            if reset:
                assert not np.any(value), (attr, path)
            elif "_ins" not in path and path in before[attr]:
                np.testing.assert_array_equal(value, before[attr][path])
    if not reset:
        # The inserted copy of block 1 takes block 1's moments (same plan as the weights).
        for attr in moments:
            np.testing.assert_array_equal(after[attr]["block1_ins1_mlp1/kernel"],
                                          before[attr][kernel])


# Unshuffled numpy data: the resumed run sees the batches the uninterrupted one saw.
@pytest.mark.filterwarnings("ignore:ControllerCheckpoint")
def test_vit_resume_after_an_expansion_equals_the_uninterrupted_run(tmp_path):
    """Killed after the epoch that expanded 2 -> 4 blocks from the EMA (drop path on,
    weight decay scaled by depth), the same calls again end where a run never
    interrupted ends: weights, EMA, events and the stage's weight decay. A real
    SIGKILL of this run: test_kill9_methods.py (slow)."""
    tf.config.experimental.enable_op_determinism()
    try:
        x, y = _data(n=32)

        def run(directory=None, crash=None):
            keras.utils.set_random_seed(3)
            model = _vit(4)
            model.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.05),
                          "categorical_crossentropy")
            cb = NetworkExpansion("vit", depths=(2, 4), scale_weight_decay=True, verbose=0)
            callbacks = [cb]
            if directory is not None:
                callbacks.append(ControllerCheckpoint(directory))
            if crash is not None:
                callbacks.append(CrashAtEpoch(crash))
            return model, cb, callbacks

        def fit(model, callbacks):
            return model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False,
                             callbacks=callbacks)

        reference, want, callbacks = run()
        fit(reference, callbacks)
        directory = str(tmp_path / "ckpt")
        crashed, cb, callbacks = run(directory, crash=1)
        with pytest.raises(RuntimeError, match="simulated kill"):
            fit(crashed, callbacks)
        assert cb.events[-1]["epoch"] == 1  # it expanded before the kill
        resumed, got, callbacks = run(directory)
        assert len(fit(resumed, callbacks).history["loss"]) == 1
        assert len(_order(resumed)) == 4
        assert_weights_match(resumed, reference)
        ema = TrainingController.of(resumed).ema(NetworkExpansion.EMA_NAME).values()
        ref_ema = TrainingController.of(reference).ema(NetworkExpansion.EMA_NAME).values()
        assert sorted(ema) == sorted(ref_ema)
        for path, value in ref_ema.items():
            np.testing.assert_allclose(ema[path], value, atol=1e-6, err_msg=path)
        assert ([(e["epoch"], e["kind"]) for e in got.events]
                == [(e["epoch"], e["kind"]) for e in want.events])
        assert float(resumed.optimizer.weight_decay) == pytest.approx(
            float(reference.optimizer.weight_decay))
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


@pytest.mark.parametrize("schedule", [
    dict(num_stages=2, start_width=0.5, start_depth=0.5),
    # Each dimension at its own time: width first, then depth (the bench's
    # `network_expansion_wd_rescale` shape), with the rescaling on.
    dict(widths=(0.5, 1.0, 1.0), depth_fractions=(0.5, 0.5, 1.0), rescale="sqrt")])
def test_cnn_expansion_in_fit_is_function_preserving_width_and_depth(schedule):
    x, y = _data(image=8)
    model = models.resnet_cifar(14, (8, 8, 1), 3, width=0.5)
    full_shapes = sorted(tuple(v.shape) for v in model.weights)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    cb = NetworkExpansion("cnn", verbose=0, **schedule)
    stages = len(cb.schedule.stages)

    class Diff(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.before, self.diffs, self.params, self.blocks = None, {}, {}, {}

        def on_epoch_begin(self, epoch, logs=None):
            self.params[epoch] = self.model.count_params()
            self.blocks[epoch] = len(find_blocks(self.model))
            if self.before is not None:
                now = self.model(x[:8], training=False).numpy()
                self.diffs[epoch] = float(np.abs(now - self.before).max())

        def on_epoch_end(self, epoch, logs=None):
            self.before = self.model(x[:8], training=False).numpy()

    diff = Diff()
    model.fit(x, y, batch_size=8, epochs=stages, verbose=0, callbacks=[cb, diff])
    assert [e["kind"] for e in cb.events] == ["shrink-to-start"] + ["grow"] * (stages - 1)
    params = [diff.params[e] for e in range(stages)]
    assert params == sorted(set(params)), params
    assert max(diff.diffs.values()) < 1e-5 and len(diff.diffs) == stages - 1, diff.diffs
    # Blocks are missing exactly while the schedule's depth is below 1.
    full_blocks = len(find_blocks(model))
    assert [diff.blocks[e] < full_blocks for e in range(stages)] == [
        cb.schedule.stages[e].depth < 1 for e in range(stages)], diff.blocks
    assert sorted(tuple(v.shape) for v in model.weights) == full_shapes


def test_cnn_parameterization_initializes_fan_in_aware_and_scales_lr_with_width():
    from kgrow.controller.lr_scales import LRScales
    from kgrow.surgery import kernel_layer_roles
    x, y = _data(image=8)
    model = models.resnet_cifar(8, (8, 8, 1), 3, width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    roles = kernel_layer_roles(model)
    first = next(n for n, r in roles.items() if r == "input")
    head = next(n for n, r in roles.items() if r == "output")
    cb = NetworkExpansion("cnn", num_stages=2, start_width=0.5, parameterize=True, verbose=0)
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # after NetworkExpansion re-initialized it
            fan_in = self.model.get_layer(head).kernel.shape[0]
            seen["head_std"] = (float(np.std(self.model.get_layer(head).kernel.numpy())),
                                1.0 / fan_in)

        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = {p: np.unique(a).tolist()
                           for p, a in LRScales.of(cb.controller).get().items()}
            seen[f"paths{epoch}"] = {n: [v.path for v in self.model.get_layer(n).trainable_weights]
                                     for n in (first, head)}

    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb, Probe()])
    assert seen["head_std"][0] == pytest.approx(seen["head_std"][1], rel=0.3)
    assert cb.lr_rule == "sgd"
    # Half width, muP for SGD against the full model: the input layer at
    # fan_out / ref_fan_out, the output layer at ref_fan_in / fan_in, hidden 1.
    assert seen[0] == {**{p: [0.5] for p in seen["paths0"][first]},
                       **{p: [2.0] for p in seen["paths0"][head]}}
    assert seen[1] == {}  # full width: every factor is 1
    assert [e["kind"] for e in cb.events] == ["shrink-to-start", "grow"]


# vit slow: depth growth with an EMA under MirroredStrategy is also in the component
# matrix's mirrored-depth row.
@pytest.mark.parametrize("mode", ["cnn", pytest.param("vit", marks=pytest.mark.slow)])
def test_training_continues_after_expansion_under_mirrored_strategy(mirrored_strategy, mode):
    x, y = _data()
    with mirrored_strategy.scope():
        model = _vit(4) if mode == "vit" else models.resnet_cifar(8, (12, 12, 1), 3, width=0.5)
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    kwargs = {"depths": (2, 4)} if mode == "vit" else {"num_stages": 2}
    cb = NetworkExpansion(mode, verbose=0, **kwargs)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[cb])
    assert [e["epoch"] for e in cb.events] == [0, 1]
    assert np.all(np.isfinite(history.history["loss"]))
    for v in model.trainable_variables:
        assert isinstance(v.value, tf.distribute.DistributedValues), v.path
    if mode == "vit":
        ema = TrainingController.of(model).ema(cb.EMA_NAME)
        assert sorted(ema.values()) == sorted(v.path for v in model.weights
                                              if v.dtype == "float32")
    # The epoch after the expansion trained the grown model.
    assert history.history["loss"][2] != history.history["loss"][1]


def test_vit_bench_methods_set_the_schedule_from_the_model_and_the_optimizer_option():
    from kgrow.bench.registry import MethodContext, get_method
    from kgrow.training import TrainConfig
    context = MethodContext(model_name="vit", model_kwargs=dict(depth=6, dim=16, heads=2,
                                                                patch_size=4),
                            input_shape=(12, 12, 1), num_classes=3,
                            train=TrainConfig(epochs=6), data=None, steps_per_epoch=7)
    got = {}
    for name in ("network_expansion_vit", "network_expansion_vit_carry",
                 "network_expansion_vit3"):
        model, (cb,) = get_method(name)(None, context)
        cb.set_model(model)  # the schedule's depths are final once the model is known
        got[name] = ([(s.epoch, round(s.depth * 6)) for s in cb.schedule.stages],
                     cb.reset_optimizer, cb.steps_per_epoch)
    assert got == {"network_expansion_vit": ([(0, 3), (3, 6)], True, 7),
                   "network_expansion_vit_carry": ([(0, 3), (3, 6)], False, 7),
                   "network_expansion_vit3": ([(0, 2), (2, 4), (4, 6)], False, 7)}


def test_cnn_bench_methods_schedules():
    from kgrow.bench.registry import MethodContext, get_method
    from kgrow.training import TrainConfig
    context = MethodContext(model_name="resnet20", model_kwargs={}, input_shape=(12, 12, 1),
                            num_classes=3, train=TrainConfig(epochs=12), data=None,
                            steps_per_epoch=5)
    got = {}
    init = {}
    for name in ("network_expansion", "network_expansion_w25", "network_expansion_w25_long",
                 "network_expansion_w25_fanout", "network_expansion_w25_rescale",
                 "network_expansion_wd_rescale"):
        _, (cb,) = get_method(name)(None, context)
        got[name] = [(s.epoch, s.width) for s in cb.schedule.stages]
        if name == "network_expansion_wd_rescale":
            got[name] = [(s.epoch, s.width, round(s.depth, 3)) for s in cb.schedule.stages]
        init[name] = (cb.initializer.fan_out, cb.initializer.rescale)
    quarter = [(0, 0.25), (3, 0.5), (6, 0.75), (9, 1.0)]
    assert got == {"network_expansion": [(0, 0.5), (4, 0.75), (8, 1.0)],
                   "network_expansion_w25": quarter,
                   "network_expansion_w25_long": [(0, 0.25), (3, 0.5), (6, 1.0)],
                   "network_expansion_w25_fanout": quarter,
                   "network_expansion_w25_rescale": quarter,
                   "network_expansion_wd_rescale": [(0, 0.5, 0.667), (4, 1.0, 0.667),
                                                    (8, 1.0, 1.0)]}
    assert init == {"network_expansion": (0.0, None), "network_expansion_w25": (0.0, None),
                    "network_expansion_w25_long": (0.0, None),
                    "network_expansion_w25_fanout": (0.1, None),
                    "network_expansion_w25_rescale": (0.0, "sqrt"),
                    "network_expansion_wd_rescale": (0.0, "sqrt")}
    with pytest.raises(ValueError, match="rescale"):
        NetworkExpansion("vit", epochs=4, rescale="sqrt")


def test_recipe_registers_the_cnn_stage_choices(monkeypatch):
    import importlib.util
    import pathlib
    from kgrow.bench.registry import MethodContext, get_method
    from kgrow.training import TrainConfig
    path = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "network_expansion.py"
    spec = importlib.util.spec_from_file_location("ne_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    assert recipe.stage_epochs("half", 12, 3) == [0, 3, 6]
    assert recipe.stage_epochs("late", 12, 3) == [0, 6, 9]
    assert recipe.stage_epochs("half", 12, 1) == [0]
    ran = {}
    monkeypatch.setattr(recipe.bench_cli, "run", lambda args: ran.setdefault("args", args) and 0)
    recipe.main(["--mode", "cnn", "--widths", "0.25", "0.5", "1", "--stages", "equal", "half",
                 "--epochs", "12", "--out", "unused"])
    assert ran["args"].methods == ("baseline,network_expansion_f0_equal,"
                                   "network_expansion_f0_half")
    context = MethodContext(model_name="resnet20", model_kwargs={}, input_shape=(12, 12, 1),
                            num_classes=3, train=TrainConfig(epochs=12), data=None,
                            steps_per_epoch=5)
    got = {}
    for name in ("network_expansion_f0_equal", "network_expansion_f0_half"):
        _, (cb,) = get_method(name)(None, context)
        got[name] = [(s.epoch, s.width) for s in cb.schedule.stages]
    assert got == {"network_expansion_f0_equal": [(0, 0.25), (4, 0.5), (8, 1.0)],
                   "network_expansion_f0_half": [(0, 0.25), (3, 0.5), (6, 1.0)]}


# -- bad settings ---------------------------------------------------------------

def test_bad_settings_fail_before_training():
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="start_width must be a fraction"):
            NetworkExpansion("cnn", start_width=bad)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="half-life must be a positive"):
            NetworkExpansion("vit", ema_half_life_epochs=bad)
    with pytest.raises(ValueError, match="mode must be one of"):
        NetworkExpansion("mlp")
    for bad in ((0.5, 0.25, 1.0), (0.25, 0.5), (0.0, 1.0)):
        with pytest.raises(ValueError, match="widths must increase|each of widths"):
            NetworkExpansion("cnn", widths=bad)
    with pytest.raises(ValueError, match="one first epoch per stage"):
        NetworkExpansion("cnn", widths=(0.5, 1.0), stage_epochs=(0, 2, 4))
    for bad, match in (
            (dict(widths=(0.5, 0.5, 1.0), depth_fractions=(0.5, 0.5, 1.0)),
             "stage\\(s\\) \\[1\\] grow neither"),
            (dict(widths=(0.5, 1.0), depth_fractions=(0.5, 0.75, 1.0)), "one of each per stage"),
            (dict(depth_fractions=(0.5, 0.5, 1.0)), "depth_fractions must increase"),
            (dict(widths=(0.5, 1.0, 1.0), depth_fractions=(0.75, 0.5, 1.0)),
             "depth_fractions must not decrease"),
            (dict(depth_fractions=(0.5, 0.9)), "end at the full model"),
            (dict(start_depth=0.5, depth_fractions=(0.5, 1.0)), "not both")):
        with pytest.raises(ValueError, match=match):
            NetworkExpansion("cnn", **bad)
    with pytest.raises(ValueError, match="a ViT's depth schedule is depths"):
        NetworkExpansion("vit", depth_fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="parameterize must be"):
        NetworkExpansion("cnn", parameterize="lamb")
    with pytest.raises(ValueError, match="width expansion, mode='cnn'"):
        NetworkExpansion("vit", parameterize=True)
    with pytest.raises(ValueError, match="'expansion'"):
        NetworkExpansion("vit", expansion="sideways")

    inp = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(4, 3, name="c")(inp)
    flat = keras.Model(inp, keras.layers.Dense(3, name="d")(keras.layers.Flatten()(h)))
    flat.compile("sgd", "categorical_crossentropy")
    before = _weights(flat)
    x, y = _data(8)
    with pytest.raises(ValueError, match="stages of repeated blocks"):
        flat.fit(x, y, epochs=2, verbose=0, callbacks=[NetworkExpansion("vit", verbose=0)])
    assert int(flat.optimizer.iterations.numpy()) == 0
    assert all(np.array_equal(v.numpy(), before[v.path]) for v in flat.weights)
    with pytest.raises(ValueError, match="no repeated blocks"):
        expand_depth(flat, {}, 4)
    flat.compile(keras.optimizers.RMSprop(), "categorical_crossentropy")
    with pytest.raises(ValueError, match="neither SGD nor an Adam variant"):
        flat.fit(x, y, epochs=2, verbose=0,
                 callbacks=[NetworkExpansion("cnn", num_stages=2, parameterize=True,
                                             verbose=0)])
    assert int(flat.optimizer.iterations.numpy()) == 0
    assert all(np.array_equal(v.numpy(), before[v.path]) for v in flat.weights)

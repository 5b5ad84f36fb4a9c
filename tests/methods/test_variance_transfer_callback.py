"""VarianceTransferGrowth inside fit: exact growths, partitions, LR scales, resume."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import models
from kgrow.controller import ControllerCheckpoint, TrainingController
from kgrow.methods.variance_transfer import VarianceTransferGrowth
from kgrow.schedules import GrowthSchedule, Stage
from testing_helpers import CrashAtEpoch, StepsPerEpoch, assert_weights_match


class _Probe(keras.callbacks.Callback):
    def __init__(self, x):
        super().__init__()
        self.x, self.before, self.diffs = x, None, {}

    def on_epoch_begin(self, epoch, logs=None):
        if self.before is not None:
            self.diffs[epoch] = float(np.abs(self.model(self.x, training=False).numpy()
                                             - self.before).max())

    def on_epoch_end(self, epoch, logs=None):
        self.before = self.model(self.x, training=False).numpy()


def _Crash():
    return CrashAtEpoch(2)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 12, 1)).astype("float32")
    return x, keras.utils.to_categorical(rng.integers(0, 3, size=n), 3).astype("float32")


def _setup(callbacks=(), directory=None):
    keras.utils.set_random_seed(5)
    model = models.resnet_cifar(8, (12, 12, 1), 3, width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    schedule = GrowthSchedule([Stage(0, width=0.25), Stage(1, width=0.5), Stage(2, width=0.75),
                               Stage(3, width=1.0)])
    grow = VarianceTransferGrowth(schedule, verbose=0)
    cbs = [grow, *callbacks]
    if directory is not None:
        cbs.append(ControllerCheckpoint(directory))
    return model, grow, cbs


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_three_growths_in_fit_are_exact_and_rebalance_learning_rates():
    x, y = _data()
    model, grow, cbs = _setup()
    probe = _Probe(x[:16])
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[*cbs, probe], shuffle=False)
    assert [e["stage"] for e in grow.events] == [0, 1, 2, 3]
    assert max(probe.diffs.values()) <= 1e-5, probe.diffs
    kernel = grow.partitions["stage1_block0_conv1/kernel"]
    assert sorted(np.unique(kernel).tolist()) == [0, 1, 2, 3]
    assert kernel.shape == tuple(model.get_layer("stage1_block0_conv1").kernel.shape)
    scales = grow.learning_rate_scales()
    s = scales["stage1_block0_conv1/kernel"]
    assert s[kernel == 0].min() == s[kernel == 0].max() == 1.0  # full width: muP factor 1
    assert len(np.unique(s[kernel == 3])) == 1 and s[kernel == 3][0] != 1.0
    assert grow.lr_route == "per_entry"


def test_resume_across_a_growth_equals_uninterrupted_run(tmp_path):
    tf.config.experimental.enable_op_determinism()
    try:
        x, y = _data()
        ref, ref_grow, cbs = _setup()
        ref.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=cbs, shuffle=False)
        directory = str(tmp_path / "ckpt")
        crashed, _, cbs = _setup([_Crash()], directory)
        with pytest.raises(RuntimeError, match="simulated kill"):
            crashed.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=cbs, shuffle=False)
        resumed, grow, cbs = _setup([], directory)
        resumed.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=cbs, shuffle=False)
        for p, a in ref_grow.partitions.items():
            np.testing.assert_array_equal(grow.partitions[p], a)
        assert_weights_match(resumed, ref)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


def test_lr_scales_adapter_sets_the_per_entry_scales():
    from kgrow.controller import LRScales
    from kgrow.methods.variance_transfer import functional
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(3, name="d")(inp))
    model.compile("sgd", "mse")
    ctrl = TrainingController.of(model)
    scales = {"d/kernel": np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])}
    assert functional.apply_lr_scales(ctrl, scales) == "per_entry"
    np.testing.assert_array_equal(LRScales.of(ctrl).get()["d/kernel"], scales["d/kernel"])
    functional.apply_lr_scales(ctrl, {})  # replaces, not adds
    assert LRScales.of(ctrl).get() == {}


def test_odd_growth_raises_before_training_unless_allowed():
    inp = keras.Input((4,))
    h = keras.layers.Dense(10, activation="relu", name="h")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h))
    model.compile("sgd", "mse")
    schedule = GrowthSchedule([Stage(0, width=0.3), Stage(1, width=1.0)])  # 3 -> 10: +7
    x, y = np.ones((4, 4), "float32"), np.zeros((4, 2), "float32")
    with pytest.raises(ValueError, match="odd number of channels"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[VarianceTransferGrowth(schedule)])
    assert model.get_layer("h").units == 10  # nothing trained or grown
    with pytest.raises(ValueError, match="optimizer_rule"):
        VarianceTransferGrowth(schedule, optimizer_rule="lamb")
    with pytest.raises(ValueError, match="rescale"):
        VarianceTransferGrowth(schedule, rescale="cube")


def test_bench_methods_are_registered_lazily():
    from kgrow.bench import registry
    from kgrow.methods.variance_transfer.bench import ABLATION, METHODS
    assert set(ABLATION) < set(METHODS)  # + variance_transfer_batch
    assert set(METHODS) <= set(registry.available_methods())
    for name in METHODS:
        assert callable(registry.get_method(name))


def _elastic_run(batch_sizes, elastic=True, epochs=3, **kwargs):
    import kgrow
    from kgrow.training import WarmupCosine
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 12, 12, 1)).astype("float32"), rng.integers(0, 3, 64)
    bundle = kgrow.data.from_arrays((x, y), None, num_classes=3, batch_size=8,
                                    elastic_batch=elastic)
    model = models.resnet_cifar(8, (12, 12, 1), 3, width=0.5)
    schedule = WarmupCosine(0.05, total_steps=epochs * 8, steps_per_epoch=8)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9), "categorical_crossentropy")
    grow = VarianceTransferGrowth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]),
                                  batch_sizes=batch_sizes, verbose=0, **kwargs)
    steps = StepsPerEpoch()
    model.fit(bundle.train, epochs=epochs, verbose=0, callbacks=[grow, steps])
    return bundle, model, grow, steps


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_batch_size_adaptation_follows_the_stages_inside_one_fit():
    bundle, model, grow, steps = _elastic_run([8, 16])
    assert steps.per_epoch == [8, 4, 4]  # 64 samples at 8, then at 16
    assert bundle.selection.current_batch_size() == 16
    assert grow.batch_lr_factor() == 2.0  # linear rule for SGD, over the bundle's 8
    with_batch = grow.learning_rate_scales()
    grow.batch_sizes = None
    plain = grow.learning_rate_scales()
    assert set(with_batch) == set(plain)
    for p in plain:
        np.testing.assert_allclose(with_batch[p], 2.0 * plain[p], rtol=1e-6)
    # The schedule followed the epochs: it ended at its end, not halfway.
    assert int(model.optimizer.iterations) == 16
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-7)
    two = GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)])
    assert VarianceTransferGrowth(two, batch_sizes=[8, 16],
                                  optimizer_rule="adam").batch_lr_rule == "sqrt"


@pytest.mark.parametrize("batch_sizes, elastic, message", [
    ([8, 16], False, "elastic_batch=True"),
    ([8, 24], True, "does not divide the 64 training samples"),
    ([8], True, "one batch size per stage"),
    ([8, 0], True, "positive ints"),
    ([1, 16], True, "odd and the model has strided 1x1"),  # would abort in oneDNN
])
def test_batch_size_adaptation_refuses_bad_settings_before_training(batch_sizes, elastic,
                                                                     message):
    with pytest.raises(ValueError, match=message):
        _elastic_run(batch_sizes, elastic=elastic)
    with pytest.raises(ValueError, match="batch_lr_rule"):
        VarianceTransferGrowth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]),
                               batch_lr_rule="cube")

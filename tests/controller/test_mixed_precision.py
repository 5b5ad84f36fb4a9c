"""kgrow under Keras mixed-precision policies (`mixed_bfloat16`, `mixed_float16`).

Growth, masks, freezing, EMA, LR scales and checkpoints with float32 master
weights and bfloat16/float16 computation, on the CPU. `mixed_float16` runs on
TensorFlow's CPU kernels too (slowly), which lets these tests cover Keras'
`LossScaleOptimizer` (compile wraps the optimizer in one under that policy).

Function preservation at a growth step is checked within one unit in the last
place of the compute dtype at 1.0 (bfloat16: 2**-7, float16: 2**-10) on the
softmax outputs: the grown network computes the same function in exact
arithmetic, but its convolutions sum over more (zero) channels, which a
low-precision kernel may round differently. Everything kgrow itself computes
(weights, optimizer slots, EMA shadows, masks) stays float32.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import flops, models
from kgrow.callbacks import Growth, NetworkExpansion
from kgrow.controller import ControllerCheckpoint, TrainingController
from kgrow.controller.masks import Masks
from kgrow.controller.optimizer import optimizer_state, optimizer_step
from kgrow.controller.shared_traces import SharedLayerTraces
from kgrow.methods.progressive_freezing import ProgressiveFreezing
from kgrow.methods.variance_transfer import VarianceTransferGrowth
from kgrow.schedules import GrowthSchedule, Stage

from testing_helpers import assert_weights_match

POLICIES = ["mixed_bfloat16", "mixed_float16"]
ULP = {"mixed_bfloat16": 2.0 ** -7, "mixed_float16": 2.0 ** -10}


@pytest.fixture(params=POLICIES)
def policy(request):
    """Sets the global dtype policy for the test, always back to float32 after."""
    keras.config.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.config.set_dtype_policy("float32")


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 12, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, size=n), 3).astype("float32")
    return x, y


def _resnet(depth):
    return models.resnet_cifar(depth, (12, 12, 1), 3, width=0.5)


def _vit():
    return models.get("vit", (12, 12, 1), 3, depth=4, dim=16, heads=2, patch_size=4,
                      drop_path=0.1)


def _optimizer(policy, inner):
    """Under mixed_float16 a LossScaleOptimizer whose scale moves within a few
    steps (doubles every 2 finite steps, halves on overflow), so that carrying
    it is observable; under bfloat16 the plain optimizer (no loss scaling)."""
    if policy == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(inner, dynamic_growth_steps=2)
    return inner


def _scale_state(model):
    """`{name: value}` of the LossScaleOptimizer's own variables ({} without one)."""
    opt = model.optimizer
    if not isinstance(opt, keras.optimizers.LossScaleOptimizer) or not opt.built:
        return {}
    return {"scale": float(opt.dynamic_scale.numpy()),
            "counter": int(opt.step_counter.numpy()),
            "step": optimizer_step(opt)}


def _policies(model):
    # An InputLayer computes nothing; its tensor's dtype is checked by the layers.
    return {layer.name: layer.dtype_policy.name for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)}


def _check_dtypes(model, policy):
    """Every layer computes in the policy (the float32 softmax head excepted),
    and every variable is float32."""
    pols = _policies(model)
    assert pols.pop("predictions") == "float32"
    assert set(pols.values()) == {policy}, {n: p for n, p in pols.items() if p != policy}
    assert {v.dtype for v in model.weights} == {"float32"}


class _Probe(keras.callbacks.Callback):
    """Predictions, loss-scale state and weights around every epoch boundary
    (placed after the kgrow callbacks: its epoch begin sees the grown model)."""

    def __init__(self, x):
        super().__init__()
        self.x = x
        self.before = self.after = None
        self.diffs, self.scale_end, self.scale_begin, self.weights, self.models = \
            {}, {}, {}, {}, {}

    def _predict(self):
        return keras.ops.convert_to_numpy(self.model(self.x, training=False)).astype("float64")

    def on_epoch_begin(self, epoch, logs=None):
        self.scale_begin[epoch] = _scale_state(self.model)
        self.models[epoch] = (int(self.model.count_params()), _policies(self.model))
        if self.before is not None:
            self.diffs[epoch] = float(np.abs(self._predict() - self.before).max())

    def on_epoch_end(self, epoch, logs=None):
        self.before = self._predict()
        self.scale_end[epoch] = _scale_state(self.model)
        self.weights[epoch] = {v.path: v.numpy() for v in self.model.weights}


def test_resnet_width_depth_growth_masks_and_freezing_in_one_fit(policy):
    x, y = _data()
    model = _resnet(14)
    # The surgery must follow the model's layers, not whatever global policy
    # is in force when a growth step happens.
    keras.config.set_dtype_policy("float32")
    model.compile(_optimizer(policy, keras.optimizers.SGD(0.05, momentum=0.9)),
                  "categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    controller = TrainingController.of(model)
    kernel = model.get_layer("stage1_block0_conv1").kernel
    # Zero the top row of every 3x3 filter: whichever channels the shrink
    # to the first stage keeps, they keep masked entries.
    mask = np.ones(kernel.shape)
    mask[0] = 0
    masks = Masks.of(controller)
    masks.set({kernel.path: mask})
    grow = Growth(GrowthSchedule([Stage(0, width=0.5, depth=0.5), Stage(1, width=1.0, depth=1.0)],
                                 total_epochs=4),
                  initializer="zeros", depth_source="identity", verbose=0)
    # Freezing starts once the grown layers trained an epoch at their full size.
    freeze = ProgressiveFreezing(0.05, epochs=4, interval=1, start=2)
    probe = _Probe(x[:16])
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False,
              callbacks=[grow, freeze, probe])

    # Shrunk, then grown back: the inserted blocks and the widened layers
    # compute in the policy, every variable stays float32.
    (small, small_pols), (full, full_pols) = probe.models[0], probe.models[1]
    assert small < full == model.count_params()
    assert len(full_pols) > len(small_pols)
    _check_dtypes(model, policy)
    # Function preserved by the growth at epoch 1 within one ulp of the
    # compute dtype (module docstring); the freeze at epoch 2 (BatchNorm in
    # inference mode, as the probe predicts): exactly equal.
    assert probe.diffs[1] <= ULP[policy], probe.diffs
    assert probe.diffs[2] == 0.0
    # The loss scale and its step counter cross the growth unchanged and had moved.
    if policy == "mixed_float16":
        assert probe.scale_begin[1] == probe.scale_end[0]
        assert probe.scale_end[0]["step"] == 4
        scales = {s["scale"] for s in probe.scale_end.values()}
        assert scales != {2.0 ** 15}, scales
    # Masked entries exactly zero in the float32 master weights.
    # (The shrink to the first stage dropped channels, which came back as new,
    # unmasked entries.)
    kept = masks.get()[kernel.path]
    assert 0 < kept.mean() < 1
    assert np.all(model.get_layer("stage1_block0_conv1").kernel.numpy()[~kept] == 0.0)
    # The first freezing block stopped at epoch 2, bit for bit, and stays frozen.
    first = freeze.plan.groups[0]
    assert set(first) <= set(controller.frozen)
    paths = [p for p in probe.weights[1] if p.split("/")[0] in first]
    assert paths
    for p in paths:
        np.testing.assert_array_equal(probe.weights[3][p], probe.weights[1][p], p)


# bfloat16 slow: its float32 EMA and dtypes are also checked by the ResNet and resume
# tests above; float16 adds the loss scale, which only it has.
@pytest.mark.parametrize("policy", [pytest.param("mixed_bfloat16", marks=pytest.mark.slow),
                                    "mixed_float16"], indirect=True)
def test_vit_network_expansion_keeps_float32_ema_and_the_loss_scale(policy):
    x, y = _data(32)
    model = _vit()
    model.compile(_optimizer(policy, keras.optimizers.AdamW(1e-3, weight_decay=0.04)),
                  "categorical_crossentropy")
    # The paper's mode resets the optimizer moments at each expansion.
    cb = NetworkExpansion("vit", depths=(2, 4), verbose=0)
    probe = _Probe(x[:8])
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[cb, probe])
    assert probe.models[1][0] > probe.models[0][0]
    _check_dtypes(model, policy)
    ema = TrainingController.of(model).ema(cb.EMA_NAME)
    shadows = ema.values()
    assert {str(v.dtype) for v in shadows.values()} == {"float32"}
    # The shadows average (they are not a copy of the online weights), and are finite.
    kernel = shadows["block0_mlp1/kernel"]
    assert np.isfinite(kernel).all()
    assert not np.array_equal(kernel, model.get_layer("block0_mlp1").kernel.numpy())
    if policy == "mixed_float16":
        # Moments reset, the loss-scale state kept (calibration, not a moment).
        assert probe.scale_begin[1] == probe.scale_end[0]
        assert (probe.scale_end[0]["scale"], probe.scale_end[0]["counter"]) != (2.0 ** 15, 0)


def test_variance_transfer_lr_scales_under_mixed_policy(policy):
    x, y = _data()
    model = _resnet(8)
    model.compile(_optimizer(policy, keras.optimizers.SGD(0.05, momentum=0.9)),
                  "categorical_crossentropy")
    grow = VarianceTransferGrowth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]),
                                  verbose=0)
    probe = _Probe(x[:16])
    with np.errstate(all="ignore"):
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False,
                  callbacks=[grow, probe])
    _check_dtypes(model, policy)
    assert [e["stage"] for e in grow.events] == [0, 1]
    assert probe.diffs[1] <= ULP[policy], probe.diffs
    if policy == "mixed_float16":
        assert probe.scale_begin[1] == probe.scale_end[0]
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill")


def _resume_run(policy, directory=None, crash=False):
    keras.utils.set_random_seed(3)
    model = _resnet(8)
    model.compile(_optimizer(policy, keras.optimizers.SGD(0.05, momentum=0.9)),
                  "categorical_crossentropy")
    kernel = model.get_layer("stage1_block0_conv1").kernel
    Masks.of(TrainingController.of(model)).set(
        {kernel.path: (np.arange(np.prod(kernel.shape)) % 3 > 0).reshape(kernel.shape)})
    callbacks = [Growth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]),
                        initializer="orthogonal", verbose=0)]
    if directory is not None:
        callbacks.append(ControllerCheckpoint(directory))
    if crash:
        callbacks.append(_Crash())
    return model, callbacks


# Unshuffled numpy data: the resumed run sees the batches the uninterrupted one saw.
# bfloat16 slow: float16's resume also restores the loss-scale state, bfloat16 has none.
@pytest.mark.filterwarnings("ignore:ControllerCheckpoint")
@pytest.mark.parametrize("policy", [pytest.param("mixed_bfloat16", marks=pytest.mark.slow),
                                    "mixed_float16"], indirect=True)
def test_checkpoint_resume_equals_uninterrupted_run(policy, tmp_path):
    tf.config.experimental.enable_op_determinism()
    try:
        x, y = _data(48)
        reference, cbs = _resume_run(policy)
        reference.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=cbs)

        directory = str(tmp_path / "ckpt")
        crashed, cbs = _resume_run(policy, directory, crash=True)
        with pytest.raises(RuntimeError, match="simulated kill"):
            crashed.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=cbs)
        resumed, cbs = _resume_run(policy, directory)
        keras.config.set_dtype_policy("float32")  # the checkpoint carries the layers' policies
        history = resumed.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
                              callbacks=cbs)
        assert len(history.history["loss"]) == 1  # epochs 0 and 1 came from the checkpoint
        assert type(resumed.optimizer) is type(reference.optimizer)
        assert _scale_state(resumed) == _scale_state(reference)
        if policy == "mixed_float16":
            assert _scale_state(reference)["scale"] != 2.0 ** 15
        _check_dtypes(resumed, policy)
        assert_weights_match(resumed, reference, tol=1e-6)
        got, want = optimizer_state(resumed.optimizer), optimizer_state(reference.optimizer)
        momentum = got["levels"][-1]["slots"]["momentums"]
        assert momentum and momentum.keys() == want["levels"][-1]["slots"]["momentums"].keys()
        for path, value in momentum.items():
            np.testing.assert_allclose(value, want["levels"][-1]["slots"]["momentums"][path],
                                       atol=1e-6, err_msg=path)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


def test_controller_step_matches_keras_step_and_flops_ignore_the_policy(policy):
    x, y = _data(32)
    counts = {}
    for name in ("keras", "kgrow"):
        keras.utils.set_random_seed(11)
        model = _resnet(8)
        model.compile(_optimizer(policy, keras.optimizers.SGD(0.05, momentum=0.9)),
                      "categorical_crossentropy")
        if name == "kgrow":
            controller = TrainingController.of(model)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        counts[name] = model
    # The controller's step (loss scaling included) is Keras' step.
    assert_weights_match(counts["kgrow"], counts["keras"], tol=1e-6)
    assert _scale_state(counts["kgrow"]) == _scale_state(counts["keras"])
    # Shared BatchNorm traces are a float32-only optimisation: off here.
    assert SharedLayerTraces(counts["kgrow"]).layers == []
    assert controller.model.train_function.shared_traces.calls == 0
    # FLOPs count the architecture, not the dtype.
    mixed = flops.count(counts["kgrow"])
    keras.config.set_dtype_policy("float32")
    plain = flops.count(_resnet(8))
    assert (mixed.forward, mixed.training) == (plain.forward, plain.training)


def test_ema_of_a_pure_bfloat16_model_tracks_every_weight_in_float32():
    # Not a mixed policy: the weights themselves are bfloat16 (numpy does not
    # call bfloat16 a float kind; the EMA must still track it).
    keras.config.set_dtype_policy("bfloat16")
    try:
        inp = keras.Input((4,))
        out = keras.layers.Dense(3, name="out")(keras.layers.Dense(8, name="hidden")(inp))
        model = keras.Model(inp, out)
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    ema = TrainingController.of(model).add_ema("slow", decay=0.999)
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 4)), rng.normal(size=(32, 3)), batch_size=8, epochs=2,
              verbose=0)
    shadows = ema.values()
    assert sorted(shadows) == sorted(v.path for v in model.weights)
    assert {str(v.dtype) for v in shadows.values()} == {"float32"}
    # Steps of (1 - 0.999) times a weight change stay below bfloat16's resolution
    # but move the float32 shadow.
    kernel = shadows["hidden/kernel"]
    start = keras.ops.convert_to_numpy(keras.ops.cast(kernel, "bfloat16")).astype("float32")
    assert np.any(start != kernel)


def test_loss_scale_and_growth_under_mirrored_strategy(mirrored_strategy):
    x, y = _data(32)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        with mirrored_strategy.scope():
            model = _resnet(8)
            model.compile(_optimizer("mixed_float16", keras.optimizers.SGD(0.05, momentum=0.9)),
                          "categorical_crossentropy")
        TrainingController.of(model).add_ema("slow", decay=0.9)
        grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]),
                      initializer="orthogonal", verbose=0)
        probe = _Probe(x[:8])
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[grow, probe])
    finally:
        keras.config.set_dtype_policy("float32")
    _check_dtypes(model, "mixed_float16")
    assert probe.scale_begin[1] == probe.scale_end[0]
    assert probe.scale_end[1]["scale"] != 2.0 ** 15
    # Every replica holds the same loss scale and weights.
    for v in [model.optimizer.dynamic_scale, *model.trainable_variables[:3]]:
        copies = [t.numpy() for t in v.value.values]
        assert len(copies) == 2 and all(np.array_equal(c, copies[0]) for c in copies), v.path

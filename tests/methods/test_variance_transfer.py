"""Variance-transfer growth (paper 001): parameterization, exact paired growth,
partitions across growths and the LR factors against hand computations."""
import keras
import numpy as np
import pytest

from kgrow import models
from kgrow.methods.variance_transfer import (PairedVarianceTransfer, carry_partitions,
                                             check_batch_schedule, fan_in_initialize,
                                             fan_in_lr_factors, initial_partitions,
                                             kernel_layer_roles, layer_fans,
                                             partition_lr_scales)
from kgrow.surgery import channel_groups, scale_width


def _mlp(width=32):
    inp = keras.Input((32,))
    h = inp
    for i in range(3):
        h = keras.layers.Dense(width, activation="relu", name=f"h{i}")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(h))


def _cnn():
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c0")(inp)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(h))


def _resnet():
    return models.resnet_cifar(8, (12, 12, 3), 10, width=0.5, classifier_activation=None)


def _trained_like(model, seed=0):
    """Fan-in init plus BatchNorm statistics/gammas away from their defaults."""
    fan_in_initialize(model, seed=seed)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "moving_variance" in v.path or "gamma" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape))
        elif "moving_mean" in v.path or "beta" in v.path:
            v.assign(rng.normal(0, 0.2, v.shape))


@pytest.mark.parametrize("build,shape", [(_mlp, (64, 32)), (_cnn, (16, 12, 12, 3)),
                                         (_resnet, (16, 12, 12, 3))], ids=["mlp", "cnn", "resnet"])
def test_paired_growth_is_exact_in_every_group(build, shape):
    model = build()
    _trained_like(model)
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    result = scale_width(model, 2.0, initializer=PairedVarianceTransfer(), require_exact=True)
    assert all(g["added"] > 0 for g in result.info["groups"])
    diff = np.abs(result.model(x, training=False) - model(x, training=False)).max()
    assert diff <= 1e-5, diff
    # Training-mode BatchNorm (batch statistics) is scale invariant, so exact too.
    diff = np.abs(result.model(x, training=True) - model(x, training=True)).max()
    assert diff <= 1e-4, diff


def test_sqrt_rescale_applies_only_where_a_batchnorm_undoes_it():
    model = _resnet()
    _trained_like(model)
    groups = channel_groups(model)
    result = scale_width(model, 2.0, initializer=PairedVarianceTransfer("sqrt"))
    new = {v.path: v.numpy() for v in result.model.weights}
    checked = {True: 0, False: 0}
    for g in groups.values():
        if not g.resizable or g.role != "channels":
            continue
        for b in g.consumers:
            if b.kind != "kernel":
                continue
            old = b.variable.numpy()
            n = old.shape[b.axis]
            kept = np.take(new[b.path], np.arange(n), axis=b.axis)
            kept = kept[tuple(slice(0, s) for s in old.shape)]
            s = np.sqrt(n / (2 * n)) if g.bn_compensable else 1.0
            # Only this group's axis may have been rescaled; the other axis keeps its
            # old entries unless it is a compensable group itself.
            ratio = np.sum(kept * old) / np.sum(old * old)
            other = [gg for gg in groups.values() if gg.bn_compensable and gg is not g and any(
                c.path == b.path for c in gg.consumers)]
            if not other:
                assert ratio == pytest.approx(s, rel=1e-5), (g.name, b.path)
                checked[bool(g.bn_compensable)] += 1
    assert checked[True] > 0 and checked[False] > 0


@pytest.mark.parametrize("build,shape,layer", [(_mlp, (512, 32), "h0"),
                                               (_cnn, (64, 12, 12, 3), "c0")],
                         ids=["mlp", "cnn"])
def test_new_units_carry_the_old_units_activation_variance(build, shape, layer):
    model = build()
    fan_in_initialize(model)
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    result = scale_width(model, 2.0, initializer=PairedVarianceTransfer())

    def unit_variance(m):
        out = keras.Model(m.inputs, m.get_layer(layer).output)(x).numpy()
        return float(np.var(out.reshape(-1, out.shape[-1]), axis=0).mean())

    before, after = unit_variance(model), unit_variance(result.model)
    assert abs(after / before - 1) <= 0.10, after / before
    # The engine's paired initializer (init-rule scales) does not: new units are tiny.
    from kgrow.growth import VarianceTransfer
    plain = scale_width(model, 2.0, initializer=VarianceTransfer())
    assert unit_variance(plain.model) / before < 0.75


def test_fan_in_initialization_and_roles():
    model = _cnn()
    assert kernel_layer_roles(model) == {"c0": "input", "c1": "hidden", "out": "output"}
    stds = fan_in_initialize(model, seed=3)
    assert stds["c1"] == pytest.approx(1 / np.sqrt(3 * 3 * 16))
    assert stds["out"] == pytest.approx(1 / 16)
    assert np.std(model.get_layer("c1").kernel.numpy()) == pytest.approx(stds["c1"], rel=0.05)
    assert np.std(model.get_layer("out").kernel.numpy()) == pytest.approx(1 / 16, rel=0.2)
    assert not np.any(model.get_layer("c1").bias.numpy())
    dw = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.DepthwiseConv2D(3, name="dw"),
                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="o")])
    assert layer_fans(dw)["dw"] == (9, 4)
    assert fan_in_initialize(dw)["dw"] == pytest.approx(1 / 3)
    emb = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(5, 4),
                            keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="strict=False"):
        fan_in_initialize(emb)


def test_lr_factors_follow_mup_relative_to_the_reference():
    full, small = _mlp(32), _mlp(8)
    ref = layer_fans(full)
    assert fan_in_lr_factors(small, ref, optimizer="sgd") == {
        "h0": 8 / 32, "h1": 1.0, "h2": 1.0, "out": 32 / 8}
    assert fan_in_lr_factors(small, ref, optimizer="adam") == {
        "h0": 1.0, "h1": 4.0, "h2": 4.0, "out": 4.0}
    assert set(fan_in_lr_factors(full, ref).values()) == {1.0}
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fan_in_lr_factors(small, ref, optimizer="lamb")


def _tiny(width):
    inp = keras.Input((3,))
    h = keras.layers.Dense(width, activation="relu", name="h")(inp)
    return keras.Model(inp, keras.layers.Dense(2, name="out")(h))


def test_partitions_across_three_growths_and_hand_computed_factors():
    model = _tiny(4)
    shapes = {v.path: tuple(v.shape) for v in model.trainable_weights}
    parts = initial_partitions(shapes)
    for stage, size in enumerate((6, 8, 11), start=1):
        result = scale_width(model, {"h": size}, initializer=PairedVarianceTransfer(),
                             require_exact=True)
        model = result.model
        parts = carry_partitions(parts, result.plan,
                                 {v.path: tuple(v.shape) for v in model.trainable_weights}, stage)
    labels = np.array([0] * 4 + [1] * 2 + [2] * 2 + [3] * 3)
    assert parts["h/kernel"].tolist() == [labels.tolist()] * 3
    assert parts["h/bias"].tolist() == labels.tolist()
    assert parts["out/kernel"].tolist() == [[int(v)] * 2 for v in labels]
    assert parts["out/bias"].tolist() == [0, 0]

    # Hand computation: out/kernel rows r have value r + 1, so
    # ||W_0|| = sqrt(2 * (1 + 4 + 9 + 16)) = sqrt(60), ||W_d1|| = sqrt(2 * (25 + 36)).
    w = {p: np.zeros(np.shape(a)) for p, a in parts.items()}
    w["out/kernel"] = np.repeat(np.arange(1.0, 12.0)[:, None], 2, axis=1)
    w["h/kernel"] = np.ones((3, 11))
    scales = partition_lr_scales(parts, w)
    out = scales["out/kernel"][:, 0]
    n0 = np.sqrt(60.0)
    expected = [1.0] * 4 + [np.sqrt(2 * (25 + 36)) / n0] * 2 + \
        [np.sqrt(2 * (49 + 64)) / n0] * 2 + [np.sqrt(2 * (81 + 100 + 121)) / n0] * 3
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # h/kernel is all ones: ||W_dt|| / ||W_0|| = sqrt(3 * columns_t / (3 * 4)).
    np.testing.assert_allclose(scales["h/kernel"][0],
                               [1] * 4 + [np.sqrt(0.5)] * 4 + [np.sqrt(0.75)] * 3, rtol=1e-6)
    assert np.all(scales["h/bias"] == 1.0)  # vectors are not rebalanced
    # Global scope: one norm per stage over both kernels.
    g = partition_lr_scales(parts, w, scope="global", base={"out/kernel": 0.5})
    g0 = np.sqrt(60.0 + 12.0)
    np.testing.assert_allclose(g["h/kernel"][0, 4], np.sqrt(2 * 61 + 6) / g0, rtol=1e-6)
    np.testing.assert_allclose(g["out/kernel"][9, 1], 0.5 * np.sqrt(2 * 302 + 9) / g0, rtol=1e-6)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="rescale"):
        PairedVarianceTransfer(rescale="cubic")
    model = _mlp()
    with pytest.raises(ValueError, match="no longer cancel"):
        scale_width(model, 2.0, initializer=PairedVarianceTransfer(noise=0.1),
                    require_exact=True)
    with pytest.raises(ValueError, match="does not divide"):
        check_batch_schedule([64, 96], 1024, 64)
    with pytest.raises(ValueError, match="scope"):
        partition_lr_scales({}, {}, scope="layer")

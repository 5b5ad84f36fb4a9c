"""scale_width: exact shrink -> widen round trips, transfer plans, importance, errors."""
import keras
import numpy as np
import pytest

from kgrow.growth import Net2Net
from kgrow.surgery.channels import channel_groups
from kgrow.surgery.transfer import NEW
from kgrow.surgery.width import resolve_sizes, scale_width

from testing_helpers import randomize_weights as _randomize  # noqa: E402

L = keras.layers




def _calibrate(model, x):
    """Sets BatchNorm moving statistics from the batch `x`, so that a randomly
    initialised deep net has activations of order 1 in inference.

    The variance gets the layer's mean variance added: with the raw batch
    variance, nearly dead channels get gains of 1/sqrt(eps) and the net
    becomes so ill-conditioned that a 1e-7 relative change of the input moves
    the output by 1e-3, which would drown the 1e-5 exactness check.
    """
    bns = [l for l in model._flatten_layers() if isinstance(l, L.BatchNormalization)]
    momenta = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    model(x, training=True)
    for l, m in zip(bns, momenta):
        l.momentum = m
        var = l.moving_variance.numpy()
        l.moving_variance.assign(var + var.mean())


def _shape_table(model):
    """{(layer name, weight index): shape}; nested models (inlined by the rebuild,
    which changes their variable paths) are descended into."""
    table = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            table.update(_shape_table(layer))
            continue
        for i, v in enumerate(layer.weights):
            table[(layer.name, i)] = tuple(v.shape)
    return table


def _round_trip(model, x, initializer, x_range=1.0):
    """Shrink to 0.5x, then widen back to the original sizes; returns (half, wide)."""
    groups = channel_groups(model)
    half = scale_width(model, 0.5)
    assert not half.info["exact"]
    _calibrate(half.model, x)
    sizes = {g.name: g.size for g in groups.resizable()}
    wide = scale_width(half.model, sizes, initializer=initializer, require_exact=True)
    assert _shape_table(wide.model) == _shape_table(model)
    assert set(wide.plan) == {v.path for v in wide.model.weights}
    assert {t.source for t in wide.plan.values()} <= {v.path for v in half.model.weights}
    before = np.asarray(half.model(x, training=False))
    after = np.asarray(wide.model(x, training=False))
    assert np.abs(before).max() > 0.05  # a real signal, not vanished activations
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    return half, wide


APPLICATIONS = [
    ("ResNet50V2", "orthogonal"),
    ("MobileNetV2", "variance_transfer"),
    ("DenseNet121", "zeros"),
    ("EfficientNetB0", "net2net"),
    ("ConvNeXtTiny", "net2net"),  # LayerNorm everywhere: only copies are exact
]


@pytest.mark.parametrize("name, initializer", APPLICATIONS)
def test_keras_applications_half_then_full_is_exact(name, initializer):
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10,
                                              classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    half, wide = _round_trip(model, x, initializer)
    assert all(e["initializer"] == initializer for e in wide.info["groups"])
    assert half.model.count_params() < 0.5 * model.count_params()


@pytest.mark.parametrize("name, kwargs, initializer", [
    ("resnet20", {}, "zeros"),
    ("resnet50", {"width": 0.25}, "orthogonal"),
    ("vit", {"depth": 2, "dim": 32, "heads": 2, "patch_size": 8, "mlp_ratio": 2.0}, "net2net"),
])
def test_kgrow_zoo_half_then_full_is_exact(name, kwargs, initializer):
    from kgrow import models
    model = models.get(name, (32, 32, 3), 10, classifier_activation=None, **kwargs)
    if name == "vit":
        _randomize(model, std=0.2)  # the 0.02 init makes outputs ~1e-2
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    half, wide = _round_trip(model, x, initializer)
    if name == "vit":
        assert half.model.get_layer("block0_attn").num_heads == 1
        assert half.model.get_layer("patch_tokens").target_shape == (-1, 16)


def test_vit_zeros_growth_is_reported_inexact_and_require_exact_raises():
    from kgrow import models
    model = models.get("vit", (16, 16, 3), 4, depth=1, dim=8, heads=2, patch_size=8)
    r = scale_width(model, 2.0, initializer="zeros")
    res = next(e for e in r.info["groups"] if e["name"] == "residual:patch_embed")
    assert not res["exact"] and "layer_norm" in res["reason"]
    with pytest.raises(ValueError, match="residual:patch_embed: the group is normalized"):
        scale_width(model, 2.0, initializer="zeros", require_exact=True)
    # the MLP hidden group has no normalizer: zeros is exact there
    assert next(e for e in r.info["groups"] if e["name"] == "block0_mlp1")["exact"]


def _small_net():
    x = keras.Input((4, 4, 2), name="x")
    h = L.Conv2D(4, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(3, 3, padding="same", name="c2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, L.Dense(2, name="head")(h))
    _randomize(model)
    return model


def test_plan_maps_kept_channels_to_old_positions_and_new_ones_to_minus_one():
    model = _small_net()
    small = scale_width(model, {"c1": 2}, keep={"c1": [3, 1]})
    plan = small.plan
    np.testing.assert_array_equal(plan["c1/kernel"].index[3], [1, 3])
    assert plan["c1/kernel"].index[:3] == (None, None, None)
    np.testing.assert_array_equal(plan["bn1/moving_variance"].index[0], [1, 3])
    np.testing.assert_array_equal(plan["c2/kernel"].index[2], [1, 3])
    assert plan["head/kernel"].is_identity
    old = model.get_layer("c1").kernel.numpy()
    np.testing.assert_array_equal(small.model.get_layer("c1").kernel.numpy(), old[..., [1, 3]])

    wide = scale_width(small.model, {"c1": 5})
    np.testing.assert_array_equal(wide.plan["c1/bias"].index[0], [0, 1, NEW, NEW, NEW])
    np.testing.assert_array_equal(wide.plan["c2/kernel"].index[2], [0, 1, NEW, NEW, NEW])
    # kept entries keep their values
    small_values = {v.path: v.numpy() for v in small.model.weights}
    for v in wide.model.weights:
        t = wide.plan[v.path]
        mask = t.new_mask(v.shape)
        np.testing.assert_array_equal(v.numpy()[~mask],
                                      t.gather(small_values[t.source], v.shape)[~mask])
    # new BatchNorm channels: gamma 1, beta 0, mean 0, variance 1
    bn = wide.model.get_layer("bn1")
    np.testing.assert_array_equal(bn.gamma.numpy()[2:], 1.0)
    np.testing.assert_array_equal(bn.moving_variance.numpy()[2:], 1.0)
    np.testing.assert_array_equal(bn.moving_mean.numpy()[2:], 0.0)
    assert wide.info["groups"] == [{"name": "c1", "role": "channels", "old": 2, "new": 5,
                                    "kept": 2, "added": 3, "initializer": "zeros",
                                    "exact": True, "reason": None}]


def test_importance_l1_first_and_callable():
    model = _small_net()
    kernel = model.get_layer("c1").kernel.numpy()
    kernel[...] = np.array([1.0, 5.0, 0.5, 3.0])  # filter L1 norms in this order
    model.get_layer("c1").kernel.assign(kernel)
    keep_of = lambda r: r.plan["c1/kernel"].index[3].tolist()  # noqa: E731
    assert keep_of(scale_width(model, {"c1": 2})) == [1, 3]
    assert keep_of(scale_width(model, {"c1": 2}, importance="first")) == [0, 1]
    seen = {}

    def by_bias(group, producers):
        seen["shapes"] = [p.shape for p in producers]
        return -np.arange(group.size)[::-1]  # prefer the last channels

    assert keep_of(scale_width(model, {"c1": 2}, importance=by_bias)) == [2, 3]
    assert seen["shapes"] == [(4, 18)]  # one producer, 3*3*2 filters


def test_flatten_widening_interleaves_the_dense_inputs():
    x = keras.Input((2, 2, 1), name="x")
    h = L.Conv2D(3, 1, name="conv")(x)
    h = L.Flatten(name="flat")(h)
    model = keras.Model(x, L.Dense(2, name="fc")(L.ReLU()(h)))
    _randomize(model)
    r = scale_width(model, {"conv": 5})
    # 4 spatial positions, each 3 old channels then 2 new ones
    np.testing.assert_array_equal(
        r.plan["fc/kernel"].index[0],
        [0, 1, 2, -1, -1, 3, 4, 5, -1, -1, 6, 7, 8, -1, -1, 9, 10, 11, -1, -1])
    xs = np.random.default_rng(0).random((3, 2, 2, 1), dtype=np.float32)
    np.testing.assert_allclose(r.model(xs), model(xs), atol=1e-6)


def test_concatenate_segments_are_resized_independently():
    x = keras.Input((3, 3, 2), name="x")
    a = L.Conv2D(2, 1, name="a")(x)
    b = L.Conv2D(3, 1, name="b")(x)
    h = L.BatchNormalization(name="bn")(L.Concatenate(name="cat")([a, b]))
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    _randomize(model)
    r = scale_width(model, {"a": 4}, initializer="net2net")
    np.testing.assert_array_equal(r.plan["bn/gamma"].index[0], [0, 1, -1, -1, 2, 3, 4])
    xs = np.random.default_rng(0).random((2, 3, 3, 2), dtype=np.float32)
    np.testing.assert_allclose(r.model(xs), model(xs), atol=1e-5)


def test_depthwise_multiplier_and_grouped_conv_round_trip():
    x = keras.Input((5, 5, 3), name="x")
    h = L.Conv2D(8, 1, name="a")(x)
    h = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(h)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Conv2D(8, 3, groups=4, padding="same", name="g")(h)
    h = L.GroupNormalization(groups=2, name="gn")(h)
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    _randomize(model)
    groups = channel_groups(model)
    # dw output (16 = 8 channels x 2) feeds a 4-group conv: blocks of 2 channels of a
    assert groups["a"].divisor == 4 and groups["a"].uniform
    assert groups["g"].divisor == 4 and groups["g"].normalizers == (("gn", "group_norm"),)
    xs = np.random.default_rng(0).random((2, 5, 5, 3), dtype=np.float32)
    half = scale_width(model, 0.5, importance="first")
    assert half.model.get_layer("g").filters == 4 and half.model.get_layer("a").filters == 4
    # a keeps channel 0 of each 2-channel block: 0, 2, 4, 6 (importance="first" per block)
    np.testing.assert_array_equal(half.plan["a/kernel"].index[3], [0, 2, 4, 6])
    np.testing.assert_array_equal(half.plan["bn/gamma"].index[0],
                                  [0, 1, 4, 5, 8, 9, 12, 13])
    # each conv group now reads 1 channel x 2 (depth multiplier) local positions
    np.testing.assert_array_equal(half.plan["g/kernel"].index[2], [0, 1])
    wide = scale_width(half.model, {"a": 8, "g": 8}, initializer="net2net", require_exact=True)
    np.testing.assert_allclose(wide.model(xs), half.model(xs), atol=1e-5)


def test_multi_head_attention_heads_and_key_dim_growth_is_exact():
    q = keras.Input((5, 8), name="q")
    a = L.MultiHeadAttention(2, 3, name="att")(q, q)
    h = L.Add(name="res")([q, a])
    model = keras.Model(q, L.Dense(2, name="o")(h))
    _randomize(model, std=0.5)
    xs = np.random.default_rng(0).random((2, 5, 8), dtype=np.float32)
    for init in ("zeros", "net2net", "orthogonal", "variance_transfer"):
        r = scale_width(model, {"att:heads": 3, "att:key_dim": 6, "att:value_dim": 4},
                        initializer=init, require_exact=True)
        att = r.model.get_layer("att")
        assert (att.num_heads, att.key_dim, att.value_dim) == (3, 6, 4)
        np.testing.assert_allclose(r.model(xs), model(xs), atol=1e-5, rtol=0)
    # Keras divides queries by sqrt(key_dim): the old query weights are scaled by sqrt(6/3)
    old_q = model.get_layer("att").query_dense.kernel.numpy()
    new_q = r.model.get_layer("att").query_dense.kernel.numpy()
    np.testing.assert_allclose(new_q[:, :2, :3], old_q * np.sqrt(2.0), rtol=1e-6)


def test_global_multiplier_scales_heads_but_not_per_head_sizes():
    q = keras.Input((5, 8), name="q")
    a = L.MultiHeadAttention(4, 6, name="att")(q, q)
    h = L.Dense(10, name="mlp")(L.Add()([q, a]))
    model = keras.Model(q, L.Dense(2, name="o")(h))
    r = scale_width(model, 0.5)
    att = r.model.get_layer("att")
    assert (att.num_heads, att.key_dim, att.value_dim) == (2, 6, 6)
    assert r.model.get_layer("mlp").units == 5


def test_sizes_rounding_min_channels_and_divisors():
    x = keras.Input((4, 4, 3), name="x")
    h = L.Conv2D(10, 1, name="a")(x)
    h = L.Conv2D(12, 1, name="b")(h)
    h = L.GroupNormalization(groups=4, name="gn")(h)
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    groups = channel_groups(model)
    assert resolve_sizes(groups, 0.5) == {"a": 5, "b": 8}  # b: 6 -> nearest multiple of 4
    assert resolve_sizes(groups, 0.5, round_to=8) == {"a": 8, "b": 8}
    assert resolve_sizes(groups, 0.1, min_channels=3) == {"a": 3, "b": 4}
    assert resolve_sizes(groups, 0.3, only=["a"]) == {"a": 3}
    assert resolve_sizes(groups, 2.0, only=lambda g: g.divisor > 1) == {"b": 24}
    assert resolve_sizes(groups, {"a": 7, "b": 1.5}) == {"a": 7, "b": 20}  # 18 -> 20 (x4)


def test_per_group_initializers():
    model = _small_net()
    r = scale_width(model, 2.0, initializer={"c1": "net2net", "*": Net2Net(noise=0.1)})
    assert [e["initializer"] for e in r.info["groups"]] == ["net2net", "net2net"]
    with pytest.raises(ValueError, match="no entry for it and no '\\*' default"):
        scale_width(model, 2.0, initializer={"c1": "zeros"})
    with pytest.raises(ValueError, match="Unknown channel group 'c9'"):
        scale_width(model, 2.0, initializer={"c9": "zeros", "*": "zeros"})


def test_sequential_models_and_seed_reproducibility():
    model = keras.Sequential([keras.Input((4,)), L.Dense(6, name="h"), L.Dense(2, name="o")])
    a = scale_width(model, 2.0, initializer="random", seed=3)
    b = scale_width(model, 2.0, initializer="random", seed=3)
    c = scale_width(model, 2.0, initializer="random", seed=4)
    ka, kb, kc = (r.model.get_layer("h").kernel.numpy() for r in (a, b, c))
    np.testing.assert_array_equal(ka, kb)
    assert not np.array_equal(ka, kc)


def test_errors_are_clear():
    model = _small_net()
    with pytest.raises(ValueError, match="Unknown channel group 'c1x'.*Did you mean.*'c1'"):
        scale_width(model, {"c1x": 2})
    with pytest.raises(ValueError, match="'head' cannot be resized: model output"):
        scale_width(model, {"head": 4})
    with pytest.raises(ValueError, match="cannot have 0 channels"):
        scale_width(model, {"c1": 0})
    with pytest.raises(ValueError, match="finite number > 0"):
        scale_width(model, -0.5)
    with pytest.raises(TypeError, match="multiplier must be a float"):
        scale_width(model, "wide")
    with pytest.raises(TypeError, match="must be an int .* or a float"):
        scale_width(model, {"c1": "2"})
    with pytest.raises(ValueError, match="Unknown growth initializer 'orthogonl'"):
        scale_width(model, 2.0, initializer="orthogonl")
    with pytest.raises(ValueError, match="importance must be one of"):
        scale_width(model, 0.5, importance="l2")
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        scale_width(model, {"c1": 2}, keep={"c1": [0, 4]})
    with pytest.raises(ValueError, match="keeps 3 channels but the group's new size is 2"):
        scale_width(model, {"c1": 2}, keep={"c1": [0, 1, 2]})
    with pytest.raises(ValueError, match="does not resize; give it a size too"):
        scale_width(model, {"c1": 2}, keep={"c2": [0]})
    with pytest.raises(ValueError, match="removes 2 channels"):
        scale_width(model, 0.5, require_exact=True)


def test_group_norm_divisibility_errors():
    x = keras.Input((4, 4, 3), name="x")
    h = L.Conv2D(8, 1, name="a")(x)
    h = L.GroupNormalization(groups=4, name="gn")(h)
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    with pytest.raises(ValueError, match="multiple of 4 channels .*gn.*got 6. Use 4 or 8"):
        scale_width(model, {"a": 6})
    r = scale_width(model, {"a": 12}, initializer="net2net")  # 4 GN groups of 3
    assert r.model.get_layer("a").filters == 12


def test_unsupported_weightless_layer_warns_with_a_global_multiplier():
    class Flip(L.Layer):
        def call(self, x):
            return keras.ops.flip(x, axis=-1)

    x = keras.Input((4,), name="x")
    h = Flip(name="flip")(L.Dense(6, name="d")(x))
    model = keras.Model(x, L.Dense(2, name="o")(L.Dense(5, name="e")(h)))
    with pytest.warns(UserWarning, match="flip \\(Flip\\)"):
        r = scale_width(model, 2.0)
    assert r.model.get_layer("d").units == 6 and r.model.get_layer("e").units == 10
    assert "Flip" in r.info["fixed"]["d"]

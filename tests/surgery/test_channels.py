"""Channel-group analysis on small hand-built graphs (expected groups written by hand)."""
import keras
import pytest

from kgrow.surgery.channels import (ChannelGroups, UnsupportedLayerError, channel_groups,
                                    register_channel_rule, supported_layer_types, transparent)

L = keras.layers


def _axes(bindings):
    """{(variable path, axis)} of a group's bindings."""
    return {(b.path, b.axis) for b in bindings}


def _summary(groups: ChannelGroups):
    return {name: (g.size, g.resizable) for name, g in groups.items()}


def test_residual_add_ties_producers_into_one_named_group():
    x = keras.Input((8, 8, 3), name="img")
    a = L.Conv2D(8, 3, padding="same", name="a")(x)
    b = L.Conv2D(8, 3, padding="same", name="b")(a)
    s = L.Add(name="add")([a, b])
    c = L.Conv2D(8, 1, name="c")(s)
    s2 = L.Add(name="add2")([s, c])
    y = L.GlobalAveragePooling2D()(s2)
    model = keras.Model(x, L.Dense(2, name="head")(y))
    groups = channel_groups(model)
    assert _summary(groups) == {"input:img": (3, False), "residual:a": (8, True),
                                "head": (2, False)}
    res = groups["residual:a"]
    assert _axes(res.producers) == {("a/kernel", 3), ("b/kernel", 3), ("c/kernel", 3)}
    assert _axes(res.consumers) == {("b/kernel", 2), ("c/kernel", 2), ("head/kernel", 0)}
    assert _axes(res.carriers) == {("a/bias", 0), ("b/bias", 0), ("c/bias", 0)}
    assert groups["input:img"].fixed == "model input 'img'"
    assert groups["head"].fixed == "model output"
    assert not res.normalizers


def test_concatenate_splits_into_input_groups_in_order():
    x = keras.Input((4, 4, 2), name="x")
    a = L.Conv2D(3, 1, name="a")(x)
    b = L.Conv2D(5, 1, name="b")(x)
    cat = L.Concatenate(name="cat")([a, b, a])
    h = L.BatchNormalization(name="bn")(cat)
    h = L.Conv2D(4, 1, name="c")(h)
    model = keras.Model(x, h)
    groups = channel_groups(model)
    assert _summary(groups) == {"input:x": (2, False), "a": (3, True),
                                "b": (5, True), "c": (4, False)}
    gamma = next(w for w in groups["a"].carriers if w.path == "bn/gamma")
    # the concat output is the ordered union a | b | a
    assert gamma.segments == (("a", 1), ("b", 1), ("a", 1))
    assert gamma in groups["b"].carriers
    assert ("c/kernel", 2) in _axes(groups["a"].consumers)
    assert ("c/kernel", 2) in _axes(groups["b"].consumers)


def test_se_gate_is_tied_but_size_one_gate_broadcasts():
    x = keras.Input((6, 6, 3), name="x")
    main = L.Conv2D(8, 3, padding="same", name="main")(x)
    sq = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(main)  # [B,1,1,8]
    red = L.Conv2D(2, 1, activation="relu", name="reduce")(sq)
    gate = L.Conv2D(8, 1, activation="sigmoid", name="expand")(red)
    se = L.Multiply(name="excite")([main, gate])
    spatial = L.Conv2D(1, 1, activation="sigmoid", name="spatial_gate")(se)  # [B,6,6,1]
    out = L.Multiply(name="spatial_mul")([se, spatial])
    model = keras.Model(x, L.Conv2D(4, 1, name="out")(out))
    groups = channel_groups(model)
    assert _summary(groups) == {"input:x": (3, False), "main": (8, True),
                                "reduce": (2, True), "spatial_gate": (1, False),
                                "out": (4, False)}
    assert _axes(groups["main"].producers) == {("main/kernel", 3), ("expand/kernel", 3)}
    assert groups["main"].name == "main"  # tied by Multiply, not a residual
    assert "broadcasts over 8 channels" in groups["spatial_gate"].fixed


def test_flatten_repeats_the_layout_per_spatial_position():
    x = keras.Input((2, 3, 1), name="x")
    h = L.Conv2D(4, 1, name="conv")(x)
    h = L.Flatten(name="flat")(h)
    model = keras.Model(x, L.Dense(5, name="fc")(h))
    groups = channel_groups(model)
    (fc,) = [w for w in groups["conv"].consumers if w.path == "fc/kernel"]
    assert fc.segments == (("conv", 1),) * 6  # H * W = 6 blocks of C = 4
    assert fc.axis == 0


def test_depthwise_multiplier_expands_channels_in_place():
    x = keras.Input((5, 5, 2), name="x")
    h = L.Conv2D(4, 1, name="conv")(x)
    h = L.DepthwiseConv2D(3, depth_multiplier=3, padding="same", name="dw")(h)
    h = L.BatchNormalization(name="bn")(h)
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    groups = channel_groups(model)
    assert _summary(groups) == {"input:x": (2, False), "conv": (4, True),
                                "out": (2, False)}
    g = groups["conv"]
    dw = next(w for w in g.carriers if w.path == "dw/kernel")
    assert (dw.axis, dw.kind, dw.fill) == (2, "depthwise_kernel", "he")
    gamma = next(w for w in g.carriers if w.path == "bn/gamma")
    assert gamma.segments == (("conv", 3),)
    assert ("out/kernel", 2) in _axes(g.consumers)


def test_conv_with_groups_equal_channels_is_a_depthwise_carrier():
    # keras.applications ConvNeXt writes its depthwise conv as Conv2D(groups=C)
    x = keras.Input((5, 5, 2), name="x")
    h = L.Conv2D(6, 1, name="pw")(x)
    h = L.Conv2D(6, 3, groups=6, padding="same", name="dwconv")(h)
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    groups = channel_groups(model)
    assert set(groups) == {"input:x", "pw", "out"}
    assert ("dwconv/kernel", 3) in _axes(groups["pw"].carriers)
    assert groups["pw"].divisor == 1


def test_grouped_conv_and_group_norm_impose_divisors():
    x = keras.Input((4, 4, 3), name="x")
    h = L.Conv2D(12, 1, name="a")(x)
    h = L.GroupNormalization(groups=3, name="gn")(h)
    h = L.Conv2D(8, 3, groups=4, padding="same", name="g")(h)
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    groups = channel_groups(model)
    a = groups["a"]
    assert a.divisor == 12 and a.uniform  # lcm(3 GN groups, 4 conv groups)
    assert a.normalizers == (("gn", "group_norm"),)
    (fold,) = [w for w in a.consumers if w.path == "g/kernel"]
    assert fold.fold == (3, 4)
    assert groups["g"].divisor == 4 and not groups["g"].uniform


def test_multi_head_attention_groups_and_output_follows_query():
    tokens = keras.Input((5, 8), name="tokens")
    other = keras.Input((7, 6), name="other")
    h = L.LayerNormalization(name="ln")(tokens)
    a = L.MultiHeadAttention(2, 4, name="self")(h, h)
    s = L.Add(name="res")([tokens, a])
    c = L.MultiHeadAttention(3, 5, value_dim=2, output_shape=9, name="cross")(s, other)
    model = keras.Model([tokens, other], L.Dense(2, name="o")(c))
    groups = channel_groups(model)
    assert _summary(groups) == {
        "input:tokens": (8, False), "input:other": (6, False),
        "self:heads": (2, True), "self:key_dim": (4, True), "self:value_dim": (4, True),
        "cross:heads": (3, True), "cross:key_dim": (5, True), "cross:value_dim": (2, True),
        "cross:output": (9, True), "o": (2, False)}
    assert [groups[f"self:{k}"].role for k in ("heads", "key_dim", "value_dim")] == \
        ["heads", "key_dim", "value_dim"]
    # the self-attention output projection writes into the query's residual stream
    assert ("self/attention_output/kernel", 2) in _axes(groups["input:tokens"].producers)
    assert groups["input:tokens"].normalizers == (("ln", "layer_norm"),)
    kd = groups["self:key_dim"]
    assert _axes(kd.producers) == {("self/query/kernel", 2)}
    assert _axes(kd.consumers) == {("self/key/kernel", 2), ("self/key/bias", 1)}
    assert _axes(groups["cross:heads"].consumers) == {("cross/attention_output/kernel", 0)}
    assert _axes(groups["cross:output"].producers) == {("cross/attention_output/kernel", 2)}
    assert ("cross/value/kernel", 0) in _axes(groups["input:other"].consumers)


def test_nested_model_is_analysed_across_its_boundary():
    inner = keras.Sequential([keras.Input((4, 4, 3)), L.Conv2D(6, 1, name="stem_conv"),
                              L.LayerNormalization(name="stem_ln")], name="stem")
    x = keras.Input((4, 4, 3), name="x")
    h = inner(x)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(x, L.Dense(2, name="head")(h))
    groups = channel_groups(model)
    g = groups["stem_conv"]
    assert g.size == 6 and g.resizable
    assert ("head/kernel", 0) in _axes(g.consumers)
    assert g.normalizers == (("stem_ln", "layer_norm"),)


def test_shared_layer_ties_the_channels_it_reads():
    a_in, b_in = keras.Input((4,), name="a_in"), keras.Input((4,), name="b_in")
    a = L.Dense(6, name="a")(a_in)
    b = L.Dense(6, name="b")(b_in)
    shared = L.Dense(3, name="shared")
    model = keras.Model([a_in, b_in], L.Concatenate()([shared(a), shared(b)]))
    groups = channel_groups(model)
    (tied,) = [g for g in groups.values() if g.resizable]  # the shared kernel reads both
    assert tied.name in ("a", "b") and tied.size == 6
    assert _axes(tied.producers) == {("a/kernel", 1), ("b/kernel", 1)}
    assert _axes(tied.consumers) == {("shared/kernel", 0)}


def test_reshape_keeping_channels_and_token_layers_carry_the_stream():
    from kgrow.models import vit
    model = vit((16, 16, 3), 4, depth=1, dim=8, heads=2, patch_size=8)
    groups = channel_groups(model)
    res = groups["residual:patch_embed"]
    assert {("cls_token/token", 0), ("pos_embed/embeddings", 1)} <= _axes(res.carriers)
    assert {n for _, n in res.normalizers} == {"layer_norm"}
    assert groups["block0_mlp1"].size == 32  # dim * mlp_ratio 4


def test_reshape_across_the_channel_axis_fixes_the_group():
    x = keras.Input((12,), name="x")
    h = L.Dense(12, name="d")(x)
    h = L.Reshape((3, 4), name="split")(h)
    model = keras.Model(x, L.Dense(2, name="o")(h))
    groups = channel_groups(model)
    assert "reshapes across the channel axis" in groups["d"].fixed


def test_unsupported_layer_with_weights_is_a_clear_error():
    class Odd(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 2))

        def call(self, x):
            return x @ self.w

    x = keras.Input((4,), name="x")
    model = keras.Model(x, Odd(name="odd")(L.Dense(3)(x)))
    with pytest.raises(UnsupportedLayerError) as err:
        channel_groups(model)
    msg = str(err.value)
    assert "'odd'" in msg and "Odd" in msg and "register_channel_rule" in msg
    assert "Conv2D" in msg  # lists the supported types


def test_unknown_weightless_layer_fixes_its_channels_and_is_reported():
    class Shuffle(L.Layer):
        def call(self, x):
            return keras.ops.flip(x, axis=-1)

    x = keras.Input((4,), name="x")
    h = L.Dense(6, name="d")(x)
    h = Shuffle(name="shuffle")(h)
    model = keras.Model(x, L.Dense(2, name="o")(h))
    groups = channel_groups(model)
    assert "'shuffle' of type Shuffle" in groups["d"].fixed
    assert groups.unsupported == ["shuffle (Shuffle)"]


def test_register_channel_rule_for_a_custom_layer():
    class ChannelScale(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w

    def rule(call):
        call.bind(call.layer.w, 0, call.inputs[0], "carrier", kind="scale", fill=1.0)
        call.set_outputs(call.inputs[0])

    register_channel_rule(ChannelScale, rule)
    with pytest.raises(ValueError, match="already has a channel rule"):
        register_channel_rule(ChannelScale, transparent)
    x = keras.Input((4,), name="x")
    h = ChannelScale(name="cs")(L.Dense(5, name="d")(x))
    model = keras.Model(x, L.Dense(2)(h))
    (w,) = [w for w in channel_groups(model)["d"].carriers if w.path == "cs/w"]
    assert (w.kind, w.fill) == ("scale", 1.0)
    assert "ChannelScale" in supported_layer_types()


def test_rule_binding_the_wrong_size_is_reported():
    class Bad(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(3,), name="w")

        def call(self, x):
            return x

    def rule(call):
        call.bind(call.layer.w, 0, call.inputs[0], "carrier")
        call.set_outputs(call.inputs[0])

    register_channel_rule(Bad, rule)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, L.Dense(2)(Bad(name="bad")(L.Dense(5)(x))))
    with pytest.raises(ValueError, match="binds axis 0 of 'bad/w' .* to 5 channels"):
        channel_groups(model)


def test_keras_ops_in_the_graph_are_elementwise():
    x = keras.Input((4,), name="x")
    a = L.Dense(6, name="a")(x)
    b = L.Dense(6, name="b")(x)
    y = keras.ops.add(a, b) * 2.0
    model = keras.Model(x, L.Dense(2, name="o")(y))
    groups = channel_groups(model)
    assert _summary(groups) == {"input:x": (4, False), "residual:a": (6, True), "o": (2, False)}
    assert _axes(groups["residual:a"].producers) == {("a/kernel", 1), ("b/kernel", 1)}

"""Tests for kgrow.flops against hand-computed FLOP counts.

Convention under test (see kgrow/flops/__init__.py): 1 multiply-add = 2 FLOPs,
bias = 1 per output element, elementwise ops 1 per element, softmax 5,
BatchNorm/LayerNorm 4 per element + 1 each for gamma and beta.
"""

import keras
import numpy as np
import pytest

from kgrow import flops
from kgrow.flops import UnsupportedLayerError


# ---------------------------------------------------------------------------
# Hand formulas, written independently of the rules.

def conv_flops(k, cin, cout, hout, wout, bias=True):
    return 2 * k * k * cin * cout * hout * wout + (cout * hout * wout if bias else 0)


def same_out(n, stride):
    return -(-n // stride)


def valid_out(n, k, stride):
    return (n - k) // stride + 1


def tiny_convnet(input_shape=(8, 8, 3), classes=10):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid", name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, name="fc")(x)
    return keras.Model(inputs, outputs)


def tiny_convnet_expected(h, w, classes=10):
    """Per-layer forward FLOPs of tiny_convnet by hand."""
    h2, w2 = valid_out(h, 3, 2), valid_out(w, 3, 2)
    h3, w3 = same_out(h2, 2), same_out(w2, 2)
    return {
        "c1": conv_flops(3, 3, 4, h, w),
        "bn1": 6 * h * w * 4,
        "relu1": h * w * 4,
        "c2": conv_flops(3, 4, 8, h2, w2),
        "bn2": 6 * h2 * w2 * 8,
        "relu2": h2 * w2 * 8,
        "c3": conv_flops(3, 8, 8, h3, w3, bias=False),
        "gap": h3 * w3 * 8,
        "fc": 2 * 8 * classes + classes,
    }


def forward_by_layer(report):
    return {row.name: row.forward for row in report.per_layer}


# ---------------------------------------------------------------------------
# Forward counts.

def test_tiny_convnet_forward_matches_hand_formula():
    report = flops.count(tiny_convnet())
    expected = tiny_convnet_expected(8, 8)
    assert forward_by_layer(report) == expected
    assert report.forward == sum(expected.values())


def test_input_shape_overrides_model_size():
    model = tiny_convnet((8, 8, 3))
    report = flops.count(model, (17, 12, 3))
    assert forward_by_layer(report) == tiny_convnet_expected(17, 12)
    assert report.input_shape == (17, 12, 3)


def test_all_trainable_training_flops():
    report = flops.count(tiny_convnet())
    expected = tiny_convnet_expected(8, 8)
    c1 = report.layer("c1")
    # Nothing trainable lies upstream of the first conv: no input gradient.
    assert c1.input_grad == 0 and c1.weight_grad == expected["c1"]
    # BN weight gradient = the gamma and beta terms: 2 per element.
    assert report.layer("bn1").weight_grad == 2 * 8 * 8 * 4
    assert report.layer("relu1").weight_grad == 0
    assert report.layer("relu1").input_grad == expected["relu1"]
    assert report.layer("c3").weight_grad == expected["c3"]
    total_input_grad = sum(v for k, v in expected.items() if k != "c1")
    total_weight_grad = (expected["c1"] + expected["c2"] + expected["c3"] + expected["fc"]
                         + 2 * 8 * 8 * 4 + 2 * 3 * 3 * 8)
    assert report.training == report.forward + total_input_grad + total_weight_grad


def test_dense_on_tokens():
    inputs = keras.Input((7, 12))
    outputs = keras.layers.Dense(20, activation="relu", name="proj")(inputs)
    report = flops.count(keras.Model(inputs, outputs))
    # 7 positions x (2*12*20 matmul) + 7*20 bias + 7*20 relu.
    assert report.forward == 7 * 2 * 12 * 20 + 7 * 20 + 7 * 20
    # Weight gradient: kernel and bias terms; the fused ReLU has no weights.
    assert report.layer("proj").weight_grad == 7 * 2 * 12 * 20 + 7 * 20


def test_multi_head_attention_known_dims():
    t, s, dq, dv_in, heads, key_dim, value_dim = 6, 4, 10, 12, 3, 5, 7
    query = keras.Input((t, dq))
    value = keras.Input((s, dv_in))
    out = keras.layers.MultiHeadAttention(heads, key_dim, value_dim=value_dim, name="mha")(
        query, value)
    report = flops.count(keras.Model([query, value], out))
    q_proj = 2 * t * dq * heads * key_dim + t * heads * key_dim
    k_proj = 2 * s * dv_in * heads * key_dim + s * heads * key_dim
    v_proj = 2 * s * dv_in * heads * value_dim + s * heads * value_dim
    o_proj = 2 * t * heads * value_dim * dq + t * dq
    scale = t * heads * key_dim
    qk = 2 * t * s * heads * key_dim
    softmax = 5 * t * s * heads
    av = 2 * t * s * heads * value_dim
    row = report.layer("mha")
    assert row.forward == q_proj + k_proj + v_proj + o_proj + scale + qk + softmax + av
    assert row.weight_grad == q_proj + k_proj + v_proj + o_proj
    assert row.input_grad == 0  # fed by the model inputs directly
    assert report.input_shape == ((t, dq), (s, dv_in))


def test_depthwise_separable_transpose_and_1d_3d_convs():
    inputs = keras.Input((9, 9, 4))
    dw = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                      name="dw")(inputs)
    sep = keras.layers.SeparableConv2D(6, 3, padding="valid", name="sep")(dw)
    tr = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same", name="tr")(sep)
    report = flops.count(keras.Model(inputs, tr))
    h = same_out(9, 2)  # 5
    assert report.layer("dw").forward == 2 * 9 * 4 * 2 * h * h + 8 * h * h
    hs = valid_out(h, 3, 1)  # 3
    assert report.layer("sep").forward == (2 * 9 * 8 * hs * hs + 2 * 8 * 6 * hs * hs
                                           + 6 * hs * hs)
    # Transposed conv: one kernel per *input* position; bias on the 6x6 output.
    assert report.layer("tr").forward == 2 * 9 * 6 * 5 * hs * hs + 5 * (2 * hs) ** 2

    seq = keras.Input((10, 3))
    c1d = keras.layers.Conv1D(4, 5, strides=1, padding="causal", name="c1d")(seq)
    vol = keras.Input((4, 4, 4, 2))
    c3d = keras.layers.Conv3D(3, 2, padding="valid", use_bias=False, name="c3d")(vol)
    report = flops.count(keras.Model([seq, vol], [c1d, c3d]))
    assert report.layer("c1d").forward == 2 * 5 * 3 * 4 * 10 + 4 * 10
    assert report.layer("c3d").forward == 2 * 8 * 2 * 3 * 27


def test_grouped_conv_divides_by_groups():
    inputs = keras.Input((6, 6, 8))
    out = keras.layers.Conv2D(4, 3, padding="same", groups=2, use_bias=False, name="g")(inputs)
    report = flops.count(keras.Model(inputs, out))
    assert report.forward == 2 * 9 * (8 // 2) * 4 * 36


def test_pooling_merges_and_group_norm():
    inputs = keras.Input((8, 8, 4))
    a = keras.layers.MaxPooling2D(2, name="pool")(inputs)
    b = keras.layers.AveragePooling2D(2, name="avg")(inputs)
    added = keras.layers.Add(name="add")([a, b, a])
    mult = keras.layers.Multiply(name="mul")([added, a])
    gn = keras.layers.GroupNormalization(2, name="gn")(mult)
    flat = keras.layers.Flatten(name="flat")(gn)
    drop = keras.layers.Dropout(0.5, name="drop")(flat)
    report = flops.count(keras.Model(inputs, drop))
    n = 4 * 4 * 4
    assert forward_by_layer(report) == {
        "pool": 4 * n, "avg": 4 * n, "add": 2 * n, "mul": n, "gn": 6 * n,
        "flat": 0, "drop": 0}


def test_grouped_query_attention_known_dims():
    t, d, q_heads, kv_heads, head_dim = 5, 12, 4, 2, 3
    tokens = keras.Input((t, d))
    out = keras.layers.GroupQueryAttention(head_dim, q_heads, kv_heads, name="gqa")(
        tokens, tokens)
    report = flops.count(keras.Model(tokens, out))
    q_proj = 2 * t * d * q_heads * head_dim + t * q_heads * head_dim
    kv_proj = 2 * (2 * t * d * kv_heads * head_dim + t * kv_heads * head_dim)
    o_proj = 2 * t * q_heads * head_dim * d + t * d
    # K and V are repeated to all query heads before the attention itself.
    core = t * q_heads * head_dim + 2 * (2 * t * t * q_heads * head_dim) + 5 * t * t * q_heads
    assert report.layer("gqa").forward == q_proj + kv_proj + o_proj + core


def test_embedding_einsum_dense_time_distributed_and_resizing():
    ids = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(50, 8, name="emb")(ids)
    proj = keras.layers.EinsumDense("btd,dhk->bthk", (6, 2, 4), bias_axes="hk",
                                    name="ein")(emb)
    td = keras.layers.TimeDistributed(keras.layers.Dense(3, name="inner"), name="td")(emb)
    report = flops.count(keras.Model(ids, [proj, td]))
    assert report.layer("emb").forward == 0
    assert report.layer("emb").weight_grad == 6 * 8  # scatter-add of looked-up rows
    assert report.layer("ein").forward == 2 * 6 * 8 * 2 * 4 + 6 * 2 * 4
    assert report.layer("td").forward == 6 * (2 * 8 * 3 + 3)
    assert report.layer("ein").input_grad == 2 * 6 * 8 * 2 * 4 + 6 * 2 * 4

    image = keras.Input((4, 4, 2))
    up = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(image)
    near = keras.layers.UpSampling2D(2, name="near")(image)
    scaled = keras.layers.Rescaling(1 / 255, name="scale")(image)
    report = flops.count(keras.Model(image, [up, near, scaled]))
    assert forward_by_layer(report) == {"up": 4 * 8 * 8 * 2, "near": 0, "scale": 2 * 32}


L = keras.layers


@pytest.mark.parametrize("build, shapes, expected", [
    # q (3,4), v (5,4): QK^T 2*15*4, softmax 5*15, scores x V 2*15*4.
    (lambda q, v: L.Attention(name="x")([q, v]), [(3, 4), (5, 4)], 120 + 75 + 120),
    # Dot of (3,4) and (5,4) over the features, with L2-normalized inputs.
    (lambda a, b: L.Dot(axes=(2, 2), normalize=True, name="x")([a, b]), [(3, 4), (5, 4)],
     2 * 15 * 4 + 3 * (12 + 20)),
    # Transposed conv: 5 input positions x kernel 3 x 4 x 2, bias on 11 outputs.
    (lambda x: L.Conv1DTranspose(2, 3, strides=2, name="x")(x), [(5, 4)], 2 * 3 * 4 * 2 * 5 + 22),
    (lambda x: L.RMSNormalization(name="x")(x), [(3, 4)], 3 * 12 + 12),
    (lambda x: L.PReLU(name="x")(x), [(3, 4)], 2 * 12),
    (lambda x: L.Activation("softmax", name="x")(x), [(3, 4)], 5 * 12),
    (lambda x: L.Conv2D(2, 3, data_format="channels_first", name="x")(x), [(3, 5, 5)],
     2 * 9 * 3 * 2 * 9 + 2 * 9),
    # Raw keras ops: fused attention on [B, T, H, D] and an einsum.
    (lambda q: keras.ops.dot_product_attention(q, q, q), [(5, 2, 4)],
     40 + 2 * 50 * 4 + 5 * 50 + 2 * 50 * 4),
    (lambda a: keras.ops.einsum("btd,bsd->bts", a, a), [(5, 4)], 2 * 5 * 5 * 4),
])
def test_more_layer_rules(build, shapes, expected):
    inputs = [keras.Input(s) for s in shapes]
    report = flops.count(keras.Model(inputs, build(*inputs)))
    assert report.forward == expected


# ---------------------------------------------------------------------------
# Freezing: training FLOPs.

def test_frozen_first_half_drops_exact_gradient_parts():
    model = tiny_convnet()
    e = tiny_convnet_expected(8, 8)
    full = flops.count(model)
    for name in ("c1", "bn1"):
        model.get_layer(name).trainable = False
    frozen = flops.count(model)
    assert frozen.forward == full.forward
    # Lost weight gradients: c1 (all of its forward) and bn1 (gamma + beta).
    lost_weight_grad = e["c1"] + 2 * 8 * 8 * 4
    # Lost input gradients: bn1, relu1 and c2 now have no trainable layer
    # upstream (c2 itself is trainable but is the first trainable layer).
    lost_input_grad = e["bn1"] + e["relu1"] + e["c2"]
    assert full.training - frozen.training == lost_weight_grad + lost_input_grad
    assert frozen.layer("c2").input_grad == 0
    assert frozen.layer("c2").weight_grad == e["c2"]
    assert frozen.layer("bn2").input_grad == e["bn2"]
    assert not frozen.layer("c1").trainable


def test_fully_frozen_model_trains_at_forward_cost():
    model = tiny_convnet()
    model.trainable = False
    report = flops.count(model)
    assert report.training == report.forward


def test_input_grad_follows_trainable_ancestors_in_a_branching_graph():
    inputs = keras.Input((6, 6, 2))
    frozen = keras.layers.Conv2D(3, 1, name="frozen")(inputs)
    trained = keras.layers.Conv2D(3, 1, name="trained")(inputs)
    relu_frozen = keras.layers.ReLU(name="relu_frozen")(frozen)
    merged = keras.layers.Add(name="add")([relu_frozen, trained])
    model = keras.Model(inputs, merged)
    model.get_layer("frozen").trainable = False
    report = flops.count(model)
    # Only the frozen branch precedes relu_frozen: no gradient flows there.
    assert report.layer("relu_frozen").input_grad == 0
    assert report.layer("frozen").weight_grad == 0
    assert report.layer("add").input_grad == 36 * 3
    assert report.layer("trained").weight_grad == 2 * 2 * 3 * 36 + 3 * 36


# ---------------------------------------------------------------------------
# Sparsity.

@pytest.mark.parametrize("key", ["c2", "c2/kernel"])
def test_half_density_halves_weight_flops(key):
    model = tiny_convnet()
    e = tiny_convnet_expected(8, 8)
    dense = flops.count(model)
    sparse = flops.count(model, sparsity={key: 0.5})
    kernel = 2 * 9 * 4 * 8 * 3 * 3
    row = sparse.layer("c2")
    assert row.forward == e["c2"] - kernel / 2  # the bias stays dense
    assert row.weight_grad == e["c2"] - kernel / 2
    assert row.input_grad == e["c2"] - kernel / 2
    assert row.density == 0.5
    assert dense.training - sparse.training == 3 * kernel / 2
    others = [r for r in sparse.per_layer if r.name != "c2"]
    assert [r.forward for r in others] == [r.forward for r in dense.per_layer if r.name != "c2"]


def test_mask_sparsity_uses_fraction_of_nonzeros():
    model = tiny_convnet()
    kernel = model.get_layer("fc").kernel
    mask = np.zeros(kernel.shape, dtype="float32")
    mask[:2] = 1.0  # 2 of 8 input rows kept: density 1/4
    report = flops.count(model, sparsity={kernel.path: mask})
    assert report.layer("fc").forward == 2 * 8 * 10 / 4 + 10
    by_layer = flops.count(model, sparsity={"fc": mask})  # mask matched to fc/kernel
    assert by_layer.layer("fc").forward == report.layer("fc").forward


def test_sparsity_errors():
    model = tiny_convnet()
    with pytest.raises(ValueError, match="matches no variable path or layer name"):
        flops.count(model, sparsity={"nope": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flops.count(model, sparsity={"c1": 1.5})
    with pytest.raises(ValueError, match="mask shape"):
        flops.count(model, sparsity={"c1/kernel": np.ones((2, 2))})
    with pytest.raises(ValueError, match="no weight-proportional FLOPs"):
        flops.count(model, sparsity={"relu1": 0.5})
    with pytest.raises(ValueError, match="enters no counted FLOPs"):
        flops.count(model, sparsity={"bn1/moving_mean": 0.5})
    with pytest.raises(ValueError, match="gets a density from both"):
        flops.count(model, sparsity={"c1": 0.5, "c1/kernel": 0.5})
    with pytest.raises(TypeError, match="variable paths or layer names"):
        flops.count(model, sparsity={1: 0.5})
    with pytest.raises(TypeError, match="must be a dict"):
        flops.count(model, sparsity=0.5)


# ---------------------------------------------------------------------------
# Graph structure: nested models, Sequential, shared layers, raw ops.

def test_nested_functional_is_walked_recursively():
    inner_in = keras.Input((8, 8, 4))
    inner_out = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inner_in)
    inner = keras.Model(inner_in, inner_out, name="inner")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 1, name="stem")(inputs)
    x = inner(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, x)
    report = flops.count(model)
    assert [r.name for r in report.per_layer] == ["stem", "inner/conv", "gap"]
    assert report.layer("inner/conv").forward == conv_flops(3, 4, 6, 8, 8)
    assert report.layer("inner/conv").input_grad == conv_flops(3, 4, 6, 8, 8)
    inner.trainable = False
    frozen = flops.count(model)
    assert frozen.layer("inner/conv").weight_grad == 0
    assert frozen.layer("inner/conv").input_grad == conv_flops(3, 4, 6, 8, 8)
    sparse = flops.count(model, sparsity={"conv": 0.5})  # bare nested name works
    assert sparse.layer("inner/conv").density == 0.5


def test_sequential_and_shared_layer():
    seq = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="a"),
                            keras.layers.Dense(2, name="b")])
    assert flops.count(seq).forward == (2 * 5 * 3 + 3) + (2 * 3 * 2 + 2)

    shared = keras.layers.Dense(4, name="shared")
    x1, x2 = keras.Input((4,)), keras.Input((4,))
    out = keras.layers.Add(name="sum")([shared(x1), shared(shared(x2))])
    report = flops.count(keras.Model([x1, x2], out))
    row = report.layer("shared")
    assert row.calls == 3
    assert row.forward == 3 * (2 * 4 * 4 + 4)
    # Only the outer call of shared(shared(x2)) has a trainable layer upstream.
    assert row.input_grad == 2 * 4 * 4 + 4


def test_raw_keras_ops_in_functional_graph():
    inputs = keras.Input((5, 8))
    scores = keras.ops.matmul(inputs, keras.ops.transpose(inputs, (0, 2, 1)))
    probs = keras.ops.softmax(scores)
    pooled = keras.ops.mean(probs, axis=-1)
    report = flops.count(keras.Model(inputs, pooled))
    by_type = {r.type: r.forward for r in report.per_layer}
    assert by_type == {"ops.Transpose": 0, "ops.Matmul": 2 * 5 * 5 * 8,
                       "ops.Softmax": 5 * 25, "ops.Mean": 25}


# ---------------------------------------------------------------------------
# Unknown layers and bad input.

class _Scale(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), name="w")

    def call(self, x):
        return x * self.w


class _Square(keras.layers.Layer):
    def call(self, x):
        return x * x


class _Halve(keras.layers.Layer):
    def call(self, x):
        return x[:, ::2]


def _wrap(layer, shape=(6,)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def test_unknown_weighted_layer_raises_with_name_type_and_supported_types():
    model = _wrap(_Scale(name="mystery"))
    with pytest.raises(UnsupportedLayerError) as info:
        flops.count(model)
    message = str(info.value)
    assert "'mystery'" in message and "_Scale" in message
    assert "Conv2D" in message and "MultiHeadAttention" in message
    assert "strict=False" in message
    with pytest.warns(UserWarning, match="mystery"):
        report = flops.count(model, strict=False)
    assert report.forward == 0


def test_registered_rule_is_used_for_custom_layer():
    class _Scale2(_Scale):
        pass

    @flops.register(_Scale2)
    def _rule(call):
        n = flops.elements(call.outputs[0])
        return flops.Cost((flops.Term(n, call.layer.w, matmul=True),))

    report = flops.count(_wrap(_Scale2(name="s")), sparsity={"s": 0.5})
    assert report.forward == 3.0
    assert report.layer("s").weight_grad == 3.0


def test_unknown_weightless_layers():
    assert flops.count(_wrap(_Square(name="sq"))).forward == 6  # elementwise: 1 per element
    with pytest.raises(UnsupportedLayerError, match="not an elementwise op"):
        flops.count(_wrap(_Halve(name="halve")))


def test_unknown_spatial_size_requires_input_shape():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="c")(inputs))
    with pytest.raises(ValueError, match="pass input_shape"):
        flops.count(model)
    assert flops.count(model, (4, 5, 3)).forward == 2 * 3 * 2 * 20 + 2 * 20


def test_bad_input_shapes_raise():
    model = tiny_convnet()
    with pytest.raises(ValueError, match="rank"):
        flops.count(model, (8, 8))
    with pytest.raises(ValueError, match="layer 'c1'.*expected axis -1"):
        flops.count(model, (8, 8, 5))
    inputs = keras.Input((4, 4, 1))
    flat = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="'fc'"):
        flops.count(keras.Model(inputs, flat), (6, 6, 1))


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    with pytest.raises(TypeError, match="Functional"):
        flops.count(Net(), (3,))


# ---------------------------------------------------------------------------
# Helpers and presentation.

def test_einsum_contraction():
    assert flops.einsum_contraction("abc,cd->abd", (1, 3, 4), (4, 5)) == (60, (1, 3, 5))
    assert flops.einsum_contraction("...c,cd->...d", (1, 2, 3, 4), (4, 6)) == (144, (1, 2, 3, 6))
    with pytest.raises(ValueError, match="index 'c'"):
        flops.einsum_contraction("abc,cd->abd", (1, 3, 4), (5, 5))


def test_table_and_dict():
    report = flops.count(tiny_convnet())
    table = report.table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["layer", "type", "forward"]
    assert any(line.startswith("c2 ") and "Conv2D" in line for line in lines)
    assert lines[-1].startswith("total")
    data = report.to_dict()
    assert data["forward"] == report.forward
    assert [row["name"] for row in data["per_layer"]] == [r.name for r in report.per_layer]
    assert flops.format_flops(1_234_000) == "1.23M"


# ---------------------------------------------------------------------------
# The kgrow model zoo, against published multiply-add counts.

def _zoo():
    models = pytest.importorskip("kgrow.models")
    if not hasattr(models, "get"):
        pytest.skip("kgrow.models.get is not available")
    return models


def _matmul_macs(report, types=("Conv2D", "Dense", "MultiHeadAttention")):
    return sum(r.forward for r in report.per_layer if r.type in types) / 2


def test_resnet20_matches_published_macs():
    model = _zoo().get("resnet20", (32, 32, 3), 10)
    report = flops.count(model)
    # ResNet-20 (He et al. 2016) is 40.55M multiply-adds with parameter-free
    # shortcuts; 1x1 projection shortcuts add 16*32*16*16 + 32*64*8*8.
    projections = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)
                   and l.kernel_size == (1, 1)]
    expected = 40.55e6 + (16 * 32 * 256 + 32 * 64 * 64 if projections else 0)
    assert abs(_matmul_macs(report) - expected) / expected < 0.01
    assert report.training > 2 * report.forward


def test_vit_tiny_matches_published_macs():
    model = _zoo().get("vit_tiny", (224, 224, 3), 1000)
    report = flops.count(model)
    # DeiT-Ti: 1.26G multiply-adds at 224x224 (Touvron et al. 2021 report 1.3G).
    assert abs(_matmul_macs(report) - 1.26e9) / 1.26e9 < 0.01
    assert not [r for r in report.per_layer if r.forward < 0]

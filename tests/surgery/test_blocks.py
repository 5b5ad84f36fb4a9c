"""Tests for kgrow.surgery.blocks: finding blocks and stages by structure."""
import keras
import numpy as np
import pytest

import kgrow.models as km
from kgrow.surgery.blocks import Block, find_blocks, find_stages, zeroable_variables


def _resnet20():
    return km.get("resnet20", (16, 16, 3), 10, width=0.25)


def _vit(depth, **kw):
    return km.get("vit", (16, 16, 3), 10, depth=depth, dim=16, heads=2, patch_size=8, **kw)


def _layer_names(model, prefix):
    return {l.name for l in model.layers if l.name.startswith(prefix)}


# ----------------------------------------------------------------------------- kgrow zoo


def test_resnet20_blocks_follow_the_architecture():
    model = _resnet20()
    blocks = find_blocks(model)
    # ResNet-20: 3 stages x 3 basic blocks; the first block of stages 2 and 3
    # halves the resolution and doubles the filters (projection shortcut).
    assert len(blocks) == 9
    assert [s.depth for s in find_stages(model)] == [3, 3, 3]
    expected_shortcut = ["identity"] * 3 + ["projection", "identity", "identity"] * 2
    assert [b.shortcut for b in blocks] == expected_shortcut
    assert [b.shape_preserving for b in blocks] == [s == "identity" for s in expected_shortcut]
    for b in blocks:
        s, k = divmod(b.index, 3)
        prefix = f"stage{s + 1}_block{k}_"
        # Every layer of the block (shortcut conv, add and the ReLU after it
        # included) and nothing else.
        assert set(b.layers) == _layer_names(model, prefix)
        assert b.output_layer == prefix + "out"
        assert b.stage == s
        assert b.kind == "residual" and b.units == 1
        assert b.merges == ((prefix + "add",) if b.shape_preserving else ())
        if b.shape_preserving:
            assert b.branch_ends == (prefix + "bn2",)
    assert blocks[0].input_layer == "stem_relu"
    assert blocks[4].input_layer == "stage2_block0_out"
    assert blocks[0].input_shape == (16, 16, 4) and blocks[3].output_shape == (8, 8, 8)
    # Identical blocks have equal signatures, across names.
    assert blocks[1].signature == blocks[2].signature == blocks[0].signature
    assert blocks[4].signature == blocks[5].signature != blocks[1].signature
    assert blocks[3].signature != blocks[4].signature


def test_resnet50_bottleneck_stages():
    model = km.get("resnet50", (16, 16, 3), 10, width=0.125, stem="cifar")
    stages = find_stages(model)
    # ResNet-50: 3, 4, 6, 3 bottleneck blocks; every stage starts with a
    # projection (stage 1 too: 64 -> 256 channels).
    assert [s.depth for s in stages] == [3, 4, 6, 3]
    assert [len(s.body) for s in stages] == [2, 3, 5, 2]
    for s in stages:
        assert s.blocks[0].shortcut == "projection"
        assert all(b.branch_ends == (b.output_layer.replace("_out", "_bn3"),) for b in s.body)


def test_vit_blocks_are_pairs_of_residual_units():
    model = _vit(4, drop_path=0.1)
    blocks = find_blocks(model)
    assert len(blocks) == 4 and [s.depth for s in find_stages(model)] == [4]
    for i, b in enumerate(blocks):
        assert set(b.layers) == _layer_names(model, f"block{i}_")
        assert b.units == 2 and b.shortcut == "identity" and b.shape_preserving
        assert b.merges == (f"block{i}_add1", f"block{i}_add2")
        assert b.branch_ends == (f"block{i}_attn", f"block{i}_mlp2")
        assert b.output_layer == f"block{i}_add2"
    assert blocks[0].input_layer == "pos_drop"
    # Different drop-path rates per block do not make the blocks different.
    assert len({b.signature for b in blocks}) == 1


def test_single_block_vit_pairs_attention_and_mlp():
    blocks = find_blocks(_vit(1))
    assert len(blocks) == 1 and blocks[0].units == 2
    assert blocks[0].merges == ("block0_add1", "block0_add2")


# ----------------------------------------------------------------------------- keras.applications

# Expected structure written from the architectures (Keras' implementations):
# * ResNet50V2 (stack2): stacks of 3, 4, 6, 3 blocks; block 1 of every stack
#   has a conv shortcut, the last block of stacks conv2..conv4 is strided with
#   a 1x1 max-pool shortcut, the others add the identity.
# * MobileNetV2: inverted residual blocks add their input only when stride is
#   1 and channels match: block_2, 4-5, 7-9, 11-12, 14-15.
# * EfficientNetB0: stages of 1, 2, 2, 3, 3, 4, 1 MBConv blocks; only the
#   repeats (not the first block of a stage) have a residual: 2b, 3b, 4b-c,
#   5b-c, 6b-d.
# * ConvNeXtTiny: 3, 3, 9, 3 blocks, all residual with identity shortcut
#   (downsampling is outside the blocks); the branch ends in LayerScale.
# * DenseNet121: dense blocks of 6, 12, 24, 16 layers that concatenate.
APPLICATIONS = {
    "ResNet50V2": ([3, 4, 6, 3], [1, 2, 4, 2], "residual"),
    "MobileNetV2": ([1, 2, 3, 2, 2], [1, 2, 3, 2, 2], "residual"),
    "EfficientNetB0": ([1, 1, 2, 2, 3], [1, 1, 2, 2, 3], "residual"),
    "ConvNeXtTiny": ([3, 3, 9, 3], [3, 3, 9, 3], "residual"),
    "DenseNet121": ([6, 12, 24, 16], [0, 0, 0, 0], "dense"),
}


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_block_counts(name):
    depths, identity, kind = APPLICATIONS[name]
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3),
                                              classes=10)
    stages = find_stages(model)
    assert [s.depth for s in stages] == depths
    assert [sum(b.shortcut == "identity" for b in s.blocks) for s in stages] == identity
    assert {b.kind for s in stages for b in s.blocks} == {kind}
    blocks = find_blocks(model)
    if name == "ResNet50V2":
        assert [b.shortcut for b in stages[0].blocks] == ["projection", "identity", "projection"]
        assert [b.shortcut for b in stages[3].blocks] == ["projection", "identity", "identity"]
        # The pre-activation BN/ReLU of a projection block belong to it.
        conv3_block1 = stages[1].blocks[0]
        assert "conv3_block1_preact_bn" in conv3_block1.layers
        assert conv3_block1.input_layer == "conv2_block3_out"
        assert stages[1].blocks[1].branch_ends == ("conv3_block2_3_conv",)
    if name == "MobileNetV2":
        assert [b.output_layer for b in blocks] == [
            f"block_{i}_add" for i in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)]
        assert blocks[0].branch_ends == ("block_2_project_BN",)
    if name == "EfficientNetB0":
        assert [b.output_layer for b in blocks] == [
            f"block{s}_add" for s in ("2b", "3b", "4b", "4c", "5b", "5c", "6b", "6c", "6d")]
        assert blocks[0].branch_ends == ("block2b_project_bn",)
    if name == "ConvNeXtTiny":
        assert blocks[0].branch_ends == ("convnext_tiny_stage_0_block_0_layer_scale",)
    if name == "DenseNet121":
        assert blocks[0].output_layer == "conv2_block1_concat"
        assert blocks[-1].output_layer == "conv5_block16_concat"
        assert all(b.shortcut == "concat" and not b.shape_preserving for b in blocks)


# ----------------------------------------------------------------------------- generic graphs


def _dense_residual(n, width=8, post=None):
    inp = keras.Input((width,))
    x = inp
    for i in range(n):
        h = keras.layers.Dense(width, name=f"b{i}_fc")(x)
        x = keras.layers.Add(name=f"b{i}_add")([x, h])
        if post:
            x = keras.layers.Activation(post, name=f"b{i}_post")(x)
    return keras.Model(inp, keras.layers.Dense(2, name="head")(x))


def test_keras_op_merges_and_nested_models_are_found():
    inp = keras.Input((6,))
    x = inp
    for i in range(2):
        x = x + keras.layers.Dense(6, name=f"r{i}_fc")(x)  # ops.add, not a layer
    inner = keras.Model(inp, x, name="inner")
    outer_in = keras.Input((6,))
    y = keras.layers.Dense(6, name="pre")(outer_in)
    model = keras.Model(outer_in, keras.layers.Dense(1, name="head")(inner(y)))
    blocks = find_blocks(model)
    assert [b.layers[0] for b in blocks] == ["r0_fc", "r1_fc"]
    assert blocks[0].input_layer == "pre" and blocks[0].shortcut == "identity"
    assert [s.depth for s in find_stages(model)] == [2]


def test_model_without_merges_has_no_blocks():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    assert find_blocks(model) == [] and find_stages(model) == []


def test_tensor_used_outside_a_unit_breaks_it():
    inp = keras.Input((4,))
    h = keras.layers.Dense(4, name="fc")(inp)
    x = keras.layers.Add(name="add")([inp, h])
    # The branch output is also a model output: the add does not close a
    # single-output block.
    model = keras.Model(inp, [x, h])
    assert find_blocks(model) == []


def test_stage_signature_depends_on_shapes_and_layer_types():
    inp = keras.Input((8,))
    x = inp
    for i, units in enumerate([8, 8, 8]):
        h = keras.layers.Dense(units, name=f"a{i}_fc")(x)
        if i == 2:
            h = keras.layers.Dropout(0.1, name="a2_drop")(h)
        x = keras.layers.Add(name=f"a{i}_add")([x, h])
    model = keras.Model(inp, x)
    # The third block has a Dropout more: a stage of 2 and a stage of 1.
    assert [s.depth for s in find_stages(model)] == [2, 1]


def test_block_to_dict_is_json_ready():
    import json
    b = find_blocks(_dense_residual(2))[0]
    assert isinstance(b, Block)
    d = json.loads(json.dumps(b.to_dict()))
    assert d["layers"] == ["b0_fc", "b0_add"] and d["stage"] == 0


def test_zeroable_variables_of_supported_and_unsupported_layers():
    conv = keras.layers.Conv2D(3, 1)
    conv.build((None, 4, 4, 2))
    assert [v.name for v in zeroable_variables(conv)] == ["kernel", "bias"]
    mha = keras.layers.MultiHeadAttention(2, 4)
    x = np.zeros((1, 3, 8), "float32")
    mha(x, x)
    assert [v.path for v in zeroable_variables(mha)] == [
        f"{mha.name}/attention_output/kernel", f"{mha.name}/attention_output/bias"]
    emb = keras.layers.Embedding(4, 2)
    emb.build((None,))
    with pytest.raises(ValueError, match="Embedding.*does not know which of its weights"):
        zeroable_variables(emb)


# ----------------------------------------------------------------------------- spec override


def test_spec_pairs_and_regex_match_structure_on_the_zoo():
    model = _vit(3)
    auto = find_blocks(model)
    pairs = [(f"block{i}_norm1", f"block{i}_add2") for i in range(3)]
    by_pairs = find_blocks(model, spec=pairs)
    by_regex = find_blocks(model, spec=r"block(\d+)_")
    for a, p, r in zip(auto, by_pairs, by_regex):
        assert set(a.layers) == set(p.layers) == set(r.layers)
        assert a.branch_ends == p.branch_ends == r.branch_ends
        assert p.shape_preserving and r.shortcut == "identity"
    resnet = _resnet20()
    by_regex = find_blocks(resnet, spec=r"stage(\d+)_block(\d+)_")
    assert [set(b.layers) for b in by_regex] == [set(b.layers) for b in find_blocks(resnet)]
    assert [s.depth for s in find_stages(resnet, spec=r"stage(\d+)_block(\d+)_")] == [3, 3, 3]


def test_spec_can_group_what_structure_does_not():
    # Two units per user block: the spec decides the granularity.
    model = _dense_residual(4)
    blocks = find_blocks(model, spec=[("b0_fc", "b1_add"), ("b2_fc", "b3_add")])
    assert [b.layers for b in blocks] == [("b0_fc", "b0_add", "b1_fc", "b1_add"),
                                          ("b2_fc", "b2_add", "b3_fc", "b3_add")]
    assert all(b.units == 1 and b.shortcut == "identity" for b in blocks)
    assert [b.merges for b in blocks] == [("b0_add", "b1_add"), ("b2_add", "b3_add")]
    assert blocks[0].branch_ends == ("b0_fc", "b1_fc")


def test_bad_specs_name_the_offending_layer():
    model = _resnet20()
    with pytest.raises(ValueError, match="'stage1_block0_out' is read by 'stage1_block1_add'"):
        # Ends in the middle of block 1: block 0's output also feeds block 1's add.
        find_blocks(model, spec=[("stage1_block0_conv1", "stage1_block1_bn2")])
    with pytest.raises(ValueError, match="first layer 'stage1_block0_add' reads 2 tensors"):
        find_blocks(model, spec=[("stage1_block0_add", "stage1_block0_out")])
    with pytest.raises(ValueError, match="'nope', which is not in the model"):
        find_blocks(model, spec=[("nope", "stage1_block0_out")])
    with pytest.raises(ValueError, match="does not depend on the input"):
        find_blocks(model, spec=[("stage1_block1_conv1", "stage1_block0_out")])
    with pytest.raises(ValueError, match="reads 2: 'stem_relu'.*'stage1_block0_relu1'"):
        find_blocks(model, spec=r"stage(\d)_block(\d)_conv")
    with pytest.raises(ValueError, match="matches no layer name"):
        find_blocks(model, spec=r"^layer(\d+)$")
    with pytest.raises(ValueError, match="spec must be a regular expression"):
        find_blocks(model, spec=[("a", "b", "c")])
    with pytest.raises(ValueError, match="blocks must not overlap"):
        find_blocks(model, spec=[("stage1_block0_conv1", "stage1_block0_out"),
                                 ("stage1_block0_conv2", "stage1_block0_bn2")])


def test_functional_required():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="Functional"):
        find_blocks(Sub())

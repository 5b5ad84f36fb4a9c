"""Tests for kgrow.surgery.depth: inserting, removing and re-counting blocks."""
import keras
import numpy as np
import pytest

import kgrow.models as km
from kgrow.surgery.blocks import find_blocks, find_stages
from kgrow.surgery.depth import (describe_mapping, expansion_mapping, insert_blocks,
                                 interpolation_mapping, remove_blocks, set_depth)


def _x(shape, seed=0):
    return np.random.RandomState(seed).uniform(0.0, 1.0, shape).astype("float32")


def _resnet20():
    return km.get("resnet20", (16, 16, 3), 10, width=0.25, classifier_activation=None)


def _vit(depth=6, drop_path=0.1):
    return km.get("vit", (16, 16, 3), 10, depth=depth, dim=16, heads=2, patch_size=8,
                  drop_path=drop_path, classifier_activation=None)


def _weights(model):
    return {w.path: w.numpy() for w in model.weights}


def _dense_residual(weights, post=None):
    """x -> x + x @ W_i + b_i for each (W_i, b_i), optional activation after each add."""
    width = weights[0][0].shape[0]
    inp = keras.Input((width,))
    x = inp
    for i, (w, b) in enumerate(weights):
        fc = keras.layers.Dense(width, name=f"b{i}_fc")
        h = fc(x)
        fc.set_weights([w, b])
        x = keras.layers.Add(name=f"b{i}_add")([x, h])
        if post:
            x = keras.layers.Activation(post, name=f"b{i}_post")(x)
    return keras.Model(inp, x)


def _random_blocks(n, width=4, seed=0):
    rng = np.random.RandomState(seed)
    return [(rng.normal(0, 0.5, (width, width)).astype("float32"),
             rng.normal(0, 0.5, (width,)).astype("float32")) for _ in range(n)]


# ----------------------------------------------------------------------------- mappings


def test_interpolation_mapping_is_floor_of_scaled_index():
    assert interpolation_mapping(9, 18) == [i // 2 for i in range(18)]
    # floor(i * 6 / 9) for i = 0..8
    assert interpolation_mapping(6, 9) == [0, 0, 1, 2, 2, 3, 4, 4, 5]
    assert interpolation_mapping(6, 3) == [0, 2, 4]
    with pytest.raises(ValueError, match="new_depth must be a positive int"):
        interpolation_mapping(6, 0)


def test_expansion_mapping_matches_network_expansion():
    assert describe_mapping(expansion_mapping(6, 12)) == [
        "o0", "e0", "o1", "e1", "o2", "e2", "o3", "e3", "o4", "e4", "o5", "e5"]
    assert describe_mapping(expansion_mapping(6, 9)) == [
        "o0", "o1", "o2", "o3", "e3", "o4", "e4", "o5", "e5"]
    assert describe_mapping(expansion_mapping(6, 9, mode="stack")) == [
        "o0", "o1", "o2", "o3", "o4", "o5", "e3", "e4", "e5"]
    assert expansion_mapping(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="k <= old depth"):
        expansion_mapping(4, 9)
    with pytest.raises(ValueError, match="k <= old depth"):
        expansion_mapping(6, 5)
    with pytest.raises(ValueError, match="expansion mode must be one of"):
        expansion_mapping(6, 9, mode="append")


# ----------------------------------------------------------------------------- hand-computed


def test_neighbour_identity_and_removal_against_hand_computation():
    ws = _random_blocks(2)
    model = _dense_residual(ws)
    x = _x((3, 4))

    def f(i, v):
        return v + v @ ws[i][0] + ws[i][1]

    grown = insert_blocks(model, [1], source="neighbour")
    np.testing.assert_allclose(grown.model(x), f(1, f(1, f(0, x))), rtol=1e-5, atol=1e-5)
    new = grown.model.get_layer("b1_ins1_fc")
    np.testing.assert_array_equal(new.kernel.numpy(), ws[1][0])
    assert grown.plan["b1_ins1_fc/kernel"].source == "b1_fc/kernel"
    assert grown.plan["b0_fc/kernel"].source == "b0_fc/kernel"
    assert grown.info["function_preserving"] is False

    ident = insert_blocks(model, [0], source="identity")
    np.testing.assert_allclose(ident.model(x), f(1, f(0, x)), rtol=1e-5, atol=1e-5)
    assert np.all(ident.model.get_layer("b0_ins1_fc").kernel.numpy() == 0)
    assert sorted(ident.info["zeroed"]) == ["b0_ins1_fc/bias", "b0_ins1_fc/kernel"]
    assert ident.plan["b0_ins1_fc/kernel"].source is None
    assert ident.info["function_preserving"] is True

    removed = remove_blocks(model, [0])
    np.testing.assert_allclose(removed.model(x), f(1, x), rtol=1e-5, atol=1e-5)
    assert [l.name for l in removed.model.layers if l.name.endswith("_fc")] == ["b1_fc"]
    assert set(removed.plan) == {"b1_fc/kernel", "b1_fc/bias"}
    # The input model is untouched.
    np.testing.assert_allclose(model(x), f(1, f(0, x)), rtol=1e-5, atol=1e-5)
    # A grown model is an ordinary Functional model: it trains, and its
    # identity block learns (zeroed weights get gradients through the add).
    grown_model = ident.model
    grown_model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)
    grown_model.train_on_batch(x, np.ones((3, 4), "float32"))
    assert np.any(grown_model.get_layer("b0_ins1_fc").kernel.numpy() != 0)


def test_templates_and_repeated_positions():
    ws = _random_blocks(3, seed=1)
    model = _dense_residual(ws)
    x = _x((2, 4))

    def f(i, v):
        return v + v @ ws[i][0] + ws[i][1]

    # Two copies after block 0: a copy of block 2, then a copy of block 0.
    result = insert_blocks(model, [0, 0], templates=[2, 0])
    expect = f(2, f(1, f(0, f(2, f(0, x)))))
    np.testing.assert_allclose(result.model(x), expect, rtol=1e-5, atol=1e-5)
    assert [i["template"] for i in result.info["inserted"]] == [2, 0]
    assert [i["new_index"] for i in result.info["inserted"]] == [1, 2]
    assert result.info["inserted"][0]["layers"] == ["b2_ins1_fc", "b2_ins1_add"]
    assert result.info["stage_depths_after"] == [5]


# ----------------------------------------------------------------------------- zoo ResNet


def test_resnet_identity_insertion_is_function_preserving():
    model = _resnet20()
    x = _x((2, 16, 16, 3))
    before = model(x).numpy()
    result = insert_blocks(model, [1, 4, 4], source="identity")
    new = result.model
    np.testing.assert_allclose(new(x), before, atol=1e-5, rtol=0)
    assert [s.depth for s in find_stages(new)] == [4, 5, 3]
    names = [l.name for l in new.layers]
    for n in ("stage1_block1_ins1_conv1", "stage2_block1_ins1_out", "stage2_block1_ins2_bn2"):
        assert n in names
    assert np.all(new.get_layer("stage2_block1_ins2_bn2").gamma.numpy() == 0)
    # Plan: kept weights from themselves, copies from their template, the
    # zeroed branch end new; applying it to the old weights gives the new ones.
    plan = result.plan
    assert set(plan) == {w.path for w in new.weights}
    assert plan["stage1_block1_ins1_conv1/kernel"].source == "stage1_block1_conv1/kernel"
    assert plan["stage1_block1_ins1_bn2/gamma"].source is None
    assert plan["stage1_block1_ins1_bn2/moving_mean"].source == "stage1_block1_bn2/moving_mean"
    assert all(plan[w.path].source == w.path for w in model.weights)
    old = _weights(model)
    for w in new.weights:
        t = plan[w.path]
        np.testing.assert_array_equal(t.gather(old.get(t.source), w.shape), w.numpy())
    # BN in training mode uses batch statistics: still the identity (this
    # updates moving statistics, so it comes after the weight checks).
    np.testing.assert_allclose(new(x, training=True), model(x, training=True), atol=1e-5,
                               rtol=0)


def test_resnet_remove_then_reinsert_round_trip():
    model = _resnet20()
    x = _x((2, 16, 16, 3), seed=3)
    before = model(x).numpy()
    removed = remove_blocks(model, [2])
    assert [s.depth for s in find_stages(removed.model)] == [2, 3, 3]
    assert removed.info["removed"][0]["block"] == 2
    assert "stage1_block2_conv1" not in [l.name for l in removed.model.layers]
    after_removal = removed.model(x).numpy()
    assert not np.allclose(after_removal, before, atol=1e-3)

    # Re-insert from the original model's block 2 (a donor model) ...
    back = insert_blocks(removed.model, [1], source=model, donor_blocks=[2])
    np.testing.assert_allclose(back.model(x), before, atol=1e-5, rtol=0)
    assert back.info["inserted"][0]["donor_block"] == 2
    # ... or from a path -> array dict of the original weights.
    original = find_blocks(model)[2]
    back2 = insert_blocks(removed.model, [1], source="donor", donor=_weights(model),
                          donor_blocks=[original])
    np.testing.assert_allclose(back2.model(x), before, atol=1e-5, rtol=0)
    # An identity re-insertion gives back the reduced model's function.
    ident = insert_blocks(removed.model, [1], source="identity")
    np.testing.assert_allclose(ident.model(x), after_removal, atol=1e-5, rtol=0)


def test_set_depth_per_stage_grows_and_shrinks_bodies():
    model = _resnet20()
    result = set_depth(model, [3, 5, 2], source="identity")
    new = result.model
    assert [s.depth for s in find_stages(new)] == [3, 5, 2]
    names = {l.name for l in new.layers}
    # Stage 2 body [b1, b2] -> interpolation [0, 0, 1, 1]; stage 3 body
    # [b1, b2] -> [0]: block 2 of stage 3 is removed.
    assert {"stage2_block1_ins1_conv1", "stage2_block2_ins1_conv1"} <= names
    assert "stage3_block2_conv1" not in names and "stage3_block1_conv1" in names
    assert result.info["mappings"] == {"1": [0, 0, 1, 1], "2": [0]}
    assert result.info["function_preserving"] is False  # a block was removed
    with pytest.raises(ValueError, match="needs at least 2 blocks"):
        set_depth(model, [3, 1, 3])
    with pytest.raises(ValueError, match="give one depth per stage"):
        set_depth(model, 6)
    with pytest.raises(ValueError, match="got 2 stage depths for 3 stages"):
        set_depth(model, [3, 3])


# ----------------------------------------------------------------------------- zoo ViT


def test_vit_network_expansion_from_ema_donor():
    online = _vit(6)
    ema = _vit(6)  # same architecture, different weights: stands in for the EMA copy
    x = _x((2, 16, 16, 3), seed=5)
    donor = _weights(ema)
    result = set_depth(online, 9, mapping=expansion_mapping, source="ema", donor=donor)
    new = result.model
    order = [b.layers[0].rsplit("_", 1)[0] for b in find_blocks(new)]
    assert order == ["block0", "block1", "block2", "block3", "block3_ins1", "block4",
                     "block4_ins1", "block5", "block5_ins1"]
    for k in (3, 4, 5):
        np.testing.assert_array_equal(new.get_layer(f"block{k}_ins1_mlp1").kernel.numpy(),
                                      donor[f"block{k}_mlp1/kernel"])
        assert result.plan[f"block{k}_ins1_attn/query/kernel"].source == \
            f"block{k}_attn/query/kernel"
        np.testing.assert_array_equal(new.get_layer(f"block{k}_mlp1").kernel.numpy(),
                                      online.get_layer(f"block{k}_mlp1").kernel.numpy())
    np.testing.assert_array_equal(new.get_layer("pos_embed").embeddings.numpy(),
                                  online.get_layer("pos_embed").embeddings.numpy())
    # Stochastic depth reset to linspace(0, 0.1, 9) in the new block order.
    expected = [0.1 * i / 8 for i in range(9)]
    got = [new.get_layer(f"{p}_drop_path2").rate for p in order]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(result.info["drop_path_rates"], expected, atol=1e-12)
    # The identity variant keeps the function.
    ident = set_depth(online, 12, mapping=expansion_mapping, source="identity", donor=donor)
    np.testing.assert_allclose(ident.model(x), online(x), atol=1e-5, rtol=0)
    assert np.all(ident.model.get_layer("block0_ins1_mlp2").kernel.numpy() == 0)
    assert ident.plan["block0_ins1_attn/attention_output/kernel"].source is None


def test_vit_interpolation_mapping_with_insert_blocks():
    model = _vit(3, drop_path=0.0)
    result = insert_blocks(model, mapping=interpolation_mapping(3, 6))
    assert [b.layers[0] for b in find_blocks(result.model)] == [
        "block0_norm1", "block0_ins1_norm1", "block1_norm1", "block1_ins1_norm1",
        "block2_norm1", "block2_ins1_norm1"]
    with pytest.raises(ValueError, match="drops old blocks \\[1\\]"):
        insert_blocks(model, mapping=[0, 0, 2])
    with pytest.raises(ValueError, match="increasing order"):
        insert_blocks(model, mapping=[0, 2, 1])
    with pytest.raises(ValueError, match="out of range"):
        insert_blocks(model, mapping=[0, 1, 2, 3])


def test_donor_model_and_drop_path_max_rate():
    online, ema = _vit(2, drop_path=0.0), _vit(2, drop_path=0.0)
    result = insert_blocks(online, [1], source=ema, reset_drop_path=0.2)
    np.testing.assert_array_equal(result.model.get_layer("block1_ins1_mlp2").kernel.numpy(),
                                  ema.get_layer("block1_mlp2").kernel.numpy())
    assert result.info["weights_from"] == "donor"
    # Three blocks now: rates linspace(0, 0.2, 3) = 0, 0.1, 0.2.
    rates = [result.model.get_layer(f"{p}_drop_path1").rate
             for p in ("block0", "block1", "block1_ins1")]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2], atol=1e-12)
    with pytest.raises(ValueError, match="reset_drop_path must be"):
        insert_blocks(online, [1], reset_drop_path=2.0)


def test_nested_models_are_inlined_and_the_plan_pairs_by_layer():
    import json
    inp = keras.Input((6,))
    x = inp
    for i in range(2):
        x = x + keras.layers.Dense(6, name=f"r{i}_fc")(x)
    inner = keras.Model(inp, x, name="inner")
    stem = keras.Sequential([keras.layers.Dense(6, name="pre")], name="stem")
    outer_in = keras.Input((4,))
    model = keras.Model(outer_in, keras.layers.Dense(2, name="head")(inner(stem(outer_in))))
    old_paths = {w.path for w in model.weights}
    assert "stem/pre/kernel" in old_paths  # Sequential layers get a scoped path
    result = insert_blocks(model, [0], source="identity")
    new = result.model
    x = _x((3, 4))
    np.testing.assert_allclose(new(x), model(x), atol=1e-6)
    assert result.plan["pre/kernel"].source == "stem/pre/kernel"
    assert {t.source for t in result.plan.values()} - {None} == old_paths
    np.testing.assert_array_equal(new.get_layer("pre").kernel.numpy(),
                                  model.get_layer("stem").get_layer("pre").kernel.numpy())
    # The info is plain data for logs and checkpoints.
    assert json.loads(json.dumps(result.info))["inserted"][0]["layers"][0] == "r0_ins1_fc"


def test_donor_mapping_must_cover_trainable_weights():
    model = _vit(2)
    donor = _weights(model)
    del donor["block1_mlp1/kernel"]
    with pytest.raises(KeyError, match="no entry 'block1_mlp1/kernel'"):
        insert_blocks(model, [1], source="ema", donor=donor)


# ----------------------------------------------------------------------------- errors


def test_clear_errors():
    model = _resnet20()
    with pytest.raises(ValueError, match="block 3 .* not shape-preserving.*projection"):
        insert_blocks(model, [3])
    with pytest.raises(ValueError, match="position 9 is out of range: the model has 9 blocks"):
        insert_blocks(model, [9])
    with pytest.raises(ValueError, match="position -1 is out of range"):
        insert_blocks(model, [-1])
    with pytest.raises(TypeError, match="block indices"):
        insert_blocks(model, ["stage1_block0"])
    with pytest.raises(ValueError, match="not shape-preserving"):
        remove_blocks(model, [6])
    with pytest.raises(ValueError, match="repeated indices"):
        remove_blocks(model, [1, 1])
    with pytest.raises(ValueError, match="source must be one of"):
        insert_blocks(model, [1], source="zeros")
    with pytest.raises(ValueError, match="needs `donor=`"):
        insert_blocks(model, [1], source="ema")
    with pytest.raises(ValueError, match="exactly one of `positions`"):
        insert_blocks(model, [1], mapping=list(range(9)))
    with pytest.raises(ValueError, match="block 4 .* reads shape \\(8, 8, 8\\) but block 1 "
                                         "outputs shape \\(16, 16, 4\\)"):
        insert_blocks(model, [1], templates=[4])


def test_identity_refuses_a_non_idempotent_post_activation():
    ws = _random_blocks(2, seed=2)
    with pytest.raises(ValueError, match="would not be the identity.*b0_post"):
        insert_blocks(_dense_residual(ws, post="elu"), [0], source="identity")
    # ReLU after the add, fed by a ReLU output: relu(relu(x)) == relu(x).
    model = _dense_residual(ws, post="relu")
    x = _x((2, 4)) - 0.5
    result = insert_blocks(model, [0], source="identity")
    np.testing.assert_allclose(result.model(x), model(x), atol=1e-6)


def test_identity_needs_a_zeroable_branch():
    inp = keras.Input((4,))
    x = inp
    for i in range(2):
        h = keras.layers.Dense(4, name=f"b{i}_fc")(x)
        h = keras.layers.Activation("sigmoid", name=f"b{i}_gate")(h)
        x = keras.layers.Add(name=f"b{i}_add")([x, h])
    model = keras.Model(inp, x)
    with pytest.raises(ValueError, match="'b1_gate' of type Activation.*maps zero to zero"):
        insert_blocks(model, [1], source="identity")
    assert len(insert_blocks(model, [1]).model.layers) == len(model.layers) + 3


# ----------------------------------------------------------------------------- keras.applications

# (model, blocks to insert after, expected stage depths afterwards)
APPLICATION_CASES = [
    ("ConvNeXtTiny", [0], [4, 3, 9, 3]),
    ("EfficientNetB0", [3], [1, 1, 3, 2, 3]),
    ("MobileNetV2", [2], [1, 3, 3, 2, 2]),
    ("ResNet50V2", [1], [4, 4, 6, 3]),
]


@pytest.mark.parametrize("name,positions,depths", APPLICATION_CASES)
def test_keras_applications_identity_insertion(name, positions, depths):
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3),
                                              classes=10, classifier_activation=None)
    x = _x((2, 32, 32, 3), seed=7) * 255.0
    result = insert_blocks(model, positions, source="identity")
    np.testing.assert_allclose(result.model(x), model(x), atol=1e-5, rtol=0)
    assert [s.depth for s in find_stages(result.model)] == depths
    assert set(result.plan) == {w.path for w in result.model.weights}


def test_densenet_insertion_widens_followers_with_zero_fan_in():
    model = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10,
                                           classifier_activation=None)
    x = _x((2, 32, 32, 3), seed=8) * 255.0
    before = model(x).numpy()
    # After conv2_block3 (inside the first dense block) and after
    # conv2_block6 (its last unit, so the transition layer widens).
    result = insert_blocks(model, [2, 5], source="identity")
    new = result.model
    scale = max(1.0, np.abs(before).max())
    assert np.abs(new(x).numpy() - before).max() <= 1e-5 * scale
    assert [s.depth for s in find_stages(new)] == [8, 12, 24, 16]
    plan = result.plan
    # conv2_block3 outputs 64 + 3 * 32 = 160 channels; the new unit's 32
    # channels follow them.
    new32 = [-1] * 32
    assert plan["conv2_block4_0_bn/gamma"].index[0].tolist() == list(range(160)) + new32
    # conv2_block5 read 192 old channels: 160, then the new ones, then 32 old.
    expect5 = list(range(160)) + new32 + list(range(160, 192))
    assert plan["conv2_block5_0_bn/moving_mean"].index[0].tolist() == expect5
    assert plan["conv2_block5_1_conv/kernel"].index[2].tolist() == expect5
    # The transition reads 256 old channels plus two new groups of 32.
    expect_pool = list(range(160)) + new32 + list(range(160, 256)) + new32
    assert plan["pool2_bn/gamma"].index[0].tolist() == expect_pool
    kernel = new.get_layer("pool2_conv").kernel.numpy()
    old_kernel = model.get_layer("pool2_conv").kernel.numpy()
    assert kernel.shape[2] == 320
    assert np.all(kernel[:, :, 160:192] == 0) and np.all(kernel[:, :, 288:] == 0)
    np.testing.assert_array_equal(kernel[:, :, :160], old_kernel[:, :, :160])
    np.testing.assert_array_equal(kernel[:, :, 192:288], old_kernel[:, :, 160:256])
    # The new unit reads 160 channels, its template (conv2_block3) 128: the
    # first 128 BN entries copy the template, the rest start fresh.
    gamma = new.get_layer("conv2_block3_ins1_0_bn").gamma.numpy()
    np.testing.assert_array_equal(gamma[:128], model.get_layer("conv2_block3_0_bn").gamma.numpy())
    assert np.all(gamma[128:] == 1.0)
    assert "pool2_conv" in result.info["widened"]
    with pytest.raises(ValueError, match="dense unit; removing it"):
        remove_blocks(model, [0])


def test_dense_insertion_stops_at_unsupported_layers():
    inp = keras.Input((4, 4, 8))
    x = inp
    for i in range(2):
        h = keras.layers.Conv2D(4, 1, name=f"d{i}_conv")(x)
        x = keras.layers.Concatenate(name=f"d{i}_concat")([x, h])
    y = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(y))
    assert [b.kind for b in find_blocks(model)] == ["dense", "dense"]
    with pytest.raises(NotImplementedError, match="'ln' \\(LayerNormalization\\)"):
        insert_blocks(model, [1])

"""ViT/DeiT: structure, parameter counts, identity blocks, resizing, saving, training."""
import keras
import numpy as np
import pytest

from kgrow import models, surgery
from kgrow.models import ClassToken, DropPath, PositionEmbedding

SMALL = dict(depth=2, dim=32, heads=4, patch_size=4)


def small_vit(image=16, **kwargs):
    return models.vit((image, image, 3), 5, **{**SMALL, **kwargs})


def vit_params(image, channels, patch, dim, heads, depth, mlp, num_classes, class_token):
    """Parameter count of a ViT from its definition."""
    tokens = (image // patch) ** 2 + int(class_token)
    embed = patch * patch * channels * dim + dim + tokens * dim + dim * int(class_token)
    key_dim = dim // heads
    attention = 3 * (dim * heads * key_dim + heads * key_dim) + heads * key_dim * dim + dim
    block = 2 * (2 * dim) + attention + dim * mlp + mlp + mlp * dim + dim
    return embed + depth * block + 2 * dim + dim * num_classes + num_classes


def test_small_vit_param_count_matches_formula():
    model = models.vit((16, 16, 3), 5, depth=2, dim=32, heads=4, patch_size=4,
                       mlp_ratio=2.0)
    assert model.count_params() == vit_params(16, 3, 4, 32, 4, 2, 64, 5, True)
    gap = models.vit((16, 16, 3), 5, depth=2, dim=32, heads=4, patch_size=4,
                     class_token=False)
    assert gap.count_params() == vit_params(16, 3, 4, 32, 4, 2, 128, 5, False)


def test_deit_tiny_matches_published_count():
    # DeiT-Ti/16 at 224 with 1000 classes has 5,717,416 parameters (timm).
    model = models.get("vit_tiny", (224, 224, 3), 1000)
    assert model.count_params() == 5_717_416
    assert sum(1 for l in model.layers if l.name.endswith("_attn")) == 12  # preset depth


def test_presets_build():
    for name, dim, heads in (("vit_tiny", 192, 3), ("vit_small", 384, 6),
                             ("vit_base", 768, 12)):
        # Depth overridden to keep the test fast; dim and heads come from the preset.
        model = models.get(name, (32, 32, 3), 10, depth=2, patch_size=16)
        assert model.output_shape == (None, 10)
        attn = model.get_layer("block1_attn")
        assert (attn.num_heads, attn.key_dim) == (heads, dim // heads)
        assert model.get_layer("block1_mlp1").units == 4 * dim
        assert model.get_layer("pos_embed").embeddings.shape == (5, dim)
        assert "block2_attn" not in {l.name for l in model.layers}


def test_forward_pass_and_block_names():
    model = small_vit()
    out = model(np.random.rand(3, 16, 16, 3).astype("float32")).numpy()
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    names = [l.name for l in model.layers]
    for i in range(2):
        parts = ["norm1", "attn", "add1", "norm2", "mlp1", "mlp2", "add2"]
        positions = [names.index(f"block{i}_{p}") for p in parts]
        assert positions == sorted(positions)
    assert isinstance(model.get_layer("block0_attn"), keras.layers.MultiHeadAttention)
    assert model.get_layer("block0_act").get_config()["activation"] == "gelu"
    assert model.get_layer("patch_embed").strides == (4, 4)
    assert model.get_layer("patch_tokens").output.shape == (None, 16, 32)
    assert model.get_layer("cls_token").output.shape == (None, 17, 32)


def test_gap_pooling_without_class_token():
    model = small_vit(class_token=False)
    names = {l.name for l in model.layers}
    assert "cls_token" not in names
    assert model.get_layer("pos_embed").embeddings.shape == (16, 32)
    assert model.get_layer("pool").mode == "mean"
    assert model(np.zeros((1, 16, 16, 3), "float32")).shape == (1, 5)


def test_zeroed_branch_ends_make_block_identity():
    model = small_vit(depth=3)
    attn = model.get_layer("block1_attn")
    out_proj = attn._output_dense
    out_proj.set_weights([np.zeros_like(w) for w in out_proj.get_weights()])
    mlp2 = model.get_layer("block1_mlp2")
    mlp2.set_weights([np.zeros_like(w) for w in mlp2.get_weights()])
    probe = keras.Model(model.input, [model.get_layer("block0_add2").output,
                                      model.get_layer("block1_add2").output])
    before, after = probe(np.random.rand(2, 16, 16, 3).astype("float32"))
    np.testing.assert_allclose(after.numpy(), before.numpy(), atol=1e-6)
    assert not np.allclose(before.numpy(), 0.0)


def test_drop_path_rates_are_linear_over_depth():
    model = small_vit(depth=5, drop_path=0.2)
    rates = [model.get_layer(f"block{i}_drop_path1").rate for i in range(5)]
    np.testing.assert_allclose(rates, [0.0, 0.05, 0.1, 0.15, 0.2])
    assert [model.get_layer(f"block{i}_drop_path2").rate for i in range(5)] == rates


def test_drop_path_is_identity_at_inference():
    x = np.random.rand(4, 16, 16, 3).astype("float32")
    plain = small_vit()
    dropped = small_vit(drop_path=0.5)
    dropped.set_weights(plain.get_weights())
    np.testing.assert_allclose(dropped(x, training=False), plain(x, training=False),
                               atol=1e-6)


def test_bad_vit_arguments():
    cases = [
        ({"input_shape": (18, 18, 3)}, ValueError, "multiple of the patch size 4"),
        ({"input_shape": (None, None, 3)}, ValueError, "known height"),
        ({"dim": 30}, ValueError, "divisible by `heads`"),
        ({"class_token": False, "pool": "token"}, ValueError, "class_token=True"),
        ({"pool": "max"}, ValueError, "pool"),
        ({"drop_path": 1.0}, ValueError, "drop_path"),
        ({"depth": 0}, ValueError, "depth"),
        ({"mlp_ratio": 0}, ValueError, "mlp_ratio"),
    ]
    for kwargs, error, match in cases:
        args = {"input_shape": (16, 16, 3), **SMALL, **kwargs}
        with pytest.raises(error, match=match):
            models.vit(num_classes=5, **args)


def _randomize_position_embedding(model):
    layer = model.get_layer("pos_embed")
    layer.set_weights([np.random.normal(size=layer.embeddings.shape).astype("float32")])


def test_resize_vit_same_grid_same_function():
    model = small_vit(drop_path=0.1)
    _randomize_position_embedding(model)
    model.get_layer("block0_norm1").trainable = False
    resized = models.resize_vit(model, 16).model
    assert resized is not model
    x = np.random.rand(2, 16, 16, 3).astype("float32")
    np.testing.assert_allclose(resized(x), model(x), atol=1e-5)
    assert resized.get_layer("block0_norm1").trainable is False


def test_resize_vit_new_grid():
    model = small_vit()
    _randomize_position_embedding(model)
    old = model.get_layer("pos_embed").embeddings.numpy()
    result = models.resize_vit(model, (24, 32))
    resized = result.model
    pos = resized.get_layer("pos_embed")
    assert pos.grid == (6, 8)
    assert pos.embeddings.shape == (1 + 48, 32)
    np.testing.assert_array_equal(pos.embeddings.numpy()[0], old[0])  # class token row
    np.testing.assert_allclose(
        pos.embeddings.numpy(),
        models.interpolate_position_embedding(old, (4, 4), (6, 8)), atol=1e-6)
    for name in ("patch_embed", "cls_token", "block1_attn", "block1_mlp2", "head"):
        for a, b in zip(resized.get_layer(name).get_weights(),
                        model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert resized.input_shape == (None, 24, 32, 3)
    assert resized(np.zeros((2, 24, 32, 3), "float32")).shape == (2, 5)
    # The plan: every variable from its namesake, the position embedding resampled.
    plan = result.plan
    assert sorted(plan) == sorted(v.path for v in resized.weights)
    assert result.info["resampled"] == [pos.embeddings.path]
    t = plan[pos.embeddings.path]
    assert t.resample.old_grid == (4, 4) and t.resample.new_grid == (6, 8)
    np.testing.assert_allclose(t.gather(old, pos.embeddings.shape), pos.embeddings.numpy(),
                               atol=1e-6)
    assert not t.new_mask(pos.embeddings.shape).any()
    assert all(plan[p].is_identity for p in plan if p != pos.embeddings.path)
    assert surgery.TransferPlan.from_dict(plan.to_dict())[pos.embeddings.path] == t


def test_resize_vit_errors():
    model = small_vit()
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        models.resize_vit(model, 18)
    with pytest.raises(ValueError, match="no PositionEmbedding"):
        models.resize_vit(models.resnet_cifar(8, (16, 16, 3), 2), 32)
    with pytest.raises(ValueError, match="method"):
        models.resize_vit(model, 32, method="cubic")


def test_save_and_load_round_trip(tmp_path):
    model = small_vit(drop_path=0.1)
    _randomize_position_embedding(model)
    path = str(tmp_path / "vit.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.rand(2, 16, 16, 3).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    assert isinstance(loaded.get_layer("cls_token"), ClassToken)
    assert isinstance(loaded.get_layer("pos_embed"), PositionEmbedding)
    assert loaded.get_layer("pos_embed").grid == (4, 4)
    assert isinstance(loaded.get_layer("block1_drop_path2"), DropPath)
    assert loaded.get_layer("block1_drop_path2").rate == pytest.approx(0.1)
    # A resized model (new grid) saves and loads too.
    resized = models.resize_vit(model, 24).model
    resized.save(path)
    again = keras.models.load_model(path)
    y = np.random.rand(2, 24, 24, 3).astype("float32")
    np.testing.assert_allclose(again(y), resized(y), atol=1e-6)


def test_two_step_fit_under_mirrored_strategy(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model = small_vit(depth=1, drop_path=0.2, dropout=0.1)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                      loss="categorical_crossentropy")
    x = np.random.rand(8, 16, 16, 3).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 5, 5)
    before = model.get_layer("block0_mlp2").kernel.numpy().copy()
    history = model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(before, model.get_layer("block0_mlp2").kernel.numpy())

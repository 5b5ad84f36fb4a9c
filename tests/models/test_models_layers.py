"""Custom layers and position-embedding interpolation."""
import keras
import numpy as np
import pytest

from kgrow.models import (ClassToken, DropPath, PositionEmbedding, TokenPooling,
                          interpolate_position_embedding)


# ---------------------------------------------------------------- interpolation
def test_nearest_upsampling_repeats_each_cell_and_keeps_class_row():
    weights = np.arange(5 * 3, dtype="float32").reshape(5, 3)  # class row + 2x2 grid
    out = interpolate_position_embedding(weights, (2, 2), (4, 4), method="nearest")
    assert out.shape == (17, 3)
    np.testing.assert_array_equal(out[0], weights[0])
    grid = out[1:].reshape(4, 4, 3)
    old = weights[1:].reshape(2, 2, 3)
    for i in range(4):
        for j in range(4):
            np.testing.assert_array_equal(grid[i, j], old[i // 2, j // 2])


def test_constant_embedding_stays_constant():
    weights = np.concatenate([np.full((1, 4), 7.0), np.full((16, 4), -1.5)]).astype("float32")
    for method in ("bicubic", "bilinear", "area"):
        for new_grid in ((6, 6), (2, 3)):
            out = interpolate_position_embedding(weights, (4, 4), new_grid, method=method)
            assert out.shape == (1 + new_grid[0] * new_grid[1], 4)
            assert out[0].tolist() == [7.0] * 4
            np.testing.assert_allclose(out[1:], -1.5, atol=1e-5)


def test_bilinear_upsampling_of_a_ramp():
    # Half-pixel centres: new row i samples old coordinate (i + 0.5) / 2 - 0.5,
    # clamped to [0, 1], so rows are [0, 0.25, 0.75, 1] times the ramp step.
    column = np.array([[0.0], [4.0]], dtype="float32")
    weights = np.repeat(column, 2, axis=1).reshape(4, 1)  # 2x2 grid, no prefix
    out = interpolate_position_embedding(weights, (2, 2), (4, 4), method="bilinear")
    np.testing.assert_allclose(out.reshape(4, 4)[:, 0], [0.0, 1.0, 3.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(out.reshape(4, 4)[:, 3], [0.0, 1.0, 3.0, 4.0], atol=1e-5)


def test_same_grid_returns_an_equal_copy_and_keeps_rank():
    weights = np.random.rand(1, 10, 2).astype("float32")  # (1, 1 + 3x3, dim)
    out = interpolate_position_embedding(weights, 3, 3)
    np.testing.assert_array_equal(out, weights)
    assert out is not weights
    bigger = interpolate_position_embedding(weights, 3, (5, 4))
    assert bigger.shape == (1, 21, 2)
    np.testing.assert_array_equal(bigger[0, 0], weights[0, 0])


def test_interpolation_errors():
    cases = [
        (np.zeros((3, 2)), "fewer than the 4 patches"),
        (np.zeros((2, 5, 2)), "leading axis of 1"),
        (np.zeros((5,)), r"\(tokens, dim\)"),
    ]
    for weights, match in cases:
        with pytest.raises(ValueError, match=match):
            interpolate_position_embedding(weights, (2, 2), (3, 3))
    with pytest.raises(ValueError, match="bicubic"):
        interpolate_position_embedding(np.zeros((4, 2)), 2, 3, method="spline")


# ---------------------------------------------------------------- layers
def test_class_token_is_prepended():
    layer = ClassToken()
    x = np.random.rand(2, 3, 4).astype("float32")
    out = layer(x).numpy()
    assert out.shape == (2, 4, 4)
    np.testing.assert_array_equal(out[:, 1:], x)
    np.testing.assert_array_equal(out[0, 0], layer.token.numpy())
    np.testing.assert_array_equal(out[1, 0], layer.token.numpy())


def test_position_embedding_adds_and_checks_token_count():
    layer = PositionEmbedding(grid=(2, 3), has_class_token=False)
    x = np.random.rand(2, 6, 4).astype("float32")
    out = layer(x).numpy()
    np.testing.assert_allclose(out - x, np.broadcast_to(layer.embeddings.numpy(), x.shape),
                               atol=1e-6)
    assert layer.num_tokens == 6
    with pytest.raises(ValueError, match="expects 7 tokens, but the input has 6"):
        PositionEmbedding(grid=(2, 3), has_class_token=True)(x)


def test_token_pooling_modes():
    x = np.arange(2 * 3 * 2, dtype="float32").reshape(2, 3, 2)
    np.testing.assert_array_equal(TokenPooling("class", 1)(x).numpy(), x[:, 0])
    np.testing.assert_allclose(TokenPooling("mean", 1)(x).numpy(), x[:, 1:].mean(axis=1))
    np.testing.assert_allclose(TokenPooling("mean", 0)(x).numpy(), x.mean(axis=1))
    with pytest.raises(ValueError, match="needs a class token"):
        TokenPooling("class", 0)
    with pytest.raises(ValueError, match="mode"):
        TokenPooling("max", 1)


def test_drop_path_training_drops_whole_samples():
    rate = 0.25
    x = np.ones((4000, 3, 2), "float32")
    out = DropPath(rate, seed=3)(x, training=True).numpy()
    per_sample = out.reshape(4000, -1)
    kept = per_sample[:, 0] != 0
    # Every sample is either fully dropped or fully kept and rescaled.
    np.testing.assert_allclose(per_sample[kept], 1.0 / (1.0 - rate), rtol=1e-6)
    np.testing.assert_array_equal(per_sample[~kept], 0.0)
    assert abs(kept.mean() - (1.0 - rate)) < 0.03
    np.testing.assert_array_equal(DropPath(rate)(x, training=False), x)
    for bad in (1.0, -0.1, 2):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            DropPath(bad)


def test_config_round_trip():
    layers = [ClassToken(), PositionEmbedding((2, 5), has_class_token=False),
              DropPath(0.3, seed=1), TokenPooling("mean", 2)]
    for layer in layers:
        config = keras.saving.serialize_keras_object(layer)
        assert config["registered_name"].startswith("kgrow>")
        clone = keras.saving.deserialize_keras_object(config)
        assert type(clone) is type(layer)
        assert clone.get_config() == layer.get_config()


# ---------------------------------------------------------------- elastic position embedding
@pytest.mark.parametrize("prefix", [True, False])
def test_elastic_position_embedding_resamples_in_graph_like_interpolation(prefix):
    import tensorflow as tf
    from kgrow.models import ElasticPositionEmbedding
    layer = ElasticPositionEmbedding(grid=(4, 4), has_class_token=prefix)
    layer.build((None, None, 8))
    table = np.random.default_rng(1).normal(size=layer.embeddings.shape).astype("float32")
    layer.set_weights([table])
    # Token count unknown while tracing: one trace serves every grid.
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None, 8), tf.float32)])
    for grid in ((2, 2), (3, 3), (4, 4), (6, 6)):
        out = fn(tf.zeros((1, int(prefix) + grid[0] * grid[1], 8))).numpy()[0]
        expected = interpolate_position_embedding(table, (4, 4), grid, method="bicubic")
        np.testing.assert_allclose(out, expected, atol=1e-5)
        if grid == (4, 4):
            np.testing.assert_array_equal(out, table)
    assert fn.experimental_get_tracing_count() == 1
    with pytest.raises(ValueError, match="aspect ratio"):
        ElasticPositionEmbedding(grid=(2, 4))(np.zeros((1, 1 + 9, 8), "float32"))


def test_vit_with_elastic_embedding_equals_resize_vit_at_a_lower_resolution():
    from kgrow.models import ElasticPositionEmbedding, resize_vit, vit
    from kgrow.surgery import copy_layer, rebuild
    model = vit((16, 16, 3), 3, depth=1, dim=16, heads=2, patch_size=4)

    def elastic(op):
        if isinstance(op, PositionEmbedding):
            return ElasticPositionEmbedding.from_config(op.get_config())
        return copy_layer(op)

    any_size = rebuild(model, operation_fn=elastic, input_shapes=[(None, None, 3)])
    for layer in model.layers:
        any_size.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(any_size(x), resize_vit(model, 8).model(x), atol=1e-5)
    x16 = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(any_size(x16), model(x16))

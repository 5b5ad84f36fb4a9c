"""Serializable layers used by the kgrow vision transformers.

All layers here are registered with
``keras.saving.register_keras_serializable(package="kgrow")``, so a model that
uses them saves with ``model.save("m.keras")`` and loads with
``keras.models.load_model("m.keras")`` once ``kgrow.models`` has been imported.

* ``ClassToken`` prepends one learned token to a token sequence (ViT / DeiT).
* ``PositionEmbedding`` adds a learned embedding laid out on a patch grid; the
  grid is part of the config, so a model can be rebuilt for another input
  resolution and the weights moved over with ``interpolate_position_embedding``.
* ``DropPath`` is per-sample stochastic depth on a residual branch (identity at
  inference).
* ``TokenPooling`` turns the token sequence into one vector (class token or
  mean of the patch tokens).
"""
import keras
import numpy as np
from keras import ops

from kgrow.models import _checks

_PACKAGE = "kgrow"

#: Interpolation methods accepted by ``interpolate_position_embedding``.
INTERPOLATION_METHODS = ("bicubic", "bilinear", "nearest", "lanczos3", "lanczos5", "area")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to a sequence of tokens.

    Input ``(batch, tokens, dim)``, output ``(batch, tokens + 1, dim)``; the
    class token is at index 0.

    Args:
        initializer: Initializer of the token (DeiT: truncated normal, std 0.02).
        **kwargs: Standard layer arguments (``name``, ``dtype``, ...).

    Example:
        >>> import numpy as np
        >>> layer = ClassToken()
        >>> tuple(layer(np.zeros((2, 4, 8), "float32")).shape)
        (2, 5, 8)
    """

    def __init__(self, initializer=None, **kwargs):
        super().__init__(**kwargs)
        if initializer is None:
            initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.initializer = _checks.new_initializer(initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError("ClassToken expects inputs (batch, tokens, dim) with a "
                             f"known dim, got shape {tuple(input_shape)}.")
        self.token = self.add_weight(name="token", shape=(input_shape[-1],),
                                     initializer=self.initializer)

    def call(self, inputs):
        dim = self.token.shape[0]
        token = ops.reshape(ops.cast(self.token, inputs.dtype), (1, 1, dim))
        token = ops.broadcast_to(token, (ops.shape(inputs)[0], 1, dim))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding laid out on a patch grid.

    The weight ``embeddings`` has shape ``(prefix + gh * gw, dim)``: the
    ``prefix`` rows (1 with a class token, else 0) come first, then the patch
    positions in row-major order, matching a ``Conv2D`` patch embedding reshaped
    to tokens.

    The table may be stored on another grid than the one the inputs have
    (``table_grid``): the forward pass then resamples it to ``grid`` (the
    class-token row kept), differentiably, so training at a lower resolution
    updates the full-resolution table and going back to ``table_grid`` gives
    exactly the table that was trained (AutoProg's number-of-patches growth).

    Args:
        grid: Patch grid ``(gh, gw)`` of the inputs (an int means square).
        has_class_token: Whether the sequence starts with a class token whose
            embedding row is kept as is when the grid is resized.
        initializer: Initializer of the embedding (ViT: truncated normal, std 0.02).
        table_grid: Grid the ``embeddings`` table is laid out on (default:
            ``grid``).
        interpolation: How the table is resampled in the forward pass when
            ``table_grid != grid`` (one of ``INTERPOLATION_METHODS``).
        **kwargs: Standard layer arguments.

    Example:
        >>> import numpy as np
        >>> layer = PositionEmbedding(grid=(2, 3), has_class_token=True)
        >>> tuple(layer(np.zeros((4, 7, 16), "float32")).shape)
        (4, 7, 16)
        >>> tuple(layer.embeddings.shape)
        (7, 16)
    """

    def __init__(self, grid, has_class_token=True, initializer=None, table_grid=None,
                 interpolation="bicubic", **kwargs):
        super().__init__(**kwargs)
        self.grid = _checks.pair("grid", grid)
        self.table_grid = self.grid if table_grid is None else _checks.pair("table_grid",
                                                                           table_grid)
        self.interpolation = _checks.choice("interpolation", interpolation,
                                            INTERPOLATION_METHODS)
        if not isinstance(has_class_token, bool):
            raise TypeError(f"`has_class_token` must be a bool, got {has_class_token!r}.")
        self.has_class_token = has_class_token
        if initializer is None:
            initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.initializer = _checks.new_initializer(initializer)

    @property
    def num_prefix_tokens(self):
        """Number of non-patch rows at the start (1 with a class token)."""
        return int(self.has_class_token)

    @property
    def num_tokens(self):
        """Sequence length this layer expects: prefix + gh * gw."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError("PositionEmbedding expects inputs (batch, tokens, dim) "
                             f"with a known dim, got shape {tuple(input_shape)}.")
        if input_shape[1] is not None and input_shape[1] != self.num_tokens:
            raise ValueError(
                f"PositionEmbedding '{self.name}' has grid {self.grid} and "
                f"has_class_token={self.has_class_token}, so it expects "
                f"{self.num_tokens} tokens, but the input has {input_shape[1]}. "
                "Check that the image size is patch_size * grid.")
        rows = self.num_prefix_tokens + self.table_grid[0] * self.table_grid[1]
        self.embeddings = self.add_weight(
            name="embeddings", shape=(rows, input_shape[-1]), initializer=self.initializer)

    def table(self):
        """The embedding on the input grid: the table, resampled when its grid differs."""
        table = self.embeddings
        if self.table_grid == self.grid:
            return table
        prefix = self.num_prefix_tokens
        patches = ops.reshape(table[prefix:], (1, *self.table_grid, -1))
        resized = ops.image.resize(patches, self.grid, interpolation=self.interpolation,
                                   antialias=False, data_format="channels_last")
        resized = ops.reshape(resized, (self.grid[0] * self.grid[1], -1))
        return ops.concatenate([table[:prefix], resized], axis=0) if prefix else resized

    def call(self, inputs):
        return inputs + ops.cast(self.table(), inputs.dtype)[None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(grid=list(self.grid), has_class_token=self.has_class_token,
                      initializer=keras.initializers.serialize(self.initializer))
        if self.table_grid != self.grid:
            config.update(table_grid=list(self.table_grid), interpolation=self.interpolation)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample.

    In training each sample's branch output is zeroed with probability
    ``rate`` and the kept ones are scaled by ``1 / (1 - rate)``, so the
    expectation is unchanged; at inference the layer is the identity. Put it on
    the residual branch just before the ``Add``.

    Args:
        rate: Drop probability in [0, 1).
        seed: Optional int seed of the drop mask.
        **kwargs: Standard layer arguments.

    Example:
        >>> import numpy as np
        >>> x = np.ones((3, 4, 8), "float32")
        >>> bool(np.all(DropPath(0.5)(x, training=False) == x))
        True
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _checks.rate("rate", rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        # floor(keep + U[0,1)) is 1 with probability `keep`, else 0.
        mask = ops.floor(keep + noise)
        return inputs * (mask / keep)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPooling(keras.layers.Layer):
    """Reduces a token sequence ``(batch, tokens, dim)`` to ``(batch, dim)``.

    Args:
        mode: ``"class"`` takes token 0 (the class token, ViT/DeiT);
            ``"mean"`` averages the patch tokens, skipping the first
            ``num_prefix_tokens`` (global average pooling).
        num_prefix_tokens: Leading non-patch tokens ignored by ``"mean"``.
        **kwargs: Standard layer arguments.

    Example:
        >>> import numpy as np
        >>> x = np.arange(6, dtype="float32").reshape(1, 3, 2)
        >>> TokenPooling("mean", num_prefix_tokens=1)(x).numpy().tolist()
        [[3.0, 4.0]]
    """

    MODES = ("class", "mean")

    def __init__(self, mode="class", num_prefix_tokens=0, **kwargs):
        super().__init__(**kwargs)
        self.mode = _checks.choice("mode", mode, self.MODES)
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) \
                or num_prefix_tokens < 0:
            raise ValueError("`num_prefix_tokens` must be an int >= 0, got "
                             f"{num_prefix_tokens!r}.")
        if mode == "class" and num_prefix_tokens == 0:
            raise ValueError("TokenPooling(mode='class') needs a class token "
                             "(num_prefix_tokens >= 1); use mode='mean' otherwise.")
        self.num_prefix_tokens = num_prefix_tokens

    def call(self, inputs):
        if self.mode == "class":
            return inputs[:, 0]
        return ops.mean(inputs[:, self.num_prefix_tokens:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, num_prefix_tokens=self.num_prefix_tokens)
        return config


def interpolate_position_embedding(weights, old_grid, new_grid, method="bicubic"):
    """Resamples a grid position embedding to another patch grid.

    The rows before the ``gh * gw`` patch rows (the class token, or any other
    prefix tokens) are kept unchanged; the patch rows are reshaped to the old
    grid, resized as an image with ``dim`` channels, and flattened back in
    row-major order. Same grid in and out returns an unchanged copy.

    Args:
        weights: Array ``(prefix + gh * gw, dim)`` or ``(1, prefix + gh * gw, dim)``.
        old_grid: ``(gh, gw)`` the weights are laid out on (int = square).
        new_grid: Target ``(gh', gw')`` (int = square).
        method: One of ``INTERPOLATION_METHODS`` (AutoProg uses bicubic).

    Returns:
        A NumPy array ``(prefix + gh' * gw', dim)`` (with the leading 1 if the
        input had it), in the input's dtype.

    Example:
        >>> import numpy as np
        >>> w = np.arange(5 * 2, dtype="float32").reshape(5, 2)  # 1 class row + 2x2 grid
        >>> interpolate_position_embedding(w, (2, 2), (4, 4), method="nearest").shape
        (17, 2)
    """
    old_grid = _checks.pair("old_grid", old_grid)
    new_grid = _checks.pair("new_grid", new_grid)
    _checks.choice("method", method, INTERPOLATION_METHODS)
    array = np.asarray(weights)
    batched = array.ndim == 3
    if batched:
        if array.shape[0] != 1:
            raise ValueError("A 3-D position embedding must have a leading axis of 1, "
                             f"got shape {array.shape}.")
        array = array[0]
    if array.ndim != 2:
        raise ValueError("Position embedding weights must be (tokens, dim) or "
                         f"(1, tokens, dim), got shape {np.shape(weights)}.")
    num_patches = old_grid[0] * old_grid[1]
    prefix = array.shape[0] - num_patches
    if prefix < 0:
        raise ValueError(f"Position embedding has {array.shape[0]} rows, fewer than "
                         f"the {num_patches} patches of grid {old_grid}.")
    if old_grid == new_grid:
        result = array.copy()
    else:
        patches = array[prefix:].reshape(1, old_grid[0], old_grid[1], -1)
        resized = ops.image.resize(patches.astype("float32"), new_grid,
                                   interpolation=method, antialias=False,
                                   data_format="channels_last")
        resized = ops.convert_to_numpy(resized).reshape(new_grid[0] * new_grid[1], -1)
        result = np.concatenate([array[:prefix], resized.astype(array.dtype)], axis=0)
    return result[None] if batched else result


def _grid_of_tokens(num_patches, grid):
    """Patch grid with `num_patches` cells and the aspect ratio of `grid` (Python ints)."""
    rows = int(round((num_patches * grid[0] / grid[1]) ** 0.5))
    if rows < 1 or num_patches % rows or rows * grid[1] != (num_patches // rows) * grid[0]:
        raise ValueError(
            f"{num_patches} patch tokens do not form a grid with the aspect ratio of {grid}; "
            "ElasticPositionEmbedding resamples to grids that keep the table's aspect ratio.")
    return rows, num_patches // rows


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ElasticPositionEmbedding(PositionEmbedding):
    """A `PositionEmbedding` that accepts any patch grid of its aspect ratio.

    When the token sequence has as many tokens as the table, this adds the
    table exactly as `PositionEmbedding` does. Otherwise the table is
    resampled inside the graph to the input's grid with the same resize as
    `interpolate_position_embedding` (class-token row kept), so gradients
    reach the stored table. The token count may be unknown when the graph is
    traced (images resized in the graph, e.g. by an elastic supernet), so one
    trace serves every resolution. The input grid is derived from the token
    count and the table's aspect ratio (`(gh * s, gw * s)`).

    Args:
        grid, has_class_token, initializer: as `PositionEmbedding`; `grid` is
            the grid the table is laid out on.
        interpolation: resampling method (`INTERPOLATION_METHODS`).
        **kwargs: Standard layer arguments.

    Example:
        >>> import numpy as np
        >>> layer = ElasticPositionEmbedding(grid=(2, 2), has_class_token=True)
        >>> tuple(layer(np.zeros((1, 10, 4), "float32")).shape)  # a 3x3 grid
        (1, 10, 4)
    """

    def __init__(self, grid, has_class_token=True, initializer=None, interpolation="bicubic",
                 **kwargs):
        super().__init__(grid, has_class_token=has_class_token, initializer=initializer,
                         **kwargs)
        self.interpolation = _checks.choice("interpolation", interpolation,
                                            INTERPOLATION_METHODS)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError("ElasticPositionEmbedding expects inputs (batch, tokens, dim) "
                             f"with a known dim, got shape {tuple(input_shape)}.")
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.num_tokens, input_shape[-1]),
            initializer=self.initializer)

    def _resampled(self, table, new_grid):
        import tensorflow as tf  # in-graph sizes need tf.image.resize
        prefix = self.num_prefix_tokens
        patches = tf.reshape(table[prefix:], (1, self.grid[0], self.grid[1], -1))
        resized = tf.image.resize(patches, new_grid, method=self.interpolation,
                                  antialias=False)
        resized = tf.reshape(resized, (-1, table.shape[-1]))
        return tf.concat([table[:prefix], resized], axis=0) if prefix else resized

    def call(self, inputs):
        import tensorflow as tf
        table = ops.cast(self.embeddings, inputs.dtype)
        tokens = inputs.shape[1]
        if tokens is not None:  # static: decided while tracing
            if tokens == self.num_tokens:
                return inputs + table[None]
            grid = _grid_of_tokens(tokens - self.num_prefix_tokens, self.grid)
            return inputs + self._resampled(table, grid)[None]
        tokens = tf.shape(inputs)[1]
        patches = tf.cast(tokens - self.num_prefix_tokens, tf.float32)
        rows = tf.cast(tf.round(tf.sqrt(patches * self.grid[0] / self.grid[1])), tf.int32)
        cols = (tokens - self.num_prefix_tokens) // tf.maximum(rows, 1)
        table = tf.cond(tf.equal(tokens, self.num_tokens), lambda: table,
                        lambda: self._resampled(table, tf.stack([rows, cols])))
        return inputs + table[None]

    def get_config(self):
        config = super().get_config()
        config["interpolation"] = self.interpolation
        return config

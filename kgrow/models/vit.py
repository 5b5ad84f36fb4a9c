"""Vision transformers (ViT, DeiT) as Keras Functional models.

The network: a ``Conv2D`` patch embedding (kernel = stride = patch size)
reshaped to tokens, an optional class token (DeiT), a learned position
embedding on the patch grid, ``depth`` pre-norm encoder blocks, a final
LayerNorm, pooling (class token or mean of the patch tokens) and a dense head.

Layer names (for graph surgery, freezing and FLOPs reports):

* embedding: ``patch_embed`` (Conv2D), ``patch_tokens`` (Reshape),
  ``cls_token`` (``ClassToken``, if any), ``pos_embed``
  (``PositionEmbedding``), ``pos_drop``;
* encoder block ``i`` (from 0), in order::

      block{i}_norm1 -> block{i}_attn -> block{i}_proj_drop -> block{i}_drop_path1
          -> block{i}_add1 (+ block input)
      block{i}_norm2 -> block{i}_mlp1 -> block{i}_act (GELU) -> block{i}_mlp_drop1
          -> block{i}_mlp2 -> block{i}_mlp_drop2 -> block{i}_drop_path2
          -> block{i}_add2 (+ add1 output; the block output)

  ``block{i}_attn`` is a ``keras.layers.MultiHeadAttention`` with
  ``key_dim = dim // heads`` called as self-attention;
* head: ``final_norm``, ``pool`` (``TokenPooling``), ``head`` (Dense, logits),
  ``predictions`` (Activation).

Where the residual branches end: the attention branch ends at the output
projection of ``block{i}_attn`` (its ``attention_output`` EinsumDense kernel
and bias), the MLP branch at ``block{i}_mlp2`` (kernel and bias). Only
Dropout and ``DropPath`` follow them, both of which map zero to zero, so a
block whose two end layers have zero weights is exactly the identity; depth
growth relies on this.

Stochastic depth rates grow linearly over the blocks,
``drop_path_rates(drop_path, depth)`` (block 0 gets 0, the last block gets
``drop_path``), as in DeiT.
"""
import keras
import numpy as np

from kgrow.models import _checks
from kgrow.models.layers import (
    INTERPOLATION_METHODS, ClassToken, DropPath, PositionEmbedding, TokenPooling,
    interpolate_position_embedding)

#: Preset sizes (DeiT): embedding dim, attention heads, default depth.
VIT_PRESETS = {
    "vit_tiny": {"dim": 192, "heads": 3, "depth": 12},
    "vit_small": {"dim": 384, "heads": 6, "depth": 12},
    "vit_base": {"dim": 768, "heads": 12, "depth": 12},
}
#: Accepted ``pool`` values.
POOLS = ("token", "gap")


def drop_path_rates(max_rate, depth):
    """Per-block stochastic-depth rates ``linspace(0, max_rate, depth)``.

    Example:
        >>> drop_path_rates(0.1, 3)
        [0.0, 0.05, 0.1]
    """
    max_rate = _checks.rate("drop_path", max_rate)
    depth = _checks.positive_int("depth", depth)
    return [float(r) for r in np.linspace(0.0, max_rate, depth)]


def _dense_init():
    # ViT/DeiT initialise linear layers with a truncated normal of std 0.02.
    return keras.initializers.TruncatedNormal(stddev=0.02)


def encoder_block(x, index, *, heads, mlp_dim, dropout, attention_dropout,
                  drop_path, layer_norm_epsilon):
    """One pre-norm transformer block named ``block{index}_*`` (see module doc).

    Args:
        x: Token tensor ``(batch, tokens, dim)``.
        index: Block number used in the layer names.
        heads: Attention heads; ``dim`` must be divisible by it.
        mlp_dim: Hidden units of the MLP.
        dropout: Dropout after the attention projection and in the MLP.
        attention_dropout: Dropout on the attention probabilities.
        drop_path: Stochastic-depth rate of both residual branches.
        layer_norm_epsilon: LayerNormalization epsilon.

    Returns:
        The block output tensor, same shape as ``x``.
    """
    dim = x.shape[-1]
    p = f"block{index}"
    h = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=f"{p}_norm1")(x)
    h = keras.layers.MultiHeadAttention(
        num_heads=heads, key_dim=dim // heads, dropout=attention_dropout,
        kernel_initializer=_dense_init(), bias_initializer="zeros",
        name=f"{p}_attn")(h, h)
    h = keras.layers.Dropout(dropout, name=f"{p}_proj_drop")(h)
    h = DropPath(drop_path, name=f"{p}_drop_path1")(h)
    x = keras.layers.Add(name=f"{p}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=f"{p}_norm2")(x)
    h = keras.layers.Dense(mlp_dim, kernel_initializer=_dense_init(), name=f"{p}_mlp1")(h)
    h = keras.layers.Activation("gelu", name=f"{p}_act")(h)
    h = keras.layers.Dropout(dropout, name=f"{p}_mlp_drop1")(h)
    h = keras.layers.Dense(dim, kernel_initializer=_dense_init(), name=f"{p}_mlp2")(h)
    h = keras.layers.Dropout(dropout, name=f"{p}_mlp_drop2")(h)
    h = DropPath(drop_path, name=f"{p}_drop_path2")(h)
    return keras.layers.Add(name=f"{p}_add2")([x, h])


def patch_grid(image_size, patch_size):
    """Patch grid ``(gh, gw)`` of an image; the size must be a multiple of the patch.

    Example:
        >>> patch_grid((32, 48), 16)
        (2, 3)
    """
    image_size = _checks.pair("image_size", image_size)
    patch_size = _checks.pair("patch_size", patch_size)
    for axis, size, patch in zip(("height", "width"), image_size, patch_size):
        if size % patch:
            raise ValueError(f"Image {axis} {size} is not a multiple of the patch size "
                             f"{patch}; use an image size of k * {patch}.")
    return image_size[0] // patch_size[0], image_size[1] // patch_size[1]


def vit(input_shape=(224, 224, 3), num_classes=1000, *, depth=12, dim=768, heads=12,
        mlp_ratio=4.0, patch_size=16, dropout=0.0, attention_dropout=0.0,
        drop_path=0.0, class_token=True, pool=None, layer_norm_epsilon=1e-6,
        classifier_activation="softmax", name="vit"):
    """Vision transformer with pre-norm blocks (ViT; DeiT when ``class_token``).

    Args:
        input_shape: ``(height, width, channels)``; height and width must be
            known multiples of ``patch_size`` (they fix the patch grid).
        num_classes: Size of the classification head.
        depth: Number of encoder blocks.
        dim: Token embedding size; must be divisible by ``heads``.
        heads: Attention heads (``key_dim = dim // heads``).
        mlp_ratio: MLP hidden size is ``int(dim * mlp_ratio)``.
        patch_size: Patch side (int) or ``(ph, pw)``.
        dropout: Dropout after the position embedding, the attention
            projection and in the MLP.
        attention_dropout: Dropout on attention probabilities.
        drop_path: Maximum stochastic-depth rate (linear over blocks).
        class_token: Prepend a learned class token (ViT/DeiT).
        pool: ``"token"`` (use the class token) or ``"gap"`` (mean of the
            patch tokens); default ``"token"`` with a class token, else ``"gap"``.
        layer_norm_epsilon: LayerNormalization epsilon (1e-6 as in ViT/DeiT).
        classifier_activation: ``"softmax"`` (default) or ``None`` for logits.
        name: Model name.

    Returns:
        An uncompiled Functional ``keras.Model``.

    Example:
        >>> model = vit((32, 32, 3), 10, depth=2, dim=32, heads=2, patch_size=8)
        >>> model.output_shape, model.get_layer("pos_embed").grid
        ((None, 10), (4, 4))
    """
    input_shape = _checks.image_shape(input_shape, allow_unknown_spatial=False)
    patch_size = _checks.pair("patch_size", patch_size)
    grid = patch_grid(input_shape[:2], patch_size)
    num_classes, activation = _checks.classifier(num_classes, classifier_activation)
    depth = _checks.positive_int("depth", depth)
    dim = _checks.positive_int("dim", dim)
    heads = _checks.positive_int("heads", heads)
    if dim % heads:
        raise ValueError(f"`dim` ({dim}) must be divisible by `heads` ({heads}) so "
                         "that every head gets dim // heads channels.")
    mlp_dim = int(dim * _checks.positive_float("mlp_ratio", mlp_ratio))
    if mlp_dim < 1:
        raise ValueError(f"dim * mlp_ratio = {dim * mlp_ratio} gives an empty MLP.")
    dropout = _checks.rate("dropout", dropout)
    attention_dropout = _checks.rate("attention_dropout", attention_dropout)
    rates = drop_path_rates(drop_path, depth)
    if not isinstance(class_token, bool):
        raise TypeError(f"`class_token` must be a bool, got {class_token!r}.")
    pool = _checks.choice("pool", pool or ("token" if class_token else "gap"), POOLS)
    if pool == "token" and not class_token:
        raise ValueError("pool='token' needs class_token=True; use pool='gap' for a "
                         "model without a class token.")
    layer_norm_epsilon = _checks.positive_float("layer_norm_epsilon", layer_norm_epsilon)

    inputs = keras.Input(shape=input_shape, name="input")
    x = keras.layers.Conv2D(dim, patch_size, strides=patch_size, padding="valid",
                            name="patch_embed")(inputs)
    # -1 rather than the token count keeps the config valid for other grids.
    x = keras.layers.Reshape((-1, dim), name="patch_tokens")(x)
    if class_token:
        x = ClassToken(name="cls_token")(x)
    x = PositionEmbedding(grid, has_class_token=class_token, name="pos_embed")(x)
    x = keras.layers.Dropout(dropout, name="pos_drop")(x)
    for i, rate in enumerate(rates):
        x = encoder_block(x, i, heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                          attention_dropout=attention_dropout, drop_path=rate,
                          layer_norm_epsilon=layer_norm_epsilon)
    x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="final_norm")(x)
    x = TokenPooling("class" if pool == "token" else "mean",
                     num_prefix_tokens=int(class_token), name="pool")(x)
    x = keras.layers.Dense(num_classes, kernel_initializer=_dense_init(),
                           name="head")(x)
    outputs = keras.layers.Activation(activation, name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def _is_functional(model) -> bool:
    # Functional models (not Sequential) have a graph of nodes.
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth") and not \
        isinstance(model, keras.Sequential)


def _image_input(model):
    """The single 4-D input shape ``(H, W, C)`` of ``model``."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError("resize_vit needs a model with one image input "
                         f"(batch, height, width, channels), got inputs "
                         f"{[tuple(t.shape) for t in model.inputs]}.")
    shape = tuple(model.inputs[0].shape[1:])
    if shape[0] is None or shape[1] is None:
        raise ValueError(f"resize_vit needs a known input size, got {shape}.")
    return shape


def _patch_of(layer, image_hw):
    """Patch size implied by an image size and a position embedding's grid."""
    patch = []
    for size, cells in zip(image_hw, layer.grid):
        if size % cells:
            raise ValueError(f"Input size {image_hw} is not a multiple of the grid "
                             f"{layer.grid} of '{layer.name}'.")
        patch.append(size // cells)
    return tuple(patch)


def resize_vit(model, new_image_size, method="bicubic", keep_table=False):
    """Rebuilds a ViT for another input resolution, carrying all weights over.

    The model's config is reused with a new input size and new patch grids in
    its ``PositionEmbedding`` layers, so any Functional model whose only
    resolution-dependent layers are ``PositionEmbedding`` works (including
    models changed by graph surgery). Every weight is copied by layer name;
    position embeddings are resampled with ``interpolate_position_embedding``
    (class-token row kept). With an unchanged grid the result computes the
    same function. ``trainable`` flags are kept; the new model is not compiled.
    Like every architecture change it returns a ``GrowthResult``, whose plan
    marks the position embeddings as resampled (``kgrow.surgery.Resample``),
    so ``TrainingController.replace_model`` carries the training state.
    Build it inside ``controller.scope()`` when training under a strategy.

    With ``keep_table=True`` the position embeddings keep their tables as
    they are (on the grid they were built for) and resample them in the
    forward pass instead (``PositionEmbedding(table_grid=...)``, the AutoProg
    authors' way): nothing is lost by going through a lower resolution, and
    the plan is the identity.

    Args:
        model: A Functional model with one image input of known size and at
            least one ``PositionEmbedding`` layer.
        new_image_size: New ``(height, width)`` or an int for square images;
            must be a multiple of the patch size.
        method: Interpolation of the position embedding, one of
            ``INTERPOLATION_METHODS``.
        keep_table: Keep the tables and interpolate in the forward pass
            rather than resampling the weights now.

    Returns:
        ``GrowthResult(model, plan, info)``: the new uncompiled model, the
        ``TransferPlan`` from the old variables, and ``info`` with the old
        and new image sizes.

    Example:
        >>> model = vit((32, 32, 3), 10, depth=1, dim=16, heads=2, patch_size=8)
        >>> result = resize_vit(model, 48)
        >>> result.model.get_layer("pos_embed").grid, result.info["image_size"]
        ((6, 6), [[32, 32], [48, 48]])
    """
    # The plan types are plain data (numpy only); surgery's own architecture
    # changes return the same GrowthResult.
    from kgrow.surgery.transfer import GrowthResult, Resample, TransferPlan, VariableTransfer

    if not _is_functional(model):
        raise TypeError("resize_vit needs a Functional keras.Model, got "
                        f"{type(model).__name__}.")
    _checks.choice("method", method, INTERPOLATION_METHODS)
    old_shape = _image_input(model)
    new_hw = _checks.pair("new_image_size", new_image_size)
    pos_layers = [l for l in model.layers if isinstance(l, PositionEmbedding)]
    if not pos_layers:
        raise ValueError(f"Model '{model.name}' has no PositionEmbedding layer; "
                         "resize_vit only handles kgrow ViTs.")
    new_grids = {}
    for layer in pos_layers:
        patch = _patch_of(layer, old_shape[:2])
        new_grids[layer.name] = patch_grid(new_hw, patch)

    config = model.get_config()
    for layer_config in config["layers"]:
        # Build shapes recorded in the config belong to the old resolution;
        # layers are rebuilt when the new graph is traced.
        layer_config.pop("build_config", None)
        if layer_config["class_name"] == "InputLayer":
            layer_config["config"]["batch_shape"] = (None, *new_hw, old_shape[2])
        elif layer_config["name"] in new_grids:
            name = layer_config["name"]
            layer_config["config"]["grid"] = list(new_grids[name])
            table = model.get_layer(name).table_grid
            layer_config["config"]["table_grid"] = (list(table) if keep_table
                                                   else list(new_grids[name]))
            layer_config["config"]["interpolation"] = method
    new_model = keras.Model.from_config(config)

    resampled = {}
    for new_layer in new_model.layers:
        old_layer = model.get_layer(new_layer.name)
        if isinstance(new_layer, PositionEmbedding) and \
                old_layer.table_grid != new_layer.table_grid:
            (embeddings,) = old_layer.get_weights()
            new_layer.set_weights([interpolate_position_embedding(
                embeddings, old_layer.table_grid, new_layer.table_grid, method=method)])
            resampled[new_layer.embeddings.path] = Resample(old_layer.table_grid,
                                                            new_layer.table_grid, method)
        else:
            new_layer.set_weights(old_layer.get_weights())
    old_paths = {v.path for v in model.weights}
    plan = {}
    for v in new_model.weights:
        if v.path not in old_paths:
            raise ValueError(f"resize_vit: the rebuilt model has a variable {v.path!r} that "
                             "the original does not; variable paths must survive a rebuild.")
        plan[v.path] = VariableTransfer(v.path, (), resampled.get(v.path))
    info = {"image_size": [list(old_shape[:2]), list(new_hw)],
            "resampled": sorted(resampled), "kept_tables": bool(keep_table)}
    return GrowthResult(new_model, TransferPlan(plan), info)

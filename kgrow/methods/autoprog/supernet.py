"""AutoProg's elastic supernet: one graph that runs every candidate sub-network.

A supernet is built from a ViT-like Functional model whose blocks are
already at the largest candidate depth (`kgrow.surgery.set_depth` with the
interpolation mapping placed the new blocks between the old ones). The
blocks of the smaller model are always on; every other ("optional") block is
wrapped in a `GatedBlock` whose gate variable switches it on or off. The
input passes through `ElasticResize` (images resized in the graph to the size
held in a variable) and the position embedding becomes an
`kgrow.models.ElasticPositionEmbedding` (its table stays on the grid it had,
and is resampled in the graph for other grids). Switching sub-network is
then a host-side assignment of a few variables: the train function is
traced once for all candidates.

Sub-networks are nested: depth `d` switches on the *last* `d - base` optional
blocks (the paper's supernet inserts layers starting from the final ones), so
every sub-network contains every smaller one.

`extract_subnetwork` is the weight recycling: it returns a plain model (no
gate, no elastic layer, a normal `PositionEmbedding` on the chosen grid) that
computes what the supernet computes for the chosen sub-network, with a
transfer plan from the supernet's variables, so that
`TrainingController.replace_model` carries optimizer slots and EMA shadows.

Example:
    >>> import kgrow  # doctest: +SKIP
    >>> model = kgrow.models.vit((16, 16, 3), 10, depth=4, dim=16, heads=2, patch_size=4)  # doctest: +SKIP
    >>> result = build_supernet(model, always_on=[0, 2])  # doctest: +SKIP
    >>> set_subnetwork(result.model, result.info["supernet"], depth=3, image_size=(8, 8))  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
from keras import ops, tree

from kgrow.models.layers import (INTERPOLATION_METHODS, ElasticPositionEmbedding,
                                 PositionEmbedding, interpolate_position_embedding)
from kgrow.surgery.graph import copy_layer, nodes, rebuild, tensor_key
from kgrow.surgery.transfer import GrowthResult, Resample, TransferPlan, VariableTransfer

__all__ = ["ElasticResize", "GatedBlock", "GATINGS", "build_supernet", "set_subnetwork",
           "extract_subnetwork", "supernet_layers", "optional_active"]

_PACKAGE = "kgrow"
#: Gate implementations: "cond" skips an off block's computation (tf.cond),
#: "multiply" computes it and blends `x + g * (block(x) - x)`.
GATINGS = ("cond", "multiply")
RESIZE_NAME = "elastic_resize"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ElasticResize(keras.layers.Layer):
    """Resizes images (bilinear) to the size held in its `size` variable.

    The size is a non-trainable variable assigned from the host, so the
    train function does not retrace when it changes; at the images' own
    size the layer is the identity. `size = (0, 0)` also means identity.

    Example:
        >>> import numpy as np
        >>> layer = ElasticResize()
        >>> _ = layer(np.zeros((1, 8, 8, 1), "float32"))
        >>> _ = layer.size.assign([4.0, 4.0])
        >>> tuple(layer(np.zeros((1, 8, 8, 1), "float32")).shape)
        (1, 4, 4, 1)
    """

    def build(self, input_shape):
        self.size = self.add_weight(name="size", shape=(2,), initializer="zeros",
                                    trainable=False, dtype="float32")

    def call(self, inputs):
        import tensorflow as tf
        target = tf.cast(tf.round(self.size), tf.int32)
        shape = tf.shape(inputs)[1:3]
        keep = tf.logical_or(tf.reduce_all(tf.equal(shape, target)),
                             tf.reduce_any(tf.less_equal(target, 0)))
        return tf.cond(keep, lambda: tf.identity(inputs),
                       lambda: tf.cast(tf.image.resize(inputs, target, method="bilinear"),
                                       inputs.dtype))

    def compute_output_shape(self, input_shape):
        import tensorflow as tf
        if self.built and tf.executing_eagerly():
            # Shape inference outside a trace (FLOP counting) sees the
            # current target; graphs built for training keep it free.
            size = [int(round(float(v))) for v in self.size.numpy()]
            if min(size) > 0:
                return (input_shape[0], size[0], size[1], input_shape[3])
            return tuple(input_shape)
        return (input_shape[0], None, None, input_shape[3])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GatedBlock(keras.layers.Layer):
    """A residual block (a nested Functional model) that a gate turns off.

    With the gate at 1 the layer computes `block(x)`; at 0 it returns `x`
    (an off residual block is the identity). `gating="cond"` puts the block
    in a `tf.cond`, so an off block costs nothing; `"multiply"` computes
    `x + gate * (block(x) - x)`. The gate is a non-trainable variable
    assigned from the host (no retrace).

    Args:
        block: a Functional model mapping the block input to its output
            (same shape).
        gating: one of `GATINGS`.
    """

    def __init__(self, block, gating="cond", **kwargs):
        super().__init__(**kwargs)
        if isinstance(block, dict):
            block = keras.saving.deserialize_keras_object(block)
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        self.block = block
        self.gating = gating

    def build(self, input_shape):
        self.gate = self.add_weight(name="gate", shape=(), initializer="ones",
                                    trainable=False, dtype="float32")

    def call(self, inputs, training=None):
        if self.gating == "multiply":
            gate = ops.cast(self.gate, inputs.dtype)
            return inputs + gate * (self.block(inputs, training=training) - inputs)
        import tensorflow as tf
        return tf.cond(self.gate > 0.5, lambda: self.block(inputs, training=training),
                       lambda: tf.identity(inputs))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(block=keras.saving.serialize_keras_object(self.block),
                      gating=self.gating)
        return config


# ----------------------------------------------------------------------------- building


def _blocks_of(model, spec=None):
    from kgrow.surgery import find_stages
    stages = find_stages(model, spec=spec)
    if len(stages) != 1:
        raise ValueError(f"An elastic supernet needs a model with one run of repeated blocks "
                         f"(a ViT); {model.name!r} has {len(stages)} block stages.")
    blocks = list(stages[0].blocks)
    bad = [b.index for b in blocks if not b.shape_preserving or b.kind != "residual"]
    if bad:
        raise ValueError(f"blocks {bad} of {model.name!r} are not shape-preserving residual "
                         "blocks, so they cannot be switched off in a supernet.")
    return blocks


def _tensor_of(model, layer_name):
    layer = model.get_layer(layer_name)
    if len(layer._inbound_nodes) != 1:
        raise ValueError(f"layer {layer_name!r} is called more than once; supernet blocks "
                         "need single-use layers.")
    return layer.output


def _block_model(model, block, copies: dict):
    """The block's layers (copies) as a Functional model on a fresh input."""
    old_in = _tensor_of(model, block.input_layer)
    old_out = _tensor_of(model, block.output_layer)
    # Token (and spatial) axes free: the supernet changes the sequence length.
    shape = (None,) * (len(old_in.shape) - 2) + (old_in.shape[-1],)
    inp = keras.Input(shape=shape, dtype=old_in.dtype,
                      name=f"{block.output_layer}_in")
    values = {tensor_key(old_in): inp}
    names = set(block.layers)
    for node in nodes(model):
        if node.name not in names:
            continue
        args, kwargs = node.keras_node.arguments.fill_in(values)
        layer = copies.setdefault(node.name, copy_layer(node.operation))
        out = tree.flatten(layer(*args, **kwargs))
        for old, new in zip(node.outputs, out):
            values[tensor_key(old)] = new
    return keras.Model(inp, values[tensor_key(old_out)], name=f"{block.output_layer}_block")


def _layers_by_name(model) -> dict:
    out = {}
    for layer in model.layers:
        if isinstance(layer, GatedBlock):
            for inner in layer.block.layers:
                if not isinstance(inner, keras.layers.InputLayer):
                    out[inner.name] = inner
        out[layer.name] = layer
    return out


def _position_layers(model):
    return [layer for layer in model.layers if isinstance(layer, PositionEmbedding)]


def _check_vit_like(model):
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError(f"An elastic supernet needs one image input (batch, height, width, "
                         f"channels); {model.name!r} has inputs "
                         f"{[tuple(t.shape) for t in model.inputs]}.")
    pos = _position_layers(model)
    if len(pos) != 1:
        raise ValueError(
            f"{model.name!r} has {len(pos)} kgrow PositionEmbedding layers; AutoProg's "
            "resolution search needs exactly one interpolatable position embedding "
            "(kgrow.models.PositionEmbedding, laid out on a patch grid). Build the model with "
            "kgrow.models.vit or use that layer for its position embedding.")
    return pos[0]


def build_supernet(model, always_on: Sequence[int], *, gating: str = "cond",
                   spec=None) -> GrowthResult:
    """Turns `model` (at the largest candidate depth) into an elastic supernet.

    Args:
        model: a ViT-like Functional model (one image input, one
            `PositionEmbedding`, one run of residual blocks).
        always_on: indices (into its blocks) of the blocks that are always
            on; every other block becomes a `GatedBlock`.
        gating: "cond" (off blocks cost nothing) or "multiply".
        spec: block spec for irregular models (`kgrow.surgery.find_blocks`).

    Returns:
        `GrowthResult(supernet, plan, info)`; `info["supernet"]` is the plain
        description `set_subnetwork` and `extract_subnetwork` need (JSON).
    """
    if gating not in GATINGS:
        raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
    pos = _check_vit_like(model)
    blocks = _blocks_of(model, spec)
    always_on = sorted({int(i) for i in always_on})
    if not always_on or always_on[-1] >= len(blocks) or always_on[0] < 0:
        raise ValueError(f"always_on must name some of the {len(blocks)} blocks, got "
                         f"{always_on}")
    gated = [b for b in blocks if b.index not in always_on]
    by_layer = {name: b for b in gated for name in b.layers}
    copies: dict = {}
    wrapped: dict = {}
    block_inputs: dict = {}
    old_input = model.inputs[0]
    resize = ElasticResize(name=RESIZE_NAME)
    resized: dict = {}

    def operation_fn(op):
        if op is pos:
            config = op.get_config()
            # The elastic layer's grid is the one its table is laid out on.
            table_grid = config.pop("table_grid", None)
            if table_grid is not None:
                config["grid"] = list(table_grid)
            config.setdefault("interpolation", "bicubic")
            return ElasticPositionEmbedding.from_config(config)
        return copies.setdefault(op.name, copy_layer(op))

    def call_fn(node, op, args, kwargs):
        if any(t is old_input for t in node.inputs):
            flat = tree.flatten((args, kwargs))
            new_in = flat[[i for i, t in enumerate(node.inputs) if t is old_input][0]]
            if "x" not in resized:
                resized["x"] = resize(new_in)
            args = tree.map_structure(lambda v: resized["x"] if v is new_in else v, args)
        block = by_layer.get(node.name)
        if block is None:
            return op(*args, **kwargs)
        old_in = _tensor_of(model, block.input_layer)
        if block.index not in block_inputs:
            flat = tree.flatten((args, kwargs))
            for t, v in zip(node.inputs, flat):
                if t is old_in:
                    block_inputs[block.index] = v
        if node.name != block.output_layer:
            return [None] * len(node.outputs)  # computed inside the GatedBlock
        gate = GatedBlock(_block_model(model, block, copies), gating=gating,
                          name=f"{block.output_layer}_gate")
        wrapped[block.index] = gate.name
        return gate(block_inputs[block.index])

    shape = tuple(model.inputs[0].shape[1:])
    supernet = rebuild(model, operation_fn=operation_fn, call_fn=call_fn,
                       input_shapes=[(None, None, shape[2])])
    new_layers = _layers_by_name(supernet)
    plan = {}
    for layer in model.layers:
        new = new_layers.get(layer.name)
        if new is None or not layer.weights:
            continue
        new.set_weights(layer.get_weights())
        for old_v, new_v in zip(layer.weights, new.weights):
            plan[new_v.path] = VariableTransfer(old_v.path, ())
    for v in supernet.weights:
        if v.path not in plan:  # gates and the resize target
            plan[v.path] = VariableTransfer(None)
    # Optional blocks in activation order: depth base + k switches on the last k.
    optional = [wrapped[b.index] for b in reversed(gated)]
    info = {"gates": optional, "base_depth": len(always_on), "depth": len(blocks),
            "always_on": always_on, "resize": RESIZE_NAME,
            "position": pos.name, "grid": list(getattr(pos, "table_grid", pos.grid)),
            "gating": gating,
            "image_size": [int(s) if s is not None else None for s in shape[:2]],
            "channels": int(shape[2]), "patch": _patch(pos, shape)}
    set_subnetwork(supernet, info, depth=len(blocks), image_size=None)
    return GrowthResult(supernet, TransferPlan(plan), {"supernet": info})


def _patch(pos, shape):
    if shape[0] is None or shape[1] is None:
        return None
    return [int(shape[0]) // pos.grid[0], int(shape[1]) // pos.grid[1]]


def supernet_layers(model, info) -> tuple:
    """`(ElasticResize layer, [GatedBlock layers in activation order])` of a supernet."""
    return model.get_layer(info["resize"]), [model.get_layer(n) for n in info["gates"]]


def optional_active(info, depth: int) -> list:
    """Gate values (1.0/0.0, activation order) of the sub-network with `depth` blocks."""
    k = int(depth) - int(info["base_depth"])
    n = len(info["gates"])
    if not 0 <= k <= n:
        raise ValueError(f"the supernet has sub-networks of {info['base_depth']} to "
                         f"{info['base_depth'] + n} blocks, got depth {depth}")
    return [1.0] * k + [0.0] * (n - k)


def set_subnetwork(model, info, depth: int, image_size: Optional[Sequence[int]],
                   layers=None) -> None:
    """Switches the supernet to a sub-network (host-side assignments, no retrace).

    Args:
        model: the supernet.
        info: `build_supernet(...).info["supernet"]`.
        depth: number of blocks.
        image_size: `(height, width)` images are resized to in the graph, or
            None to leave them at the size the data has.
        layers: `supernet_layers(model, info)` (cached by callers that switch
            every step).
    """
    resize, gates = layers if layers is not None else supernet_layers(model, info)
    for gate, value in zip(gates, optional_active(info, depth)):
        gate.gate.assign(value)
    resize.size.assign([0.0, 0.0] if image_size is None else [float(s) for s in image_size])


def extract_subnetwork(supernet, info, depth: int, image_size: Sequence[int], *,
                       interpolation: str = "bicubic", name: Optional[str] = None
                       ) -> GrowthResult:
    """Weight recycling: the plain model of one sub-network, with the supernet's weights.

    Off blocks are dropped, on blocks unwrapped, the elastic resize removed
    (the model's input is `image_size`), and the position embedding becomes
    a `PositionEmbedding` on the new grid, its table resampled exactly as the
    supernet resampled it in the graph.

    Returns:
        `GrowthResult(model, plan, info)`; the plan maps every variable to
        the supernet's (the position embedding marked `Resample`).
    """
    if interpolation not in INTERPOLATION_METHODS:
        raise ValueError(f"interpolation must be one of {INTERPOLATION_METHODS}")
    h, w = (int(s) for s in image_size)
    pos = supernet.get_layer(info["position"])
    patch = info.get("patch")
    if patch is None:
        raise ValueError("the supernet's patch size is unknown")
    if h % patch[0] or w % patch[1]:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {patch}")
    new_grid = (h // patch[0], w // patch[1])
    active = dict(zip(info["gates"], optional_active(info, depth)))
    copies: dict = {}

    def mapped(op):
        if op.name not in copies:
            if op is pos:
                config = op.get_config()
                config.pop("interpolation", None)
                config["grid"] = list(new_grid)
                copies[op.name] = PositionEmbedding.from_config(config)
            else:
                copies[op.name] = copy_layer(op)
        return copies[op.name]

    def call_fn(node, op, args, kwargs):
        if isinstance(node.operation, ElasticResize):
            return args[0]
        if isinstance(node.operation, GatedBlock):
            x = args[0]
            if not active[node.name]:
                return x
            inner = node.operation.block
            values = {tensor_key(inner.inputs[0]): x}
            for n in nodes(inner):
                a, k = n.keras_node.arguments.fill_in(values)
                out = tree.flatten(mapped(n.operation)(*a, **k))
                for old, new in zip(n.outputs, out):
                    values[tensor_key(old)] = new
            return values[tensor_key(inner.outputs[0])]
        return mapped(node.operation)(*args, **kwargs)

    model = rebuild(supernet, call_fn=call_fn, input_shapes=[(h, w, info["channels"])],
                    name=name)
    old_layers = _layers_by_name(supernet)
    plan = {}
    for layer in model.layers:
        old = old_layers.get(layer.name)
        if old is None or not layer.weights:
            continue
        if isinstance(old, ElasticPositionEmbedding):
            (table,) = old.get_weights()
            layer.set_weights([interpolate_position_embedding(table, old.grid, new_grid,
                                                              method=old.interpolation)])
            resample = (None if tuple(old.grid) == new_grid
                        else Resample(tuple(old.grid), new_grid, old.interpolation))
            plan[layer.embeddings.path] = VariableTransfer(old.embeddings.path, (), resample)
            continue
        layer.set_weights(old.get_weights())
        for old_v, new_v in zip(old.weights, layer.weights):
            plan[new_v.path] = VariableTransfer(old_v.path, ())
    return GrowthResult(model, TransferPlan(plan),
                        {"recycled": {"depth": int(depth), "image_size": [h, w],
                                      "grid": list(new_grid)}})


# ----------------------------------------------------------------------------- FLOPs


def _install_flop_rules():
    """FLOP rules for the supernet's layers: the sub-network currently switched on."""
    from kgrow.flops import rules
    from kgrow.flops.counter import cost_of
    from kgrow.flops.graph import walk

    @rules.register(ElasticResize)
    def _resize(call):
        if tuple(call.inputs[0]) == tuple(call.outputs[0]):
            return rules.Cost()
        # Before every trainable layer: no gradient flows through it.
        return rules.Cost((rules.Term(rules.INTERPOLATION_FLOPS_PER_ELEMENT
                                      * rules.elements(call.outputs[0])),),
                          weight_grad=(), input_grad=())

    @rules.register(GatedBlock)
    def _gated(call):
        if float(call.layer.gate.numpy()) < 0.5:
            return rules.Cost()
        records = []
        walk(call.layer.block, [keras.KerasTensor(call.inputs[0])], [True], records)
        costs = [cost_of(r) for r in records]
        return rules.Cost(tuple(t for c in costs for t in c.forward),
                          tuple(t for c in costs for t in c.weight_grad_terms()),
                          tuple(t for c in costs for t in c.input_grad_terms()))

    @rules.register(ElasticPositionEmbedding)
    def _position(call):
        layer = call.layer
        terms = [rules.Term(rules.elements(call.outputs[0]), layer.embeddings)]
        if call.inputs[0][1] != layer.num_tokens:  # the table resampled: 4x4 taps
            patches = call.inputs[0][1] - layer.num_prefix_tokens
            terms.append(rules.Term(2 * 16 * patches * call.inputs[0][2]))
        return rules.Cost(tuple(terms))


_install_flop_rules()

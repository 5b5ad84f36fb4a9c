"""Walks a Keras model's graph at a chosen input size, recording every layer call.

The walk replays the Functional graph node by node
(``kgrow.surgery.graph.replay``) on ``keras.KerasTensor`` specs with batch
size 1, asking each layer for its output spec. Nothing is added to the model's
graph and no weights are created. Nested models are entered recursively; along
the way each tensor carries a flag saying whether a trainable layer lies
between the model input and it (then gradients flow back through it).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import keras

from kgrow.flops.rules import LayerCall
from kgrow.surgery.graph import graph_of, is_graph_model, replay


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One call of a layer (or Keras op) during the walk.

    Attributes:
        name: the layer name, prefixed ``outer/`` for layers of nested models.
        op: the layer or operation.
        call: shapes and arguments the rule sees.
        needs_input_grad: a trainable layer lies upstream of this call, so its
            input gradient is computed during backprop.
    """

    name: str
    op: Any
    call: LayerCall
    needs_input_grad: bool


def has_trainable_weights(op) -> bool:
    return bool(getattr(op, "trainable_weights", None))


def model_inputs(model) -> list:
    """Reference input tensors of a graph model."""
    if not is_graph_model(model):
        raise TypeError(_not_walkable_message(model))
    return list(graph_of(model).inputs)


def _not_walkable_message(model) -> str:
    return (f"cannot count FLOPs of model {model.name!r} ({type(model).__name__}): only "
            "Functional models and built Sequential models have a layer graph to walk. "
            "Build a Sequential model first (model.build(input_shape) or an Input layer); "
            "wrap a subclassed model's layers in a Functional model.")


def _shapes(values) -> tuple:
    return tuple(tuple(v.shape) for v in keras.tree.flatten(values)
                 if isinstance(v, keras.KerasTensor))


def _output_spec(op, name, args, kwargs):
    """Output spec of one call, with a clear error when shape inference fails."""
    try:
        # Layer.__call__ checks input_spec (e.g. a Dense kernel's input size);
        # compute_output_spec alone does not, so check it the same way here.
        check = getattr(op, "_assert_input_compatibility", None)
        if isinstance(op, keras.layers.Layer) and args and check is not None:
            check(args[0])
        return op.compute_output_spec(*args, **kwargs)
    except Exception as e:  # re-raised with the layer named; the cause is kept
        raise ValueError(
            f"shape inference failed at layer {name!r} ({type(op).__name__}) with input "
            f"shapes {list(_shapes((args, kwargs)))} (batch axis shown as 1): {e}") from e


def walk(model, inputs: Sequence, grad_flags: Sequence[bool], records: list,
         prefix: str = "") -> tuple[list, list]:
    """Replays ``model`` on input specs, appending a :class:`CallRecord` per call.

    Args:
        model: a Functional or built Sequential model.
        inputs: one ``KerasTensor`` per model input (batch dim 1).
        grad_flags: per input, whether a trainable layer lies upstream of it.
        records: list the call records are appended to, in execution order.
        prefix: name prefix for the layers of this model.

    Returns:
        (output specs, output grad flags), flat lists in the model's output order.
    """
    if not is_graph_model(model):
        raise TypeError(_not_walkable_message(model))
    # Whether gradients flow back into a value, keyed by the spec object.
    flags = {id(v): bool(f) for v, f in zip(inputs, grad_flags)}

    def call(node, args, kwargs, prefix):
        op = node.operation
        values = [v for v in keras.tree.flatten((args, kwargs))
                  if isinstance(v, keras.KerasTensor)]
        needs_grad = any(flags.get(id(v), False) for v in values)
        outputs = _output_spec(op, prefix + op.name, args, kwargs)
        records.append(CallRecord(prefix + op.name, op,
                                  LayerCall(op, tuple(args), dict(kwargs), _shapes((args, kwargs)),
                                            _shapes(outputs)),
                                  needs_grad))
        out_flag = needs_grad or has_trainable_weights(op)
        for v in keras.tree.flatten(outputs):
            flags[id(v)] = out_flag
        return outputs

    outputs = replay(model, list(inputs), call, prefix=prefix)
    return outputs, [flags[id(v)] for v in outputs]


def input_specs(model, input_shape: Optional[Any]) -> list:
    """Batch-1 ``KerasTensor`` specs for the model inputs at ``input_shape``.

    Args:
        model: a Functional or built Sequential model.
        input_shape: shape without batch dim; a list of such shapes for a
            model with several inputs; None for the model's own input shapes.

    Raises:
        ValueError: the size is unknown (None dims) or does not fit the inputs.
    """
    refs = model_inputs(model)
    if input_shape is None:
        shapes = [tuple(r.shape[1:]) for r in refs]
        for r, s in zip(refs, shapes):
            if any(d is None for d in s):
                raise ValueError(
                    f"model input {r.name!r} has shape {tuple(r.shape)} with unknown "
                    "dimensions; pass input_shape=(...) without the batch axis, "
                    "e.g. input_shape=(224, 224, 3)")
    else:
        shapes = _normalize_shapes(input_shape, len(refs))
    specs = []
    for r, s in zip(refs, shapes):
        if len(s) != len(r.shape) - 1:
            raise ValueError(
                f"input_shape {s} has rank {len(s)}, but model input {r.name!r} has shape "
                f"{tuple(r.shape)} (rank {len(r.shape) - 1} without the batch axis)")
        specs.append(keras.KerasTensor((1,) + s, dtype=r.dtype))
    return specs


def _is_shape(x) -> bool:
    return isinstance(x, (tuple, list)) and all(isinstance(d, int) for d in x)


def _normalize_shapes(input_shape, n_inputs) -> list:
    if _is_shape(input_shape):
        shapes = [tuple(input_shape)]
    elif isinstance(input_shape, (tuple, list)) and all(_is_shape(s) for s in input_shape):
        shapes = [tuple(s) for s in input_shape]
    else:
        raise ValueError(f"input_shape must be a tuple of ints (without the batch axis) or a "
                         f"list of such tuples, got {input_shape!r}")
    if len(shapes) != n_inputs:
        raise ValueError(f"the model has {n_inputs} inputs but input_shape gives "
                         f"{len(shapes)} shapes: {input_shape!r}")
    for s in shapes:
        if any(isinstance(d, bool) or d <= 0 for d in s):
            raise ValueError(f"input_shape dims must be positive ints, got {s}")
    return shapes

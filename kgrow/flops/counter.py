"""`count()`: walk the model, price each call with its rule, apply freezing and sparsity."""
from __future__ import annotations

import warnings
from typing import Any, Optional

import keras

from kgrow.flops import graph
from kgrow.flops.report import FlopsReport, LayerFlops
from kgrow.flops.rules import (Cost, Term, UnsupportedLayerError, elements,
                               install_optional_rules, rule_for, supported_types)
from kgrow.flops.sparsity import resolve_densities


def _type_name(op) -> str:
    name = type(op).__name__
    return name if isinstance(op, keras.layers.Layer) else f"ops.{name}"


def _is_shape_preserving(call) -> bool:
    return len(call.outputs) == 1 and call.outputs[0] in call.inputs


def _unsupported(record, reason: str, strict: bool) -> Cost:
    op = record.op
    message = (
        f"cannot count FLOPs of layer {record.name!r} of type {type(op).__module__}."
        f"{type(op).__name__}: {reason}. Supported layer types: {', '.join(supported_types())}; "
        "raw keras.ops calls are supported too")
    if strict:
        raise UnsupportedLayerError(
            f"{message}. Register a rule with @kgrow.flops.register({type(op).__name__}), "
            "or pass strict=False to count it as 0 FLOPs with a warning.")
    warnings.warn(f"{message}. Counted as 0 FLOPs (strict=False).", stacklevel=4)
    return Cost()


def cost_of(record, strict: bool = True) -> Cost:
    """The :class:`Cost` of one recorded call.

    Layers without a rule: weightless and shape-preserving ones (custom
    activations, Lambda layers, elementwise ops) cost 1 FLOP per output
    element; anything else is an error (or 0 with a warning if not strict).
    """
    rule = rule_for(record.op)
    call = record.call
    if rule is not None:
        try:
            return rule(call)
        except UnsupportedLayerError as e:
            return _unsupported(record, str(e), strict)
    weights = getattr(record.op, "weights", None) or []
    if weights:
        paths = [v.path for v in weights][:6]
        return _unsupported(record, f"it has weights {paths} and no FLOP rule", strict)
    if _is_shape_preserving(call):
        return Cost((Term(elements(call.outputs[0])),))
    return _unsupported(record, f"it has no FLOP rule and changes the shape {list(call.inputs)} "
                        f"-> {list(call.outputs)}, so it is not an elementwise op", strict)


def _scaled_sum(terms, densities, trainable_ids: Optional[set] = None) -> float:
    """Sum of term FLOPs times their variable's density.

    With ``trainable_ids``, terms tied to a non-trainable variable are dropped
    (their weight gradient is not computed).
    """
    total = 0.0
    for t in terms:
        if t.variable is None:
            total += t.flops
            continue
        if trainable_ids is not None and id(t.variable) not in trainable_ids:
            continue
        total += t.flops * densities.get(id(t.variable), 1.0)
    return total


def _density(cost, densities) -> Optional[float]:
    matmul = [t for t in cost.forward if t.matmul and t.variable is not None]
    if not matmul:
        return None
    dense = sum(t.flops for t in matmul)
    if dense > 0:
        return _scaled_sum(matmul, densities) / dense
    return sum(densities.get(id(t.variable), 1.0) for t in matmul) / len(matmul)


def _row(record, cost, densities) -> LayerFlops:
    op = record.op
    trainable = graph.has_trainable_weights(op)
    trainable_ids = {id(v) for v in op.trainable_weights} if trainable else set()
    weight_terms = cost.weight_grad_terms() if trainable else ()
    return LayerFlops(
        name=record.name,
        type=_type_name(op),
        forward=_scaled_sum(cost.forward, densities),
        input_grad=(_scaled_sum(cost.input_grad_terms(), densities)
                    if record.needs_input_grad else 0.0),
        weight_grad=_scaled_sum(weight_terms, densities, trainable_ids),
        trainable=trainable,
        density=_density(cost, densities),
    )


def _merge_shared(rows) -> tuple:
    """One row per layer: calls of a shared layer are summed."""
    merged: dict = {}
    for row in rows:
        if row.name not in merged:
            merged[row.name] = row
            continue
        old = merged[row.name]
        merged[row.name] = LayerFlops(
            row.name, row.type, old.forward + row.forward, old.input_grad + row.input_grad,
            old.weight_grad + row.weight_grad, row.trainable,
            old.density if row.density is None else row.density, old.calls + 1)
    return tuple(merged.values())


def count(model: keras.Model, input_shape: Any = None, *, sparsity: Any = None,
          strict: bool = True) -> FlopsReport:
    """Counts forward and training FLOPs per sample of a Keras model.

    Args:
        model: a Functional model or a built Sequential model. Nested models
            are counted layer by layer.
        input_shape: input shape without the batch axis (a list of shapes
            for several inputs). Defaults to the model's input shape; required
            when that has unknown (None) dimensions. A different size than the
            model was built for is fine for size-agnostic models (conv nets
            with global pooling, ...); layers whose weights do not fit the new
            size raise.
        sparsity: optional ``{key: density or mask}``; keys are variable paths
            (``"conv1/kernel"``, see ``variable.path``) or layer names
            (``"inner_model/conv1"`` for layers of nested models; the bare
            name works when unique).
            Densities are fractions of weights KEPT (0.1 = 90% sparse); masks
            are arrays of the variable's shape. Weight-proportional FLOPs
            scale by the density in the forward pass and both backward passes.
        strict: if True (default), a layer that cannot be priced (weights and
            no rule, or an unfamiliar shape change) raises
            :class:`UnsupportedLayerError`; if False it counts 0 with a warning.

    Returns:
        A :class:`FlopsReport`; ``.training`` accounts for frozen layers
        (``layer.trainable = False``: no weight gradient) and for layers with
        no trainable layer upstream (no input gradient).

    Raises:
        TypeError: the model has no walkable graph (subclassed model).
        ValueError: unknown input size, a size the weights do not fit, or an
            invalid ``sparsity`` entry.
        UnsupportedLayerError: see ``strict``.

    Example:
        >>> import keras
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
        >>> report = count(model)
        >>> report.forward          # 2*8*4 multiply-add FLOPs + 4 bias adds
        68.0
        >>> report.training         # forward + weight gradient (no input gradient)
        136.0
    """
    install_optional_rules()
    specs = graph.input_specs(model, input_shape)
    records: list = []
    graph.walk(model, specs, [False] * len(specs), records)
    costs = [cost_of(r, strict) for r in records]
    densities = resolve_densities(sparsity, records, costs)
    rows = _merge_shared(_row(r, c, densities) for r, c in zip(records, costs))
    shapes = tuple(tuple(s.shape[1:]) for s in specs)
    return FlopsReport(rows, shapes[0] if len(shapes) == 1 else shapes)

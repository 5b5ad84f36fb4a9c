"""Finding a model's layers and variables by name and path.

Everything the controller carries across a growth step or into a checkpoint
(weights, optimizer slots, EMA shadows, LR-multiplier groups) is keyed by the
variable path `layer_name/var_name`, the same key `kgrow.surgery`'s transfer
plans use. These helpers give one consistent view of "the variables of a
model" and refuse models whose paths are ambiguous.
"""
from __future__ import annotations

from typing import Iterator

import keras

__all__ = ["all_layers", "variables_by_path", "weights_by_path", "trainable_candidates",
           "layer_names", "unwrap"]


def unwrap(value):
    """The backend (tf) variable under a Keras variable; other values unchanged."""
    return value.value if isinstance(value, keras.Variable) else value


def all_layers(model) -> Iterator:
    """Yields every layer of `model` (depth first), nested models included.

    Composite layers (e.g. MultiHeadAttention) are yielded themselves; their
    private sublayers are not, because freezing or naming them separately is
    not meaningful from the outside.
    """
    seen = set()
    stack = list(reversed(getattr(model, "layers", [])))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        if isinstance(layer, keras.Model):
            stack.extend(reversed(layer.layers))


def layer_names(model) -> list[str]:
    return [layer.name for layer in all_layers(model)]


def _by_path(variables, what) -> dict:
    table = {}
    for v in variables:
        path = v.path
        if path in table and table[path] is not v:
            raise ValueError(
                f"Two different variables of the model share the path {path!r}; the "
                f"controller keys {what} by variable path (layer_name/var_name), so "
                "layer names must be unique. Rename the layers (e.g. of nested models) "
                "or flatten the model with kgrow.surgery.rebuild(model).")
        table[path] = v
    return table


def weights_by_path(model) -> dict:
    """`{path: variable}` for `model.weights` (no RNG seed state)."""
    return _by_path(model.weights, "weights")


def variables_by_path(model) -> dict:
    """`{path: variable}` for `model.variables` (weights and RNG seed state)."""
    return _by_path(model.variables, "variables")


def trainable_candidates(model) -> list:
    """The variables that train when every layer is unfrozen.

    `model.trainable_weights` drops the weights of frozen layers, but the
    optimizer must keep slots for them so that an unfreeze continues with the
    old momentum. Keras remembers which weights were created trainable in
    each layer's `_trainable_variables` list, whatever the layer's current
    `trainable` flag says.
    """
    candidate_ids = set()
    for layer in [model, *model._flatten_layers(include_self=False, recursive=True)]:
        for v in getattr(layer, "_trainable_variables", ()):
            candidate_ids.add(id(v))
    return [v for v in model.weights if id(v) in candidate_ids]

"""Turns the user's ``sparsity=`` mapping into one density per weight variable.

Keys may be variable paths (``"conv1/kernel"``) or layer names (``"conv1"``;
``"inner_model/conv1"`` for layers of nested models). Values are densities in
[0, 1] (fraction of non-zero weights kept) or masks (arrays of the variable's
shape; density = fraction of non-zeros). A layer-name key applies to the
layer's kernel-like variables, i.e. those in its matmul terms.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np


def _term_vars(cost):
    for term in cost.forward + cost.weight_grad_terms() + cost.input_grad_terms():
        if term.variable is not None:
            yield term


class _Index:
    """Variables and layers reachable from the recorded calls."""

    def __init__(self, records, costs):
        self.tied = {}            # id(var) -> var, variables that enter some term
        self.matmul_vars = {}     # layer name -> {id(var): var} from matmul terms
        self.by_path = {}         # variable path -> {id(var): var}
        self.layers_by_bare = {}  # bare layer name -> set of qualified names
        for rec, cost in zip(records, costs):
            self.matmul_vars.setdefault(rec.name, {})
            self.layers_by_bare.setdefault(rec.name.rsplit("/", 1)[-1], set()).add(rec.name)
            for v in getattr(rec.op, "weights", []):
                self.by_path.setdefault(v.path, {})[id(v)] = v
            for term in _term_vars(cost):
                self.tied[id(term.variable)] = term.variable
                if term.matmul:
                    self.matmul_vars[rec.name][id(term.variable)] = term.variable

    def layer_names(self, key: str) -> list[str]:
        if key in self.matmul_vars:
            return [key]
        return sorted(self.layers_by_bare.get(key, ()))

    def examples(self) -> str:
        paths = sorted(v.path for v in self.tied.values())[:8]
        layers = sorted(n for n, vs in self.matmul_vars.items() if vs)[:8]
        return f"variable paths such as {paths}; layer names such as {layers}"


def _as_array(value) -> np.ndarray:
    import keras
    try:
        return np.asarray(keras.ops.convert_to_numpy(value))
    except Exception as e:
        raise TypeError(f"a sparsity value must be a density in [0, 1] or a mask array, "
                        f"got {type(value).__name__}: {e}") from e


def _density_of(key, value, var) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        density = float(value)
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"sparsity[{key!r}] = {value}: densities must lie in [0, 1] "
                             "(they are the fraction of weights KEPT, e.g. 0.1 = 90% sparse)")
        return density
    mask = _as_array(value)
    if tuple(mask.shape) != tuple(var.shape):
        raise ValueError(f"sparsity[{key!r}]: mask shape {tuple(mask.shape)} does not match "
                         f"variable {var.path!r} of shape {tuple(var.shape)}")
    return float(np.count_nonzero(mask)) / max(mask.size, 1)


def _targets_of_layer(key, value, layer_name, index) -> list:
    variables = list(index.matmul_vars[layer_name].values())
    if not variables:
        raise ValueError(f"sparsity key {key!r} names layer {layer_name!r}, which has no "
                         "weight-proportional FLOPs (no kernel); densities apply to layers "
                         "with kernels such as Conv and Dense")
    if isinstance(value, numbers.Real):
        return variables
    shape = tuple(_as_array(value).shape)
    matching = [v for v in variables if tuple(v.shape) == shape]
    if len(matching) != 1:
        kernels = [(v.path, tuple(v.shape)) for v in variables]
        raise ValueError(f"sparsity[{key!r}]: a mask for layer {layer_name!r} must match the "
                         f"shape of exactly one of its kernels {kernels}, got shape {shape}; "
                         "key masks by variable path instead")
    return matching


def _targets(key, value, index) -> list:
    """The variables a sparsity entry applies to."""
    if not isinstance(key, str):
        raise TypeError(f"sparsity keys must be variable paths or layer names (str), got "
                        f"{type(key).__name__}; use variable.path for a keras.Variable")
    by_path = list(index.by_path.get(key, {}).values())
    layers = index.layer_names(key)
    if by_path and layers:
        raise ValueError(f"sparsity key {key!r} is both a variable path and a layer name; "
                         "rename the layer or give the density through the other key")
    if len(layers) > 1:
        raise ValueError(f"sparsity key {key!r} matches several nested layers {layers}; "
                         "use the qualified name")
    if layers:
        return _targets_of_layer(key, value, layers[0], index)
    if len(by_path) > 1:
        raise ValueError(f"sparsity key {key!r} matches {len(by_path)} variables with that "
                         "path (layers of different nested models); key them by the "
                         "qualified layer name instead")
    if by_path:
        var = by_path[0]
        if id(var) not in index.tied:
            raise ValueError(f"variable {key!r} enters no counted FLOPs (it is not a kernel, "
                             f"bias or affine weight); use {index.examples()}")
        return by_path
    raise ValueError(f"sparsity key {key!r} matches no variable path or layer name of the "
                     f"model; use {index.examples()}")


def resolve_densities(sparsity: Any, records, costs) -> dict:
    """Maps ``id(variable) -> density`` for every variable the entries name.

    Raises:
        TypeError: ``sparsity`` is not a mapping, or a value is neither a
            number nor an array.
        ValueError: unknown/ambiguous key, density outside [0, 1], mask of the
            wrong shape, or a variable given a density twice.
    """
    if sparsity is None:
        return {}
    if not isinstance(sparsity, Mapping):
        raise TypeError("sparsity must be a dict of {variable path | layer name: "
                        f"density or mask}}, got {type(sparsity).__name__}")
    index = _Index(records, costs)
    densities, sources = {}, {}
    for key, value in sparsity.items():
        for var in _targets(key, value, index):
            if id(var) in densities:
                raise ValueError(f"variable {var.path!r} gets a density from both "
                                 f"{sources[id(var)]!r} and {key!r}")
            densities[id(var)] = _density_of(key, value, var)
            sources[id(var)] = key
    return densities

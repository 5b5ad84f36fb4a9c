"""Fan-in-aware parameterization of any Functional model (muP's rules, Yang et al. 2021).

`fan_in_initialize(model)` re-initializes kernels with variance ``1 / fan_in``
(input and hidden layers) and ``1 / fan_in^2`` (output layers);
`fan_in_lr_factors(model, reference)` gives per-layer learning-rate factors
``{layer name: float}`` that keep each layer's relative update independent of
its width, relative to a reference model (e.g. the full model of a growing
one). `kernel_layer_roles` says which kernel layers are input, hidden and
output layers; `layer_fans` gives their fans. Width growth methods (variance
transfer, Network Expansion) use them while the network grows.
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Optional

import keras
import numpy as np

__all__ = ["OPTIMIZER_RULES", "optimizer_rule", "layer_fans", "kernel_layer_roles",
           "fan_in_initialize", "fan_in_lr_factors"]

#: Optimizer families of `fan_in_lr_factors` (muP's tables for SGD and Adam).
OPTIMIZER_RULES = ("sgd", "adam")

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_NORMS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
          keras.layers.GroupNormalization)


def optimizer_rule(optimizer, rule=True) -> str:
    """muP's optimizer family ("sgd" or "adam") of a Keras optimizer, for `fan_in_lr_factors`.

    ``rule`` given as "sgd" or "adam" is returned as is; True reads it from
    the optimizer.

    Raises:
        ValueError: an optimizer of neither family.

    Example:
        >>> import keras
        >>> optimizer_rule(keras.optimizers.AdamW()), optimizer_rule(keras.optimizers.SGD())
        ('adam', 'sgd')
    """
    if isinstance(rule, str):
        if rule not in OPTIMIZER_RULES:
            raise ValueError(f"the optimizer rule must be one of {OPTIMIZER_RULES}, got "
                             f"{rule!r}")
        return rule
    if isinstance(optimizer, keras.optimizers.SGD):
        return "sgd"
    if isinstance(optimizer, (keras.optimizers.Adam, keras.optimizers.AdamW,
                              keras.optimizers.Adamax, keras.optimizers.Nadam)):
        return "adam"
    raise ValueError(f"cannot tell muP's learning-rate rule of {type(optimizer).__name__}: it "
                     f"is neither SGD nor an Adam variant; give the rule, one of "
                     f"{OPTIMIZER_RULES}, explicitly.")


def _kernels(layer) -> list:
    """``[(variable, fan_in, fan_out)]`` of a layer's kernels; None if unsupported."""
    if isinstance(layer, keras.layers.Dense):
        k = layer.kernel
        return [(k, int(k.shape[0]), int(k.shape[1]))]
    if isinstance(layer, _SEPARABLE):
        d, p = layer.depthwise_kernel, layer.pointwise_kernel
        # The depthwise part reads one channel per output: fan-in is the window.
        return [(d, int(np.prod(d.shape[:-2])), int(np.prod(d.shape[-2:]))),
                (p, int(np.prod(p.shape[:-1])), int(p.shape[-1]))]
    if isinstance(layer, _DEPTHWISE):
        k = layer.kernel
        return [(k, int(np.prod(k.shape[:-2])), int(np.prod(k.shape[-2:])))]
    if isinstance(layer, _CONV):
        k = layer.kernel  # [*window, C_in / groups, C_out]: fan-in counts the group only
        return [(k, int(np.prod(k.shape[:-1])), int(k.shape[-1]))]
    return None


def layer_fans(model) -> dict:
    """``{layer name: (fan_in, fan_out)}`` of every kernel layer (last kernel of separable convs).

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, name="h")])
        >>> layer_fans(m)
        {'h': (3, 5)}
    """
    out = {}
    for layer in model.layers:
        ks = _kernels(layer)
        if ks:
            out[layer.name] = ks[-1][1:]
    return out


def kernel_layer_roles(model) -> dict:
    """``{layer name: "input" | "hidden" | "output"}`` for kernel layers of a Functional model.

    A kernel layer is an *output* layer when a model output depends on it
    through kernel-free operations only (activations, pooling, BatchNorm,
    adds, ...), an *input* layer when it reads a model input that way, and
    hidden otherwise (output wins over input for a one-layer model).

    Example:
        >>> inp = keras.Input((4,))
        >>> h = keras.layers.Dense(8, activation="relu", name="a")(inp)
        >>> m = keras.Model(inp, keras.layers.Dense(2, name="b")(keras.layers.Dense(8, name="c")(h)))
        >>> kernel_layer_roles(m)
        {'a': 'input', 'c': 'hidden', 'b': 'output'}
    """
    from kgrow.surgery.graph import nodes, tensor_key
    producer = {}
    order = []
    for node in nodes(model):
        for t in node.outputs:
            producer[tensor_key(t)] = node
        if _kernels(node.operation):
            order.append(node.operation.name)

    def sources(tensor, seen) -> set:
        """Kernel layers (names) or "<input>" reached backwards through kernel-free ops."""
        node = producer.get(tensor_key(tensor))
        if node is None:
            return {"<input>"}
        if _kernels(node.operation):
            return {node.operation.name}
        if id(node) in seen:
            return set()
        seen.add(id(node))
        found = set()
        for t in node.inputs:
            found |= sources(t, seen)
        return found

    outputs = set()
    for t in keras.tree.flatten(model.outputs):
        outputs |= sources(t, set())
    inputs = set()
    for node in nodes(model):
        if _kernels(node.operation):
            if any("<input>" in sources(t, set()) for t in node.inputs):
                inputs.add(node.operation.name)
    roles = {}
    for name in order:
        roles[name] = "output" if name in outputs else ("input" if name in inputs else "hidden")
    return roles


def fan_in_initialize(model, *, seed: int = 0, strict: bool = True) -> dict:
    """Re-initializes `model` in place: fan-in-aware kernels, zero biases, fresh norms.

    Kernels of input and hidden layers get ``N(0, 1 / fan_in)``, those of
    output layers ``N(0, 1 / fan_in^2)`` (so the logits start near zero and
    shrink like ``1 / width``, muP's output rule). Fan-in is ``k*k*C_in /
    groups`` for a convolution, the window ``k*k`` for a depthwise kernel
    (each output reads one channel), and ``C_in * multiplier`` for the
    pointwise half of a separable conv. Biases are zero; BatchNorm,
    LayerNorm and GroupNorm get gamma 1, beta 0 (and BatchNorm moving mean 0,
    variance 1): their scale is not a function of width.

    Args:
        model: a Functional model (`kernel_layer_roles` decides the output layers).
        seed: seed of the new kernels.
        strict: raise on layers with weights that are none of the above
            (False: leave them as they are, with a warning naming them).

    Returns:
        ``{layer name: std used}`` of every re-initialized kernel layer.

    Raises:
        ValueError: (strict) layers with weights this function does not know.

    Example:
        >>> m = keras.Sequential([keras.Input((100,)), keras.layers.Dense(50, name="h"),
        ...                       keras.layers.Dense(10, name="out")])
        >>> stds = fan_in_initialize(m)
        >>> round(stds["h"], 3), round(stds["out"], 3)
        (0.1, 0.02)
    """
    roles = kernel_layer_roles(model)
    rng = np.random.default_rng(seed)
    unknown = [layer.name for layer in model.layers if layer.weights
               and _kernels(layer) is None and not isinstance(layer, _NORMS)]
    if unknown:
        message = (f"fan_in_initialize: layers {unknown} have weights but are not Dense, Conv, "
                   "DepthwiseConv, SeparableConv or a normalization layer")
        if strict:
            raise ValueError(message + "; pass strict=False to leave them unchanged.")
        warnings.warn(message + "; left unchanged.", stacklevel=2)
    stds = {}
    for layer in model.layers:
        ks = _kernels(layer)
        if ks:
            output = roles.get(layer.name) == "output"
            for var, fan_in, _ in ks:
                std = 1.0 / fan_in if output else 1.0 / math.sqrt(fan_in)
                var.assign(rng.normal(0.0, std, tuple(var.shape)).astype(var.dtype))
            stds[layer.name] = std
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(np.zeros(layer.bias.shape, layer.bias.dtype))
        elif isinstance(layer, _NORMS):
            for w in layer.weights:
                kind = w.path.rsplit("/", 1)[-1]
                value = 1.0 if kind in ("gamma", "moving_variance") else 0.0
                w.assign(np.full(w.shape, value, w.dtype))
    return stds


def fan_in_lr_factors(model, reference: Optional[Mapping] = None, *,
                      optimizer: str = "sgd") -> dict:
    """Per-layer LR factors so that each layer's relative update does not depend on width.

    muP's rules (Yang et al., 2021), as ratios to a `reference` model whose
    learning rate you tuned (factor 1 at the reference widths):

    ========  ===============================  =======================
    layer     SGD                              Adam / AdamW
    ========  ===============================  =======================
    input     ``fan_out / ref_fan_out``        1
    hidden    1                                ``ref_fan_in / fan_in``
    output    ``ref_fan_in / fan_in``          ``ref_fan_in / fan_in``
    ========  ===============================  =======================

    Biases share their layer's factor; normalization layers and other
    vector-like weights keep 1 (they are not listed).

    Args:
        model: the model now (e.g. a narrow stage of a growing model).
        reference: ``layer_fans(reference_model)``, e.g. of the full model;
            default: `model` itself (all factors 1).
        optimizer: "sgd" or "adam" (Adam, AdamW and other sign-like rules).

    Returns:
        ``{layer name: factor}`` for `TrainingController.set_lr_multipliers`.

    Raises:
        ValueError: unknown optimizer family.

    Example:
        >>> big = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, name="a"),
        ...                         keras.layers.Dense(16, name="b"), keras.layers.Dense(2, name="c")])
        >>> small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="a"),
        ...                           keras.layers.Dense(4, name="b"), keras.layers.Dense(2, name="c")])
        >>> fan_in_lr_factors(small, layer_fans(big), optimizer="adam")
        {'a': 1.0, 'b': 4.0, 'c': 4.0}
    """
    if optimizer not in OPTIMIZER_RULES:
        raise ValueError(f"optimizer must be one of {OPTIMIZER_RULES} (use 'adam' for AdamW), "
                         f"got {optimizer!r}")
    fans = layer_fans(model)
    reference = fans if reference is None else dict(reference)
    roles = kernel_layer_roles(model)
    out = {}
    for name, (fan_in, fan_out) in fans.items():
        ref_in, ref_out = reference.get(name, (fan_in, fan_out))
        role = roles.get(name, "hidden")
        if role == "input":
            f = fan_out / ref_out if optimizer == "sgd" else 1.0
        elif role == "hidden" and optimizer == "sgd":
            f = 1.0
        else:
            f = ref_in / fan_in
        out[name] = float(f)
    return out

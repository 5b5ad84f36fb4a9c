"""Per-layer FLOP rules and the registry that maps layer types to them.

A rule is a function ``rule(call: LayerCall) -> Cost``. ``call`` carries the
layer and the shapes it sees for one call (batch dimension fixed to 1, so a
shape's product is a per-sample count); the returned :class:`Cost` lists the
forward FLOPs as :class:`Term` objects, each optionally tied to the weight
variable it involves. Ties matter twice: a term tied to a variable is scaled by
that variable's density (weight sparsity), and, unless the rule says otherwise,
the tied terms are also the layer's weight-gradient FLOPs.

The conventions (2 FLOPs per multiply-add, 1 FLOP per element per elementwise
op, ...) are documented in the package docstring, ``kgrow/flops/__init__.py``.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

# Softmax = reduce-max, subtract, exp, reduce-sum, divide: 5 elementwise ops.
SOFTMAX_FLOPS_PER_ELEMENT = 5
# Mean/variance statistics (2) plus subtract-mean and divide-by-std (2).
NORMALIZE_FLOPS_PER_ELEMENT = 4
# RMS / unit-norm: square, reduce-sum, multiply by the inverse norm.
RMS_NORMALIZE_FLOPS_PER_ELEMENT = 3
# Linear (bilinear, trilinear...) interpolation, per output element.
INTERPOLATION_FLOPS_PER_ELEMENT = 4


@dataclasses.dataclass(frozen=True)
class Term:
    """One additive part of a layer's FLOPs.

    Attributes:
        flops: FLOPs per sample, before any density scaling.
        variable: the weight variable this part involves, or None. A density
            given for this variable (``sparsity={"dense/kernel": 0.5}``)
            scales the term.
        matmul: True when the term multiplies the variable's entries (a
            kernel), so its cost falls with the number of non-zero weights.
            A density given for the whole *layer* scales only these terms;
            bias and affine-normalization terms stay dense.

    Example:
        >>> Term(2 * 9 * 16 * 32, variable=None).flops
        9216
    """

    flops: float
    variable: Any = None
    matmul: bool = False

    def scaled(self, factor: float) -> "Term":
        """Returns a copy with ``flops`` multiplied by ``factor``."""
        return dataclasses.replace(self, flops=self.flops * factor)


@dataclasses.dataclass(frozen=True)
class Cost:
    """The FLOPs of one layer call, split into terms.

    Attributes:
        forward: terms of the forward pass.
        weight_grad: terms of the weight-gradient pass, or None for the
            default: the forward terms tied to a variable (a weight gradient
            costs as much as the forward op that uses the weight).
        input_grad: terms of the input-gradient pass, or None for the default:
            all forward terms (the input gradient of an op costs about as much
            as the op).

    Example:
        >>> cost = Cost((Term(100.0, "w", matmul=True), Term(10.0)))
        >>> sum(t.flops for t in cost.weight_grad_terms())
        100.0
    """

    forward: tuple = ()
    weight_grad: Optional[tuple] = None
    input_grad: Optional[tuple] = None

    def weight_grad_terms(self) -> tuple:
        if self.weight_grad is not None:
            return tuple(self.weight_grad)
        return tuple(t for t in self.forward if t.variable is not None)

    def input_grad_terms(self) -> tuple:
        if self.input_grad is not None:
            return tuple(self.input_grad)
        return tuple(self.forward)

    def scaled(self, factor: float) -> "Cost":
        """Returns the cost of ``factor`` repetitions of this call."""
        def scale(terms):
            return None if terms is None else tuple(t.scaled(factor) for t in terms)
        return Cost(scale(self.forward), scale(self.weight_grad), scale(self.input_grad))


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """What a rule sees of one call of a layer (or Keras op).

    Attributes:
        layer: the layer or ``keras.Operation`` being called.
        args: positional call arguments; tensors are ``keras.KerasTensor``
            specs with batch dimension 1.
        kwargs: keyword call arguments, same convention.
        inputs: shapes of all tensor arguments, flattened in call order.
        outputs: shapes of all outputs, flattened.

    Example:
        >>> import keras
        >>> x = keras.KerasTensor((1, 4, 8))
        >>> call = LayerCall(keras.layers.ReLU(), (x,), {}, ((1, 4, 8),), ((1, 4, 8),))
        >>> call.argument("inputs").shape
        (1, 4, 8)
    """

    layer: Any
    args: tuple
    kwargs: dict
    inputs: tuple
    outputs: tuple

    def argument(self, name: str, default: Any = None) -> Any:
        """The value bound to parameter ``name`` of the layer's ``call``."""
        try:
            bound = inspect.signature(self.layer.call).bind_partial(*self.args, **self.kwargs)
        except TypeError:
            return self.kwargs.get(name, default)
        return bound.arguments.get(name, default)


class UnsupportedLayerError(ValueError):
    """A layer with weights (or an unfamiliar shape change) has no FLOP rule."""


Rule = Callable[[LayerCall], Cost]
_RULES: dict = {}


def register(*types: type) -> Callable[[Rule], Rule]:
    """Registers a FLOP rule for layer (or ``keras.Operation``) types.

    The rule also applies to subclasses, unless they have a rule of their own.
    Registering a type again replaces its rule.

    Args:
        *types: the classes the rule handles.

    Returns:
        A decorator that registers and returns the rule unchanged.

    Example:
        >>> import keras
        >>> class Scale(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.w = self.add_weight(shape=(shape[-1],), name="w")
        ...     def call(self, x):
        ...         return x * self.w
        >>> @register(Scale)
        ... def _scale(call):
        ...     n = elements(call.outputs[0])
        ...     return Cost((Term(n, call.layer.w, matmul=True),))
    """
    if not types or not all(isinstance(t, type) for t in types):
        raise TypeError(f"register() takes layer classes, got {types!r}")

    def decorator(rule: Rule) -> Rule:
        for t in types:
            _RULES[t] = rule
        return rule

    return decorator


def rule_for(op: Any) -> Optional[Rule]:
    """The rule registered for ``type(op)`` or its nearest base class."""
    for cls in type(op).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def supported_types() -> list[str]:
    """Sorted names of the layer classes (not Keras ops) with a rule."""
    import keras
    return sorted({t.__name__ for t in _RULES if issubclass(t, keras.layers.Layer)})


# ---------------------------------------------------------------------------
# Small shape helpers.

def elements(shape: Sequence[Optional[int]]) -> int:
    """Per-sample element count of a batched shape (drops the batch axis)."""
    dims = tuple(shape)[1:]
    if any(d is None for d in dims):
        raise ValueError(f"shape {tuple(shape)} has unknown dimensions; "
                         "FLOPs need a fully known input size")
    return int(math.prod(dims))


def _channels_and_spatial(shape, data_format):
    """(channels, spatial dims) of a batched conv tensor."""
    if data_format == "channels_first":
        return shape[1], tuple(shape[2:])
    return shape[-1], tuple(shape[1:-1])


def own_variable(layer, name: str):
    """The variable ``name`` created directly by ``layer`` (not a sublayer)."""
    for v in list(layer._trainable_variables) + list(layer._non_trainable_variables):
        if v.name == name:
            return v
    return None


def _require_variable(layer, name):
    v = own_variable(layer, name)
    if v is None:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no "
                         f"variable {name!r}; is it built?")
    return v


def _bias_term(layer, out_shape, name="bias") -> list:
    bias = own_variable(layer, name)
    return [Term(elements(out_shape), bias)] if bias is not None else []


def _activation_name(activation) -> str:
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", type(activation).__name__).lower()


def activation_flops(activation, out_shape) -> int:
    """FLOPs of an activation function applied to a tensor of ``out_shape``."""
    name = _activation_name(activation)
    if name == "linear":
        return 0
    if name in ("softmax", "log_softmax"):
        return SOFTMAX_FLOPS_PER_ELEMENT * elements(out_shape)
    return elements(out_shape)


def _activation_terms(layer, out_shape) -> list:
    flops = activation_flops(getattr(layer, "activation", None), out_shape)
    return [Term(flops)] if flops else []


def _default(value, fallback):
    return fallback if value is None else value


def _check_dim(layer, what, got, expected):
    if got != expected:
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) was built for {what} "
            f"{expected} but receives {got} at this input size")


# ---------------------------------------------------------------------------
# Einsum contraction counts.

def _letters_and_dims(spec: str, shape: Sequence[int]):
    """Splits an einsum operand spec into named letters and the ellipsis dims."""
    if "..." not in spec:
        if len(spec) != len(shape):
            raise ValueError(f"einsum operand {spec!r} does not match shape {tuple(shape)}")
        return list(zip(spec, shape)), ()
    pre, post = spec.split("...")
    n_ell = len(shape) - len(pre) - len(post)
    if n_ell < 0:
        raise ValueError(f"einsum operand {spec!r} does not match shape {tuple(shape)}")
    named = list(zip(pre, shape[:len(pre)])) + list(zip(post, shape[len(pre) + n_ell:]))
    return named, tuple(shape[len(pre):len(pre) + n_ell])


def _index_sizes(equation, specs, shapes):
    """Size of every named index, and the broadcast shape of the ellipsis dims."""
    sizes: dict = {}
    ellipses = []
    for spec, shape in zip(specs, shapes):
        if any(d is None for d in shape):
            raise ValueError(f"einsum {equation!r}: operand shape {tuple(shape)} "
                             "is not fully known")
        named, ell = _letters_and_dims(spec, tuple(shape))
        if "..." in spec:
            ellipses.append(ell)
        for letter, dim in named:
            old = sizes.get(letter, 1)
            if old != 1 and dim != 1 and old != dim:
                raise ValueError(f"einsum {equation!r}: index {letter!r} has sizes {old} and {dim}")
            sizes[letter] = max(old, dim)
    ell_shape = tuple(np.broadcast_shapes(*ellipses)) if ellipses else None
    return sizes, ell_shape


def einsum_contraction(equation: str, *shapes: Sequence[int]):
    """Multiply-adds and output shape of ``einsum(equation, *operands)``.

    Every combination of index values is one multiply-add, so the count is the
    product of the sizes of all distinct indices (times the broadcast ellipsis
    dims). Size-1 indices broadcast.

    Example:
        >>> einsum_contraction("btd,df->btf", (1, 4, 8), (8, 16))
        (512, (1, 4, 16))
    """
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    specs = lhs.split(",")
    if len(specs) != len(shapes):
        raise ValueError(f"einsum {equation!r} takes {len(specs)} operands, got {len(shapes)}")
    sizes, ell_shape = _index_sizes(equation, specs, shapes)
    macs = int(math.prod(sizes.values())) * int(math.prod(ell_shape or ()))
    if not arrow:
        # Implicit output: the indices that appear exactly once, sorted.
        once = sorted(c for c in sizes if lhs.count(c) == 1)
        rhs = ("..." if ell_shape is not None else "") + "".join(once)
    unknown = sorted(set(rhs.replace("...", "")) - set(sizes))
    if unknown:
        raise ValueError(f"einsum {equation!r}: output indices {unknown} appear in no operand")
    pre, _, post = rhs.partition("...")
    out_shape = tuple(sizes[c] for c in pre) + (ell_shape or ()) + tuple(sizes[c] for c in post)
    return macs, out_shape


# ---------------------------------------------------------------------------
# Built-in layer rules. Imports are local to keep `import kgrow` light.

def _install_builtin_rules():
    import keras
    from keras import layers as L

    def zero(_call):
        return Cost()

    def per_output(flops_per_element):
        def rule(call):
            return Cost((Term(flops_per_element * sum(elements(s) for s in call.outputs)),))
        return rule

    def per_input(call):
        return Cost((Term(elements(call.inputs[0])),))

    # --- convolutions -----------------------------------------------------
    def _conv_cost(layer, kernels, positions, out_shape):
        """Kernel terms over ``positions`` grid points, plus bias and activation."""
        terms = [Term(2 * math.prod(k.shape) * positions, k, matmul=True) for k in kernels]
        return Cost((*terms, *_bias_term(layer, out_shape), *_activation_terms(layer, out_shape)))

    depthwise = [getattr(L, n) for n in ("DepthwiseConv1D", "DepthwiseConv2D") if hasattr(L, n)]

    @register(L.Conv1D, L.Conv2D, L.Conv3D, *depthwise)
    def _conv(call):
        # Kernel (*k, Cin/groups, Cout) or depthwise (*k, Cin, multiplier):
        # each output grid point applies the whole kernel once.
        layer = call.layer
        kernel = _require_variable(layer, "kernel")
        cin, _ = _channels_and_spatial(call.inputs[0], layer.data_format)
        _check_dim(layer, "input channels", cin, kernel.shape[-2] * getattr(layer, "groups", 1))
        _, out_spatial = _channels_and_spatial(call.outputs[0], layer.data_format)
        return _conv_cost(layer, [kernel], math.prod(out_spatial), call.outputs[0])

    transposed = [getattr(L, n) for n in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
                  if hasattr(L, n)]

    @register(*transposed)
    def _conv_transpose(call):
        # Every input position scatters a full kernel (*k, Cout, Cin): the cost
        # follows the input grid, not the (larger) output grid.
        layer = call.layer
        kernel = _require_variable(layer, "kernel")
        cin, in_spatial = _channels_and_spatial(call.inputs[0], layer.data_format)
        _check_dim(layer, "input channels", cin, kernel.shape[-1])
        return _conv_cost(layer, [kernel], math.prod(in_spatial), call.outputs[0])

    separable = [getattr(L, n) for n in ("SeparableConv1D", "SeparableConv2D") if hasattr(L, n)]

    @register(*separable)
    def _separable(call):
        # The depthwise step carries the strides, so both steps run on the
        # output grid.
        layer = call.layer
        dw = _require_variable(layer, "depthwise_kernel")
        pw = _require_variable(layer, "pointwise_kernel")
        cin, _ = _channels_and_spatial(call.inputs[0], layer.data_format)
        _check_dim(layer, "input channels", cin, dw.shape[-2])
        _, out_spatial = _channels_and_spatial(call.outputs[0], layer.data_format)
        return _conv_cost(layer, [dw, pw], math.prod(out_spatial), call.outputs[0])

    # --- dense --------------------------------------------------------------
    @register(L.Dense)
    def _dense(call):
        layer = call.layer
        kernel = _require_variable(layer, "kernel")
        in_shape = call.inputs[0]
        _check_dim(layer, "input features", in_shape[-1], kernel.shape[0])
        positions = math.prod(in_shape[1:-1])  # tokens [B,T,D] -> T positions
        macs = positions * math.prod(kernel.shape)
        return Cost((Term(2 * macs, kernel, matmul=True),
                     *_bias_term(layer, call.outputs[0]),
                     *_activation_terms(layer, call.outputs[0])))

    @register(L.EinsumDense)
    def _einsum_dense(call):
        layer = call.layer
        kernel = _require_variable(layer, "kernel")
        macs, _ = einsum_contraction(layer.equation, call.inputs[0], tuple(kernel.shape))
        return Cost((Term(2 * macs, kernel, matmul=True),
                     *_bias_term(layer, call.outputs[0]),
                     *_activation_terms(layer, call.outputs[0])))

    @register(L.Embedding)
    def _embedding(call):
        # A lookup is a gather (no arithmetic); its weight gradient is a
        # scatter-add of one row per looked-up position.
        layer = call.layer
        table = _require_variable(layer, "embeddings")
        if call.argument("reverse", False):
            # ReversibleEmbedding's output projection: logits = x @ table^T.
            macs = elements(call.inputs[0]) * table.shape[0]
            return Cost((Term(2 * macs, table, matmul=True),))
        n = elements(call.outputs[0])
        return Cost((Term(0, table, matmul=True),), weight_grad=(Term(n, table, matmul=True),))

    # --- attention ----------------------------------------------------------
    def _projection(dense, shape):
        """(terms, output shape) of an EinsumDense sublayer on ``shape``."""
        # EinsumDense.compute_output_shape keeps None for the free sequence
        # axis of attention projections; the einsum itself knows the size.
        kernel = _require_variable(dense, "kernel")
        _, out_shape = einsum_contraction(dense.equation, tuple(shape), tuple(kernel.shape))
        inner = LayerCall(dense, (), {}, (tuple(shape),), (out_shape,))
        return list(_einsum_dense(inner).forward), out_shape

    def _attention_core(q, k, v, dot_eq, combine_eq, dot_order):
        """Terms of scale * QK^T, softmax and scores @ V for projected q, k, v."""
        operands = (k, q) if dot_order == "kq" else (q, k)
        qk_macs, scores = einsum_contraction(dot_eq, *operands)
        av_macs, out = einsum_contraction(combine_eq, scores, v)
        terms = [Term(elements(q)),  # q * 1/sqrt(d)
                 Term(2 * qk_macs),
                 Term(SOFTMAX_FLOPS_PER_ELEMENT * elements(scores)),
                 Term(2 * av_macs)]
        return terms, out

    @register(L.MultiHeadAttention)
    def _mha(call):
        # Counts the mathematically equivalent unfused computation even when
        # Keras dispatches to a fused dot_product_attention kernel; masked
        # (e.g. causal) scores are still computed, so they are counted.
        layer = call.layer
        query = call.argument("query")
        value = call.argument("value")
        key = _default(call.argument("key"), value)
        terms, q = _projection(layer._query_dense, query.shape)
        k_terms, k = _projection(layer._key_dense, key.shape)
        v_terms, v = _projection(layer._value_dense, value.shape)
        core, attn = _attention_core(q, k, v, layer._dot_product_equation,
                                     layer._combine_equation, "kq")
        terms += k_terms + v_terms + core
        terms += _gate_terms(layer, getattr(layer, "_use_gate", False), query.shape, attn)
        out_terms, _ = _projection(layer._output_dense, attn)
        return Cost(tuple(terms + out_terms))

    def _gate_terms(layer, use_gate, query_shape, attn_shape):
        if not use_gate:
            return []
        gate_terms, _ = _projection(layer._gate_dense, query_shape)
        return gate_terms + [Term(elements(attn_shape))]  # attention * gate

    if hasattr(L, "GroupQueryAttention"):
        @register(L.GroupQueryAttention)
        def _gqa(call):
            layer = call.layer
            query = call.argument("query")
            value = call.argument("value")
            key = _default(call.argument("key"), value)
            terms, q = _projection(layer._query_dense, query.shape)
            k_terms, k = _projection(layer._key_dense, key.shape)
            v_terms, v = _projection(layer._value_dense, value.shape)
            # Keys/values are repeated (a copy, no arithmetic) to all query heads.
            k = k[:2] + (k[2] * layer.num_repeats,) + k[3:]
            v = v[:2] + (v[2] * layer.num_repeats,) + v[3:]
            core, attn = _attention_core(q, k, v, layer._dot_product_equation,
                                         layer._combine_equation, "qk")
            terms += k_terms + v_terms + core
            terms += _gate_terms(layer, layer.use_gate, query.shape, attn)
            out_terms, _ = _projection(layer._output_dense, attn)
            return Cost(tuple(terms + out_terms))

    @register(L.Attention)
    def _dot_attention(call):
        layer = call.layer
        inputs = call.argument("inputs")
        q, v = inputs[0].shape, inputs[1].shape
        k = inputs[2].shape if len(inputs) > 2 else v
        t, s, d, dv = math.prod(q[1:-1]), math.prod(k[1:-1]), q[-1], v[-1]
        scores = t * s
        terms = [Term(2 * scores * d)]
        if layer.score_mode == "concat":
            # tanh(q + k) summed over features: add, tanh, multiply, sum.
            terms = [Term(4 * scores * d)]
        for name in ("scale", "concat_score_weight"):
            var = own_variable(layer, name)
            if var is not None:
                terms.append(Term(scores, var))
        terms += [Term(SOFTMAX_FLOPS_PER_ELEMENT * scores), Term(2 * scores * dv)]
        return Cost(tuple(terms))

    @register(L.AdditiveAttention)
    def _additive_attention(call):
        layer = call.layer
        inputs = call.argument("inputs")
        q, v = inputs[0].shape, inputs[1].shape
        k = inputs[2].shape if len(inputs) > 2 else v
        scores = math.prod(q[1:-1]) * math.prod(k[1:-1])
        d = q[-1]
        terms = [Term(3 * scores * d)]  # add, tanh, sum over features
        scale = own_variable(layer, "scale")
        terms.append(Term(scores * d, scale, matmul=scale is not None))
        terms += [Term(SOFTMAX_FLOPS_PER_ELEMENT * scores), Term(2 * scores * v[-1])]
        return Cost(tuple(terms))

    # --- normalization --------------------------------------------------------
    def _affine_terms(layer, n, scale_name="gamma", center_name="beta"):
        terms = []
        for name in (scale_name, center_name):
            var = own_variable(layer, name)
            if var is not None:
                terms.append(Term(n, var))
        return terms

    @register(L.BatchNormalization, L.LayerNormalization, L.GroupNormalization)
    def _norm(call):
        n = elements(call.outputs[0])
        return Cost((Term(NORMALIZE_FLOPS_PER_ELEMENT * n), *_affine_terms(call.layer, n)))

    rms_types = [t for t in (getattr(L, "RMSNormalization", None), L.UnitNormalization) if t]

    @register(*rms_types)
    def _rms_norm(call):
        n = elements(call.outputs[0])
        return Cost((Term(RMS_NORMALIZE_FLOPS_PER_ELEMENT * n),
                     *_affine_terms(call.layer, n, "scale", "center")))

    # --- activations ------------------------------------------------------
    @register(L.Activation)
    def _activation(call):
        return Cost((Term(activation_flops(call.layer.activation, call.outputs[0])),))

    register(L.ReLU, L.LeakyReLU, L.ELU)(per_output(1))
    register(L.Softmax)(per_output(SOFTMAX_FLOPS_PER_ELEMENT))

    @register(L.PReLU)
    def _prelu(call):
        n = elements(call.outputs[0])
        return Cost((Term(n), Term(n, _require_variable(call.layer, "alpha"), matmul=True)))

    # --- pooling ------------------------------------------------------------
    pooling = [getattr(L, f"{kind}Pooling{d}D") for kind in ("Max", "Average") for d in (1, 2, 3)]

    @register(*pooling)
    def _pool(call):
        window = math.prod(call.layer.pool_size)
        return Cost((Term(window * elements(call.outputs[0])),))

    global_pooling = [getattr(L, f"Global{kind}Pooling{d}D")
                      for kind in ("Max", "Average") for d in (1, 2, 3)]
    global_pooling += [getattr(L, f"Adaptive{kind}Pooling{d}D")
                       for kind in ("Max", "Average") for d in (1, 2, 3)
                       if hasattr(L, f"Adaptive{kind}Pooling{d}D")]
    register(*global_pooling)(per_input)

    # --- merging ------------------------------------------------------------
    @register(L.Add, L.Subtract, L.Multiply, L.Maximum, L.Minimum)
    def _merge(call):
        return Cost((Term((len(call.inputs) - 1) * elements(call.outputs[0])),))

    @register(L.Average)
    def _average(call):
        return Cost((Term(len(call.inputs) * elements(call.outputs[0])),))

    @register(L.Dot)
    def _dot(call):
        layer = call.layer
        a = call.inputs[0]
        axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
        axis = axes[0] % len(a)
        terms = [Term(2 * elements(call.outputs[0]) * a[axis])]
        if layer.normalize:
            inputs = sum(elements(s) for s in call.inputs)
            terms.append(Term(RMS_NORMALIZE_FLOPS_PER_ELEMENT * inputs))
        return Cost(tuple(terms))

    # --- data movement, identity, and training-only noise: no arithmetic ------
    free = ["InputLayer", "Identity", "Reshape", "Flatten", "Permute", "RepeatVector",
            "Concatenate", "Masking", "Cropping1D", "Cropping2D", "Cropping3D",
            "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Dropout",
            "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
            "GaussianDropout", "AlphaDropout", "ActivityRegularization", "CenterCrop",
            "UpSampling1D"]
    register(*[getattr(L, n) for n in free if hasattr(L, n)])(zero)

    @register(L.UpSampling2D, L.UpSampling3D, L.Resizing)
    def _resample(call):
        method = getattr(call.layer, "interpolation", "nearest")
        if method == "nearest":
            return Cost()
        return Cost((Term(INTERPOLATION_FLOPS_PER_ELEMENT * elements(call.outputs[0])),))

    register(L.Rescaling, L.Normalization)(per_output(2))  # multiply and add

    @register(L.TimeDistributed)
    def _time_distributed(call):
        inner = call.layer.layer
        rule = rule_for(inner)
        if rule is None:
            raise UnsupportedLayerError(
                f"TimeDistributed layer {call.layer.name!r} wraps {type(inner).__name__}, "
                "which has no FLOP rule")
        steps = call.inputs[0][1]
        inner_call = LayerCall(inner, (keras.KerasTensor((1,) + tuple(call.inputs[0][2:])),), {},
                               ((1,) + tuple(call.inputs[0][2:]),),
                               tuple((1,) + tuple(s[2:]) for s in call.outputs))
        return rule(inner_call).scaled(steps)

    _install_op_rules()


def _install_op_rules():
    """Rules for raw ``keras.ops`` calls recorded in a Functional graph."""
    from keras.src.ops import core, math as kmath, nn, numpy as knp

    def by_name(modules, names):
        return [getattr(m, n) for n in names for m in modules if hasattr(m, n)]

    free = ["Reshape", "Transpose", "Concatenate", "Stack", "Squeeze", "ExpandDims",
            "Split", "Take", "TakeAlongAxis", "GetItem", "Slice", "Tile", "Repeat", "Flip",
            "Roll", "Pad", "Cast", "BroadcastTo", "Moveaxis", "Swapaxes", "Ravel", "Copy",
            "ZerosLike", "OnesLike", "StopGradient", "Unstack", "Hstack", "Vstack",
            "ConvertToTensor", "DepthToSpace", "SpaceToDepth", "Shape", "Size", "Ndim"]
    register(*by_name((knp, core, nn), free))(lambda call: Cost())

    reductions = ["Mean", "Sum", "Max", "Min", "Prod", "Amax", "Amin", "Argmax", "Argmin",
                  "Any", "All", "Average", "Var", "Std", "Logsumexp", "Cumsum", "Cumprod",
                  "Median", "CountNonzero"]

    @register(*by_name((knp, kmath), reductions))
    def _reduce(call):
        return Cost((Term(elements(call.inputs[0])),))

    @register(*by_name((nn,), ["Softmax", "LogSoftmax"]))
    def _softmax(call):
        return Cost((Term(SOFTMAX_FLOPS_PER_ELEMENT * elements(call.outputs[0])),))

    @register(knp.Matmul)
    def _matmul(call):
        return Cost((Term(2 * elements(call.outputs[0]) * call.inputs[0][-1]),))

    @register(knp.Einsum)
    def _einsum(call):
        # Operands may be constants rather than graph tensors; take all shapes.
        shapes = [tuple(getattr(a, "shape", np.shape(a))) for a in call.args]
        macs, _ = einsum_contraction(call.layer.subscripts, *shapes)
        return Cost((Term(2 * macs),))

    if hasattr(nn, "DotProductAttention"):
        @register(nn.DotProductAttention)
        def _sdpa(call):
            q = call.argument("query").shape  # [B, T, H, D]
            k = call.argument("key").shape
            v = call.argument("value").shape
            t, s, h, d = q[1], k[1], q[2], q[3]
            scores = t * s * h
            return Cost((Term(elements(q)), Term(2 * scores * d),
                         Term(SOFTMAX_FLOPS_PER_ELEMENT * scores), Term(2 * scores * v[-1])))


def _install_kgrow_model_rules(module) -> None:
    """Rules for the custom layers of ``kgrow.models.layers`` (ViT parts)."""
    def rule_class_token(call):
        # A concatenation: free forward; its gradient sums one row per sample.
        token = _require_variable(call.layer, "token")
        return Cost((Term(0, token),), weight_grad=(Term(token.shape[0], token),))

    def rule_position_embedding(call):
        table = _require_variable(call.layer, "embeddings")
        # A table kept on another grid is resampled once per batch, not per
        # sample: nothing to count per sample.
        _check_dim(call.layer, "tokens", call.inputs[0][1], call.layer.num_tokens)
        return Cost((Term(elements(call.outputs[0]), table),))

    def rule_token_pooling(call):
        layer = call.layer
        if layer.mode == "class":
            return Cost()
        tokens, dim = call.inputs[0][1], call.inputs[0][2]
        return Cost((Term((tokens - layer.num_prefix_tokens) * dim),))

    table = {"ClassToken": rule_class_token, "PositionEmbedding": rule_position_embedding,
             "TokenPooling": rule_token_pooling,
             "DropPath": lambda call: Cost()}  # identity at inference, like Dropout
    for name, rule in table.items():
        cls = getattr(module, name, None)
        if isinstance(cls, type) and cls not in _RULES:
            register(cls)(rule)


_OPTIONAL_RULES = {"kgrow.models.layers": _install_kgrow_model_rules}
_installed_optional: set = set()


def install_optional_rules() -> None:
    """Adds rules for layer modules that are loaded by now.

    A model can only contain a module's layers once that module is imported,
    so checking ``sys.modules`` (instead of importing) keeps ``kgrow.flops``
    free of a hard dependency and of import cycles.
    """
    import sys
    for name, install in _OPTIONAL_RULES.items():
        module = sys.modules.get(name)
        if module is not None and name not in _installed_optional:
            install(module)
            _installed_optional.add(name)


_install_builtin_rules()

"""Forward and training FLOPs per sample of a Keras model at a given input size.

``count(model, input_shape)`` walks the model's layer graph (nested models
included) at the given size without running it, prices every layer call with
a rule, and returns a :class:`FlopsReport` with the totals and one row per layer.

Counting convention (all counts are per sample):

* One multiply-add = 2 FLOPs.
* Convolution: ``2 * prod(kernel_size) * Cin/groups * Cout * prod(output grid)``;
  transposed convolution uses the *input* grid (each input position scatters
  one kernel); depthwise ``2 * prod(kernel_size) * Cin * multiplier * prod(output
  grid)``; separable = depthwise + pointwise, both on the output grid.
* Dense: ``2 * Din * Dout`` per position (``T`` positions for tokens ``[B,T,D]``);
  EinsumDense: 2 * the product of the sizes of all einsum indices.
* Bias: 1 FLOP per output element. Fused activations: as activations below.
* Elementwise ops (activations, Add/Subtract/Multiply/Maximum/Minimum, raw
  ``keras.ops`` elementwise calls, unknown weightless shape-preserving
  layers): 1 FLOP per output element per op; a merge of ``n`` inputs is
  ``n - 1`` ops, Average ``n``. Softmax: 5 per element (max, subtract, exp,
  sum, divide).
* Normalization (BatchNorm, LayerNorm, GroupNorm): 4 per element (mean,
  variance, subtract, divide) + 1 per element for each of gamma and beta;
  RMSNormalization / UnitNormalization: 3 per element (+1 for a scale).
  BatchNorm is priced the same in training and inference.
* MultiHeadAttention / GroupQueryAttention: the Q, K, V (and gate) and output
  projections as EinsumDense, plus ``T*H*dk`` for scaling the query, ``2*T*S*H*dk``
  for QK^T, softmax on the ``T*S*H`` scores, ``2*T*S*H*dv`` for scores x V.
  Masked scores are still computed, so masks (causal too) do not reduce the count.
* Pooling: ``prod(pool_size)`` per output element; global/adaptive pooling 1 per
  input element. Linear resizing/upsampling 4 per output element, nearest 0.
* Free (0): reshapes, concatenation, padding, cropping, slicing, dropout and noise
  layers (identity at inference), embedding lookups (a gather; their weight
  gradient is a scatter-add of 1 FLOP per output element).

Training FLOPs = forward + input gradient + weight gradient, per layer:

* input gradient = the forward FLOPs, counted only if some trainable layer
  lies upstream of the layer (between the model input and it) -- below the
  first trainable layer no gradient needs to flow back;
* weight gradient = the forward FLOPs of the terms that involve a trainable
  weight (for conv/dense: kernel and bias, not a fused activation), 0 for frozen layers
  (``layer.trainable = False``) and weightless ones.

Weight sparsity (``sparsity={"conv1/kernel": 0.25}`` or ``{"conv1": 0.25}`` or
masks): the FLOPs that multiply a weight scale by its density (fraction of
non-zeros) in the forward pass and both backward passes. Per-step costs that
do not grow with the batch (optimizer updates, LoRA weight merges) are not
per-sample FLOPs and are not counted.

Layers without a rule that have weights raise :class:`UnsupportedLayerError`
(``strict=False`` counts them as 0 with a warning); add a rule with
:func:`register`.

Example:
    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    >>> model = keras.Model(inputs, x)
    >>> report = count(model)
    >>> report.forward == 2 * 3 * 3 * 3 * 4 * 8 * 8 + 4 * 8 * 8
    True
"""
from kgrow.flops.counter import count, cost_of
from kgrow.flops.report import FlopsReport, LayerFlops, format_flops
from kgrow.flops.rules import (Cost, LayerCall, Term, UnsupportedLayerError, einsum_contraction,
                               elements, register, supported_types)

__all__ = [
    "count", "cost_of", "FlopsReport", "LayerFlops", "format_flops", "Cost", "LayerCall",
    "Term", "UnsupportedLayerError", "einsum_contraction", "elements", "register",
    "supported_types",
]

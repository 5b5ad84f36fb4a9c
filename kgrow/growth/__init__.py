"""Growth initializers: the values of new channels when a model is widened.

`kgrow.surgery.scale_width(model, ..., initializer=name)` asks a
`GrowthInitializer` for the new fan-in (filters), fan-out (next layer's rows)
and per-channel parameters of each grown channel group. Built in:

* ``zeros``: He-normal fan-in, zero fan-out. Exact unless the group is
  normalized over its channels (LayerNorm, GroupNorm, RMS/unit norm, softmax).
* ``random``: He (or Glorot) fan-in and fan-out. Never exact: a fresh start.
* ``net2net``: new channels copy existing ones, the fan-out is split among the
  copies. Exact, except under softmax/unit norm; under LayerNorm, RMS norm or
  GroupNorm only when the new size is a multiple of the kept size (every
  channel replicated equally often, e.g. 0.5x -> 1.0x).
* ``orthogonal`` (Network Expansion): fan-in orthogonal to the existing
  filters and to each other, zero fan-out. Exact as ``zeros``.
* ``variance_transfer`` (Yuan et al.): pairs with fan-in ``[V; V]`` and fan-out
  ``[Z, -Z]`` that cancel. Exact as ``zeros``; with ``rescale`` only when a
  BatchNorm follows every consumer (it absorbs the rescaling).

Every initializer answers ``preserves_function(group, old, new)`` honestly
for a given `kgrow.surgery.channels.ChannelGroup`; add your own with
`register_initializer`.

Example:
    >>> from kgrow.growth import get_initializer, available_initializers
    >>> sorted({"net2net", "orthogonal", "random", "variance_transfer", "zeros"}
    ...        - set(available_initializers()))  # the built-ins are all there
    []
    >>> get_initializer("variance_transfer", rescale="sqrt").factor(4, 16)
    0.5
"""
from kgrow.growth.base import (GrowthInitializer, GrowthRequest, GrowthValues, WeightSlices,
                               available_initializers, get_initializer, he_std,
                               register_initializer)
from kgrow.growth.initializers import (Net2Net, Orthogonal, Random, VarianceTransfer, Zeros,
                                       orthogonal_filters)

__all__ = ["GrowthInitializer", "GrowthRequest", "GrowthValues", "WeightSlices",
           "available_initializers", "get_initializer", "he_std", "register_initializer",
           "Net2Net", "Orthogonal", "Random", "VarianceTransfer", "Zeros", "orthogonal_filters"]

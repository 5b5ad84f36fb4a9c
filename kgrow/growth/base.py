"""The growth-initializer protocol: how new channels of a group get their values.

`kgrow.surgery.scale_width` decides *which* channels a group keeps and how
many it adds; a `GrowthInitializer` decides the *values* of the added ones.
It works on plain arrays. For one channel group it receives a
`GrowthRequest` holding, for every weight axis bound to the group, the slices
of the kept channels flattened to a matrix ``[n_old, fan]``:

* ``producers``: the filters that create the channels (fan-in), e.g. the
  ``k*k*C_in`` weights of one output channel of a conv;
* ``consumers``: the rows that read the channels (fan-out), e.g. the
  ``k*k*C_out`` weights of one input channel of the next conv;
* ``carriers``: per-channel parameters (bias, BatchNorm statistics,
  LayerNorm gamma/beta, depthwise filters, LayerScale, position embeddings).

It returns a `GrowthValues` with the new channels' slices ``[n_new, fan]`` and
optional multipliers of the old channels' fan-in/fan-out. Channels are in
block-major order: with ``blocks = b`` (GroupNorm groups, conv groups) the old
channels are ``b`` equal consecutive blocks and so are the new ones, and new
block ``i`` is appended to old block ``i``.

Exactness: `GrowthInitializer.check(group, old, new)` returns None when
growing `group` from `old` kept channels to `new` channels computes exactly
the same function as before (for `training=False`), and otherwise a sentence
saying why not; `preserves_function` is the boolean form. The answer depends
on the group: a zero fan-out is exact unless the channels are normalised
together (LayerNorm, GroupNorm, softmax over channels), where the new
channels change the statistics.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["WeightSlices", "GrowthRequest", "GrowthValues", "GrowthInitializer",
           "register_initializer", "get_initializer", "available_initializers",
           "he_std", "MIXING_NORMALIZERS", "REPLICATION_SAFE_NORMALIZERS"]

#: Normalizers whose statistics over channels change when any channel is added.
MIXING_NORMALIZERS = ("layer_norm", "rms_norm", "group_norm", "unit_norm", "softmax")
#: Normalizers whose statistics survive replicating every channel the same
#: number of times (mean, variance and mean square of a uniformly replicated
#: vector equal those of the vector). Unit norm and softmax do not.
REPLICATION_SAFE_NORMALIZERS = ("layer_norm", "rms_norm", "group_norm")


@dataclasses.dataclass
class WeightSlices:
    """The slices of one bound weight axis, one row per kept channel.

    Attributes:
        old: array ``[n_old, fan]`` (float64) of the kept channels.
        fan_in: fan-in of one unit of the layer owning the weight, in the
            grown model (e.g. ``k*k*C_in`` of a conv kernel).
        kind: "kernel", "bias", "gamma", "moving_variance", ...
        fill: default of new carrier channels: a float, "mean" or "he".
        name: ``"<variable path>[axis]"``, for messages.
    """
    old: np.ndarray
    fan_in: int
    kind: str = "kernel"
    fill: Any = 0.0
    name: str = ""

    @property
    def fan(self) -> int:
        return int(self.old.shape[1])


@dataclasses.dataclass
class GrowthRequest:
    """Everything an initializer gets for one group.

    Attributes:
        group: the `kgrow.surgery.channels.ChannelGroup` (name, normalizers, ...).
        n_old: kept channels.
        n_new: channels to add.
        blocks: the channels form this many equal consecutive blocks.
        producers / consumers / carriers: lists of `WeightSlices`.
        rng: a `numpy.random.Generator` (seeded by `scale_width`).
    """
    group: Any
    n_old: int
    n_new: int
    blocks: int
    producers: list
    consumers: list
    carriers: list
    rng: np.random.Generator

    def block_of_new(self) -> np.ndarray:
        """Block index of each new channel."""
        return np.repeat(np.arange(self.blocks), self.n_new // self.blocks)


@dataclasses.dataclass
class GrowthValues:
    """What an initializer returns for one group.

    Attributes:
        producers: one ``[n_new, fan]`` array per request producer.
        consumers: one ``[n_new, fan]`` array per request consumer.
        carriers: one ``[n_new, fan]`` array per request carrier.
        producer_scale: None or ``[n_old]`` multipliers of the old fan-in.
        consumer_scale: None or ``[n_old]`` multipliers of the old fan-out.
        compensate: a scalar s when the old fan-out was multiplied by s
            uniformly and the caller should undo it in the BatchNorm that
            follows each consumer (variance transfer); None otherwise.
    """
    producers: list
    consumers: list
    carriers: list
    producer_scale: Optional[np.ndarray] = None
    consumer_scale: Optional[np.ndarray] = None
    compensate: Optional[float] = None


def he_std(fan_in: int) -> float:
    """Standard deviation of He-normal initialization, ``sqrt(2 / fan_in)``."""
    return float(np.sqrt(2.0 / max(int(fan_in), 1)))


class GrowthInitializer:
    """Base class of growth initializers (see the module docstring).

    Subclasses implement `grow` and `check`; `name` is the registry name.

    Example:
        >>> import numpy as np
        >>> from kgrow.growth import get_initializer
        >>> init = get_initializer("zeros")
        >>> from kgrow.growth.base import GrowthRequest, WeightSlices
        >>> req = GrowthRequest(None, 2, 1, 1, [WeightSlices(np.ones((2, 3)), 3)],
        ...                     [WeightSlices(np.ones((2, 4)), 3)], [], np.random.default_rng(0))
        >>> values = init.grow(req)
        >>> values.producers[0].shape, values.consumers[0].tolist()
        ((1, 3), [[0.0, 0.0, 0.0, 0.0]])
    """

    name = "base"
    #: Optional ``final_filters(request) -> list`` of ``[n_new, fan]`` arrays,
    #: one per producer. `scale_width` calls it after every group has grown,
    #: with the producers read from the finished weights (``consumers`` and
    #: ``carriers`` empty), and writes its rows over the new channels' fan-in.
    #: For initializers whose new filters depend on the kept filters'
    #: entries for other groups' new channels (orthogonality over the whole
    #: flattened filter); None skips the pass.
    final_filters = None

    def grow(self, request: GrowthRequest) -> GrowthValues:
        raise NotImplementedError

    def check(self, group, old_size: Optional[int] = None,
              new_size: Optional[int] = None) -> Optional[str]:
        """None if growing `group` from `old_size` to `new_size` is exact, else why not.

        Sizes may be omitted to ask about growth in general (any new size).
        """
        raise NotImplementedError

    def preserves_function(self, group, old_size: Optional[int] = None,
                           new_size: Optional[int] = None) -> bool:
        """Whether the grown model computes the same function (training=False)."""
        return self.check(group, old_size, new_size) is None

    def __repr__(self):
        return f"{type(self).__name__}()"

    # -- helpers shared by the built-in initializers ------------------------
    @staticmethod
    def mixing(group, allowed=()) -> list:
        """Normalizers of `group` (as ``layer (kind)``) whose kind is not in `allowed`."""
        return [f"{layer} ({kind})" for layer, kind in getattr(group, "normalizers", ())
                if kind not in allowed]

    @staticmethod
    def carrier_values(request: GrowthRequest, source: Optional[np.ndarray] = None,
                       prototype: Optional[np.ndarray] = None) -> list:
        """Values of new carrier channels.

        Args:
            request: the request.
            source: optional ``[n_new]`` old-channel index to copy from
                (Net2Net copies also copy BatchNorm statistics).
            prototype: optional ``[n_new]`` index into a set of generated
                values, so that several new channels share identical carriers
                (the two members of a variance-transfer pair must be equal).
                Default: every new channel is its own prototype.

        Carriers without a source get their binding's fill: a constant,
        ``"mean"`` of the old channels, or ``"he"`` (random normal with std
        ``sqrt(2 / fan_in)``, e.g. a new depthwise filter).
        """
        n = request.n_new
        if prototype is None:
            prototype = np.arange(n)
        count = int(prototype.max()) + 1 if n else 0
        out = []
        for s in request.carriers:
            if source is not None:
                out.append(s.old[source].copy())
                continue
            if isinstance(s.fill, str) and s.fill == "mean":
                proto = np.repeat(s.old.mean(axis=0, keepdims=True), count, axis=0)
            elif isinstance(s.fill, str) and s.fill == "he":
                proto = request.rng.normal(0.0, he_std(s.fan_in), (count, s.fan))
            else:
                proto = np.full((count, s.fan), float(s.fill))
            out.append(proto[prototype])
        return out


_REGISTRY: dict = {}


def register_initializer(name: str, factory: Callable[..., GrowthInitializer], *,
                         override: bool = False) -> None:
    """Adds a growth initializer usable by name in `scale_width(initializer=...)`.

    Args:
        name: registry name.
        factory: ``factory(**kwargs) -> GrowthInitializer`` (usually the class).
        override: replace an existing name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"initializer name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not override:
        raise ValueError(f"growth initializer {name!r} is already registered; pass "
                         "override=True to replace it.")
    _REGISTRY[name] = factory


def available_initializers() -> list:
    """Registered growth initializer names."""
    return sorted(_REGISTRY)


def get_initializer(spec, **kwargs) -> GrowthInitializer:
    """A `GrowthInitializer` from a name (with options) or an instance.

    Example:
        >>> get_initializer("net2net", noise=0.01).noise
        0.01
    """
    if isinstance(spec, GrowthInitializer):
        if kwargs:
            raise ValueError("options can only be passed with an initializer name, not with an "
                             f"instance ({spec!r})")
        return spec
    if isinstance(spec, str):
        if spec not in _REGISTRY:
            close = difflib.get_close_matches(spec, _REGISTRY, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"Unknown growth initializer {spec!r}.{hint} Available: "
                             f"{available_initializers()} (or pass a GrowthInitializer "
                             "instance; add names with kgrow.growth.register_initializer).")
        return _REGISTRY[spec](**kwargs)
    raise TypeError(f"initializer must be a name or a GrowthInitializer, got {spec!r}")

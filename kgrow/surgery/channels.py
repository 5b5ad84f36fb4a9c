"""Channel-dependency analysis: which channels of a Functional graph must change together.

Why groups
----------
Widening or shrinking one convolution is never a local change: its output
channels are read by the next layer's kernel, normalised by a BatchNorm,
added to a residual stream that ten other layers also write to, multiplied by
a squeeze-and-excitation gate... Every weight axis that indexes those channels
must change in the same way. A *channel group* is such a set of channels: a
number of channels plus every weight axis along them. `scale_width` picks one
new size (and one old-to-new channel map) per group and applies it to every
axis bound to the group.

The model
---------
Each symbolic tensor gets a *layout*: the list of groups its last (channel)
axis is made of, in order. Layers that create channels (Dense, Conv, the
output projection of MultiHeadAttention with `output_shape`) start a new
group named after the layer (``"stage1_block0_conv1"``); everything else maps
input layouts to output layouts:

* channel-transparent layers (activations, pooling, padding, dropout,
  BatchNorm, LayerNorm, depthwise convs, LayerScale, ...) pass the layout on;
* Add / Subtract / Multiply / Average / Maximum / Minimum *tie* their inputs:
  their groups are merged into one. A residual stream becomes one group named
  ``"residual:<first producer>"``. Broadcasting is handled: a
  ``[B, 1, 1, C]`` squeeze-and-excitation gate times a ``[B, H, W, C]`` map
  ties the two C's, but an input whose channel axis has size 1 broadcasts
  over the channels and stays its own (fixed-size) group;
* Concatenate on the channel axis *splits*: the output layout is the ordered
  list of the input layouts, so each input keeps its own group and a layer
  reading the concatenation (BatchNorm, a 1x1 conv in DenseNet) has each of
  its weight slices bound to the group it came from;
* Flatten (and a Reshape that merges trailing axes) of ``[B, H, W, C]`` gives
  the layout ``C`` repeated ``H * W`` times (Keras flattens row-major, channels
  fastest). Widening ``C`` by ``k`` therefore adds ``H * W * k`` inputs to the
  next Dense, at positions ``s * C' + c`` for every spatial position ``s``;
* a depthwise conv with depth multiplier ``m`` maps channel ``c`` to outputs
  ``c * m + j``: its output layout is the input layout with an *inner*
  repetition ``m``;
* MultiHeadAttention has three groups of its own, ``"<layer>:heads"``,
  ``"<layer>:key_dim"`` and ``"<layer>:value_dim"``; it reads its query, key
  and value inputs through their groups, and its output belongs to the query
  input's group (it is added back into the query's residual stream) unless
  ``output_shape`` is set, in which case the output is a new group. For the
  ``key_dim`` group the query projection is the producer and the key
  projection plays the consumer (``q . k`` sums over key dims, so a key dim
  whose key weights are zero contributes nothing).

Every bound weight axis has a role: *producer* (the axis indexes the
channels the weight creates: a kernel's output axis; its slice per channel is
a "filter", the fan-in), *consumer* (the axis reads the channels: a kernel's
input axis; its slice per channel is the fan-out) or *carrier* (a
per-channel parameter: bias, BatchNorm statistics, LayerNorm gamma, a
depthwise filter, LayerScale, a position embedding).

Constraints come with the groups: the channels of the model's inputs and
outputs are *fixed*; GroupNormalization with G groups and grouped convs with
G groups require sizes divisible by G (``ChannelGroup.divisor``), and new
channels go to the end of each of the G blocks so block membership is kept;
groups normalised over the channel axis (LayerNorm, GroupNorm, RMS norm, a
softmax over channels) are listed in ``ChannelGroup.normalizers`` because
adding channels changes those statistics (see `kgrow.growth` for which
initializers stay exact there).

Layer types are handled by *channel rules*, looked up by class (most
specific first). `register_channel_rule` adds rules for custom layers. A
layer with weights and no rule is an error (naming the layer and how to add a
rule); a weightless layer without a rule fixes the groups it touches, and the
reason is recorded in `ChannelGroups.unsupported`.

Example:
    >>> import keras
    >>> x = keras.Input((8, 8, 3), name="image")
    >>> a = keras.layers.Conv2D(8, 3, padding="same", name="a")(x)
    >>> b = keras.layers.Conv2D(8, 3, padding="same", name="b")(a)
    >>> y = keras.layers.Add(name="add")([a, b])
    >>> y = keras.layers.GlobalAveragePooling2D()(y)
    >>> m = keras.Model(x, keras.layers.Dense(2, name="head")(y))
    >>> groups = channel_groups(m)
    >>> [(g.name, g.size, g.resizable) for g in groups.values()]
    [('input:image', 3, False), ('residual:a', 8, True), ('head', 2, False)]
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Iterable, Mapping, Optional

import keras
import numpy as np
from keras import tree

from kgrow.surgery.graph import is_graph_model, nodes, require_functional, tensor_key

__all__ = [
    "Layout", "WeightAxis", "ChannelGroup", "ChannelGroups", "ChannelCall",
    "channel_groups", "register_channel_rule", "channel_rule_for", "supported_layer_types",
    "UnsupportedLayerError", "transparent", "ROLES", "NORMALIZER_KINDS",
]

#: Roles of a group. A float multiplier of `scale_width` applies to
#: "channels" and "heads"; the per-head sizes only change when named.
ROLES = ("channels", "heads", "key_dim", "value_dim")
#: Kinds listed in `ChannelGroup.normalizers` (operations that mix channels).
NORMALIZER_KINDS = ("layer_norm", "rms_norm", "group_norm", "unit_norm", "softmax")
_BINDING_ROLES = ("producer", "consumer", "carrier")


class UnsupportedLayerError(TypeError):
    """A layer with weights has no channel rule."""


# --------------------------------------------------------------------------
# Layouts and bindings
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """Channel layout of a tensor's last axis: ordered ``(group id, inner)`` segments.

    A segment of group ``g`` with ``inner = m`` covers ``size(g) * m``
    positions; channel ``c`` of the group owns positions ``c * m + j``.
    Layouts are produced and combined by channel rules; their group ids are
    internal to one analysis.
    """
    segments: tuple

    def __add__(self, other: "Layout") -> "Layout":
        return Layout(self.segments + other.segments)

    def repeat(self, times: int) -> "Layout":
        """The layout tiled `times` times (what Flatten does to spatial positions)."""
        return Layout(self.segments * int(times))

    def expand(self, multiplier: int) -> "Layout":
        """Each channel repeated `multiplier` times in place (depthwise multiplier)."""
        return Layout(tuple((g, inner * int(multiplier)) for g, inner in self.segments))


@dataclasses.dataclass(eq=False)
class WeightAxis:
    """One axis of one weight, bound to a channel layout.

    Attributes:
        layer: the layer owning the weight (in the analysed model).
        variable: the Keras variable.
        index: position of the variable in ``layer.weights``.
        axis: the bound axis (non-negative).
        role: "producer", "consumer" or "carrier" (see the module docstring).
        kind: what the weight is ("kernel", "bias", "gamma", "moving_mean", ...).
        fill: value of new channels of a carrier: a float, ``"mean"`` (mean of
            the existing channels) or ``"he"`` (random normal, std
            ``sqrt(2 / fan_in)``).
        fan_in_axes: axes whose sizes multiply to the fan-in of one unit of
            the layer (used by initializers to scale random values).
        fold: for the input axis of a grouped conv, ``(output_axis, groups)``:
            the axis holds the *local* index of a channel within its block,
            and channel ``c`` of block ``b`` only meets outputs of block ``b``.
        segments: the layout with group names: ``((group name, inner), ...)``.
    """
    layer: Any
    variable: Any
    index: int
    axis: int
    role: str
    kind: str
    fill: Any
    fan_in_axes: tuple
    fold: Optional[tuple]
    layout: Layout
    segments: tuple = ()

    @property
    def path(self) -> str:
        return self.variable.path

    @property
    def layer_name(self) -> str:
        return self.layer.name

    def fan_in(self, shape) -> int:
        """Fan-in of one unit for a weight of `shape`."""
        return int(np.prod([shape[a] for a in self.fan_in_axes])) if self.fan_in_axes else 1

    def __repr__(self):
        return f"WeightAxis({self.path!r}, axis={self.axis}, {self.role})"


@dataclasses.dataclass(eq=False)
class ChannelGroup:
    """A set of channels that must be resized together.

    Attributes:
        name: stable, readable name (see the module docstring).
        size: number of channels.
        role: one of `ROLES`.
        fixed: None if the group can be resized, else the reason it cannot.
        divisor: sizes must be multiples of it (GroupNorm groups, conv groups).
        uniform: new and kept channels must sit at the same local positions in
            every one of the `divisor` blocks (input of a grouped conv).
        producers / consumers / carriers: the bound weight axes by role.
        normalizers: ``(layer name, kind)`` of operations that mix the
            group's channels (kinds in `NORMALIZER_KINDS`).
        bn_compensable: every consumer is a layer reading only this group whose
            output goes straight (through positively homogeneous ops) into a
            BatchNorm with a gamma, so a uniform rescaling of the fan-out can
            be undone in that BatchNorm (used by variance transfer).
        layers: names of the layers touching the group.
    """
    name: str
    size: int
    role: str = "channels"
    fixed: Optional[str] = None
    divisor: int = 1
    uniform: bool = False
    producers: tuple = ()
    consumers: tuple = ()
    carriers: tuple = ()
    normalizers: tuple = ()
    bn_compensable: bool = False
    layers: tuple = ()

    @property
    def resizable(self) -> bool:
        return self.fixed is None

    @property
    def bindings(self) -> tuple:
        return self.producers + self.consumers + self.carriers

    def __repr__(self):
        state = "fixed" if self.fixed else f"divisor={self.divisor}"
        return (f"ChannelGroup({self.name!r}, size={self.size}, role={self.role!r}, {state}, "
                f"{len(self.producers)} producers, {len(self.consumers)} consumers, "
                f"{len(self.carriers)} carriers)")


@dataclasses.dataclass(eq=False)
class _LayerRecord:
    """What the analysis knows about one layer (shared layers: one record)."""
    layer: Any
    bindings: dict = dataclasses.field(default_factory=dict)  # (var index, axis) -> WeightAxis
    configure: Optional[Callable] = None
    adjust: list = dataclasses.field(default_factory=list)


class ChannelGroups(Mapping[str, ChannelGroup]):
    """Result of `channel_groups`: an ordered mapping ``name -> ChannelGroup``.

    Besides the groups it holds what `scale_width` needs to rewrite the
    model: per-layer weight bindings, config overrides and adjustment hooks.
    """

    def __init__(self, model, groups, records, root_name, unsupported, sizes, followers):
        self.model = model
        self.followers = followers        # id(layer) -> BatchNormalization fed by its output
        self._groups = groups
        self.records = records            # id(layer) -> _LayerRecord, topological order
        self._root_name = root_name       # group id -> group name
        self.unsupported = list(unsupported)
        self._sizes = sizes

    def __getitem__(self, name) -> ChannelGroup:
        try:
            return self._groups[name]
        except KeyError:
            raise KeyError(unknown_group_message(name, self._groups)) from None

    def __iter__(self):
        return iter(self._groups)

    def __len__(self):
        return len(self._groups)

    def __repr__(self):
        n = sum(g.resizable for g in self._groups.values())
        return f"ChannelGroups({len(self)} groups, {n} resizable)"

    def resizable(self) -> list:
        """The groups that can change size."""
        return [g for g in self._groups.values() if g.resizable]

    def segments(self, layout: Layout) -> tuple:
        """``((group name, inner), ...)`` for a layout of this analysis."""
        return tuple((self._root_name[g], inner) for g, inner in layout.segments)

    def layout_size(self, layout: Layout, sizes: Optional[Mapping[str, int]] = None) -> int:
        """Total size of a layout under `sizes` (group name -> size; default: current)."""
        sizes = sizes if sizes is not None else self._sizes
        return int(sum(sizes[self._root_name[g]] * inner for g, inner in layout.segments))

    def summary(self) -> str:
        """A readable table of the groups."""
        rows = [f"{'group':<48} {'size':>6}  {'role':<9} {'P/C/c':>8}  notes"]
        for g in self._groups.values():
            notes = []
            if g.fixed:
                notes.append(f"fixed: {g.fixed}")
            if g.divisor > 1:
                notes.append(f"multiple of {g.divisor}")
            if g.normalizers:
                notes.append("normalized by " + ", ".join(sorted({k for _, k in g.normalizers})))
            pcc = f"{len(g.producers)}/{len(g.consumers)}/{len(g.carriers)}"
            rows.append(f"{g.name:<48} {g.size:>6}  {g.role:<9} {pcc:>8}  {'; '.join(notes)}")
        return "\n".join(rows)


def unknown_group_message(name, groups) -> str:
    close = difflib.get_close_matches(str(name), list(groups), n=3)
    hint = f" Did you mean {close}?" if close else ""
    return (f"Unknown channel group {name!r}.{hint} The model's resizable groups are: "
            f"{[g for g, v in groups.items() if v.fixed is None]}")


# --------------------------------------------------------------------------
# Rule registry
# --------------------------------------------------------------------------

_RULES: dict = {}


def register_channel_rule(layer_cls, rule: Callable, *, override: bool = False) -> None:
    """Registers how a layer type maps channels (for `channel_groups`/`scale_width`).

    Args:
        layer_cls: a `keras.layers.Layer` (or `keras.Operation`) subclass; the
            rule also applies to its subclasses unless they have their own.
        rule: ``rule(call: ChannelCall) -> None``. It must set the output
            layouts (``call.set_outputs``) and bind every weight axis that
            indexes channels (``call.bind``); if a config value depends on a
            channel count it registers ``call.configure(lambda size: {...})``.
            `transparent` is the rule of a weightless layer that keeps the
            channel axis as is (an activation, a spatial op).
        override: replace an existing rule for exactly this class.

    Example:
        >>> class Scale(keras.layers.Layer):  # a per-channel learned scale
        ...     def build(self, shape):
        ...         self.w = self.add_weight(shape=(shape[-1],), initializer="ones")
        ...     def call(self, x):
        ...         return x * self.w
        >>> def scale_rule(call):
        ...     call.bind(call.layer.w, 0, call.inputs[0], "carrier", kind="scale", fill=1.0)
        ...     call.set_outputs(call.inputs[0])
        >>> register_channel_rule(Scale, scale_rule)
    """
    if not isinstance(layer_cls, type):
        raise TypeError(f"register_channel_rule needs a class, got {layer_cls!r}")
    if not callable(rule):
        raise TypeError(f"the channel rule for {layer_cls.__name__} must be callable, got {rule!r}")
    if layer_cls in _RULES and not override:
        raise ValueError(f"{layer_cls.__name__} already has a channel rule; pass override=True "
                         "to replace it.")
    _RULES[layer_cls] = rule


def channel_rule_for(op) -> Optional[Callable]:
    """The rule registered for `op`'s class (or `op` itself if a class) or its nearest base."""
    for cls in (op if isinstance(op, type) else type(op)).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def supported_layer_types() -> list:
    """Names of the layer classes with a channel rule (public Keras names for built-ins)."""
    names = {c.__name__ for c in _RULES if not c.__name__.startswith("Base")
             and not c.__module__.startswith("keras.src.ops")}
    for name, obj in vars(keras.layers).items():
        if isinstance(obj, type) and channel_rule_for(obj) is not None:
            names.add(name)
    return sorted(names)


# --------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------

def _norm_axis(axis, ndim) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-D weight")
    return axis % ndim


class _Analysis:
    """Union-find over channel groups plus everything rules register."""

    def __init__(self):
        self.parent: list = []
        self.size: list = []
        self.name: list = []
        self.role: list = []
        self.fixed: dict = {}        # gid -> [reasons]
        self.blocks: dict = {}       # gid -> [ints]
        self.uniform: set = set()
        self.norms: dict = {}        # gid -> [(layer, kind)]
        self.additive: set = set()
        self.memo: dict = {}         # (id(layer), key) -> Layout
        self.records: dict = {}      # id(layer) -> _LayerRecord
        self.bound: dict = {}        # (id(var), axis) -> WeightAxis
        self.unsupported: list = []
        self.touch: dict = {}        # gid -> set of layer names
        self.followers: dict = {}    # id(layer) -> BN layer

    # -- groups ------------------------------------------------------------
    def new(self, size, name, role="channels") -> Layout:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(None if size is None else int(size))
        self.name.append(name)
        self.role.append(role)
        return Layout(((gid, 1),))

    def find(self, g) -> int:
        root = g
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[g] != root:
            self.parent[g], g = root, self.parent[g]
        return root

    def union(self, a, b, where, additive=False):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            if additive:
                self.additive.add(ra)
            return
        if self.size[ra] != self.size[rb]:
            raise ValueError(f"{where}: ties groups {self.name[ra]!r} ({self.size[ra]} "
                             f"channels) and {self.name[rb]!r} ({self.size[rb]} channels) of "
                             "different sizes.")
        keep, drop = (ra, rb) if ra < rb else (rb, ra)  # smaller id = created first
        self.parent[drop] = keep
        for table in (self.fixed, self.blocks, self.norms):
            if drop in table:
                table.setdefault(keep, []).extend(table.pop(drop))
        for s in (self.uniform, self.additive):
            if drop in s:
                s.discard(drop)
                s.add(keep)
        if drop in self.touch:
            self.touch.setdefault(keep, set()).update(self.touch.pop(drop))
        if additive:
            self.additive.add(keep)

    def layout_size(self, layout: Layout) -> Optional[int]:
        total = 0
        for g, inner in layout.segments:
            s = self.size[self.find(g)]
            if s is None:
                return None
            total += s * inner
        return total

    def fix(self, layout: Layout, reason: str):
        for g, _ in layout.segments:
            self.fixed.setdefault(self.find(g), []).append(reason)

    def tie(self, a: Layout, b: Layout, where: str, additive=False):
        sa, sb = a.segments, b.segments
        if len(sa) == len(sb) and all(
                ia == ib and self.size[self.find(ga)] == self.size[self.find(gb)]
                for (ga, ia), (gb, ib) in zip(sa, sb)):
            for (ga, _), (gb, _) in zip(sa, sb):
                self.union(ga, gb, where, additive)
            return
        if self.layout_size(a) != self.layout_size(b):
            raise ValueError(f"{where}: cannot tie channel axes of sizes {self.layout_size(a)} "
                             f"and {self.layout_size(b)}.")
        # Same total size, different concatenation structure: resizing one
        # part would need splitting a group; keep all of them fixed.
        names = sorted({self.name[self.find(g)] for g, _ in sa + sb})
        self.fix(a + b, f"{where} ties channels with different concatenation structures "
                        f"({names})")

    def note(self, layout: Layout, layer_name: str):
        for g, _ in layout.segments:
            self.touch.setdefault(self.find(g), set()).add(layer_name)


class ChannelCall:
    """What a channel rule sees of one call of a layer, and how it reports back.

    Attributes:
        layer: the layer (or operation) being called.
        node: the `kgrow.surgery.graph.Node` of the call.
        inputs: layouts of the flat input tensors, in call order.
        input_shapes / output_shapes: static shapes (with the batch axis).
    """

    def __init__(self, analysis: _Analysis, node, inputs, layouts):
        self._an = analysis
        self.node = node
        self.layer = node.operation
        self.inputs = list(inputs)
        self.input_shapes = [tuple(t.shape) for t in node.inputs]
        self.output_shapes = [tuple(t.shape) for t in node.outputs]
        self._layouts = layouts
        self.outputs = None

    @property
    def where(self) -> str:
        return f"layer {self.layer.name!r} ({type(self.layer).__name__})"

    def arguments(self):
        """``(args, kwargs)`` of the call with each tensor replaced by its Layout."""
        return self.node.keras_node.arguments.fill_in(self._layouts)

    # -- groups ------------------------------------------------------------
    def new_group(self, key: str = "out", size: Optional[int] = None,
                  role: str = "channels", name: Optional[str] = None) -> Layout:
        """A group created by this layer (the same one on every call of a shared layer).

        Args:
            key: distinguishes several groups of one layer ("out", "heads", ...).
            size: its size; default: last axis of the first output.
            role: one of `ROLES`.
            name: default: the layer name, suffixed ``":key"`` unless key is "out".
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        memo_key = (id(self.layer), key)
        if memo_key in self._an.memo:
            return self._an.memo[memo_key]
        if size is None:
            size = self.output_shapes[0][-1]
        if name is None:
            name = self.layer.name if key == "out" else f"{self.layer.name}:{key}"
        layout = self._an.new(size, name, role)
        self._an.memo[memo_key] = layout
        self._an.note(layout, self.layer.name)
        return layout

    def fixed_group(self, key: str, size, reason: str) -> Layout:
        """A new group that can never be resized."""
        layout = self.new_group(key, size=size, name=f"{self.layer.name}:{key}")
        self.fix(layout, reason)
        return layout

    def size(self, layout: Layout) -> Optional[int]:
        """Current number of positions of a layout (None if unknown)."""
        return self._an.layout_size(layout)

    def set_outputs(self, *layouts: Layout) -> None:
        """Sets the layouts of the call's flat outputs, in order."""
        self.outputs = list(layouts)

    def tie(self, a: Layout, b: Layout, additive: bool = False) -> None:
        """Declares that two channel axes are the same channels."""
        self._an.tie(a, b, self.where, additive)

    def elementwise(self, layouts: list, additive: bool = False) -> Layout:
        """Ties inputs of an elementwise op with broadcasting; returns the output layout.

        An input whose channel axis has size 1 (while others are larger)
        broadcasts over the channels: it is not tied, and its group becomes
        fixed (growing it would break the broadcast).
        """
        sizes = [self.size(l) for l in layouts]
        target = max((s for s in sizes if s is not None), default=None)
        main = None
        for layout, s in zip(layouts, sizes):
            if s == 1 and target is not None and target > 1:
                self.fix(layout, f"broadcasts over {target} channels in {self.where}")
                continue
            if main is None:
                main = layout
            else:
                self.tie(main, layout, additive)
        return main if main is not None else layouts[0]

    def fix(self, layout: Layout, reason: str) -> None:
        """Marks every group of `layout` as not resizable, with a reason."""
        self._an.fix(layout, reason)

    def mixes(self, layout: Layout, kind: str) -> None:
        """Declares that the op mixes the channels of `layout` (a normalization over them)."""
        if kind not in NORMALIZER_KINDS:
            raise ValueError(f"normalizer kind must be one of {NORMALIZER_KINDS}, got {kind!r}")
        for g, _ in layout.segments:
            self._an.norms.setdefault(self._an.find(g), []).append((self.layer.name, kind))

    def divisible(self, layout: Layout, blocks: int, *, uniform: bool = False,
                  reason: str = "") -> bool:
        """Requires the group of `layout` to keep a structure of `blocks` equal blocks.

        Only single-group layouts can carry such a constraint (channel ``c``
        with inner repetition ``m`` owns positions ``c*m .. c*m+m-1``, so
        blocks of positions are blocks of channels when the channel count is
        a multiple of `blocks`); a concatenation is fixed instead (returns False).
        """
        blocks = int(blocks)
        if blocks <= 1:
            return True
        if len(layout.segments) != 1:
            self.fix(layout, f"{self.where} splits a concatenation into {blocks} blocks")
            return False
        g = self._an.find(layout.segments[0][0])
        self._an.blocks.setdefault(g, []).append(blocks)
        if uniform:
            self._an.uniform.add(g)
        return True

    def configure(self, fn: Callable) -> None:
        """``fn(size) -> dict`` of config overrides; ``size(layout)`` gives new sizes."""
        self._record().configure = fn

    def adjust(self, fn: Callable) -> None:
        """``fn(ctx)`` runs after the new weights are assembled (see `scale_width`)."""
        rec = self._record()
        if fn not in rec.adjust:
            rec.adjust.append(fn)

    def weight(self, name: str):
        """The layer's variable whose path ends with ``/name`` (e.g. "kernel", "query/kernel")."""
        found = [v for v in self.layer.weights if v.path.endswith("/" + name) or v.path == name]
        if len(found) != 1:
            raise ValueError(f"{self.where}: expected one weight named {name!r}, found "
                             f"{[v.path for v in found]} among "
                             f"{[v.path for v in self.layer.weights]}")
        return found[0]

    def bind(self, variable, axis: int, layout: Layout, role: str, *, kind: str = "kernel",
             fill: Any = 0.0, fan_in_axes: Optional[Iterable[int]] = None,
             fold: Optional[tuple] = None) -> None:
        """Binds one axis of one of the layer's weights to a channel layout.

        Args:
            variable: a variable of ``self.layer``.
            axis: the axis indexing the channels.
            layout: the layout along that axis.
            role: "producer", "consumer" or "carrier".
            kind: free label ("kernel", "bias", "gamma", "moving_variance", ...).
            fill: value of new carrier channels: float, "mean" or "he".
            fan_in_axes: axes making up one unit's fan-in; default: all but
                the last for producers/consumers (Keras kernels keep the output
                axis last), all but `axis` for carriers.
            fold: ``(output_axis, groups)`` for the input axis of a grouped conv.
        """
        if role not in _BINDING_ROLES:
            raise ValueError(f"role must be one of {_BINDING_ROLES}, got {role!r}")
        if isinstance(fill, str) and fill not in ("mean", "he"):
            raise ValueError(f"fill must be a number, 'mean' or 'he', got {fill!r}")
        weights = self.layer.weights
        index = next((i for i, v in enumerate(weights) if v is variable), None)
        if index is None:
            raise ValueError(f"{self.where}: bind() got a variable that is not one of the "
                             f"layer's weights: {getattr(variable, 'path', variable)!r}")
        shape = tuple(variable.shape)
        ndim = len(shape)
        axis = _norm_axis(axis, ndim)
        if fan_in_axes is None:
            out_axis = axis if role == "carrier" else ndim - 1
            fan_in_axes = tuple(a for a in range(ndim) if a != out_axis)
        fan_in_axes = tuple(_norm_axis(a, ndim) for a in fan_in_axes)
        expected = self.size(layout)
        if fold is not None:
            fold = (_norm_axis(fold[0], ndim), int(fold[1]))
            expected = None if expected is None else expected // fold[1]
        if expected is not None and shape[axis] != expected:
            raise ValueError(f"{self.where}: the channel rule binds axis {axis} of "
                             f"{variable.path!r} (shape {shape}) to {expected} channels.")
        key = (id(variable), axis)
        if key in self._an.bound:  # a shared layer called again: same weights, same channels
            self.tie(self._an.bound[key].layout, layout)
            return
        binding = WeightAxis(self.layer, variable, index, axis, role, kind, fill, fan_in_axes,
                             fold, layout)
        self._an.bound[key] = binding
        self._record().bindings[(index, axis)] = binding
        self._an.note(layout, self.layer.name)

    def _record(self) -> _LayerRecord:
        rec = self._an.records.get(id(self.layer))
        if rec is None:
            rec = self._an.records[id(self.layer)] = _LayerRecord(self.layer)
        return rec


def _graph(model):
    return model._functional if isinstance(model, keras.Sequential) else model


def channel_groups(model) -> ChannelGroups:
    """Finds the channel groups of a Functional model.

    Nested Functional/Sequential models (e.g. the stem of keras.applications
    ConvNeXt) are analysed in place, as `rebuild(..., inline_nested=True)`
    replays them.

    Args:
        model: a Functional (or Sequential with an Input) Keras model.

    Returns:
        A `ChannelGroups` mapping, groups in order of creation (topological).

    Raises:
        UnsupportedLayerError: a layer with weights has no channel rule.
        ValueError: channels_first data or an inconsistent graph.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="h"),
        ...                       keras.layers.Dense(2, name="out")])
        >>> channel_groups(m)["h"].size
        8
    """
    require_functional(model, "channel_groups()")
    an = _Analysis()
    graph = _graph(model)
    layouts: dict = {}
    for x in graph.inputs:
        name = x._keras_history[0].name
        layout = an.new(x.shape[-1] if len(x.shape) > 1 else 1, f"input:{name}")
        an.fix(layout, f"model input {name!r}")
        layouts[tensor_key(x)] = layout
    _walk(an, graph, layouts)
    for t in graph.outputs:
        an.fix(layouts[tensor_key(t)], "model output")
    return _finalize(an, model)


def _walk(an: _Analysis, graph, layouts: dict) -> None:
    uses: dict = {}
    for node in nodes(graph):
        for t in node.inputs:
            uses.setdefault(tensor_key(t), []).append(node)
    for node in nodes(graph):
        op = node.operation
        if is_graph_model(op):
            inner = _graph(op)
            args, _ = node.keras_node.arguments.fill_in(layouts)
            inner_layouts = {tensor_key(t): l for t, l in zip(inner.inputs, tree.flatten(args))}
            _walk(an, inner, inner_layouts)
            for old, inner_out in zip(node.outputs, inner.outputs):
                layouts[tensor_key(old)] = inner_layouts[tensor_key(inner_out)]
            continue
        call = ChannelCall(an, node, [layouts[tensor_key(t)] for t in node.inputs], layouts)
        rule = channel_rule_for(op)
        if rule is None:
            _unknown(call)
        else:
            if _channels_first(op):
                raise ValueError(f"{call.where} uses data_format='channels_first'; channel "
                                 "surgery supports channels_last models only.")
            rule(call)
        if call.outputs is None or len(call.outputs) != len(node.outputs):
            raise ValueError(f"The channel rule for {call.where} set "
                             f"{None if call.outputs is None else len(call.outputs)} output "
                             f"layouts for {len(node.outputs)} outputs.")
        for t, layout in zip(node.outputs, call.outputs):
            size = an.layout_size(layout)
            last = t.shape[-1] if len(t.shape) > 1 else None
            if last is not None and size is not None and size != last:
                raise ValueError(f"The channel rule for {call.where} gives an output layout of "
                                 f"{size} channels for an output of shape {tuple(t.shape)}.")
            layouts[tensor_key(t)] = layout
            an.note(layout, op.name)
    _find_bn_followers(an, graph, uses)


def _channels_first(op) -> bool:
    fmt = getattr(op, "data_format", None)
    return isinstance(fmt, str) and fmt == "channels_first"


def _unknown(call: ChannelCall) -> None:
    layer = call.layer
    kind = type(layer).__name__
    if getattr(layer, "weights", None):
        raise UnsupportedLayerError(
            f"Layer {layer.name!r} of type {kind} has weights but no channel rule, so its "
            f"channels cannot be resized. Supported layer types: {supported_layer_types()}. "
            f"Register a rule with kgrow.surgery.channels.register_channel_rule({kind}, rule) "
            "(see its docstring).")
    reason = (f"passes through {layer.name!r} of type {kind}, which has no channel rule "
              f"(register one with register_channel_rule({kind}, rule))")
    for layout in call.inputs:
        call.fix(layout, reason)
    call._an.unsupported.append(f"{layer.name} ({kind})")
    outs = [call.fixed_group(f"out{i}", s[-1] if len(s) > 1 else 1, reason)
            for i, s in enumerate(call.output_shapes)]
    call.set_outputs(*outs)


# Weightless ops through which a positive rescaling of a layer's output can be
# undone by the BatchNorm that follows (they commute with s * x for s > 0).
def _homogeneous(op) -> bool:
    L = keras.layers
    if isinstance(op, (L.Dropout, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
                       L.Cropping1D, L.Cropping2D, L.Cropping3D, L.Identity)):
        return True
    if type(op).__name__ in ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
                             "AveragePooling1D", "AveragePooling2D", "AveragePooling3D"):
        return True
    if isinstance(op, L.Activation):
        return _activation_name(op.activation) in ("linear", "relu")
    if isinstance(op, L.ReLU):
        return op.max_value is None and float(op.threshold) == 0.0
    return False


def _activation_name(fn) -> str:
    if fn is None:
        return "linear"
    return getattr(fn, "__name__", str(fn))


def _find_bn_followers(an: _Analysis, graph, uses: dict) -> None:
    outputs = {tensor_key(t) for t in graph.outputs}
    for node in nodes(graph):
        op = node.operation
        if id(op) not in an.records or len(node.outputs) != 1:
            continue
        if _activation_name(getattr(op, "activation", None)) not in ("linear", "relu"):
            continue
        t = node.outputs[0]
        while True:
            readers = uses.get(tensor_key(t), [])
            if tensor_key(t) in outputs or len(readers) != 1:
                break
            nxt = readers[0]
            if isinstance(nxt.operation, keras.layers.BatchNormalization):
                if nxt.operation.scale and id(op) not in an.followers:
                    an.followers[id(op)] = nxt.operation
                break
            if not _homogeneous(nxt.operation) or len(nxt.outputs) != 1:
                break
            t = nxt.outputs[0]


def _lcm(values) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


def _finalize(an: _Analysis, model) -> ChannelGroups:
    roots = []
    for g in range(len(an.parent)):
        r = an.find(g)
        if r not in roots:
            roots.append(r)
    members: dict = {}
    for g in range(len(an.parent)):
        members.setdefault(an.find(g), []).append(g)
    root_name, used = {}, set()
    for r in roots:
        name = an.name[r]
        if r in an.additive and len(members[r]) > 1:
            name = f"residual:{name}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}#{k}", k + 1
        used.add(name)
        root_name[r] = name
    for g in range(len(an.parent)):
        root_name[g] = root_name[an.find(g)]

    by_group: dict = {r: {"producer": [], "consumer": [], "carrier": []} for r in roots}
    for rec in an.records.values():
        for b in rec.bindings.values():
            b.segments = tuple((root_name[g], inner) for g, inner in b.layout.segments)
            seen = set()
            for g, _ in b.layout.segments:
                r = an.find(g)
                if r not in seen:
                    seen.add(r)
                    by_group[r][b.role].append(b)

    groups, sizes = {}, {}
    for r in roots:
        reasons = an.fixed.get(r, [])
        fixed = None
        if reasons:
            fixed = reasons[0] + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
        divisor = _lcm(an.blocks.get(r, []))
        size = an.size[r]
        if size is not None and size % divisor:
            fixed = fixed or f"size {size} is not a multiple of its block count {divisor}"
        grp = ChannelGroup(
            name=root_name[r], size=size, role=an.role[r], fixed=fixed, divisor=divisor,
            uniform=r in an.uniform, producers=tuple(by_group[r]["producer"]),
            consumers=tuple(by_group[r]["consumer"]), carriers=tuple(by_group[r]["carrier"]),
            normalizers=tuple(dict.fromkeys(an.norms.get(r, []))),
            layers=tuple(sorted(an.touch.get(r, ()))))
        grp.bn_compensable = _bn_compensable(an, grp)
        groups[grp.name] = grp
        sizes[grp.name] = size
    return ChannelGroups(model, groups, an.records, root_name, an.unsupported, sizes,
                         an.followers)


def _bn_compensable(an: _Analysis, group: ChannelGroup) -> bool:
    if not group.consumers:
        return False
    for b in group.consumers:
        rec = an.records[id(b.layer)]
        if id(b.layer) not in an.followers:
            return False
        for other in rec.bindings.values():
            if other.role == "consumer" and any(n != group.name for n, _ in other.segments):
                return False
    return True


# --------------------------------------------------------------------------
# Built-in rules
# --------------------------------------------------------------------------

def transparent(call: ChannelCall) -> None:
    """Rule of a weightless layer that keeps its (first) input's channel axis."""
    call.set_outputs(*[call.inputs[0]] * len(call.output_shapes))


def _mixes_if_softmax(call, layout, activation):
    if _activation_name(activation) in ("softmax", "log_softmax"):
        call.mixes(layout, "softmax")


def _activation_rule(call):
    _mixes_if_softmax(call, call.inputs[0], call.layer.activation)
    transparent(call)


def _softmax_rule(call):
    axes = call.layer.axis if isinstance(call.layer.axis, (list, tuple)) else [call.layer.axis]
    rank = len(call.input_shapes[0])
    if any(a % rank == rank - 1 for a in axes):
        call.mixes(call.inputs[0], "softmax")
    transparent(call)


def _merge_rule(additive):
    def rule(call):
        call.set_outputs(call.elementwise(call.inputs, additive=additive))
    return rule


def _ops_elementwise_rule(call):
    """keras.ops binary ops (``x * 2``, ``ops.add(a, b)``): tensors tie, constants checked."""
    args, kwargs = call.arguments()
    for value in tree.flatten((args, kwargs)):
        if isinstance(value, Layout) or value is None:
            continue
        shape = np.shape(value)
        if shape and shape[-1] > 1:
            call.fix(call.inputs[0], f"{call.where} combines the channels with a constant of "
                                     f"shape {shape}")
    call.set_outputs(call.elementwise(call.inputs, additive=type(call.layer).__name__ in (
        "Add", "Subtract")))


def _concatenate_rule(call):
    rank = len(call.output_shapes[0])
    if call.layer.axis % rank == rank - 1:
        out = call.inputs[0]
        for layout in call.inputs[1:]:
            out = out + layout
        call.set_outputs(out)
    else:
        for layout in call.inputs[1:]:
            call.tie(call.inputs[0], layout)
        call.set_outputs(call.inputs[0])


def _flat_size(shape):
    if any(s is None for s in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def _flatten_rule(call):
    shape = call.input_shapes[0][1:]
    x = call.inputs[0]
    if len(shape) <= 1:
        call.set_outputs(x)
        return
    spatial = _flat_size(shape[:-1])
    if spatial is None:
        reason = f"{call.where} flattens an axis of unknown size"
        call.fix(x, reason)
        call.set_outputs(call.fixed_group("out", call.output_shapes[0][-1], reason))
        return
    call.set_outputs(x.repeat(spatial))


def _reshape_rule(call):
    x = call.inputs[0]
    in_shape, out_shape = call.input_shapes[0][1:], call.output_shapes[0][1:]
    target = list(call.layer.target_shape)
    c = in_shape[-1]
    if out_shape and out_shape[-1] == c and c is not None:
        call.set_outputs(x)
        if target[-1] != -1:
            call.configure(lambda size: {"target_shape": tuple(target[:-1]) + (size(x),)})
        return
    # Merging trailing axes into the last one (a partial Flatten).
    if out_shape and out_shape[-1] is not None and c:
        for k in range(len(in_shape) - 1, -1, -1):
            outer = _flat_size(in_shape[k:-1])
            if outer is None:
                break
            if outer * c == out_shape[-1]:
                call.set_outputs(x.repeat(outer))
                if target[-1] != -1:
                    call.configure(lambda size: {
                        "target_shape": tuple(target[:-1]) + (size(x) * outer,)})
                return
    reason = f"{call.where} reshapes across the channel axis ({in_shape} -> {out_shape})"
    call.fix(x, reason)
    call.set_outputs(call.fixed_group("out", out_shape[-1] if out_shape else 1, reason))


def _permute_rule(call):
    dims = tuple(call.layer.dims)
    if dims[-1] == len(dims):
        transparent(call)
        return
    reason = f"{call.where} moves the channel axis"
    call.fix(call.inputs[0], reason)
    call.set_outputs(call.fixed_group("out", call.output_shapes[0][-1], reason))


def _dense_rule(call):
    layer = call.layer
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise UnsupportedLayerError(f"{call.where} is LoRA-enabled or quantized; merge or "
                                    "dequantize it before channel surgery.")
    x = call.inputs[0]
    out = call.new_group()
    kernel = call.weight("kernel")
    call.bind(kernel, 0, x, "consumer")
    call.bind(kernel, 1, out, "producer")
    call.configure(lambda size: {"units": size(out)})
    _finish_producer(call, out)


def _finish_producer(call, out):
    """What every layer creating the group `out` ends with: its bias is a
    per-channel carrier, a softmax activation mixes the channels, and `out`
    is the layout of its output."""
    if call.layer.use_bias:
        call.bind(call.weight("bias"), 0, out, "carrier", kind="bias", fill=0.0)
    _mixes_if_softmax(call, out, call.layer.activation)
    call.set_outputs(out)


def _conv_rule(call):
    layer = call.layer
    if getattr(layer, "lora_enabled", False):
        raise UnsupportedLayerError(f"{call.where} is LoRA-enabled; merge it first.")
    x = call.inputs[0]
    kernel = call.weight("kernel")
    nd = len(kernel.shape)
    spatial = tuple(range(nd - 2))
    groups = int(getattr(layer, "groups", 1) or 1)
    cin = call.size(x)
    if groups > 1 and kernel.shape[-2] == 1 and cin == groups:
        # Depthwise conv written as Conv(groups=C): channel c -> outputs c*m+j.
        mult = int(kernel.shape[-1]) // groups
        out = x.expand(mult)
        call.bind(kernel, nd - 1, out, "carrier", kind="depthwise_kernel", fill="he",
                  fan_in_axes=spatial)
        call.configure(lambda size: {"groups": size(x), "filters": size(x) * mult})
    else:
        out = call.new_group()
        if groups > 1:
            ok_in = call.divisible(x, groups, uniform=True, reason=f"{call.where} groups")
            call.divisible(out, groups)
            if ok_in:
                call.bind(kernel, nd - 2, x, "consumer", fold=(nd - 1, groups))
            else:
                call.fix(out, f"{call.where} is a grouped conv over a concatenation")
        else:
            call.bind(kernel, nd - 2, x, "consumer")
        call.bind(kernel, nd - 1, out, "producer")
        call.configure(lambda size: {"filters": size(out)})
    _finish_producer(call, out)


def _conv_transpose_rule(call):
    x = call.inputs[0]
    out = call.new_group()
    kernel = call.weight("kernel")  # (*k, out, in)
    nd = len(kernel.shape)
    fan = tuple(range(nd - 2)) + (nd - 1,)
    call.bind(kernel, nd - 1, x, "consumer", fan_in_axes=fan)
    call.bind(kernel, nd - 2, out, "producer", fan_in_axes=fan)
    call.configure(lambda size: {"filters": size(out)})
    _finish_producer(call, out)


def _depthwise_rule(call):
    layer = call.layer
    x = call.inputs[0]
    kernel = call.weight("kernel")  # (*k, C, m)
    nd = len(kernel.shape)
    mult = int(layer.depth_multiplier)
    out = x.expand(mult)
    call.bind(kernel, nd - 2, x, "carrier", kind="depthwise_kernel", fill="he",
              fan_in_axes=tuple(range(nd - 2)))
    if layer.use_bias:
        call.bind(call.weight("bias"), 0, out, "carrier", kind="bias", fill=0.0)
    _mixes_if_softmax(call, out, layer.activation)
    call.set_outputs(out)


def _separable_rule(call):
    layer = call.layer
    x = call.inputs[0]
    dw = call.weight("depthwise_kernel")  # (*k, C, m)
    pw = call.weight("pointwise_kernel")  # (1.., C*m, F)
    nd = len(dw.shape)
    mult = int(layer.depth_multiplier)
    out = call.new_group()
    call.bind(dw, nd - 2, x, "carrier", kind="depthwise_kernel", fill="he",
              fan_in_axes=tuple(range(nd - 2)))
    call.bind(pw, nd - 2, x.expand(mult), "consumer")
    call.bind(pw, nd - 1, out, "producer")
    if layer.use_bias:
        call.bind(call.weight("bias"), 0, out, "carrier", kind="bias", fill=0.0)
    _mixes_if_softmax(call, out, layer.activation)
    call.configure(lambda size: {"filters": size(out)})
    call.set_outputs(out)


def _last_axis_in(axes, rank) -> bool:
    axes = axes if isinstance(axes, (list, tuple)) else [axes]
    return any(a % rank == rank - 1 for a in axes)


def _require_channel_axis_last(call):
    layer, rank = call.layer, len(call.input_shapes[0])
    if layer.axis % rank != rank - 1:
        raise ValueError(f"{call.where} normalizes axis {layer.axis}, not the channel axis "
                         "(last); channel surgery supports channels_last models only.")


def _batch_norm_rule(call):
    layer = call.layer
    _require_channel_axis_last(call)
    x = call.inputs[0]
    fills = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}
    for v in layer.weights:
        kind = v.path.rsplit("/", 1)[-1]
        if kind not in fills:
            raise ValueError(f"{call.where}: unexpected BatchNormalization weight {v.path!r}")
        call.bind(v, 0, x, "carrier", kind=kind, fill=fills[kind])
    call.set_outputs(x)


def _layer_norm_rule(call):
    layer = call.layer
    rank = len(call.input_shapes[0])
    x = call.inputs[0]
    if _last_axis_in(layer.axis, rank):
        call.mixes(x, "rms_norm" if getattr(layer, "rms_scaling", False) else "layer_norm")
        for v in layer.weights:
            kind = v.path.rsplit("/", 1)[-1]
            call.bind(v, -1, x, "carrier", kind=kind, fill=1.0 if kind == "gamma" else 0.0)
    call.set_outputs(x)


def _group_norm_rule(call):
    layer = call.layer
    _require_channel_axis_last(call)
    x = call.inputs[0]
    groups = int(layer.groups)
    size = call.size(x)
    if groups == -1:
        pass  # one channel per group (instance norm): nothing is mixed
    elif groups == size:
        call.configure(lambda s: {"groups": s(x)})  # instance norm spelled with a count
    else:
        call.mixes(x, "group_norm")
        call.divisible(x, groups, reason=f"{call.where} has {groups} groups")
    for v in layer.weights:
        kind = v.path.rsplit("/", 1)[-1]
        call.bind(v, 0, x, "carrier", kind=kind, fill=1.0 if kind == "gamma" else 0.0)
    call.set_outputs(x)


def _unit_norm_rule(call):
    rank = len(call.input_shapes[0])
    if _last_axis_in(call.layer.axis, rank):
        call.mixes(call.inputs[0], "unit_norm")
    transparent(call)


def _normalization_rule(call):
    layer = call.layer
    x = call.inputs[0]
    rank = len(call.input_shapes[0])
    axis = layer.axis
    if axis and _last_axis_in(axis, rank):
        config = layer.get_config()
        if config.get("mean") is not None or not layer.weights:
            call.fix(x, f"{call.where} has per-channel statistics in its config")
        else:
            for v in layer.weights:
                kind = v.path.rsplit("/", 1)[-1]
                if len(v.shape) == 0:
                    continue  # the sample count
                call.bind(v, -1, x, "carrier", kind=kind, fill=1.0 if kind == "variance" else 0.0)
    call.set_outputs(x)


def _rescaling_rule(call):
    layer = call.layer
    for value in (layer.scale, layer.offset):
        shape = np.shape(value)
        if shape and shape[-1] > 1:
            call.fix(call.inputs[0], f"{call.where} has per-channel values in its config")
    transparent(call)


def _prelu_rule(call):
    layer = call.layer
    x = call.inputs[0]
    rank = len(call.input_shapes[0])
    shared = layer.shared_axes or ()
    shared = shared if isinstance(shared, (list, tuple)) else [shared]
    if not any(a % rank == rank - 1 for a in shared):
        call.bind(call.weight("alpha"), -1, x, "carrier", kind="alpha", fill="mean")
    call.set_outputs(x)


def _embedding_rule(call):
    out = call.new_group()
    call.bind(call.weight("embeddings"), 1, out, "producer", kind="embeddings", fan_in_axes=())
    call.configure(lambda size: {"output_dim": size(out)})
    call.set_outputs(out)


def _mha_rule(call):
    layer = call.layer
    args, kwargs = call.arguments()
    query = kwargs.get("query", args[0] if args else None)
    value = kwargs.get("value", args[1] if len(args) > 1 else None)
    key = kwargs.get("key", args[2] if len(args) > 2 else None)
    key = value if key is None else key
    if not all(isinstance(t, Layout) for t in (query, value, key)):
        raise ValueError(f"{call.where}: could not identify its query/key/value inputs.")
    heads = call.new_group("heads", int(layer.num_heads), role="heads")
    kd = call.new_group("key_dim", int(layer.key_dim), role="key_dim")
    vd = call.new_group("value_dim", int(layer.value_dim), role="value_dim")
    bias = layer.use_bias
    # query projection: (Dq, H, K) produces heads and key dims
    q = call.weight("query/kernel")
    call.bind(q, 0, query, "consumer", fan_in_axes=(0,))
    call.bind(q, 1, heads, "producer", fan_in_axes=(0,))
    call.bind(q, 2, kd, "producer", fan_in_axes=(0,))
    k = call.weight("key/kernel")
    call.bind(k, 0, key, "consumer", fan_in_axes=(0,))
    call.bind(k, 1, heads, "producer", fan_in_axes=(0,))
    call.bind(k, 2, kd, "consumer", fan_in_axes=(2,))  # q.k sums over key dims
    v = call.weight("value/kernel")
    call.bind(v, 0, value, "consumer", fan_in_axes=(0,))
    call.bind(v, 1, heads, "producer", fan_in_axes=(0,))
    call.bind(v, 2, vd, "producer", fan_in_axes=(0,))
    if bias:
        qb, kb, vb = (call.weight(f"{n}/bias") for n in ("query", "key", "value"))
        call.bind(qb, 0, heads, "carrier", kind="bias")
        call.bind(qb, 1, kd, "carrier", kind="bias")
        call.bind(kb, 0, heads, "carrier", kind="bias")
        call.bind(kb, 1, kd, "consumer", kind="bias", fan_in_axes=(1,))
        call.bind(vb, 0, heads, "carrier", kind="bias")
        call.bind(vb, 1, vd, "carrier", kind="bias")
    if getattr(layer, "_use_gate", False):
        g = call.weight("gate/kernel")
        call.bind(g, 0, query, "consumer", fan_in_axes=(0,))
        call.bind(g, 1, heads, "producer", fan_in_axes=(0,))
        call.bind(g, 2, vd, "producer", fan_in_axes=(0,))
        if bias:
            gb = call.weight("gate/bias")
            call.bind(gb, 0, heads, "carrier", kind="bias")
            call.bind(gb, 1, vd, "carrier", kind="bias")
    o = call.weight("attention_output/kernel")  # (H, V, *output)
    output_shape = layer._output_shape
    if output_shape is None:
        out = query
    else:
        dims = (output_shape,) if isinstance(output_shape, int) else tuple(output_shape)
        if len(dims) == 1:
            out = call.new_group("output", int(dims[0]))
        else:
            out = call.fixed_group("output", call.output_shapes[0][-1],
                                   f"{call.where} has a multi-axis output_shape {dims}")
    call.bind(o, 0, heads, "consumer", fan_in_axes=(0, 1))
    call.bind(o, 1, vd, "consumer", fan_in_axes=(0, 1))
    if len(o.shape) == 3:
        call.bind(o, 2, out, "producer", fan_in_axes=(0, 1))
    if bias:
        ob = call.weight("attention_output/bias")
        if len(ob.shape) == 1:
            call.bind(ob, 0, out, "carrier", kind="bias")

    def configure(size):
        cfg = {"num_heads": size(heads), "key_dim": size(kd), "value_dim": size(vd)}
        if output_shape is not None and len(o.shape) == 3:
            cfg["output_shape"] = (size(out),) if not isinstance(output_shape, int) else size(out)
        return cfg

    def adjust(ctx):
        # Keras scales queries by 1/sqrt(key_dim); keep q.k/sqrt(K) unchanged.
        old, new = ctx.old_size(kd), ctx.new_size(kd)
        if old != new:
            factor = math.sqrt(new / old)
            ctx.scale(q, factor)
            if bias:
                ctx.scale(call.weight("query/bias"), factor)

    call.configure(configure)
    call.adjust(adjust)
    outs = [out]
    for i, s in enumerate(call.output_shapes[1:], start=1):  # attention scores
        outs.append(call.fixed_group(f"scores{i}", s[-1], "attention scores (token axis)"))
    call.set_outputs(*outs)


def _layer_scale_rule(call):
    x = call.inputs[0]
    call.bind(call.layer.gamma, 0, x, "carrier", kind="scale", fill="mean")
    call.configure(lambda size: {"projection_dim": size(x)})
    call.set_outputs(x)


def _token_rule(attr, axis):
    def rule(call):
        x = call.inputs[0]
        call.bind(getattr(call.layer, attr), axis, x, "carrier", kind="embedding", fill=0.0)
        call.set_outputs(x)
    return rule


def _register_builtin():
    L = keras.layers
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
    from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
    from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
    from keras.src.layers.pooling.base_global_pooling import BaseGlobalPooling
    from keras.src.layers.pooling.base_pooling import BasePooling

    for cls in (L.Dropout, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
                L.ActivityRegularization, L.Identity, L.ReLU, L.LeakyReLU, L.ELU,
                L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D,
                L.Cropping3D, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, BasePooling,
                BaseGlobalPooling, L.RepeatVector, L.Masking, L.Resizing, L.CenterCrop,
                L.RandomFlip, L.RandomCrop, L.RandomTranslation, L.RandomRotation,
                L.RandomZoom, L.RandomContrast, L.RandomBrightness):
        register_channel_rule(cls, transparent)
    register_channel_rule(L.Activation, _activation_rule)
    register_channel_rule(L.Softmax, _softmax_rule)
    for cls in (L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum):
        register_channel_rule(cls, _merge_rule(additive=cls in (L.Add, L.Subtract, L.Average)))
    register_channel_rule(L.Multiply, _merge_rule(additive=False))
    register_channel_rule(L.Concatenate, _concatenate_rule)
    register_channel_rule(L.Flatten, _flatten_rule)
    register_channel_rule(L.Reshape, _reshape_rule)
    register_channel_rule(L.Permute, _permute_rule)
    register_channel_rule(L.Dense, _dense_rule)
    register_channel_rule(BaseConv, _conv_rule)
    register_channel_rule(BaseConvTranspose, _conv_transpose_rule)
    register_channel_rule(BaseDepthwiseConv, _depthwise_rule)
    register_channel_rule(BaseSeparableConv, _separable_rule)
    register_channel_rule(L.BatchNormalization, _batch_norm_rule)
    register_channel_rule(L.LayerNormalization, _layer_norm_rule)
    register_channel_rule(L.GroupNormalization, _group_norm_rule)
    register_channel_rule(L.UnitNormalization, _unit_norm_rule)
    register_channel_rule(L.Normalization, _normalization_rule)
    register_channel_rule(L.Rescaling, _rescaling_rule)
    register_channel_rule(L.PReLU, _prelu_rule)
    register_channel_rule(L.Embedding, _embedding_rule)
    register_channel_rule(L.MultiHeadAttention, _mha_rule)

    from keras.src.ops import numpy as knp
    for name in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum"):
        register_channel_rule(getattr(knp, name), _ops_elementwise_rule)

    from keras.src.applications import convnext
    register_channel_rule(convnext.LayerScale, _layer_scale_rule)
    register_channel_rule(convnext.StochasticDepth, transparent)

    from kgrow.models import layers as kl
    register_channel_rule(kl.ClassToken, _token_rule("token", 0))
    register_channel_rule(kl.PositionEmbedding, _token_rule("embeddings", 1))
    register_channel_rule(kl.DropPath, transparent)
    register_channel_rule(kl.TokenPooling, transparent)


_register_builtin()

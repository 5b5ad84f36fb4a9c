"""Width surgery: shrink or widen any supported Functional model, channel group by group.

`scale_width` is the one primitive every width-growth method uses (Network
Expansion, variance transfer, AutoProg's width axis). In one pass it

1. finds the channel groups (`kgrow.surgery.channels.channel_groups`);
2. turns the multiplier into a new size per group (rounded to `round_to`
   and to the group's divisor: GroupNorm groups, conv groups);
3. chooses the kept channels of shrinking groups (by index or importance)
   and builds, per group, a map ``new channel -> old channel or -1``;
4. replays the graph once (`rebuild`) with every layer re-created from its
   config (`copy_layer`), changing only the channel counts in the configs;
5. assembles every new weight with vectorised numpy: the kept entries are
   gathered from the old weights through the `TransferPlan`, the new
   channels' slices come from a growth initializer (`kgrow.growth`);
6. assigns all weights once.

Channels are ordered per block (one block unless a divisor applies): kept
old channels in their old order, then the new ones. The returned plan is keyed
by the new variable paths with the old paths as sources; old and new
variables are paired through the layer correspondence of the rebuild (nested
models are inlined, so their paths change).

Example:
    >>> import keras
    >>> x = keras.Input((8, 8, 3))
    >>> h = keras.layers.Conv2D(16, 3, name="conv")(x)
    >>> h = keras.layers.GlobalAveragePooling2D()(h)
    >>> model = keras.Model(x, keras.layers.Dense(2, name="head")(h))
    >>> small = scale_width(model, 0.5)
    >>> small.model.get_layer("conv").filters, small.plan["head/kernel"].index[0].shape
    (8, (8,))
    >>> big = scale_width(small.model, {"conv": 16}, initializer="zeros")
    >>> big.info["exact"]
    True
"""
from __future__ import annotations

import math
import warnings
import zlib
from typing import Callable, Iterable, Mapping, Optional, Union

import keras
import numpy as np

from kgrow.growth import GrowthRequest, GrowthValues, WeightSlices, get_initializer
from kgrow.growth.base import GrowthInitializer
from kgrow.surgery.channels import ChannelGroup, ChannelGroups, WeightAxis, channel_groups, \
    unknown_group_message
from kgrow.surgery.graph import copy_layer, rebuild, require_functional
from kgrow.surgery.transfer import NEW, GrowthResult, TransferPlan, VariableTransfer

__all__ = ["scale_width", "resolve_sizes", "IMPORTANCES", "GLOBAL_ROLES"]

#: Built-in importance scores for choosing which channels a shrinking group keeps.
IMPORTANCES = ("l1", "first")
#: Roles a single float multiplier applies to; per-head sizes ("key_dim",
#: "value_dim") only change when named, as in the DeiT family where width
#: grows by adding heads of fixed size.
GLOBAL_ROLES = ("channels", "heads")


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _quantum(group: ChannelGroup, round_to: int) -> int:
    if group.role == "heads":
        return group.divisor
    return group.divisor * round_to // math.gcd(group.divisor, round_to)


def _scaled(group: ChannelGroup, m: float, round_to: int, min_channels: int) -> int:
    if not m > 0 or not math.isfinite(m):
        raise ValueError(f"width multiplier for group {group.name!r} must be a finite number > 0, "
                         f"got {m!r}")
    q = _quantum(group, round_to)
    target = int(math.floor(group.size * m / q + 0.5)) * q
    lowest = max(q, -(-min_channels // q) * q)
    return max(target, lowest)


def _absolute(group: ChannelGroup, size) -> int:
    size = int(size)
    if size < 1:
        raise ValueError(f"group {group.name!r} cannot have {size} channels; sizes must be >= 1.")
    if size % group.divisor:
        raise ValueError(
            f"group {group.name!r} must have a multiple of {group.divisor} channels (GroupNorm "
            f"groups or conv groups of layers {list(group.layers)}), got {size}. Use "
            f"{max(group.divisor, size // group.divisor * group.divisor)} or "
            f"{(size // group.divisor + 1) * group.divisor}.")
    return size


def _require_resizable(groups: ChannelGroups, name: str) -> ChannelGroup:
    if name not in groups:
        raise ValueError(unknown_group_message(name, groups))
    group = groups[name]
    if not group.resizable:
        raise ValueError(f"channel group {name!r} cannot be resized: {group.fixed}.")
    return group


def resolve_sizes(groups: ChannelGroups, multiplier, *, only=None, round_to: int = 1,
                  min_channels: int = 1) -> dict:
    """New size per group, as `scale_width` computes it.

    Args:
        groups: the `ChannelGroups` of a model.
        multiplier: a float applied to every resizable group whose role is in
            `GLOBAL_ROLES`, or ``{group name: float multiplier | int size}``.
        only: with a float multiplier, restrict it to these group names (an
            iterable) or to the groups for which ``only(group)`` is true.
        round_to: computed sizes are multiples of it (not for "heads" groups);
            a group's divisor is always respected.
        min_channels: lower bound of computed sizes.

    Returns:
        ``{group name: new size}`` for the groups the multiplier applies to.

    Example:
        >>> import keras
        >>> from kgrow.surgery.channels import channel_groups
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, name="h"),
        ...                       keras.layers.Dense(2)])
        >>> resolve_sizes(channel_groups(m), 0.5, round_to=4)
        {'h': 4}
    """
    if not _is_int(round_to) or round_to < 1:
        raise ValueError(f"round_to must be an int >= 1, got {round_to!r}")
    if not _is_int(min_channels) or min_channels < 1:
        raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
    if isinstance(multiplier, Mapping):
        if only is not None:
            raise ValueError("`groups` restricts a single float multiplier; with a dict of "
                             "per-group multipliers, list only the groups you want to change.")
        sizes = {}
        for name, value in multiplier.items():
            group = _require_resizable(groups, name)
            if _is_int(value):
                sizes[name] = _absolute(group, value)
            elif _is_number(value):
                sizes[name] = _scaled(group, float(value), round_to, min_channels)
            else:
                raise TypeError(f"size of group {name!r} must be an int (absolute size) or a "
                                f"float (multiplier), got {value!r}")
        return sizes
    if not _is_number(multiplier):
        raise TypeError("multiplier must be a float (applied to every resizable group) or a "
                        f"dict {{group name: multiplier or size}}, got {multiplier!r}")
    if only is None:
        chosen = [g for g in groups.resizable() if g.role in GLOBAL_ROLES]
    elif callable(only):
        chosen = [g for g in groups.resizable() if only(g)]
    else:
        names = [only] if isinstance(only, str) else list(only)
        chosen = [_require_resizable(groups, n) for n in names]
    return {g.name: _scaled(g, float(multiplier), round_to, min_channels) for g in chosen}


# --------------------------------------------------------------------------
# Reading and writing channel slices
# --------------------------------------------------------------------------

def _positions(b: WeightAxis, name: str, channels: np.ndarray, sizes) -> np.ndarray:
    """``[len(channels), P]`` positions along ``b.axis`` of channels of group `name`."""
    cols, off = [], 0
    for g, inner in b.segments:
        if g == name:
            cols.append(off + channels[:, None] * inner + np.arange(inner)[None, :])
        off += sizes[g] * inner
    return np.concatenate(cols, axis=1)


def _fold_index(array, b: WeightAxis, name, channels, sizes):
    """Index of the channels' slices in a grouped conv's input axis.

    The axis holds local positions ``(c % per) * inner + j`` of a block of
    ``per`` channels, and channel ``c`` of block ``c // per`` meets only that
    block's outputs. Returns the kernel viewed as ``[in, out, ...]`` and the
    index arrays ``[n, inner, 1]`` and ``[n, 1, width]``.
    """
    out_axis, groups = b.fold
    ((_, inner),) = b.segments
    per = sizes[name] // groups
    width = array.shape[out_axis] // groups
    local = (channels % per)[:, None] * inner + np.arange(inner)[None, :]
    outs = (channels // per)[:, None] * width + np.arange(width)[None, :]
    view = np.moveaxis(array, (b.axis, out_axis), (0, 1))
    return view, local[:, :, None], outs[:, None, :]


def _read(array, b: WeightAxis, name, channels, sizes) -> np.ndarray:
    n = len(channels)
    if b.fold is not None:
        view, local, outs = _fold_index(array, b, name, channels, sizes)
        return view[local, outs].reshape(n, -1)
    pos = _positions(b, name, channels, sizes).reshape(-1)
    return np.moveaxis(np.take(array, pos, axis=b.axis), b.axis, 0).reshape(n, -1)


def _write(array, b: WeightAxis, name, channels, sizes, rows) -> None:
    n = len(channels)
    if b.fold is not None:
        view, local, outs = _fold_index(array, b, name, channels, sizes)
        shape = (n, local.shape[1], outs.shape[2]) + view.shape[2:]
        view[local, outs] = np.asarray(rows).reshape(shape)
        return
    pos = _positions(b, name, channels, sizes).reshape(-1)
    view = np.moveaxis(array, b.axis, 0)
    view[pos] = np.asarray(rows).reshape((len(pos),) + view.shape[1:])


def _axis_index(b: WeightAxis, maps, old_sizes) -> Optional[np.ndarray]:
    """Plan index of one bound axis (None if none of its groups changes)."""
    if not any(g in maps for g, _ in b.segments):
        return None
    if b.fold is not None:
        ((name, inner),) = b.segments
        # uniform groups: block 0's map (global == local index) holds for every block
        m = maps[name][: len(maps[name]) // b.fold[1]]
        idx = m[:, None] * inner + np.arange(inner)[None, :]
        return np.where(m[:, None] >= 0, idx, NEW).reshape(-1)
    parts, off = [], 0
    for g, inner in b.segments:
        n_old = old_sizes[g] * inner
        m = maps.get(g)
        if m is None:
            parts.append(off + np.arange(n_old))
        else:
            idx = off + m[:, None] * inner + np.arange(inner)[None, :]
            parts.append(np.where(m[:, None] >= 0, idx, NEW).reshape(-1))
        off += n_old
    return np.concatenate(parts)


# --------------------------------------------------------------------------
# Which channels to keep
# --------------------------------------------------------------------------

def _importance(groups, group, importance, old_arrays) -> np.ndarray:
    n = group.size
    if importance == "first":
        return -np.arange(n, dtype=np.float64)
    channels = np.arange(n)
    if not group.producers:
        raise ValueError(f"importance={importance!r} scores channels by their producing filters, "
                         f"but group {group.name!r} has none; use importance='first' or "
                         "keep={group: indices}.")
    slices = [_read(old_arrays[id(b.variable)], b, group.name, channels, groups._sizes)
              .astype(np.float64) for b in group.producers]
    if importance == "l1":
        return sum(np.abs(s).sum(axis=1) for s in slices)
    scores = np.asarray(importance(group, slices), dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"the importance callable returned shape {scores.shape} for group "
                         f"{group.name!r}; expected ({n},), one score per channel.")
    return scores


def _top(scores, k) -> np.ndarray:
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _select(group, n_new, scores) -> np.ndarray:
    d = group.divisor
    per_old, per_new = group.size // d, n_new // d
    if per_new >= per_old:
        return np.arange(group.size)
    blocks = scores.reshape(d, per_old)
    if group.uniform:
        local = _top(blocks.sum(axis=0), per_new)
        return np.concatenate([b * per_old + local for b in range(d)])
    return np.concatenate([b * per_old + _top(blocks[b], per_new) for b in range(d)])


def _check_keep(group, indices, n_new) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"keep[{group.name!r}] must be a 1-D list of channel indices, got "
                         f"{indices!r}")
    arr = arr.astype(np.int64)
    if arr.size == 0:
        raise ValueError(f"keep[{group.name!r}] is empty; at least one channel must be kept.")
    if arr.min() < 0 or arr.max() >= group.size:
        raise ValueError(f"keep[{group.name!r}] has indices outside [0, {group.size}).")
    if len(np.unique(arr)) != arr.size:
        raise ValueError(f"keep[{group.name!r}] has repeated indices.")
    if arr.size > n_new:
        raise ValueError(f"keep[{group.name!r}] keeps {arr.size} channels but the group's new "
                         f"size is {n_new}.")
    arr = np.sort(arr)
    d = group.divisor
    if d > 1:
        per_old, per_new = group.size // d, n_new // d
        counts = np.bincount(arr // per_old, minlength=d)
        if counts.max() > per_new:
            raise ValueError(f"keep[{group.name!r}] keeps {counts.tolist()} channels in the "
                             f"group's {d} blocks of {per_old}; each block has room for "
                             f"{per_new}.")
        if group.uniform and len({tuple(arr[arr // per_old == b] % per_old)
                                  for b in range(d)}) > 1:
            raise ValueError(f"keep[{group.name!r}]: this group feeds a grouped conv, so every "
                             f"one of its {d} blocks must keep the same local positions.")
    return arr


def _channel_map(group, n_new, kept) -> np.ndarray:
    d = group.divisor
    per_old, per_new = group.size // d, n_new // d
    parts = []
    for b in range(d):
        kb = kept[(kept >= b * per_old) & (kept < (b + 1) * per_old)]
        parts += [kb, np.full(per_new - len(kb), NEW)]
    return np.concatenate(parts).astype(np.int64)


# --------------------------------------------------------------------------
# Initializers and exactness
# --------------------------------------------------------------------------

def _initializer_table(initializer, groups: ChannelGroups) -> Callable:
    if isinstance(initializer, Mapping):
        table = dict(initializer)
        default = table.pop("*", None)
        for name in table:
            if name not in groups:
                raise ValueError(unknown_group_message(name, groups) +
                                 " (in the `initializer` dict; use '*' for the default)")
        resolved = {n: get_initializer(v) for n, v in table.items()}
        fallback = get_initializer(default) if default is not None else None

        def lookup(name):
            if name in resolved:
                return resolved[name]
            if fallback is None:
                raise ValueError(f"group {name!r} grows but the `initializer` dict has no entry "
                                 "for it and no '*' default.")
            return fallback
        return lookup
    init = get_initializer(initializer)
    return lambda name: init


# --------------------------------------------------------------------------
# scale_width
# --------------------------------------------------------------------------

class _AdjustContext:
    """Passed to channel-rule `adjust` hooks after the weights are assembled."""

    def __init__(self, groups, arrays, old_sizes, new_sizes):
        self._groups, self._arrays = groups, arrays
        self._old, self._new = old_sizes, new_sizes

    def old_size(self, layout) -> int:
        return self._groups.layout_size(layout, self._old)

    def new_size(self, layout) -> int:
        return self._groups.layout_size(layout, self._new)

    def array(self, variable) -> np.ndarray:
        """The new value (numpy, writable) of an old-model variable."""
        return self._arrays[id(variable)]

    def scale(self, variable, factor: float) -> None:
        self._arrays[id(variable)] *= np.asarray(factor, self._arrays[id(variable)].dtype)


def scale_width(model, multiplier: Union[float, Mapping[str, Union[float, int]]], *,
                groups: Optional[Union[Iterable[str], Callable]] = None,
                initializer="zeros", importance: Union[str, Callable] = "l1",
                keep: Optional[Mapping[str, Iterable[int]]] = None, round_to: int = 1,
                min_channels: int = 1, seed: int = 0,
                require_exact: bool = False) -> GrowthResult:
    """Returns a copy of `model` with channel groups shrunk or widened.

    Args:
        model: a Functional (or Sequential with an Input) Keras model.
        multiplier: a float for every resizable group of role "channels" or
            "heads" (see `GLOBAL_ROLES`), or ``{group name: multiplier}`` where
            a float is a multiplier and an int an absolute size.
            `kgrow.surgery.channels.channel_groups(model)` lists the names.
        groups: with a float multiplier, apply it only to these group names
            (or the groups for which ``groups(group)`` is true).
        initializer: how new channels get their values: a name from
            `kgrow.growth.available_initializers()`, a `GrowthInitializer`, or
            ``{group name: initializer, "*": default}``.
        importance: which channels a shrinking group keeps: "l1" (largest L1
            norm of the producing filters), "first" (lowest indices), or
            ``fn(group, producer_slices) -> scores`` with one ``[n, fan]``
            array per producer and one score per channel (highest kept).
        keep: ``{group name: old channel indices}`` to keep explicitly (the
            group's new size still comes from `multiplier`; the rest of it is
            new channels).
        round_to: computed sizes are multiples of it (heads excepted).
        min_channels: lower bound of computed sizes.
        seed: seed of the random values of new channels (per group, stable).
        require_exact: raise unless the new model computes exactly the same
            function (no channel removed and every growing group's initializer
            is exact for it).

    Returns:
        `GrowthResult(model, plan, info)`: the new model with its weights
        set, the `TransferPlan` (every new variable, keyed by its path; kept
        entries point to their old positions, new ones are -1), and ``info``
        with ``groups`` (per changed group: old/new size, kept, added,
        initializer, exact, reason), ``fixed`` (group -> why it cannot
        change), ``unsupported`` and ``exact``.

    Raises:
        ValueError: unknown or fixed group, impossible size, bad keep, unknown
            initializer, or (with `require_exact`) a change that is not exact.
        UnsupportedLayerError: a layer with weights has no channel rule.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="h"),
        ...                       keras.layers.Dense(2)])
        >>> r = scale_width(m, 2.0, initializer="net2net", require_exact=True)
        >>> r.model.get_layer("h").units, r.info["groups"][0]["added"]
        (16, 8)
    """
    require_functional(model, "scale_width()")
    cg = channel_groups(model)
    if isinstance(importance, str) and importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES} or a callable, got "
                         f"{importance!r}")
    targets = resolve_sizes(cg, multiplier, only=groups, round_to=round_to,
                            min_channels=min_channels)
    if not isinstance(multiplier, Mapping) and cg.unsupported:
        warnings.warn(f"scale_width: channels next to {cg.unsupported} stay fixed (no channel "
                      "rule); see kgrow.surgery.channels.register_channel_rule.", stacklevel=2)
    keep = dict(keep or {})
    for name in keep:
        if name not in targets:
            _require_resizable(cg, name)
            raise ValueError(f"keep names group {name!r}, which `multiplier` does not resize; "
                             "give it a size too.")
    init_for = _initializer_table(initializer, cg)

    old_sizes = {n: g.size for n, g in cg.items()}
    new_sizes = {**old_sizes, **targets}
    weights = list(model.weights)
    old_arrays = {id(v): v.numpy() for v in weights}

    maps, report = {}, []
    for name, n_new in targets.items():
        group = cg[name]
        if name in keep:
            kept = _check_keep(group, keep[name], n_new)
        elif n_new >= group.size:
            kept = np.arange(group.size)
        else:
            kept = _select(group, n_new, _importance(cg, group, importance, old_arrays))
        if n_new == group.size and len(kept) == group.size:
            continue
        maps[name] = _channel_map(group, n_new, kept)
        added = n_new - len(kept)
        entry = {"name": name, "role": group.role, "old": int(group.size), "new": int(n_new),
                 "kept": int(len(kept)), "added": int(added), "initializer": None,
                 "exact": True, "reason": None}
        if len(kept) < group.size:
            entry.update(exact=False, reason=f"removes {group.size - len(kept)} channels")
        if added:
            init = init_for(name)
            entry["initializer"] = init.name
            why = init.check(group, len(kept), n_new)
            if why and entry["exact"]:
                entry.update(exact=False, reason=why)
        report.append(entry)
    if require_exact:
        bad = [f"{e['name']}: {e['reason']}" for e in report if not e["exact"]]
        if bad:
            raise ValueError("scale_width(require_exact=True): the change is not function-"
                             "preserving for " + "; ".join(bad))

    new_model, pairs = _rebuild(model, cg, new_sizes)
    plan, arrays = _assemble(cg, pairs, maps, old_sizes, old_arrays)
    for name, m in maps.items():
        if (m == NEW).any():
            _grow(cg, cg[name], m, init_for(name), arrays, new_sizes, seed)
    # A weight that both produces one grown group and consumes another has a
    # corner (new outputs x new inputs) that the later group's write
    # overwrites. Initializers whose filters depend on the finished kept
    # filters (orthogonal) write theirs again once every group is in place.
    for name, m in maps.items():
        init = init_for(name)
        if (m == NEW).any() and getattr(init, "final_filters", None) is not None:
            _refine(cg[name], m, init, arrays, new_sizes, seed)
    ctx = _AdjustContext(cg, arrays, old_sizes, new_sizes)
    for rec in cg.records.values():
        for fn in rec.adjust:
            fn(ctx)
    for old, new in pairs:
        for ov, nv in zip(old.weights, new.weights):
            nv.assign(arrays[id(ov)])
    info = {
        "groups": report,
        "fixed": {n: g.fixed for n, g in cg.items() if g.fixed},
        "unsupported": list(cg.unsupported),
        "exact": all(e["exact"] for e in report),
    }
    return GrowthResult(new_model, plan, info)


def _rebuild(model, cg: ChannelGroups, new_sizes):
    pairs = []

    def size(layout):
        return cg.layout_size(layout, new_sizes)

    def operation_fn(op):
        if not isinstance(op, keras.layers.Layer):
            return op  # stateless keras ops have no config to change
        rec = cg.records.get(id(op))
        overrides = rec.configure(size) if rec is not None and rec.configure else {}
        new = copy_layer(op, **overrides)
        pairs.append((op, new))
        return new

    new_model = rebuild(model, operation_fn=operation_fn, inline_nested=True)
    return new_model, pairs


def _assemble(cg: ChannelGroups, pairs, maps, old_sizes, old_arrays):
    entries, arrays = {}, {}
    for old, new in pairs:
        ow, nw = old.weights, new.weights
        if len(ow) != len(nw):
            raise RuntimeError(f"layer {old.name!r} has {len(ow)} weights but its re-created copy "
                               f"has {len(nw)}; the channel rule for {type(old).__name__} does "
                               "not describe it.")
        rec = cg.records.get(id(old))
        for i, (ov, nv) in enumerate(zip(ow, nw)):
            old_shape, new_shape = tuple(ov.shape), tuple(nv.shape)
            index = []
            for axis in range(len(old_shape)):
                b = rec.bindings.get((i, axis)) if rec is not None else None
                ix = _axis_index(b, maps, old_sizes) if b is not None else None
                expected = old_shape[axis] if ix is None else len(ix)
                if expected != new_shape[axis]:
                    raise RuntimeError(
                        f"axis {axis} of {ov.path!r} goes from {old_shape[axis]} to "
                        f"{new_shape[axis]} entries but the channel rule of "
                        f"{type(old).__name__} gives {expected}.")
                index.append(ix)
            if nv.path in entries:
                raise RuntimeError(f"two variables of the new model share the path {nv.path!r}.")
            transfer = VariableTransfer(ov.path, tuple(index))
            entries[nv.path] = transfer
            value = old_arrays[id(ov)]
            if any(ix is not None for ix in index):
                value = transfer.gather(value, new_shape)
            arrays[id(ov)] = np.array(value, copy=True)
    return TransferPlan(entries), arrays


def _slices(bindings, arrays, name, channels, sizes) -> list:
    out = []
    for b in bindings:
        array = arrays[id(b.variable)]
        out.append(WeightSlices(_read(array, b, name, channels, sizes).astype(np.float64),
                                fan_in=b.fan_in(array.shape), kind=b.kind, fill=b.fill,
                                name=f"{b.path}[{b.axis}]"))
    return out


def _grow(cg: ChannelGroups, group: ChannelGroup, m, init: GrowthInitializer, arrays,
          sizes, seed) -> None:
    name = group.name
    kept, new = np.flatnonzero(m >= 0), np.flatnonzero(m == NEW)
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    request = GrowthRequest(
        group=group, n_old=len(kept), n_new=len(new), blocks=group.divisor,
        producers=_slices(group.producers, arrays, name, kept, sizes),
        consumers=_slices(group.consumers, arrays, name, kept, sizes),
        carriers=_slices(group.carriers, arrays, name, kept, sizes), rng=rng)
    values = init.grow(request)
    _check_values(init, request, values)
    for role in ("producers", "consumers", "carriers"):
        for b, rows in zip(getattr(group, role), getattr(values, role)):
            _write(arrays[id(b.variable)], b, name, new, sizes, rows)
    for bindings, scale in ((group.producers, values.producer_scale),
                            (group.consumers, values.consumer_scale)):
        if scale is None:
            continue
        scale = np.asarray(scale, dtype=np.float64)
        for b in bindings:
            array = arrays[id(b.variable)]
            rows = _read(array, b, name, kept, sizes) * scale[:, None]
            _write(array, b, name, kept, sizes, rows)
    if values.compensate is not None and group.bn_compensable:
        _compensate_batchnorm(cg, group, float(values.compensate), arrays)


def _refine(group: ChannelGroup, m, init: GrowthInitializer, arrays, sizes, seed) -> None:
    name = group.name
    kept, new = np.flatnonzero(m >= 0), np.flatnonzero(m == NEW)
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode()), 1])
    request = GrowthRequest(
        group=group, n_old=len(kept), n_new=len(new), blocks=group.divisor,
        producers=_slices(group.producers, arrays, name, kept, sizes),
        consumers=[], carriers=[], rng=rng)
    rows = init.final_filters(request)
    _check_values(init, request, GrowthValues(rows, [], []))
    for b, r in zip(group.producers, rows):
        _write(arrays[id(b.variable)], b, name, new, sizes, r)


def _check_values(init, request: GrowthRequest, values: GrowthValues) -> None:
    for role in ("producers", "consumers", "carriers"):
        given, wanted = getattr(values, role), getattr(request, role)
        if len(given) != len(wanted):
            raise ValueError(f"initializer {init.name!r} returned {len(given)} {role} for "
                             f"{len(wanted)} requested (group {request.group.name!r}).")
        for rows, s in zip(given, wanted):
            if np.shape(rows) != (request.n_new, s.fan):
                raise ValueError(f"initializer {init.name!r} returned {role} of shape "
                                 f"{np.shape(rows)} for {s.name}; expected "
                                 f"{(request.n_new, s.fan)}.")
    for label in ("producer_scale", "consumer_scale"):
        scale = getattr(values, label)
        if scale is not None and np.shape(scale) != (request.n_old,):
            raise ValueError(f"initializer {init.name!r} returned {label} of shape "
                             f"{np.shape(scale)}; expected ({request.n_old},).")


def _compensate_batchnorm(cg: ChannelGroups, group: ChannelGroup, s: float, arrays) -> None:
    """Undo a uniform fan-out scale s in the BatchNorm after each consumer."""
    done = set()
    for b in group.consumers:
        if id(b.layer) in done:
            continue
        done.add(id(b.layer))
        for other in cg.records[id(b.layer)].bindings.values():
            if other.kind == "bias" and other.role == "carrier":
                arrays[id(other.variable)] *= np.asarray(s, arrays[id(other.variable)].dtype)
        bn = cg.followers[id(b.layer)]
        stats = {v.path.rsplit("/", 1)[-1]: v for v in bn.weights}
        var = arrays[id(stats["moving_variance"])].astype(np.float64)
        eps = float(bn.epsilon)
        gamma = arrays[id(stats["gamma"])]
        gamma *= (np.sqrt(s * s * var + eps) / (s * np.sqrt(var + eps))).astype(gamma.dtype)
        arrays[id(stats["moving_mean"])] *= np.asarray(s, gamma.dtype)
        arrays[id(stats["moving_variance"])][...] = (s * s * var).astype(gamma.dtype)

"""Depth surgery: insert, remove and re-count the repeated blocks of a model.

All functions are pure: they return a `GrowthResult` with a new Functional
model (every layer a fresh copy, weights set) and a `TransferPlan` from the
old model's weights to the new one's; the input model is not changed.

Where the weights of a new block come from (`source`):

* `"neighbour"`: a copy of its *template* block of the same model (by default
  the block it is inserted after): nearest-neighbour interpolation of depth
  (AutoProg). Changes the function.
* `"donor"` (alias `"ema"`, or pass a model / a `{path: array}` dict as
  `source`): a copy of the template block's weights taken from `donor`, a
  model with the same architecture such as an EMA copy (Network Expansion,
  MoGrow). `donor_blocks` picks other donor blocks (e.g. a removed block of
  the original model).
* `"random"`: a copy of the template's layers with fresh values from their
  own initializers (RandInit of AutoProg's ablation); all its weights are
  new in the transfer plan. `seed` makes the values reproducible.
* `"identity"`: a copy of the template whose residual branch ends are zeroed
  (BN gamma and beta, conv/dense kernel and bias, attention output
  projection, LayerScale), so the new block computes the identity and the
  model's outputs do not change.

The transfer plan maps every kept weight to itself (by layer correspondence,
so it is correct even when nested models were inlined and paths changed), and
every weight of an inserted block to the matching weight of its template
block. Zeroed weights of identity blocks are marked new (`source=None`): their
value (zero) owes nothing to the template, and optimizer slots for them start
from zero rather than from the template's momentum.

Dense units (DenseNet) can be inserted too: the new unit's output channels
join the concatenation, and every layer after it that reads them gets new
entries for them -- zero fan-in weights for convolutions and dense layers
(so the function is unchanged whatever `source` says), fresh initial values
for per-channel layers such as BatchNormalization. Removing dense units is
not supported (it would need narrowing every later layer).
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import re
from typing import Callable, Mapping, Optional, Sequence, Union

import keras
import numpy as np
from keras import tree
from keras.src.backend import KerasTensor
from keras.src.layers.convolutional.base_conv import BaseConv

from kgrow.surgery import blocks as _blocks
from kgrow.surgery.blocks import Block, analyze, flat_model
from kgrow.surgery.graph import copy_layer, flat_nodes, rebuild, tensor_key
from kgrow.surgery.transfer import NEW, GrowthResult, TransferPlan, VariableTransfer

__all__ = ["insert_blocks", "remove_blocks", "set_depth", "interpolation_mapping",
           "expansion_mapping", "describe_mapping", "SOURCES"]

#: Accepted `source` names (a keras.Model or a mapping also works, as a donor).
SOURCES = ("neighbour", "identity", "donor", "ema", "random")
EXPANSION_MODES = ("interleave", "stack")


# --------------------------------------------------------------------------- mappings


def _check_depth(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def interpolation_mapping(old_depth: int, new_depth: int) -> list:
    """Nearest-neighbour depth interpolation (AutoProg): new block i copies old floor(i*L_old/L_new).

    In a mapping, the first occurrence of an old index is that old block
    itself and every repeat is a copy of it inserted right after.

    Example:
        >>> interpolation_mapping(3, 6)
        [0, 0, 1, 1, 2, 2]
        >>> interpolation_mapping(6, 9)
        [0, 0, 1, 2, 2, 3, 4, 4, 5]
    """
    old_depth = _check_depth("old_depth", old_depth)
    new_depth = _check_depth("new_depth", new_depth)
    return [i * old_depth // new_depth for i in range(new_depth)]


def expansion_mapping(old_depth: int, new_depth: int, mode: str = "interleave") -> list:
    """Network Expansion's depth growth from `old_depth` to `new_depth` blocks.

    Growing by k blocks: in `"interleave"` mode each of the last k old blocks
    is followed by a copy of itself (taken from the EMA model when the
    mapping is used with `source="ema"`); in `"stack"` mode copies of the
    last k blocks are appended after the last block. Repeats of an index are
    the copies (see `describe_mapping` for the o/e notation of the paper's
    code).

    Example:
        >>> expansion_mapping(6, 9)
        [0, 1, 2, 3, 3, 4, 4, 5, 5]
        >>> describe_mapping(expansion_mapping(6, 9))
        ['o0', 'o1', 'o2', 'o3', 'e3', 'o4', 'e4', 'o5', 'e5']
        >>> expansion_mapping(6, 9, mode="stack")
        [0, 1, 2, 3, 4, 5, 3, 4, 5]
    """
    old_depth = _check_depth("old_depth", old_depth)
    new_depth = _check_depth("new_depth", new_depth)
    if mode not in EXPANSION_MODES:
        raise ValueError(f"expansion mode must be one of {EXPANSION_MODES}, got {mode!r}.")
    k = new_depth - old_depth
    if k < 0 or k > old_depth:
        raise ValueError(f"Network Expansion grows depth by k <= old depth blocks (each of the "
                         f"last k blocks is copied once); {old_depth} -> {new_depth} needs "
                         f"k = {k}. Use several growth stages or interpolation_mapping.")
    if mode == "stack":
        return list(range(old_depth)) + list(range(old_depth - k, old_depth))
    out = []
    for i in range(old_depth):
        out.append(i)
        if i >= old_depth - k:
            out.append(i)
    return out


def describe_mapping(mapping: Sequence[int]) -> list:
    """Writes a mapping in the o/e notation: "o3" keeps old block 3, "e3" is a copy of it.

    Example:
        >>> describe_mapping([0, 0, 1, 1])
        ['o0', 'e0', 'o1', 'e1']
    """
    seen, out = set(), []
    for i in mapping:
        out.append(f"{'e' if i in seen else 'o'}{i}")
        seen.add(i)
    return out


def _validate_mapping(mapping, old_depth, *, allow_removal, what) -> list:
    try:
        mapping = [int(i) for i in mapping]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: a mapping is a list of old block indices (ints), "
                         f"got {mapping!r}.") from None
    if not mapping:
        raise ValueError(f"{what}: the mapping is empty; a depth must stay >= 1.")
    bad = [i for i in mapping if not 0 <= i < old_depth]
    if bad:
        raise ValueError(f"{what}: mapping entries {bad} are out of range; there are "
                         f"{old_depth} old blocks (0..{old_depth - 1}).")
    firsts, seen = [], set()
    for i in mapping:
        if i not in seen:
            firsts.append(i)
            seen.add(i)
    if firsts != sorted(firsts):
        raise ValueError(f"{what}: the first occurrences of old blocks in the mapping must be "
                         f"in increasing order (blocks keep their order), got {firsts}.")
    if not allow_removal and len(firsts) != old_depth:
        missing = sorted(set(range(old_depth)) - seen)
        raise ValueError(f"{what}: the mapping drops old blocks {missing}; insert_blocks only "
                         "adds blocks (use set_depth or remove_blocks to remove).")
    return mapping


# --------------------------------------------------------------------------- edits


@dataclasses.dataclass
class _Copy:
    after: int                 # old block whose (possibly bypassed) output it follows
    template: int              # old block whose structure (and weights) it copies
    donor_block: object = None  # None: same as template; int or Block: donor's block
    rate: Optional[float] = None


@dataclasses.dataclass
class _Edit:
    removed: set
    copies: dict               # old block index -> list of _Copy, in order
    kept_rates: dict = dataclasses.field(default_factory=dict)  # old block -> rate

    def sequence(self, n):
        """New block order as ('old', i) / ('copy', _Copy) items."""
        seq = []
        for b in range(n):
            if b not in self.removed:
                seq.append(("old", b))
            seq.extend(("copy", c) for c in self.copies.get(b, []))
        return seq


def _edit_from_mapping(mapping, block_ids, edit: _Edit):
    """Adds to `edit` the changes a mapping over `block_ids` (old global indices) implies."""
    seen, last = set(), None
    for i in mapping:
        b = block_ids[i]
        if i in seen:
            edit.copies.setdefault(last, []).append(_Copy(after=last, template=b))
        else:
            seen.add(i)
            last = b
    edit.removed.update(block_ids[i] for i in range(len(block_ids)) if i not in seen)


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass
class _Source:
    kind: str                  # "neighbour" | "identity" | "donor" | "random"
    donor: object = None       # keras.Model, Mapping path -> array, or None
    donor_analysis: object = None
    donor_layers: dict = None  # name -> layer (donor model)


def _resolve_source(source, donor) -> _Source:
    if isinstance(source, keras.Model) or isinstance(source, Mapping):
        if donor is not None:
            raise ValueError("pass the donor either as `source` or as `donor`, not both.")
        source, donor = "donor", source
    if not isinstance(source, str) or source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, a keras.Model or a mapping "
                         f"path -> array (a donor such as EMA weights); got {source!r}.")
    kind = "donor" if source == "ema" else source
    if kind == "donor" and donor is None:
        raise ValueError(f"source={source!r} needs `donor=` (a model with the same "
                         "architecture, or a mapping variable path -> array).")
    if kind in ("neighbour", "random") and donor is not None:
        raise ValueError(f"source={kind!r} takes no donor; a donor was given too. Use "
                         "source='donor' (or 'identity' to zero a donor copy).")
    if donor is not None and not isinstance(donor, (keras.Model, Mapping)):
        raise TypeError(f"donor must be a keras.Model or a mapping path -> array, got "
                        f"{type(donor).__name__}.")
    src = _Source(kind, donor)
    if isinstance(donor, keras.Model):
        src.donor_layers = {}
        for node in flat_nodes(donor):
            src.donor_layers.setdefault(node.operation.name, node.operation)
    return src


# --------------------------------------------------------------------------- naming


_SEPARATORS = "_/-."


def _block_prefix(names) -> str:
    prefix = names[0] if names else ""
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    cut = max(prefix.rfind(c) for c in _SEPARATORS)
    return prefix[:cut + 1] if cut >= 1 else ""


def _copy_names(names_in_block, prefix_names, taken: set) -> dict:
    """Fresh names `<block prefix>ins{k}_<rest>` for one copy of a block.

    The prefix is the common prefix of `prefix_names` (the block's layers;
    auto-named keras ops such as `add_3` are left out of it), cut at a
    separator, without earlier `ins{k}_` parts, so copies of copies read
    `block3_ins2_...` rather than `block3_ins1_ins1_...`.
    """
    prefix = _block_prefix(prefix_names or names_in_block)
    base = re.sub(r"(ins\d+_)+$", "", prefix)
    k = 1
    while True:
        if prefix:
            names = {n: f"{base}ins{k}_{n[len(prefix):] if n.startswith(prefix) else n}"
                     for n in names_in_block}
        else:
            names = {n: f"{n}_ins{k}" for n in names_in_block}
        if not taken.intersection(names.values()):
            taken.update(names.values())
            return names
        k += 1


# --------------------------------------------------------------------------- channel maps


_CHANNELWISE = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU,
                keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.Dropout,
                keras.layers.Identity, keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
                keras.layers.ZeroPadding3D, keras.layers.Cropping1D, keras.layers.Cropping2D,
                keras.layers.Cropping3D, keras.layers.UpSampling1D, keras.layers.UpSampling2D,
                keras.layers.UpSampling3D, keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
                keras.layers.MaxPooling3D, keras.layers.AveragePooling1D,
                keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
                keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                keras.layers.GlobalAveragePooling3D, keras.layers.GlobalMaxPooling1D,
                keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D)


def _full_map(t_old, cmap):
    return np.arange(int(t_old.shape[-1])) if cmap is None else cmap


def _channel_rule(op, in_pairs, fill_kernel):
    """How a layer handles inputs whose channels were widened.

    Args:
        op: the layer (old or copy; same config).
        in_pairs: list of (old input tensor, channel map or None) in argument order.
        fill_kernel: "zero" or "init" for new fan-in rows of conv/dense kernels.

    Returns:
        (output map or None, {weight attribute name: (axis, fill)}).
    """
    maps = [m for _, m in in_pairs]
    if all(m is None for m in maps):
        return None, {}
    name = getattr(op, "name", type(op).__name__)
    if isinstance(op, (keras.layers.Concatenate, _blocks.knp.Concatenate)):
        if not _blocks._channel_axis_is_last(op, len(in_pairs[0][0].shape)):
            raise NotImplementedError(f"new channels reach {name!r}, a concatenation on an "
                                      "axis other than the channel axis.")
        parts, offset = [], 0
        for t, m in in_pairs:
            full = _full_map(t, m)
            parts.append(np.where(full >= 0, full + offset, NEW))
            offset += int(t.shape[-1])
        return np.concatenate(parts), {}
    if len(in_pairs) == 1 and isinstance(op, _CHANNELWISE) or _blocks._is_drop_path(op):
        if isinstance(op, keras.layers.BatchNormalization) and op.axis not in (
                -1, len(in_pairs[0][0].shape) - 1, [len(in_pairs[0][0].shape) - 1]):
            raise NotImplementedError(f"new channels reach BatchNormalization {name!r} whose "
                                      "axis is not the last one.")
        attrs = {a: (0, "init") for a in ("gamma", "beta", "moving_mean", "moving_variance")}
        return maps[0], attrs if isinstance(op, keras.layers.BatchNormalization) else {}
    if len(in_pairs) == 1 and isinstance(op, keras.layers.Dense):
        return None, {"kernel": (0, fill_kernel)}
    if len(in_pairs) == 1 and isinstance(op, BaseConv) and getattr(op, "groups", 1) == 1 \
            and op.data_format == "channels_last":
        return None, {"kernel": (-2, fill_kernel)}
    if isinstance(op, (keras.layers.Add, _blocks.knp.Add, keras.layers.Multiply,
                       keras.layers.Average, keras.layers.Maximum, keras.layers.Minimum,
                       keras.layers.Subtract)):
        full = [_full_map(t, m) for t, m in in_pairs]
        if all(np.array_equal(full[0], f) for f in full[1:]):
            return maps[0] if maps[0] is not None else full[0], {}
    raise NotImplementedError(
        f"inserting a dense unit adds channels to the input of {name!r} "
        f"({type(op).__name__}), which kgrow cannot widen function-preservingly. "
        "Supported on the way: Concatenate, BatchNormalization, activations, dropout, "
        "padding and pooling layers, and (where the new channels end) Conv with groups=1 or "
        "Dense layers.")


# --------------------------------------------------------------------------- the engine


def _arg_pairs(node, args, kwargs):
    """(old tensor, new value) for each symbolic argument of a call."""
    a = node.keras_node.arguments
    old = tree.flatten((a.args, a.kwargs))
    new = tree.flatten((args, kwargs))
    return [(o, n) for o, n in zip(old, new) if isinstance(o, KerasTensor)]


@dataclasses.dataclass
class _LayerRecord:
    new: object
    old: object               # the layer whose structure it copies
    role: str                 # "kept" | "copy"
    copy_index: int = -1
    axes: dict = dataclasses.field(default_factory=dict)  # weight attr -> (axis, fill, index)
    zero: bool = False        # copy whose weights are zeroed (identity branch end)


class _Engine:
    """The `operation_fn`/`call_fn` pair that replays a graph with an edit applied.

    Kept layers are fresh copies (same names); at the output of each block it
    applies the edit: a removed block passes its input on, inserted copies
    are replayed from the template block's nodes with new layers. It also
    tracks channel maps of tensors widened by dense insertions and records,
    for every new layer, the layer it copies and how its weights are indexed.
    """

    def __init__(self, an, edit: _Edit, taken_names):
        self.an, self.g = an, an.graph
        self.edit = edit
        self.regions = an.regions
        self.vertex = {id(n.keras_node): self.g.n_in + i for i, n in enumerate(self.g.nodes)}
        self.out_block = {self.g.producer[r.output][0]: i for i, r in enumerate(self.regions)}
        self.removed_out = {self.g.producer[self.regions[b].output][0]: b for b in edit.removed}
        self.values = {}            # old tensor key -> new tensor (arguments seen so far)
        self.chmap = {}             # id(new tensor) -> channel map (widened tensors only)
        self.records = {}           # id(new layer) -> _LayerRecord
        self.kept_new = {}          # id(old layer) -> new layer
        self.copies = []            # per copy: dict(info)
        self.taken = taken_names
        self.block_of_vertex = {}
        for i, r in enumerate(self.regions):
            for v in r.vertices:
                self.block_of_vertex[v] = i

    # -- kept layers
    def operation_fn(self, op):
        if not isinstance(op, keras.layers.Layer):
            return op
        overrides = {}
        vs = self.g.by_name.get(op.name, [])
        if vs and vs[0] in self.block_of_vertex:
            rate = self.edit.kept_rates.get(self.block_of_vertex[vs[0]])
            overrides = _rate_override(op, rate)
        new = copy_layer(op, **overrides)
        self.kept_new[id(op)] = new
        self.records[id(new)] = _LayerRecord(new, op, "kept")
        return new

    def call_fn(self, node, op, args, kwargs):
        pairs = _arg_pairs(node, args, kwargs)
        for o, n in pairs:
            self.values[tensor_key(o)] = n
        v = self.vertex[id(node.keras_node)]
        if v in self.removed_out:
            out = self.values[self.regions[self.removed_out[v]].entry]
        else:
            out = self._call(op, node, pairs, args, kwargs, self.records.get(id(op)), "zero")
        if v in self.out_block:
            b = self.out_block[v]
            for c in self.edit.copies.get(b, []):
                out = self._insert_copy(c, out)
        return out

    def _call(self, op, node, pairs, args, kwargs, record, fill_kernel):
        in_pairs = [(o, self.chmap.get(id(n))) for o, n in pairs]
        out_map, attrs = _channel_rule(op, in_pairs, fill_kernel)
        out = op(*args, **kwargs)
        if attrs and record is not None:
            index = in_pairs[0][1]
            for a, (axis, fill) in attrs.items():
                record.axes[a] = (axis, fill, index)
        if out_map is not None:
            flat_out = tree.flatten(out)
            for t in flat_out:
                if isinstance(t, KerasTensor) and not _is_identity_map(out_map, t):
                    self.chmap[id(t)] = out_map
        return out

    # -- inserted copies
    def _insert_copy(self, c: _Copy, value):
        g, r = self.g, self.regions[c.template]
        k = len(self.copies)
        template_names = [g.names[u] for u in r.vertices]
        layer_names = [g.names[u] for u in r.vertices
                       if isinstance(g.op(u), keras.layers.Layer)]
        names = _copy_names(template_names, layer_names, self.taken)
        ops = {}
        dense = r.kind == "dense"
        entry_shape = g.shape(r.entry)
        got = tuple(value.shape[1:])
        value_map = self.chmap.get(id(value))
        if dense:
            if got[:-1] != entry_shape[:-1]:
                raise ValueError(f"cannot insert a copy of dense block {c.template} after block "
                                 f"{c.after}: it reads {entry_shape}, the insertion point has "
                                 f"shape {got}.")
        elif got != entry_shape or value_map is not None:
            raise ValueError(f"cannot insert a copy of block {c.template} after block {c.after}: "
                             f"the block reads shape {entry_shape} but the insertion point has "
                             f"shape {got}.")
        values = {r.entry: value}
        local_map = {}
        if dense:
            # Channel j of the new unit's input is old stream channel m[j]; the
            # template knows the first entry_shape[-1] stream channels.
            full = _full_map(value, value_map) if value_map is not None else np.arange(got[-1])
            tmpl = np.where(full < entry_shape[-1], full, NEW)
            if not _is_identity_map(tmpl, value):
                local_map[id(value)] = tmpl
        saved, self.chmap = self.chmap, local_map
        try:
            for u in r.vertices:
                node = g.node(u)
                op = node.operation
                if id(op) not in ops:
                    ops[id(op)] = self._copy_op(op, names[g.names[u]], k, c)
                new_op = ops[id(op)]
                args, kwargs = node.keras_node.arguments.fill_in(values)
                pairs = _arg_pairs(node, args, kwargs)
                out = self._call(new_op, node, pairs, args, kwargs,
                                 self.records.get(id(new_op)), "init")
                for t, new in zip(node.outputs, tree.flatten(out)):
                    values[tensor_key(t)] = new
        finally:
            self.chmap = saved
        result = values[r.output]
        if dense:
            # Downstream, the result's channels are: the insertion point's
            # channels (as they map to the old graph), then the new unit's.
            merge = g.node(r.merges[-1])
            parts = []
            for t in merge.inputs:
                if tensor_key(t) == r.entry:
                    parts.append(_full_map(value, value_map))
                else:
                    parts.append(np.full(int(values[tensor_key(t)].shape[-1]), NEW))
            self.chmap[id(result)] = np.concatenate(parts)
        self.copies.append({"copy": c, "names": names, "ops": ops})
        return result

    def _copy_op(self, op, name, k, c):
        if not isinstance(op, keras.layers.Layer):
            try:
                config = op.get_config()
                config["name"] = name
                return type(op).from_config(config)
            except Exception:  # stateless op without a usable config: share it
                return op
        new = copy_layer(op, name=name, **_rate_override(op, c.rate))
        self.records[id(new)] = _LayerRecord(new, op, "copy", copy_index=k)
        return new


def _is_identity_map(m, t) -> bool:
    return m is None or (len(m) == int(t.shape[-1]) and np.array_equal(m, np.arange(len(m))))


def _rate_override(op, rate) -> dict:
    if rate is None or not _blocks._is_drop_path(op):
        return {}
    config = op.get_config()
    for key in ("rate", "drop_path_rate"):
        if key in config:
            return {key: float(rate)}
    raise ValueError(f"cannot reset the drop-path rate of {op.name!r} "
                     f"({type(op).__name__}): its config has no 'rate' or 'drop_path_rate'.")


# --------------------------------------------------------------------------- weights


def _weight_axes(layer, record) -> dict:
    """Maps id(weight) -> (axis, fill, index) for weights indexed along channels."""
    out = {}
    for attr, spec in record.axes.items():
        w = getattr(layer, attr, None)
        if w is not None:
            out[id(w)] = spec
    return out


def _donor_value(source: _Source, template_layer, donor_layer_name, i, old_var, fallback):
    """The donor's value for weight `i` of the template layer, or None."""
    if isinstance(source.donor, keras.Model):
        layer = source.donor_layers.get(donor_layer_name)
        if layer is None:
            raise KeyError(f"the donor model has no layer {donor_layer_name!r} to copy block "
                           f"weights from; it must have the model's architecture.")
        if len(layer.weights) != len(template_layer.weights):
            raise ValueError(f"donor layer {donor_layer_name!r} has {len(layer.weights)} "
                             f"weights, the template {template_layer.name!r} has "
                             f"{len(template_layer.weights)}.")
        return np.asarray(layer.weights[i].numpy()), layer.weights[i].path
    path = old_var.path
    if donor_layer_name != template_layer.name:
        path = re.sub(rf"(^|/){re.escape(template_layer.name)}/",
                      lambda m: f"{m.group(1)}{donor_layer_name}/", path, count=1)
    if path in source.donor:
        return np.asarray(source.donor[path]), path
    if old_var.trainable:
        raise KeyError(f"the donor has no entry {path!r} (needed for a copy of "
                       f"{template_layer.name!r}); donor mappings are keyed by variable path "
                       "and must cover every trainable weight of the copied blocks.")
    fallback.append(path)
    return None, path


def _assign_and_plan(engine: _Engine, new_model, source: _Source, donor_names, zero_layers):
    """Sets every weight of `new_model` and returns (plan, info lists)."""
    plan, zeroed, fallback = {}, [], []
    seen_paths = {}
    for layer in new_model.layers:
        rec = engine.records.get(id(layer))
        if rec is None:
            if layer.weights:
                raise RuntimeError(f"internal: no source recorded for layer {layer.name!r}")
            continue
        old_layer, new_weights = rec.old, layer.weights
        if len(old_layer.weights) != len(new_weights):
            raise ValueError(f"layer {layer.name!r} has {len(new_weights)} weights after the "
                             f"rebuild but its source {old_layer.name!r} has "
                             f"{len(old_layer.weights)}; its config does not determine its "
                             "weights.")
        axes = _weight_axes(layer, rec)
        zero_ids = ({id(w) for w in _blocks.zeroable_variables(layer)}
                    if id(layer) in zero_layers else set())
        for i, (w_new, w_old) in enumerate(zip(new_weights, old_layer.weights)):
            if w_new.path in seen_paths:
                raise ValueError(f"two weights of the new model share the path {w_new.path!r} "
                                 f"(layers {seen_paths[w_new.path]!r} and {layer.name!r}); "
                                 "rename one of them.")
            seen_paths[w_new.path] = layer.name
            shape = tuple(w_new.shape)
            if rec.role == "copy" and source.kind == "random":
                # Fresh: keeps the value its initializer gave it at the rebuild.
                plan[w_new.path] = VariableTransfer(None, (None,) * len(shape))
                continue
            if id(w_new) in zero_ids:
                plan[w_new.path] = VariableTransfer(None, (None,) * len(shape))
                w_new.assign(np.zeros(shape, dtype=w_new.dtype))
                zeroed.append(w_new.path)
                continue
            index = [None] * len(shape)
            fill = "zero"
            spec = axes.get(id(w_new))
            if spec is not None:
                axis, fill, cmap = spec
                if cmap is not None:
                    index[axis % len(shape)] = np.asarray(cmap)
            transfer = VariableTransfer(w_old.path, tuple(index))
            value = None
            if rec.role == "copy" and source.kind in ("donor", "identity") and \
                    source.donor is not None:
                value, _ = _donor_value(source, old_layer, donor_names[rec.copy_index].get(
                    old_layer.name, old_layer.name), i, w_old, fallback)
            if value is None:
                value = np.asarray(w_old.numpy())
            if value.shape != tuple(w_old.shape):
                raise ValueError(f"donor value for {w_old.path!r} has shape {value.shape}, "
                                 f"expected {tuple(w_old.shape)}.")
            new_value = transfer.gather(value, shape, fill=0.0)
            if fill == "init":
                mask = transfer.new_mask(shape)
                if mask.any():
                    new_value = np.where(mask, np.asarray(w_new.numpy()), new_value)
            w_new.assign(new_value.astype(w_new.dtype))
            plan[w_new.path] = transfer
    return TransferPlan(plan), zeroed, fallback


# --------------------------------------------------------------------------- checks


def _block_label(an, i) -> str:
    b = an.blocks[i]
    return f"block {i} ({b.layers[0]} .. {b.output_layer})"


def _check_index(an, i, what) -> int:
    n = len(an.blocks)
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"{what} must be block indices (ints), got {i!r}.")
    if n == 0:
        raise ValueError("the model has no blocks: find_blocks found no residual or dense "
                         "unit. Name the blocks with spec=[(first_layer, last_layer), ...] "
                         "or a regular expression.")
    if not 0 <= i < n:
        raise ValueError(f"{what} {i} is out of range: the model has {n} blocks "
                         f"(0..{n - 1}); see find_blocks(model).")
    return int(i)


def _copyable(an) -> list:
    return [b.index for b in an.blocks if b.shape_preserving or b.kind == "dense"]


def _require_copyable(an, i, what):
    b = an.blocks[i]
    if b.shape_preserving or b.kind == "dense":
        return
    raise ValueError(
        f"{_block_label(an, i)} cannot be {what}: it is not shape-preserving (shortcut "
        f"{b.shortcut!r}, {b.input_shape} -> {b.output_shape}). Only blocks with an identity "
        f"shortcut (or dense units, for insertion) can be copied or removed; copyable blocks: "
        f"{_copyable(an)}.")


def _check_identity(an, edit: _Edit):
    """Raises unless zeroing the copies' branch ends gives the identity; returns zero sets."""
    g = an.graph
    zero = {}
    k = 0
    for b in range(len(an.blocks)):
        point = _point_producer(an, edit, b)
        for c in edit.copies.get(b, []):
            r = an.regions[c.template]
            if r.kind == "dense":
                k += 1
                continue
            if r.shortcut != "identity":
                raise ValueError(f"source='identity' needs residual blocks with an identity "
                                 f"shortcut; {_block_label(an, c.template)} has shortcut "
                                 f"{r.shortcut!r}.")
            verts = set()
            for _, keys in r.branches:
                for key in keys:
                    try:
                        verts.update(_blocks._branch_end_vertices(g, r, key))
                    except ValueError as err:
                        raise ValueError(f"cannot identity-initialize a copy of "
                                         f"{_block_label(an, c.template)}: {err}") from None
            if r.post_ops:
                keys = {_blocks._activation_key(g.op(u)) for u in r.post_ops}
                key = keys.pop() if len(keys) == 1 else None
                if key is None or point is None or _blocks._activation_key(point) != key:
                    raise ValueError(
                        f"a zeroed copy of {_block_label(an, c.template)} would not be the "
                        f"identity: after its merge it applies "
                        f"{[g.names[u] for u in r.post_ops]}, which changes inputs that are "
                        f"not already outputs of the same idempotent activation (the "
                        f"insertion point is produced by "
                        f"{getattr(point, 'name', 'a model input')!r}). Use "
                        "source='neighbour' or 'donor' instead.")
            zero[k] = verts
            point = g.op(g.producer[r.output][0])
            k += 1
    return zero


def _check_fit(an, edit: _Edit):
    """Raises unless every copy reads the shape its insertion point produces."""
    for b, cs in sorted(edit.copies.items()):
        blk = an.blocks[b]
        point = blk.input_shape if b in edit.removed else blk.output_shape
        where = f"block {b}{' (removed)' if b in edit.removed else ''} outputs"
        for c in cs:
            t = an.blocks[c.template]
            dense = t.kind == "dense"
            fits = t.input_shape[:-1] == point[:-1] if dense else t.input_shape == point
            if not fits:
                raise ValueError(
                    f"cannot insert a copy of {_block_label(an, c.template)} after block "
                    f"{b}: the block reads shape {t.input_shape} but {where} shape {point}.")
            if dense:
                point = point[:-1] + (point[-1] + t.output_shape[-1] - t.input_shape[-1],)
            where = "the previous inserted block outputs"


def _point_producer(an, edit, b):
    """The op producing the value that copies after block b receive (old graph)."""
    g = an.graph
    key = an.regions[b].output
    while True:
        v = g.producer[key][0]
        blk = next((i for i, r in enumerate(an.regions) if r.output == key), None)
        if blk is not None and blk in edit.removed:
            key = an.regions[blk].entry
            continue
        return g.op(v)


# --------------------------------------------------------------------------- driver


def _drop_path_rates(an, edit: _Edit, max_rate=None):
    """Resets drop-path rates to linspace(0, max, n) over the new block order.

    `max` is `max_rate` when given, else the largest rate found in the
    model's blocks.
    """
    g = an.graph
    has = [any(_blocks._is_drop_path(g.op(v)) for v in r.vertices) for r in an.regions]
    rates = []
    for i, r in enumerate(an.regions):
        for v in r.vertices:
            op = g.op(v)
            if _blocks._is_drop_path(op):
                cfg = op.get_config()
                rates.append(float(cfg.get("rate", cfg.get("drop_path_rate", 0.0)) or 0.0))
    if not rates:
        if max_rate:
            raise ValueError(f"reset_drop_path={max_rate}: the model's blocks have no "
                             "DropPath/StochasticDepth layer whose rate could be set.")
        return None
    top = max(rates) if max_rate is None else max_rate
    seq = [item for item in edit.sequence(len(an.regions))
           if has[item[1] if item[0] == "old" else item[1].template]]
    new = np.linspace(0.0, top, len(seq)) if len(seq) > 1 else np.array([0.0])
    for (kind, x), rate in zip(seq, new):
        if kind == "old":
            edit.kept_rates[x] = float(rate)
        else:
            x.rate = float(rate)
    return [float(r) for r in new]


def _donor_names(an, source: _Source, edit: _Edit) -> list:
    """Per copy (in insertion order): template layer name -> donor layer name."""
    copies = [c for b in range(len(an.blocks)) for c in edit.copies.get(b, [])]
    out = []
    for c in copies:
        tmpl = an.blocks[c.template]
        db = c.donor_block
        if db is None or source.donor is None:
            out.append({})
            continue
        if isinstance(db, Block):
            # A Block carries the donor's layer names, which is all a
            # mapping donor needs; a donor model is looked up by index.
            donor_block = db
            if isinstance(source.donor, keras.Model):
                db = db.index
        if not isinstance(db, Block):
            if not isinstance(source.donor, keras.Model):
                raise TypeError("donor_blocks given as indices need a donor model; with a "
                                "mapping donor pass Block objects (e.g. from "
                                "find_blocks(original_model)).")
            blocks = _donor_analysis(source).blocks
            if isinstance(db, bool) or not isinstance(db, (int, np.integer)) \
                    or not 0 <= db < len(blocks):
                raise ValueError(f"donor block {db} is out of range: the donor has "
                                 f"{len(blocks)} blocks.")
            donor_block = blocks[db]
        if donor_block.signature != tmpl.signature or \
                len(donor_block.layers) != len(tmpl.layers):
            raise ValueError(f"donor block {donor_block.index} ({donor_block.layers[0]} ..) "
                             f"does not have the structure of template "
                             f"{_block_label(an, c.template)}.")
        out.append(dict(zip(tmpl.layers, donor_block.layers)))
    return out


def _donor_analysis(source: _Source):
    if source.donor_analysis is None:
        source.donor_analysis = analyze(flat_model(source.donor))
    return source.donor_analysis


def _attach_donor_blocks(copies, donor_blocks, source: _Source) -> None:
    if donor_blocks is None:
        return
    if source.donor is None:
        raise ValueError("donor_blocks needs a donor (source='donor' or a donor model).")
    donor_blocks = list(donor_blocks)
    if len(donor_blocks) != len(copies):
        raise ValueError(f"donor_blocks has {len(donor_blocks)} entries for "
                         f"{len(copies)} inserted blocks.")
    for c, d in zip(copies, donor_blocks):
        c.donor_block = d


def _resolve_rates(an, edit: _Edit, reset_drop_path):
    if reset_drop_path is False or reset_drop_path is None:
        return None
    if reset_drop_path is True:
        return _drop_path_rates(an, edit)
    if isinstance(reset_drop_path, (int, float)) and 0.0 <= reset_drop_path < 1.0:
        return _drop_path_rates(an, edit, float(reset_drop_path))
    raise ValueError("reset_drop_path must be True/False or the maximum rate, a float in "
                     f"[0, 1); got {reset_drop_path!r}.")


def _zero_layer_ids(an, engine: _Engine, zero: dict) -> set:
    """ids of the new layers (in copies) whose branch-end weights are zeroed."""
    out = set()
    for k, created in enumerate(engine.copies):
        for v in zero.get(k, ()):
            new = created["ops"].get(id(an.graph.op(v)))
            if new is not None:
                out.add(id(new))
    return out


def _change_info(an, edit: _Edit, engine: _Engine, new_model, source: _Source) -> dict:
    """The JSON-ready description of a depth change (without weight lists)."""
    n = len(an.blocks)
    copies = [c for b in range(n) for c in edit.copies.get(b, [])]
    inserted, k = [], 0
    for new_index, (kind, x) in enumerate(edit.sequence(n)):
        if kind == "copy":
            names = engine.copies[k]["names"]
            inserted.append({"new_index": new_index, "after": x.after, "template": x.template,
                             "donor_block": _donor_label(x.donor_block),
                             "layers": [names[l] for l in an.blocks[x.template].layers]})
            k += 1
    depths = [s.depth for s in an.stages]
    after = list(depths)
    for b in edit.removed:
        after[an.blocks[b].stage] -= 1
    for c in copies:
        after[an.blocks[c.after].stage] += 1
    in_model = {id(layer) for layer in new_model.layers}
    widened = sorted({rec.new.name for rec in engine.records.values()
                      if rec.role == "kept" and id(rec.new) in in_model
                      and any(spec[2] is not None for spec in rec.axes.values())})
    # Dense insertions are function-preserving whatever the source (zero
    # fan-in); residual ones only when zeroed; removals never.
    preserving = not edit.removed and all(
        source.kind == "identity" or an.regions[c.template].kind == "dense" for c in copies)
    return {
        "source": source.kind,
        "weights_from": "donor" if source.donor is not None else "model",
        "blocks_before": n,
        "blocks_after": n - len(edit.removed) + len(copies),
        "stage_depths_before": depths,
        "stage_depths_after": after,
        "removed": [{"block": b, "layers": list(an.blocks[b].layers)}
                    for b in sorted(edit.removed)],
        "inserted": inserted,
        "widened": widened,
        "function_preserving": preserving,
    }


@contextlib.contextmanager
def _seeded(seed):
    """Keras initializers built without a seed draw one from Python's `random`
    when constructed; seeding it around the rebuild makes fresh values
    reproducible, and the caller's random state is restored afterwards."""
    if seed is None:
        yield
        return
    state = random.getstate()
    random.seed(int(seed))
    try:
        yield
    finally:
        random.setstate(state)


def _run(model, an, flat, edit: _Edit, source: _Source, *, operation, donor_blocks=None,
         reset_drop_path=False, extra_info=None, seed=None) -> GrowthResult:
    """Validates an edit, rebuilds the model, sets its weights and builds the plan."""
    n = len(an.blocks)
    copies = [c for b in range(n) for c in edit.copies.get(b, [])]
    _attach_donor_blocks(copies, donor_blocks, source)
    if n - len(edit.removed) + len(copies) < 1:
        raise ValueError("the change would remove every block of the model.")
    _check_fit(an, edit)
    zero = _check_identity(an, edit) if source.kind == "identity" else {}
    rates = _resolve_rates(an, edit, reset_drop_path)
    donor_names = _donor_names(an, source, edit)
    engine = _Engine(an, edit, set(an.graph.names))
    with _seeded(seed if source.kind == "random" else None):
        new_model = rebuild(flat, operation_fn=engine.operation_fn, call_fn=engine.call_fn,
                            name=model.name)
    plan, zeroed, fallback = _assign_and_plan(engine, new_model, source, donor_names,
                                              _zero_layer_ids(an, engine, zero))
    info = {"operation": operation, **_change_info(an, edit, engine, new_model, source),
            "zeroed": zeroed, "donor_fallback": fallback, "drop_path_rates": rates}
    info.update(extra_info or {})
    return GrowthResult(new_model, plan, info)


def _donor_label(d):
    if d is None:
        return None
    return d.index if isinstance(d, Block) else int(d)


def _prepare(model, spec):
    flat = flat_model(model)
    return flat, analyze(flat, spec)


def insert_blocks(model, positions: Optional[Sequence[int]] = None, *,
                  mapping: Optional[Sequence[int]] = None,
                  templates: Optional[Sequence[int]] = None,
                  source: Union[str, keras.Model, Mapping] = "neighbour",
                  donor: Union[keras.Model, Mapping, None] = None,
                  donor_blocks: Optional[Sequence] = None,
                  spec=None, reset_drop_path: Union[bool, float] = False,
                  seed: Optional[int] = None) -> GrowthResult:
    """Inserts copies of blocks into a model.

    Args:
        model: a Functional model (see `find_blocks` for what a block is).
        positions: block indices (from `find_blocks(model, spec)`); one new
            block is inserted after each. Repeating an index inserts several
            blocks there, in order.
        mapping: instead of `positions`, the new order of all blocks as old
            indices: the first occurrence of an index is the old block, each
            repeat is a copy inserted right after the previous entry (e.g.
            `expansion_mapping(6, 9)` for a 6-block ViT). Every old block must
            appear (use `set_depth` to also remove blocks).
        templates: with `positions`, the block each new block copies
            (default: the block it follows). Templates must be shape-preserving
            (identity shortcut) or dense units and fit the insertion point.
        source: "neighbour", "identity", "donor"/"ema", or a donor model /
            mapping (see the module docstring).
        donor: the donor for source "donor"/"ema" (optional for "identity").
        donor_blocks: per inserted block, the donor block to take weights
            from: an index into `find_blocks(donor)` (donor model) or a
            `Block` of the donor (needed with a mapping donor). Default: the
            template block, i.e. the donor has the model's architecture.
        spec: block spec passed to `find_blocks` for irregular models.
        reset_drop_path: True to set drop-path rates to linspace(0, max rate,
            blocks) over the new block order (max rate: the largest rate in the
            model), or a float to use as the max rate.
        seed: seed of the fresh values of source="random" (None: Keras'
            own seeding, different each call).

    Returns:
        `GrowthResult` with the new model, the transfer plan, and `info`
        (inserted blocks and their new layer names, zeroed weights, ...).

    Example:
        >>> inp = keras.Input((8,))
        >>> x = inp
        >>> for i in range(2):
        ...     h = keras.layers.Dense(8, name=f"b{i}_fc")(x)
        ...     x = keras.layers.Add(name=f"b{i}_add")([x, h])
        >>> model = keras.Model(inp, x)
        >>> result = insert_blocks(model, [1], source="identity")
        >>> result.info["inserted"][0]["layers"]
        ['b1_ins1_fc', 'b1_ins1_add']
        >>> xs = np.ones((2, 8), "float32")
        >>> bool(np.allclose(model(xs), result.model(xs)))
        True
    """
    flat, an = _prepare(model, spec)
    src = _resolve_source(source, donor)
    n = len(an.blocks)
    edit = _Edit(set(), {})
    if (positions is None) == (mapping is None):
        raise ValueError("insert_blocks needs exactly one of `positions` (blocks to insert "
                         "after) or `mapping` (the new block order).")
    if mapping is not None:
        if templates is not None:
            raise ValueError("`templates` goes with `positions`; a mapping names the copied "
                             "blocks itself.")
        mapping = _validate_mapping(mapping, n, allow_removal=False, what="insert_blocks")
        _edit_from_mapping(mapping, list(range(n)), edit)
    else:
        positions = list(positions)
        if not positions:
            raise ValueError("insert_blocks: `positions` is empty; nothing to insert.")
        positions = [_check_index(an, p, "position") for p in positions]
        if templates is None:
            templates = positions
        templates = [_check_index(an, t, "template") for t in templates]
        if len(templates) != len(positions):
            raise ValueError(f"got {len(templates)} templates for {len(positions)} positions.")
        for p, t in zip(positions, templates):
            edit.copies.setdefault(p, []).append(_Copy(after=p, template=t))
    for cs in edit.copies.values():
        for c in cs:
            _require_copyable(an, c.template, "copied")
    return _run(model, an, flat, edit, src, operation="insert_blocks",
                donor_blocks=donor_blocks, reset_drop_path=reset_drop_path,
                extra_info={"mapping": None if mapping is None else list(mapping)}, seed=seed)


def remove_blocks(model, indices: Sequence[int], *, spec=None,
                  reset_drop_path: Union[bool, float] = False) -> GrowthResult:
    """Removes shape-preserving blocks; their consumers read the block input instead.

    Args:
        model: a Functional model.
        indices: blocks to remove (indices into `find_blocks(model, spec)`);
            each must be shape-preserving (identity shortcut). Dense units and
            projection blocks cannot be removed.
        spec: block spec for irregular models.
        reset_drop_path: as in `insert_blocks`.

    Returns:
        `GrowthResult`; the plan maps every remaining weight to itself and
        `info["removed"]` lists the removed blocks' layers.

    Example:
        >>> inp = keras.Input((8,))
        >>> x = inp
        >>> for i in range(3):
        ...     x = keras.layers.Add(name=f"b{i}_add")([x, keras.layers.Dense(8, name=f"b{i}_fc")(x)])
        >>> result = remove_blocks(keras.Model(inp, x), [1])
        >>> [l.name for l in result.model.layers if l.name.endswith("_fc")]
        ['b0_fc', 'b2_fc']
    """
    flat, an = _prepare(model, spec)
    indices = list(indices)
    if not indices:
        raise ValueError("remove_blocks: `indices` is empty; nothing to remove.")
    indices = [_check_index(an, i, "block index") for i in indices]
    if len(set(indices)) != len(indices):
        raise ValueError(f"remove_blocks: repeated indices in {indices}.")
    for i in indices:
        b = an.blocks[i]
        if b.kind == "dense":
            raise ValueError(f"{_block_label(an, i)} is a dense unit; removing it would narrow "
                             "every later layer of its dense block, which kgrow does not "
                             "support.")
        _require_copyable(an, i, "removed")
    edit = _Edit(set(indices), {})
    return _run(model, an, flat, edit, _Source("neighbour"), operation="remove_blocks",
                reset_drop_path=reset_drop_path)


def _stage_targets(an, depths) -> dict:
    stages = an.stages
    if not stages:
        raise ValueError("the model has no blocks (find_blocks found none); pass spec= to "
                         "name them.")
    if isinstance(depths, (int, np.integer)) and not isinstance(depths, bool):
        if len(stages) != 1:
            raise ValueError(f"the model has {len(stages)} stages (depths "
                             f"{[s.depth for s in stages]}); give one depth per stage as a "
                             "list or a {stage: depth} dict.")
        return {0: _check_depth("depth", depths)}
    if isinstance(depths, Mapping):
        out = {}
        for s, d in depths.items():
            if not isinstance(s, (int, np.integer)) or not 0 <= s < len(stages):
                raise ValueError(f"stage {s!r} does not exist; stages are 0..{len(stages) - 1}.")
            out[int(s)] = _check_depth(f"depth of stage {s}", d)
        return out
    depths = list(depths)
    if len(depths) != len(stages):
        raise ValueError(f"got {len(depths)} stage depths for {len(stages)} stages "
                         f"(current depths {[s.depth for s in stages]}).")
    return {i: _check_depth(f"depth of stage {i}", d) for i, d in enumerate(depths)}


def set_depth(model, depths, *, mapping: Union[None, Callable, Sequence, Mapping] = None,
              source: Union[str, keras.Model, Mapping] = "neighbour",
              donor: Union[keras.Model, Mapping, None] = None, spec=None,
              reset_drop_path: Union[bool, float] = True,
              seed: Optional[int] = None) -> GrowthResult:
    """Grows or shrinks stages to target depths.

    Args:
        model: a Functional model.
        depths: the new number of blocks: an int for a one-stage model (a
            ViT), a list with one depth per stage, or a dict {stage: depth}
            (stages not named keep their depth).
        mapping: how each stage's *body* (its shape-preserving blocks; a
            leading/trailing projection block always stays) maps to the new
            body: a callable `(old_body_depth, new_body_depth) -> list` such as
            `interpolation_mapping` (the default) or `expansion_mapping`, a
            list (one-stage models) or a dict {stage: list or callable}. See
            `insert_blocks` for the mapping convention; old indices that do
            not appear are removed.
        source, donor: where copies get their weights (see `insert_blocks`).
        spec: block spec for irregular models.
        reset_drop_path: reset drop-path rates to linspace(0, max rate, n)
            over all blocks with drop-path layers (DeiT/Network Expansion);
            True uses the largest rate in the model, a float sets the max rate
            (needed when growing from one block, whose rate is 0).
        seed: seed of the fresh values of source="random".

    Example:
        >>> inp = keras.Input((8,))
        >>> x = inp
        >>> for i in range(2):
        ...     x = keras.layers.Add(name=f"b{i}_add")([x, keras.layers.Dense(8, name=f"b{i}_fc")(x)])
        >>> result = set_depth(keras.Model(inp, x), 4, mapping=expansion_mapping, source="identity")
        >>> result.info["stage_depths_after"]
        [4]
    """
    flat, an = _prepare(model, spec)
    src = _resolve_source(source, donor)
    targets = _stage_targets(an, depths)
    edit = _Edit(set(), {})
    used = {}
    for s, new_depth in targets.items():
        stage = an.stages[s]
        body = [b.index for b in stage.body]
        fixed = stage.depth - len(body)
        new_body = new_depth - fixed
        if new_depth == stage.depth and mapping is None:
            continue
        if not body:
            raise ValueError(f"stage {s} has no copyable block (all {stage.depth} blocks "
                             "change shape), so its depth cannot change.")
        if new_body < 1:
            raise ValueError(f"stage {s} needs at least {fixed + 1} blocks: {fixed} of its "
                             f"blocks change shape and stay, and one copyable block must "
                             f"remain; got depth {new_depth}.")
        m = mapping.get(s) if isinstance(mapping, Mapping) else mapping
        if m is None:
            m = interpolation_mapping
        if callable(m):
            m = m(len(body), new_body)
        elif isinstance(mapping, Mapping) or len(targets) == 1:
            m = list(m)
        else:
            raise ValueError("a list mapping is for a one-stage change; for several stages "
                             "pass a callable or a {stage: mapping} dict.")
        m = _validate_mapping(m, len(body), allow_removal=True, what=f"stage {s}")
        if len(m) != new_body:
            raise ValueError(f"stage {s}: the mapping has {len(m)} entries but the new body "
                             f"depth is {new_body} (depth {new_depth} minus {fixed} "
                             "shape-changing blocks).")
        if stage.kind == "dense" and len(set(m)) != len(body):
            raise ValueError(f"stage {s} is a dense block; its units cannot be removed.")
        _edit_from_mapping(m, body, edit)
        used[s] = m
    return _run(model, an, flat, edit, src, operation="set_depth",
                reset_drop_path=reset_drop_path,
                extra_info={"mappings": {str(k): v for k, v in used.items()}}, seed=seed)

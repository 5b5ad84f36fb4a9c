"""Finding the repeated blocks of a Functional model by their structure.

Depth growth (Network Expansion, AutoProg) adds and removes *blocks*: ResNet
stage blocks, Transformer encoder blocks, MBConv blocks with a residual,
ConvNeXt blocks, DenseNet dense layers. This module finds them from the graph
alone, without relying on layer names:

* A **residual unit** is the subgraph between a *stream* tensor and the merge
  (`Add`, or `x + y` written with keras ops) that adds a branch computed from
  the stream to the stream itself (identity shortcut) or to a projection of it
  (projection shortcut). The stream tensor is the merge's immediate dominator:
  the last tensor every path from the model inputs to the merge goes through,
  so the unit has exactly one input. A parameter-free activation right after
  the merge (the `ReLU` after the `Add` of a post-activation ResNet) belongs to
  the unit. A unit must have one output: no tensor inside it may be read from
  outside.
* A **dense unit** is the same with a channel `Concatenate` of the stream and
  the branch (DenseNet). It widens the stream, so it is never shape-preserving.
* Units are grouped into **blocks**: consecutive residual units whose
  signatures repeat with a period of 2 to 4 form one block per period (a
  Transformer encoder block is an attention unit followed by an MLP unit); an
  attention unit followed by a unit without attention is paired even when it
  does not repeat (a depth-1 Transformer). Otherwise each unit is a block.
* A **stage** is a run of consecutive blocks (each reading the previous one's
  output) with the same *signature*: the sequence of layer types, their
  configs without names, seeds, rates and initializers, the wiring, and the
  input/output shapes. A projection block opens the run that follows it when
  its output has the run's shape (ResNet: the strided first block of a stage),
  or else closes the run before it when its input has that shape (Keras'
  ResNetV2 puts the stride on the last block of a stage).

Irregular models can name their blocks instead (`spec=`): a list of
`(first_layer, last_layer)` pairs, or a regular expression on layer names
whose capture groups identify a block (`r"block(\\d+)_"`).

Nested Functional/Sequential models are looked through: blocks are found on
the flat graph `rebuild(model)` would produce, and reported by layer name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Optional, Sequence, Union

import keras
import numpy as np
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.ops import numpy as knp

from kgrow.surgery.graph import is_graph_model, nodes, rebuild, require_functional, tensor_key

__all__ = ["Block", "BlockStage", "find_blocks", "find_stages", "BlockSpec"]

#: Longest repeating pattern of residual units grouped into one block.
MAX_UNITS_PER_BLOCK = 4

BlockSpec = Union[str, "re.Pattern", Sequence[tuple]]

# Layers that map a zero input to a zero output without weights of their own:
# a residual branch may pass through them after its last weighted layer.
_ZERO_TRANSPARENT = (
    keras.layers.Dropout, keras.layers.Identity, keras.layers.Reshape, keras.layers.Permute,
    keras.layers.Flatten, keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D, keras.layers.Cropping1D, keras.layers.Cropping2D,
    keras.layers.Cropping3D, keras.layers.UpSampling1D, keras.layers.UpSampling2D,
    keras.layers.UpSampling3D, keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D, keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
# Activation-like layers: elementwise, single input, no weights.
_ACTIVATIONS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                keras.layers.ELU, keras.layers.Softmax)
# Config keys that do not change what a block computes structurally: blocks
# differing only in these (names, per-block drop rates, seeds, initial
# values) are repeats of one another.
_IGNORED_CONFIG_KEYS = {"name", "trainable", "seed", "rate", "drop_path_rate", "init_values",
                        "layer_scale_init_value"}
_IGNORED_CONFIG_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


# --------------------------------------------------------------------------- public data


@dataclasses.dataclass(frozen=True)
class Block:
    """One block found in a model (plain data, JSON-friendly via `to_dict`).

    Attributes:
        index: position among all blocks of the model, in graph order.
        stage: index of the `BlockStage` the block belongs to.
        kind: "residual" (additive merge), "dense" (channel concatenation of
            the stream and a branch, DenseNet) or "plain" (a `spec` block
            without a merge).
        layers: names of the block's layers (and keras ops) in graph order,
            shortcut projections and post-merge activations included.
        input_layer: name of the layer producing the block's input tensor
            (an `InputLayer` name when the block reads a model input).
        output_layer: name of the layer producing the block's output.
        shortcut: "identity" (the stream itself is added), "projection" (a
            transformed stream is added), "concat" (dense unit) or "none".
        shape_preserving: True when the block can be removed or copied
            elsewhere: identity or no shortcut and equal input/output shapes.
        branch_ends: for each residual branch, the layer whose weights make
            the branch output zero when zeroed (the last BN / conv / dense /
            LayerScale before the merge); empty when not determinable.
        merges: names of the merge operations on the block's main path.
        units: number of residual/dense units in the block (2 for a
            Transformer encoder block).
        input_shape: shape of the block input, batch axis excluded.
        output_shape: shape of the block output, batch axis excluded.
        signature: short hash of the block's structure; equal signatures mean
            copies of one another up to names, seeds, rates and weights.
    """
    index: int
    stage: int
    kind: str
    layers: tuple
    input_layer: str
    output_layer: str
    shortcut: str
    shape_preserving: bool
    branch_ends: tuple
    merges: tuple
    units: int
    input_shape: tuple
    output_shape: tuple
    signature: str

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("layers", "branch_ends", "merges", "input_shape", "output_shape"):
            d[key] = list(d[key])
        return d


@dataclasses.dataclass(frozen=True)
class BlockStage:
    """A run of consecutive blocks with the same structure (a stage of the
    network; `kgrow.schedules.Stage` is a stage of a growth schedule).

    Attributes:
        index: stage number, in graph order.
        blocks: the blocks, in order. Leading/trailing projection blocks
            (`head`/`tail`) are part of the stage; the shape-preserving middle
            part (`body`) is what depth changes copy and remove.
    """
    index: int
    blocks: tuple

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def block_indices(self) -> list:
        return [b.index for b in self.blocks]

    @property
    def body(self) -> list:
        """Blocks that can be copied (shape-preserving residual, or dense units)."""
        return [b for b in self.blocks if b.shape_preserving or b.kind == "dense"]

    @property
    def kind(self) -> str:
        return self.blocks[0].kind if len({b.kind for b in self.blocks}) == 1 else "mixed"

    def to_dict(self) -> dict:
        return {"index": self.index, "blocks": self.block_indices, "kind": self.kind,
                "body": [b.index for b in self.body]}


# --------------------------------------------------------------------------- graph view


class _Graph:
    """Vertices (model inputs first, then call nodes) of one flat graph in topological order."""

    def __init__(self, model):
        self.model = model
        graph = model._functional if isinstance(model, keras.Sequential) else model
        self.inputs = list(graph.inputs)
        self.nodes = nodes(model)
        self.n_in = len(self.inputs)
        self.producer = {}    # tensor key -> (vertex, output position)
        self.tensor = {}      # tensor key -> KerasTensor
        for j, t in enumerate(self.inputs):
            self.producer[tensor_key(t)] = (j, 0)
            self.tensor[tensor_key(t)] = t
        for i, node in enumerate(self.nodes):
            for p, t in enumerate(node.outputs):
                self.producer[tensor_key(t)] = (self.n_in + i, p)
                self.tensor[tensor_key(t)] = t
        self.consumers = {}   # tensor key -> list of vertices
        for i, node in enumerate(self.nodes):
            for t in self._unique(node.inputs):
                self.consumers.setdefault(tensor_key(t), []).append(self.n_in + i)
        self.output_keys = {tensor_key(t) for t in graph.outputs}
        self.preds = [[-1] for _ in self.inputs]
        for node in self.nodes:
            ps = sorted({self.producer[tensor_key(t)][0] for t in node.inputs
                         if tensor_key(t) in self.producer})
            self.preds.append(ps or [-1])
        self.idom = self._dominators()
        self.names = [self._input_name(t) for t in self.inputs] + [n.name for n in self.nodes]
        self.by_name = {}
        for v, name in enumerate(self.names):
            self.by_name.setdefault(name, []).append(v)

    @staticmethod
    def _unique(tensors):
        seen, out = set(), []
        for t in tensors:
            if tensor_key(t) not in seen:
                seen.add(tensor_key(t))
                out.append(t)
        return out

    @staticmethod
    def _input_name(t):
        return t._keras_history[0].name

    def __len__(self):
        return self.n_in + len(self.nodes)

    def node(self, v):
        return None if v < self.n_in else self.nodes[v - self.n_in]

    def op(self, v):
        node = self.node(v)
        return None if node is None else node.operation

    def in_keys(self, v) -> list:
        node = self.node(v)
        return [] if node is None else [tensor_key(t) for t in self._unique(node.inputs)]

    def out_keys(self, v) -> list:
        if v < self.n_in:
            return [tensor_key(self.inputs[v])]
        return [tensor_key(t) for t in self.nodes[v - self.n_in].outputs]

    def shape(self, key) -> tuple:
        return tuple(self.tensor[key].shape[1:])

    def producer_name(self, key) -> str:
        return self.names[self.producer[key][0]]

    def _dominators(self):
        # Cooper-Harvey-Kennedy on a DAG: vertices are numbered topologically,
        # so one pass suffices and a dominator always has a smaller number.
        idom = []
        for v in range(len(self.preds)):
            preds = self.preds[v]
            d = preds[0]
            for p in preds[1:]:
                d = self._intersect(idom, d, p)
            idom.append(d)
        return idom

    @staticmethod
    def _intersect(idom, a, b):
        while a != b:
            while a > b:
                a = idom[a]
            while b > a:
                b = idom[b]
        return a

    def ancestors_until(self, v, stop) -> set:
        """Vertices on paths into `v` that start at `stop` (excluded), `v` included."""
        seen, todo = {v}, [v]
        while todo:
            u = todo.pop()
            for p in self.preds[u]:
                if p == stop or p < 0 or p in seen:
                    continue
                seen.add(p)
                todo.append(p)
        return seen


# --------------------------------------------------------------------------- op predicates


def _is_additive(op) -> bool:
    return isinstance(op, (keras.layers.Add, knp.Add))


def _channel_axis_is_last(op, ndim) -> bool:
    axis = getattr(op, "axis", -1)
    return axis == -1 or axis == ndim - 1


def _is_concat(op) -> bool:
    return isinstance(op, (keras.layers.Concatenate, knp.Concatenate))


def _is_activation(op) -> bool:
    return isinstance(op, _ACTIVATIONS)


def _is_drop_path(op) -> bool:
    name = type(op).__name__
    return "DropPath" in name or "StochasticDepth" in name


def _is_attention(op) -> bool:
    return isinstance(op, keras.layers.MultiHeadAttention) or "Attention" in type(op).__name__


def _maps_zero_to_zero(op) -> bool:
    if isinstance(op, _ZERO_TRANSPARENT) or _is_drop_path(op):
        return True
    if isinstance(op, _ACTIVATIONS) and not isinstance(op, keras.layers.Softmax):
        try:
            out = op(np.zeros((1, 1), dtype="float32"))
        except Exception:  # activation that needs a particular rank: be conservative
            return False
        return bool(np.all(keras.ops.convert_to_numpy(out) == 0.0))
    return False


def _activation_key(op):
    """Comparable description of an activation op (None if not idempotent)."""
    if isinstance(op, keras.layers.Activation):
        fn = getattr(op.activation, "__name__", str(op.activation))
        return ("act", fn) if fn in ("relu", "relu6", "linear") else None
    if isinstance(op, keras.layers.ReLU):
        cfg = op.get_config()
        if cfg.get("negative_slope", 0.0) == 0.0 and cfg.get("threshold", 0.0) == 0.0:
            return ("relu", cfg.get("max_value"))
    return None


def zeroable_variables(layer) -> list:
    """The variables of `layer` that, set to zero, make its output exactly zero.

    Supported: normalization layers (gamma and beta), Dense/Conv/
    DepthwiseConv/EinsumDense (kernel and bias), SeparableConv (pointwise
    kernel and bias), MultiHeadAttention (output projection) and LayerScale
    (its scale). Raises `ValueError` for anything else.

    Example:
        >>> bn = keras.layers.BatchNormalization(); bn.build((None, 4))
        >>> [v.name for v in zeroable_variables(bn)]
        ['gamma', 'beta']
    """
    def present(*names):
        return [getattr(layer, n) for n in names if getattr(layer, n, None) is not None]

    if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                          keras.layers.GroupNormalization)):
        if getattr(layer, "gamma", None) is None:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no scale "
                             "(scale=False), so zeroing it cannot make its output zero.")
        return present("gamma", "beta")
    if isinstance(layer, BaseSeparableConv):
        return present("pointwise_kernel", "bias")
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return list(layer._output_dense.weights)
    if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense, BaseConv,
                          BaseConvTranspose, BaseDepthwiseConv)):
        return present("kernel", "bias")
    if "LayerScale" in type(layer).__name__ and len(layer.trainable_weights) == 1:
        return list(layer.trainable_weights)
    raise ValueError(
        f"layer {layer.name!r} of type {type(layer).__name__} ends a residual branch, but "
        "kgrow does not know which of its weights to zero to make the branch output zero. "
        "Supported branch ends: BatchNormalization/LayerNormalization/GroupNormalization, "
        "Dense, Conv*, DepthwiseConv*, SeparableConv*, EinsumDense, MultiHeadAttention, "
        "LayerScale (with Dropout/DropPath/zero-preserving activations after them).")


# --------------------------------------------------------------------------- regions


@dataclasses.dataclass
class _Region:
    """A single-input single-output subgraph (internal, holds graph vertices)."""
    vertices: list          # topological order
    entry: int              # tensor key of the input
    output: int             # tensor key of the output
    kind: str = "plain"
    shortcut: str = "none"
    merges: list = dataclasses.field(default_factory=list)   # merge vertices on the main path
    branches: list = dataclasses.field(default_factory=list)  # (merge vertex, [branch keys])
    post_ops: list = dataclasses.field(default_factory=list)  # activations on the main path
    units: int = 1


def _describe(g: _Graph, region: _Region) -> _Region:
    """Fills kind, shortcut, merges and branches of a region from its main path."""
    inside = set(region.vertices)
    # Tensors reachable from the entry through merges and activations only.
    stream = {region.entry}
    for v in region.vertices:
        op, ins = g.op(v), g.in_keys(v)
        if (_is_additive(op) or _is_concat(op)) and any(k in stream for k in ins):
            stream.update(g.out_keys(v))
        elif _is_activation(op) and len(ins) == 1 and ins[0] in stream:
            stream.update(g.out_keys(v))
    has_add = any(_is_additive(g.op(v)) for v in region.vertices)
    has_concat = any(_is_concat(g.op(v)) for v in region.vertices)
    region.kind = "residual" if has_add else ("dense" if has_concat else "plain")
    merges, branches, post = [], [], []
    key, ok = region.output, True
    while key != region.entry:
        v = g.producer[key][0]
        if v not in inside:
            ok = False
            break
        op, ins = g.op(v), g.in_keys(v)
        if _is_additive(op) or _is_concat(op):
            stream_ins = [k for k in ins if k in stream]
            if not stream_ins:
                ok = False
                break
            merges.append(v)
            branches.append((v, [k for k in ins if k != stream_ins[0]]))
            key = stream_ins[0]
        elif _is_activation(op) and len(ins) == 1:
            post.append(v)
            key = ins[0]
        else:
            ok = False
            break
    if not ok:
        region.shortcut = "projection" if region.kind == "residual" else "none"
        region.merges, region.branches, region.post_ops = [], [], []
    else:
        concat = any(_is_concat(g.op(v)) for v in merges)
        region.shortcut = "concat" if concat else ("identity" if merges else "none")
        if concat:
            region.kind = "dense"
        region.merges, region.branches, region.post_ops = merges[::-1], branches[::-1], post[::-1]
    return region


def _residual_unit(g: _Graph, m: int) -> Optional[_Region]:
    """The unit ending at merge vertex `m`, or None if `m` does not close one."""
    op = g.op(m)
    d = g.idom[m]
    if d < 0:
        return None
    region = g.ancestors_until(m, d)
    entries = {k for v in region for k in g.in_keys(v) if g.producer[k][0] == d}
    if len(entries) != 1:
        return None
    entry = entries.pop()
    ins = g.in_keys(m)
    if _is_concat(op):
        # Dense unit: the stream itself is concatenated on the channel axis.
        if entry not in ins or not _channel_axis_is_last(op, len(g.tensor[entry].shape)):
            return None
    out = g.out_keys(m)
    if len(out) != 1:
        return None
    out = out[0]
    if not _single_output(g, region, out):
        return None
    # Parameter-free activations right after the merge close the unit
    # (post-activation ResNet: Add -> ReLU is the block output).
    vertices = set(region)
    if _is_additive(op):
        while out not in g.output_keys and len(g.consumers.get(out, [])) == 1:
            c = g.consumers[out][0]
            if not (_is_activation(g.op(c)) and g.in_keys(c) == [out]
                    and len(g.out_keys(c)) == 1):
                break
            vertices.add(c)
            out = g.out_keys(c)[0]
    return _describe(g, _Region(sorted(vertices), entry, out))


_NORMALIZATIONS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                   keras.layers.GroupNormalization)


def _absorb_preactivation(g: _Graph, units: list) -> list:
    """Extends projection units back over their pre-activation layers.

    In a pre-activation ResNet (Keras' ResNetV2) the shortcut projection and
    the branch both read `relu(bn(x))`, so the merge's dominator is that ReLU,
    not the previous block's output `x`. When normalization/activation layers
    used only by the unit lead back to another unit's output, they belong to
    this unit: the blocks then chain and the stage is complete.
    """
    outputs = {u.output for u in units}
    for u in units:
        if u.shortcut != "projection":
            continue
        inside, entry, added = set(u.vertices), u.entry, []
        while entry not in outputs:
            v = g.producer[entry][0]
            if v < g.n_in or entry in g.output_keys:
                break
            op, ins = g.op(v), g.in_keys(v)
            if not (isinstance(op, _NORMALIZATIONS) or _is_activation(op)) or len(ins) != 1 \
                    or len(g.out_keys(v)) != 1 \
                    or any(c not in inside for c in g.consumers.get(entry, [])):
                break
            added.append(v)
            inside.add(v)
            entry = ins[0]
        if added and entry in outputs:
            u.vertices, u.entry = sorted(inside), entry
            _describe(g, u)
    return units


def _single_output(g: _Graph, region: set, out: int) -> bool:
    for v in region:
        for k in g.out_keys(v):
            if k == out:
                continue
            if k in g.output_keys or any(c not in region for c in g.consumers.get(k, [])):
                return False
    return True


def _auto_units(g: _Graph) -> list:
    units = []
    for v in range(g.n_in, len(g)):
        op = g.op(v)
        if _is_additive(op) or _is_concat(op):
            unit = _residual_unit(g, v)
            if unit is not None:
                units.append((v, unit))
    # Keep the innermost units: a unit containing another unit's merge is a
    # block of blocks (a stage-level shortcut), not a repeated block.
    merges = {v for v, _ in units}
    return [u for v, u in units if not any(m != v and m in u.vertices for m in merges)]


# --------------------------------------------------------------------------- signatures


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "__name__", type(value).__name__)


def _config_key(op) -> dict:
    try:
        config = op.get_config()
    except Exception:  # some keras ops have no serializable config
        config = {}
    return {k: _plain(v) for k, v in config.items()
            if k not in _IGNORED_CONFIG_KEYS and not k.endswith(_IGNORED_CONFIG_SUFFIXES)}


def _signature(g: _Graph, region: _Region) -> str:
    local = {v: i for i, v in enumerate(region.vertices)}
    dense = region.kind == "dense"

    def shape(key):
        s = list(g.shape(key))
        return s[:-1] + [None] if dense else s

    items = []
    for v in region.vertices:
        node = g.node(v)
        refs = []
        for t in node.inputs:
            k = tensor_key(t)
            refs.append("in" if k == region.entry else [local[g.producer[k][0]], g.producer[k][1]])
        items.append([type(node.operation).__name__, _config_key(node.operation), refs,
                      [shape(tensor_key(t)) for t in node.outputs]])
    text = json.dumps([items, shape(region.entry), shape(region.output)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- grouping


def _chains(regions: list) -> list:
    """Splits regions (graph order) into runs where each reads the previous output."""
    chains = []
    for r in regions:
        if chains and chains[-1][-1].output == r.entry:
            chains[-1].append(r)
        else:
            chains.append([r])
    return chains


def _group_units(g: _Graph, chain: list) -> list:
    """Groups a chain of units into blocks (lists of units)."""
    sigs = [_signature(g, u) for u in chain]
    preserving = [_preserving(g, u) and u.kind == "residual" for u in chain]
    out, i, n = [], 0, len(chain)
    while i < n:
        period = 1
        if not (i + 1 < n and sigs[i] == sigs[i + 1]):
            for p in range(2, MAX_UNITS_PER_BLOCK + 1):
                if i + 2 * p <= n and all(preserving[i:i + 2 * p]) \
                        and sigs[i:i + p] == sigs[i + p:i + 2 * p]:
                    period = p
                    break
            else:
                if i + 1 < n and preserving[i] and preserving[i + 1] \
                        and _has_attention(g, chain[i]) and not _has_attention(g, chain[i + 1]):
                    period = 2
        pattern, j = sigs[i:i + period], i
        while j + period <= n and sigs[j:j + period] == pattern:
            out.append(chain[j:j + period])
            j += period
        i = j
    return out


def _has_attention(g: _Graph, unit: _Region) -> bool:
    return any(_is_attention(g.op(v)) for v in unit.vertices)


def _merge_units(g: _Graph, units: list) -> _Region:
    if len(units) == 1:
        return units[0]
    vertices = sorted(set().union(*[u.vertices for u in units]))
    region = _describe(g, _Region(vertices, units[0].entry, units[-1].output))
    region.units = len(units)
    return region


def _stages(g: _Graph, regions: list, sigs: list) -> list:
    """Stage id of each region (same order)."""
    index = {id(r): i for i, r in enumerate(regions)}
    stage_of = [None] * len(regions)
    next_stage = 0
    for chain in _chains(regions):
        runs = []   # lists of region positions with one signature
        for r in chain:
            i = index[id(r)]
            if runs and sigs[runs[-1][-1]] == sigs[i] and (_preserving(g, r) or r.kind == "dense"):
                runs[-1].append(i)
            else:
                runs.append([i])
        merged = []  # runs after attaching projection blocks
        k = 0
        while k < len(runs):
            run = runs[k]
            r = regions[run[0]]
            if len(run) == 1 and not _preserving(g, r) and r.kind != "dense":
                nxt = runs[k + 1] if k + 1 < len(runs) else None
                if nxt is not None and _preserving(g, regions[nxt[0]]) and \
                        g.shape(r.output) == g.shape(regions[nxt[0]].entry):
                    merged.append(run + nxt)
                    k += 2
                    continue
                if merged and _preserving(g, regions[merged[-1][-1]]) and \
                        g.shape(regions[merged[-1][-1]].output) == g.shape(r.entry) and \
                        not _closed(g, regions, merged[-1]):
                    merged[-1] = merged[-1] + run
                    k += 1
                    continue
            merged.append(run)
            k += 1
        for run in merged:
            for i in run:
                stage_of[i] = next_stage
            next_stage += 1
    return stage_of


def _preserving(g: _Graph, r: _Region) -> bool:
    return r.shortcut in ("identity", "none") and r.kind != "dense" and \
        g.shape(r.entry) == g.shape(r.output)


def _closed(g, regions, run) -> bool:
    return not _preserving(g, regions[run[-1]])


# --------------------------------------------------------------------------- spec


def _spec_regions(g: _Graph, spec) -> list:
    if isinstance(spec, (str, re.Pattern)):
        return _regex_regions(g, re.compile(spec) if isinstance(spec, str) else spec)
    try:
        pairs = [tuple(p) for p in spec]
    except TypeError:
        pairs = None
    if not pairs or any(len(p) != 2 or not all(isinstance(s, str) for s in p) for p in pairs):
        raise ValueError("spec must be a regular expression on layer names (whose capture "
                         "groups identify a block, e.g. r'block(\\d+)_') or a non-empty list "
                         f"of (first_layer_name, last_layer_name) pairs; got {spec!r}.")
    return [_pair_region(g, first, last) for first, last in pairs]


def _vertex(g: _Graph, name: str, role: str) -> int:
    vs = g.by_name.get(name)
    if not vs:
        raise ValueError(f"spec names {role} layer {name!r}, which is not in the model.")
    if len(vs) > 1:
        raise ValueError(f"spec names {role} layer {name!r}, which is called "
                         f"{len(vs)} times in the model (a shared layer); a block boundary "
                         "must be a layer called once.")
    return vs[0]


def _pair_region(g: _Graph, first: str, last: str) -> _Region:
    fv, lv = _vertex(g, first, "first"), _vertex(g, last, "last")
    ins = g.in_keys(fv)
    if len(ins) != 1:
        raise ValueError(f"block ({first!r} .. {last!r}): the first layer {first!r} reads "
                         f"{len(ins)} tensors; a block's first layer must read the block's "
                         "single input.")
    entry = ins[0]
    outs = g.out_keys(lv)
    if len(outs) != 1:
        raise ValueError(f"block ({first!r} .. {last!r}): the last layer {last!r} has "
                         f"{len(outs)} outputs; a block must end in one tensor.")
    # Vertices on a path from the entry tensor to the last layer.
    fwd, todo = set(), [c for c in g.consumers.get(entry, [])]
    while todo:
        v = todo.pop()
        if v in fwd:
            continue
        fwd.add(v)
        for k in g.out_keys(v):
            todo.extend(g.consumers.get(k, []))
    if lv not in fwd:
        raise ValueError(f"block ({first!r} .. {last!r}): layer {last!r} does not depend on "
                         f"the input of {first!r}; check the order of the pair.")
    back, todo = set(), [lv]
    while todo:
        v = todo.pop()
        if v in back or v not in fwd:
            continue
        back.add(v)
        todo.extend(p for p in g.preds[v] if p >= 0)
    if fv not in back:
        raise ValueError(f"block ({first!r} .. {last!r}): layer {first!r} is not on a path "
                         f"to {last!r}.")
    return _validated(g, sorted(back), entry, outs[0], f"({first!r} .. {last!r})")


def _regex_regions(g: _Graph, pattern: "re.Pattern") -> list:
    groups = {}
    for v in range(g.n_in, len(g)):
        m = pattern.search(g.names[v])
        if m is None:
            continue
        key = m.groups() or (m.group(0),)
        groups.setdefault(key, []).append(v)
    if not groups:
        raise ValueError(f"spec pattern {pattern.pattern!r} matches no layer name of the model.")
    regions = []
    for key, vertices in groups.items():
        label = f"{'/'.join(map(str, key))!r} (pattern {pattern.pattern!r})"
        inside = set(vertices)
        entries = {}
        for v in vertices:
            for k in g.in_keys(v):
                if g.producer[k][0] not in inside:
                    entries.setdefault(k, v)
        if len(entries) != 1:
            detail = ", ".join(f"{g.producer_name(k)!r} (read by {g.names[v]!r})"
                               for k, v in entries.items())
            raise ValueError(f"block {label} must read exactly one tensor from outside, but "
                             f"it reads {len(entries)}: {detail or 'none'}. Include the "
                             "missing layers in the block or use (first, last) pairs.")
        outputs = [k for v in vertices for k in g.out_keys(v)
                   if k in g.output_keys or any(c not in inside for c in g.consumers.get(k, []))]
        if len(outputs) != 1:
            names = sorted({g.producer_name(k) for k in outputs})
            raise ValueError(f"block {label} must have exactly one output used outside it, "
                             f"but {len(outputs)} of its tensors are ({names}).")
        regions.append(_validated(g, sorted(vertices), next(iter(entries)), outputs[0], label))
    return regions


def _validated(g: _Graph, vertices: list, entry: int, output: int, label: str) -> _Region:
    inside = set(vertices)
    for v in vertices:
        for k in g.in_keys(v):
            if k != entry and g.producer[k][0] not in inside:
                raise ValueError(
                    f"block {label} is not a single-input subgraph: layer {g.names[v]!r} "
                    f"reads the output of {g.producer_name(k)!r}, which is outside the block "
                    "and is not the block input.")
        for k in g.out_keys(v):
            if k == output:
                continue
            if k in g.output_keys:
                raise ValueError(f"block {label} is not a single-output subgraph: the output "
                                 f"of layer {g.names[v]!r} is a model output.")
            for c in g.consumers.get(k, []):
                if c not in inside:
                    raise ValueError(
                        f"block {label} is not a single-output subgraph: the output of "
                        f"layer {g.names[v]!r} is read by {g.names[c]!r} outside the block.")
    return _describe(g, _Region(vertices, entry, output))


# --------------------------------------------------------------------------- entry points


@dataclasses.dataclass
class _Analysis:
    """Blocks of a model plus the graph they live in (internal to kgrow.surgery)."""
    graph: _Graph
    regions: list
    blocks: list
    stages: list


def flat_model(model):
    """`model` itself, or `rebuild(model)` when it contains nested graph models."""
    require_functional(model, "find_blocks()")
    if any(is_graph_model(n.operation) for n in nodes(model)):
        return rebuild(model)
    return model


def _branch_ends(g: _Graph, region: _Region) -> tuple:
    names = []
    try:
        for _, keys in region.branches:
            for k in keys:
                names.extend(g.names[v] for v in _branch_end_vertices(g, region, k))
    except ValueError:
        return ()
    return tuple(names)


def _branch_end_vertices(g: _Graph, region: _Region, key: int) -> list:
    """Vertices whose zeroed weights make tensor `key` (a residual branch) zero."""
    inside = set(region.vertices)
    v = g.producer[key][0]
    while True:
        if key == region.entry or v not in inside:
            raise ValueError(f"the residual branch reaching {g.names[g.producer[key][0]]!r} "
                             "has no layer with weights between the block input and the "
                             "merge, so it cannot be zeroed.")
        op = g.op(v)
        ins = g.in_keys(v)
        if _is_additive(op):
            return [u for k in ins for u in _branch_end_vertices(g, region, k)]
        if isinstance(op, keras.layers.Layer) and op.weights:
            zeroable_variables(op)  # raises a clear error if unsupported
            return [v]
        if _maps_zero_to_zero(op) and len(ins) == 1:
            key = ins[0]
            v = g.producer[key][0]
            continue
        raise ValueError(
            f"the residual branch ends in layer {g.names[v]!r} of type {type(op).__name__}, "
            "which neither has weights kgrow can zero nor maps zero to zero (supported on "
            "the way back from the merge: Dropout, DropPath/StochasticDepth, Identity, "
            "padding/pooling/reshape layers and activations with f(0) = 0).")


def analyze(model, spec: Optional[BlockSpec] = None) -> _Analysis:
    """Finds blocks and stages; internal form used by `kgrow.surgery.depth`.

    `model` must already be flat (see `flat_model`).
    """
    g = _Graph(model)
    if spec is None:
        units = _absorb_preactivation(g, _auto_units(g))
        regions = []
        for chain in _chains(units):
            regions.extend(_merge_units(g, group) for group in _group_units(g, chain))
    else:
        regions = _spec_regions(g, spec)
    regions.sort(key=lambda r: g.producer[r.output][0])
    _check_disjoint(g, regions)
    sigs = [_signature(g, r) for r in regions]
    stage_of = _stages(g, regions, sigs)
    blocks = []
    for i, r in enumerate(regions):
        blocks.append(Block(
            index=i, stage=stage_of[i], kind=r.kind,
            layers=tuple(g.names[v] for v in r.vertices),
            input_layer=g.producer_name(r.entry), output_layer=g.producer_name(r.output),
            shortcut=r.shortcut, shape_preserving=_preserving(g, r),
            branch_ends=_branch_ends(g, r) if r.shortcut == "identity" else (),
            merges=tuple(g.names[v] for v in r.merges), units=r.units,
            input_shape=g.shape(r.entry), output_shape=g.shape(r.output), signature=sigs[i]))
    stages = []
    for b in blocks:
        if b.stage == len(stages):
            stages.append([])
        stages[b.stage].append(b)
    return _Analysis(g, regions, blocks, [BlockStage(i, tuple(s)) for i, s in enumerate(stages)])


def _check_disjoint(g: _Graph, regions: list) -> None:
    owner = {}
    for r in regions:
        for v in r.vertices:
            if v in owner:
                raise ValueError(f"layer {g.names[v]!r} belongs to two blocks (ending at "
                                 f"{g.producer_name(owner[v].output)!r} and "
                                 f"{g.producer_name(r.output)!r}); blocks must not overlap.")
            owner[v] = r


def find_blocks(model, spec: Optional[BlockSpec] = None) -> list:
    """Finds the repeated blocks of a Functional model.

    Args:
        model: a Functional model (or Sequential with an Input); nested
            models are looked through.
        spec: None to find blocks by structure (see the module docstring), or
            a list of `(first_layer_name, last_layer_name)` pairs, or a regular
            expression whose capture groups identify a block (all layers whose
            names give the same groups form one block). A spec block must be a
            single-input single-output subgraph; otherwise a `ValueError`
            names the layer that breaks it.

    Returns:
        list of `Block`, in graph order.

    Example:
        >>> inp = keras.Input((8,))
        >>> x = inp
        >>> for i in range(3):
        ...     h = keras.layers.Dense(8, name=f"b{i}_fc")(x)
        ...     x = keras.layers.Add(name=f"b{i}_add")([x, h])
        >>> blocks = find_blocks(keras.Model(inp, x))
        >>> [(b.index, b.stage, b.layers) for b in blocks]  # doctest: +NORMALIZE_WHITESPACE
        [(0, 0, ('b0_fc', 'b0_add')), (1, 0, ('b1_fc', 'b1_add')), (2, 0, ('b2_fc', 'b2_add'))]
    """
    return list(analyze(flat_model(model), spec).blocks)


def find_stages(model, spec: Optional[BlockSpec] = None) -> list:
    """Groups `find_blocks(model, spec)` into `BlockStage`s (runs of repeated blocks).

    Example:
        >>> inp = keras.Input((8,))
        >>> x = inp
        >>> for i in range(2):
        ...     x = keras.layers.Add()([x, keras.layers.Dense(8)(x)])
        >>> [s.depth for s in find_stages(keras.Model(inp, x))]
        [2]
    """
    return list(analyze(flat_model(model), spec).stages)

"""Walking, rebuilding and re-binding Keras Functional graphs.

Everything that changes a model's architecture in kgrow goes through the three
primitives here:

* `nodes(model)` lists the call sites of a Functional graph in topological
  order, so analyses (channel groups, block finding, FLOPs) read one shape.
* `rebuild(model, ...)` replays the graph on fresh inputs while letting the
  caller substitute operations (a wider Conv2D, a copy of a block) and
  intercept individual calls (insert layers after a node, bypass a block).
* `rebind(model, new_model)` makes an existing model object take over the
  graph of another one. Keras' `fit` loop holds on to the model it was called
  on, so growing *inside* `fit` means the object must stay the same while its
  graph changes; afterwards it is an ordinary Functional model again (save,
  load, predict), with no kgrow layer left in it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import keras
from keras import tree

__all__ = [
    "Node", "nodes", "rebuild", "rebind", "copy_layer", "require_functional",
    "consumers", "tensor_key", "is_graph_model", "flat_nodes", "replay", "graph_of",
    "nested_inputs", "require_rebuildable",
]


def require_functional(model, what="this operation"):
    """Raises a clear error unless `model` has an inspectable graph.

    Functional models qualify, and so do Sequential models built with an
    Input (Keras keeps their graph in a private Functional).
    """
    if isinstance(model, keras.Sequential):
        if getattr(model, "_functional", None) is None:
            raise TypeError(f"{what}: the Sequential model {model.name!r} has no Input, so "
                            "it has no graph yet. Start it with keras.Input(shape).")
        return model
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise TypeError(
            f"{what} needs a Keras Functional model (built with keras.Model(inputs, "
            f"outputs) or keras.Sequential with an Input); got {type(model).__name__}. "
            "Subclassed models have no inspectable graph: wrap their layers in a "
            "Functional model first.")
    return model


def require_rebuildable(model, what="graph surgery", *, every_layer=False):
    """Raises a clear ValueError for layers that surgery cannot re-create.

    Surgery re-creates layers from their config (`copy_layer`), and the
    training controller re-creates the whole model from its JSON when a
    checkpoint or an `EarlyStopping` restore brings back another
    architecture. Keras refuses to re-create a `Lambda` layer that wraps a
    Python lambda (unsafe deserialization), and cannot find an unregistered
    function by name, so such a model would fail in the middle of `fit`.
    `rebuild` tries the `Lambda` layers on every call (cheap);
    `every_layer=True` tries all layers, once, when `Growth` gets the model.

    Example:
        >>> inputs = keras.Input((4,))
        >>> m = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
        >>> require_rebuildable(m, "scale_width")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: scale_width cannot rebuild model ...
    """
    require_functional(model, what)
    failures, seen = [], set()
    for node in flat_nodes(model):
        op = node.operation
        if not isinstance(op, keras.layers.Layer) or id(op) in seen:
            continue
        seen.add(id(op))
        if not (every_layer or isinstance(op, keras.layers.Lambda)):
            continue
        try:
            op.__class__.from_config(op.get_config())
        except Exception as err:  # whatever from_config raises, surgery would too
            failures.append((op, err))
    if not failures:
        return
    lambdas = [op.name for op, _ in failures if isinstance(op, keras.layers.Lambda)]
    others = [f"{op.name!r} ({type(op).__name__}: {type(err).__name__}: "
              f"{' '.join(str(err).split())[:300]})"
              for op, err in failures if not isinstance(op, keras.layers.Lambda)]
    parts = []
    if lambdas:
        parts.append(
            f"Lambda layers {lambdas}: Keras does not re-create a Lambda's Python function "
            "from its config (a lambda is refused as unsafe deserialization, a plain function "
            "is only found when registered). Replace each with a built-in layer (e.g. "
            "keras.layers.Rescaling for x * c, keras.layers.Activation), or with a small "
            "keras.layers.Layer subclass decorated with "
            "@keras.saving.register_keras_serializable() whose call uses keras.ops")
    if others:
        parts.append("Layers whose from_config(get_config()) fails: " + "; ".join(others)
                     + ". Layers used in graph surgery must implement get_config() and "
                     "from_config() (and be registered with "
                     "@keras.saving.register_keras_serializable())")
    raise ValueError(
        f"{what} cannot rebuild model {model.name!r}: surgery re-creates layers from their "
        "config, and checkpoints/EarlyStopping restores re-create the model from its JSON. "
        + ". ".join(parts) + ".")


def tensor_key(tensor) -> int:
    """Identity of a symbolic tensor inside one graph."""
    return id(tensor)


@dataclasses.dataclass(eq=False)
class Node:
    """One call of an operation in a Functional graph.

    Attributes:
        operation: the Layer (or stateless keras Operation) called.
        inputs: flat list of the symbolic tensors it consumed.
        outputs: flat list of the symbolic tensors it produced.
        keras_node: the underlying Keras node (for call arguments).
    """
    operation: Any
    inputs: list
    outputs: list
    keras_node: Any

    @property
    def name(self) -> str:
        return self.operation.name

    @property
    def is_layer(self) -> bool:
        return isinstance(self.operation, keras.layers.Layer)


def graph_of(model):
    """The Functional graph behind `model` (itself, or a built Sequential's)."""
    if isinstance(model, keras.Sequential):
        return model._functional
    return model


def nodes(model) -> list[Node]:
    """Lists the non-input calls of a Functional graph in topological order.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
        >>> [n.name for n in nodes(m)]
        ['dense']
    """
    require_functional(model, "nodes()")
    graph = graph_of(model)
    result = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            result.append(Node(node.operation, list(node.input_tensors),
                               list(node.outputs), node))
    return result


def consumers(model) -> dict[int, list[Node]]:
    """Maps each symbolic tensor (by `tensor_key`) to the nodes reading it."""
    table: dict[int, list[Node]] = {}
    for node in nodes(model):
        for t in node.inputs:
            table.setdefault(tensor_key(t), []).append(node)
    return table


def copy_layer(layer, name: Optional[str] = None, **overrides):
    """A fresh, unbuilt layer with `layer`'s config, optionally changed.

    The copy keeps the original name unless `name` is given, so variable paths
    (`layer_name/var_name`) stay stable across a rebuild; transfer plans and
    optimizer-slot carry-over are keyed by those paths.
    """
    config = layer.get_config()
    config.update(overrides)
    if name is not None:
        config["name"] = name
    try:
        return layer.__class__.from_config(config)
    except Exception as err:  # from_config errors are often cryptic
        raise ValueError(
            f"Could not re-create layer {layer.name!r} of type "
            f"{type(layer).__name__} from its config with changes {overrides}: {err}. "
            "Layers used in graph surgery must implement get_config()/from_config()."
        ) from err


def is_graph_model(op) -> bool:
    """True for a Functional or (built) Sequential model used as a layer."""
    if isinstance(op, keras.Sequential):
        return getattr(op, "_functional", None) is not None
    return isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth")


def rebuild(model, *, operation_fn: Optional[Callable] = None,
            call_fn: Optional[Callable] = None, input_shapes=None,
            name: Optional[str] = None, inline_nested: bool = True) -> keras.Model:
    """Replays `model`'s graph on new Input tensors and returns a new model.

    Args:
        model: a Functional model.
        operation_fn: `op -> op` mapping, called once per operation (shared
            layers stay shared). Default: keep the same operation object, which
            shares weights with `model`; pass `copy_layer`-based functions to
            get new weights.
        call_fn: `(node, op, args, kwargs) -> outputs` to intercept a call:
            e.g. apply extra layers after it, or return one of its inputs to
            bypass it. Default: `op(*args, **kwargs)`.
        input_shapes: optional list of input shapes (without batch dim) to
            replace the model's own, e.g. for a new image size.
        name: name of the new model (default: the old one's).
        inline_nested: replay the graphs of nested Functional/Sequential
            models (e.g. the stem of keras.applications.ConvNeXt) into the
            outer graph, so that surgery sees one flat graph. The variables of
            inlined layers then get top-level paths (`layer/var`).

    Returns:
        A new Functional model containing only operations reachable from its
        outputs (bypassed branches disappear).
    """
    require_functional(model, "rebuild()")
    if operation_fn is not None:  # layers will be re-created from their configs
        require_rebuildable(model, "Graph surgery")
    graph = graph_of(model)
    memo: dict[int, Any] = {}

    def mapped(op):
        if operation_fn is None:
            return op
        if id(op) not in memo:
            memo[id(op)] = operation_fn(op)
        return memo[id(op)]

    old_inputs = graph.inputs
    if input_shapes is not None and len(input_shapes) != len(old_inputs):
        raise ValueError(f"rebuild(): got {len(input_shapes)} input shapes for a model "
                         f"with {len(old_inputs)} inputs.")
    new_inputs = []
    for i, x in enumerate(old_inputs):
        shape = tuple(input_shapes[i]) if input_shapes is not None else tuple(x.shape[1:])
        new_inputs.append(keras.Input(shape=shape, dtype=x.dtype,
                                      name=x._keras_history[0].name))
    def call(node, args, kwargs, prefix):
        op = mapped(node.operation)
        return call_fn(node, op, args, kwargs) if call_fn is not None else op(*args, **kwargs)

    new_outputs = replay(model, new_inputs, call, inline_nested=inline_nested)
    outputs = tree.pack_sequence_as(graph._outputs_struct, new_outputs)
    inputs = tree.pack_sequence_as(graph._inputs_struct, new_inputs)
    return keras.Model(inputs, outputs, name=name or model.name)


def nested_inputs(op, args, kwargs) -> list:
    """Flat list of the tensors a nested model is called on."""
    if args:
        return tree.flatten(args[0])
    if "inputs" in kwargs:
        return tree.flatten(kwargs["inputs"])
    raise ValueError(f"nested model {op.name!r} was called without inputs")


def replay(model, input_values, call: Callable, *, inline_nested: bool = True,
           prefix: str = "") -> list:
    """Runs `model`'s graph on new values, one `call` per node; returns the outputs.

    The values may be anything `call` understands: new symbolic tensors
    (`rebuild`), batch-1 specs (FLOPs counting), ... Nodes not reachable from
    the inputs are skipped, as Keras does when it runs the model.

    Args:
        model: a Functional model (or built Sequential).
        input_values: one value per model input, in `model.inputs` order.
        call: `(node, args, kwargs, prefix) -> outputs` of one node, where
            `args`/`kwargs` are the node's call arguments with the new values
            filled in.
        inline_nested: replay nested Functional/Sequential models node by
            node (their nodes get `prefix + "<nested name>/"`) instead of
            handing their call to `call`.
        prefix: name prefix passed to `call` for the nodes of `model`.

    Returns:
        Flat list of output values, in the model's output order.
    """
    graph = graph_of(model)
    if len(graph.inputs) != len(input_values):
        raise ValueError(f"model {model.name!r} takes {len(graph.inputs)} inputs, got "
                         f"{len(input_values)}")
    values = {tensor_key(x): y for x, y in zip(graph.inputs, input_values)}
    for node in nodes(model):
        if any(tensor_key(t) not in values for t in node.inputs):
            continue  # not reachable from the inputs (e.g. a bypassed branch)
        args, kwargs = node.keras_node.arguments.fill_in(values)
        op = node.operation
        if inline_nested and is_graph_model(op):
            out = replay(op, nested_inputs(op, args, kwargs), call, inline_nested=True,
                         prefix=prefix + op.name + "/")
        else:
            out = tree.flatten(call(node, args, kwargs, prefix))
        if len(out) != len(node.outputs):
            raise ValueError(f"layer {prefix + op.name!r} produced {len(out)} outputs, the "
                             f"graph expects {len(node.outputs)}")
        for old, new in zip(node.outputs, out):
            values[tensor_key(old)] = new
    missing = [t.name for t in graph.outputs if tensor_key(t) not in values]
    if missing:
        raise ValueError(f"outputs {missing} of {model.name!r} are not computable from the "
                         "inputs; a bypass or removal cut the graph.")
    return [values[tensor_key(t)] for t in graph.outputs]


def flat_nodes(model) -> list[Node]:
    """Like `nodes`, but descends into nested Functional/Sequential models.

    Analyses that must see every layer (channel groups, FLOPs) use this; the
    tensors of a nested model are its own, joined to the outer graph through
    `Node.inputs`/`outputs` of the nested call, which this replaces by the
    nested nodes. Use `rebuild(model)` first to get one flat graph instead
    when tensor identity across the boundary matters.
    """
    out = []
    for node in nodes(model):
        if is_graph_model(node.operation):
            out.extend(flat_nodes(node.operation))
        else:
            out.append(node)
    return out


# Attributes that define a Functional graph. Everything else on the model
# object (compiled loss/metrics, optimizer, distribution strategy, stop flag,
# history) belongs to training and must survive a rebind.
_GRAPH_ATTRS = (
    "_inputs", "_inputs_struct", "_outputs", "_outputs_struct", "_operations",
    "_operations_by_depth", "_nodes", "_nodes_by_depth", "output_names",
    "_build_shapes_dict", "built", "_input_spec",
)


def rebind(model, new_model) -> None:
    """Makes `model` compute `new_model`'s graph, in place.

    After the call `model` is the same Python object (the one `fit` is
    running on, the one the user's callbacks point at) but its layers,
    weights and outputs are those of `new_model`. Compiled state (loss,
    metrics, optimizer, distribution strategy) is kept; the cached train/test/
    predict functions are dropped so they retrace on the new graph.

    Args:
        model: a Functional model, possibly compiled and in the middle of fit.
        new_model: a Functional model with the same inputs and outputs
            structure (built in the same distribution-strategy scope).
    """
    require_functional(model, "rebind()")
    require_functional(new_model, "rebind()")
    if isinstance(model, keras.Sequential) or isinstance(new_model, keras.Sequential):
        raise TypeError("rebind() works on Functional models; convert a Sequential with "
                        "keras.Model(seq.inputs, seq.outputs) first.")
    if len(model.inputs) != len(new_model.inputs) or len(model.outputs) != len(new_model.outputs):
        raise ValueError("rebind(): the new graph must have the same number of inputs "
                         "and outputs as the model it replaces.")
    old_layers = list(model._layers)
    for attr in _GRAPH_ATTRS:
        if hasattr(new_model, attr):
            object.__setattr__(model, attr, getattr(new_model, attr))
    tracker = model._tracker
    was_locked = tracker.locked
    tracker.unlock()
    for layer in old_layers:
        tracker.untrack(layer)
    for layer in new_model.layers:
        tracker.track(layer)
    if was_locked:
        tracker.lock()
    # Keras warns when trainable flags differ from those seen at compile
    # time; after a rebind "compile time" is now.
    if getattr(model, "compiled", False):
        model._compiled_trainable_state = {
            layer: layer.trainable for layer in model._flatten_layers()}
    model.train_function = None
    model.test_function = None
    model.predict_function = None

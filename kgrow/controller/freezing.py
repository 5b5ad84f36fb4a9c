"""Selecting layers to freeze or unfreeze.

Freezing is Keras' own `layer.trainable = False`; the controller makes it take
effect inside a running `fit` (retrace of the train function) and keeps the
optimizer able to unfreeze later. What a frozen layer does:

* its weights get no gradient and no update, so they stay bit-identical
  (the optimizer never sees them: no momentum step, no weight decay);
* its kernel gradients are not computed. Layers *in front of* the first
  trainable layer get no backward pass at all; a frozen layer *between*
  trainable ones still back-propagates the activation gradient (the layers
  before it need it) but not its weight gradient;
* `BatchNormalization` with `trainable=False` runs in inference mode in
  Keras 3: it normalizes with its moving statistics and does not update them,
  so a frozen block's BN statistics stay fixed too (the usual fine-tuning
  behaviour, and what SpFDE's "frozen blocks keep their weights" needs);
* Dropout and other stochastic layers keep their training behaviour;
* its optimizer slots stay where they were and are used again after an
  unfreeze.

Example:
    >>> import keras
    >>> inp = keras.Input((3,)); h = keras.layers.Dense(4, name="a")(inp)
    >>> model = keras.Model(inp, keras.layers.Dense(2, name="b")(h))
    >>> [l.name for l in resolve_layers(model, "a")]
    ['a']
    >>> [l.name for l in resolve_layers(model, lambda layer: layer.name.startswith("b"))]
    ['b']
"""
from __future__ import annotations

from typing import Callable, Iterable, Union

from kgrow.controller._variables import all_layers, trainable_candidates
from kgrow.controller.component import Component, register_kind

__all__ = ["resolve_layers", "frozen_layer_names", "FrozenLayers"]

LayerSpec = Union[str, Iterable[str], Callable]


def resolve_layers(model, spec: LayerSpec) -> list:
    """The layers named by `spec`: a name, a list of names, or a predicate.

    Names are searched among all layers, those of nested models included.

    Raises:
        ValueError: an unknown name, or a predicate that selects nothing.
        TypeError: `spec` is of another type.
    """
    layers = list(all_layers(model))
    if callable(spec) and not isinstance(spec, str):
        chosen = [layer for layer in layers if spec(layer)]
        if not chosen:
            raise ValueError("The layer predicate matched no layer of the model "
                             f"(layers: {[layer.name for layer in layers][:20]}).")
        return chosen
    names = [spec] if isinstance(spec, str) else spec
    try:
        names = list(names)
    except TypeError:
        raise TypeError("Layers are given as a name, a list of names, or a predicate "
                        f"`layer -> bool`; got {type(spec).__name__}.") from None
    if not names:
        raise ValueError("No layer names given.")
    by_name = {layer.name: layer for layer in layers}
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"Layer names must be strings, got {bad!r}")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"Unknown layer name(s) {unknown}; the model has: "
                         f"{sorted(by_name)[:40]}{' ...' if len(by_name) > 40 else ''}")
    return [by_name[n] for n in dict.fromkeys(names)]


def note_trainable_state(model) -> None:
    """Makes the current trainable flags the ones Keras saw at compile time.

    Keras warns at the next `fit` when the flags differ from those at
    `compile`; a controller that changes them retraces its train step, so
    the flags now in force are the compiled ones.
    """
    if getattr(model, "compiled", False):
        model._compiled_trainable_state = {
            layer: layer.trainable for layer in model._flatten_layers()}


def frozen_layer_names(model) -> list[str]:
    """Names of the layers with `trainable=False` that hold weights that could train.

    A frozen nested model is listed together with its layers, so that
    unfreezing the listed names really makes the weights trainable again.
    """
    candidates = {id(v) for v in trainable_candidates(model)}
    return [layer.name for layer in all_layers(model)
            if not layer.trainable and any(id(v) in candidates for v in layer.weights)]


@register_kind
class FrozenLayers(Component):
    """Component: which layers are frozen (`controller.freeze` / `unfreeze`).

    Trainable flags are part of the layer configs, so a growth result or an
    architecture taken back brings its own flags (a copied block is frozen
    when its donor is); `replace_model(..., reset=("frozen",))` unfreezes
    every layer of the new model. Checkpoints hold the names of the frozen
    layers, frozen again on restore.
    """

    kind = "frozen"
    order = 10
    builtin = True

    def carry(self, plan, reset: bool) -> None:
        if not reset:
            return
        model = self.host.model
        names = set(frozen_layer_names(model))
        for layer in all_layers(model):
            if layer.name in names:
                layer.trainable = True
        note_trainable_state(model)
        self.host.request_retrace()

    def get_state(self):
        return frozen_layer_names(self.host.model)

    def set_state(self, state, custom_objects=None) -> None:
        model = self.host.model
        for name in state or ():
            resolve_layers(model, name)[0].trainable = False
        self.host.request_retrace()

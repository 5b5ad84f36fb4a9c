"""The component protocol: one kind of training state the controller carries.

Training state that follows the architecture (optimizer slots, EMA shadows,
LR groups, the frozen set, sparse masks, per-entry LR scales) must survive
four events, and forgetting one of them loses the state silently:

* a growth step (`controller.replace_model(result)`): `carry(plan, reset)`
  moves the state onto the new model through the growth result's
  `TransferPlan` (`reset=True`: start over, as requested by the caller);
* weights of another architecture coming back (`set_weights` of an
  `ArchitectureWeights`, e.g. `EarlyStopping(restore_best_weights=True)`
  after a growth step): `rebuild(snapshot)` makes the state fit the model
  taken back, from the component's own `snapshot()` taken with those
  weights (None if the component does not snapshot);
* a checkpoint (`ControllerCheckpoint`, and the weights sidecar that Keras'
  `BackupAndRestore` writes through `save_weights`): `get_state()` returns
  JSON types and numpy arrays, `set_state(state)` restores them into a
  model whose architecture and weights are already restored;
* the train step: `update_scales(variables)` (at trace time) returns
  `[(variable, multiplier)]` pairs; the step rescales each variable's update
  by its multiplier (`w = old + m * (w_new - old)`, exact for SGD with
  momentum, Adam and AdamW). Gradient transforms and post-update hooks are
  registered on `controller.hooks` in `attach`.

State that does not follow the architecture (counters, schedule
positions, queues, per-sample statistics) needs none of this: a callback
keeps it and hands it to checkpoints with `controller.register_state(name,
get, set)`. Make it a component when it is indexed by model variables or
layers, so that growth steps and architectures taken back cannot misalign
it.

A component never imports the controller. What it may use of it (the
"host") is `model`, `scope()`, `hooks`, `request_retrace()` and
`component(name)`. The controller calls components in ascending `order`;
the built-in ones are frozen set (10) < optimizer (20) < EMAs (30) <
LR groups (40); masks (50) and LR scales (60) come after.

A checkpoint stores every component as `{"kind": kind, "state": state}`
under its name. Restoring into a controller that lacks a component creates
it from its kind (`register_kind`); components the checkpoint does not
hold are detached (the checkpoint is the whole truth), except built-in ones.

Example:
    >>> class Counter(Component):
    ...     kind = "doc_counter"
    ...     def __init__(self): self.count = 0
    ...     def carry(self, plan, reset): self.count = 0 if reset else self.count + 1
    ...     def get_state(self): return {"count": self.count}
    ...     def set_state(self, state, custom_objects=None): self.count = state["count"]
    >>> _ = register_kind(Counter)
    >>> c = Counter(); c.carry(None, reset=False); c.get_state()
    {'count': 1}
"""
from __future__ import annotations

from typing import Optional

__all__ = ["Component", "register_kind", "component_class"]

_KINDS: dict[str, type] = {}


def register_kind(cls: type) -> type:
    """Makes checkpoints able to re-create components of `cls` by its `kind`.

    `cls()` must build an empty component; `set_state` then fills it.
    Usable as a class decorator.
    """
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a non-empty string class attribute `kind`.")
    previous = _KINDS.get(kind)
    if previous is not None and previous.__qualname__ != cls.__qualname__:
        raise ValueError(f"Component kind {kind!r} is already registered by "
                         f"{previous.__module__}.{previous.__qualname__}.")
    _KINDS[kind] = cls
    return cls


def component_class(kind: str) -> type:
    """The class registered for `kind` (see `register_kind`)."""
    if kind not in _KINDS:
        raise KeyError(f"Unknown controller component kind {kind!r}; registered kinds: "
                       f"{sorted(_KINDS)}. Import the module that defines it before "
                       "restoring the checkpoint.")
    return _KINDS[kind]


class Component:
    """Base class of controller components (see the module docstring).

    Attributes:
        kind: class attribute, the registry key (`register_kind`).
        name: key of this component in its controller and in checkpoints
            (default: `kind`).
        order: position among components (ascending) in every loop.
        builtin: built-in components are never detached by a restore.
        host: the controller after `attach`, else None.
    """

    kind: str = ""
    order: int = 100
    builtin: bool = False
    host = None

    @property
    def name(self) -> str:
        return getattr(self, "_name", None) or self.kind

    def attach(self, host) -> None:
        """Called when added to a controller; register step hooks here."""
        self.host = host

    def detach(self) -> None:
        """Called when removed; remove step hooks here."""
        self.host = None

    def carry(self, plan, reset: bool) -> None:
        """The model was replaced (`host.model` is the new one); move the state."""

    def snapshot(self) -> Optional[object]:
        """State to keep with a `get_weights()` list (None: keep nothing)."""
        return None

    def rebuild(self, snapshot: Optional[object]) -> None:
        """The model took another architecture back with weights; fit the state to it."""

    def get_state(self) -> object:
        return None

    def set_state(self, state, custom_objects=None) -> None:
        """Restores `get_state()`'s value; architecture and weights are already restored."""

    def update_scales(self, variables) -> list:
        """`[(variable, multiplier)]` for the step's update rescaling (trace time)."""
        return []

"""`TrainingController`: the one owner of a model's training state during `fit`.

Every kgrow technique changes the same few things while `model.fit` runs: the
architecture, which weights train, the optimizer, the data, shadow copies.
The controller is the single place that does these changes, so that several
techniques composed in one run share the state instead of fighting over it.
There is one controller per model (`TrainingController.of(model)`); it lives
on the model object in an attribute Keras' tracking and saving ignore.

What it owns:

* the current model: `replace_model(growth_result)` re-binds the model object
  `fit` runs on to the grown graph and carries the optimizer state and EMA
  shadows through the growth result's `TransferPlan`;
* the optimizer: rebuilt with the same configuration (the LR schedule object
  kept) and its slots, iteration count and other state carried
  (`kgrow.controller.optimizer`);
* the train step: installed on the model instance (`model.train_step`), a
  mirror of Keras' with ordered hook points (`kgrow.controller.step`);
* EMA copies (`add_ema`), freezing (`freeze`/`unfreeze`), per-group LR
  multipliers (`set_lr_multipliers`): each kind of state that follows the
  architecture is a component (`kgrow.controller.component`; also
  `Masks`, `LRScales`, or your own via `add_component`), which the
  controller carries through growth steps, architectures taken back and
  checkpoints without knowing its kind;
* the live data selection (`attach_selection`), and named state of other
  callbacks (`register_state`);
* checkpoints: `save(dir)` / `TrainingController.restore(model, dir)` (all of
  the above in one atomic checkpoint).

Order of operations:

* on_train_begin: `ControllerCheckpoint` restores the latest checkpoint
  (architecture, weights, optimizer, EMA, frozen set, LR groups, data
  selection, named states) and makes `fit` continue at the saved epoch.
  Callbacks register their named state (pending saved state is applied at
  registration). The first controlled callback freezes Python's heap
  (`freeze_gc`) until the last one's on_train_end. Controlled callbacks
  still attached from a `fit` that raised are detached.
* on_epoch_begin: the first `ControlledCallback` to see the epoch runs every
  attached controlled callback's `controlled_epoch_begin(epoch)` in phase
  order: `Phase.ARCHITECTURE` (growth) -> `FREEZE` -> `MASKS` -> `DATA`
  (selection, image size) -> `SCHEDULE` (LR multipliers, regularization),
  registration order within a phase. Later controlled callbacks of the same
  epoch do nothing. Plain Keras callbacks keep their list order.
* retrace: every change that needs a new train function calls
  `request_retrace()`, which installs a stand-in train function; the first
  batch of the epoch traces the real one once, however many changes were
  made (`retrace_count` counts the traces).
* per step: nothing in Python. Inside the compiled step: gradient transforms
  -> optimizer update -> LR-multiplier rescaling -> post-update hooks
  (masks before EMA); see `kgrow.controller.step`.
* on_epoch_end: `ControllerCheckpoint` saves (place it last in `callbacks`
  so that it sees the other callbacks' end-of-epoch state).

Example:
    >>> import keras, numpy as np
    >>> inp = keras.Input((3,)); out = keras.layers.Dense(1, name="d")(inp)
    >>> model = keras.Model(inp, out); model.compile("sgd", "mse")
    >>> ctrl = TrainingController.of(model)
    >>> ema = ctrl.add_ema("ema", half_life_steps=10)
    >>> _ = model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=1, verbose=0)
    >>> TrainingController.of(model) is ctrl
    True
"""
from __future__ import annotations

import enum
import gc
import warnings
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from kgrow.controller import checkpoint as ckpt
from kgrow.controller import freezing
from kgrow.controller.freezing import FrozenLayers
from kgrow.controller._variables import weights_by_path
from kgrow.controller.clock import EpochClock
from kgrow.controller.component import Component, component_class
from kgrow.controller.ema import EMA, EMAs, resolve_decay
from kgrow.controller.multipliers import LRGroups
from kgrow.controller.optimizer import OptimizerState
from kgrow.controller.step import StepHooks, make_train_step
from kgrow.controller.replicas import MovingStatisticsSync
from kgrow.controller.train_function import RetraceOnCall, make_train_function
from kgrow.surgery.graph import rebind
from kgrow.surgery.transfer import TransferPlan

__all__ = ["TrainingController", "Phase", "ArchitectureWeights"]

# The epoch clock advances after the update, after every other post-update hook.
CLOCK_HOOK = "epoch_clock"
ORDER_CLOCK = 10_000


def _learning_rate_schedule(optimizer):
    """The optimizer's `LearningRateSchedule` (through a LossScaleOptimizer), or None."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    lr = getattr(optimizer, "_learning_rate", None)
    return lr if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) else None

STATE_FORMAT = 2
# Format 1 kept each built-in kind of state under its own key.
_V1_KEYS = {"frozen": "frozen", "optimizer": "optimizer", "ema": "ema",
            "lr_multipliers": "lr_groups"}


# id of the controller whose fit froze Python's heap (`freeze_gc`), or None.
_heap_owner = None


def _freeze_heap(owner) -> None:
    global _heap_owner
    if _heap_owner is None and gc.get_freeze_count() > 0:
        return  # frozen by someone else: theirs to manage
    # A previous owner whose fit raised before its on_train_end hands over.
    gc.freeze()
    _heap_owner = id(owner)


def _unfreeze_heap(owner) -> None:
    global _heap_owner
    if _heap_owner == id(owner):
        gc.unfreeze()
        _heap_owner = None


class Phase(enum.IntEnum):
    """Order in which controlled callbacks act at an epoch boundary."""
    ARCHITECTURE = 100
    FREEZE = 200
    MASKS = 300
    DATA = 400
    SCHEDULE = 500


SIDECAR_SUFFIX = ".kgrow"


def sidecar_path(filepath) -> str:
    """Where the controller state that goes with a weights file is kept."""
    return str(filepath) + SIDECAR_SUFFIX


class ArchitectureWeights(list):
    """What `get_weights()` of a controlled model returns: the usual list of
    arrays, plus the architecture (JSON) and variable paths they belong to.

    Keras callbacks that keep weights for later (EarlyStopping with
    `restore_best_weights=True`) store this list and hand it back to
    `set_weights`, possibly after a growth step changed the architecture; the
    controlled model's `set_weights` then takes that architecture back.
    """

    def __init__(self, arrays, architecture: str, paths, snapshots=None):
        super().__init__(arrays)
        self.architecture = architecture
        self.paths = list(paths)
        # {component name: snapshot} of the components that keep one (masks,
        # LR scales): the state that belongs to these weights.
        self.snapshots = dict(snapshots or {})


def _install_weight_io(controller, model) -> None:
    """Makes the weight I/O methods of `model` carry the architecture along.

    A weights file (or list) alone cannot be loaded into a model whose
    architecture has changed since it was written, which is what Keras'
    `BackupAndRestore` (and `ModelCheckpoint(save_weights_only=True)`) do
    when a grown run is resumed in a freshly built model, and what
    `EarlyStopping(restore_best_weights=True)` does when the best epoch was
    an earlier stage.

    * `save_weights` writes `<file>.kgrow` next to every weights file, an
      atomic controller checkpoint (architecture, weights, optimizer state,
      EMAs, frozen set, LR groups, data selection, callbacks' named state);
      `load_weights` restores from it when it exists, and is Keras' own
      otherwise. The sidecar is written first, so a kill between the two
      writes leaves a sidecar at least as new as the weights file, and the
      sidecar wins.
    * `get_weights` returns an `ArchitectureWeights`; `set_weights` given one
      whose architecture differs from the current one re-binds the model to
      it first (the optimizer then restarts: its state at that time was not
      kept). Plain lists go to Keras' own `set_weights`.
    """
    keras_save, keras_load = model.save_weights, model.load_weights
    keras_get, keras_set = model.get_weights, model.set_weights

    def save_weights(filepath, *args, **kwargs):
        controller.save(sidecar_path(filepath), keep=1)
        return keras_save(filepath, *args, **kwargs)

    def load_weights(filepath, *args, **kwargs):
        side = sidecar_path(filepath)
        if ckpt.latest_checkpoint(side) is None:
            return keras_load(filepath, *args, **kwargs)
        epoch = controller.epoch
        controller.set_state(ckpt.read_checkpoint(side))
        controller.epoch = epoch  # the caller (e.g. BackupAndRestore) owns the epoch
        return None

    def get_weights():
        return ArchitectureWeights(keras_get(), controller.architecture_json(),
                                   [v.path for v in model.weights], controller._snapshots())

    def set_weights(weights):
        if (isinstance(weights, ArchitectureWeights)
                and weights.architecture != controller.architecture_json()):
            controller.take_architecture(weights.architecture,
                                         dict(zip(weights.paths, weights)),
                                         snapshots=weights.snapshots)
            return None
        result = keras_set(weights)
        if isinstance(weights, ArchitectureWeights):
            controller._restore_snapshots(weights.snapshots)
        return result

    for name, fn, keras_fn in (("save_weights", save_weights, keras_save),
                               ("load_weights", load_weights, keras_load),
                               ("get_weights", get_weights, keras_get),
                               ("set_weights", set_weights, keras_set)):
        fn.__doc__ = keras_fn.__doc__
        object.__setattr__(model, name, fn)


def _rebindable(model) -> bool:
    """Functional models can take another graph; Sequential/subclassed cannot."""
    return hasattr(model, "_nodes_by_depth") and not isinstance(model, keras.Sequential)


def _assign_by_path(model, saved: dict, what: str) -> None:
    """Assigns `{variable path: array}` to `model.weights`, checking names and shapes."""
    current = weights_by_path(model)
    if set(saved) != set(current) and len(saved) == len(current) and all(
            tuple(np.shape(a)) == tuple(v.shape)
            for a, v in zip(saved.values(), current.values())):
        # Sequential/subclassed models get auto-generated (session-dependent)
        # path prefixes; with identical shapes in order, load positionally.
        saved = dict(zip(current, saved.values()))
    missing = sorted(set(current) - set(saved))
    extra = sorted(set(saved) - set(current))
    if missing or extra:
        raise ValueError(f"{what} do not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}.")
    for p, v in current.items():
        value = np.asarray(saved[p])
        if tuple(value.shape) != tuple(v.shape):
            raise ValueError(f"{what}: {p!r} has shape {value.shape}, the model's "
                             f"{tuple(v.shape)}.")
        v.assign(value.astype(v.dtype))


class TrainingController:
    """The training state of one model during `fit`. Use `TrainingController.of(model)`.

    Attributes:
        model: the controlled model (the same object for the whole run; its
            graph changes with `replace_model`).
        hooks: the step's `StepHooks` (gradient transforms, post-update hooks).
        selection: the attached `kgrow.data.LiveSelection` or None.
        epoch: index of the current (or, after a restore, the next) epoch.
        step: batches of `epoch` already trained when the restored state was
            saved (a step checkpoint of `ControllerCheckpoint(save_freq=N)`);
            0 at epoch boundaries and from the end of that epoch on. A
            controlled callback whose `controlled_epoch_begin` runs again
            for a resumed epoch can read it (> 0: the epoch's begin work was
            done before the checkpoint and is in the restored state).
        retrace_count: number of train-function traces the controller caused.
        growth_history: the `info` of every `replace_model`, in order.
        freeze_gc: while controlled callbacks run in `fit` (from their
            `on_train_begin` to their `on_train_end`), keep the objects that
            existed before in `gc.freeze()`'s permanent generation. Python's
            full collections then scan only what `fit` created: on a
            ResNet-20 growth run they took 0.2-0.35 s each over the ~400,000
            objects TensorFlow and Keras keep, and growth steps create
            enough objects to trigger them. Cost: garbage cycles among the
            frozen objects (e.g. a model built before `fit` and replaced by a
            grown one) are only freed after `fit`. If `fit` raises, Keras
            skips `on_train_end` and the heap stays frozen until the next
            `fit` with controlled callbacks ends. Set False to keep Python's
            default. A heap someone else froze is left alone.
        share_layer_traces: trace equal normalization layers once per
            train-function trace (`kgrow.controller.shared_traces`): about
            0.2 s less per retrace of a ResNet-20 step, weights equal to
            Keras' own step up to float32 rounding. Set False (before the
            next retrace) for Keras' graph op for op.
    """

    _ATTR = "_kgrow_controller"
    freeze_gc = True
    share_layer_traces = True

    def __init__(self, model):
        if not isinstance(model, keras.Model):
            raise TypeError(f"TrainingController needs a keras.Model, got {type(model).__name__}")
        if getattr(model, self._ATTR, None) is not None:
            raise ValueError("This model already has a controller; use "
                             "TrainingController.of(model).")
        if type(model).train_step is not keras.Model.train_step or "train_step" in vars(model):
            raise TypeError(
                f"{type(model).__name__} has its own train_step; the controller installs a "
                "train step of its own (Keras' step plus hook points) and would replace it. "
                "Express the custom logic as controller hooks (hooks.add_gradient_transform, "
                "hooks.add_post_update) or a compute_loss/compute_metrics override.")
        self.model = model
        self.hooks = StepHooks(on_change=self.request_retrace)
        self.selection = None
        self.epoch = 0
        self.step = 0
        self.retrace_count = 0
        self.growth_history: list[dict] = []
        self._components: dict[str, Component] = {}
        self._states: dict[str, tuple[Callable, Callable]] = {}
        self._pending_states: dict = {}
        self._pending_selection = None
        self._callbacks: list = []
        self._fit = None  # which fit the attached callbacks belong to
        self._epoch_begun = None
        self._epoch_ended = None
        self._sync_statistics = MovingStatisticsSync()
        self.clock = EpochClock()
        self.planned_steps = None  # epoch length the running fit started with
        self._clock_warned = False
        self._architecture_json = None  # cache of model.to_json(), cleared on rebind
        # object.__setattr__: neither Keras' tracker nor TF's checkpoint
        # dependency tracking must see the controller or the step function.
        object.__setattr__(model, self._ATTR, self)
        object.__setattr__(model, "train_step", make_train_step(self))
        _install_weight_io(self, model)
        for component in (FrozenLayers(), OptimizerState(), EMAs(), LRGroups()):
            self.add_component(component)
        self.request_retrace()

    @classmethod
    def of(cls, model) -> "TrainingController":
        """The controller of `model`, created (and its train step installed) on first use."""
        existing = getattr(model, cls._ATTR, None)
        return existing if existing is not None else cls(model)

    # -- infrastructure -------------------------------------------------------
    def scope(self):
        """The model's `tf.distribute` strategy scope (build new models/variables in it)."""
        return self.model.distribute_strategy.scope()

    def request_retrace(self) -> None:
        """Makes the next train-function call retrace (once) with the current state."""
        current = getattr(self.model, "train_function", None)
        if not isinstance(current, RetraceOnCall):
            object.__setattr__(self.model, "train_function", RetraceOnCall(self))

    def retrace_now(self) -> None:
        """Installs a new train function now (traced at its first call)."""
        make_train_function(self.model, share_traces=self.share_layer_traces)
        self.retrace_count += 1

    def architecture_json(self) -> str:
        """`model.to_json()` of the current architecture (cached until it changes)."""
        if self._architecture_json is None:
            self._architecture_json = self.model.to_json()
        return self._architecture_json

    def _rebind(self, new_model) -> None:
        rebind(self.model, new_model)
        self._architecture_json = None

    # -- components -----------------------------------------------------------
    def add_component(self, component: Component) -> Component:
        """Adds a `kgrow.controller.component.Component` (one kind of training state).

        The controller then carries it through growth steps, architectures
        taken back, checkpoints and the step's update rescaling. Returns it.
        """
        if not isinstance(component, Component):
            raise TypeError(f"add_component() takes a kgrow Component, got "
                            f"{type(component).__name__}")
        if component.name in self._components:
            raise ValueError(f"A component named {component.name!r} is already attached "
                             f"(components: {sorted(self._components)}).")
        component.attach(self)
        self._components[component.name] = component
        return component

    def component(self, name: str, default=KeyError):
        """The attached component `name` (`default` if given and absent)."""
        if name in self._components:
            return self._components[name]
        if default is KeyError:
            raise KeyError(f"No controller component {name!r}; attached: "
                           f"{sorted(self._components)}")
        return default

    def remove_component(self, name: str) -> None:
        component = self.component(name)
        if component.builtin:
            raise ValueError(f"The built-in component {name!r} cannot be removed.")
        component.detach()
        del self._components[name]
        self.request_retrace()

    @property
    def components(self) -> dict:
        """`{name: component}` in the order the controller calls them."""
        return dict(sorted(self._components.items(), key=lambda kv: kv[1].order))

    def _update_scales(self, variables) -> list:
        """`[(variable, multiplier)]` of all components, one per variable (trace time)."""
        scales = {}
        for component in self.components.values():
            for v, m in component.update_scales(variables):
                if id(v) in scales:
                    m = scales[id(v)][1] * tf.cast(m, tf.float32)
                scales[id(v)] = (v, m)
        return list(scales.values())

    def _snapshots(self) -> dict:
        out = {}
        for name, component in self.components.items():
            snap = component.snapshot()
            if snap is not None:
                out[name] = snap
        return out

    def _restore_snapshots(self, snapshots: dict) -> None:
        for name, snap in snapshots.items():
            if name in self._components:
                self._components[name].rebuild(snap)

    # -- growth ---------------------------------------------------------------
    def replace_model(self, result, reset_optimizer: bool = False,
                      reset_ema: bool = False, reset=()) -> None:
        """Makes the controlled model take over a grown (or shrunk) architecture.

        Build `result.model` inside `controller.scope()`. Afterwards the model
        object `fit` runs on computes the new graph; the optimizer is rebuilt
        with the same configuration and its state carried through
        `result.plan` (new entries of slots start at zero, and under Adam/AdamW
        their bias correction counts from the growth step, `slot_births`; the
        iteration count continues unless the optimizer is reset, and LR
        schedules always do); EMA shadows are carried
        through the same plan (new entries copy the new weights); LR groups
        are re-resolved; the train function is retraced at the next batch.

        Args:
            result: a `kgrow.surgery.GrowthResult` (`.model`, `.plan`, `.info`).
            reset_optimizer: start all optimizer slots at zero (moments reset,
                as Network Expansion and AutoProg do) with the iteration count,
                as a new optimizer (Adam's bias correction starts over); the LR
                schedule continues (`ShiftedSchedule`).
            reset_ema: restart every EMA as a copy of the new model.
            reset: names of further components to reset instead of carry
                (e.g. `("masks",)`: the grown model is dense again).

        Example:
            >>> import keras, kgrow
            >>> inputs = keras.Input((4,))
            >>> hidden = keras.layers.Dense(8, name="hidden")(inputs)
            >>> model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
            >>> model.compile("sgd", "mse")
            >>> result = kgrow.surgery.scale_width(model, 2.0)
            >>> TrainingController.of(model).replace_model(result)
            >>> model.get_layer("hidden").units
            16
        """
        new_model, plan = getattr(result, "model", None), getattr(result, "plan", None)
        if not isinstance(new_model, keras.Model) or not isinstance(plan, TransferPlan):
            raise TypeError("replace_model() takes a GrowthResult with a keras.Model `model` "
                            f"and a TransferPlan `plan`; got {type(result).__name__}.")
        if new_model is self.model:
            raise ValueError("replace_model(): the growth result's model is the controlled "
                             "model itself; growth must build a new model.")
        new_weights = weights_by_path(new_model)
        old_weights = weights_by_path(self.model)
        self._check_built_in_scope(new_model)
        missing = [p for p in new_weights if p not in plan]
        if missing:
            raise KeyError(f"The transfer plan has no entry for new variables {missing[:5]}; "
                           "it must cover every variable of the new model.")
        bad_sources = sorted({plan[p].source for p in new_weights
                              if plan[p].source is not None and plan[p].source not in old_weights})
        if bad_sources:
            raise KeyError(f"The transfer plan names sources {bad_sources[:5]} that the current "
                           "model does not have.")

        resets = {*([reset] if isinstance(reset, str) else reset),
                  *(["optimizer"] if reset_optimizer else []), *(["ema"] if reset_ema else [])}
        unknown = sorted(resets - set(self._components))
        if unknown:
            raise KeyError(f"replace_model(reset=...) names no attached component: {unknown}; "
                           f"components: {sorted(self._components)}")
        self._rebind(new_model)
        for name, component in self.components.items():
            component.carry(plan, reset=name in resets)
        self.growth_history.append(dict(getattr(result, "info", {}) or {}))
        self.request_retrace()

    def _check_built_in_scope(self, new_model) -> None:
        strategy = self.model.distribute_strategy
        if strategy.num_replicas_in_sync <= 1:
            return
        local = [v.path for v in new_model.weights
                 if not isinstance(getattr(v, "value", v), tf.distribute.DistributedValues)]
        if local:
            raise ValueError(
                f"The new model's variables {local[:3]} are not mirrored: build the grown "
                "model inside `with controller.scope():` (the model trains under a "
                f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replicas).")

    # -- freezing -------------------------------------------------------------
    def freeze(self, layers) -> list[str]:
        """Freezes layers (`trainable=False`) so that the running `fit` obeys it.

        Args:
            layers: a layer name, a list of names, or a predicate `layer -> bool`.

        Returns:
            The names of the layers frozen.

        See `kgrow.controller.freezing` for what a frozen layer does
        (BatchNorm runs in inference mode; optimizer slots are kept).
        """
        return self._set_trainable(layers, False)

    def unfreeze(self, layers=None) -> list[str]:
        """Unfreezes layers (default: every frozen layer); training continues
        with their kept optimizer slots."""
        if layers is None:
            layers = self.frozen
            if not layers:
                return []
        return self._set_trainable(layers, True)

    def _set_trainable(self, spec, value: bool) -> list[str]:
        chosen = freezing.resolve_layers(self.model, spec)
        for layer in chosen:
            layer.trainable = value
        if value:
            # Layers frozen before the optimizer was built (e.g. in a restored
            # model) have no slots yet.
            self._components["optimizer"].cover(self.model.trainable_weights)
        self._note_trainable_state()
        self.request_retrace()
        return [layer.name for layer in chosen]

    def _note_trainable_state(self) -> None:
        # Trainable flags are part of the layer configs, so of the JSON.
        self._architecture_json = None
        freezing.note_trainable_state(self.model)

    @property
    def frozen(self) -> list[str]:
        """Names of the frozen layers that have trainable weights."""
        return freezing.frozen_layer_names(self.model)

    # -- EMA ------------------------------------------------------------------
    def add_ema(self, name: str, decay: Optional[float] = None, *,
                half_life_steps: Optional[float] = None,
                half_life_epochs: Optional[float] = None,
                steps_per_epoch: Optional[int] = None,
                trainable_only: bool = False, warmup: bool = False) -> EMA:
        """Adds an EMA copy of the model, updated after every optimizer step.

        Give exactly one of `decay`, `half_life_steps`, or `half_life_epochs`
        (with `steps_per_epoch`). Shadows start as copies of the current
        weights. `warmup=True`: the decay warms up after every restart
        (`kgrow.controller.ema.warmup_decay`), so an average restarted from a
        fresh initialization does not keep it for several half-lives.

        Example:
            >>> import keras, numpy as np
            >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            >>> model.compile("sgd", "mse")
            >>> ctrl = TrainingController.of(model)
            >>> ema = ctrl.add_ema("teacher", decay=0.999)
            >>> x, y = np.ones((8, 3)), np.zeros((8, 1))
            >>> _ = model.fit(x, y, epochs=1, verbose=0)
            >>> with ema.swap():  # the model holds the EMA weights inside
            ...     ema_loss = model.evaluate(x, y, verbose=0)
        """
        value = resolve_decay(decay, half_life_steps, half_life_epochs, steps_per_epoch)
        return self._components["ema"].add(name, value, trainable_only=trainable_only,
                                           warmup=warmup)

    def ema(self, name: str) -> EMA:
        return self._components["ema"].get(name)

    @property
    def emas(self) -> dict:
        return dict(self._components["ema"].emas)

    def remove_ema(self, name: str) -> None:
        self._components["ema"].remove(name)

    # -- LR multipliers -------------------------------------------------------
    def set_lr_multipliers(self, multipliers: dict) -> None:
        """Sets per-group learning-rate multipliers `{layer name or path regex: m}`.

        Exact for SGD (momentum), Adam and AdamW (see
        `kgrow.controller.multipliers`). Calling again with the same keys
        only changes values (no retrace); other keys replace the groups.
        Variables in no group train at the optimizer's learning rate.

        Example:
            >>> import keras
            >>> inputs = keras.Input((4,))
            >>> x = keras.layers.Dense(4, name="stage1_dense")(inputs)
            >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
            >>> model.compile("sgd", "mse")
            >>> ctrl = TrainingController.of(model)
            >>> ctrl.set_lr_multipliers({"stage1": 0.5, r"^head/": 0.1})
        """
        self._components["lr_groups"].set(multipliers)

    @property
    def lr_multipliers(self) -> dict:
        return self._components["lr_groups"].multipliers

    # -- data selection and named state --------------------------------------
    def attach_selection(self, selection) -> None:
        """Registers the live data selection (an object with get_state/set_state)."""
        for method in ("get_state", "set_state"):
            if not callable(getattr(selection, method, None)):
                raise TypeError(f"attach_selection() needs an object with {method}(); got "
                                f"{type(selection).__name__}")
        self.selection = selection
        if self._pending_selection is not None:
            self._restore_selection(self._pending_selection)
            self._pending_selection = None

    def _restore_selection(self, state) -> None:
        self.selection.set_state(state)
        if self.step:
            # Saved mid-epoch: the next pass repeats the one that was running,
            # after the batches already trained.
            resume = getattr(self.selection, "resume_pass", None)
            if resume is None:
                raise TypeError(f"The checkpoint was saved after {self.step} steps of epoch "
                                f"{self.epoch}, and the attached selection "
                                f"({type(self.selection).__name__}) has no resume_pass() "
                                "to continue that epoch's pass.")
            resume(self.step)

    def register_state(self, name: str, get: Callable[[], object],
                       set: Callable[[object], None]) -> None:
        """Adds named state (schedule position, counters, ...) to checkpoints.

        `get()` returns JSON types and numpy arrays; `set(value)` restores
        it. If a restored checkpoint holds state under `name`, `set` is called
        now. Registering a name again replaces the previous functions.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"State name must be a non-empty string, got {name!r}")
        if not callable(get) or not callable(set):
            raise TypeError("register_state() needs callables get() and set(value).")
        self._states[name] = (get, set)
        if name in self._pending_states:
            set(self._pending_states.pop(name))

    def unregister_state(self, name: str) -> None:
        if name not in self._states:
            raise KeyError(f"No registered state {name!r}; registered: {sorted(self._states)}")
        del self._states[name]

    # -- epoch pipeline -------------------------------------------------------
    def attach_callback(self, callback) -> None:
        """Adds a controlled callback to the epoch pipeline (see `Phase`)."""
        if not isinstance(getattr(callback, "phase", None), Phase):
            raise TypeError("Controlled callbacks need a `phase` attribute of type Phase.")
        fit = id(getattr(callback, "params", None))  # Keras: one params dict per fit
        if fit != self._fit:
            # A new fit: callbacks still attached come from a fit that raised
            # before its on_train_end, and must not act in this one.
            self._callbacks, self._fit = [], fit
            if self.freeze_gc:
                _freeze_heap(self)
        for other in self._callbacks:
            shared = set(getattr(other, "drives", ())) & set(getattr(callback, "drives", ()))
            if other is not callback and shared:
                raise ValueError(
                    f"{type(other).__name__} and {type(callback).__name__} both drive the "
                    f"{', '.join(sorted(shared))} of one model in one fit; kgrow runs one such "
                    f"callback per model. Give one callback a schedule covering both (e.g. one "
                    f"Growth with Stage(epoch, width=..., depth=..., resolution=...)).")
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        self._epoch_begun = self._epoch_ended = None

    def detach_callback(self, callback) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)
        if not self._callbacks:
            self._fit = None
            _unfreeze_heap(self)

    # -- epoch clock ----------------------------------------------------------
    def follow_epochs(self) -> bool:
        """Makes the optimizer's learning-rate schedule follow the epoch clock.

        Only schedules that can (`kgrow.training.WarmupCosine` built with
        `steps_per_epoch`) do; see `kgrow.controller.clock`. The clock
        advances in every training step from the first call on. Called by
        the controlled callbacks at fit start and at every epoch begin (a
        restored or replaced optimizer brings its own schedule object).

        Returns:
            Whether the schedule follows the clock.
        """
        if CLOCK_HOOK not in self.hooks:
            self.hooks.add_post_update(lambda ctx: self.clock.advance(), name=CLOCK_HOOK,
                                       order=ORDER_CLOCK)
        schedule = _learning_rate_schedule(getattr(self.model, "optimizer", None))
        if schedule is None or not hasattr(schedule, "follow_epoch_clock"):
            return False
        if getattr(schedule, "clock", None) is self.clock:
            return True
        follows = bool(schedule.follow_epoch_clock(self.clock))
        if follows:
            self.request_retrace()  # the schedule's ops read the clock now
        return follows

    def start_epoch_clock(self, epoch: int, steps: Optional[int], done: int = 0,
                          planned: Optional[int] = None) -> None:
        """Sets the clock at the begin of `epoch` (`steps` in all, `done` already run).

        Warns once when the epoch's length differs from `planned` (the
        length the fit started with) and the learning-rate schedule counts
        optimizer steps: it would then end before or after the last epoch.
        """
        schedule = _learning_rate_schedule(getattr(self.model, "optimizer", None))
        follows = schedule is not None and getattr(schedule, "clock", None) is self.clock
        if steps is None:  # data of unknown length: epochs of the planned length
            steps = getattr(schedule, "steps_per_epoch", None) or planned or 1
        self.clock.start_epoch(epoch, steps, done)
        if (schedule is not None and not follows and planned and steps != planned
                and not self._clock_warned):
            self._clock_warned = True
            warnings.warn(
                f"Epoch {epoch} has {steps} steps, the fit started with {planned} per epoch, "
                f"and the learning-rate schedule {type(schedule).__name__} counts optimizer "
                f"steps: it will not end with the last epoch. Build it with steps_per_epoch "
                f"(kgrow.training.WarmupCosine / schedule_from_config) so it follows the "
                f"epochs.", UserWarning, stacklevel=3)

    def begin_epoch(self, epoch: int) -> None:
        """Runs the attached callbacks' epoch-begin work once, in phase order."""
        if self._epoch_begun == epoch:
            return
        self._epoch_begun = epoch
        if epoch != self.epoch:
            self.step = 0
        self.epoch = int(epoch)
        # Tie the data order of this pass to the epoch number, not to the
        # number of passes started, so a resumed run sees the same batches.
        if hasattr(self.selection, "set_epoch"):
            self.selection.set_epoch(epoch)
        order = sorted(enumerate(self._callbacks), key=lambda ic: (int(ic[1].phase), ic[0]))
        for _, callback in order:
            callback.controlled_epoch_begin(epoch)

    def end_epoch(self, epoch: int) -> None:
        """Once per epoch, after the batches: replicas' moving statistics agree."""
        if self._epoch_ended == epoch:
            return
        self._epoch_ended = epoch
        self.step = 0
        self.sync_statistics()

    def sync_statistics(self) -> int:
        """Sets every moving statistic (BatchNorm) to its mean over the replicas.

        Done at every epoch end, and before a mid-epoch checkpoint (which
        holds one copy). A no-op returning 0 with a single replica; under
        MultiWorkerMirroredStrategy every worker must call it (a collective).
        """
        return self._sync_statistics(self.model)

    # -- state and checkpoints ------------------------------------------------
    def get_state(self) -> dict:
        """Everything a checkpoint restores, as JSON types and numpy arrays."""
        model = self.model
        states = {}
        for name, (get, _) in self._states.items():
            states[name] = get()
        weights = model.weights
        weight_ids = {id(v) for v in weights}
        selection = (self.selection.get_state() if self.selection is not None
                     else self._pending_selection)
        return {
            "format": STATE_FORMAT,
            "epoch": int(self.epoch),
            "step": int(self.step),
            "model_class": type(model).__name__,
            "architecture": model.to_json(),
            "weights": {p: np.array(v.numpy()) for p, v in weights_by_path(model).items()},
            "seed_states": [np.array(v.numpy()) for v in model.variables
                            if id(v) not in weight_ids],
            "components": {name: {"kind": c.kind, "state": c.get_state()}
                           for name, c in self.components.items()},
            "selection": selection,
            "states": states,
            "growth_history": list(self.growth_history),
        }

    def save(self, directory: str, epoch: Optional[int] = None, keep: int = 2,
             step: int = 0) -> str:
        """Writes the state as a new atomic checkpoint in `directory`; returns its path.

        Args:
            directory: checkpoint directory.
            epoch: number of completed epochs (where a resumed `fit` starts);
                default: `self.epoch`.
            keep: complete checkpoints kept on disk.
            step: batches of `epoch` already trained (a mid-epoch save; a
                resumed run continues that epoch's pass after them), 0 at an
                epoch boundary.
        """
        if int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if epoch is not None:
            self.epoch = int(epoch)
        self.step = int(step)
        return ckpt.write_checkpoint(directory, self.get_state(), epoch=self.epoch, keep=keep,
                                     step=self.step)

    @classmethod
    def restore(cls, model, directory: str, custom_objects=None) -> "TrainingController":
        """Restores the latest checkpoint of `directory` into `model`.

        The model may be a fresh object built with the original (e.g. small)
        architecture and compiled: it takes over the saved architecture
        (rebind), weights, optimizer (config and state), EMAs, frozen set,
        LR groups, data selection and named states.

        Returns:
            The model's controller; `controller.epoch` is the saved epoch.
        """
        controller = cls.of(model)
        controller.set_state(ckpt.read_checkpoint(directory), custom_objects=custom_objects)
        return controller

    def set_state(self, state: dict, custom_objects=None) -> None:
        """Inverse of `get_state` (see `restore`)."""
        if state.get("format") == 1:
            state = dict(state, components={
                new: {"kind": new, "state": state.pop(old)} for old, new in _V1_KEYS.items()})
        elif state.get("format") != STATE_FORMAT:
            raise ValueError(f"Unsupported controller state format {state.get('format')!r}; "
                             f"this kgrow reads formats 1 and {STATE_FORMAT}.")
        self._restore_architecture(state, custom_objects)
        self._restore_weights(state)
        self.epoch = int(state["epoch"])
        self.step = int(state.get("step", 0))
        saved = dict(state["components"])
        for name, component in list(self._components.items()):
            if name not in saved and not component.builtin:
                self.remove_component(name)
        for name, entry in saved.items():
            if name not in self._components:
                component = component_class(entry["kind"])()
                component._name = name
                self.add_component(component)
        for name, component in self.components.items():
            if name in saved:
                component.set_state(saved[name]["state"], custom_objects=custom_objects)
            if name == "frozen":
                self._note_trainable_state()
        if state["selection"] is not None:
            if self.selection is not None:
                self._restore_selection(state["selection"])
            else:
                self._pending_selection = state["selection"]
        self._pending_states = {}
        for name, value in state["states"].items():
            if name in self._states:
                self._states[name][1](value)
            else:
                self._pending_states[name] = value
        self.growth_history = list(state.get("growth_history", []))
        self.request_retrace()

    def _restore_architecture(self, state, custom_objects) -> None:
        model = self.model
        if state["model_class"] != type(model).__name__:
            raise ValueError(f"The checkpoint holds a {state['model_class']}, the model is a "
                             f"{type(model).__name__}.")
        if not _rebindable(model):
            return  # no rebind for these: the saved weights must fit the model as it is
        self._rebind(self._model_from_json(state["architecture"], custom_objects))

    def _model_from_json(self, architecture: str, custom_objects=None):
        with self.scope():
            return keras.models.model_from_json(architecture, custom_objects=custom_objects)

    def take_architecture(self, architecture: str, weights: dict,
                          custom_objects=None, snapshots=None) -> None:
        """Re-binds the model to another architecture (JSON) with `weights`.

        Used when weights of another stage come back (`set_weights` of an
        `ArchitectureWeights`). `weights` maps every variable path of that
        architecture to its value. Every component rebuilds its state for
        it (`Component.rebuild`) from `snapshots` (`{component name:
        snapshot}` kept with the weights) where it has one: the optimizer
        restarts from zero state (its configuration and iteration count
        kept), EMAs restart as copies of the model, LR groups are
        re-resolved, masks and LR scales come back as they were with these
        weights; the train function retraces.
        """
        if not _rebindable(self.model):
            raise ValueError("Only Functional models change architecture; these weights "
                             "belong to another architecture.")
        self._rebind(self._model_from_json(architecture, custom_objects))
        _assign_by_path(self.model, weights, "The weights")
        snapshots = snapshots or {}
        for name, component in self.components.items():
            component.rebuild(snapshots.get(name))
        self.request_retrace()

    def _restore_weights(self, state) -> None:
        model = self.model
        _assign_by_path(model, state["weights"], "Checkpoint weights")
        weight_ids = {id(v) for v in model.weights}
        seeds = [v for v in model.variables if id(v) not in weight_ids]
        if len(seeds) == len(state["seed_states"]):
            for v, value in zip(seeds, state["seed_states"]):
                v.assign(np.asarray(value).astype(v.dtype))
        else:
            warnings.warn(f"The checkpoint has {len(state['seed_states'])} RNG seed states, "
                          f"the model {len(seeds)}; random layers restart from their "
                          "current seeds.", stacklevel=3)

    def __repr__(self):
        return (f"TrainingController(model={self.model.name!r}, "
                f"components={list(self.components)}, emas={sorted(self.emas)}, "
                f"frozen={len(self.frozen)}, "
                f"hooks={len(self.hooks.gradient_transforms) + len(self.hooks.post_updates)})")

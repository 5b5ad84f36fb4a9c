"""Rebuilding a Keras 3 optimizer for a changed model, carrying its state.

A built Keras optimizer cannot take new variables, and a variable cannot
change shape, so every growth step needs a new optimizer. What must survive
is its *state*:

* per-variable slots (SGD momentum, Adam/AdamW first and second moments,
  AMSGrad maxima, RMSprop averages, gradient accumulators, the optimizer's own
  EMA, ...): moved through the same `TransferPlan` as the weights, new
  entries start at zero (the optimizer-EMA slot starts at the new weight);
* the *age* of every entry's moments under Adam and AdamW (`slot_births`):
  their bias correction divides the zero-started moments by
  `1 - beta^t` at the optimizer's count `t`, not at the entry's own age, so
  the first updates of entries a growth added at step `t0` would be off:
  3-6x the learning rate a thousand steps into a run (as after a reset that
  kept the count, below), about half of it 25 steps in. The step therefore
  rescales such entries' updates by
  `c(t - t0) / c(t)`, `c(k) = sqrt(1 - beta_2^k) / (1 - beta_1^k)`: each
  entry is corrected from its own first step, as under a new optimizer
  (`bias_correction_scales`);
* the iteration count, so that learning-rate schedules and Adam's bias
  correction continue where they were. A *reset* of the moments (`reset=True`,
  Network Expansion's and AutoProg's "new AdamW") restarts the count instead,
  as a newly created optimizer's: Adam-family bias correction is a function
  of the iteration count, and zero moments under the correction of step
  `t >> 1` (none) make the first updates after the reset 3-6x the learning
  rate for about a thousand steps (`m / sqrt(v)` with `m = 0.1 g`,
  `v = 0.001 g^2` after one step). The learning-rate schedule continues at
  the run's step through `ShiftedSchedule`; `optimizer_step` gives that step;
* everything else the optimizer owns (learning-rate variable, loss-scale
  state, Nadam's momentum product, ...), copied by name;
* the configuration, including the learning-rate schedule *object* and the
  weight-decay exclusions.

Slots are found generically: after `build`, a Keras optimizer keeps, for
each kind of slot, a list aligned with the variables it was built on (e.g.
`SGD.momentums`, `Adam._momentums`, `Adam._velocities`). Every list
attribute of that length whose entries are the optimizer's own variables
with the shapes of the model variables is such a slot list, whatever its
name; so optimizers kgrow has never heard of are carried too. A
`LossScaleOptimizer` is handled level by level (its own scale state, then the
wrapped optimizer).

The state is plain data (`{"levels": [...]}` of numpy arrays keyed by
variable path), so the same functions serve growth (`rebuild_optimizer`) and
checkpoints (`optimizer_state` / `load_optimizer_state`).

Example:
    >>> import keras, numpy as np
    >>> inp = keras.Input((3,)); out = keras.layers.Dense(2, name="d")(inp)
    >>> model = keras.Model(inp, out)
    >>> opt = keras.optimizers.SGD(0.1, momentum=0.9); opt.build(model.trainable_variables)
    >>> sorted(optimizer_state(opt)["levels"][0]["slots"]["momentums"])
    ['d/bias', 'd/kernel']
"""
from __future__ import annotations

import warnings
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from kgrow.controller._variables import trainable_candidates
from kgrow.controller.component import Component, register_kind
from kgrow.surgery.transfer import TransferPlan, VariableTransfer

__all__ = ["clone_optimizer", "optimizer_state", "load_optimizer_state", "rebuild_optimizer",
           "slot_lists", "optimizer_levels", "knows_variables", "OptimizerState",
           "ShiftedSchedule", "optimizer_step", "slot_births", "bias_correction_scales"]

# Slot lists whose new entries start as a copy of the new weight, not at zero:
# Keras' built-in optimizer EMA (`use_ema=True`).
_FILL_FROM_WEIGHTS = frozenset({"_model_variables_moving_average"})


def optimizer_levels(optimizer) -> list:
    """`[optimizer, wrapped optimizer, ...]` (LossScaleOptimizer wraps one)."""
    levels = [optimizer]
    while hasattr(levels[-1], "inner_optimizer"):
        levels.append(levels[-1].inner_optimizer)
    return levels


def _built_variables(level) -> list:
    return list(getattr(level, "_trainable_variables", None) or [])


def slot_lists(level) -> dict:
    """`{attribute name: [slot variable or None, ...]}` of one optimizer level.

    Each list is aligned with the model variables the optimizer was built on
    (`level._trainable_variables`).
    """
    built = _built_variables(level)
    if not built:
        return {}
    own = {id(v) for v in level.variables}
    found, seen_lists = {}, set()
    for attr, value in sorted(vars(level).items()):
        if attr == "_trainable_variables" or not isinstance(value, (list, tuple)):
            continue
        if len(value) != len(built) or all(s is None for s in value):
            continue
        if not all(s is None or (isinstance(s, keras.Variable) and id(s) in own) for s in value):
            continue
        if any(s is not None and tuple(s.shape) != tuple(v.shape) for s, v in zip(value, built)):
            continue
        key = tuple(id(s) for s in value)
        if key in seen_lists:  # an alias of a list already found
            continue
        seen_lists.add(key)
        found[attr] = list(value)
    return found


def _own_variables(level, levels) -> list:
    """The level's variables that belong to no wrapped level."""
    inner_ids = set()
    for inner in levels[levels.index(level) + 1:]:
        inner_ids.update(id(v) for v in inner.variables)
    return [v for v in level.variables if id(v) not in inner_ids]


def _other_variables(level, levels) -> dict:
    """`{key: variable}` for a level's variables that are not slots.

    Keys are variable names, made unique by creation order (`name#1`) so that
    two optimizers of the same class and configuration get the same keys.
    """
    slot_ids = {id(s) for lst in slot_lists(level).values() for s in lst if s is not None}
    out = {}
    for v in _own_variables(level, levels):
        if id(v) in slot_ids:
            continue
        key, k = v.name, 0
        while key in out:
            k += 1
            key = f"{v.name}#{k}"
        out[key] = v
    return out


def _counter_ids(level) -> set:
    """Variables kept even by a reset: the LR value and all own state of a
    wrapping level. (The iteration count restarts; `_restart_steps` moves it
    into the schedule.)

    A wrapper's own state (a `LossScaleOptimizer`'s loss scale and its step
    counter) calibrates the arithmetic, it is not a moment estimate: starting
    it over at `initial_scale` would only skip steps on overflow until the
    scale settled again, so a reset of the moments keeps it.
    """
    if hasattr(level, "inner_optimizer"):
        inner = {id(v) for v in level.inner_optimizer.variables}
        return {id(v) for v in level.variables if id(v) not in inner}
    ids = set()
    lr = getattr(level, "_learning_rate", None)
    if isinstance(lr, keras.Variable):
        ids.add(id(lr))
    return ids


def _bias_corrected(level) -> bool:
    """Adam and its subclasses (AdamW) scale each update by the bias correction
    of the optimizer's iteration count, one count for all entries."""
    return isinstance(level, keras.optimizers.Adam)


def slot_births(optimizer) -> dict:
    """`{variable path: array}`: the iteration count at which each entry's
    moments started, for the entries of an Adam-family optimizer that a growth
    step added after step 0 (variables whose entries all started at 0 are
    left out)."""
    out = {}
    for level in optimizer_levels(optimizer):
        out.update(_births_of(level))
    return out


def _births_of(level) -> dict:
    births = getattr(level, "_kgrow_births", None) or {}
    return {p: np.array(v.numpy()) for p, v in births.items()}


def _set_births(level, births: dict) -> None:
    level._kgrow_births = {p: tf.Variable(np.asarray(b, np.float32), trainable=False,
                                          name=f"kgrow_slot_births_{i}")
                           for i, (p, b) in enumerate(births.items())}


def _carry_births(level, saved: dict, built, plan, fresh: dict) -> None:
    """Births after a load: carried through `plan`, entries without carried
    moments (`fresh`) born at the current count."""
    now = float(np.asarray(level.iterations))
    old_births = saved.get("births") or {}
    births = {}
    for v in built:
        if v.path not in fresh:
            continue
        shape = tuple(v.shape)
        t = _transfer_for(plan, v.path)
        old = old_births.get(t.source) if t.source is not None else None
        if old is not None and t.resample is None:
            born = t.gather(np.asarray(old, np.float64), shape, fill=now)
        else:
            born = np.zeros(shape)
        born = np.where(fresh[v.path], now, born)
        if born.max() > 0:
            births[v.path] = born
    _set_births(level, births)


def bias_correction_scales(level, variables) -> list:
    """`[(variable, update factor)]` giving the entries of `level`'s births their
    own Adam bias correction (traced into the step; read before the update).

    Keras' Adam multiplies every update by `c(t) = sqrt(1 - beta_2^t) /
    (1 - beta_1^t)` at `t = iterations + 1`; an entry whose moments started at
    count `t0` gets `c(t - t0) / c(t)` instead, so its update is the one of an
    Adam started at `t0`. Entries born at 0 keep factor 1. Decoupled weight
    decay of young entries (AdamW) is rescaled with their update, a relative
    error of `lr * weight_decay * (1 - factor)` per step on those entries.
    """
    births = getattr(level, "_kgrow_births", None)
    if not births:
        return []
    step = tf.cast(level.iterations + 1, tf.float32)
    beta_1 = tf.constant(float(level.beta_1), tf.float32)
    beta_2 = tf.constant(float(level.beta_2), tf.float32)

    def correction(k):
        return tf.sqrt(1.0 - tf.pow(beta_2, k)) / (1.0 - tf.pow(beta_1, k))

    run = correction(step)
    out = []
    for v in variables:
        born = births.get(v.path)
        if born is None:
            continue
        born = tf.convert_to_tensor(born)
        # max(., 1) keeps the branch not taken finite for entries born at 0.
        age = tf.maximum(step - born, 1.0)
        out.append((v, tf.where(born > 0, correction(age) / run, tf.ones_like(born))))
    return out


@keras.saving.register_keras_serializable(package="kgrow")
class ShiftedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step + offset)`: a learning-rate schedule continued by an
    optimizer whose iteration count restarted.

    A reset of the optimizer moments restarts the iteration count (so that
    Adam's bias correction starts over, as in a new optimizer); the run's
    learning-rate schedule goes on where it was. A schedule that follows the
    controller's epoch clock (`kgrow.training.WarmupCosine` with
    `steps_per_epoch`) ignores the step, and the wrapper passes the clock on.

    Args:
        schedule: the run's `LearningRateSchedule` (kept as the same object).
        offset: the steps done before the restart, >= 0.

    Example:
        >>> s = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
        >>> shifted = ShiftedSchedule(s, 40)
        >>> bool(abs(float(shifted(10)) - float(s(50))) < 1e-7)
        True
    """

    def __init__(self, schedule, offset: int):
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise TypeError(f"ShiftedSchedule wraps a LearningRateSchedule, got {schedule!r}.")
        if int(offset) != offset or offset < 0:
            raise ValueError(f"ShiftedSchedule offset must be an integer >= 0, got {offset!r}.")
        self.schedule = schedule
        self.offset = int(offset)

    def __call__(self, step):
        return self.schedule(step + self.offset)

    @property
    def steps_per_epoch(self):
        return getattr(self.schedule, "steps_per_epoch", None)

    @property
    def clock(self):
        return getattr(self.schedule, "clock", None)

    def follow_epoch_clock(self, clock) -> bool:
        follow = getattr(self.schedule, "follow_epoch_clock", None)
        return bool(follow(clock)) if follow is not None else False

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


def shift_schedule(schedule, steps: int):
    """`schedule` continued `steps` later (nested shifts add up)."""
    if isinstance(schedule, ShiftedSchedule):
        return ShiftedSchedule(schedule.schedule, schedule.offset + int(steps))
    return ShiftedSchedule(schedule, int(steps))


def optimizer_step(optimizer) -> int:
    """The run's optimizer step: the iteration count plus the steps done before
    any reset of the moments (kept in the optimizer state as `step_offset`)."""
    level = optimizer_levels(optimizer)[-1]
    return int(np.asarray(optimizer.iterations)) + getattr(level, "_kgrow_step_offset", 0)


def _restart_steps(level, steps: int) -> None:
    """After a reset: the iteration count stays at 0 (a new optimizer's, so Adam's
    bias correction starts over); the run's step and a learning-rate schedule
    continue at `steps` more. A constant learning rate does not read the count."""
    level._kgrow_step_offset = getattr(level, "_kgrow_step_offset", 0) + int(steps)
    lr = getattr(level, "_learning_rate", None)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        level._learning_rate = shift_schedule(lr, steps)


def knows_variables(optimizer, variables) -> bool:
    """True if `optimizer` is built and can update every one of `variables`."""
    if not getattr(optimizer, "built", False):
        return False
    known = {optimizer._var_key(v) for v in _built_variables(optimizer)}
    return all(optimizer._var_key(v) in known for v in variables)


def clone_optimizer(optimizer):
    """A new, unbuilt optimizer with the same configuration.

    The learning-rate schedule (or callable) is the *same object*, not a copy
    re-created from its config: its identity, any state it keeps and
    references other callbacks hold to it stay valid. Weight-decay
    exclusions by name pattern are copied; exclusions by variable are moved
    by `load_optimizer_state`, which knows the variables.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(
            clone_optimizer(optimizer.inner_optimizer),
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps, name=optimizer.name)
    config = optimizer.get_config()
    lr = optimizer._learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) or (
            callable(lr) and not isinstance(lr, keras.Variable)):
        config["learning_rate"] = lr
    try:
        new = type(optimizer).from_config(config)
    except Exception as err:
        raise ValueError(
            f"Could not re-create optimizer {type(optimizer).__name__} from its config "
            f"({err}). Optimizers used with the kgrow controller must round-trip through "
            "get_config()/from_config().") from err
    pattern = getattr(optimizer, "_exclude_from_weight_decay_pattern", None)
    if pattern is not None:
        new.exclude_from_weight_decay(var_names=[pattern.pattern])
    return new


def _weight_decay_state(level) -> dict:
    excluded = getattr(level, "_exclude_from_weight_decay", None) or set()
    built = _built_variables(level)
    paths = [v.path for v in built if level._var_key(v) in excluded]
    if len(paths) < len(excluded):
        warnings.warn(
            f"{len(excluded) - len(paths)} variable(s) excluded from weight decay in "
            f"optimizer {level.name!r} are not among the variables it was built on; their "
            "exclusion cannot be carried to the rebuilt optimizer.", stacklevel=3)
    pattern = getattr(level, "_exclude_from_weight_decay_pattern", None)
    return {"excluded_paths": paths, "pattern": None if pattern is None else pattern.pattern}


def optimizer_state(optimizer) -> dict:
    """The optimizer's state as plain data (numpy arrays keyed by path/name).

    Returns:
        `{"levels": [{"class", "slots": {attr: {var path: array}},
        "others": {name: array}, "weight_decay": {...}}, ...]}`, one level per
        `optimizer_levels(optimizer)`.
    """
    levels = optimizer_levels(optimizer)
    out = []
    for level in levels:
        built = _built_variables(level)
        slots = {}
        for attr, lst in slot_lists(level).items():
            slots[attr] = {v.path: np.array(s.numpy()) for s, v in zip(lst, built)
                           if s is not None}
        others = {k: np.array(v.numpy()) for k, v in _other_variables(level, levels).items()}
        births = _births_of(level)
        out.append({"class": type(level).__name__, "slots": slots, "others": others,
                    "weight_decay": _weight_decay_state(level),
                    "step_offset": int(getattr(level, "_kgrow_step_offset", 0)),
                    "births": births})
    return {"levels": out}


def _transfer_for(plan: Optional[TransferPlan], path: str) -> VariableTransfer:
    if plan is None:
        return VariableTransfer(path, ())
    if path not in plan:
        raise KeyError(f"The transfer plan has no entry for variable {path!r}; a growth "
                       "result's plan must cover every variable of the new model.")
    return plan[path]


def load_optimizer_state(optimizer, state: dict, plan: Optional[TransferPlan] = None,
                         reset: bool = False) -> None:
    """Assigns a saved `optimizer_state` to a built optimizer, through `plan`.

    Args:
        optimizer: a built optimizer of the same class and configuration as
            the one `state` was taken from.
        state: the output of `optimizer_state`.
        plan: maps each variable the optimizer was built on (by path) to its
            source; None means "same path" (checkpoint restore).
        reset: keep only the learning-rate value and a wrapper's loss-scale
            state; every slot and other state starts fresh, the iteration
            count too (Adam's bias correction starts over), while the
            learning-rate schedule continues at the saved step
            (`ShiftedSchedule`).

    Raises:
        ValueError: the optimizer's class or slot kinds differ from the state's.
    """
    levels = optimizer_levels(optimizer)
    saved_levels = state["levels"]
    classes = [type(level).__name__ for level in levels]
    if [s["class"] for s in saved_levels] != classes:
        raise ValueError(f"Optimizer state is for {[s['class'] for s in saved_levels]}, "
                         f"the optimizer is {classes}.")
    for level, saved in zip(levels, saved_levels):
        built = _built_variables(level)
        fresh = {}  # variable path -> entries whose moments start now
        if not reset:
            lists = slot_lists(level)
            unknown = set(saved["slots"]) - set(lists)
            if unknown and built:
                raise ValueError(
                    f"Optimizer {level.name!r} has no slots {sorted(unknown)} that the saved "
                    f"state has (it has {sorted(lists)}); was it configured differently?")
            for attr, lst in lists.items():
                saved_slot = saved["slots"].get(attr, {})
                for s, v in zip(lst, built):
                    if s is None:
                        continue
                    t = _transfer_for(plan, v.path)
                    old = saved_slot.get(t.source) if t.source is not None else None
                    if old is None or t.resample is not None:
                        # Resampled variables restart their slots: interpolated
                        # second moments could be negative.
                        value = np.zeros(tuple(s.shape), dtype=np.float64)
                        new_mask = np.ones(tuple(s.shape), dtype=bool)
                    else:
                        value = t.gather(old, tuple(s.shape), fill=0.0)
                        new_mask = t.new_mask(tuple(s.shape))
                    if attr in _FILL_FROM_WEIGHTS and new_mask.any():
                        value = np.where(new_mask, np.asarray(v.numpy()), value)
                    else:
                        fresh[v.path] = fresh.get(v.path, False) | new_mask
                    s.assign(value.astype(s.dtype))
        keep = _counter_ids(level)
        iterations = getattr(level, "_iterations", None)
        if not hasattr(level, "inner_optimizer"):
            level._kgrow_step_offset = int(saved.get("step_offset", 0))
        for key, var in _other_variables(level, levels).items():
            if reset and var is iterations and not hasattr(level, "inner_optimizer") \
                    and key in saved["others"]:
                _restart_steps(level, int(np.asarray(saved["others"][key])))
                continue
            if reset and id(var) not in keep:
                continue
            if key not in saved["others"]:
                raise ValueError(f"Optimizer {level.name!r} variable {key!r} is missing from "
                                 f"the saved state (saved: {sorted(saved['others'])}).")
            value = np.asarray(saved["others"][key])
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(f"Optimizer variable {key!r} has shape {tuple(var.shape)}, "
                                 f"the saved state has {value.shape}.")
            var.assign(value.astype(var.dtype))
        if _bias_corrected(level):
            # After the count is restored: new entries are born at it.
            _carry_births(level, saved, built, plan, fresh)
        _load_weight_decay(level, saved.get("weight_decay"), built, plan)


def _load_weight_decay(level, saved, built, plan) -> None:
    if not saved or not hasattr(level, "exclude_from_weight_decay"):
        return
    paths = set(saved.get("excluded_paths") or [])
    var_list = []
    for v in built:
        t = _transfer_for(plan, v.path) if plan is None or v.path in plan else None
        if t is not None and t.source in paths:
            var_list.append(v)
    pattern = saved.get("pattern")
    if var_list or pattern:
        level.exclude_from_weight_decay(var_list=var_list or None,
                                        var_names=[pattern] if pattern else None)


def rebuild_optimizer(old, variables, plan: Optional[TransferPlan] = None,
                      reset: bool = False):
    """A new optimizer built on `variables`, carrying `old`'s state via `plan`.

    Call it inside the model's distribution-strategy scope: the new slot
    variables are created here.

    Args:
        old: the optimizer in use.
        variables: the variables the new optimizer updates (all that may
            train, frozen ones included, so an unfreeze finds their slots).
        plan: `TransferPlan` from the old model's variable paths to the new
            ones; None: same paths.
        reset: start every slot and the iteration count at zero, as a new
            optimizer's (keep the LR value, the schedule's position and the
            loss scale of a LossScaleOptimizer).
    """
    state = optimizer_state(old)
    new = clone_optimizer(old)
    new.build(list(variables))
    load_optimizer_state(new, state, plan=plan, reset=reset)
    return new


@register_kind
class OptimizerState(Component):
    """Component: the model's optimizer (configuration, slots, iterations).

    Growth: a new optimizer of the same configuration is built on every
    variable that may train and the old state is moved through the plan
    (`rebuild_optimizer`); `reset=True` zeroes the slots and the iteration
    count (the schedule continues, `ShiftedSchedule`) and keeps the LR value
    and a LossScaleOptimizer's loss scale. A model taken back from another
    architecture gets a fresh optimizer the same way (same configuration, LR
    schedule position and loss scale; the slots of that time were not
    kept). Checkpoints hold the serialized configuration
    and `optimizer_state`.
    """

    kind = "optimizer"
    order = 20
    builtin = True

    def _built(self):
        optimizer = getattr(self.host.model, "optimizer", None)
        return optimizer if getattr(optimizer, "built", False) else None

    def install(self, optimizer, state=None, reset: bool = False) -> None:
        """Builds a new `optimizer` on every variable that may train, loads `state`
        (with `reset`, only its LR value, schedule position and loss scale)."""
        host = self.host
        with host.scope():
            optimizer.build(trainable_candidates(host.model))
            if state is not None:
                load_optimizer_state(optimizer, state, reset=reset)
        host.model.optimizer = optimizer

    def cover(self, variables) -> None:
        """Rebuilds the optimizer (state kept) if it cannot update `variables`."""
        optimizer = self._built()
        if optimizer is not None and not knows_variables(optimizer, variables):
            self.carry(None, reset=False)

    def carry(self, plan, reset: bool) -> None:
        old = self._built()
        if old is None:
            return
        with self.host.scope():
            new = rebuild_optimizer(old, trainable_candidates(self.host.model), plan=plan,
                                    reset=reset)
        self.host.model.optimizer = new

    def rebuild(self, snapshot) -> None:
        self.restart_if_stale(keep_iterations=True)

    def restart_if_stale(self, keep_iterations: bool) -> None:
        """A fresh optimizer (same configuration) if the current one was built
        on variables the model no longer has."""
        current = self._built()
        if current is None or knows_variables(current, trainable_candidates(self.host.model)):
            return
        # A reset load keeps the schedule's position, the LR value and a loss scale.
        state = optimizer_state(current) if keep_iterations else None
        self.install(clone_optimizer(current), state, reset=True)

    def update_scales(self, variables) -> list:
        optimizer = self._built()
        if optimizer is None:
            return []
        return [pair for level in optimizer_levels(optimizer)
                for pair in bias_correction_scales(level, variables)]

    def get_state(self):
        optimizer = getattr(self.host.model, "optimizer", None)
        if optimizer is None:
            return None
        return {"config": keras.optimizers.serialize(optimizer),
                "state": optimizer_state(optimizer)}

    def set_state(self, state, custom_objects=None) -> None:
        if state is None:
            self.restart_if_stale(keep_iterations=False)
            return
        with self.host.scope():
            optimizer = keras.optimizers.deserialize(state["config"],
                                                     custom_objects=custom_objects)
        self.install(optimizer, state["state"])

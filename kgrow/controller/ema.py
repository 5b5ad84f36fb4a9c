"""Exponential moving averages (EMA) of a model's weights.

An `EMA` keeps one shadow variable per floating-point model weight (BatchNorm
statistics included, as timm's ModelEma does) and is updated after every
optimizer step *inside the compiled train step*, as the controller's last
post-update hook:

    shadow <- shadow - (1 - decay) * (shadow - weight)

(the same recurrence as `decay * shadow + (1 - decay) * weight`, in the
form that loses less precision for decays close to 1). Shadows are created in
the model's distribution-strategy scope, so under `MirroredStrategy` they are
mirrored and every replica updates its copy from its copy of the weights.

The decay is usually given as a half-life. Papers quote decays tuned to their
step counts (Network Expansion: 0.99996 on ImageNet); `rescale_decay` keeps
the same half-life *in epochs* on a run with a different number of steps per
epoch.

An EMA that (re)starts from a model far from where training is going (a
fresh initialization) keeps that start for several half-lives: one half-life
after a restart from random weights, half of the average *is* the random
weights. `warmup=True` applies TensorFlow's `ExponentialMovingAverage`
``num_updates`` rule, ``decay_t = min(decay, (1 + t) / (10 + t))`` with `t`
the updates since the last restart (`warmup_decay`), so the average follows
the weights closely at first and reaches the configured decay after
``(10 * decay - 1) / (1 - decay)`` updates.

Example:
    >>> round(half_life_steps(decay_for_half_life(100)), 6)
    100.0
    >>> d = rescale_decay(0.99996, steps_per_epoch=1251, new_steps_per_epoch=390)
    >>> round(half_life_steps(d) / 390, 3) == round(half_life_steps(0.99996) / 1251, 3)
    True
    >>> [round(warmup_decay(0.999, t), 3) for t in (0, 90, 10**5)]
    [0.1, 0.91, 0.999]
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from kgrow.controller._variables import weights_by_path
from kgrow.controller.component import Component, register_kind
from kgrow.controller.step import ORDER_EMA

__all__ = ["EMA", "EMAs", "decay_for_half_life", "half_life_steps", "rescale_decay",
           "resolve_decay", "warmup_decay"]


def decay_for_half_life(steps: float) -> float:
    """The decay whose weight on a value halves after `steps` updates."""
    steps = float(steps)
    if not math.isfinite(steps) or steps <= 0:
        raise ValueError(f"EMA half-life must be a positive number of steps, got {steps}")
    return 0.5 ** (1.0 / steps)


def half_life_steps(decay: float) -> float:
    """Number of updates after which `decay` has halved a value's weight."""
    decay = _check_decay(decay)
    if decay == 0.0:
        return 0.0
    return math.log(0.5) / math.log(decay)


def rescale_decay(decay: float, steps_per_epoch: float, new_steps_per_epoch: float) -> float:
    """The decay with the same half-life in epochs at a new steps-per-epoch.

    Example:
        >>> round(rescale_decay(0.99, 100, 50), 6) == round(0.99 ** 2, 6)
        True
    """
    decay = _check_decay(decay)
    for name, v in (("steps_per_epoch", steps_per_epoch),
                    ("new_steps_per_epoch", new_steps_per_epoch)):
        if not v or v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    return decay ** (float(steps_per_epoch) / float(new_steps_per_epoch))


def warmup_decay(decay: float, updates: float) -> float:
    """The decay of update number `updates` (0-based) since a restart with warm-up."""
    decay = _check_decay(decay)
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _check_decay(decay) -> float:
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    return decay


def resolve_decay(decay: Optional[float] = None, half_life_steps: Optional[float] = None,
                  half_life_epochs: Optional[float] = None,
                  steps_per_epoch: Optional[int] = None) -> float:
    """Exactly one of `decay`, `half_life_steps`, `half_life_epochs` (+ `steps_per_epoch`)."""
    given = [n for n, v in (("decay", decay), ("half_life_steps", half_life_steps),
                            ("half_life_epochs", half_life_epochs)) if v is not None]
    if len(given) != 1:
        raise ValueError("Give exactly one of decay, half_life_steps, half_life_epochs; got "
                         f"{given or 'none'}.")
    if decay is not None:
        return _check_decay(decay)
    if half_life_steps is not None:
        return decay_for_half_life(half_life_steps)
    if not steps_per_epoch:
        raise ValueError("half_life_epochs needs steps_per_epoch (optimizer steps per epoch).")
    return decay_for_half_life(float(half_life_epochs) * float(steps_per_epoch))


def _tracked(variable, trainable_only: bool) -> bool:
    if trainable_only and not variable.trainable:
        return False
    # keras' test, not numpy's: numpy does not see bfloat16 as a float kind.
    return keras.backend.is_float_dtype(variable.dtype)


def _shadow_dtype(variable) -> np.dtype:
    """float32 for 16-bit weights (a model under a pure `bfloat16`/`float16`
    policy): an average with a decay near 1 moves by less than their rounding
    step and would stall; otherwise the weight's own dtype."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    return np.dtype("float32" if dtype in ("bfloat16", "float16") else dtype)


class EMA:
    """Shadow copies of a model's weights, averaged every training step.

    Create through `TrainingController.add_ema(name, decay)`; the controller
    registers the per-step update and carries the shadows through growth
    steps and checkpoints.

    Attributes:
        name: the EMA's name in its controller.
        decay: current decay (settable; takes effect without a retrace).
        trainable_only: average only trainable weights (else all float weights).
        warmup: the decay warms up after every restart (`warmup_decay`).
        updates: updates since the shadows last restarted from the model.

    Example:
        >>> import keras, kgrow
        >>> inp = keras.Input((3,)); model = keras.Model(inp, keras.layers.Dense(2, name="d")(inp))
        >>> ema = kgrow.controller.TrainingController.of(model).add_ema("slow", decay=0.9)
        >>> sorted(ema.values())
        ['d/bias', 'd/kernel']
    """

    def __init__(self, controller, name: str, decay: float, trainable_only: bool = False,
                 warmup: bool = False):
        self._controller = controller
        self.name = name
        self.trainable_only = bool(trainable_only)
        self.warmup = bool(warmup)
        with controller.scope():
            self._decay = tf.Variable(_check_decay(decay), trainable=False, dtype=tf.float32,
                                      name=f"kgrow_ema_{name}_decay")
            # float32 counts exactly to 2**24 updates, where the warm-up
            # decay is within 1e-6 of 1 and no longer the smaller one.
            self._updates = tf.Variable(0.0, trainable=False, dtype=tf.float32,
                                        name=f"kgrow_ema_{name}_updates")
        self._shadows: dict[str, tf.Variable] = {}
        self._sources: dict[str, object] = {}
        self.reset_to_model()

    # -- configuration --------------------------------------------------------
    @property
    def decay(self) -> float:
        return float(self._decay.numpy())

    @decay.setter
    def decay(self, value) -> None:
        self._decay.assign(_check_decay(value))

    @property
    def updates(self) -> int:
        return int(self._updates.numpy())

    @property
    def effective_decay(self) -> float:
        """The decay the next update uses."""
        return warmup_decay(self.decay, self.updates) if self.warmup else self.decay

    @property
    def paths(self) -> list[str]:
        return list(self._shadows)

    # -- building shadows -----------------------------------------------------
    def _model_weights(self) -> dict:
        return {p: v for p, v in weights_by_path(self._controller.model).items()
                if _tracked(v, self.trainable_only)}

    def _set_shadows(self, values: dict, sources: dict) -> None:
        with self._controller.scope():
            self._shadows = {
                p: tf.Variable(np.asarray(values[p], dtype=_shadow_dtype(sources[p])),
                               trainable=False, name=f"kgrow_ema_{self.name}_{i}")
                for i, p in enumerate(sources)}
        self._sources = dict(sources)

    def reset_to_model(self) -> None:
        """Shadows become copies of the current weights (re-created if the set changed)."""
        self._updates.assign(0.0)
        sources = self._model_weights()
        if list(sources) == list(self._sources) and all(
                tuple(self._shadows[p].shape) == tuple(v.shape) for p, v in sources.items()):
            for p, v in sources.items():
                self._shadows[p].assign(np.asarray(v.numpy(), _shadow_dtype(v)))
            self._sources = sources
            return
        self._set_shadows({p: v.numpy() for p, v in sources.items()}, sources)
        self._controller.request_retrace()

    def _carry(self, plan) -> None:
        """Moves the shadows onto the controller's (new) model through `plan`.

        Entries that have no source (new units, new blocks, weights the EMA
        did not track) start as a copy of the new weight.
        """
        old = self.values()
        sources = self._model_weights()
        values = {}
        for p, v in sources.items():
            current = np.asarray(v.numpy())
            t = plan[p] if p in plan else None
            if t is None or t.source is None or t.source not in old:
                values[p] = current
                continue
            gathered = t.gather(old[t.source], current.shape, fill=0.0)
            values[p] = np.where(t.new_mask(current.shape), current, gathered)
        self._set_shadows(values, sources)

    def _load(self, values: dict) -> None:
        sources = self._model_weights()
        missing = [p for p in sources if p not in values]
        if missing:
            raise ValueError(f"Saved EMA {self.name!r} has no shadow for {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}.")
        self._set_shadows(values, sources)

    # -- the per-step update --------------------------------------------------
    def _update(self, ctx) -> None:
        """Post-update hook: one EMA step for every shadow (cross-replica context)."""
        decay = self._decay
        if self.warmup:
            t = tf.convert_to_tensor(self._updates)
            decay = tf.minimum(tf.convert_to_tensor(decay), (1.0 + t) / (10.0 + t))

        def step(shadow, weight, d):
            rate = tf.cast(1.0 - d, shadow.dtype)
            return shadow.assign_sub(rate * (shadow - tf.cast(weight, shadow.dtype)))

        for p, shadow in self._shadows.items():
            ctx.update(shadow, step, self._sources[p], decay)
        ctx.update(self._updates, lambda v: v.assign_add(1.0))

    # -- reading and using ----------------------------------------------------
    def values(self) -> dict:
        """`{variable path: np.ndarray}` of the shadows."""
        return {p: np.array(s.numpy()) for p, s in self._shadows.items()}

    def shadow_variables(self) -> dict:
        """`{variable path: tf.Variable}` (mirrored under a strategy)."""
        return dict(self._shadows)

    def _check_model(self, model) -> dict:
        targets = weights_by_path(model)
        missing = [p for p in self._shadows if p not in targets]
        if missing:
            raise ValueError(f"EMA {self.name!r} has shadows for variables the model lacks: "
                             f"{missing[:5]}")
        for p, s in self._shadows.items():
            if tuple(targets[p].shape) != tuple(s.shape):
                raise ValueError(f"EMA {self.name!r}: {p!r} has shape {tuple(s.shape)}, the "
                                 f"model's variable {tuple(targets[p].shape)}")
        return targets

    def assign_to(self, model=None) -> None:
        """Writes the shadows into `model`'s weights (default: the controlled model)."""
        targets = self._check_model(model if model is not None else self._controller.model)
        for p, s in self._shadows.items():
            targets[p].assign(s.numpy())

    @contextlib.contextmanager
    def swap(self):
        """Context manager: the model holds the EMA weights inside, its own after.

        Example (``ema`` from `TrainingController.add_ema`):
            >>> with ema.swap():  # doctest: +SKIP
            ...     model.evaluate(test_ds)

        (Not run as a doctest: it needs a model, an EMA and data; the
        runnable example is `TrainingController.add_ema`'s.)
        """
        targets = self._check_model(self._controller.model)
        saved = {p: targets[p].numpy() for p in self._shadows}
        for p, s in self._shadows.items():
            targets[p].assign(s.numpy())
        try:
            yield self
        finally:
            for p, value in saved.items():
                targets[p].assign(value)

    def __repr__(self):
        return (f"EMA(name={self.name!r}, decay={self.decay}, variables={len(self._shadows)}, "
                f"half_life_steps={half_life_steps(self.decay):.1f}"
                f"{', warmup=True' if self.warmup else ''})")


@register_kind
class EMAs(Component):
    """Component: the controller's named EMAs (`controller.add_ema`).

    Growth: shadows are carried through the plan (new entries copy the new
    weights), or restart as copies of the model with `reset=True`. A model
    taken back from another architecture restarts every EMA as a copy of it.
    Checkpoints hold each EMA's decay, `trainable_only`, warm-up flag, update
    count and shadows.
    """

    kind = "ema"
    order = 30
    builtin = True

    def __init__(self):
        self.emas: dict[str, EMA] = {}

    def add(self, name: str, decay: float, trainable_only: bool = False,
            warmup: bool = False) -> EMA:
        if not isinstance(name, str) or not name:
            raise TypeError(f"EMA name must be a non-empty string, got {name!r}")
        if name in self.emas:
            raise ValueError(f"An EMA named {name!r} already exists "
                             f"(EMAs: {sorted(self.emas)}).")
        ema = EMA(self.host, name, decay, trainable_only=trainable_only, warmup=warmup)
        self.emas[name] = ema
        self.host.hooks.add_post_update(ema._update, name=f"ema:{name}", order=ORDER_EMA)
        self.host.request_retrace()
        return ema

    def get(self, name: str) -> EMA:
        if name not in self.emas:
            raise KeyError(f"No EMA named {name!r}; EMAs: {sorted(self.emas)}")
        return self.emas[name]

    def remove(self, name: str) -> None:
        self.get(name)
        del self.emas[name]
        self.host.hooks.remove(f"ema:{name}")
        self.host.request_retrace()

    def detach(self) -> None:
        for name in list(self.emas):
            self.remove(name)
        super().detach()

    def carry(self, plan, reset: bool) -> None:
        for ema in self.emas.values():
            if reset:
                ema.reset_to_model()
            else:
                ema._carry(plan)

    def rebuild(self, snapshot) -> None:
        for ema in self.emas.values():
            ema.reset_to_model()

    def get_state(self):
        return {name: {"decay": e.decay, "trainable_only": e.trainable_only,
                       "warmup": e.warmup, "updates": e.updates, "shadows": e.values()}
                for name, e in self.emas.items()}

    def set_state(self, state, custom_objects=None) -> None:
        for name in list(self.emas):
            self.remove(name)
        for name, saved in (state or {}).items():
            # Checkpoints from before the warm-up option have neither key.
            ema = self.add(name, saved["decay"], trainable_only=saved["trainable_only"],
                           warmup=saved.get("warmup", False))
            ema._load(saved["shadows"])
            ema._updates.assign(float(saved.get("updates", 0)))

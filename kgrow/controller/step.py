"""The controller's training step and its ordered hook points.

`make_train_step(controller)` returns a function that replaces
`model.train_step` on one model instance. It mirrors Keras 3's TensorFlow
`train_step` (forward pass with `training=True`, `compute_loss`, the loss
tracker, sample weights, `optimizer.scale_loss` for LossScaleOptimizer,
`compute_metrics`) and adds hook points. One step runs, in this order:

1. forward pass and loss; gradients of `model.trainable_weights` only (frozen
   layers are not differentiated; layers in front of the first trainable
   one get no backward pass at all);
2. gradient transforms, in (`order`, registration) order, in replica
   context: `fn(grads, variables) -> grads` (e.g. zero the gradients of
   masked weights). `variables` are the Keras variables being trained;
   gradients are per replica (before the all-reduce), None for variables the
   loss does not depend on, and, with a LossScaleOptimizer, still multiplied
   by the loss scale;
3. `optimizer.apply_gradients` (all-reduce, clipping, weight decay, update,
   iteration count), traced with fewer ops by
   `kgrow.controller.updates.compact_updates`;
4. in cross-replica context (one `merge_call`):
   a. update rescaling: the update of each variable a component scales
      (LR groups, per-entry LR scales; `Component.update_scales`) is
      multiplied by its scale, `w = old + m * (w - old)`;
   b. post-update hooks in (`order`, registration) order, each called as
      `fn(ctx)` with an `UpdateContext`. Standard orders: `ORDER_MASKS`
      (re-apply sparse masks) < `ORDER_EMA` (EMA shadows), so the EMA
      averages the masked weights.
5. metrics.

Prediction hooks (`add_prediction_hook`) see each batch's predictions with
the ids of its samples, right after the forward pass: `fn(batch)` with a
`PredictionBatch(ids, y_true, y_pred)` (`y_pred` of the training-mode
forward pass, gradient stopped). They are called once per process with the
whole global batch: under a strategy of several replicas the replicas'
shares are gathered (by an all-reduce; values travel as float32, so ids are
exact up to 2**24 samples) and the first replica of each process calls the
hooks, so host state kept by a hook is the same on every worker. Sample ids travel with the
data as `(x, y, {"sample_ids": ids})` (`kgrow.data.DataBundle.train_with_ids`;
a real sample weight can go under `"sample_weight"` in the same dict), so a
3-tuple keeps meaning `(x, y, sample_weight)` for Keras. Data sieving counts
forgetting events this way without a second forward pass. With no
prediction hook registered the step has no op for them (the ids, if the data
carries them, are dropped at trace time); with one, the step costs what the
hook's ops cost.

Everything is traced into the train function: there is no Python work per
step. Adding or removing hooks needs a retrace (`controller.request_retrace()`,
done by the controller's own methods).

Example:
    >>> hooks = StepHooks()
    >>> hooks.add_post_update(lambda ctx: None, name="ema", order=ORDER_EMA)
    'ema'
    >>> hooks.add_post_update(lambda ctx: None, name="masks", order=ORDER_MASKS)
    'masks'
    >>> [h.name for h in hooks.post_updates]
    ['masks', 'ema']
"""
from __future__ import annotations

import dataclasses
import itertools
import warnings
from typing import Callable, NamedTuple, Optional

import keras
import tensorflow as tf

from kgrow.controller._variables import unwrap
from kgrow.controller.updates import compact_updates
from kgrow.data.pipeline import SAMPLE_IDS

__all__ = ["StepHooks", "Hook", "UpdateContext", "PredictionBatch", "make_train_step",
           "ORDER_MASKS", "ORDER_EMA", "ORDER_DEFAULT", "SAMPLE_IDS", "unwrap",
           "without_sample_ids"]

ORDER_DEFAULT = 0
ORDER_MASKS = 100
ORDER_EMA = 1000

# With SAMPLE_IDS (the key `DataBundle.train_with_ids` uses) in a batch's
# third element, that element is {SAMPLE_IDS: ids[, SAMPLE_WEIGHT: weights]}.
SAMPLE_WEIGHT = "sample_weight"


@dataclasses.dataclass(frozen=True)
class Hook:
    """A registered hook: `fn`, its unique `name`, its `order`, registration `seq`."""
    name: str
    fn: Callable
    order: int
    seq: int
    kind: str


class StepHooks:
    """Ordered registry of gradient transforms, post-update and prediction hooks.

    Args:
        on_change: called after every registration or removal (the
            controller passes `request_retrace`: hooks are traced into the
            train function).
    """

    def __init__(self, on_change: Optional[Callable[[], None]] = None):
        self._hooks: dict[str, Hook] = {}
        self._seq = itertools.count()
        self._on_change = on_change

    def _add(self, kind, fn, name, order) -> str:
        if not callable(fn):
            raise TypeError(f"A {kind} hook must be callable, got {type(fn).__name__}")
        if not isinstance(order, int):
            raise TypeError(f"Hook order must be an int, got {order!r}")
        seq = next(self._seq)
        name = name or f"{kind}_{seq}"
        if name in self._hooks:
            raise ValueError(f"A step hook named {name!r} is already registered; remove it "
                             "first or choose another name.")
        self._hooks[name] = Hook(name, fn, order, seq, kind)
        self._changed()
        return name

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def add_gradient_transform(self, fn, name: Optional[str] = None,
                               order: int = ORDER_DEFAULT) -> str:
        """Registers `fn(grads, variables) -> grads`; returns its name."""
        return self._add("gradient_transform", fn, name, order)

    def add_post_update(self, fn, name: Optional[str] = None, order: int = ORDER_DEFAULT) -> str:
        """Registers `fn(ctx: UpdateContext)`; returns its name."""
        return self._add("post_update", fn, name, order)

    def add_prediction_hook(self, fn, name: Optional[str] = None,
                            order: int = ORDER_DEFAULT) -> str:
        """Registers `fn(batch: PredictionBatch)`; returns its name.

        Training data must then carry sample ids (see the module docstring).
        """
        return self._add("prediction", fn, name, order)

    def remove(self, name: str) -> None:
        if name not in self._hooks:
            raise KeyError(f"No step hook named {name!r}; registered: {sorted(self._hooks)}")
        del self._hooks[name]
        self._changed()

    def __contains__(self, name) -> bool:
        return name in self._hooks

    def _sorted(self, kind) -> list[Hook]:
        return sorted((h for h in self._hooks.values() if h.kind == kind),
                      key=lambda h: (h.order, h.seq))

    @property
    def gradient_transforms(self) -> list[Hook]:
        return self._sorted("gradient_transform")

    @property
    def post_updates(self) -> list[Hook]:
        return self._sorted("post_update")

    @property
    def prediction_hooks(self) -> list[Hook]:
        return self._sorted("prediction")


class PredictionBatch(NamedTuple):
    """What a prediction hook gets: `ids` (int64 [batch]), `y_true`, `y_pred`."""
    ids: tf.Tensor
    y_true: object
    y_pred: object


def _split_sample_ids(sample_weight):
    """`(sample_weight, ids)` from a batch's third element."""
    if isinstance(sample_weight, dict) and SAMPLE_IDS in sample_weight:
        unknown = set(sample_weight) - {SAMPLE_IDS, SAMPLE_WEIGHT}
        if unknown:
            raise ValueError(f"A batch's third element with {SAMPLE_IDS!r} may only also hold "
                             f"{SAMPLE_WEIGHT!r}; got keys {sorted(sample_weight)}.")
        return sample_weight.get(SAMPLE_WEIGHT), sample_weight[SAMPLE_IDS]
    return sample_weight, None


def without_sample_ids(data):
    """A batch ``(x, y, {SAMPLE_IDS: ids[, SAMPLE_WEIGHT: w]})`` as ``(x, y[, w])``.

    For Keras code outside the train step that reads the third element as
    sample weights (the symbolic build `fit` runs under a strategy).
    """
    if isinstance(data, (tuple, list)) and len(data) == 3:
        weight, ids = _split_sample_ids(data[2])
        if ids is not None:
            return tuple(data[:2]) if weight is None else (data[0], data[1], weight)
    return data


class UpdateContext:
    """What a post-update hook gets: the strategy and a safe way to assign.

    Post-update hooks run in cross-replica context. Mirrored variables must
    be changed through `ctx.update`, which runs `fn(variable, *args)` once
    per replica on that replica's copy; mirrored or per-replica arguments
    arrive as the replica's own component.

    Attributes:
        strategy: the `tf.distribute.Strategy` of the model.
        variables: the model variables this step trained (Keras variables).
    """

    def __init__(self, strategy, variables):
        self.strategy = strategy
        self.variables = list(variables)

    def update(self, variable, fn, *args):
        """Runs `fn(variable_copy, *args)` on every replica's copy of `variable`."""
        return self.strategy.extended.update(
            unwrap(variable), fn, args=tuple(unwrap(a) for a in args), group=False)


def _scale_delta(variable, old, multiplier):
    m = tf.cast(multiplier, variable.dtype)
    return variable.assign(old + m * (variable - old))


def _unscale_loss_for_distribution(loss):
    # Keras' train_step reports the loss per replica times the number of
    # replicas (compute_loss divided it); same here.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        loss = loss * tf.cast(replicas, loss.dtype)
    return loss


def _batch_size(x):
    first = next(t for t in tf.nest.flatten(x) if t is not None)
    return tf.shape(first)[0]


def _call_prediction_hooks(hooks, batch) -> None:
    """Calls each hook once per process with the whole global batch.

    Prediction hooks keep host state (one copy per process, e.g. forgetting
    counts). Under a strategy every replica holds a share of the global
    batch; the shares are gathered and the first replica of each process
    hands the whole batch to the hooks, so that on every worker the host
    state sees every sample, as it would without the strategy. (Each
    worker counting only its own shares would make the workers' decisions
    differ.)
    """
    strategy = tf.distribute.get_strategy()
    ctx = tf.distribute.get_replica_context()
    if ctx is None or strategy.num_replicas_in_sync < 2:
        for hook in hooks:
            hook.fn(batch)
        return

    replicas = strategy.num_replicas_in_sync
    replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)

    def gather(t):
        # An all-gather by a sum: each replica's share at its own rows of a
        # zero tensor, summed over replicas (MultiWorkerMirroredStrategy's
        # all_gather fails inside a train function; its all-reduce is what
        # the gradients use). float32 carries ids exactly up to 2**24.
        t = tf.convert_to_tensor(t)
        rows = tf.shape(t)[0]
        placed = tf.pad(tf.cast(t, tf.float32),
                        [[replica * rows, (replicas - 1 - replica) * rows]]
                        + [[0, 0]] * (t.shape.rank - 1))
        whole = ctx.all_reduce("SUM", placed)
        return whole if t.dtype.is_floating else tf.cast(tf.round(whole), t.dtype)

    whole = PredictionBatch(*(tf.nest.map_structure(gather, part) for part in batch))
    local = max(1, len(strategy.extended.worker_devices))

    def call():
        for hook in hooks:
            hook.fn(whole)
        return tf.constant(0)

    first_of_process = tf.equal(tf.math.floormod(ctx.replica_id_in_sync_group, local), 0)
    tf.cond(first_of_process, call, lambda: tf.constant(0))


def make_train_step(controller) -> Callable:
    """Builds the train step for `controller.model` (see the module docstring).

    The returned function reads the controller's current model, hooks and
    LR groups when it is traced, so one installed function serves every
    architecture the model takes on.
    """

    def train_step(data):
        model = controller.model
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sample_weight, ids = _split_sample_ids(sample_weight)
        with tf.GradientTape() as tape:
            if getattr(model, "_call_has_training_arg", True):
                y_pred = model(x, training=True)
            else:
                y_pred = model(x)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                       training=True)
            model._loss_tracker.update_state(_unscale_loss_for_distribution(loss),
                                             sample_weight=_batch_size(x))
            if model.optimizer is not None:
                loss = model.optimizer.scale_loss(loss)

        prediction_hooks = controller.hooks.prediction_hooks
        if prediction_hooks:
            if ids is None:
                raise ValueError(
                    f"Prediction hooks {[h.name for h in prediction_hooks]} need the sample "
                    f"ids of each batch: train on data of (x, y, {{{SAMPLE_IDS!r}: ids}}), "
                    "e.g. bundle.train_with_ids().")
            batch = PredictionBatch(ids, y, tf.nest.map_structure(tf.stop_gradient, y_pred))
            _call_prediction_hooks(prediction_hooks, batch)

        variables = list(model.trainable_weights)
        if not variables:
            warnings.warn("The model does not have any trainable weights.")
            return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        grads = list(tape.gradient(loss, variables))
        for hook in controller.hooks.gradient_transforms:
            grads = list(hook.fn(grads, variables))
            if len(grads) != len(variables):
                raise ValueError(f"Gradient transform {hook.name!r} returned {len(grads)} "
                                 f"gradients for {len(variables)} variables.")

        scaled = controller._update_scales(variables)
        # Read before the update; automatic control dependencies keep the
        # read ahead of the optimizer's write to the same variable.
        olds = [tf.identity(unwrap(v)) for v, _ in scaled]
        with compact_updates(model.optimizer):
            model.optimizer.apply_gradients(zip(grads, variables))

        post = controller.hooks.post_updates
        if scaled or post:
            def cross_replica(strategy, *olds):
                for (v, m), old in zip(scaled, olds):
                    strategy.extended.update(unwrap(v), _scale_delta, args=(old, m),
                                             group=False)
                ctx = UpdateContext(strategy, variables)
                for hook in post:
                    hook.fn(ctx)

            tf.distribute.get_replica_context().merge_call(cross_replica, args=tuple(olds))

        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    train_step.__name__ = "kgrow_train_step"
    return train_step

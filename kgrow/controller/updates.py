"""Keras optimizer updates that trace into fewer graph ops, with the same math.

Every growth step retraces the train step, and the trace costs roughly in
proportion to the number of ops it builds. Keras builds the update of each
weight from small ops (for SGD with momentum about a dozen per weight) and
evaluates the learning-rate schedule once per weight and once more per
decayed weight. Inside `compact_updates(optimizer)` (the controller's train
step wraps `apply_gradients` in it):

* the learning rate is evaluated once per graph. Keras reads
  `optimizer.learning_rate` for the update and again for every decayed
  weight, and each read of a schedule builds the schedule's ops again. The
  iteration count only moves at the very end of `apply`, so every read in one
  `apply_gradients` sees the same value;
* the update of a dense weight of `keras.optimizers.SGD` is TensorFlow's
  fused kernel for the same formula, in the same order of operations
  (`ResourceApplyKerasMomentum`: `m = m * momentum - g * lr`, then
  `w += m` or, with Nesterov, `w += m * momentum - g * lr`;
  `ResourceApplyGradientDescent` without momentum). One op per weight
  instead of about a dozen: 450 fewer ops and about 0.27 s less per trace for
  a ResNet-20 train step. Other optimizers keep Keras' own `update_step`:
  TensorFlow's Adam kernel computes `1 - beta` in float32 where Keras rounds
  it from float64, which moves the weights by about 1e-6 within two epochs,
  so it is not used. Sparse gradients, dtypes other than float32/float64 and
  subclasses of SGD (which may change the update) keep Keras' `update_step`;
* Keras' decoupled weight decay, `w -= (w * wd) * lr`, is one
  `ResourceApplyGradientDescent` per decayed weight (`w -= delta * alpha`
  with `delta = w * wd`, `alpha = lr`: the same products in the same order)
  instead of two multiplications, a constant and an `assign_sub`;
* the gradients are summed over replicas without the differentiable wrapper
  around `ReplicaContext.all_reduce` (a `tf.custom_gradient`; XLA on GPUs,
  which reduces without `merge_call`, keeps TensorFlow's call). Besides
  its ops, that wrapper registers a gradient function in TensorFlow's
  process-wide gradient registry, and the function's closure holds the
  traced graph: with Keras' own path every retrace keeps one more copy of the
  whole train-step graph alive until the process ends;
* without a distribution strategy, each weight's update is built by calling
  the update directly instead of through the default strategy's
  `extended.update`, which adds only Python (about 30 ms per trace of a
  ResNet-20 step).

The last three replace Keras' TensorFlow implementation only where the
optimizer's class has not overridden it. Eager reads are not cached, and the
patches are removed when the block ends. Wrapped optimizers
(LossScaleOptimizer) are handled level by level.
"""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from kgrow.controller._variables import unwrap
from kgrow.controller.optimizer import optimizer_levels

try:  # Keras' TensorFlow optimizer internals; without them Keras' own code runs
    from keras.src.backend.tensorflow.optimizer import TFOptimizer as _TFOptimizer
    from keras.src.backend.tensorflow.optimizer import filter_empty_gradients as \
        _filter_empty_gradients
except ImportError:  # another Keras layout
    _TFOptimizer = None

__all__ = ["compact_updates"]

_FUSED_DTYPES = (tf.float32, tf.float64)


def _handle(variable):
    # Inside `strategy.extended.update` a mirrored variable's handle is that
    # of the replica being updated.
    return unwrap(variable).handle


def _graph_cache():
    """`get(key, build)`: one value per (graph, key); eager calls always build."""
    cache = {}

    def get(key, build):
        if tf.executing_eagerly():
            return build()
        graph = tf.compat.v1.get_default_graph()
        entry = cache.get((id(graph), key))
        if entry is None:
            entry = cache[(id(graph), key)] = (graph, build())  # graph kept: ids stay unique
        return entry[1]

    return get


def _sgd_update(level, cached, original):
    def update_step(gradient, variable, learning_rate):
        dtype = tf.as_dtype(variable.dtype)
        if isinstance(gradient, tf.IndexedSlices) or dtype not in _FUSED_DTYPES:
            return original(gradient, variable, learning_rate)
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        if level.momentum == 0:
            return tf.raw_ops.ResourceApplyGradientDescent(
                var=_handle(variable), alpha=lr, delta=gradient)
        momentum = level.momentums[level._get_variable_index(variable)]
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=_handle(variable), accum=_handle(momentum), lr=lr, grad=gradient,
            momentum=cached(("momentum", dtype), lambda: tf.constant(level.momentum, dtype)),
            use_nesterov=bool(level.nesterov))

    return update_step


def _sum_over_replicas(values):
    """`ReplicaContext.all_reduce(SUM, values)` without its gradient wrapper.

    The same call as TensorFlow's `all_reduce` (a `merge_call` of
    `batch_reduce_to`), minus the `tf.custom_gradient` that makes it
    differentiable. The update is never differentiated, and in a graph that
    wrapper registers a gradient function in TensorFlow's process-wide
    registry whose closure holds the traced graph: every trace of a Keras
    train step stays alive until the process ends. Strategies that reduce
    without `merge_call` (XLA on GPUs only) keep TensorFlow's own call.
    """
    ctx = tf.distribute.get_replica_context()
    if not ctx.strategy.extended._use_merge_call():
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(values))
    options = tf.distribute.experimental.CommunicationOptions()

    def batch_all_reduce(strategy, *flat):
        return strategy.extended.batch_reduce_to(
            tf.distribute.ReduceOp.SUM,
            [(v, v.device if isinstance(v, tf.Tensor) else v) for v in flat], options)

    return ctx.merge_call(batch_all_reduce, args=tuple(values))


def _update(distribution, variable, fn, *args):
    """`distribution.extended.update(variable, fn, args)`, direct without a strategy.

    The default strategy's `update` only enters its scope and an update
    context around `fn(variable, *args)`: the same ops, for about 0.25 ms of
    Python per update and trace (two updates per weight with weight decay).
    """
    if tf.distribute.has_strategy():
        return distribution.extended.update(variable, fn, args=args, group=False)
    return fn(variable, *args)


def _distributed_update_step(level, cached):
    """Keras' `_distributed_tf_update_step`, each update through `_update`."""
    def distributed_update_step(distribution, grads_and_vars, learning_rate):
        for gradient, variable in grads_and_vars:
            _update(distribution, variable,
                    lambda var, grad: level.update_step(grad, var, learning_rate), gradient)

    return distributed_update_step


def _all_reduce_gradients(grads_and_vars):
    """Keras' `_all_reduce_sum_gradients`, summing with `_sum_over_replicas`."""
    pairs = list(grads_and_vars)
    if tf.distribute.get_replica_context() is None:
        return pairs
    present = [g for g, _ in _filter_empty_gradients(pairs)]
    summed = iter(_sum_over_replicas(present) if present else ())
    return [(None if g is None else next(summed), v) for g, v in pairs]


def _weight_decay(level, cached):
    """Keras' decoupled weight decay, `w -= (w * wd) * lr`, as one kernel per weight.

    `ResourceApplyGradientDescent` computes `w -= delta * alpha`; with
    `delta = w * wd` and `alpha = lr` that is Keras' expression in Keras'
    order, in place of its two multiplications and `assign_sub`.
    """
    def apply_weight_decay(variables):
        if level.weight_decay is None:
            return

        def decay(variable):
            if not level._use_weight_decay(variable):
                return None
            dtype = tf.as_dtype(variable.dtype)
            lr = tf.cast(level.learning_rate, dtype)
            wd = cached(("weight_decay", dtype), lambda: tf.cast(level.weight_decay, dtype))
            if dtype not in _FUSED_DTYPES:
                return variable.assign_sub(variable * wd * lr)
            return tf.raw_ops.ResourceApplyGradientDescent(
                var=_handle(variable), alpha=lr, delta=variable * wd)

        def apply_all(distribution, variables):
            for variable in variables:
                _update(distribution, unwrap(variable), decay)

        tf.__internal__.distribute.interim.maybe_merge_call(
            apply_all, level._distribution_strategy, variables)

    return apply_weight_decay


# Keras methods replaced inside `compact_updates`, with the same computation
# (`factory(level, cached) -> replacement`). Only where the optimizer's class
# still uses Keras' TensorFlow implementation.
_COMPACT_METHODS = {"_all_reduce_sum_gradients": lambda level, cached: _all_reduce_gradients,
                    "_apply_weight_decay": _weight_decay,
                    "_distributed_tf_update_step": _distributed_update_step}


def _uses_keras_method(level, name) -> bool:
    return _TFOptimizer is not None and getattr(type(level), name, None) is getattr(
        _TFOptimizer, name)


def _fused_update_for(level):
    """The fused `update_step` factory for `level`, or None to keep Keras'."""
    return _sgd_update if type(level) is keras.optimizers.SGD else None


@contextlib.contextmanager
def compact_updates(optimizer):
    """Within the block, `optimizer`'s updates trace into fewer ops (module doc)."""
    patched = []

    def patch(level, name, replacement):
        object.__setattr__(level, name, replacement)
        patched.append((level, name))

    try:
        for level in optimizer_levels(optimizer):
            kind = type(level)
            if (not hasattr(kind, "_get_current_learning_rate")
                    or "_get_current_learning_rate" in vars(level)):
                continue  # not a Keras optimizer, or another replica thread patched it
            cached = _graph_cache()
            read_lr = kind._get_current_learning_rate.__get__(level)
            patch(level, "_get_current_learning_rate",
                  lambda read_lr=read_lr, cached=cached: cached("learning_rate", read_lr))
            for name, factory in _COMPACT_METHODS.items():
                if _uses_keras_method(level, name):
                    patch(level, name, factory(level, cached))
            factory = _fused_update_for(level)
            if factory is not None:
                patch(level, "update_step",
                      factory(level, cached, kind.update_step.__get__(level)))
        yield
    finally:
        for level, name in reversed(patched):
            object.__delattr__(level, name)

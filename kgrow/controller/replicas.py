"""Keeping replicas' unsynchronized state equal under a distribution strategy.

Keras 3 creates `BatchNormalization`'s moving statistics with no replica
aggregation, and each replica updates its own copy from its own batches
(tf.keras 2 averaged them on read). A model read after training (saving,
checkpoints, evaluation) sees replica 0's copy on each machine, so under
MultiWorkerMirroredStrategy the workers' saved models differ, and under
MirroredStrategy the statistics come from one device's share of the data.

`MovingStatisticsSync()(model)` sets every replica's copy to the mean over
all replicas of all workers (one all-reduce). The controller calls it at each
epoch end of a controlled `fit` under a strategy with more than one replica,
so the workers' models, checkpoints and decisions agree.

`agree(strategy, values)` gives every worker the mean of a few host-side
numbers (measured step times, scores) so that a decision taken from them on
each worker is the same decision: a choice made from one machine's timings
would differ between machines and split the workers' models.

Example:
    >>> import keras
    >>> inp = keras.Input((3,))
    >>> model = keras.Model(inp, keras.layers.BatchNormalization()(inp))
    >>> [w.path for w in moving_statistics(model)]
    ['batch_normalization/moving_mean', 'batch_normalization/moving_variance']
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["moving_statistics", "MovingStatisticsSync", "num_workers", "agree"]


def moving_statistics(model) -> list:
    """The moving-statistics variables of the model's normalization layers."""
    found = []
    for layer in model._flatten_layers(include_self=False):
        for name in ("moving_mean", "moving_variance"):
            variable = getattr(layer, name, None)
            if variable is not None and not variable.trainable:
                found.append(variable)
    return found


class MovingStatisticsSync:
    """Sets each moving statistic to its mean over all replicas; returns how many.

    A no-op (returns 0) without a strategy of several replicas. The
    all-reduce is traced once per set of variables (a growth step makes a
    new set).
    """

    def __init__(self):
        self._key, self._function = None, None

    def __call__(self, model) -> int:
        strategy = model.distribute_strategy
        variables = moving_statistics(model)
        if not variables or strategy.num_replicas_in_sync < 2:
            return 0
        key = (id(strategy), tuple(id(v) for v in variables))
        if key != self._key:
            values = [v.value for v in variables]

            @tf.function
            def sync():
                def in_replica():
                    means = tf.distribute.get_replica_context().all_reduce(
                        "MEAN", [v.read_value() for v in values])
                    for v, mean in zip(values, means):
                        v.assign(mean)
                strategy.run(in_replica)

            self._key, self._function = key, sync
        self._function()
        return len(variables)


def num_workers(strategy) -> int:
    """How many machines (worker processes) train under `strategy` (1 without one)."""
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return 1
    local = len(strategy.extended.worker_devices) or 1
    return max(1, strategy.num_replicas_in_sync // local)


def agree(strategy, values) -> np.ndarray:
    """The mean over the workers of each of `values`, identical on every worker.

    With a single worker the values come back unchanged (as float64). With
    several, every worker must call it at the same point (it is one
    all-reduce); float32 travels, so equal inputs give equal outputs
    everywhere, which is what a decision needs.

    Example:
        >>> agree(tf.distribute.get_strategy(), [1.5, 2.0]).tolist()
        [1.5, 2.0]
    """
    values = np.asarray(values, np.float64)
    if num_workers(strategy) < 2:
        return values
    flat = tf.constant(values.reshape(-1), tf.float32)

    @tf.function
    def reduce():
        return strategy.run(
            lambda: tf.distribute.get_replica_context().all_reduce("MEAN", flat))

    mean = strategy.experimental_local_results(reduce())[0]
    return np.asarray(mean.numpy(), np.float64).reshape(values.shape)

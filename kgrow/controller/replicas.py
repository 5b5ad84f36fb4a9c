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

Example:
    >>> import keras
    >>> inp = keras.Input((3,))
    >>> model = keras.Model(inp, keras.layers.BatchNormalization()(inp))
    >>> [w.path for w in moving_statistics(model)]
    ['batch_normalization/moving_mean', 'batch_normalization/moving_variance']
"""
from __future__ import annotations

import tensorflow as tf

__all__ = ["moving_statistics", "MovingStatisticsSync"]


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

"""Forgetting events counted inside the train step (a prediction hook).

`ForgettingTracker` keeps two per-sample variables on the host CPU, indexed
by the global training-sample id: the correctness at the sample's last
presentation and its forgetting events since the last reset. Registered as
a prediction hook (`controller.hooks.add_prediction_hook`), it reads the
training step's own predictions (no second forward pass) and updates the
rows of the batch's samples with two scatters.

The variables are single host copies per process that no `tf.distribute`
strategy mirrors. Under a strategy the step hands the hook the whole global
batch once per process (`kgrow.controller.step`: the replicas' shares are
gathered), so every worker of a MultiWorkerMirroredStrategy counts every
sample's events and all workers take the same sieving decision.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from kgrow.controller.step import PredictionBatch
    >>> t = ForgettingTracker(4)
    >>> y = tf.one_hot([0, 1], 2)
    >>> t(PredictionBatch(tf.constant([0, 2], tf.int64), y, y))           # both right
    >>> t(PredictionBatch(tf.constant([0, 2], tf.int64), y, y[::-1]))     # both wrong
    >>> t.read()[1].tolist()
    [1, 0, 1, 0]
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from kgrow.data.selection import _host_variable

__all__ = ["ForgettingTracker", "batch_correct"]


def batch_correct(y_true, y_pred):
    """bool ``[batch]``: is the predicted class the label?

    ``y_pred`` is ``[batch, classes]`` (scores or probabilities; one column:
    a probability, threshold 0.5); ``y_true`` one-hot of the same shape or
    integer class ids.
    """
    if not isinstance(y_pred, tf.Tensor) and tf.nest.is_nested(y_pred):
        raise ValueError("Data sieving counts forgetting events of a single-output "
                         "classifier; the model returned several outputs.")
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if y_pred.shape.rank != 2:
        raise ValueError(f"Data sieving needs predictions of shape [batch, classes], got "
                         f"{y_pred.shape}.")
    if y_pred.shape[-1] == 1:
        label = tf.reshape(tf.cast(y_true, tf.float32) > 0.5, [-1])
        return tf.equal(tf.reshape(y_pred > 0.5, [-1]), label)
    predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
    if y_true.shape.rank == 2 and y_true.shape[-1] == y_pred.shape[-1]:
        label = tf.argmax(y_true, axis=-1, output_type=tf.int64)
    else:
        label = tf.reshape(tf.cast(y_true, tf.int64), [-1])
    return tf.equal(predicted, label)


class ForgettingTracker:
    """Per-sample last correctness and forgetting-event counts, updated in the step.

    Args:
        num_train: number of training samples (ids ``0 .. num_train-1``).
    """

    def __init__(self, num_train: int):
        self.num_train = int(num_train)
        self.last_correct = _host_variable(tf.zeros([self.num_train], tf.bool), tf.bool,
                                           "sieve_last_correct")
        self.forgets = _host_variable(tf.zeros([self.num_train], tf.int32), tf.int32,
                                      "sieve_forgets")

    def __call__(self, batch) -> None:
        ids = tf.reshape(tf.cast(batch.ids, tf.int64), [-1, 1])
        correct = batch_correct(batch.y_true, batch.y_pred)
        previous = tf.gather_nd(self.last_correct, ids)
        forgot = tf.cast(tf.logical_and(previous, tf.logical_not(correct)), tf.int32)
        self.forgets.scatter_nd_add(ids, forgot)
        self.last_correct.scatter_nd_update(ids, correct)

    def read(self):
        """``(last_correct bool, forgets int32)`` as numpy arrays (one read each)."""
        return self.last_correct.numpy().copy(), self.forgets.numpy().copy()

    def write(self, last_correct, forgets) -> None:
        self.last_correct.assign(np.asarray(last_correct, bool))
        self.forgets.assign(np.asarray(forgets, np.int32))

"""Repeated layers traced once per train-function trace.

Every growth step, freeze or hook change retraces the train step, and the
trace costs about 0.4 ms of TensorFlow Python per graph op. Keras'
normalization layers are op-heavy: a `BatchNormalization` in training mode is
about 36 forward and 40 gradient ops, 60% of a ResNet-20 train step's 2,366.
Most of them are repeats: the layers of a ResNet stage, or the LayerNorms of
a Transformer, have the same configuration and the same input shape.

`SharedLayerTraces(model)` routes the training-mode call of such layers
through one `tf.function` per (configuration, input shape, replica): the
first layer's call is traced once (Keras' own `call`, run by
`Layer.stateless_call` on this layer's variable values) and every equal
layer calls the same graph function with its own values, then assigns its
updated non-trainable values (BN moving statistics) as Keras would.
TensorFlow builds the gradient of a graph function once and inlines the
functions when it optimizes the train step, so the step computes what it
computed before. On a ResNet-20 step: 1,007 ops to trace instead of 2,366,
0.3 s less trace and 0.1 s more instantiation (the inlining) per retrace,
same step time (`benchmarks/growth_overhead.py`).

Same math, not the same graph: the inlined forward and gradient group a few
sums and products differently, so weights differ from Keras' own step by
float32 rounding (about 1e-7 after one SGD step on a ResNet-20).

Only exact instances of `SHARED_LAYER_TYPES` with at least one equal twin in
the model take part, and only when sharing cannot change what they compute:
float32 policy and inputs, no mask, `training=True` as a Python bool (for
layers whose call takes it), no rematerialization or quantization, not
synchronized across replicas, and trainable (a frozen layer runs in inference
mode and has no gradient to build). Everything else calls Keras' `call` as
usual, and so does every layer outside the controller's train-function trace
(`kgrow.controller.train_function.IteratorTrainFunction`; Keras' own train
function, used with XLA or `steps_per_execution > 1`, does not share).

Example:
    >>> import keras, numpy as np
    >>> from kgrow.controller import TrainingController
    >>> inp = keras.Input((4,))
    >>> x = inp
    >>> for i in range(3):
    ...     x = keras.layers.BatchNormalization(name=f"bn{i}")(keras.layers.Dense(4)(x))
    >>> model = keras.Model(inp, x); model.compile("sgd", "mse")
    >>> _ = TrainingController.of(model)
    >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 4)), epochs=1, verbose=0)
    >>> model.train_function.shared_traces.traced  # one trace for three layers
    1
"""
from __future__ import annotations

import contextlib
import json
import threading

import keras
import tensorflow as tf

from kgrow.controller._variables import all_layers

__all__ = ["SHARED_LAYER_TYPES", "SharedLayerTraces"]

# Op-heavy layers whose `call` reads and writes only their own variables.
SHARED_LAYER_TYPES = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                      keras.layers.GroupNormalization)

_inside = threading.local()  # set while a shared function runs Keras' own call


def _static_key(layer):
    config = layer.get_config()
    config.pop("name", None)
    return (type(layer), json.dumps(config, sort_keys=True, default=repr),
            tuple((tuple(v.shape), v.dtype, v.trainable) for v in layer.weights))


def _eligible(layer) -> bool:
    policy = layer.dtype_policy
    return (type(layer) in SHARED_LAYER_TYPES and layer.built and layer.trainable
            and "call" not in vars(layer)  # someone else's per-instance call
            and policy.quantization_mode is None
            and getattr(layer, "_remat_mode", None) is None
            and layer.compute_dtype == "float32" and layer.variable_dtype == "float32"
            and not getattr(layer, "synchronized", False))


class SharedLayerTraces:
    """Shares the training-mode trace of equal layers of `model` (module doc).

    Use `active()` around the code that traces the train step. Each
    `active()` block starts with no functions: a trace never reuses
    functions built for another model or architecture.

    Attributes:
        layers: the layers that take part (those with an equal twin).
        traced: graph functions built in the last `active()` block.
        calls: calls routed through them in that block.
    """

    def __init__(self, model):
        groups: dict = {}
        for layer in all_layers(model):
            if _eligible(layer):
                groups.setdefault(_static_key(layer), []).append(layer)
        twins = {key: group for key, group in groups.items() if len(group) > 1}
        self._keys = {id(layer): key for key, group in twins.items() for layer in group}
        self.layers = [layer for group in twins.values() for layer in group]
        self.traced = 0
        self.calls = 0
        self._functions: dict = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def active(self):
        """Within the block, the layers' calls in a tf.function trace are shared."""
        self._functions, self.traced, self.calls = {}, 0, 0
        patched = []
        try:
            for layer in self.layers:
                object.__setattr__(layer, "call", self._shared_call(layer))
                patched.append(layer)
            yield self
        finally:
            for layer in patched:
                object.__delattr__(layer, "call")
            self._functions = {}

    def _shared_call(self, layer):
        keras_call = type(layer).call.__get__(layer)

        def call(inputs, *args, **kwargs):
            # Keras passes `training` and `mask` only to calls that take them.
            training = kwargs.get("training", True)
            if (getattr(_inside, "value", False) or args or set(kwargs) - {"training", "mask"}
                    or kwargs.get("mask") is not None or training is not True
                    or not tf.inside_function() or not isinstance(inputs, tf.Tensor)
                    or inputs.dtype != tf.float32):
                return keras_call(inputs, *args, **kwargs)
            call_kwargs = {"training": True} if "training" in kwargs else {}
            function = self._function_for(layer, inputs, call_kwargs)
            # Values read here, in the replica's context, as Keras' call reads them.
            outputs, updated = function(
                inputs, [tf.convert_to_tensor(v) for v in layer.trainable_variables],
                [tf.convert_to_tensor(v) for v in layer.non_trainable_variables])
            for variable, value in zip(layer.non_trainable_variables, updated):
                variable.assign(value)
            return outputs

        return call

    def _function_for(self, layer, inputs, call_kwargs):
        # Per replica: a function traced under one replica's device scope
        # would place another replica's computation on that device.
        key = (self._keys[id(layer)], tuple(inputs.shape), tuple(call_kwargs),
               id(tf.distribute.get_replica_context()))
        with self._lock:
            function = self._functions.get(key)
            if function is None:
                function = self._functions[key] = tf.function(
                    _stateless_call(layer, call_kwargs), autograph=False)
                self.traced += 1
            self.calls += 1
        return function


def _stateless_call(template, call_kwargs):
    def run(inputs, trainable_values, non_trainable_values):
        _inside.value = True
        try:
            return template.stateless_call(trainable_values, non_trainable_values, inputs,
                                           **call_kwargs)
        finally:
            _inside.value = False

    return run

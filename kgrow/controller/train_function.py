"""The train function a controlled model runs, and what it costs to rebuild.

Every growth step, freeze or hook change needs a new train function, and
`fit` pays its trace and graph optimization in the first batch after the
change. This module keeps that cost down:

* `RetraceOnCall` is installed by `TrainingController.request_retrace()`:
  any number of changes between two batches cost one trace, done at the
  next batch;
* `IteratorTrainFunction` is Keras' train function for
  `steps_per_execution=1` as a single tf.function (Keras nests two);
* its trace builds equal normalization layers once
  (`kgrow.controller.shared_traces`);
* its graph gets a lean Grappler configuration on CPU-only hosts
  (`lean_call_options`).

The retrace cost of a growth step and where it goes are measured by
`benchmarks/growth_overhead.py`.

Example:
    >>> import keras, numpy as np
    >>> from kgrow.controller import TrainingController
    >>> inp = keras.Input((3,)); out = keras.layers.Dense(1)(inp)
    >>> model = keras.Model(inp, out); model.compile("sgd", "mse")
    >>> ctrl = TrainingController.of(model)
    >>> _ = model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=1, verbose=0)
    >>> type(model.train_function).__name__
    'IteratorTrainFunction'
"""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from kgrow.controller.shared_traces import SharedLayerTraces

try:  # TensorFlow internals for per-call graph options; without them TF's defaults apply
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context
except ImportError:  # another TensorFlow layout
    context = None

__all__ = ["RetraceOnCall", "IteratorTrainFunction", "make_train_function",
           "lean_call_options", "patch_multi_worker_build"]


class RetraceOnCall:
    """Stand-in for `model.train_function`: traces the real one on first call.

    Keras' `fit` calls `model.train_function(iterator)` for every batch and
    only builds it once per `fit`; this object lets any number of changes
    between two batches cost a single retrace.
    """

    def __init__(self, controller):
        self._controller = controller

    def __call__(self, *args, **kwargs):
        controller = self._controller
        model = controller.model
        # An optimizer first built inside the trace creates variables there,
        # and tf.function then traces the whole step a second time.
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not getattr(optimizer, "built", True):
            controller.component("optimizer").install(optimizer)
        controller.retrace_now()
        return model.train_function(*args, **kwargs)


def _keras_reduce_per_replica():
    try:
        from keras.src.backend.tensorflow.trainer import reduce_per_replica
    except ImportError:  # another Keras layout: keep Keras' own train function
        return None
    return reduce_per_replica


def lean_call_options():
    """Call options for the train function's graph, or None to keep TF's.

    TensorFlow optimizes a function graph when it is first called, and every
    growth step, freeze or hook change pays that again. On CPU-only device
    sets, and only for settings the user left at their defaults, this keeps
    the Grappler passes that can pay for themselves in a train step (pruning,
    common-subexpression elimination, the remapper's fused kernels, function
    inlining, loop and dependency optimization; constant folding and the
    arithmetic optimizer, whose rewrites change float rounding: without
    constant folding an RMSprop step no longer matches Keras' own to 1e-6)
    in one round instead of two, and drops:

    * the second round: it only removed duplicate constants;
    * the memory optimizer: it acts on GPU graphs or nodes marked for
      recomputation only;
    * the layout optimizer: it converts layouts for GPUs (or on CPU only when
      `cpu_layout_conversion` asks for it, which keeps it on);
    * the MLIR (TFG) pass, which here only re-sorts the graph and re-infers
      its shapes (30 ms for a ResNet-20 train step).

    Together about 0.3 s less per retrace of a ResNet-20 train step than
    TensorFlow's defaults, whose step time stays the same
    (`benchmarks/growth_overhead.py`). Hosts with a GPU or TPU keep
    TensorFlow's defaults.
    """
    if context is None:
        return None
    if any(device.device_type != "CPU" for device in tf.config.list_logical_devices()):
        return None
    current = context.context().function_call_options
    config = config_pb2.ConfigProto()
    if current.config_proto_serialized:
        config.ParseFromString(current.config_proto_serialized)
    rewrite = config.graph_options.rewrite_options
    rewriter = rewriter_config_pb2.RewriterConfig
    if rewrite.meta_optimizer_iterations == rewriter.DEFAULT_NUM_ITERS:
        rewrite.meta_optimizer_iterations = rewriter.ONE
    if rewrite.memory_optimization == rewriter.DEFAULT_MEM_OPT:
        rewrite.memory_optimization = rewriter.NO_MEM_OPT
    if (rewrite.cpu_layout_conversion == rewriter.NO_CONVERSION_ON_CPU
            and rewrite.layout_optimizer == rewriter.DEFAULT):
        rewrite.layout_optimizer = rewriter.OFF
    rewrite.disable_tfg_optimizer = True
    return context.FunctionCallOptions(executor_type=current.executor_type,
                                       config_proto=config)


@contextlib.contextmanager
def _call_options(options):
    if options is None:
        yield
        return
    ctx = context.context()
    previous = ctx.function_call_options
    ctx.function_call_options = options
    try:
        yield
    finally:
        ctx.function_call_options = previous


class IteratorTrainFunction:
    """Keras' train function for `steps_per_execution=1`, as one tf.function.

    Keras wraps its step (a tf.function) in a second tf.function that reads
    the iterator; building and instantiating the nested pair costs about 0.5 s
    more per trace than one function doing both, and each growth step pays a
    trace. Same computation: next batch, `strategy.run(train_step)`, logs
    reduced over replicas; the end of the data raises OutOfRangeError, which
    `fit` treats as the end of the epoch, as with Keras' function. Anything
    but a tf.data/distributed iterator (e.g. `train_on_batch`'s generator)
    goes to Keras' own function.

    Attributes:
        shared_traces: the `SharedLayerTraces` its trace uses, or None.
    """

    def __init__(self, model, keras_function, reduce_per_replica, share_traces=True):
        self._keras_function = keras_function
        strategy, step = model.distribute_strategy, model.train_step
        self.shared_traces = SharedLayerTraces(model) if share_traces else None
        sharing = self.shared_traces.active if share_traces else contextlib.nullcontext

        @tf.autograph.experimental.do_not_convert
        def one_step_on_iterator(iterator):
            data = keras.tree.map_structure(
                lambda x: None if isinstance(x, tf.experimental.Optional) else x,
                iterator.get_next())
            with sharing():
                outputs = strategy.run(step, args=(data,))
            return reduce_per_replica(outputs, strategy, reduction="auto")

        self._function = tf.function(one_step_on_iterator, reduce_retracing=True)
        # Built once: TF instantiates a function once per distinct options.
        self.call_options = lean_call_options()

    def __call__(self, iterator):
        if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            with _call_options(self.call_options):
                return self._function(iterator)
        return self._keras_function(iterator)


def _first_replica_build(model, iterator=None, data_batch=None):
    strategy = model._distribute_strategy
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = keras.tree.map_structure(
                lambda v: (strategy.experimental_local_results(v)[0]
                           if isinstance(v, tf.distribute.DistributedValues) else v),
                next(it))
            break
    with strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def patch_multi_worker_build() -> bool:
    """Lets Keras' `fit`/`evaluate`/`predict` run under MultiWorkerMirroredStrategy.

    Keras 3 (3.15) fails there twice, with or without kgrow:

    * before the first batch it builds the model from a batch it reduces
      with `strategy.reduce("MEAN", (x, y), axis=None)`, and the collective
      strategy cannot reduce a tuple ("Attempt to convert a value
      (PerReplica...)"). The build needs only shapes and dtypes, which any
      replica's batch has: this takes the first local replica's batch;
    * it reduces each step's logs with `strategy.reduce("MEAN", v, axis=0)`,
      and a scalar loss or metric has no axis 0 ("Invalid reduction
      dimension 0"). For scalars this takes the mean over replicas
      (`axis=None`), which is what one machine's MirroredStrategy computes.

    Everything else runs Keras' own code. Idempotent; returns whether Keras
    had the patched functions.
    """
    try:
        from keras.src.backend.tensorflow import trainer as keras_trainer
    except ImportError:  # another Keras layout: nothing to patch
        return False
    trainer_class = keras_trainer.TensorFlowTrainer
    original_build = trainer_class._maybe_symbolic_build
    original_reduce = keras_trainer.reduce_per_replica
    if getattr(original_build, "_kgrow_patched", False):
        return True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return _first_replica_build(self, iterator=iterator, data_batch=data_batch)
        return original_build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and reduction in ("auto", "mean")):
            def scalar_mean(v):
                # With one device per worker the step's outputs are plain tensors.
                if tf.is_tensor(v) or isinstance(v, tf.distribute.DistributedValues):
                    if all(t.shape.rank == 0 for t in strategy.experimental_local_results(v)):
                        return strategy.reduce("MEAN", v, axis=None)
                return original_reduce(v, strategy, reduction)
            return keras.tree.map_structure(scalar_mean, values)
        return original_reduce(values, strategy, reduction)

    _maybe_symbolic_build._kgrow_patched = True
    trainer_class._maybe_symbolic_build = _maybe_symbolic_build
    keras_trainer.reduce_per_replica = reduce_per_replica
    return True


patch_multi_worker_build()


def make_train_function(model, share_traces: bool = True) -> None:
    """Installs a new train function on `model` (traced at its first call).

    With `share_traces`, equal normalization layers are traced once
    (`kgrow.controller.shared_traces`).
    """
    model.make_train_function(force=True)
    reduce_per_replica = _keras_reduce_per_replica()
    if (reduce_per_replica is None or model.steps_per_execution != 1 or model.run_eagerly
            or model.jit_compile):
        return  # Keras' own: XLA and multi-step execution need its nesting
    object.__setattr__(model, "train_function",
                       IteratorTrainFunction(model, model.train_function, reduce_per_replica,
                                             share_traces=share_traces))

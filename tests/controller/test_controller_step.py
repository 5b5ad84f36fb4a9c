"""The controller's train step: same updates as Keras' own, cheaper to trace
(`kgrow.controller.updates`)."""
import collections
import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.controller import TrainingController
from kgrow.training import WarmupCosine


class _CountingSchedule(WarmupCosine):
    """WarmupCosine that records the graph each time its ops are built."""

    graphs = []

    def __call__(self, step):
        if not tf.executing_eagerly():
            type(self).graphs.append(id(tf.compat.v1.get_default_graph()))
        return super().__call__(step)


def _model(seed=0):
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="a")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="b")(h)
    out = keras.layers.Dense(3, kernel_initializer=init, name="out")(h)
    return keras.Model(inp, out)


def _loss():
    # The models output logits; with probabilities expected the loss is NaN
    # from the first step and every comparison below would pass vacuously.
    return keras.losses.CategoricalCrossentropy(from_logits=True)


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 6)).astype("float32"),
            keras.utils.to_categorical(rng.integers(0, 3, 64), 3).astype("float32"))


class _MySGD(keras.optimizers.SGD):
    """A subclass may change the update: it keeps its own `update_step`."""

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient * 0.5, variable, learning_rate)


def _adamw_without_bias_decay(lr):
    optimizer = keras.optimizers.AdamW(lr, weight_decay=1e-2)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


_OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, weight_decay=1e-2),
    "sgd_plain": lambda lr: keras.optimizers.SGD(lr),
    "sgd_nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.8, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr, weight_decay=1e-2),
    "adamw_no_bias_decay": _adamw_without_bias_decay,
    "amsgrad": lambda lr: keras.optimizers.Adam(lr, amsgrad=True),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr, momentum=0.5),
    "sgd_subclass": lambda lr: _MySGD(lr, momentum=0.9, name="my_sgd"),
}
# The fused kernel each optimizer's update should trace into, one per weight
# (None: Keras' own ops).
_FUSED_UPDATE = {"sgd": "ResourceApplyKerasMomentum", "sgd_plain": "ResourceApplyGradientDescent",
                 "sgd_nesterov": "ResourceApplyKerasMomentum"}
_DECAY_KERNEL = "ResourceApplyGradientDescent"


def _expected_kernels(kind, model) -> collections.Counter:
    """Fused kernels the controller's update should trace into, with counts."""
    weights, optimizer = model.trainable_weights, model.optimizer
    expected = collections.Counter()
    if kind in _FUSED_UPDATE:
        expected[_FUSED_UPDATE[kind]] += len(weights)
    if optimizer.weight_decay:  # one decay kernel per decayed weight
        expected[_DECAY_KERNEL] += sum(optimizer._use_weight_decay(w) for w in weights)
    return expected


def _optimizer(kind, schedule):
    return _OPTIMIZERS[kind](schedule)


def _train(controlled, kind, strategy=None, schedule_cls=WarmupCosine, epochs=3):
    x, y = _data()
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        model = _model()
        model.compile(_optimizer(kind, schedule_cls(0.1, total_steps=40, warmup_steps=5)),
                      _loss())
    if controlled:
        TrainingController.of(model)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


def _assert_same_state(plain, controlled):
    assert all(np.isfinite(v.numpy()).all() for v in plain.weights + plain.optimizer.variables)
    for a, b in zip(plain.weights, controlled.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    # Slots too: the fused kernels update momenta and moments in place.
    assert len(plain.optimizer.variables) == len(controlled.optimizer.variables)
    for a, b in zip(plain.optimizer.variables, controlled.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


def _traced_graph(model):
    function = model.train_function._function
    return function.get_concrete_function(
        *function._list_all_concrete_functions()[0].structured_input_signature[0]).graph


def _traced_op_types(model):
    return {op.type for op in _traced_graph(model).get_operations()}


@pytest.mark.parametrize("kind", sorted(_OPTIMIZERS))
def test_controller_step_matches_keras_step(kind):
    plain, controlled = _train(False, kind), _train(True, kind)
    _assert_same_state(plain, controlled)
    assert int(plain.optimizer.iterations) == int(controlled.optimizer.iterations) == 12
    # The update really is the fused kernel where one applies (SGD), and
    # Keras' own ops (other optimizers, subclasses) everywhere else; weight
    # decay is one kernel per decayed weight.
    fused = collections.Counter(op.type for op in _traced_graph(controlled).get_operations()
                                if op.type.startswith("ResourceApply"))
    assert fused == _expected_kernels(kind, controlled)
    if kind == "adamw_no_bias_decay":
        assert fused[_DECAY_KERNEL] == 5  # 3 Dense kernels, BatchNorm gamma and beta
    for name in ("update_step", "_get_current_learning_rate", "_apply_weight_decay",
                 "_all_reduce_sum_gradients"):
        assert name not in vars(controlled.optimizer)  # patches removed after the step


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_controller_step_matches_keras_step_under_mirrored_strategy(mirrored_strategy, kind):
    plain = _train(False, kind, mirrored_strategy)
    controlled = _train(True, kind, mirrored_strategy)
    _assert_same_state(plain, controlled)


@pytest.mark.parametrize("strategy", [None, "mirrored"])
def test_retrace_releases_the_previous_train_step_graph(strategy, mirrored_strategy):
    # Keras sums gradients over replicas through a differentiable all-reduce
    # whose gradient function, registered process-wide, holds the graph: each
    # growth step or freeze would keep a whole train-step graph alive.
    strategy = mirrored_strategy if strategy else None
    model = _train(True, "sgd", strategy, epochs=1)
    old_graph = weakref.ref(_traced_graph(model))
    TrainingController.of(model).retrace_now()
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    new_graph = _traced_graph(model)
    gc.collect()
    assert old_graph() is None and new_graph is not None


def test_sparse_gradients_keep_keras_update():
    # An Embedding's gradient is an IndexedSlices: no fused dense kernel for it.
    def build():
        inp = keras.Input((4,), dtype="int32")
        h = keras.layers.Embedding(20, 5, embeddings_initializer=keras.initializers.RandomNormal(
            seed=1), name="emb")(inp)
        out = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=2),
                                 name="out")(keras.layers.Flatten()(h))
        model = keras.Model(inp, out)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), _loss())
        return model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (32, 4)).astype("int32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 32), 3)
    plain, controlled = build(), build()
    TrainingController.of(controlled)
    for model in (plain, controlled):
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    _assert_same_state(plain, controlled)
    assert "ResourceApplyKerasMomentum" in _traced_op_types(controlled)  # the Dense weights


def test_learning_rate_schedule_is_built_once_per_trace():
    # Keras reads the learning rate once more per decayed weight; the
    # controller's step builds the schedule's ops once per traced step.
    _CountingSchedule.graphs = []
    _train(False, "sgd", schedule_cls=_CountingSchedule, epochs=1)
    plain = list(_CountingSchedule.graphs)
    _CountingSchedule.graphs = []
    model = _train(True, "sgd", schedule_cls=_CountingSchedule, epochs=1)
    controlled = list(_CountingSchedule.graphs)
    assert controlled and len(controlled) == len(set(controlled))
    assert len(plain) > len(set(plain)) * len(model.trainable_weights)
    # The patch is gone after the step: eager reads still follow the schedule.
    assert "_get_current_learning_rate" not in vars(model.optimizer)
    lr = float(model.optimizer.learning_rate)
    assert lr == pytest.approx(float(model.optimizer._learning_rate(model.optimizer.iterations)))


def test_train_on_batch_and_fit_agree_on_a_controlled_model():
    # fit reads a tf.data iterator (kgrow's one-function path); train_on_batch
    # hands the train function a Python generator (Keras' own path).
    x, y = _data()
    models = []
    for use_fit in (True, False):
        model = _model()
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), _loss())
        TrainingController.of(model)
        if use_fit:
            model.fit(x[:32], y[:32], batch_size=16, epochs=1, shuffle=False, verbose=0)
        else:
            for i in (0, 16):
                model.train_on_batch(x[i:i + 16], y[i:i + 16])
        models.append(model)
    for a, b in zip(*(m.weights for m in models)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


def test_train_function_runs_with_lean_graph_options_and_restores_them():
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    from kgrow.controller.train_function import lean_call_options

    rewriter = rewriter_config_pb2.RewriterConfig

    def rewrite_options(options):
        config = config_pb2.ConfigProto()
        config.ParseFromString(options.config_proto_serialized)
        return config.graph_options.rewrite_options

    before = context.context().function_call_options.config_proto_serialized
    lean = rewrite_options(lean_call_options())  # this host has CPUs only
    assert lean.meta_optimizer_iterations == rewriter.ONE
    assert lean.memory_optimization == rewriter.NO_MEM_OPT
    assert lean.layout_optimizer == rewriter.OFF
    # Fused kernels stay; so do rewrites that change rounding.
    assert (lean.remapping == lean.arithmetic_optimization == lean.constant_folding
            == lean.loop_optimization == rewriter.DEFAULT)
    assert lean.disable_tfg_optimizer

    model = _train(True, "sgd", epochs=1)
    seen = []
    function = model.train_function._function
    model.train_function._function = lambda iterator: (
        seen.append(rewrite_options(context.context().function_call_options)),
        function(iterator))[1]
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert seen and all(s.meta_optimizer_iterations == rewriter.ONE for s in seen)
    # Only the train function's calls: the thread's options are back afterwards.
    assert context.context().function_call_options.config_proto_serialized == before

    # Settings a user chose are kept.
    options = context.context().function_call_options
    config = config_pb2.ConfigProto()
    config.ParseFromString(options.config_proto_serialized)
    config.graph_options.rewrite_options.meta_optimizer_iterations = rewriter.TWO
    config.graph_options.rewrite_options.cpu_layout_conversion = rewriter.NCHW_TO_NHWC
    context.context().function_call_options = context.FunctionCallOptions(config_proto=config)
    try:
        kept = rewrite_options(lean_call_options())
        assert kept.meta_optimizer_iterations == rewriter.TWO
        assert kept.layout_optimizer == rewriter.DEFAULT  # CPU layout conversion asked for
        assert kept.disable_tfg_optimizer
    finally:
        context.context().function_call_options = options

"""The controller's train step: same updates as Keras' own, cheaper to trace
(`kgrow.controller.updates`)."""
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


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 6)).astype("float32"),
            keras.utils.to_categorical(rng.integers(0, 3, 64), 3).astype("float32"))


class _MySGD(keras.optimizers.SGD):
    """A subclass may change the update: it keeps its own `update_step`."""

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient * 0.5, variable, learning_rate)


_OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, weight_decay=1e-2),
    "sgd_plain": lambda lr: keras.optimizers.SGD(lr),
    "sgd_nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.8, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr, weight_decay=1e-2),
    "amsgrad": lambda lr: keras.optimizers.Adam(lr, amsgrad=True),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr, momentum=0.5),
    "sgd_subclass": lambda lr: _MySGD(lr, momentum=0.9, name="my_sgd"),
}
# The fused kernel each optimizer's update should trace into (None: Keras' own ops).
_FUSED_OP = {"sgd": "ResourceApplyKerasMomentum", "sgd_plain": "ResourceApplyGradientDescent",
             "sgd_nesterov": "ResourceApplyKerasMomentum", "adam": None, "adamw": None,
             "amsgrad": None, "rmsprop": None, "sgd_subclass": None}


def _optimizer(kind, schedule):
    return _OPTIMIZERS[kind](schedule)


def _train(controlled, kind, strategy=None, schedule_cls=WarmupCosine, epochs=3):
    x, y = _data()
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        model = _model()
        model.compile(_optimizer(kind, schedule_cls(0.1, total_steps=40, warmup_steps=5)),
                      "categorical_crossentropy")
    if controlled:
        TrainingController.of(model)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


def _assert_same_state(plain, controlled):
    for a, b in zip(plain.weights, controlled.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    # Slots too: the fused kernels update momenta and moments in place.
    assert len(plain.optimizer.variables) == len(controlled.optimizer.variables)
    for a, b in zip(plain.optimizer.variables, controlled.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


def _traced_op_types(model):
    function = model.train_function._function
    graph = function.get_concrete_function(
        *function._list_all_concrete_functions()[0].structured_input_signature[0]).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("kind", sorted(_OPTIMIZERS))
def test_controller_step_matches_keras_step(kind):
    plain, controlled = _train(False, kind), _train(True, kind)
    _assert_same_state(plain, controlled)
    assert int(plain.optimizer.iterations) == int(controlled.optimizer.iterations) == 12
    # The update really is the fused kernel where one applies (SGD), and
    # Keras' own ops (other optimizers, subclasses) everywhere else.
    ops = _traced_op_types(controlled)
    fused = {op for op in ops if op.startswith("ResourceApply")}
    assert fused == ({_FUSED_OP[kind]} if _FUSED_OP[kind] else set())
    for name in ("update_step", "_get_current_learning_rate"):
        assert name not in vars(controlled.optimizer)  # patches removed after the step


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_controller_step_matches_keras_step_under_mirrored_strategy(mirrored_strategy, kind):
    plain = _train(False, kind, mirrored_strategy)
    controlled = _train(True, kind, mirrored_strategy)
    _assert_same_state(plain, controlled)


def test_sparse_gradients_keep_keras_update():
    # An Embedding's gradient is an IndexedSlices: no fused dense kernel for it.
    def build():
        inp = keras.Input((4,), dtype="int32")
        h = keras.layers.Embedding(20, 5, embeddings_initializer=keras.initializers.RandomNormal(
            seed=1), name="emb")(inp)
        out = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=2),
                                 name="out")(keras.layers.Flatten()(h))
        model = keras.Model(inp, out)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy")
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
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy")
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
    context.context().function_call_options = context.FunctionCallOptions(config_proto=config)
    try:
        assert rewrite_options(lean_call_options()).meta_optimizer_iterations == rewriter.TWO
    finally:
        context.context().function_call_options = options

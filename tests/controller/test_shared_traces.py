"""Equal normalization layers traced once per train-function trace
(`kgrow.controller.shared_traces`)."""
import keras
import numpy as np
import pytest

from kgrow.controller import TrainingController
from kgrow.controller.shared_traces import SharedLayerTraces


def _model(seed=0, norm=keras.layers.BatchNormalization, twins=3):
    """`twins` equal Dense+norm blocks, then a wider block whose norm has no twin."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, kernel_initializer=init, name="stem")(inp)
    for i in range(twins):
        h = keras.layers.Dense(8, activation="relu", kernel_initializer=init, name=f"d{i}")(h)
        h = norm(name=f"n{i}")(h)
    h = keras.layers.Dense(12, kernel_initializer=init, name="wide")(h)
    h = norm(name="n_wide")(h)
    out = keras.layers.Dense(3, kernel_initializer=init, name="out")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.CategoricalCrossentropy(from_logits=True))
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    # Shifted and scaled inputs: BN statistics move far from their initial values.
    return ((3.0 + 2.0 * rng.normal(size=(n, 6))).astype("float32"),
            keras.utils.to_categorical(rng.integers(0, 3, n), 3).astype("float32"))


def _train(model, steps=3, controlled=True, share=True):
    if controlled:
        controller = TrainingController.of(model)
        controller.share_layer_traces = share
    x, y = _data()
    model.fit(x[:16 * steps], y[:16 * steps], batch_size=16, epochs=1, shuffle=False,
              verbose=0)
    return {v.path: v.numpy() for v in model.weights}


def _train_graph_ops(model):
    function = model.train_function._function
    return sum(len(f.graph.get_operations())
               for f in function._list_all_concrete_functions())


@pytest.mark.parametrize("norm", [keras.layers.BatchNormalization,
                                  keras.layers.LayerNormalization])
def test_twins_share_one_function_and_train_as_keras_does(norm):
    keras_weights = _train(_model(norm=norm), controlled=False)
    shared_model = _model(norm=norm)
    shared = _train(shared_model)
    traces = shared_model.train_function.shared_traces
    assert sorted(layer.name for layer in traces.layers) == ["n0", "n1", "n2"]
    assert (traces.traced, traces.calls) == (1, 3)
    for path, value in keras_weights.items():
        # Same math; the inlined functions group a few sums differently.
        np.testing.assert_allclose(shared[path], value, atol=1e-5, rtol=1e-5, err_msg=path)
    if norm is keras.layers.BatchNormalization:
        for i in range(3):  # the moving statistics were really updated by the shared calls
            assert not np.allclose(shared[f"n{i}/moving_mean"], 0.0, atol=1e-3)
            assert not np.allclose(shared[f"n{i}/moving_variance"], 1.0, atol=1e-3)


def test_sharing_traces_fewer_ops_and_leaves_no_patch_behind():
    plain_model, shared_model = _model(twins=6), _model(twins=6)
    _train(plain_model, steps=1, share=False)
    _train(shared_model, steps=1)
    assert plain_model.train_function.shared_traces is None
    assert _train_graph_ops(shared_model) < 0.8 * _train_graph_ops(plain_model)
    for layer in shared_model.train_function.shared_traces.layers:
        assert "call" not in vars(layer)  # Keras' own call outside the trace


def test_sharing_is_off_for_layers_whose_result_could_change():
    class MyBN(keras.layers.BatchNormalization):  # may override call
        pass

    inp = keras.Input((4,))
    h = inp
    frozen = []
    for i in range(2):
        h = keras.layers.BatchNormalization(name=f"frozen{i}")(h)
        frozen.append(h)
    for i in range(2):
        h = MyBN(name=f"sub{i}")(h)
    for i in range(2):
        h = keras.layers.BatchNormalization(synchronized=True, name=f"sync{i}")(h)
    for i in range(2):
        h = keras.layers.BatchNormalization(dtype="mixed_float16", name=f"mixed{i}")(h)
    for i in range(2):
        h = keras.layers.BatchNormalization(name=f"plain{i}")(h)
    model = keras.Model(inp, h)
    for i in range(2):
        model.get_layer(f"frozen{i}").trainable = False
    assert sorted(layer.name for layer in SharedLayerTraces(model).layers) == ["plain0",
                                                                               "plain1"]


def test_frozen_twins_keep_their_weights():
    model = _model()
    for name in ("n0", "n1", "n2"):
        model.get_layer(name).trainable = False
    before = {v.path: v.numpy() for v in model.weights}
    after = _train(model)
    assert model.train_function.shared_traces.layers == []
    for name in ("n0", "n1", "n2"):
        for var in ("gamma", "beta", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(after[f"{name}/{var}"], before[f"{name}/{var}"])


def test_sharing_under_mirrored_strategy_matches_unshared(mirrored_strategy):
    results, traces = [], None
    for share in (True, False):
        with mirrored_strategy.scope():
            model = _model()
        results.append(_train(model, share=share))
        if share:
            traces = model.train_function.shared_traces
    # One function per replica: each is traced under its replica's device.
    assert (traces.traced, traces.calls) == (2, 6)
    for path, value in results[1].items():
        np.testing.assert_allclose(results[0][path], value, atol=1e-5, rtol=1e-5,
                                   err_msg=path)


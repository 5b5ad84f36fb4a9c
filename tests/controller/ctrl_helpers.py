"""Test-local growth and models for the controller tests (no kgrow.surgery.width needed)."""
import keras
import numpy as np

from kgrow.surgery import GrowthResult, TransferPlan, VariableTransfer, copy_layer, rebuild


def make_mlp(units=4, inputs=3, outputs=2, seed=0):
    """Input -> Dense(units, relu, 'hidden') -> Dense(outputs, 'out')."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input((inputs,), name="x")
    h = keras.layers.Dense(units, activation="tanh", name="hidden", kernel_initializer=init)(inp)
    out = keras.layers.Dense(outputs, name="out", kernel_initializer=init)(h)
    return keras.Model(inp, out, name="mlp")


def widen_hidden(model, new_units, scope=None, seed=1):
    """Widens layer 'hidden' to `new_units` (new units: random fan-in, zero fan-out).

    Returns a GrowthResult whose plan maps the old units to the first
    positions and marks the rest new (-1).
    """
    old_units = model.get_layer("hidden").units
    if scope is None:
        import contextlib
        scope = contextlib.nullcontext()

    def op_fn(op):
        if op.name == "hidden":
            return copy_layer(op, units=new_units,
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
        if op.name == "out":
            return copy_layer(op)
        return op

    with scope:
        new_model = rebuild(model, operation_fn=op_fn)
    idx = np.concatenate([np.arange(old_units), -np.ones(new_units - old_units, dtype=int)])
    plan = TransferPlan({
        "hidden/kernel": VariableTransfer("hidden/kernel", (None, idx)),
        "hidden/bias": VariableTransfer("hidden/bias", (idx,)),
        "out/kernel": VariableTransfer("out/kernel", (idx, None)),
        "out/bias": VariableTransfer("out/bias", (None,)),
    })
    old_values = {v.path: v.numpy() for v in model.weights}
    plan.apply(old_values, new_model.weights, fill=None)
    kernel = new_model.get_layer("out").kernel
    value = kernel.numpy()
    value[old_units:] = 0.0
    kernel.assign(value)
    return GrowthResult(new_model, plan, {"hidden": [old_units, new_units]})


def regression_data(n=32, inputs=3, outputs=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    w = rng.normal(size=(inputs, outputs)).astype("float32")
    y = np.tanh(x @ w).astype("float32")
    return x, y


def mirrored_strategy():
    """A MirroredStrategy on the 2 logical CPUs (see testing_helpers)."""
    from testing_helpers import new_mirrored_strategy
    return new_mirrored_strategy()

"""Which rescaling rule keeps the function and the activation variance (prints numbers).

For an MLP, a CNN and a ResNet-8 (fan-in init, BatchNorm statistics perturbed),
grows every channel group 2x with the engine's pairs and with
`PairedVarianceTransfer` under each rule, and prints the max output difference
and the range over layers of the mean per-unit activation variance after/before
(random inputs). `post-act` leaves out conv outputs that feed a BatchNorm.

    PYTHONPATH=. python benchmarks/variance_transfer_rules.py
"""
import numpy as np, keras
from kgrow import models
from kgrow.surgery import scale_width
from kgrow.growth import VarianceTransfer
from kgrow.methods.variance_transfer import PairedVarianceTransfer, fan_in_initialize

def mlp():
    inp = keras.Input((32,)); h = inp
    for i in range(3): h = keras.layers.Dense(32, activation="relu", name=f"h{i}")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(h))
def cnn():
    inp = keras.Input((12,12,3)); h = inp
    for i in range(2): h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"c{i}")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(h))
def resnet():
    return models.resnet_cifar(8, (12,12,3), 10, width=0.5, classifier_activation=None)

ACT = (keras.layers.Activation, keras.layers.ReLU, keras.layers.Add, keras.layers.BatchNormalization, keras.layers.GlobalAveragePooling2D, keras.layers.Dense, keras.layers.Conv2D)
def variances(m, x, types):
    layers = [l for l in m.layers if isinstance(l, types)]
    probe = keras.Model(m.inputs, [l.output for l in layers])
    return {l.name: float(np.mean(np.var(np.reshape(np.asarray(o), (-1, np.shape(o)[-1])), axis=0))) for l, o in zip(layers, probe(x, training=False))}

rng = np.random.default_rng(0)
for build, shape in ((mlp,(256,32)),(cnn,(64,12,12,3)),(resnet,(64,12,12,3))):
    for label, init in (("engine none", VarianceTransfer()), ("engine sqrt", VarianceTransfer("sqrt")),
                        ("paired none", PairedVarianceTransfer(None)), ("paired linear", PairedVarianceTransfer("linear")), ("paired sqrt", PairedVarianceTransfer("sqrt"))):
        keras.utils.set_random_seed(0)
        m = build(); fan_in_initialize(m)
        # trained-like BN statistics
        for v in m.weights:
            if "moving_variance" in v.path: v.assign(rng.uniform(0.5, 1.5, v.shape))
            if "gamma" in v.path: v.assign(rng.uniform(0.5, 1.5, v.shape))
        x = rng.normal(size=shape).astype("float32")
        r = scale_width(m, 2.0, initializer=init)
        d = float(np.abs(r.model(x, training=False) - m(x, training=False)).max())
        vb, va = variances(m, x, ACT), variances(r.model, x, ACT)
        ratios = {k: va[k]/vb[k] for k in vb}
        post = {k: v for k, v in ratios.items() if not isinstance(m.get_layer(k), keras.layers.Conv2D) or m.get_layer(k).activation is not keras.activations.linear}
        print(build.__name__, label, "exact" if r.info["exact"] else "NOT", f"maxdiff {d:.2e}", "post-act ratio [%.3f, %.3f]" % (min(post.values()), max(post.values())), "all [%.3f, %.3f]" % (min(ratios.values()), max(ratios.values())))

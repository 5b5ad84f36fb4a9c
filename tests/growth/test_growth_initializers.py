"""Growth initializers on arrays, their exactness claims, and their effect on small models."""
import keras
import numpy as np
import pytest

from kgrow.growth import (GrowthInitializer, GrowthRequest, GrowthValues, Net2Net, Orthogonal,
                          Random, VarianceTransfer, WeightSlices, Zeros, available_initializers,
                          get_initializer, orthogonal_filters, register_initializer)
from kgrow.surgery.channels import ChannelGroup
from kgrow.surgery.width import scale_width

from testing_helpers import randomize_weights as _randomize  # noqa: E402

L = keras.layers


def _request(n_old=4, n_new=4, blocks=1, fan_p=(6,), fan_c=(5,), carriers=(), seed=0,
             group=None):
    rng = np.random.default_rng(seed)
    producers = [WeightSlices(rng.normal(size=(n_old, f)), fan_in=f) for f in fan_p]
    consumers = [WeightSlices(rng.normal(size=(n_old, f)), fan_in=3 * f) for f in fan_c]
    carr = [WeightSlices(rng.normal(size=(n_old, 1)) + 2.0, fan_in=1, kind=k, fill=fill)
            for k, fill in carriers]
    return GrowthRequest(group or ChannelGroup("g", n_old), n_old, n_new, blocks, producers,
                         consumers, carr, rng)


# -- registry -----------------------------------------------------------------

def test_registry_names_and_errors():
    assert available_initializers() == ["net2net", "orthogonal", "random",
                                        "variance_transfer", "zeros"]
    assert isinstance(get_initializer("net2net", noise=0.1), Net2Net)
    inst = Zeros()
    assert get_initializer(inst) is inst
    with pytest.raises(ValueError, match="Unknown growth initializer 'zero'.*'zeros'"):
        get_initializer("zero")
    with pytest.raises(ValueError, match="options can only be passed with an initializer name"):
        get_initializer(inst, noise=1.0)
    with pytest.raises(TypeError, match="name or a GrowthInitializer"):
        get_initializer(3)
    with pytest.raises(ValueError, match="already registered"):
        register_initializer("zeros", Zeros)
    with pytest.raises(ValueError, match="rescale"):
        VarianceTransfer(rescale="cube")
    with pytest.raises(ValueError, match="noise"):
        Net2Net(noise=-1)


def test_a_registered_custom_initializer_is_used_by_scale_width(monkeypatch):
    # A registry of this test's own: the name must not leak into tests that
    # list the built-in initializers (xdist may run them later in this process).
    import kgrow.growth.base as growth_base
    monkeypatch.setattr(growth_base, "_REGISTRY", dict(growth_base._REGISTRY))

    class Ones(GrowthInitializer):
        name = "test_ones"

        def grow(self, request):
            k = request.n_new
            return GrowthValues([np.ones((k, s.fan)) for s in request.producers],
                                [np.zeros((k, s.fan)) for s in request.consumers],
                                self.carrier_values(request))

        def check(self, group, old_size=None, new_size=None):
            return None

    register_initializer("test_ones", Ones, override=True)
    x = keras.Input((3,), name="x")
    model = keras.Model(x, L.Dense(2, name="o")(L.Dense(2, name="h")(x)))
    r = scale_width(model, {"h": 4}, initializer="test_ones")
    kernel = r.model.get_layer("h").kernel.numpy()
    np.testing.assert_array_equal(kernel[:, 2:], np.ones((3, 2)))
    np.testing.assert_array_equal(kernel[:, :2], model.get_layer("h").kernel.numpy())


# -- array-level behaviour ----------------------------------------------------

def test_zeros_random_fan_in_zero_fan_out_default_carriers():
    req = _request(n_old=3, n_new=400, fan_p=(50,), carriers=[("gamma", 1.0), ("beta", 0.0)])
    v = Zeros().grow(req)
    assert v.producers[0].shape == (400, 50) and v.consumers[0].shape == (400, 5)
    assert np.all(v.consumers[0] == 0)
    assert v.producers[0].std() == pytest.approx(np.sqrt(2 / 50), rel=0.05)  # He normal
    np.testing.assert_array_equal(v.carriers[0], np.ones((400, 1)))
    np.testing.assert_array_equal(v.carriers[1], np.zeros((400, 1)))


def test_random_has_nonzero_fan_out_with_he_scale():
    v = Random().grow(_request(n_old=3, n_new=500, fan_c=(40,)))
    assert v.consumers[0].std() == pytest.approx(np.sqrt(2 / 120), rel=0.05)  # consumer fan-in


def test_net2net_copies_and_splits_fan_out():
    req = _request(n_old=4, n_new=6, carriers=[("moving_mean", 0.0)])
    # the same random state as the one grow() sees
    src = Net2Net.sources(_request(n_old=4, n_new=6, carriers=[("moving_mean", 0.0)]))
    # 6 = 4 + 2: every channel once, then 2 distinct extra ones
    assert sorted(src[:4].tolist()) == [0, 1, 2, 3] and len(set(src[4:].tolist())) == 2
    v = Net2Net().grow(req)
    counts = 1 + np.bincount(src, minlength=4)
    np.testing.assert_allclose(v.producers[0], req.producers[0].old[src])
    np.testing.assert_allclose(v.carriers[0], req.carriers[0].old[src])  # stats copied
    np.testing.assert_allclose(v.consumer_scale, 1 / counts)
    # old row * scale + sum of copies' rows == original row, per channel
    total = req.consumers[0].old * v.consumer_scale[:, None]
    np.add.at(total, src, v.consumers[0])
    np.testing.assert_allclose(total, req.consumers[0].old)


def test_net2net_noisy_split_still_sums_to_the_original():
    req = _request(n_old=3, n_new=3)
    v = Net2Net(noise=0.2).grow(req)
    src = Net2Net.sources(_request(n_old=3, n_new=3))
    total = req.consumers[0].old * v.consumer_scale[:, None]
    np.add.at(total, src, v.consumers[0])
    np.testing.assert_allclose(total, req.consumers[0].old, atol=1e-12)
    assert not np.allclose(v.consumer_scale, 0.5)  # the split is not symmetric any more


def test_net2net_copies_stay_inside_their_block():
    req = _request(n_old=6, n_new=3, blocks=3)  # blocks of 2 old + 1 new
    src = Net2Net.sources(req)
    assert (src // 2).tolist() == [0, 1, 2]


def test_orthogonal_filters_gram_matrix():
    rng = np.random.default_rng(0)
    old = rng.normal(size=(5, 12))
    new = orthogonal_filters(old, 6, rng)
    gram = new @ np.concatenate([old, new]).T
    np.testing.assert_allclose(gram[:, :5], 0, atol=1e-9)  # orthogonal to existing
    mean_norm = np.linalg.norm(old, axis=1).mean()
    np.testing.assert_allclose(gram[:, 5:], np.eye(6) * mean_norm ** 2, atol=1e-9)


def test_orthogonal_with_more_filters_than_dimensions():
    rng = np.random.default_rng(1)
    old = rng.normal(size=(3, 5))
    new = orthogonal_filters(old, 4, rng)
    # only 5 - 3 = 2 directions are left: the first two new filters use them
    np.testing.assert_allclose(new[:2] @ old.T, 0, atol=1e-9)
    np.testing.assert_allclose(new[0] @ new[1], 0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), np.linalg.norm(old, axis=1).mean())
    assert np.abs(new[2:] @ old.T).max() > 1e-3


def test_orthogonal_norm_falls_back_when_existing_filters_are_zero():
    new = orthogonal_filters(np.zeros((2, 4)), 2, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), np.sqrt(2.0))


def test_variance_transfer_pairs_cancel_and_odd_channel_is_silent():
    req = _request(n_old=4, n_new=5, fan_p=(2000,), fan_c=(7,),
                   carriers=[("depthwise_kernel", "he")])
    v = VarianceTransfer().grow(req)
    p, c = v.producers[0], v.consumers[0]
    np.testing.assert_array_equal(p[0], p[1])
    np.testing.assert_array_equal(p[2], p[3])
    np.testing.assert_array_equal(c[0], -c[1])
    np.testing.assert_array_equal(c[2], -c[3])
    np.testing.assert_array_equal(c[4], 0)  # unpaired last channel: zero fan-out
    np.testing.assert_array_equal(v.carriers[0][0], v.carriers[0][1])  # pair carriers equal
    assert p.std() == pytest.approx(1 / 2000, rel=0.05)  # V ~ N(0, 1/C^2)
    assert np.abs(c[:4]).max() < 6 / 21  # Z ~ N(0, 1/(3*7)^2): consumer fan-in after growth
    assert v.consumer_scale is None and v.compensate is None


def test_variance_transfer_rescale_factors():
    assert VarianceTransfer(rescale="linear").factor(4, 8) == 0.5
    assert VarianceTransfer(rescale="sqrt").factor(4, 16) == 0.5
    v = VarianceTransfer(rescale="linear").grow(_request(n_old=4, n_new=4))
    np.testing.assert_allclose(v.consumer_scale, 0.5)
    assert v.compensate == 0.5


# -- exactness claims ---------------------------------------------------------

@pytest.mark.parametrize("normalizer, init, old, new, exact", [
    (None, Zeros(), 4, 8, True),
    ("layer_norm", Zeros(), 4, 8, False),
    ("layer_norm", Orthogonal(), 4, 8, False),
    ("layer_norm", VarianceTransfer(), 4, 8, False),
    ("layer_norm", Net2Net(), 4, 8, True),
    ("layer_norm", Net2Net(), 4, 6, False),
    ("group_norm", Net2Net(), 4, 12, True),
    ("softmax", Net2Net(), 4, 8, False),
    ("unit_norm", Net2Net(), 4, 8, False),
    (None, Net2Net(fan_in_noise=0.1), 4, 8, False),
    (None, Net2Net(noise=0.1), 4, 6, True),
    (None, Random(), 4, 8, False),
    (None, VarianceTransfer(noise=0.1), 4, 8, False),
])
def test_check_reports_exactness(normalizer, init, old, new, exact):
    norms = ((("ln", normalizer),) if normalizer else ())
    group = ChannelGroup("g", old, normalizers=norms)
    assert init.preserves_function(group, old, new) is exact
    assert (init.check(group, old, new) is None) is exact


def test_variance_rescale_is_exact_only_with_batchnorm_compensation():
    init = VarianceTransfer(rescale="sqrt")
    assert init.preserves_function(ChannelGroup("g", 4, bn_compensable=True), 4, 8)
    reason = init.check(ChannelGroup("g", 4, bn_compensable=False), 4, 8)
    assert "BatchNorm" in reason


# -- on models ----------------------------------------------------------------



def _conv_net():
    x = keras.Input((6, 6, 3), name="x")
    h = L.Conv2D(4, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(6, 3, padding="same", name="c2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    h = L.ReLU(name="r2")(h)
    h = L.Flatten(name="flat")(h)
    model = keras.Model(x, L.Dense(3, name="head")(h))
    _randomize(model)
    return model


@pytest.mark.parametrize("name", ["zeros", "orthogonal", "variance_transfer", "net2net"])
def test_function_preserving_initializers_keep_the_output(name):
    model = _conv_net()
    x = np.random.default_rng(0).random((4, 6, 6, 3), dtype=np.float32)
    r = scale_width(model, 2.0, initializer=name, require_exact=True)
    assert r.model.get_layer("c1").filters == 8 and r.model.get_layer("c2").filters == 12
    before, after = model(x, training=False), r.model(x, training=False)
    assert np.abs(np.asarray(before)).max() > 0.1
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)


def test_random_initializer_changes_the_output_and_says_so():
    model = _conv_net()
    x = np.random.default_rng(0).random((4, 6, 6, 3), dtype=np.float32)
    r = scale_width(model, 2.0, initializer="random")
    assert not r.info["exact"]
    assert np.abs(np.asarray(r.model(x)) - np.asarray(model(x))).max() > 1e-3


def test_orthogonal_new_conv_filters_are_orthogonal_in_the_model():
    model = _conv_net()
    r = scale_width(model, {"c2": 10}, initializer="orthogonal")
    k = r.model.get_layer("c2").kernel.numpy()  # (3, 3, 4, 10)
    filters = k.reshape(-1, 10).T  # one flattened 3*3*4 filter per row
    gram = filters[6:] @ filters.T
    np.testing.assert_allclose(gram[:, :6], 0, atol=1e-5)
    old_norm = np.linalg.norm(model.get_layer("c2").kernel.numpy().reshape(-1, 6), axis=0).mean()
    np.testing.assert_allclose(gram[:, 6:], np.eye(4) * old_norm ** 2, rtol=1e-5, atol=1e-5)


def test_variance_transfer_pairs_cancel_in_the_model():
    model = _conv_net()
    r = scale_width(model, {"c1": 7}, initializer="variance_transfer")
    k1 = r.model.get_layer("c1").kernel.numpy()
    k2 = r.model.get_layer("c2").kernel.numpy()
    np.testing.assert_array_equal(k1[..., 4], k1[..., 5])  # [V; V]
    np.testing.assert_array_equal(k2[:, :, 4], -k2[:, :, 5])  # [Z, -Z]
    np.testing.assert_array_equal(k2[:, :, 6], 0)  # the odd one out


@pytest.mark.parametrize("rescale", ["linear", "sqrt"])
def test_variance_rescale_with_batchnorm_after_the_consumer_is_exact(rescale):
    model = _conv_net()
    x = np.random.default_rng(0).random((4, 6, 6, 3), dtype=np.float32)
    init = VarianceTransfer(rescale=rescale)
    r = scale_width(model, {"c1": 16}, initializer=init, require_exact=True)
    s = init.factor(4, 16)
    old_k2 = model.get_layer("c2").kernel.numpy()
    np.testing.assert_allclose(r.model.get_layer("c2").kernel.numpy()[:, :, :4], s * old_k2,
                               rtol=1e-6)
    old_var = model.get_layer("bn2").moving_variance.numpy()
    np.testing.assert_allclose(r.model.get_layer("bn2").moving_variance.numpy(),
                               s * s * old_var, rtol=1e-6)
    np.testing.assert_allclose(r.model(x, training=False), model(x, training=False),
                               atol=1e-5, rtol=0)


def test_variance_rescale_without_batchnorm_scales_a_linear_net():
    # Documented behaviour: the consumer's output is scaled by s, so a linear
    # net's output is s times the old one, and check() reports it.
    x = keras.Input((5,), name="x")
    h = L.Dense(4, use_bias=False, name="d1")(x)
    model = keras.Model(x, L.Dense(3, use_bias=False, name="d2")(h))
    _randomize(model)
    xs = np.random.default_rng(0).random((3, 5), dtype=np.float32)
    r = scale_width(model, {"d1": 8}, initializer=VarianceTransfer(rescale="linear"))
    np.testing.assert_allclose(r.model(xs), 0.5 * np.asarray(model(xs)), rtol=1e-5, atol=1e-6)
    assert not r.info["exact"] and "BatchNorm" in r.info["groups"][0]["reason"]
    with pytest.raises(ValueError, match="not function-preserving for d1"):
        scale_width(model, {"d1": 8}, initializer=VarianceTransfer(rescale="linear"),
                    require_exact=True)


def test_net2net_is_exact_for_layer_norm_groups_only_for_whole_multiples():
    x = keras.Input((6,), name="x")
    h = L.Dense(4, name="d1")(x)
    h = L.LayerNormalization(name="ln")(h)
    h = L.Activation("gelu")(h)
    model = keras.Model(x, L.Dense(3, name="out")(h))
    _randomize(model)
    xs = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    ok = scale_width(model, {"d1": 8}, initializer="net2net", require_exact=True)
    np.testing.assert_allclose(ok.model(xs), model(xs), atol=1e-5, rtol=0)
    bad = scale_width(model, {"d1": 6}, initializer="net2net")
    assert not bad.info["exact"] and "multiple of the kept size" in bad.info["groups"][0]["reason"]
    assert np.abs(np.asarray(bad.model(xs)) - np.asarray(model(xs))).max() > 1e-4
    zeros = scale_width(model, {"d1": 8}, initializer="zeros")
    assert not zeros.info["exact"]
    assert np.abs(np.asarray(zeros.model(xs)) - np.asarray(model(xs))).max() > 1e-4


def _flat_filters(model, name):
    k = model.get_layer(name).kernel.numpy()
    return k.reshape(-1, k.shape[-1]).T  # one flattened k*k*C_in filter per row


@pytest.mark.parametrize("fan_out", [0.0, 0.1])
def test_orthogonal_filters_span_the_grown_input_in_a_resnet(fan_out):
    # Every conv's new filters are orthogonal to its kept filters and to each
    # other over the whole grown k*k*C_in (including the columns of input
    # channels that grew in another group, which fan_out > 0 fills), with the
    # kept filters' mean norm.
    from kgrow.models import resnet_cifar
    narrow = scale_width(resnet_cifar(8, (8, 8, 1), 3, width=0.5), 0.5).model
    _randomize(narrow, seed=3)
    r = scale_width(narrow, 2.0, initializer=Orthogonal(fan_out=fan_out), seed=5)
    checked = 0
    for layer in r.model.layers:
        if not isinstance(layer, L.Conv2D):
            continue
        filters = _flat_filters(r.model, layer.name)
        new = r.plan[layer.kernel.path].index[-1] < 0
        if not new.any():
            continue
        kept, fresh = filters[~new], filters[new]
        scale = np.linalg.norm(kept, axis=1).mean()
        np.testing.assert_allclose(np.linalg.norm(fresh, axis=1), scale, rtol=1e-5)
        # The 1x1 shortcut has more filters than dimensions: only the first
        # (dims - kept) new filters can be orthogonal.
        free = min(len(fresh), filters.shape[1] - len(kept))
        fresh = fresh[:free]
        np.testing.assert_allclose(fresh @ kept.T / scale ** 2, 0, atol=1e-5, err_msg=layer.name)
        np.testing.assert_allclose(fresh @ fresh.T / scale ** 2, np.eye(free), atol=1e-5,
                                   err_msg=layer.name)
        checked += free > 0
    assert checked == 7  # stem + 2 convs in each of 3 blocks (not the 1x1 shortcuts)


def test_orthogonal_more_filters_than_dimensions_in_a_model():
    x = keras.Input((5, 5, 3))
    h = L.Conv2D(8, 1, name="c1")(x)  # 1*1*3 = 3 dimensions for 8 filters
    model = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(L.ReLU()(h))))
    _randomize(model)
    narrow = scale_width(model, {"c1": 2}).model
    grown = scale_width(narrow, {"c1": 8}, initializer="orthogonal").model
    filters, old = _flat_filters(grown, "c1"), _flat_filters(narrow, "c1")
    # Only 3 - 2 = 1 direction is orthogonal to the kept two; the other new
    # filters are random directions, all at the kept filters' mean norm.
    np.testing.assert_allclose(filters[2] @ filters[:2].T, 0, atol=1e-5)
    assert np.abs(filters[3:] @ filters[:2].T).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(filters[2:], axis=1),
                               np.linalg.norm(old, axis=1).mean(), rtol=1e-5)


def test_orthogonal_small_fan_out_is_orthogonal_scaled_and_not_exact():
    init = Orthogonal(fan_out=0.1)
    req = _request(n_old=4, n_new=3, fan_c=(9,))
    values = init.grow(req)
    rows, old = values.consumers[0], req.consumers[0].old
    np.testing.assert_allclose(rows @ old.T, 0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1),
                               0.1 * np.linalg.norm(old, axis=1).mean(), rtol=1e-9)
    assert "fan-out" in init.check(req.group)
    assert Orthogonal().check(req.group) is None
    model = _conv_net()
    r = scale_width(model, {"c1": 8}, initializer=init)
    assert not r.info["exact"]
    with pytest.raises(ValueError, match="fan_out"):
        Orthogonal(fan_out=-1)


def test_orthogonal_with_rescale_scales_old_fan_out_behind_batchnorm_and_stays_exact():
    # Variance transfer's "sqrt" rescaling on Network Expansion's filters: in a
    # BN ResNet the old fan-out of every compensable group shrinks by
    # sqrt(C_t / C_{t+1}) and the BatchNorms undo it, so the function is kept.
    from kgrow.models import resnet_cifar
    narrow = scale_width(resnet_cifar(8, (8, 8, 1), 3, width=0.5), 0.5).model
    _randomize(narrow, seed=3)
    x = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    plain = scale_width(narrow, 2.0, initializer=Orthogonal(), seed=5)
    rescaled = scale_width(narrow, 2.0, initializer=Orthogonal(rescale="sqrt"), seed=5)
    assert rescaled.info["exact"]
    np.testing.assert_allclose(rescaled.model(x, training=False), narrow(x, training=False),
                               atol=1e-5, rtol=0)
    ratios = []
    for layer in rescaled.model.layers:
        if not isinstance(layer, L.Conv2D):
            continue
        rows = rescaled.plan[layer.kernel.path].index[-2]
        if rows is None:  # the layer's input did not grow
            continue
        new_in = np.asarray(rows) < 0  # the input channels that are new
        old = plain.model.get_layer(layer.name).kernel.numpy()[:, :, ~new_in]
        got = layer.kernel.numpy()[:, :, ~new_in]
        if new_in.any() and np.abs(old).max() > 0:
            ratios.append(float(np.abs(got).sum() / np.abs(old).sum()))
    # Every group doubles: s = sqrt(1/2) where a BatchNorm follows, 1 elsewhere.
    assert any(abs(r - np.sqrt(0.5)) < 1e-5 for r in ratios)
    assert all(abs(r - np.sqrt(0.5)) < 1e-5 or abs(r - 1.0) < 1e-5 for r in ratios)
    with pytest.raises(ValueError, match="rescale"):
        Orthogonal(rescale="cube")

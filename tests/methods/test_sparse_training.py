"""Sparse training (MEST EM / EM&S, magnitude pruning) on the controller's masks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import data, models
from kgrow.callbacks import Growth
from kgrow.controller import ControllerCheckpoint, Masks, TrainingController
from kgrow.methods.sparse_training import (SparseTraining, constant_sparsity, layer_densities,
                                           maskable_variables, mest_schedule,
                                           polynomial_sparsity, prune_and_grow, random_masks,
                                           sparsity_report, strip_sparsity)
from kgrow.schedules import GrowthSchedule, Stage
from testing_helpers import assert_weights_match, new_mirrored_strategy

MASKED = ["c2/kernel", "c3/kernel"]


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="fc")(x))


def _arrays(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 8, 8, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, size=n), 3).astype("float32")
    return x, y


def _bundle(n=128):
    x, y = _arrays(n)
    y = y.argmax(-1)
    return data.from_arrays((x, y), (x[:32], y[:32]), num_classes=3, batch_size=16, seed=1)


def _active(mask, sparsity):
    return int(round((1 - sparsity) * mask.size))


class _CheckZeros(keras.callbacks.Callback):
    """After every batch: masked entries are exactly 0.0."""

    def __init__(self):
        super().__init__()
        self.checked = 0

    def on_train_batch_end(self, batch, logs=None):
        masks = Masks.of(TrainingController.of(self.model)).get()
        weights = {v.path: v.numpy() for v in self.model.weights}
        for p, m in masks.items():
            assert np.all(weights[p][~m] == 0.0), p
        self.checked += 1


# -- functional form ----------------------------------------------------------
def test_maskable_variables_default_names_and_errors():
    model = _cnn()
    assert maskable_variables(model) == MASKED
    assert maskable_variables(model, keep_first=False, keep_classifier=False) == [
        "c1/kernel", "c2/kernel", "c3/kernel", "fc/kernel"]
    assert maskable_variables(model, layers=["c1", "fc/kernel"]) == ["c1/kernel", "fc/kernel"]
    assert maskable_variables(model, exclude=["c3"]) == ["c2/kernel"]
    assert maskable_variables(model, predicate=lambda layer, v: v.shape[-1] == 3) == [
        "fc/kernel"]
    with pytest.raises(ValueError, match="'nope' is neither a layer"):
        maskable_variables(model, layers=["nope"])
    with pytest.raises(ValueError, match="no kernel"):
        maskable_variables(model, layers=["global_average_pooling2d"])
    with pytest.raises(ValueError, match="nothing|no variable"):
        maskable_variables(model, exclude=MASKED)


def test_resnet_default_keeps_stem_and_head_dense():
    paths = maskable_variables(models.resnet_cifar(8, (8, 8, 1), 3, width=0.25))
    assert "stem_conv/kernel" not in paths and "head/kernel" not in paths
    assert "stage2_block0_shortcut_conv/kernel" in paths and len(paths) == 8


def test_prune_and_grow_counts_order_and_zero_regrowth():
    rng = np.random.default_rng(0)
    shapes = {"a": (3, 3, 8, 16), "b": (40, 10)}
    weights = {p: rng.normal(size=s) for p, s in shapes.items()}
    masks = random_masks(shapes, {"a": 0.1, "b": 0.1}, rng)
    assert {p: int(m.sum()) for p, m in masks.items()} == {"a": 115, "b": 40}
    weights = {p: np.where(masks[p], w, 0.0) for p, w in weights.items()}
    res = prune_and_grow(weights, masks, prune_to=0.95, grow_to=0.9, rng=rng)
    for p, m in masks.items():
        keep = _active(m, 0.95)
        assert res.pruned[p] == int(m.sum()) - keep
        assert res.grown[p] == _active(m, 0.9) - keep
        assert int(res.masks[p].sum()) == _active(m, 0.9)
        survivors = m & res.masks[p]
        # The kept entries are the largest |w| of the previously active ones.
        assert np.abs(weights[p][survivors]).min() >= np.abs(weights[p][m & ~survivors]).max()
        regrown = res.masks[p] & ~m
        assert regrown.sum() == res.grown[p] and np.all(res.weights[p][regrown] == 0.0)
        assert np.all(res.weights[p][~res.masks[p]] == 0.0)
        # Regrowth prefers entries that were not just pruned.
        assert not np.any(regrown & m)
    # lam > 0: the gradient magnitude enters the score.
    grads = {p: np.where(masks[p], rng.normal(size=s) * 100, 0) for p, s in shapes.items()}
    by_grad = prune_and_grow(weights, masks, 0.95, 0.95, grads=grads, lam=1.0,
                             rng=np.random.default_rng(1))
    assert any(not np.array_equal(by_grad.masks[p], res.masks[p] & masks[p]) for p in shapes)
    with pytest.raises(ValueError, match="grads"):
        prune_and_grow(weights, masks, 0.95, 0.9, lam=0.5)
    with pytest.raises(ValueError, match="must not exceed"):
        prune_and_grow(weights, masks, 0.8, 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_and_grow(weights, masks, 1.0, 0.9)


def test_layer_densities_uniform_and_erk():
    shapes = {"small": (3, 3, 4, 4), "big": (3, 3, 64, 64), "fc": (64, 10)}
    assert layer_densities(shapes, 0.9) == {p: pytest.approx(0.1) for p in shapes}
    erk = layer_densities(shapes, 0.9, "erk")
    sizes = {p: np.prod(s) for p, s in shapes.items()}
    kept = sum(erk[p] * sizes[p] for p in shapes)
    assert kept == pytest.approx(0.1 * sum(sizes.values()))
    assert erk["small"] > erk["big"] and max(erk.values()) <= 1.0
    with pytest.raises(ValueError, match="uniform"):
        layer_densities(shapes, 0.9, "random")


def test_mest_schedule_values_scale_with_the_run():
    ems = mest_schedule(160, 0.9)
    assert [u.epoch for u in ems.updates] == list(range(5, 125, 5))
    for u in ems.updates:
        assert u.prune_to == 0.9
        want = 0.85 if u.epoch < 90 else 0.875 if u.epoch < 120 else 0.9
        assert u.grow_to == pytest.approx(want)
    assert ems.initial_sparsity == 0.9 and ems.initial == "random"
    em = mest_schedule(160, 0.9, mode="em")
    assert {(round(u.prune_to, 9), u.grow_to) for u in em.updates[:-1]} == {(0.95, 0.9)}
    assert em.updates[-1].epoch == 120
    short = mest_schedule(32, 0.8)  # the same fractions of a shorter run
    assert [u.epoch for u in short.updates] == list(range(1, 25))
    assert [round(u.grow_to, 3) for u in short.updates if u.epoch in (17, 18, 23, 24)] == [
        0.75, 0.775, 0.775, 0.8]
    assert [u.epoch for u in mest_schedule(20, 0.9, update_every=4, search_end=10).updates] == [
        4, 8, 10]
    # A short run still ends at the target sparsity, with the last epoch at it.
    assert [(u.epoch, u.grow_to) for u in mest_schedule(3, 0.9).updates] == [
        (1, 0.85), (2, 0.9)]
    assert mest_schedule(1, 0.9).updates == ()
    for bad in (dict(update_every=0), dict(update_every=-1), dict(update_every=1.5),
                dict(search_end=40), dict(sparsity=1.0), dict(sparsity=-0.1),
                dict(mode="rigl")):
        with pytest.raises(ValueError):
            mest_schedule(32, **{"sparsity": 0.9, **bad})


def test_pruning_schedules():
    poly = polynomial_sparsity(10, 0.8, initial_sparsity=0.2, begin=2, end=6)
    values = {u.epoch: u.prune_to for u in poly.updates}
    assert list(values) == [2, 3, 4, 5, 6]
    assert values[2] == pytest.approx(0.2) and values[6] == pytest.approx(0.8)
    assert values[4] == pytest.approx(0.8 - 0.6 * 0.5 ** 3)
    assert all(u.grow_to == u.prune_to for u in poly.updates) and poly.initial == "magnitude"
    assert np.all(np.diff(list(values.values())) > 0)
    const = constant_sparsity(5, 0.7, begin=1)
    assert [(u.epoch, u.prune_to) for u in const.updates] == [(1, 0.7)]
    with pytest.raises(ValueError):
        polynomial_sparsity(10, 0.8, begin=5, end=3)
    with pytest.raises(ValueError):
        constant_sparsity(5, 1.2)


def test_sparsity_report_of_masks_and_model():
    rep = sparsity_report({"a": np.array([[1, 0], [0, 0]]), "b": np.ones(4)})
    assert rep.per_variable == {"a": 0.75, "b": 0.0} and rep.total == pytest.approx(0.375)
    model = _cnn()
    model.get_layer("c2").kernel.assign(np.zeros((3, 3, 4, 8)))
    assert sparsity_report(model).per_variable["c2/kernel"] == 1.0
    assert "total" in sparsity_report(model).table()


# -- callback -------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw"])
def test_masks_hold_sparsity_and_zeros_through_training(optimizer):
    model = _cnn()
    opt = (keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd_momentum"
           else keras.optimizers.AdamW(0.01, weight_decay=0.1))
    model.compile(opt, "categorical_crossentropy")
    s = 0.8
    sparse = SparseTraining(s, "ems", update_every=1, search_end=3, ems_bounds=((1.0, 0.1),))
    check = _CheckZeros()
    history = model.fit(_bundle().train, epochs=4, verbose=0, callbacks=[sparse, check])
    assert check.checked == 32
    kinds = [(e["epoch"], e["kind"], e["prune_to"], round(e["grow_to"], 6))
             for e in sparse.events]
    assert kinds == [(0, "initial", 0.8, 0.8), (1, "update", 0.8, 0.7), (2, "update", 0.8, 0.7),
                     (3, "update", 0.8, 0.8)]
    sizes = {p: int(np.prod(model.get_layer(p.split("/")[0]).kernel.shape)) for p in MASKED}

    def n(p, sp):
        return int(round((1 - sp) * sizes[p]))
    # Exact prune/grow counts of every update.
    assert sparse.events[1]["pruned"] == {p: 0 for p in MASKED}
    assert sparse.events[1]["grown"] == {p: n(p, 0.7) - n(p, 0.8) for p in MASKED}
    assert sparse.events[2]["pruned"] == sparse.events[1]["grown"]
    assert sparse.events[2]["grown"] == sparse.events[1]["grown"]
    assert sparse.events[3]["pruned"] == sparse.events[1]["grown"]
    assert sparse.events[3]["grown"] == {p: 0 for p in MASKED}
    masks = Masks.of(TrainingController.of(model)).get()
    assert sorted(masks) == MASKED
    for p in MASKED:
        assert int(masks[p].sum()) == n(p, 0.8)
    assert history.history["sparse/sparsity"][-1] == pytest.approx(
        1 - sum(n(p, 0.8) for p in MASKED) / sum(sizes.values()), abs=1e-6)
    # The masks really changed (dynamic), and the dense layers stayed dense.
    assert sparse.events[1]["per_layer"]["c2/kernel"] == pytest.approx(1 - n("c2/kernel", 0.7)
                                                                      / sizes["c2/kernel"])
    assert np.count_nonzero(model.get_layer("c1").kernel.numpy()) == 36


def test_regrown_entries_start_at_zero_in_training():
    model = _cnn()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    sparse = SparseTraining(0.7, "em", update_every=1, search_end=2)
    seen = {}

    class Snap(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:  # right after this epoch's mask update
                ctrl = TrainingController.of(self.model)
                seen[len(seen)] = ({p: m.copy() for p, m in Masks.of(ctrl).get().items()},
                                   {p: self.model.get_layer(p.split("/")[0]).kernel.numpy()
                                    for p in MASKED})

    model.fit(_bundle().train, epochs=3, verbose=0, callbacks=[sparse, Snap()])
    (m0, _), (m1, w1) = seen[0], seen[1]
    for p in MASKED:
        regrown = m1[p] & ~m0[p]
        assert regrown.sum() == sparse.events[1]["grown"][p] > 0
        assert np.all(w1[p][regrown] == 0.0)
        assert np.all(w1[p][m0[p] & m1[p]] != 0.0)


def test_gradient_criterion_sums_only_before_updates_and_changes_the_choice():
    from kgrow.methods.sparse_training.callback import _GRAD_HOOK

    def run(lam):
        model = _cnn(seed=2)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
        cb = SparseTraining(0.7, "em", update_every=2, search_end=4, lam=lam)
        armed = []

        class Armed(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == 0:
                    armed.append(_GRAD_HOOK in TrainingController.of(self.model).hooks)

        model.fit(_bundle(64).train, epochs=5, verbose=0, callbacks=[cb, Armed()])
        return Masks.of(TrainingController.of(model)).get(), armed, cb

    by_grad, armed, cb = run(1e3)
    # Gradients are summed only in the epoch before each update (2, 4).
    assert armed == [False, True, False, True, False]
    assert _GRAD_HOOK not in TrainingController.of(cb.model).hooks
    by_weight, armed0, _ = run(0.0)
    assert not any(armed0)
    assert any(not np.array_equal(by_grad[p], by_weight[p]) for p in MASKED)
    assert all(int(by_grad[p].sum()) == int(by_weight[p].sum()) for p in MASKED)


def test_bad_settings_fail_before_training():
    for kwargs in (dict(sparsity=1.0), dict(sparsity=-0.1), dict(update_every=0),
                   dict(update_every=-2), dict(mode="rigl"), dict(lam=-0.5),
                   dict(distribution="random")):
        with pytest.raises(ValueError):
            SparseTraining(**{"sparsity": 0.9, **kwargs})
    model = _cnn()
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    with pytest.raises(ValueError, match="'nope' is neither a layer"):
        model.fit(_bundle().train, epochs=1, verbose=0,
                  callbacks=[SparseTraining(0.9, layers=["c2", "nope"])])
    assert int(model.optimizer.iterations.numpy()) == 0


def test_strip_sparsity_round_trips_through_keras_saving(tmp_path):
    model = _cnn()
    model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
    model.fit(_bundle().train, epochs=1, verbose=0,
              callbacks=[SparseTraining(0.75, "static")])
    x, _ = _arrays(16)
    plain = strip_sparsity(model)
    assert not hasattr(plain, TrainingController._ATTR)
    assert type(plain) is keras.Model or type(plain).__name__ == "Functional"
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    assert sparsity_report(plain, paths=MASKED).total == pytest.approx(0.75, abs=0.01)
    path = str(tmp_path / "plain.keras")
    plain.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(loaded.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), plain.predict(x, verbose=0),
                               atol=1e-6)


def test_polynomial_pruning_callback_prunes_by_magnitude():
    model = _cnn()
    model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
    schedule = polynomial_sparsity(3, 0.6, begin=0, end=2)
    cb = SparseTraining(schedule=schedule)
    model.fit(_bundle().train, epochs=3, verbose=0, callbacks=[cb])
    assert [(e["kind"], e["epoch"]) for e in cb.events] == [
        ("initial", 0), ("update", 0), ("update", 1), ("update", 2)]
    assert [e["grown"] for e in cb.events[1:]] == [{p: 0 for p in MASKED}] * 3
    assert cb.report().total == pytest.approx(0.6, abs=0.01)


def test_masks_survive_a_growth_width_step():
    keras.utils.set_random_seed(0)
    model = models.resnet_cifar(8, (8, 8, 1), 3, width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]),
                  initializer="random", verbose=0)
    sparse = SparseTraining(0.8, "static")
    check = _CheckZeros()
    sizes = {}

    class Sizes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            sizes[epoch] = {v.path: int(np.prod(v.shape)) for v in self.model.weights}

    model.fit(_bundle().train, epochs=2, verbose=0, callbacks=[grow, sparse, Sizes(), check])
    assert [e["kind"] for e in sparse.events] == ["initial", "repair"]
    repair = sparse.events[1]
    assert repair["epoch"] == 1 and repair["pruned"]
    for p, pruned in repair["pruned"].items():
        n_old, n_new = sizes[0][p], sizes[1][p]
        # Old masks carried (their round(0.2 n_old) ones), new entries dense,
        # then pruned back to the target.
        assert n_new > n_old
        assert pruned == int(round(0.2 * n_old)) + (n_new - n_old) - int(round(0.2 * n_new))
    masks = Masks.of(TrainingController.of(model)).get()
    for p in sparse.masked_paths():
        assert int(masks[p].sum()) == int(round(0.2 * masks[p].size))
    assert check.checked == 16


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill")


def _resume_run(directory=None, crash=False, lam=0.0):
    model = _cnn(seed=3)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    sparse = SparseTraining(0.7, "ems", update_every=1, search_end=3, seed=5, lam=lam)
    callbacks = [sparse]
    if directory is not None:
        callbacks.append(ControllerCheckpoint(directory))
    if crash:
        callbacks.append(_Crash())
    return model, sparse, callbacks


@pytest.mark.parametrize("lam", [0.0, 50.0], ids=["magnitude", "with-gradients"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, lam):
    tf.config.experimental.enable_op_determinism()
    try:
        reference, ref_cb, cbs = _resume_run(lam=lam)
        reference.fit(_bundle().train, epochs=4, verbose=0, callbacks=cbs)
        directory = str(tmp_path / "ckpt")
        crashed, _, cbs = _resume_run(directory, crash=True, lam=lam)
        with pytest.raises(RuntimeError, match="simulated kill"):
            crashed.fit(_bundle().train, epochs=4, verbose=0, callbacks=cbs)
        resumed, cb, cbs = _resume_run(directory, lam=lam)
        history = resumed.fit(_bundle().train, epochs=4, verbose=0, callbacks=cbs)
        assert len(history.history["loss"]) == 2
        assert cb.events == ref_cb.events
        want = Masks.of(TrainingController.of(reference)).get()
        got = Masks.of(TrainingController.of(resumed)).get()
        assert sorted(got) == sorted(want)
        for p in want:
            np.testing.assert_array_equal(got[p], want[p])
        assert_weights_match(resumed, reference, tol=0.0)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


@pytest.mark.parametrize("lam", [0.0, 50.0], ids=["magnitude", "with-gradients"])
def test_mirrored_strategy_matches_single_device(lam):
    def run(strategy):
        x, y = _arrays(64)
        with (strategy or tf.distribute.get_strategy()).scope():
            model = _cnn(seed=4)
            model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
        sparse = SparseTraining(0.7, "ems", update_every=1, search_end=2, lam=lam)
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[sparse])
        return model, Masks.of(TrainingController.of(model)).get()

    single, m1 = run(None)
    mirrored, m2 = run(new_mirrored_strategy())
    assert sorted(m1) == sorted(m2) == MASKED
    for p in m1:
        np.testing.assert_array_equal(m1[p], m2[p])
    assert_weights_match(mirrored, single, tol=1e-5)
    for p in MASKED:
        w = mirrored.get_layer(p.split("/")[0]).kernel
        values = [t.numpy() for t in getattr(w, "value", w).values]
        np.testing.assert_array_equal(values[0], values[1])
        assert np.all(values[0][~m2[p]] == 0.0)


def test_bench_methods_pass_live_mask_densities_to_the_flops_count():
    import types

    from kgrow import flops
    from kgrow.bench import registry
    from kgrow.methods.sparse_training.bench import METHODS, factory
    assert set(METHODS) <= set(registry.available_methods())
    context = types.SimpleNamespace(train=types.SimpleNamespace(epochs=3),
                                    build_model=lambda: _cnn())
    setup = factory("ems", sparsity=0.8)(None, context)
    assert isinstance(setup, registry.MethodSetup) and setup.sparsity(setup.model) == {}
    cb, = setup.callbacks
    assert cb.schedule.total_epochs == 3 and cb.sparsity == 0.8
    setup.model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
    setup.model.fit(_bundle(32).train, epochs=1, verbose=0, callbacks=setup.callbacks)
    densities = setup.sparsity(setup.model)
    assert sorted(densities) == MASKED
    assert all(d == pytest.approx(0.2, abs=0.01) for d in densities.values())
    dense = flops.count(setup.model, (8, 8, 1)).training
    sparse = flops.count(setup.model, (8, 8, 1), sparsity=densities).training
    assert sparse < 0.6 * dense


def test_erk_distribution_in_training_holds_per_layer_targets():
    model = _cnn()
    model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
    cb = SparseTraining(0.8, "ems", distribution="erk", update_every=1, search_end=2)
    model.fit(_bundle(32).train, epochs=3, verbose=0, callbacks=[cb])
    shapes = {p: tuple(model.get_layer(p.split("/")[0]).kernel.shape) for p in MASKED}
    want = layer_densities(shapes, 0.8, "erk")
    masks = Masks.of(TrainingController.of(model)).get()
    for p in MASKED:
        assert int(masks[p].sum()) == int(round(want[p] * masks[p].size))
    assert want["c2/kernel"] != want["c3/kernel"]
    assert [e["kind"] for e in cb.events] == ["initial", "update", "update"]


def test_frozen_kernels_keep_weights_and_masks():
    model = _cnn()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    ctrl = TrainingController.of(model)
    ctrl.freeze("c2")
    before = model.get_layer("c2").kernel.numpy()
    cb = SparseTraining(0.7, "em", update_every=1, search_end=2, seed=1)
    model.fit(_bundle(32).train, epochs=3, verbose=0, callbacks=[cb])
    masks = Masks.of(ctrl).get()
    first = cb.events[0]["per_layer"]
    assert cb.events[1]["frozen"] == ["c2/kernel"] and "c2/kernel" not in cb.events[1]["pruned"]
    assert cb.events[1]["pruned"]["c3/kernel"] > 0
    np.testing.assert_array_equal(model.get_layer("c2").kernel.numpy(),
                                  np.where(masks["c2/kernel"], before, 0.0))
    assert first["c2/kernel"] == pytest.approx(1 - masks["c2/kernel"].mean())

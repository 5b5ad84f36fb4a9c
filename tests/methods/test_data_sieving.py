"""Circular data sieving (SpFDE): functional form, in-step counts, callback, resume, strategy."""
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import kgrow
from kgrow.controller import ControllerCheckpoint, TrainingController
from kgrow.methods.data_sieving import (DataSieving, ForgettingTracker, count_forgetting,
                                        forgetting_events, initial_removal, plan_sieve,
                                        sieve_update)
from kgrow.methods.data_sieving import functional as F
from testing_helpers import CrashAtEpoch, assert_weights_match, new_mirrored_strategy

N, CLASSES, BATCH = 96, 3, 8


# -- functional form -----------------------------------------------------------------------
def test_forgetting_counts_on_a_constructed_sequence():
    # rows: presentations; columns: samples
    seq = np.array([[1, 1, 0, 1, 0],
                    [0, 1, 1, 1, 0],
                    [1, 0, 1, 0, 0],
                    [0, 1, 0, 0, 1],
                    [1, 1, 1, 0, 0]], bool)
    # sample 0: 1>0, 1>0 ; 1: 1>0 ; 2: 1>0 ; 3: 1>0 ; 4: 1>0
    np.testing.assert_array_equal(count_forgetting(seq), [2, 1, 1, 1, 1])
    np.testing.assert_array_equal(forgetting_events(seq[2], seq[3]), [1, 0, 1, 0, 0])
    assert count_forgetting(seq[:1]).tolist() == [0] * 5  # one presentation: no event
    with pytest.raises(ValueError, match="same shape"):
        forgetting_events([True], [True, False])


def test_queue_head_out_tail_in_then_shuffled_once_cycled():
    n, removed, k = 30, 9, 3
    state = initial_removal(n, removed, seed=4)
    assert sorted(state.queue.tolist()) == np.flatnonzero(~state.active).tolist()
    forgets = np.arange(n)[::-1] % 7  # difficulties with ties
    for update in range(5):  # 9 / 3 = 3 updates cycle the initial queue
        before = state
        state = sieve_update(state, forgets, k, seed=4)
        head = before.queue[:k]
        stayed = np.flatnonzero(before.active & state.active)
        leaving = np.flatnonzero(before.active & ~state.active)
        # the head came back; the k easiest active samples left
        assert state.active[head].all() and len(leaving) == k
        assert forgets[leaving].max() <= forgets[stayed].min()
        fifo = list(before.queue[k:]) + sorted(leaving, key=lambda i: forgets[i])
        if update < 2:  # initial queue not yet cycled: first in, first out, leavers at the tail
            assert not state.cycled
            assert state.queue[:-k].tolist() == fifo[:-k]
            assert sorted(state.queue[-k:].tolist()) == sorted(leaving.tolist())
        else:  # from the update that completes the cycle on: shuffled
            assert state.cycled and state.returned_initial == removed
            assert sorted(state.queue.tolist()) == sorted(fifo)
            assert state.queue.tolist() != fifo
        assert state.active.sum() == n - removed and len(state.queue) == removed
    # the seed fixes every decision
    assert sieve_update(before, forgets, k, seed=4).queue.tolist() == state.queue.tolist()
    assert sieve_update(before, forgets, k, seed=5).queue.tolist() != state.queue.tolist()


def test_every_sample_is_used_at_least_once_over_a_run():
    rng = np.random.default_rng(0)
    for n, fraction, ratio, epochs in [(100, 0.25, 0.3, 160), (100, 0.5, 0.3, 12),
                                       (64, 0.3, 1.0, 2), (500, 0.1, 0.05, 100)]:
        plan = plan_sieve(n, fraction, ratio, epochs)
        state = initial_removal(n, plan.removed, seed=1)
        used = np.zeros(n, bool)
        for epoch in range(epochs):
            if F.is_update_epoch(epoch, plan.interval):
                state = sieve_update(state, rng.integers(0, 3, n), plan.k, seed=1)
            used |= state.active
            assert state.active.sum() == plan.active
        assert used.all(), (n, fraction, ratio, epochs)
    # the settings check is what makes it hold: too few updates are refused
    with pytest.raises(ValueError, match="Not every sample would be used"):
        plan_sieve(100, 0.25, 0.3, epochs=2)
    # a run with no update at all says how long it must be, not an impossible ratio
    for ratio in (0.3, None):
        with pytest.raises(ValueError, match="give no update.*Train at least 2 epochs"):
            plan_sieve(100, 0.25, ratio, epochs=1)
    # without a ratio the paper's 0.3 is raised just enough to cycle the queue
    assert plan_sieve(100, 0.25, None, epochs=3).k == 13  # 25 back in 2 updates
    with pytest.raises(ValueError, match="removes no whole batch"):
        plan_sieve(100, 0.1, None, epochs=10, batch_size=32)  # 3 of 3 batches would stay


def test_plan_defaults_scale_with_the_run():
    plan = plan_sieve(50000, 0.25, 0.3, epochs=160)
    assert (plan.removed, plan.k, plan.interval) == (12500, 3750, 5)
    assert plan_sieve(50000, 0.25, 0.3, epochs=32).interval == 1
    assert plan_sieve(1000, 0.25, 0.3, epochs=160, batch_size=32).active % 32 == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(fraction=0.0), "fraction must lie in"), (dict(fraction=1.0), "fraction must lie in"),
    (dict(update_ratio=0.0), "update_ratio must lie in"),
    (dict(update_ratio=1.5), "update_ratio must lie in"),
    (dict(interval_epochs=0), "positive integer"), (dict(interval_epochs=-2), "positive integer"),
])
def test_bad_settings_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataSieving(**kwargs)


# -- in fit ---------------------------------------------------------------------------------
def _bundle(seed=0, n=N):
    rng = np.random.default_rng(0)
    x = rng.random((n, 4, 4, 1)).astype("float32")
    y = rng.integers(0, CLASSES, n)  # random labels: predictions keep flipping
    return kgrow.data.from_arrays((x, y), (x[:16], y[:16]), batch_size=BATCH, seed=seed)


def _model(lr=0.5):
    inp = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="head",
                             kernel_initializer=keras.initializers.GlorotUniform(seed=0))(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(lr, momentum=0.5), "categorical_crossentropy")
    return model


class SeenPerEpoch(keras.callbacks.Callback):
    """A second prediction hook: which ids the step saw in each epoch, and steps."""

    def __init__(self, n=N):
        super().__init__()
        self.seen = tf.Variable(tf.zeros([n], tf.int32), trainable=False)
        self.per_epoch, self.steps = [], []

    def __call__(self, batch):
        self.seen.scatter_nd_add(tf.reshape(batch.ids, [-1, 1]),
                                 tf.ones_like(batch.ids, tf.int32))

    def on_train_begin(self, logs=None):
        TrainingController.of(self.model).hooks.add_prediction_hook(self, name="seen")

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.assign(tf.zeros_like(self.seen))
        self.steps.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.steps[-1] += 1

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(self.seen.numpy().copy())


def test_active_set_changes_inside_one_fit_and_the_pipeline_serves_exactly_it():
    bundle, model = _bundle(), _model()
    sieve = DataSieving(0.25, update_ratio=0.5, interval_epochs=1)
    seen = SeenPerEpoch()
    actives = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            actives.append(sieve.state.active.copy())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(bundle.train_with_ids(), epochs=4, verbose=0, shuffle=False,
                            callbacks=[sieve, seen, Snapshot()])
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert seen.steps == [9] * 4  # 72 active samples / 8, from epoch 0 on
    for counts, active in zip(seen.per_epoch, actives):
        np.testing.assert_array_equal(counts, active.astype(np.int32))  # each active once
    assert all((a != b).any() for a, b in zip(actives, actives[1:]))
    assert history.history["sieve/active_samples"] == [72.0] * 4
    assert history.history["sieve/removed"] == [24.0] * 4
    assert history.history["sieve/queue_cycled"] == [0.0, 0.0, 1.0, 1.0]  # 24 / 12 updates
    assert sieve.used.all()
    assert [e["action"] for e in sieve.events] == ["initial_removal"] + ["update"] * 3


def test_in_step_counts_match_a_host_recomputation():
    bundle, model = _bundle(), _model(lr=1.0)
    tracker = ForgettingTracker(N)
    preds = tf.Variable(tf.zeros([4, N, CLASSES]), trainable=False)
    epoch_var = tf.Variable(0, trainable=False)

    def record(batch):
        ids = tf.reshape(batch.ids, [-1, 1])
        rows = tf.concat([tf.fill(tf.shape(ids), tf.cast(epoch_var, tf.int64)), ids], axis=1)
        preds.scatter_nd_update(rows, batch.y_pred)

    class Epoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epoch_var.assign(epoch)

    ctrl = TrainingController.of(model)
    ctrl.hooks.add_prediction_hook(tracker, name="tracker")
    ctrl.hooks.add_prediction_hook(record, name="record")
    model.fit(bundle.train_with_ids(), epochs=4, verbose=0, shuffle=False, callbacks=[Epoch()])
    labels = np.zeros(N, int)
    for _, y, ids in bundle.train_with_index():
        labels[ids.numpy()] = np.argmax(y.numpy(), axis=1)
    correct = np.argmax(preds.numpy(), axis=-1) == labels[None, :]
    expected = count_forgetting(correct)
    last, forgets = tracker.read()
    assert expected.sum() > 5  # the sequence really has forgetting events
    np.testing.assert_array_equal(forgets, expected)
    np.testing.assert_array_equal(last, correct[-1])


def test_tracker_reads_sparse_labels_and_single_column_outputs():
    from kgrow.controller.step import PredictionBatch
    from kgrow.methods.data_sieving import batch_correct
    ids = tf.constant([3, 0], tf.int64)
    tracker = ForgettingTracker(4)
    scores = tf.constant([[0.1, 0.9], [0.8, 0.2]])
    tracker(PredictionBatch(ids, tf.constant([1, 0]), scores))           # both right
    tracker(PredictionBatch(ids, tf.constant([0, 0]), scores))           # id 3 forgotten
    last, forgets = tracker.read()
    assert forgets.tolist() == [0, 0, 0, 1] and last.tolist() == [True, False, False, False]
    one_column = batch_correct(tf.constant([[1.0], [0.0]]), tf.constant([[0.7], [0.6]]))
    assert one_column.numpy().tolist() == [True, False]


def test_plain_train_data_is_a_clear_error_before_training():
    bundle, model = _bundle(), _model()
    before = model.get_layer("head").kernel.numpy().copy()
    with pytest.raises(ValueError, match=r"train_with_ids\(\)"):
        model.fit(bundle.train, epochs=4, verbose=0, shuffle=False,
                  callbacks=[DataSieving(0.25)])
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(fraction=0.97), "fewer than the minimum"),        # 0.36 of a batch left: none
    (dict(fraction=0.25, update_ratio=0.1), "Not every sample would be used"),
    (dict(fraction=0.25, interval_epochs=4), "Not every sample would be used"),
])
def test_impossible_settings_raise_before_training(kwargs, match):
    bundle, model = _bundle(), _model()
    before = model.get_layer("head").kernel.numpy().copy()
    with pytest.raises(ValueError, match=match):
        model.fit(bundle.train_with_ids(), epochs=4, verbose=0, shuffle=False,
                  callbacks=[DataSieving(**kwargs)])
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), before)


# -- resume and strategy --------------------------------------------------------------------
_Crash = CrashAtEpoch


def _sieve_run(epochs, callbacks=(), strategy=None):
    keras.utils.set_random_seed(3)
    bundle = _bundle(seed=5)
    if strategy is None:
        model = _model()
    else:
        with strategy.scope():
            model = _model()  # no controller yet: Keras' symbolic build must not see the ids
    sieve = DataSieving(0.25, update_ratio=0.5, interval_epochs=1, seed=11)
    model.fit(bundle.train_with_ids(), epochs=epochs, verbose=0, shuffle=False,
              callbacks=[sieve, *callbacks])
    return model, sieve


def _assert_same_sieve(a, b):
    assert a.state.queue.tolist() == b.state.queue.tolist()
    np.testing.assert_array_equal(a.state.active, b.state.active)
    np.testing.assert_array_equal(a.forgets, b.forgets)
    np.testing.assert_array_equal(a.last_correct, b.last_correct)
    assert a.events == b.events


def test_kill_and_resume_equals_the_uninterrupted_run(tmp_path):
    tf.config.experimental.enable_op_determinism()
    try:
        reference, ref_sieve = _sieve_run(4)
        directory = str(tmp_path / "ckpt")
        with pytest.raises(RuntimeError, match="simulated kill"):
            _sieve_run(4, [ControllerCheckpoint(directory), _Crash(at=1)])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resumed, sieve = _sieve_run(4, [ControllerCheckpoint(directory)])
        # train_with_ids() carries its selection: the data order is replayed too
        assert not [w for w in caught if "replay" in str(w.message)
                    or "ran out of data" in str(w.message)]
        assert len(sieve.events) == 4 and sieve.events[-1]["epoch"] == 3
        _assert_same_sieve(sieve, ref_sieve)
        assert ref_sieve.forgets.sum() > 0
        assert_weights_match(resumed, reference)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


def test_mirrored_strategy_counts_and_decisions_match_single_device():
    _, single = _sieve_run(4)
    _, mirrored = _sieve_run(4, strategy=new_mirrored_strategy())
    assert single.forgets.sum() + single.last_correct.sum() > 0
    _assert_same_sieve(mirrored, single)


# -- engine pieces the method needed --------------------------------------------------------
def test_epoch_length_follows_a_growing_selection_inside_one_fit():
    from kgrow.controller import ControlledCallback, Phase
    bundle, model = _bundle(), _model()
    bundle.selection.set_active(np.arange(48))  # fit starts with 6 batches

    class Grow(ControlledCallback):
        phase = Phase.DATA

        def controlled_epoch_begin(self, epoch):
            if epoch == 1:
                bundle.selection.set_active(np.arange(N))  # 12 batches from epoch 1

    seen = SeenPerEpoch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(bundle.train_with_ids(), epochs=2, verbose=0, shuffle=False,
                  callbacks=[Grow(), seen])
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert seen.steps == [6, 12]
    assert seen.params["steps"] == 12  # what the progress bar and callbacks are told
    np.testing.assert_array_equal(seen.per_epoch[1], np.ones(N))


def test_bench_method_trains_on_ids_and_composes():
    from kgrow import bench
    from kgrow.bench import registry
    bundle = _bundle()
    context = registry.MethodContext(model_name="resnet20", model_kwargs={"width": 4},
                                     input_shape=(4, 4, 1), num_classes=CLASSES,
                                     train=kgrow.training.TrainConfig(epochs=10, seed=2),
                                     data=bundle, steps_per_epoch=12)
    setup = registry.setup_method("sieve", context)
    assert registry.data_options("sieve") == {"sample_ids": True}
    assert isinstance(setup.callbacks[0], DataSieving)
    assert setup.callbacks[0].selection is bundle.selection
    # The held-out share each bench method names (SpFDE splits: freeze_15+sieve_15,
    # freeze_5+sieve_22).
    for name, fraction in (("sieve", 0.25), ("sieve_15", 0.15), ("sieve_22", 0.22)):
        (cb,) = registry.setup_method(name, context).callbacks
        assert cb.fraction == fraction and cb.epochs == 10 and cb.seed == 2, name
        assert registry.data_options(name) == {"sample_ids": True}, name

    def also_ids(build_model, ctx):
        return registry.MethodSetup(build_model(), [])

    also_ids.data_options = {"sample_ids": True}
    bench.register_method("ids_demo", also_ids)
    try:
        assert registry.data_options("sieve+ids_demo") == {"sample_ids": True}
        assert len(registry.setup_method("sieve+ids_demo", context).callbacks) == 1
    finally:
        bench.unregister_method("ids_demo")

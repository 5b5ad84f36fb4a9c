"""LiveSelection, alone and driving the training pipeline between epochs."""
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow.data import AugmentConfig, LiveSelection, from_arrays, from_datasets
from kgrow.data import selection_of as kgrow_selection_of


def id_bundle(n=40, batch_size=8, shape=(6, 6, 3), **kwargs):
    x = np.random.default_rng(0).integers(0, 256, (n,) + shape).astype(np.uint8)
    return from_arrays((x, np.arange(n)), None, num_classes=n, label_mode="sparse",
                       batch_size=batch_size, **kwargs)


def epoch(bundle):
    batches = [(images.shape, labels.numpy().tolist()) for images, labels in bundle.train]
    return [s for s, _ in batches], [i for _, ids in batches for i in ids]


# -- the object alone -----------------------------------------------------------
def test_set_active_from_indices_and_mask():
    sel = LiveSelection(10)
    assert sel.num_active == 10 and sel.current_image_size() is None
    sel.set_active([7, 1, 3])
    assert sel.active_indices().tolist() == [1, 3, 7] and sel.num_active == 3
    mask = np.zeros(10, bool)
    mask[[0, 9]] = True
    sel.set_active(mask)
    assert sel.active_mask().tolist() == mask.tolist()
    sel.set_active(range(10))
    assert sel.num_active == 10


@pytest.mark.parametrize("selection, message", [
    ([0, 10], r"Indices must lie in \[0, 10\)"),
    ([-1], r"Indices must lie in \[0, 10\)"),
    ([2, 2], "distinct"),
    (np.ones(9, bool), r"shape \(10,\)"),
    ([0.5, 1.5], "integer indices"),
    ([], "keeps 0 training samples, fewer than the minimum of 1"),
])
def test_set_active_rejects_bad_input(selection, message):
    sel = LiveSelection(10)
    with pytest.raises(ValueError, match=message):
        sel.set_active(selection)
    assert sel.num_active == 10  # unchanged


def test_min_active_protects_full_batches():
    sel = LiveSelection(10, min_active=4)
    with pytest.raises(ValueError, match="keeps 3 training samples, fewer than the minimum of 4"):
        sel.set_active([0, 1, 2])
    with pytest.raises(ValueError, match="exceeds"):
        LiveSelection(3, min_active=4)


def test_image_size():
    sel = LiveSelection(4, image_size=(8, 6))
    assert sel.current_image_size() == (8, 6)
    sel.set_image_size(5)
    assert sel.image_size.numpy().tolist() == [5, 5]
    sel.set_image_size(None)
    assert sel.current_image_size() is None
    for bad in ((0, 4), (4, -1), (2.5, 3)):
        with pytest.raises(ValueError, match="positive integer"):
            sel.set_image_size(*bad)


def test_state_roundtrip_and_mismatch():
    sel = LiveSelection(6)
    sel.set_active([1, 4])
    sel.set_image_size(7, 9)
    sel.set_epoch(3)
    state = sel.get_state()
    assert state == {"num_train": 6, "active": state["active"], "image_size": [7, 9], "epoch": 3,
                     "augment_scale": [1.0, 1.0], "batch_size": 0}
    assert isinstance(state["active"], np.ndarray) and state["active"].tolist() == \
        [False, True, False, False, True, False]
    other = LiveSelection(6)
    other.set_state(state)
    assert other.get_state()["active"].tolist() == state["active"].tolist()
    assert (other.current_image_size(), int(other.epoch.numpy())) == ((7, 9), 3)
    with pytest.raises(ValueError, match="State is for 6 training samples"):
        LiveSelection(5).set_state(state)
    with pytest.raises(ValueError, match="misses keys"):
        other.set_state({"num_train": 6})


def test_variables_live_on_the_cpu_outside_strategies(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        sel = LiveSelection(4)
    for var in (sel.active, sel.image_size, sel.epoch, sel.augment_scale):
        assert not isinstance(var, tf.distribute.DistributedValues)
        assert var.device.endswith("CPU:0")
        assert not var.trainable


# -- driving the pipeline ----------------------------------------------------------
def test_changes_between_epochs_take_effect_without_rebuilding():
    bundle = id_bundle(n=40, batch_size=8, resizable=True)
    train = bundle.train
    shapes, ids = epoch(bundle)
    assert len(shapes) == 5 and sorted(ids) == list(range(40))
    assert all(s == (8, 6, 6, 3) for s in shapes)

    keep = np.arange(0, 40, 3)  # 14 samples -> 1 full batch of 8
    bundle.selection.set_active(keep)
    bundle.selection.set_image_size(4, 10)
    assert bundle.steps_per_epoch == 1
    shapes, ids = epoch(bundle)
    assert bundle.train is train
    assert shapes == [(8, 4, 10, 3)]
    assert set(ids) <= set(keep.tolist()) and len(set(ids)) == 8

    bundle.selection.set_active(np.ones(40, bool))
    bundle.selection.set_image_size(None)
    shapes, ids = epoch(bundle)
    assert len(shapes) == 5 and shapes[0] == (8, 6, 6, 3) and sorted(ids) == list(range(40))


def test_live_size_overrides_the_static_size_and_clearing_restores_it():
    bundle = id_bundle(n=16, batch_size=8, image_size=12, resizable=True)
    assert epoch(bundle)[0][0] == (8, 12, 12, 3)
    bundle.selection.set_image_size(3, 5)
    assert epoch(bundle)[0][0] == (8, 3, 5, 3)
    bundle.selection.set_image_size(None)
    assert epoch(bundle)[0][0] == (8, 12, 12, 3)


def test_fixed_size_bundles_have_static_shapes_and_refuse_other_sizes():
    bundle = id_bundle(n=16, batch_size=8, image_size=(12, 10))
    assert tuple(bundle.train.element_spec[0].shape) == (8, 12, 10, 3)
    assert bundle.selection.fixed_size == (12, 10)
    with pytest.raises(ValueError, match=r"fixed at \(12, 10\).*resizable=True"):
        bundle.selection.set_image_size(6, 6)
    state = bundle.selection.get_state()
    state["image_size"] = [6, 6]
    with pytest.raises(ValueError, match="resizable=True"):
        bundle.selection.set_state(state)
    bundle.selection.set_image_size(12, 10)  # its own size is fine
    bundle.selection.set_image_size(None)
    assert epoch(bundle)[0] == [(8, 12, 10, 3)] * 2
    # A resizable bundle leaves height and width open and follows the live size.
    resizable = id_bundle(n=16, batch_size=8, image_size=(12, 10), resizable=True)
    assert tuple(resizable.train.element_spec[0].shape) == (8, None, None, 3)
    assert resizable.selection.fixed_size is None


def test_selection_shared_by_fixed_and_resizable_bundles_is_refused():
    fixed = id_bundle(n=16, batch_size=8)
    with pytest.raises(ValueError, match="resizable bundle needs its own selection"):
        id_bundle(n=16, batch_size=8, selection=fixed.selection, resizable=True)
    with pytest.raises(ValueError, match="already pinned to"):
        id_bundle(n=16, batch_size=8, image_size=4, selection=fixed.selection)
    live = LiveSelection(16)
    live.set_image_size(5, 5)
    with pytest.raises(ValueError, match="live image size"):
        id_bundle(n=16, batch_size=8, selection=live)
    assert id_bundle(n=16, batch_size=8, selection=fixed.selection).selection is fixed.selection
    with pytest.raises(ValueError, match="resizable must be True or False"):
        id_bundle(n=16, batch_size=8, resizable="yes")


def test_epoch_counter_advances_and_reproduces_orders():
    bundle = id_bundle(seed=1)
    orders = [epoch(bundle)[1] for _ in range(3)]
    assert int(bundle.selection.epoch.numpy()) == 3
    replay = id_bundle(seed=1)
    replay.selection.set_epoch(2)
    assert epoch(replay)[1] == orders[2]
    restored = id_bundle(seed=1)
    state = bundle.selection.get_state()
    state["epoch"] = 1
    restored.selection.set_state(state)
    assert epoch(restored)[1] == orders[1]


def test_train_with_index_covers_active_samples_in_order():
    bundle = id_bundle(n=20, batch_size=8, resizable=True)
    bundle.selection.set_active(np.arange(1, 20, 2))
    bundle.selection.set_image_size(3, 3)
    before = int(bundle.selection.epoch.numpy())
    batches = list(bundle.train_with_index())
    assert [b[0].shape for b in batches] == [(8, 3, 3, 3), (2, 3, 3, 3)]
    indices = np.concatenate([b[2].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert indices.tolist() == list(range(1, 20, 2)) == labels.tolist()
    assert int(bundle.selection.epoch.numpy()) == before  # a side pass, not a training epoch
    shuffled = np.concatenate([b[2].numpy() for b in bundle.train_with_index(shuffle=True)])
    assert sorted(shuffled.tolist()) == indices.tolist() and shuffled.tolist() != indices.tolist()


def test_train_with_index_never_mixes():
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    mixing = AugmentConfig(mixup_alpha=1.0, cutmix_alpha=1.0, erasing_prob=0.5)
    bundle = from_arrays((x, np.arange(16) % 4), None, batch_size=8, augment=mixing)
    for images, labels, indices in bundle.train_with_index(augment=True):
        np.testing.assert_array_equal(np.max(labels, axis=1), 1.0)
        np.testing.assert_array_equal(np.argmax(labels, 1), indices.numpy() % 4)


def test_shared_selection_is_validated():
    with pytest.raises(ValueError, match="covers 10 training samples, but this training set has"):
        id_bundle(n=40, selection=LiveSelection(10))
    small = LiveSelection(40)
    small.set_active([0, 1, 2])
    with pytest.raises(ValueError, match="3 active samples, fewer than batch_size=8"):
        id_bundle(n=40, selection=small)
    shared = LiveSelection(40)
    bundle = id_bundle(n=40, selection=shared)
    assert bundle.selection is shared and shared.min_active == 8


def test_stream_sources_follow_the_selection_too():
    x = np.random.default_rng(0).integers(0, 256, (30, 6, 6, 1)).astype(np.uint8)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(30)))
    bundle = from_datasets(ds, None, num_classes=30, batch_size=5, label_mode="sparse",
                           subset=20, subset_mode="random", seed=2, resizable=True)
    kept = bundle.subset_indices
    shapes, ids = epoch(bundle)
    assert len(shapes) == 4 and sorted(ids) == sorted(kept.tolist())
    bundle.selection.set_active(np.arange(0, 20, 2))
    bundle.selection.set_image_size(3, 4)
    shapes, ids = epoch(bundle)
    assert shapes == [(5, 3, 4, 1)] * 2
    assert sorted(ids) == sorted(kept[::2].tolist())


@pytest.mark.parametrize("first, later", [(48, 16), (16, 48)])
def test_keras_fit_runs_each_epoch_of_the_live_selection_without_warnings(first, later):
    bundle = id_bundle(n=48, batch_size=8, shape=(8, 8, 1), resizable=True)
    bundle.selection.set_active(np.arange(first))
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(48)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Probe(keras.callbacks.Callback):
        steps, shapes = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.steps.append(0)
            if epoch == 1:  # the epoch's length follows the selection
                bundle.selection.set_active(np.arange(later))
                bundle.selection.set_image_size(5, 5)

        def on_train_batch_end(self, batch, logs=None):
            self.steps[-1] += 1

    probe = Probe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(bundle.train, epochs=3, verbose=0, callbacks=[probe])  # shuffle=True default
    assert probe.steps == [first // 8, later // 8, later // 8]
    assert int(bundle.selection.epoch.numpy()) == 3
    assert not [str(w.message) for w in caught if "ran out of data" in str(w.message)
                or "shuffle" in str(w.message)]


def test_keras_fit_arguments_that_a_dataset_cannot_take():
    bundle = id_bundle(n=32, batch_size=8, shape=(8, 8, 1))
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="`y` should not be passed"):
        model.fit(bundle.train, np.zeros(32), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="`sample_weight` should not be passed"):
        model.fit(bundle.train, sample_weight=np.ones(32), epochs=1, verbose=0)
    # class_weight is applied as for any dataset: all-zero weights give a zero loss
    history = model.fit(bundle.train, epochs=1, verbose=0,
                        class_weight={c: 0.0 for c in range(32)})
    assert history.history["loss"] == [0.0]


def test_map_keeps_the_dataset_live_other_transformations_do_not():
    bundle = id_bundle(n=32, batch_size=8, shape=(8, 8, 1))
    counted = bundle.train.map(lambda x, y: (x * 1.0, y))
    assert kgrow_selection_of(counted) is bundle.selection and len(counted) == 4
    assert kgrow_selection_of(bundle.train.take(2)) is None
    bundle.selection.set_active(np.arange(16))
    assert len(counted) == 2 and int(counted.cardinality()) == 2
    assert [b[0].shape[0] for b in counted] == [8, 8]

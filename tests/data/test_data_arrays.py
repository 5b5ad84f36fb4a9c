"""from_arrays: validation, normalization, subsets, resizing, label modes."""
import numpy as np
import pytest
import tensorflow as tf

import kgrow
from kgrow.data import from_arrays


def make_arrays(n=48, shape=(6, 5, 3), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n,) + shape).astype(np.uint8)
    y = np.arange(n) % classes
    return x, y


def ids_per_batch(dataset):
    """Sample ids of every batch (the tests use label = sample id)."""
    return [batch_labels.numpy().tolist() for _, batch_labels in dataset]


def id_bundle(n=40, batch_size=8, **kwargs):
    x, _ = make_arrays(n)
    return from_arrays((x, np.arange(n)), None, num_classes=n, label_mode="sparse",
                       batch_size=batch_size, **kwargs)


def test_shapes_and_info():
    x, y = make_arrays()
    bundle = from_arrays((x, y), (x[:10], y[:10]), name="toy", batch_size=16)
    assert bundle.info == kgrow.data.DatasetInfo("toy", 4, (6, 5, 3), 48, 10, "onehot")
    images, labels = next(iter(bundle.train))
    assert images.shape == (16, 6, 5, 3) and images.dtype == tf.float32
    assert labels.shape == (16, 4) and labels.dtype == tf.float32
    assert bundle.train.element_spec[0].shape.as_list() == [16, 6, 5, 3]  # static by default
    assert [b[0].shape[0] for b in bundle.test] == [10]
    assert bundle.test.element_spec[0].shape.as_list() == [None, 6, 5, 3]


def test_normalization_matches_hand_computation():
    x, y = make_arrays()
    bundle = from_arrays((x, y), (x, y), batch_size=48)
    mean, std = bundle.normalization
    pixels = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-12)
    images, labels = next(iter(bundle.test))
    np.testing.assert_allclose(images, (x - pixels.mean(0)) / pixels.std(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(labels, 1), y)


def test_float_images_in_unit_range_match_uint8():
    x, y = make_arrays()
    a = from_arrays((x, y), (x, y), batch_size=48)
    b = from_arrays((x.astype(np.float32) / 255.0, y), (x.astype(np.float32) / 255.0, y),
                    batch_size=48)
    np.testing.assert_allclose(a.normalization, b.normalization, rtol=1e-6)
    np.testing.assert_allclose(next(iter(a.test))[0], next(iter(b.test))[0], atol=1e-4)


def test_grayscale_gets_one_channel_and_keeps_it():
    x = np.random.default_rng(1).integers(0, 256, (20, 7, 7)).astype(np.uint8)
    bundle = from_arrays((x, np.arange(20) % 2), None, batch_size=5, augment="basic",
                         image_size=(9, 9))
    assert bundle.info.image_shape == (9, 9, 1)
    assert bundle.test is None and bundle.info.num_test == 0
    images, _ = next(iter(bundle.train))
    assert images.shape == (5, 9, 9, 1)


def test_constant_channel_is_not_divided_by_zero():
    x = np.zeros((8, 4, 4, 1), np.uint8)
    bundle = from_arrays((x, np.arange(8) % 2), None, batch_size=4)
    assert bundle.normalization == ((0.0,), (1.0,))
    images, _ = next(iter(bundle.train))
    assert np.all(images.numpy() == 0.0)


def test_sparse_labels_are_int32_ids():
    x, y = make_arrays()
    bundle = from_arrays((x, y[:, None]), (x, y), batch_size=48, label_mode="sparse")
    _, labels = next(iter(bundle.test))
    assert labels.dtype == tf.int32 and labels.numpy().tolist() == y.tolist()


def test_static_resize_applies_to_train_and_test():
    x, y = make_arrays()
    bundle = from_arrays((x, y), (x, y), batch_size=8, image_size=12)
    assert bundle.info.image_shape == (12, 12, 3)
    assert next(iter(bundle.train))[0].shape == (8, 12, 12, 3)
    test_images = next(iter(bundle.test))[0]
    assert test_images.shape == (8, 12, 12, 3)
    mean, std = (np.array(v, np.float32) for v in bundle.normalization)
    expected = (tf.image.resize(x[:8].astype(np.float32), (12, 12)).numpy() - mean) / std
    np.testing.assert_allclose(test_images, expected, atol=1e-4)


def test_subset_first_keeps_the_leading_samples():
    bundle = id_bundle(n=40, subset=16, subset_mode="first")
    assert bundle.info.num_train == 16
    assert bundle.subset_indices.tolist() == list(range(16))
    seen = sorted(sum(ids_per_batch(bundle.train), []))
    assert seen == list(range(16))


def test_subset_random_is_seeded_and_served():
    a = id_bundle(n=40, subset=16, subset_mode="random", seed=3)
    b = id_bundle(n=40, subset=16, subset_mode="random", seed=3)
    c = id_bundle(n=40, subset=16, subset_mode="random", seed=4)
    kept = a.subset_indices
    assert len(set(kept.tolist())) == 16 and kept.min() >= 0 and kept.max() < 40
    assert kept.tolist() == b.subset_indices.tolist()
    assert kept.tolist() != c.subset_indices.tolist()
    assert kept.tolist() != list(range(16))
    # Training sample i of the bundle is original sample kept[i]; labels are original ids.
    assert sorted(sum(ids_per_batch(a.train), [])) == sorted(kept.tolist())


def test_test_subset_evaluates_the_first_test_samples_whatever_the_seed():
    x, _ = make_arrays(40)
    for seed in (0, 5):
        bundle = from_arrays((x, np.arange(40)), (x[10:30], np.arange(10, 30)), num_classes=40,
                             label_mode="sparse", batch_size=8, seed=seed, test_subset=12)
        assert bundle.info.num_test == 12
        assert sum(ids_per_batch(bundle.test), []) == list(range(10, 22))
    with pytest.raises(ValueError, match=r"test_subset=21 is larger than the test set .*20"):
        from_arrays((x, np.arange(40)), (x[10:30], np.arange(10, 30)), num_classes=40,
                    batch_size=8, test_subset=21)


def test_stats_come_from_the_full_training_set():
    x, y = make_arrays()
    full = from_arrays((x, y), None, batch_size=8)
    part = from_arrays((x, y), None, batch_size=8, subset=8)
    assert full.normalization == part.normalization


@pytest.mark.parametrize("kwargs, message", [
    (dict(subset=49), "subset=49 is larger than the training set"),
    (dict(batch_size=64), "batch_size=64 is larger than the training set"),
    (dict(augment="fancy"), "Unknown augmentation preset 'fancy'"),
    (dict(label_mode="sparse", augment="deit"), "cannot be combined with MixUp/CutMix"),
    (dict(label_mode="categorical"), "label_mode must be one of"),
    (dict(subset_mode="last", subset=4), "subset_mode must be one of"),
    (dict(image_size=(0, 4)), "image_size must be None"),
    (dict(image_size="big"), "image_size must be None"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(seed=-1), "seed must be an int >= 0"),
    (dict(test_subset=0), "test_subset must be an int >= 1"),
    (dict(test_subset=4), r"test_subset=4 is larger than the test set .*\(0 samples\)"),
    (dict(num_classes=3), "labels out of range: found class id 3, but num_classes is 3"),
])
def test_bad_arguments(kwargs, message):
    x, y = make_arrays()
    with pytest.raises(ValueError, match=message):
        from_arrays((x, y), None, **kwargs)


@pytest.mark.parametrize("train, message", [
    ((np.zeros((4, 5)), np.zeros(4, int)), r"shape \[N, H, W\] or \[N, H, W, C\]"),
    ((np.zeros((4, 5, 5, 1, 1)), np.zeros(4, int)), r"shape \[N, H, W\] or \[N, H, W, C\]"),
    ((np.zeros((4, 5, 5)), np.zeros(3, int)), "4 images, 3 labels"),
    ((np.zeros((4, 5, 5)), np.zeros((4, 2), int)), "class ids of shape"),
    ((np.zeros((4, 5, 5)), np.zeros(4)), "labels must be integers"),
    ((np.zeros((4, 5, 5)), -np.ones(4, int)), "labels must be >= 0"),
    ((np.full((4, 5, 5), 300, np.int32), np.zeros(4, int)), r"must lie in \[0, 255\]"),
    ((np.full((4, 5, 5), -0.5), np.zeros(4, int)), r"\[0, 1\] or \[0, 255\]"),
    ((np.full((4, 5, 5), np.nan), np.zeros(4, int)), "NaN"),
    ((np.zeros((0, 5, 5)), np.zeros(0, int)), "empty"),
    (np.zeros((4, 5, 5)), r"pair \(x, y\)"),
])
def test_bad_arrays(train, message):
    with pytest.raises(ValueError, match=message):
        from_arrays(train, None, batch_size=1)


def test_train_test_mismatch():
    x, y = make_arrays()
    with pytest.raises(ValueError, match="differ in shape"):
        from_arrays((x, y), (x[:, :4], y))
    with pytest.raises(ValueError, match="share dtype"):
        from_arrays((x, y), (x.astype(np.float32) / 255, y))

"""Augmentation ops and configs, checked against hand computations."""
import numpy as np
import pytest
import tensorflow as tf

from kgrow.data import PRESETS, AugmentConfig, get_preset
from kgrow.data import augment as aug

SEED = tf.constant([3, 4], tf.int64)


def constant_batch(batch=8, size=10, channels=1):
    """Image b is filled with the value b, so every pixel tells its source sample."""
    values = np.arange(batch, dtype=np.float32)[:, None, None, None]
    return tf.constant(np.broadcast_to(values, (batch, size, size, channels)).copy())


def test_presets_follow_the_methods_file():
    assert set(PRESETS) == {"none", "basic", "deit"}
    assert get_preset("none").is_identity
    assert get_preset("basic") == AugmentConfig(crop_padding=4, horizontal_flip=True)
    deit = get_preset("deit")
    assert (deit.randaugment_magnitude, deit.randaugment_num_ops) == (9.0, 2)
    assert (deit.mixup_alpha, deit.cutmix_alpha, deit.erasing_prob) == (0.8, 1.0, 0.25)
    assert deit.horizontal_flip and deit.uses_mixing and deit.crop_padding == 0
    assert AugmentConfig.preset("deit", mixup_alpha=0.0).cutmix_alpha == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop_padding=-1), "crop_padding"),
    (dict(randaugment_magnitude=11), "randaugment_magnitude"),
    (dict(randaugment_num_ops=0), "randaugment_num_ops"),
    (dict(mixup_alpha=-0.1), "mixup_alpha"),
    (dict(erasing_prob=1.5), "erasing_prob must be a probability"),
])
def test_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"known presets: \['basic', 'deit', 'none'\]"):
        get_preset("autoaugment")


def test_crop_with_padding_is_a_window_of_the_padded_image():
    images = tf.random.uniform([16, 5, 7, 2], 1, 2)
    out = aug.random_crop_with_padding(images, 2, SEED).numpy()
    padded = np.pad(images.numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for b in range(16):
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(out[b], padded[b, dy:dy + 5, dx:dx + 7])]
        assert match, f"sample {b} is not a window of its padded image"
        offsets.add(match[0])
    assert len(offsets) > 1  # offsets are drawn per sample
    assert aug.random_crop_with_padding(images, 0, SEED) is images


def test_flip_mirrors_some_samples_only():
    images = tf.random.uniform([32, 4, 4, 1])
    out = aug.random_horizontal_flip(images, SEED).numpy()
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images.numpy())]
    same = [np.array_equal(o, i) for o, i in zip(out, images.numpy())]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 4 < sum(mirrored) < 28


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    images, labels = constant_batch(), tf.one_hot(tf.range(8), 8)
    out_x, out_y = aug.mixup(images, labels, 0.8, SEED)
    out_x, out_y = out_x.numpy(), out_y.numpy()
    for b in range(8):
        # pixel = lam * b + (1 - lam) * partner; the label row has lam at b, 1 - lam at partner
        weights = out_y[b]
        assert weights.sum() == pytest.approx(1.0, abs=1e-6)
        assert out_x[b, 0, 0, 0] == pytest.approx(float(np.dot(weights, np.arange(8))), abs=1e-5)
        assert np.all(out_x[b] == out_x[b, 0, 0, 0])


def test_cutmix_label_weight_is_the_pasted_area():
    images, labels = constant_batch(size=12), tf.one_hot(tf.range(8), 8)
    for seed in range(5):
        out_x, out_y = aug.cutmix(images, labels, 1.0, tf.constant([seed, 9], tf.int64))
        out_x, out_y = out_x.numpy(), out_y.numpy()
        for b in range(8):
            own = np.mean(out_x[b] == b)
            if own < 1:  # a box was pasted from a different sample
                partner = int(out_x[b][out_x[b] != b][0])
                assert out_y[b, b] == pytest.approx(own, abs=1e-6)
                assert out_y[b, partner] == pytest.approx(1 - own, abs=1e-6)
            assert out_y[b].sum() == pytest.approx(1.0, abs=1e-6)


def test_cutmix_box_is_one_rectangle_shared_by_the_batch():
    images, labels = constant_batch(size=16), tf.one_hot(tf.range(8), 8)
    out_x, _ = aug.cutmix(images, labels, 1.0, SEED)
    masks = [out_x.numpy()[b, ..., 0] != b for b in range(8)]
    union = np.any(masks, axis=0)
    rows, cols = np.where(union)
    if rows.size:
        box = np.zeros_like(union)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        np.testing.assert_array_equal(union, box)


def test_random_erasing_fills_one_rectangle_within_area_bounds():
    images = tf.zeros([16, 20, 20, 3])
    out = aug.random_erasing(images, 1.0, SEED).numpy()
    for b in range(16):
        erased = np.any(out[b] != 0, axis=-1)
        rows, cols = np.where(erased)
        assert rows.size > 0
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert erased.sum() == h * w  # a filled rectangle (noise is never exactly 0)
        slack = (h + w) / 2 + 1  # h and w are rounded separately
        assert 0.02 * 400 - slack <= h * w <= 400 / 3 + slack
        assert 0.3 - 0.2 <= h / w <= 1 / 0.3 + 1.5
        assert h < 20 and w < 20
    assert np.array_equal(aug.random_erasing(images, 0.0, SEED).numpy(), images.numpy())


def test_erasing_probability_is_respected():
    out = aug.random_erasing(tf.zeros([400, 8, 8, 1]), 0.25, SEED).numpy()
    fraction = np.mean(np.any(out != 0, axis=(1, 2, 3)))
    assert 0.17 < fraction < 0.33


def test_mix_batch_switches_between_mixup_and_cutmix():
    images, labels = constant_batch(size=12), tf.one_hot(tf.range(8), 8)
    cfg = get_preset("deit")
    kinds = set()
    for seed in range(12):
        out_x, _ = aug.mix_batch(images, labels, cfg, tf.constant([seed, 1], tf.int64))
        values = out_x.numpy()
        integral = np.all(values == np.round(values))
        kinds.add("cutmix" if integral else "mixup")
    assert kinds == {"cutmix", "mixup"}
    unmixed = aug.mix_batch(images, labels, AugmentConfig(), SEED)
    assert unmixed[0] is images and unmixed[1] is labels

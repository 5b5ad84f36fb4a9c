"""RandAugment operations against PIL and hand-computed geometry."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from kgrow.data import randaugment as ra

RNG = np.random.default_rng(0)
RGB = RNG.integers(20, 200, (9, 11, 3)).astype(np.uint8)  # not using the full range
GRAY = RNG.integers(0, 256, (9, 11, 1)).astype(np.uint8)
FILL = tf.constant([0.0, 0.0, 0.0])


def run(op, image, level=0.9, sign=1.0, fill=FILL):
    out = op(tf.constant(image, tf.float32), tf.constant(level), tf.constant(sign),
             fill[: image.shape[-1]])
    return out.numpy()


def pil(image):
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def as_array(img, channels):
    out = np.asarray(img, dtype=np.float32)
    return out[..., None] if channels == 1 else out


@pytest.mark.parametrize("image", [RGB, GRAY], ids=["rgb", "gray"])
def test_point_operations_match_pil(image):
    c = image.shape[-1]
    np.testing.assert_array_equal(run(ra.invert, image), as_array(ImageOps.invert(pil(image)), c))
    np.testing.assert_array_equal(run(ra.equalize, image),
                                  as_array(ImageOps.equalize(pil(image)), c))
    np.testing.assert_allclose(run(ra.auto_contrast, image),
                               as_array(ImageOps.autocontrast(pil(image)), c), atol=1.0)
    for level in (0.0, 0.3, 0.9, 1.0):
        bits = 4 - int(4 * level)
        expected = ImageOps.posterize(pil(image), bits) if bits > 0 else \
            Image.new(pil(image).mode, pil(image).size)
        np.testing.assert_array_equal(run(ra.posterize, image, level), as_array(expected, c))
        threshold = 256 - int(256 * level)
        np.testing.assert_array_equal(run(ra.solarize, image, level),
                                      as_array(ImageOps.solarize(pil(image), threshold), c))
        added = np.where(image < 128, np.minimum(image.astype(int) + int(110 * level), 255), image)
        np.testing.assert_array_equal(run(ra.solarize_add, image, level), added)


@pytest.mark.parametrize("image", [RGB, GRAY], ids=["rgb", "gray"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_enhance_operations_match_pil(image, sign):
    c = image.shape[-1]
    factor = 1.0 + sign * 0.9 * 0.5
    for op, enhancer in ((ra.color, ImageEnhance.Color), (ra.contrast, ImageEnhance.Contrast),
                         (ra.brightness, ImageEnhance.Brightness),
                         (ra.sharpness, ImageEnhance.Sharpness)):
        expected = as_array(enhancer(pil(image)).enhance(factor), c)
        # PIL rounds its intermediate images to integers; one or two levels apart is the same.
        np.testing.assert_allclose(run(op, image, 0.5, sign), expected, atol=2.0,
                                   err_msg=op.__name__)


def test_enhance_factor_is_floored_at_0_1():
    out = run(ra.brightness, RGB, level=1.0, sign=-1.0)  # 1 - 0.9 = 0.1
    np.testing.assert_allclose(out, RGB * 0.1, rtol=1e-5)


def centroid(image):
    weights = image[..., 0]
    ys, xs = np.indices(weights.shape)
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def spot(size=31, at=(20, 10), sigma=1.5):
    """A smooth blob (a single pixel would bias the centroid under interpolation)."""
    ys, xs = np.indices((size, size))
    blob = np.exp(-((xs - at[0]) ** 2 + (ys - at[1]) ** 2) / (2 * sigma ** 2))
    return (255.0 * blob)[..., None].astype(np.float32)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rotate_moves_a_point_by_the_expected_angle(sign):
    image, point, centre = spot(), np.array([20.0, 10.0]), np.array([15.0, 15.0])
    out = run(ra.rotate, image, level=1.0, sign=sign, fill=tf.constant([0.0]))
    theta = -sign * np.deg2rad(30.0)  # output(x) = input(R(theta_op) (x - c) + c)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    np.testing.assert_allclose(centroid(out), rot @ (point - centre) + centre, atol=0.05)


def test_shear_and_translate_move_a_point_as_specified():
    image, fill = spot(), tf.constant([0.0])
    sx = 0.3 * 0.5
    np.testing.assert_allclose(centroid(run(ra.shear_x, image, 0.5, 1.0, fill)),
                               [20 - sx * 10, 10], atol=0.05)
    np.testing.assert_allclose(centroid(run(ra.shear_y, image, 0.5, 1.0, fill)),
                               [20, 10 - sx * 20], atol=0.05)
    shift = 0.45 * 0.5 * 31
    np.testing.assert_allclose(centroid(run(ra.translate_x, image, 0.5, -1.0, fill)),
                               [20 + shift, 10], atol=0.05)
    np.testing.assert_allclose(centroid(run(ra.translate_y, image, 0.5, 1.0, fill)),
                               [20, 10 - shift], atol=0.05)


def test_geometric_fill_is_per_channel():
    image = np.full((8, 8, 3), 50, np.uint8)
    fill = tf.constant([10.0, 20.0, 30.0])
    # 0.45 * 1.0 * 8 = 3.6 pixels shifted out: the first 3 columns are pure fill.
    out = run(ra.translate_x, image, 1.0, -1.0, fill)
    np.testing.assert_allclose(out[:, :3], np.broadcast_to([10.0, 20.0, 30.0], (8, 3, 3)))
    np.testing.assert_allclose(out[:, 4:], 50.0)


def test_zero_level_geometry_is_identity():
    for op in (ra.rotate, ra.shear_x, ra.shear_y, ra.translate_x, ra.translate_y):
        np.testing.assert_allclose(run(op, RGB, level=0.0), RGB, atol=1e-3, err_msg=op.__name__)


def test_rand_augment_is_seeded_and_bounded():
    image = tf.constant(RGB, tf.float32)
    a = ra.rand_augment(image, tf.constant([1, 2]), magnitude=9, fill=[100.0, 100.0, 100.0])
    b = ra.rand_augment(image, tf.constant([1, 2]), magnitude=9, fill=[100.0, 100.0, 100.0])
    np.testing.assert_array_equal(a, b)
    outs = [ra.rand_augment(image, tf.constant([s, 0]), magnitude=9).numpy() for s in range(20)]
    assert all(o.shape == RGB.shape and o.min() >= 0 and o.max() <= 255 for o in outs)
    changed = sum(not np.allclose(o, RGB) for o in outs)
    # Two ops applied with probability 0.5 each: about 3 in 4 images change.
    assert 8 <= changed <= 20


def test_rand_augment_with_zero_probability_is_identity():
    out = ra.rand_augment(tf.constant(GRAY, tf.float32), tf.constant([5, 5]), magnitude=9,
                          prob=0.0)
    np.testing.assert_array_equal(out, GRAY.astype(np.float32))


def test_rand_augment_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="C in \\(1, 3\\)"):
        ra.rand_augment(tf.zeros([4, 4, 2]), tf.constant([0, 0]), magnitude=5)

"""RandAugment on single images with tf ops, calibrated like timm's ``rand-mX``.

Keras 3.15 ships ``keras.layers.RandAugment``, but its ``factor`` is not the
RandAugment magnitude of the papers: it is handed unchanged to each sub-layer,
so ``factor=0.9`` rotates by up to 0.9 * 360 degrees and translates by up to
90% of the image, in one direction only, and it picks the same operations for
the whole batch. DeiT's recipe (``rand-m9-mstd0.5-inc1``, see METHODS.md)
needs per-image operations on timm's magnitude scale, so this module
implements that policy:

* magnitude ``m`` on a 0-10 scale; each applied operation draws its own
  magnitude from ``N(m, magnitude_std)`` clipped to ``[0, 10]``; ``level =
  magnitude / 10``;
* ``num_ops`` operations per image chosen uniformly with replacement from the
  15 "increasing" operations below, each applied with probability ``prob``;
* signed operations (rotate, shear, translate, enhance) pick a random sign.

======================  =============================================
operation               strength at ``level``
======================  =============================================
auto_contrast           -- (stretch each channel to [0, 255])
equalize                -- (histogram equalization per channel, as PIL)
invert                  --
rotate                  +-30 * level degrees
posterize               keep ``4 - int(4 * level)`` bits
solarize                invert pixels >= ``256 - int(256 * level)``
solarize_add            add ``int(110 * level)`` to pixels < 128
color                   saturation factor ``1 +- 0.9 * level``
contrast                contrast factor ``1 +- 0.9 * level``
brightness              brightness factor ``1 +- 0.9 * level``
sharpness               sharpness factor ``1 +- 0.9 * level``
shear_x, shear_y        shear +-0.3 * level
translate_x/_y          +-0.45 * level of the image side
======================  =============================================

(enhance factors are floored at 0.1, as in timm). Images are float32
``[H, W, C]`` on the 0-255 scale with 1 or 3 channels; geometric operations
fill uncovered pixels with a per-channel ``fill`` value (the dataset mean).
"""
import functools
import math

import tensorflow as tf

MAX_MAGNITUDE = 10.0
_ENHANCE_RANGE = 0.9
_ROTATE_DEGREES = 30.0
_SHEAR = 0.3
_TRANSLATE = 0.45
_SOLARIZE_ADD = 110.0
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


# -- helpers -------------------------------------------------------------------
def _clip(image):
    return tf.clip_by_value(image, 0.0, 255.0)


def _blend(degenerate, image, factor):
    """PIL's ``Image.blend(degenerate, image, factor)``, clipped to [0, 255]."""
    return _clip(degenerate + factor * (image - degenerate))


def _grayscale(image):
    """Luma ``[H, W, 1]`` of an RGB image; a 1-channel image is its own luma."""
    if image.shape[-1] == 1:
        return image
    weights = tf.constant(_GRAY_WEIGHTS, image.dtype)
    return tf.reduce_sum(image * weights, axis=-1, keepdims=True)


def _enhance_factor(level, sign):
    return tf.maximum(0.1, 1.0 + sign * _ENHANCE_RANGE * level)


def _affine(image, matrix, fill):
    """Applies a projective transform (output -> input coordinates).

    ``matrix`` is ``[a0, a1, a2, b0, b1, b2, 0, 0]`` as in PIL's
    ``Image.transform(AFFINE)``. Transforming ``image - fill`` with zero fill
    and adding ``fill`` back gives exact per-channel fill values, because the
    bilinear interpolation is linear.
    """
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(image - fill)[tf.newaxis],
        transforms=tf.cast(tf.reshape(matrix, [1, 8]), tf.float32),
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    return _clip(out + fill)


# -- operations: f(image, level, sign, fill) -> image ---------------------------
def auto_contrast(image, level=None, sign=None, fill=None):
    """Stretches every channel linearly so its minimum is 0 and maximum 255."""
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    span = hi - lo
    stretched = (image - lo) * (255.0 / tf.maximum(span, 1e-6))
    return tf.where(span > 0, _clip(stretched), image)


def equalize(image, level=None, sign=None, fill=None):
    """Histogram equalization of every channel (PIL ``ImageOps.equalize``).

    PIL's lookup table per channel: ``step = (count - count of the last
    non-empty bin) // 255`` and ``lut[i] = (step // 2 + sum(hist[:i])) //
    step``; channels with ``step == 0`` stay unchanged. All channels are
    handled at once (one histogram of ``value + 256 * channel``).
    """
    channels = image.shape[-1]
    pixels = tf.cast(tf.clip_by_value(tf.floor(image), 0.0, 255.0), tf.int32)
    offset = pixels + 256 * tf.range(channels)
    hist = tf.math.bincount(tf.reshape(offset, [-1]), minlength=256 * channels,
                            maxlength=256 * channels)
    hist = tf.reshape(hist, [channels, 256])
    last_bin = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1,
                               output_type=tf.int32)
    last_count = tf.gather(hist, last_bin, axis=1, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
    safe_step = tf.maximum(step, 1)[:, tf.newaxis]
    lut = tf.clip_by_value((tf.math.cumsum(hist, axis=1, exclusive=True) + safe_step // 2)
                           // safe_step, 0, 255)
    lut = tf.where(step[:, tf.newaxis] > 0, lut, tf.range(256)[tf.newaxis])
    flat = tf.reshape(offset, [-1])
    remapped = tf.gather(tf.reshape(lut, [-1]), flat)
    return tf.cast(tf.reshape(remapped, tf.shape(image)), image.dtype)


def invert(image, level=None, sign=None, fill=None):
    """Photographic negative."""
    return 255.0 - image


def rotate(image, level, sign, fill):
    """Rotates by ``sign * 30 * level`` degrees around the image centre."""
    angle = sign * _ROTATE_DEGREES * level * (math.pi / 180.0)
    shape = tf.cast(tf.shape(image), tf.float32)
    cy, cx = (shape[0] - 1.0) / 2.0, (shape[1] - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    matrix = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                       sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    return _affine(image, matrix, fill)


def posterize(image, level, sign=None, fill=None):
    """Keeps the ``4 - int(4 * level)`` most significant bits of each value."""
    bits = 4.0 - tf.floor(4.0 * level)
    quantum = tf.pow(2.0, 8.0 - bits)
    return tf.floor(tf.floor(image) / quantum) * quantum


def solarize(image, level, sign=None, fill=None):
    """Inverts values >= ``256 - int(256 * level)``."""
    threshold = 256.0 - tf.floor(256.0 * level)
    return tf.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, level, sign=None, fill=None):
    """Adds ``int(110 * level)`` to values below 128."""
    added = tf.minimum(image + tf.floor(_SOLARIZE_ADD * level), 255.0)
    return tf.where(image < 128.0, added, image)


def color(image, level, sign, fill=None):
    """Blends with the grayscale image (saturation); no-op on 1 channel."""
    gray = tf.broadcast_to(_grayscale(image), tf.shape(image))
    return _blend(gray, image, _enhance_factor(level, sign))


def contrast(image, level, sign, fill=None):
    """Blends with the mean luma (PIL ``ImageEnhance.Contrast``)."""
    mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)
    return _blend(mean, image, _enhance_factor(level, sign))


def brightness(image, level, sign, fill=None):
    """Blends with black (PIL ``ImageEnhance.Brightness``)."""
    return _clip(image * _enhance_factor(level, sign))


def sharpness(image, level, sign, fill=None):
    """Blends with PIL's SMOOTH-filtered image; border pixels stay as they are."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    channels = image.shape[-1]
    kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(image[tf.newaxis], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(image)
    interior = tf.pad(tf.ones(shape[:2] - 2, tf.bool), [[1, 1], [1, 1]])[..., tf.newaxis]
    degenerate = tf.where(interior, smooth, image)
    return _blend(degenerate, image, _enhance_factor(level, sign))


def shear_x(image, level, sign, fill):
    """Output pixel ``(x, y)`` samples input ``(x + s * y, y)``, ``s = +-0.3 level``."""
    s = sign * _SHEAR * level
    return _affine(image, tf.stack([1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]), fill)


def shear_y(image, level, sign, fill):
    """Output pixel ``(x, y)`` samples input ``(x, y + s * x)``."""
    s = sign * _SHEAR * level
    return _affine(image, tf.stack([1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0]), fill)


def translate_x(image, level, sign, fill):
    """Shifts by ``+-0.45 * level`` of the width."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    t = sign * _TRANSLATE * level * width
    return _affine(image, tf.stack([1.0, 0.0, t, 0.0, 1.0, 0.0, 0.0, 0.0]), fill)


def translate_y(image, level, sign, fill):
    """Shifts by ``+-0.45 * level`` of the height."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    t = sign * _TRANSLATE * level * height
    return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, t, 0.0, 0.0]), fill)


#: The operation set (timm's ``_RAND_INCREASING_TRANSFORMS``), in a fixed order.
OPERATIONS = (
    ("auto_contrast", auto_contrast),
    ("equalize", equalize),
    ("invert", invert),
    ("rotate", rotate),
    ("posterize", posterize),
    ("solarize", solarize),
    ("solarize_add", solarize_add),
    ("color", color),
    ("contrast", contrast),
    ("brightness", brightness),
    ("sharpness", sharpness),
    ("shear_x", shear_x),
    ("shear_y", shear_y),
    ("translate_x", translate_x),
    ("translate_y", translate_y),
)


def rand_augment(image, seed, magnitude, num_ops=2, magnitude_std=0.5, prob=0.5, fill=0.0):
    """Applies RandAugment to one image, deterministically given ``seed``.

    Args:
        image: float32 ``[H, W, C]`` (C is 1 or 3) with values in [0, 255].
        seed: int32/int64 tensor of shape ``[2]`` (a stateless RNG seed).
        magnitude: Mean magnitude on the 0-10 scale (DeiT uses 9).
        num_ops: Operations drawn per image (with replacement).
        magnitude_std: Standard deviation of the per-operation magnitude
            (0 for a fixed magnitude).
        prob: Probability that each drawn operation is applied.
        fill: Per-channel value for pixels that geometric operations uncover
            (scalar or length-C vector).

    Returns:
        The augmented float32 image, same shape, values in [0, 255].

    Example:
        >>> import tensorflow as tf
        >>> img = tf.random.uniform([32, 32, 3], 0, 255)
        >>> out = rand_augment(img, tf.constant([1, 2]), magnitude=9)
        >>> out.shape
        TensorShape([32, 32, 3])
    """
    if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"rand_augment expects one [H, W, C] image with C in (1, 3), got shape {image.shape}.")
    image = tf.cast(image, tf.float32)
    fill = tf.cast(tf.broadcast_to(tf.cast(fill, tf.float32), [image.shape[-1]]), tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num_ops)

    def one_op(i, img):
        draws = tf.random.stateless_uniform([2], seeds[i])
        op_index = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(seeds[i], 1),
            minval=0, maxval=len(OPERATIONS), dtype=tf.int32)
        noise = tf.random.stateless_normal(
            [], tf.random.experimental.stateless_fold_in(seeds[i], 2))
        magnitude_i = tf.clip_by_value(magnitude + magnitude_std * noise, 0.0, MAX_MAGNITUDE)
        level = magnitude_i / MAX_MAGNITUDE
        sign = tf.where(draws[1] < 0.5, -1.0, 1.0)
        # Skipped operations map to an extra identity branch, so one Case op does all.
        op_index = tf.where(draws[0] < prob, op_index, len(OPERATIONS))
        branches = [functools.partial(f, img, level, sign, fill) for _, f in OPERATIONS]
        out = tf.switch_case(op_index, branches + [lambda: img])
        return i + 1, tf.ensure_shape(out, img.shape)

    # A loop (not a python unroll) keeps the graph at one copy of the operations,
    # which makes building and instantiating the tf.data function cheaper.
    _, image = tf.while_loop(lambda i, _: i < num_ops, one_op, (tf.constant(0), image))
    return image

"""Training augmentation: the `AugmentConfig` dataclass, presets and tf ops.

Every random draw here is stateless: it comes from a seed derived from
``(seed, pass index, batch index)``, so the same seed reproduces the same
augmented batches, in parallel ``tf.data`` maps and after a restart.

Where each augmentation runs in the training pipeline:

1. per image, before batching (pixels on the 0-255 scale): RandAugment
   (`kgrow.data.randaugment`);
2. per batch, on pixels: resize to the live/static size, random crop with
   zero padding (a per-sample offset), horizontal flip;
3. per batch, after normalization: random erasing, then MixUp or CutMix.

Why not the Keras 3.15 layers of the same names: ``keras.layers.CutMix`` and
``keras.layers.RandomErasing`` fail inside ``tf.data`` on images whose height
and width are unknown when the graph is built (they multiply the int32
dynamic size by a float: "Input 'y' of 'Mul' Op has type int32 that does not
match type float32"), which is always the case here because the live image
size can change between epochs. ``keras.layers.RandAugment`` is not on the
papers' magnitude scale (see `kgrow.data.randaugment`), ``keras.layers.
RandomCrop`` uses one offset per batch, and the Keras layers draw from seed
generator variables whose order is not reproducible in parallel maps. The ops
below follow timm, which DeiT's recipe uses:

* MixUp: one ``lam ~ Beta(alpha, alpha)`` per batch; each sample is mixed
  with a partner from a random permutation of the batch; labels are mixed
  with the same ``lam``.
* CutMix: one ``lam ~ Beta(alpha, alpha)`` per batch; a box of side
  ``sqrt(1 - lam)`` times the image side, centred uniformly and clipped to
  the image, is pasted from the partner; ``lam`` is then corrected to the
  box's actual area.
* Random erasing: per image with probability ``p``, a rectangle of area
  U(0.02, 1/3) of the image and aspect ratio log-uniform in (0.3, 1/0.3)
  (first of 10 tries that fits) is filled with N(0, 1) noise (in normalized
  units, timm's "pixel" mode).

Presets (`PRESETS`):

* ``"none"``: nothing.
* ``"basic"``: random crop with 4 pixels of padding + horizontal flip (the
  CIFAR ResNet recipe).
* ``"deit"``: DeiT's recipe from METHODS.md: RandAugment m9 (mstd 0.5, two
  operations), MixUp alpha 0.8, CutMix alpha 1.0 (one of the two per batch,
  chosen with probability 0.5), random erasing with probability 0.25, and
  horizontal flip. Label smoothing 0.1 belongs to the loss, not the data.
"""
import dataclasses
import math

import tensorflow as tf

from kgrow.data import randaugment as _ra

@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What the training pipeline does to images and labels.

    Attributes:
        crop_padding: Pixels of zero padding for the random crop (the image is
            padded on every side and a window of the original size is cut at
            a random offset per sample); 0 disables it.
        horizontal_flip: Flip each image left-right with probability 0.5.
        randaugment_magnitude: RandAugment magnitude on the 0-10 scale, or
            ``None`` to disable RandAugment.
        randaugment_num_ops: Operations per image.
        randaugment_magnitude_std: Spread of the per-operation magnitude.
        randaugment_prob: Probability of applying each drawn operation.
        mixup_alpha: MixUp's Beta(alpha, alpha) parameter; 0 disables it.
        cutmix_alpha: CutMix's Beta(alpha, alpha) parameter; 0 disables it.
        mix_prob: Probability that a batch is mixed at all.
        mix_switch_prob: With both MixUp and CutMix on, the probability that a
            batch gets CutMix instead of MixUp.
        erasing_prob: Probability that random erasing hits an image.

    Example:
        >>> cfg = AugmentConfig(crop_padding=2, horizontal_flip=True)
        >>> cfg.uses_mixing
        False
        >>> AugmentConfig.preset("deit").mixup_alpha
        0.8
    """

    crop_padding: int = 0
    horizontal_flip: bool = False
    randaugment_magnitude: float | None = None
    randaugment_num_ops: int = 2
    randaugment_magnitude_std: float = 0.5
    randaugment_prob: float = 0.5
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    erasing_prob: float = 0.0

    def __post_init__(self):
        _check(isinstance(self.crop_padding, int) and self.crop_padding >= 0,
               f"crop_padding must be an int >= 0, got {self.crop_padding!r}.")
        m = self.randaugment_magnitude
        _check(m is None or 0 <= m <= _ra.MAX_MAGNITUDE,
               f"randaugment_magnitude must be None or in [0, {_ra.MAX_MAGNITUDE:g}], got {m!r}.")
        _check(isinstance(self.randaugment_num_ops, int) and self.randaugment_num_ops >= 1,
               f"randaugment_num_ops must be an int >= 1, got {self.randaugment_num_ops!r}.")
        _check(self.randaugment_magnitude_std >= 0,
               f"randaugment_magnitude_std must be >= 0, got {self.randaugment_magnitude_std}.")
        _check(self.mixup_alpha >= 0, f"mixup_alpha must be >= 0, got {self.mixup_alpha}.")
        _check(self.cutmix_alpha >= 0, f"cutmix_alpha must be >= 0, got {self.cutmix_alpha}.")
        for name in ("randaugment_prob", "mix_prob", "mix_switch_prob", "erasing_prob"):
            value = getattr(self, name)
            _check(0 <= value <= 1, f"{name} must be a probability in [0, 1], got {value}.")

    @property
    def uses_mixing(self):
        """True when labels get mixed (MixUp or CutMix), so they must be one-hot."""
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @property
    def uses_randaugment(self):
        return self.randaugment_magnitude is not None

    @property
    def is_identity(self):
        return self == AugmentConfig()

    @classmethod
    def preset(cls, name, **overrides):
        """A named preset (see `PRESETS`), optionally with fields overridden."""
        return dataclasses.replace(get_preset(name), **overrides)


def _check(condition, message):
    if not condition:
        raise ValueError(message)


PRESETS = {
    "none": AugmentConfig(),
    "basic": AugmentConfig(crop_padding=4, horizontal_flip=True),
    "deit": AugmentConfig(horizontal_flip=True, randaugment_magnitude=9.0,
                          randaugment_num_ops=2, randaugment_magnitude_std=0.5,
                          mixup_alpha=0.8, cutmix_alpha=1.0, erasing_prob=0.25),
}


def get_preset(name):
    """The `AugmentConfig` registered under ``name``.

    Raises:
        ValueError: unknown preset name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(
            f"Unknown augmentation preset {name!r}; known presets: {sorted(PRESETS)} "
            f"(or pass a kgrow.data.AugmentConfig).")
    return PRESETS[name]


def resolve(augment):
    """Turns the ``augment`` argument of the loaders into an `AugmentConfig`.

    Accepts ``None`` (no augmentation), a preset name or an `AugmentConfig`.
    """
    if augment is None:
        return PRESETS["none"]
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, str):
        return get_preset(augment)
    raise ValueError(
        f"augment must be None, a preset name {sorted(PRESETS)} or an AugmentConfig, "
        f"got {type(augment).__name__}.")


# -- stateless per-sample ops (reproducible from the seed) ----------------------
def random_crop_with_padding(images, padding, seed):
    """Zero-pads every side by ``padding`` and cuts each sample back at a random offset.

    Args:
        images: ``[B, H, W, C]`` float tensor.
        padding: Pixels of padding (python int >= 0).
        seed: Stateless seed, shape ``[2]``.

    Returns:
        ``[B, H, W, C]``; sample ``b`` equals ``padded[b, dy:dy+H, dx:dx+W]``
        with ``dy, dx`` uniform in ``[0, 2 * padding]``.

    Example:
        >>> import tensorflow as tf
        >>> x = tf.ones([2, 4, 4, 1])
        >>> random_crop_with_padding(x, 1, tf.constant([0, 1])).shape
        TensorShape([2, 4, 4, 1])
    """
    if padding == 0:
        return images
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis]
    cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def random_horizontal_flip(images, seed):
    """Flips each sample left-right with probability 0.5 (stateless)."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flip[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(images, [2]), images)




def _fold(seed, data):
    return tf.random.experimental.stateless_fold_in(seed, data)


def _sample_beta(alpha, seed):
    """One stateless draw from Beta(alpha, alpha) (ratio of two gamma draws)."""
    a = tf.random.stateless_gamma([], _fold(seed, 0), alpha=alpha)
    b = tf.random.stateless_gamma([], _fold(seed, 1), alpha=alpha)
    total = a + b
    # Both gamma draws can underflow to 0 for tiny alpha; Beta is then ~{0, 1}.
    return tf.where(total > 0, a / tf.maximum(total, 1e-30), 0.5)


def random_erasing(images, prob, seed, area=(0.02, 1.0 / 3.0), aspect=(0.3, 1.0 / 0.3),
                   attempts=10):
    """Erases one random rectangle per image with probability ``prob``.

    Args:
        images: ``[B, H, W, C]`` normalized images.
        prob: Probability that an image is erased.
        seed: Stateless seed, shape ``[2]``.
        area: Range of the erased area as a fraction of the image.
        aspect: Range of the rectangle's height/width ratio (log-uniform).
        attempts: Rectangles tried per image; the first that fits is used
            (none fitting: the image is left alone, as in timm).

    Returns:
        Images with the rectangles filled with N(0, 1) noise.

    Example:
        >>> import tensorflow as tf
        >>> x = tf.zeros([4, 8, 8, 3])
        >>> random_erasing(x, 1.0, tf.constant([0, 0])).shape
        TensorShape([4, 8, 8, 3])
    """
    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    u = tf.random.stateless_uniform([batch, attempts, 4], _fold(seed, 0))
    target = (area[0] + (area[1] - area[0]) * u[..., 0]) * height * width
    ratio = tf.exp(math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * u[..., 1])
    h = tf.round(tf.sqrt(target * ratio))
    w = tf.round(tf.sqrt(target / ratio))
    fits = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    pick = lambda t: tf.gather(t, first, axis=1, batch_dims=1)  # noqa: E731
    h, w, any_fit = pick(h), pick(w), tf.reduce_any(fits, axis=1)
    top = tf.floor(pick(u[..., 2]) * (height - h + 1))
    left = tf.floor(pick(u[..., 3]) * (width - w + 1))
    apply = any_fit & (tf.random.stateless_uniform([batch], _fold(seed, 1)) < prob)
    rows = tf.range(height)[tf.newaxis, :, tf.newaxis]
    cols = tf.range(width)[tf.newaxis, tf.newaxis, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None])
              & apply[:, None, None])
    noise = tf.random.stateless_normal(shape, _fold(seed, 2), dtype=images.dtype)
    return tf.where(inside[..., tf.newaxis], noise, images)


def mixup(images, labels, alpha, seed):
    """MixUp with one ``lam ~ Beta(alpha, alpha)`` per batch.

    Args:
        images: ``[B, H, W, C]`` float images.
        labels: ``[B, K]`` float (one-hot or soft) labels.
        alpha: Beta parameter (> 0).
        seed: Stateless seed, shape ``[2]``.

    Returns:
        ``(lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm])``.

    Example:
        >>> import tensorflow as tf
        >>> x, y = tf.random.uniform([4, 2, 2, 1]), tf.one_hot([0, 1, 2, 3], 4)
        >>> _, mixed = mixup(x, y, 0.8, tf.constant([0, 1]))
        >>> [round(float(v), 5) for v in tf.reduce_sum(mixed, axis=1)]
        [1.0, 1.0, 1.0, 1.0]
    """
    lam = _sample_beta(alpha, _fold(seed, 0))
    perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(images)[0]), _fold(seed, 1))
    images = lam * images + (1.0 - lam) * tf.gather(images, perm)
    labels = lam * labels + (1.0 - lam) * tf.gather(labels, perm)
    return images, labels


def cutmix(images, labels, alpha, seed):
    """CutMix with one box per batch (timm's ``rand_bbox`` + area correction).

    Args:
        images: ``[B, H, W, C]`` float images.
        labels: ``[B, K]`` float labels.
        alpha: Beta parameter (> 0).
        seed: Stateless seed, shape ``[2]``.

    Returns:
        Images with the box pasted from a permuted partner, and labels mixed
        by the fraction of the image each sample keeps.
    """
    lam = _sample_beta(alpha, _fold(seed, 0))
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    centre = tf.random.stateless_uniform([2], _fold(seed, 1), minval=0,
                                         maxval=tf.int32.max, dtype=tf.int32)
    cy, cx = centre[0] % height, centre[1] % width
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y1 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x1 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    rows = tf.range(height)[:, tf.newaxis]
    cols = tf.range(width)[tf.newaxis, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    perm = tf.random.experimental.stateless_shuffle(tf.range(shape[0]), _fold(seed, 2))
    images = tf.where(box[tf.newaxis, :, :, tf.newaxis], tf.gather(images, perm), images)
    kept = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
    labels = kept * labels + (1.0 - kept) * tf.gather(labels, perm)
    return images, labels


def mix_batch(images, labels, config, seed):
    """MixUp or CutMix per `AugmentConfig` (at most one of them per batch)."""
    if not config.uses_mixing:
        return images, labels
    draws = tf.random.stateless_uniform([2], _fold(seed, 0))

    def with_mixup():
        return mixup(images, labels, config.mixup_alpha, _fold(seed, 1))

    def with_cutmix():
        return cutmix(images, labels, config.cutmix_alpha, _fold(seed, 2))

    def mixed():
        if config.mixup_alpha > 0 and config.cutmix_alpha > 0:
            return tf.cond(draws[1] < config.mix_switch_prob, with_cutmix, with_mixup)
        return with_cutmix() if config.cutmix_alpha > 0 else with_mixup()

    if config.mix_prob >= 1:
        return mixed()
    return tf.cond(draws[0] < config.mix_prob, mixed, lambda: (images, labels))

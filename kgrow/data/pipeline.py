"""Building the ``tf.data`` pipelines of a `DataBundle`.

Training pipeline, one pass (= one iteration over ``bundle.train``):

1. When the pass starts (Keras creates the epoch's iterator after
   ``on_epoch_begin``), read the `LiveSelection`: the active mask, the live
   image size (resizable bundles only), the pass index ``epoch``
   (incremented for the next pass), and ``skip`` (cleared): a pass resumed
   mid-epoch leaves out its first ``skip`` batches before loading any
   image, and its batches keep their indices (hence their seeds).
2. Order the active sample indices with a stateless shuffle seeded by
   ``(seed, epoch)``: the same seed gives the same batches, every pass is
   ordered differently, and no global TF seed is involved. Streamed sources
   filter by the mask and use a shuffle buffer seeded the same way.
3. Per image (only when RandAugment is on, or for streamed sources): read,
   convert to float pixels on the 0-255 scale, resize (streams), RandAugment.
4. Batch with ``drop_remainder=True`` so the batch dimension is static.
5. Per batch: resize to the live size (or the static ``image_size``),
   random crop with padding, horizontal flip, normalization
   ``(x - mean) / std`` per channel, random erasing, label encoding,
   MixUp/CutMix. All random draws are stateless, seeded by
   ``(seed, epoch, batch index)``, so batches are reproducible even though
   the maps run in parallel.
6. Prefetch.

The training ``element_spec`` is static (batch, height, width, channels), so
the train function is traced for exactly these shapes. A bundle built with
``resizable=True`` follows the selection's live image size instead: its
height and width are then ``None`` in the ``element_spec``, and all batches
of one pass share one size. The test pipeline is neither shuffled nor
augmented, is resized to the static ``image_size`` only, and keeps fully
static shapes.
"""
import dataclasses
import sys
import weakref

import numpy as np
import tensorflow as tf
from keras.src.distribution import distribution_lib as keras_distribution
from keras.src.trainers.data_adapters.data_adapter import DataAdapter
from keras.src.trainers.data_adapters.tf_dataset_adapter import make_class_weight_map_fn
from keras.src.trainers.epoch_iterator import EpochIterator
from tensorflow.python.data.ops import dataset_ops

from kgrow.data import augment as augment_lib
from kgrow.data import randaugment
from kgrow.data.sources import ArraySource

LABEL_MODES = ("onehot", "sparse")
SUBSET_MODES = ("first", "random")
#: Shuffle buffer (elements) for streamed training sets.
STREAM_SHUFFLE_BUFFER = 10_000
_AUTOTUNE = tf.data.AUTOTUNE
# Key of the sample ids in the third element of `train_with_ids` batches
# (read by the controller's train step).
SAMPLE_IDS = "sample_ids"


def _device_stage_without_autotuning():
    """Turns off tf.data autotuning in the per-device stage of distributed iterators.

    Under a `tf.distribute` strategy Keras distributes the training data with
    ``experimental_distribute_dataset``, whose iterator reads the source
    pipeline (kgrow's: autotuning off, `_with_options`) through one small
    dataset per device: a generator plus ``prefetch(1)``, built by TF with
    default options, so each has its own autotuning thread although there is
    nothing to tune (a fixed buffer of one batch). Keras makes a new iterator
    every epoch, and with TF 2.21 deleting the old one waits for that thread:
    under 2 local MultiWorkerMirroredStrategy workers (ResNet-20, 6000
    samples, batch 128) the first batch of every epoch came 7 s late with
    plain Keras ``fit`` (12 s of training per epoch), and 0.3 s late with this
    stage's autotuning off. The source pipeline's own options are untouched.

    Patches TF's private builder of that stage (once); a TF without it is
    left as it is.
    """
    try:
        from tensorflow.python.data.ops import multi_device_iterator_ops as mdi
    except ImportError:  # pragma: no cover - another TF layout
        return
    build = getattr(mdi, "_create_device_dataset", None)
    if build is None or getattr(build, "_kgrow_no_autotune", False):
        return

    def create_device_dataset(*args, **kwargs):
        options = tf.data.Options()
        options.autotune.enabled = False
        return build(*args, **kwargs).with_options(options)

    create_device_dataset._kgrow_no_autotune = True
    mdi._create_device_dataset = create_device_dataset


_device_stage_without_autotuning()


def _with_options(ds):
    """`ds` with tf.data's autotuning thread off and sharding by data.

    With TF 2.21, deleting an iterator can block the caller for seconds while
    it waits for one of its background threads. Keras drops the previous
    epoch's iterator at the start of the next epoch: we measured 3-10 s stalls
    there in 6 of 30 epochs, and none in 30 epochs with autotuning off, so
    the thread waited for is autotuning's. `AUTOTUNE` parallelism then means
    one call per CPU core, which was as fast on these pipelines (side by side,
    10 epochs each).

    Under a multi-worker strategy every worker builds the same pipeline from
    in-memory arrays (no files to split), so it is sharded by data: each
    worker keeps its replicas' shares of every global batch. Said here,
    tf.distribute does not first try file sharding and warn that it failed.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options)


class LiveTrainDataset(dataset_ops.UnaryUnchangedStructureDataset, DataAdapter):
    """A bundle's training dataset: carries its `LiveSelection` and knows its length.

    ``cardinality()`` is the number of batches the selection gives now, so
    Keras knows the epoch length when ``fit`` starts instead of running the
    first epoch until the data ends (and then warning "Your input ran out of
    data"). ``selection`` lets `kgrow.controller.ControllerCheckpoint` attach
    the selection to the controller when ``fit`` starts, so that a resumed
    run restores the data order. Datasets derived from it (``.map``,
    ``.take``, ...) are plain ``tf.data`` datasets again, except ``.map``,
    which keeps one element per batch and so stays live (e.g. a meter counting
    samples around ``bundle.train``).

    It is also its own Keras data adapter, so ``fit`` takes it as it is:
    Keras warns for every plain ``tf.data`` dataset that it ignores
    ``shuffle=True`` (its default), which is noise here, because this dataset
    orders itself (an exact seeded shuffle per pass). As the adapter it also
    gives Keras each epoch's length when the epoch starts, so a selection
    that shrinks or grows between epochs runs exactly its batches (Keras
    otherwise keeps the first epoch's count: "Your input ran out of data"
    after a shrink, truncated epochs after a growth). ``class_weight`` works
    as for any dataset; ``y`` and ``sample_weight`` are refused as Keras
    refuses them for datasets.
    """

    def __init__(self, dataset, selection, batch_size):
        self.selection = selection
        self._batch_size = int(batch_size)
        self._epoch_iterators = weakref.WeakSet()
        super().__init__(dataset, dataset._variant_tensor)

    def cardinality(self):
        return tf.constant(len(self), tf.int64)

    def __len__(self):
        return self.selection.num_active // self.batch_size

    def map(self, *args, **kwargs):
        """``tf.data.Dataset.map``, still a `LiveTrainDataset` of the same selection."""
        return LiveTrainDataset(super().map(*args, **kwargs), self.selection, self._batch_size)

    # -- the Keras DataAdapter interface (TensorFlow backend) --------------------
    def get_tf_dataset(self):
        args = _epoch_iterator_arguments()
        if args.get("self") is not None:
            self._epoch_iterators.add(args["self"])
        for name, what in (("y", "the targets"), ("sample_weight", "the sample weights")):
            if args.get(name) is not None:
                raise ValueError(f"When providing `x` as a tf.data.Dataset, `{name}` should "
                                 f"not be passed. Instead, {what} should be included as part "
                                 "of the tf.data.Dataset.")
        dataset = self
        if args.get("class_weight") is not None:
            dataset = dataset.map(make_class_weight_map_fn(args["class_weight"]))
        distribution = keras_distribution.distribution()
        if distribution is not None:
            dataset = distribution.distribute_dataset(dataset)
        return dataset

    def get_numpy_iterator(self):
        for batch in self.get_tf_dataset():
            yield tf.nest.map_structure(lambda t: t.numpy(), batch)

    @property
    def num_batches(self):
        return len(self)

    def on_epoch_begin(self):
        # Keras reads the epoch length it cached at `fit` start right after this
        # call; the selection may have changed since (at this epoch's begin).
        # A pass resumed mid-epoch (`LiveSelection.resume_pass`) starts past its
        # first batches; its skip is cleared only when the pass begins, after this.
        steps = max(len(self) - int(self.selection.skip.numpy()), 0)
        for iterator in list(self._epoch_iterators):
            if hasattr(iterator, "_num_batches"):
                iterator._num_batches = steps

    @property
    def batch_size(self):
        """The live batch size of the selection (elastic bundles), else the bundle's."""
        return self.selection.current_batch_size() or self._batch_size

    @property
    def bundle_batch_size(self):
        """The batch size the bundle was built with (what its learning rate is tuned for)."""
        return self._batch_size

    @property
    def has_partial_batch(self):
        return False

    @property
    def partial_batch_size(self):
        return None


def _epoch_iterator_arguments() -> dict:
    """``y``, ``sample_weight`` and ``class_weight`` of the Keras epoch iterator
    being built on a `LiveTrainDataset`, and the iterator as ``self`` (Keras
    does not hand them to a data adapter it was given, so they are read from
    its constructor's frame)."""
    frame = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"),
                                                                 EpochIterator):
                local = frame.f_locals
                args = dict(local.get("kwargs") or {})
                args.update({k: local[k] for k in ("y", "sample_weight", "class_weight")
                             if k in local})
                args["self"] = local["self"]
                return args
            frame = frame.f_back
        return {}
    finally:
        del frame


def selection_of(dataset):
    """The `LiveSelection` a kgrow training dataset reads, or None for other data.

    Example:
        >>> import numpy as np, kgrow
        >>> x, y = np.zeros((32, 4, 4, 1), np.uint8), np.arange(32) % 2
        >>> bundle = kgrow.data.from_arrays((x, y), batch_size=8)
        >>> kgrow.data.selection_of(bundle.train) is bundle.selection
        True
        >>> kgrow.data.selection_of(bundle.train.take(2)) is None
        True
    """
    return getattr(dataset, "selection", None) if isinstance(dataset, LiveTrainDataset) else None


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a bundle's data.

    Attributes:
        name: Dataset name.
        num_classes: Number of classes.
        image_shape: ``(H, W, C)`` of the images as delivered (after the static
            ``image_size``; a live size set on the selection is not reflected).
        num_train: Training samples (after ``subset``).
        num_test: Test samples.
        label_mode: ``"onehot"`` (float32 ``[B, num_classes]``) or
            ``"sparse"`` (int32 ``[B]``).
    """

    name: str
    num_classes: int
    image_shape: tuple
    num_train: int
    num_test: int
    label_mode: str


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """Everything the pipeline builders need, validated by the loaders."""

    batch_size: int
    label_mode: str
    num_classes: int
    augment: augment_lib.AugmentConfig
    seed: int
    native_shape: tuple          # (H, W, C) of the source; H, W may be None
    image_size: tuple | None     # static target (H, W) or None
    mean: tuple                  # per channel, 0-255 scale
    std: tuple
    pixel_scale: float
    resizable: bool              # follow the selection's live size (H, W unknown)
    elastic_batch: bool = False  # follow the selection's live batch size (B unknown)

    @property
    def channels(self):
        return int(self.native_shape[-1])

    @property
    def delivered_hw(self):
        return tuple(self.image_size) if self.image_size else tuple(self.native_shape[:2])


# -- small pure stages ---------------------------------------------------------------
def to_pixels(images, pixel_scale):
    """float32 images on the 0-255 scale."""
    images = tf.cast(images, tf.float32)
    return images if pixel_scale == 1.0 else images * pixel_scale


def resize_to(images, size):
    """Bilinear resize of ``[..., H, W, C]`` to ``size`` (int32 ``[2]``); no-op at equal size."""
    current = tf.shape(images)[-3:-1]
    return tf.cond(tf.reduce_all(tf.equal(current, size)),
                   lambda: images,
                   lambda: tf.image.resize(images, size, method="bilinear"))


def normalize(images, mean, std):
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def encode_labels(labels, label_mode, num_classes):
    if label_mode == "onehot":
        return tf.one_hot(labels, num_classes, dtype=tf.float32)
    return tf.cast(labels, tf.int32)


def _assert_range(labels, num_classes):
    checks = [tf.debugging.assert_non_negative(labels, message="label out of range: negative id"),
              tf.debugging.assert_less(
                  labels, tf.cast(num_classes, labels.dtype),
                  message=f"label out of range: class ids must be < num_classes={num_classes}")]
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def _fold(seed, data):
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))


# -- the pass structure ----------------------------------------------------------------
class _PassBuilder:
    """Builds the per-pass dataset for one source, selection and settings."""

    def __init__(self, source, selection, settings, indexed_train=None):
        self.source = source
        # Streams: the training elements as (index, image, label), index in [0, num_train).
        self.indexed_train = indexed_train
        self.selection = selection
        self.s = settings
        self.base_seed = tf.constant([settings.seed, 0x6B67726F], tf.int64)  # "kgro"
        hw = settings.image_size or settings.native_shape[:2]
        self.static_size = None if None in hw else tf.constant(hw, tf.int32)
        self.fill = tuple(float(m) for m in settings.mean)
        if isinstance(source, ArraySource):
            self.x = tf.convert_to_tensor(source.x_train)
            self.y = tf.convert_to_tensor(source.y_train)

    # Pass start: everything the pass depends on is read here, once.
    def _start(self, advance):
        sel = self.selection
        if advance:
            pass_id = sel.epoch.assign_add(1) - 1
            # A mid-epoch resume's skip applies to one pass only: read and clear.
            skip = sel.skip.read_value()
            with tf.control_dependencies([skip]):
                cleared = sel.skip.assign(0)
            with tf.control_dependencies([cleared]):
                skip = tf.identity(skip)
        else:
            pass_id = sel.epoch.read_value()
            skip = tf.constant(0, tf.int64)
        # Augmentation strengths and the batch size too: a pass uses one
        # setting throughout.
        scale = sel.augment_scale.read_value()
        batch = self.s.batch_size
        if self.s.elastic_batch:
            live_batch = sel.batch_size.read_value()
            batch = tf.where(live_batch > 0, live_batch, tf.constant(batch, tf.int64))
        if not self.s.resizable:
            return pass_id, skip, sel.active.read_value(), self.static_size, scale, batch
        live = sel.image_size.read_value()
        size = live if self.static_size is None else tf.where(live > 0, live, self.static_size)
        return pass_id, skip, sel.active.read_value(), size, scale, batch

    def dataset(self, *, advance=True, shuffle=True, augment=True, mixing=True,
                with_index=False, drop_remainder=True):
        cfg = self.s.augment if augment else augment_lib.AugmentConfig()
        use_mixing = mixing and augment and cfg.uses_mixing

        def per_pass(_):
            pass_id, skip, active, size, scale, batch = self._start(advance)
            pass_seed = _fold(self.base_seed, pass_id)
            # Leave out the first `skip` batches before any image is touched.
            first = skip * batch
            if isinstance(self.source, ArraySource):
                ds = self._array_images(active, size, pass_seed, cfg, shuffle, drop_remainder,
                                        scale, first, batch)
            else:
                ds = self._stream_images(active, size, pass_seed, cfg, shuffle, drop_remainder,
                                         scale, first, batch)
            batch_seed = _fold(pass_seed, 2)
            # Batch k keeps its seed whether or not the pass started at batch 0.
            return ds.enumerate(start=skip).map(
                lambda k, b: self._batch_ops(b, _fold(batch_seed, k), size, cfg, use_mixing,
                                             with_index, scale),
                num_parallel_calls=_AUTOTUNE)

        ds = tf.data.Dataset.from_tensors(np.int64(0)).flat_map(per_pass).prefetch(_AUTOTUNE)
        return _with_options(ds)

    # Step 2-4 for in-memory sources.
    def _array_images(self, active, size, pass_seed, cfg, shuffle, drop_remainder, scale,
                      first, b):
        indices = tf.where(active)[:, 0]
        if shuffle:
            indices = tf.random.experimental.stateless_shuffle(indices, _fold(pass_seed, 0))
        x, y, pixel_scale = self.x, self.y, self.s.pixel_scale
        if cfg.uses_randaugment:
            seeds = tf.random.stateless_uniform(
                [tf.shape(indices)[0], 2], _fold(pass_seed, 1),
                minval=None, maxval=None, dtype=tf.int64)[first:]
        indices = indices[first:]
        if cfg.uses_randaugment:

            def load_one(i, seed):
                image = self._rand_augment(to_pixels(tf.gather(x, i), pixel_scale), seed, cfg,
                                           scale)
                return image, tf.gather(y, i), i

            ds = tf.data.Dataset.from_tensor_slices((indices, seeds))
            ds = ds.map(load_one, num_parallel_calls=_AUTOTUNE)
            return ds.batch(b, drop_remainder=drop_remainder)

        def load_batch(i):
            return to_pixels(tf.gather(x, i), pixel_scale), tf.gather(y, i), i

        ds = tf.data.Dataset.from_tensor_slices(indices).batch(b, drop_remainder=drop_remainder)
        return ds.map(load_batch, num_parallel_calls=_AUTOTUNE)

    # Step 2-4 for streamed sources (elements (index, image, label)).
    def _stream_images(self, active, size, pass_seed, cfg, shuffle, drop_remainder, scale,
                       first, batch):
        ds = self.indexed_train.filter(lambda i, image, label: tf.gather(active, i))
        if shuffle:
            shuffle_seed = tf.random.stateless_uniform(
                [], _fold(pass_seed, 0), minval=None, maxval=None, dtype=tf.int64)
            ds = ds.shuffle(min(STREAM_SHUFFLE_BUFFER, self.source.num_train), seed=shuffle_seed)
        ds = ds.skip(first)
        element_seed = _fold(pass_seed, 1)
        pixel_scale = self.s.pixel_scale

        def load_one(i, image, label):
            image = resize_to(to_pixels(image, pixel_scale), size)
            if cfg.uses_randaugment:
                image = self._rand_augment(image, _fold(element_seed, i), cfg, scale)
            return image, label, i

        ds = ds.map(load_one, num_parallel_calls=_AUTOTUNE)
        return ds.batch(batch, drop_remainder=drop_remainder)

    def _rand_augment(self, image, seed, cfg, scale):
        magnitude = cfg.randaugment_magnitude * scale[0]
        return randaugment.rand_augment(
            image, seed, magnitude=magnitude, num_ops=cfg.randaugment_num_ops,
            magnitude_std=cfg.randaugment_magnitude_std, prob=cfg.randaugment_prob,
            fill=self.fill)

    # Step 5.
    def _batch_ops(self, batch, seed, size, cfg, use_mixing, with_index, scale):
        images, labels, index = batch
        images = resize_to(images, size)
        images = augment_lib.random_crop_with_padding(images, cfg.crop_padding, _fold(seed, 0))
        if cfg.horizontal_flip:
            images = augment_lib.random_horizontal_flip(images, _fold(seed, 1))
        images = normalize(images, self.s.mean, self.s.std)
        if cfg.erasing_prob > 0:
            images = augment_lib.random_erasing(images, cfg.erasing_prob * scale[1],
                                                _fold(seed, 2))
        labels = encode_labels(_assert_range(labels, self.s.num_classes),
                               self.s.label_mode, self.s.num_classes)
        if use_mixing:
            images, labels = augment_lib.mix_batch(images, labels, cfg, _fold(seed, 3))
        hw = [None, None] if self.s.resizable else list(self.s.delivered_hw)
        images = tf.ensure_shape(images, [None, *hw, self.s.channels])
        if isinstance(with_index, str):  # ids under a key, in Keras' sample-weight slot
            return images, labels, {with_index: index}
        return (images, labels, index) if with_index else (images, labels)


def build_test(source, settings):
    """The test pipeline: not shuffled, not augmented, static shapes, last batch kept."""
    s = settings
    size = s.image_size or s.native_shape[:2]
    resize = (s.image_size is not None and tuple(s.image_size) != tuple(s.native_shape[:2]))

    def prepare(images):
        images = to_pixels(images, s.pixel_scale)
        if resize:
            images = tf.image.resize(images, size, method="bilinear")
        return images

    def finish(images, labels):
        images = normalize(images, s.mean, s.std)
        labels = encode_labels(_assert_range(labels, s.num_classes), s.label_mode, s.num_classes)
        return images, labels

    if isinstance(source, ArraySource):
        if source.x_test is None:
            return None
        x, y = tf.convert_to_tensor(source.x_test), tf.convert_to_tensor(source.y_test)
        ds = tf.data.Dataset.range(source.num_test).batch(s.batch_size)
        ds = ds.map(lambda i: finish(prepare(tf.gather(x, i)), tf.gather(y, i)),
                    num_parallel_calls=_AUTOTUNE)
    else:
        if source.test is None:
            return None
        ds = source.test.map(lambda image, label: (prepare(image), label),
                             num_parallel_calls=_AUTOTUNE)
        ds = ds.batch(s.batch_size).map(finish, num_parallel_calls=_AUTOTUNE)
    return _with_options(ds.prefetch(_AUTOTUNE))


class DataBundle:
    """Train/test pipelines of one dataset plus what describes them.

    Attributes:
        train: ``tf.data.Dataset`` of ``(images float32 [B, H, W, C], labels)``,
            reshuffled every pass, augmented, prefetched; static shapes, or H
            and W None when built with ``resizable=True`` (see
            `kgrow.data.pipeline`).
        test: ``tf.data.Dataset`` of ``(images, labels)``, or None.
        info: `DatasetInfo`.
        selection: `kgrow.data.LiveSelection` read by ``train`` at every pass.
        augment: The `AugmentConfig` of ``train``.
        normalization: ``(mean, std)`` per channel on the 0-255 pixel scale.
        batch_size: Batch size of both pipelines.
        seed: Seed of shuffling and augmentation.
        subset_indices: Indices into the original training set of the
            samples kept by ``subset`` (None without a subset); training
            sample ``i`` of this bundle is original sample
            ``subset_indices[i]``.

    Example:
        >>> import numpy as np, kgrow
        >>> x = np.random.randint(0, 255, (64, 8, 8, 1), np.uint8)
        >>> y = np.arange(64) % 4
        >>> bundle = kgrow.data.from_arrays((x, y), (x, y), batch_size=16)
        >>> bundle.steps_per_epoch
        4
        >>> images, labels = next(iter(bundle.train))
        >>> images.shape, labels.shape
        (TensorShape([16, 8, 8, 1]), TensorShape([16, 4]))
    """

    def __init__(self, builder, test, info, *, normalization, subset_indices):
        self._builder = builder
        self.info = info
        self.selection = builder.selection
        self.augment = builder.s.augment
        self.batch_size = builder.s.batch_size
        self.seed = builder.s.seed
        self.normalization = normalization
        self.subset_indices = subset_indices
        self.train = LiveTrainDataset(builder.dataset(), builder.selection, self.batch_size)
        self.test = test

    @property
    def steps_per_epoch(self):
        """Batches in the next training pass: ``num_active // batch_size`` (the live
        batch size of an ``elastic_batch`` bundle).

        Reflects the current selection, so it changes when the selection
        does. Do not pass it to ``fit(steps_per_epoch=...)``: with a finite
        dataset Keras then keeps one iterator across epochs instead of
        starting a new pass every epoch.
        """
        return self.selection.num_active // (self.selection.current_batch_size()
                                             or self.batch_size)

    def test_at_live_size(self):
        """``test`` resized (bilinear) to the selection's live image size, read at each pass.

        For models whose input size follows the training resolution (a kgrow
        ViT at a progressive-resizing stage): their evaluation between
        stages runs at the stage's size. With no live size set it is
        ``test``'s images unchanged (H and W then unknown in the spec).
        Returns None when the bundle has no test set.
        """
        if self.test is None:
            return None
        selection, test = self.selection, self.test

        def per_pass(_):
            live = selection.image_size.read_value()

            def resize(images, labels):
                images = tf.cond(live[0] > 0,
                                 lambda: tf.image.resize(images, live, method="bilinear"),
                                 lambda: images)
                return images, labels

            return test.map(resize)

        ds = tf.data.Dataset.from_tensors(np.int64(0)).flat_map(per_pass)
        return _with_options(ds.prefetch(_AUTOTUNE))

    def train_with_index(self, augment=False, shuffle=False):
        """A pass over the active training samples with their indices.

        For methods that collect per-sample statistics (forgetting events,
        losses for sieving) in a separate pass. Reads the selection like
        ``train`` (active mask, live image size) but does not advance the
        pass counter, keeps the last incomplete batch, and never mixes
        samples (a mixed sample has no single index).

        Args:
            augment: Apply the per-sample augmentations of ``train`` (crop,
                flip, RandAugment, erasing).
            shuffle: Shuffle (seeded by the current pass index).

        Returns:
            ``tf.data.Dataset`` of ``(images, labels, indices)``; ``indices``
            are int64 training-sample indices (positions in the selection's
            mask).
        """
        return self._builder.dataset(advance=False, shuffle=shuffle, augment=augment,
                                     mixing=False, with_index=True, drop_remainder=False)

    def train_with_ids(self):
        """``train`` with the sample ids of every batch, for the train step's
        prediction hooks (``kgrow.controller.step``).

        The same passes as ``train`` (order, augmentation, pass counter), as
        ``(images, labels, {"sample_ids": indices})``: the ids ride in
        Keras' sample-weight slot under a key, so that they are never taken
        for sample weights. Refuses mixing augmentations (MixUp/CutMix): a
        mixed sample has no single id. Like ``train`` it carries its
        selection (attached by kgrow's callbacks when ``fit`` starts) and
        knows its length.
        """
        if self.augment.uses_mixing:
            raise ValueError("train_with_ids() cannot be used with MixUp/CutMix augmentation "
                             "(a mixed sample has no single id); use an augment preset "
                             "without mixing.")
        return LiveTrainDataset(self._builder.dataset(with_index=SAMPLE_IDS), self.selection,
                                self.batch_size)

    def __repr__(self):
        i = self.info
        return (f"DataBundle({i.name!r}, train={i.num_train}, test={i.num_test}, "
                f"image_shape={i.image_shape}, classes={i.num_classes}, "
                f"batch_size={self.batch_size}, label_mode={i.label_mode!r})")


def build_bundle(source, selection, settings, subset_indices, indexed_train=None):
    """Assembles a `DataBundle` from a validated source and settings.

    ``indexed_train`` (streams only) yields the training elements as
    ``(index, image, label)`` with ``index`` in ``[0, selection.num_train)``.
    """
    builder = _PassBuilder(source, selection, settings, indexed_train)
    info = DatasetInfo(
        name=source.name, num_classes=settings.num_classes,
        image_shape=tuple(int(d) for d in settings.delivered_hw) + (settings.channels,),
        num_train=selection.num_train,
        num_test=source.num_test, label_mode=settings.label_mode)
    normalization = (tuple(settings.mean), tuple(settings.std))
    return DataBundle(builder, build_test(source, settings), info,
                      normalization=normalization, subset_indices=subset_indices)

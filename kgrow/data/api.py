"""The loaders: `load` (by name), `from_arrays` and `from_datasets`.

All three validate their arguments before touching any data, build a source
(`kgrow.data.sources`), compute the normalization statistics from the full
training set, apply ``subset``, and assemble a `DataBundle`
(`kgrow.data.pipeline`).
"""
import dataclasses

import numpy as np
import tensorflow as tf

from kgrow.data import augment as augment_lib
from kgrow.data import sources, stats
from kgrow.data.pipeline import LABEL_MODES, SUBSET_MODES, PipelineSettings, build_bundle
from kgrow.data.selection import LiveSelection


def load(name, batch_size=128, image_size=None, augment=None, subset=None, subset_mode="first",
         seed=0, data_dir=None, label_mode="onehot", selection=None, resizable=False,
         elastic_batch=False, test_subset=None):
    """Train/test pipelines of a dataset given by name.

    ``"fashion_mnist"`` is built in and works offline: it reads the IDX files
    of the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``), or of ``data_dir`` /
    ``$KGROW_FASHION_MNIST_DIR``, and falls back to TFDS. Any other name is a
    TFDS image-classification dataset (``cifar10``, ``cifar100``,
    ``imagenette``, ``imagenet2012``, ...), loaded with
    ``tfds.load(name, as_supervised=True, data_dir=data_dir)``, which needs a
    network connection or a prepared ``data_dir``; the test split is ``test``
    or else ``validation``.

    Args:
        name: Dataset name.
        batch_size: Batch size of both pipelines (training drops the last
            incomplete batch).
        image_size: ``None`` (keep the stored size), an int (square) or
            ``(height, width)``: resize inside tf.data. Required for datasets
            with images of varying size (e.g. imagenet2012).
        augment: ``None``, a preset name (``"none"``, ``"basic"``,
            ``"deit"``) or an `AugmentConfig`; applies to ``train`` only.
        subset: Keep only this many training samples (``None``: all).
        subset_mode: ``"first"`` (the first ``subset`` samples) or
            ``"random"`` (a random set, drawn with ``seed``).
        seed: Seed of subset, shuffling and augmentation.
        data_dir: Directory with the data (Fashion-MNIST IDX files or a TFDS
            data directory).
        label_mode: ``"onehot"`` (float32, required by MixUp/CutMix) or
            ``"sparse"`` (int32 class ids).
        selection: An existing `LiveSelection` over this training set (after
            ``subset``) to share; ``None`` creates one.
        resizable: Let ``bundle.selection.set_image_size`` change the
            training image size between epochs (progressive resizing). The
            training batches then have unknown height and width in their
            ``element_spec``, and every trace of the train function is larger
            (a ResNet-20 step: about 12% more ops, 0.3 s more per trace).
            With the default ``False`` the shapes are static and other sizes
            are refused with an error.
        elastic_batch: Let ``bundle.selection.set_batch_size`` change the
            training batch size between epochs (batch-size adaptation as a
            model grows); the epoch's step count follows. The training
            batches then have an unknown batch dimension. With the default
            ``False`` the batch size is fixed and other sizes are refused.
            The test pipeline always keeps ``batch_size``.
        test_subset: Evaluate on only the first this many test samples
            (``None``: the whole test split). The same samples for every
            seed, so runs stay comparable; for smoke tests and quick
            comparisons, where a full test pass would cost more than the
            training.

    Returns:
        A `DataBundle`.

    Raises:
        ValueError: unknown name or preset, invalid argument, or a subset
            larger than the training set (``test_subset``: the test set).
        FileNotFoundError: Fashion-MNIST is neither on disk nor available
            through TFDS.

    Example:
        >>> import kgrow
        >>> bundle = kgrow.data.load("fashion_mnist", batch_size=64, subset=512)
        >>> bundle.info.image_shape, bundle.info.num_classes, bundle.steps_per_epoch
        ((28, 28, 1), 10, 8)
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Dataset name must be a non-empty string, got {name!r}.")
    options = _check_options(batch_size, image_size, augment, subset, subset_mode, seed,
                             label_mode, selection, resizable, elastic_batch, test_subset)
    if name.strip().lower().replace("-", "_") in sources.BUILTIN_DATASETS:
        source = sources.load_fashion_mnist(data_dir)
    else:
        source = sources.tfds_source(name, data_dir=data_dir)
    return _build(source, **options)


def from_arrays(train, test=None, name="arrays", num_classes=None, batch_size=128,
                image_size=None, augment=None, subset=None, subset_mode="first", seed=0,
                label_mode="onehot", selection=None, resizable=False, elastic_batch=False,
                test_subset=None):
    """Train/test pipelines from numpy arrays.

    Args:
        train: ``(x_train, y_train)``: images ``[N, H, W]`` (grayscale) or
            ``[N, H, W, C]``, integers in [0, 255] or floats in [0, 1] or
            [0, 255]; labels ``[N]`` or ``[N, 1]`` integer class ids.
        test: ``(x_test, y_test)`` of the same image shape, or None.
        name: Name reported in ``bundle.info``.
        num_classes: Number of classes; ``None`` infers ``max label + 1``.
        batch_size, image_size, augment, subset, subset_mode, seed,
            label_mode, selection, resizable, elastic_batch, test_subset: As in
            `load`.

    Returns:
        A `DataBundle`. Normalization statistics are the exact per-channel
        mean/std of ``x_train`` (before ``subset``).

    Example:
        >>> import numpy as np, kgrow
        >>> x = np.random.rand(100, 8, 8, 3).astype("float32")
        >>> y = np.random.randint(0, 5, 100)
        >>> bundle = kgrow.data.from_arrays((x, y), (x[:20], y[:20]), batch_size=10)
        >>> bundle.info.num_classes, bundle.info.num_test
        (5, 20)
    """
    options = _check_options(batch_size, image_size, augment, subset, subset_mode, seed,
                             label_mode, selection, resizable, elastic_batch, test_subset)
    source = sources.array_source(train, test, name=name, num_classes=num_classes)
    return _build(source, **options)


def from_datasets(train, test=None, num_classes=None, name="datasets", batch_size=128,
                  image_size=None, augment=None, subset=None, subset_mode="first", seed=0,
                  label_mode="onehot", selection=None, resizable=False,
                  elastic_batch=False, test_subset=None):
    """Train/test pipelines from existing unbatched ``tf.data`` datasets.

    The training dataset is read in order every pass (it must yield the same
    order each time it is iterated), filtered by the live selection and
    shuffled with a buffer of up to
    `kgrow.data.pipeline.STREAM_SHUFFLE_BUFFER` elements.

    Args:
        train: ``tf.data.Dataset`` of ``(image [H, W(, C)], label)``; images
            uint8 or float in [0, 1] / [0, 255], labels integer class ids.
        test: Same for the test set, or None.
        num_classes: Number of classes (required).
        name: Name reported in ``bundle.info``.
        batch_size, image_size, augment, subset, subset_mode, seed,
            label_mode, selection, resizable, elastic_batch, test_subset: As in
            `load`. ``image_size`` is required
            when the images vary in size.

    Returns:
        A `DataBundle`. The number of training samples comes from the
        dataset's cardinality or one counting pass; the normalization
        statistics from its first `kgrow.data.stats.STREAM_STATS_SAMPLES`
        images.

    Example:
        >>> import numpy as np, tensorflow as tf, kgrow
        >>> x = np.random.randint(0, 255, (40, 8, 8, 3), np.uint8)
        >>> ds = tf.data.Dataset.from_tensor_slices((x, np.arange(40) % 2))
        >>> kgrow.data.from_datasets(ds, ds, num_classes=2, batch_size=8).steps_per_epoch
        5
    """
    if num_classes is None:
        raise ValueError("from_datasets needs num_classes (it cannot be read from a dataset).")
    options = _check_options(batch_size, image_size, augment, subset, subset_mode, seed,
                             label_mode, selection, resizable, elastic_batch, test_subset)
    source = sources.stream_source(train, test, num_classes=num_classes, name=name)
    return _build(source, **options)


# -- argument checks --------------------------------------------------------------------
def _check_options(batch_size, image_size, augment, subset, subset_mode, seed, label_mode,
                   selection, resizable, elastic_batch=False, test_subset=None):
    _require_int(batch_size, "batch_size", minimum=1)
    _require_int(seed, "seed", minimum=0)
    if subset is not None:
        _require_int(subset, "subset", minimum=1)
    if test_subset is not None:
        _require_int(test_subset, "test_subset", minimum=1)
    if subset_mode not in SUBSET_MODES:
        raise ValueError(f"subset_mode must be one of {SUBSET_MODES}, got {subset_mode!r}.")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}.")
    config = augment_lib.resolve(augment)
    if label_mode == "sparse" and config.uses_mixing:
        raise ValueError(
            "label_mode='sparse' cannot be combined with MixUp/CutMix (mixed labels are soft "
            "distributions); use label_mode='onehot' or an augmentation without mixing.")
    if selection is not None and not isinstance(selection, LiveSelection):
        raise ValueError(
            f"selection must be a kgrow.data.LiveSelection or None, got "
            f"{type(selection).__name__}.")
    if not isinstance(resizable, (bool, np.bool_)):
        raise ValueError(f"resizable must be True or False, got {resizable!r}.")
    if not isinstance(elastic_batch, (bool, np.bool_)):
        raise ValueError(f"elastic_batch must be True or False, got {elastic_batch!r}.")
    return dict(batch_size=int(batch_size), image_size=_image_size(image_size), augment=config,
                subset=subset, subset_mode=subset_mode, seed=int(seed), label_mode=label_mode,
                selection=selection, resizable=bool(resizable),
                elastic_batch=bool(elastic_batch), test_subset=test_subset)


def _require_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def _image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = image_size
        _require_int(h, "image_size height", minimum=1)
        _require_int(w, "image_size width", minimum=1)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"image_size must be None, a positive int or (height, width), got "
            f"{image_size!r}.") from err
    return int(h), int(w)


# -- assembly ------------------------------------------------------------------------------
def _subset_indices(num_train, subset, mode, seed):
    if subset is None:
        return None
    if subset > num_train:
        raise ValueError(
            f"subset={subset} is larger than the training set ({num_train} samples).")
    if mode == "first":
        return np.arange(subset, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=subset, replace=False)).astype(np.int64)


def _build(source, batch_size, image_size, augment, subset, subset_mode, seed, label_mode,
           selection, resizable, elastic_batch, test_subset=None):
    channels = source.image_shape[-1]
    if augment.uses_randaugment and channels not in (1, 3):
        raise ValueError(
            f"RandAugment needs 1- or 3-channel images, {source.name!r} has {channels} channels.")
    if image_size is None and None in source.image_shape[:2]:
        raise ValueError(
            f"{source.name!r} has images of varying size {source.image_shape}; pass image_size="
            f"(height, width) so they can be batched.")
    source = _first_test_samples(source, test_subset)
    if isinstance(source, sources.ArraySource):
        mean, std = stats.array_channel_stats(source.x_train, source.pixel_scale)
    else:
        mean, std = stats.stream_channel_stats(source.train, source.pixel_scale)
    keep = _subset_indices(source.num_train, subset, subset_mode, seed)
    indexed_train = None
    if isinstance(source, sources.ArraySource):
        if keep is not None:
            # A slice for "first" avoids copying the kept images.
            rows = slice(0, len(keep)) if subset_mode == "first" else keep
            source = sources.ArraySource(
                source.name, source.x_train[rows], source.y_train[rows], source.x_test,
                source.y_test, source.num_classes, source.pixel_scale)
        num_train = source.num_train
    else:
        indexed_train, num_train = _index_stream(source, keep, subset_mode)
    if batch_size > num_train:
        raise ValueError(
            f"batch_size={batch_size} is larger than the training set ({num_train} samples); "
            f"the training pipeline drops incomplete batches, so an epoch would be empty.")
    fixed_size = None if resizable else tuple(image_size or source.image_shape[:2])
    selection = _selection(selection, num_train, batch_size, fixed_size, elastic_batch)
    settings = PipelineSettings(
        batch_size=batch_size, label_mode=label_mode, num_classes=source.num_classes,
        augment=augment, seed=seed, native_shape=tuple(source.image_shape),
        image_size=image_size, mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in stats.safe_std(std)), pixel_scale=source.pixel_scale,
        resizable=resizable, elastic_batch=elastic_batch)
    return build_bundle(source, selection, settings, keep, indexed_train)


def _first_test_samples(source, test_subset):
    """`source` with only its first `test_subset` test samples (None: all)."""
    if test_subset is None:
        return source
    if test_subset > source.num_test:
        raise ValueError(
            f"test_subset={test_subset} is larger than the test set of {source.name!r} "
            f"({source.num_test} samples).")
    if isinstance(source, sources.ArraySource):
        return dataclasses.replace(source, x_test=source.x_test[:test_subset],
                                   y_test=source.y_test[:test_subset])
    return dataclasses.replace(source, test=source.test.take(test_subset),
                               num_test=test_subset)


def _index_stream(source, keep, mode):
    """Training stream as (index, image, label) with indices over the kept samples."""
    train = source.train
    if keep is not None and mode == "first":
        train = train.take(len(keep))
    ds = train.enumerate().map(lambda i, element: (i, element[0], element[1]))
    if keep is None or mode == "first":
        return ds, source.num_train if keep is None else len(keep)
    kept = np.zeros(source.num_train, dtype=bool)
    kept[keep] = True
    local = np.cumsum(kept) - 1  # original index -> index among the kept samples
    kept_t, local_t = tf.constant(kept), tf.constant(local, tf.int64)
    ds = ds.filter(lambda i, image, label: tf.gather(kept_t, i))
    ds = ds.map(lambda i, image, label: (tf.gather(local_t, i), image, label))
    return ds, len(keep)


def _selection(selection, num_train, batch_size, fixed_size, elastic_batch=False):
    """The bundle's selection (new or the given shared one), pinned to `fixed_size`
    and, unless `elastic_batch`, to `batch_size`."""
    if selection is None:
        selection = LiveSelection(num_train, min_active=batch_size)
    elif selection.num_train != num_train:
        raise ValueError(
            f"The given selection covers {selection.num_train} training samples, but this "
            f"training set has {num_train}.")
    elif selection.num_active < batch_size:
        raise ValueError(
            f"The given selection has {selection.num_active} active samples, fewer than "
            f"batch_size={batch_size}.")
    elif fixed_size is None and selection.fixed_size is not None:
        raise ValueError(
            f"The given selection is pinned to the size {selection.fixed_size} by a bundle built "
            f"with resizable=False; a resizable bundle needs its own selection.")
    elif elastic_batch and selection.fixed_batch_sizes:
        raise ValueError(
            f"The given selection serves a bundle of fixed batch size "
            f"{sorted(selection.fixed_batch_sizes)} (elastic_batch=False); a bundle with "
            f"elastic_batch=True needs its own selection.")
    if fixed_size is not None:
        selection.fix_size(*fixed_size)
    if not elastic_batch:
        selection.fix_batch_size(batch_size)
    selection.min_active = max(selection.min_active, batch_size)
    return selection

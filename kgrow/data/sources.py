"""Raw data: where the images and labels of a dataset come from.

Two kinds of source feed the pipelines (`kgrow.data.pipeline`):

* `ArraySource`: the whole dataset as numpy arrays (Fashion-MNIST from its IDX
  files, small TFDS datasets such as CIFAR, user arrays). The training
  pipeline gathers batches by index, so shuffles are exact permutations.
* `StreamSource`: ``tf.data`` datasets of ``(image, label)`` that are read in
  order (large TFDS datasets such as ImageNet, user datasets). Shuffling uses
  a buffer.

Images are kept in their stored dtype; ``pixel_scale`` is the factor that
maps them to the 0-255 scale the augmentations work on (1 for uint8 data, 255
for float data in [0, 1]).
"""
import dataclasses
import difflib
import importlib
import os
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np
import tensorflow as tf

from kgrow.data.idx import read_idx

#: Names `kgrow.data.load` serves without TFDS.
BUILTIN_DATASETS = ("fashion_mnist",)

FASHION_MNIST_ENV = "KGROW_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle boot")

#: Seconds the reachability check of a download host may take in all. TFDS
#: retries a failed download for minutes; without a network a missing
#: dataset should fail in seconds instead.
DOWNLOAD_PROBE_TIMEOUT = 5.0

#: TFDS datasets up to this many bytes of decoded training images are loaded
#: into memory (exact shuffles, random access); larger ones are streamed.
MAX_IN_MEMORY_BYTES = 2 * 1024 ** 3

#: Split used as the test set when TFDS metadata does not list the splits yet.
_TFDS_EVAL_SPLIT = {"imagenet2012": "validation", "imagenette": "validation",
                    "imagewang": "validation", "imagenet_resized": "validation",
                    "imagenet2012_subset": "validation", "imagenet_a": "test"}
#: Common TFDS image-classification names, for "did you mean" hints only.
_COMMON_TFDS_NAMES = ("mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "cifar100",
                      "svhn_cropped", "stl10", "imagenette", "imagewang", "imagenet2012",
                      "imagenet_resized", "imagenet_v2", "oxford_flowers102", "oxford_iiit_pet",
                      "caltech101", "food101", "eurosat", "tf_flowers", "cars196", "dtd")


@dataclasses.dataclass
class ArraySource:
    """A dataset held in memory.

    Attributes:
        name: Dataset name.
        x_train, x_test: ``[N, H, W, C]`` images (uint8, other integers, or
            float).
        y_train, y_test: ``[N]`` int32 class ids.
        num_classes: Number of classes.
        pixel_scale: Factor mapping stored values to the 0-255 scale.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    pixel_scale: float = 1.0

    @property
    def image_shape(self):
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_train(self):
        return int(self.x_train.shape[0])

    @property
    def num_test(self):
        return 0 if self.x_test is None else int(self.x_test.shape[0])


@dataclasses.dataclass
class StreamSource:
    """A dataset read sequentially from ``tf.data``.

    Attributes:
        name: Dataset name.
        train, test: Datasets of unbatched ``(image [H, W, C], label)``; the
            train dataset must yield the same order every time it is iterated.
        num_train, num_test: Number of elements.
        image_shape: ``(H, W, C)``; H and W may be None (variable size).
        num_classes: Number of classes.
        pixel_scale: Factor mapping stored values to the 0-255 scale.
    """

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset | None
    num_train: int
    num_test: int
    image_shape: tuple
    num_classes: int
    pixel_scale: float = 1.0


# -- validation of user arrays -----------------------------------------------------
def check_images(x, split):
    """Validates an image array; returns it as ``[N, H, W, C]`` plus its pixel scale.

    Accepts ``[N, H, W]`` (grayscale; a channel axis is added) or
    ``[N, H, W, C]``, integer data in [0, 255] or float data in [0, 1] or
    [0, 255].
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or min(x.shape[1:]) < 1:
        raise ValueError(
            f"{split} images must have shape [N, H, W] or [N, H, W, C], got {np.shape(x)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{split} images are empty (0 samples).")
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer)
                               or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{split} images must be integer or float arrays, got dtype {x.dtype}.")
    return x, _pixel_scale(x, split)


def _pixel_scale(x, split):
    lo, hi = _min_max(x)
    if np.issubdtype(x.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{split} images: integer pixel values must lie in [0, 255], got [{lo}, {hi}].")
        return 1.0
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{split} images contain NaN or infinite values.")
    if lo >= 0 and hi <= 1.0:
        return 255.0
    if lo >= 0 and hi <= 255.0:
        return 1.0
    raise ValueError(
        f"{split} images: float pixel values must lie in [0, 1] or [0, 255] (the pipeline "
        f"normalizes them itself), got [{lo:g}, {hi:g}].")


def _min_max(x, chunk=8192):
    if x.dtype == np.uint8:
        return 0, 255  # every uint8 value is a valid pixel; skip the scan
    lo, hi = np.inf, -np.inf
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk]
        lo, hi = min(lo, part.min()), max(hi, part.max())
    return lo.item() if hasattr(lo, "item") else lo, hi.item() if hasattr(hi, "item") else hi


def check_labels(y, num_images, split):
    """Validates class ids; returns them as int32 ``[N]``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{split} labels must be integer class ids of shape [N] or [N, 1], got shape "
            f"{y.shape} (one-hot labels are produced by the pipeline; pass class ids).")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{split} labels must be integers, got dtype {y.dtype}.")
    if y.shape[0] != num_images:
        raise ValueError(
            f"{split} images and labels differ in length: {num_images} images, "
            f"{y.shape[0]} labels.")
    if y.size and y.min() < 0:
        raise ValueError(f"{split} labels must be >= 0, found {y.min()}.")
    return y.astype(np.int32)


def check_label_range(y, num_classes, split):
    if y is not None and y.size and y.max() >= num_classes:
        raise ValueError(
            f"{split} labels out of range: found class id {y.max()}, but num_classes is "
            f"{num_classes} (ids must be in [0, {num_classes})).")


def array_source(train, test, name, num_classes=None):
    """Builds an `ArraySource` from ``(x, y)`` pairs, validating everything.

    Args:
        train: ``(x_train, y_train)``.
        test: ``(x_test, y_test)`` or ``None``.
        name: Dataset name.
        num_classes: Number of classes; ``None`` infers ``max(label) + 1``.
    """
    x_train, y_train = _unpack(train, "train")
    x_train, scale = check_images(x_train, "train")
    y_train = check_labels(y_train, x_train.shape[0], "train")
    x_test = y_test = None
    if test is not None:
        x_test, y_test = _unpack(test, "test")
        x_test, test_scale = check_images(x_test, "test")
        y_test = check_labels(y_test, x_test.shape[0], "test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {x_train.shape[1:]} vs "
                f"{x_test.shape[1:]} (H, W, C).")
        if x_test.dtype != x_train.dtype or test_scale != scale:
            raise ValueError(
                f"train and test images must share dtype and value range; got "
                f"{x_train.dtype} (scale {scale:g}) vs {x_test.dtype} (scale {test_scale:g}).")
    inferred = int(max(y_train.max(), -1 if y_test is None or not y_test.size
                       else y_test.max())) + 1
    if num_classes is None:
        num_classes = inferred
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
    check_label_range(y_train, num_classes, "train")
    check_label_range(y_test, num_classes, "test")
    return ArraySource(name, x_train, y_train, x_test, y_test, int(num_classes), scale)


def _unpack(pair, split):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(
            f"{split} data must be a pair (x, y) of arrays, got {type(pair).__name__}.")
    return pair


# -- Fashion-MNIST ---------------------------------------------------------------
def _idx_path(directory, stem):
    """The existing file for ``stem`` in ``directory`` (gzipped or plain) or None."""
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def find_fashion_mnist_files(directory):
    """Paths of the four IDX files in ``directory``, or None when none is there.

    Raises:
        FileNotFoundError: some but not all of the four files are present.
    """
    paths = {key: _idx_path(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    found = [k for k, p in paths.items() if p]
    if not found:
        return None
    if len(found) < len(paths):
        missing = [FASHION_MNIST_FILES[k] + "[.gz]" for k, p in paths.items() if not p]
        raise FileNotFoundError(
            f"Incomplete Fashion-MNIST in {directory}: missing {', '.join(missing)}.")
    return paths


#: Decoded Fashion-MNIST arrays by (path, mtime, size) of the four files:
#: decompressing them takes seconds, and a process often loads them again.
_FASHION_MNIST_CACHE: dict = {}


def read_fashion_mnist(paths, name="fashion_mnist"):
    """Reads and validates the four Fashion-MNIST IDX files into an `ArraySource`.

    The arrays are read-only and shared between calls for unchanged files.
    """
    key = tuple(sorted((k, p, os.stat(p).st_mtime_ns, os.stat(p).st_size)
                       for k, p in paths.items()))
    if key not in _FASHION_MNIST_CACHE:
        arrays = _read_fashion_mnist_arrays(paths)
        for array in arrays.values():
            array.flags.writeable = False
        _FASHION_MNIST_CACHE.clear()  # one copy at most
        _FASHION_MNIST_CACHE[key] = arrays
    arrays = _FASHION_MNIST_CACHE[key]
    return ArraySource(
        name=name, x_train=arrays["x_train"], y_train=arrays["y_train"],
        x_test=arrays["x_test"], y_test=arrays["y_test"],
        num_classes=len(FASHION_MNIST_CLASSES), pixel_scale=1.0)


def _read_fashion_mnist_arrays(paths):
    arrays = {}
    for key, path in paths.items():
        arrays[key] = read_idx(path, expected_ndim=3 if key.startswith("x") else 1)
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise ValueError(
                f"Fashion-MNIST {split} files must hold uint8 data, got images {x.dtype}, "
                f"labels {y.dtype} ({paths['x_' + split]}).")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Fashion-MNIST {split}: {x.shape[0]} images but {y.shape[0]} labels "
                f"({paths['x_' + split]}, {paths['y_' + split]}).")
        if y.size and y.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(
                f"Fashion-MNIST {split} labels reach {y.max()}, but there are only "
                f"{len(FASHION_MNIST_CLASSES)} classes ({paths['y_' + split]}).")
    return {"x_train": arrays["x_train"][..., np.newaxis],
            "y_train": arrays["y_train"].astype(np.int32),
            "x_test": arrays["x_test"][..., np.newaxis],
            "y_test": arrays["y_test"].astype(np.int32)}


def fashion_mnist_dir(data_dir=None):
    """The directory searched for the IDX files: ``data_dir``, else
    ``$KGROW_FASHION_MNIST_DIR``, else the Debian package's directory."""
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR


def load_fashion_mnist(data_dir=None):
    """Fashion-MNIST from IDX files, falling back to TFDS.

    The IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``) are
    looked for in one directory: ``data_dir`` if given, else the directory in
    the ``KGROW_FASHION_MNIST_DIR`` environment variable, else
    ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``). If they are not there, TFDS's
    ``fashion_mnist`` is used with ``data_dir`` as its data directory.

    Raises:
        FileNotFoundError: neither the IDX files nor TFDS could provide the
            data (the message says where it looked and how to fix it).
    """
    directory = fashion_mnist_dir(data_dir)
    paths = find_fashion_mnist_files(directory) if os.path.isdir(directory) else None
    if paths is not None:
        return read_fashion_mnist(paths)
    tfds = import_tfds()
    if tfds is None:
        reason = "tensorflow_datasets is not installed"
    else:
        try:
            return tfds_source("fashion_mnist", data_dir=data_dir)
        except Exception as err:  # download or preparation failed (offline, bad dir...)
            raise FileNotFoundError(_fashion_mnist_help(
                directory, f"TFDS could not provide it either ({type(err).__name__}: {err})"
            )) from err
    raise FileNotFoundError(_fashion_mnist_help(directory, reason))


def _fashion_mnist_help(directory, reason):
    files = ", ".join(stem + "[.gz]" for stem in FASHION_MNIST_FILES.values())
    return (f"Fashion-MNIST not found: no IDX files ({files}) in {directory}, and {reason}. "
            f"Install the Debian package with `apt-get install dataset-fashion-mnist` (files in "
            f"{FASHION_MNIST_DEFAULT_DIR}), or pass data_dir=<directory with the IDX files, or a "
            f"prepared TFDS data directory>, or set {FASHION_MNIST_ENV}.")


# -- TFDS --------------------------------------------------------------------------
def import_tfds():
    """``tensorflow_datasets`` or None when it cannot be imported."""
    try:
        return importlib.import_module("tensorflow_datasets")
    except ImportError:
        return None


def unknown_dataset_message(name, tfds_available):
    hint = difflib.get_close_matches(name, BUILTIN_DATASETS + _COMMON_TFDS_NAMES, n=3)
    hint = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    tail = ("" if tfds_available else
            " (tensorflow_datasets is not installed, so only the built-in names work)")
    return (f"Unknown dataset {name!r}.{hint} Built in (offline): {list(BUILTIN_DATASETS)}. "
            f"Any TFDS image-classification dataset name also works (e.g. 'cifar10', "
            f"'cifar100', 'imagenette', 'imagenet2012') when online or with a prepared TFDS "
            f"data_dir{tail}. For your own data use kgrow.data.from_arrays or from_datasets.")


def tfds_source(name, data_dir=None):
    """Loads a TFDS image-classification dataset (downloading if needed).

    Small datasets (decoded training images up to `MAX_IN_MEMORY_BYTES`) come
    back as an `ArraySource`, others as a `StreamSource` in file order.

    Raises:
        ValueError: TFDS is missing, the name is unknown, or the dataset is
            not a supervised (image, class label) dataset.
        FileNotFoundError: TFDS could not download or read the data.
    """
    tfds = import_tfds()
    if tfds is None:
        raise ValueError(unknown_dataset_message(name, tfds_available=False))
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ValueError(unknown_dataset_message(name, tfds_available=True)) from None
    image_key, label_key = _classification_keys(name, builder.info)
    train_split, test_split = _split_names(name, builder.info)

    def load(download):
        return tfds.load(name, split=[train_split, test_split], as_supervised=True,
                         with_info=True, data_dir=data_dir, shuffle_files=False,
                         download=download)

    def not_provided(err):
        return FileNotFoundError(
            f"TFDS could not provide {name!r} (splits {train_split!r}/{test_split!r}, data_dir="
            f"{data_dir!r}, looked in {builder.data_dir}): {type(err).__name__}: {err}. TFDS "
            f"downloads datasets on first use, which needs a network connection; offline, "
            f"pass data_dir= a directory where the dataset was prepared (e.g. with "
            f"`tfds build {name} --data_dir DIR`).")

    try:
        # A prepared copy needs no network; only a missing one is downloaded.
        (train, test), info = load(download=False)
    except Exception as err:  # "could not find data", or a broken copy
        if builder.is_prepared():
            raise not_provided(err) from err
        unreachable = unreachable_download(getattr(builder, "url_infos", None) or {})
        if unreachable:
            raise not_provided(ConnectionError(unreachable)) from None
        try:
            (train, test), info = load(download=True)
        except Exception as err:  # download/preparation failures come in many types
            raise not_provided(err) from err
    num_classes = int(info.features[label_key].num_classes)
    image_shape = tuple(info.features[image_key].shape)
    image_dtype = tf.as_dtype(info.features[image_key].dtype)
    if image_dtype != tf.uint8:
        raise ValueError(
            f"TFDS dataset {name!r} stores {image_dtype.name} images; kgrow.data reads uint8 "
            f"images from TFDS (use from_datasets with images scaled to [0, 1] instead).")
    num_train = _num_examples(info, train_split, train)
    num_test = _num_examples(info, test_split, test)
    train = train.map(_cast_label)
    test = test.map(_cast_label)
    known = all(d is not None for d in image_shape)
    if known and num_train * int(np.prod(image_shape)) <= MAX_IN_MEMORY_BYTES:
        x_train, y_train = _materialize(train, num_train, image_shape)
        x_test, y_test = _materialize(test, num_test, image_shape)
        check_label_range(y_train, num_classes, f"{name} train")
        check_label_range(y_test, num_classes, f"{name} test")
        return ArraySource(name, x_train, y_train, x_test, y_test, num_classes, 1.0)
    return StreamSource(name, train, test, num_train, num_test, image_shape, num_classes, 1.0)


def unreachable_download(urls, timeout=None):
    """Why the hosts of `urls` cannot be reached now, or None when they can.

    Opens one TCP connection per host (through the proxy that `urllib` would
    use, if any), all within `timeout` seconds (default
    `DOWNLOAD_PROBE_TIMEOUT`), in a daemon thread so that a hanging name
    lookup cannot hold the caller. An empty `urls` (a dataset with manual
    downloads) is reachable.

    Example:
        >>> unreachable_download([]) is None
        True
    """
    timeout = DOWNLOAD_PROBE_TIMEOUT if timeout is None else float(timeout)
    targets = []
    proxies = urllib.request.getproxies()
    for url in urls:
        parts = urllib.parse.urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            continue
        proxy = proxies.get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if (parts.hostname, port) not in targets:
            targets.append((parts.hostname, port))
    if not targets:
        return None
    failures = []

    def probe():
        for host, port in targets:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError as err:
                failures.append(f"cannot connect to {host}:{port} ({type(err).__name__}: "
                                f"{err})")
                return

    thread = threading.Thread(target=probe, daemon=True, name="kgrow-download-probe")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"no answer from {', '.join(f'{h}:{p}' for h, p in targets)} within {timeout:g} s"
    return failures[0] if failures else None


def _classification_keys(name, info):
    keys = info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise ValueError(
            f"TFDS dataset {name!r} has no (image, label) supervised keys "
            f"(got {keys!r}); kgrow.data serves image classification datasets only.")
    image_key, label_key = keys
    image, label = info.features[image_key], info.features[label_key]
    if getattr(label, "num_classes", None) is None or len(getattr(image, "shape", ())) != 3:
        raise ValueError(
            f"TFDS dataset {name!r} is not an image classification dataset: features "
            f"{image_key!r}={image!r}, {label_key!r}={label!r} (need an [H, W, C] image and "
            f"a class label).")
    return image_key, label_key


def _split_names(name, info):
    splits = set(info.splits.keys()) if info.splits else set()
    if not splits:
        return "train", _TFDS_EVAL_SPLIT.get(name, "test")
    if "train" not in splits:
        raise ValueError(f"TFDS dataset {name!r} has no 'train' split (splits: {sorted(splits)}).")
    for candidate in ("test", "validation"):
        if candidate in splits:
            return "train", candidate
    raise ValueError(
        f"TFDS dataset {name!r} has neither a 'test' nor a 'validation' split "
        f"(splits: {sorted(splits)}).")


def _num_examples(info, split, dataset):
    if info.splits and split in info.splits:
        return int(info.splits[split].num_examples)
    return count_elements(dataset)


def count_elements(dataset):
    """Number of elements of a finite dataset (its cardinality, or by counting)."""
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("The dataset is infinite (did you call .repeat()?); pass a finite one.")
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda n, _: n + 1))


def _cast_label(image, label):
    return image, tf.cast(label, tf.int32)


def _materialize(dataset, count, image_shape, chunk=4096):
    """Reads a whole (image, label) dataset into preallocated numpy arrays."""
    x = np.empty((count,) + tuple(image_shape), dtype=np.uint8)
    y = np.empty((count,), dtype=np.int32)
    filled = 0
    for images, labels in dataset.batch(chunk).as_numpy_iterator():
        n = images.shape[0]
        if filled + n > count:
            raise ValueError(f"The dataset holds more than the announced {count} examples.")
        x[filled:filled + n], y[filled:filled + n] = images, labels
        filled += n
    if filled != count:
        raise ValueError(f"The dataset holds {filled} examples, {count} were announced.")
    return x, y


# -- user datasets ------------------------------------------------------------------
def stream_source(train, test, num_classes, name):
    """Builds a `StreamSource` from user ``tf.data`` datasets of (image, label).

    Grayscale ``[H, W]`` images get a channel axis. The number of elements is
    the dataset's cardinality or, when unknown, counted with one pass.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
    train, image_shape, dtype = _standardize_stream(train, "train")
    num_test = 0
    if test is not None:
        test, test_shape, test_dtype = _standardize_stream(test, "test")
        if test_shape[2] != image_shape[2]:
            raise ValueError(
                f"train and test images differ in channels: {image_shape[2]} vs {test_shape[2]}.")
        if test_dtype != dtype:
            raise ValueError(f"train and test images differ in dtype: {dtype} vs {test_dtype}.")
        num_test = count_elements(test)
    num_train = count_elements(train)
    if num_train == 0:
        raise ValueError("The training dataset is empty.")
    scale = 1.0
    if dtype.is_floating:
        scale = _stream_pixel_scale(train)
    return StreamSource(name, train, test, num_train, num_test, image_shape,
                        int(num_classes), scale)


def _standardize_stream(dataset, split):
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"{split} must be a tf.data.Dataset, got {type(dataset).__name__}.")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            f"{split} dataset elements must be (image, label) pairs, got element_spec {spec}.")
    image_spec, label_spec = spec
    rank = image_spec.shape.rank
    if rank == 4:
        raise ValueError(
            f"{split} dataset looks batched (image shape {image_spec.shape}); pass an unbatched "
            f"dataset (call .unbatch()), the pipeline batches itself.")
    if rank not in (2, 3):
        raise ValueError(
            f"{split} images must have shape [H, W] or [H, W, C], got {image_spec.shape}.")
    if label_spec.shape.rank not in (0, None) and label_spec.shape != [1]:
        raise ValueError(
            f"{split} labels must be scalar class ids, got shape {label_spec.shape} "
            f"(one-hot labels are produced by the pipeline).")
    if not label_spec.dtype.is_integer:
        raise ValueError(f"{split} labels must be integers, got {label_spec.dtype.name}.")
    if not (image_spec.dtype.is_integer or image_spec.dtype.is_floating):
        raise ValueError(f"{split} images must be integer or float, got {image_spec.dtype.name}.")
    if image_spec.shape[-1] is None and rank == 3:
        raise ValueError(f"{split} images must have a known number of channels.")

    def standardize(image, label):
        if rank == 2:
            image = image[..., tf.newaxis]
        return image, tf.cast(tf.reshape(label, []), tf.int32)

    dataset = dataset.map(standardize, num_parallel_calls=tf.data.AUTOTUNE)
    shape = tuple(dataset.element_spec[0].shape.as_list())
    return dataset, shape, image_spec.dtype


def _stream_pixel_scale(dataset, samples=256):
    lo, hi = dataset.take(samples).reduce(
        (tf.constant(np.inf, tf.float32), tf.constant(-np.inf, tf.float32)),
        lambda acc, el: (tf.minimum(acc[0], tf.reduce_min(tf.cast(el[0], tf.float32))),
                         tf.maximum(acc[1], tf.reduce_max(tf.cast(el[0], tf.float32)))))
    lo, hi = float(lo), float(hi)
    if lo >= 0 and hi <= 1.0:
        return 255.0
    if lo >= 0 and hi <= 255.0:
        return 1.0
    raise ValueError(
        f"train images: float pixel values must lie in [0, 1] or [0, 255] (the pipeline "
        f"normalizes them itself); the first {samples} images span [{lo:g}, {hi:g}].")

"""Datasets as ``tf.data`` pipelines that training methods can steer during ``fit``.

Entry points:

* `load(name, ...)`: a dataset by name; ``"fashion_mnist"`` offline from the
  Debian package's IDX files, any TFDS image-classification name through TFDS.
* `from_arrays((x, y), (x_test, y_test), ...)`: numpy arrays.
* `from_datasets(train_ds, test_ds, num_classes=..., ...)`: ``tf.data``
  datasets of (image, label).

Each returns a `DataBundle` with ``.train``, ``.test``, ``.info``
(`DatasetInfo`), ``.steps_per_epoch`` and ``.selection`` (`LiveSelection`:
the active training samples and the live image size, read by ``.train`` at
the start of every epoch). Augmentation is configured with `AugmentConfig`
or a preset name (``"none"``, ``"basic"``, ``"deit"``).

Example:
    >>> import kgrow
    >>> bundle = kgrow.data.load("fashion_mnist", batch_size=128, augment="basic")
    >>> bundle.selection.set_active(range(0, 60000, 2))   # next epoch: half the data
    >>> bundle.steps_per_epoch
    234

Note on ``model.fit``: ``bundle.train`` (and ``bundle.train_with_ids()``) is
its own Keras data adapter: Keras takes each epoch's length from the
selection when the epoch starts (so a selection may shrink or grow between
epochs), and does not warn that it ignores ``shuffle`` (the bundle shuffles
itself, exactly and reproducibly). Datasets derived from it (``.map``,
``.take``) are plain ``tf.data`` datasets whose length Keras fixes at ``fit``
start.
"""
from kgrow.data.api import from_arrays, from_datasets, load
from kgrow.data.augment import PRESETS, AugmentConfig, get_preset
from kgrow.data.idx import parse_idx, read_idx
from kgrow.data.pipeline import DataBundle, DatasetInfo, LiveTrainDataset, selection_of
from kgrow.data.randaugment import rand_augment
from kgrow.data.selection import LiveSelection
from kgrow.data.sources import BUILTIN_DATASETS

__all__ = [
    "AugmentConfig", "BUILTIN_DATASETS", "DataBundle", "DatasetInfo", "LiveSelection",
    "LiveTrainDataset", "PRESETS", "from_arrays", "from_datasets", "get_preset", "load",
    "parse_idx", "rand_augment", "read_idx", "selection_of",
]

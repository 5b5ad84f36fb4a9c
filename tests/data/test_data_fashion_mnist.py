"""Fashion-MNIST: the offline IDX path, overrides, TFDS fallback and errors."""
import gzip
import os
import struct
import sys

import numpy as np
import pytest

import kgrow
from kgrow.data import read_idx, sources

FMNIST_DIR = sources.FASHION_MNIST_DEFAULT_DIR
HAVE_FMNIST = os.path.isfile(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")


def write_idx_gz(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_small_fmnist(directory, n_train=24, n_test=8, labels_max=9):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % (labels_max + 1),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % (labels_max + 1),
    }
    for stem, array in arrays.items():
        write_idx_gz(directory / (stem + ".gz"), array)
    return arrays


@pytest.fixture(scope="module")
def fmnist():
    return kgrow.data.load("fashion_mnist", batch_size=256)


@needs_fmnist
def test_real_files_shapes_classes_and_labels(fmnist):
    info = fmnist.info
    assert (info.name, info.num_train, info.num_test) == ("fashion_mnist", 60000, 10000)
    assert info.image_shape == (28, 28, 1)
    assert info.num_classes == 10 and info.label_mode == "onehot"
    source = fmnist._builder.source
    assert source.x_train.shape == (60000, 28, 28, 1) and source.x_train.dtype == np.uint8
    assert source.y_train.min() == 0 and source.y_train.max() == 9
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert np.bincount(source.y_train).tolist() == [6000] * 10
    assert np.bincount(source.y_test).tolist() == [1000] * 10
    assert fmnist.steps_per_epoch == 60000 // 256


@needs_fmnist
def test_normalization_uses_training_statistics(fmnist):
    raw = read_idx(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")).astype(np.float64)
    (mean,), (std,) = fmnist.normalization
    assert mean == pytest.approx(raw.mean(), rel=1e-9)
    assert std == pytest.approx(raw.std(), rel=1e-9)
    images, labels = next(iter(fmnist.train))
    assert images.shape == (256, 28, 28, 1) and labels.shape == (256, 10)
    assert abs(float(np.mean(images))) < 0.1
    assert float(np.std(images)) == pytest.approx(1.0, abs=0.1)
    np.testing.assert_array_equal(np.sum(labels, axis=1), 1.0)


@needs_fmnist
def test_test_pipeline_is_ordered_and_complete(fmnist):
    source = fmnist._builder.source
    labels = np.concatenate([np.argmax(y, axis=1) for _, y in fmnist.test])
    np.testing.assert_array_equal(labels, source.y_test)
    first_images, _ = next(iter(fmnist.test))
    (mean,), (std,) = fmnist.normalization
    expected = (source.x_test[:256].astype(np.float32) - mean) / std
    np.testing.assert_allclose(first_images, expected, rtol=1e-5, atol=1e-5)


def test_data_dir_override_reads_given_files(tmp_path):
    arrays = write_small_fmnist(tmp_path)
    bundle = kgrow.data.load("fashion_mnist", data_dir=tmp_path, batch_size=8,
                             label_mode="sparse")
    assert (bundle.info.num_train, bundle.info.num_test) == (24, 8)
    source = bundle._builder.source
    np.testing.assert_array_equal(source.x_train[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(source.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_env_var_override(tmp_path, monkeypatch):
    write_small_fmnist(tmp_path, n_train=16)
    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path))
    bundle = kgrow.data.load("fashion_mnist", batch_size=8)
    assert bundle.info.num_train == 16


def test_missing_data_without_tfds_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(FileNotFoundError) as err:
        kgrow.data.load("fashion_mnist", data_dir=tmp_path)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path) in message and "data_dir" in message
    assert "tensorflow_datasets is not installed" in message


def test_missing_files_fall_back_to_tfds(tmp_path, monkeypatch):
    calls = []

    def fake_tfds_source(name, data_dir=None):
        calls.append((name, data_dir))
        x = np.zeros((12, 28, 28, 1), np.uint8)
        return sources.ArraySource(name, x, np.arange(12) % 10, x[:4], np.arange(4), 10)

    monkeypatch.setattr(sources, "tfds_source", fake_tfds_source)
    bundle = kgrow.data.load("fashion_mnist", data_dir=tmp_path, batch_size=4)
    assert calls == [("fashion_mnist", tmp_path)]
    assert bundle.info.num_train == 12


def test_failing_tfds_fallback_is_reported(tmp_path, monkeypatch):
    def offline(name, data_dir=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(sources, "tfds_source", offline)
    with pytest.raises(FileNotFoundError, match="ConnectionError: no network") as err:
        kgrow.data.load("fashion_mnist", data_dir=tmp_path)
    assert isinstance(err.value.__cause__, ConnectionError)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_incomplete_files_are_an_error(tmp_path):
    write_small_fmnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        kgrow.data.load("fashion_mnist", data_dir=tmp_path)


def test_corrupt_labels_are_an_error(tmp_path):
    write_small_fmnist(tmp_path, labels_max=10)  # class id 10 does not exist
    with pytest.raises(ValueError, match="labels reach 10"):
        kgrow.data.load("fashion_mnist", data_dir=tmp_path)


def test_mismatched_counts_are_an_error(tmp_path):
    write_small_fmnist(tmp_path)
    write_idx_gz(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="24 images but 5 labels"):
        kgrow.data.load("fashion_mnist", data_dir=tmp_path)

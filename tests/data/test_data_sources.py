"""from_datasets and the TFDS path (mocked: no network in tests)."""
import sys

import numpy as np
import pytest
import tensorflow as tf

import kgrow
from kgrow.data import from_datasets, sources

tfds = pytest.importorskip("tensorflow_datasets")


def image_dataset(n=24, shape=(6, 6, 3), classes=3, dtype=np.uint8, scale=255):
    x = (np.random.default_rng(0).random((n,) + shape) * scale).astype(dtype)
    return tf.data.Dataset.from_tensor_slices((x, np.arange(n) % classes)), x


# -- from_datasets ------------------------------------------------------------------
def test_from_datasets_shapes_counts_and_stats():
    ds, x = image_dataset()
    bundle = from_datasets(ds, ds.take(10), num_classes=3, batch_size=8, name="mine")
    assert bundle.info == kgrow.data.DatasetInfo("mine", 3, (6, 6, 3), 24, 10, "onehot")
    pixels = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(bundle.normalization[0], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(bundle.normalization[1], pixels.std(0), rtol=1e-9)
    assert [b[0].shape for b in bundle.train] == [(8, 6, 6, 3)] * 3
    test = list(bundle.test)
    assert [b[0].shape[0] for b in test] == [8, 2]
    np.testing.assert_array_equal(np.argmax(test[0][1], 1), np.arange(8) % 3)


def test_from_datasets_test_subset_takes_the_first_test_samples():
    x = np.random.default_rng(0).integers(0, 255, (30, 4, 4, 1), np.uint8)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(30) % 3))
    test = tf.data.Dataset.from_tensor_slices((x, np.arange(30) % 3))
    bundle = from_datasets(ds, test, num_classes=3, batch_size=4, test_subset=10,
                           label_mode="sparse")
    assert bundle.info.num_test == 10
    labels = np.concatenate([b[1].numpy() for b in bundle.test])
    assert labels.tolist() == (np.arange(10) % 3).tolist()


def test_unknown_cardinality_is_counted():
    ds, _ = image_dataset(n=20)
    filtered = ds.filter(lambda image, label: label >= 0)  # cardinality unknown
    assert int(filtered.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    assert from_datasets(filtered, None, num_classes=3, batch_size=4).info.num_train == 20


def test_float_and_grayscale_datasets():
    ds, x = image_dataset(shape=(5, 5), dtype=np.float32, scale=1.0)
    bundle = from_datasets(ds, None, num_classes=3, batch_size=4)
    assert bundle.info.image_shape == (5, 5, 1)
    assert bundle.normalization[0][0] == pytest.approx(x.mean() * 255, rel=1e-5)


def test_variable_size_images_need_image_size():
    def gen():
        for i, side in enumerate((5, 7, 6, 9) * 3):
            yield np.full((side, side + 1, 3), i, np.uint8), i % 2

    spec = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int64))
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    with pytest.raises(ValueError, match="varying size .* pass image_size"):
        from_datasets(ds, None, num_classes=2, batch_size=4)
    bundle = from_datasets(ds, ds, num_classes=2, batch_size=4, image_size=(8, 8),
                           augment="basic")
    assert [b[0].shape for b in bundle.train] == [(4, 8, 8, 3)] * 3
    assert [b[0].shape for b in bundle.test] == [(4, 8, 8, 3)] * 3


@pytest.mark.parametrize("make, message", [
    (lambda ds: ds.batch(4), "looks batched"),
    (lambda ds: ds.repeat(), "infinite"),
    (lambda ds: ds.map(lambda x, y: x), r"\(image, label\) pairs"),
    (lambda ds: ds.map(lambda x, y: (x, tf.one_hot(y, 3))), "scalar class ids"),
    (lambda ds: ds.map(lambda x, y: (x, tf.cast(y, tf.float32))), "labels must be integers"),
    (lambda ds: ds.map(lambda x, y: (tf.cast(x, tf.float32) * 2.0 - 255.0, y)),
     r"\[0, 1\] or \[0, 255\]"),
    (lambda ds: [1, 2, 3], "must be a tf.data.Dataset"),
])
def test_from_datasets_rejects_bad_datasets(make, message):
    ds, _ = image_dataset()
    with pytest.raises(ValueError, match=message):
        from_datasets(make(ds), None, num_classes=3, batch_size=4)


def test_from_datasets_needs_num_classes_and_checks_labels_when_reading():
    ds, _ = image_dataset(classes=5)
    with pytest.raises(ValueError, match="needs num_classes"):
        from_datasets(ds, None, batch_size=4)
    bundle = from_datasets(ds, None, num_classes=3, batch_size=4)  # labels reach 4
    with pytest.raises(tf.errors.InvalidArgumentError, match="label out of range"):
        list(bundle.train)


# -- TFDS ----------------------------------------------------------------------------
def test_tfds_small_dataset_is_loaded_into_memory():
    with tfds.testing.mock_data(num_examples=40):
        bundle = kgrow.data.load("cifar10", batch_size=8, augment="basic")
    assert isinstance(bundle._builder.source, sources.ArraySource)
    assert (bundle.info.num_classes, bundle.info.image_shape) == (10, (32, 32, 3))
    assert (bundle.info.num_train, bundle.info.num_test) == (40, 40)
    images, labels = next(iter(bundle.train))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8, 10)
    assert bundle.steps_per_epoch == 5


def test_tfds_variable_size_dataset_is_streamed():
    with tfds.testing.mock_data(num_examples=24):
        with pytest.raises(ValueError, match="pass image_size"):
            kgrow.data.load("imagenette", batch_size=8)
        bundle = kgrow.data.load("imagenette", batch_size=8, image_size=(16, 20),
                                 subset=16, subset_mode="random")
    assert isinstance(bundle._builder.source, sources.StreamSource)
    assert bundle.info.image_shape == (16, 20, 3) and bundle.info.num_train == 16
    assert [b[0].shape for b in bundle.train] == [(8, 16, 20, 3)] * 2
    assert all(b[0].shape[1:] == (16, 20, 3) for b in bundle.test)


def test_tfds_load_arguments(monkeypatch):
    calls = []
    real_load = tfds.load

    def spy(name, **kwargs):
        calls.append((name, kwargs))
        return real_load(name, **kwargs)

    monkeypatch.setattr(tfds, "load", spy)
    with tfds.testing.mock_data(num_examples=16):
        kgrow.data.load("cifar100", batch_size=4, data_dir="/nonexistent/tfds")
    (name, kwargs), = calls
    assert name == "cifar100"
    assert kwargs["as_supervised"] is True and kwargs["data_dir"] == "/nonexistent/tfds"
    assert kwargs["split"] == ["train", "test"] and kwargs["shuffle_files"] is False


def test_unknown_name_explains_what_works():
    with pytest.raises(ValueError) as err:
        kgrow.data.load("cifar_ten")
    message = str(err.value)
    assert "Unknown dataset 'cifar_ten'" in message and "'cifar10'" in message
    assert "['fashion_mnist']" in message and "Any TFDS image-classification" in message


def test_unknown_name_without_tfds(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ValueError, match="tensorflow_datasets is not installed"):
        kgrow.data.load("cifar10")


def test_non_classification_tfds_dataset_is_rejected():
    with pytest.raises(ValueError, match="image classification"):
        kgrow.data.load("coco")


def test_bad_name_type():
    with pytest.raises(ValueError, match="non-empty string"):
        kgrow.data.load("")


def test_tfds_download_failure_is_explained(monkeypatch):
    def offline(name, **kwargs):
        raise ConnectionError("Could not resolve host")

    monkeypatch.setattr(tfds, "load", offline)
    monkeypatch.setattr(sources, "unreachable_download", lambda urls: None)  # "online"
    with pytest.raises(FileNotFoundError, match="needs a network connection") as err:
        kgrow.data.load("cifar10", data_dir="/nonexistent/tfds")
    assert "ConnectionError: Could not resolve host" in str(err.value)
    assert "tfds build cifar10" in str(err.value)


def spy_tfds_load(monkeypatch):
    """Records tfds.load's `download` arguments; data is never there."""
    downloads = []

    def load(name, download=True, **kwargs):
        downloads.append(download)
        raise AssertionError(f"Dataset {name}: could not find data")

    monkeypatch.setattr(tfds, "load", load)
    return downloads


def test_offline_missing_tfds_dataset_fails_without_download(monkeypatch):
    downloads = spy_tfds_load(monkeypatch)
    probed = []

    def unreachable(urls):
        probed.extend(urls)
        return "cannot connect to www.cs.toronto.edu:443 (gaierror)"

    monkeypatch.setattr(sources, "unreachable_download", unreachable)
    with pytest.raises(FileNotFoundError) as err:
        kgrow.data.load("cifar10", data_dir="/nonexistent/tfds")
    assert downloads == [False]  # TFDS's retrying download was never started
    assert probed and all(u.startswith("https://www.cs.toronto.edu/") for u in probed)
    message = str(err.value)
    assert "cannot connect to www.cs.toronto.edu:443" in message
    assert "/nonexistent/tfds" in message and "tfds build cifar10" in message


def test_offline_missing_fashion_mnist_says_where_and_how(monkeypatch):
    downloads = spy_tfds_load(monkeypatch)
    monkeypatch.setattr(sources, "unreachable_download", lambda urls: "cannot connect")
    with pytest.raises(FileNotFoundError) as err:
        kgrow.data.load("fashion_mnist", data_dir="/nonexistent")
    assert downloads == [False]
    message = str(err.value)
    assert "no IDX files" in message and "in /nonexistent" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert sources.FASHION_MNIST_ENV in message and "cannot connect" in message


def test_online_missing_dataset_is_downloaded(monkeypatch):
    downloads = spy_tfds_load(monkeypatch)
    monkeypatch.setattr(sources, "unreachable_download", lambda urls: None)
    with pytest.raises(FileNotFoundError, match="could not find data"):
        kgrow.data.load("cifar10", data_dir="/nonexistent/tfds")
    assert downloads == [False, True]


def test_download_probe_is_bounded_in_time(monkeypatch):
    import threading
    import time

    release = threading.Event()

    def hanging(address, timeout=None):  # a name lookup that does not answer
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(sources.socket, "create_connection", hanging)
    start = time.monotonic()
    try:
        reason = sources.unreachable_download(["https://example.org/a.tgz"], timeout=0.2)
    finally:
        release.set()
    assert time.monotonic() - start < 5
    assert reason == "no answer from example.org:443 within 0.2 s"


def test_download_probe_reports_refused_hosts_and_uses_proxies(monkeypatch):
    calls = []

    def refuse(address, timeout=None):
        calls.append(address)
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(sources.socket, "create_connection", refuse)
    monkeypatch.setenv("https_proxy", "http://proxy.local:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    reason = sources.unreachable_download(["https://a.org/x", "https://a.org/y",
                                           "ftp://b.org/z"])
    assert calls == [("proxy.local", 3128)]
    assert reason.startswith("cannot connect to proxy.local:3128")
    assert sources.unreachable_download(["ftp://b.org/z"]) is None  # nothing to probe

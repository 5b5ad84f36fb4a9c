import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# pytest-xdist runs one process per core: each gets its share of the cores for
# TensorFlow's op kernels (and the subprocesses it starts inherit it), as the
# local workers of `kgrow bench --local-workers` do, instead of every process
# sizing its pools to all the cores and contending for them. Inter-op pools stay
# as they are: MirroredStrategy replicas run their ops side by side.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from testing_helpers import new_mirrored_strategy  # noqa: E402

# Two logical CPU devices, so MirroredStrategy tests run on a machine with one
# CPU. This must happen before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised by an earlier import
    pass


@pytest.fixture(autouse=True)
def _seed_everything():
    import keras
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture(autouse=True, scope="module")
def _fresh_keras_session_per_module():
    # clear_session costs ~0.2 s; once per module keeps memory bounded
    # without paying it for every test.
    import keras
    yield
    keras.backend.clear_session()



@pytest.fixture
def mirrored_strategy():
    return new_mirrored_strategy()


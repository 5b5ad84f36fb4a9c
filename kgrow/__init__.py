"""kgrow: change what is trained over time, inside one `model.fit`.

Submodules are imported lazily so that `import kgrow` stays cheap and does not
initialise TensorFlow before the user has configured devices.
"""
import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_SUBMODULES = (
    "bench", "callbacks", "controller", "data", "flops", "growth", "models",
    "schedules", "surgery", "training",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kgrow.{name}")
    raise AttributeError(f"module 'kgrow' has no attribute {name!r}")

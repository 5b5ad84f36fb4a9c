"""Benchmark: the baseline and kgrow methods on the same model, data and seed.

Run from the shell as `kgrow bench --profile quick --out runs/quick` (or
`python -m kgrow bench ...`), or from Python:

    >>> from kgrow import bench
    >>> bench.available_methods()[0]
    'baseline'

Methods plug in through `register_method(name, factory)`; see
`kgrow.bench.registry`. Measurements are described in `kgrow.bench.meters`,
profiles in `kgrow.bench.profiles`.
"""
from kgrow.bench.profiles import Profile, available_profiles, get_profile
from kgrow.bench.registry import (
    BASELINE, MethodContext, MethodSetup, available_methods, get_method, register_method,
    unregister_method)

_LAZY = {
    "BenchSpec": "kgrow.bench.runner",
    "run_bench": "kgrow.bench.runner",
    "run_method": "kgrow.bench.runner",
    "build_results": "kgrow.bench.runner",
    "write_results": "kgrow.bench.runner",
}

__all__ = ["BASELINE", "MethodContext", "MethodSetup", "Profile", "available_methods",
           "available_profiles", "get_method", "get_profile", "register_method",
           "unregister_method", *_LAZY]


def __getattr__(name):
    # The runner imports TensorFlow; keep `kgrow bench --help` fast.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kgrow.bench' has no attribute {name!r}")

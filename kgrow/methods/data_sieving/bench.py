"""Bench method of circular data sieving (registered lazily in `kgrow.bench.registry`).

Example:
    >>> from kgrow import bench
    >>> {"sieve", "sieve_15", "sieve_22"} <= set(bench.available_methods())
    True
"""
from __future__ import annotations

from kgrow.methods.data_sieving.callback import DataSieving

__all__ = ["METHODS", "bench_sieve", "bench_sieve_15", "bench_sieve_22", "factory"]

#: name -> "module:attribute" of the factory (registered lazily by `kgrow.bench.registry`).
METHODS = {"sieve": f"{__name__}:bench_sieve", "sieve_15": f"{__name__}:bench_sieve_15",
           "sieve_22": f"{__name__}:bench_sieve_22"}


def factory(fraction=0.25, update_ratio=None, interval_epochs=None):
    """A bench factory: the bench model trained with `DataSieving` on its data.

    The callback steers the run's bundle (``context.data.selection``); the
    runner trains on ``train_with_ids()`` (``data_options``), and its
    FLOPs meter counts the samples the pipeline delivers, so the saving of
    the smaller active set is what the results show.
    """
    def make(build_model, context):
        from kgrow.bench.registry import MethodSetup
        sieve = DataSieving(fraction, update_ratio, interval_epochs,
                            epochs=int(context.train.epochs),
                            selection=context.data.selection, seed=int(context.train.seed))
        return MethodSetup(model=build_model(), callbacks=[sieve])
    make.__name__ = "sieve"
    make.data_options = SIEVE_DATA
    return make


#: The bench trains sieving runs on batches carrying their sample ids.
SIEVE_DATA = {"sample_ids": True}


def bench_sieve(build_model, context):
    """Bench method `sieve`: 25% of the samples held out (a 25% training-FLOPs saving).

    Update ratio the paper's 0.3 of the removed set (raised for runs too
    short to cycle the queue, e.g. 1.0 for 2 epochs), interval the paper's 5
    of 160 epochs scaled to the run.
    """
    return factory()(build_model, context)


def bench_sieve_15(build_model, context):
    """Bench method `sieve_15`: 15% held out (the paper: no accuracy cost up to 15%;
    SpFDE's 15% + 15% row with `freeze_15`)."""
    return factory(fraction=0.15)(build_model, context)


def bench_sieve_22(build_model, context):
    """Bench method `sieve_22`: 22% held out (SpFDE's lighter-freezing split
    `freeze_5+sieve_22`: 25.2% fewer training FLOPs than sparse training on
    `standard-sparse`, just over the 25% target; spfde.md)."""
    return factory(fraction=0.22)(build_model, context)


# The registry reads data options from the registered function, not from `make`.
for _method in (bench_sieve, bench_sieve_15, bench_sieve_22):
    _method.data_options = SIEVE_DATA
del _method

"""Bench methods of sparse training (registered lazily in `kgrow.bench.registry`).

Each returns a `MethodSetup` whose `sparsity` is the callback's live mask
densities, so the bench's FLOPs meter counts the sparse kernels at their
density at every epoch begin (after the masks of that epoch are set).

Example:
    >>> from kgrow import bench
    >>> {"sparse_mest", "sparse_mest_ems"} <= set(bench.available_methods())
    True
"""
from __future__ import annotations

from kgrow.methods.sparse_training.callback import SparseTraining

__all__ = ["METHODS", "factory", "bench_mest", "bench_mest_ems", "DEFAULT_SPARSITY"]

# SpFDE's main setting (Table 2, CIFAR-100 ResNet-32 x2).
DEFAULT_SPARSITY = 0.9


def factory(mode: str, sparsity: float = DEFAULT_SPARSITY, **options):
    """A bench factory training the bench model with `SparseTraining(sparsity, mode)`."""
    def make(build_model, context):
        from kgrow.bench.registry import MethodSetup
        del build_model
        callback = SparseTraining(sparsity, mode, epochs=int(context.train.epochs), **options)
        return MethodSetup(model=context.build_model(), callbacks=[callback],
                           sparsity=callback.flops_sparsity)
    make.__name__ = f"sparse_mest_{mode}"
    return make


def bench_mest(build_model, context):
    """Bench method `sparse_mest`: MEST EM at 90% sparsity (prune to 95%, regrow to
    90% every 5/160 of the run until 3/4 of it), uniform per layer, first conv
    and classifier dense."""
    return factory("em")(build_model, context)


def bench_mest_ems(build_model, context):
    """Bench method `sparse_mest_ems`: MEST EM&S at 90% (SpFDE's sparse training):
    prune to 90%, regrow to 85% (87.5% after 9/16 of the run), final prune to 90%
    at 3/4 of the run."""
    return factory("ems")(build_model, context)


METHODS = {
    "sparse_mest": "kgrow.methods.sparse_training.bench:bench_mest",
    "sparse_mest_ems": "kgrow.methods.sparse_training.bench:bench_mest_ems",
}

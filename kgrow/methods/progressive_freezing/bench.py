"""Bench methods of progressive layer freezing, registered lazily with `kgrow.bench`.

* ``freeze``: 25% of the run's training FLOPs saved (the paper's appendix
  timing setting), T_frz derived, dT scaled from the paper's 5 of 160 epochs;
* ``freeze_15``: 15% (the paper: no accuracy cost up to 15%).
"""
from __future__ import annotations

__all__ = ["METHODS", "factory", "freeze", "freeze_15"]

#: name -> "module:attribute" of the factory (imported when first used).
METHODS = {name: f"{__name__}:{name}" for name in ("freeze", "freeze_15")}


def factory(target_saving: float, **options):
    """A bench factory running `ProgressiveFreezing(target_saving, **options)` on the bench model."""
    def make(build_model, context):
        del build_model
        from kgrow.methods.progressive_freezing.callback import ProgressiveFreezing
        # The bench compiles a warm-up + cosine schedule over the run.
        options.setdefault("global_lr", "cosine")
        return context.build_model(), [ProgressiveFreezing(
            target_saving, epochs=int(context.train.epochs), **options)]
    make.__name__ = f"freeze_{round(target_saving * 100)}"
    return make


def freeze(build_model, context):
    """Bench method `freeze`: 25% training-FLOPs saving."""
    return factory(0.25)(build_model, context)


def freeze_15(build_model, context):
    """Bench method `freeze_15`: 15% training-FLOPs saving."""
    return factory(0.15)(build_model, context)

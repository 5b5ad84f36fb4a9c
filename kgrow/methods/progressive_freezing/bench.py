"""Bench methods of progressive layer freezing, registered lazily with `kgrow.bench`.

* ``freeze``: 25% of the run's training FLOPs saved (the paper's appendix
  timing setting), T_frz derived, dT scaled from the paper's 5 of 160 epochs;
* ``freeze_15``: 15% (the paper: no accuracy cost up to 15%);
* ``freeze_5``: 5%, for composing after growth (``grow_width+freeze_5``):
  nothing freezes before the grown layers trained an epoch at their final
  size, so only the last epochs are left to save in (the saving is of the
  full model's run, on top of the growth's).

Bench runs are short (5-12 epochs) where the paper's are 160: one block per
dT may then not reach the target at all. The factory passes
`blocks_per_event="auto"`: the fewest blocks per freeze event (1, the paper's,
when it suffices) that reach it (recorded in `plan.to_dict()`).
"""
from __future__ import annotations

__all__ = ["METHODS", "factory", "freeze", "freeze_15", "freeze_5"]

#: name -> "module:attribute" of the factory (imported when first used).
METHODS = {name: f"{__name__}:{name}" for name in ("freeze", "freeze_15", "freeze_5")}


def factory(target_saving: float, **options):
    """A bench factory: `ProgressiveFreezing(target_saving, **options)` on the bench model."""
    def make(build_model, context):
        del build_model
        from kgrow.methods.progressive_freezing.callback import (ProgressiveFreezing,
                                                                 default_interval)
        epochs = int(context.train.epochs)
        model = context.build_model()
        kwargs = dict(options)
        kwargs.setdefault("interval", default_interval(epochs))
        kwargs.setdefault("global_lr", "cosine")  # the bench compiles a cosine schedule
        kwargs.setdefault("blocks_per_event", "auto")
        return model, [ProgressiveFreezing(target_saving, epochs=epochs, **kwargs)]
    make.__name__ = f"freeze_{round(target_saving * 100)}"
    return make


def freeze(build_model, context):
    """Bench method `freeze`: 25% training-FLOPs saving."""
    return factory(0.25)(build_model, context)


def freeze_15(build_model, context):
    """Bench method `freeze_15`: 15% training-FLOPs saving."""
    return factory(0.15)(build_model, context)


def freeze_5(build_model, context):
    """Bench method `freeze_5`: 5% training-FLOPs saving (after growth, see above)."""
    return factory(0.05)(build_model, context)

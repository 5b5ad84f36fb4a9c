"""Bench methods of progressive layer freezing, registered lazily with `kgrow.bench`.

* ``freeze``: 25% of the run's training FLOPs saved (the paper's appendix
  timing setting), T_frz derived, dT scaled from the paper's 5 of 160 epochs;
* ``freeze_15``: 15% (the paper: no accuracy cost up to 15%).

Bench runs are short (5-12 epochs) where the paper's are 160: one block per
dT may then not reach the target at all. The factory takes the fewest blocks
per freeze event (1, the paper's, when it suffices) that reaches it (the
callback's `blocks_per_event`, also in `plan.to_dict()`).
"""
from __future__ import annotations

__all__ = ["METHODS", "factory", "freeze", "freeze_15"]

#: name -> "module:attribute" of the factory (imported when first used).
METHODS = {name: f"{__name__}:{name}" for name in ("freeze", "freeze_15")}


def _blocks_per_event(model, target, epochs, options) -> int:
    from kgrow.methods.progressive_freezing.functional import find_freeze_blocks, freeze_plan
    groups = find_freeze_blocks(model, options.get("blocks"), options.get("unit", "block"))
    error = None
    for per in range(1, len(groups) + 1):
        try:
            freeze_plan(model, target, epochs, options["interval"], options.get("start"),
                        blocks_per_event=per, groups=groups,
                        freeze_fraction=options.get("freeze_fraction", 2.0 / 3.0))
            return per
        except ValueError as err:
            if "unreachable" not in str(err):
                raise
            error = err
    raise error


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
        if "blocks_per_event" not in kwargs:
            kwargs["blocks_per_event"] = _blocks_per_event(model, target_saving, epochs, kwargs)
        return model, [ProgressiveFreezing(target_saving, epochs=epochs, **kwargs)]
    make.__name__ = f"freeze_{round(target_saving * 100)}"
    return make


def freeze(build_model, context):
    """Bench method `freeze`: 25% training-FLOPs saving."""
    return factory(0.25)(build_model, context)


def freeze_15(build_model, context):
    """Bench method `freeze_15`: 15% training-FLOPs saving."""
    return factory(0.15)(build_model, context)

"""Bench methods of AutoProg's manual schedule (registered lazily in `kgrow.bench.registry`).

* ``prog``: the paper's manual baseline with its defaults (4 equal stages,
  resolution and depth from half, MoGrow, optimizer moments reset);
* ``prog_randinit``, ``prog_stacking``, ``prog_interpolation``,
  ``prog_mogrow``: the growth-operator ablation, the same schedule with each
  operator (``prog_mogrow`` is ``prog``);
* ``prog_carry``: ``prog`` with the optimizer moments carried through each
  growth instead of reset;
* ``prog_resolution``, ``prog_depth``: ``prog`` growing one dimension only
  (the other at full size from the start), to see which growth costs the
  accuracy.

They need the bench's data with a live image size, which they ask for with
``data_options = {"resizable": True}``; the runner then evaluates on the
test set at the stage's resolution. The search (``autoprog``) is registered
by its own module.

Example:
    >>> from kgrow import bench
    >>> {"prog", "prog_randinit", "prog_mogrow", "prog_carry", "prog_depth",
    ...  "autoprog_carry"} <= set(bench.available_methods())
    True
"""
from __future__ import annotations

__all__ = ["METHODS", "factory", "bench_prog", "prog_carry", "prog_resolution", "prog_depth"]


def factory(operator: str = "mogrow", **options):
    """A bench factory running `Prog(operator=..., **options)` on the bench model.

    Stages are capped by the run's epochs (at least one epoch per stage).
    """
    def make(build_model, context):
        del build_model
        from kgrow.controller import TrainingController
        from kgrow.methods.autoprog.callback import Prog
        epochs = int(context.train.epochs)
        kwargs = dict(options)
        if kwargs.get("schedule") is None:
            kwargs["num_stages"] = min(kwargs.get("num_stages", 4), epochs)
        # kgrow bundles have no static length; MoGrow's EMA decay needs it.
        kwargs.setdefault("steps_per_epoch", int(context.steps_per_epoch))
        model = context.build_model()
        # The bench counts the samples through a wrapped dataset, which hides
        # the bundle's selection from fit: attach it here.
        TrainingController.of(model).attach_selection(context.data.selection)
        return model, [Prog(epochs=epochs, operator=operator, **kwargs)]
    make.__name__ = f"prog_{operator}"
    make.data_options = {"resizable": True}
    return make


def bench_prog(build_model, context):
    """Bench method `prog`: the paper's manual progressive learning (MoGrow)."""
    return factory("mogrow")(build_model, context)


bench_prog.data_options = {"resizable": True}

_ablation = {f"prog_{op}": factory(op) for op in ("randinit", "stacking", "interpolation",
                                                   "mogrow")}
prog_carry = factory("mogrow", reset_optimizer=False)
prog_carry.__name__ = "prog_carry"
prog_resolution = factory("mogrow", depth_scale=None)
prog_resolution.__name__ = "prog_resolution"
prog_depth = factory("mogrow", resolution_scale=None)
prog_depth.__name__ = "prog_depth"
globals().update(_ablation)

#: Bench method name -> lazy "module:attribute" factory.
METHODS = {"prog": "kgrow.methods.autoprog.bench:bench_prog",
           "prog_carry": "kgrow.methods.autoprog.bench:prog_carry",
           "prog_resolution": "kgrow.methods.autoprog.bench:prog_resolution",
           "prog_depth": "kgrow.methods.autoprog.bench:prog_depth",
           "autoprog": "kgrow.methods.autoprog.search_callback:bench_autoprog",
           "autoprog_carry": "kgrow.methods.autoprog.search_callback:bench_autoprog_carry",
           **{name: f"kgrow.methods.autoprog.bench:{name}" for name in _ablation}}

"""Bench methods of Network Expansion (registered lazily in `kgrow.bench.registry`).

Example:
    >>> from kgrow import bench
    >>> {"network_expansion", "network_expansion_w25", "network_expansion_vit",
    ...  "network_expansion_vit_carry", "network_expansion_vit3",
    ...  "network_expansion_w25_long", "network_expansion_w25_mup",
    ...  "network_expansion_w25_fanout", "network_expansion_w25_rescale",
    ...  "network_expansion_wd_rescale"} <= set(
    ...     bench.available_methods())
    True
"""
from __future__ import annotations

from kgrow.methods.network_expansion.callback import NetworkExpansion
from kgrow.methods.network_expansion.functional import stage_starts, thirds

__all__ = ["METHODS", "bench_cnn", "bench_cnn_quarter", "bench_cnn_quarter_long",
           "bench_cnn_quarter_mup", "bench_cnn_quarter_fanout", "bench_cnn_quarter_rescale",
           "bench_cnn_width_depth", "bench_vit",
           "bench_vit_carry", "bench_vit_thirds", "factory", "stage_starts", "thirds"]


def factory(mode: str, depth_schedule=None, stage_fractions=None, **options):
    """A bench factory running `NetworkExpansion(mode, **options)` on the bench model.

    Stage counts are capped by the run's epochs (at least one epoch per stage).
    ``depth_schedule`` (ViT): a function of the model's block count giving
    the depths, for schedules that are fractions of the model's depth.
    ``stage_fractions`` (CNN): each stage's start as a fraction of the run.
    """
    def make(build_model, context):
        del build_model
        epochs = int(context.train.epochs)
        kwargs = dict(options)
        if stage_fractions is not None:
            kwargs["stage_epochs"] = stage_starts(stage_fractions, epochs)
        if mode == "cnn" and "stage_epochs" not in kwargs:
            kwargs["num_stages"] = min(kwargs.get("num_stages", 3), epochs)
        model = context.build_model()
        if mode == "vit":
            # kgrow bundles have no static length; the EMA decay needs it.
            kwargs.setdefault("steps_per_epoch", int(context.steps_per_epoch))
            if depth_schedule is not None:
                from kgrow.surgery import find_stages
                kwargs["depths"] = depth_schedule(sum(s.depth for s in find_stages(model)))
        return model, [NetworkExpansion(mode, epochs=epochs, **kwargs)]
    make.__name__ = f"network_expansion_{mode}"
    return make


def bench_cnn(build_model, context):
    """Bench method `network_expansion`: the CNN recipe with the card's defaults.

    Width 0.5 -> 1.0 of every channel group in 3 equal stages, new filters
    orthogonal to the kept ones (norm-matched), zero fan-out, optimizer
    state carried.
    """
    return factory("cnn")(build_model, context)


def bench_cnn_quarter(build_model, context):
    """Bench method `network_expansion_w25`: the CNN recipe from a quarter width.

    Width 1/4 -> 1 in 4 equal stages (1/4, 1/2, 3/4, 1), otherwise as
    `network_expansion`: the schedule of the variance-transfer methods, for a
    like-for-like comparison and a larger FLOPs saving.
    """
    return factory("cnn", num_stages=4, start_width=0.25)(build_model, context)


def bench_cnn_quarter_long(build_model, context):
    """Bench method `network_expansion_w25_long`: 1/4 -> 1/2 -> full width, the full
    model for the second half of the run.

    Stages start at 0, 1/4 and 1/2 of the run (12 epochs: 0, 3, 6). Same
    start as `network_expansion_w25`, but the last expansion comes at half
    time instead of three quarters, while the learning rate is still half
    its peak, to give the new filters of the last expansion time and learning
    rate to catch up, paid for with full-width epochs. Measured on `standard`
    (seed 0): it loses more accuracy than the equal stages (method card).
    """
    return factory("cnn", widths=(0.25, 0.5, 1.0),
                   stage_fractions=(0.0, 0.25, 0.5))(build_model, context)


def bench_cnn_quarter_mup(build_model, context):
    """Bench method `network_expansion_w25_mup`: `network_expansion_w25` under the
    fan-in-aware parameterization (``parameterize=True``): the re-initialization and
    per-layer learning rates of variance transfer's full method, with Network
    Expansion's orthogonal filters, on the same 1/4 -> 1 schedule. Measured on
    `standard` (seed 0): no more accurate than without it (method card).
    """
    return factory("cnn", num_stages=4, start_width=0.25,
                   parameterize=True)(build_model, context)


def bench_cnn_quarter_fanout(build_model, context):
    """Bench method `network_expansion_w25_fanout`: `network_expansion_w25` with the
    weights reading the new filters started as small orthogonal rows
    (``fan_out=0.1``: a tenth of the existing rows' norm) instead of zero.

    With zero fan-out a new filter's own weights get no gradient until the
    weights reading it have grown; small rows let both train from the first
    step, at the price of a small change of the function at each expansion.
    Measured on `standard` (seed 0): about as accurate as zero fan-out (method card).
    """
    return factory("cnn", num_stages=4, start_width=0.25, fan_out=0.1)(build_model, context)


def bench_cnn_quarter_rescale(build_model, context):
    """Bench method `network_expansion_w25_rescale`: `network_expansion_w25` with
    variance transfer's "sqrt" rescaling of the old fan-out at each expansion
    (``rescale="sqrt"``, undone by the BatchNorms: still exact).

    In the variance-transfer ablation on `standard` the rescaling was the part
    that brought paired growth closest to the baseline (method cards); this
    asks whether Network Expansion's orthogonal filters gain the same.
    """
    return factory("cnn", num_stages=4, start_width=0.25, rescale="sqrt")(build_model, context)


def bench_cnn_width_depth(build_model, context):
    """Bench method `network_expansion_wd_rescale`: the paper's width- *and*
    depth-level sparsity, each dimension grown at its own time.

    Half the filters and two thirds of the blocks of every network stage for
    the first third of the run, then the full width (orthogonal filters,
    "sqrt" rescaling), then the full depth for the last third (new blocks
    start as identities). On a CPU, narrow convolutions save far less time
    than FLOPs (channels padded to the vector width, memory-bound
    element-wise work) while fewer blocks save time nearly in proportion:
    on the AMD host, `benchmarks/width_depth_grid.py` gave the full width at
    2/3 of the blocks 87-106% of its FLOPs saving, half width at full depth
    66-76%. The schedule spends its narrow stage shallow and its shallow
    stage wide. Measured on `standard` (seed 0): -0.42 points, more than the
    w25 schedule with rescaling loses (method card).
    """
    return factory("cnn", widths=(0.5, 1.0, 1.0), depth_fractions=(2 / 3, 2 / 3, 1.0),
                   rescale="sqrt")(build_model, context)


def bench_vit(build_model, context):
    """Bench method `network_expansion_vit`: half the blocks -> all, in 2 stages.

    EMA blocks interleaved after the last online blocks, EMA half-life the
    paper's 4.6% of the run, drop-path rates reset, optimizer moments reset.
    """
    return factory("vit")(build_model, context)


def bench_vit_carry(build_model, context):
    """Bench method `network_expansion_vit_carry`: `network_expansion_vit` with the
    optimizer moments carried through the expansion (new blocks' moments start
    at zero) instead of reset: the option for runs too short to absorb the
    reset's first large AdamW steps.
    """
    return factory("vit", reset_optimizer=False)(build_model, context)


def bench_vit_thirds(build_model, context):
    """Bench method `network_expansion_vit3`: a third of the blocks, two thirds, all.

    The authors' other schedule (DeiT-B 4 -> 8 -> 12) in 3 equal stages, with
    the moments carried as `network_expansion_vit_carry`: more of the run
    at small depth, for a larger saving.
    """
    return factory("vit", depth_schedule=thirds, reset_optimizer=False)(build_model, context)


#: name -> "module:attribute" of the factory (imported when first used).
METHODS = {"network_expansion": f"{__name__}:bench_cnn",
           "network_expansion_w25": f"{__name__}:bench_cnn_quarter",
           "network_expansion_w25_long": f"{__name__}:bench_cnn_quarter_long",
           "network_expansion_w25_mup": f"{__name__}:bench_cnn_quarter_mup",
           "network_expansion_w25_fanout": f"{__name__}:bench_cnn_quarter_fanout",
           "network_expansion_w25_rescale": f"{__name__}:bench_cnn_quarter_rescale",
           "network_expansion_wd_rescale": f"{__name__}:bench_cnn_width_depth",
           "network_expansion_vit": f"{__name__}:bench_vit",
           "network_expansion_vit_carry": f"{__name__}:bench_vit_carry",
           "network_expansion_vit3": f"{__name__}:bench_vit_thirds"}

"""Network Expansion, functional form: schedules, EMA decay, the two expansions.

Everything here is a small function over the engine: `expand_width` is
`kgrow.callbacks.grow_to` with the `orthogonal` growth initializer,
`expand_depth` is `kgrow.surgery.set_depth` with the `expansion` mapping and
an EMA as the donor of the new blocks. Sizes in schedules are fractions of
the full model, as everywhere in kgrow.

Example:
    >>> round(ema_decay(half_life_epochs=2.0, steps_per_epoch=50), 6)
    0.993092
    >>> depth_weight_decay(0.05, depth=6, final_depth=12)
    0.025
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from kgrow.schedules import GrowthSchedule, Stage

__all__ = ["PAPER_EMA_HALF_LIFE_FRACTION", "ema_decay", "depth_weight_decay", "cnn_schedule",
           "vit_schedule", "stage_starts", "thirds", "expand_width", "expand_depth"]

# The authors' EMA decay 0.99996 per step on ImageNet at batch 1024 (1,251
# steps per epoch) over 300 epochs: a half-life of 17,328 steps = 13.85
# epochs = 4.6% of the run. Kept as a fraction of the run so that it fits
# any run length.
_PAPER_DECAY, _PAPER_STEPS_PER_EPOCH, _PAPER_EPOCHS = 0.99996, 1251, 300
PAPER_EMA_HALF_LIFE_FRACTION = (math.log(0.5) / math.log(_PAPER_DECAY)
                                / _PAPER_STEPS_PER_EPOCH / _PAPER_EPOCHS)


def ema_decay(half_life_epochs: float, steps_per_epoch: int) -> float:
    """Per-step EMA decay whose half-life is `half_life_epochs` epochs.

    ``decay ** (half_life_epochs * steps_per_epoch) == 0.5``.

    Raises:
        ValueError: half-life or steps per epoch not positive.
    """
    from kgrow.controller.ema import resolve_decay
    _check_half_life(half_life_epochs)
    if not steps_per_epoch or steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be a positive number of optimizer steps, got "
                         f"{steps_per_epoch!r}")
    return resolve_decay(half_life_epochs=float(half_life_epochs),
                         steps_per_epoch=steps_per_epoch)


def _check_half_life(half_life_epochs) -> None:
    if (not isinstance(half_life_epochs, (int, float)) or isinstance(half_life_epochs, bool)
            or not math.isfinite(half_life_epochs) or half_life_epochs <= 0):
        raise ValueError(f"the EMA half-life must be a positive number of epochs, got "
                         f"{half_life_epochs!r}")


def depth_weight_decay(weight_decay: float, depth: int, final_depth: int) -> float:
    """The authors' optional weight decay of a stage: ``wd * depth / final_depth``."""
    if depth <= 0 or final_depth <= 0:
        raise ValueError(f"depths must be positive, got depth={depth}, "
                         f"final_depth={final_depth}")
    return float(weight_decay) * (depth / final_depth)


def _check_fraction(label: str, value) -> float:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not 0.0 < value <= 1.0):
        raise ValueError(f"{label} must be a fraction of the full model in (0, 1], got "
                         f"{value!r}")
    return float(value)


def cnn_schedule(total_epochs: int, num_stages: int = 3, start_width: float = 0.5,
                 start_depth: Optional[float] = None,
                 stage_epochs: Optional[Sequence[int]] = None,
                 widths: Optional[Sequence[float]] = None,
                 depth_fractions: Optional[Sequence[float]] = None) -> GrowthSchedule:
    """CNN expansion: width (and optionally depth) from a fraction to the full model.

    Sizes are `linspace(start, 1, num_stages)` unless `widths` lists each
    stage's width (increasing, ending at 1) or `depth_fractions` each stage's
    fraction of the blocks of every stage of the network (the paper's
    depth-level sparsity; new blocks start as identities). With both lists,
    each may stay put from one stage to the next as long as the other grows,
    so a run can grow width and depth at different times. Stages are
    equal-length (``total_epochs / num_stages``, the paper's choice) unless
    `stage_epochs` gives each stage's first epoch.

    Example:
        >>> [(s.epoch, s.width) for s in cnn_schedule(9).stages]
        [(0, 0.5), (3, 0.75), (6, 1.0)]
        >>> [(s.epoch, s.width) for s in cnn_schedule(12, widths=(0.25, 0.5, 1.0),
        ...                                          stage_epochs=(0, 3, 6)).stages]
        [(0, 0.25), (3, 0.5), (6, 1.0)]
        >>> [(s.epoch, s.width, s.depth) for s in cnn_schedule(
        ...     12, widths=(0.5, 1.0, 1.0), depth_fractions=(2 / 3, 2 / 3, 1.0)).stages]
        [(0, 0.5, 0.6666666666666666), (4, 1.0, 0.6666666666666666), (8, 1.0, 1.0)]
    """
    start_width = _check_fraction("start_width", start_width)
    if start_depth is not None:
        start_depth = _check_fraction("start_depth", start_depth)
    if depth_fractions is not None and start_depth is not None:
        raise ValueError("give start_depth (linear depth growth) or depth_fractions (one per "
                         "stage), not both")
    both = widths is not None and depth_fractions is not None
    checked = {}
    for label, values in (("widths", widths), ("depth_fractions", depth_fractions)):
        if values is None:
            continue
        values = [_check_fraction(f"each of {label}", v) for v in values]
        # A dimension may pause only while the other one grows (checked below).
        if not values or values[-1] != 1.0 or any(
                b < a or (not both and b == a) for a, b in zip(values, values[1:])):
            raise ValueError(f"{label} must {'not decrease' if both else 'increase'} and "
                             f"end at the full model 1.0, got {list(values)}")
        if stage_epochs is not None and len(stage_epochs) != len(values):
            raise ValueError(f"stage_epochs has {len(stage_epochs)} entries for "
                             f"{len(values)} {label}; give one first epoch per stage")
        checked[label] = values
    widths, depth_fractions = checked.get("widths"), checked.get("depth_fractions")
    if both:
        if len(widths) != len(depth_fractions):
            raise ValueError(f"widths has {len(widths)} stages and depth_fractions "
                             f"{len(depth_fractions)}; give one of each per stage")
        still = [i for i in range(1, len(widths)) if (widths[i], depth_fractions[i]) ==
                 (widths[i - 1], depth_fractions[i - 1])]
        if still:
            raise ValueError(f"stage(s) {still} grow neither width nor depth "
                             f"(widths {widths}, depth_fractions {depth_fractions})")
    if checked:
        num_stages = len(next(iter(checked.values())))
    if widths is not None:
        start_width = widths[0]
    if stage_epochs is None:
        if total_epochs < num_stages:
            raise ValueError(f"{num_stages} stages need at least {num_stages} epochs, got "
                             f"total_epochs={total_epochs}")
        stage_epochs = [(i * total_epochs) // num_stages for i in range(num_stages)]
    stage_epochs = [int(e) for e in stage_epochs]
    n = len(stage_epochs)
    stages = []
    for i, epoch in enumerate(stage_epochs):
        t = 1.0 if n == 1 else i / (n - 1)
        sizes = {"width": widths[i] if widths is not None
                 else start_width + (1.0 - start_width) * t}
        if depth_fractions is not None:
            sizes["depth"] = depth_fractions[i]
        elif start_depth is not None:
            sizes["depth"] = start_depth + (1.0 - start_depth) * t
        stages.append(Stage(epoch, **sizes))
    return GrowthSchedule(stages, total_epochs=total_epochs)


def thirds(full_depth: int) -> tuple:
    """Depths of the authors' 3-stage schedule (4 -> 8 -> 12 for DeiT-B) for any depth.

    Example:
        >>> thirds(12), thirds(6)
        ((4, 8, 12), (2, 4, 6))
    """
    full_depth = int(full_depth)
    if full_depth < 3:
        raise ValueError(f"a 3-stage depth schedule needs at least 3 blocks, the model has "
                         f"{full_depth}")
    return tuple(max(1, round(full_depth * k / 3)) for k in (1, 2, 3))


def stage_starts(fractions, epochs: int) -> tuple:
    """First epoch of each stage from fractions of the run, at least one epoch each.

    Example:
        >>> stage_starts((0, 0.25, 0.5), 12), stage_starts((0, 0.25, 0.5), 3)
        ((0, 3, 6), (0, 1, 2))
    """
    starts = []
    for f in fractions:
        starts.append(max(int(f * epochs), starts[-1] + 1 if starts else 0))
    if starts[-1] >= epochs:
        raise ValueError(f"{len(starts)} stages need at least {len(starts)} epochs, the run "
                         f"has {epochs}")
    return tuple(starts)


def vit_schedule(total_epochs: int, depths: Sequence[int] = (6, 12),
                 full_depth: Optional[int] = None) -> GrowthSchedule:
    """ViT expansion: one equal-length stage per depth (the authors' code).

    Args:
        total_epochs: epochs of the run.
        depths: blocks per stage, increasing, the last the full depth
            (6 -> 12 is the paper's DeiT-B default; 6 -> 9 -> 12 and 4 -> 8 -> 12
            are the other schedules of the authors' code). Each step may at
            most double the depth (each of the last k blocks is copied once).
        full_depth: blocks of the full model (default: the last of `depths`).

    Example:
        >>> [(s.epoch, s.depth) for s in vit_schedule(10, (4, 8, 12)).stages]
        [(0, 0.3333333333333333), (3, 0.6666666666666666), (6, 1.0)]
    """
    depths = [int(d) for d in depths]
    full_depth = int(full_depth or depths[-1])
    if not depths or depths[0] < 1:
        raise ValueError(f"depths must be positive block counts, got {depths}")
    if depths[-1] != full_depth:
        raise ValueError(f"the last stage's depth must be the full model's {full_depth} "
                         f"blocks, got depths={depths}")
    for a, b in zip(depths, depths[1:]):
        if not a < b <= 2 * a:
            raise ValueError(f"each expansion grows depth d to at most 2*d blocks (the last k "
                             f"blocks are copied once each); {a} -> {b} in depths={depths}")
    n = len(depths)
    if total_epochs < n:
        raise ValueError(f"{n} stages need at least {n} epochs, got total_epochs={total_epochs}")
    stages = [Stage((i * total_epochs) // n, depth=d / full_depth) for i, d in enumerate(depths)]
    return GrowthSchedule(stages, total_epochs=total_epochs)


def expand_width(model, full, width: Union[float, dict], *, current_width=None,
                 fan_out: float = 0.0, seed: int = 0):
    """Widens `model` to `width` of the full model with orthogonal new filters.

    Args:
        model: the current (narrow) model.
        full: the full model, or its `kgrow.callbacks.FullSize`.
        width: the target width, a fraction of the full model (or per group).
        current_width: the width `model` is at (for groups the full model
            does not have; None: read from the sizes).
        fan_out: norm of the weights that read the new channels relative to
            the existing ones (0: zero, the function is kept exactly).
        seed: seed of the new filters.

    Returns:
        The `GrowthResult` (apply it with
        `TrainingController.of(model).replace_model(result)`), or None when
        nothing changes.
    """
    from kgrow.callbacks.growth import FullSize, grow_to
    from kgrow.growth import Orthogonal
    if not isinstance(width, dict):
        _check_fraction("width", width)
    if not isinstance(full, FullSize):
        full = FullSize.of(full, need_depth=False)
    current = None if current_width is None else Stage(0, width=current_width)
    return grow_to(model, full, Stage(0, width=width), current=current,
                   initializer=Orthogonal(fan_out=fan_out), seed=seed)


def expand_depth(model, ema, depth: Union[int, Sequence[int]], *, mode: str = "expansion",
                 reset_drop_path: Union[bool, float] = True, block_spec=None):
    """Deepens `model` to `depth` blocks with copies of blocks of its EMA.

    Growing by k blocks, ``mode="expansion"`` puts after each of the last k
    online blocks a copy of the same block of the EMA (6 -> 9:
    ``[o0, o1, o2, o3, e3, o4, e4, o5, e5]``); ``"stack"`` appends EMA copies
    of the last k blocks. Patch embedding, tokens, position embedding, final
    norm and head stay those of the online model.

    Args:
        model: the current model (a ViT, or any model with repeated blocks).
        ema: the EMA: a `kgrow.controller.EMA`, or ``{variable path: array}``.
        depth: new number of blocks (one per stage for multi-stage models).
        mode: "expansion" or "stack".
        reset_drop_path: stochastic-depth rates become
            ``linspace(0, max_rate, new_depth)``: True takes the model's
            largest rate, a float sets it, False keeps the rates.
        block_spec: explicit block spec for irregular models.

    Returns:
        The `GrowthResult`; `info["mappings"]` gives the block order.
    """
    from kgrow.surgery import expansion_mapping, find_stages, set_depth
    if mode not in ("expansion", "stack"):
        raise ValueError(f"mode must be 'expansion' or 'stack', got {mode!r}")
    if not find_stages(model, spec=block_spec):
        raise ValueError(f"model {model.name!r} has no repeated blocks, so Network Expansion "
                         "cannot grow its depth; pass block_spec=... to name its blocks, or "
                         "expand its width instead.")
    donor = ema.values() if hasattr(ema, "values") and not isinstance(ema, dict) else ema
    kind = "stack" if mode == "stack" else "interleave"
    return set_depth(model, depth, mapping=lambda old, new: expansion_mapping(old, new, mode=kind),
                     source="donor", donor=dict(donor), spec=block_spec,
                     reset_drop_path=reset_drop_path)

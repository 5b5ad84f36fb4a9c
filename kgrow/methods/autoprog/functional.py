"""AutoProg's manual baseline "Prog", functional form: schedule, operators, regularization ramp.

Everything here is plain data or a small function over the engine:

* `prog_schedule` is the uniform linear schedule of the paper (equal stages,
  ``linspace(scale, 1, num_stages)`` of the resolution and of the depth), as
  a `kgrow.schedules.GrowthSchedule` that `kgrow.callbacks.Growth` (or
  `Prog`) runs and that `GrowthSchedule.to_json()` writes for a replay;
* `growth_operator(name)` gives the `Growth` settings of the four depth
  growth operators of the paper's ablation (RandInit, Stacking,
  Interpolation, MoGrow);
* `mogrow_ema_decay` turns the authors' momentum into a per-step decay for
  any run length, through the half-life (as Network Expansion does);
* `regularization_scales` is the adaptive-regularization ramp (multipliers
  of the full RandAugment magnitude, stochastic-depth rate and
  random-erasing probability at a stage);
* `check_vit_like(model)` says, before training, why a model's number of
  patches cannot change.

Example:
    >>> s = prog_schedule(100, full_resolution=224, patch_size=16, full_depth=18)
    >>> [round(st.resolution * 224) for st in s.stages], [round(st.depth * 18) for st in s.stages]
    ([112, 160, 192, 224], [9, 12, 15, 18])
    >>> [st.epoch for st in s.stages]
    [0, 25, 50, 75]
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from kgrow.schedules import GrowthSchedule, Stage

__all__ = ["OPERATORS", "MOGROW_EMA_HALF_LIFE_FRACTION", "prog_schedule", "growth_operator",
           "mogrow_ema_decay", "regularization_scales", "REGULARIZATION_START",
           "check_vit_like", "vit_sizes"]

#: Growth settings of each depth-growth operator (`Growth` keyword arguments).
#: New blocks: RandInit -- fresh initial values, placed on top of the old
#: ones (where Stacking puts its copies, so the two differ only in the
#: values); Stacking -- copies of the last blocks stacked on top;
#: Interpolation -- new block i copies old block floor(i * L_old / L_new);
#: MoGrow -- Interpolation whose weights come from the momentum (EMA) network.
OPERATORS = {
    "randinit": {"depth_mapping": "stack", "depth_source": "random"},
    "stacking": {"depth_mapping": "stack", "depth_source": "neighbour"},
    "interpolation": {"depth_mapping": "interpolation", "depth_source": "neighbour"},
    "mogrow": {"depth_mapping": "interpolation", "depth_source": "ema"},
}

# The authors' code grows from an EMA of decay 0.9996 per step; their runs
# are 100 ImageNet epochs at batch 1024 (1,251 steps per epoch): a half-life
# of 1,733 steps = 1.39 epochs = 1.4% of the run. Kept as a fraction of the
# run so that it fits any run length (the paper's 0.998 family is the same
# idea at other batch sizes).
_CODE_DECAY, _CODE_STEPS_PER_EPOCH, _CODE_EPOCHS = 0.9996, 1251, 100
MOGROW_EMA_HALF_LIFE_FRACTION = (math.log(0.5) / math.log(_CODE_DECAY)
                                 / _CODE_STEPS_PER_EPOCH / _CODE_EPOCHS)

#: Adaptive regularization: the multiplier of each full strength at the first
#: stage (the paper: RandAugment magnitude from half, stochastic depth and
#: random erasing from zero); it rises linearly to 1 at the last stage.
REGULARIZATION_START = {"randaugment": 0.5, "drop_path": 0.0, "erasing": 0.0}


def _check_scale(label: str, value) -> float:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not 0.0 < value <= 1.0):
        raise ValueError(f"{label} must be a fraction of the full size in (0, 1], got "
                         f"{value!r}")
    return float(value)


def _positive_int(label: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r}")
    return int(value)


def _pair(label, value) -> tuple:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{label} must be an int or (height, width), got {value!r}")
    return tuple(_positive_int(label, v) for v in pair)


def prog_schedule(total_epochs: int, num_stages: int = 4, resolution_scale: Optional[float] = 0.5,
                  depth_scale: Optional[float] = 0.5, *, full_resolution=None, patch_size=None,
                  full_depth: Optional[int] = None) -> GrowthSchedule:
    """The uniform linear "Prog" schedule: equal stages, both sizes linear in the stage.

    Stage i starts at epoch ``i * total_epochs // num_stages`` and has
    resolution ``linspace(resolution_scale, 1, num_stages)[i] * full``
    rounded *up* to a multiple of the patch size (so the patch grid never
    falls below the linear value; 224 with patch 16 gives 112, 160, 192,
    224), and depth ``linspace(depth_scale, 1, num_stages)[i] * full_depth``
    rounded to the nearest block (18 gives 9, 12, 15, 18). Sizes are stored
    as fractions of the full model, as in every kgrow schedule, chosen so
    that `kgrow.callbacks.FullSize` gives back exactly these sizes.

    Args:
        total_epochs: epochs of the run.
        num_stages: stages (the paper: 4), at most one per epoch.
        resolution_scale: first stage's resolution as a fraction of the full
            one (None: the resolution does not grow).
        depth_scale: first stage's depth as a fraction (None: fixed depth).
        full_resolution: full input size, an int or (height, width).
        patch_size: the ViT's patch size (int or pair); the full resolution
            must be a multiple of it.
        full_depth: number of blocks of the full model.

    Raises:
        ValueError: fewer epochs than stages, no stage, a scale outside
            (0, 1], a resolution that is not a multiple of the patch size,
            a missing full size, or no dimension to grow.

    Example:
        >>> s = prog_schedule(6, 4, full_resolution=28, patch_size=4, full_depth=6)
        >>> [(st.epoch, round(st.resolution * 28), round(st.depth * 6)) for st in s.stages]
        [(0, 16, 3), (1, 20, 4), (3, 24, 5), (4, 28, 6)]
    """
    total_epochs = _positive_int("total_epochs", total_epochs)
    num_stages = _positive_int("num_stages", num_stages)
    if num_stages > total_epochs:
        raise ValueError(f"{num_stages} stages need at least {num_stages} epochs (one per "
                         f"stage), got total_epochs={total_epochs}; use fewer stages.")
    if resolution_scale is None and depth_scale is None:
        raise ValueError("prog_schedule grows the resolution, the depth or both: give "
                         "resolution_scale and/or depth_scale.")
    t = np.linspace(0.0, 1.0, num_stages) if num_stages > 1 else np.ones(1)
    sizes = [dict() for _ in range(num_stages)]
    if resolution_scale is not None:
        scale = _check_scale("resolution_scale", resolution_scale)
        if full_resolution is None or patch_size is None:
            raise ValueError("a resolution schedule needs full_resolution= and patch_size= "
                             "(the patch grid the sizes are rounded to).")
        full, patch = _pair("full_resolution", full_resolution), _pair("patch_size", patch_size)
        for axis, f, p in zip(("height", "width"), full, patch):
            if f % p:
                raise ValueError(f"the full resolution's {axis} {f} is not a multiple of the "
                                 f"patch size {p}; the patch grid must be whole at every "
                                 f"stage (use a size k * {p}).")
        # The two axes share one fraction (a square grid stays square).
        fractions = []
        for ti in t:
            linear = scale + (1.0 - scale) * ti
            px = max(patch[0], int(math.ceil(full[0] * linear / patch[0] - 1e-9)) * patch[0])
            fractions.append(px / full[0])
        for s, f in zip(sizes, fractions):
            s["resolution"] = f
    if depth_scale is not None:
        scale = _check_scale("depth_scale", depth_scale)
        if full_depth is None:
            raise ValueError("a depth schedule needs full_depth= (blocks of the full model).")
        full_depth = _positive_int("full_depth", full_depth)
        for s, ti in zip(sizes, t):
            blocks = max(1, int(math.floor(full_depth * (scale + (1.0 - scale) * ti) + 0.5)))
            s["depth"] = blocks / full_depth
    stages = [Stage((i * total_epochs) // num_stages, **s) for i, s in enumerate(sizes)]
    return GrowthSchedule(stages, total_epochs=total_epochs)


def growth_operator(name: str) -> dict:
    """`Growth` settings (depth mapping and source) of an operator of the ablation.

    Example:
        >>> growth_operator("mogrow")
        {'depth_mapping': 'interpolation', 'depth_source': 'ema'}
    """
    if name not in OPERATORS:
        raise ValueError(f"operator must be one of {sorted(OPERATORS)}, got {name!r}")
    return dict(OPERATORS[name])


def mogrow_ema_decay(total_epochs: float, steps_per_epoch: int,
                     half_life_fraction: float = MOGROW_EMA_HALF_LIFE_FRACTION) -> float:
    """Per-step decay of MoGrow's momentum network for a run of `total_epochs`.

    The half-life is `half_life_fraction` of the run (default: the authors'
    decay 0.9996 on their 100-epoch ImageNet runs, 1.4% of the run).

    Example:
        >>> round(mogrow_ema_decay(100, 1251), 6)
        0.9996
    """
    from kgrow.methods.network_expansion import ema_decay
    if not isinstance(half_life_fraction, (int, float)) or not 0 < half_life_fraction <= 1:
        raise ValueError(f"half_life_fraction must be in (0, 1], got {half_life_fraction!r}")
    return ema_decay(half_life_fraction * float(total_epochs), steps_per_epoch)


def regularization_scales(stage: int, num_stages: int, start: Optional[dict] = None) -> dict:
    """Multipliers of the full regularization strengths at `stage` (adaptive regularization).

    Each rises linearly from its `start` value (default `REGULARIZATION_START`)
    at stage 0 to 1 at the last stage.

    Example:
        >>> regularization_scales(1, 3)
        {'randaugment': 0.75, 'drop_path': 0.5, 'erasing': 0.5}
    """
    num_stages = _positive_int("num_stages", num_stages)
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) \
            or not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages}), got {stage!r}")
    start = check_regularization_start(start)
    t = 1.0 if num_stages == 1 else stage / (num_stages - 1)
    return {k: float(v + (1.0 - v) * t) for k, v in start.items()}


def check_regularization_start(start: Optional[dict]) -> dict:
    """`REGULARIZATION_START` updated with `start`, validated."""
    out = dict(REGULARIZATION_START)
    for key, value in (start or {}).items():
        if key not in out:
            raise ValueError(f"adaptive regularization ramps {sorted(out)}, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise ValueError(f"the starting multiplier of {key} must be in [0, 1], got "
                             f"{value!r}")
        out[key] = float(value)
    return out


def vit_sizes(model) -> dict:
    """``{"resolution": (h, w), "patch_size": (ph, pw), "depth": blocks}`` of a ViT-like model.

    Raises:
        ValueError: see `check_vit_like`.
    """
    from kgrow.models import PositionEmbedding
    from kgrow.surgery import find_stages
    shape = tuple(model.inputs[0].shape[1:]) if len(getattr(model, "inputs", []) or []) == 1 \
        else ()
    pos = [layer for layer in model.layers if isinstance(layer, PositionEmbedding)]
    if not pos:
        raise ValueError(
            f"model {model.name!r} has no kgrow PositionEmbedding layer, so its number of "
            "patches cannot change (its position embedding cannot be interpolated). Prog "
            "and AutoProg need a ViT-like Functional model with kgrow.models.PositionEmbedding "
            "(kgrow.models.get('vit', ...)); for a convolutional model use "
            "kgrow.callbacks.Growth with resolution stages.")
    if len(shape) != 3 or shape[0] is None or shape[1] is None:
        raise ValueError(f"model {model.name!r} needs one image input of known size "
                         f"(height, width, channels), got {shape}.")
    grid = pos[0].grid
    patch = (shape[0] // grid[0], shape[1] // grid[1])
    stages = find_stages(model)
    if len(stages) != 1:
        raise ValueError(f"Prog grows the depth of one stack of blocks, but model "
                         f"{model.name!r} has {len(stages)} stages of repeated blocks.")
    return {"resolution": shape[:2], "patch_size": patch, "depth": int(stages[0].depth)}


def check_vit_like(model) -> None:
    """Raises a ValueError saying why `model` cannot be trained with Prog, if it cannot.

    Example:
        >>> import keras
        >>> inp = keras.Input((8, 8, 1))
        >>> m = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)), name="cnn")
        >>> try:
        ...     check_vit_like(m)
        ... except ValueError as err:
        ...     print(str(err)[:52])
        model 'cnn' has no kgrow PositionEmbedding layer, so
    """
    vit_sizes(model)

"""AutoProg (Li et al., CVPR 2022): progressive learning of vision transformers.

A ViT trains first with fewer patches (lower-resolution images, the position
embedding interpolated to the smaller patch grid) and fewer blocks, and grows
in both at stage boundaries. The manual schedule "Prog" grows both linearly
over equal stages; new blocks come from one of four growth operators
(RandInit, Stacking, Interpolation, MoGrow -- Interpolation loaded from a
momentum network); adaptive regularization optionally ramps the augmentation
and stochastic-depth strengths with the stage. AutoProg's search (an elastic
supernet choosing each stage's sizes during the run) writes its schedule as
`GrowthSchedule.to_json()`, which `Prog(schedule=...)` replays.

Functional form: `prog_schedule`, `growth_operator`, `OPERATORS`,
`mogrow_ema_decay`, `regularization_scales`, `check_vit_like`; the search:
`build_supernet`, `set_subnetwork`, `extract_subnetwork` (weight recycling),
`stage_candidates`, `fit_exponent`, `scores`, `choose`. Callback form: `Prog`
and `AutoProg` (also in `kgrow.callbacks`). Bench methods: `prog`,
`prog_randinit`, `prog_stacking`, `prog_interpolation`, `prog_mogrow`,
`autoprog`.

Example:
    >>> from kgrow.methods.autoprog import prog_schedule
    >>> s = prog_schedule(8, full_resolution=28, patch_size=4, full_depth=6)
    >>> [st.epoch for st in s.stages], [round(st.depth * 6) for st in s.stages]
    ([0, 2, 4, 6], [3, 4, 5, 6])
"""
from kgrow.methods.autoprog.functional import (MOGROW_EMA_HALF_LIFE_FRACTION, OPERATORS,
                                               REGULARIZATION_START, check_vit_like,
                                               growth_operator, mogrow_ema_decay,
                                               prog_schedule, regularization_scales)
from kgrow.methods.autoprog.callback import Prog
from kgrow.methods.autoprog.search import (candidate_values, choose, fit_exponent, scores,
                                           stage_candidates)
from kgrow.methods.autoprog.supernet import (build_supernet, extract_subnetwork,
                                             set_subnetwork)
from kgrow.methods.autoprog.search_callback import AutoProg

__all__ = ["Prog", "AutoProg", "build_supernet", "set_subnetwork", "extract_subnetwork",
           "candidate_values", "stage_candidates", "fit_exponent", "scores", "choose",
           "prog_schedule", "growth_operator", "OPERATORS", "mogrow_ema_decay",
           "regularization_scales", "check_vit_like", "REGULARIZATION_START",
           "MOGROW_EMA_HALF_LIFE_FRACTION"]

"""Network Expansion (Ding et al., CVPR 2023) as a kgrow method.

CNNs start as a sub-network with a fraction of the filters of every channel
group (optionally fewer blocks per stage) and expand at stage boundaries to
the full model; new filters are orthogonal to the kept ones and to each other
(`kgrow.growth.Orthogonal`). ViTs start shallow and grow by inserting copies
of blocks of an EMA of the model after the last online blocks.

Functional form: `expand_width`, `expand_depth`, `ema_decay`,
`depth_weight_decay`, `cnn_schedule`, `vit_schedule`. Callback form:
`NetworkExpansion` (also in `kgrow.callbacks`). Bench methods:
`network_expansion` (CNN) and `network_expansion_vit`.

Example:
    >>> from kgrow.methods.network_expansion import vit_schedule
    >>> [s.depth for s in vit_schedule(12, depths=(6, 9, 12), full_depth=12).stages]
    [0.5, 0.75, 1.0]
"""
from kgrow.methods.network_expansion.functional import (PAPER_EMA_HALF_LIFE_FRACTION,
                                                        cnn_schedule, depth_weight_decay,
                                                        ema_decay, expand_depth, expand_width,
                                                        stage_starts, thirds, vit_schedule)
from kgrow.methods.network_expansion.callback import NetworkExpansion

__all__ = ["NetworkExpansion", "expand_width", "expand_depth", "ema_decay",
           "depth_weight_decay", "cnn_schedule", "vit_schedule", "stage_starts", "thirds",
           "PAPER_EMA_HALF_LIFE_FRACTION"]

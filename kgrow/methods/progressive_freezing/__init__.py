"""Progressive layer freezing (SpFDE, Yuan et al., NeurIPS 2022) as a kgrow method.

The model is split into blocks (ResNet blocks by default, the stem joining the
first); from epoch T_frz one more leading block freezes every dT epochs,
front to back and single-shot, until a target saving of the run's training
FLOPs is met. Frozen blocks run forward only (no backward through the frozen
prefix, BatchNorm statistics fixed); each block that will freeze gets its own
cosine learning rate over its active epochs.

Functional form: `find_freeze_blocks`, `prefix_flops`, `freeze_schedule`,
`schedule_saving`, `freeze_plan` (-> `FreezePlan`), `freeze_blocks`,
`block_lr_multiplier`, `block_lr_rules`. Callback form: `ProgressiveFreezing`
(also in `kgrow.callbacks`). Bench methods: `freeze` (25% training-FLOPs
saving), `freeze_15` (15%) and `freeze_5` (5%, for composing after growth).

Example:
    >>> from kgrow import models
    >>> from kgrow.methods.progressive_freezing import freeze_plan
    >>> model = models.get("resnet20", (8, 8, 3), 10, width=0.25)
    >>> plan = freeze_plan(model, 0.25, epochs=40, interval=2)
    >>> plan.saving >= 0.25
    True
"""
from kgrow.methods.progressive_freezing.functional import (GLOBAL_LR_SHAPES,
                                                           PAPER_FREEZE_FRACTION, FreezePlan,
                                                           block_lr_multiplier, block_lr_rules,
                                                           block_pattern, find_freeze_blocks,
                                                           freeze_blocks, freeze_plan,
                                                           freeze_schedule, prefix_flops,
                                                           schedule_saving)
from kgrow.methods.progressive_freezing.callback import ProgressiveFreezing, default_interval

__all__ = ["ProgressiveFreezing", "FreezePlan", "find_freeze_blocks", "prefix_flops",
           "freeze_schedule", "schedule_saving", "freeze_plan", "freeze_blocks",
           "block_lr_multiplier", "block_lr_rules", "block_pattern", "default_interval",
           "PAPER_FREEZE_FRACTION", "GLOBAL_LR_SHAPES"]

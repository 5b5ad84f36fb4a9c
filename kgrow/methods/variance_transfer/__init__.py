"""Variance-transfer growth (Yuan, Savarese, Maire, NeurIPS 2023).

Functional forms in `functional.py`, the callback `VarianceTransferGrowth`
in `callback.py`, bench methods in `bench.py`; method card:
docs/methods/variance_transfer.md.
"""
from kgrow.methods.variance_transfer.functional import (BATCH_LR_RULES, OPTIMIZER_RULES,
                                                        PairedVarianceTransfer, apply_lr_scales,
                                                        batch_lr_factor, carry_partitions,
                                                        check_batch_kernels,
                                                        check_batch_schedule, fan_in_initialize,
                                                        fan_in_lr_factors, initial_partitions,
                                                        kernel_layer_roles, layer_fans,
                                                        partition_lr_scales)

__all__ = ["PairedVarianceTransfer", "fan_in_initialize", "fan_in_lr_factors", "layer_fans",
           "kernel_layer_roles", "initial_partitions", "carry_partitions", "partition_lr_scales",
           "apply_lr_scales", "check_batch_kernels", "check_batch_schedule", "batch_lr_factor",
           "OPTIMIZER_RULES", "BATCH_LR_RULES"]
from kgrow.methods.variance_transfer.callback import VarianceTransferGrowth  # noqa: E402

__all__ += ["VarianceTransferGrowth"]

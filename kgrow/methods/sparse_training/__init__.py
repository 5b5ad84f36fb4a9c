"""Dynamic sparse training (MEST, Yuan et al., NeurIPS 2021), the sparse part of
SpFDE (Yuan et al., NeurIPS 2022), and magnitude pruning for Keras 3 models.

Unstructured per-entry masks on Conv/Dense kernels, kept by the engine's
`kgrow.controller.Masks` component (masked gradients, re-masked weights after
every update); prune-and-grow structure updates every dT epochs at epoch
begin; constant and polynomial pruning schedules; `strip_sparsity` for a plain
model at the end.

Functional form: `maskable_variables`, `layer_densities`, `random_masks`,
`prune_and_grow`, `mest_schedule`, `constant_sparsity`, `polynomial_sparsity`,
`strip_sparsity`, `sparsity_report`. Callback: `SparseTraining` (also in
`kgrow.callbacks`). Bench methods: `sparse_mest`, `sparse_mest_ems`.

Example:
    >>> from kgrow.methods.sparse_training import mest_schedule
    >>> mest_schedule(32, 0.9).updates[0]
    MaskUpdate(epoch=1, prune_to=0.9, grow_to=0.85)
"""
from kgrow.methods.sparse_training.functional import (PAPER_EM_MUTATION, PAPER_EMS_BOUNDS,
                                                      PAPER_SEARCH_END, PAPER_UPDATE_EVERY,
                                                      MaskUpdate, PruneGrowResult,
                                                      SparsityReport, SparsitySchedule,
                                                      constant_sparsity, layer_densities,
                                                      maskable_variables, mest_schedule,
                                                      polynomial_sparsity, prune_and_grow,
                                                      random_masks, sparsity_report,
                                                      strip_sparsity)
from kgrow.methods.sparse_training.callback import SparseTraining

__all__ = ["SparseTraining", "maskable_variables", "layer_densities", "random_masks",
           "prune_and_grow", "PruneGrowResult", "MaskUpdate", "SparsitySchedule",
           "mest_schedule", "constant_sparsity", "polynomial_sparsity", "strip_sparsity",
           "sparsity_report", "SparsityReport", "PAPER_UPDATE_EVERY", "PAPER_SEARCH_END",
           "PAPER_EMS_BOUNDS", "PAPER_EM_MUTATION"]

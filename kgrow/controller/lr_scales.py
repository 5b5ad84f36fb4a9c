"""Per-entry learning-rate scales: element-wise multipliers on the update.

`LRScales` is a controller component (`kgrow.controller.component`):
`LRScales.of(controller).set({path: array})` gives every entry of a variable
its own learning-rate factor. The step rescales the update like the
per-group multipliers do (`kgrow.controller.multipliers`),
`w = w_old + s * (w_new - w_old)` with `s` an array of the variable's shape,
which for SGD (with momentum), Adam and AdamW equals training each entry
with learning rate `s * lr` (the update of these optimizers is linear in the
learning rate for a given state, per entry). Where a variable also has an
LR-group multiplier, the two multiply.

The scales are variables read by the compiled step: new values need no
retrace (recompute them at every growth step, as variance transfer's
per-subnetwork `lr_t` does); a new set of variables retraces once, together
with the growth step's own retrace. Cost per step: one multiply-add per
scaled variable, all traced (no Python per variable per step).

Growth: scales move through the plan with their weights; new entries get
`new_entry` (default 1.0); variables whose source had no scales get none.
`replace_model(result, reset=("lr_scales",))` drops them.

Example:
    >>> import keras
    >>> from kgrow.controller import TrainingController
    >>> inp = keras.Input((2,)); model = keras.Model(inp, keras.layers.Dense(3, name="d")(inp))
    >>> scales = LRScales.of(TrainingController.of(model))
    >>> scales.set({"d/kernel": [[1.0, 0.5, 0.25]]})   # broadcast over the rows
    >>> scales.get()["d/kernel"].shape
    (2, 3)
"""
from __future__ import annotations

import numpy as np

from kgrow.controller.component import register_kind
from kgrow.controller.per_entry import PerEntryArrays

__all__ = ["LRScales"]


@register_kind
class LRScales(PerEntryArrays):
    """Component: `{variable path: array of LR factors >= 0}` (see the module docstring).

    Args:
        new_entry: factor of entries a growth plan marks new (default 1.0).
    """

    kind = "lr_scales"
    order = 60
    neutral = 1.0

    def _check(self, path, array):
        if np.any(array < 0):
            raise ValueError(f"LR scales of {path!r} must be >= 0.")
        return array

    def update_scales(self, variables) -> list:
        scales = self._arrays
        return [(v, scales[v.path]) for v in variables if v.path in scales]

"""Sparse masks: binary per-entry masks on model variables, kept through
training, growth steps, checkpoints and architectures taken back.

`Masks` is a controller component (`kgrow.controller.component`), added
without any change to the controller: `Masks.of(controller)` attaches it.
While at least one variable is masked, the step

1. multiplies the gradient of each masked variable by its mask (a gradient
   transform at `ORDER_MASKS`), so optimizer slots (momentum, Adam moments)
   of masked entries only decay;
2. after the optimizer update, sets the variable to `variable * mask`
   (a post-update hook at `ORDER_MASKS`, before the EMAs), which also undoes
   weight decay and momentum carried from before the mask was set.

So masked entries stay exactly 0.0 through training. Cost per step: one
multiply per masked variable for the gradient and one for the weight;
nothing at all (no hook, no `merge_call`) while no variable is masked.
`set` zeroes the masked entries at once.

Growth: each mask moves through the plan with its weight; entries the plan
marks new get `new_entry` (default 1: new units are dense; 0: new units
start pruned), and variables whose source had no mask stay dense (a new
block without a donor). The new model's masked entries are zeroed, so an
initializer that adds noise does not break the sparsity.
`replace_model(result, reset=("masks",))` makes the grown model dense.

Example:
    >>> import keras, numpy as np
    >>> from kgrow.controller import TrainingController
    >>> inp = keras.Input((2,)); model = keras.Model(inp, keras.layers.Dense(2, name="d")(inp))
    >>> masks = Masks.of(TrainingController.of(model))
    >>> masks.set({"d/kernel": [[1, 0], [0, 1]]})
    >>> float(model.get_layer("d").kernel.numpy()[0, 1])
    0.0
    >>> round(masks.density()["d/kernel"], 2)
    0.5
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from kgrow.controller.component import register_kind
from kgrow.controller.per_entry import PerEntryArrays
from kgrow.controller.step import ORDER_MASKS

__all__ = ["Masks"]

_GRAD_HOOK = "masks:gradients"
_UPDATE_HOOK = "masks:weights"


def _masked(value, mask):
    # where, not a product: masked entries become +0.0, never -0.0.
    return tf.where(tf.cast(mask, tf.bool), value, tf.zeros_like(value))


def _remask(variable, mask):
    return variable.assign(_masked(variable, mask))


@register_kind
class Masks(PerEntryArrays):
    """Component: `{variable path: 0/1 mask}` (see the module docstring).

    Args:
        new_entry: mask value (0 or 1) of entries a growth plan marks new.
    """

    kind = "masks"
    order = 50
    neutral = 1.0

    def __init__(self, new_entry: float = 1.0):
        if new_entry not in (0, 1):
            raise ValueError(f"Masks(new_entry=) must be 0 or 1, got {new_entry!r}")
        super().__init__(new_entry)

    def _check(self, path, array):
        if not np.all((array == 0) | (array == 1)):
            raise ValueError(f"Mask of {path!r} must hold only 0 and 1 (or booleans).")
        return array

    def _changed(self) -> None:
        weights = {v.path: v for v in self.host.model.weights}
        for p, mask in self._arrays.items():
            weights[p].assign(_masked(weights[p], mask))
        hooks = self.host.hooks
        active = bool(self._arrays)
        if active and _GRAD_HOOK not in hooks:
            hooks.add_gradient_transform(self._mask_gradients, name=_GRAD_HOOK,
                                         order=ORDER_MASKS)
            hooks.add_post_update(self._mask_weights, name=_UPDATE_HOOK, order=ORDER_MASKS)
            self.host.request_retrace()
        elif not active and _GRAD_HOOK in hooks:
            self._remove_hooks()

    def _remove_hooks(self) -> None:
        hooks = self.host.hooks
        for name in (_GRAD_HOOK, _UPDATE_HOOK):
            if name in hooks:
                hooks.remove(name)
        self.host.request_retrace()

    def detach(self) -> None:
        self._remove_hooks()
        super().detach()

    def _mask_gradients(self, grads, variables):
        masks = self._arrays
        out = []
        for g, v in zip(grads, variables):
            if g is not None and v.path in masks:
                g = tf.convert_to_tensor(g) * tf.cast(masks[v.path], g.dtype)
            out.append(g)
        return out

    def _mask_weights(self, ctx) -> None:
        masks = self._arrays
        for v in ctx.variables:
            if v.path in masks:
                ctx.update(v, _remask, masks[v.path])

    def density(self) -> dict:
        """`{path: fraction of entries kept}` of the masked variables."""
        return {p: float(np.mean(a)) for p, a in self.get().items()}

    def get(self) -> dict:
        """`{path: bool mask}` of the masked variables."""
        return {p: a.astype(bool) for p, a in super().get().items()}

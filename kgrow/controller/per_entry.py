"""Arrays of a variable's shape that follow the variable: the shared part of
the masks (`kgrow.controller.masks`) and per-entry LR scales
(`kgrow.controller.lr_scales`) components.

`PerEntryArrays` keeps one non-trainable `tf.Variable` per chosen model
variable (by path), created in the model's strategy scope (mirrored under
`MirroredStrategy`) and read by the compiled step, so new values need no
retrace; a new set of paths or shapes does. Through a growth step each array
is moved by the plan like the weight it belongs to (`VariableTransfer.gather`);
entries the plan marks new get `new_entry`, a parameter of the component,
and so do all entries of a resampled variable (`kgrow.surgery.Resample`).
Variables whose source had no array get none (the component's neutral
value). The arrays are kept with `get_weights()` lists (`snapshot`), so
`EarlyStopping(restore_best_weights=True)` brings back the arrays of the
best epoch, and are saved in checkpoints.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import tensorflow as tf

from kgrow.controller._variables import weights_by_path
from kgrow.controller.component import Component

__all__ = ["PerEntryArrays"]


class PerEntryArrays(Component):
    """Base component: `{variable path: array of the variable's shape}`.

    Subclasses set `kind`, `order`, `neutral` (the value meaning "no
    effect") and may override `_check(path, array)` and `_changed()`.

    Args:
        new_entry: value of the entries a growth plan marks new (default:
            `neutral`).
    """

    neutral = 1.0

    def __init__(self, new_entry: Optional[float] = None):
        self.new_entry = float(self.neutral if new_entry is None else new_entry)
        self._arrays: dict[str, tf.Variable] = {}

    @classmethod
    def of(cls, controller, **kwargs):
        """The controller's component of this kind, added on first use."""
        existing = controller.component(cls.kind, default=None)
        if existing is None:
            existing = controller.add_component(cls(**kwargs))
        return existing

    # -- values ---------------------------------------------------------------
    def _check(self, path: str, array: np.ndarray) -> np.ndarray:
        return array

    def _changed(self) -> None:
        """Called after the arrays changed (values, paths or both)."""

    def set(self, arrays: Mapping[str, object]) -> None:
        """Replaces every array: `{variable path: array}`, others become neutral.

        Each value is broadcast to its variable's shape (a scalar is
        allowed). Paths are those of `model.weights` (`layer/var`).
        """
        if not isinstance(arrays, Mapping):
            raise TypeError(f"{type(self).__name__}.set() takes a mapping {{variable path: "
                            f"array}}, got {type(arrays).__name__}")
        weights = weights_by_path(self.host.model)
        unknown = sorted(set(arrays) - set(weights))
        if unknown:
            raise KeyError(f"{type(self).__name__}: no model variable {unknown[:5]}; paths "
                           f"look like {list(weights)[:6]}")
        values = {}
        for path, value in arrays.items():
            var = weights[path]
            try:
                array = np.broadcast_to(np.asarray(value, dtype=np.float64), tuple(var.shape))
            except ValueError:
                raise ValueError(f"{type(self).__name__}: {path!r} got shape "
                                 f"{np.shape(value)}, the variable has {tuple(var.shape)}"
                                 ) from None
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{type(self).__name__}: {path!r} has non-finite entries.")
            values[path] = self._check(path, array).astype(np.dtype(var.dtype))
        same = list(values) == list(self._arrays) and all(
            tuple(self._arrays[p].shape) == values[p].shape for p in values)
        if same:
            for p, array in values.items():
                self._arrays[p].assign(array)
        else:
            with self.host.scope():
                self._arrays = {p: tf.Variable(a, trainable=False,
                                               name=f"kgrow_{self.kind}_{i}")
                                for i, (p, a) in enumerate(values.items())}
            self.host.request_retrace()
        self._changed()

    def get(self) -> dict:
        """`{variable path: np.ndarray}` of the non-neutral variables."""
        return {p: np.array(v.numpy()) for p, v in self._arrays.items()}

    @property
    def paths(self) -> list[str]:
        return list(self._arrays)

    def variables(self) -> dict:
        """`{path: tf.Variable}` read by the step (mirrored under a strategy)."""
        return dict(self._arrays)

    # -- the component protocol ------------------------------------------------
    def carry(self, plan, reset: bool) -> None:
        if reset:
            self.set({})
            return
        old = self.get()
        if not old:
            return
        new = {}
        for p, v in weights_by_path(self.host.model).items():
            t = plan[p] if p in plan else None
            if t is None or t.source not in old:
                continue
            if t.resample is not None:  # interpolated 0/1 masks would not be masks
                new[p] = np.full(tuple(v.shape), self.new_entry)
            else:
                new[p] = t.gather(old[t.source], tuple(v.shape), fill=self.new_entry)
        self.set(new)

    def snapshot(self):
        return self.get()

    def rebuild(self, snapshot) -> None:
        if snapshot is None:
            # No record for the weights taken back: keep what still fits.
            weights = weights_by_path(self.host.model)
            snapshot = {p: a for p, a in self.get().items()
                        if p in weights and tuple(weights[p].shape) == a.shape}
        self.set(snapshot)

    def get_state(self):
        return {"new_entry": self.new_entry, "arrays": self.get()}

    def set_state(self, state, custom_objects=None) -> None:
        self.new_entry = float(state["new_entry"])
        self.set(state["arrays"])

    def __repr__(self):
        return (f"{type(self).__name__}(variables={len(self._arrays)}, "
                f"new_entry={self.new_entry})")

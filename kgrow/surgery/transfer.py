"""Transfer plans: where each entry of a new model's variables comes from.

A growth step produces a new model and a `TransferPlan`. The plan says, for
every variable of the new model (keyed by its path, `layer_name/var_name`),
which variable of the old model it comes from and, along each axis, which old
position each new position copies (`-1`: a new entry). The same plan moves
weights, optimizer slots (momentum, Adam moments) and EMA shadows, so the
three always stay in step; what *values* new entries get is the business of a
growth initializer (`kgrow.growth`), not of the plan.

Plans are plain data (paths and integer arrays): they serialize into
checkpoints and compose (`plan_b.compose(plan_a)` maps old -> mid -> new).

A variable can also be *resampled* rather than copied (`Resample`: a ViT's
position embedding interpolated to another patch grid when the input
resolution changes). Its values (weights, EMA shadows) are the interpolated
old values; state that interpolation would corrupt (optimizer slots: a
bicubic resample of second moments can turn negative; binary masks) treats
every entry of a resampled variable as new.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np

__all__ = ["VariableTransfer", "TransferPlan", "Resample", "NEW"]

NEW = -1  # index value marking an entry that has no source


def _as_index(ix) -> Optional[np.ndarray]:
    if ix is None:
        return None
    arr = np.asarray(ix, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"a per-axis index must be 1-D, got shape {arr.shape}")
    if arr.size and arr.min() < NEW:
        raise ValueError(f"index values must be >= -1 (-1 marks a new entry), got {arr.min()}")
    return arr


def _grid(value) -> tuple:
    grid = tuple(int(v) for v in value)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"a patch grid is (rows, columns) of positive ints, got {value!r}")
    return grid


@dataclasses.dataclass(frozen=True)
class Resample:
    """A variable's token axis (its second-to-last) resampled to another grid.

    The layout of `kgrow.models.PositionEmbedding`: leading rows (class
    token) kept, then `rows * columns` patch rows resized as an image
    (`kgrow.models.interpolate_position_embedding`).

    Attributes:
        old_grid, new_grid: `(rows, columns)` of patches before and after.
        method: interpolation (`kgrow.models.INTERPOLATION_METHODS`).
    """
    old_grid: tuple
    new_grid: tuple
    method: str = "bicubic"

    def __post_init__(self):
        object.__setattr__(self, "old_grid", _grid(self.old_grid))
        object.__setattr__(self, "new_grid", _grid(self.new_grid))

    def apply(self, old: np.ndarray) -> np.ndarray:
        from kgrow.models.layers import interpolate_position_embedding
        return interpolate_position_embedding(old, self.old_grid, self.new_grid,
                                              method=self.method)

    def to_dict(self) -> dict:
        return {"old_grid": list(self.old_grid), "new_grid": list(self.new_grid),
                "method": self.method}


@dataclasses.dataclass(frozen=True)
class VariableTransfer:
    """Source of one new variable.

    Attributes:
        source: path of the old variable, or None if the variable is new
            (e.g. a freshly inserted block without a donor).
        index: one entry per axis of the new variable: None keeps the old
            axis as is; an int array of the new axis length gives, for each
            new position, the old position it copies or -1 for a new entry.
        resample: a `Resample` of the token axis, applied before `index`
            (which must then leave that axis as is), or None.
    """
    source: Optional[str]
    index: tuple = ()
    resample: Optional[Resample] = None

    def __post_init__(self):
        object.__setattr__(self, "index", tuple(_as_index(i) for i in self.index))
        if isinstance(self.resample, Mapping):
            object.__setattr__(self, "resample", Resample(**self.resample))
        if self.resample is not None:
            if self.source is None:
                raise ValueError("a resampled variable needs a source")
            if len(self.index) >= 2 and self.index[-2] is not None:
                raise ValueError("a resampled variable's token axis cannot also be indexed")

    @property
    def is_identity(self) -> bool:
        return self.source is not None and self.resample is None and all(
            i is None or (np.array_equal(i, np.arange(len(i)))) for i in self.index)

    def new_mask(self, shape) -> np.ndarray:
        """Boolean array of `shape`: True where the entry has no source."""
        mask = np.zeros(shape, dtype=bool)
        if self.source is None:
            mask[...] = True
            return mask
        for axis, ix in enumerate(self.index):
            if ix is None:
                continue
            sel = [None] * len(shape)
            sel[axis] = slice(None)
            mask |= (ix == NEW)[tuple(sel)]
        return mask

    def gather(self, old: Optional[np.ndarray], new_shape, fill=0.0) -> np.ndarray:
        """Builds the new array: copies mapped entries (resampled ones
        interpolated), `fill` elsewhere."""
        new_shape = tuple(int(s) for s in new_shape)
        if self.source is None or old is None:
            return np.full(new_shape, fill, dtype=getattr(old, "dtype", np.float32))
        old = np.asarray(old)
        if self.resample is not None:
            old = self.resample.apply(old)
        if len(self.index) not in (0, old.ndim):
            raise ValueError(f"transfer from {self.source!r}: {len(self.index)} axis maps "
                             f"for a {old.ndim}-D variable")
        out = old
        for axis, ix in enumerate(self.index):
            if ix is None:
                continue
            if ix.size and ix.max() >= out.shape[axis]:
                raise ValueError(f"transfer from {self.source!r}: index {ix.max()} out of "
                                 f"range for axis {axis} of size {out.shape[axis]}")
            taken = np.take(out, np.where(ix == NEW, 0, ix), axis=axis)
            if (ix == NEW).any():
                sel = [slice(None)] * out.ndim
                sel[axis] = ix == NEW
                taken[tuple(sel)] = fill
            out = taken
        if out.shape != new_shape:
            raise ValueError(f"transfer from {self.source!r} gives shape {out.shape}, the new "
                             f"variable has shape {new_shape}")
        return np.array(out, copy=True)

    def to_dict(self) -> dict:
        d = {"source": self.source,
             "index": [None if i is None else i.tolist() for i in self.index]}
        if self.resample is not None:
            d["resample"] = self.resample.to_dict()
        return d

    @classmethod
    def from_dict(cls, d) -> "VariableTransfer":
        return cls(d["source"], tuple(d["index"]), d.get("resample"))


class TransferPlan(Mapping[str, VariableTransfer]):
    """Mapping `new variable path -> VariableTransfer`.

    Example:
        >>> plan = TransferPlan({"dense/kernel": VariableTransfer("dense/kernel", (None, [0, 1, -1]))})
        >>> plan["dense/kernel"].gather(np.ones((2, 2)), (2, 3)).tolist()
        [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    """

    def __init__(self, entries: Mapping[str, VariableTransfer]):
        self._entries = dict(entries)

    def __getitem__(self, path) -> VariableTransfer:
        return self._entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self):
        changed = sum(not t.is_identity for t in self._entries.values())
        return f"TransferPlan({len(self)} variables, {changed} changed)"

    @classmethod
    def identity(cls, variables: Iterable) -> "TransferPlan":
        """Every variable maps to the variable with the same path."""
        return cls({v.path: VariableTransfer(v.path, (None,) * len(v.shape)) for v in variables})

    def compose(self, first: "TransferPlan") -> "TransferPlan":
        """The plan of `first` followed by `self` (old -> mid -> new)."""
        out = {}
        for path, t in self._entries.items():
            if t.source is None:
                out[path] = t
                continue
            if t.source not in first:
                raise KeyError(f"compose: {t.source!r} is not produced by the first plan")
            f = first[t.source]
            if f.source is None:
                out[path] = VariableTransfer(None, t.index)
                continue
            if t.resample is not None and f.resample is not None:
                raise ValueError(f"compose: {path!r} is resampled by both plans; resample once")
            if t.resample is not None and len(f.index) >= 2 and f.index[-2] is not None:
                raise ValueError(f"compose: {path!r} is resampled after its token axis was "
                                 "indexed; change the resolution first")
            index = []
            ndim = max(len(t.index), len(f.index))
            for a in range(ndim):
                ti = t.index[a] if a < len(t.index) else None
                fi = f.index[a] if a < len(f.index) else None
                if ti is None:
                    index.append(fi)
                elif fi is None:
                    index.append(ti)
                else:
                    index.append(np.where(ti == NEW, NEW, fi[np.where(ti == NEW, 0, ti)]))
            out[path] = VariableTransfer(f.source, tuple(index), t.resample or f.resample)
        return TransferPlan(out)

    def to_dict(self) -> dict:
        return {p: t.to_dict() for p, t in self._entries.items()}

    @classmethod
    def from_dict(cls, d) -> "TransferPlan":
        return cls({p: VariableTransfer.from_dict(t) for p, t in d.items()})

    def apply(self, old_values: Mapping[str, np.ndarray], new_variables, fill=0.0,
              strict=True) -> None:
        """Assigns each new variable from `old_values` (path -> array) per the plan.

        Entries with no source are set to `fill` when `fill` is not None, and
        left at their current value (e.g. an initializer's) when it is None.
        """
        for v in new_variables:
            t = self._entries.get(v.path)
            if t is None:
                if strict:
                    raise KeyError(f"transfer plan has no entry for new variable {v.path!r}")
                continue
            if t.source is not None and t.source not in old_values:
                raise KeyError(f"transfer plan names source {t.source!r} for {v.path!r}, "
                               "which the old model does not have")
            old = old_values.get(t.source) if t.source is not None else None
            value = t.gather(old, v.shape, fill=0.0 if fill is None else fill)
            if fill is None:
                keep = t.new_mask(tuple(v.shape))
                if keep.any():
                    value = np.where(keep, np.asarray(v.numpy()), value)
            v.assign(value.astype(v.dtype))


@dataclasses.dataclass
class GrowthResult:
    """What every architecture change returns.

    Attributes:
        model: the new Functional model, weights already set.
        plan: the `TransferPlan` from the old model's variables to the new
            model's; the controller uses it to carry optimizer slots and EMA
            shadows.
        info: free-form, JSON-serializable description of the change (groups
            and their old/new sizes, blocks inserted, ...), for logs and
            checkpoints.
    """
    model: object
    plan: TransferPlan
    info: dict = dataclasses.field(default_factory=dict)

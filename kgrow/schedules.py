"""Schedules as validated plain data.

A schedule is a tuple of `Stage`s, each saying from which epoch on the model
has which size. Sizes are *relative to the full model the user built* (1.0 =
the full width or depth), so a schedule is portable across models and a
checkpoint can store it as JSON. Schedules are validated when they are
created, never when they first fire: a bad schedule fails before any
training time is spent.

Example:
    >>> s = GrowthSchedule([Stage(0, width=0.5), Stage(4, width=0.75), Stage(8, width=1.0)],
    ...                    total_epochs=12)
    >>> s.stage_at(5).width
    0.75
    >>> [round(v, 3) for v in GrowthSchedule.linear(12, num_stages=4, start=0.5,
    ...                                                 quantity="depth").sizes("depth")]
    [0.5, 0.667, 0.833, 1.0]
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Iterable, Mapping, Optional, Sequence, Union

__all__ = ["Stage", "GrowthSchedule", "QUANTITIES"]

# What a stage can set. Each is a fraction of the full model in (0, 1], or for
# width a {group_name: fraction} mapping.
QUANTITIES = ("width", "depth", "resolution")

Size = Union[float, Mapping[str, float], None]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a growth schedule.

    Attributes:
        epoch: first epoch (0-based) of the stage.
        width: width multiplier relative to the full model, either one float
            for every resizable channel group or {group_name: float}.
        depth: depth relative to the full model (fraction of its blocks).
        resolution: input resolution relative to the full one.
    """
    epoch: int
    width: Size = None
    depth: Optional[float] = None
    resolution: Optional[float] = None

    def get(self, quantity: str):
        return getattr(self, quantity)

    def to_dict(self) -> dict:
        d = {"epoch": self.epoch}
        for q in QUANTITIES:
            v = getattr(self, q)
            if v is not None:
                d[q] = dict(v) if isinstance(v, Mapping) else v
        return d


def _check_fraction(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number in (0, 1], got {value!r}")
    if not (0.0 < float(value) <= 1.0) or math.isnan(value):
        raise ValueError(f"{where} must be in (0, 1] (a fraction of the full model), got "
                         f"{value}. Sizes are relative to the model you built: 1.0 is its full "
                         "size, and kgrow grows toward it, never past it.")


def _values(size: Size) -> dict:
    if size is None:
        return {}
    if isinstance(size, Mapping):
        return dict(size)
    return {"*": size}


class GrowthSchedule:
    """An ordered, validated list of `Stage`s.

    Rules (checked at construction):
      * at least one stage; the first starts at epoch 0; epochs strictly
        increase and stay below `total_epochs` when it is given;
      * every size is a fraction in (0, 1];
      * a quantity set in one stage is set in every stage, and it never
        shrinks from one stage to the next (kgrow grows; use the surgery
        functions directly to shrink);
      * per-group width mappings name the same groups in every stage.

    Args:
        stages: `Stage`s or dicts with the same keys.
        total_epochs: the run's length, if known, to reject stages past it.
        final_full: require the last stage to be the full model (1.0 for
            every quantity it sets). Defaults to True: the methods kgrow
            implements all end at the full architecture.
    """

    def __init__(self, stages: Iterable[Union[Stage, Mapping]], total_epochs: Optional[int] = None,
                 final_full: bool = True):
        self.stages = tuple(s if isinstance(s, Stage) else Stage(**dict(s)) for s in stages)
        self.total_epochs = total_epochs
        self.final_full = final_full
        self._validate()

    # -- construction helpers -------------------------------------------------
    @classmethod
    def linear(cls, total_epochs: int, num_stages: int = 4, start: float = 0.5,
               quantity: Union[str, Sequence[str]] = "width") -> "GrowthSchedule":
        """Equal-length stages with sizes `linspace(start, 1, num_stages)`.

        This is AutoProg's uniform "Prog" schedule and Network Expansion's
        equal stage lengths (stage length = total_epochs / num_stages).
        """
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if total_epochs < num_stages:
            raise ValueError(f"{num_stages} stages need at least {num_stages} epochs, "
                             f"got total_epochs={total_epochs}")
        quantities = [quantity] if isinstance(quantity, str) else list(quantity)
        stages = []
        for i in range(num_stages):
            frac = 1.0 if num_stages == 1 else start + (1.0 - start) * i / (num_stages - 1)
            epoch = (i * total_epochs) // num_stages
            stages.append(Stage(epoch, **{q: frac for q in quantities}))
        return cls(stages, total_epochs=total_epochs)

    @classmethod
    def from_dict(cls, d: Mapping) -> "GrowthSchedule":
        return cls(d["stages"], total_epochs=d.get("total_epochs"),
                   final_full=d.get("final_full", True))

    @classmethod
    def from_json(cls, text: str) -> "GrowthSchedule":
        return cls.from_dict(json.loads(text))

    # -- queries --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"stages": [s.to_dict() for s in self.stages], "total_epochs": self.total_epochs,
                "final_full": self.final_full}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @property
    def quantities(self) -> tuple:
        return tuple(q for q in QUANTITIES if self.stages[0].get(q) is not None)

    def sizes(self, quantity: str) -> list:
        return [s.get(quantity) for s in self.stages]

    def stage_index_at(self, epoch: int) -> int:
        """Index of the stage active during `epoch` (0-based)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        idx = 0
        for i, s in enumerate(self.stages):
            if s.epoch <= epoch:
                idx = i
        return idx

    def stage_at(self, epoch: int) -> Stage:
        return self.stages[self.stage_index_at(epoch)]

    def boundaries(self) -> list:
        """Epochs at which a growth step happens (every stage start but the first)."""
        return [s.epoch for s in self.stages[1:]]

    def __len__(self):
        return len(self.stages)

    def __repr__(self):
        return f"GrowthSchedule({[s.to_dict() for s in self.stages]}, total_epochs={self.total_epochs})"

    def __eq__(self, other):
        return isinstance(other, GrowthSchedule) and self.to_dict() == other.to_dict()

    # -- validation -----------------------------------------------------------
    def _validate(self) -> None:
        if not self.stages:
            raise ValueError("a growth schedule needs at least one stage")
        if self.stages[0].epoch != 0:
            raise ValueError(f"the first stage must start at epoch 0 (it sets the size training "
                             f"starts with), got epoch {self.stages[0].epoch}")
        if self.total_epochs is not None and self.total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {self.total_epochs}")
        for prev, cur in zip(self.stages, self.stages[1:]):
            if cur.epoch <= prev.epoch:
                raise ValueError(f"stage epochs must strictly increase: stage at epoch {cur.epoch} "
                                 f"follows a stage at epoch {prev.epoch}")
        last = self.stages[-1]
        if self.total_epochs is not None and last.epoch >= self.total_epochs:
            raise ValueError(f"a stage starts at epoch {last.epoch}, but training has only "
                             f"{self.total_epochs} epochs (0..{self.total_epochs - 1})")
        quantities = [q for q in QUANTITIES if self.stages[0].get(q) is not None]
        if not quantities:
            raise ValueError(f"the stages set no size; give one of {QUANTITIES} per stage")
        for i, s in enumerate(self.stages):
            for q in QUANTITIES:
                if (s.get(q) is None) != (q not in quantities):
                    raise ValueError(f"stage {i} (epoch {s.epoch}) "
                                     f"{'omits' if s.get(q) is None else 'sets'} {q!r}, but the "
                                     f"first stage {'sets' if q in quantities else 'omits'} it; "
                                     "every stage must set the same quantities")
            for q in quantities:
                for group, v in _values(s.get(q)).items():
                    where = f"stage {i} (epoch {s.epoch}) {q}" + ("" if group == "*" else f"[{group!r}]")
                    _check_fraction(v, where)
            if isinstance(s.width, Mapping) != isinstance(self.stages[0].width, Mapping) or (
                    isinstance(s.width, Mapping) and set(s.width) != set(self.stages[0].width)):
                raise ValueError(f"stage {i} width names groups {sorted(_values(s.width))}, the "
                                 f"first stage {sorted(_values(self.stages[0].width))}: every stage "
                                 "must size the same groups")
        for q in quantities:
            for i in range(1, len(self.stages)):
                before, now = _values(self.stages[i - 1].get(q)), _values(self.stages[i].get(q))
                for group in now:
                    if now[group] < before[group]:
                        raise ValueError(
                            f"{q}{'' if group == '*' else f'[{group!r}]'} shrinks from "
                            f"{before[group]} to {now[group]} at epoch {self.stages[i].epoch}; "
                            "growth schedules must be non-decreasing")
            if self.final_full:
                bad = {g: v for g, v in _values(last.get(q)).items() if v != 1.0}
                if bad:
                    raise ValueError(f"the last stage must reach the full model ({q} = 1.0), got "
                                     f"{bad}; pass final_full=False to end smaller")
        if len(self.stages) > 1 and all(self.stages[i].to_dict() | {"epoch": 0} ==
                                        self.stages[i - 1].to_dict() | {"epoch": 0}
                                        for i in range(1, len(self.stages))):
            raise ValueError("every stage has the same size: the schedule never grows")

"""AutoProg's per-stage search as plain functions: candidate sets and scores.

A *candidate* is one sub-network size: `{"resolution": r, "depth": d}` with
`r` the image height in pixels (width scales with it) and `d` the number of
blocks. Candidate *values* per dimension are sorted lists ending at the full
model.

Candidate sets (paper, appendix "growth space in each stage"):

* first stage: the smallest, middle and largest value of each dimension
  (3 x 3 = 9 candidates), so plain full-size training stays possible;
* later stages: the current value and the next `later[q]` larger values of
  each dimension (default: 3 more resolutions, 1 more depth).

Score: `loss * time ** w` (a weighted product, as in MnasNet), argmin wins.
The paper chooses `w` "dynamically by balancing the scores of all candidate
sub-networks"; kgrow's `w="auto"` fits `log loss = a - w log time` over the
candidates by least squares, so that a candidate on the average
loss-vs-time trade-off of the stage scores the same as any other, and the
winner is the one furthest below that trade-off (w clipped at >= 0).

Example:
    >>> stage_candidates([8, 12, 16], [2, 3, 4], current=None)[:3]
    [{'resolution': 8, 'depth': 2}, {'resolution': 8, 'depth': 3}, {'resolution': 8, 'depth': 4}]
    >>> choose([1.0, 0.9], [1.0, 2.0], w=1.0)["index"]
    0
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["candidate_values", "stage_candidates", "fit_exponent", "scores", "choose",
           "DEFAULT_LATER"]

#: Larger values added after the current one in later stages (resolution, depth).
DEFAULT_LATER = {"resolution": 3, "depth": 1}


def _check_values(name, values, full, multiple=1) -> list:
    values = sorted({int(v) for v in values})
    if not values:
        raise ValueError(f"{name} candidates are empty")
    bad = [v for v in values if v < 1 or v % multiple]
    if bad:
        what = f"multiples of the patch size {multiple}" if multiple > 1 else "positive ints"
        raise ValueError(f"{name} candidates {bad} are not {what}; the candidates must be "
                         f"{what} up to {full}.")
    if values[-1] != full:
        raise ValueError(f"{name} candidates {values} do not end at the full model ({full}); "
                         "AutoProg's last stage is the full model, so the candidate set must "
                         "contain it as its largest value.")
    return values


def candidate_values(full: int, *, start: float = 0.5, multiple: int = 1,
                     values: Optional[Sequence[int]] = None, name: str = "value") -> list:
    """Sorted candidate values of one dimension.

    Args:
        full: the full model's value (image height, number of blocks).
        start: smallest value as a fraction of `full` (rounded up to
            `multiple`) when `values` is not given.
        multiple: values must be multiples of it (the patch size for
            resolutions).
        values: explicit values (validated).

    Example:
        >>> candidate_values(224, start=0.5, multiple=16)
        [112, 128, 144, 160, 176, 192, 208, 224]
        >>> candidate_values(12, start=0.5)
        [6, 7, 8, 9, 10, 11, 12]
    """
    if values is None:
        if not 0.0 < start <= 1.0:
            raise ValueError(f"start must be in (0, 1], got {start}")
        low = max(multiple, int(math.ceil(full * start / multiple)) * multiple)
        values = range(low, full + 1, multiple)
    return _check_values(name, values, full, multiple)


def _mid(values):
    return values[(len(values) - 1) // 2]


def stage_candidates(resolutions: Sequence[int], depths: Sequence[int],
                     current: Optional[Mapping] = None,
                     later: Optional[Mapping[str, int]] = None) -> list:
    """The candidates of one stage, smallest first (resolution-major).

    Args:
        resolutions, depths: sorted candidate values (`candidate_values`).
        current: the current sub-network (`{"resolution", "depth"}`), or
            None for the first stage (min / middle / max of each dimension).
        later: larger values added after the current one per dimension
            (default `DEFAULT_LATER`).
    """
    later = {**DEFAULT_LATER, **(later or {})}
    dims = {"resolution": list(resolutions), "depth": list(depths)}
    chosen = {}
    for q, values in dims.items():
        if current is None:
            chosen[q] = sorted({values[0], _mid(values), values[-1]})
        else:
            above = [v for v in values if v >= current[q]]
            if not above:
                raise ValueError(f"current {q} {current[q]} is above every candidate {values}")
            chosen[q] = above[:1 + int(later[q])]
    return [{"resolution": r, "depth": d} for r in chosen["resolution"]
            for d in chosen["depth"]]


def fit_exponent(losses: Sequence[float], times: Sequence[float]) -> float:
    """`w` balancing loss against time over the candidates (see module doc).

    Least-squares slope `b` of `log loss` on `log time`; returns `max(0, -b)`
    (0 when the times do not vary).

    Example:
        >>> round(fit_exponent([2.0, 1.0], [1.0, 4.0]), 3)  # loss halves when time x4
        0.5
    """
    lt = np.log(np.asarray(times, dtype=np.float64))
    ll = np.log(np.asarray(losses, dtype=np.float64))
    spread = lt - lt.mean()
    denom = float(np.sum(spread ** 2))
    if denom <= 1e-24:
        return 0.0
    slope = float(np.sum(spread * (ll - ll.mean())) / denom)
    return max(0.0, -slope)


def scores(losses: Sequence[float], times: Sequence[float], w: float) -> list:
    """`loss * (time / min time) ** w` per candidate (the normalisation does not change the argmin)."""
    t = np.asarray(times, dtype=np.float64)
    return [float(v) for v in np.asarray(losses, dtype=np.float64) * (t / t.min()) ** float(w)]


def choose(losses: Sequence[float], times: Sequence[float],
           w: Union[float, str] = "auto") -> dict:
    """Picks the candidate with the lowest score.

    Args:
        losses: per-candidate loss (> 0).
        times: per-candidate step time (> 0).
        w: the exponent, or "auto" (`fit_exponent`).

    Returns:
        `{"index", "w", "scores"}`; ties go to the earlier (smaller) candidate.
    """
    losses = [float(v) for v in losses]
    times = [float(v) for v in times]
    if len(losses) != len(times) or not losses:
        raise ValueError(f"got {len(losses)} losses and {len(times)} times")
    if min(times) <= 0 or not all(math.isfinite(v) for v in times):
        raise ValueError(f"step times must be positive and finite, got {times}")
    if not all(math.isfinite(v) and v > 0 for v in losses):
        raise ValueError(f"losses must be positive and finite, got {losses}")
    exponent = fit_exponent(losses, times) if w == "auto" else float(w)
    s = scores(losses, times, exponent)
    return {"index": int(np.argmin(s)), "w": exponent, "scores": s}

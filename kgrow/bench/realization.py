"""How much of a FLOPs saving shows in wall-clock time: the step-time model.

On a real machine a training step costs a fixed overhead (Python, kernel
launches, the input pipeline) plus its FLOPs over the throughput the
hardware sustains:

    step_s = overhead_s + flops_per_step / flops_per_s

`fit_step_times` fits that line by least squares to measured steps (see
`kgrow bench probe`); with ``anchored=True`` the fit also keeps the measured
points and predicts between them by piecewise-linear interpolation (the line
only outside their range), because a CPU's FLOP rate is not one number: on
AVX-512, oneDNN computes convolutions in blocks of 16 channels, so a layer of
12 channels costs what one of 16 does and a line through all widths misses
the middle ones by a third; `predicted_train_s` and `predicted_speedup` apply it to
a schedule given as per-epoch `flops_per_sample` and `samples` (the `curve`
of a bench run record has exactly these keys), so a method's wall-clock
speedup can be predicted before a long run, and `realization` says which
fraction of the FLOPs saving a measured (or predicted) speedup realizes.

Pure functions of plain numbers; no TensorFlow.

Example:
    >>> fit = StepTimeFit(overhead_s=0.5, flops_per_s=1.28e11)
    >>> base = [{"flops_per_sample": 1e9, "samples": 1280}] * 2
    >>> half = [{"flops_per_sample": 5e8, "samples": 1280}] * 2
    >>> round(predicted_speedup(fit, base, half, batch_size=128), 3)
    1.5
    >>> round(realization(1.5, flops_speedup(base, half)), 3)
    0.667
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np


def realization(speedup_wall: float | None, speedup_flops: float | None) -> float | None:
    """Fraction of the FLOPs saving that shows in wall-clock time.

    `(1 - 1/speedup_wall) / (1 - 1/speedup_flops)`: 1 when time falls as
    much as FLOPs, 0 when it does not fall at all, negative when the method
    is slower. None when there is no FLOPs saving to realize (speedup_flops
    <= 1 or a missing value).

    Example:
        >>> realization(2.0, 2.0), realization(1.0, 2.0), realization(1.5, 1.0)
        (1.0, 0.0, None)
    """
    if speedup_wall is None or speedup_flops is None or not speedup_wall > 0:
        return None
    if not speedup_flops > 1:
        return None
    return (1.0 - 1.0 / speedup_wall) / (1.0 - 1.0 / speedup_flops)


@dataclasses.dataclass(frozen=True)
class StepTimeFit:
    """`step_s = overhead_s + flops_per_step / flops_per_s`.

    Attributes:
        overhead_s: Fixed cost of one training step, seconds (>= 0).
        flops_per_s: Training FLOPs per second the hardware sustains.
        rms_rel_error: Root-mean-square relative error of the fit on the
            points it was fitted to (None when not fitted).
        num_points: Number of points fitted.
        points: Measured ``(flops_per_step, seconds)`` pairs, ascending in
            FLOPs, that `step_s` interpolates between (empty: the line only).
    """

    overhead_s: float
    flops_per_s: float
    rms_rel_error: float | None = None
    num_points: int = 0
    points: tuple = ()

    def __post_init__(self):
        if not self.overhead_s >= 0:
            raise ValueError(f"overhead_s must be >= 0, got {self.overhead_s!r}.")
        if not (self.flops_per_s > 0 and math.isfinite(self.flops_per_s)):
            raise ValueError(f"flops_per_s must be a positive finite number, got "
                             f"{self.flops_per_s!r}.")

    def step_s(self, flops_per_step):
        """Predicted seconds of a step (array-friendly): between the measured
        `points` their piecewise-linear interpolation, elsewhere the line.

        Example:
            >>> fit = StepTimeFit(0.0, 1e9, points=((1e9, 2.0), (3e9, 4.0)))
            >>> fit.step_s([2e9, 4e9]).tolist()  # interpolated, then the line
            [3.0, 4.0]
        """
        flops = np.asarray(flops_per_step, dtype=float)
        line = self.overhead_s + flops / self.flops_per_s
        if len(self.points) < 2:
            return line
        xs, ys = (np.asarray(v, dtype=float) for v in zip(*self.points))
        inside = (flops >= xs[0]) & (flops <= xs[-1])
        return np.where(inside, np.interp(flops, xs, ys), line)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = dataclasses.asdict(self)
        out["points"] = [list(p) for p in self.points]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StepTimeFit":
        """Inverse of `to_dict`."""
        values = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        values["points"] = tuple(tuple(float(v) for v in p) for p in values.get("points", ()))
        return cls(**values)


def fit_step_times(flops_per_step: Sequence[float], seconds: Sequence[float],
                   anchored: bool = False) -> StepTimeFit:
    """Least-squares fit of step time as overhead plus FLOPs over throughput.

    The residuals are relative (each point weighted by 1/seconds), so small
    models count as much as large ones. A negative intercept is not a
    physical overhead: the line is then refitted through the origin.

    Args:
        flops_per_step: Training FLOPs of each measured step.
        seconds: Its measured duration.
        anchored: Keep the points for `StepTimeFit.step_s` to interpolate
            (points of one shape family: equal FLOPs are averaged, and the
            times made non-decreasing in FLOPs by pooling adjacent
            inversions: within one family a larger step is never faster, so
            a measured inversion is timing noise, and interpolating it would
            predict a slowdown from a smaller model).

    Raises:
        ValueError: Fewer than two points, mismatched lengths, non-positive
            values, or all points with the same FLOPs.

    Example:
        >>> flops = [1e9, 2e9, 4e9]
        >>> fit = fit_step_times(flops, [0.02 + f / 1e11 for f in flops])
        >>> round(fit.overhead_s, 6), round(fit.flops_per_s / 1e11, 6)
        (0.02, 1.0)
    """
    x = np.asarray(flops_per_step, dtype=float)
    y = np.asarray(seconds, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"flops_per_step and seconds must be two equally long lists, got "
                         f"shapes {x.shape} and {y.shape}.")
    if len(x) < 2:
        raise ValueError(f"fit_step_times needs at least 2 points, got {len(x)}.")
    if not (np.all(x > 0) and np.all(y > 0) and np.all(np.isfinite(x + y))):
        raise ValueError("fit_step_times needs positive finite FLOPs and seconds.")
    if np.ptp(x) == 0:
        raise ValueError("fit_step_times needs points with different FLOPs; all have "
                         f"{x[0]:.3g}.")
    w = 1.0 / y
    design = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    (overhead, slope), *_ = np.linalg.lstsq(design, y * w, rcond=None)
    if overhead < 0 or slope <= 0:
        overhead = 0.0
        slope = float(np.sum(w * w * x * y) / np.sum(w * w * x * x))
    predicted = overhead + slope * x
    rms = float(np.sqrt(np.mean(((predicted - y) / y) ** 2)))
    points = ()
    if anchored:
        points = _non_decreasing([(float(f), float(np.mean(y[x == f]))) for f in np.unique(x)])
    return StepTimeFit(overhead_s=float(overhead), flops_per_s=float(1.0 / slope),
                       rms_rel_error=rms, num_points=int(len(x)), points=points)


def _non_decreasing(points):
    """Pool-adjacent-violators on `(flops, seconds)` pairs ascending in FLOPs: each run
    of inverted times becomes its mean (isotonic least squares), FLOPs unchanged."""
    blocks = []  # [sum of seconds, count]
    for _, seconds in points:
        blocks.append([seconds, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    times = [total / count for total, count in blocks for _ in range(count)]
    return tuple((flops, seconds) for (flops, _), seconds in zip(points, times))


def predicted_train_s(fit: StepTimeFit, epochs: Sequence[Mapping[str, float]],
                      batch_size: int) -> float:
    """Predicted training seconds of a schedule.

    Args:
        fit: The step-time model.
        epochs: Per epoch `{"flops_per_sample": ..., "samples": ...}` (a
            bench run's `curve` works as it is).
        batch_size: Samples per step.

    Example:
        >>> fit = StepTimeFit(overhead_s=0.1, flops_per_s=1e9)
        >>> predicted_train_s(fit, [{"flops_per_sample": 1e6, "samples": 1000}], 100)
        2.0
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    total = 0.0
    for i, epoch in enumerate(epochs):
        missing = {"flops_per_sample", "samples"} - set(epoch)
        if missing or epoch["flops_per_sample"] is None:
            lacking = sorted(missing) or ["flops_per_sample"]
            raise ValueError(f"epoch {i} of the schedule lacks {lacking}; each epoch needs "
                             f"flops_per_sample and samples.")
        steps = float(epoch["samples"]) / batch_size
        total += steps * float(fit.step_s(float(epoch["flops_per_sample"]) * batch_size))
    return total


def predicted_speedup(fit: StepTimeFit, baseline_epochs: Sequence[Mapping[str, float]],
                      method_epochs: Sequence[Mapping[str, float]], batch_size: int) -> float:
    """Predicted wall-clock speedup (baseline / method) of a method's schedule.

    See `predicted_train_s` for the epoch format; the module docstring has an
    example.
    """
    return (predicted_train_s(fit, baseline_epochs, batch_size)
            / predicted_train_s(fit, method_epochs, batch_size))


def flops_speedup(baseline_epochs: Sequence[Mapping[str, float]],
                  method_epochs: Sequence[Mapping[str, float]]) -> float:
    """Training-FLOPs speedup (baseline / method) of two schedules.

    Example:
        >>> flops_speedup([{"flops_per_sample": 4.0, "samples": 10}],
        ...               [{"flops_per_sample": 1.0, "samples": 10}])
        4.0
    """
    def total(epochs):
        return sum(float(e["flops_per_sample"]) * float(e["samples"]) for e in epochs)
    return total(baseline_epochs) / total(method_epochs)


def equal_work_overhead(baseline_curve: Sequence[Mapping[str, float]],
                        method_curve: Sequence[Mapping[str, float]],
                        rel_tol: float = 1e-6) -> dict[str, Any] | None:
    """What a method's machinery costs per sample where it trains the baseline's model.

    A method's wall-clock saving mixes the work it removes with what its own
    callbacks cost. In the epochs where it does the baseline's work per
    sample (same `flops_per_sample`: e.g. after the last width growth, or
    every epoch of data sieving, which trains fewer samples of the same
    model), the ratio of seconds per sample is that cost alone: hooks,
    collectives, the controller's train step, a dataset carrying sample ids.
    Left out: the first epoch (tracing) and every epoch whose FLOPs per
    sample differ from the epoch before, because the model changed as it
    began (a growth step and the new model's trace).

    Args:
        baseline_curve: The baseline run's `curve` (cumulative `wall_s`,
            `samples` and `flops_per_sample` per epoch).
        method_curve: The method's run `curve` with the same seed.
        rel_tol: Relative tolerance of "same FLOPs per sample".

    Returns:
        `{"overhead": method s/sample / baseline s/sample - 1, "epochs": [1-based
        epochs compared]}` over the summed time and samples of those epochs,
        or None when no epoch qualifies.

    Example:
        >>> base = [{"wall_s": w, "samples": 100, "flops_per_sample": 4.0}
        ...         for w in (12.0, 22.0, 32.0)]
        >>> grown = [{"wall_s": 5.0, "samples": 75, "flops_per_sample": 1.0},
        ...          {"wall_s": 14.0, "samples": 75, "flops_per_sample": 4.0},
        ...          {"wall_s": 22.4, "samples": 75, "flops_per_sample": 4.0}]
        >>> r = equal_work_overhead(base, grown)
        >>> r["epochs"], round(r["overhead"], 3)
        ([3], 0.12)
    """
    def per_epoch(curve):
        walls = [float(p["wall_s"]) for p in curve]
        return [w - (walls[i - 1] if i else 0.0) for i, w in enumerate(walls)]

    def same(a, b):
        return (a is not None and b is not None
                and abs(float(a) - float(b)) <= rel_tol * abs(float(b)))

    base_s, method_s = per_epoch(baseline_curve), per_epoch(method_curve)
    epochs = [i for i in range(1, min(len(baseline_curve), len(method_curve)))
              if same(method_curve[i].get("flops_per_sample"),
                      baseline_curve[i].get("flops_per_sample"))
              and same(method_curve[i].get("flops_per_sample"),
                       method_curve[i - 1].get("flops_per_sample"))
              and baseline_curve[i].get("samples") and method_curve[i].get("samples")]
    if not epochs:
        return None
    base_rate = sum(base_s[i] for i in epochs) / sum(float(baseline_curve[i]["samples"])
                                                     for i in epochs)
    method_rate = sum(method_s[i] for i in epochs) / sum(float(method_curve[i]["samples"])
                                                         for i in epochs)
    return {"overhead": method_rate / base_rate - 1.0, "epochs": [i + 1 for i in epochs]}

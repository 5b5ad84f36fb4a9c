"""Interleaved step timing shared by the step-time benchmark scripts."""
from __future__ import annotations

import time


def round_step_times(runs: dict, x, y, rounds: int, steps: int) -> dict:
    """`{name: [mean seconds per step of each round]}` for `{name: compiled model}`.

    In every round each model runs `steps` `train_on_batch` calls in turn, so a
    change in the machine's load hits all models alike.
    """
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, model in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    return times

"""Circular data sieving (SpFDE), as plain numpy functions and data.

The sieve keeps a fixed number of training samples *active* and the others
in a *queue* of removed samples:

1. `initial_removal`: a random fraction of the training set goes into the
   queue, in random order.
2. Every ``interval`` epochs (`sieve_update`): the ``k`` easiest active
   samples (fewest forgetting events in the last interval, `forgetting_events`)
   go to the queue's tail and the ``k`` samples at its head come back, with
   ``k = update_ratio * removed`` (`update_count`). While samples of the
   initial queue are still waiting the queue is first-in first-out, so every
   initially removed sample comes back after ``ceil(removed / k)`` updates;
   from the update that brings the last of them back on, the queue is
   shuffled after every update.

Every sample is therefore active for at least one epoch when the run has
enough updates to cycle the initial queue (`updates_in_run` >=
`updates_to_cycle`); `plan_sieve` checks that and raises otherwise. The
samples active at the start are used from epoch 0; a sample moved to the queue
was active before; an initially removed one is active from its return, at an
update epoch before the last epoch.

All randomness is a function of ``(seed, update index)``: no generator state
has to be checkpointed.

Example:
    >>> state = initial_removal(10, removed=4, seed=0)
    >>> int(state.active.sum()), len(state.queue)
    (6, 4)
    >>> forgets = np.zeros(10, np.int32)
    >>> new = sieve_update(state, forgets, k=2, seed=0)
    >>> new.queue[:2].tolist() == state.queue[2:].tolist()  # head left, rest moved up
    True
    >>> new.returned_initial
    2
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["SieveState", "SievePlan", "forgetting_events", "count_forgetting",
           "initial_removal", "sieve_update", "update_count", "updates_in_run",
           "updates_to_cycle", "min_update_ratio", "default_interval", "plan_sieve",
           "removed_count", "is_update_epoch", "PAPER_INTERVAL", "PAPER_EPOCHS",
           "PAPER_UPDATE_RATIO", "check_settings"]

#: The paper's update interval (epochs) for its run length (CIFAR, 160 epochs).
PAPER_INTERVAL = 5
PAPER_EPOCHS = 160
#: The paper's best update ratio (Tab. A2).
PAPER_UPDATE_RATIO = 0.3


def forgetting_events(prev_correct, correct):
    """Forgetting events between two presentations: correct before, wrong now.

    Args:
        prev_correct: bool array, correctness at the previous presentation
            (False for samples not presented before: no event possible).
        correct: bool array, correctness now.

    Returns:
        int32 array, 1 where a sample was forgotten.

    Example:
        >>> forgetting_events([True, True, False, False], [True, False, True, False]).tolist()
        [0, 1, 0, 0]
    """
    prev = np.asarray(prev_correct, dtype=bool)
    now = np.asarray(correct, dtype=bool)
    if prev.shape != now.shape:
        raise ValueError(f"prev_correct and correct must have the same shape, got "
                         f"{prev.shape} and {now.shape}.")
    return (prev & ~now).astype(np.int32)


def count_forgetting(correctness):
    """Forgetting events per sample over a sequence of presentations.

    Args:
        correctness: bool array ``[presentations, samples]``.

    Returns:
        int32 ``[samples]``: number of correct -> wrong transitions.

    Example:
        >>> count_forgetting([[1, 1, 0], [0, 1, 1], [1, 0, 1]]).tolist()
        [1, 1, 0]
    """
    seq = np.asarray(correctness, dtype=bool)
    if seq.ndim != 2:
        raise ValueError(f"correctness must be [presentations, samples], got shape {seq.shape}")
    total = np.zeros(seq.shape[1], np.int32)
    for prev, now in zip(seq[:-1], seq[1:]):
        total += forgetting_events(prev, now)
    return total


@dataclasses.dataclass
class SieveState:
    """The sieve's plain state.

    Attributes:
        active: bool ``[num_train]``, the samples trained on.
        queue: int64 indices of the removed samples, head first.
        initial: number of samples in the initial queue.
        returned_initial: how many of them came back so far.
        updates: number of updates done.
    """

    active: np.ndarray
    queue: np.ndarray
    initial: int
    returned_initial: int = 0
    updates: int = 0

    @property
    def cycled(self) -> bool:
        """True once every sample of the initial queue came back."""
        return self.returned_initial >= self.initial

    def to_dict(self) -> dict:
        return {"active": self.active.copy(), "queue": self.queue.copy(),
                "initial": int(self.initial), "returned_initial": int(self.returned_initial),
                "updates": int(self.updates)}

    @classmethod
    def from_dict(cls, d) -> "SieveState":
        return cls(active=np.asarray(d["active"], bool).copy(),
                   queue=np.asarray(d["queue"], np.int64).copy(), initial=int(d["initial"]),
                   returned_initial=int(d["returned_initial"]), updates=int(d["updates"]))


def _rng(seed, *stream):
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5133, *stream])


def initial_removal(num_train, removed, seed=0) -> SieveState:
    """Removes ``removed`` random samples into the queue (random order).

    Example:
        >>> s = initial_removal(5, 2, seed=1)
        >>> sorted(np.flatnonzero(~s.active).tolist()) == sorted(s.queue.tolist())
        True
    """
    if not 0 < removed < num_train:
        raise ValueError(f"removed must lie in (0, {num_train}), got {removed}.")
    order = _rng(seed, 0).permutation(num_train)
    queue = order[:removed].astype(np.int64)
    active = np.ones(num_train, bool)
    active[queue] = False
    return SieveState(active=active, queue=queue, initial=int(removed))


def sieve_update(state: SieveState, forgets, k, seed=0) -> SieveState:
    """One sieve update: the ``k`` easiest active samples out, ``k`` from the head in.

    Easiest = fewest forgetting events in ``forgets``; ties are broken by a
    random order drawn from ``(seed, update index)``. The ``k`` leaving
    samples go to the queue's tail in that order (easiest first); once the
    initial queue has cycled the whole queue is shuffled.

    Args:
        state: current `SieveState` (not modified).
        forgets: int array ``[num_train]``, events in the last interval.
        k: samples exchanged (``1 <= k <= len(queue)`` and ``<= active``).
        seed: the run's seed.

    Returns:
        The new `SieveState`.
    """
    forgets = np.asarray(forgets)
    if forgets.shape != state.active.shape:
        raise ValueError(f"forgets must have shape {state.active.shape}, got {forgets.shape}")
    n_active = int(state.active.sum())
    if not 1 <= k <= min(len(state.queue), n_active):
        raise ValueError(f"k must lie in [1, {min(len(state.queue), n_active)}], got {k}.")
    rng = _rng(seed, 1, state.updates)
    candidates = np.flatnonzero(state.active)
    ties = rng.permutation(len(candidates))
    # lexsort: last key is primary (fewest events first), the random order breaks ties.
    leaving = candidates[np.lexsort((ties, forgets[candidates]))[:k]].astype(np.int64)
    coming = state.queue[:k]
    queue = np.concatenate([state.queue[k:], leaving])
    returned = min(state.initial, state.returned_initial + k)
    if returned >= state.initial:
        queue = rng.permutation(queue)
    active = state.active.copy()
    active[leaving] = False
    active[coming] = True
    return SieveState(active=active, queue=queue.astype(np.int64), initial=state.initial,
                      returned_initial=returned, updates=state.updates + 1)


def removed_count(num_train, fraction, batch_size=1) -> int:
    """Samples held out for a fraction, leaving a whole number of batches active.

    The training pipeline drops incomplete batches, so the full data trains
    ``num_train // batch_size`` batches per epoch; the active set is the
    whole number of batches nearest to ``1 - fraction`` of that. Every
    active sample then trains every epoch, and the saving in steps is as
    close to ``fraction`` as whole batches allow.

    Example:
        >>> removed_count(1000, 0.25), removed_count(1000, 0.25, batch_size=32)
        (250, 264)
        >>> removed_count(2000, 0.25, batch_size=128)  # 11 of 15 batches stay
        592
    """
    batch_size = int(batch_size)
    keep = int(round((num_train // batch_size) * (1.0 - fraction))) * batch_size
    return int(num_train - keep)


def update_count(removed, update_ratio) -> int:
    """Samples exchanged per update: ``update_ratio`` of the removed set, at least 1."""
    return max(1, int(round(removed * update_ratio)))


def default_interval(epochs) -> int:
    """The paper's 5 of 160 epochs scaled to the run: ``max(1, round(epochs / 32))``.

    Example:
        >>> default_interval(160), default_interval(90), default_interval(10)
        (5, 3, 1)
    """
    return max(1, int(round(epochs * PAPER_INTERVAL / PAPER_EPOCHS)))


def is_update_epoch(epoch, interval) -> bool:
    """Updates happen at the begin of epochs ``interval, 2 * interval, ...``."""
    return epoch > 0 and epoch % interval == 0


def updates_in_run(epochs, interval) -> int:
    """Updates at epochs ``interval, 2*interval, ... <= epochs - 1``."""
    return max(0, (int(epochs) - 1) // int(interval))


def updates_to_cycle(removed, k) -> int:
    """Updates needed until every sample of the initial queue came back."""
    return int(math.ceil(removed / k))


def min_update_ratio(removed, epochs, interval) -> float:
    """Smallest update ratio with which the initial queue cycles within the run.

    Example:
        >>> min_update_ratio(250, epochs=160, interval=5)  # 31 updates of 9
        0.036
    """
    updates = updates_in_run(epochs, interval)
    if updates == 0:
        return math.inf
    return math.ceil(removed / updates) / removed


@dataclasses.dataclass(frozen=True)
class SievePlan:
    """Validated sieve settings for one run (see `plan_sieve`)."""

    num_train: int
    removed: int
    k: int
    interval: int
    epochs: int
    update_ratio: float

    @property
    def active(self) -> int:
        return self.num_train - self.removed

    @property
    def updates(self) -> int:
        return updates_in_run(self.epochs, self.interval)


def check_settings(fraction, update_ratio, interval=None):
    """Raises ValueError for settings that are wrong whatever the data."""
    if isinstance(fraction, bool) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"The removal fraction must lie in (0, 1) (the share of training "
                         f"samples held out at a time, = the training-FLOPs saving), got "
                         f"{fraction!r}.")
    if update_ratio is not None and (isinstance(update_ratio, bool)
                                     or not 0.0 < float(update_ratio) <= 1.0):
        raise ValueError(f"update_ratio must lie in (0, 1] (the share of the removed set "
                         f"exchanged at each update; the paper's best: 0.3), got "
                         f"{update_ratio!r}.")
    if interval is not None and (isinstance(interval, bool) or int(interval) != interval
                                 or interval <= 0):
        raise ValueError(f"interval (epochs between updates) must be a positive integer, "
                         f"got {interval!r}.")


def plan_sieve(num_train, fraction, update_ratio, epochs, interval=None, batch_size=1,
               min_active=1) -> SievePlan:
    """Validates the settings for a run and returns the counts.

    Args:
        num_train: training samples.
        fraction: share of them held out in the queue at any time.
        update_ratio: share of the removed set exchanged per update; None:
            the paper's 0.3, raised to `min_update_ratio` when the run is
            too short for it to cycle the queue.
        epochs: epochs of the run.
        interval: epochs between updates (None: `default_interval`).
        batch_size: the active count is a whole number of batches.
        min_active: smallest allowed active count (a bundle: its batch size).

    Raises:
        ValueError: a setting out of range, a fraction that leaves fewer than
            ``min_active`` samples or removes none, or too few updates in the
            run to bring every initially removed sample back (then not every
            sample would be used); the message says which setting to change.

    Example:
        >>> p = plan_sieve(1000, 0.25, 0.3, epochs=160)
        >>> p.removed, p.k, p.interval, p.updates
        (250, 75, 5, 31)
        >>> plan_sieve(1000, 0.25, None, epochs=3).update_ratio  # 2 updates must cycle
        0.5
    """
    check_settings(fraction, update_ratio, interval)
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    interval = default_interval(epochs) if interval is None else int(interval)
    removed = removed_count(num_train, fraction, batch_size)
    active = num_train - removed
    if active < max(1, min_active) or removed >= num_train:
        raise ValueError(
            f"Removing a fraction {fraction} of {num_train} training samples (active count "
            f"in whole batches of {batch_size}) leaves {active} active samples, "
            f"fewer than the minimum {max(1, min_active)}; use a smaller fraction or more data.")
    if active >= (num_train // int(batch_size)) * int(batch_size):
        raise ValueError(f"A fraction {fraction} of {num_train} samples in batches of "
                         f"{batch_size} removes no whole batch; use a larger fraction or a "
                         f"smaller batch size.")
    if update_ratio is None:
        update_ratio = min(1.0, max(PAPER_UPDATE_RATIO,
                                    min_update_ratio(removed, epochs, interval)))
    k = update_count(removed, update_ratio)
    if k > active:
        raise ValueError(f"update_ratio {update_ratio} exchanges {k} samples per update but "
                         f"only {active} are active; use a smaller update_ratio or fraction.")
    updates = updates_in_run(epochs, interval)
    needed = updates_to_cycle(removed, k)
    if updates == 0:
        # No update ratio helps: the removed samples would never train.
        raise ValueError(
            f"Not every sample would be used: {epochs} epoch(s) with an update every "
            f"{interval} epochs give no update, so the {removed} removed samples never come "
            f"back. Train at least {interval + 1} epochs, or leave sieving out.")
    if updates < needed:
        raise ValueError(
            f"Not every sample would be used: bringing back all {removed} initially removed "
            f"samples at {k} per update needs {needed} updates, but {epochs} epochs with an "
            f"update every {interval} epochs give {updates}. Raise update_ratio to at least "
            f"{min_update_ratio(removed, epochs, interval):.3g}, shorten the interval, or "
            f"train longer.")
    return SievePlan(num_train=int(num_train), removed=removed, k=k, interval=interval,
                     epochs=epochs, update_ratio=float(update_ratio))

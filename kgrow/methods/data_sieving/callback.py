"""DataSieving: SpFDE's circular data sieving inside one `model.fit`.

Example:
    >>> cb = DataSieving(fraction=0.25)
    >>> cb.fraction, cb.update_ratio, cb.interval_epochs
    (0.25, None, None)
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import tensorflow as tf

from kgrow.controller import ControlledCallback, Phase
from kgrow.controller.callbacks import fit_argument
from kgrow.data.pipeline import SAMPLE_IDS
from kgrow.methods.data_sieving import functional as F
from kgrow.methods.data_sieving.tracker import ForgettingTracker

__all__ = ["DataSieving"]


def _carries_ids(x) -> bool:
    if not isinstance(x, tf.data.Dataset):
        return False
    spec = x.element_spec
    return (isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[2], dict)
            and SAMPLE_IDS in spec[2])


def _static_batch_size(x) -> int:
    first = tf.nest.flatten(x.element_spec)[0]
    size = first.shape[0] if first.shape.rank else None
    return int(size) if size else 1


class DataSieving(ControlledCallback):
    """Circular data sieving (SpFDE, Alg. 1 and Appendix C) as a Keras callback.

    At the first epoch a random ``fraction`` of the training samples goes into
    a queue; every ``interval_epochs`` epochs the ``update_ratio * removed``
    easiest active samples (fewest forgetting events in the last interval,
    counted from the training step's own predictions) go to the queue's tail
    and as many come back from its head; once the initial queue has cycled
    it is shuffled at every update (`kgrow.methods.data_sieving.functional`).
    The active count is constant, so every epoch trains on ``1 - fraction`` of
    the data: the training-FLOPs saving is ``fraction``.

    Train on ``bundle.train_with_ids()`` (the batches carry the sample ids the
    forgetting counts are indexed by). The callback changes the bundle's
    `LiveSelection` at epoch begins; Keras' epoch length follows it
    (`kgrow.controller.callbacks.sync_epoch_length`).

    Args:
        fraction: share of the training set held out at any time, in (0, 1)
            (the paper's 25% training-FLOPs saving: 0.25). The active count
            is a whole number of batches (`functional.removed_count`).
        update_ratio: share of the removed set exchanged per update, in
            (0, 1]. None: the paper's best, 0.3, raised (with a warning) to
            the smallest ratio that brings every removed sample back when
            the run has too few updates for 0.3; a given ratio that cannot
            is an error.
        interval_epochs: epochs between updates (None: the paper's 5 of 160
            epochs scaled to the run, `functional.default_interval`).
        epochs: run length (default: what `fit` runs).
        selection: the `LiveSelection` to steer (default: the one of the
            kgrow dataset `fit` trains on, attached to the controller).
        seed: seed of the initial removal, tie-breaking and queue shuffles.
        verbose: 1 prints one line per update.

    Raises:
        ValueError: at construction for a fraction outside (0, 1), a ratio
            outside (0, 1] or a non-positive interval; at ``on_train_begin``
            (before any step) for data without sample ids, a fraction that
            leaves less than a batch, or a run too short to bring every
            removed sample back (`functional.plan_sieve`).

    Attributes:
        state: the `functional.SieveState` (None before the first epoch).
        plan: the run's `functional.SievePlan`.
        used: bool ``[num_train]``, samples active in at least one finished epoch.
        events: one dict per removal/update (copied into bench results).
    """

    phase = Phase.DATA
    drives = ("active data",)
    STATE_NAME = "data_sieving"
    HOOK_NAME = "data_sieving"

    def __init__(self, fraction: float = 0.25, update_ratio: Optional[float] = None,
                 interval_epochs: Optional[int] = None, *, epochs: Optional[int] = None,
                 selection=None, seed: int = 0, verbose: int = 0):
        super().__init__()
        F.check_settings(fraction, update_ratio, interval_epochs)
        self.fraction = float(fraction)
        self.update_ratio = None if update_ratio is None else float(update_ratio)
        self.interval_epochs = None if interval_epochs is None else int(interval_epochs)
        self.epochs = None if epochs is None else int(epochs)
        self.selection = selection
        self.seed = int(seed)
        self.verbose = int(verbose)
        self.plan: Optional[F.SievePlan] = None
        self.state: Optional[F.SieveState] = None
        self.tracker: Optional[ForgettingTracker] = None
        self.last_correct = None
        self.forgets = None
        self.used = None
        self.events: list[dict] = []

    # -- setup ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        x = fit_argument(self.model)
        if x is not None and not _carries_ids(x):
            raise ValueError(
                "DataSieving counts forgetting events per sample and needs the sample ids in "
                "every batch: pass `bundle.train_with_ids()` to fit instead of "
                "`bundle.train` (a kgrow DataBundle; the batches are then (images, labels, "
                f"{{{SAMPLE_IDS!r}: ids}})). Got {type(x).__name__}"
                + (f" with element_spec {x.element_spec}" if hasattr(x, "element_spec") else "")
                + ".")
        selection = self.selection or self.controller.selection
        if selection is None:
            raise ValueError("DataSieving needs the LiveSelection of the training data: train "
                             "on `bundle.train_with_ids()` of a kgrow DataBundle, or pass "
                             "DataSieving(selection=bundle.selection).")
        self.selection = selection
        if not self.epochs:
            raise ValueError("DataSieving needs the run length: pass epochs= or run it in fit.")
        self.plan = F.plan_sieve(selection.num_train, self.fraction, self.update_ratio,
                                 self.epochs, self.interval_epochs,
                                 batch_size=_static_batch_size(x) if x is not None else 1,
                                 min_active=getattr(selection, "min_active", 1))
        if self.update_ratio is None and self.plan.update_ratio > F.PAPER_UPDATE_RATIO:
            warnings.warn(
                f"DataSieving: {self.epochs} epochs with an update every {self.plan.interval} "
                f"give {self.plan.updates} updates, too few to bring all "
                f"{self.plan.removed} removed samples back at the paper's update ratio "
                f"{F.PAPER_UPDATE_RATIO}; using {self.plan.update_ratio:.3g} so that every "
                f"sample is used.", UserWarning, stacklevel=2)
        n = selection.num_train
        if self.tracker is None or self.tracker.num_train != n:
            self.tracker = ForgettingTracker(n)
        if self.last_correct is None or len(self.last_correct) != n:
            self.last_correct = np.zeros(n, bool)
            self.forgets = np.zeros(n, np.int32)
            self.used = np.zeros(n, bool)
        self.tracker.write(self.last_correct, self.forgets)
        if self.HOOK_NAME not in self.controller.hooks:
            self.controller.hooks.add_prediction_hook(self.tracker, name=self.HOOK_NAME)
        self.controller.register_state(self.STATE_NAME, self.get_state, self.set_state)

    def on_train_end(self, logs=None):
        # Later fits on data without ids must not meet the hook.
        if self.HOOK_NAME in self.controller.hooks:
            self.controller.hooks.remove(self.HOOK_NAME)
        self.controller.unregister_state(self.STATE_NAME)
        super().on_train_end(logs)

    # -- epoch work -------------------------------------------------------------
    def controlled_epoch_begin(self, epoch: int) -> None:
        plan = self.plan
        if self.state is None:
            self.state = F.initial_removal(plan.num_train, plan.removed, self.seed)
            self._event(epoch, "initial_removal", 0)
        elif F.is_update_epoch(epoch, plan.interval) and \
                self.state.updates < epoch // plan.interval and epoch < plan.epochs:
            self.state = F.sieve_update(self.state, self.forgets, plan.k, self.seed)
            # Counts are per interval: the next decision sees only its own.
            self.forgets = np.zeros_like(self.forgets)
            self.tracker.write(self.last_correct, self.forgets)
            self._event(epoch, "update", plan.k)
        self.selection.set_active(self.state.active)

    def _event(self, epoch, action, exchanged):
        event = {"epoch": int(epoch), "action": action, "exchanged": int(exchanged),
                 "active": int(self.state.active.sum()), "removed": int(len(self.state.queue)),
                 "queue_cycled": bool(self.state.cycled)}
        self.events.append(event)
        if self.verbose:
            print(f"[DataSieving] epoch {epoch}: {action}, {exchanged} exchanged, "
                  f"{event['active']} active, queue cycled: {event['queue_cycled']}")

    def on_epoch_end(self, epoch, logs=None):
        self._pull()
        self.used |= self.state.active
        super().on_epoch_end(epoch, logs)  # adds epoch_logs() to Keras' logs

    def epoch_logs(self) -> dict:
        if self.state is None:
            return {}
        return {"sieve/active_samples": float(self.state.active.sum()),
                "sieve/removed": float(len(self.state.queue)),
                "sieve/queue_cycled": float(self.state.cycled)}

    def _pull(self):
        """Reads the in-step counters once into the host arrays."""
        if self.tracker is not None:
            self.last_correct, self.forgets = self.tracker.read()

    # -- checkpoint state -------------------------------------------------------
    def get_state(self) -> dict:
        self._pull()
        return {"plan": {"num_train": self.plan.num_train, "removed": self.plan.removed,
                         "k": self.plan.k, "interval": self.plan.interval,
                         "seed": self.seed},
                "sieve": None if self.state is None else self.state.to_dict(),
                "last_correct": self.last_correct.copy(), "forgets": self.forgets.copy(),
                "used": self.used.copy(), "events": [dict(e) for e in self.events]}

    def set_state(self, state) -> None:
        saved = state["plan"]
        mine = {"num_train": self.plan.num_train, "removed": self.plan.removed,
                "k": self.plan.k, "interval": self.plan.interval, "seed": self.seed}
        if {k: int(v) for k, v in saved.items()} != mine:
            raise ValueError(f"The checkpoint's data sieving ran with {saved}, this callback "
                             f"with {mine}; resume with the same settings and data.")
        self.state = None if state["sieve"] is None else F.SieveState.from_dict(state["sieve"])
        self.last_correct = np.asarray(state["last_correct"], bool).copy()
        self.forgets = np.asarray(state["forgets"], np.int32).copy()
        self.used = np.asarray(state["used"], bool).copy()
        self.events = [dict(e) for e in state["events"]]
        self.tracker.write(self.last_correct, self.forgets)
        if self.state is not None:
            self.selection.set_active(self.state.active)

"""SparseTraining: MEST dynamic sparse training or magnitude pruning in one `fit`.

Example:
    >>> cb = SparseTraining(0.9, mode="ems", epochs=160)
    >>> [(u.epoch, u.prune_to, round(u.grow_to, 3)) for u in cb.schedule.updates][:2]
    [(5, 0.9, 0.85), (10, 0.9, 0.85)]
    >>> SparseTraining(1.0)
    Traceback (most recent call last):
    ...
    ValueError: sparsity must be a fraction of zero weights in [0, 1) (0.9 = 90% of the weights are zero), got 1.0
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Union

import warnings

import numpy as np
import tensorflow as tf

from kgrow.controller import ORDER_MASKS, ControlledCallback, Masks, Phase, optimizer_step
from kgrow.controller._variables import weights_by_path
from kgrow.methods.sparse_training.functional import (PAPER_EM_MUTATION, PAPER_EMS_BOUNDS,
                                                      PAPER_SEARCH_END, PAPER_UPDATE_EVERY,
                                                      SparsitySchedule, check_sparsity,
                                                      layer_densities, maskable_variables,
                                                      mest_schedule, prune_and_grow,
                                                      random_masks, sparsity_report)

__all__ = ["SparseTraining"]

MODES = ("ems", "em", "static")
_GRAD_HOOK = "sparse_training:gradient_sums"


class SparseTraining(ControlledCallback):
    """Unstructured sparse training through the controller's `Masks` component.

    At the first epoch the chosen kernels get masks (MEST: random, at the
    target sparsity; pruning schedules: by magnitude). Every step the
    `Masks` component zeroes the gradients of masked entries and re-masks the
    weights after the update, so they stay exactly 0.0 (SGD momentum and
    AdamW weight decay included). At the epochs of the schedule the masks
    are updated at epoch begin by `prune_and_grow`: the smallest ``|w|`` are
    pruned down to the lower bound and random inactive entries regrown at
    0.0 up to the training sparsity. After a growth step of another
    callback (masks carried by the engine, new entries dense) the next epoch
    begin brings every grown variable back to the current sparsity. Frozen
    kernels (``trainable=False``, e.g. progressive freezing) keep their
    masks: updates skip them, so they stay at the sparsity they had when
    frozen.

    Modes (ignored when `schedule` is given):

    * ``"ems"``: MEST EM&S (the SpFDE setting): prune to ``s``, grow to
      ``s - 0.05`` until 90/160 of the run, ``s - 0.025`` until the search
      ends at 120/160, then a last prune to ``s``; updates every 5/160 of
      the run (at least every epoch).
    * ``"em"``: MEST EM: prune to ``s + mutation``, grow back to ``s``.
    * ``"static"``: a fixed random mask (no structure search).

    Args:
        sparsity: target fraction of zeros of the masked kernels, in [0, 1).
        mode: "ems", "em" or "static".
        schedule: a `SparsitySchedule` (e.g. `polynomial_sparsity(...)` for
            plain magnitude pruning) instead of `mode`.
        epochs: run length (default: that of `fit`).
        update_every: dT, epochs (int) or fraction of the run (float).
        search_end: end of the structure search, epochs or fraction.
        ems_bounds: EM&S ``((until_fraction, bound), ...)``.
        mutation: EM's extra pruned fraction.
        distribution: per-layer densities, "uniform" (MEST) or "erk".
        layers, exclude, predicate, keep_first, keep_classifier: which
            kernels are masked (`maskable_variables`).
        lam: weight of the gradient in the pruning score ``|w| + lam * |g|``,
            where ``g`` is the mean gradient of the epoch before the update
            (summed into one variable per masked kernel by a gradient
            transform that is installed only for that epoch). 0 (default):
            magnitude only, no gradient work at all.
        seed: seed of the random masks and regrowth (each update draws from
            ``(seed, epoch)``, so a resumed run draws the same).
        verbose: 1 prints one line per mask update.

    Attributes:
        events: one dict per mask change (epoch, bounds, pruned/grown per
            variable, actual sparsity per variable); copied to bench results.

    Raises:
        ValueError: bad settings (sparsity outside [0, 1), dT <= 0, unknown
            layer names, lam > 0, ...), before training.
    """

    phase = Phase.MASKS
    STATE_NAME = "sparse_training"

    def __init__(self, sparsity: float = 0.9, mode: str = "ems", *,
                 schedule: Optional[SparsitySchedule] = None, epochs: Optional[int] = None,
                 update_every: Union[int, float] = PAPER_UPDATE_EVERY,
                 search_end: Union[int, float] = PAPER_SEARCH_END,
                 ems_bounds: Sequence = PAPER_EMS_BOUNDS, mutation: float = PAPER_EM_MUTATION,
                 distribution: str = "uniform", layers: Optional[Iterable[str]] = None,
                 exclude: Iterable[str] = (), predicate: Optional[Callable] = None,
                 keep_first: bool = True, keep_classifier: bool = True, lam: float = 0.0,
                 seed: int = 0, verbose: int = 0):
        super().__init__()
        if schedule is None:
            check_sparsity(sparsity)
        if mode not in MODES:
            raise ValueError(f"SparseTraining mode must be one of {MODES}, got {mode!r}")
        if distribution not in ("uniform", "erk"):
            raise ValueError(f"distribution must be 'uniform' or 'erk', got {distribution!r}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise ValueError(f"lam (weight of |grad| in the pruning score) must be a number "
                             f">= 0, got {lam!r}")
        self.lam = float(lam)
        if schedule is not None and not isinstance(schedule, SparsitySchedule):
            raise TypeError(f"schedule must be a SparsitySchedule (mest_schedule, "
                            f"constant_sparsity, polynomial_sparsity), got "
                            f"{type(schedule).__name__}")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        self.sparsity = None if schedule is not None else float(sparsity)
        self.mode = mode if schedule is None else "schedule"
        self.epochs = epochs
        self._mest_args = dict(update_every=update_every, search_end=search_end,
                               ems_bounds=tuple(ems_bounds), mutation=mutation)
        self.distribution = distribution
        self._select = dict(layers=None if layers is None else
                            ([layers] if isinstance(layers, str) else list(layers)),
                            exclude=[exclude] if isinstance(exclude, str) else list(exclude),
                            predicate=predicate, keep_first=keep_first,
                            keep_classifier=keep_classifier)
        self.seed = int(seed)
        self.verbose = int(verbose)
        self._given_schedule = schedule
        # Fails now on bad dT / search end; rebuilt for the real run length.
        self.schedule = self._make_schedule(epochs or 160)
        self.events: list[dict] = []
        self._initialized = False
        self._current = None  # training sparsity between updates
        self._grad_sums: dict = {}      # path -> tf.Variable (sync on read, summed)
        self._grad_start = None         # optimizer iteration when the sums started
        self._restored_grads = None     # sums from a checkpoint, for the next update

    def _make_schedule(self, epochs: int) -> SparsitySchedule:
        if self._given_schedule is not None:
            return self._given_schedule
        if self.mode == "static":
            return SparsitySchedule(self.sparsity, "random", (), epochs, name="static")
        return mest_schedule(epochs, self.sparsity, mode=self.mode, **self._mest_args)

    # -- Keras hooks -----------------------------------------------------------
    def set_model(self, model):
        super().set_model(model)
        # Unknown layer names fail here, before any training step.
        self.masked_paths(model)

    def set_params(self, params):
        super().set_params(params)
        if self.epochs is None and (params or {}).get("epochs") and not self._initialized:
            self.schedule = self._make_schedule(int(params["epochs"]))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.controller.register_state(self.STATE_NAME, self._get_state, self._set_state)

    def on_train_end(self, logs=None):
        self._disarm_gradients()
        self.controller.unregister_state(self.STATE_NAME)
        super().on_train_end(logs)

    def epoch_logs(self) -> dict:
        """`sparse/sparsity`: the fraction of zero weights over the masked kernels."""
        return {"sparse/sparsity": float(self.report().total)} if self._initialized else {}

    # -- state -----------------------------------------------------------------
    def _get_state(self):
        sums = {p: np.array(v.read_value().numpy()) for p, v in self._grad_sums.items()}
        return {"initialized": self._initialized, "current": self._current,
                "events": list(self.events), "grad_sums": sums or None,
                "grad_start": self._grad_start}

    def _set_state(self, state):
        self._initialized = bool(state["initialized"])
        self._current = state["current"]
        self.events = list(state["events"])
        self._restored_grads = state.get("grad_sums")
        self._grad_start = state.get("grad_start")

    # -- gradient sums for lam > 0 --------------------------------------------
    def _iterations(self) -> int:
        # The run's step: a growth that resets the optimizer restarts its count.
        return optimizer_step(self.model.optimizer)

    def _arm_gradients(self, epoch: int, paths, shapes) -> None:
        """Sums the gradients of the masked kernels during `epoch` if an
        update follows it; otherwise removes the hook (no per-step cost)."""
        if not (self.lam > 0 and self.schedule.at(epoch + 1) is not None):
            self._disarm_gradients()
            return
        with self.controller.scope():
            # Sync on read, summed: each replica adds its own gradient, a read
            # gives the sum over replicas (= the global batch's gradient).
            self._grad_sums = {p: tf.Variable(
                np.zeros(shapes[p], np.float32), trainable=False,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM, name=f"kgrow_grad_sum_{i}")
                for i, p in enumerate(paths)}
        self._grad_start = self._iterations()
        hooks = self.controller.hooks
        if _GRAD_HOOK not in hooks:
            hooks.add_gradient_transform(self._sum_gradients, name=_GRAD_HOOK,
                                         order=ORDER_MASKS - 1)
        else:
            self.controller.request_retrace()  # the step must add into the new sums

    def _disarm_gradients(self) -> None:
        self._grad_sums = {}
        if self.model is not None and _GRAD_HOOK in self.controller.hooks:
            self.controller.hooks.remove(_GRAD_HOOK)

    def _sum_gradients(self, grads, variables):
        sums = self._grad_sums
        for g, v in zip(grads, variables):
            if g is not None and v.path in sums:
                sums[v.path].assign_add(tf.cast(tf.convert_to_tensor(g), tf.float32))
        return grads

    def _mean_gradients(self, shapes) -> dict:
        """`{path: mean gradient of the last epoch}` (zeros where none was summed)."""
        if self._grad_sums:
            sums = {p: np.array(v.read_value().numpy()) for p, v in self._grad_sums.items()}
        else:
            sums = self._restored_grads or {}
        self._restored_grads = None
        steps = max(1, self._iterations() - int(self._grad_start or 0))
        missing = [p for p in shapes if p not in sums or np.shape(sums[p]) != shapes[p]]
        if missing:
            warnings.warn(f"SparseTraining(lam={self.lam}): no gradient sums for {missing[:4]} "
                          "(new or resized since the last epoch); their score is |w| alone.",
                          stacklevel=3)
        return {p: np.zeros(shapes[p]) if p in missing else np.asarray(sums[p]) / steps
                for p in shapes}

    # -- masks -----------------------------------------------------------------
    def masked_paths(self, model=None) -> list:
        """Variable paths this callback masks on `model` (default: the current one)."""
        return maskable_variables(model if model is not None else self.model, **self._select)

    def report(self):
        """`SparsityReport` of the masked kernels (actual zeros in the weights)."""
        return sparsity_report(self.model, paths=self.masked_paths())

    def flops_sparsity(self, model=None) -> dict:
        """`{path: density}` of the masked kernels, for `kgrow.flops.count(sparsity=)`."""
        model = self.model if model is None else model
        from kgrow.controller import TrainingController
        masks = Masks.of(TrainingController.of(model))
        return masks.density()

    def _densities(self, shapes, sparsity) -> dict:
        return {p: 1.0 - d for p, d in layer_densities(shapes, sparsity,
                                                       self.distribution).items()}

    def controlled_epoch_begin(self, epoch: int) -> None:
        weights = weights_by_path(self.model)
        paths = self.masked_paths()
        shapes = {p: tuple(weights[p].shape) for p in paths}
        self._update_masks(epoch, weights, paths, shapes)
        self._arm_gradients(epoch, paths, shapes)

    def _update_masks(self, epoch, weights, paths, shapes) -> None:
        masks = Masks.of(self.controller)
        current = masks.get()
        rng = np.random.default_rng([self.seed, int(epoch)])
        schedule = self.schedule
        if not self._initialized:
            s = schedule.initial_sparsity
            if schedule.initial == "random":
                new = random_masks(shapes, {p: 1 - v for p, v in
                                            self._densities(shapes, s).items()}, rng)
                info = None
            else:
                values = {p: weights[p].numpy() for p in paths}
                ones = {p: np.ones(shapes[p], bool) for p in paths}
                sp = self._densities(shapes, s)
                res = prune_and_grow(values, ones, sp, sp, rng=rng)
                new, info = res.masks, res
            self._initialized, self._current = True, s
            self._apply(masks, current, new, epoch, "initial", s, s, info)
            current = masks.get()
        update = schedule.at(epoch)
        if update is not None and any(e["epoch"] == int(epoch) and e["kind"] == "update"
                                      for e in self.events):
            update = None  # resumed inside this epoch: its update is in the restored masks
        want = self._densities(shapes, self._current)
        # Frozen kernels keep their weights and masks (SpFDE); only a variable
        # without a fitting mask (new or resized by growth) is set up anyway.
        trainable = {v.path for v in self.model.trainable_weights}
        frozen = [p for p in paths if p not in trainable]
        stale = [p for p in paths if p not in current or current[p].shape != shapes[p]
                 or (p in trainable and int(current[p].sum())
                     != int(round((1 - want[p]) * current[p].size)))]
        if update is None and not stale:
            return
        if update is not None:
            prune_to, grow_to, kind = update.prune_to, update.grow_to, "update"
            targets = [p for p in paths if p not in frozen or p in stale]
        else:
            # Another callback grew the model: its new entries are dense
            # (or pruned); bring those variables back to the training sparsity.
            prune_to = grow_to = self._current
            kind, targets = "repair", stale
        tshapes = {p: shapes[p] for p in targets}
        values = {p: weights[p].numpy() for p in targets}
        old = {p: current[p] if p in current and current[p].shape == shapes[p]
               else np.ones(shapes[p], bool) for p in targets}
        grads = (self._mean_gradients(tshapes) if self.lam > 0 and update is not None
                 else None)
        # Per-layer bounds over all masked variables (ERK depends on all shapes).
        prune_sp, grow_sp = self._densities(shapes, prune_to), self._densities(shapes, grow_to)
        res = prune_and_grow(values, old, {p: prune_sp[p] for p in targets},
                             {p: grow_sp[p] for p in targets}, grads=grads,
                             lam=self.lam if grads is not None else 0.0, rng=rng)
        self._current = grow_to
        self._apply(masks, current, res.masks, epoch, kind, prune_to, grow_to, res)
        skipped = [p for p in frozen if p not in targets]
        if skipped:
            self.events[-1]["frozen"] = skipped

    def _apply(self, masks, current, new, epoch, kind, prune_to, grow_to, res):
        merged = dict(current)  # masks of other owners stay as they are
        weights = weights_by_path(self.model)
        merged = {p: m for p, m in merged.items() if p in weights}
        merged.update(new)
        masks.set(merged)
        event = {"epoch": int(epoch), "kind": kind, "prune_to": float(prune_to),
                 "grow_to": float(grow_to)}
        if res is not None:
            event["pruned"] = {p: int(n) for p, n in res.pruned.items()}
            event["grown"] = {p: int(n) for p, n in res.grown.items()}
        report = sparsity_report({p: merged[p] for p in new})
        event["sparsity"] = round(report.total, 6)
        event["per_layer"] = {p: round(v, 6) for p, v in report.per_variable.items()}
        self.events.append(event)
        if self.verbose:
            moved = "" if res is None else (f", pruned {sum(res.pruned.values())}, grown "
                                            f"{sum(res.grown.values())}")
            print(f"SparseTraining epoch {epoch}: {kind} prune to {prune_to:.3f}, grow to "
                  f"{grow_to:.3f}{moved}; mask sparsity {report.total:.4f}")

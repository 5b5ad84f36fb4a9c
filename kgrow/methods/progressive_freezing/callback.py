"""ProgressiveFreezing: SpFDE's progressive layer freezing as a Keras callback.

Example:
    >>> cb = ProgressiveFreezing(0.25, epochs=160, interval=5)
    >>> cb.target_saving, cb.phase.name
    (0.25, 'FREEZE')
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from kgrow.controller import ControlledCallback, Phase
from kgrow.controller._variables import trainable_candidates
from kgrow.controller.callbacks import planned_changes
from kgrow.methods.progressive_freezing.functional import (GLOBAL_LR_SHAPES,
                                                           PAPER_FREEZE_FRACTION, FreezePlan,
                                                           _check_run, block_lr_rules, check_targets,
                                                           freeze_blocks, freeze_plan)

__all__ = ["ProgressiveFreezing", "default_interval"]

#: SpFDE on CIFAR: dT = 5 epochs of a 160-epoch run (MEST's mask-update interval).
PAPER_INTERVAL_FRACTION = 5.0 / 160.0


def default_interval(epochs: int) -> int:
    """dT scaled from the paper's CIFAR setting (5 of 160 epochs), at least 1.

    Example:
        >>> default_interval(160), default_interval(10)
        (5, 1)
    """
    return max(1, int(round(epochs * PAPER_INTERVAL_FRACTION)))


class ProgressiveFreezing(ControlledCallback):
    """Freezes the model's blocks front to back inside one `model.fit` (SpFDE, Sec. 4.2).

    From epoch T_frz (`start`) one more leading block freezes every `interval`
    epochs (single-shot: never unfrozen), as many blocks as `freeze_plan`
    needs for `target_saving` of the run's training FLOPs. Frozen blocks run
    forward only: their weights, masks and BatchNorm statistics stay fixed
    (`trainable=False`, BN in inference mode) and, as a leading prefix, they
    get no backward pass at all. Each block that will freeze gets its own
    cosine learning rate over its active epochs through one controller LR
    group per block (`block_lr_multiplier`; values change without retrace);
    the blocks that never freeze and the head follow the global schedule.

    With a growth callback in the same fit (`kgrow.callbacks.Growth` and the
    methods built on it), nothing freezes before the architecture's last
    planned change (`planned_changes`) has had an epoch of training: a block
    frozen and then widened or deepened would keep its new weights untrained
    forever, and one frozen at the growth step itself would never train
    them either. The plan is made on the model `fit` starts with, which is
    the full (final) architecture for Growth, and its saving is a fraction
    of the run at that architecture, so it adds to the growth's saving. An
    architecture change after the first freeze (a stage chosen at run time)
    stops training with an error.

    Logs `freeze/blocks` (blocks frozen), `freeze/frozen_fraction` (share of
    the trainable parameters frozen) and `freeze/step_flops_saving` (training
    FLOPs of one step saved now) at every epoch end. The plan, the schedule
    position and the events are controller state (`ControllerCheckpoint`
    resumes exactly); the frozen set and the LR-group values are the
    controller's own components.

    Args:
        target_saving: fraction of the run's training FLOPs to save (paper:
            up to 25%).
        epochs: epochs of the run (default: those `fit` runs).
        interval: dT, epochs between freezes (default: the paper's 5 of 160
            epochs, scaled to the run; give the sparse-mask update interval
            when composed with dynamic sparse training).
        start: T_frz (default: derived, see `freeze_plan`).
        blocks_per_event: blocks frozen at each event (paper: 1), or "auto": the
            fewest that reach `target_saving` in this run (1 when it suffices).
        blocks, unit: which layers freeze together (`find_freeze_blocks`).
        freeze_fraction: share of the layers at most frozen when T_frz is
            derived (paper: 2/3).
        block_lr: per-block cosine LR schedules (default True).
        global_lr: shape of the compiled global LR schedule the multipliers
            are relative to: "cosine" (over the run, no warm-up) or "constant".
        input_shape, sparsity: for the FLOPs count (`kgrow.flops.count`).
        verbose: 1 prints a line per freeze.

    Raises:
        ValueError: a bad setting (target outside (0, 1), interval < 1, T_frz
            beyond the run) at construction; an unreachable target, or T_frz
            before the architecture's last change, when training begins,
            before the first step.
        RuntimeError: the architecture changed after blocks froze.

    Attributes:
        plan: the `FreezePlan` (set when training begins).
        frozen_blocks: blocks frozen so far.
        events: one dict per freeze: epoch, blocks, layers.
    """

    phase = Phase.FREEZE
    drives = ("frozen set",)
    STATE_NAME = "progressive_freezing"

    def __init__(self, target_saving: float = 0.25, *, epochs: Optional[int] = None,
                 interval: Optional[int] = None, start: Optional[int] = None,
                 blocks_per_event: Union[int, str] = 1, blocks=None,
                 unit: str = "block", freeze_fraction: float = PAPER_FREEZE_FRACTION,
                 block_lr: bool = True, global_lr: str = "cosine", input_shape=None,
                 sparsity=None, verbose: int = 0):
        super().__init__()
        check_targets(target_saving, freeze_fraction)
        if global_lr not in GLOBAL_LR_SHAPES:
            raise ValueError(f"global_lr must be one of {GLOBAL_LR_SHAPES}, got {global_lr!r}.")
        if unit not in ("block", "stage"):
            raise ValueError(f"unit must be 'block' or 'stage', got {unit!r}.")
        if blocks_per_event != "auto" and (
                isinstance(blocks_per_event, bool) or not isinstance(blocks_per_event, int)
                or blocks_per_event < 1):
            raise ValueError(
                f"blocks_per_event must be an integer >= 1 or 'auto', got {blocks_per_event!r}.")
        if interval is not None or start is not None or epochs is not None:
            _check_run(epochs if epochs is not None else max(int(start or 0) + 1, 1),
                       interval if interval is not None else 1, start)
        self.target_saving = float(target_saving)
        self.epochs = epochs
        self.interval = interval
        self.start = start
        self.blocks_per_event = blocks_per_event
        self.blocks = blocks
        self.unit = unit
        self.freeze_fraction = float(freeze_fraction)
        self.block_lr = bool(block_lr)
        self.global_lr = global_lr
        self.input_shape = input_shape
        self.sparsity = sparsity
        self.verbose = int(verbose)
        self.plan: Optional[FreezePlan] = None
        self.frozen_blocks = 0
        self.events: list = []
        # Architecture changes (`controller.growth_history`) seen at the first
        # freeze: one more afterwards would grow frozen layers.
        self._changes_at_freeze: Optional[int] = None

    # -- state ---------------------------------------------------------------
    def _get_state(self) -> dict:
        return {"plan": self.plan.to_dict(), "frozen_blocks": int(self.frozen_blocks),
                "events": list(self.events), "changes_at_freeze": self._changes_at_freeze}

    def _set_state(self, state) -> None:
        self.plan = FreezePlan.from_dict(state["plan"])
        self.frozen_blocks = int(state["frozen_blocks"])
        self.events = list(state.get("events", []))
        self._changes_at_freeze = state.get("changes_at_freeze")

    # -- Keras hooks ---------------------------------------------------------
    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        epochs = int(self.epochs if self.epochs is not None else self.params["epochs"])
        interval = self.interval if self.interval is not None else default_interval(epochs)
        self.plan, self.frozen_blocks, self.events = None, 0, []
        self._changes_at_freeze = None
        # A checkpoint restored before this (ControllerCheckpoint earlier in
        # the list) sets the saved plan now; the model may then be a grown
        # stage, not the architecture the plan was made on.
        self.controller.register_state(self.STATE_NAME, self._get_state, self._set_state)
        if self.plan is not None:
            return
        changes = [e for e in planned_changes(self.model, "architecture", exclude=self)
                   if e < epochs]
        # Planned before the first step, so a bad setting fails early; a
        # checkpoint restored after this replaces it with the saved plan.
        self.plan = freeze_plan(self.model, self.target_saving, epochs, interval, self.start,
                                blocks_per_event=self.blocks_per_event, blocks=self.blocks,
                                unit=self.unit,
                                freeze_fraction=self.freeze_fraction,
                                input_shape=self.input_shape, sparsity=self.sparsity,
                                earliest=changes[-1] + 1 if changes else 0)

    def on_train_end(self, logs=None):
        self.controller.unregister_state(self.STATE_NAME)
        super().on_train_end(logs)

    def controlled_epoch_begin(self, epoch: int) -> None:
        plan = self.plan
        changes = len(self.controller.growth_history)
        if self._changes_at_freeze is not None and changes != self._changes_at_freeze:
            raise RuntimeError(
                f"ProgressiveFreezing: the architecture changed (growth step "
                f"{self.controller.growth_history[-1]}) after blocks froze at epoch "
                f"{self.events[0]['epoch']}; grown frozen layers would keep their new weights "
                f"untrained. Freezing waits for the architecture changes the other callbacks "
                f"plan (ControlledCallback.planned_changes, e.g. a Growth schedule's "
                f"boundaries; here the last is before epoch {plan.earliest}); a stage chosen at "
                f"run time (set_next_stage) must come before that.")
        k = plan.frozen_at(epoch)
        if k > self.frozen_blocks:
            if self._changes_at_freeze is None:
                self._changes_at_freeze = changes
            layers = freeze_blocks(self.controller, plan.groups[self.frozen_blocks:k])
            self.events.append({"epoch": int(epoch), "blocks": int(k), "layers": layers})
            if self.verbose:
                print(f"ProgressiveFreezing: epoch {epoch}: {k}/{len(plan.groups)} blocks "
                      f"frozen (step FLOPs -{plan.step_saving(k):.1%}).")
            self.frozen_blocks = k
        if self.block_lr and plan.num_frozen:
            # Same keys every epoch: only the multiplier values change (no retrace).
            rules = block_lr_rules(plan, epoch, self.global_lr)
            controller = self.controller
            controller.set_lr_multipliers({**controller.lr_multipliers, **rules})

    def epoch_logs(self) -> dict:
        """`freeze/blocks`, `freeze/frozen_fraction`, `freeze/step_flops_saving`."""
        return {"freeze/blocks": float(self.frozen_blocks),
                "freeze/frozen_fraction": self.frozen_fraction(),
                "freeze/step_flops_saving": float(self.plan.step_saving(self.frozen_blocks))}

    def frozen_fraction(self) -> float:
        """Share of the model's trainable parameters (all layers unfrozen) now frozen."""
        candidates = trainable_candidates(self.model)
        trainable = {id(v) for v in self.model.trainable_weights}
        total = sum(int(np.prod(v.shape)) for v in candidates)
        frozen = sum(int(np.prod(v.shape)) for v in candidates if id(v) not in trainable)
        return float(frozen / total) if total else 0.0

"""Prog: AutoProg's manual progressive learning of ViTs as one Keras callback.

Example:
    >>> from kgrow.methods.autoprog import Prog
    >>> cb = Prog(epochs=8)
    >>> cb.operator, cb.depth_mapping, cb.depth_source, cb.reset_optimizer
    ('mogrow', 'interpolation', 'ema', True)
    >>> Prog(schedule='{"stages": [{"epoch": 0, "depth": 0.5}, {"epoch": 2, "depth": 1.0}]}'
    ...      ).schedule.sizes("depth")
    [0.5, 1.0]
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from kgrow.callbacks.growth import Growth
from kgrow.methods.autoprog.functional import (MOGROW_EMA_HALF_LIFE_FRACTION,
                                               check_regularization_start, growth_operator,
                                               mogrow_ema_decay, prog_schedule,
                                               regularization_scales, vit_sizes)
from kgrow.schedules import GrowthSchedule

__all__ = ["Prog"]


def _as_schedule(schedule) -> Optional[GrowthSchedule]:
    if schedule is None or isinstance(schedule, GrowthSchedule):
        return schedule
    if isinstance(schedule, str):
        return GrowthSchedule.from_json(schedule)
    if isinstance(schedule, Mapping):
        return GrowthSchedule.from_dict(schedule)
    return GrowthSchedule(schedule)


def _drop_path_layers(model) -> list:
    from kgrow.surgery import blocks
    return [layer for layer in model.layers if blocks._is_drop_path(layer)]


def _drop_path_rates(model) -> list:
    out = []
    for layer in _drop_path_layers(model):
        config = layer.get_config()
        out.append(float(config.get("rate", config.get("drop_path_rate", 0.0)) or 0.0))
    return out


class Prog(Growth):
    """Progressive learning of a ViT (Li et al., AutoProg, CVPR 2022) inside one `model.fit`.

    Compile and pass the *full* ViT; the callback shrinks it to the first
    stage and grows it at each stage boundary, a configuration of
    `kgrow.callbacks.Growth`:

    * number of patches: the training images are resized in the input
      pipeline to the stage's resolution (a ``resizable=True`` bundle) and
      the position embedding follows the new patch grid. By default
      (``position_table="keep"``, the authors' code) its table stays at the
      full grid and the forward pass interpolates it (bicubic), so nothing
      of it is lost in a low-resolution stage;
    * depth: new blocks by one of the paper's operators, ``"mogrow"``
      (default: Interpolation whose grown model is loaded from a momentum
      (EMA) network), ``"interpolation"``, ``"stacking"`` or ``"randinit"``;
    * at each growth the optimizer restarts as a new one (moments and the
      count Adam's bias correction reads) while the learning-rate schedule
      continues at the run's step;
    * optionally adaptive regularization: RandAugment magnitude, stochastic
      depth and random-erasing probability ramp linearly with the stage from
      a fraction of their full value (off by default: it hurts DeiT).

    The default schedule is the paper's uniform linear one (`prog_schedule`:
    4 equal stages, ``linspace(0.5, 1, 4)`` of the resolution and of the
    depth). Give ``schedule=`` to run any other, e.g. the one an AutoProg
    search wrote: ``Prog(schedule=GrowthSchedule.from_json(text))`` replays
    it (a JSON string or dict is accepted too).

    Training data: a kgrow bundle loaded with ``resizable=True``; its
    selection is attached to the controller when ``fit`` gets
    ``bundle.train`` (else call ``TrainingController.of(model).
    attach_selection(bundle.selection)``).

    Args:
        schedule: explicit `GrowthSchedule` (or its JSON / dict); None builds
            `prog_schedule` from the options below once the model and the
            run length are known.
        epochs: epochs of the run (default: those `fit` runs).
        num_stages: stages of the default schedule (paper: 4).
        resolution_scale: first stage's resolution fraction (None: fixed).
        depth_scale: first stage's depth fraction (None: fixed).
        operator: "mogrow", "interpolation", "stacking" or "randinit".
        ema_half_life_epochs: MoGrow's momentum network half-life (default:
            the authors' decay 0.9996, 1.4% of the run).
        steps_per_epoch: optimizer steps per epoch, to turn the half-life
            into a per-step decay (default: what `fit` reports; kgrow
            bundles have no static length, so give it or `fit(...,
            steps_per_epoch=...)` with MoGrow).
        adaptive_regularization: ramp RandAugment magnitude, drop-path rate
            and random-erasing probability with the stage.
        regularization_start: starting multipliers of the ramp (default
            `REGULARIZATION_START`: RandAugment 0.5, drop path 0, erasing 0).
        max_drop_path: the full stochastic-depth rate (default: the largest
            rate of the model passed to `fit`).
        reset_optimizer: restart optimizer moments at each growth (paper).
        position_table: "keep" (default) or "resample" (see `Growth`).
        interpolation: interpolation of the position embedding.
        stage_chooser: see `Growth` (run-time choice of the next stage).
        seed: seed of RandInit's fresh blocks.
        verbose: 1 prints one line per growth.

    Raises:
        ValueError: before training, for a model without a kgrow
            `PositionEmbedding` (its number of patches cannot change), a
            resolution that is not a multiple of the patch size, an unknown
            operator, impossible stage counts, or adaptive regularization
            without an attached data selection.
    """

    EMA_NAME = "mogrow"
    STATE_NAME = "prog"

    def __init__(self, schedule=None, *, epochs: Optional[int] = None, num_stages: int = 4,
                 resolution_scale: Optional[float] = 0.5, depth_scale: Optional[float] = 0.5,
                 operator: str = "mogrow", ema_half_life_epochs: Optional[float] = None,
                 steps_per_epoch: Optional[int] = None,
                 adaptive_regularization: bool = False,
                 regularization_start: Optional[dict] = None,
                 max_drop_path: Optional[float] = None, reset_optimizer: bool = True,
                 position_table: str = "keep", interpolation: str = "bicubic",
                 stage_chooser=None, seed: int = 0, verbose: int = 1):
        from kgrow.methods.network_expansion.functional import _check_half_life
        self.operator = operator
        op = growth_operator(operator)
        if ema_half_life_epochs is not None:
            _check_half_life(ema_half_life_epochs)
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(
                steps_per_epoch, (int, np.integer)) or steps_per_epoch <= 0):
            raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
        if max_drop_path is not None and not 0.0 <= float(max_drop_path) < 1.0:
            raise ValueError(f"max_drop_path must be in [0, 1), got {max_drop_path!r}")
        self.explicit_schedule = _as_schedule(schedule)
        self.epochs = epochs
        self._schedule_args = dict(num_stages=num_stages, resolution_scale=resolution_scale,
                                   depth_scale=depth_scale)
        self.ema_half_life_epochs = ema_half_life_epochs
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.adaptive_regularization = bool(adaptive_regularization)
        self.regularization_start = check_regularization_start(regularization_start)
        self.max_drop_path = None if max_drop_path is None else float(max_drop_path)
        self.sizes: Optional[dict] = None
        if self.explicit_schedule is not None:
            initial = self.explicit_schedule
        else:
            # Fails now on bad settings; the real schedule needs the model.
            probe_epochs = epochs or num_stages
            initial = prog_schedule(probe_epochs, num_stages, resolution_scale, depth_scale,
                                    full_resolution=16 * 4, patch_size=4, full_depth=16)
        super().__init__(initial, depth_mapping=op["depth_mapping"],
                         depth_source=op["depth_source"], reset_optimizer=reset_optimizer,
                         # MoGrow carries its momentum network through growth and
                         # loads the grown model from it (after_growth).
                         reset_ema=op["depth_source"] != "ema",
                         reset_drop_path=True, seed=seed, position_table=position_table,
                         interpolation=interpolation, stage_chooser=stage_chooser,
                         verbose=verbose)

    # -- the schedule, once the model and the run length are known ------------
    def set_model(self, model):
        if self.sizes is None:
            self.sizes = vit_sizes(model)
            if self.max_drop_path is None:
                self.max_drop_path = max(_drop_path_rates(model) or [0.0])
            # The full model's rate, not the largest one left after the shrink
            # (which drops the last block and its top rate).
            self.reset_drop_path = self.max_drop_path
            self._rebuild_schedule()
        super().set_model(model)

    def on_run_epochs(self, epochs: int) -> None:
        self._rebuild_schedule()

    def _rebuild_schedule(self):
        if self.stage_index is not None or self.explicit_schedule is not None:
            return
        if self.sizes is None:
            return
        a = self._schedule_args
        epochs = self.epochs or self.schedule.total_epochs
        self.schedule = prog_schedule(
            epochs, a["num_stages"], a["resolution_scale"], a["depth_scale"],
            full_resolution=self.sizes["resolution"], patch_size=self.sizes["patch_size"],
            full_depth=self.sizes["depth"])

    # -- training --------------------------------------------------------------
    def on_train_begin(self, logs=None):
        params = self.params or {}
        if self.depth_source == "ema" and self.ema_decay is None:
            steps = self.steps_per_epoch or params.get("steps")
            if not steps:
                raise ValueError("Prog(operator='mogrow') needs the number of steps per epoch "
                                 "for its momentum network's half-life, and fit does not know "
                                 "it (a dataset of unknown length): pass Prog(..., "
                                 "steps_per_epoch=...) or fit(..., steps_per_epoch=...).")
            total = self.schedule.total_epochs or self.epochs or params.get("epochs")
            if self.ema_half_life_epochs is not None:
                from kgrow.methods.network_expansion import ema_decay
                self.ema_decay = ema_decay(self.ema_half_life_epochs, steps)
            else:
                self.ema_decay = mogrow_ema_decay(total, steps, MOGROW_EMA_HALF_LIFE_FRACTION)
        super().on_train_begin(logs)
        if self.adaptive_regularization and not callable(
                getattr(self.controller.selection, "set_augment_scale", None)):
            raise ValueError("Adaptive regularization sets the augmentation strengths through "
                             "the live data selection: train on a kgrow bundle's `train` or "
                             "call TrainingController.of(model).attach_selection("
                             "bundle.selection) before fit.")
        self.controller.register_state(self.STATE_NAME, self._get_prog_state,
                                       self._set_prog_state)

    def on_train_end(self, logs=None):
        self.controller.unregister_state(self.STATE_NAME)
        super().on_train_end(logs)

    def _get_prog_state(self):
        return {"max_drop_path": self.max_drop_path, "sizes": {
            k: list(v) if isinstance(v, tuple) else v for k, v in (self.sizes or {}).items()}}

    def _set_prog_state(self, state):
        self.max_drop_path = state["max_drop_path"]

    def regularization(self, stage_index: Optional[int] = None) -> Optional[dict]:
        """Adaptive regularization's multipliers at a schedule stage (None: off)."""
        if not self.adaptive_regularization:
            return None
        index = self.stage_index if stage_index is None else stage_index
        return regularization_scales(int(index or 0), len(self.schedule), self.regularization_start)

    def controlled_epoch_begin(self, epoch: int) -> None:
        scales = self.regularization(self.schedule.stage_index_at(epoch))
        if scales is not None:
            # Read by set_depth at the growth: new rates linspace(0, rate, depth).
            self.reset_drop_path = self.max_drop_path * scales["drop_path"]
        self._loaded_from_ema = False
        super().controlled_epoch_begin(epoch)
        if self._loaded_from_ema:
            self.events[-1]["loaded_from"] = "ema"
        if scales is not None:
            self.controller.selection.set_augment_scale(randaugment=scales["randaugment"],
                                                        erasing=scales["erasing"])
            self._apply_drop_path(self.reset_drop_path)

    def _apply_drop_path(self, rate: float) -> None:
        """Rebuilds the model with drop-path rates linspace(0, rate, n) when they differ
        (a stage whose depth did not change still ramps its stochastic depth)."""
        current = _drop_path_rates(self.model)
        if not current:
            return
        wanted = list(np.linspace(0.0, rate, len(current))) if len(current) > 1 else [0.0]
        if np.allclose(current, wanted, atol=1e-9):
            return
        from kgrow.surgery import find_stages, set_depth
        depths = [s.depth for s in find_stages(self.model, spec=self.block_spec)]
        with self.controller.scope():
            result = set_depth(self.model, depths, mapping=lambda old, new: list(range(new)),
                               spec=self.block_spec, reset_drop_path=float(rate))
        self.controller.replace_model(result)

    def after_growth(self, result, stage: int, initial: bool) -> None:
        if initial or self.depth_source != "ema":
            return
        # MoGrow: the grown model is the (carried) momentum network, so that
        # every block, not only the new ones, continues from the EMA weights.
        self.controller.ema(self.EMA_NAME).assign_to()
        self._loaded_from_ema = True  # noted in this growth's event, appended after

    def epoch_logs(self) -> dict:
        out = super().epoch_logs()
        scales = self.regularization() if self.current is not None else None
        if scales is not None:
            out.update({f"prog/{k}_scale": v for k, v in scales.items()})
        return out

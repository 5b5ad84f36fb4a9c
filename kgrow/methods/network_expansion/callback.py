"""NetworkExpansion: the paper's CNN and ViT recipes as one Keras callback.

Example:
    >>> import keras
    >>> from kgrow.methods.network_expansion import NetworkExpansion
    >>> cb = NetworkExpansion("vit", epochs=10, depths=(6, 12))
    >>> cb.schedule.stages[1].epoch, cb.reset_optimizer, cb.depth_mapping
    (5, True, 'expansion')
    >>> NetworkExpansion("cnn", epochs=9).initializer
    Orthogonal(fan_out=0.0)
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from kgrow.callbacks.growth import Growth
from kgrow.methods.network_expansion.functional import (PAPER_EMA_HALF_LIFE_FRACTION,
                                                        _check_half_life, cnn_schedule,
                                                        depth_weight_decay, ema_decay,
                                                        vit_schedule)
from kgrow.surgery.parameterization import (OPTIMIZER_RULES, fan_in_initialize,
                                            fan_in_lr_factors, layer_fans, optimizer_rule)

__all__ = ["NetworkExpansion"]

MODES = ("cnn", "vit")


class NetworkExpansion(Growth):
    """Network Expansion (Ding et al., CVPR 2023) inside one `model.fit`.

    Compile and pass the *full* model; the callback shrinks it to the
    starting sub-network at the first epoch and expands it at every stage
    boundary (equal-length stages), a configuration of `kgrow.callbacks.Growth`:

    * ``mode="cnn"``: width ``start_width -> 1`` of every resizable channel
      group (optionally depth ``start_depth -> 1`` too, new blocks starting as
      identities); new filters orthogonal to the kept filters and to each
      other with matched norms; the weights reading the new channels start at
      zero (``fan_out=0``, function-preserving) or as small orthogonal rows;
      optimizer state carried.
    * ``mode="vit"``: depth ``depths[0] -> ... -> full``; an EMA of the model is
      kept every step (decay from a half-life in epochs); at each expansion
      the EMA copies of the last k blocks follow the online ones
      (``"expansion"``) or are stacked at the end (``"stack"``); stochastic-
      depth rates reset to ``linspace(0, max_rate, depth)``; the EMA restarts
      from the grown model; optimizer moments reset (the paper; or carried)
      while the LR schedule continues; optionally weight decay scaled by
      ``depth / final_depth``.

    Args:
        mode: "cnn" or "vit".
        epochs: epochs of the run (default: those `fit` runs).
        num_stages: CNN stages (default 3).
        start_width: CNN width fraction of the first stage, in (0, 1].
        start_depth: CNN depth fraction of the first stage (None: full depth).
        stage_epochs: first epoch of each CNN stage (default equal lengths).
        widths: CNN width of each stage, increasing to 1 (default
            ``linspace(start_width, 1, num_stages)``), e.g. ``(0.25, 0.5, 1)``.
        depth_fractions: CNN fraction of each network stage's blocks per
            expansion stage, ending at 1, e.g. ``(2/3, 2/3, 1)`` with
            ``widths=(0.5, 1, 1)``: with both lists one dimension may pause
            while the other grows (instead of ``start_depth``).
        fan_out: CNN: norm of the new channels' fan-out relative to the
            existing rows (0: zero, exact).
        rescale: CNN: None (the paper), "sqrt" or "linear": variance
            transfer's rescaling of the old fan-out where a BatchNorm undoes
            it (`kgrow.growth.Orthogonal`), still exact.
        depths: ViT blocks per stage (default: half the blocks, then all).
        expansion: ViT "expansion" (interleave) or "stack".
        ema_half_life_epochs: ViT EMA half-life (default: the paper's,
            4.6% of the run).
        steps_per_epoch: ViT: optimizer steps per epoch, to turn the
            half-life into a per-step decay (default: what `fit` reports;
            give it for datasets of unknown length, e.g. kgrow bundles).
        reset_optimizer: default True for "vit" (the paper), False for "cnn".
        max_drop_path: ViT maximum stochastic-depth rate after each
            expansion (default: the largest rate of the model).
        scale_weight_decay: ViT: weight decay of each stage is the compiled
            one times ``depth / final_depth``.
        parameterize: CNN: train under the fan-in-aware parameterization
            (`kgrow.surgery.fan_in_initialize` at the start of a fresh run,
            and after every expansion per-layer LR factors relative to the
            full model, `kgrow.surgery.fan_in_lr_factors`, set as the
            controller's per-entry LR scales). True picks muP's rule from
            the compiled optimizer (SGD: "sgd"; Adam, AdamW, Adamax, Nadam:
            "adam"); or give "sgd" / "adam". Default False (the paper).
        seed: seed of new filters.
        verbose: 1 prints one line per expansion.

    Raises:
        ValueError: a bad setting (start width <= 0, EMA half-life <= 0,
            unknown mode, depths that do not end at the full depth, a ViT
            schedule on a model without blocks), before training starts.
    """

    EMA_NAME = "network_expansion"
    STATE_NAME = "network_expansion"

    def __init__(self, mode: str = "cnn", *, epochs: Optional[int] = None,
                 num_stages: int = 3, start_width: float = 0.5,
                 start_depth: Optional[float] = None,
                 stage_epochs: Optional[Sequence[int]] = None,
                 widths: Optional[Sequence[float]] = None,
                 depth_fractions: Optional[Sequence[float]] = None, fan_out: float = 0.0,
                 rescale: Optional[str] = None,
                 depths: Optional[Sequence[int]] = None, expansion: str = "expansion",
                 ema_half_life_epochs: Optional[float] = None,
                 steps_per_epoch: Optional[int] = None,
                 reset_optimizer: Optional[bool] = None,
                 max_drop_path: Optional[float] = None, scale_weight_decay: bool = False,
                 parameterize=False, seed: int = 0, verbose: int = 1):
        from kgrow.growth import Orthogonal
        if mode not in MODES:
            raise ValueError(f"NetworkExpansion mode must be one of {MODES}, got {mode!r}")
        if expansion not in ("expansion", "stack"):
            raise ValueError(f"expansion must be 'expansion' (interleave EMA blocks after the "
                             f"last online ones) or 'stack', got {expansion!r}")
        if ema_half_life_epochs is not None:
            _check_half_life(ema_half_life_epochs)
        if parameterize not in (False, True, *OPTIMIZER_RULES):
            raise ValueError(f"parameterize must be False, True (the rule of the compiled "
                             f"optimizer) or one of {OPTIMIZER_RULES}, got {parameterize!r}")
        if rescale is not None and mode != "cnn":
            raise ValueError("rescale applies to width expansion, mode='cnn'")
        if parameterize and mode != "cnn":
            raise ValueError("parameterize scales learning rates with layer widths: it applies "
                             "to width expansion, mode='cnn'")
        self.mode = mode
        self.parameterize = parameterize
        self.lr_rule: Optional[str] = None
        self.reference: Optional[dict] = None
        self.epochs = epochs
        self._schedule_args = dict(num_stages=num_stages, start_width=start_width,
                                   start_depth=start_depth, stage_epochs=stage_epochs,
                                   widths=None if widths is None else tuple(widths),
                                   depth_fractions=None if depth_fractions is None
                                   else tuple(depth_fractions),
                                   depths=None if depths is None else tuple(depths))
        self.ema_half_life_epochs = ema_half_life_epochs
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int)
                                            or steps_per_epoch <= 0):
            raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
        self.steps_per_epoch = steps_per_epoch
        self.scale_weight_decay = bool(scale_weight_decay)
        self.base_weight_decay = None
        self.full_depth = None
        # Fails now on a bad fraction; the real schedule needs the run length.
        if depth_fractions is not None and mode != "cnn":
            raise ValueError("depth_fractions are the CNN's blocks per stage as fractions; "
                             "a ViT's depth schedule is depths=(blocks, ...)")
        placeholder = max(num_stages, len(depths or (6, 12)), len(widths or ()),
                          len(depth_fractions or ()),
                          1 + max(stage_epochs or [0]))
        schedule = self._make_schedule(epochs or placeholder, full_depth=None)
        if mode == "cnn":
            kwargs = dict(initializer=Orthogonal(fan_out=fan_out, rescale=rescale),
                          depth_mapping="interpolation",
                          depth_source="identity",
                          reset_optimizer=bool(reset_optimizer) if reset_optimizer is not None
                          else False)
        else:
            kwargs = dict(depth_mapping=expansion, depth_source="ema",
                          reset_optimizer=True if reset_optimizer is None else
                          bool(reset_optimizer),
                          reset_drop_path=True if max_drop_path is None else float(max_drop_path))
        super().__init__(schedule, reset_ema=True, seed=seed, verbose=verbose, **kwargs)

    def _make_schedule(self, epochs: int, full_depth: Optional[int]):
        a = self._schedule_args
        if self.mode == "cnn":
            return cnn_schedule(epochs, num_stages=a["num_stages"], start_width=a["start_width"],
                                start_depth=a["start_depth"], stage_epochs=a["stage_epochs"],
                                widths=a["widths"], depth_fractions=a["depth_fractions"])
        depths = a["depths"]
        if depths is None:
            full = full_depth or 12
            depths = (max(1, full // 2), full)
        return vit_schedule(epochs, depths, full_depth=full_depth)

    # The schedule is final once the run length and (ViT) the full depth are
    # known: at `set_model` (depth) and `set_params` (epochs), both before
    # any training step.
    def set_model(self, model):
        if self.parameterize and self.reference is None:
            self.reference = layer_fans(model)  # the full model's fans, before any shrink
        if self.mode == "vit" and self.full_depth is None:
            from kgrow.surgery import find_stages
            stages = find_stages(model, spec=self.block_spec)
            if len(stages) != 1:
                raise ValueError(
                    f"NetworkExpansion(mode='vit') grows the depth of one stack of blocks, "
                    f"but model {model.name!r} has {len(stages)} stages of repeated blocks "
                    f"({'none found' if not stages else [s.depth for s in stages]}); use "
                    "mode='cnn' (width), or Growth with a depth schedule.")
            self.full_depth = int(stages[0].depth)
            self._rebuild_schedule()
        super().set_model(model)

    def on_run_epochs(self, epochs: int) -> None:
        self._rebuild_schedule()

    def _rebuild_schedule(self):
        if self.stage_index is not None or self.epochs is None and self.mode == "cnn":
            return
        epochs = self.epochs or self.schedule.total_epochs
        self.schedule = self._make_schedule(epochs, self.full_depth)

    def on_train_begin(self, logs=None):
        params = self.params or {}
        if self.mode == "vit":
            steps = self.steps_per_epoch or params.get("steps")
            if not steps:
                raise ValueError("NetworkExpansion(mode='vit') needs the number of steps per "
                                 "epoch for its EMA half-life, and fit does not know it (a "
                                 "dataset of unknown length): pass "
                                 "NetworkExpansion(..., steps_per_epoch=...) or "
                                 "fit(..., steps_per_epoch=...)")
            half_life = self.ema_half_life_epochs
            if half_life is None:
                half_life = PAPER_EMA_HALF_LIFE_FRACTION * self.schedule.total_epochs
            self.ema_decay = ema_decay(half_life, steps)
        if self.parameterize:
            self.lr_rule = optimizer_rule(getattr(self.model, "optimizer", None),
                                          self.parameterize)
            if self.stage_index is None:  # a fresh run, not a resumed one
                fan_in_initialize(self.model, seed=self.seed)
        super().on_train_begin(logs)
        optimizer = getattr(self.model, "optimizer", None)
        if self.base_weight_decay is None and optimizer is not None:
            self.base_weight_decay = getattr(optimizer, "weight_decay", None)
        self.controller.register_state(self.STATE_NAME, self._get_ne_state, self._set_ne_state)

    def on_train_end(self, logs=None):
        self.controller.unregister_state(self.STATE_NAME)
        super().on_train_end(logs)

    def _get_ne_state(self):
        return {"base_weight_decay": self.base_weight_decay, "full_depth": self.full_depth,
                "reference": {k: list(v) for k, v in (self.reference or {}).items()}}

    def _set_ne_state(self, state):
        self.base_weight_decay = state["base_weight_decay"]
        self.full_depth = state["full_depth"]
        if state.get("reference"):
            self.reference = {k: tuple(v) for k, v in state["reference"].items()}

    def after_growth(self, result, stage: int, initial: bool) -> None:
        super().after_growth(result, stage, initial)
        if self.parameterize:
            self.apply_lr_factors()

    def apply_lr_factors(self) -> None:
        """Sets the fan-in LR factors of the model as it is now (1 where the width is full)."""
        from kgrow.controller.lr_scales import LRScales
        factors = fan_in_lr_factors(self.model, self.reference, optimizer=self.lr_rule)
        LRScales.of(self.controller).set({
            v.path: np.full(tuple(v.shape), factors[layer.name], np.float32)
            for layer in self.model.layers if factors.get(layer.name, 1.0) != 1.0
            for v in layer.trainable_weights})

    def controlled_epoch_begin(self, epoch: int) -> None:
        super().controlled_epoch_begin(epoch)
        # Every epoch, not only at expansions: a resumed run's optimizer comes
        # back with the compiled weight decay, whatever stage it resumes in.
        self._apply_weight_decay()

    def stage_weight_decay(self) -> Optional[float]:
        """The weight decay of the current stage (None: not scaled)."""
        if (not self.scale_weight_decay or not self.base_weight_decay
                or self.stage_index is None):
            return None
        fraction = self.schedule.stages[self.stage_index].depth
        if fraction is None or not self.full.stage_depths:
            return float(self.base_weight_decay)
        return depth_weight_decay(self.base_weight_decay, sum(self.full.depths_at(fraction)),
                                  sum(self.full.stage_depths))

    def _apply_weight_decay(self):
        wanted = self.stage_weight_decay()
        optimizer = getattr(self.model, "optimizer", None)
        if wanted is None or optimizer is None or optimizer.weight_decay == wanted:
            return
        # A Python float read when the train function is traced: retrace.
        optimizer.weight_decay = wanted
        self.controller.request_retrace()
        if self.events:
            self.events[-1]["weight_decay"] = wanted

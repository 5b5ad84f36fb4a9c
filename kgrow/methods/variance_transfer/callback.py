"""`VarianceTransferGrowth`: paper 001's width growth inside one `model.fit`."""
from __future__ import annotations

from typing import Optional

import numpy as np

from kgrow.callbacks.growth import Growth
from kgrow.controller.callbacks import fit_argument
from kgrow.methods.variance_transfer.functional import (BATCH_LR_RULES, OPTIMIZER_RULES,
                                                        PairedVarianceTransfer, apply_lr_scales,
                                                        batch_lr_factor, carry_partitions,
                                                        check_batch_kernels,
                                                        check_batch_schedule,
                                                        fan_in_initialize, fan_in_lr_factors,
                                                        initial_partitions, layer_fans,
                                                        partition_lr_scales)

__all__ = ["VarianceTransferGrowth"]


def _trainable_shapes(model) -> dict:
    return {v.path: tuple(v.shape) for v in model.trainable_weights}


class VarianceTransferGrowth(Growth):
    """Grows width with variance transfer and rebalances the stages' learning rates.

    Paper defaults: the model you compile is re-initialized fan-in-aware
    (`fan_in_initialize`) at the start of a fresh run, shrunk to the first
    stage, and widened at each stage boundary with `PairedVarianceTransfer`
    pairs in every resizable channel group (residual and other tied groups
    together, as `kgrow.surgery.channel_groups` ties them), function
    preserving at each growth. After every growth the per-entry learning
    rates are recomputed: entries the stage ``t`` added get
    ``lr_t = lr_0 * ||W_dt||_F / ||W_0||_F`` (`partition_lr_scales`), times
    the layer's muP factor relative to the full model (`fan_in_lr_factors`).
    The partitions are in controller checkpoints (state "variance_transfer").

    Args:
        schedule: a width `GrowthSchedule` (e.g. ``GrowthSchedule.linear(E,
            num_stages=4, start=0.25)`` for 1/4 -> 1 in equal stages).
        rescale: "sqrt" (default), "linear" or None (see `PairedVarianceTransfer`).
        noise: symmetry-breaking noise of the pairs (0: exact growth).
        parameterize: re-initialize fan-in-aware and apply the muP LR factors.
        optimizer_rule: "sgd" or "adam" (AdamW), for the muP LR factors.
        lr_adaptation: rebalance the stages' learning rates.
        lr_scope: "variable" (each variable's own partitions) or "global".
        allow_unpaired: accept growths that add an odd number of channels to
            a group (the last one then has zero fan-out: still exact, but not a
            pair). False (default) raises before training.
        batch_sizes: optional batch size per schedule stage (batch-size
            adaptation: larger batches as the network grows). The data must
            be a kgrow bundle built with ``elastic_batch=True``; each size
            must divide the training set. At each stage the bundle's live
            batch size changes, the epoch's step count follows inside the
            same `fit`, and every learning rate is multiplied by
            `batch_lr_factor` of the stage's batch over the bundle's own (the
            batch the compiled learning rate is for). Use a schedule that
            follows epochs (`kgrow.training.WarmupCosine` with
            ``steps_per_epoch``), or it ends early when epochs get shorter.
        batch_lr_rule: "linear" (SGD: Goyal et al. 2017), "sqrt" (Adam:
            Malladi et al. 2022) or None (no change); default by
            `optimizer_rule`.
        **kwargs: passed to `kgrow.callbacks.Growth` (seed, verbose, ...).

    Example:
        >>> import keras, numpy as np
        >>> from kgrow.schedules import GrowthSchedule
        >>> inp = keras.Input((4,))
        >>> h = keras.layers.Dense(8, activation="relu", name="h")(inp)
        >>> model = keras.Model(inp, keras.layers.Dense(2, name="out")(h))
        >>> model.compile(keras.optimizers.SGD(0.01), "mse")
        >>> cb = VarianceTransferGrowth(GrowthSchedule.linear(2, num_stages=2, start=0.5),
        ...                             verbose=0)
        >>> x = np.ones((8, 4), "float32"); y = np.zeros((8, 2), "float32")
        >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
        >>> model.get_layer("h").units, sorted(np.unique(cb.partitions["h/kernel"]).tolist())
        (8, [0, 1])
    """

    STATE_NAME = "variance_transfer"

    def __init__(self, schedule, *, rescale: Optional[str] = "sqrt", noise: float = 0.0,
                 parameterize: bool = True, optimizer_rule: str = "sgd",
                 lr_adaptation: bool = True, lr_scope: str = "variable",
                 allow_unpaired: bool = False, batch_sizes=None,
                 batch_lr_rule: Optional[str] = "auto", **kwargs):
        if optimizer_rule not in OPTIMIZER_RULES:
            raise ValueError(f"optimizer_rule must be one of {OPTIMIZER_RULES}, got "
                             f"{optimizer_rule!r}")
        if lr_scope not in ("variable", "global"):
            raise ValueError(f"lr_scope must be 'variable' or 'global', got {lr_scope!r}")
        if "initializer" in kwargs:
            raise ValueError("VarianceTransferGrowth grows with PairedVarianceTransfer; set "
                             "`rescale`/`noise` instead of `initializer` (or use Growth).")
        super().__init__(schedule, initializer=PairedVarianceTransfer(rescale, noise), **kwargs)
        self.parameterize = parameterize
        self.optimizer_rule = optimizer_rule
        self.lr_adaptation = lr_adaptation
        self.lr_scope = lr_scope
        self.allow_unpaired = allow_unpaired
        if batch_lr_rule == "auto":
            batch_lr_rule = "linear" if optimizer_rule == "sgd" else "sqrt"
        if batch_lr_rule not in BATCH_LR_RULES:
            raise ValueError(f"batch_lr_rule must be one of {BATCH_LR_RULES} or 'auto', got "
                             f"{batch_lr_rule!r}")
        if batch_sizes is not None:
            batch_sizes = [b for b in batch_sizes]
            if len(batch_sizes) != len(self.schedule.stages):
                raise ValueError(f"batch_sizes has {len(batch_sizes)} entries for the "
                                 f"schedule's {len(self.schedule.stages)} stages; give one "
                                 "batch size per stage.")
            check_batch_schedule(batch_sizes, None, 1)  # positive ints; the data comes later
        self.batch_sizes = batch_sizes
        self.batch_lr_rule = batch_lr_rule
        self.base_batch: Optional[int] = None
        self.reference: Optional[dict] = None
        self.partitions: dict = {}
        self.lr_route: Optional[str] = None

    def set_model(self, model):
        if self.reference is None:
            self.reference = layer_fans(model)  # the full model's fans, before any shrink
        super().set_model(model)
        if not self.allow_unpaired and self.stage_index is None:
            self._check_pairs()

    def _check_pairs(self):
        """Every growth must add an even number of channels to every group it widens."""
        if "width" not in self.schedule.quantities:
            return
        sizes = [self.full.width_targets(st.width, self.full.groups)
                 for st in self.schedule.stages if st.width is not None]
        for i in range(1, len(sizes)):
            odd = {g: n - sizes[i - 1][g] for g, n in sizes[i].items()
                   if (n - sizes[i - 1][g]) % 2}
            if odd:
                raise ValueError(
                    f"growth to stage {i} adds an odd number of channels to groups "
                    f"{dict(list(odd.items())[:5])}: variance transfer adds channels in "
                    "cancelling pairs; choose widths whose channel counts differ by even "
                    "numbers, or pass allow_unpaired=True (the extra channel gets zero "
                    "fan-out).")

    def on_train_begin(self, logs=None):
        if self.batch_sizes is not None:
            self._check_batch_data()
        if self.parameterize and self.stage_index is None:
            fan_in_initialize(self.model, seed=self.seed)
        super().on_train_begin(logs)
        self.controller.register_state(self.STATE_NAME, self._get_vt_state, self._set_vt_state)

    def on_train_end(self, logs=None):
        self.controller.unregister_state(self.STATE_NAME)
        super().on_train_end(logs)

    def _get_vt_state(self):
        return {"partitions": {p: np.asarray(a) for p, a in self.partitions.items()},
                "reference": {k: list(v) for k, v in (self.reference or {}).items()}}

    def _set_vt_state(self, state):
        self.partitions = {p: np.asarray(a, np.int32) for p, a in state["partitions"].items()}
        self.reference = {k: tuple(v) for k, v in state["reference"].items()}

    def _check_batch_data(self) -> None:
        """Batch-size adaptation needs an elastic kgrow bundle each size divides."""
        data = fit_argument(self.model)
        selection = getattr(data, "selection", None)
        if selection is None or not hasattr(selection, "set_batch_size"):
            raise ValueError("VarianceTransferGrowth(batch_sizes=...) changes the batch size "
                             "inside fit: train on a kgrow bundle's `train` built with "
                             "kgrow.data.load(..., elastic_batch=True).")
        if selection.fixed_batch_sizes:
            raise ValueError(f"VarianceTransferGrowth(batch_sizes=...): this bundle's batch "
                             f"size is fixed at {sorted(selection.fixed_batch_sizes)}; build it "
                             "with elastic_batch=True.")
        check_batch_schedule(self.batch_sizes, selection.num_train, 1)
        check_batch_kernels(self.batch_sizes, self.model)
        self.base_batch = int(data.bundle_batch_size)

    def _set_stage_batch(self, stage: int) -> bool:
        """Sets `stage`'s live batch size; whether it changed."""
        if self.batch_sizes is None:
            return False
        selection = self.controller.selection
        want = int(self.batch_sizes[stage])
        if selection.current_batch_size() == want:
            return False
        selection.set_batch_size(want)
        return True

    def batch_lr_factor(self) -> float:
        """The learning-rate factor of the live batch size over the bundle's own."""
        if self.batch_sizes is None or not self.base_batch:
            return 1.0
        live = self.controller.selection.current_batch_size() or self.base_batch
        return batch_lr_factor(live, self.base_batch, self.batch_lr_rule)

    def after_growth(self, result, stage: int, initial: bool) -> None:
        shapes = _trainable_shapes(self.model)
        if initial or not self.partitions:
            self.partitions = initial_partitions(shapes)
        else:
            self.partitions = carry_partitions(self.partitions, result.plan, shapes, stage)
        self._set_stage_batch(stage)
        self.apply_learning_rates()

    def controlled_epoch_begin(self, epoch: int) -> None:
        super().controlled_epoch_begin(epoch)
        # A stage reached without surgery (the model already had its sizes)
        # still takes its batch size.
        if self.stage_index is not None and self._set_stage_batch(self.stage_index):
            self.apply_learning_rates()

    def learning_rate_scales(self) -> dict:
        """``{variable path: element-wise LR factor}`` for the model as it is now."""
        base = {}
        if self.parameterize:
            factors = fan_in_lr_factors(self.model, self.reference, optimizer=self.optimizer_rule)
            for layer in self.model.layers:
                if layer.name in factors:
                    for v in layer.trainable_weights:
                        base[v.path] = factors[layer.name]
        weights = {v.path: v.numpy() for v in self.model.trainable_weights}
        parts = self.partitions if self.lr_adaptation else {
            p: np.zeros_like(a) for p, a in self.partitions.items()}
        scales = partition_lr_scales(parts, weights, scope=self.lr_scope, base=base)
        factor = self.batch_lr_factor()
        return scales if factor == 1.0 else {p: a * factor for p, a in scales.items()}

    def apply_learning_rates(self) -> None:
        """Recomputes the scales and hands them to the controller (`apply_lr_scales`)."""
        if not (self.parameterize or self.lr_adaptation or self.batch_sizes is not None):
            return
        # Entries at factor 1 everywhere are left out: they would only add work to the step.
        scales = {p: a for p, a in self.learning_rate_scales().items() if np.any(a != 1.0)}
        if scales or self.lr_route is not None:
            self.lr_route = apply_lr_scales(self.controller, scales)

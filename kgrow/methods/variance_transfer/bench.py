"""Bench methods of variance-transfer growth, registered lazily with `kgrow.bench`.

The paper's ablation as methods (each grows width 1/4 -> 1 in equal stages,
at most 4, over the profile's epochs):

* ``vt_net2net``: Net2Net copies (`Growth(initializer="net2net")`);
* ``vt_plain``: plain paired growth with the init-rule scales, no rescaling
  (the engine's `VarianceTransfer()`);
* ``vt_rescale``: + variance transfer (`PairedVarianceTransfer`, sqrt rule);
* ``vt_rescale_lr``: + per-stage LR adaptation;
* ``variance_transfer``: the full method (+ fan-in parameterization and
  muP LR factors);
* ``variance_transfer_batch``: the full method with batch-size adaptation:
  the batch grows with the width, stage ``s`` of ``S`` at about
  ``(s + 1) / S * 4`` times the profile's batch (the nearest divisor of the
  training set), learning rates scaled by the rule of the optimizer.
"""
from __future__ import annotations

__all__ = ["METHODS", "ABLATION"]

#: name -> "module:attribute" of the factory (imported when first used).
METHODS = {name: f"{__name__}:{name}" for name in
           ("vt_net2net", "vt_plain", "vt_rescale", "vt_rescale_lr", "variance_transfer",
            "variance_transfer_batch")}
#: The ablation rows in the paper's order (the baseline runs first anyway).
ABLATION = ("vt_net2net", "vt_plain", "vt_rescale", "vt_rescale_lr", "variance_transfer")


def _schedule(context):
    from kgrow.schedules import GrowthSchedule
    epochs = int(context.train.epochs)
    return GrowthSchedule.linear(epochs, num_stages=min(4, epochs), start=0.25)


def _plain_growth(context, initializer):
    from kgrow.callbacks import Growth
    return context.build_model(), [Growth(_schedule(context), initializer=initializer)]


def _vt(context, **kwargs):
    from kgrow.methods.variance_transfer.callback import VarianceTransferGrowth
    rule = "adam" if str(context.train.optimizer).lower().startswith("adam") else "sgd"
    return context.build_model(), [VarianceTransferGrowth(_schedule(context),
                                                          optimizer_rule=rule, **kwargs)]


def vt_net2net(build_model, context):
    """Net2Net growth, 1/4 -> 1 width."""
    return _plain_growth(context, "net2net")


def vt_plain(build_model, context):
    """Paired growth with the init-rule scales and no rescaling."""
    from kgrow.growth import VarianceTransfer
    return _plain_growth(context, VarianceTransfer())


def vt_rescale(build_model, context):
    """+ variance transfer of the pairs and sqrt rescaling."""
    return _vt(context, parameterize=False, lr_adaptation=False)


def vt_rescale_lr(build_model, context):
    """+ per-stage learning-rate adaptation."""
    return _vt(context, parameterize=False, lr_adaptation=True)


def variance_transfer(build_model, context):
    """The full method: fan-in parameterization, variance transfer, LR adaptation."""
    return _vt(context)


def nearest_divisor(n: int, target: float, multiple_of: int = 1) -> int:
    """The divisor of `n` closest to `target` (the smaller one on a tie) that is
    a multiple of `multiple_of`.

    Raises:
        ValueError: `n` has no divisor that is a multiple of `multiple_of`.

    Example:
        >>> nearest_divisor(60000, 256), nearest_divisor(10000, 384)
        (250, 400)
        >>> nearest_divisor(60000, 384), nearest_divisor(60000, 384, multiple_of=2)
        (375, 400)
    """
    divisors = [d for d in range(multiple_of, int(n) + 1, multiple_of) if n % d == 0]
    if not divisors:
        raise ValueError(f"{n} training samples have no batch size that is a multiple of "
                         f"{multiple_of}; use a subset that is.")
    return min(divisors, key=lambda d: (abs(d - target), d))


def stage_batch_sizes(num_train: int, base_batch: int, num_stages: int,
                      final_multiple: float = 4.0) -> list:
    """Batch sizes growing linearly with the stage, to `final_multiple` x the base.

    Even divisors of the training set only: odd batches crash TensorFlow's
    oneDNN on the narrow strided shortcuts of grown ResNets
    (`check_batch_kernels`).

    Example:
        >>> stage_batch_sizes(60000, 128, 4)
        [120, 250, 400, 500]
    """
    return [nearest_divisor(num_train, base_batch * final_multiple * (s + 1) / num_stages, 2)
            for s in range(num_stages)]


def variance_transfer_batch(build_model, context):
    """The full method with batch-size adaptation (larger batches as the network grows)."""
    schedule = _schedule(context)
    sizes = stage_batch_sizes(context.data.selection.num_train, int(context.train.batch_size),
                              len(schedule.stages))
    from kgrow.methods.variance_transfer.callback import VarianceTransferGrowth
    rule = "adam" if str(context.train.optimizer).lower().startswith("adam") else "sgd"
    return context.build_model(), [VarianceTransferGrowth(schedule, optimizer_rule=rule,
                                                          batch_sizes=sizes)]


variance_transfer_batch.data_options = {"elastic_batch": True}

"""Bench methods of variance-transfer growth, registered lazily with `kgrow.bench`.

The paper's ablation as methods (each grows width 1/4 -> 1 in equal stages,
at most 4, over the profile's epochs):

* ``vt_net2net``: Net2Net copies (`Growth(initializer="net2net")`);
* ``vt_plain``: plain paired growth with the init-rule scales, no rescaling
  (the engine's `VarianceTransfer()`);
* ``vt_rescale``: + variance transfer (`PairedVarianceTransfer`, sqrt rule);
* ``vt_rescale_lr``: + per-stage LR adaptation;
* ``variance_transfer``: the full method (+ fan-in parameterization and
  muP LR factors).
"""
from __future__ import annotations

__all__ = ["METHODS", "ABLATION"]

#: name -> "module:attribute" of the factory (imported when first used).
METHODS = {name: f"{__name__}:{name}" for name in
           ("vt_net2net", "vt_plain", "vt_rescale", "vt_rescale_lr", "variance_transfer")}
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

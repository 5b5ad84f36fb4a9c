"""Keras callbacks, one technique per module.

* `growth`: `Growth` — width/depth growth along a schedule inside `fit`.
* `NetworkExpansion` (`kgrow.methods.network_expansion`): the paper's CNN
  width and ViT depth expansion, a configuration of `Growth`.
* `ProgressiveFreezing` (`kgrow.methods.progressive_freezing`): SpFDE's
  progressive layer freezing with per-block cosine learning rates.
* `SparseTraining` (`kgrow.methods.sparse_training`): MEST dynamic sparse
  training and magnitude pruning on the controller's masks.
* `Prog` and `AutoProg` (`kgrow.methods.autoprog`): AutoProg's progressive
  patches and depth for ViTs, on a fixed schedule or one searched by an
  elastic supernet during the run; configurations of `Growth`.
* `DataSieving` (`kgrow.methods.data_sieving`): SpFDE's circular data sieving.
* `VarianceTransferGrowth` (`kgrow.methods.variance_transfer`): width growth
  with variance transfer and per-entry learning-rate adaptation.
* Controller plumbing (`ControllerCheckpoint`, `ControlledCallback`) lives in
  `kgrow.controller` and is re-exported here for convenience.
"""
from kgrow.callbacks.growth import FullSize, Growth, grow_to
from kgrow.controller import ControlledCallback, ControllerCheckpoint

# Methods build on kgrow.callbacks.growth, so their callbacks are imported on
# first use rather than here (which would make the import circular).
_METHOD_CALLBACKS = {
    "NetworkExpansion": "kgrow.methods.network_expansion.callback",
    "ProgressiveFreezing": "kgrow.methods.progressive_freezing.callback",
    "SparseTraining": "kgrow.methods.sparse_training.callback",
    "Prog": "kgrow.methods.autoprog.callback",
    "AutoProg": "kgrow.methods.autoprog.search_callback",
    "DataSieving": "kgrow.methods.data_sieving.callback",
    "VarianceTransferGrowth": "kgrow.methods.variance_transfer.callback",
}

__all__ = ["Growth", "FullSize", "grow_to", "ControlledCallback", "ControllerCheckpoint",
           *_METHOD_CALLBACKS]


def __getattr__(name):
    if name in _METHOD_CALLBACKS:
        import importlib
        return getattr(importlib.import_module(_METHOD_CALLBACKS[name]), name)
    raise AttributeError(f"module 'kgrow.callbacks' has no attribute {name!r}")

"""Keras callbacks, one technique per module.

* `growth`: `Growth` — width/depth growth along a schedule inside `fit`.
* `NetworkExpansion` (`kgrow.methods.network_expansion`): the paper's CNN
  width and ViT depth expansion, a configuration of `Growth`.
* `ProgressiveFreezing` (`kgrow.methods.progressive_freezing`): SpFDE's
  progressive layer freezing with per-block cosine learning rates.
* `DataSieving` (`kgrow.methods.data_sieving`): SpFDE's circular data sieving.
* Controller plumbing (`ControllerCheckpoint`, `ControlledCallback`) lives in
  `kgrow.controller` and is re-exported here for convenience.
"""
from kgrow.callbacks.growth import FullSize, Growth, grow_to
from kgrow.controller import ControlledCallback, ControllerCheckpoint

__all__ = ["Growth", "FullSize", "grow_to", "NetworkExpansion", "ControlledCallback",
           "ControllerCheckpoint", "ProgressiveFreezing", "DataSieving"]


def __getattr__(name):
    # Methods build on kgrow.callbacks.growth, so they are imported on first
    # use rather than here (which would make the import circular).
    if name == "NetworkExpansion":
        from kgrow.methods.network_expansion.callback import NetworkExpansion
        return NetworkExpansion
    if name == "ProgressiveFreezing":
        from kgrow.methods.progressive_freezing.callback import ProgressiveFreezing
        return ProgressiveFreezing
    if name == "DataSieving":
        from kgrow.methods.data_sieving.callback import DataSieving
        return DataSieving
    raise AttributeError(f"module 'kgrow.callbacks' has no attribute {name!r}")

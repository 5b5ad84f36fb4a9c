"""Keras callbacks, one technique per module.

* `growth`: `Growth` — width/depth growth along a schedule inside `fit`.
* `NetworkExpansion` (`kgrow.methods.network_expansion`): the paper's CNN
  width and ViT depth expansion, a configuration of `Growth`.
* `Prog` (`kgrow.methods.autoprog`): AutoProg's progressive patches and
  depth for ViTs, a configuration of `Growth`.
* Controller plumbing (`ControllerCheckpoint`, `ControlledCallback`) lives in
  `kgrow.controller` and is re-exported here for convenience.
"""
from kgrow.callbacks.growth import FullSize, Growth, grow_to
from kgrow.controller import ControlledCallback, ControllerCheckpoint

__all__ = ["Growth", "FullSize", "grow_to", "NetworkExpansion", "Prog", "ControlledCallback",
           "ControllerCheckpoint"]


def __getattr__(name):
    # Methods build on kgrow.callbacks.growth, so they are imported on first
    # use rather than here (which would make the import circular).
    if name == "NetworkExpansion":
        from kgrow.methods.network_expansion.callback import NetworkExpansion
        return NetworkExpansion
    if name == "Prog":
        from kgrow.methods.autoprog.callback import Prog
        return Prog
    raise AttributeError(f"module 'kgrow.callbacks' has no attribute {name!r}")

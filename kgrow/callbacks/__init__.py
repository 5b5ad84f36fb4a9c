"""Keras callbacks, one technique per module.

* `growth`: `Growth` — width/depth growth along a schedule inside `fit`.
* `NetworkExpansion` (`kgrow.methods.network_expansion`): the paper's CNN
  width and ViT depth expansion, a configuration of `Growth`.
* `ProgressiveFreezing` (`kgrow.methods.progressive_freezing`): SpFDE's
  progressive layer freezing with per-block cosine learning rates.
* `SparseTraining` (`kgrow.methods.sparse_training`): MEST dynamic sparse
  training and magnitude pruning on the controller's masks.
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
}

__all__ = ["Growth", "FullSize", "grow_to", "ControlledCallback", "ControllerCheckpoint",
           *_METHOD_CALLBACKS]


def __getattr__(name):
    if name in _METHOD_CALLBACKS:
        import importlib
        return getattr(importlib.import_module(_METHOD_CALLBACKS[name]), name)
    raise AttributeError(f"module 'kgrow.callbacks' has no attribute {name!r}")

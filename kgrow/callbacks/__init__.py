"""Keras callbacks, one technique per module.

* `growth`: `Growth` — width/depth growth along a schedule inside `fit`.
* Controller plumbing (`ControllerCheckpoint`, `ControlledCallback`) lives in
  `kgrow.controller` and is re-exported here for convenience.
"""
from kgrow.callbacks.growth import FullSize, Growth, grow_to
from kgrow.controller import ControlledCallback, ControllerCheckpoint

__all__ = ["Growth", "FullSize", "grow_to", "ControlledCallback", "ControllerCheckpoint"]

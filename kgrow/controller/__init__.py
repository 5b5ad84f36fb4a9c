"""The training controller: one owner of a model's training state during `fit`.

* `TrainingController` (`controller.py`): current model (growth via rebind),
  optimizer rebuild with carried state, EMA copies, freezing, per-group LR
  multipliers, live data selection, named state, checkpoints; the epoch
  pipeline (`Phase`) and the single retrace per epoch boundary.
* `optimizer.py`: optimizer cloning and slot/iteration carry through a
  `TransferPlan`.
* `step.py`: the installed train step and its ordered hooks.
* `updates.py`: optimizer updates that trace into fewer ops (LR read once,
  fused SGD kernel), same math as Keras'.
* `train_function.py`: the train function (one tf.function, retrace at the
  next batch, lean Grappler options on CPU).
* `shared_traces.py`: equal normalization layers traced once per retrace.
* `ema.py`: EMA shadows and half-life helpers.
* `multipliers.py`: LR-multiplier groups.
* `freezing.py`: layer selection for freeze/unfreeze.
* `component.py`: the component protocol (one kind of training state carried
  through growth, architectures taken back, checkpoints); built-in
  components live next to their state (`OptimizerState`, `EMAs`,
  `LRGroups`, `FrozenLayers`); `per_entry.py`: arrays that follow variables;
  `masks.py`: sparse masks; `lr_scales.py`: per-entry LR scales.
* `checkpoint.py`: atomic checkpoint files; `callbacks.py`: `ControlledCallback`,
  `ControllerCheckpoint`.
"""
from kgrow.controller.callbacks import ControlledCallback, ControllerCheckpoint
from kgrow.controller.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from kgrow.controller.component import Component, component_class, register_kind
from kgrow.controller.controller import Phase, TrainingController
from kgrow.controller.lr_scales import LRScales
from kgrow.controller.masks import Masks
from kgrow.controller.per_entry import PerEntryArrays
from kgrow.controller.ema import EMA, decay_for_half_life, half_life_steps, rescale_decay
from kgrow.controller.optimizer import (ShiftedSchedule, clone_optimizer, load_optimizer_state,
                                        optimizer_state, optimizer_step, rebuild_optimizer,
                                        slot_births)
from kgrow.controller.step import (ORDER_DEFAULT, ORDER_EMA, ORDER_MASKS, StepHooks,
                                   UpdateContext)

__all__ = [
    "TrainingController", "Phase", "ControlledCallback", "ControllerCheckpoint",
    "EMA", "decay_for_half_life", "half_life_steps", "rescale_decay",
    "clone_optimizer", "optimizer_state", "load_optimizer_state", "rebuild_optimizer",
    "optimizer_step", "slot_births", "ShiftedSchedule", "StepHooks", "UpdateContext", "ORDER_DEFAULT", "ORDER_MASKS", "ORDER_EMA",
    "Component", "register_kind", "component_class", "PerEntryArrays", "Masks", "LRScales",
    "latest_checkpoint", "read_checkpoint", "write_checkpoint",
]

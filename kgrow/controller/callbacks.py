"""Keras callbacks built on the controller.

* `ControlledCallback`: base class of kgrow callbacks that change the
  training state at epoch boundaries. Subclasses set `phase` and implement
  `controlled_epoch_begin(epoch)`; the controller runs all of them in phase
  order at the first controlled `on_epoch_begin` of an epoch, whatever their
  position in the `callbacks` list.
* `ControllerCheckpoint`: crash-safe checkpoints of the whole controller
  state at epoch ends, and resume (like `keras.callbacks.BackupAndRestore`).
"""
from __future__ import annotations

import keras

from kgrow.controller import checkpoint as ckpt
from kgrow.controller.controller import Phase, TrainingController

__all__ = ["ControlledCallback", "ControllerCheckpoint"]


class ControlledCallback(keras.callbacks.Callback):
    """Base class for callbacks that act through the controller at epoch begin.

    Subclasses that override `on_train_begin`, `on_epoch_begin` or
    `on_train_end` must call the base method.

    Example:
        >>> class FreezeFirst(ControlledCallback):
        ...     phase = Phase.FREEZE
        ...     def controlled_epoch_begin(self, epoch):
        ...         if epoch == 3:
        ...             self.controller.freeze("stem")
    """

    phase: Phase = Phase.SCHEDULE

    @property
    def controller(self) -> TrainingController:
        return TrainingController.of(self.model)

    def set_model(self, model):
        super().set_model(model)
        # Create the controller before any callback's on_train_begin, so that
        # a restore by another callback (e.g. keras BackupAndRestore calling
        # load_weights) already goes through it, whatever the list order.
        TrainingController.of(model)

    def on_train_begin(self, logs=None):
        self.controller.attach_callback(self)

    def on_epoch_begin(self, epoch, logs=None):
        self.controller.begin_epoch(epoch)

    def on_train_end(self, logs=None):
        self.controller.detach_callback(self)

    def controlled_epoch_begin(self, epoch: int) -> None:
        """The callback's epoch-begin work (called once per epoch, in phase order)."""


class ControllerCheckpoint(keras.callbacks.Callback):
    """Saves the controller state every epoch; resumes `fit` from the latest save.

    At `on_train_begin`, if `directory` holds a checkpoint, the model takes
    over the saved architecture and state (`TrainingController.restore`) and
    `fit` continues at the saved epoch (Keras reads `model._initial_epoch`
    after `on_train_begin`, as for `BackupAndRestore`). At the end of every
    `every_epochs`-th epoch the state is written atomically (see
    `kgrow.controller.checkpoint`). Put this callback last in `callbacks`,
    so that it saves after the other callbacks' `on_epoch_end`.

    Args:
        directory: checkpoint directory (one run per directory).
        save_freq: only "epoch" (checkpoints hold whole epochs: a resumed run
            restarts at an epoch boundary).
        every_epochs: save every this many epochs.
        keep: number of complete checkpoints kept.
        custom_objects: passed to Keras deserialization (custom layers,
            schedules) when restoring.

    Example:
        >>> saver = ControllerCheckpoint("runs/ckpt")
        >>> model.fit(ds, epochs=90, callbacks=[grow, saver])  # doctest: +SKIP
    """

    def __init__(self, directory: str, save_freq="epoch", every_epochs: int = 1, keep: int = 2,
                 custom_objects=None):
        super().__init__()
        if not directory:
            raise ValueError("ControllerCheckpoint needs a directory.")
        if save_freq != "epoch":
            raise ValueError(f"save_freq={save_freq!r} is not supported; ControllerCheckpoint "
                             "saves at epoch ends (save_freq='epoch', every_epochs=N).")
        if int(every_epochs) < 1 or int(keep) < 1:
            raise ValueError(f"every_epochs and keep must be >= 1, got {every_epochs}, {keep}")
        self.directory = str(directory)
        self.every_epochs = int(every_epochs)
        self.keep = int(keep)
        self.custom_objects = custom_objects
        self.restored_epoch = None
        self._set_initial_epoch = False

    def on_train_begin(self, logs=None):
        self.restored_epoch = None
        if ckpt.latest_checkpoint(self.directory) is None:
            return
        controller = TrainingController.restore(self.model, self.directory,
                                                custom_objects=self.custom_objects)
        self.restored_epoch = controller.epoch
        self.model._initial_epoch = controller.epoch
        self._set_initial_epoch = True

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            TrainingController.of(self.model).save(self.directory, epoch=epoch + 1,
                                                   keep=self.keep)

    def on_train_end(self, logs=None):
        # Keras does not reset it; a later fit() on this model must start fresh.
        if self._set_initial_epoch:
            self.model._initial_epoch = None
            self._set_initial_epoch = False

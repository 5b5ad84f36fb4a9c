"""Keras callbacks built on the controller.

* `ControlledCallback`: base class of kgrow callbacks that change the
  training state at epoch boundaries. Subclasses set `phase` and implement
  `controlled_epoch_begin(epoch)`; the controller runs all of them in phase
  order at the first controlled `on_epoch_begin` of an epoch, whatever their
  position in the `callbacks` list.
* `ControllerCheckpoint`: crash-safe checkpoints of the whole controller
  state at epoch ends, and resume (like `keras.callbacks.BackupAndRestore`).

Both attach the `kgrow.data.LiveSelection` of the kgrow dataset `fit` was
given to the controller when `fit` starts (`attach_fit_selection`), so no
`attach_selection` call is needed on the usual path.
"""
from __future__ import annotations

import sys
import warnings

import keras

from kgrow import data as data_lib
from kgrow.controller import checkpoint as ckpt
from kgrow.controller.controller import Phase, TrainingController

__all__ = ["ControlledCallback", "ControllerCheckpoint", "attach_fit_selection"]

_NO_FIT = object()


def _fit_argument(model):
    """The ``x`` that the running ``model.fit`` was called with, or `_NO_FIT`.

    Keras hands callbacks the model but not the data, so this reads the
    argument from the ``fit`` frame on the call stack.
    """
    frame = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
                return frame.f_locals.get("x")
            frame = frame.f_back
        return _NO_FIT
    finally:
        del frame


def attach_fit_selection(model):
    """Attaches the selection of the kgrow dataset ``model.fit`` trains on.

    Called by kgrow's callbacks at ``on_train_begin``. Returns a sentence
    saying why the data cannot be replayed on resume, or None when it can
    (a kgrow bundle's ``train``, or a selection attached by hand).
    """
    controller = TrainingController.of(model)
    x = _fit_argument(model)
    selection = None if x is _NO_FIT else data_lib.selection_of(x)
    if selection is not None:
        if controller.selection is not selection:
            controller.attach_selection(selection)
        return None
    if controller.selection is not None:
        return None
    what = ("the training data" if x is _NO_FIT else
            f"the training data (a {type(x).__module__}.{type(x).__name__})")
    return (f"{what} is not a kgrow bundle's `train` dataset, so the checkpoint cannot "
            "replay its order: a resumed run restores the model, optimizer and callbacks "
            "exactly but sees different batches than an uninterrupted run from the resumed "
            "epoch on. For an exact resume train on `kgrow.data.from_arrays(...).train` or "
            "`kgrow.data.from_datasets(...).train`, or call "
            "`TrainingController.of(model).attach_selection(selection)` before `fit`.")


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
    #: What this callback alone may change in a run (e.g. "architecture",
    #: "active data"): two attached callbacks that share an entry are refused
    #: when `fit` starts, instead of overwriting each other's decisions.
    drives: tuple = ()

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
        attach_fit_selection(self.model)
        self.controller.attach_callback(self)

    def on_epoch_begin(self, epoch, logs=None):
        self.controller.begin_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.controller.end_epoch(epoch)
        # History, CSVLogger and TensorBoard read the same dict after us.
        if logs is not None:
            logs.update(self.epoch_logs())

    def on_train_end(self, logs=None):
        self.controller.detach_callback(self)

    def controlled_epoch_begin(self, epoch: int) -> None:
        """The callback's epoch-begin work (called once per epoch, in phase order)."""

    def epoch_logs(self) -> dict:
        """Numbers added to Keras' epoch logs, named `<namespace>/<quantity>`.

        Called at every epoch end; e.g. `{"grow/width": 0.5}`. Values are
        plain floats, so History, CSVLogger and TensorBoard record them.
        """
        return {}


class ControllerCheckpoint(keras.callbacks.Callback):
    """Saves the controller state every epoch; resumes `fit` from the latest save.

    At `on_train_begin`, if `directory` holds a checkpoint, the model takes
    over the saved architecture and state (`TrainingController.restore`) and
    `fit` continues at the saved epoch (Keras reads `model._initial_epoch`
    after `on_train_begin`, as for `BackupAndRestore`). At the end of every
    `every_epochs`-th epoch the state is written atomically (see
    `kgrow.controller.checkpoint`). Put this callback last in `callbacks`,
    so that it saves after the other callbacks' `on_epoch_end`.

    The data order is part of the state when `fit` trains on a kgrow
    bundle's ``train`` dataset: its `LiveSelection` is attached when `fit`
    starts, and a resumed run sees the same batches as an uninterrupted one.
    Other data (arrays, a plain ``tf.data`` pipeline, a dataset mapped from
    ``bundle.train``) cannot be replayed; the callback then warns once, at
    the first save or at the restore, saying what will differ.

    Under MultiWorkerMirroredStrategy only the chief writes; every worker
    restores from `directory`, which must be on a file system they share.

    Args:
        directory: checkpoint directory (one run per directory).
        save_freq: only "epoch" (checkpoints hold whole epochs: a resumed run
            restarts at an epoch boundary).
        every_epochs: save every this many epochs.
        keep: number of complete checkpoints kept.
        custom_objects: passed to Keras deserialization (custom layers,
            schedules) when restoring.

    Example:
        >>> import tempfile, keras, numpy as np, kgrow
        >>> x, y = np.zeros((16, 4, 4, 1), np.uint8), np.arange(16) % 2
        >>> bundle = kgrow.data.from_arrays((x, y), batch_size=8)
        >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
        ...                           keras.layers.Dense(2)])
        >>> model.compile("sgd", "categorical_crossentropy")
        >>> saver = ControllerCheckpoint(tempfile.mkdtemp())
        >>> _ = model.fit(bundle.train, epochs=2, verbose=0, callbacks=[saver])
        >>> TrainingController.of(model).epoch
        2
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
        self._unreplayable = None

    def _warn_unreplayable(self, when):
        if self._unreplayable:
            warnings.warn(f"ControllerCheckpoint({self.directory!r}) {when}: "
                          f"{self._unreplayable}", UserWarning, stacklevel=3)
            self._unreplayable = None  # once per fit

    def on_train_begin(self, logs=None):
        self.restored_epoch = None
        self._unreplayable = attach_fit_selection(self.model)
        if ckpt.latest_checkpoint(self.directory) is None:
            return
        self._warn_unreplayable("restores a checkpoint")
        controller = TrainingController.restore(self.model, self.directory,
                                                custom_objects=self.custom_objects)
        self.restored_epoch = controller.epoch
        self.model._initial_epoch = controller.epoch
        self._set_initial_epoch = True

    def on_epoch_end(self, epoch, logs=None):
        controller = TrainingController.of(self.model)
        controller.end_epoch(epoch)  # replicas agree before anything is written
        # Under MultiWorkerMirroredStrategy every worker holds the same state;
        # only the chief writes it (all of them restore from it).
        if ((epoch + 1) % self.every_epochs == 0
                and self.model.distribute_strategy.extended.should_checkpoint):
            self._warn_unreplayable("saves a checkpoint")
            controller.save(self.directory, epoch=epoch + 1, keep=self.keep)

    def on_train_end(self, logs=None):
        # Keras does not reset it; a later fit() on this model must start fresh.
        if self._set_initial_epoch:
            self.model._initial_epoch = None
            self._set_initial_epoch = False

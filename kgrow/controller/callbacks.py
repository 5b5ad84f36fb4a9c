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

__all__ = ["ControlledCallback", "ControllerCheckpoint", "attach_fit_selection",
           "fit_argument", "planned_changes", "sync_epoch_length"]

_NO_FIT = object()


def _fit_locals(model) -> dict | None:
    """The local variables of the running ``model.fit``, or None outside one.

    Keras hands callbacks the model but neither the data nor the epoch
    iterator, so these are read from the ``fit`` frame on the call stack.
    """
    frame = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
                return dict(frame.f_locals)
            frame = frame.f_back
        return None
    finally:
        del frame


def _fit_local(model, name, default=_NO_FIT):
    """One local variable of the running ``model.fit``, or `default`."""
    found = _fit_locals(model)
    return default if found is None else found.get(name, default)


def _fit_argument(model):
    """The ``x`` that the running ``model.fit`` was called with, or `_NO_FIT`."""
    return _fit_local(model, "x")


def fit_argument(model):
    """The training data ``x`` the running ``model.fit`` got, or None outside `fit`.

    For callbacks that must check their data at ``on_train_begin`` (e.g. that
    it carries sample ids).
    """
    x = _fit_argument(model)
    return None if x is _NO_FIT else x


def sync_epoch_length(model):
    """Makes the running ``fit``'s epoch length follow the live selection.

    Keras reads the length of ``bundle.train`` (or ``train_with_ids()``)
    once, when ``fit`` starts, and stops every epoch at that many batches. A
    callback that changes the active samples in ``on_epoch_begin`` would then
    end epochs early ("Your input ran out of data") or truncate them. Called
    after the controlled callbacks' epoch-begin work, this sets the epoch's
    batch count to the selection's current one (before Keras starts the
    epoch's loop). A no-op for other data and when ``fit`` got
    ``steps_per_epoch``.

    Returns:
        The epoch's batch count, or None when nothing was synced.
    """
    x = _fit_argument(model)
    if x is _NO_FIT or data_lib.selection_of(x) is None:
        return None
    iterator = _fit_local(model, "epoch_iterator", None)
    # Keras' EpochIterator: `steps_per_epoch` given by the user wins; the
    # data's own length is `_num_batches`, read when each epoch's loop starts.
    if iterator is None or getattr(iterator, "steps_per_epoch", None) or \
            not hasattr(iterator, "_num_batches"):
        return None
    # A pass resumed mid-epoch (`LiveSelection.resume_pass`) starts past its
    # first batches; the skip is cleared when that pass begins, after this.
    steps = max(len(x) - int(data_lib.selection_of(x).skip.numpy()), 0)
    if iterator._num_batches != steps:
        iterator._num_batches = steps
        _sync_progress_target(_fit_local(model, "callbacks", None), steps)
    return steps


def start_epoch_clock(model, epoch):
    """Sets the controller's epoch clock for `epoch` from the epoch's live length.

    After `sync_epoch_length`: a kgrow bundle's length now (the steps of a
    pass resumed mid-epoch that already ran count as done), else the steps
    Keras runs. The length `fit` started with is the planned one (for the
    warning of schedules that count optimizer steps).
    """
    controller = TrainingController.of(model)
    controller.follow_epochs()  # a restored or replaced optimizer has its own schedule
    fit = _fit_locals(model) or {}
    x = fit.get("x", _NO_FIT)
    params = getattr(fit.get("callbacks"), "params", None) or {}
    planned = controller.planned_steps
    if x is not _NO_FIT and data_lib.selection_of(x) is not None:
        steps, done = len(x), int(data_lib.selection_of(x).skip.numpy())
    else:
        steps, done = params.get("steps"), controller.step
    controller.start_epoch_clock(epoch, steps, done=done, planned=planned)


def _sync_progress_target(callbacks, steps):
    # The params dict is shared by every callback of the fit (and identifies
    # the fit to the controller): update it in place, and the progress bar's
    # target, which Keras copies from it at fit start.
    if not isinstance(callbacks, keras.callbacks.CallbackList):
        return
    if isinstance(callbacks.params, dict) and "steps" in callbacks.params:
        callbacks.params["steps"] = steps
    for callback in callbacks.callbacks:
        if isinstance(callback, keras.callbacks.ProgbarLogger):
            callback.target = steps
            if getattr(callback, "progbar", None) is not None:
                callback.progbar.target = steps


def planned_changes(model, what: str, exclude=None) -> list:
    """Epochs of the run at which the model's controlled callbacks plan to change `what`.

    Asks every `ControlledCallback` of the running ``fit`` (all of them, even
    those whose ``on_train_begin`` has not run yet; outside a fit, those
    attached to the controller) for its `ControlledCallback.planned_changes`.
    A callback that plans around others' changes calls this: progressive
    freezing, for one, waits for the last architecture change, since a layer
    frozen and then widened would keep its new channels untrained.

    Args:
        model: the controlled model.
        what: one of the callbacks' `drives` entries, e.g. "architecture".
        exclude: a callback not to ask (the caller).

    Returns:
        Sorted distinct epochs (0-based); the first epoch's own setup (e.g.
        Growth's shrink to its first stage) is not a change.
    """
    callbacks = getattr(_fit_local(model, "callbacks", None), "callbacks", None)
    if callbacks is None:
        callbacks = TrainingController.of(model)._callbacks
    epochs = set()
    for callback in callbacks:
        if callback is exclude or not isinstance(callback, ControlledCallback):
            continue
        epochs.update(int(e) for e in callback.planned_changes().get(what, ()) if int(e) > 0)
    return sorted(epochs)


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

    def set_params(self, params):
        super().set_params(params)
        # Callbacks built with `epochs=None` (an attribute they declare) lay
        # their schedule out over the run: they take fit's epochs.
        epochs = (params or {}).get("epochs")
        if epochs and getattr(self, "epochs", 0) is None:
            self.epochs = int(epochs)
            self.on_run_epochs(self.epochs)

    def on_run_epochs(self, epochs: int) -> None:
        """Subclass hook: built with ``epochs=None``, the callback now knows the
        run's epochs (from ``fit``; already stored in ``self.epochs``)."""

    def planned_changes(self) -> dict:
        """What this callback will change in the run, and at which epochs.

        ``{drives entry: [epochs]}``, e.g. ``{"architecture": [4, 8]}`` for a
        growth schedule with boundaries at epochs 4 and 8; read by other
        callbacks through `planned_changes(model, what)` when ``fit`` starts
        (after ``set_params``, so a schedule laid out over the run's epochs is
        known). Entries must cover every epoch a change can happen at,
        run-time choices included. Default: nothing planned.
        """
        return {}

    def on_train_begin(self, logs=None):
        attach_fit_selection(self.model)
        self.controller.attach_callback(self)
        self.controller.planned_steps = (self.params or {}).get("steps")
        self.controller.follow_epochs()

    def on_epoch_begin(self, epoch, logs=None):
        self.controller.begin_epoch(epoch)
        sync_epoch_length(self.model)
        start_epoch_clock(self.model, epoch)

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
    """Saves the controller state every epoch (or every N steps); resumes `fit` from it.

    At `on_train_begin`, if `directory` holds a checkpoint, the model takes
    over the saved architecture and state (`TrainingController.restore`) and
    `fit` continues at the saved epoch (Keras reads `model._initial_epoch`
    after `on_train_begin`, as for `BackupAndRestore`). At the end of every
    `every_epochs`-th epoch the state is written atomically (see
    `kgrow.controller.checkpoint`). Put this callback last in `callbacks`,
    so that it saves after the other callbacks' `on_epoch_end`.

    With ``save_freq=N`` (an int) it also saves after every N training
    steps, so a crash loses at most N steps of a long epoch. Such a
    checkpoint records the epoch and the steps of it already trained; the
    resumed `fit` starts in that epoch, the data pipeline rebuilds the
    interrupted pass from its seed and the restored selection and leaves
    out those batches (`kgrow.data.LiveSelection.resume_pass`; skipped
    in-memory samples are not even gathered), and Keras runs only the
    remaining steps of that epoch (later epochs have their full length).
    Weights, optimizer, RNG seed states and registered callback state
    continue exactly; controlled callbacks' `controlled_epoch_begin` runs
    again for the resumed epoch with the restored state (with
    `controller.step` > 0), as it does after an epoch-end restore. Keras'
    metrics are averaged per epoch, so the resumed epoch logs the mean over
    its remaining steps only. A save due at an epoch's last step is made at
    the epoch end instead (after the other callbacks' `on_epoch_end`).
    Step checkpoints need data kgrow can replay (a kgrow bundle's ``train``
    or ``train_with_ids()``, or a selection attached by hand) and `fit`
    without ``steps_per_epoch``; anything else is refused when `fit` starts.
    Under a strategy of several replicas, a step save first averages the
    replicas' BatchNorm moving statistics (as every epoch end does), so
    that the checkpoint's single copy is what every replica continues from.

    The data order is part of the state when `fit` trains on a kgrow
    bundle's ``train`` dataset: its `LiveSelection` is attached when `fit`
    starts, and a resumed run sees the same batches as an uninterrupted one.
    Other data (arrays, a plain ``tf.data`` pipeline, a dataset mapped from
    ``bundle.train``) cannot be replayed; with epoch saves the callback then
    warns once, at the first save or at the restore, saying what will differ.

    Under MultiWorkerMirroredStrategy only the chief writes; every worker
    restores from `directory`, which must be on a file system they share.

    Args:
        directory: checkpoint directory (one run per directory).
        save_freq: "epoch" (save at epoch ends only), or an int N >= 1: also
            save every N training steps.
        every_epochs: save at the end of every this many epochs; None (only
            with an int `save_freq`): no epoch-end saves.
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

    def __init__(self, directory: str, save_freq="epoch", every_epochs: int | None = 1,
                 keep: int = 2, custom_objects=None):
        super().__init__()
        if not directory:
            raise ValueError("ControllerCheckpoint needs a directory.")
        steps = save_freq != "epoch"
        if steps and (isinstance(save_freq, bool) or not isinstance(save_freq, int)
                      or save_freq < 1):
            raise ValueError(f"save_freq={save_freq!r} is not supported; use 'epoch' (save at "
                             "epoch ends) or an int N >= 1 (also save every N training steps).")
        if every_epochs is None and not steps:
            raise ValueError("every_epochs=None (no epoch-end saves) needs an int save_freq; "
                             "with save_freq='epoch' nothing would ever be saved.")
        if (every_epochs is not None and int(every_epochs) < 1) or int(keep) < 1:
            raise ValueError(f"every_epochs and keep must be >= 1, got {every_epochs}, {keep}")
        self.directory = str(directory)
        self.save_freq = int(save_freq) if steps else "epoch"
        self.every_epochs = None if every_epochs is None else int(every_epochs)
        self.keep = int(keep)
        self.custom_objects = custom_objects
        self.restored_epoch = None
        #: Steps of `restored_epoch` the restored checkpoint had trained (0 at boundaries).
        self.restored_step = 0
        self._set_initial_epoch = False
        self._unreplayable = None
        self._iterator = None  # Keras' epoch iterator, shortened for a resumed epoch
        self._iterator_batches = None
        self._skip = 0
        self._epoch = self._epoch_step = 0
        self._since_save = 0
        self._save_at_epoch_end = False

    def _warn_unreplayable(self, when):
        if self._unreplayable:
            warnings.warn(f"ControllerCheckpoint({self.directory!r}) {when}: "
                          f"{self._unreplayable}", UserWarning, stacklevel=3)
            self._unreplayable = None  # once per fit

    def on_train_begin(self, logs=None):
        self.restored_epoch, self.restored_step = None, 0
        self._skip = self._epoch_step = self._since_save = 0
        self._save_at_epoch_end = False
        self._unreplayable = attach_fit_selection(self.model)
        fit = _fit_locals(self.model) or {}
        if self.save_freq != "epoch":
            self._check_steps_resumable(fit)
        if ckpt.latest_checkpoint(self.directory) is None:
            return
        self._warn_unreplayable("restores a checkpoint")
        controller = TrainingController.restore(self.model, self.directory,
                                                custom_objects=self.custom_objects)
        self.restored_epoch, self.restored_step = controller.epoch, controller.step
        self.model._initial_epoch = controller.epoch
        self._set_initial_epoch = True
        if controller.step:
            self._skip = controller.step
            self._shorten_resumed_epoch(fit.get("epoch_iterator"), controller.step)

    def _check_steps_resumable(self, fit):
        if self._unreplayable:
            raise ValueError(
                f"ControllerCheckpoint(save_freq={self.save_freq}) saves mid-epoch, and a "
                f"resumed run must continue that epoch with the batches it had not seen; "
                f"{self._unreplayable} Or use save_freq='epoch'.")
        if fit.get("steps_per_epoch") is not None:
            raise ValueError(
                f"ControllerCheckpoint(save_freq={self.save_freq}) needs "
                f"fit(steps_per_epoch=None): with steps_per_epoch Keras keeps one iterator "
                f"across epochs, so an epoch is not one pass over the data and a mid-epoch "
                f"checkpoint cannot say where the pass stood. A kgrow bundle tells Keras its "
                f"epoch length itself.")

    def _shorten_resumed_epoch(self, iterator, step):
        # Keras read the epoch length before on_train_begin and keeps it for
        # every epoch; left alone, the resumed epoch would end by running
        # out of data (a warning), and for data of unknown length Keras would
        # then take that short epoch's length for all later ones.
        if iterator is None or not hasattr(iterator, "_num_batches"):
            return
        self._iterator, self._iterator_batches = iterator, iterator._num_batches
        if iterator._num_batches:
            iterator._num_batches = max(int(iterator._num_batches) - int(step), 0)

    def _restore_epoch_length(self):
        if self._iterator is not None:
            self._iterator._num_batches = self._iterator_batches
            self._iterator = self._iterator_batches = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_step = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        # `batch` is the last step of this call (steps_per_execution > 1).
        done = self._skip + int(batch) + 1
        self._since_save += done - self._epoch_step
        self._epoch_step = done
        if self._since_save < self.save_freq:
            return
        self._since_save = 0
        last = self.params.get("steps") if self.params else None  # None: unknown length
        if last and done >= last:
            # The epoch's last step: save at the epoch end, so a resume never
            # starts an empty pass with the epoch-end work still to do.
            self._save_at_epoch_end = True
            return
        controller = TrainingController.of(self.model)
        # The replicas' moving statistics differ mid-epoch and a checkpoint
        # holds one copy: they agree first (on every worker), so a resumed
        # run continues from exactly the values the uninterrupted one has.
        controller.sync_statistics()
        if self.model.distribute_strategy.extended.should_checkpoint:
            controller.save(self.directory, epoch=self._epoch, keep=self.keep, step=done)

    def on_epoch_end(self, epoch, logs=None):
        self._restore_epoch_length()
        self._skip = 0
        controller = TrainingController.of(self.model)
        controller.end_epoch(epoch)  # replicas agree before anything is written
        due = self.every_epochs is not None and (epoch + 1) % self.every_epochs == 0
        due, self._save_at_epoch_end = due or self._save_at_epoch_end, False
        # Under MultiWorkerMirroredStrategy every worker holds the same state;
        # only the chief writes it (all of them restore from it).
        if due and self.model.distribute_strategy.extended.should_checkpoint:
            self._warn_unreplayable("saves a checkpoint")
            controller.save(self.directory, epoch=epoch + 1, keep=self.keep)

    def on_train_end(self, logs=None):
        self._restore_epoch_length()
        # Keras does not reset it; a later fit() on this model must start fresh.
        if self._set_initial_epoch:
            self.model._initial_epoch = None
            self._set_initial_epoch = False

"""`LiveSelection`: the part of the data pipeline that may change during `fit`.

The training pipeline reads these variables once at the start of every pass
over the data (when Keras creates the epoch's iterator, after
``on_epoch_begin``), so a callback that changes them between epochs changes
the next epoch without rebuilding the `tf.data` graph or the model's train
function:

* ``active``: bool ``[num_train]``; only active training samples are served
  (data sieving, forgetting-based pruning).
* ``image_size``: int32 ``[2]``; when both entries are > 0 the training images
  are resized to ``(height, width)`` (progressive resizing). ``(0, 0)`` means
  "the size the bundle was built with". Only bundles built with
  ``resizable=True`` follow it; a fixed-size bundle pins the selection to its
  size (`fixed_size`) and other sizes are refused.
* ``batch_size``: int64 scalar; when > 0 the training batches have this
  many samples (batch-size adaptation) and an epoch ``num_active //
  batch_size`` steps. 0 means "the bundle's own". Only bundles built with
  ``elastic_batch=True`` follow it; a bundle of fixed batch size pins the
  selection (`fixed_batch_sizes`) and other sizes are refused.
* ``epoch``: int64 scalar, the index of the next training pass. The pipeline
  derives the pass's shuffle order and augmentation seeds from
  ``(seed, epoch)`` and increments it when a pass starts, so every pass is
  ordered differently and a run restored from ``get_state()`` continues with
  the same orders.
* ``skip``: int64 scalar, batches the next training pass leaves out at its
  start (read and cleared when that pass starts). A run resumed from a
  checkpoint taken mid-pass (`resume_pass`) rebuilds that pass from
  ``(seed, pass index)`` and continues after the batches already trained.

Keras starts a new pass whenever it creates an iterator: normally once per
epoch, plus once before training when the model was built under a
`tf.distribute` strategy (Keras peeks at one batch to build it). A controller
that wants ``epoch`` to equal Keras' epoch calls `LiveSelection.set_epoch` in
``on_epoch_begin``.

The variables live on the host CPU and are created outside any
`tf.distribute` strategy (a strategy would mirror them onto accelerators, where
the host-side input pipeline cannot read them).
"""
import numpy as np
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops


def _host_variable(initial_value, dtype, name):
    """A non-trainable variable on the CPU that no strategy mirrors."""
    with tf.init_scope(), tf.device("/CPU:0"):
        if tf.distribute.has_strategy():
            # Inside `strategy.scope()` tf.Variable is intercepted and becomes a
            # MirroredVariable with copies on every replica device; building the
            # resource variable directly bypasses the strategy's creator.
            return resource_variable_ops.ResourceVariable(
                initial_value, dtype=dtype, trainable=False, name=name)
        return tf.Variable(initial_value, dtype=dtype, trainable=False, name=name)


#: Augmentation strengths a selection scales (`LiveSelection.set_augment_scale`).
AUGMENT_SCALES = ("randaugment", "erasing")


class LiveSelection:
    """Which training samples are active, and the live training image and batch size.

    Args:
        num_train: Number of training samples (indices ``0 .. num_train-1``).
        image_size: Optional initial live size ``(height, width)``.
        min_active: Smallest number of active samples `set_active` accepts
            (a bundle raises it to its batch size, because the training
            pipeline drops incomplete batches).

    Example:
        >>> sel = LiveSelection(10)
        >>> sel.set_active([0, 2, 4])
        >>> sel.num_active, sel.active_indices().tolist()
        (3, [0, 2, 4])
        >>> sel.set_image_size(16, 16)
        >>> sel.get_state()["image_size"]
        [16, 16]
    """

    def __init__(self, num_train, image_size=None, min_active=1):
        num_train = _positive_int(num_train, "num_train")
        self.num_train = num_train
        self.min_active = _positive_int(min_active, "min_active")
        if self.min_active > num_train:
            raise ValueError(
                f"min_active={self.min_active} exceeds the number of training samples "
                f"({num_train}).")
        self.active = _host_variable(tf.ones([num_train], tf.bool), tf.bool, "kgrow_active")
        self.image_size = _host_variable(tf.zeros([2], tf.int32), tf.int32, "kgrow_image_size")
        self.batch_size = _host_variable(tf.constant(0, tf.int64), tf.int64, "kgrow_batch_size")
        self.fixed_batch_sizes = set()
        self.epoch = _host_variable(tf.constant(0, tf.int64), tf.int64, "kgrow_epoch")
        # Multipliers of the bundle's configured augmentation strengths, in
        # AUGMENT_SCALES order (adaptive regularization ramps them).
        self.augment_scale = _host_variable(tf.ones([len(AUGMENT_SCALES)], tf.float32),
                                            tf.float32, "kgrow_augment_scale")
        self.skip = _host_variable(tf.constant(0, tf.int64), tf.int64, "kgrow_skip")
        #: ``(height, width)`` a fixed-size bundle delivers, or None (see `fix_size`).
        self.fixed_size = None
        if image_size is not None:
            self.set_image_size(*image_size)

    # -- active samples -------------------------------------------------------
    def set_active(self, selection):
        """Makes exactly the given training samples active.

        Args:
            selection: Either a bool mask of length ``num_train`` or a
                sequence of distinct integer indices in ``[0, num_train)``.

        Raises:
            ValueError: wrong mask length, indices out of range or repeated,
                or fewer than ``min_active`` samples selected.
        """
        mask = self._to_mask(selection)
        count = int(mask.sum())
        minimum = max(self.min_active, self.current_batch_size() or 0)
        if count < minimum:
            raise ValueError(
                f"The selection keeps {count} training samples, fewer than the minimum of "
                f"{minimum} (the training pipeline drops incomplete batches, so at "
                f"least one full batch must stay active).")
        self.active.assign(mask)

    def _to_mask(self, selection):
        arr = np.asarray(selection)
        if arr.dtype == bool:
            if arr.shape != (self.num_train,):
                raise ValueError(
                    f"A bool mask must have shape ({self.num_train},), got {arr.shape}.")
            return arr
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                "set_active expects a bool mask of length num_train or a 1-D sequence of "
                f"integer indices; got an array of dtype {arr.dtype} and shape {arr.shape}.")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_train):
            raise ValueError(
                f"Indices must lie in [0, {self.num_train}); got min {arr.min()}, "
                f"max {arr.max()}.")
        if np.unique(arr).size != arr.size:
            raise ValueError("Indices passed to set_active must be distinct.")
        mask = np.zeros(self.num_train, dtype=bool)
        mask[arr] = True
        return mask

    def active_mask(self):
        """The active mask as a numpy bool array of length ``num_train``."""
        return self.active.numpy().copy()

    def active_indices(self):
        """Sorted int64 indices of the active training samples."""
        return np.flatnonzero(self.active.numpy()).astype(np.int64)

    @property
    def num_active(self):
        """Number of active training samples (read from the variable)."""
        return int(np.count_nonzero(self.active.numpy()))

    # -- image size -----------------------------------------------------------
    def set_image_size(self, height, width=None):
        """Sets the live training image size; ``None`` clears it.

        Args:
            height: Target height in pixels, or ``None`` to go back to the
                bundle's own size.
            width: Target width; defaults to ``height``.
        """
        if height is None:
            if width is not None:
                raise ValueError("Pass both sizes or None, not only the width.")
            self.image_size.assign([0, 0])
            return
        width = height if width is None else width
        size = [_positive_int(height, "height"), _positive_int(width, "width")]
        self._check_fixed(size)
        self.image_size.assign(size)

    def fix_size(self, height, width):
        """Pins the training image size (done by bundles built with ``resizable=False``).

        Their training batches have static shapes, so the train function is
        traced for exactly this size; `set_image_size` then refuses other sizes.

        Raises:
            ValueError: a live size or another fixed size is already set.
        """
        size = (_positive_int(height, "height"), _positive_int(width, "width"))
        live = self.current_image_size()
        if live is not None and live != size:
            raise ValueError(
                f"This selection has the live image size {live}, but a bundle with the fixed "
                f"size {size} is being built on it; build the bundle with resizable=True.")
        if self.fixed_size is not None and self.fixed_size != size:
            raise ValueError(
                f"This selection is already pinned to {self.fixed_size} by another bundle; "
                f"it cannot also serve a bundle of size {size}.")
        self.fixed_size = size

    def _check_fixed(self, size):
        if self.fixed_size is not None and tuple(size) != self.fixed_size:
            raise ValueError(
                f"The training image size of this data is fixed at {self.fixed_size} (static "
                f"shapes); cannot change it to {tuple(size)}. Build the bundle with "
                f"resizable=True (kgrow.data.load / from_arrays / from_datasets) to change "
                f"the size during training.")

    def current_image_size(self):
        """The live size ``(height, width)`` or ``None`` when it is not set."""
        h, w = (int(v) for v in self.image_size.numpy())
        return (h, w) if h > 0 and w > 0 else None

    # -- batch size -----------------------------------------------------------
    def set_batch_size(self, batch_size):
        """Sets the live training batch size from the next pass on; ``None`` clears it.

        Example:
            >>> sel = LiveSelection(64)
            >>> sel.set_batch_size(32)
            >>> sel.current_batch_size()
            32

        Raises:
            ValueError: not a positive int, more than the active samples, or
                the selection serves a bundle of fixed batch size.
        """
        if batch_size is None:
            self.batch_size.assign(0)
            return
        size = _positive_int(batch_size, "batch_size")
        if self.fixed_batch_sizes and size not in self.fixed_batch_sizes:
            raise ValueError(
                f"The training batch size of this data is fixed at "
                f"{sorted(self.fixed_batch_sizes)}; cannot change it to {size}. Build the "
                f"bundle with elastic_batch=True (kgrow.data.load / from_arrays / "
                f"from_datasets) to change the batch size during training.")
        if size > self.num_active:
            raise ValueError(f"batch_size={size} is larger than the {self.num_active} active "
                             f"samples; an epoch would be empty.")
        self.batch_size.assign(size)

    def fix_batch_size(self, batch_size):
        """Marks that a bundle of fixed batch size `batch_size` reads this selection
        (done by bundles built with ``elastic_batch=False``)."""
        size = _positive_int(batch_size, "batch_size")
        live = self.current_batch_size()
        if live is not None and live != size:
            raise ValueError(
                f"This selection has the live batch size {live}, but a bundle with the fixed "
                f"batch size {size} is being built on it; build it with elastic_batch=True.")
        self.fixed_batch_sizes.add(size)

    def current_batch_size(self):
        """The live batch size, or ``None`` when it is not set."""
        size = int(self.batch_size.numpy())
        return size if size > 0 else None

    # -- augmentation strength ------------------------------------------------
    def set_augment_scale(self, randaugment=None, erasing=None):
        """Scales the bundle's augmentation strengths from the next pass on.

        Each value multiplies what the bundle's `AugmentConfig` sets: the
        RandAugment magnitude (``randaugment``) and the random-erasing
        probability (``erasing``): 1 is the configured strength, 0 gives
        magnitude 0 (RandAugment's operations still run, at their weakest)
        or probability 0; None leaves that scale as it is. Augmentations the
        config does not use stay off.

        Example:
            >>> sel = LiveSelection(4)
            >>> sel.set_augment_scale(randaugment=0.5, erasing=0.0)
            >>> sel.current_augment_scale()
            {'randaugment': 0.5, 'erasing': 0.0}
        """
        values = self.augment_scale.numpy().copy()
        for i, (name, value) in enumerate(zip(AUGMENT_SCALES, (randaugment, erasing))):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not np.isfinite(value) or value < 0:
                raise ValueError(f"the {name} scale must be a number >= 0, got {value!r}.")
            values[i] = float(value)
        self.augment_scale.assign(values)

    def current_augment_scale(self):
        """``{name: multiplier}`` of the augmentation strengths."""
        return {n: float(v) for n, v in zip(AUGMENT_SCALES, self.augment_scale.numpy())}

    # -- pass counter ---------------------------------------------------------
    def set_epoch(self, epoch):
        """Sets the index of the next training pass (e.g. to Keras' epoch).

        A controller calling this in ``on_epoch_begin`` ties the shuffle order
        and augmentation seeds of a pass to the epoch number instead of to the
        number of passes started so far.
        """
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}.")
        self.epoch.assign(epoch)

    def resume_pass(self, batches):
        """Makes the next pass repeat the last one started, without its first ``batches``.

        For a run resumed from a state saved (`get_state`) after ``batches``
        training steps of a pass: the next pass is ordered and augmented
        exactly as the interrupted one (its index is ``epoch - 1``, since a
        pass advances ``epoch`` when it starts) and starts at batch
        ``batches``; batch ``i`` keeps its augmentation seeds.
        Skipped in-memory samples are neither gathered nor augmented;
        streamed ones are still read and shuffled (the shuffle buffer needs
        them), but not decoded further.

        Example:
            >>> sel = LiveSelection(10)
            >>> sel.set_epoch(4)  # pass 3 started
            >>> sel.resume_pass(2)
            >>> int(sel.epoch.numpy()), int(sel.skip.numpy())
            (3, 2)
        """
        batches = int(batches)
        if batches < 0:
            raise ValueError(f"batches must be >= 0, got {batches}.")
        started = int(self.epoch.numpy())
        if started < 1:
            raise ValueError("resume_pass() needs a selection whose state was saved during a "
                             "pass (its epoch counter is 0: no pass has started).")
        self.set_epoch(started - 1)
        self.skip.assign(batches)

    # -- checkpoints ----------------------------------------------------------
    def get_state(self):
        """Plain python/numpy state for checkpoints (see `set_state`)."""
        return {
            "num_train": self.num_train,
            "active": self.active_mask(),
            "image_size": [int(v) for v in self.image_size.numpy()],
            "epoch": int(self.epoch.numpy()),
            "augment_scale": [float(v) for v in self.augment_scale.numpy()],
            "batch_size": int(self.batch_size.numpy()),
        }

    def set_state(self, state):
        """Restores a state produced by `get_state`.

        Raises:
            ValueError: the state belongs to a training set of another size
                or misses a key.
        """
        missing = {"num_train", "active", "image_size", "epoch"} - set(state)
        if missing:
            raise ValueError(f"LiveSelection state misses keys {sorted(missing)}.")
        if int(state["num_train"]) != self.num_train:
            raise ValueError(
                f"State is for {state['num_train']} training samples, this selection has "
                f"{self.num_train}.")
        size = [int(v) for v in state["image_size"]]
        if len(size) != 2 or min(size) < 0 or (min(size) == 0 and max(size) != 0):
            raise ValueError(f"Invalid image_size {size} in state (expected [h, w] or [0, 0]).")
        if min(size) > 0:
            self._check_fixed(size)
        self.set_active(np.asarray(state["active"], dtype=bool))
        self.image_size.assign(size)
        self.set_epoch(state["epoch"])
        # States written before augmentation scales existed: full strength.
        scale = state.get("augment_scale", [1.0] * len(AUGMENT_SCALES))
        self.set_augment_scale(*[float(v) for v in scale])
        # States written before live batch sizes existed: the bundle's own.
        batch = int(state.get("batch_size", 0))
        if batch:
            self.set_batch_size(batch)
        else:
            self.batch_size.assign(0)
        self.skip.assign(0)  # a state is at a pass boundary; see resume_pass

    def __repr__(self):
        return (f"LiveSelection(num_train={self.num_train}, num_active={self.num_active}, "
                f"image_size={self.current_image_size()}, "
                f"batch_size={self.current_batch_size()}, epoch={int(self.epoch.numpy())})")


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}.")
    return int(value)

"""Measurements of one benchmark run: training time, FLOPs, samples, memory.

- `RunClock` measures training wall-clock time. Test-set evaluation runs inside
  `fit` (as `validation_data`) after every epoch, and its time, measured
  between Keras' `on_test_begin` and `on_test_end` hooks, is subtracted, as is
  the time the FLOPs meter spends counting. What a method's own callbacks do
  (growth, re-tracing, ...) is training time.
- `FlopsMeter` counts training FLOPs per sample of the model as it is at the
  begin of each epoch (after the method's callbacks changed it) with
  `kgrow.flops.count`, cached by architecture, trainable flags, sparsity and
  input size, and multiplies by the samples the pipeline delivered that epoch.
- `SampleCounter` counts those samples inside the `tf.data` pipeline, so data
  sieving (fewer active samples) and partial last batches are exact.
- `PeakMemory` measures the process' peak resident set size (RSS): the
  kernel's own peak on Linux, a polling thread elsewhere.

Example:
    >>> with PeakMemory(interval_s=0.01) as mem:
    ...     block = bytearray(50 * 2**20)
    >>> mem.peak_mb >= mem.start_mb
    True
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

_MB = 2.0 ** 20


def _rss_bytes_proc() -> int:
    # /proc/self/statm: sizes in pages; the second field is the resident set.
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_reader() -> tuple[Callable[[], int], str]:
    """The best current-RSS reader on this platform, and its name.

    Linux: `/proc/self/statm`; elsewhere `psutil` if installed. Without either
    the fallback is `resource.getrusage` peak RSS, which never decreases in a
    process, so later runs in the same process report at least the peak of
    earlier ones; the source name says which one was used.

    Example:
        >>> read, source = rss_reader()
        >>> read() > 0
        True
    """
    if os.path.exists("/proc/self/statm"):
        return _rss_bytes_proc, "proc_statm_rss"
    try:
        import psutil
        process = psutil.Process()
        return (lambda: process.memory_info().rss), "psutil_rss"
    except ImportError:
        # ru_maxrss is KiB on Linux, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        return (lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
                "getrusage_maxrss_monotone")


_KERNEL_SOURCE = "proc_vmhwm_reset"


def _hwm_bytes() -> int:
    # VmHWM: the kernel's peak resident set size of this process, in kB.
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> Optional[int]:
    """Resets the kernel's peak RSS to the current RSS (Linux >= 4.0).

    Returns the peak before the reset in bytes, or None where there is no
    such peak or the reset is not allowed.
    """
    try:
        before = _hwm_bytes()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return before
    except OSError:
        return None


class PeakMemory:
    """Peak resident memory of this process while the block runs.

    On Linux the kernel keeps the peak itself: the block resets it
    (`/proc/self/clear_refs`) and reads it at the end (`VmHWM`), which is
    exact and needs no thread. Elsewhere (or where the reset is not allowed)
    a daemon thread reads the RSS every `interval_s` seconds; short spikes
    between two reads can be missed, and the thread takes Python's GIL 20
    times a second, which slows Python-bound work such as graph tracing by a
    few percent. Blocks may nest; each gets its own peak. Use one instance
    per run so the peak belongs to that run.

    Attributes:
        start_mb: RSS when the block started.
        peak_mb: Highest RSS during the block.
        source: How the peak was measured ("proc_vmhwm_reset", or the
            polled reader's name, see `rss_reader`).

    Example:
        >>> with PeakMemory() as mem:
        ...     _ = [0] * 1000
        >>> mem.peak_mb >= mem.start_mb
        True
    """

    _open_kernel_peaks: list = []  # blocks using VmHWM, innermost last

    def __init__(self, interval_s: float = 0.05, use_kernel_peak: bool = True):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}.")
        self.interval_s = interval_s
        self.use_kernel_peak = use_kernel_peak
        self._read, self._poll_source = rss_reader()
        self.source = self._poll_source
        self.start_mb = self.peak_mb = self._read() / _MB
        self._stop = threading.Event()
        self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> float:
        """Reads the RSS now, updates the peak and returns the current MB."""
        now = self._read() / _MB
        self.peak_mb = max(self.peak_mb, now)
        return now

    def __enter__(self) -> "PeakMemory":
        self.start_mb = self.peak_mb = self._read() / _MB
        before = _reset_hwm() if self.use_kernel_peak else None
        if before is not None:
            # The reset loses the enclosing blocks' peaks so far: keep them.
            for outer in self._open_kernel_peaks:
                outer.peak_mb = max(outer.peak_mb, before / _MB)
            self._open_kernel_peaks.append(self)
            self.source = _KERNEL_SOURCE
            return self
        self.source = self._poll_source
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="kgrow-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.source == _KERNEL_SOURCE:
            # Until the next reset, the kernel's peak covers this block for
            # the enclosing ones too.
            self.peak_mb = max(self.peak_mb, _hwm_bytes() / _MB)
            self._open_kernel_peaks.remove(self)
            return
        self._stop.set()
        self._thread.join()
        self.sample()


class SampleCounter:
    """Counts the samples a `tf.data` pipeline delivers, and their image size.

    `wrap(dataset)` appends a cheap map that adds each batch's size to a
    counter and, for `[B, H, W, C]` image batches, records the spatial size
    (progressive resizing changes it between epochs). The dataset's elements
    must be `(inputs, ...)` tuples of batched tensors.

    Example:
        >>> counter = SampleCounter()
        >>> ds = tf.data.Dataset.from_tensor_slices(
        ...     (tf.zeros([10, 4, 4, 1]), tf.zeros([10]))).batch(4)
        >>> for _ in counter.wrap(ds): pass
        >>> counter.total(), counter.last_hw()
        (10, (4, 4))
    """

    def __init__(self):
        self._count = tf.Variable(0, dtype=tf.int64, trainable=False, name="samples_seen")
        self._hw = tf.Variable([0, 0], dtype=tf.int64, trainable=False, name="last_batch_hw")

    def wrap(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """The same dataset, counted."""
        count, hw = self._count, self._hw

        def _count(images, *rest):
            shape = tf.shape(images, out_type=tf.int64)
            updates = [count.assign_add(shape[0])]
            if images.shape.rank == 4:  # [B, H, W, C] images: remember their size
                updates.append(hw.assign(shape[1:3]))
            with tf.control_dependencies(updates):
                images = tf.identity(images)
            return (images, *rest)

        return dataset.map(_count)

    def total(self) -> int:
        """Samples delivered so far."""
        return int(self._count.numpy())

    def last_hw(self) -> tuple[int, int]:
        """Spatial size (H, W) of the last image batch delivered ((0, 0): none yet)."""
        h, w = self._hw.numpy().tolist()
        return int(h), int(w)


def architecture_key(model: keras.Model, input_shape, sparsity=None) -> tuple:
    """What the training FLOPs of `model` depend on, as a hashable key.

    Layers (name, type, trainable flag, weight shapes), the input shape and the
    sparsity description.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> k1 = architecture_key(m, (3,))
        >>> m.layers[0].trainable = False
        >>> architecture_key(m, (3,)) == k1
        False
    """
    layers = tuple(
        (layer.name, type(layer).__name__, bool(layer.trainable),
         tuple(tuple(w.shape) for w in layer.weights))
        for layer in _all_layers(model))
    return layers, tuple(input_shape), _freeze(sparsity)


def _all_layers(model):
    # Nested models: frozen flags of inner layers matter too.
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers") and layer is not model:
            yield from _all_layers(layer)


def _freeze(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        # Keys may be variables: identify them by path, never by value.
        return tuple(sorted((str(getattr(k, "path", k)), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray) or hasattr(value, "numpy"):
        array = np.asarray(value)
        # Masks: what matters for FLOPs is how many entries are nonzero.
        return ("array", array.shape, int(np.count_nonzero(array)))
    return repr(value)


class RunClock:
    """Training wall-clock time of one `fit`, evaluation excluded.

    Put `clock.head` first in the callback list and `clock.tail` last: the
    clock starts before any method callback's `on_train_begin` and each epoch
    ends after every method callback's `on_epoch_end`.

    Attributes:
        eval_s: Total time spent in test-set evaluation.
        overhead_s: Other excluded time (registered with `exclude`).
        epoch_walls: Cumulative training seconds at the end of each epoch.

    Example:
        >>> clock = RunClock()
        >>> clock.exclude(0.5)
        >>> clock.overhead_s
        0.5
    """

    def __init__(self):
        self.eval_s = 0.0
        self.overhead_s = 0.0
        self.epoch_walls: list[float] = []
        self._t0 = None
        self._t_end = None
        self._eval_start = None
        clock = self

        class _Head(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                clock._t0 = time.perf_counter()

        class _Tail(keras.callbacks.Callback):
            def on_test_begin(self, logs=None):
                clock._eval_start = time.perf_counter()

            def on_test_end(self, logs=None):
                clock.eval_s += time.perf_counter() - clock._eval_start
                clock._eval_start = None

            def on_epoch_end(self, epoch, logs=None):
                clock.epoch_walls.append(clock.elapsed())

            def on_train_end(self, logs=None):
                clock._t_end = time.perf_counter()

        self.head = _Head()
        self.tail = _Tail()

    def exclude(self, seconds: float) -> None:
        """Removes `seconds` of bookkeeping from the training time."""
        self.overhead_s += seconds

    def elapsed(self) -> float:
        """Training seconds so far (total minus evaluation and overhead)."""
        if self._t0 is None:
            raise RuntimeError("RunClock has not started: is clock.head in the fit callbacks?")
        end = self._t_end if self._t_end is not None else time.perf_counter()
        return end - self._t0 - self.eval_s - self.overhead_s


class FlopsMeter(keras.callbacks.Callback):
    """Training FLOPs of a `fit`, accounted per epoch.

    At each epoch begin, the training FLOPs per sample of the model as it is
    then (frozen layers and sparsity accounted by `kgrow.flops.count`) are
    counted, cached by `architecture_key`. At epoch end they are multiplied by
    the samples the pipeline delivered during the epoch. If the pipeline's
    image size differs from the one counted at epoch begin (a method changed
    the resolution during the epoch), the epoch is re-counted at the delivered
    size and a note is recorded.

    Args:
        counter: The `SampleCounter` wrapping the training dataset.
        input_shape_fn: Returns the input shape `(H, W, C)` the coming epoch
            will be trained at.
        clock: A `RunClock` whose time excludes the counting time (optional).
        sparsity: Static sparsity for `kgrow.flops.count`, or a callable of
            the model returning it.
        count_fn: The counter (default `kgrow.flops.count`); must return an
            object with a `.training` attribute (FLOPs per sample).

    Attributes:
        epochs: One dict per finished epoch: `samples`, `flops_per_sample`,
            `flops`, `input_shape`.
        notes: Human-readable notes about inexact accounting.
    """

    def __init__(self, counter: SampleCounter, input_shape_fn: Callable[[], tuple],
                 clock: RunClock | None = None, sparsity: Any = None,
                 count_fn: Callable | None = None):
        super().__init__()
        if count_fn is None:
            from kgrow import flops
            count_fn = flops.count
        self.counter = counter
        self.input_shape_fn = input_shape_fn
        self.clock = clock
        self.sparsity = sparsity
        self.count_fn = count_fn
        self.epochs: list[dict] = []
        self.notes: list[str] = []
        self._cache: dict = {}
        self._begin = None

    def _sparsity(self):
        return self.sparsity(self.model) if callable(self.sparsity) else self.sparsity

    def per_sample(self, input_shape) -> float:
        """Training FLOPs per sample of the current model at `input_shape`."""
        start = time.perf_counter()
        sparsity = self._sparsity()
        key = architecture_key(self.model, input_shape, sparsity)
        if key not in self._cache:
            kwargs = {} if sparsity is None else {"sparsity": sparsity}
            report = self.count_fn(self.model, tuple(input_shape), **kwargs)
            self._cache[key] = float(report.training)
        if self.clock is not None:
            self.clock.exclude(time.perf_counter() - start)
        return self._cache[key]

    def on_epoch_begin(self, epoch, logs=None):
        shape = tuple(int(d) for d in self.input_shape_fn())
        self._begin = (shape, self.per_sample(shape), self.counter.total())

    def on_epoch_end(self, epoch, logs=None):
        shape, per_sample, start_count = self._begin
        samples = self.counter.total() - start_count
        seen_hw = self.counter.last_hw()
        if samples and seen_hw != (0, 0) and len(shape) == 3 and seen_hw != tuple(shape[:2]):
            new_shape = (*seen_hw, *shape[2:])
            self.notes.append(
                f"epoch {epoch + 1}: counted FLOPs at input {shape} but the pipeline "
                f"delivered {new_shape}; re-counted at the delivered size with the model "
                f"as it is at epoch end.")
            shape, per_sample = new_shape, self.per_sample(new_shape)
        self.epochs.append({"samples": samples, "flops_per_sample": per_sample,
                            "flops": per_sample * samples, "input_shape": list(shape)})
        if logs is not None:
            logs["kgrow/train_flops"] = self.total()

    def total(self) -> float:
        """Training FLOPs of all finished epochs."""
        return float(sum(e["flops"] for e in self.epochs))

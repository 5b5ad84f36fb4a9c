"""Training helpers shared by recipes, the benchmark and the growth engine.

Small pure functions: a warm-up + cosine learning-rate schedule, an optimizer
factory, a compile helper for classification, and a `TrainConfig` that holds
the usual hyper-parameters of one training run.

The learning-rate schedule is a function of the optimizer's iteration count.
The growth engine rebuilds the optimizer when the model grows and carries
the iteration count over, so the schedule continues where it was (a reset
of the moments restarts the count and shifts the schedule by the steps
done, `kgrow.controller.ShiftedSchedule`, with the same effect). Built
with `steps_per_epoch` (as `schedule_from_config` does), it follows the
epochs instead inside a kgrow-controlled `fit` (`kgrow.controller.clock`):
where data sieving or a larger batch makes an epoch shorter, the schedule
still ends with the last epoch.

Example:
    >>> import keras
    >>> from kgrow import training
    >>> config = training.TrainConfig(optimizer="sgd", lr=0.1, epochs=2)
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model = training.compile_with_config(model, config, steps_per_epoch=10)
    >>> round(float(model.optimizer.learning_rate), 4)  # step 0, no warm-up
    0.1
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import keras

OPTIMIZERS = ("sgd", "adamw")
LABEL_MODES = ("onehot", "sparse")


@keras.saving.register_keras_serializable(package="kgrow")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up followed by cosine decay, as a function of the step.

    With `s` the optimizer iteration count (0 for the first update):

    - warm-up, `s < warmup_steps`: `lr = base_lr * (s + 1) / warmup_steps`,
      so the first update already moves and the last warm-up step uses
      `base_lr`;
    - decay, `warmup_steps <= s < total_steps`: with
      `p = (s - warmup_steps) / (total_steps - warmup_steps)`,
      `lr = final_lr + (base_lr - final_lr) * (1 + cos(pi * p)) / 2`;
    - after `total_steps`: `final_lr` (training longer than planned does not
      make the learning rate rise again).

    With `steps_per_epoch`, a kgrow controller makes it follow its epoch
    clock (`follow_epoch_clock`): `s` is then where an epoch of
    `steps_per_epoch` steps would be, `(epoch + done / steps) *
    steps_per_epoch`, however many steps the current epoch has; with
    epochs of that length this is the optimizer step.

    Args:
        base_lr: Peak learning rate, reached at the end of the warm-up.
        total_steps: Number of optimizer steps of the whole run (warm-up
            included).
        warmup_steps: Number of warm-up steps, `0 <= warmup_steps <
            total_steps`.
        final_lr: Learning rate at the end of the cosine, `0 <= final_lr <=
            base_lr`.
        steps_per_epoch: The epoch length the steps are counted in; lets the
            schedule follow epochs of another length (None: steps only).

    Example:
        >>> schedule = WarmupCosine(0.1, total_steps=100, warmup_steps=10)
        >>> round(float(schedule(0)), 4), round(float(schedule(10)), 4)
        (0.01, 0.1)
        >>> round(float(schedule(55)), 4)
        0.05
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 final_lr: float = 0.0, name: str = "warmup_cosine",
                 steps_per_epoch: int | None = None):
        _check_schedule_args(base_lr, total_steps, warmup_steps, final_lr)
        if steps_per_epoch is not None and (int(steps_per_epoch) != steps_per_epoch
                                            or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive integer or None, got "
                             f"{steps_per_epoch!r}.")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_lr = float(final_lr)
        self.name = name
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.clock = None

    def follow_epoch_clock(self, clock) -> bool:
        """Reads `clock.position(steps_per_epoch)` instead of the step from now on
        (None: the step again). Returns whether it follows a clock: only a
        schedule that knows its `steps_per_epoch` can."""
        self.clock = clock if self.steps_per_epoch is not None else None
        return self.clock is not None

    def __call__(self, step):
        if self.clock is not None:
            step = self.clock.position(self.steps_per_epoch)
        step = keras.ops.cast(step, "float32")
        base = keras.ops.cast(self.base_lr, "float32")
        final = keras.ops.cast(self.final_lr, "float32")
        warmup = float(self.warmup_steps)
        decay_steps = float(self.total_steps - self.warmup_steps)

        # max(warmup, 1) only guards the division when there is no warm-up;
        # that branch is then never selected.
        warm_lr = base * (step + 1.0) / max(warmup, 1.0)
        progress = keras.ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cos_lr = final + (base - final) * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < warmup, warm_lr, cos_lr)

    def get_config(self) -> dict[str, Any]:
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_lr": self.final_lr,
            "name": self.name,
            "steps_per_epoch": self.steps_per_epoch,
        }


def _check_schedule_args(base_lr, total_steps, warmup_steps, final_lr) -> None:
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr!r}.")
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}.")
    if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be an integer in [0, total_steps={total_steps}), "
            f"got {warmup_steps!r}.")
    if not 0 <= final_lr <= base_lr:
        raise ValueError(f"final_lr must be in [0, base_lr={base_lr}], got {final_lr!r}.")


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int = 0,
                  final_lr: float = 0.0, steps_per_epoch: int | None = None) -> WarmupCosine:
    """Builds a `WarmupCosine` schedule (linear warm-up, then cosine decay).

    Args:
        base_lr: Peak learning rate.
        total_steps: Optimizer steps of the whole run, warm-up included.
        warmup_steps: Linear warm-up steps.
        final_lr: Learning rate at the end of the run.
        steps_per_epoch: The epoch length the steps are counted in (see
            `WarmupCosine`).

    Returns:
        A serializable `keras.optimizers.schedules.LearningRateSchedule`.

    Example:
        >>> schedule = warmup_cosine(0.1, total_steps=1000, warmup_steps=100)
        >>> round(float(schedule(99)), 4)
        0.1
    """
    return WarmupCosine(base_lr, total_steps, warmup_steps, final_lr,
                        steps_per_epoch=steps_per_epoch)


def sgd_decay_from_coupled(weight_decay: float, momentum: float) -> float:
    """Converts a PyTorch-style (coupled, L2) SGD weight decay to Keras' form.

    PyTorch's SGD adds `wd * w` to the gradient before the momentum buffer, so
    in steady state each step shrinks `w` by `lr * wd / (1 - momentum)`.
    Keras applies `weight_decay` directly to the weights (`w -= lr * wd * w`),
    outside the momentum. Papers quote the PyTorch value; this gives the Keras
    value with the same steady-state shrinkage.

    Args:
        weight_decay: PyTorch SGD `weight_decay`.
        momentum: SGD momentum in `[0, 1)`.

    Returns:
        The `weight_decay` to give `make_optimizer("sgd", ...)`.

    Example:
        >>> round(sgd_decay_from_coupled(5e-4, 0.9), 6)
        0.005
    """
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    return weight_decay / (1.0 - momentum)


def make_optimizer(name: str, lr_schedule, momentum: float = 0.9, nesterov: bool = False,
                   weight_decay: float = 0.0, no_decay: Sequence[str] = (),
                   beta_1: float = 0.9, beta_2: float = 0.999,
                   global_clipnorm: float | None = None) -> keras.optimizers.Optimizer:
    """Builds an SGD or AdamW optimizer.

    Weight decay is Keras' decoupled form for both (`w -= lr * wd * w` each
    step, with `lr` the scheduled learning rate). For SGD with momentum this
    is weaker than PyTorch's coupled L2 decay of the same number; see
    `sgd_decay_from_coupled`.

    Args:
        name: `"sgd"` or `"adamw"`.
        lr_schedule: A float or a `LearningRateSchedule`.
        momentum: SGD momentum (ignored by AdamW).
        nesterov: Nesterov momentum for SGD.
        weight_decay: Decoupled weight decay, `>= 0` (0 disables it).
        no_decay: Variable-name patterns (regular expressions searched in the
            variable's short name, e.g. `"bias"`, `"gamma"`, `"beta"`) that
            get no weight decay. Empty: every trainable variable decays.
        beta_1: AdamW first-moment decay.
        beta_2: AdamW second-moment decay.
        global_clipnorm: Clip the global gradient norm to this value.

    Returns:
        An unbuilt `keras.optimizers.Optimizer`.

    Raises:
        ValueError: Unknown optimizer name or out-of-range hyper-parameter.

    Example:
        >>> opt = make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=5e-4)
        >>> type(opt).__name__, float(opt.momentum)
        ('SGD', 0.9)
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; supported: {', '.join(OPTIMIZERS)}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
    if isinstance(lr_schedule, (int, float)) and not lr_schedule > 0:
        raise ValueError(f"learning rate must be > 0, got {lr_schedule!r}.")
    decay = float(weight_decay) if weight_decay > 0 else None
    if key == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate=lr_schedule, momentum=momentum, nesterov=nesterov,
            weight_decay=decay, global_clipnorm=global_clipnorm)
    else:
        # AdamW insists on a float weight decay; 0.0 there means none.
        optimizer = keras.optimizers.AdamW(
            learning_rate=lr_schedule, weight_decay=decay or 0.0, beta_1=beta_1,
            beta_2=beta_2, global_clipnorm=global_clipnorm)
    if no_decay:
        optimizer.exclude_from_weight_decay(var_names=list(no_decay))
    return optimizer


def outputs_probabilities(model: keras.Model) -> bool:
    """Tells whether a model's output already went through a softmax.

    Looks at the layer that produces the model's (single) output: a softmax
    `activation` there (Dense/Activation/Softmax layer) means probabilities.

    Args:
        model: A built Keras model with one output.

    Returns:
        True for probabilities, False for logits.

    Example:
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, "softmax")])
        >>> outputs_probabilities(m)
        True
    """
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is keras.activations.softmax or getattr(
        activation, "__name__", "") == "softmax"


def compile_for_classification(model: keras.Model, optimizer, label_smoothing: float = 0.0,
                               label_mode: str = "onehot", from_logits: bool | None = None,
                               **compile_kwargs) -> keras.Model:
    """Compiles a classifier with cross-entropy and an accuracy metric.

    Args:
        model: The Keras model (one output of shape `[B, num_classes]`).
        optimizer: A `keras.optimizers.Optimizer` (see `make_optimizer`).
        label_smoothing: In `[0, 1)`. Needs one-hot labels (Keras' sparse
            cross-entropy has no smoothing).
        label_mode: `"onehot"` (categorical cross-entropy) or `"sparse"`
            (integer labels).
        from_logits: Whether the model outputs logits. None: inferred from the
            output layer (`outputs_probabilities`).
        **compile_kwargs: Passed to `model.compile` (e.g. `jit_compile`).

    Returns:
        The same model, compiled; the metric is named `"accuracy"` so fit logs
        `accuracy` and `val_accuracy`.

    Raises:
        ValueError: Unknown label mode, smoothing out of range, or smoothing
            with sparse labels.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> m = compile_for_classification(m, make_optimizer("adamw", 1e-3), 0.1)
        >>> m.loss.label_smoothing
        0.1
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(
            f"Unknown label_mode {label_mode!r}; supported: {', '.join(LABEL_MODES)}.")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
    if from_logits is None:
        from_logits = not outputs_probabilities(model)
    if label_mode == "onehot":
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=from_logits, label_smoothing=label_smoothing)
        metric = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        if label_smoothing:
            raise ValueError(
                "label_smoothing needs one-hot labels; load the data with "
                "label_mode='onehot' or set label_smoothing=0.")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[metric], **compile_kwargs)
    return model


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one classification training run.

    Attributes:
        optimizer: `"sgd"` or `"adamw"`.
        lr: Peak learning rate (after warm-up).
        batch_size: Global batch size.
        epochs: Number of epochs.
        warmup_epochs: Linear warm-up length in epochs (may be fractional).
        final_lr: Learning rate at the end of the cosine.
        weight_decay: Keras decoupled weight decay (see `make_optimizer`).
        no_decay: Variable-name patterns excluded from weight decay.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        label_smoothing: Cross-entropy label smoothing (one-hot labels).
        augment: Augmentation preset name understood by `kgrow.data.load`, or
            None for no augmentation.
        seed: Seed for weights, shuffling and augmentation.

    Example:
        >>> cfg = TrainConfig(lr=0.05, epochs=10, warmup_epochs=1)
        >>> cfg.total_steps(steps_per_epoch=100), cfg.warmup_steps(100)
        (1000, 100)
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    batch_size: int = 128
    epochs: int = 10
    warmup_epochs: float = 0.0
    final_lr: float = 0.0
    weight_decay: float = 5e-4
    no_decay: tuple[str, ...] = ()
    momentum: float = 0.9
    nesterov: bool = False
    label_smoothing: float = 0.0
    augment: str | None = None
    seed: int = 0

    def __post_init__(self):
        self.optimizer = str(self.optimizer).lower()
        self.no_decay = tuple(self.no_decay)
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            problems.append(f"batch_size must be a positive integer (got {self.batch_size})")
        if int(self.epochs) != self.epochs or self.epochs < 1:
            problems.append(f"epochs must be a positive integer (got {self.epochs})")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append(f"warmup_epochs must be in [0, epochs) (got {self.warmup_epochs})")
        if not 0 <= self.final_lr <= self.lr:
            problems.append(f"final_lr must be in [0, lr] (got {self.final_lr})")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1) (got {self.momentum})")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if problems:
            raise ValueError("Invalid TrainConfig: " + "; ".join(problems) + ".")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run."""
        _check_steps_per_epoch(steps_per_epoch)
        return int(self.epochs * steps_per_epoch)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Warm-up length in optimizer steps (rounded to the nearest step)."""
        _check_steps_per_epoch(steps_per_epoch)
        return int(round(self.warmup_epochs * steps_per_epoch))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["no_decay"] = list(self.no_decay)
        return out


def _check_steps_per_epoch(steps_per_epoch) -> None:
    if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}.")


def schedule_from_config(config: TrainConfig, steps_per_epoch: int) -> WarmupCosine:
    """The `WarmupCosine` schedule that `config` describes.

    Example:
        >>> s = schedule_from_config(TrainConfig(lr=0.2, epochs=4), steps_per_epoch=5)
        >>> s.total_steps, s.warmup_steps, s.base_lr
        (20, 0, 0.2)
    """
    return warmup_cosine(config.lr, config.total_steps(steps_per_epoch),
                         config.warmup_steps(steps_per_epoch), config.final_lr,
                         steps_per_epoch=steps_per_epoch)


def optimizer_from_config(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """A fresh optimizer (with its schedule) for `config`.

    The growth engine rebuilds it at each growth; Keras' schedule reads the
    optimizer's iteration count, which the engine carries over (or, after a
    moment reset, moves into a `ShiftedSchedule`).

    Example:
        >>> opt = optimizer_from_config(TrainConfig(optimizer="adamw", lr=1e-3), 10)
        >>> type(opt).__name__
        'AdamW'
    """
    return make_optimizer(
        config.optimizer, schedule_from_config(config, steps_per_epoch),
        momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay, no_decay=config.no_decay)


def compile_with_config(model: keras.Model, config: TrainConfig, steps_per_epoch: int,
                        label_mode: str = "onehot", **compile_kwargs) -> keras.Model:
    """Compiles `model` for classification with the optimizer and schedule of `config`.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> m = compile_with_config(m, TrainConfig(), steps_per_epoch=10)
        >>> round(float(m.optimizer.learning_rate), 4)
        0.1
    """
    return compile_for_classification(
        model, optimizer_from_config(config, steps_per_epoch),
        label_smoothing=config.label_smoothing, label_mode=label_mode, **compile_kwargs)

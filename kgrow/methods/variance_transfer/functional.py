"""Pure forms of variance-transfer growth (Yuan, Savarese, Maire, NeurIPS 2023).

Four pieces, each a function of plain data:

* Parameterization (in the engine, `kgrow.surgery.parameterization`, shared
  with other width-growth methods; re-exported here): `fan_in_initialize(model)`
  re-initializes kernels with variance ``1 / fan_in`` (hidden and input
  layers) and ``1 / fan_in^2`` (output layers); `fan_in_lr_factors(model,
  reference)` gives per-layer LR factors ``{layer name: float}``.
* Growth: `PairedVarianceTransfer`, a growth initializer: pairs ``[V; V]`` /
  ``[Z, -Z]`` whose scales are transferred from the existing weights, and
  the old fan-out rescaled by ``sqrt(C_t / C_{t+1})`` wherever a BatchNorm
  makes that exact (see docs/methods/variance_transfer.md for the derivation).
* Partitions: `initial_partitions` / `carry_partitions` label every entry of
  every trainable variable with the growth stage that added it, carried
  through each growth's `TransferPlan`.
* LR adaptation: `partition_lr_scales` turns partitions and weights into
  element-wise scales ``{path: array}`` with
  ``lr_t = lr_0 * ||W_dt||_F / ||W_0||_F``; `apply_lr_scales` hands them to the
  controller (the one adapter to the per-entry LR-scales component).
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Optional

import keras
import numpy as np

from kgrow.growth import VarianceTransfer
from kgrow.growth.initializers import compensable_rescale
from kgrow.growth.base import GrowthRequest
from kgrow.surgery.parameterization import (OPTIMIZER_RULES, fan_in_initialize,
                                            fan_in_lr_factors, kernel_layer_roles, layer_fans)

__all__ = ["layer_fans", "kernel_layer_roles", "fan_in_initialize", "fan_in_lr_factors",
           "PairedVarianceTransfer", "initial_partitions", "carry_partitions",
           "partition_lr_scales", "apply_lr_scales", "check_batch_schedule",
           "check_batch_kernels", "OPTIMIZER_RULES",
           "batch_lr_factor", "BATCH_LR_RULES"]

# -- growth --------------------------------------------------------------------

def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a)))) if a.size else 0.0


def _transferred_std(binding, slices) -> float:
    """Std of new entries so a new unit's pre-activation matches the old units' on average.

    An old unit sums ``fan_in_old`` inputs with weights of RMS ``r`` (its new
    inputs come in cancelling pairs and add nothing); a new unit sums all
    ``fan_in_new`` inputs, the new ones included (a pair's two equal inputs
    with independent weights do not cancel), so its weights get
    ``r * sqrt(fan_in_old / fan_in_new)``. ``r`` is the RMS of the whole
    variable before growth (the binding's variable is the old model's).
    """
    old = np.asarray(binding.variable.numpy(), np.float64)
    r = _rms(old)
    if r == 0.0:
        return 1.0 / math.sqrt(max(slices.fan_in, 1))
    old_fan_in = binding.fan_in(old.shape)
    return r * math.sqrt(old_fan_in / max(slices.fan_in, 1))


class PairedVarianceTransfer(VarianceTransfer):
    """Pairs with transferred variance; old fan-out rescaled where a BatchNorm makes it exact.

    New channels come in pairs with equal fan-in ``[V; V]`` and opposite
    fan-out ``[Z, -Z]`` (see `kgrow.growth.VarianceTransfer`), so the pair
    cancels and the function is kept. Unlike the engine's initializer, whose
    ``V, Z`` follow the init rule ``N(0, 1/fan_in^2)`` and are tiny next to
    trained weights, the scales are *transferred*: ``V`` has the RMS of the
    producer's existing filters and ``Z`` the RMS of the (rescaled) existing
    fan-out, so new channels carry activations of the size the old ones do;
    new BatchNorm channels take the mean gamma and moving variance of the
    old ones. The old fan-out is multiplied by ``s = sqrt(C_t / C_{t+1})``
    ("sqrt") or ``C_t / C_{t+1}`` ("linear") only in groups whose consumers
    feed a BatchNorm (``ChannelGroup.bn_compensable``: the BatchNorm undoes
    ``s`` exactly); elsewhere ``s = 1``, so growth stays exact everywhere.

    Args:
        rescale: "sqrt" (default: keeps the consumer's pre-activation variance
            once the new channels are as active as the old), "linear" or None.
        noise: symmetry-breaking noise on the second pair member, relative to
            ``V``'s std (0: exact; the opposite signs already make the pair's
            fan-in gradients opposite, so the members drift apart anyway).

    Example:
        >>> PairedVarianceTransfer().rescale
        'sqrt'
    """

    name = "paired_variance_transfer"

    def __init__(self, rescale: Optional[str] = "sqrt", noise: float = 0.0):
        super().__init__(rescale=rescale, noise=noise)

    def fan_out_scale(self, request: GrowthRequest) -> float:
        return compensable_rescale(self.rescale, request)

    def producer_std(self, request: GrowthRequest, index: int) -> float:
        return _transferred_std(request.group.producers[index], request.producers[index])

    def consumer_std(self, request: GrowthRequest, index: int, scale: float) -> float:
        return scale * _transferred_std(request.group.consumers[index], request.consumers[index])

    def new_carriers(self, request: GrowthRequest, prototype: np.ndarray) -> list:
        carriers = super().new_carriers(request, prototype)
        for i, (b, sl) in enumerate(zip(request.group.carriers, request.carriers)):
            if sl.kind in ("gamma", "moving_variance") and request.n_old:
                # The old model's values: another group's BatchNorm compensation may
                # already have rescaled the current ones, which `V` does not follow.
                before = np.asarray(b.variable.numpy(), np.float64)
                mean = before.mean() if before.ndim == 1 else sl.old.mean(axis=0)
                carriers[i] = np.broadcast_to(mean, carriers[i].shape).copy()
        return carriers

    def check(self, group, old_size=None, new_size=None) -> Optional[str]:
        mixing = self.mixing(group)
        if mixing:
            return (f"the group is normalized over its channels by {mixing}; new channels "
                    "change those statistics")
        if self.noise:
            return "noise makes the two members of a pair differ, so they no longer cancel"
        return None


# -- partitions ----------------------------------------------------------------

def initial_partitions(shapes: Mapping[str, tuple]) -> dict:
    """Every entry in subnetwork 0: ``{path: int32 zeros of the shape}``.

    Example:
        >>> initial_partitions({"d/kernel": (2, 3)})["d/kernel"].tolist()
        [[0, 0, 0], [0, 0, 0]]
    """
    return {p: np.zeros(tuple(s), np.int32) for p, s in shapes.items()}


def carry_partitions(partitions: Mapping[str, np.ndarray], plan, shapes: Mapping[str, tuple],
                     stage: int) -> dict:
    """Partitions after a growth: old entries keep their stage, new ones get `stage`.

    Each new variable's labels are gathered from its source's labels along
    the plan's per-axis index (`VariableTransfer.gather`); an entry with -1
    on any axis (a new row or a new column) belongs to `stage`, and so does
    every entry of a variable without a source. Variables of `shapes`
    (normally the trainable ones) not in the plan are an error.

    Args:
        partitions: ``{old path: int array}``.
        plan: the growth's `kgrow.surgery.TransferPlan` (new path -> source).
        shapes: ``{new path: shape}`` of the variables to label.
        stage: the index of the stage this growth starts.

    Returns:
        ``{new path: int32 array of the new shape}``.

    Example:
        >>> from kgrow.surgery import TransferPlan, VariableTransfer
        >>> plan = TransferPlan({"d/kernel": VariableTransfer("d/kernel", ([0, 1, -1], [0, -1]))})
        >>> carry_partitions({"d/kernel": np.zeros((2, 1), np.int32)}, plan,
        ...                  {"d/kernel": (3, 2)}, stage=1)["d/kernel"].tolist()
        [[0, 1], [0, 1], [1, 1]]
    """
    out = {}
    for path, shape in shapes.items():
        if path not in plan:
            raise KeyError(f"carry_partitions: the plan does not cover {path!r}")
        t = plan[path]
        old = partitions.get(t.source) if t.source is not None else None
        if old is None:
            out[path] = np.full(tuple(shape), stage, np.int32)
        else:
            out[path] = t.gather(np.asarray(old, np.int32), tuple(shape), fill=stage
                                 ).astype(np.int32)
    return out


def partition_lr_scales(partitions: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
                        *, scope: str = "variable", min_ndim: int = 2,
                        base: Optional[Mapping[str, float]] = None) -> dict:
    """Element-wise LR scales ``lr_t / lr_0 = ||W_dt||_F / ||W_0||_F`` per entry.

    Args:
        partitions: ``{path: int array}`` (`carry_partitions`).
        weights: ``{path: array}`` of the same shapes (current values).
        scope: "variable" (norms of each variable's own partitions: every
            layer rebalances its subnetworks) or "global" (norms over all
            scaled variables together, the paper's W = {W_0, W_d1, ...}).
        min_ndim: variables with fewer dimensions (biases, norms) get 1.
        base: optional ``{path: factor}`` multiplied in (per-layer factors).

    Returns:
        ``{path: float32 array of the variable's shape}`` (1 where stage 0;
        a partition whose ``W_0`` part has zero norm gets 1).

    Raises:
        ValueError: unknown scope, or shapes that differ.

    Example:
        >>> w = {"k": np.array([[3.0, 0.0], [0.0, 4.0]])}
        >>> p = {"k": np.array([[0, 1], [1, 1]])}
        >>> [[round(float(v), 4) for v in row] for row in partition_lr_scales(p, w)["k"]]
        [[1.0, 1.3333], [1.3333, 1.3333]]
    """
    if scope not in ("variable", "global"):
        raise ValueError(f"scope must be 'variable' or 'global', got {scope!r}")
    base = dict(base or {})
    sq = {}
    for path, part in partitions.items():
        w = np.asarray(weights[path], np.float64)
        if w.shape != np.shape(part):
            raise ValueError(f"partition of {path!r} has shape {np.shape(part)}, the weight "
                             f"{w.shape}")
        if w.ndim >= min_ndim:
            sq[path] = np.bincount(np.ravel(part), weights=np.ravel(w * w))
    total = np.zeros(max((len(v) for v in sq.values()), default=0))
    for v in sq.values():
        total[:len(v)] += v
    out = {}
    for path, part in partitions.items():
        part = np.asarray(part)
        if path not in sq:
            out[path] = np.full(part.shape, base.get(path, 1.0), np.float32)
            continue
        norms = np.sqrt(sq[path] if scope == "variable" else total)
        factors = np.where(norms[0] > 0, norms / (norms[0] if norms[0] > 0 else 1.0), 1.0)
        factors = np.where(norms > 0, factors, 1.0)
        factors[0] = 1.0
        out[path] = (factors[part] * base.get(path, 1.0)).astype(np.float32)
    return out


# -- applying element-wise scales ----------------------------------------------

def apply_lr_scales(controller, scales: Mapping[str, np.ndarray]) -> str:
    """Hands element-wise LR scales to the controller's per-entry LR-scales
    component (`kgrow.controller.LRScales`), replacing the previous ones;
    returns the route taken ("per_entry").

    Args:
        controller: the `TrainingController`.
        scales: ``{variable path: array of its shape}``.
    """
    from kgrow.controller.lr_scales import LRScales
    LRScales.of(controller).set({p: np.asarray(a, np.float32) for p, a in scales.items()})
    return "per_entry"


# -- batch-size adaptation ------------------------------------------------------

#: How the learning rate follows the batch size (`batch_lr_factor`).
BATCH_LR_RULES = ("linear", "sqrt", None)


def check_batch_schedule(batch_sizes, num_train: Optional[int], base_batch: int) -> list:
    """Validates per-stage batch sizes; returns the linear-scaling LR factors ``b / base``.

    Larger batches as the model grows keep the per-sample LR with the linear
    scaling rule (Goyal et al., 2017): ``lr = lr_0 * b / b_0``.

    Args:
        batch_sizes: one batch size per stage.
        num_train: the training-set size each must divide (None: not checked).
        base_batch: the batch size the base learning rate is for.

    Raises:
        ValueError: a size that is not a positive int, or that does not divide
            the training set (the last batch of every epoch would be partial
            and the step count per epoch would depend on the stage's rounding).

    Example:
        >>> check_batch_schedule([64, 128], 1024, 128)
        [0.5, 1.0]
    """
    out = []
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b <= 0:
            raise ValueError(f"batch sizes must be positive ints, got {b!r}")
        if num_train is not None and num_train % b:
            raise ValueError(f"batch size {b} does not divide the {num_train} training samples; "
                             f"use a divisor of {num_train} or a subset that {b} divides.")
        out.append(b / base_batch)
    return out


def check_batch_kernels(batch_sizes, model) -> None:
    """Refuses odd batch sizes for a model with strided 1x1 convolutions.

    TensorFlow 2.21's oneDNN backward-weights kernel of a 1x1 convolution with
    stride > 1 writes past its workspace when the batch is odd and the layer
    reads fewer channels than the kernel's block (16 with AVX-512, 8 with
    AVX2): the process aborts with a heap-corruption message (oneDNN issue
    #6035, measured here with a ResNet shortcut at batch 125, 4 input channels).
    Width growth makes exactly such layers (a ResNet-20 shortcut at width 1/4
    reads 4 channels), so an odd stage batch is refused before training,
    whatever the widths; even sizes are unaffected. Skipped when oneDNN is off
    (``TF_ENABLE_ONEDNN_OPTS=0``).

    Raises:
        ValueError: an odd size and a strided 1x1 convolution in `model`.

    Example:
        >>> import keras
        >>> x = keras.Input((8, 8, 4))
        >>> m = keras.Model(x, keras.layers.Conv2D(8, 1, strides=2)(x))
        >>> check_batch_kernels([120, 250], m)
        >>> check_batch_kernels([125], m)
        Traceback (most recent call last):
        ...
        ValueError: batch sizes [125] are odd and the model has strided 1x1 convolutions ...
    """
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() in ("0", "false"):
        return
    odd = [int(b) for b in batch_sizes if int(b) % 2]
    if not odd:
        return
    strided = [layer.name for layer in model._flatten_layers(include_self=False)
               if isinstance(layer, keras.layers.Conv2D)
               and tuple(layer.kernel_size) == (1, 1) and max(layer.strides) > 1]
    if strided:
        raise ValueError(
            f"batch sizes {odd} are odd and the model has strided 1x1 convolutions "
            f"({strided[:3]}): TensorFlow's oneDNN kernel for their weight gradient corrupts "
            "memory at odd batch sizes once growth narrows them below 16 channels (oneDNN "
            "issue #6035; the process aborts). Use even batch sizes, or set "
            "TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow.")


def batch_lr_factor(batch_size: int, base_batch: int, rule: Optional[str] = "linear") -> float:
    """The learning-rate factor for training at `batch_size` an LR tuned for `base_batch`.

    "linear": ``b / b_0`` (SGD, Goyal et al. 2017); "sqrt": ``sqrt(b / b_0)``
    (Adam, Malladi et al. 2022, "On the SDEs and scaling rules for adaptive
    gradient algorithms"); None: 1.

    Example:
        >>> batch_lr_factor(256, 128), batch_lr_factor(512, 128, "sqrt")
        (2.0, 2.0)
    """
    if rule not in BATCH_LR_RULES:
        raise ValueError(f"rule must be one of {BATCH_LR_RULES}, got {rule!r}")
    ratio = float(batch_size) / float(base_batch)
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return float(np.sqrt(ratio))
    return 1.0

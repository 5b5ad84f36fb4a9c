"""Progressive layer freezing (SpFDE), functional form: plain functions and plain data.

* `find_freeze_blocks(model, blocks=None, unit="block")`: the groups of layers
  that freeze together, front to back, as lists of layer names (layers with
  weights only). By default the ResNet blocks of `kgrow.surgery.find_blocks`;
  layers outside every block that come before a block (the stem, transition
  layers) join the next block; the layers after the last block (the head) are
  never part of a group, so they never freeze.
* `prefix_flops(model, groups)`: training FLOPs per sample with the first
  0, 1, ..., n groups frozen, counted by `kgrow.flops.count` (a frozen layer
  has no weight gradient; a frozen *leading prefix* has no activation
  gradient either, because nothing in front of it trains).
* `freeze_schedule(num_blocks, start, interval, epochs)`: the epochs at which
  the blocks freeze (single-shot: `start`, `start + interval`, ...; optionally
  several blocks per event).
* `freeze_plan(model, target_saving, epochs, interval, start=None)`: how many
  leading blocks freeze, and when, for a target training-FLOPs saving over
  the run. `start` (T_frz) may be derived; see `freeze_plan`.
* `freeze_blocks(model_or_controller, groups)`: freezes groups now.
* `block_lr_multiplier(epoch, freeze_epoch, epochs)`: the per-block cosine LR
  factor, and `block_lr_rules(plan, epoch)` for all blocks of a plan.

Example:
    >>> freeze_schedule(3, start=4, interval=2, epochs=10)
    [4, 6, 8]
    >>> round(block_lr_multiplier(0, freeze_epoch=6, epochs=12), 3)
    1.0
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Optional, Sequence, Union

import keras

from kgrow import flops as flops_lib
from kgrow.surgery.blocks import find_blocks, find_stages

__all__ = ["FreezePlan", "find_freeze_blocks", "prefix_flops", "freeze_schedule",
           "schedule_saving", "freeze_plan", "freeze_blocks", "block_lr_multiplier",
           "block_lr_rules", "block_pattern", "check_targets", "PAPER_FREEZE_FRACTION",
           "GLOBAL_LR_SHAPES"]

#: SpFDE freezes "2/3 of the layers" when it derives T_frz from the FLOPs target.
PAPER_FREEZE_FRACTION = 2.0 / 3.0
#: Shapes of the global LR schedule the per-block multipliers are relative to.
GLOBAL_LR_SHAPES = ("cosine", "constant")

BlocksSpec = Union[None, Sequence[Sequence[str]], Callable]


# --------------------------------------------------------------------------- blocks


def _weighted_layers(model) -> list:
    """Layers with weights that can train, in graph (topological) order, nested looked through."""
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.Model):
            continue  # its layers are listed themselves
        if getattr(layer, "_trainable_variables", None):
            out.append(layer)
    return out


def _check_groups(groups, order: dict, what: str) -> list:
    seen = {}
    out = []
    for i, group in enumerate(groups):
        if isinstance(group, str):
            raise TypeError(f"{what}: each block is a list of layer names; got the string "
                            f"{group!r} (wrap it in a list).")
        names = list(group)
        unknown = [n for n in names if n not in order]
        if unknown:
            raise ValueError(f"{what}: block {i} names {unknown}, which are not layers with "
                             f"trainable weights of the model (known: {list(order)[:30]}).")
        if not names:
            raise ValueError(f"{what}: block {i} has no layer with weights.")
        for n in names:
            if n in seen:
                raise ValueError(f"{what}: layer {n!r} is in blocks {seen[n]} and {i}; blocks "
                                 "must be disjoint.")
            seen[n] = i
        out.append(sorted(dict.fromkeys(names), key=order.get))
    firsts = [order[g[0]] for g in out]
    if firsts != sorted(firsts):
        raise ValueError(f"{what}: blocks must be listed front to back (input side first); "
                         f"their first layers come in the order {[g[0] for g in out]}.")
    return out


def find_freeze_blocks(model, blocks: BlocksSpec = None, unit: str = "block") -> list:
    """The groups of layers that freeze together, front to back.

    Args:
        model: a Functional model.
        blocks: None to find the blocks by structure (`kgrow.surgery.find_blocks`);
            a list of lists of layer names (explicit groups, front to back); or a
            predicate `layer -> key` (layers with equal non-None keys form a
            group, groups ordered by their first layer; None: in no group).
        unit: with `blocks=None`: "block" (one group per residual block) or
            "stage" (one group per run of repeated blocks, `find_stages`).

    Returns:
        list of lists of layer names (only layers with trainable weights). With
        `blocks=None`, the layers in front of a block that belong to no block
        (stem, transitions) join that block; the head after the last block is
        in no group.

    Raises:
        ValueError: no blocks found, unknown or overlapping names, a predicate
            that groups nothing, groups out of order, or an unknown `unit`.

    Example:
        >>> from kgrow import models
        >>> model = models.get("resnet20", (8, 8, 3), 10, width=0.25)
        >>> groups = find_freeze_blocks(model)
        >>> len(groups), groups[0][:3]
        (9, ['stem_conv', 'stem_bn', 'stage1_block0_conv1'])
        >>> len(find_freeze_blocks(model, unit="stage"))
        3
    """
    weighted = _weighted_layers(model)
    order = {layer.name: i for i, layer in enumerate(weighted)}
    if callable(blocks) and not isinstance(blocks, (list, tuple)):
        keyed: dict = {}
        for layer in weighted:
            key = blocks(layer)
            if key is not None:
                keyed.setdefault(key, []).append(layer.name)
        if not keyed:
            raise ValueError("The block predicate gave every layer with weights the key None; "
                             "it must map the layers of each block to one key.")
        return _check_groups(list(keyed.values()), order, "find_freeze_blocks(predicate)")
    if blocks is not None:
        return _check_groups(blocks, order, "find_freeze_blocks(blocks=...)")
    if unit not in ("block", "stage"):
        raise ValueError(f"unit must be 'block' or 'stage', got {unit!r}.")
    found = find_blocks(model)
    if not found:
        raise ValueError(f"kgrow.surgery.find_blocks found no residual blocks in model "
                         f"{model.name!r}; give the blocks explicitly (blocks=[[layer names], "
                         "...] or a predicate layer -> block key).")
    if unit == "stage":
        units = [[n for b in s.blocks for n in b.layers] for s in find_stages(model)]
    else:
        units = [list(b.layers) for b in found]
    members = [{n for n in u if n in order} for u in units]
    groups = [[] for _ in units]
    last = max(order[n] for m in members for n in m)
    pending = []  # weighted layers between blocks: they join the next block
    for layer in weighted:
        if order[layer.name] > last:
            break
        owner = next((i for i, m in enumerate(members) if layer.name in m), None)
        if owner is None:
            pending.append(layer.name)
            continue
        groups[owner].extend(pending)
        pending = []
        groups[owner].append(layer.name)
    return _check_groups([g for g in groups if g], order, "find_freeze_blocks")


def block_pattern(group: Sequence[str]) -> str:
    """A variable-path regex selecting exactly the variables of the layers in `group`.

    One LR-group rule per block (one scalar variable in the step), however many
    layers the block has.

    Example:
        >>> block_pattern(["conv1", "bn.1"])
        '^(?:conv1|bn\\\\.1)/'
    """
    return "^(?:" + "|".join(re.escape(n) for n in group) + ")/"


# --------------------------------------------------------------------------- FLOPs


def _layers_by_name(model) -> dict:
    return {layer.name: layer for layer in model._flatten_layers(include_self=False,
                                                                   recursive=True)}


def prefix_flops(model, groups: Sequence[Sequence[str]], *, input_shape=None,
                 sparsity=None) -> list:
    """Training FLOPs per sample with the first k groups frozen, k = 0..len(groups).

    Counted by `kgrow.flops.count` (frozen = `trainable=False`): freezing a
    group drops its weight gradients, and while the frozen groups form the
    leading prefix nothing in front of the first trainable layer needs an
    activation gradient either. Groups already frozen in the model count as
    frozen in every entry. The model's trainable flags are restored afterwards.

    Args:
        model: the model.
        groups: lists of layer names, front to back (`find_freeze_blocks`).
        input_shape: for models with unknown input dimensions.
        sparsity: passed to `kgrow.flops.count` (densities or masks per
            variable path or layer name).

    Example:
        >>> from kgrow import models
        >>> model = models.get("resnet20", (8, 8, 3), 10, width=0.25)
        >>> costs = prefix_flops(model, find_freeze_blocks(model))
        >>> costs[0] > costs[1] > costs[-1] > 0
        True
    """
    by_name = _layers_by_name(model)
    # Parents before children: restoring a parent's flag resets its children.
    flags = [(layer, layer.trainable) for layer in model._flatten_layers(include_self=False,
                                                                         recursive=True)]
    out = []
    try:
        for k in range(len(groups) + 1):
            for group in groups[:k]:
                for name in group:
                    by_name[name].trainable = False
            out.append(float(flops_lib.count(model, input_shape, sparsity=sparsity).training))
    finally:
        for layer, flag in flags:
            if layer.trainable != flag:
                layer.trainable = flag
    return out


# --------------------------------------------------------------------------- schedule


def _check_int(name, value, low) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            isinstance(value, float) and value.is_integer()):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _check_run(epochs, interval, start=None) -> tuple:
    epochs = _check_int("epochs", epochs, 1)
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval <= 0:
        raise ValueError(f"The freezing interval dT must be >= 1 epoch, got {interval}.")
    interval = _check_int("interval", interval, 1)
    if start is not None:
        start = _check_int("start (T_frz)", start, 0)
        if start >= epochs:
            raise ValueError(f"start (T_frz) = {start} is beyond the run: the last epoch is "
                             f"{epochs - 1} (epochs={epochs}), so no block would ever freeze.")
    return epochs, interval, start


def freeze_schedule(num_blocks: int, start: int, interval: int, epochs: int,
                    blocks_per_event: int = 1) -> list:
    """Epochs at which blocks 0, 1, ... freeze, those inside the run.

    Block b freezes at `start + (b // blocks_per_event) * interval` (the paper:
    one block per event). It is trained in epochs `[0, freeze_epoch[b])` and
    frozen from then on (single-shot: never unfrozen).

    Example:
        >>> freeze_schedule(4, start=6, interval=2, epochs=10)
        [6, 8]
        >>> freeze_schedule(4, start=1, interval=1, epochs=10, blocks_per_event=2)
        [1, 1, 2, 2]
    """
    epochs, interval, start = _check_run(epochs, interval, start)
    num_blocks = _check_int("num_blocks", num_blocks, 0)
    per = _check_int("blocks_per_event", blocks_per_event, 1)
    return [e for e in (start + (b // per) * interval for b in range(num_blocks)) if e < epochs]


def frozen_count(freeze_epochs: Sequence[int], epoch: int) -> int:
    """How many blocks are frozen during `epoch` (the freezes at its start included)."""
    return sum(1 for e in freeze_epochs if e <= epoch)


def schedule_saving(costs: Sequence[float], freeze_epochs: Sequence[int], epochs: int) -> float:
    """Fraction of the run's training FLOPs saved, `1 - sum_e costs[k(e)] / (epochs * costs[0])`.

    `costs[k]` is the training cost per sample with k leading blocks frozen
    (`prefix_flops`); every epoch sees the same number of samples.

    Example:
        >>> round(schedule_saving([10.0, 8.0, 6.0], [2, 3], epochs=4), 4)  # 1 - 34/40
        0.15
    """
    total = sum(costs[frozen_count(freeze_epochs, e)] for e in range(epochs))
    return 1.0 - total / (epochs * costs[0])


@dataclasses.dataclass(frozen=True)
class FreezePlan:
    """A progressive-freezing schedule as plain data (`to_dict` / `from_dict` round-trip).

    Attributes:
        groups: all freezable groups (lists of layer names), front to back.
        freeze_epochs: epoch at which group b freezes, for the first
            `len(freeze_epochs)` groups (the others never freeze).
        start: T_frz, the epoch of the first freeze.
        interval: dT, epochs between freezes.
        blocks_per_event: blocks frozen at each freeze event.
        epochs: length of the run.
        costs: training FLOPs per sample with 0..len(groups) leading groups frozen.
        target: the target saving asked for.
        saving: the training-FLOPs saving of the plan over the run.
        earliest: first epoch a block may freeze at (with growth: the first
            epoch after the architecture's last planned change; else 0).
    """
    groups: tuple
    freeze_epochs: tuple
    start: int
    interval: int
    epochs: int
    costs: tuple
    target: float
    saving: float
    blocks_per_event: int = 1
    earliest: int = 0

    @property
    def num_frozen(self) -> int:
        """Blocks frozen by the end of the run."""
        return len(self.freeze_epochs)

    def frozen_at(self, epoch: int) -> int:
        """Blocks frozen during `epoch`."""
        return frozen_count(self.freeze_epochs, epoch)

    def step_saving(self, k: int) -> float:
        """Training-FLOPs saving of one step with k leading blocks frozen."""
        return 1.0 - self.costs[k] / self.costs[0]

    def to_dict(self) -> dict:
        return {"groups": [list(g) for g in self.groups],
                "freeze_epochs": list(self.freeze_epochs), "start": self.start,
                "interval": self.interval, "epochs": self.epochs, "costs": list(self.costs),
                "target": self.target, "saving": self.saving,
                "blocks_per_event": self.blocks_per_event, "earliest": self.earliest}

    @classmethod
    def from_dict(cls, d: dict) -> "FreezePlan":
        return cls(tuple(tuple(g) for g in d["groups"]), tuple(int(e) for e in d["freeze_epochs"]),
                   int(d["start"]), int(d["interval"]), int(d["epochs"]),
                   tuple(float(c) for c in d["costs"]), float(d["target"]), float(d["saving"]),
                   int(d.get("blocks_per_event", 1)), int(d.get("earliest", 0)))


def _cap_blocks(model, groups, fraction) -> int:
    """Fewest leading groups holding >= `fraction` of the model's kernel layers."""
    norm = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
            keras.layers.GroupNormalization)
    kernels = [layer.name for layer in _weighted_layers(model) if not isinstance(layer, norm)]
    need = fraction * len(kernels)
    have = 0
    kernel_set = set(kernels)
    for k, group in enumerate(groups, 1):
        have += sum(1 for n in group if n in kernel_set)
        if have >= need - 1e-9:
            return k
    return len(groups)


def check_targets(target_saving, freeze_fraction=PAPER_FREEZE_FRACTION) -> None:
    """Raises for a FLOPs target outside (0, 1) or a freeze fraction outside (0, 1].

    Example:
        >>> check_targets(0.25)
    """
    if isinstance(target_saving, bool) or not isinstance(target_saving, (int, float)):
        raise TypeError(f"target_saving must be a number, got {target_saving!r}")
    if not 0.0 < float(target_saving) < 1.0:
        raise ValueError(f"target_saving is a fraction of the training FLOPs in (0, 1), got "
                         f"{target_saving}.")
    if not 0.0 < float(freeze_fraction) <= 1.0:
        raise ValueError(f"freeze_fraction must be in (0, 1], got {freeze_fraction}.")


def freeze_plan(model, target_saving: float, epochs: int, interval: int,
                start: Optional[int] = None,
                *, blocks_per_event: int = 1, blocks: BlocksSpec = None, unit: str = "block",
                freeze_fraction: float = PAPER_FREEZE_FRACTION, input_shape=None,
                sparsity=None, groups: Optional[Sequence[Sequence[str]]] = None,
                earliest: int = 0) -> FreezePlan:
    """How many leading blocks to freeze, and when, to save `target_saving` of the training FLOPs.

    The saving is over the whole run (`schedule_saving`): frozen blocks still
    run forward; each epoch with k leading blocks frozen costs `costs[k]` per
    sample (`prefix_flops`, from `kgrow.flops.count`).

    Rules:

    * `start` (T_frz) given: blocks freeze at `start, start + interval, ...`;
      the plan takes the fewest blocks whose saving reaches the target.
    * `start` None (derived, the paper's rule): at most the leading blocks
      holding `freeze_fraction` (2/3) of the model's kernel layers
      (convolutions and dense layers) freeze; T_frz is the *latest* multiple
      of `interval` at which that many blocks still reach the target (so the
      freezes fall on the same dT grid as, e.g., sparse-mask updates); then
      the fewest blocks
      reaching it from that T_frz are kept.
    * `earliest` (with a growth method in front: the first epoch after the
      architecture's last planned change): nothing freezes before it. A derived
      T_frz is the latest grid epoch >= `earliest` (or `earliest` itself);
      a given `start` before it is refused. The saving stays a fraction of
      the run at this (the final) architecture, so it adds to the growth's.

    The head (layers after the last group) never freezes, and at least one
    layer with weights always stays trainable.

    Args:
        model: the model (its current trainable flags are the baseline).
        target_saving: fraction of the run's training FLOPs to save, in (0, 1).
        epochs: epochs of the run.
        interval: dT, epochs between two freezes (>= 1).
        start: T_frz (None: derived).
        blocks_per_event: blocks frozen at each event (the paper: 1; more
            lets short runs reach a target with fine-grained blocks), or
            "auto": the fewest (1 when it suffices) that reach the target.
        blocks, unit: see `find_freeze_blocks`.
        freeze_fraction: share of kernel layers at most frozen when `start`
            is derived, in (0, 1].
        input_shape, sparsity: passed to `kgrow.flops.count`.
        groups: precomputed groups (skips `find_freeze_blocks`).
        earliest: first epoch a block may freeze at (0: any).

    Returns:
        a `FreezePlan`.

    Raises:
        ValueError: target outside (0, 1), interval < 1, start beyond the run
            or before `earliest`, or a target no split reaches (the message
            gives the largest reachable saving).

    Example:
        >>> from kgrow import models
        >>> model = models.get("resnet20", (8, 8, 3), 10, width=0.25)
        >>> plan = freeze_plan(model, 0.2, epochs=20, interval=1)
        >>> plan.saving >= 0.2, plan.start < 20
        (True, True)
    """
    check_targets(target_saving, freeze_fraction)
    target = float(target_saving)
    epochs, interval, start = _check_run(epochs, interval, start)
    earliest = _check_int("earliest", earliest, 0)
    if earliest >= epochs:
        raise ValueError(
            f"Nothing can freeze: blocks may freeze from epoch {earliest} on (with growth: "
            f"after every layer trained an epoch at its final size), and the run's last epoch "
            f"is {epochs - 1}. End the growth earlier or train longer.")
    if start is not None and start < earliest:
        raise ValueError(
            f"start (T_frz) = {start} is before epoch {earliest}, the first at which blocks may "
            f"freeze (with growth: the epoch after the architecture's last change; a block "
            f"frozen earlier would get new weights that never train). Give start >= "
            f"{earliest}, or start=None to derive it.")
    groups = ([list(g) for g in groups] if groups is not None
              else find_freeze_blocks(model, blocks, unit))
    if blocks_per_event == "auto":
        error = None
        for per in range(1, len(groups) + 1):
            try:
                return freeze_plan(model, target, epochs, interval, start, blocks_per_event=per,
                                   freeze_fraction=freeze_fraction, input_shape=input_shape,
                                   sparsity=sparsity, groups=groups, earliest=earliest)
            except ValueError as err:
                if "unreachable" not in str(err):
                    raise
                error = err
        raise error
    per = _check_int("blocks_per_event", blocks_per_event, 1)
    weighted = {layer.name for layer in _weighted_layers(model)}
    if weighted <= {n for g in groups for n in g}:
        groups = groups[:-1]  # something must keep training
        if not groups:
            raise ValueError("The model has a single freezable block and nothing else with "
                             "weights; freezing it would stop training.")
    costs = prefix_flops(model, groups, input_shape=input_shape, sparsity=sparsity)
    if costs[0] <= 0:
        raise ValueError("The model has no training FLOPs to save.")

    def saving(k, t):
        return schedule_saving(costs, freeze_schedule(k, t, interval, epochs, per), epochs)

    def fewest(t, cap):
        for k in range(1, cap + 1):
            if saving(k, t) >= target - 1e-12:
                return k
        return None

    after = f" (nothing freezes before epoch {earliest})" if earliest else ""
    if start is None:
        cap = _cap_blocks(model, groups, float(freeze_fraction))
        # On the interval grid, so that the freezes coincide with updates every
        # dT epochs of other techniques (SpFDE syncs them with MEST's mask updates).
        candidates = list(range((epochs - 1) // interval * interval, earliest - 1, -interval))
        if earliest % interval:
            candidates.append(earliest)
        start = next((t for t in candidates if saving(cap, t) >= target - 1e-12), None)
        if start is None:
            best = saving(cap, earliest)
            raise ValueError(
                f"target_saving={target:.3f} is unreachable: freezing the first {cap} of "
                f"{len(groups)} blocks (freeze_fraction={freeze_fraction:.3f} of the layers), "
                f"{per} every {interval} epoch(s) from epoch {earliest} saves at most "
                f"{best:.3f} of the training FLOPs over {epochs} epochs{after}. Lower the "
                "target, shorten the interval, raise freeze_fraction or blocks_per_event.")
    else:
        cap = len(groups)
    k = fewest(start, cap)
    if k is None:
        best = saving(cap, start)
        raise ValueError(
            f"target_saving={target:.3f} is unreachable: freezing all {cap} freezable blocks, "
            f"{per} every {interval} epoch(s) from T_frz={start} saves at most {best:.3f} of the "
            f"training FLOPs over {epochs} epochs{after}. Lower the target, start earlier "
            "(or let T_frz be derived: start=None), shorten the interval or raise "
            "blocks_per_event.")
    return FreezePlan(tuple(tuple(g) for g in groups),
                      tuple(freeze_schedule(k, start, interval, epochs, per)), int(start),
                      int(interval), int(epochs), tuple(costs), target, saving(k, start), per,
                      earliest)


# --------------------------------------------------------------------------- actions


def freeze_blocks(target, groups: Sequence[Sequence[str]]) -> list:
    """Freezes the layers of `groups` now; returns their names.

    Args:
        target: a `TrainingController`, or a model (through its controller if
            it has one, so a running `fit` obeys; else Keras' own
            `trainable=False`, effective at the next `compile`).
        groups: lists of layer names.

    Example:
        >>> import keras
        >>> inp = keras.Input((3,)); h = keras.layers.Dense(3, name="a")(inp)
        >>> model = keras.Model(inp, keras.layers.Dense(2, name="b")(h))
        >>> freeze_blocks(model, [["a"]]), model.get_layer("a").trainable
        (['a'], False)
    """
    names = [n for g in groups for n in g]
    if not names:
        return []
    from kgrow.controller import TrainingController
    if isinstance(target, TrainingController):
        return target.freeze(names)
    controller = getattr(target, TrainingController._ATTR, None)
    if controller is not None:
        return controller.freeze(names)
    by_name = _layers_by_name(target)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"freeze_blocks: unknown layer name(s) {unknown}.")
    for n in names:
        by_name[n].trainable = False
    return names


def _cosine(epoch: float, length: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(epoch / length, 0.0), 1.0)))


def block_lr_multiplier(epoch: int, freeze_epoch: int, epochs: int,
                        global_lr: str = "cosine") -> float:
    """LR multiplier of a block that freezes at `freeze_epoch`, during `epoch`.

    The block's own learning rate is a cosine over its active epochs,
    `lr0 * c(epoch / freeze_epoch)` with `c(x) = (1 + cos(pi x)) / 2`. The
    multiplier is that relative to the global schedule, evaluated at the start
    of the epoch:

    * `global_lr="cosine"` (a cosine over the run, no warm-up):
      `c(epoch / freeze_epoch) / c(epoch / epochs)`;
    * `global_lr="constant"`: `c(epoch / freeze_epoch)`.

    1 at epoch 0, falling to near 0 in the block's last active epoch, 0 once
    frozen (a frozen block gets no update anyway).

    Example:
        >>> round(block_lr_multiplier(3, freeze_epoch=6, epochs=12), 4)  # 0.5 / c(0.25)
        0.5858
        >>> block_lr_multiplier(6, freeze_epoch=6, epochs=12)
        0.0
    """
    if global_lr not in GLOBAL_LR_SHAPES:
        raise ValueError(f"global_lr must be one of {GLOBAL_LR_SHAPES}, got {global_lr!r}.")
    if epoch >= freeze_epoch:
        return 0.0
    block = _cosine(epoch, freeze_epoch)
    if global_lr == "constant":
        return block
    return block / _cosine(epoch, epochs)


def block_lr_rules(plan: FreezePlan, epoch: int, global_lr: str = "cosine") -> dict:
    """`{block_pattern(group): multiplier}` for the blocks of `plan` that will freeze.

    Blocks that never freeze follow the global schedule (no rule).
    """
    return {block_pattern(g): block_lr_multiplier(epoch, f, plan.epochs, global_lr)
            for g, f in zip(plan.groups, plan.freeze_epochs)}

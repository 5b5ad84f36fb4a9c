"""Growth: train a smaller model first and grow it into the one you built.

Functional form: `FullSize.of(model)` records the sizes of the architecture
you built (channel groups and blocks per stage); `grow_to(model, full,
stage)` returns the `GrowthResult` that brings `model` to the sizes a
`Stage` asks for (depth first, then width, one composed transfer plan).

Callback form: `Growth(schedule)` does this inside one `model.fit`. At the
first epoch it shrinks the model you passed to the schedule's first stage; at
each later stage boundary it grows it, carrying weights, optimizer slots and
EMA shadows (`kgrow.controller.TrainingController.replace_model`), and the
train function is retraced once. After the last stage the model object is
your full architecture again: a plain Functional model with no kgrow layer in
it, whose variable paths are those of the model you built (inserted blocks
aside, which get `..._ins{k}_...` names).

Example (not run as a doctest: it trains a ResNet-20 for 9 epochs; the
README's growth example runs, shrunk, in tests/test_docs_examples.py):
    >>> import kgrow, keras  # doctest: +SKIP
    >>> data = kgrow.data.load("fashion_mnist")  # doctest: +SKIP
    >>> model = kgrow.models.get("resnet20", (28, 28, 1), 10)  # doctest: +SKIP
    >>> model.compile("sgd", "categorical_crossentropy")  # doctest: +SKIP
    >>> grow = Growth(GrowthSchedule.linear(total_epochs=9, num_stages=3, start=0.5),
    ...               initializer="orthogonal")  # doctest: +SKIP
    >>> model.fit(data.train, epochs=9, callbacks=[grow])  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Mapping, Optional, Sequence, Union


from kgrow.controller import ControlledCallback, Phase
from kgrow.schedules import GrowthSchedule, Stage
from kgrow.surgery import GrowthResult

__all__ = ["FullSize", "grow_to", "Growth"]

_INSERTED = re.compile(r"ins\d+_")
#: Where the weights of new blocks come from (`Growth(depth_source=...)`).
DEPTH_SOURCES = ("neighbour", "identity", "ema", "random")


@dataclasses.dataclass
class FullSize:
    """The sizes of the full architecture that growth converges to.

    Attributes:
        groups: resizable channel group name -> number of channels.
        stage_depths: blocks per stage (`kgrow.surgery.find_stages`), or []
            when the model has no repeated blocks.
        stage_min_depths: the smallest depth of each stage (blocks that change
            shape stay, plus one copyable block).
    """
    groups: dict
    stage_depths: list
    stage_min_depths: list
    image_size: Optional[list] = None
    image_multiple: int = 1

    @classmethod
    def of(cls, model, *, need_width=True, need_depth=True, need_resolution=False,
           block_spec=None, image_size=None) -> "FullSize":
        """Records `model`'s sizes; `image_size` is the full resolution of a
        model whose input size is free (None x None), for resolution stages."""
        from kgrow.surgery import require_rebuildable
        require_rebuildable(model, "Growth", every_layer=True)
        groups, depths, mins = {}, [], []
        full_hw, multiple = None, 1
        if need_resolution:
            full_hw, multiple = _full_resolution(model, image_size)
        if need_width:
            from kgrow.surgery import channel_groups
            groups = {n: int(g.size) for n, g in channel_groups(model).items()
                      if g.resizable and g.role in ("channels", "heads")}
            if not groups:
                raise ValueError(f"model {model.name!r} has no resizable channel group, so its "
                                 "width cannot grow (inputs and outputs are fixed).")
        if need_depth:
            from kgrow.surgery import find_stages
            stages = find_stages(model, spec=block_spec)
            if not stages:
                raise ValueError(f"model {model.name!r} has no repeated blocks, so its depth "
                                 "cannot grow; pass block_spec=... to name blocks explicitly.")
            depths = [int(s.depth) for s in stages]
            mins = [int(s.depth - len(s.body) + (1 if s.body else 0)) for s in stages]
        return cls(groups, depths, mins, full_hw, multiple)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "FullSize":
        return cls(dict(d["groups"]), list(d["stage_depths"]), list(d["stage_min_depths"]),
                   d.get("image_size"), int(d.get("image_multiple", 1)))

    def resolution_at(self, fraction: float) -> list:
        """`[height, width]` at `fraction` of the full resolution, rounded to
        the nearest multiple of `image_multiple` (a ViT's patch size), at least one."""
        if self.image_size is None:
            raise ValueError("This FullSize has no image size; build it with "
                             "need_resolution=True.")
        m = self.image_multiple
        return [max(m, int(round(s * fraction / m)) * m) for s in self.image_size]

    def depths_at(self, fraction: float) -> list:
        """Blocks per stage at `fraction` of the full depth (never below the minimum)."""
        return [max(lo, int(round(d * fraction))) for d, lo in zip(self.stage_depths,
                                                                   self.stage_min_depths)]

    def width_targets(self, width, current_groups: Mapping[str, int],
                      current_width=None) -> dict:
        """Absolute sizes per current group for a stage's `width` setting.

        Groups of the full model get `round(full * fraction)`. Groups that
        the full model does not have (those of inserted blocks) take the full
        size of the group they were copied from (name without `ins{k}_`), or
        else scale from their current size.
        """
        out = {}
        for name, size in current_groups.items():
            if isinstance(width, Mapping):
                frac = width.get(name)
                if frac is None:
                    continue
            else:
                frac = float(width)
            full = self.groups.get(name) or self.groups.get(_INSERTED.sub("", name))
            if full is None:
                cur = (current_width.get(name, 1.0) if isinstance(current_width, Mapping)
                       else (current_width or 1.0))
                full = size / cur
            out[name] = max(1, int(round(full * frac)))
        return out


def _position_embeddings(model) -> list:
    from kgrow.models import PositionEmbedding
    return [layer for layer in model.layers if isinstance(layer, PositionEmbedding)]


def _full_resolution(model, image_size):
    """`([h, w], multiple)` of the full model's input for resolution stages."""
    shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else ()
    if len(shape) != 3:
        raise ValueError(f"Resolution stages need a model with one image input (batch, height, "
                         f"width, channels); {model.name!r} has inputs "
                         f"{[tuple(t.shape) for t in model.inputs]}.")
    pos = _position_embeddings(model)
    if shape[0] is None or shape[1] is None:
        if image_size is None:
            raise ValueError(f"{model.name!r} takes any input size, so the full resolution is "
                             "unknown: pass full_resolution=(height, width) to Growth (or "
                             "image_size= to FullSize.of).")
        return [int(v) for v in _pair(image_size)], 1
    if image_size is not None and tuple(_pair(image_size)) != shape[:2]:
        raise ValueError(f"full_resolution={image_size} differs from the model's input size "
                         f"{shape[:2]}.")
    if not pos:
        raise ValueError(
            f"{model.name!r} has a fixed input size {shape[:2]} and no position embedding to "
            "resample, so its resolution cannot change: build it with input shape "
            "(None, None, channels) (convolutional models) or use a kgrow ViT.")
    patch = shape[0] // pos[0].grid[0]
    return [int(shape[0]), int(shape[1])], int(patch)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def grow_to(model, full: FullSize, stage: Stage, *, current: Optional[Stage] = None,
            initializer="zeros", importance="l1", depth_mapping: Union[str, Callable] = "interpolation",
            depth_source="neighbour", donor=None, block_spec=None, seed: int = 0,
            reset_drop_path: Union[bool, float] = True,
            interpolation: str = "bicubic", position_table: str = "resample",
            depth_seed: Optional[int] = None) -> Optional[GrowthResult]:
    """The growth (or initial shrink) that brings `model` to `stage`'s sizes.

    Resolution first (a ViT's position embeddings resampled to the new patch
    grid, `kgrow.models.resize_vit`; a model taking any input size needs no
    change: only the data's image size changes, see `Growth`), then depth
    (new blocks copy their neighbours, an EMA `donor`, or start as
    identities), then width (new channels from `initializer`, shrinking
    keeps the most important channels); the transfer plans are composed into
    one. Returns None when the architecture does not change.

    Args:
        model: the current model.
        full: sizes of the full architecture (`FullSize.of(full_model)`).
        stage: the target `Stage` (fractions of the full sizes).
        current: the stage the model is at now (None: the full model).
        initializer: width initializer (`kgrow.growth.available_initializers()`).
        importance: which channels survive a shrink ("l1", "first", callable).
        depth_mapping: "interpolation" (AutoProg), "expansion" (Network
            Expansion interleave), "stack", or a callable `(old, new) -> list`.
        depth_source: "neighbour", "identity", "ema" (then give `donor`) or
            "random" (new blocks freshly initialized by their layers' own
            initializers, seeded by `depth_seed`).
        donor: {variable path: array} for depth_source="ema".
        block_spec: explicit block spec for irregular models.
        seed: seed of random values for new channels.
        reset_drop_path: reset stochastic-depth rates after a depth change.
        interpolation: how a ViT's position embeddings are resampled.
        position_table: "resample" (a ViT's position-embedding weights are
            resampled to the new grid) or "keep" (the tables stay on their
            grid and the forward pass interpolates them: a lower-resolution
            stage loses nothing, the authors' AutoProg code).
        depth_seed: seed of depth_source="random" (None: Keras' own seeding).
    """
    from kgrow.surgery import channel_groups, find_stages, scale_width, set_depth

    result, plan, infos = None, None, {}
    if stage.resolution is not None and _position_embeddings(model):
        from kgrow.models import resize_vit
        size = full.resolution_at(stage.resolution)
        if list(model.inputs[0].shape[1:3]) != size:
            result = resize_vit(model, size, method=interpolation,
                                keep_table=_keep_table(position_table))
            model, plan, infos["resolution"] = result.model, result.plan, result.info
    if stage.depth is not None and (current is None or current.depth != stage.depth):
        targets = full.depths_at(stage.depth)
        found = find_stages(model, spec=block_spec)
        if [s.depth for s in found] != targets:
            mapping = _depth_mapping(depth_mapping)
            source = "donor" if depth_source == "ema" else depth_source
            result = set_depth(model, targets, mapping=mapping, source=source,
                               donor=donor if depth_source == "ema" else None,
                               spec=block_spec, reset_drop_path=reset_drop_path,
                               seed=depth_seed)
            plan = result.plan if plan is None else result.plan.compose(plan)
            model, infos["depth"] = result.model, result.info
    if stage.width is not None and (current is None or current.width != stage.width
                                    or "depth" in infos):
        groups = {n: int(g.size) for n, g in channel_groups(model).items()
                  if g.resizable and g.role in ("channels", "heads")}
        targets = full.width_targets(stage.width, groups,
                                     None if current is None else current.width)
        targets = {n: s for n, s in targets.items() if groups.get(n) != s}
        if targets:
            wres = scale_width(model, targets, initializer=initializer, importance=importance,
                               seed=seed)
            plan = wres.plan if plan is None else wres.plan.compose(plan)
            model, infos["width"] = wres.model, wres.info
    if plan is None:
        return None
    return GrowthResult(model, plan, infos)


POSITION_TABLES = ("resample", "keep")


def _keep_table(position_table) -> bool:
    if position_table not in POSITION_TABLES:
        raise ValueError(f"position_table must be one of {POSITION_TABLES}, got "
                         f"{position_table!r}")
    return position_table == "keep"


def _depth_mapping(spec):
    from kgrow.surgery import expansion_mapping, interpolation_mapping
    if callable(spec):
        return spec
    if spec == "interpolation":
        return interpolation_mapping
    if spec in ("expansion", "interleave", "stack"):
        mode = "stack" if spec == "stack" else "interleave"
        # Expansion only grows; the shrink to the first stage (a sub-network
        # trained from its initial weights) keeps the first blocks.
        return lambda old, new: (list(range(new)) if new < old
                                 else expansion_mapping(old, new, mode=mode))
    raise ValueError(f"depth_mapping must be 'interpolation', 'expansion', 'stack' or a "
                     f"callable (old_depth, new_depth) -> list; got {spec!r}")


class Growth(ControlledCallback):
    """Grows the model along a `GrowthSchedule` inside one `model.fit`.

    The model you compile and pass to `fit` is the *full* architecture; the
    schedule's sizes are fractions of it. At the start of training the model
    is shrunk to the first stage; at each stage boundary it grows. Keras'
    own callbacks (ModelCheckpoint, CSVLogger, EarlyStopping, TensorBoard,
    BackupAndRestore) keep working: they see the same model object, whose
    graph changes. `EarlyStopping(restore_best_weights=True)` restores the
    best epoch's architecture with its weights: if that epoch was in an
    earlier stage, the model ends at that stage's size (give
    `start_from_epoch=<last stage's epoch>` to only consider the full model).

    Resolution stages (`Stage(epoch, resolution=0.5)`, a fraction of the full
    input size) set the live image size of the training data (the
    controller's attached `LiveSelection`, `controller.attach_selection(
    bundle.selection)` of a bundle loaded with `resizable=True`) and, for a
    kgrow ViT, resample its position embeddings to the new patch grid (a
    model whose input is `(None, None, channels)` needs no change). Sizes are
    rounded to multiples of the ViT's patch size.

    The next stage can also be chosen while training runs (AutoProg's
    search): `set_next_stage(...)` from any callback applies a stage at the
    next epoch begin, and `stage_chooser(epoch, scheduled_stage, growth)`,
    called at each of the schedule's boundaries, may return another stage
    than the scheduled one (or None to keep it). Chosen stages set the same
    quantities as the schedule; they may grow or shrink.

    Args:
        schedule: a `GrowthSchedule` (or a list of `Stage`s/dicts).
        initializer: how new channels start (`kgrow.growth`): "zeros"
            (function-preserving), "orthogonal" (Network Expansion),
            "variance_transfer", "net2net", "random", ...
        importance: which channels the initial shrink keeps.
        depth_mapping: how new blocks are placed ("interpolation": AutoProg's
            nearest-neighbour copies; "expansion": Network Expansion's
            interleaving of EMA copies; "stack"; or a callable).
        depth_source: "neighbour" (copy the online block), "identity"
            (zero residual branch: function-preserving), "ema" (copy an EMA
            of the online model, Network Expansion / MoGrow) or "random"
            (fresh values from the layers' initializers, seeded by `seed`:
            AutoProg's RandInit).
        ema_decay: decay of the EMA kept for depth_source="ema" (default:
            a half-life of one epoch).
        ema_warmup: warm that EMA's decay up after every restart
            (`kgrow.controller.ema.warmup_decay`), so it does not carry a
            fresh initialization for several half-lives.
        reset_optimizer: start optimizer moments at zero after each growth
            (Network Expansion and AutoProg do; the LR schedule continues
            either way).
        reset_ema: restart the EMA as a copy of the grown model.
        block_spec: explicit block spec for irregular models.
        reset_drop_path: after a depth change, set stochastic-depth rates to
            linspace(0, max rate, depth): True takes the largest rate in the
            model, a float sets it, False keeps the rates.
        seed: seed of new channels' random values.
        full_resolution: `(height, width)` of the full input, for resolution
            stages on a model that takes any input size (default: the
            model's input size).
        interpolation: resampling of a ViT's position embeddings.
        position_table: "resample" (position-embedding weights resampled at
            each resolution change) or "keep" (tables stay at the full grid,
            the forward pass interpolates them; see `grow_to`).
        stage_chooser: optional `fn(epoch, scheduled_stage, growth) ->
            Stage | None` (see above).
        verbose: 1 prints one line per growth step.

    Attributes:
        events: one dict per growth step: epoch, stage index (None for a
            chosen stage), the stage's sizes, seconds spent (surgery +
            transfer; the retrace happens in the first step of the epoch and
            is counted by the controller), parameters, image size.
        current: the `Stage` the model is at (None before training).
    """

    phase = Phase.ARCHITECTURE
    drives = ("architecture",)
    EMA_NAME = "growth"

    def __init__(self, schedule: Union[GrowthSchedule, Sequence], *, initializer="zeros",
                 importance="l1", depth_mapping: Union[str, Callable] = "interpolation",
                 depth_source: str = "neighbour", ema_decay: Optional[float] = None,
                 ema_warmup: bool = False, reset_optimizer: bool = False,
                 reset_ema: bool = True, block_spec=None,
                 reset_drop_path: Union[bool, float] = True, seed: int = 0,
                 full_resolution=None, interpolation: str = "bicubic",
                 position_table: str = "resample",
                 stage_chooser: Optional[Callable] = None, verbose: int = 1):
        super().__init__()
        if not isinstance(schedule, GrowthSchedule):
            schedule = GrowthSchedule(schedule)
        if stage_chooser is not None and not callable(stage_chooser):
            raise TypeError(f"stage_chooser must be callable (epoch, scheduled_stage, growth) -> "
                            f"Stage or None, got {type(stage_chooser).__name__}")
        from kgrow.models import INTERPOLATION_METHODS
        if interpolation not in INTERPOLATION_METHODS:
            raise ValueError(f"interpolation must be one of {INTERPOLATION_METHODS}, got "
                             f"{interpolation!r}")
        if depth_source not in DEPTH_SOURCES:
            raise ValueError(f"depth_source must be one of {DEPTH_SOURCES}, got "
                             f"{depth_source!r}")
        _keep_table(position_table)
        from kgrow.growth import get_initializer
        get_initializer(initializer)  # fail now on an unknown name, not at the first stage
        _depth_mapping(depth_mapping)
        self.schedule = schedule
        self.initializer = initializer
        self.importance = importance
        self.depth_mapping = depth_mapping
        self.depth_source = depth_source
        self.ema_decay = ema_decay
        self.ema_warmup = bool(ema_warmup)
        self.reset_optimizer = reset_optimizer
        self.reset_ema = reset_ema
        self.block_spec = block_spec
        self.reset_drop_path = reset_drop_path
        self.seed = seed
        self.full_resolution = full_resolution
        self.interpolation = interpolation
        self.position_table = position_table
        self.stage_chooser = stage_chooser
        self.verbose = verbose
        self.full: Optional[FullSize] = None
        self.stage_index: Optional[int] = None
        self.current: Optional[Stage] = None
        self._next: Optional[Stage] = None
        self.events: list = []

    def planned_changes(self) -> dict:
        """``{"architecture": the schedule's boundaries}`` (epochs of growth steps).

        Every boundary counts, whatever quantity changes there and whatever a
        `stage_chooser` picks: width and depth give layers new weights, and a
        new resolution changes the activations' statistics that a frozen
        BatchNorm would keep. Stages given with `set_next_stage` between
        boundaries are not known ahead.

        Example:
            >>> Growth([Stage(0, width=0.5), Stage(4, width=1.0)], verbose=0).planned_changes()
            {'architecture': [4]}
        """
        return {"architecture": self.schedule.boundaries()}

    def set_next_stage(self, stage: Union[Stage, Mapping, None] = None, **sizes) -> Stage:
        """Makes the model take `stage` at the next epoch begin.

        Give a `Stage` (its epoch is ignored), a dict, or the sizes as
        keywords (`set_next_stage(width=0.75, resolution=0.5)`), with the
        same quantities as the schedule. The schedule's later boundaries
        still apply (or go through `stage_chooser`). Returns the stage.
        """
        if stage is not None and sizes:
            raise TypeError("set_next_stage() takes a stage or sizes as keywords, not both")
        self._next = self._check_stage(sizes if stage is None else stage)
        return self._next

    def _check_stage(self, stage) -> Stage:
        """A run-time stage, validated like a schedule's (epoch set to 0)."""
        if isinstance(stage, Stage):
            stage = stage.to_dict()
        if not isinstance(stage, Mapping):
            raise TypeError(f"A chosen stage is a Stage, a dict or keywords, got "
                            f"{type(stage).__name__}")
        chosen = Stage(**{**dict(stage), "epoch": 0})
        got = GrowthSchedule([chosen], final_full=False).quantities
        expected = self.schedule.quantities
        if got != expected:
            raise ValueError(f"a chosen stage must set the schedule's quantities {expected}, "
                             f"got {got}")
        first = self.schedule.stages[0].width
        if isinstance(first, Mapping) and (not isinstance(chosen.width, Mapping)
                                           or set(chosen.width) != set(first)):
            raise ValueError(f"a chosen stage must size the schedule's groups {sorted(first)}, "
                             f"got {chosen.width}")
        return chosen

    # Validation against the model happens when fit hands it over, before
    # any training step: unsupported layers, models without blocks, stages
    # that cannot be built, epochs past the end.
    def set_model(self, model):
        super().set_model(model)
        if self.full is None and self.stage_index is None:
            quantities = self.schedule.quantities
            self.full = FullSize.of(model, need_width="width" in quantities,
                                    need_depth="depth" in quantities,
                                    need_resolution="resolution" in quantities,
                                    block_spec=self.block_spec, image_size=self.full_resolution)
            self._check_groups()

    def _check_groups(self):
        first = self.schedule.stages[0].width
        if isinstance(first, Mapping):
            unknown = sorted(set(first) - set(self.full.groups))
            if unknown:
                raise ValueError(f"the schedule sizes channel groups {unknown} that the model "
                                 f"does not have (or cannot resize); resizable groups: "
                                 f"{sorted(self.full.groups)[:20]}")

    def on_train_begin(self, logs=None):
        epochs = (self.params or {}).get("epochs")
        if epochs is not None and self.schedule.stages[-1].epoch >= epochs:
            raise ValueError(f"the growth schedule has a stage at epoch "
                             f"{self.schedule.stages[-1].epoch}, but fit runs {epochs} epochs")
        super().on_train_begin(logs)
        ctrl = self.controller
        if "resolution" in self.schedule.quantities and not callable(
                getattr(ctrl.selection, "set_image_size", None)):
            raise ValueError(
                "Resolution stages change the training images' size through the live data "
                "selection: load the data with resizable=True and call "
                "TrainingController.of(model).attach_selection(bundle.selection) before fit.")
        ctrl.register_state("growth", self._get_state, self._set_state)
        if self.depth_source == "ema":
            self._add_growth_ema((self.params or {}).get("steps") or 100)

    def _add_growth_ema(self, steps_per_epoch: int) -> None:
        """The EMA new blocks copy from (and AutoProg scores with), unless the
        controller already has it (a resumed run)."""
        ctrl = self.controller
        if self.EMA_NAME in ctrl.emas:
            return
        if self.ema_decay is not None:
            ctrl.add_ema(self.EMA_NAME, self.ema_decay, warmup=self.ema_warmup)
        else:
            ctrl.add_ema(self.EMA_NAME, half_life_steps=steps_per_epoch, warmup=self.ema_warmup)

    def on_train_end(self, logs=None):
        self.controller.unregister_state("growth")
        super().on_train_end(logs)

    def _get_state(self):
        return {"stage_index": self.stage_index, "full": self.full.to_dict(),
                "schedule": self.schedule.to_dict(), "events": self.events,
                "current": None if self.current is None else self.current.to_dict(),
                "next": None if self._next is None else self._next.to_dict()}

    def _set_state(self, state):
        if GrowthSchedule.from_dict(state["schedule"]) != self.schedule:
            raise ValueError("the checkpoint was written with a different growth schedule "
                             f"({state['schedule']}); resume with the same schedule.")
        self.stage_index = state["stage_index"]
        self.full = FullSize.from_dict(state["full"])
        self.events = list(state.get("events", []))
        current = state.get("current")
        if current is None and self.stage_index is not None:  # written before chosen stages
            current = self.schedule.stages[self.stage_index].to_dict()
        self.current = None if current is None else Stage(**current)
        self._next = None if state.get("next") is None else Stage(**state["next"])

    def _target(self, epoch: int):
        """`(stage, schedule index, chosen)` to take at `epoch`, or None."""
        index = self.schedule.stage_index_at(epoch)
        if self._next is not None:
            stage, self._next = self._next, None
            return stage, index, True
        if index == self.stage_index:
            return None
        stage = self.schedule.stages[index]
        if self.stage_chooser is not None and self.stage_index is not None:
            chosen = self.stage_chooser(epoch, stage, self)
            if chosen is not None:
                return self._check_stage(chosen), index, True
        return stage, index, False

    def after_growth(self, result: GrowthResult, stage: int, initial: bool) -> None:
        """Subclass hook: called after the model took `result` (its plan maps old to new).

        `stage` is the schedule index now reached; `initial` is True for the
        shrink to the first stage.
        """

    def epoch_logs(self) -> dict:
        """The sizes trained this epoch, those the schedule sets: ``grow/width``
        (fraction; the mean over groups for per-group widths), ``grow/depth``
        (blocks), ``grow/resolution`` (pixels, height); and ``grow/params``."""
        logs, stage, full = {"grow/params": float(self.model.count_params())}, self.current, self.full
        if stage is None or full is None:
            return logs
        if stage.width is not None:
            width = stage.width
            logs["grow/width"] = float(sum(width.values()) / len(width)
                                       if isinstance(width, Mapping) else width)
        if stage.depth is not None:
            logs["grow/depth"] = float(sum(full.depths_at(stage.depth)) if full.stage_depths
                                       else stage.depth)
        if stage.resolution is not None:
            logs["grow/resolution"] = float(full.resolution_at(stage.resolution)[0]
                                            if full.image_size is not None else stage.resolution)
        return logs

    def controlled_epoch_begin(self, epoch: int) -> None:
        target = self._target(epoch)
        if target is None:
            return
        stage, index, chosen = target
        start = time.perf_counter()
        ctrl = self.controller
        current = self.current
        donor = ctrl.ema(self.EMA_NAME).values() if self.depth_source == "ema" else None
        with ctrl.scope():
            result = grow_to(self.model, self.full, stage, current=current,
                             initializer=self.initializer, importance=self.importance,
                             depth_mapping=self.depth_mapping, depth_source=self.depth_source,
                             donor=donor, block_spec=self.block_spec,
                             seed=self.seed + (len(self.events) if chosen else index),
                             reset_drop_path=self.reset_drop_path,
                             interpolation=self.interpolation,
                             position_table=self.position_table,
                             depth_seed=self.seed + len(self.events))
        if result is not None:
            initial = current is None
            ctrl.replace_model(result, reset_optimizer=self.reset_optimizer and not initial,
                               reset_ema=self.reset_ema or initial)
            self.after_growth(result, index, initial)
        image_size = None
        if stage.resolution is not None:
            image_size = self.full.resolution_at(stage.resolution)
            ctrl.selection.set_image_size(*image_size)
        seconds = time.perf_counter() - start
        self.stage_index, self.current = index, stage
        event = {"epoch": int(epoch), "stage": None if chosen else int(index),
                 "sizes": stage.to_dict(), "seconds": seconds,
                 "params": int(self.model.count_params()),
                 "kind": ("shrink-to-start" if current is None
                          else "chosen" if chosen else "grow")}
        if image_size is not None:
            event["image_size"] = image_size
        self.events.append(event)
        if self.verbose:
            what = "a chosen stage" if chosen else f"stage {index}"
            print(f"\nkgrow.Growth: epoch {epoch}: {event['kind']} to {what} "
                  f"({stage.to_dict()}), {event['params']:,} parameters, {seconds:.2f}s")


# -- benchmark methods (registered lazily in kgrow.bench.registry) -----------
def _bench_growth(context, quantity, num_stages=3, **kwargs):
    epochs = int(context.train.epochs)
    stages = min(num_stages, epochs)
    schedule = GrowthSchedule.linear(epochs, num_stages=stages, start=0.5, quantity=quantity)
    return context.build_model(), [Growth(schedule, **kwargs)]


def bench_width_growth(build_model, context):
    """Bench method `grow_width`: Network Expansion's CNN recipe.

    Width 0.5 -> 1.0 of every channel group in 3 equal stages, new filters
    orthogonal to the existing ones (zero fan-out, so each step keeps the
    function), optimizer state carried.
    """
    del build_model
    return _bench_growth(context, "width", initializer="orthogonal")


def bench_width_growth_2(build_model, context):
    """Bench method `grow_width_2`: `grow_width` in 2 equal stages (0.5, then 1.0).

    Skips the 0.75 stage, which on oneDNN CPUs costs 0.83-0.85 of a full
    step for 0.57 of its FLOPs (channel counts of 12/24/48 are padded to the
    kernels' blocks of 8 or 16), so more of the FLOPs saving shows in time.
    """
    del build_model
    return _bench_growth(context, "width", num_stages=2, initializer="orthogonal")


def bench_depth_growth(build_model, context):
    """Bench method `grow_depth`: half the blocks per stage -> all, in 3 stages.

    New blocks copy their neighbours (AutoProg's interpolation).
    """
    del build_model
    return _bench_growth(context, "depth", depth_mapping="interpolation",
                         depth_source="neighbour")

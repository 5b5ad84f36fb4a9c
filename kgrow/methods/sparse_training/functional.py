"""Dynamic sparse training (MEST) and magnitude pruning, functional form.

Plain functions over models and numpy arrays; the callback
(`kgrow.methods.sparse_training.SparseTraining`) strings them together and
applies the masks through the engine's `kgrow.controller.Masks` component,
which zeroes masked gradients and re-masks the weights after every update.

* `maskable_variables(model, ...)`: which kernels are sparse (default: every
  Conv/Dense kernel except the first conv and the classifier dense).
* `layer_densities(shapes, sparsity, distribution)`: per-variable densities,
  "uniform" (MEST, SpFDE) or "erk" (Erdos-Renyi-Kernel, RigL).
* `random_masks(shapes, densities, rng)`: exact-count random masks.
* `prune_and_grow(weights, masks, prune_to, grow_to, grads, lam, rng)`: one
  structure update: keep the largest ``|w| + lam * |grad|`` down to the
  ``prune_to`` sparsity, then switch on random inactive positions up to
  ``grow_to``; regrown weights start at exactly zero.
* Schedules as plain data (`SparsitySchedule` of `MaskUpdate`s):
  `mest_schedule` (EM and EM&S bounds, dT, structure-search end, all as
  fractions of the run), `constant_sparsity`, `polynomial_sparsity`
  (Zhu & Gupta's cubic ramp) for plain pruning.
* `strip_sparsity(model)`: a plain Keras model with the zeros, no kgrow state.
* `sparsity_report(model or masks)`: the actual per-layer weight sparsity.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> w = {"k": rng.normal(size=(10, 10))}
    >>> m = random_masks({"k": (10, 10)}, {"k": 0.2}, rng)
    >>> int(m["k"].sum())
    20
    >>> r = prune_and_grow(w, m, prune_to=0.9, grow_to=0.85, rng=rng)
    >>> r.pruned["k"], r.grown["k"], int(r.masks["k"].sum())
    (10, 5, 15)
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import keras
import numpy as np

__all__ = ["maskable_variables", "layer_densities", "random_masks", "prune_and_grow",
           "PruneGrowResult", "MaskUpdate", "SparsitySchedule", "mest_schedule",
           "constant_sparsity", "polynomial_sparsity", "strip_sparsity", "sparsity_report",
           "SparsityReport", "check_sparsity", "PAPER_UPDATE_EVERY", "PAPER_SEARCH_END",
           "PAPER_EMS_BOUNDS", "PAPER_EM_MUTATION"]

# MEST / SpFDE on CIFAR (SpFDE Table A3): 160 epochs, structure change every
# 5 epochs, search until epoch 120, EM&S grow-to bound s - 0.05 until epoch
# 90 and s - 0.025 until 120. Kept as fractions of the run.
PAPER_EPOCHS = 160
PAPER_UPDATE_EVERY = 5 / PAPER_EPOCHS
PAPER_SEARCH_END = 120 / PAPER_EPOCHS
PAPER_EMS_BOUNDS = ((90 / PAPER_EPOCHS, 0.05), (120 / PAPER_EPOCHS, 0.025))
# EM alone (no soft memory bound): the fraction mutated per update. The
# SpFDE paper gives only the EM&S bounds; 0.05 keeps the two modes moving
# the same number of weights per update.
PAPER_EM_MUTATION = 0.05

_CONV_TYPES = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
               "Conv3DTranspose")


def _controller_of(model):
    """The model's kgrow controller if it has one (never creates one)."""
    from kgrow.controller import TrainingController
    return getattr(model, TrainingController._ATTR, None)


def check_sparsity(value, label: str = "sparsity") -> float:
    """`value` as a float in [0, 1), or a ValueError saying what is allowed."""
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(float(value)) or not 0.0 <= float(value) < 1.0):
        raise ValueError(f"{label} must be a fraction of zero weights in [0, 1) (0.9 = 90% of "
                         f"the weights are zero), got {value!r}")
    return float(value)


# -- which variables ---------------------------------------------------------
def _kernel_layers(model):
    from kgrow.controller._variables import all_layers
    out = []
    for layer in all_layers(model):
        if isinstance(layer, keras.Model):
            continue
        kind = type(layer).__name__
        kernel = getattr(layer, "kernel", None) if kind in _CONV_TYPES + ("Dense",) else None
        if kernel is not None:
            out.append((layer, kind, kernel))
    return out


def maskable_variables(model, layers: Optional[Iterable[str]] = None,
                       exclude: Iterable[str] = (),
                       predicate: Optional[Callable] = None,
                       keep_first: bool = True, keep_classifier: bool = True) -> list[str]:
    """Variable paths of the kernels that are trained sparse.

    Default: the kernel of every Conv and Dense layer except the first conv
    layer (in graph order) and the last Dense layer (the classifier), as in
    MEST and SpFDE.

    Args:
        model: a Keras model.
        layers: layer names or variable paths to mask instead of the default
            set (any variable of the model may be named by its path).
        exclude: layer names or variable paths to keep dense.
        predicate: `fn(layer, variable) -> bool`, replaces the default rule
            (``layers`` and ``exclude`` still apply).
        keep_first: keep the first conv layer dense (default rule only).
        keep_classifier: keep the last Dense layer dense (default rule only).

    Raises:
        ValueError: a name that is neither a layer nor a variable path of the
            model, or nothing left to mask.

    Example:
        >>> import keras
        >>> inp = keras.Input((8, 8, 1))
        >>> x = keras.layers.Conv2D(4, 3, name="c1")(inp)
        >>> x = keras.layers.Conv2D(4, 3, name="c2")(x)
        >>> out = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(x))
        >>> maskable_variables(keras.Model(inp, out))
        ['c2/kernel']
    """
    from kgrow.controller._variables import all_layers, weights_by_path
    weights = weights_by_path(model)
    layer_by_name = {layer.name: layer for layer in all_layers(model)}

    def resolve(names, what):
        if isinstance(names, str):
            names = [names]
        paths = []
        for name in names:
            if name in weights:
                paths.append(name)
            elif name in layer_by_name:
                kernel = getattr(layer_by_name[name], "kernel", None)
                if kernel is None:
                    raise ValueError(f"SparseTraining {what}: layer {name!r} "
                                     f"({type(layer_by_name[name]).__name__}) has no kernel; "
                                     "name a Conv/Dense layer or a variable path.")
                paths.append(kernel.path)
            else:
                known = [layer.name for layer, _, _ in _kernel_layers(model)]
                raise ValueError(f"SparseTraining {what}: {name!r} is neither a layer nor a "
                                 f"variable path of model {model.name!r}; layers with "
                                 f"kernels: {known[:12]}{' ...' if len(known) > 12 else ''}")
        return paths

    if layers is not None:
        chosen = resolve(layers, "layers=")
    else:
        candidates = _kernel_layers(model)
        if predicate is not None:
            chosen = [v.path for layer, _, v in candidates if predicate(layer, v)]
        else:
            convs = [i for i, (_, kind, _) in enumerate(candidates) if kind in _CONV_TYPES]
            denses = [i for i, (_, kind, _) in enumerate(candidates) if kind == "Dense"]
            skip = set()
            if keep_first and convs:
                skip.add(convs[0])
            if keep_classifier and denses:
                skip.add(denses[-1])
            chosen = [v.path for i, (_, _, v) in enumerate(candidates) if i not in skip]
    dropped = set(resolve(exclude, "exclude="))
    chosen = [p for p in dict.fromkeys(chosen) if p not in dropped]
    if not chosen:
        raise ValueError(f"SparseTraining: no variable of model {model.name!r} is left to mask "
                         "(check layers=, exclude=, predicate=).")
    return chosen


# -- densities and masks -----------------------------------------------------
def layer_densities(shapes: Mapping[str, Sequence[int]], sparsity: float,
                    distribution: str = "uniform") -> dict:
    """`{path: density}` whose parameter-weighted mean is ``1 - sparsity``.

    Args:
        shapes: `{path: shape}` of the masked variables.
        sparsity: overall fraction of zeros in [0, 1).
        distribution: "uniform" (every variable at ``1 - sparsity``, MEST)
            or "erk" (density proportional to ``sum(shape) / prod(shape)``,
            capped at 1, the rest redistributed; Evci et al., RigL).

    Example:
        >>> d = layer_densities({"a": (3, 3, 4, 4), "b": (3, 3, 4, 64)}, 0.5, "erk")
        >>> d["a"] > d["b"]
        True
    """
    sparsity = check_sparsity(sparsity)
    if distribution == "uniform":
        return {p: 1.0 - sparsity for p in shapes}
    if distribution != "erk":
        raise ValueError(f"distribution must be 'uniform' or 'erk', got {distribution!r}")
    sizes = {p: float(np.prod(s)) for p, s in shapes.items()}
    raw = {p: float(np.sum(s)) / sizes[p] for p, s in shapes.items()}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set = set()
    while True:
        free = [p for p in shapes if p not in dense]
        left = budget - sum(sizes[p] for p in dense)
        scale = left / max(sum(raw[p] * sizes[p] for p in free), 1e-30)
        over = [p for p in free if raw[p] * scale > 1.0]
        if not over:
            break
        dense.update(over)
    return {p: 1.0 if p in dense else min(1.0, raw[p] * scale) for p in shapes}


def _count(density: float, size: int) -> int:
    return int(min(size, max(0, round(density * size))))


def random_masks(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float],
                 rng: np.random.Generator) -> dict:
    """`{path: bool mask}` with exactly ``round(density * size)`` ones, at random."""
    out = {}
    for p, shape in shapes.items():
        size = int(np.prod(shape))
        flat = np.zeros(size, bool)
        flat[rng.permutation(size)[:_count(densities[p], size)]] = True
        out[p] = flat.reshape(tuple(shape))
    return out


@dataclasses.dataclass
class PruneGrowResult:
    """What `prune_and_grow` returns.

    Attributes:
        masks: `{path: bool mask}` after the update.
        weights: `{path: array}` with pruned and regrown entries at 0.0.
        pruned: `{path: entries switched off}`.
        grown: `{path: entries switched on}` (they start at exactly 0.0).
    """
    masks: dict
    weights: dict
    pruned: dict
    grown: dict


def _per_path(value, paths, label) -> dict:
    if isinstance(value, Mapping):
        missing = sorted(set(paths) - set(value))
        if missing:
            raise ValueError(f"{label} has no entry for {missing[:5]}")
        return {p: check_sparsity(value[p], f"{label}[{p!r}]") for p in paths}
    v = check_sparsity(value, label)
    return {p: v for p in paths}


def prune_and_grow(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                   prune_to, grow_to, grads: Optional[Mapping[str, np.ndarray]] = None,
                   lam: float = 0.0, rng: Optional[np.random.Generator] = None
                   ) -> PruneGrowResult:
    """One MEST structure update of every variable in `masks` (pure numpy).

    Prune: of the active entries, keep the ``round((1 - prune_to) * size)``
    with the largest score ``|w| + lam * |grad|`` (ties broken at random;
    if fewer are active, none is pruned). Grow: switch on random inactive
    entries until ``round((1 - grow_to) * size)`` are active, preferring
    entries that were not just pruned; regrown weights are set to 0.0, so
    the function of the network does not change through the growth.

    Args:
        weights: `{path: array}` (at least the paths of `masks`).
        masks: `{path: 0/1 or bool array}`.
        prune_to: sparsity after pruning, a float or `{path: float}`.
        grow_to: sparsity after growing (<= prune_to), float or per path.
        grads: `{path: gradient}`, needed when ``lam > 0``.
        lam: weight of the gradient magnitude in the pruning score.
        rng: a numpy Generator (default: a fresh unseeded one).

    Raises:
        ValueError: sparsities outside [0, 1), ``grow_to > prune_to``,
            ``lam < 0``, ``lam > 0`` without gradients, shape mismatches.
    """
    rng = np.random.default_rng() if rng is None else rng
    paths = list(masks)
    prune = _per_path(prune_to, paths, "prune_to")
    grow = _per_path(grow_to, paths, "grow_to")
    if not isinstance(lam, numbers.Real) or lam < 0:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")
    if lam > 0 and grads is None:
        raise ValueError("prune_and_grow(lam > 0) scores weights by |w| + lam * |grad|: pass "
                         "grads={path: gradient}.")
    new_masks, new_weights, pruned, grown = {}, {}, {}, {}
    for p in paths:
        if grow[p] > prune[p] + 1e-12:
            raise ValueError(f"grow_to ({grow[p]}) must not exceed prune_to ({prune[p]}) for "
                             f"{p!r}: growing adds weights, it cannot raise the sparsity.")
        w = np.asarray(weights[p])
        mask = np.asarray(masks[p]).astype(bool)
        if w.shape != mask.shape:
            raise ValueError(f"{p!r}: weight shape {w.shape} != mask shape {mask.shape}")
        size = w.size
        flat_mask = mask.reshape(-1).copy()
        score = np.abs(w.reshape(-1)).astype(np.float64)
        if lam > 0:
            g = np.asarray(grads[p])
            if g.shape != w.shape:
                raise ValueError(f"{p!r}: gradient shape {g.shape} != weight shape {w.shape}")
            score = score + float(lam) * np.abs(g.reshape(-1))
        active = np.flatnonzero(flat_mask)
        keep = _count(1.0 - prune[p], size)
        removed = np.zeros(size, bool)
        if len(active) > keep:
            # A random permutation first, then a stable sort: equal scores
            # (e.g. entries regrown at zero and not trained since) fall at random.
            order = rng.permutation(active)
            order = order[np.argsort(-score[order], kind="stable")]
            off = order[keep:]
            flat_mask[off] = False
            removed[off] = True
        target = _count(1.0 - grow[p], size)
        need = target - int(flat_mask.sum())
        added = np.zeros(0, np.int64)
        if need > 0:
            fresh = np.flatnonzero(~flat_mask & ~removed)
            if len(fresh) >= need:
                added = rng.choice(fresh, need, replace=False)
            else:
                again = rng.choice(np.flatnonzero(removed), need - len(fresh), replace=False)
                added = np.concatenate([fresh, again])
            flat_mask[added] = True
        new_w = w.reshape(-1).copy()
        new_w[~flat_mask] = 0
        new_w[added] = 0
        new_masks[p] = flat_mask.reshape(mask.shape)
        new_weights[p] = new_w.reshape(w.shape)
        pruned[p] = int(removed.sum())
        grown[p] = int(len(added))
    return PruneGrowResult(new_masks, new_weights, pruned, grown)


# -- schedules ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MaskUpdate:
    """At the start of `epoch`: prune to `prune_to`, grow back to `grow_to`."""
    epoch: int
    prune_to: float
    grow_to: float


@dataclasses.dataclass(frozen=True)
class SparsitySchedule:
    """When and how far the masks change: plain data.

    Attributes:
        initial_sparsity: sparsity of the masks set at the start of training.
        initial: how they are chosen: "random" (MEST: sparse from the first
            step) or "magnitude" (pruning a dense model).
        updates: `MaskUpdate`s in epoch order.
        total_epochs: the run length the schedule was made for.
        name: a label for logs and events.
    """
    initial_sparsity: float
    initial: str
    updates: tuple
    total_epochs: int
    name: str = "custom"

    def __post_init__(self):
        check_sparsity(self.initial_sparsity, "initial sparsity")
        if self.initial not in ("random", "magnitude"):
            raise ValueError(f"initial must be 'random' or 'magnitude', got {self.initial!r}")
        epochs = [u.epoch for u in self.updates]
        if epochs != sorted(set(epochs)) or any(e < 0 for e in epochs):
            raise ValueError(f"update epochs must be distinct, >= 0 and increasing, got {epochs}")
        for u in self.updates:
            check_sparsity(u.prune_to, f"prune_to at epoch {u.epoch}")
            check_sparsity(u.grow_to, f"grow_to at epoch {u.epoch}")
            if u.grow_to > u.prune_to + 1e-12:
                raise ValueError(f"epoch {u.epoch}: grow_to {u.grow_to} > prune_to {u.prune_to}")

    def at(self, epoch: int) -> Optional[MaskUpdate]:
        """The update scheduled at the start of `epoch`, or None."""
        for u in self.updates:
            if u.epoch == epoch:
                return u
        return None

    @property
    def final_sparsity(self) -> float:
        return self.updates[-1].grow_to if self.updates else self.initial_sparsity


def _check_epochs(total_epochs) -> int:
    if not isinstance(total_epochs, numbers.Integral) or total_epochs < 1:
        raise ValueError(f"total_epochs must be a positive int, got {total_epochs!r}")
    return int(total_epochs)


def _epochs_of(value, total: int, label: str, allow_zero=False, at_least_one=False) -> int:
    """An epoch count from an int (epochs) or a float fraction of the run."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{label} must be an int number of epochs or a float fraction of the "
                         f"run, got {value!r}")
    if isinstance(value, numbers.Integral):
        epochs = int(value)
    else:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{label} as a fraction of the run must lie in (0, 1], got {value}")
        epochs = int(math.floor(value * total + 0.5))
        if at_least_one:
            epochs = max(1, epochs)
    if epochs < (0 if allow_zero else 1):
        raise ValueError(f"{label} must be {'>= 0' if allow_zero else '>= 1'} epochs, got "
                         f"{value!r} ({epochs} epochs of {total})")
    return epochs


def mest_schedule(total_epochs: int, sparsity: float = 0.9, mode: str = "ems",
                  update_every: Union[int, float] = PAPER_UPDATE_EVERY,
                  search_end: Union[int, float] = PAPER_SEARCH_END,
                  ems_bounds: Sequence = PAPER_EMS_BOUNDS,
                  mutation: float = PAPER_EM_MUTATION) -> SparsitySchedule:
    """MEST's structure updates for a run of `total_epochs`.

    Masks start random at `sparsity`. Every `update_every` epochs (dT;
    default the paper's 5 of 160 epochs, at least 1) before `search_end`
    (default 120 of 160):

    * ``mode="ems"`` (Elastic Mutation & Soft memory bound): prune to ``s``,
      grow to ``s - bound``, bound 0.05 until 90/160 of the run, then 0.025
      (`ems_bounds`: ``((until_fraction, bound), ...)``);
    * ``mode="em"`` (Elastic Mutation): prune to ``s + mutation``, grow to
      ``s``.

    At `search_end` a last update prunes to ``s`` and grows nothing (EM&S:
    the soft bound is given back, the final model is at ``s``); the masks
    are then fixed. ``update_every`` and ``search_end`` are epochs (int) or
    fractions of the run (float); the search ends at the latest at the start
    of the last epoch, so the last epoch trains at ``s``.

    Example:
        >>> s = mest_schedule(160, 0.9)
        >>> [(u.epoch, u.prune_to, round(u.grow_to, 3)) for u in s.updates][17:]
        [(90, 0.9, 0.875), (95, 0.9, 0.875), (100, 0.9, 0.875), (105, 0.9, 0.875), (110, 0.9, 0.875), (115, 0.9, 0.875), (120, 0.9, 0.9)]
        >>> [u.epoch for u in mest_schedule(6, 0.9).updates]
        [1, 2, 3, 4, 5]
        >>> [(u.epoch, u.grow_to) for u in mest_schedule(2, 0.9).updates]
        [(1, 0.9)]
    """
    total = _check_epochs(total_epochs)
    s = check_sparsity(sparsity)
    if mode not in ("ems", "em"):
        raise ValueError(f"MEST mode must be 'ems' (EM & soft memory bound) or 'em' (elastic "
                         f"mutation), got {mode!r}")
    every = _epochs_of(update_every, total, "update_every (dT)", at_least_one=True)
    end = _epochs_of(search_end, total, "search_end", allow_zero=True)
    if end > total:
        raise ValueError(f"search_end ({end} epochs) is past the end of the run ({total})")
    # The last update must leave at least one epoch at the final structure
    # (a short run would otherwise end at the soft bound, not at s).
    end = min(end, total - 1)
    bounds = tuple((float(f), float(b)) for f, b in ems_bounds)
    if any(not 0 <= b < 1 for _, b in bounds) or [f for f, _ in bounds] != sorted(
            f for f, _ in bounds):
        raise ValueError(f"ems_bounds must be ((until_fraction, bound in [0, 1)), ...) in "
                         f"increasing order, got {ems_bounds!r}")
    if mode == "em":
        check_sparsity(s + mutation, "sparsity + mutation")
    updates = []
    for epoch in range(every, end, every):
        if mode == "em":
            updates.append(MaskUpdate(epoch, s + mutation, s))
            continue
        fraction = epoch / total
        bound = next((b for f, b in bounds if fraction < f - 1e-12), 0.0)
        updates.append(MaskUpdate(epoch, s, max(0.0, s - bound)))
    if end > 0:
        updates.append(MaskUpdate(end, s, s))
    return SparsitySchedule(s, "random", tuple(updates), total, name=f"mest_{mode}")


def constant_sparsity(total_epochs: int, sparsity: float, begin: int = 0,
                      every: int = 0) -> SparsitySchedule:
    """Plain pruning: prune by magnitude to `sparsity` at `begin` (and again
    every `every` epochs if > 0, which only matters if masks were grown)."""
    total = _check_epochs(total_epochs)
    s = check_sparsity(sparsity)
    if not isinstance(begin, numbers.Integral) or not 0 <= begin < total:
        raise ValueError(f"begin must be an epoch in [0, {total}), got {begin!r}")
    epochs = [begin] if every <= 0 else list(range(begin, total, int(every)))
    return SparsitySchedule(0.0, "magnitude", tuple(MaskUpdate(e, s, s) for e in epochs),
                            total, name="constant")


def polynomial_sparsity(total_epochs: int, final_sparsity: float,
                        initial_sparsity: float = 0.0, begin: int = 0,
                        end: Optional[int] = None, every: int = 1,
                        power: float = 3.0) -> SparsitySchedule:
    """Plain pruning along Zhu & Gupta's ramp, by magnitude, at epoch starts.

    ``s(t) = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** power``
    at ``t = begin, begin + every, ...`` up to `end` (default: 3/4 of the run),
    after which the masks stay fixed at `final_sparsity`.

    Example:
        >>> [round(u.prune_to, 3) for u in polynomial_sparsity(8, 0.8, end=4).updates]
        [0.0, 0.463, 0.7, 0.788, 0.8]
    """
    total = _check_epochs(total_epochs)
    sf = check_sparsity(final_sparsity, "final_sparsity")
    si = check_sparsity(initial_sparsity, "initial_sparsity")
    end = int(math.floor(0.75 * total + 0.5)) if end is None else end
    if not (isinstance(begin, numbers.Integral) and isinstance(end, numbers.Integral)
            and 0 <= begin < end <= total):
        raise ValueError(f"need 0 <= begin < end <= total_epochs, got begin={begin!r}, "
                         f"end={end!r}, total_epochs={total}")
    if not isinstance(every, numbers.Integral) or every < 1:
        raise ValueError(f"every must be a positive int of epochs, got {every!r}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power!r}")
    epochs = list(range(begin, end, int(every))) + [end]
    updates = []
    for t in dict.fromkeys(epochs):
        if t >= total:
            continue
        s = sf + (si - sf) * (1.0 - (t - begin) / (end - begin)) ** power
        updates.append(MaskUpdate(t, s, s))
    return SparsitySchedule(si if begin > 0 else 0.0, "magnitude", tuple(updates), total,
                            name="polynomial")


# -- end of training and reporting ---------------------------------------------
def strip_sparsity(model) -> keras.Model:
    """A plain Keras model of `model`'s architecture and weights, masked entries zero.

    The copy has no controller, no step hooks and no masks: a regular
    Functional/Sequential model (uncompiled) that `keras.saving` saves and
    loads like any other. The zeros are stored as zeros (no sparse format).

    Example:
        >>> import keras
        >>> inp = keras.Input((3,)); m = keras.Model(inp, keras.layers.Dense(2, name="d")(inp))
        >>> type(strip_sparsity(m)).__name__
        'Functional'
    """
    from kgrow.controller._variables import weights_by_path
    masks = {}
    ctrl = _controller_of(model)
    if ctrl is not None:
        comp = ctrl.component("masks", default=None)
        masks = comp.get() if comp is not None else {}
    if type(model).__name__ not in ("Functional", "Sequential"):
        raise ValueError(f"strip_sparsity rebuilds the model from its config and needs a "
                         f"Functional or Sequential model, got {type(model).__name__}; for a "
                         "subclassed model, save its weights (masked entries are already 0.0).")
    plain = keras.models.model_from_json(model.to_json())
    source = weights_by_path(model)
    for path, var in weights_by_path(plain).items():
        value = np.array(source[path].numpy())
        if path in masks:
            value = np.where(masks[path], value, np.zeros_like(value))
        var.assign(value)
    return plain


@dataclasses.dataclass
class SparsityReport:
    """Actual weight sparsity: `per_variable` `{path: fraction of zeros}`,
    `sizes` `{path: entries}`, `total` (entry-weighted over them)."""
    per_variable: dict
    sizes: dict

    @property
    def total(self) -> float:
        n = sum(self.sizes.values())
        return float(sum(self.per_variable[p] * self.sizes[p] for p in self.sizes) / max(n, 1))

    def table(self) -> str:
        rows = [f"{p:<48} {self.sizes[p]:>9} {100 * s:6.2f}%" for p, s in
                self.per_variable.items()]
        return "\n".join(rows + [f"{'total':<48} {sum(self.sizes.values()):>9} "
                                 f"{100 * self.total:6.2f}%"])


def sparsity_report(source, paths: Optional[Iterable[str]] = None) -> SparsityReport:
    """The fraction of exact zeros per variable.

    Args:
        source: a Keras model (weights are counted; default variables: the
            masked ones if the model has kgrow masks, else every Conv/Dense
            kernel) or a `{path: mask}` mapping (its zeros are counted).
        paths: variables to report (default as above).

    Example:
        >>> import numpy as np
        >>> sparsity_report({"a": np.array([1, 0, 0, 0])}).per_variable
        {'a': 0.75}
    """
    if isinstance(source, Mapping):
        arrays = {p: np.asarray(a) for p, a in source.items()}
    else:
        from kgrow.controller._variables import weights_by_path
        weights = weights_by_path(source)
        if paths is None:
            ctrl = _controller_of(source)
            comp = ctrl.component("masks", default=None) if ctrl is not None else None
            paths = comp.paths if comp is not None and comp.paths else [
                v.path for _, _, v in _kernel_layers(source)]
        arrays = {p: weights[p].numpy() for p in paths}
    if paths is not None:
        arrays = {p: arrays[p] for p in paths}
    return SparsityReport({p: float(np.mean(a == 0)) for p, a in arrays.items()},
                          {p: int(a.size) for p, a in arrays.items()})

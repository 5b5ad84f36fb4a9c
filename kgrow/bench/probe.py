"""Step-time probe: does a FLOPs saving pay off in wall-clock on this machine?

`run_probe(spec, methods)` times training steps of the profile's model at
several sizes, the sizes kgrow's methods train at:

- `width`: every resizable channel group at 0.25 ... 1.0 of its size,
- `depth`: fewer blocks per stage,
- `resolution`: smaller input images,
- `frozen`: the first third / two thirds of the weighted layers frozen,
- `sparse`: 90% of the inner kernels zeroed (dense kernels still run, so
  this point shows what unstructured sparsity saves without sparse kernels;
  it is plotted but not fitted),

all built the way the methods build them (`kgrow.callbacks.growth.grow_to`
for width and depth) and trained with the run's own optimizer, on one real
batch of the profile's data. Each variant is traced first, then the variants
are timed in interleaved rounds (so a change in the machine's load hits all
alike) and each gets the median of its steps. `fit_step_times` fits step time
as a fixed overhead plus FLOPs over throughput, over all dense points and per
family (`family_fits`: on a CPU, narrow layers run at a lower FLOP rate while
fewer blocks save time in proportion, so one line cannot serve both); `probe.png`
shows the points and the global line. For each method whose schedule is known
before training (the `Growth` callback's schedule) the probe prints the FLOPs
speedup and the wall-clock speedup predicted by the fit of the family the
schedule moves along, interpolating between that family's measured points
(`kgrow.bench.realization`).

Command line: `kgrow bench probe --profile standard --methods grow_width,grow_depth
--out runs/probe`; `kgrow bench --probe ...` runs it before a benchmark and
puts `predicted_speedup_wall` into every comparison.

Example:
    >>> sorted(FAMILIES)
    ['depth', 'frozen', 'resolution', 'sparse', 'width']
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np

from kgrow.bench import realization as rz
from kgrow.bench import registry

FAMILIES = {"width": (0.25, 0.5, 0.75, 1.0), "depth": (0.34, 0.67),
            "resolution": (0.5, 0.75), "frozen": (1 / 3, 2 / 3), "sparse": (0.1,)}
#: Families the line is fitted to (dense compute; see the module docstring).
FITTED = ("width", "depth", "resolution", "frozen")
SPARSE_DENSITY = 0.1


@dataclasses.dataclass
class Variant:
    """One model size the probe times.

    Attributes:
        family: Which knob was turned (`FAMILIES`).
        size: Its value (fraction of the full width/depth/resolution, frozen
            fraction of the weighted layers, or kept density).
        model: The compiled Keras model.
        input_shape: Its input `(H, W, C)`.
        flops_per_sample: `kgrow.flops` training FLOPs per sample.
        seconds: Measured step times.
    """

    family: str
    size: float
    model: Any
    input_shape: tuple
    flops_per_sample: float
    seconds: list = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.family} {self.size:.2f}"


def _grown(model, stage):
    from kgrow.callbacks.growth import FullSize, grow_to
    full = FullSize.of(model, need_width=stage.width is not None,
                       need_depth=stage.depth is not None,
                       need_resolution=stage.resolution is not None and None not in
                       tuple(model.input_shape[1:3]))
    result = grow_to(model, full, stage)
    return model if result is None else result.model


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.trainable_weights]


def _inner_kernels(model) -> dict:
    # The first conv/embedding and the classifier stay dense (as in MEST).
    kernels = [v for layer in _weighted_layers(model) for v in layer.trainable_weights
               if v.path.endswith("kernel") and len(v.shape) >= 2]
    return {v.path: v for v in kernels[1:-1]}


def _resolution_shape(shape, fraction, multiple):
    def side(n):
        return max(multiple, int(round(n * fraction / multiple)) * multiple)
    return (side(shape[0]), side(shape[1]), shape[2])


def build_variants(context: registry.MethodContext,
                   families: Mapping[str, Sequence[float]] = FAMILIES,
                   log: Callable[[str], None] = print) -> tuple[list[Variant], list[str]]:
    """The probe's models, compiled like the run's; and notes on what could not be built.

    A family the model does not support (e.g. depth of a model without
    repeated blocks) is left out with a note saying why.
    """
    from kgrow import flops
    from kgrow.schedules import Stage
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"Unknown probe families {sorted(unknown)}; known: {sorted(FAMILIES)}.")
    variants, notes = [], []
    full_shape = tuple(context.input_shape)
    multiple = int(np.max(context.model_kwargs.get("patch_size", 1)))

    def add(family, size, model, shape, sparsity=None):
        context.compile(model)
        cost = flops.count(model, shape, sparsity=sparsity).training
        variants.append(Variant(family, float(size), model, tuple(shape), float(cost)))

    for family, sizes in families.items():
        for size in sizes:
            try:
                if family == "width":
                    model = context.build_model()
                    add(family, size, model if size == 1.0 else _grown(model, Stage(0, width=size)),
                        full_shape)
                elif family == "depth":
                    add(family, size, _grown(context.build_model(), Stage(0, depth=size)),
                        full_shape)
                elif family == "resolution":
                    from kgrow import models
                    shape = _resolution_shape(full_shape, size, multiple)
                    add(family, size, models.get(context.model_name, shape,
                                                 context.num_classes,
                                                 **dict(context.model_kwargs)), shape)
                elif family == "frozen":
                    model = context.build_model()
                    layers = _weighted_layers(model)
                    for layer in layers[:int(round(size * len(layers)))]:
                        layer.trainable = False
                    add(family, size, model, full_shape)
                else:
                    model = context.build_model()
                    kernels = _inner_kernels(model)
                    for variable in kernels.values():
                        value = np.asarray(variable.numpy())
                        cut = np.quantile(np.abs(value), 1.0 - size)
                        variable.assign(np.where(np.abs(value) >= cut, value, 0.0))
                    add(family, size, model, full_shape,
                        sparsity={path: size for path in kernels})
            except (ValueError, TypeError, NotImplementedError) as err:
                notes.append(f"{family} {size:.2f} not probed: {err}")
                log(f"[kgrow probe] {notes[-1]}")
    return variants, notes


def time_variants(variants: Sequence[Variant], batch, *, rounds: int = 3, steps: int = 3,
                  warmup: int = 2, log: Callable[[str], None] = print) -> None:
    """Times `train_on_batch` of every variant in interleaved rounds (fills `seconds`).

    Each variant is traced and warmed up first; then `rounds` times every
    variant runs `steps` timed steps in turn.
    """
    import tensorflow as tf
    x, y = batch
    inputs = {}
    for v in variants:
        if v.input_shape[:2] not in inputs:
            inputs[v.input_shape[:2]] = tf.image.resize(x, v.input_shape[:2]) \
                if tuple(x.shape[1:3]) != v.input_shape[:2] else x
        for _ in range(warmup):
            v.model.train_on_batch(inputs[v.input_shape[:2]], y)
    for r in range(rounds):
        for v in variants:
            xi = inputs[v.input_shape[:2]]
            for _ in range(steps):
                start = time.perf_counter()
                v.model.train_on_batch(xi, y)  # returns numpy logs: the step has finished
                v.seconds.append(time.perf_counter() - start)
        log(f"[kgrow probe] round {r + 1}/{rounds} timed")


def schedule_epochs(method: str, context: registry.MethodContext) -> list[dict] | None:
    """Per-epoch `flops_per_sample` and `samples` a method will train, before training.

    Known for the baseline (the full model every epoch) and for methods whose
    callbacks include a `kgrow.callbacks.Growth` (its schedule's stages, built
    with `grow_to`). None for any other method: its footprint is only known
    once it ran (`kgrow bench --probe` then predicts from the measured one).
    """
    from kgrow import flops
    from kgrow.callbacks.growth import Growth
    setup = registry.setup_method(method, context)
    samples = context.steps_per_epoch * context.train.batch_size
    epochs = int(context.train.epochs)
    growth = [cb for cb in setup.callbacks if isinstance(cb, Growth)]
    if method != registry.BASELINE and (len(growth) != 1 or len(setup.callbacks) != 1):
        return None
    if not growth:
        cost = flops.count(setup.model, context.input_shape, sparsity=setup.sparsity).training
        return [{"flops_per_sample": cost, "samples": samples}] * epochs
    schedule, cache, out = growth[0].schedule, {}, []
    for epoch in range(epochs):
        index = schedule.stage_index_at(epoch)
        if index not in cache:
            stage = dataclasses.replace(schedule.stages[index], epoch=0)
            model = _grown(setup.model, stage)
            shape = context.input_shape
            if stage.resolution is not None:  # the stage's images, not the full ones
                shape = (tuple(model.input_shape[1:]) if None not in model.input_shape[1:3]
                         else _resolution_shape(shape, stage.resolution, 1))
            cache[index] = flops.count(model, shape).training
        out.append({"flops_per_sample": cache[index], "samples": samples})
    return out


def schedule_family(method: str, context: registry.MethodContext) -> str | None:
    """The probe family a method's schedule moves along ("width", "depth" or
    "resolution"), when its only callback is a `Growth` changing one quantity."""
    from kgrow.callbacks.growth import Growth
    from kgrow.schedules import QUANTITIES
    setup = registry.setup_method(method, context)
    if len(setup.callbacks) != 1 or not isinstance(setup.callbacks[0], Growth):
        return None
    stages = setup.callbacks[0].schedule.stages
    moved = [q for q in QUANTITIES if any(s.get(q) is not None for s in stages)]
    return moved[0] if len(moved) == 1 else None


def family_fits(points: Sequence[Mapping[str, Any]]) -> dict[str, rz.StepTimeFit]:
    """One step-time fit per fitted family, through its points and the full model.

    Shrinking a model along different axes costs time differently on a CPU
    (narrow convolutions run at a lower FLOP rate; fewer blocks save time in
    proportion), so a method that moves along one axis is predicted from the
    fit of that axis; the global fit is kept for everything else. A family
    whose points cannot be fitted (fewer than two distinct FLOPs) gets none.
    A family's fit keeps its measured points: between them a schedule's step
    times are interpolated from what was measured (the line misses sizes
    whose channel counts the CPU pads), outside them the line extrapolates.
    """
    full = [p for p in points if p["family"] == "width" and p["size"] == 1.0]
    out = {}
    for family in FITTED:
        pts = [p for p in points if p["family"] == family]
        pts += [p for p in full if p not in pts]
        if len({p["flops_per_step"] for p in pts}) >= 2:
            out[family] = rz.fit_step_times([p["flops_per_step"] for p in pts],
                                            [p["step_s"] for p in pts], anchored=True)
    return out


def method_fit(probe: Mapping[str, Any], method: str) -> rz.StepTimeFit | None:
    """The fit a probe result predicts `method` with: its family's, else the global one.

    Example:
        >>> probe = {"fit": {"overhead_s": 0.1, "flops_per_s": 1e10},
        ...          "family_fits": {"depth": {"overhead_s": 0.0, "flops_per_s": 2e10}},
        ...          "method_families": {"grow_depth": "depth"}}
        >>> method_fit(probe, "grow_depth").flops_per_s, method_fit(probe, "other").overhead_s
        (20000000000.0, 0.1)
    """
    if "fit" not in probe:
        return None
    family = probe.get("method_families", {}).get(method)
    fit = probe.get("family_fits", {}).get(family, probe["fit"])
    return rz.StepTimeFit.from_dict(fit)


def predict(fit: rz.StepTimeFit, baseline_epochs, method_epochs, batch_size) -> dict:
    """FLOPs speedup, predicted wall-clock speedup and predicted realization."""
    speedup_flops = rz.flops_speedup(baseline_epochs, method_epochs)
    wall = rz.predicted_speedup(fit, baseline_epochs, method_epochs, batch_size)
    return {"speedup_flops": speedup_flops, "predicted_speedup_wall": wall,
            "predicted_realization": rz.realization(wall, speedup_flops),
            "predicted_train_s": rz.predicted_train_s(fit, method_epochs, batch_size),
            "baseline_predicted_train_s": rz.predicted_train_s(fit, baseline_epochs,
                                                                batch_size)}


def plot_probe(points: Sequence[Mapping[str, Any]], fit: rz.StepTimeFit, path: str,
               title: str, fits: Mapping[str, rz.StepTimeFit] | None = None) -> None:
    """Writes measured step times against training FLOPs per step and the fits (PNG).

    The global fit is dashed black; each family's fit (`fits`) is a thin
    line in the family's colour.
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.linspace(0, max(p["flops_per_step"] for p in points) * 1.05, 50)
    for family in FAMILIES:
        pts = [p for p in points if p["family"] == family]
        if pts:
            (marks,) = ax.plot([p["flops_per_step"] / 1e9 for p in pts],
                               [1e3 * p["step_s"] for p in pts],
                               "o" if family in FITTED else "x",
                               label=family + ("" if family in FITTED else " (not fitted)"))
            if fits and family in fits:
                ax.plot(xs / 1e9, 1e3 * fits[family].step_s(xs), "-", lw=0.8,
                        color=marks.get_color())
    ax.plot(xs / 1e9, 1e3 * fit.step_s(xs), "k--",
            label=f"fit: {1e3 * fit.overhead_s:.1f} ms + FLOPs / "
                  f"{fit.flops_per_s / 1e9:.1f} GFLOP/s")
    ax.set_xlabel("training GFLOPs per step")
    ax.set_ylabel("step time ms (median)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_probe(spec, methods: Sequence[str] = (), out_dir: str | None = None, *,
              families: Mapping[str, Sequence[float]] = FAMILIES, rounds: int = 3,
              steps: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measures, fits and predicts; writes probe.json and probe.png into `out_dir`.

    Args:
        spec: A `kgrow.bench.runner.BenchSpec` (model, data, optimizer,
            epochs of the methods to predict).
        methods: Methods to predict (besides the baseline they compare to).
        out_dir: Output directory (None: write nothing).
        families: Sizes to probe per family (default `FAMILIES`).
        rounds: Interleaved timing rounds.
        steps: Timed steps per variant per round.
        log: Where progress lines go.

    Returns:
        `{"fit": StepTimeFit dict, "points": [...], "predictions": {method:
        {...}}, "notes": [...], "settings": ..., "png": path}`.
    """
    from kgrow.bench import runner
    started = time.perf_counter()
    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seeds[0])
    bundle = runner.load_data(spec, spec.seeds[0])
    context = registry.MethodContext(
        model_name=spec.model, model_kwargs=dict(spec.model_kwargs),
        input_shape=tuple(bundle.info.image_shape), num_classes=bundle.info.num_classes,
        train=spec.train, data=bundle, steps_per_epoch=int(bundle.steps_per_epoch),
        label_mode=bundle.info.label_mode)
    variants, notes = build_variants(context, families, log=log)
    log(f"[kgrow probe] {len(variants)} variants of {spec.model} built; timing "
        f"{rounds} rounds x {steps} steps each")
    time_variants(variants, next(iter(bundle.train)), rounds=rounds, steps=steps, log=log)
    batch_size = spec.train.batch_size
    points = [{"family": v.family, "size": v.size, "input_shape": list(v.input_shape),
               "flops_per_sample": v.flops_per_sample,
               "flops_per_step": v.flops_per_sample * batch_size,
               "step_s": float(np.median(v.seconds)),
               "step_s_range": [float(min(v.seconds)), float(max(v.seconds))],
               "params": int(v.model.count_params())} for v in variants]
    fitted = [p for p in points if p["family"] in FITTED]
    fit = rz.fit_step_times([p["flops_per_step"] for p in fitted],
                            [p["step_s"] for p in fitted])
    for p in points:
        p["fit_rel_error"] = float(fit.step_s(p["flops_per_step"]) / p["step_s"] - 1.0)
    fits = family_fits(points)
    predictions, families_of = {}, {}
    base_epochs = schedule_epochs(registry.BASELINE, context)
    for method in methods:
        if method == registry.BASELINE:
            continue
        family = schedule_family(method, context)
        if family in fits:
            families_of[method] = family
        epochs = schedule_epochs(method, context)
        if epochs is None:
            notes.append(f"{method}: no schedule known before training (only Growth "
                         f"schedules are); `kgrow bench --probe --methods {method}` predicts "
                         f"it from the run's measured per-epoch FLOPs.")
            log(f"[kgrow probe] {notes[-1]}")
            continue
        predictions[method] = predict(fits.get(family, fit), base_epochs, epochs, batch_size)
        predictions[method]["fit"] = family if family in fits else "all"
        predictions[method]["predicted_speedup_wall_global_fit"] = \
            rz.predicted_speedup(fit, base_epochs, epochs, batch_size)
    result = {"fit": fit.to_dict(), "family_fits": {k: v.to_dict() for k, v in fits.items()},
              "method_families": families_of, "points": points, "predictions": predictions,
              "notes": notes, "settings": spec.settings(), "spec": spec.to_dict(),
              "probe_s": time.perf_counter() - started}
    log(format_probe(result))
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        result["png"] = os.path.join(out_dir, "probe.png")
        plot_probe(points, fit, result["png"],
                   f"{spec.model} {spec.model_kwargs or ''} batch {batch_size} "
                   f"({spec.profile}): step time vs FLOPs; thin lines: per-family fits",
                   fits=fits)
        with open(os.path.join(out_dir, "probe.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        log(f"[kgrow probe] wrote {os.path.join(out_dir, 'probe.json')} and {result['png']}")
    for v in variants:
        v.model = None
    return result


def format_probe(result: Mapping[str, Any]) -> str:
    """The probe's table, fit and predictions as text.

    Example:
        >>> res = {"fit": {"overhead_s": 0.01, "flops_per_s": 1e10, "rms_rel_error": 0.02},
        ...        "points": [{"family": "width", "size": 1.0, "input_shape": [28, 28, 1],
        ...                    "flops_per_step": 1e9, "step_s": 0.11,
        ...                    "step_s_range": [0.1, 0.12], "fit_rel_error": 0.0}],
        ...        "predictions": {"m": {"speedup_flops": 2.0, "predicted_speedup_wall": 1.8,
        ...                              "predicted_realization": 0.89}}, "probe_s": 60.0}
        >>> print(format_probe(res).splitlines()[-1])
        m: FLOPs speedup 2.00x, predicted wall-clock speedup 1.80x (realization 89%)
    """
    fit = result["fit"]
    full = max((p for p in result["points"] if p["family"] == "width"),
               key=lambda p: p["size"], default=None)
    lines = ["family     size  input     GFLOPs/step  step ms (range)       "
             "/full time  /full FLOPs  fit error"]
    for p in result["points"]:
        rel_t = rel_f = ""
        if full is not None:
            rel_t = f"{p['step_s'] / full['step_s']:.2f}"
            rel_f = f"{p['flops_per_step'] / full['flops_per_step']:.2f}"
        lo, hi = p["step_s_range"]
        lines.append(f"{p['family']:<10} {p['size']:.2f}  {'x'.join(map(str, p['input_shape'][:2])):<8}"
                     f"  {p['flops_per_step'] / 1e9:>10.2f}  {1e3 * p['step_s']:7.1f} "
                     f"({1e3 * lo:.0f}-{1e3 * hi:.0f}){'':<5}  {rel_t:>9}  {rel_f:>11}"
                     f"  {100 * p['fit_rel_error']:+.1f}%")
    lines.append(f"fit: step = {1e3 * fit['overhead_s']:.1f} ms + FLOPs / "
                 f"{fit['flops_per_s'] / 1e9:.2f} GFLOP/s (rms relative error "
                 f"{100 * fit['rms_rel_error']:.1f}%); probe took "
                 f"{result.get('probe_s', 0):.0f} s")
    for family, f in result.get("family_fits", {}).items():
        lines.append(f"  {family} fit: {1e3 * f['overhead_s']:.1f} ms + FLOPs / "
                     f"{f['flops_per_s'] / 1e9:.2f} GFLOP/s")
    for name, p in result.get("predictions", {}).items():
        real = p["predicted_realization"]
        via = "" if p.get("fit", "all") == "all" else f", {p['fit']} fit"
        lines.append(f"{name}: FLOPs speedup {p['speedup_flops']:.2f}x, predicted wall-clock "
                     f"speedup {p['predicted_speedup_wall']:.2f}x (realization "
                     f"{'n/a' if real is None else format(real, '.0%')}{via})")
    return "\n".join(lines)

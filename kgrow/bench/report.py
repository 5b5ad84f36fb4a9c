"""Summaries of benchmark runs: seed aggregation, comparisons, Markdown, plots.

Pure functions of the per-run records produced by `kgrow.bench.runner`.

Example:
    >>> runs = {"baseline": {"train_wall_s": 10.0, "train_flops": 4e12, "test_acc": 0.90},
    ...         "fast": {"train_wall_s": 5.0, "train_flops": 1e12, "test_acc": 0.895}}
    >>> c = compare(runs)["fast"]
    >>> c["speedup_wall"], c["speedup_flops"], round(c["acc_delta_pp"], 2)
    (2.0, 4.0, -0.5)
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from kgrow.bench import realization as rz

SUMMED_KEYS = ("train_wall_s", "train_flops", "test_acc", "peak_mem_mb", "eval_wall_s")


def binomial_stderr_pp(accuracy: float, num_test: int) -> float:
    """Standard error of a test accuracy, in percentage points.

    A test set of `n` independent samples gives accuracy `p` with binomial
    standard error `sqrt(p (1 - p) / n)`.

    Example:
        >>> round(binomial_stderr_pp(0.9, 10_000), 3)
        0.3
    """
    if num_test < 1:
        raise ValueError(f"num_test must be >= 1, got {num_test}.")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}.")
    return 100.0 * math.sqrt(accuracy * (1.0 - accuracy) / num_test)


def _std(values: Sequence[float]) -> float | None:
    # Sample standard deviation; undefined (None) for a single seed.
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def mean_curve(curves: Sequence[Sequence[Mapping[str, float]]]) -> list[dict]:
    """Epoch-wise mean of several runs' curves (epochs all runs reached).

    Example:
        >>> a = [{"epoch": 1, "wall_s": 1.0, "train_loss": 2.0, "test_acc": 0.5}]
        >>> b = [{"epoch": 1, "wall_s": 3.0, "train_loss": 1.0, "test_acc": 0.7}]
        >>> mean_curve([a, b])[0]["wall_s"]
        2.0
    """
    length = min(len(c) for c in curves)
    out = []
    for i in range(length):
        points = [c[i] for c in curves]
        point = {"epoch": points[0]["epoch"]}
        for key in points[0]:
            if key != "epoch" and all(isinstance(p.get(key), (int, float)) for p in points):
                point[key] = float(np.mean([p[key] for p in points]))
        out.append(point)
    return out


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summary of one method over seeds: means, sample std, mean curve.

    With a single record the means are its values and every std is None.

    Example:
        >>> r = [{"seed": s, "train_wall_s": w, "train_flops": 1.0, "test_acc": a,
        ...       "peak_mem_mb": 100.0, "eval_wall_s": 1.0, "num_test": 100,
        ...       "curve": []} for s, w, a in ((0, 1.0, 0.8), (1, 3.0, 0.9))]
        >>> s = aggregate(r)
        >>> s["train_wall_s"], round(s["std"]["train_wall_s"], 4), s["seeds"]
        (2.0, 1.4142, [0, 1])
    """
    if not records:
        raise ValueError("aggregate needs at least one run record.")
    summary: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in SUMMED_KEYS:
        values = [float(r[key]) for r in records]
        summary[key] = float(np.mean(values))
        std[key] = _std(values)
    summary["curve"] = mean_curve([r["curve"] for r in records])
    summary["seeds"] = [r["seed"] for r in records]
    summary["n_seeds"] = len(records)
    summary["std"] = std
    summary["test_acc_stderr_pp"] = binomial_stderr_pp(summary["test_acc"],
                                                      int(records[0]["num_test"]))
    summary["per_seed"] = [dict(r) for r in records]
    return summary


def compare(runs: Mapping[str, Mapping[str, Any]], baseline: str = "baseline",
            fit: Any = None, batch_size: int | None = None,
            fits: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Each non-baseline run against the baseline.

    `speedup_wall` and `speedup_flops` are baseline / method (above 1 means
    the method is cheaper); `acc_delta_pp` is method minus baseline accuracy in
    percentage points; `realization` is the fraction of the FLOPs saving seen
    in wall-clock (`kgrow.bench.realization.realization`).

    With `per_seed` records the ratios are paired by seed (a method's run
    against the baseline run of the same seed, which ran next to it) and
    each value is the median over seeds, with `<key>_range` = [min, max];
    `acc_delta_pp_std` and `acc_delta_pp_stderr` are the sample std and the
    standard error of the per-seed paired accuracy differences. Without them
    the ratios are those of the means. Where every pair has epochs in which
    the method trains the baseline's model (`rz.equal_work_overhead`),
    `equal_work_overhead` is the method's extra time per sample there and
    `equal_work_epochs` the epochs compared, per seed.

    Args:
        runs: Method name -> `aggregate` summary.
        baseline: Name of the reference run.
        fit: A `StepTimeFit` (or its dict); adds `predicted_speedup_wall`,
            the speedup the step-time model predicts from the runs' measured
            per-epoch FLOPs and samples, and `predicted_realization`.
        batch_size: Samples per step, required with `fit` or `fits`.
        fits: Method name -> its own fit (e.g. `kgrow.bench.probe.method_fit`),
            used instead of `fit` for that method.

    Raises:
        KeyError: No run named `baseline`.

    Example:
        >>> def rec(seed, wall, flops, acc):
        ...     return {"seed": seed, "train_wall_s": wall, "train_flops": flops,
        ...             "test_acc": acc}
        >>> runs = {"baseline": {"train_wall_s": 11.0, "train_flops": 4.0, "test_acc": 0.905,
        ...                      "per_seed": [rec(0, 10.0, 4.0, 0.90), rec(1, 12.0, 4.0, 0.91)]},
        ...         "m": {"train_wall_s": 7.0, "train_flops": 2.0, "test_acc": 0.9,
        ...               "per_seed": [rec(0, 5.0, 2.0, 0.89), rec(1, 8.0, 2.0, 0.91)]}}
        >>> c = compare(runs)["m"]
        >>> c["speedup_wall"], c["speedup_wall_range"], round(c["realization"], 3)
        (1.75, [1.5, 2.0], 0.833)
        >>> round(c["acc_delta_pp"], 2), round(c["acc_delta_pp_stderr"], 2)
        (-0.5, 0.5)
    """
    if baseline not in runs:
        raise KeyError(f"No {baseline!r} run to compare against; runs: {', '.join(runs)}.")
    def as_fit(f):
        return f if f is None or isinstance(f, rz.StepTimeFit) else rz.StepTimeFit.from_dict(f)
    if (fit is not None or fits) and batch_size is None:
        raise ValueError("compare(..., fit=...) needs batch_size to predict step times.")
    base = runs[baseline]
    out = {}
    for name, run in runs.items():
        if name == baseline:
            continue
        run_fit = as_fit((fits or {}).get(name, fit))
        pairs = _pairs(base.get("per_seed"), run.get("per_seed"))
        if not pairs:
            pairs = [(base, run)]
        per_seed = {
            "speedup_wall": [_ratio(b["train_wall_s"], m["train_wall_s"]) for b, m in pairs],
            "speedup_flops": [_ratio(b["train_flops"], m["train_flops"]) for b, m in pairs],
            "acc_delta_pp": [100.0 * (m["test_acc"] - b["test_acc"]) for b, m in pairs],
        }
        per_seed["realization"] = [rz.realization(w, f) for w, f in
                                   zip(per_seed["speedup_wall"], per_seed["speedup_flops"])]
        if run_fit is not None and all(b.get("curve") and m.get("curve") for b, m in pairs):
            per_seed["predicted_speedup_wall"] = [
                rz.predicted_speedup(run_fit, b["curve"], m["curve"], batch_size)
                for b, m in pairs]
            per_seed["predicted_realization"] = [
                rz.realization(p, f) for p, f in zip(per_seed["predicted_speedup_wall"],
                                                     per_seed["speedup_flops"])]
        overheads = [rz.equal_work_overhead(b.get("curve") or [], m.get("curve") or [])
                     for b, m in pairs]
        if all(o is not None for o in overheads):
            per_seed["equal_work_overhead"] = [o["overhead"] for o in overheads]
        entry: dict[str, Any] = {}
        for key, values in per_seed.items():
            if key == "acc_delta_pp":
                continue
            entry[key] = _median(values)
            if len(pairs) > 1:
                entry[f"{key}_range"] = _range(values)
        # The mean paired difference: a method run on fewer seeds than the
        # baseline (e.g. an interrupted --resume) is compared on its own seeds only.
        entry["acc_delta_pp"] = float(np.mean(per_seed["acc_delta_pp"]))
        if len(pairs) > 1:
            entry["acc_delta_pp_std"] = _std(per_seed["acc_delta_pp"])
            entry["acc_delta_pp_stderr"] = entry["acc_delta_pp_std"] / math.sqrt(len(pairs))
        if "equal_work_overhead" in per_seed:
            entry["equal_work_epochs"] = [o["epochs"] for o in overheads]
        entry["n_pairs"] = len(pairs)
        out[name] = entry
    return out


def compare_to_parts(runs: Mapping[str, Mapping[str, Any]],
                     separator: str = "+") -> dict[str, dict]:
    """Each composed run against every other run made of some of its parts.

    A composed method's own target is often relative to one of its parts
    (SpFDE: sparse training + freezing + sieving against sparse training
    alone; growth + freezing against growth alone), which the comparisons
    against the baseline do not show. For a run named `"a+b+c"` this
    compares it (with `compare`, paired by seed) against every run of the
    benchmark named by a proper subset of its parts, e.g. `"a"` or `"a+c"`.

    Args:
        runs: Method name -> `aggregate` summary (the baseline, a single
            method, is never a composed run's part).
        separator: What joins the parts of a composed name.

    Returns:
        Composed name -> {reference run name -> `compare` entry}; composed
        runs without a part run are left out.

    Example:
        >>> def run(wall, flops, acc):
        ...     return {"train_wall_s": wall, "train_flops": flops, "test_acc": acc}
        >>> runs = {"baseline": run(10.0, 8.0, 0.9), "sparse": run(10.0, 1.0, 0.89),
        ...         "sparse+freeze": run(8.0, 0.75, 0.885)}
        >>> c = compare_to_parts(runs)["sparse+freeze"]["sparse"]
        >>> c["speedup_wall"], round(c["acc_delta_pp"], 2)
        (1.25, -0.5)
    """
    def parts(name):
        return frozenset(p.strip() for p in name.split(separator))

    out: dict[str, dict] = {}
    for name, run in runs.items():
        whole = parts(name)
        if len(whole) < 2:
            continue
        for ref, ref_run in runs.items():
            if ref != name and parts(ref) < whole:
                entry = compare({ref: ref_run, name: run}, baseline=ref)[name]
                out.setdefault(name, {})[ref] = entry
    return out


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _median(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.median(values))


def _range(values: Sequence[float | None]) -> list[float] | None:
    return None if any(v is None for v in values) else [float(min(values)),
                                                        float(max(values))]


def _pairs(base_runs, runs) -> list[tuple[Mapping, Mapping]]:
    # A method's run and the baseline run of the same seed.
    if not base_runs or not runs:
        return []
    base_by_seed = {r["seed"]: r for r in base_runs}
    return [(base_by_seed[r["seed"]], r) for r in runs if r["seed"] in base_by_seed]


def _fmt_pm(value: float, std: float | None, fmt: str) -> str:
    text = format(value, fmt)
    return text if std is None else f"{text} ± {format(std, fmt)}"


def _fmt_ratio(comp: Mapping[str, Any], key: str, fmt: str, unit: str) -> str:
    value = comp.get(key)
    if value is None:
        return "—"
    text = format(value, fmt) + unit
    spread = comp.get(f"{key}_range")
    if spread:
        dash = " to " if fmt.startswith("+") else "-"  # a signed range reads badly with '-'
        text += f" [{format(spread[0], fmt)}{dash}{format(spread[1], fmt)}]"
    return text


def to_markdown(results: Mapping[str, Any]) -> str:
    """`results.json` content as a Markdown report with one table.

    Example:
        >>> res = {"model": "m", "dataset": "d", "epochs": 1, "seed": 0, "profile": "p",
        ...        "runs": {"baseline": {"train_wall_s": 2.0, "train_flops": 1e9,
        ...                 "test_acc": 0.5, "peak_mem_mb": 10.0, "n_seeds": 1,
        ...                 "std": {}, "test_acc_stderr_pp": 5.0}}, "comparisons": {}}
        >>> "| baseline | 50.00" in to_markdown(res)
        True
    """
    lines = [
        f"# kgrow bench: {results['model']} on {results['dataset']}",
        "",
        f"Profile `{results['profile']}`, {results['epochs']} "
        f"epoch{'s' if results['epochs'] != 1 else ''}, seed {results['seed']}"
        + (f" ({results['n_seeds']} seeds: mean ± sample std)"
           if results.get("n_seeds", 1) > 1 else "") + ".",
        "",
        "| run | test acc % | train wall s | train FLOPs | peak RSS MB | speedup wall |"
        " speedup FLOPs | realization | predicted speedup wall | Δ acc pp |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    comparisons = results.get("comparisons", {})
    for name, run in results["runs"].items():
        std = run.get("std") or {}
        acc_std = std.get("test_acc")
        comp = comparisons.get(name)
        if comp is None:
            speed_w = speed_f = real = predicted = delta = "—"
        else:
            speed_w = _fmt_ratio(comp, "speedup_wall", ".2f", "x")
            speed_f = _fmt_ratio(comp, "speedup_flops", ".2f", "x")
            real = _fmt_ratio(comp, "realization", ".0%", "")
            predicted = _fmt_ratio(comp, "predicted_speedup_wall", ".2f", "x")
            delta = _fmt_pm(comp["acc_delta_pp"], comp.get("acc_delta_pp_stderr"), "+.2f")
        acc = _fmt_pm(100 * run["test_acc"], None if acc_std is None else 100 * acc_std, ".2f")
        lines.append(
            f"| {name} | {acc}"
            f" | {_fmt_pm(run['train_wall_s'], std.get('train_wall_s'), '.1f')}"
            f" | {run['train_flops']:.3g} | {run['peak_mem_mb']:.0f}"
            f" | {speed_w} | {speed_f} | {real} | {predicted} | {delta} |")
    stderr = [f"{name} ±{run['test_acc_stderr_pp']:.2f} pp"
              for name, run in results["runs"].items() if "test_acc_stderr_pp" in run]
    lines += [
        "",
        "Speedups are baseline / method, paired by seed (median [min-max] over seeds); "
        "realization = (1 - 1/speedup_wall) / (1 - 1/speedup_FLOPs), the fraction of the "
        "FLOPs saving seen in wall-clock; the predicted speedup comes from the step-time "
        "probe (`kgrow bench probe`) applied to the runs' per-epoch FLOPs; Δ acc is method "
        "minus baseline ± the standard error of the paired per-seed differences.",
        "Binomial standard error of each test accuracy (test-set size): " + ", ".join(stderr)
        + ".",
    ]
    test_subset = (results.get("settings") or {}).get("test_subset")
    if test_subset:
        lines.append(f"Test accuracy on the first {test_subset} test samples only "
                     f"(`--test-subset`), not the whole test set.")
    overheads = [(name, comp) for name, comp in comparisons.items()
                 if comp.get("equal_work_overhead") is not None]
    if overheads:
        lines += ["", "Time per sample in the epochs where a method trains the baseline's "
                  "model (same FLOPs per sample; the first epoch and each epoch whose FLOPs "
                  "per sample changed as it began, i.e. a growth step, left out), method against baseline: the cost of "
                  "its machinery alone (median [min-max] over seeds; epochs compared):", ""]
        for name, comp in overheads:
            epochs = "; ".join(",".join(str(e) for e in seed)
                               for seed in comp.get("equal_work_epochs", []))
            lines.append(f"- {name}: {_fmt_ratio(comp, 'equal_work_overhead', '+.1%', '')}"
                         f" (epochs {epochs})")
    by_part = results.get("part_comparisons")
    if by_part is None:  # results.json written before part comparisons existed
        by_part = compare_to_parts(results["runs"])
    if by_part:
        lines += [
            "",
            "Composed methods against the runs of their parts (reference / composed, paired "
            "by seed as above; Δ acc is composed minus reference):",
            "",
            "| run | against | speedup wall | speedup FLOPs | realization | Δ acc pp |",
            "|---|---|---|---|---|---|",
        ]
        for name, refs in by_part.items():
            for ref, comp in refs.items():
                lines.append(
                    f"| {name} | {ref} | {_fmt_ratio(comp, 'speedup_wall', '.2f', 'x')}"
                    f" | {_fmt_ratio(comp, 'speedup_flops', '.2f', 'x')}"
                    f" | {_fmt_ratio(comp, 'realization', '.0%', '')}"
                    f" | {_fmt_pm(comp['acc_delta_pp'], comp.get('acc_delta_pp_stderr'), '+.2f')} |")
    notes = results.get("notes")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_curves(results: Mapping[str, Any], path: str) -> None:
    """Writes test accuracy against training seconds and against epochs (PNG).

    Uses matplotlib's Agg backend (no display needed).
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_time, ax_epoch) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, run in results["runs"].items():
        curve = run["curve"]
        acc = [100 * p["test_acc"] for p in curve]
        ax_time.plot([p["wall_s"] for p in curve], acc, marker="o", label=name)
        ax_epoch.plot([p["epoch"] for p in curve], acc, marker="o", label=name)
    ax_time.set_xlabel("training wall-clock s (evaluation excluded)")
    ax_epoch.set_xlabel("epoch")
    for ax in (ax_time, ax_epoch):
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results['model']} on {results['dataset']} ({results['profile']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def schedule_quantities(results: Mapping[str, Any]) -> list[str]:
    """The per-epoch quantities the methods' callbacks logged (`grow/width`, ...).

    Example:
        >>> schedule_quantities({"runs": {"m": {"curve": [{"epoch": 1, "grow/width": 0.5,
        ...                                                  "test_acc": 0.1}]}}})
        ['grow/width']
    """
    keys = {k for run in results["runs"].values() for p in run["curve"] for k in p if "/" in k}
    return sorted(keys)


def plot_schedule(results: Mapping[str, Any], path: str) -> None:
    """Writes what each method trains per epoch (PNG).

    The first panel is training FLOPs per sample: the footprint of a
    method's schedule (growth stages, frozen blocks, sparsity) next to the
    baseline's flat line. One more panel per quantity the methods' callbacks
    logged (`grow/width`, `grow/depth`, `grow/resolution`, `freeze/blocks`,
    `sparse/sparsity`, `sieve/active_samples`, ...). Runs whose curve has no
    per-epoch FLOPs are left out of the first panel and named in its title.
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    quantities = schedule_quantities(results)
    panels = 1 + len(quantities)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    axes = axes.ravel()
    ax = axes[0]
    missing = []
    # One colour per method in every panel.
    colour = {name: f"C{i % 10}" for i, name in enumerate(results["runs"])}
    for name, run in results["runs"].items():
        points = [(p["epoch"], p.get("flops_per_sample")) for p in run["curve"]]
        if not points or any(f is None for _, f in points):
            missing.append(name)
            continue
        ax.step([e for e, _ in points], [f / 1e6 for _, f in points], where="mid",
                marker="o", label=name, color=colour[name])
    ax.set_ylabel("training MFLOPs per sample")
    ax.set_ylim(bottom=0)
    title = "training FLOPs per sample"
    if missing:
        title += f"\n(no per-epoch FLOPs for {', '.join(missing)})"
    ax.set_title(title)
    for ax, quantity in zip(axes[1:], quantities):
        for name, run in results["runs"].items():
            points = [(p["epoch"], p[quantity]) for p in run["curve"] if quantity in p]
            if points:
                ax.step([e for e, _ in points], [v for _, v in points], where="mid",
                        marker="o", label=name, color=colour[name])
        ax.set_title(quantity)
    for ax in axes[:panels]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(f"Schedules: {results['model']} on {results['dataset']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

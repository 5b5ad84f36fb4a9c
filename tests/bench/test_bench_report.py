import math

import pytest

from kgrow.bench import report


def _record(seed, wall, flops, acc, curve_acc):
    return {"seed": seed, "train_wall_s": wall, "train_flops": flops, "test_acc": acc,
            "peak_mem_mb": 100.0 + seed, "eval_wall_s": 1.0, "num_test": 1000,
            "curve": [{"epoch": i + 1, "wall_s": wall * (i + 1) / len(curve_acc),
                       "train_loss": 1.0, "test_acc": a} for i, a in enumerate(curve_acc)]}


def test_binomial_stderr():
    assert report.binomial_stderr_pp(0.5, 10_000) == pytest.approx(0.5)
    assert report.binomial_stderr_pp(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="accuracy"):
        report.binomial_stderr_pp(1.5, 10)
    with pytest.raises(ValueError, match="num_test"):
        report.binomial_stderr_pp(0.5, 0)


def test_aggregate_over_seeds():
    runs = [_record(0, 10.0, 100.0, 0.80, [0.5, 0.8]),
            _record(1, 14.0, 100.0, 0.90, [0.6, 0.9]),
            _record(2, 12.0, 100.0, 0.85, [0.7, 0.85])]
    s = report.aggregate(runs)
    assert s["train_wall_s"] == pytest.approx(12.0)
    assert s["std"]["train_wall_s"] == pytest.approx(2.0)  # sample std of 10, 14, 12
    assert s["test_acc"] == pytest.approx(0.85)
    assert s["std"]["test_acc"] == pytest.approx(0.05)
    assert s["std"]["train_flops"] == 0.0
    assert s["n_seeds"] == 3 and s["seeds"] == [0, 1, 2]
    assert [p["test_acc"] for p in s["curve"]] == pytest.approx([0.6, 0.85])
    assert s["test_acc_stderr_pp"] == pytest.approx(100 * math.sqrt(0.85 * 0.15 / 1000))


def test_aggregate_single_seed_has_no_std():
    s = report.aggregate([_record(0, 10.0, 1.0, 0.8, [0.8])])
    assert s["train_wall_s"] == 10.0 and s["std"]["train_wall_s"] is None
    with pytest.raises(ValueError):
        report.aggregate([])


def test_mean_curve_truncates_to_common_epochs():
    a = [{"epoch": 1, "wall_s": 1.0, "test_acc": 0.5}, {"epoch": 2, "wall_s": 2.0,
                                                        "test_acc": 0.6}]
    b = [{"epoch": 1, "wall_s": 3.0, "test_acc": 0.7}]
    curve = report.mean_curve([a, b])
    assert len(curve) == 1 and curve[0]["wall_s"] == 2.0 and curve[0]["test_acc"] == 0.6


def test_compare_pairs_runs_by_seed():
    base = report.aggregate([_record(0, 10.0, 8.0, 0.80, [0.8]),
                             _record(1, 12.0, 8.0, 0.90, [0.9])])
    # Seed order reversed on purpose: pairing goes by seed, not by position.
    fast = report.aggregate([_record(1, 4.0, 2.0, 0.87, [0.87]),
                             _record(0, 8.0, 2.0, 0.79, [0.79])])
    comp = report.compare({"baseline": base, "fast": fast})
    assert set(comp) == {"fast"}
    c = comp["fast"]
    # Paired ratios 10/8 = 1.25 (seed 0) and 12/4 = 3 (seed 1), not 11/6 of the means.
    assert c["speedup_wall"] == pytest.approx((1.25 + 3.0) / 2)
    assert c["speedup_wall_range"] == pytest.approx([1.25, 3.0])
    assert c["speedup_flops"] == pytest.approx(4.0)
    real = [(1 - 1 / 1.25) / 0.75, (1 - 1 / 3.0) / 0.75]
    assert c["realization"] == pytest.approx(sum(real) / 2)
    assert c["realization_range"] == pytest.approx(sorted(real))
    assert c["acc_delta_pp"] == pytest.approx(-2.0)
    # paired deltas -1 pp and -3 pp: sample std sqrt(2), standard error 1
    assert c["acc_delta_pp_std"] == pytest.approx(math.sqrt(2))
    assert c["acc_delta_pp_stderr"] == pytest.approx(1.0)
    assert c["n_pairs"] == 2
    with pytest.raises(KeyError, match="No 'baseline' run"):
        report.compare({"fast": fast})


def test_compare_a_method_on_fewer_seeds_only_against_its_own_seeds():
    # An interrupted --resume: the baseline has seeds 0 and 1, the method only seed 1.
    base = report.aggregate([_record(0, 10.0, 8.0, 0.80, [0.8]),
                             _record(1, 12.0, 8.0, 0.90, [0.9])])
    late = report.aggregate([_record(1, 6.0, 4.0, 0.88, [0.88])])
    c = report.compare({"baseline": base, "late": late})["late"]
    assert c["n_pairs"] == 1 and c["speedup_wall"] == 2.0
    assert c["acc_delta_pp"] == pytest.approx(-2.0)  # 88 - 90, not 88 - the mean 85


def test_compare_single_seed_has_no_spread():
    base = report.aggregate([_record(0, 10.0, 8.0, 0.80, [0.8])])
    fast = report.aggregate([_record(0, 5.0, 2.0, 0.79, [0.79])])
    c = report.compare({"baseline": base, "fast": fast})["fast"]
    assert c["speedup_wall"] == 2.0 and c["realization"] == pytest.approx(0.5 / 0.75)
    assert "speedup_wall_range" not in c and "acc_delta_pp_stderr" not in c


def test_compare_predicts_from_curves_with_a_fit():
    def rec(seed, wall, fps):
        r = _record(seed, wall, fps * 2560, 0.8, [0.8, 0.8])
        for point in r["curve"]:
            point.update(samples=1280, flops_per_sample=fps)
        return r
    base = report.aggregate([rec(0, 10.0, 1e9)])
    half = report.aggregate([rec(0, 6.0, 5e8)])
    fit = {"overhead_s": 0.5, "flops_per_s": 1.28e11}
    c = report.compare({"baseline": base, "half": half}, fit=fit, batch_size=128)["half"]
    # steps: 0.5 + 1.0 s at full size, 0.5 + 0.5 s at half: predicted 1.5x.
    assert c["predicted_speedup_wall"] == pytest.approx(1.5)
    assert c["predicted_realization"] == pytest.approx((1 - 1 / 1.5) / 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        report.compare({"baseline": base, "half": half}, fit=fit)
    # A method's own fit wins over the shared one: no overhead, so time follows FLOPs.
    own = {"overhead_s": 0.0, "flops_per_s": 1e11}
    c = report.compare({"baseline": base, "half": half}, fit=fit, fits={"half": own},
                       batch_size=128)["half"]
    assert c["predicted_speedup_wall"] == pytest.approx(2.0)
    assert c["predicted_realization"] == pytest.approx(1.0)


def test_markdown_and_plot(tmp_path):
    base = report.aggregate([_record(0, 10.0, 8e12, 0.9, [0.8, 0.9])])
    other = report.aggregate([_record(0, 5.0, 2e12, 0.88, [0.85, 0.88])])
    results = {"model": "resnet20", "dataset": "fashion_mnist", "epochs": 2, "seed": 0,
               "profile": "quick", "runs": {"baseline": base, "other": other},
               "notes": ["a note"]}
    results["comparisons"] = report.compare(results["runs"])
    md = report.to_markdown(results)
    assert "| baseline | 90.00 | 10.0 | 8e+12 |" in md
    assert "| other | 88.00 | 5.0 | 2e+12 | 100 | 2.00x | 4.00x | 67% | — | -2.00 |" in md
    assert "- a note" in md
    path = tmp_path / "curves.png"
    report.plot_curves(results, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_composed_runs_are_compared_with_their_parts():
    runs = {"baseline": report.aggregate([_record(0, 20.0, 800.0, 0.90, [0.9]),
                                          _record(1, 22.0, 800.0, 0.92, [0.92])]),
            "sparse": report.aggregate([_record(0, 20.0, 100.0, 0.89, [0.89]),
                                        _record(1, 21.0, 100.0, 0.91, [0.91])]),
            "freeze": report.aggregate([_record(0, 15.0, 600.0, 0.88, [0.88]),
                                        _record(1, 16.0, 600.0, 0.90, [0.90])]),
            "sparse+freeze+sieve": report.aggregate([_record(0, 10.0, 50.0, 0.88, [0.88]),
                                                     _record(1, 14.0, 50.0, 0.89, [0.89])])}
    parts = report.compare_to_parts({k: v for k, v in runs.items() if k != "baseline"})
    assert set(parts) == {"sparse+freeze+sieve"}
    assert set(parts["sparse+freeze+sieve"]) == {"sparse", "freeze"}
    vs_sparse = parts["sparse+freeze+sieve"]["sparse"]
    # Paired by seed: 20/10 and 21/14.
    assert vs_sparse["speedup_wall_range"] == pytest.approx([1.5, 2.0])
    assert vs_sparse["speedup_flops"] == pytest.approx(2.0)
    assert vs_sparse["acc_delta_pp"] == pytest.approx(-1.5)
    assert parts["sparse+freeze+sieve"]["freeze"]["speedup_flops"] == pytest.approx(12.0)
    # A run is not its own part, and single methods have no parts.
    assert report.compare_to_parts({"a": runs["sparse"], "b": runs["freeze"]}) == {}
    results = {"model": "m", "dataset": "d", "epochs": 1, "seed": 0, "profile": "p",
               "runs": runs, "comparisons": report.compare(runs)}
    text = report.to_markdown(results)  # no part_comparisons key: computed from the runs
    assert "| sparse+freeze+sieve | sparse | 1.75x [1.50-2.00] | 2.00x" in text


def test_compare_reports_the_overhead_at_equal_work(tmp_path):
    def curve(seconds, fps):
        walls, out = 0.0, []
        for i, (s, f) in enumerate(zip(seconds, fps)):
            walls += s
            out.append({"epoch": i + 1, "wall_s": walls, "samples": 100,
                        "flops_per_sample": f, "train_loss": 1.0, "test_acc": 0.9})
        return out

    def rec(seed, seconds, fps):
        return {"seed": seed, "train_wall_s": sum(seconds), "train_flops": 1.0,
                "test_acc": 0.9, "peak_mem_mb": 1.0, "eval_wall_s": 0.0, "num_test": 1000,
                "curve": curve(seconds, fps)}

    full, grown = [4.0] * 4, [1.0, 1.0, 4.0, 4.0]
    runs = {"baseline": report.aggregate([rec(0, [20, 10, 10, 10], full),
                                          rec(1, [20, 10, 10, 20], full)]),
            "grow": report.aggregate([rec(0, [5, 5, 15, 10.2], grown),
                                      rec(1, [5, 5, 15, 21.0], grown)]),
            "sparse": report.aggregate([rec(s, [5] * 4, [0.5] * 4) for s in (0, 1)])}
    comps = report.compare(runs)
    assert comps["grow"]["equal_work_overhead"] == pytest.approx(0.035)  # median of 2%, 5%
    assert comps["grow"]["equal_work_overhead_range"] == pytest.approx([0.02, 0.05])
    assert comps["grow"]["equal_work_epochs"] == [[4], [4]]
    assert "equal_work_overhead" not in comps["sparse"]
    md = report.to_markdown({"model": "m", "dataset": "d", "epochs": 4, "seed": 0,
                             "profile": "p", "runs": runs, "comparisons": comps})
    assert "- grow: +3.5% [+2.0% to +5.0%] (epochs 4; 4)" in md
    assert "- sparse:" not in md

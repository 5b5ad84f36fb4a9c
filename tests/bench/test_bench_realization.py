import numpy as np
import pytest

from kgrow.bench import realization as rz


def test_realization_formula():
    assert rz.realization(2.0, 2.0) == pytest.approx(1.0)
    assert rz.realization(1.0, 3.0) == pytest.approx(0.0)
    # 1.5x of a 2x FLOPs saving: time fell by 1/3 where FLOPs fell by 1/2.
    assert rz.realization(1.5, 2.0) == pytest.approx((1 / 3) / (1 / 2))
    assert rz.realization(0.8, 2.0) < 0  # slower than the baseline
    assert rz.realization(1.2, 1.0) is None and rz.realization(None, 2.0) is None


def test_fit_recovers_constructed_timings():
    flops = np.array([1e9, 3e9, 6e9, 1.2e10, 2.4e10])
    rng = np.random.default_rng(0)
    noise = 1.0 + 0.01 * rng.standard_normal(len(flops))
    fit = rz.fit_step_times(flops, (0.03 + flops / 5e10) * noise)
    assert fit.overhead_s == pytest.approx(0.03, rel=0.1)
    assert fit.flops_per_s == pytest.approx(5e10, rel=0.03)
    assert fit.rms_rel_error < 0.02 and fit.num_points == 5
    assert rz.StepTimeFit.from_dict(fit.to_dict()) == fit


def test_fit_without_overhead_goes_through_origin():
    flops = [1e9, 2e9, 4e9]
    # Time grows faster than FLOPs: a free line would need a negative overhead.
    fit = rz.fit_step_times(flops, [0.01, 0.03, 0.07])
    assert fit.overhead_s == 0.0 and fit.flops_per_s > 0


@pytest.mark.parametrize("flops, seconds, message", [
    ([1e9], [0.1], "at least 2"),
    ([1e9, 2e9], [0.1], "equally long"),
    ([1e9, 1e9], [0.1, 0.2], "different FLOPs"),
    ([1e9, -2e9], [0.1, 0.2], "positive"),
])
def test_fit_rejects_bad_input(flops, seconds, message):
    with pytest.raises(ValueError, match=message):
        rz.fit_step_times(flops, seconds)


def test_predicted_speedup_of_a_schedule():
    fit = rz.StepTimeFit(overhead_s=0.1, flops_per_s=1e10)
    base = [{"flops_per_sample": 1e7, "samples": 1000}] * 4
    # Half the FLOPs for two of four epochs.
    grown = [{"flops_per_sample": 5e6, "samples": 1000}] * 2 + base[:2]
    # 10 steps per epoch; steps cost 0.1 + 0.1 s (full) or 0.1 + 0.05 s (half).
    assert rz.predicted_train_s(fit, base, 100) == pytest.approx(8.0)
    assert rz.predicted_train_s(fit, grown, 100) == pytest.approx(7.0)
    assert rz.predicted_speedup(fit, base, grown, 100) == pytest.approx(8 / 7)
    assert rz.flops_speedup(base, grown) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="lacks"):
        rz.predicted_train_s(fit, [{"samples": 10}], 100)
    with pytest.raises(ValueError, match="batch_size"):
        rz.predicted_train_s(fit, base, 0)


def test_anchored_fit_predicts_measured_points_and_the_line_outside():
    # A padded middle size: 12 channels cost what 16 do, so the line misses it.
    flops = [1e9, 2e9, 3e9, 4e9]
    seconds = [0.05, 0.08, 0.16, 0.2]
    line = rz.fit_step_times(flops, seconds)
    anchored = rz.fit_step_times(flops, seconds, anchored=True)
    assert (anchored.overhead_s, anchored.flops_per_s) == (line.overhead_s, line.flops_per_s)
    np.testing.assert_allclose(anchored.step_s(flops), seconds)
    assert abs(float(line.step_s(3e9)) / 0.16 - 1) > 0.1
    assert float(anchored.step_s(2.5e9)) == pytest.approx(0.12)  # between two points
    assert float(anchored.step_s(8e9)) == pytest.approx(float(line.step_s(8e9)))
    assert rz.StepTimeFit.from_dict(anchored.to_dict()) == anchored
    # A schedule at the measured sizes is predicted from the measured times.
    base = [{"flops_per_sample": 4e9 / 128, "samples": 1280}] * 3
    grown = [{"flops_per_sample": f / 128, "samples": 1280} for f in (2e9, 3e9, 4e9)]
    assert rz.predicted_speedup(anchored, base, grown, 128) == pytest.approx(
        0.6 / (0.08 + 0.16 + 0.2))
    # Old probe files have no points: the line alone.
    old = {k: v for k, v in line.to_dict().items() if k != "points"}
    assert rz.StepTimeFit.from_dict(old) == line


def test_anchored_points_never_let_a_smaller_step_be_slower():
    # Noisy single-step timings: the half-size step measured slower than the full one
    # and the 3/4 size. Inverted runs are pooled to their mean; ordered points stay.
    flops = [1e9, 2e9, 3e9, 4e9, 4e9]
    seconds = [0.05, 0.20, 0.10, 0.15, 0.17]
    anchored = rz.fit_step_times(flops, seconds, anchored=True)
    np.testing.assert_allclose([t for _, t in anchored.points], [0.05, 0.15, 0.15, 0.16])
    assert [f for f, _ in anchored.points] == [1e9, 2e9, 3e9, 4e9]
    base = [{"flops_per_sample": 4e9 / 128, "samples": 1280}] * 3
    grown = [{"flops_per_sample": f / 128, "samples": 1280} for f in (1e9, 2e9, 4e9)]
    assert rz.predicted_speedup(anchored, base, grown, 128) >= 1.0


def _curve(seconds, samples, flops_per_sample):
    # Per-epoch seconds -> the bench's cumulative wall_s.
    walls = np.cumsum(seconds)
    return [{"wall_s": float(w), "samples": n, "flops_per_sample": f}
            for w, n, f in zip(walls, samples, flops_per_sample)]


def test_equal_work_overhead_compares_only_steady_epochs_at_the_baseline_model():
    base = _curve([30.0, 10.0, 10.0, 10.0, 10.0], [100] * 5, [4.0] * 5)
    # Grown at epoch 3 (its FLOPs change as it begins: a growth step and a
    # retrace, 20 s); sieving trains 80 samples per epoch; the machinery costs 5%.
    method = _curve([5.0, 5.0, 20.0, 8.4, 8.4], [80] * 5, [1.0, 1.0, 4.0, 4.0, 4.0])
    result = rz.equal_work_overhead(base, method)
    assert result["epochs"] == [4, 5]
    assert result["overhead"] == pytest.approx(0.05)
    # A faster method at equal work has a negative overhead.
    faster = _curve([5.0, 5.0, 20.0, 7.6, 7.6], [80] * 5, [1.0, 1.0, 4.0, 4.0, 4.0])
    assert rz.equal_work_overhead(base, faster)["overhead"] == pytest.approx(-0.05)


def test_equal_work_overhead_leaves_out_the_first_epoch_and_other_models():
    base = _curve([30.0, 10.0, 10.0], [100] * 3, [4.0] * 3)
    # Same model every epoch: the first epoch (tracing) is still left out.
    same = rz.equal_work_overhead(base, _curve([60.0, 11.0, 12.0], [100] * 3, [4.0] * 3))
    assert same["epochs"] == [2, 3] and same["overhead"] == pytest.approx(0.15)
    # Never the baseline's model (sparse, frozen, narrower): nothing to compare.
    assert rz.equal_work_overhead(base, _curve([5.0] * 3, [100] * 3, [3.0] * 3)) is None
    # Frozen in the last epoch: its FLOPs differ, so only epoch 2 counts.
    frozen = rz.equal_work_overhead(base, _curve([30.0, 10.0, 7.0], [100] * 3,
                                                 [4.0, 4.0, 3.0]))
    assert frozen["epochs"] == [2] and frozen["overhead"] == pytest.approx(0.0)

"""Run order, paired statistics and settings round-trip of `kgrow bench`, without training."""
import json

import pytest

from kgrow import bench
from kgrow.bench import profiles, report, runner
from kgrow.bench.runner import BenchSpec


def _fake_record(method, seed, wall):
    curve = [{"epoch": 1, "wall_s": wall, "train_loss": 1.0, "test_acc": 0.8,
              "samples": 1280, "flops_per_sample": 1e9 if method == "baseline" else 5e8,
              "train_flops": 1.0}]
    return {"method": method, "seed": seed, "train_wall_s": wall, "eval_wall_s": 1.0,
            "train_flops": 1280 * curve[0]["flops_per_sample"],
            "test_acc": 0.8 + 0.01 * seed - (0.002 if method != "baseline" else 0.0),
            "num_test": 10_000, "peak_mem_mb": 100.0, "peak_mem_source": "test",
            "flops_notes": [], "curve": curve}


@pytest.fixture
def two_methods():
    bench.register_method("zz_other", bench.get_method("baseline"), overwrite=True)
    yield
    bench.unregister_method("zz_other")


def test_runs_alternate_baseline_and_methods(two_methods, monkeypatch, tmp_path):
    calls = []

    def fake_run(method, spec, seed, verbose=2, log=print, strategy=None):
        calls.append((method, seed))
        # The machine slows down over time: pairing by seed cancels the drift.
        return _fake_record(method, seed, wall=(10.0 if method == "baseline" else 5.0)
                            * (1 + len(calls)))
    monkeypatch.setattr(runner, "run_method", fake_run)
    spec = BenchSpec.from_profile("quick", methods=["zz_other"], num_seeds=3, seed=5)
    results = runner.run_bench(spec, str(tmp_path), verbose=0, log=lambda line: None)
    assert calls == [("baseline", 5), ("zz_other", 5), ("baseline", 6), ("zz_other", 6),
                     ("baseline", 7), ("zz_other", 7)]
    assert calls == runner.run_order(spec.methods, spec.seeds)
    comp = results["comparisons"]["zz_other"]
    # Paired ratios 10*2/(5*3), 10*4/(5*5), 10*6/(5*7); median 1.6.
    assert comp["speedup_wall"] == pytest.approx(1.6)
    assert comp["speedup_wall_range"] == pytest.approx([4 / 3, 12 / 7])
    assert comp["acc_delta_pp"] == pytest.approx(-0.2)
    assert comp["acc_delta_pp_stderr"] == pytest.approx(0.0, abs=1e-9)
    assert comp["n_pairs"] == 3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["comparisons"]["zz_other"]["speedup_wall"] == pytest.approx(1.6)
    assert "realization" in (tmp_path / "results.md").read_text()


def test_standard_profiles_default_to_two_seeds():
    for name in ("standard", "standard-vit", "standard-sparse"):
        assert profiles.get_profile(name).seeds == 2
        assert BenchSpec.from_profile(name).seeds == [0, 1]
    assert BenchSpec.from_profile("standard", num_seeds=1).seeds == [0]
    assert BenchSpec.from_profile("quick").seeds == [0]


def test_settings_round_trip_through_results_json(tmp_path):
    spec = BenchSpec.from_profile("standard", methods=["baseline"], seed=2, epochs=3,
                                  subset=2000, model_kwargs={"width": 0.5}, lr=0.05,
                                  test_subset=500)
    records = {"baseline": [_fake_record("baseline", 2, 10.0),
                            _fake_record("baseline", 3, 11.0)]}
    runner.write_results(runner.build_results(spec, records), str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    settings = saved["settings"]
    assert (settings["name"], settings["epochs"], settings["subset"], settings["lr"],
            settings["model_kwargs"], settings["seeds"], settings["test_subset"]) == (
        "standard", 3, 2000, 0.05, {"width": 0.5}, 2, 500)
    # Warm-up of the 9-epoch profile capped for the 3-epoch run, and recorded as run.
    assert settings["warmup_epochs"] == spec.train.warmup_epochs
    assert BenchSpec.from_settings(settings, seed=2) == spec
    assert profiles.Profile.from_dict(settings).model == "resnet20"
    with pytest.raises(TypeError, match="Unknown profile field"):
        profiles.Profile.from_dict({**settings, "colour": "red"})


def test_kgrow_report_rerenders_tables_and_schedule_plot(two_methods, tmp_path, capsys):
    from kgrow import cli
    spec = BenchSpec.from_profile("quick", methods=["baseline", "zz_other"], epochs=1)
    grown = _fake_record("zz_other", 0, 5.0)
    grown["curve"][0].update({"grow/width": 0.5, "freeze/blocks": 2.0})
    records = {"baseline": [_fake_record("baseline", 0, 10.0)], "zz_other": [grown]}
    runner.write_results(runner.build_results(spec, records), str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert report.schedule_quantities(results) == ["freeze/blocks", "grow/width"]
    for name in ("results.md", "curves.png", "schedule.png"):
        (tmp_path / name).unlink()
    assert cli.main(["report", str(tmp_path)]) == 0
    for name in ("results.md", "curves.png", "schedule.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "zz_other" in (tmp_path / "results.md").read_text()
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "no " in capsys.readouterr().err


def test_resume_keeps_finished_runs_and_runs_the_rest(two_methods, monkeypatch, tmp_path):
    calls = []

    def fake_run(method, spec, seed, verbose=2, log=print, strategy=None):
        calls.append((method, seed))
        return _fake_record(method, seed, wall=10.0 if method == "baseline" else 5.0)
    monkeypatch.setattr(runner, "run_method", fake_run)
    spec = BenchSpec.from_profile("quick", methods=["zz_other"], num_seeds=1, seed=5)
    runner.run_bench(spec, str(tmp_path), verbose=0, log=lambda line: None)
    assert calls == [("baseline", 5), ("zz_other", 5)]
    # The same benchmark with a second seed, continued: only the new runs train.
    calls.clear()
    more = BenchSpec.from_profile("quick", methods=["zz_other"], num_seeds=2, seed=5)
    results = runner.run_bench(more, str(tmp_path), verbose=0, log=lambda line: None,
                               resume=True)
    assert calls == [("baseline", 6), ("zz_other", 6)]
    assert results["runs"]["zz_other"]["seeds"] == [5, 6]
    assert results["comparisons"]["zz_other"]["n_pairs"] == 2
    calls.clear()  # everything there: nothing trains, the reports are rewritten
    assert runner.run_bench(more, str(tmp_path), verbose=0, log=lambda line: None,
                            resume=True)["runs"]["baseline"]["seeds"] == [5, 6]
    assert calls == []
    other = BenchSpec.from_profile("quick", methods=["zz_other"], num_seeds=2, seed=5,
                                   epochs=2)
    with pytest.raises(ValueError, match="other settings.*epochs"):
        runner.run_bench(other, str(tmp_path), verbose=0, log=lambda line: None, resume=True)
    smaller_test = BenchSpec.from_profile("quick", methods=["zz_other"], num_seeds=2, seed=5,
                                          test_subset=100)
    with pytest.raises(ValueError, match="other settings.*test_subset"):
        runner.finished_runs(smaller_test, str(tmp_path))


def test_resume_reads_results_saved_before_a_setting_existed(two_methods, tmp_path):
    # results.json of an older kgrow, without `test_subset`: it was the whole test set.
    spec = BenchSpec.from_profile("quick", methods=["zz_other"], num_seeds=1, seed=5)
    runner.write_results(runner.build_results(spec, {
        "baseline": [_fake_record("baseline", 5, 10.0)],
        "zz_other": [_fake_record("zz_other", 5, 5.0)]}), str(tmp_path))
    path = tmp_path / "results.json"
    saved = json.loads(path.read_text())
    del saved["settings"]["test_subset"]
    path.write_text(json.dumps(saved))
    kept = runner.finished_runs(spec, str(tmp_path))
    assert {name: [r["seed"] for r in runs] for name, runs in kept.items()} == {
        "baseline": [5], "zz_other": [5]}

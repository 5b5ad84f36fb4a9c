"""A tiny real benchmark: Fashion-MNIST (512 training images), ResNet-8 at 1/4 width."""
import json
import os

import keras
import pytest

from kgrow import bench, flops, models
from kgrow.bench.runner import BenchSpec, run_bench, run_method

RUN_KEYS = {"train_wall_s", "train_flops", "test_acc", "peak_mem_mb", "curve"}
CURVE_KEYS = {"epoch", "wall_s", "train_loss", "test_acc"}
COMPARISON_KEYS = {"speedup_wall", "speedup_flops", "acc_delta_pp"}
MODEL_KWARGS = {"depth": 8, "width": 0.25}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench"))
    # The same factory under a second name: a second method on identical settings.
    bench.register_method("baseline_copy", bench.get_method("baseline"), overwrite=True)
    try:
        spec = BenchSpec.from_profile(
            "quick", methods=["baseline_copy", "baseline"], epochs=1, subset=512,
            batch_size=128, model="resnet_cifar", model_kwargs=MODEL_KWARGS, seed=3,
            test_subset=1000)
        lines = []
        results = run_bench(spec, out, verbose=0, log=lines.append)
    finally:
        bench.unregister_method("baseline_copy")
    return out, results, lines


def test_results_json_shape(bench_run):
    out, results, _ = bench_run
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["runs"].keys() == results["runs"].keys()
    assert (saved["model"], saved["dataset"], saved["epochs"], saved["seed"],
            saved["profile"]) == ("resnet_cifar", "fashion_mnist", 1, 3, "quick")
    # The baseline runs first even when listed second.
    assert list(saved["runs"]) == ["baseline", "baseline_copy"]
    for run in saved["runs"].values():
        assert RUN_KEYS <= set(run)
        assert len(run["curve"]) == 1 and CURVE_KEYS <= set(run["curve"][0])
        assert run["curve"][0]["epoch"] == 1
        assert 0.0 <= run["test_acc"] <= 1.0
        assert run["train_wall_s"] > 0 and run["peak_mem_mb"] > 0
        assert run["curve"][0]["wall_s"] <= run["train_wall_s"]
    assert set(saved["comparisons"]) == {"baseline_copy"}
    assert COMPARISON_KEYS <= set(saved["comparisons"]["baseline_copy"])


def test_comparisons_computed_from_runs(bench_run):
    _, results, _ = bench_run
    base, copy = results["runs"]["baseline"], results["runs"]["baseline_copy"]
    comp = results["comparisons"]["baseline_copy"]
    assert comp["speedup_wall"] == pytest.approx(base["train_wall_s"] / copy["train_wall_s"])
    assert comp["speedup_flops"] == pytest.approx(base["train_flops"] / copy["train_flops"])
    assert comp["acc_delta_pp"] == pytest.approx(100 * (copy["test_acc"] - base["test_acc"]))


def test_flops_are_model_flops_times_samples(bench_run):
    _, results, _ = bench_run
    model = models.get("resnet_cifar", (28, 28, 1), 10, **MODEL_KWARGS)
    per_sample = flops.count(model, (28, 28, 1)).training
    for run in results["runs"].values():
        assert run["per_seed"][0]["samples_seen"] == 512  # 4 full batches of 128
        assert run["train_flops"] == pytest.approx(512 * per_sample)


def test_evaluation_time_is_excluded(bench_run):
    _, results, _ = bench_run
    for run in results["runs"].values():
        assert run["eval_wall_s"] > 0  # the test subset was evaluated, and timed
        assert run["per_seed"][0]["num_test"] == 1000


def test_report_files_and_progress_lines(bench_run):
    out, _, lines = bench_run
    with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        md = f.read()
    assert "| baseline |" in md and "| baseline_copy |" in md
    for plot in ("curves.png", "schedule.png"):
        with open(os.path.join(out, plot), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sum("test acc" in line for line in lines) == 2  # one summary line per run


def test_unknown_method_error():
    with pytest.raises(KeyError, match=r"Unknown method.*'nope'.*Registered methods: baseline"):
        BenchSpec.from_profile("quick", methods=["baseline", "nope"])


def test_run_method_runs_extra_callbacks_in_its_fit():
    # benchmarks/growth_overhead.py times the bench's own run with a per-batch timer.
    class CountBatches(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

    spec = BenchSpec.from_profile("quick", epochs=1, subset=512, batch_size=128,
                                  model="resnet_cifar", model_kwargs=MODEL_KWARGS, seed=3,
                                  test_subset=128)
    counter = CountBatches()
    record = run_method("baseline", spec, 3, verbose=0, log=lambda line: None,
                        extra_callbacks=[counter])
    assert counter.batches == 4 and record["samples_seen"] == 512


# Slow: SpFDE's three parts in one fit also run in test_multi_worker.py (two workers)
# and in the kill -9 "combined" scenario.
@pytest.mark.slow
def test_composed_spfde_run_through_the_harness():
    # Sparse training + freezing + sieving in one fit on the bench: each part's state
    # reaches the curve, and the FLOPs follow the masks, frozen blocks and sieved data.
    spec = BenchSpec.from_profile("quick", epochs=4, subset=512, batch_size=32,
                                  model="resnet_cifar", model_kwargs=MODEL_KWARGS, seed=3)
    base = run_method("baseline", spec, 3, verbose=0, log=lambda line: None)
    record = run_method("sparse_mest_ems+freeze_15+sieve_15", spec, 3, verbose=0,
                        log=lambda line: None)
    last = record["curve"][-1]
    assert last["sparse/sparsity"] > 0.85 and last["freeze/blocks"] >= 1
    assert last["sieve/active_samples"] < 512
    assert record["samples_seen"] < base["samples_seen"]
    assert record["train_flops"] < 0.5 * base["train_flops"]
    assert [e["samples"] for e in record["curve"]] == [
        32 * int(p["sieve/active_samples"] // 32) for p in record["curve"]]


def _ramp(record, key):
    return [p[key] for p in record["curve"]]


@pytest.mark.parametrize("combination, model, model_kwargs, epochs", [
    ("network_expansion+sieve", "resnet_cifar", MODEL_KWARGS, 4),
    # Variance transfer adds channels in cancelling pairs: widths with even steps.
    ("variance_transfer+freeze_5", "resnet_cifar", {"depth": 8, "width": 0.5}, 5),
    # Depth growth needs stages of several blocks to start from fewer.
    ("sparse_mest_ems+grow_depth", "resnet_cifar", {"depth": 14, "width": 0.25}, 4),
    ("autoprog+sieve", "vit", {"patch_size": 7, "dim": 16, "heads": 2, "depth": 4}, 4),
])
def test_named_combinations_compose_in_one_fit(combination, model, model_kwargs, epochs):
    # Issue 19's pairs, each in one fit through the harness: every part acts, and
    # each part's state survives the other part's changes.
    # 256 test samples: a full test pass per epoch would cost more than the training.
    spec = BenchSpec.from_profile("quick", epochs=epochs, subset=512, batch_size=32,
                                  model=model, model_kwargs=model_kwargs, seed=3,
                                  test_subset=256)
    record = run_method(combination, spec, 3, verbose=0, log=lambda line: None)
    assert record["num_test"] == 256
    last = record["curve"][-1]
    parts = combination.split("+")
    if "sieve" in parts:
        assert _ramp(record, "sieve/active_samples") == [384] * epochs  # 25% held out
        assert record["samples_seen"] == epochs * 384
    if parts[0] in ("network_expansion", "variance_transfer"):
        widths = _ramp(record, "grow/width")
        assert widths[0] < 1.0 and widths[-1] == 1.0 and widths == sorted(widths)
    if "freeze_5" in parts:
        # Frozen only after the last growth, on the full-width model.
        frozen = _ramp(record, "freeze/blocks")
        assert frozen[-1] >= 1
        assert all(b == 0 for b, w in zip(frozen, _ramp(record, "grow/width")) if w < 1.0)
    if "sparse_mest_ems" in parts:
        depths = _ramp(record, "grow/depth")
        assert depths[0] < depths[-1]
        # The masks cover the blocks depth growth added: the sparsity holds after it.
        assert last["sparse/sparsity"] > 0.85
    if parts[0] == "autoprog":
        # Two stages (4 epochs): the first searched in a supernet epoch; the last
        # trains the full ViT, which needs no search.
        assert _ramp(record, "autoprog/stage") == [0, 0, 1, 1]
        assert _ramp(record, "autoprog/supernet") == [1, 0, 0, 0]
        assert last["autoprog/depth"] == 4 and last["autoprog/resolution"] == 28

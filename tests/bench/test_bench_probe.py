"""The step-time probe on a tiny real model (ResNet-8 at 1/4 width, real Fashion-MNIST)."""
import json

import numpy as np
import pytest

from kgrow import flops
from kgrow.bench import probe, realization
from kgrow.bench.runner import BenchSpec

TINY = dict(model="resnet_cifar", model_kwargs={"depth": 14, "width": 0.25}, subset=256,
            epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    spec = BenchSpec.from_profile("quick", methods=["grow_width"], **TINY)
    families = {"width": (0.5, 1.0), "depth": (0.5,), "frozen": (0.5,), "sparse": (0.1,)}
    lines = []
    result = probe.run_probe(spec, spec.methods, str(out), families=families, rounds=1,
                             steps=1, log=lines.append)
    return out, spec, result, lines


def test_probe_points_fit_and_files(probe_run):
    out, spec, result, _ = probe_run
    points = {(p["family"], p["size"]): p for p in result["points"]}
    assert set(points) == {("width", 0.5), ("width", 1.0), ("depth", 0.5), ("frozen", 0.5),
                           ("sparse", 0.1)}
    full, half = points[("width", 1.0)], points[("width", 0.5)]
    assert half["flops_per_step"] < 0.5 * full["flops_per_step"]
    assert points[("depth", 0.5)]["flops_per_step"] < full["flops_per_step"]
    # A frozen prefix keeps the parameters but drops their weight gradients.
    assert points[("frozen", 0.5)]["params"] == full["params"]
    assert points[("frozen", 0.5)]["flops_per_step"] < full["flops_per_step"]
    assert points[("sparse", 0.1)]["flops_per_step"] < full["flops_per_step"]
    assert all(p["step_s"] > 0 for p in result["points"])
    # The fit is the least-squares line of the dense points (sparse is not fitted).
    dense = [p for p in result["points"] if p["family"] in probe.FITTED]
    again = realization.fit_step_times([p["flops_per_step"] for p in dense],
                                       [p["step_s"] for p in dense])
    assert result["fit"] == again.to_dict()
    saved = json.loads((out / "probe.json").read_text())
    assert saved["fit"] == result["fit"] and saved["settings"]["model"] == "resnet_cifar"
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_predicts_the_growth_schedule(probe_run):
    _, spec, result, lines = probe_run
    pred = result["predictions"]["grow_width"]
    # grow_width on 3 epochs: widths 0.5, 0.75, 1.0 for one epoch each.
    assert 1.2 < pred["speedup_flops"] < 2.0
    fit = realization.StepTimeFit.from_dict(result["fit"])
    # Wall-clock can never gain more than FLOPs with a non-negative overhead.
    assert 1.0 <= pred["predicted_speedup_wall"] <= pred["speedup_flops"] + 1e-9
    assert pred["predicted_realization"] == pytest.approx(realization.realization(
        pred["predicted_speedup_wall"], pred["speedup_flops"]))
    assert fit.flops_per_s > 0
    assert "\ngrow_width: FLOPs speedup" in "\n".join(lines)
    # grow_width moves along the width axis: predicted with the width family's fit.
    assert result["method_families"] == {"grow_width": "width"} and pred["fit"] == "width"
    width_fit = realization.StepTimeFit.from_dict(result["family_fits"]["width"])
    assert probe.method_fit(result, "grow_width") == width_fit


def test_schedule_epochs_follow_the_growth_stages():
    from kgrow import models
    from kgrow.bench import registry, runner
    spec = BenchSpec.from_profile("quick", methods=["grow_width"], **TINY)
    bundle = runner.load_data(spec, 0)
    context = registry.MethodContext(
        model_name=spec.model, model_kwargs=dict(spec.model_kwargs),
        input_shape=tuple(bundle.info.image_shape), num_classes=bundle.info.num_classes,
        train=spec.train, data=bundle, steps_per_epoch=int(bundle.steps_per_epoch))
    base = probe.schedule_epochs("baseline", context)
    grown = probe.schedule_epochs("grow_width", context)
    full = flops.count(models.get(spec.model, context.input_shape, 10, **TINY["model_kwargs"]),
                       context.input_shape).training
    assert [e["flops_per_sample"] for e in base] == [full] * 3
    per_epoch = [e["flops_per_sample"] for e in grown]
    assert per_epoch[-1] == pytest.approx(full) and np.all(np.diff(per_epoch) > 0)
    assert [e["samples"] for e in grown] == [e["samples"] for e in base]
    # grow_width_2: half width for the first half of the run, then full.
    halves = [e["flops_per_sample"] for e in probe.schedule_epochs("grow_width_2", context)]
    assert len(set(halves)) == 2 and halves[-1] == pytest.approx(full)
    assert halves[0] == pytest.approx(per_epoch[0])


def test_family_fits_separate_axes():
    # Width points: 20 ms overhead + FLOPs at 1e11/s; depth points: no overhead, 5e10/s.
    def point(family, size, gflops, seconds):
        return {"family": family, "size": size, "flops_per_step": gflops * 1e9,
                "step_s": seconds}
    points = [point("width", 1.0, 10.0, 0.12), point("width", 0.5, 2.5, 0.045),
              point("width", 0.25, 0.6, 0.026), point("depth", 0.5, 5.0, 0.06),
              point("sparse", 0.1, 1.0, 0.12)]
    fits = probe.family_fits(points)
    assert set(fits) == {"width", "depth"}  # sparse is never fitted
    assert fits["width"].overhead_s == pytest.approx(0.02, rel=1e-6)
    assert fits["width"].flops_per_s == pytest.approx(1e11, rel=1e-6)
    # Depth through (5 GFLOPs, 60 ms) and the full model (10 GFLOPs, 120 ms).
    assert fits["depth"].overhead_s == pytest.approx(0.0, abs=1e-9)
    assert fits["depth"].flops_per_s == pytest.approx(10e9 / 0.12)

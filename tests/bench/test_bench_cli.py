import io
import subprocess
import sys

import pytest

from kgrow import cli
from kgrow.bench import cli as bench_cli
from kgrow.bench import profiles
from kgrow.bench.runner import BenchSpec


def _spec(*argv):
    return bench_cli.spec_from_args(bench_cli.build_parser().parse_args(list(argv)))


def test_profile_values_and_overrides():
    quick = profiles.get_profile("quick")
    spec = _spec("--profile", "quick")
    assert (spec.model, spec.dataset, spec.subset, spec.train.epochs) == (
        quick.model, quick.dataset, quick.subset, quick.epochs)
    assert spec.model_kwargs == dict(quick.model_kwargs)
    spec = _spec("--epochs", "3", "--subset", "256", "--batch-size", "32", "--lr", "0.05",
                 "--model-arg", "width=0.25", "--seed", "4", "--seeds", "2", "--augment", "none")
    assert (spec.train.epochs, spec.subset, spec.train.batch_size, spec.train.lr) == (
        3, 256, 32, 0.05)
    assert spec.model_kwargs == {"width": 0.25}
    assert spec.seeds == [4, 5] and spec.train.augment is None
    assert spec.test_subset is None
    assert _spec("--test-subset", "300").test_subset == 300
    with pytest.raises(ValueError, match="test_subset must be a positive integer"):
        _spec("--test-subset", "0")


def test_other_model_drops_profile_model_args():
    assert _spec("--model", "vit_tiny").model_kwargs == {}
    assert _spec("--model", "vit_tiny", "--model-arg", "depth=2").model_kwargs == {"depth": 2}


def test_baseline_always_first():
    assert _spec("--methods", "baseline").methods == ["baseline"]
    from kgrow import bench
    bench.register_method("zz_cli_copy", bench.get_method("baseline"))
    try:
        assert _spec("--methods", "zz_cli_copy").methods == ["baseline", "zz_cli_copy"]
    finally:
        bench.unregister_method("zz_cli_copy")


@pytest.mark.parametrize("argv, message", [
    (["--methods", "baseline,warp_drive"], "Unknown method.*'warp_drive'.*baseline"),
    (["--profile", "huge"], "Unknown profile 'huge'.*quick"),
    (["--epochs", "0"], "epochs"),
    ([], "--out DIR is required"),
    (["--local-workers", "2", "--distribute", "mirrored"], "cannot be combined"),
    (["--local-workers", "1"], "at least 2 workers.*leave the flag out"),
])
def test_errors_are_clear(argv, message, tmp_path):
    args = ["bench", *argv] + (["--out", str(tmp_path)] if argv else [])
    with pytest.raises(SystemExit, match=message):
        cli.main(args)


def test_parsers():
    assert bench_cli.parse_image_size("24x32") == (24, 32)
    assert bench_cli.parse_model_arg("zero_init_residual=true") == ("zero_init_residual", True)
    with pytest.raises(Exception, match="image size"):
        bench_cli.parse_image_size("big")


def test_from_profile_rejects_unknown_override():
    with pytest.raises(TypeError, match="Unknown override"):
        BenchSpec.from_profile("quick", colour="red")


def test_list_commands():
    out = io.StringIO()
    args = cli.build_parser().parse_args(["bench", "--list-profiles"])
    assert bench_cli.run(args, out=out) == 0
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == (
        profiles.available_profiles())
    proc = subprocess.run([sys.executable, "-m", "kgrow", "bench", "--list-methods"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "baseline"


@pytest.mark.parametrize("name", profiles.available_profiles())
def test_every_profile_is_consistent(name):
    from kgrow import data, models
    profile = profiles.get_profile(name)
    assert set(profile.model_kwargs) <= set(models.spec(profile.model).accepted_kwargs())
    assert profile.augment is None or profile.augment in data.PRESETS
    spec = BenchSpec.from_profile(name)
    assert spec.train.epochs == profile.epochs and spec.model == profile.model


def test_probe_command_parses_and_checks_flags():
    args = cli.build_parser().parse_args(["probe", "--profile", "standard", "--methods",
                                          "grow_width,grow_depth", "--rounds", "2"])
    spec = bench_cli.spec_from_args(args)
    assert (args.command, args.rounds, args.steps) == ("probe", 2, 3)
    assert spec.methods == ["baseline", "grow_width", "grow_depth"] and spec.seeds == [0]
    with pytest.raises(SystemExit, match="--rounds and --steps must be >= 1"):
        cli.main(["bench", "probe", "--rounds", "0"])
    with pytest.raises(SystemExit, match="Unknown method"):
        cli.main(["bench", "probe", "--methods", "warp_drive"])


def test_bench_rejects_a_probe_json_without_fit(tmp_path):
    bad = tmp_path / "probe.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="has no 'fit'"):
        cli.main(["bench", "--out", str(tmp_path), "--probe-json", str(bad)])


def test_kgrow_methods_lists_every_method_with_its_source():
    from kgrow.bench import registry
    out = io.StringIO()
    assert cli.list_methods(out) == 0
    text = out.getvalue()
    for name in registry.available_methods():
        assert f"  {name} " in text
    assert "Network Expansion (Ding et al., CVPR 2023)" in text
    assert cli.build_parser().parse_args(["methods"]).command == "methods"


def test_config_file_gives_flag_values_validated_like_flags(tmp_path, capsys):
    import json
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"profile": "standard", "epochs": 3, "seeds": 1,
                                  "model_arg": {"width": 0.5}, "methods": "baseline,freeze"}))
    parser = bench_cli.build_parser()
    args = parser.parse_args(["--config", str(config), "--epochs", "5", "--out", "o"])
    assert (args.profile, args.epochs, args.seeds, args.model_arg, args.methods) == (
        "standard", 5, 1, [("width", 0.5)], "baseline,freeze")  # later flags override
    yaml_config = tmp_path / "run.yaml"
    yaml_config.write_text("epochs: three\n")
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(yaml_config)])
    assert "invalid int value: 'three'" in capsys.readouterr().err
    config.write_text(json.dumps({"colour": "red"}))
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(config)])
    assert "unknown field 'colour'; known fields: augment" in capsys.readouterr().err
    config.write_text("[1, 2]")
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(config)])
    assert "must hold a mapping" in capsys.readouterr().err


def test_run_with_paper_prints_our_table_then_the_papers(tmp_path, monkeypatch):
    (tmp_path / "results.md").write_text("| run | acc |\n")
    monkeypatch.setattr(bench_cli, "run", lambda args, out=None: 0)
    args = bench_cli.build_parser().parse_args(["--out", str(tmp_path)])
    out = io.StringIO()
    assert bench_cli.run_with_paper(args, "Paper:", ["baseline 92.62"], out=out) == 0
    assert out.getvalue() == "| run | acc |\n\nPaper:\n  baseline 92.62\n"

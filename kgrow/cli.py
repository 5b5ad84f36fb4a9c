"""The `kgrow` command line.

Commands:
    methods List the registered training methods with a one-line description
            and the paper each comes from.
    bench   Train the baseline and kgrow methods on the same setting and report
            wall-clock, training FLOPs, accuracy and memory
            (`kgrow bench --help`).
    report  Re-render a finished bench's results.md, curves.png and
            schedule.png from its results.json (`kgrow report DIR`).
    bench probe
            Time training steps of the profile's model at several sizes, fit
            step time against FLOPs and predict methods' wall-clock speedups
            (`kgrow bench probe --help`).

Example:
    >>> build_parser().parse_args(["bench", "--out", "/tmp/x"]).command
    'bench'
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    """The `kgrow` argument parser with its sub-commands."""
    from kgrow import __version__
    from kgrow.bench import cli as bench_cli

    parser = argparse.ArgumentParser(
        prog="kgrow", description="Progressive training for Keras 3: grow, freeze, sparsify "
                                  "and sieve inside model.fit.")
    parser.add_argument("--version", action="version", version=f"kgrow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    commands.add_parser("methods", help="list the training methods kgrow can run",
                        description="List the registered training methods (names usable "
                                    "in `kgrow bench --methods`, joined with '+' to "
                                    "combine them), each with its source.")
    report = commands.add_parser(
        "report", help="re-render a finished bench's tables and plots",
        description="Read DIR/results.json of a finished `kgrow bench` and write results.md, "
                    "curves.png (accuracy vs wall-clock and epochs) and schedule.png "
                    "(training FLOPs and every logged schedule quantity per epoch) again.")
    report.add_argument("directory", help="the bench's --out directory")
    bench = commands.add_parser(
        "bench", help="compare the baseline with kgrow methods",
        description="Train the baseline and kgrow methods on the same model, data, epochs "
                    "and seed, one after the other; write results.json, results.md and "
                    "curves.png into --out.")
    bench_cli.add_arguments(bench)
    probe = commands.add_parser(
        "probe", prog="kgrow bench probe",
        help="step-time probe (also spelled `kgrow bench probe`)",
        description=bench_cli.build_probe_parser().description)
    bench_cli.add_probe_arguments(probe)
    return parser


def list_methods(out=sys.stdout) -> int:
    """Prints every registered method, grouped by where it comes from."""
    from kgrow.bench import registry
    by_source: dict = {}
    for name in registry.available_methods():
        info = registry.describe_method(name)
        by_source.setdefault(info["source"], []).append(info)
    for source, infos in by_source.items():
        print(source, file=out)
        for info in infos:
            print(f"  {info['name']:24s} {info['description']}", file=out)
    print("Combine methods in one run with '+', e.g. kgrow bench --methods "
          "baseline,grow_width+freeze_5+sieve ... (see recipes/combined.py).", file=out)
    return 0


def rerender(directory: str, out=sys.stdout) -> int:
    """`kgrow report DIR`: writes DIR's tables and plots again from results.json."""
    import json

    from kgrow.bench.registry import BASELINE
    from kgrow.bench.runner import compare_runs, render_results
    path = os.path.join(directory, "results.json")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        print(f"kgrow report: no {path}; give the --out directory of a finished "
              f"`kgrow bench` run.", file=sys.stderr)
        return 2
    except json.JSONDecodeError as err:
        print(f"kgrow report: {path} is not valid JSON ({err}).", file=sys.stderr)
        return 2
    batch_size = (results.get("settings") or {}).get("batch_size")
    if results.get("runs", {}).get(BASELINE) and batch_size:
        # The per-seed records are the measurements; the comparisons are derived.
        results = {**results, **compare_runs(results["runs"], results.get("probe"),
                                             int(batch_size))}
    for written in render_results(results, directory):
        print(f"wrote {written}", file=out)
    return 0


def main(argv=None) -> int:
    """Runs the `kgrow` command line; returns the exit status."""
    # TensorFlow's C++ start-up chatter hides the progress output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "probe"]:
        argv = ["probe", *argv[2:]]
    args = build_parser().parse_args(argv)
    if args.command == "methods":
        return list_methods()
    if args.command == "report":
        return rerender(args.directory)
    if args.command == "probe":
        from kgrow.bench import cli as bench_cli
        return bench_cli.run_probe_command(args)
    if args.command == "bench":
        from kgrow.bench import cli as bench_cli
        return bench_cli.run(args)
    raise SystemExit(f"kgrow: unknown command {args.command!r}")  # argparse prevents this


if __name__ == "__main__":
    sys.exit(main())

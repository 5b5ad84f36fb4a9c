"""`kgrow bench` command line.

Example:
    >>> parser = build_parser()
    >>> args = parser.parse_args(["--profile", "quick", "--out", "/tmp/q", "--epochs", "2"])
    >>> args.profile, args.epochs, args.methods
    ('quick', 2, 'baseline')
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from kgrow.bench import profiles, registry


def parse_image_size(text: str) -> tuple[int, int]:
    """Parses `32` or `32x48` (also `32,48`) into `(H, W)`.

    Example:
        >>> parse_image_size("32"), parse_image_size("24x32")
        ((32, 32), (24, 32))
    """
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 32 or 32x32, got {text!r}")
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"image size must look like 32 or 32x32, got {text!r}")
    return values


def parse_model_arg(text: str) -> tuple[str, object]:
    """Parses `name=value`; the value becomes an int, float, bool or None if it reads so.

    Example:
        >>> parse_model_arg("width=0.5"), parse_model_arg("stem=cifar")
        (('width', 0.5), ('stem', 'cifar'))
    """
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model-arg must look like name=value, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False, "none": None}.get(value.lower(), value)


def config_argv(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line words a JSON or YAML config file stands for.

    The file is a mapping of flag names (`epochs`, `model_arg`, `methods`, ...;
    `-` or `_` alike) to values: lists for repeatable flags, a mapping for
    `model_arg`, true/false for switches. Values go through the parser like
    typed flags, so every field is validated with argparse's message.

    Example:
        >>> import json, tempfile
        >>> p = argparse.ArgumentParser(); _ = p.add_argument("--epochs", type=int)
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        >>> json.dump({"epochs": 3}, f); f.close()
        >>> config_argv(f.name, p)
        ['--epochs', '3']

    Raises:
        SystemExit: unreadable file, not a mapping, or an unknown field (the
            message lists the known ones).
    """
    import json
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        parser.error(f"--config {path}: {err.strerror}")
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            parser.error(f"--config {path}: YAML needs PyYAML (pip install pyyaml); "
                         f"or write the config as JSON")
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            parser.error(f"--config {path}: not valid YAML ({err})")
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            parser.error(f"--config {path}: not valid JSON ({err}); YAML files end in .yaml")
    if not isinstance(config, dict):
        parser.error(f"--config {path}: must hold a mapping of flag names to values, "
                     f"got {type(config).__name__}")
    actions = {a.option_strings[0]: a for a in parser._actions
               if a.option_strings and a.option_strings[0].startswith("--")
               and a.dest not in ("help", "config")}
    argv = []
    for key, value in config.items():
        flag = "--" + str(key).replace("_", "-")
        action = actions.get(flag)
        if action is None:
            parser.error(f"--config {path}: unknown field {key!r}; known fields: "
                         f"{', '.join(sorted(f[2:] for f in actions))}")
        if isinstance(value, bool) and action.nargs == 0:
            argv += [flag] if value else []
        elif isinstance(value, dict):
            argv += [w for k, v in value.items() for w in (flag, f"{k}={v}")]
        elif isinstance(value, list):
            argv += ([w for v in value for w in (flag, str(v))]
                     if isinstance(action, argparse._AppendAction)
                     else [flag, *map(str, value)])
        else:
            argv += [flag, str(value)]
    return argv


class _ConfigAction(argparse.Action):
    # Flags after --config on the command line override the file's values.
    def __call__(self, parser, namespace, values, option_string=None):
        parser.parse_args(config_argv(values, parser), namespace=namespace)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the bench flags to `parser` (used by `kgrow bench` and the recipes)."""
    parser.add_argument("--config", action=_ConfigAction, metavar="FILE",
                        help="JSON or YAML file of flag values (e.g. {\"profile\": "
                             "\"standard\", \"epochs\": 8, \"model_arg\": {\"width\": 1}}); "
                             "flags after it override the file")
    parser.add_argument("--profile", default="quick",
                        help=f"settings preset: {', '.join(profiles.available_profiles())} "
                             f"(default quick; see --list-profiles)")
    parser.add_argument("--out", help="output directory for results.json, results.md, "
                                      "curves.png (required to run)")
    parser.add_argument("--methods", default=registry.BASELINE,
                        help="comma-separated method names; the baseline always runs first "
                             "(see --list-methods)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds (default: the profile's, 2 for standard*); "
                             "runs alternate baseline, methods, baseline, methods, ... and "
                             "the report gives median and range of each paired ratio")
    parser.add_argument("--resume", action="store_true",
                        help="continue the benchmark in --out: runs its results.json already "
                             "has (same settings) are kept, the missing ones run")
    parser.add_argument("--probe", action="store_true",
                        help="run the step-time probe (`kgrow bench probe`, ~1-2 min) first "
                             "and report its predicted wall-clock speedup next to the "
                             "measured one")
    parser.add_argument("--probe-json", metavar="FILE",
                        help="use the fit of an earlier probe (its probe.json) instead")
    parser.add_argument("--distribute", choices=("none", "mirrored", "multi_worker"),
                        default="none",
                        help="train under a tf.distribute strategy: mirrored (this "
                             "machine's devices) or multi_worker (the workers TF_CONFIG "
                             "lists; run the same command on each, only the chief writes)")
    parser.add_argument("--local-workers", type=int, default=None, metavar="N",
                        help="start N workers of this command on this machine and train "
                             "under MultiWorkerMirroredStrategy (TF_CONFIG on free localhost "
                             "ports; worker 0 prints and writes, worker i logs to "
                             "OUT/worker<i>.log)")
    _add_overrides(parser)
    _add_common(parser)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                        help="Keras fit verbosity: 1 progress bar, 2 one line per epoch "
                             "(default: 1 on a terminal, 2 otherwise)")
    parser.add_argument("--list-methods", action="store_true", help="list methods and exit")
    parser.add_argument("--list-profiles", action="store_true", help="list profiles and exit")
    return parser


def add_probe_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the `kgrow bench probe` flags to `parser`.

    Example:
        >>> args = add_probe_arguments(argparse.ArgumentParser()).parse_args(
        ...     ["--profile", "standard", "--methods", "grow_width", "--rounds", "2"])
        >>> args.profile, args.methods, args.rounds, args.seeds
        ('standard', 'grow_width', 2, 1)
    """
    parser.add_argument("--profile", default="quick",
                        help=f"settings preset: {', '.join(profiles.available_profiles())}")
    parser.add_argument("--methods", default=registry.BASELINE,
                        help="comma-separated methods whose schedules to predict")
    parser.add_argument("--out", help="directory for probe.json and probe.png")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds (default 3)")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps per variant per round (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    parser.set_defaults(seeds=1)
    _add_overrides(parser)
    _add_common(parser)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory kgrow.data reads datasets from")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it may register methods); repeatable")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("overrides of the profile")
    group.add_argument("--model", help="kgrow.models name, e.g. resnet20, vit_tiny")
    group.add_argument("--model-arg", action="append", type=parse_model_arg, default=[],
                       metavar="NAME=VALUE",
                       help="model builder argument, repeatable (e.g. width=16); replaces "
                            "the profile's model arguments when given (they are also dropped "
                            "when --model names another model)")
    group.add_argument("--dataset", help="kgrow.data dataset name, e.g. fashion_mnist")
    group.add_argument("--epochs", type=int)
    group.add_argument("--subset", type=int, help="number of training samples")
    group.add_argument("--test-subset", type=int,
                       help="evaluate on the first N test samples only (smoke runs)")
    group.add_argument("--batch-size", type=int)
    group.add_argument("--image-size", type=parse_image_size,
                       help="resize images, e.g. 32 or 32x32")
    group.add_argument("--optimizer", choices=("sgd", "adamw"))
    group.add_argument("--lr", type=float, help="peak learning rate")
    group.add_argument("--warmup-epochs", type=float)
    group.add_argument("--weight-decay", type=float, help="Keras decoupled weight decay")
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--augment", help="kgrow.data augmentation preset ('none' for none)")


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser for the bench flags."""
    return add_arguments(argparse.ArgumentParser(
        prog="kgrow bench",
        description="Train the baseline and kgrow methods on the same model, data, epochs "
                    "and seed; report wall-clock, training FLOPs, accuracy and memory."))


def spec_from_args(args: argparse.Namespace):
    """The `BenchSpec` the parsed flags describe."""
    from kgrow.bench.runner import BenchSpec
    augment = args.augment
    model_kwargs = dict(args.model_arg) if args.model_arg else None
    if model_kwargs is None and args.model and args.model != profiles.get_profile(
            args.profile).model:
        # The profile's builder arguments (e.g. width) belong to its own model.
        model_kwargs = {}
    overrides = dict(
        model=args.model, dataset=args.dataset, epochs=args.epochs, subset=args.subset,
        test_subset=args.test_subset,
        batch_size=args.batch_size, image_size=args.image_size, optimizer=args.optimizer,
        lr=args.lr, warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, data_dir=args.data_dir,
        model_kwargs=model_kwargs)
    spec = BenchSpec.from_profile(
        args.profile, methods=args.methods.split(","), seed=args.seed,
        num_seeds=args.seeds, **overrides)
    if augment is not None:
        spec.train.augment = None if augment.lower() == "none" else augment
    return spec


def run(args: argparse.Namespace, out=sys.stdout) -> int:
    """Executes `kgrow bench` for parsed flags; returns the exit status."""
    for module in args.plugin:
        importlib.import_module(module)
    if args.list_methods:
        print("\n".join(registry.available_methods()), file=out)
        return 0
    if args.list_profiles:
        for name in profiles.available_profiles():
            p = profiles.get_profile(name)
            print(f"{name}: {p.description} [{p.budget}]", file=out)
        return 0
    if not args.out:
        raise SystemExit("kgrow bench: --out DIR is required to run a benchmark.")
    from kgrow.bench import launch
    from kgrow.bench.runner import make_strategy
    distribute = getattr(args, "distribute", "none")
    local_workers = getattr(args, "local_workers", None)
    if local_workers is not None:
        if distribute not in ("none", "multi_worker"):
            raise SystemExit(f"kgrow bench: --local-workers trains under multi_worker; it "
                             f"cannot be combined with --distribute {distribute}.")
        if not launch.is_launched_worker():
            try:
                return launch.launch_local_workers(local_workers, launch.this_command(),
                                                   args.out, out=out)
            except ValueError as err:
                raise SystemExit(f"kgrow bench: {err}") from None
        distribute = "multi_worker"
    try:
        # First: a multi-worker strategy must exist before other TensorFlow work.
        strategy = make_strategy(distribute)
    except ValueError as err:
        raise SystemExit(f"kgrow bench: {err}") from None
    try:
        spec = spec_from_args(args)
    except KeyError as err:  # unknown method/profile: the message says what exists
        raise SystemExit(f"kgrow bench: {err.args[0]}") from None
    except (ValueError, TypeError) as err:
        raise SystemExit(f"kgrow bench: {err}") from None
    from kgrow.bench.runner import run_bench

    def log(line):
        print(line, file=out, flush=True)
    probe = None
    if args.probe_json:
        import json
        with open(args.probe_json, encoding="utf-8") as f:
            probe = json.load(f)
        if "fit" not in probe:
            raise SystemExit(f"kgrow bench: {args.probe_json} has no 'fit'; give the "
                             f"probe.json written by `kgrow bench probe --out DIR`.")
    elif args.probe:
        from kgrow.bench.probe import run_probe
        probe = run_probe(spec, spec.methods, args.out, log=log)
    verbose = args.verbose if args.verbose is not None else (1 if out.isatty() else 2)
    run_bench(spec, args.out, verbose=verbose, log=log, probe=probe, strategy=strategy,
              resume=getattr(args, "resume", False))
    return 0


def run_with_paper(args: argparse.Namespace, title: str, paper_lines, out=sys.stdout) -> int:
    """`run(args)`, then the bench's results.md followed by a paper's numbers.

    For the recipes: `paper_lines` are the paper's rows, already formatted,
    printed under `title` so the two tables read side by side.
    """
    status = run(args, out=out)
    from kgrow.bench.launch import is_launched_worker
    if status == 0 and args.out and not is_launched_worker():  # the launcher prints it
        try:
            with open(os.path.join(args.out, "results.md"), encoding="utf-8") as f:
                print(f.read(), file=out)
        except OSError as err:
            print(f"(no table: {err})", file=sys.stderr)
            return status
        print(title, file=out)
        for line in paper_lines:
            print(f"  {line}", file=out)
    return status


def run_probe_command(args: argparse.Namespace, out=sys.stdout) -> int:
    """Executes `kgrow bench probe` for parsed flags; returns the exit status."""
    for module in args.plugin:
        importlib.import_module(module)
    if args.rounds < 1 or args.steps < 1:
        raise SystemExit("kgrow bench probe: --rounds and --steps must be >= 1.")
    try:
        spec = spec_from_args(args)
    except KeyError as err:
        raise SystemExit(f"kgrow bench probe: {err.args[0]}") from None
    except (ValueError, TypeError) as err:
        raise SystemExit(f"kgrow bench probe: {err}") from None
    from kgrow.bench.probe import run_probe
    run_probe(spec, spec.methods, args.out, rounds=args.rounds, steps=args.steps,
              log=lambda line: print(line, file=out, flush=True))
    return 0


def build_probe_parser() -> argparse.ArgumentParser:
    """A standalone parser for the probe flags."""
    return add_probe_arguments(argparse.ArgumentParser(
        prog="kgrow bench probe",
        description="Time training steps of the profile's model at several widths, depths, "
                    "resolutions, frozen prefixes and a sparse mask; fit step time = "
                    "overhead + FLOPs / throughput; predict each method's wall-clock "
                    "speedup on this machine (writes probe.json, probe.png)."))


def main(argv=None) -> int:
    """Entry point of `kgrow bench ...` (and `kgrow bench probe ...`) on its own."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["probe"]:
        return run_probe_command(build_probe_parser().parse_args(argv[1:]))
    return run(build_parser().parse_args(argv))

"""Network Expansion (CNN width or ViT depth) against the baseline, through the bench harness.

Runs `kgrow bench` with the baseline and one Network Expansion method per
combination of the design choices given, all in this process on the same
model, data and seeds, and writes results.json / results.md / curves.png.

The model is a kgrow zoo name (resnet20, resnet50, vit_tiny, ...) or a
`keras.applications` name (ResNet50, ResNet101, MobileNetV2, ...: built with
`weights=None` for the bench's input shape and classes; most need images of
at least 32x32, e.g. `--image-size 32` on Fashion-MNIST).

Examples:
    # CNN, quick profile, zero vs small orthogonal fan-out, equal vs late stages
    python recipes/network_expansion.py --mode cnn --profile quick --out runs/ne_cnn \
        --fan-out 0 0.1 --stages equal late
    # CNN, 1/4 -> 1/2 -> full width, the full model for the second half of the run
    python recipes/network_expansion.py --mode cnn --widths 0.25 0.5 1 --stages half \
        --out runs/ne_half
    # keras.applications ResNet50 (the paper's bottleneck family)
    python recipes/network_expansion.py --mode cnn --profile quick --model ResNet50 \
        --image-size 32 --out runs/ne_r50
    # ViT, depth 6 -> 12 from the EMA
    python recipes/network_expansion.py --mode vit --profile quick --model vit_tiny \
        --model-arg patch_size=4 --optimizer adamw --lr 1e-3 --out runs/ne_vit
"""
from __future__ import annotations

import argparse
import sys

import keras

from kgrow import bench, models
from kgrow.bench import cli as bench_cli
from kgrow.methods.network_expansion import bench as ne_bench
from kgrow.methods.network_expansion import stage_starts

STAGE_CHOICES = ("equal", "late", "half")


def stage_epochs(choice: str, epochs: int, num_stages: int):
    """First epoch of each CNN stage: "equal" lengths (the paper), "late"
    (every growth one stage later: the narrow stages are longer, the
    full-width stage is one stage length at the end) or "half" (the narrow
    stages share the first half, the full model trains the second half)."""
    if choice == "equal":
        return None
    if choice == "late":
        return [0] + [((i + 1) * epochs) // (num_stages + 1) for i in range(1, num_stages)]
    if choice == "half":
        if num_stages == 1:
            return [0]
        fractions = [i / (2 * (num_stages - 1)) for i in range(num_stages - 1)] + [0.5]
        return list(stage_starts(fractions, epochs))
    raise ValueError(f"--stages takes {STAGE_CHOICES}, got {choice!r}")


def register_application(name: str) -> None:
    """Makes a keras.applications model name usable as a bench `--model`."""
    if name in models.available() or not hasattr(keras.applications, name):
        return

    def build(input_shape, num_classes, application=name):
        return getattr(keras.applications, application)(
            weights=None, input_shape=tuple(input_shape), classes=num_classes)

    models.register(name, build, fixed={"application": name},
                    description=f"keras.applications.{name} (weights=None)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("cnn", "vit"), default="cnn")
    parser.add_argument("--fan-out", type=float, nargs="+", default=[0.0],
                        help="CNN: norm of the new channels' fan-out relative to the "
                             "existing rows (0: zero, function-preserving)")
    parser.add_argument("--stages", nargs="+", default=["equal"], choices=STAGE_CHOICES,
                        help="CNN stage lengths")
    parser.add_argument("--num-stages", type=int, default=3)
    parser.add_argument("--start-width", type=float, default=0.5)
    parser.add_argument("--widths", type=float, nargs="+", default=None,
                        help="CNN width of each stage, ending at 1 (e.g. 0.25 0.5 1); "
                             "overrides --num-stages and --start-width")
    parser.add_argument("--depths", type=int, nargs="+", default=None,
                        help="ViT blocks per stage (default: half, then all)")
    parser.add_argument("--expansion", choices=("expansion", "stack"), default="expansion")
    parser.add_argument("--carry-optimizer", action="store_true",
                        help="ViT: carry optimizer moments instead of resetting them")
    parser.add_argument("--no-baseline", action="store_true")
    bench_cli.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model:
        register_application(args.model)
    epochs = args.epochs or bench.get_profile(args.profile).epochs
    names = [] if args.no_baseline else ["baseline"]
    if args.mode == "cnn":
        num_stages = len(args.widths) if args.widths else min(args.num_stages, epochs)
        sizes = (dict(widths=tuple(args.widths)) if args.widths
                 else dict(num_stages=num_stages, start_width=args.start_width))
        for f in args.fan_out:
            for s in args.stages:
                name = f"network_expansion_f{f:g}_{s}"
                bench.register_method(name, ne_bench.factory(
                    "cnn", fan_out=f, stage_epochs=stage_epochs(s, epochs, num_stages),
                    **sizes), overwrite=True)
                names.append(name)
    else:
        name = f"network_expansion_vit_{args.expansion}"
        options = dict(expansion=args.expansion)
        if args.depths:
            options["depths"] = tuple(args.depths)
        if args.carry_optimizer:
            options["reset_optimizer"] = False
            name += "_carry"
        bench.register_method(name, ne_bench.factory("vit", **options), overwrite=True)
        names.append(name)
    args.methods = ",".join(names)
    return bench_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Variance-transfer growth (paper 001) on the kgrow bench, optionally the paper's ablation.

    python recipes/variance_transfer.py --profile quick --out runs/vt
    python recipes/variance_transfer.py --ablation --profile standard --seeds 2 --out runs/vt_abl

Every `kgrow bench` flag works (--model for any kgrow.models name, --epochs,
--subset, ...). Without --ablation it runs the baseline and the full method;
with it: baseline (fixed size), Net2Net growth, plain growth, + variance
rescaling, + LR adaptation, full method, in one process on the same data and
seed, and prints the table next to the paper's numbers.
"""
import argparse
import sys

from kgrow.bench import cli
from kgrow.methods.variance_transfer.bench import ABLATION

PAPER = {  # ResNet-20 CIFAR-10 / ResNet-18 CIFAR-100 top-1 (METHODS.md section 2)
    "vt_net2net": (91.60, 76.48), "vt_plain": (91.62, 76.82), "vt_rescale": (92.00, 77.27),
    "vt_rescale_lr": (92.24, 77.74), "variance_transfer": (92.53, 78.12),
    "baseline": (92.62, 78.36),
}


def main(argv=None):
    parser = cli.add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--ablation", action="store_true",
                        help="run the paper's ablation rows instead of the full method only")
    args = parser.parse_args(argv)
    if args.methods == "baseline":
        args.methods = ",".join(["baseline", *ABLATION] if args.ablation
                                else ["baseline", "variance_transfer"])
    return cli.run_with_paper(
        args, "Paper (top-1, ResNet-20 CIFAR-10 / ResNet-18 CIFAR-100):",
        [f"{name:18s} {c10:.2f} / {c100:.2f}" for name, (c10, c100) in PAPER.items()])


if __name__ == "__main__":
    sys.exit(main())

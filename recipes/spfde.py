"""SpFDE (paper 003) on the kgrow bench: sparse training, + layer freezing, + data sieving, + both.

    python recipes/spfde.py --profile standard-sparse --out runs/spfde            # the ablation
    python recipes/spfde.py --profile quick --subset 2000 --epochs 4 --out runs/spfde_smoke

The rows follow the paper's ablation (Tables A8-A10): the dense baseline, MEST
sparse training alone (EM&S at 90% sparsity by default), sparse + progressive
layer freezing (25% fewer training FLOPs), sparse + circular data sieving
(25%), and all three with 15% + 15% (SpFDE), each one `model.fit` of the
composed callbacks (`kgrow bench --methods a+b`), in one process on the same
model, data and seeds. `--sparse sparse_mest` takes the
plain EM schedule instead; `--no-baseline` leaves the dense run out. Every
`kgrow bench` flag works (`--seeds`, `--model`, `--epochs`, `--subset`, ...).
The table gives, per row, wall-clock, training FLOPs (sparsity, frozen blocks
and sieved data counted), accuracy and peak memory next to the baseline's; the
paper's numbers for the same rows follow it.
"""
import argparse
import sys

from kgrow.bench import cli

def rows(sparse: str = "sparse_mest_ems", baseline: bool = True) -> list[str]:
    """The bench methods of the ablation (composed with '+').

    Example:
        >>> rows(baseline=False)[-1]
        'sparse_mest_ems+freeze_15+sieve_15'
    """
    return (["baseline"] if baseline else []) + [
        sparse, f"{sparse}+freeze", f"{sparse}+sieve", f"{sparse}+freeze_15+sieve_15"]


# The paper's Tables A8-A10: ResNet-32 on CIFAR-100 at 90% sparsity, mean of 3 seeds:
# (top-1 %, training-FLOPs reduction vs sparse-only training).
PAPER = {
    "sparse only": (71.30, 0.0),
    "+ layer freezing (25%)": (71.18, 0.25),
    "+ data sieving (25%)": (71.11, 0.25),
    "+ both (15% + 15%)": (71.35, 0.2775),
}


def main(argv=None) -> int:
    parser = cli.add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--sparse", default="sparse_mest_ems",
                        choices=("sparse_mest_ems", "sparse_mest"),
                        help="the sparse-training method every row starts from")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    if args.methods == "baseline":
        args.methods = ",".join(rows(args.sparse, baseline=not args.no_baseline))
    return cli.run_with_paper(
        args, "Paper (ResNet-32, CIFAR-100, 90% sparsity, Tables A8-A10): top-1 / "
              "training-FLOPs reduction vs sparse only",
        [f"{name:26s} {acc:.2f} / {100 * saving:.2f}%" for name, (acc, saving) in PAPER.items()])


if __name__ == "__main__":
    sys.exit(main())

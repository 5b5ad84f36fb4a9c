"""Several kgrow methods in one `model.fit`, with the ablation: each method alone and all together.

    python recipes/combined.py --combine grow_width+freeze_5+sieve --profile standard --seeds 2 \
        --out runs/combined
    python recipes/combined.py --combine network_expansion+sieve --profile quick --out runs/ne_sieve

`--combine a+b+c` runs, in one process on the same model, data and seeds: the
baseline, `a`, `b`, `c` alone (skip them with `--no-parts`) and `a+b+c`: one
run whose parts set up the same model and whose callbacks the controller
orders by phase (architecture, freezing, masks, data). Every `kgrow bench`
flag works (`--profile`, `--model`, `--epochs`, `--subset`, ...); `kgrow
bench --list-methods` lists what can be combined.
"""
import argparse
import sys

from kgrow.bench import cli, registry


def methods_for(combine: str, parts: bool = True, baseline: bool = True) -> list[str]:
    """The bench methods of the ablation for `combine` ("a+b": baseline, a, b, a+b)."""
    names = registry.method_parts(combine)
    rows = (["baseline"] if baseline else []) + (names if parts and len(names) > 1 else [])
    return registry.check_methods(rows + ["+".join(names)])


def main(argv=None) -> int:
    parser = cli.add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--combine",
                        help="registered methods joined with '+', e.g. grow_width+freeze_5+sieve "
                             "(required; may come from --config)")
    parser.add_argument("--no-parts", action="store_true",
                        help="run only the baseline and the combination")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    if not args.combine:
        parser.error("--combine is required, e.g. --combine sparse_mest_ems+freeze")
    try:
        args.methods = ",".join(methods_for(args.combine, parts=not args.no_parts,
                                            baseline=not args.no_baseline))
    except (KeyError, ValueError) as err:
        parser.error(str(err.args[0] if err.args else err))
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m tools.bench``: benchmarks that print numbers (never timed tests).

Subcommands:
    solver   seconds per layer of RTN / GPTQ / GPTAQ on real layer shapes, GPTAQ/GPTQ ratio,
             peak memory; CPU, and CUDA when present.
"""

from __future__ import annotations

import sys
from typing import Sequence

from quantize.cli import ArgumentParser, run_cli, setup_logging


def build_parser() -> ArgumentParser:
    from . import solver_bench

    parser = ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    solver = sub.add_parser("solver", help="time the layer solver on real layer shapes")
    solver.add_argument("--shapes", nargs="+", default=list(solver_bench.DEFAULT_SHAPES),
                        metavar="OUTxIN", help="layer shapes (default: %(default)s)")
    solver.add_argument("--methods", nargs="+", default=list(solver_bench.METHODS),
                        choices=solver_bench.METHODS, help="what to time (default: all)")
    solver.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    solver.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    solver.add_argument("--json", metavar="FILE", help="also write the raw timings as JSON")
    solver.add_argument("-v", "--verbose", action="store_true")
    solver.set_defaults(run=solver_bench.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))

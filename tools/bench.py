"""``python -m tools bench`` (also ``python -m tools.bench``): benchmarks that print numbers (never timed tests).

    python -m tools bench ARTIFACT... --baseline FP_ARTIFACT [--out DIR]   (the ``latency`` subcommand)
    python -m tools bench --compare a/bench.json b/bench.json [--out DIR]

Subcommands (the first argument; anything else is ``latency``):
    latency  latency of ONNX / ORT / TensorRT artifacts against an FP baseline: LLM prefill and
             decode ms/token per prompt / cache length and batch, ViT images/s; median / p90 / p99,
             speedup, size, peak host memory; bench.json, bench.csv, bench.png.
    solver   seconds per layer of RTN / GPTQ / GPTAQ on real layer shapes, GPTAQ/GPTQ ratio,
             peak memory; CPU, and CUDA when present.
    quality  held-out perplexity of FP / RTN / GPTQ / GPTAQ on SmolLM2-135M (or any LLM) over a
             grid of levers (column order, MSE clip, asymmetric grid, damping, quantized head),
             optionally GPTQModel side by side and ORT decode ms/token of quantized heads;
             quantization seconds and peak host memory; JSON + CSV + PNG.
    vit      top-1 of FP / RTN / GPTQ / GPTAQ on a small timm ViT trained on scikit-learn's
             digits (real scans), at W4A16 / W4A4 / W3A16 / W2A4.
    rotation held-out perplexity of FP / rotated FP and of RTN / GPTQ / GPTAQ at W4A4 and
             W4A16 with and without Hadamard rotation; rotation and calibration cost.
    fidelity ONNX Runtime vs PyTorch fake-quant on the same quantized model: relative logit
             error, top-1 agreement and perplexity of an exported LLM (ViT: ``vit --onnx``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

if __name__ == "__main__" and not __package__:  # run as a script: python tools/bench.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from quantize.cli import ArgumentParser, run_cli, setup_logging  # noqa: E402

DEFAULT_COMMAND = "latency"


def build_parser() -> ArgumentParser:
    from tools import fidelity_bench, latency_cli, quality_bench, rotation_bench, solver_bench, vit_bench

    parser = ArgumentParser(prog="python -m tools bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(commands=sub.choices)  # the names main() dispatches on; add a parser, it is one
    latency = sub.add_parser("latency", help="latency of artifacts vs an FP baseline (the default subcommand)")
    latency_cli.add_arguments(latency)
    latency.set_defaults(run=latency_cli.main)

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

    quality = sub.add_parser("quality", help="held-out perplexity of FP / RTN / GPTQ / GPTAQ (and GPTQModel) on a real LLM")
    quality_bench.add_arguments(quality)
    quality.set_defaults(run=quality_bench.main)

    vit = sub.add_parser("vit", help="ViT top-1 after RTN / GPTQ / GPTAQ on real digit images")
    vit_bench.add_arguments(vit)
    vit.set_defaults(run=vit_bench.main)

    rotation = sub.add_parser("rotation", help="what Hadamard rotation buys W4A4 and W4A16 on a real LLM")
    rotation_bench.add_arguments(rotation)
    rotation.set_defaults(run=rotation_bench.main)

    fidelity = sub.add_parser("fidelity", help="ONNX Runtime vs PyTorch on the same quantized model")
    fidelity_bench.add_arguments(fidelity)
    fidelity.set_defaults(run=fidelity_bench.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = parser.get_default("commands")
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help"):
        argv = [DEFAULT_COMMAND, *argv]  # python -m tools bench ARTIFACT ... / --compare ...
    args = parser.parse_args(argv)
    args.argv = argv  # for reports that record how they were made
    setup_logging(args.verbose)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))

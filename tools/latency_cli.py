"""Flags of ``python -m tools bench [latency]`` mapped onto :class:`~tools.latency_bench.LatencyConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantize.errors import UserError


def int_list(text: str) -> tuple[int, ...]:
    """``"128,512"`` -> ``(128, 512)`` (an argparse type: a bad value is argparse's one-line error)."""
    try:
        return tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers (e.g. 128,512)") from None


def add_arguments(p) -> None:
    p.add_argument("artifacts", nargs="*", metavar="[LABEL=]ARTIFACT",
                   help="ONNX file, export dir, ORT / TensorRT build dir or plan (label defaults to its name)")
    p.add_argument("--baseline", default=None, metavar="[LABEL=]ARTIFACT",
                   help="the FP artifact speedups are relative to (FP16 on GPU; on CPU FP32)")
    p.add_argument("--prompt-lengths", type=int_list, default=(128, 512), metavar="L,..", help="prefill prompt lengths (default 128,512)")
    p.add_argument("--cache-lengths", type=int_list, default=(128, 512), metavar="C,..", help="decode cache lengths (default 128,512)")
    p.add_argument("--batch-sizes", type=int_list, default=(1,), metavar="B,..", help="batch sizes (default 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per artifact and shape (default 3)")
    p.add_argument("--iterations", type=int, default=20, help="timed rounds per shape (default 20)")
    p.add_argument("--backend", choices=("ort", "trt"), default=None, help="default: what the artifacts are")
    p.add_argument("--provider", default=None, help="ONNX Runtime provider: cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--accuracy-level", type=int, choices=range(5), default=None,
                   help="ORT MatMulNBits accuracy level for exports fused at load (a build has its own)")
    p.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=True,
                   help="let ORT's idle threads spin between runs, as a lone ORT session does by default, the artifacts "
                        "taking turns in blocks of runs with a pause between (default); --no-spinning: sleeping threads, "
                        "turns run by run")
    p.add_argument("--no-memory", action="store_true", help="skip the peak host memory runs (one process per artifact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", nargs="+", default=None, metavar="BENCH_JSON",
                   help="merge bench.json files (e.g. one per GPU) side by side instead of timing")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where bench.json / bench.csv / bench.png go (default: bench, or bench-compare)")
    p.add_argument("-v", "--verbose", action="store_true")


def config_from_args(args):
    from tools.latency_bench import LatencyConfig

    return LatencyConfig(artifacts=tuple(args.artifacts), baseline=args.baseline, prompt_lengths=args.prompt_lengths,
                         cache_lengths=args.cache_lengths, batch_sizes=args.batch_sizes, warmup=args.warmup,
                         iterations=args.iterations, backend=args.backend, provider=args.provider,
                         threads=args.threads, accuracy_level=args.accuracy_level, memory=not args.no_memory, spinning=args.spinning,
                         seed=args.seed)


def main(args) -> int:
    """Entry for ``python -m tools bench [latency]``: time (or merge), print the table, write the files."""
    from tools import bench_report

    if args.compare:
        if args.artifacts or args.baseline:
            raise UserError("--compare merges bench.json files; it takes no artifacts or --baseline")
        report = bench_report.merge(args.compare)
        out = Path(args.out or "bench-compare")
    else:
        from tools.latency_bench import run_latency

        report = run_latency(config_from_args(args))
        out = Path(args.out or "bench")
    print(bench_report.format_table(report))
    paths = bench_report.write_outputs(report, out)
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    return 0

"""Solver benchmark: seconds per layer for RTN, GPTQ and GPTAQ, and the GPTAQ/GPTQ ratio.

Timing: one worker process per shape warms every method up, then times them in interleaved
rounds (rtn, gptq, gptaq, ... repeated), so ratios come from side-by-side runs and machine
drift cancels. Peak memory: one more process per (shape, method) runs it once, so the peak is
its own (host peak RSS growth on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA).
Inputs are built per worker from a fixed seed: activations with a low-rank correlated part and a few outlier
channels (as real LLM activations have), ``H = 2/N X^T X`` and a GPTAQ ``dXXT`` from a
perturbed copy, so the Cholesky and the P term see realistic structure.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Sequence

from quantize.errors import UserError

DEFAULT_SHAPES = ("576x576", "1536x576", "576x1536", "4096x4096", "11008x4096", "4096x11008")
METHODS = ("rtn", "gptq", "gptaq", "reference-gptq")


@dataclass(frozen=True)
class SolverCase:
    out_features: int
    in_features: int
    methods: tuple[str, ...]
    device: str
    repeats: int
    tokens: int = 4096
    bits: int = 4
    group_size: int = 128


@dataclass(frozen=True)
class SolverTiming:
    out_features: int
    in_features: int
    method: str
    device: str
    median_s: float
    runs_s: list[float]
    peak_mem_mb: float


def parse_shape(text: str) -> tuple[int, int]:
    """``"4096x11008"`` → ``(4096, 11008)`` as ``(out, in)``."""
    try:
        out_f, in_f = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"shape {text!r} is not OUTxIN (e.g. 4096x4096)") from None
    if out_f <= 0 or in_f <= 0:
        raise UserError(f"shape {text!r} must have positive sizes")
    return out_f, in_f


def make_inputs(case: SolverCase):
    """Seeded weight ``[out, in]``, ``H`` and ``dXXT`` ``[in, in]`` (fp32) on ``case.device``."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    n, t = case.in_features, case.tokens
    rank = min(256, n)
    basis = torch.randn(rank, n, generator=gen) / rank**0.5
    channel_scale = torch.ones(n)
    channel_scale[torch.randperm(n, generator=gen)[: max(1, n // 100)]] = 20.0  # outlier channels
    x = (torch.randn(t, rank, generator=gen) @ basis + 0.5 * torch.randn(t, n, generator=gen)) * channel_scale
    x_fp = x + 0.05 * torch.randn(t, n, generator=gen) * channel_scale
    dev = torch.device(case.device)
    x, x_fp = x.to(dev), x_fp.to(dev)
    H = 2.0 / t * (x.t() @ x)
    dXXT = 2.0 / t * ((x_fp - x).t() @ x)
    W = (0.02 * torch.randn(case.out_features, n, generator=gen)).to(dev)
    return W, H, dXXT


def _calls(case: SolverCase):
    from quantize.gptq import rtn, solve
    from quantize.gptq_reference import reference_solve

    W, H, dXXT = make_inputs(case)
    grid = dict(bits=case.bits, group_size=case.group_size, sym=True)
    return {
        "rtn": lambda: rtn(W, **grid),
        "gptq": lambda: solve(W, H, **grid),
        "gptaq": lambda: solve(W, H, dXXT=dXXT, **grid),
        "reference-gptq": lambda: reference_solve(W, H, **grid),
    }


def time_case(case: SolverCase) -> dict[str, list[float]]:
    """Seconds per run of every method, timed in interleaved rounds after one warm-up each."""
    import torch

    calls = _calls(case)
    sync = torch.cuda.synchronize if case.device.startswith("cuda") else (lambda: None)
    for m in case.methods:  # warm-up: allocator, BLAS/LAPACK handles, CUDA kernels
        calls[m]()
    runs: dict[str, list[float]] = {m: [] for m in case.methods}
    for _ in range(case.repeats):
        for m in case.methods:
            sync()
            start = time.perf_counter()
            calls[m]()
            sync()
            runs[m].append(time.perf_counter() - start)
    return runs


def peak_memory_mb(case: SolverCase) -> float:
    """Peak memory of one run of ``case.methods[0]`` beyond its inputs (fresh process)."""
    import torch

    calls = _calls(case)
    method = case.methods[0]
    if case.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        calls[method]()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    calls[method]()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _in_worker(fn, case):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, case).result()


def run_benchmark(shapes: Sequence[str], methods: Sequence[str], devices: Sequence[str], repeats: int) -> list[SolverTiming]:
    """Every shape on every device, one case at a time (never time two things at once)."""
    results = []
    for device in devices:
        for shape in shapes:
            out_f, in_f = parse_shape(shape)
            case = SolverCase(out_f, in_f, tuple(methods), device, repeats)
            runs = _in_worker(time_case, case)
            for m in methods:
                peak = _in_worker(peak_memory_mb, SolverCase(out_f, in_f, (m,), device, 1))
                results.append(SolverTiming(out_f, in_f, m, device, statistics.median(runs[m]), runs[m], peak))
                print(_row(results[-1]), file=sys.stderr, flush=True)
    return results


def _row(t: SolverTiming) -> str:
    return f"  {t.device:5s} {t.out_features:>6d}x{t.in_features:<6d} {t.method:15s} {t.median_s:8.3f} s  peak {t.peak_mem_mb:8.1f} MB"


def format_table(results: Sequence[SolverTiming]) -> str:
    """One row per (device, shape): seconds per method, GPTAQ/GPTQ ratio, GPTQ vs reference."""
    by_key: dict[tuple[str, int, int], dict[str, SolverTiming]] = {}
    for t in results:
        by_key.setdefault((t.device, t.out_features, t.in_features), {})[t.method] = t
    methods = [m for m in METHODS if any(m in v for v in by_key.values())]
    head = "| device | out x in | " + " | ".join(f"{m} s" for m in methods) + " | GPTAQ/GPTQ | ref/GPTQ | peak MB (" + " / ".join(methods) + ") |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (dev, o, i), row in by_key.items():
        cells = [f"{row[m].median_s:.3f}" if m in row else "-" for m in methods]
        ratio = f"{row['gptaq'].median_s / row['gptq'].median_s:.2f}" if {"gptaq", "gptq"} <= row.keys() else "-"
        ref = f"{row['reference-gptq'].median_s / row['gptq'].median_s:.2f}" if {"reference-gptq", "gptq"} <= row.keys() else "-"
        peak = " / ".join(f"{row[m].peak_mem_mb:.0f}" for m in methods if m in row)
        lines.append(f"| {dev} | {o}x{i} | " + " | ".join(cells) + f" | {ratio} | {ref} | {peak} |")
    return "\n".join(lines)


def main(args) -> int:
    """Entry for ``python -m tools.bench solver`` (``args`` from :mod:`tools.bench`)."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    for s in args.shapes:
        parse_shape(s)
    results = run_benchmark(args.shapes, args.methods, devices, args.repeats)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "results": [asdict(r) for r in results]}, fh, indent=2)
    return 0

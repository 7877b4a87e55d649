"""LLM quality benchmark: held-out perplexity of FP / RTN / GPTQ / GPTAQ from one run.

Defaults follow the project's measurement protocol: SmolLM2-135M (the embedded demo model),
32 x 512-token calibration windows of real English text, perplexity on separate held-out
articles (GPTQ protocol: non-overlapping windows, mean NLL). Every (scheme, method) case runs
in its own spawned process, so its wall time and peak host memory are its own; the time is
split into solver seconds (sum over layers) and the rest (forward passes, capture, I/O).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from quantize.errors import UserError

METHODS = ("fp", "rtn", "gptq", "gptaq")


@dataclass(frozen=True)
class QualityCase:
    model: str | None
    method: str
    w_bits: int
    group_size: int
    nsamples: int
    seqlen: int
    eval_seqlen: int
    eval_windows: int
    options: dict[str, Any] = field(default_factory=dict)  # extra QuantConfig fields

    @property
    def scheme(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.options.items()))
        return f"W{self.w_bits} g{self.group_size}{extra}"


@dataclass(frozen=True)
class QualityResult:
    scheme: str
    method: str
    ppl: float
    quant_seconds: float
    solve_seconds: float
    peak_host_mb: float


def parse_scheme(text: str) -> tuple[int, int]:
    """``"w4g128"`` → ``(4, 128)``; ``"w4"`` → per channel ``(4, -1)``."""
    t = text.lower()
    try:
        if not t.startswith("w"):
            raise ValueError
        bits, _, group = t[1:].partition("g")
        return int(bits), int(group) if group else -1
    except ValueError:
        raise UserError(f"scheme {text!r} is not like w4g128 or w3") from None


def run_case(case: QualityCase) -> QualityResult:
    """Load, quantize (unless FP), evaluate; runs in a worker process."""
    import torch

    from quantize import QuantConfig, quantize_model
    from quantize.data import CalibConfig, calibration_tokens, eval_tokens
    from quantize.evaluate import perplexity
    from quantize.loading import load_model

    torch.manual_seed(0)
    loaded = load_model(case.model)
    tokens = eval_tokens(None, loaded.tokenizer)
    quant_s = solve_s = 0.0
    if case.method != "fp":
        calib = calibration_tokens(CalibConfig(None, case.nsamples, case.seqlen, 0), loaded.tokenizer)
        config = QuantConfig(method=case.method, w_bits=case.w_bits, group_size=case.group_size, **case.options)
        start = time.perf_counter()
        quantize_model(loaded.model, calib, config, progress=False)
        quant_s = time.perf_counter() - start
        solve_s = sum(entry["seconds"] for entry in loaded.model.quant_state.log)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ppl = perplexity(loaded.model, tokens, case.eval_seqlen, limit=case.eval_windows)
    return QualityResult(case.scheme if case.method != "fp" else "FP", case.method, ppl, quant_s, solve_s, peak)


def run_benchmark(cases: Sequence[QualityCase]) -> list[QualityResult]:
    ctx = multiprocessing.get_context("spawn")
    results = []
    for case in cases:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            r = pool.submit(run_case, case).result()
        results.append(r)
        print(f"  {r.scheme:12s} {r.method:6s} ppl {r.ppl:9.3f}  quant {r.quant_seconds:7.1f} s "
              f"(solve {r.solve_seconds:6.1f} s)  peak {r.peak_host_mb:7.0f} MB", file=sys.stderr, flush=True)
    return results


def gap_closed(fp: float, gptq: float, gptaq: float) -> float:
    """Fraction of GPTQ's perplexity gap to FP that GPTAQ closes."""
    return (gptq - gptaq) / (gptq - fp) if gptq > fp else math.nan


def format_table(results: Sequence[QualityResult]) -> str:
    fp = next((r.ppl for r in results if r.method == "fp"), math.nan)
    by_scheme: dict[str, dict[str, QualityResult]] = {}
    for r in results:
        if r.method != "fp":
            by_scheme.setdefault(r.scheme, {})[r.method] = r
    lines = [f"FP perplexity: {fp:.3f}", "",
             "| scheme | RTN ppl | GPTQ ppl | GPTAQ ppl | GPTAQ closes of GPTQ's gap | RTN s | GPTQ s | GPTAQ s (solve) | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for scheme, row in by_scheme.items():
        cell = lambda m: f"{row[m].ppl:.3f}" if m in row else "-"  # noqa: E731
        secs = lambda m: f"{row[m].quant_seconds:.1f}" if m in row else "-"  # noqa: E731
        closed = gap_closed(fp, row["gptq"].ppl, row["gptaq"].ppl) if {"gptq", "gptaq"} <= row.keys() else math.nan
        solve = f" ({row['gptaq'].solve_seconds:.1f})" if "gptaq" in row else ""
        peak = max(r.peak_host_mb for r in row.values())
        lines.append(f"| {scheme} | {cell('rtn')} | {cell('gptq')} | {cell('gptaq')} | {closed:.0%} | "
                     f"{secs('rtn')} | {secs('gptq')} | {secs('gptaq')}{solve} | {peak:.0f} |")
    return "\n".join(lines)


def main(args) -> int:
    """Entry for ``python -m tools.bench quality``."""
    schemes = [parse_scheme(s) for s in args.schemes]
    methods = [m for m in METHODS if m in args.methods]
    options = {"act_order": args.act_order, "mse_clip": args.mse_clip}
    options = {k: v for k, v in options.items() if v}
    cases = []
    if "fp" in methods:
        cases.append(QualityCase(args.model, "fp", 16, -1, args.nsamples, args.seqlen, args.eval_seqlen, args.eval_windows))
    for bits, group in schemes:
        for m in methods:
            if m != "fp":
                cases.append(QualityCase(args.model, m, bits, group, args.nsamples, args.seqlen,
                                         args.eval_seqlen, args.eval_windows, options))
    results = run_benchmark(cases)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cases": [asdict(c) for c in cases], "results": [asdict(r) for r in results]}, fh, indent=2)
    return 0

"""Rotation / W4A4 benchmark: what Hadamard rotation buys GPTQ and GPTAQ on a real LLM, from one run.

Cases (SmolLM2-135M by default; calibration and held-out text as in the quality benchmark):

* FP and rotated FP (must agree: the rotation is exact);
* W4A4 — weights per channel, asymmetric, MSE clip (GPTAQ's LLM setting); activations per
  token, 4-bit asymmetric, clip ratio 0.9 — for RTN / GPTQ / GPTAQ, with and without rotation;
* W4A16 g128 symmetric, GPTQ / GPTAQ, with and without rotation.

Every case runs in its own spawned process (its peak host memory is its own); quantization
time is split into rotation seconds, solver seconds and the rest (forward passes, statistics).
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

W4A4 = {"w_bits": 4, "group_size": -1, "sym": False, "mse_clip": True, "a_bits": 4, "a_sym": False, "a_clip_ratio": 0.9}
W4A16 = {"w_bits": 4, "group_size": 128, "sym": True}


@dataclass(frozen=True)
class RotationCase:
    scheme: str  # "FP" | "W4A4" | "W4A16 g128"
    method: str  # "fp" | "rtn" | "gptq" | "gptaq"
    rotate: bool
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RotationResult:
    scheme: str
    method: str
    rotate: bool
    ppl: float
    rotate_seconds: float
    quant_seconds: float
    solve_seconds: float
    peak_host_mb: float


def default_cases(methods: Sequence[str] = ("rtn", "gptq", "gptaq")) -> list[RotationCase]:
    cases = [RotationCase("FP", "fp", False), RotationCase("FP", "fp", True)]
    for rotate in (False, True):
        cases += [RotationCase("W4A4", m, rotate, W4A4) for m in methods]
    for rotate in (False, True):
        cases += [RotationCase("W4A16 g128", m, rotate, W4A16) for m in methods if m != "rtn"]
    return cases


def run_case(case: RotationCase, model: str | None, nsamples: int, seqlen: int, eval_seqlen: int,
             eval_windows: int) -> RotationResult:
    """Load, (rotate,) quantize, evaluate; runs in a worker process."""
    import torch

    from quantize import QuantConfig, quantize_model
    from quantize.data import CalibConfig, calibration_tokens, eval_tokens
    from quantize.evaluate import perplexity
    from quantize.loading import load_model
    from quantize.rotate import rotate_model

    torch.manual_seed(0)
    loaded = load_model(model)
    tokens = eval_tokens(None, loaded.tokenizer)
    quant_s = solve_s = rotate_s = 0.0
    if case.method == "fp":
        if case.rotate:
            start = time.perf_counter()
            rotate_model(loaded.model, seed=0)
            rotate_s = time.perf_counter() - start
    else:
        calib = calibration_tokens(CalibConfig(None, nsamples, seqlen, 0), loaded.tokenizer)
        config = QuantConfig(method=case.method, rotate=case.rotate, **case.config)
        start = time.perf_counter()
        quantize_model(loaded.model, calib, config, progress=False)
        quant_s = time.perf_counter() - start
        solve_s = sum(entry["seconds"] for entry in loaded.model.quant_state.log)
        rotate_s = loaded.model.quant_state.extra.get("rotation", {}).get("seconds", 0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ppl = perplexity(loaded.model, tokens, eval_seqlen, limit=eval_windows)
    return RotationResult(case.scheme, case.method, case.rotate, ppl, rotate_s, quant_s, solve_s, peak)


def run_benchmark(cases: Sequence[RotationCase], **settings: Any) -> list[RotationResult]:
    ctx = multiprocessing.get_context("spawn")
    results = []
    for case in cases:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            r = pool.submit(run_case, case, **settings).result()
        results.append(r)
        print(f"  {r.scheme:11s} {r.method:6s} rotate={str(r.rotate):5s} ppl {r.ppl:10.3f}  rotate {r.rotate_seconds:5.1f} s  "
              f"quant {r.quant_seconds:7.1f} s (solve {r.solve_seconds:6.1f} s)  peak {r.peak_host_mb:6.0f} MB",
              file=sys.stderr, flush=True)
    return results


def format_table(results: Sequence[RotationResult]) -> str:
    lines = ["| scheme | method | rotated | ppl | rotation s | quantize s (solver) | peak MB |", "|---|---|---|---|---|---|---|"]
    for r in results:
        quant = f"{r.quant_seconds:.1f} ({r.solve_seconds:.1f})" if r.method != "fp" else "-"
        lines.append(f"| {r.scheme} | {r.method.upper() if r.method != 'fp' else 'FP'} | {'yes' if r.rotate else 'no'} | "
                     f"{r.ppl:.3f} | {r.rotate_seconds:.1f} | {quant} | {r.peak_host_mb:.0f} |")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="model to quantize (default: SmolLM2-135M demo)")
    parser.add_argument("--methods", nargs="+", default=["rtn", "gptq", "gptaq"], choices=["rtn", "gptq", "gptaq"])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=10, help="held-out windows scored (default 10)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("-v", "--verbose", action="store_true")


def main(args) -> int:
    """Entry for ``python -m tools.bench rotation``."""
    cases = default_cases(args.methods)
    results = run_benchmark(cases, model=args.model, nsamples=args.nsamples, seqlen=args.seqlen,
                            eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows)
    print(format_table(results))
    if args.json:
        from quantize.atomic import write_bytes

        report = {"cases": [asdict(c) for c in cases], "results": [asdict(r) for r in results]}
        write_bytes(Path(args.json), json.dumps(report, indent=2).encode())
    return 0

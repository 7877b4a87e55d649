"""LLM quality benchmark: held-out perplexity of FP / RTN / GPTQ / GPTAQ over a grid of levers, from one run.

Defaults follow the project's measurement protocol: SmolLM2-135M (the embedded demo model),
32 x 512-token calibration windows of real English text, perplexity on separate held-out
articles (GPTQ protocol: non-overlapping windows, mean NLL). One process loads the model,
the calibration windows and the held-out text once; every case quantizes a fresh copy of
the FP model. Each finished case is written to ``OUT/cases/KEY.json`` at once, so a killed
run keeps what it has and a rerun with the same ``--out`` skips finished cases. At the end
(or with ``--report-only``) every case in ``OUT/cases`` goes into ``OUT/results.json``,
``OUT/results.csv`` and ``OUT/results.png``.

Optional extras in the same run:

* ``--gptqmodel-python PY``: GPTQModel's default GPTQ (group-aware reordering on) and its
  GPTAQ, run by ``tools/gptqmodel_worker.py`` under that interpreter (a separate venv; never a
  dependency of this package) on exactly the same calibration windows; its checkpoint is
  scored by dequantizing it here (its CPU int4 kernel rejects SmolLM2's 576 in-features at
  group 128).
* ``--decode``: ORT CPU decode ms/token (batch 1, a ``--decode-context`` token cache, median
  of the steps after warm-up) of every quantized-head case and of the same setting with a
  float head, both exported with ``python -m export`` defaults.
"""

from __future__ import annotations

import copy
import csv
import gc
import json
import logging
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from quantize.errors import UserError

log = logging.getLogger(__name__)

METHODS = ("fp", "rtn", "gptq", "gptaq")
GPTQMODEL_METHODS = ("gptqmodel-gptq", "gptqmodel-gptaq")
#: QuantConfig fields a ``--case`` may set, with their parsers.
OPTION_TYPES = {"reorder": str, "mse_clip": lambda v: v.lower() in ("1", "true", "on", "yes"),
                "sym": lambda v: v.lower() in ("1", "true", "on", "yes"), "damp": float, "alpha": float,
                "head_bits": int, "head_group_size": int, "head_int8_rows": int}
WORKER = Path(__file__).with_name("gptqmodel_worker.py")


@dataclass(frozen=True)
class QualityCase:
    """One row of the table: a method, a grid and the extra QuantConfig fields."""

    method: str
    w_bits: int = 16
    group_size: int = -1
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "FP" if self.method == "fp" else f"W{self.w_bits} g{self.group_size}"

    @property
    def setting(self) -> str:
        """The options as ``k=v`` words (defaults left out)."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.options.items())) or "-"

    @property
    def key(self) -> str:
        """File-name-safe unique name, e.g. ``gptaq_w4g128_mse_clip-True_reorder-group``."""
        if self.method == "fp":
            return "fp"
        opts = "".join(f"_{k}-{v}" for k, v in sorted(self.options.items()))
        return f"{self.method}_w{self.w_bits}g{self.group_size}{opts}"

    @property
    def head_bits(self) -> int:
        return int(self.options.get("head_bits", 16))

    def without_head(self) -> "QualityCase":
        opts = {k: v for k, v in self.options.items() if not k.startswith("head_")}
        return QualityCase(self.method, self.w_bits, self.group_size, opts)


@dataclass
class QualityResult:
    key: str
    scheme: str
    method: str
    setting: str
    ppl: float
    quant_seconds: float
    solve_seconds: float
    peak_host_mb: float
    case_extra_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


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


def parse_case(text: str) -> QualityCase:
    """``"gptaq w4g128 reorder=group mse_clip=1 head_bits=8"`` → a case."""
    words = text.split()
    if len(words) < 2 or words[0] not in METHODS[1:] + GPTQMODEL_METHODS:
        raise UserError(f"case {text!r} is not like 'gptaq w4g128 reorder=group mse_clip=1' "
                        f"(methods: {', '.join(METHODS[1:] + GPTQMODEL_METHODS)})")
    bits, group = parse_scheme(words[1])
    options: dict[str, Any] = {}
    for word in words[2:]:
        name, eq, value = word.partition("=")
        if not eq or name not in OPTION_TYPES:
            raise UserError(f"case {text!r}: {word!r} is not one of {', '.join(f'{k}=...' for k in OPTION_TYPES)}")
        try:
            options[name] = OPTION_TYPES[name](value)
        except ValueError:
            raise UserError(f"case {text!r}: {word!r} has a bad value") from None
    return QualityCase(words[0], bits, group, options)


def grid_cases(schemes: Sequence[str], methods: Sequence[str], reorders: Sequence[str], mse: Sequence[str]) -> list[QualityCase]:
    """The cartesian grid (RTN ignores the column order, so it gets ``reorder=none`` only)."""
    cases = []
    for text in schemes:
        bits, group = parse_scheme(text)
        for m in methods:
            if m == "fp":
                continue
            for reorder in (["none"] if m == "rtn" else reorders):
                for clip in mse:
                    opts: dict[str, Any] = {"reorder": reorder} if reorder != "none" else {}
                    if clip == "on":
                        opts["mse_clip"] = True
                    cases.append(QualityCase(m, bits, group, opts))
    return cases


# ---------------------------------------------------------------------------------------
# running cases
# ---------------------------------------------------------------------------------------


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS counter of this process (``clear_refs`` 5); returns RSS MB now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def _status_mb(field_name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class BenchData:
    """What every case shares: the FP model (never modified), its tokenizer, the data."""

    model: Any
    tokenizer: Any
    source: Any
    calib: Any  # LongTensor [nsamples, seqlen]
    eval_tokens: Any  # LongTensor [N]
    eval_seqlen: int
    eval_windows: int
    model_dir: Path | None  # a transformers directory of the FP model (for GPTQModel)


def load_data(model: str | None, nsamples: int, seqlen: int, eval_seqlen: int, eval_windows: int) -> BenchData:
    import torch

    from quantize.data import CalibConfig, calibration_tokens, eval_tokens
    from quantize.loading import demo_cache_dir, load_model

    torch.manual_seed(0)
    loaded = load_model(model)
    calib = calibration_tokens(CalibConfig(None, nsamples, seqlen, 0), loaded.tokenizer)
    tokens = eval_tokens(None, loaded.tokenizer)
    model_dir = demo_cache_dir() if model is None else (Path(model) if Path(model).is_dir() else None)
    return BenchData(loaded.model, loaded.tokenizer, loaded.source, calib, tokens, eval_seqlen, eval_windows, model_dir)


def _ppl(data: BenchData, model) -> float:
    from quantize.evaluate import perplexity

    return perplexity(model, data.eval_tokens, data.eval_seqlen, limit=data.eval_windows)


def run_case(data: BenchData, case: QualityCase, save_dir: Path | None = None) -> QualityResult:
    """Quantize a copy of the FP model with ``case`` (in this process), score it, optionally save it."""
    from quantize import QuantConfig, quantize_model, save_quantized

    base = _reset_peak_rss()
    model = data.model if case.method == "fp" else copy.deepcopy(data.model)
    quant_s = solve_s = 0.0
    if case.method != "fp":
        # A case without reorder= is the plain column order (QuantConfig's default is "group"),
        # so case keys keep one meaning across runs and the GAR rows say reorder=group.
        options = {"reorder": "none", **case.options}
        config = QuantConfig(method=case.method, w_bits=case.w_bits, group_size=case.group_size, **options)
        start = time.perf_counter()
        quantize_model(model, data.calib, config, progress=False)
        quant_s = time.perf_counter() - start
        solve_s = sum(entry["seconds"] for entry in model.quant_state.log)
    peak = _status_mb("VmHWM")
    ppl = _ppl(data, model)
    if save_dir is not None and case.method != "fp":
        save_quantized(model, save_dir, tokenizer=data.tokenizer, overwrite=True)
    del model
    gc.collect()
    return QualityResult(case.key, case.scheme, case.method, case.setting, ppl, quant_s, solve_s, peak, peak - base)


def run_gptqmodel_case(data: BenchData, case: QualityCase, python: str, work: Path) -> QualityResult:
    """Quantize with GPTQModel in its own venv (``python``) on the same windows; score here."""
    import torch

    if data.model_dir is None:
        raise UserError("GPTQModel needs the FP model as a transformers directory (the demo model or --model DIR)")
    work = work.resolve()  # the worker runs with cwd=work: every path handed to it is absolute
    work.mkdir(parents=True, exist_ok=True)
    ids_path = work / "calib_ids.pt"
    torch.save(data.calib.clone(), ids_path)
    out = work / f"{case.key}_ckpt"
    spec = {"model_dir": str(data.model_dir), "calib_ids": str(ids_path), "out": str(out),
            "method": case.method.removeprefix("gptqmodel-"), "bits": case.w_bits, "group_size": case.group_size,
            "sym": bool(case.options.get("sym", True)), "damp": case.options.get("damp"),  # None: its default
            "act_group_aware": case.options.get("reorder", "group") == "group", "alpha": 0.25}
    spec_path = work / f"{case.key}_spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", "2"),
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    start = time.perf_counter()
    proc = subprocess.run([python, str(WORKER), str(spec_path)], env=env, capture_output=True, text=True, cwd=str(work))
    wall = time.perf_counter() - start
    (work / f"{case.key}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"GPTQModel worker failed for {case.key} (log: {work / (case.key + '.log')}): {tail[0]}")
    report = json.loads((out / "worker_report.json").read_text())
    model = copy.deepcopy(data.model)
    install_gptq_checkpoint(model, out, case.w_bits)
    ppl = _ppl(data, model)
    del model
    gc.collect()
    extra = {"gptqmodel_version": report.get("version"), "worker_wall_seconds": round(wall, 1),
             "quantize_config": report.get("quantize_config")}
    return QualityResult(case.key, case.scheme, case.method, case.setting, ppl, report["quant_seconds"], math.nan,
                         report.get("peak_host_mb", math.nan), math.nan, extra)


def install_gptq_checkpoint(model, directory: Path, bits: int) -> int:
    """Load a GPTQ-format checkpoint's quantized Linears into ``model`` as dequantized float
    weights (any ``g_idx``; v1 ``qzeros``); returns how many Linears were replaced."""
    import torch
    from safetensors.torch import load_file

    from quantize.primitives import dequantize_grouped, from_gptq_tensors

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    prefixes = sorted({k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")})
    if not prefixes:
        raise UserError(f"{directory} holds no GPTQ qweight tensors")
    for prefix in prefixes:
        linear = model.get_submodule(prefix)
        parts = {k: tensors[f"{prefix}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")}
        un = from_gptq_tensors(parts, bits, linear.in_features)
        weight = dequantize_grouped(un["codes"], un["scales"], un["zeros"], un["g_idx"])
        linear.weight.data = weight.to(linear.weight.dtype)
    return len(prefixes)


# ---------------------------------------------------------------------------------------
# decode speed of a quantized head
# ---------------------------------------------------------------------------------------


def decode_ms_per_token(checkpoint: Path, work: Path, prompt, steps: int, warmup: int, threads: int,
                        repeats: int) -> dict[str, Any]:
    """Export ``checkpoint`` (``python -m export`` defaults: fp32 graph, KV cache), then
    ``repeats`` times: open it in ORT CPU, prefill ``prompt [1, S]``, decode greedily (no EOS
    stop); each session's value is the median ms of its decode steps after ``warmup``; the
    median over sessions is reported."""
    import statistics

    from export import ExportConfig, export_onnx
    from runtime import OrtSession, generate

    onnx_dir = Path(export_onnx(checkpoint, work, ExportConfig(), overwrite=True))
    per_session = []
    for _ in range(repeats):
        with OrtSession(onnx_dir, providers=["cpu"], threads=threads) as session:
            result = generate(session, prompt, steps + warmup + 1)
        per_session.append(1000 * statistics.median(result.decode_s[warmup:]))
    size = sum(f.stat().st_size for f in onnx_dir.iterdir() if f.is_file())
    return {"ms_per_token": statistics.median(per_session), "sessions": per_session, "steps": steps,
            "context": int(prompt.shape[1]), "threads": threads, "export_mb": size / 2**20}


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------


def gap_closed(fp: float, gptq: float, gptaq: float) -> float:
    """Fraction of GPTQ's perplexity gap to FP that GPTAQ closes."""
    return (gptq - gptaq) / (gptq - fp) if gptq > fp else math.nan


def read_results(out: Path) -> list[QualityResult]:
    results = []
    for path in sorted((out / "cases").glob("*.json")):
        d = json.loads(path.read_text())
        results.append(QualityResult(**d))
    return results


def _order(r: QualityResult) -> tuple:
    methods = list(METHODS) + list(GPTQMODEL_METHODS)
    return (r.scheme != "FP", -int(r.scheme.split()[0][1:]) if r.scheme != "FP" else 0, methods.index(r.method), r.setting)


def format_table(results: Sequence[QualityResult]) -> str:
    fp = next((r.ppl for r in results if r.method == "fp"), math.nan)
    lines = [f"FP perplexity: {fp:.3f}", "",
             "| scheme | method | setting | ppl | vs FP | quant s | solver s | peak MB (case +MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=_order):
        if r.method == "fp":
            continue
        solve = f"{r.solve_seconds:.1f}" if not math.isnan(r.solve_seconds) else "-"
        extra = f" (+{r.case_extra_mb:.0f})" if not math.isnan(r.case_extra_mb) else ""
        lines.append(f"| {r.scheme} | {r.method} | {r.setting} | {r.ppl:.3f} | {(r.ppl / fp - 1):+.1%} | "
                     f"{r.quant_seconds:.1f} | {solve} | {r.peak_host_mb:.0f}{extra} |")
    return "\n".join(lines)


def write_reports(out: Path, results: Sequence[QualityResult], meta: dict[str, Any]) -> None:
    rows = [asdict(r) for r in sorted(results, key=_order)]
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "extra"] + ["extra"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "extra": json.dumps(row["extra"], sort_keys=True)})
    _plot(out / "results.png", results)


def _plot(path: Path, results: Sequence[QualityResult]) -> None:
    """One horizontal bar chart per scheme: perplexity of every case, FP as a line (needs the
    ``bench`` extra, matplotlib; skipped with a warning without it)."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[tools]'); %s not written", path)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp = next((r.ppl for r in results if r.method == "fp"), None)
    schemes = sorted({r.scheme for r in results if r.method != "fp"}, key=lambda s: -int(s.split()[0][1:]))
    if not schemes:
        return
    by = {s: sorted((r for r in results if r.scheme == s), key=_order) for s in schemes}
    fig, axes = plt.subplots(len(schemes), 1, figsize=(9, 0.32 * sum(len(v) for v in by.values()) + 1.6 * len(schemes)),
                             squeeze=False)
    colors = {"rtn": "#999999", "gptq": "#4c72b0", "gptaq": "#dd8452", "gptqmodel-gptq": "#55a868", "gptqmodel-gptaq": "#8172b3"}
    for ax, scheme in zip(axes[:, 0], schemes):
        rows = by[scheme]
        labels = [f"{r.method} {r.setting}" for r in rows]
        ax.barh(range(len(rows)), [r.ppl for r in rows], color=[colors.get(r.method, "#333333") for r in rows])
        for i, r in enumerate(rows):
            ax.text(r.ppl, i, f" {r.ppl:.2f}", va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        if fp is not None:
            ax.axvline(fp, color="black", lw=0.8, ls="--", label=f"FP {fp:.2f}")
            ax.legend(fontsize=7, loc="lower right")
        low = min([r.ppl for r in rows] + ([fp] if fp else []))
        high = max(r.ppl for r in rows)
        ax.set_xlim(low * 0.9, high * 1.12)
        ax.set_title(f"{scheme}: held-out perplexity (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# entry
# ---------------------------------------------------------------------------------------


def _write_case(out: Path, result: QualityResult) -> None:
    path = out / "cases" / f"{result.key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2))
    tmp.replace(path)  # a killed run never leaves a half-written case


def _log_result(r: QualityResult) -> None:
    log.info("%-7s %-16s %-40s ppl %8.3f  quant %7.1f s  peak %6.0f MB", r.scheme, r.method, r.setting, r.ppl,
             r.quant_seconds, r.peak_host_mb)


def build_cases(args) -> list[QualityCase]:
    cases = [QualityCase("fp")] if "fp" in args.methods else []
    cases += grid_cases(args.schemes, args.methods, args.reorders, args.mse)
    cases += [parse_case(text) for text in args.case or []]
    if args.gptqmodel_python:
        cases += [QualityCase(m, *parse_scheme(s)) for s in args.gptqmodel_schemes for m in GPTQMODEL_METHODS]
    seen, unique = set(), []
    for c in cases:
        if c.key not in seen:
            seen.add(c.key)
            unique.append(c)
    return unique


def main(args) -> int:
    """Entry for ``python -m tools.bench quality``."""
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="quality_"))
    (out / "cases").mkdir(parents=True, exist_ok=True)
    cases = build_cases(args)
    meta = {"model": args.model or "SmolLM2-135M demo", "nsamples": args.nsamples, "seqlen": args.seqlen,
            "eval_seqlen": args.eval_seqlen, "eval_windows": args.eval_windows,
            "command": "python -m tools.bench " + shlex.join(getattr(args, "argv", sys.argv[1:]))}
    if not args.report_only:
        todo = [c for c in cases if not (out / "cases" / f"{c.key}.json").exists()]
        decode_keys = {c.key for c in cases if c.head_bits < 16} | {c.without_head().key for c in cases if c.head_bits < 16}
        if todo or args.decode:
            data = load_data(args.model, args.nsamples, args.seqlen, args.eval_seqlen, args.eval_windows)
            for case in todo:
                if case.method in GPTQMODEL_METHODS:
                    result = run_gptqmodel_case(data, case, args.gptqmodel_python, out / "gptqmodel")
                else:
                    save = out / "checkpoints" / case.key if args.decode and case.key in decode_keys else None
                    result = run_case(data, case, save)
                _write_case(out, result)
                _log_result(result)
                if args.decode:  # time each head pair as soon as both of its checkpoints exist
                    ready = [c for c in cases if c.head_bits < 16 and all(
                        (out / "checkpoints" / k).exists() for k in (c.key, c.without_head().key))]
                    _run_decode(out, data, ready, args)
            if args.decode:
                _run_decode(out, data, cases, args)
    results = read_results(out)
    if not results:
        raise UserError(f"no finished cases in {out / 'cases'}")
    write_reports(out, results, meta)
    print(format_table(results))
    decode = out / "decode.json"
    if decode.exists():
        print(format_decode(json.loads(decode.read_text())))
    if args.json:
        Path(args.json).write_text((out / "results.json").read_text())
    return 0


def _run_decode(out: Path, data: BenchData, cases: Sequence[QualityCase], args) -> None:
    """Decode ms/token of each head case and its float-head twin (checkpoints saved by their cases)."""
    path = out / "decode.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    prompt = data.calib[:1, : args.decode_context].numpy()
    for case in cases:
        if case.head_bits >= 16:
            continue
        for key in (case.without_head().key, case.key):
            ckpt = out / "checkpoints" / key
            if key in done:
                continue
            if not ckpt.exists():  # finished in an earlier run without --decode: redo it to get the checkpoint
                twin = case if key == case.key else case.without_head()
                _write_case(out, run_case(data, twin, ckpt))
            done[key] = decode_ms_per_token(ckpt, out / "onnx" / key, prompt, args.decode_steps, 4, args.decode_threads,
                                            args.decode_repeats)
            path.write_text(json.dumps(done, indent=2))
            log.info("decode %s: %.2f ms/token", key, done[key]["ms_per_token"])


def format_decode(done: dict[str, Any]) -> str:
    lines = ["", "| checkpoint | ORT CPU decode ms/token | export MB |", "|---|---|---|"]
    for key, d in done.items():
        lines.append(f"| {key} | {d['ms_per_token']:.2f} | {d['export_mb']:.0f} |")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="model to quantize (default: SmolLM2-135M demo)")
    parser.add_argument("--schemes", nargs="*", default=["w4g128", "w3g128"], help="grid schemes, e.g. w4g128 w3g128 w4 (per channel)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="grid methods (fp = the FP row)")
    parser.add_argument("--reorders", nargs="+", default=["none"], choices=["none", "act", "group"], help="grid column orders")
    parser.add_argument("--mse", nargs="+", default=["off"], choices=["off", "on"], help="grid MSE clip settings")
    parser.add_argument("--case", action="append", metavar="SPEC",
                        help="an extra case, e.g. 'gptaq w4g128 reorder=group mse_clip=1 head_bits=8' (repeatable)")
    parser.add_argument("--gptqmodel-python", metavar="PY", help="python of a venv with gptqmodel: adds its GPTQ and GPTAQ")
    parser.add_argument("--gptqmodel-schemes", nargs="+", default=["w4g128"])
    parser.add_argument("--decode", action="store_true", help="also time ORT CPU decode of each head case and its float-head twin")
    parser.add_argument("--decode-context", type=int, default=512, help="prompt tokens in the cache before timing")
    parser.add_argument("--decode-steps", type=int, default=32, help="decode steps timed (after 4 warm-up steps)")
    parser.add_argument("--decode-repeats", type=int, default=3, help="sessions per checkpoint; the median is kept")
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=10, help="held-out windows scored (default 10)")
    parser.add_argument("--out", metavar="DIR", help="results directory (resumable; default: a new temporary one)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the reports from OUT/cases")
    parser.add_argument("--json", metavar="FILE", help="also copy results.json there")
    parser.add_argument("-v", "--verbose", action="store_true")

"""``python -m tools pipeline``: quantize -> export -> build -> validate -> bench in one command.

    python -m tools pipeline                       # SmolLM2-135M demo, W4A16 GPTAQ g128, ONNX Runtime
    python -m tools pipeline MODEL --scheme w4a4 --out runs/x

Stages and outputs (under ``--out``):

    quantized/        quantize      (skipped for --scheme fp16)
    onnx/ onnx-fp/    export        candidate and FP baseline (fp32 for ORT, fp16 for TensorRT)
    build/ build-fp/  build         ORT-optimized models (MatMulNBits) or TensorRT plans
    validate/         validate      report.json: candidate vs the FP baseline on held-out text
    bench/            bench         bench.json, bench.csv, bench.png: latency vs the FP baseline
    pipeline.json     what each stage was run with (its fingerprint) and what it produced

A stage is skipped when its output is complete, its fingerprint (the stage's settings plus
the digests of its inputs) matches the one recorded in ``pipeline.json`` and the output has
not changed since; otherwise it is run again and so is everything downstream of it. Exit code:
the validate gate's (0 pass, 1 a threshold failed), 2 on bad input or error.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

if __name__ == "__main__" and not __package__:  # run as a script: python tools/pipeline.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from quantize.cli import EXIT_FAIL, EXIT_OK, ArgumentParser, run_cli, setup_logging  # noqa: E402
from quantize.config import METHODS, _JsonConfig  # noqa: E402
from quantize.errors import ConfigError, UserError  # noqa: E402

from tools.gates import THRESHOLDS, resolve_thresholds  # noqa: E402
from tools.stages import Stage, StageResult, State, run_stage  # noqa: E402

log = logging.getLogger("tools.pipeline")

DEMO = "smollm2-135m"
#: QuantConfig fields of each scheme (``group_size`` comes from the config where it applies).
#: W4A4 follows the rotation benchmark's setting: rotated, per-channel asymmetric weights with
#: MSE clip, per-token asymmetric 4-bit activations clipped at 0.9.
SCHEMES: dict[str, dict[str, Any] | None] = {
    "w4a16": {"w_bits": 4, "sym": True},
    "w3a16": {"w_bits": 3, "sym": True},
    "w4a4": {"w_bits": 4, "group_size": -1, "sym": False, "mse_clip": True, "a_bits": 4, "a_sym": False,
             "a_clip_ratio": 0.9, "rotate": True},
    "fp16": None,
}
SIMULATED_NOTE = ("W4A4 runs in ONNX Runtime as a simulation (activations quantized and dequantized with float ops, "
                  "no INT4-activation kernels exist in ORT or TensorRT): its accuracy is real, its latency is not INT4 "
                  "speed. The deployable form of the same rotated weights is W4A16 (python -m export QUANTIZED --a-bits 16).")


@dataclass(frozen=True)
class PipelineConfig(_JsonConfig):
    """The whole flow's settings (each stage's fingerprint is built from its part).

    Attributes:
        model: what :func:`quantize.loading.load_model` loads (``None`` = SmolLM2-135M demo).
        out: output directory.
        scheme / method / group_size: what to quantize to (``group_size`` for w4a16 / w3a16).
        backend: ``"ort"`` (ONNX Runtime) or ``"trt"`` (TensorRT plans; symmetric weight-only only).
        calib / nsamples / seqlen: calibration data (``None`` = embedded English text).
        eval_data / eval_seqlen / eval_limit: validation text and windows.
        thresholds: validate gates (names of :data:`tools.gates.THRESHOLDS`).
        max_seq_len: exported sequence limit.
        accuracy_level: ORT MatMulNBits accuracy level baked into the builds (``None``: ORT's, int8).
        prompt_lengths / cache_lengths / batch_sizes / warmup / iterations / memory: bench settings.
        threads: ONNX Runtime intra-op threads for validate and bench.
        device: where quantization runs (``None``: CUDA when available).
        seed: calibration and validation sampling seed.
    """

    model: str | None = None
    out: str = "runs/pipeline"
    scheme: str = "w4a16"
    method: str = "gptaq"
    group_size: int = 128
    backend: str = "ort"
    calib: str | None = None
    nsamples: int = 32
    seqlen: int = 512
    eval_data: str | None = None
    eval_seqlen: int = 512
    eval_limit: int | None = 8
    thresholds: dict[str, float] = field(default_factory=dict)
    max_seq_len: int = 2048
    accuracy_level: int | None = None
    prompt_lengths: tuple[int, ...] = (128, 512)
    cache_lengths: tuple[int, ...] = (128, 512)
    batch_sizes: tuple[int, ...] = (1,)
    warmup: int = 3
    iterations: int = 20
    memory: bool = True
    threads: int | None = None
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.scheme not in SCHEMES:
            raise ConfigError(owner, "scheme", self.scheme, f"one of {', '.join(SCHEMES)}")
        if self.method not in METHODS:
            raise ConfigError(owner, "method", self.method, f"one of {', '.join(METHODS)}")
        if self.backend not in ("ort", "trt"):
            raise ConfigError(owner, "backend", self.backend, "ort or trt")
        if self.backend == "trt" and self.scheme == "w4a4":
            raise ConfigError(owner, "scheme", self.scheme, "w4a16, w3a16 or fp16 for backend trt: TensorRT has no INT4 "
                              "activations and needs symmetric weights (run w4a4 on --backend ort, where it is simulated)")
        for name in ("prompt_lengths", "cache_lengths", "batch_sizes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.quant_config()  # validates bits / group size / method together

    def quant_config(self):
        """The :class:`~quantize.QuantConfig` of the scheme (``None`` for fp16)."""
        from quantize import QuantConfig

        fields = SCHEMES[self.scheme]
        if fields is None:
            return None
        return QuantConfig(method=self.method, **{"group_size": self.group_size, "seed": self.seed, **fields})

    @property
    def graph_dtype(self) -> str:
        return "fp16" if self.backend == "trt" else "fp32"


# ----------------------------------------------------------------------------- stages


def _onnx_large(path: Path) -> list[str]:
    return ["model.onnx"] + (["model.onnx.data"] if (path / "model.onnx.data").is_file() else [])


def _build_large(path: Path) -> list[str]:
    name = json.loads((path / "build.json").read_text()).get("model_file", "model.onnx") if (path / "build.json").is_file() else "model.onnx"
    return [name] + (["model.onnx.data"] if (path / "model.onnx.data").is_file() else [])


def _quantize_work(config: PipelineConfig, out: Path) -> Callable[[], None]:
    def work() -> None:
        from quantize import quantize_model, save_quantized
        from quantize.data import CalibConfig, calibration_tokens
        from quantize.loading import load_model

        loaded = load_model(config.model)
        if loaded.tokenizer is None:
            raise UserError(f"{config.model} has no tokenizer; the pipeline calibrates language models on text")
        calib = calibration_tokens(CalibConfig(config.calib, config.nsamples, config.seqlen, config.seed), loaded.tokenizer)
        quantize_model(loaded.model, calib, config.quant_config(), device=config.device, tokenizer=loaded.tokenizer)
        save_quantized(loaded.model, out, tokenizer=loaded.tokenizer, overwrite=True)

    return work


def _export_work(src: str, out: Path, dtype: str, config: PipelineConfig) -> Callable[[], None]:
    def work() -> None:
        from export import ExportConfig, export_onnx

        export_onnx(src, out, ExportConfig(target=config.backend, dtype=dtype, max_seq_len=config.max_seq_len),
                    overwrite=True)

    return work


def _build_work(src: Path, out: Path, config: PipelineConfig) -> Callable[[], None]:
    def work() -> None:
        from runtime import BuildConfig, build_engine

        level = config.accuracy_level if config.backend == "ort" else None
        build_engine(src, out, BuildConfig(backend=config.backend, accuracy_level=level), overwrite=True)

    return work


def _validate_work(config: PipelineConfig, reference: Path, candidate: Path, out: Path) -> Callable[[], None]:
    def work() -> None:
        from tools.validate import ValidateConfig, format_table, validate, write_report

        report = validate(ValidateConfig(reference=str(reference), candidate=str(candidate), task="lm",
                                         data=config.eval_data, seqlen=config.eval_seqlen, limit=config.eval_limit,
                                         seed=config.seed, threads=config.threads, thresholds=dict(config.thresholds)))
        log.info("validate:\n%s", format_table(report))
        write_report(report, out / "report.json")

    return work


def _bench_work(config: PipelineConfig, baseline: Path, candidate: Path, out: Path) -> Callable[[], None]:
    def work() -> None:
        from tools import bench_report
        from tools.latency_bench import LatencyConfig, run_latency

        base_label = "fp16" if config.graph_dtype == "fp16" else "fp32"
        artifacts = () if candidate == baseline else (f"{config.scheme}={candidate}",)
        report = run_latency(LatencyConfig(artifacts=artifacts, baseline=f"{base_label}={baseline}",
                                           prompt_lengths=config.prompt_lengths, cache_lengths=config.cache_lengths,
                                           batch_sizes=config.batch_sizes, warmup=config.warmup,
                                           iterations=config.iterations, threads=config.threads, memory=config.memory,
                                           seed=config.seed))
        bench_report.write_outputs(report, out)

    return work


def plan_stages(config: PipelineConfig) -> list[Stage]:
    """The stages in order, each wired to the digests of the outputs it reads."""
    out = Path(config.out)
    model = config.model or DEMO
    paths = {name: out / name for name in ("quantized", "onnx", "onnx-fp", "build", "build-fp", "validate", "bench")}
    stages: list[Stage] = []
    qc = config.quant_config()
    if qc is not None:
        stages.append(Stage("quantize", paths["quantized"],
                            {"model": model, "quant_config": qc.to_dict(), "calib": config.calib,
                             "nsamples": config.nsamples, "seqlen": config.seqlen, "device": config.device},
                            (), ("quant_config.json",), lambda p: ["model.safetensors"],
                            _quantize_work(config, paths["quantized"])))
    stages.append(Stage("export-fp", paths["onnx-fp"], {"model": model, "dtype": config.graph_dtype,
                                                         "target": config.backend, "max_seq_len": config.max_seq_len},
                        (), ("export.json",), _onnx_large, _export_work(model, paths["onnx-fp"], config.graph_dtype, config)))
    candidate_onnx = paths["onnx-fp"]
    if qc is not None or config.graph_dtype != "fp16":
        src = str(paths["quantized"]) if qc is not None else model
        dtype = config.graph_dtype if qc is not None else "fp16"
        candidate_onnx = paths["onnx"]
        stages.append(Stage("export", paths["onnx"], {"dtype": dtype, "target": config.backend,
                                                       "max_seq_len": config.max_seq_len, "model": model},
                            ("quantize",) if qc is not None else (),
                            ("export.json",), _onnx_large, _export_work(src, paths["onnx"], dtype, config)))
    build_settings = {"backend": config.backend, "accuracy_level": config.accuracy_level}
    stages.append(Stage("build-fp", paths["build-fp"], build_settings, ("export-fp",), ("build.json",), _build_large,
                        _build_work(paths["onnx-fp"], paths["build-fp"], config)))
    candidate_build, builds = paths["build-fp"], ("build-fp",)
    if candidate_onnx != paths["onnx-fp"]:
        builds = ("build-fp", "build")
        candidate_build = paths["build"]
        stages.append(Stage("build", paths["build"], build_settings, ("export",), ("build.json",), _build_large,
                            _build_work(candidate_onnx, paths["build"], config)))
    stages.append(Stage("validate", paths["validate"],
                        {"data": config.eval_data, "seqlen": config.eval_seqlen, "limit": config.eval_limit,
                         "seed": config.seed, "thresholds": config.thresholds}, builds, ("report.json",), lambda p: [],
                        _validate_work(config, paths["build-fp"], candidate_build, paths["validate"])))
    stages.append(Stage("bench", paths["bench"],
                        {k: getattr(config, k) for k in ("prompt_lengths", "cache_lengths", "batch_sizes", "warmup",
                                                          "iterations", "memory", "threads", "seed")},
                        builds, ("bench.json",), lambda p: ["bench.csv", "bench.png"],
                        _bench_work(config, paths["build-fp"], candidate_build, paths["bench"])))
    return stages


def run_pipeline(config: PipelineConfig) -> tuple[list[StageResult], int]:
    """Run (or skip) every stage; returns the stage results and the exit code (the gate's)."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if config.backend == "trt":
        from runtime import trt

        trt.probe_environment()  # no TensorRT or no GPU: refuse in one line before any work
    out.mkdir(parents=True, exist_ok=True)
    state = State(out, config)
    stages = plan_stages(config)
    by_name = {s.name: s for s in stages}
    results = []
    for stage in stages:
        stage.inputs = tuple(f"{d}:{by_name[d].digest()}" for d in stage.deps)
        results.append(run_stage(state, stage))
    report = json.loads((by_name["validate"].output / "report.json").read_text())
    return results, EXIT_OK if report["verdict"] == "pass" else EXIT_FAIL


# ----------------------------------------------------------------------------- summary


def format_summary(config: PipelineConfig, results: list[StageResult]) -> str:
    """Stage table, the validate checks, the bench speedups and every artifact path."""
    out = Path(config.out)
    lines = ["| stage | status | seconds | output |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.note if r.status == 'skipped' else f'{r.seconds:.1f}'} | {r.output} |"
              for r in results]
    report = json.loads((out / "validate" / "report.json").read_text())
    m = report["metrics"]
    lines += ["", f"quality (validate, {report['dataset']['windows']} x {report['dataset']['seqlen']}-token held-out windows, "
                  f"candidate vs FP baseline on {report['backend']}):",
              f"  perplexity FP {m['ppl_reference']:.3f} -> {config.scheme} {m['ppl_candidate']:.3f} "
              f"({m['ppl_increase_pct']:+.2f}%), next-token top-1 agreement {m['top1_agreement']:.4f}, "
              f"mean KL {m['kl']:.4f} nats; verdict {report['verdict'].upper()}"
              + ("" if report["thresholds"] else " (no thresholds given)")]
    bench = json.loads((out / "bench" / "bench.json").read_text())
    lines += ["", f"latency (bench, {bench['device']}; {bench['baseline_note']}):"]
    base = {r["shape"]: r for r in bench["results"] if r["artifact"] == bench["baseline"]}
    for r in bench["results"]:
        if r["artifact"] != bench["baseline"]:
            lines.append(f"  {r['shape']}: {bench['baseline']} {base[r['shape']]['median_ms']:.2f} ms, {r['artifact']} "
                         f"{r['median_ms']:.2f} ms (p90 {r['p90_ms']:.2f}), speedup {r['speedup']:.2f}x")
    sizes = {a["label"]: a["size_bytes"] / 2**20 for a in bench["artifacts"]}
    lines.append("  size on disk: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()))
    if config.scheme == "w4a4":
        lines += ["", SIMULATED_NOTE]
    lines += ["", "artifacts:"] + [f"  {r.name}: {r.output}" for r in results]
    lines += [f"  report: {out / 'validate' / 'report.json'}",
              f"  bench: {out / 'bench' / 'bench.json'}, {out / 'bench' / 'bench.csv'}, {out / 'bench' / 'bench.png'}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m tools pipeline") -> ArgumentParser:
    from tools.latency_cli import int_list

    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                       epilog="Exit codes: 0 pass, 1 the validate gate failed, 2 bad input or error.")
    p.add_argument("model", nargs="?", default=None, help="hub id, local dir, .gguf (default: the SmolLM2-135M demo)")
    p.add_argument("--out", default=None, help="output directory (default runs/MODEL-SCHEME-METHOD)")
    p.add_argument("--scheme", choices=tuple(SCHEMES), default="w4a16",
                   help="w4a16 / w3a16 (symmetric, groups), w4a4 (rotated, per-channel asym + MSE clip, A4 per token; "
                        "ORT simulation), fp16 (no quantization)")
    p.add_argument("--method", choices=METHODS, default="gptaq")
    p.add_argument("--group-size", type=int, default=128, help="w4a16 / w3a16 group size (default 128)")
    p.add_argument("--backend", choices=("ort", "trt"), default="ort")
    p.add_argument("--calib", default=None, help="calibration text (default: embedded English corpus)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length (default 512)")
    p.add_argument("--eval-data", default=None, help="validation text (default: the embedded held-out split)")
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--eval-limit", type=int, default=8, help="validation windows (default 8)")
    for spec in THRESHOLDS.values():
        if "lm" in spec.tasks:
            p.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, default=None, metavar="V", help=spec.help)
    p.add_argument("--gate", default=None, metavar="FILE", help="YAML / JSON thresholds for the validate stage")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--accuracy-level", type=int, choices=range(5), default=None,
                   help="ORT MatMulNBits accuracy level of the builds (default: ORT's, 4 = int8 activations)")
    p.add_argument("--prompt-lengths", type=int_list, default=(128, 512))
    p.add_argument("--cache-lengths", type=int_list, default=(128, 512))
    p.add_argument("--batch-sizes", type=int_list, default=(1,))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--no-memory", action="store_true", help="skip the bench's peak-memory runs")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="quantization device: cuda | cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args) -> PipelineConfig:
    thresholds = resolve_thresholds("lm", args.gate, {n: getattr(args, n, None) for n in THRESHOLDS})
    name = Path(args.model.rstrip("/")).name if args.model else DEMO
    out = args.out or f"runs/{name}-{args.scheme}" + ("" if args.scheme == "fp16" else f"-{args.method}")
    return PipelineConfig(model=args.model, out=out, scheme=args.scheme, method=args.method, group_size=args.group_size,
                          backend=args.backend, calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen,
                          eval_data=args.eval_data, eval_seqlen=args.eval_seqlen, eval_limit=args.eval_limit,
                          thresholds=thresholds, max_seq_len=args.max_seq_len, accuracy_level=args.accuracy_level,
                          prompt_lengths=args.prompt_lengths, cache_lengths=args.cache_lengths,
                          batch_sizes=args.batch_sizes, warmup=args.warmup, iterations=args.iterations,
                          memory=not args.no_memory, threads=args.threads, device=args.device, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not args.verbose:  # the exporter's graph rewriter logs every rule it tries at INFO
        for name in ("onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.WARNING)
    config = config_from_args(args)
    if args.print_config:
        print(config.to_json())
        return 0
    results, code = run_pipeline(config)
    print(format_summary(config, results))
    return code


if __name__ == "__main__":
    sys.exit(run_cli(main))

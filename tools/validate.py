"""``python -m tools validate``: accuracy gate of a candidate artifact against a reference.

    python -m tools validate --reference runs/fp-onnx --candidate runs/w4-ort --task lm \\
        --max-ppl-increase 3% --min-top1-agreement 0.9 --report report.json

Both artifacts may be any kind :mod:`tools.artifacts` opens (quantized checkpoint, FP model,
ONNX file, export / build directory, TensorRT plan). Exit codes: 0 every gate passed (or none
was given), 1 a metric is beyond its threshold, 2 bad input or error (one line on stderr;
``--verbose`` shows the traceback).

``--task lm``: the text (a file / folder, a ``datasets`` name, or the embedded held-out split of
:func:`quantize.data.default_corpus`) is tokenized as one stream and cut into non-overlapping
windows of ``--seqlen`` tokens; ``--limit N`` scores N of them, drawn with ``--seed`` (sorted,
so the same inputs give the same windows). Metrics: perplexity of both models (GPTQ protocol),
its increase in percent, next-token top-1 agreement and mean KL(reference || candidate).
``--task image``: a labelled image folder (``root/<class>/<image>``) or dataset; top-1 of both,
the drop in percentage points, class top-1 agreement and mean KL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

if __name__ == "__main__" and not __package__:  # run as a script: python tools/validate.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from quantize.cli import EXIT_FAIL, EXIT_OK, ArgumentParser, run_cli, setup_logging  # noqa: E402
from quantize.config import _JsonConfig  # noqa: E402
from quantize.errors import ConfigError, UserError  # noqa: E402

from tools.gates import THRESHOLDS, Check, GateResult, resolve_thresholds  # noqa: E402

log = logging.getLogger("tools.validate")

TASKS = ("lm", "image")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ValidateConfig(_JsonConfig):
    """What to compare, on what data, against which thresholds.

    Attributes:
        reference / candidate: artifact paths (see :mod:`tools.artifacts`).
        task: ``"lm"`` or ``"image"``.
        data: text file / folder / dataset name (lm; ``None`` = embedded held-out text) or
            image folder / dataset name (image, required).
        split: dataset split for dataset names.
        limit: score at most this many windows (lm) or images (image), drawn with ``seed``.
        seqlen: tokens per window (lm).
        seed: seed of the window / image sample.
        batch_size: windows or images per forward (``None``: 1 window, 32 images).
        backend: ``"torch"``, ``"ort"``, ``"trt"`` for the candidate (``None``: what it is).
        provider / threads / accuracy_level: ONNX Runtime session options for ONNX artifacts.
        thresholds: ``{name: limit}`` (names in :data:`tools.gates.THRESHOLDS`).
    """

    reference: str
    candidate: str
    task: str = "lm"
    data: str | None = None
    split: str = "test"
    limit: int | None = None
    seqlen: int = 2048
    seed: int = 0
    batch_size: int | None = None
    backend: str | None = None
    provider: str | None = None
    threads: int | None = None
    accuracy_level: int | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.task not in TASKS:
            raise ConfigError(owner, "task", self.task, f"one of {', '.join(TASKS)}")
        for name, low in (("limit", 1), ("batch_size", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(owner, name, value, f"null or an integer >= {low}")
        if isinstance(self.seqlen, bool) or not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise ConfigError(owner, "seqlen", self.seqlen, "an integer >= 2")
        unknown = sorted(set(self.thresholds) - set(THRESHOLDS))
        if unknown:
            raise ConfigError(owner, "thresholds", unknown[0], f"names among {', '.join(THRESHOLDS)}")


@dataclass
class Report:
    """Result of :func:`validate`: the gate verdict and everything ``report.json`` holds."""

    gate: GateResult
    data: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.gate else EXIT_FAIL


# ------------------------------------------------------------------------------------- data


def choose_windows(tokens, seqlen: int, limit: int | None, seed: int):
    """Non-overlapping windows ``[n, seqlen]`` (int64) of the stream; ``limit`` of them drawn with ``seed``."""
    import torch

    count = tokens.numel() // seqlen
    if count == 0:
        raise UserError(f"the evaluation text has {tokens.numel()} tokens, fewer than one window of --seqlen {seqlen}")
    windows = tokens[: count * seqlen].view(count, seqlen)
    if limit is not None and limit < count:
        pick = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        windows = windows[pick]
    return windows.contiguous()


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def _batches(n: int, size: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(range(0, n, size), desc=desc, unit="batch", disable=None, leave=False)


# ------------------------------------------------------------------------------------- tasks


def _lm_tokenizer(ref, cand):
    """The shared tokenizer; a candidate whose tokenizer differs from the reference's is refused."""
    from tools.artifacts import tokenizer_fingerprint

    fr, fc = tokenizer_fingerprint(ref.tokenizer), tokenizer_fingerprint(cand.tokenizer)
    if fr and fc and fr != fc:
        raise UserError(f"the tokenizers differ: {cand.info.path} and {ref.info.path} map text to different token ids; "
                        "compare artifacts of the same model")
    if ref.vocab_size and cand.vocab_size and ref.vocab_size != cand.vocab_size:
        raise UserError(f"vocabulary sizes differ: reference {ref.vocab_size}, candidate {cand.vocab_size}")
    tokenizer = ref.tokenizer or cand.tokenizer
    if tokenizer is None:
        raise UserError("neither artifact carries a tokenizer; validate a checkpoint, FP model or export directory "
                        "(export saves the tokenizer next to model.onnx)")
    return tokenizer, fr or fc


def _run_lm(config: ValidateConfig, ref, cand) -> tuple[list[Check], dict[str, Any]]:
    from quantize.data import eval_tokens
    from tools.metrics import LMAccumulator

    tokenizer, tok_fp = _lm_tokenizer(ref, cand)
    for art in (ref, cand):
        limit = getattr(art, "max_seq_len", None)
        if limit and config.seqlen > limit:
            raise UserError(f"--seqlen {config.seqlen} exceeds {art.info.path}'s max_seq_len {limit}")
    tokens = eval_tokens(config.data, tokenizer, config.split)
    vocab = ref.vocab_size or cand.vocab_size
    if vocab and tokens.numel() and int(tokens.max()) >= vocab:
        raise UserError(f"token id {int(tokens.max())} >= the vocabulary size {vocab}: the tokenizer does not match the model")
    windows = choose_windows(tokens, config.seqlen, config.limit, config.seed)
    acc = LMAccumulator()
    size = config.batch_size or 1
    for start in _batches(windows.shape[0], size, "validate"):
        ids = windows[start:start + size].numpy()
        r, c = ref.lm_logits(ids), cand.lm_logits(ids)
        if r.shape != c.shape:
            raise UserError(f"output shapes differ: reference logits {list(r.shape)}, candidate {list(c.shape)}")
        acc.add(ids, r, c)
    m = acc.result()
    checks = [
        Check("perplexity", m["ppl_reference"], m["ppl_candidate"], m["ppl_increase_pct"], m["ppl_increase_pct"],
              *_gate(config, "max_ppl_increase")),
        Check("top-1 agreement", None, m["top1_agreement"], None, m["top1_agreement"], *_gate(config, "min_top1_agreement")),
        Check("mean KL (nats)", None, m["kl"], None, m["kl"], *_gate(config, "max_kl")),
    ]
    data = {"source": config.data or "embedded held-out text (quantize.data.default_corpus('evaluation'))",
            "split": config.split if config.data else "evaluation", "stream_tokens": int(tokens.numel()),
            "windows": int(windows.shape[0]), "seqlen": config.seqlen, "seed": config.seed, "limit": config.limit,
            "scored_tokens": acc.positions, "fingerprint": _digest(windows), "tokenizer_fingerprint": tok_fp}
    return checks, {"metrics": m, "dataset": data}


def _run_image(config: ValidateConfig, ref, cand) -> tuple[list[Check], dict[str, Any]]:
    import torch

    from quantize.data import load_images
    from tools.metrics import ImageAccumulator

    if config.data is None:
        raise UserError("--task image needs --data: an image folder (root/<class>/<image>) or a datasets name")
    transform = ref.image_transform() or cand.image_transform()
    if transform is None:
        raise UserError("the image preprocessing of neither artifact is known; pass the FP model (or its checkpoint) as --reference")
    images, labels = load_images(config.data, transform, config.limit, config.seed, split=config.split)
    acc = ImageAccumulator()
    size = config.batch_size or 32
    for start in _batches(images.shape[0], size, "validate"):
        x = images[start:start + size].numpy()
        r, c = ref.image_logits(x), cand.image_logits(x)
        if r.shape != c.shape:
            raise UserError(f"output shapes differ: reference logits {list(r.shape)}, candidate {list(c.shape)}")
        if int(labels.max()) >= r.shape[-1]:
            raise UserError(f"{config.data} has {int(labels.max()) + 1} classes but the models predict {r.shape[-1]}")
        acc.add(labels[start:start + size], r, c)
    m = acc.result()
    checks = [
        Check("top-1", m["top1_reference"], m["top1_candidate"], -m["top1_drop_pts"], m["top1_drop_pts"],
              *_gate(config, "max_top1_drop")),
        Check("top-1 agreement", None, m["top1_agreement"], None, m["top1_agreement"], *_gate(config, "min_top1_agreement")),
        Check("mean KL (nats)", None, m["kl"], None, m["kl"], *_gate(config, "max_kl")),
    ]
    data = {"source": config.data, "split": config.split, "images": int(images.shape[0]),
            "classes": int(labels.max()) + 1, "image_shape": list(images.shape[1:]), "seed": config.seed,
            "limit": config.limit, "fingerprint": _digest(images.to(torch.float32), labels)}
    return checks, {"metrics": m, "dataset": data}


def _gate(config: ValidateConfig, name: str) -> tuple[str | None, float | None]:
    return (name, config.thresholds[name]) if name in config.thresholds else (None, None)


# ------------------------------------------------------------------------------------- entry


def validate(config: ValidateConfig) -> Report:
    """Run both artifacts on the task's data and gate the candidate; raises ``UserError`` on bad input."""
    from tools.artifacts import classify, open_artifact
    from tools.environment import versions

    start = time.perf_counter()
    classify(config.reference), classify(config.candidate)  # a missing path fails before anything loads
    with open_artifact(config.reference, provider=config.provider, threads=config.threads) as ref, \
            open_artifact(config.candidate, backend=config.backend, provider=config.provider, threads=config.threads,
                          accuracy_level=config.accuracy_level) as cand:
        for role, art in (("reference", ref), ("candidate", cand)):
            if art.info.task != config.task:
                raise UserError(f"the {role} {art.info.path} is a{'n image' if art.info.task == 'image' else ' language'} "
                                f"model, not --task {config.task}")
        checks, facts = (_run_lm if config.task == "lm" else _run_image)(config, ref, cand)
        artifacts = {"reference": ref.info.to_dict(), "candidate": cand.info.to_dict()}
    gate = GateResult(tuple(checks))
    data = {
        "schema_version": SCHEMA_VERSION,
        "tool": "validate",
        "task": config.task,
        "verdict": gate.verdict,
        "exit_code": EXIT_OK if gate else EXIT_FAIL,
        "checks": [_check_json(c) for c in checks],
        "thresholds": dict(config.thresholds),
        **facts,
        **artifacts,
        "backend": artifacts["candidate"]["backend"],
        "config": config.to_dict(),
        "versions": versions(),
        "elapsed_s": round(time.perf_counter() - start, 3),
    }
    return Report(gate, data)


def _check_json(c: Check) -> dict[str, Any]:
    return {"metric": c.metric, "reference": c.reference, "candidate": c.candidate, "delta": c.delta,
            "value": c.value, "threshold": c.threshold, "limit": c.limit,
            "op": THRESHOLDS[c.threshold].op if c.threshold else None, "passed": c.passed}


def format_table(report: Report) -> str:
    """The printed summary: one row per metric, then the verdict."""
    def num(v, fmt="{:.4f}"):
        return "-" if v is None else fmt.format(v)

    rows = [("metric", "reference", "candidate", "delta", "threshold", "result")]
    for c in report.gate.checks:
        spec = THRESHOLDS.get(c.threshold) if c.threshold else None
        delta = num(c.delta, "{:+.2f}%" if c.metric == "perplexity" else "{:+.2f} pts")
        limit = "-"
        if spec is not None:
            unit = "%" if spec.unit == "%" else " pts" if spec.unit == "points" else ""
            limit = f"{'<=' if spec.op == 'max' else '>='} {c.limit:g}{unit}"
        result = "-" if c.passed is None else "PASS" if c.passed else "FAIL"
        fmt = "{:.2%}" if c.metric == "top-1" else "{:.4f}"
        rows.append((c.metric, num(c.reference, fmt), num(c.candidate, fmt), delta, limit, result))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    gated = [c for c in report.gate.checks if c.passed is not None]
    failed = report.gate.failed
    if not gated:
        verdict = "verdict: PASS (no thresholds given; metrics reported only)"
    elif failed:
        verdict = f"verdict: FAIL ({len(failed)} of {len(gated)} gates failed: {', '.join(c.metric for c in failed)})"
    else:
        verdict = f"verdict: PASS ({len(gated)} gates)"
    return "\n".join(lines + [verdict])


def write_report(report: Report, path: str | Path) -> Path:
    """``report.json`` written through a temporary file and a rename (never half-written)."""
    from quantize.atomic import write_bytes

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(p, (json.dumps(report.data, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())
    return p


# ------------------------------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m tools validate") -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                       epilog="Exit codes: 0 pass, 1 accuracy below a threshold, 2 bad input or error.")
    p.add_argument("--reference", required=True, help="FP model / checkpoint / ONNX / export dir / build dir / plan")
    p.add_argument("--candidate", required=True, help="artifact to gate (same kinds)")
    p.add_argument("--task", default="lm", help="lm (perplexity, next-token agreement, KL) or image (top-1)")
    p.add_argument("--data", default=None, help="lm: text file/folder or dataset name (default: embedded held-out text); "
                                                "image: image folder root/<class>/<image> or dataset name")
    p.add_argument("--split", default="test", help="dataset split for dataset names (default test)")
    p.add_argument("--limit", type=int, default=None, help="score N windows (lm) or images, seeded sample")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="windows / images per forward (default 1 / 32)")
    g = p.add_argument_group("thresholds (also in --gate FILE; flags override it)")
    for spec in THRESHOLDS.values():
        g.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, default=None, metavar="V", help=spec.help)
    g.add_argument("--gate", default=None, metavar="FILE", help="YAML or JSON mapping of thresholds")
    p.add_argument("--report", default=None, metavar="FILE", help="write report.json here")
    p.add_argument("--backend", choices=("ort", "trt", "torch"), default=None,
                   help="how the candidate runs (default: what the artifact is)")
    p.add_argument("--provider", default=None, help="ONNX Runtime provider: cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--accuracy-level", type=int, choices=range(5), default=None,
                   help="ORT MatMulNBits accuracy level for an export fused at load (1 fp32, 4 int8)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args) -> ValidateConfig:
    if args.task not in TASKS:
        raise UserError(f"unknown --task {args.task!r}: expected lm or image")
    flags = {name: getattr(args, name) for name in THRESHOLDS}
    thresholds = resolve_thresholds(args.task, args.gate, flags)
    return ValidateConfig(reference=args.reference, candidate=args.candidate, task=args.task, data=args.data,
                          split=args.split, limit=args.limit, seqlen=args.seqlen, seed=args.seed,
                          batch_size=args.batch_size, backend=args.backend, provider=args.provider,
                          threads=args.threads, accuracy_level=args.accuracy_level, thresholds=thresholds)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    report = validate(config_from_args(args))
    print(format_table(report))
    if args.report:
        print(f"report: {write_report(report, args.report)}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(run_cli(main))

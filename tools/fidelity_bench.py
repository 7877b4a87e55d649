"""Export fidelity: the ONNX Runtime model against the PyTorch fake-quant model it was exported from.

LLM (``--checkpoint DIR``): a quantized checkpoint (``python -m quantize``) and its export
(``--export DIR``; exported now when the directory does not exist). Both score the same
held-out windows of real text (the embedded corpus' held-out articles, GPTQ protocol); per
window the relative logit error ``||L_ort - L_torch||_F / ||L_torch||_F``, the next-token top-1
agreement over every position, and each side's perplexity.

``--noise-floor REL`` also scores the PyTorch model against itself with its token embeddings
multiplied by ``1 + REL * (+-1)`` (a fixed random sign per element; ``REL`` about one fp32 ulp).
That is the sensitivity of the scheme itself: an export whose errors are no larger than this
floor differs from PyTorch only by float rounding order. W4A16 is well conditioned (the floor is
around float rounding); W4A4 quantizes every activation to 16 levels per token, so last-bit
input changes flip codes and compound over the layers.

For the ViT the same comparison is ``python -m tools.bench vit --onnx`` (ORT top-1 and top-1
agreement beside each PyTorch result).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from quantize.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowComparison:
    """One window scored by both sides: errors of ORT's logits against PyTorch's."""

    rel_error: float  # ||ort - torch||_F / ||torch||_F over the window's [S, V] logits
    agree: int  # positions whose argmax agrees
    positions: int
    nll_torch: float  # mean next-token NLL over positions 1..S-1
    nll_ort: float


def compare_window(torch_logits: np.ndarray, ort_logits: np.ndarray, ids: np.ndarray) -> WindowComparison:
    """Compare ``[S, V]`` logits of both sides on the window ``ids [S]`` (agreement over all S positions)."""
    from .metrics import argmax_agreement, window_nll

    ref, cand = np.asarray(torch_logits, np.float32), np.asarray(ort_logits, np.float32)
    if ref.shape != cand.shape:
        raise UserError(f"ORT logits {list(cand.shape)} and PyTorch logits {list(ref.shape)} differ in shape")
    rel = float(np.linalg.norm(cand - ref) / max(np.linalg.norm(ref), 1e-30))
    agree = int(argmax_agreement(ref, cand).sum())
    nll = window_nll(np.stack([ref, cand]), np.stack([ids, ids]))
    return WindowComparison(rel, agree, ref.shape[0], float(nll[0]), float(nll[1]))


def summarize(windows: Sequence[WindowComparison]) -> dict[str, float]:
    """Aggregate per-window comparisons: mean/max relative error, top-1 agreement, both perplexities."""
    if not windows:
        raise UserError("no windows were compared")
    ppl_torch = math.exp(float(np.mean([w.nll_torch for w in windows])))
    ppl_ort = math.exp(float(np.mean([w.nll_ort for w in windows])))
    return {
        "windows": len(windows),
        "rel_logit_error_mean": float(np.mean([w.rel_error for w in windows])),
        "rel_logit_error_max": float(max(w.rel_error for w in windows)),
        "top1_agreement": sum(w.agree for w in windows) / sum(w.positions for w in windows),
        "ppl_torch": ppl_torch,
        "ppl_ort": ppl_ort,
        "ppl_rel_diff": ppl_ort / ppl_torch - 1.0,
    }


@contextmanager
def perturbed_embeddings(model, rel: float, seed: int = 0) -> Iterator[None]:
    """Within the block, ``model``'s token embeddings come out as ``e * (1 + rel * s)``.

    ``s`` is a fixed random sign per element (``torch.Generator`` seeded with ``seed`` per
    forward, so every window gets the same pattern for the same shape).
    """
    import torch

    def hook(_module, _inputs, output):
        gen = torch.Generator(device=output.device).manual_seed(seed)
        sign = torch.randint(0, 2, output.shape, generator=gen, device=output.device).to(output.dtype) * 2 - 1
        return output * (1 + rel * sign)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _ensure_export(checkpoint: Path, export_dir: Path) -> dict[str, Any]:
    """Export ``checkpoint`` to ``export_dir`` unless it already holds an export; returns export.json."""
    if not (export_dir / "model.onnx").is_file():
        from export import ExportConfig, export_onnx

        log.info("exporting %s to %s", checkpoint, export_dir)
        export_onnx(str(checkpoint), export_dir, ExportConfig())
    return json.loads((export_dir / "export.json").read_text())


def llm_fidelity(checkpoint: Path, export_dir: Path, *, accuracy_level: int, eval_seqlen: int,
                 eval_windows: int, optimized_dump: Path | None = None,
                 noise_floor: float | None = None) -> dict[str, Any]:
    """PyTorch fake-quant vs ORT on held-out windows; see the module docstring.

    With ``noise_floor`` the result also holds ``"noise_floor"``: the same summary of PyTorch
    against PyTorch with perturbed embeddings (:func:`perturbed_embeddings`).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from quantize import load_quantized
    from quantize.data import eval_tokens
    from runtime.generate import sequence_logits
    from runtime.ort import OrtSession

    meta = _ensure_export(checkpoint, export_dir)
    model = load_quantized(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokens = eval_tokens(None, tokenizer)
    nwin = min(eval_windows, tokens.numel() // eval_seqlen)
    windows = tokens[: nwin * eval_seqlen].view(nwin, eval_seqlen)
    session = OrtSession(export_dir / "model.onnx", accuracy_level=accuracy_level,
                         optimized_model_path=optimized_dump)
    results, floor = [], []
    with session, torch.no_grad():
        for ids in tqdm(windows, desc="windows", unit="window"):
            ref = model(input_ids=ids[None], use_cache=False).logits[0].float().numpy()
            cand = sequence_logits(session, ids[None].numpy())[0]
            results.append(compare_window(ref, cand, ids.numpy()))
            if noise_floor is not None:
                with perturbed_embeddings(model, noise_floor):
                    jitter = model(input_ids=ids[None], use_cache=False).logits[0].float().numpy()
                floor.append(compare_window(ref, jitter, ids.numpy()))
    summary = summarize(results)
    scheme = meta.get("scheme")
    row = {"checkpoint": str(checkpoint), "export": str(export_dir),
           "scheme": scheme.get("name") if isinstance(scheme, dict) else scheme,
           "accuracy_level": accuracy_level, "eval_seqlen": eval_seqlen, **summary,
           "onnx_mb": _onnx_megabytes(export_dir)}
    if noise_floor is not None:
        row["noise_floor"] = {"rel_perturbation": noise_floor, **summarize(floor)}
    return row


def _onnx_megabytes(export_dir: Path) -> float:
    """Size of ``model.onnx`` plus any external-data files beside it."""
    files = [p for p in export_dir.iterdir() if p.is_file() and (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx_data"))]
    return sum(p.stat().st_size for p in files) / 1e6


def fused_op_counts(optimized: Path) -> dict[str, int]:
    """Counts of the ops that show ORT's INT4 fusion in an optimized-model dump."""
    import onnx

    proto = onnx.load(str(optimized), load_external_data=False)
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in ("MatMulNBits", "DequantizeLinear", "MatMul"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def format_llm(row: dict[str, Any]) -> str:
    return (f"{row['scheme']} (accuracy_level {row['accuracy_level']}, {row['windows']} x {row['eval_seqlen']} tokens): "
            f"rel. logit error mean {row['rel_logit_error_mean']:.2e} max {row['rel_logit_error_max']:.2e}; "
            f"top-1 agreement {100 * row['top1_agreement']:.2f} %; ppl PyTorch {row['ppl_torch']:.3f} "
            f"ORT {row['ppl_ort']:.3f} ({100 * row['ppl_rel_diff']:+.3f} %); model.onnx {row['onnx_mb']:.0f} MB"
            + (format_floor(row["noise_floor"]) if "noise_floor" in row else ""))


def format_floor(floor: dict[str, Any]) -> str:
    return (f"\nnoise floor, PyTorch vs PyTorch with embeddings x (1 +- {floor['rel_perturbation']:.1e}): "
            f"rel. logit error mean {floor['rel_logit_error_mean']:.2e} max {floor['rel_logit_error_max']:.2e}; "
            f"top-1 agreement {100 * floor['top1_agreement']:.2f} %; ppl {floor['ppl_ort']:.3f} "
            f"({100 * floor['ppl_rel_diff']:+.3f} %)")


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="quantized LLM checkpoint directory (python -m quantize --out)")
    parser.add_argument("--export", type=Path, help="export directory of --checkpoint (default: CHECKPOINT-onnx; "
                        "exported now when absent)")
    parser.add_argument("--accuracy-level", type=int, default=1, choices=range(0, 5),
                        help="ORT MatMulNBits accuracy level (default 1: fp32 compute)")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=10)
    parser.add_argument("--dump-optimized", type=Path, metavar="FILE",
                        help="LLM: also save ORT's optimized graph here and count its MatMulNBits nodes")
    parser.add_argument("--noise-floor", type=float, metavar="REL",
                        help="also score PyTorch against itself with embeddings x (1 +- REL), e.g. 1.2e-7 "
                             "(one fp32 ulp): the scheme's own sensitivity to float rounding")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true")


def main(args) -> int:
    """Entry for ``python -m tools.bench fidelity``."""
    start = time.perf_counter()
    if not (args.checkpoint / "quant_config.json").is_file():
        raise UserError(f"{args.checkpoint} is not a quantized checkpoint (no quant_config.json)")
    if args.eval_seqlen < 2 or args.eval_windows < 1:
        raise UserError("--eval-seqlen must be >= 2 and --eval-windows >= 1")
    if args.noise_floor is not None and not (0 < args.noise_floor < 1):
        raise UserError(f"--noise-floor {args.noise_floor} is invalid: expected a relative size in (0, 1), e.g. 1.2e-7")
    export_dir = args.export or args.checkpoint.with_name(args.checkpoint.name + "-onnx")
    row = llm_fidelity(args.checkpoint, export_dir, accuracy_level=args.accuracy_level,
                       eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows,
                       optimized_dump=args.dump_optimized, noise_floor=args.noise_floor)
    if args.dump_optimized:
        row["optimized_ops"] = fused_op_counts(args.dump_optimized)
        print(format_llm(row) + f"\nORT-optimized graph ({args.dump_optimized}): {row['optimized_ops']}")
    else:
        print(format_llm(row))
    report = {"llm": row, "seconds": time.perf_counter() - start}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


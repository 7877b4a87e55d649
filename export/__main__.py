"""``python -m export SRC --out DIR``: write a (quantized) model as ONNX with INT4 DequantizeLinear blocks.

SRC is a quantized checkpoint directory (``python -m quantize``), or an FP model (hub id,
transformers directory, .gguf file, ``timm:NAME``) for a baseline. DIR receives
``model.onnx`` (+ ``model.onnx.data`` above 2 GB), ``export.json`` and the tokenizer files.
Schemes the target cannot run are refused before any work (e.g. W4A4 or asymmetric weights
for ``--target trt``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Sequence

from quantize.cli import ArgumentParser, run_cli, setup_logging

from .config import DTYPES, GRAPHS, MIN_OPSET, TARGETS, ExportConfig

log = logging.getLogger("export")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0],
                       epilog="Exit codes: 0 success, 2 bad input or error.")
    p.add_argument("src", help="quantized checkpoint directory, or an FP model (hub id, directory, .gguf, timm:NAME)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--target", choices=TARGETS, default="ort", help="ort (ONNX Runtime, every scheme) or trt (TensorRT: FP and symmetric weight-only)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="graph float type (default fp32 for ort, fp16 for trt)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (default {MIN_OPSET}; INT4 needs >= 21)")
    p.add_argument("--no-kv-cache", action="store_true", help="LLMs: export input_ids, attention_mask -> logits only")
    p.add_argument("--max-seq-len", type=int, default=2048, help="longest sequence the artifact is meant for (recorded for runtimes)")
    p.add_argument("--a-bits", type=int, default=None, choices=[16],
                   help="16: drop the model's activation quantizers (deploy W4A4 weights as W4A16)")
    p.add_argument("--graph", choices=GRAPHS, default="auto",
                   help="LLMs: fused (ONNX Runtime GroupQueryAttention layout, fast decode), generic (traced; "
                        "ORT and TensorRT) or auto (fused for --target ort when the model qualifies)")
    p.add_argument("--share-embedding", action="store_true",
                   help="fused graph, tied model with an INT4 head: the embedding reads the head's INT4 table (stored once)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args) -> ExportConfig:
    dtype = args.dtype or ("fp16" if args.target == "trt" else "fp32")
    return ExportConfig(target=args.target, dtype=dtype, opset=args.opset, kv_cache=not args.no_kv_cache,
                        max_seq_len=args.max_seq_len, a_bits=args.a_bits, graph=args.graph,
                        share_embedding=args.share_embedding)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = config_from_args(args)
    if args.print_config:
        print(config.to_json())
        return 0
    from .to_onnx import export_onnx

    start = time.perf_counter()
    out = export_onnx(args.src, args.out, config, overwrite=args.overwrite)
    print(f"exported {args.src} -> {out / 'model.onnx'} ({config.target}, {config.dtype}, opset {config.opset}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

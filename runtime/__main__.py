"""``python -m runtime COMMAND``: build and run exported models.

Commands:
    build SRC --backend ort|trt --out DIR [--profile NAME=MIN:OPT:MAX ...]
          [--timing-cache FILE] [--workspace-gb N]        TensorRT plan or ORT-optimized model + build.json
    generate DIR --prompt TEXT [--max-new-tokens N]   greedy generation with the KV cache
    info DIR                                          inputs and outputs of the model

SRC is an export directory (``model.onnx`` + ``export.json`` + tokenizer files) or a ``.onnx``
file; DIR for generate/info may also be a build directory or a ``model.plan`` (its
``build.json`` picks the backend). Exit codes: 0 success, 2 bad input or error (one line on
stderr).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from quantize.cli import ArgumentParser, run_cli, setup_logging
from quantize.errors import UserError

from .build import BACKENDS, BUILD_JSON, ORT_OPTIMIZATION, ORT_PROVIDERS, BuildConfig, build_engine
from .profiles import parse_profile

log = logging.getLogger("runtime")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m runtime", description=__doc__.split("\n\n")[0],
                       epilog="Exit codes: 0 success, 2 bad input or error.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def common(sp):
        sp.add_argument("model", help="export directory, build directory, model.onnx or model.plan")
        sp.add_argument("--backend", choices=BACKENDS, default=None, help="ort | trt (default: what the artifact is)")
        sp.add_argument("--provider", default=None, help="cpu | cuda | an ORT provider name (default: cuda when available, else cpu)")
        sp.add_argument("--threads", type=int, default=None, help="intra-op threads")
        sp.add_argument("-v", "--verbose", action="store_true")

    g = sub.add_parser("generate", help="greedy generation from a prompt")
    common(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text prompt (tokenized with the tokenizer saved by export)")
    src.add_argument("--ids", help="space-separated token ids instead of a prompt")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the export's, then the checkpoint's)")
    g.add_argument("--accuracy-level", type=int, default=None, choices=range(5),
                   help="ORT MatMulNBits accuracy level: 1 = fp32 (faithful), 4 = int8 activations (fast)")
    i = sub.add_parser("info", help="print the model's inputs and outputs")
    common(i)
    _build_parser(sub)
    return p


def _build_parser(sub) -> None:
    b = sub.add_parser("build", help="build a TensorRT plan or an ORT-optimized model (+ build.json)",
                       description="Build SRC (an export directory or model.onnx) into --out: model.plan (TensorRT) or "
                                   "the ORT-optimized model.onnx, with build.json, export.json and the tokenizer files.")
    b.add_argument("src", help="export directory or model.onnx")
    b.add_argument("--out", required=True, help="output build directory")
    b.add_argument("--backend", choices=BACKENDS, default="ort", help="ort (default; no GPU needed) or trt (TensorRT plan)")
    b.add_argument("--provider", choices=ORT_PROVIDERS, default=None, help="ORT: cpu | cuda (default: cuda when available)")
    b.add_argument("--profile", action="append", default=[], metavar="NAME=MIN:OPT:MAX",
                   help="range of a dynamic dimension (batch, sequence, past, total or a graph dim name); repeatable. "
                        "Defaults from export.json: batch=1:1:4, sequence=1:128:MAX_SEQ_LEN, past=0:128:MAX_SEQ_LEN-1")
    b.add_argument("--timing-cache", default=None, metavar="FILE", help="TensorRT timing cache, read and updated")
    b.add_argument("--workspace-gb", type=float, default=None, help="TensorRT workspace limit in GiB")
    b.add_argument("--optimization-level", type=int, default=None, help="TensorRT builder optimization level 0..5")
    typing = b.add_mutually_exclusive_group()
    typing.add_argument("--strongly-typed", dest="strongly_typed", action="store_const", const=True, default=None,
                        help="TensorRT 10: strongly typed network (default for fp16 graphs; always on TensorRT 11)")
    typing.add_argument("--weakly-typed", dest="strongly_typed", action="store_const", const=False,
                        help="TensorRT 10: weakly typed network (default for fp32 graphs)")
    b.add_argument("--no-fp16", action="store_true", help="TensorRT 10, weakly typed fp32 graph: no BuilderFlag.FP16")
    b.add_argument("--ort-optimization", choices=ORT_OPTIMIZATION, default="extended",
                   help="ORT optimization level saved into the model (default extended: portable)")
    b.add_argument("--accuracy-level", type=int, default=None, choices=range(5),
                   help="ORT MatMulNBits accuracy level baked into the fused nodes: 1 = fp32 (faithful), 4 = int8 (fast)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    b.add_argument("--print-config", action="store_true", help="print the resolved BuildConfig and exit")
    b.add_argument("-v", "--verbose", action="store_true")


def build_config_from_args(args) -> BuildConfig:
    return BuildConfig(backend=args.backend, provider=args.provider,
                       profile=tuple(parse_profile(text) for text in args.profile), workspace_gb=args.workspace_gb,
                       timing_cache=args.timing_cache, strongly_typed=args.strongly_typed, fp16=not args.no_fp16,
                       optimization_level=args.optimization_level, ort_optimization=args.ort_optimization,
                       accuracy_level=args.accuracy_level)


def _build(args) -> int:
    config = build_config_from_args(args)
    if args.print_config:
        print(config.to_json())
        return 0
    out = build_engine(args.src, args.out, config, overwrite=args.overwrite)
    meta = json.loads((out / BUILD_JSON).read_text())
    print(f"built {args.src} -> {out / meta['model_file']} ({config.backend}) in {meta['build_seconds']:.1f} s")
    return 0


def _generate(args) -> int:
    from .generate import generate, load_tokenizer, read_export_meta
    from .load import open_session, resolve_artifact

    artifact = resolve_artifact(args.model)
    directory = artifact.directory
    meta = read_export_meta(directory)
    if meta and meta.get("task") not in (None, "causal-lm"):
        raise UserError(f"{artifact.model_file} is a {meta['task']} model; generate needs a causal LM export")
    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} is invalid: expected >= 0")
    tokenizer = None
    if args.prompt is not None:
        tokenizer = load_tokenizer(directory, meta, args.tokenizer)
        ids = [tokenizer(args.prompt, add_special_tokens=True)["input_ids"]]
        if not ids[0]:
            raise UserError("the prompt tokenized to no tokens")
    else:
        try:
            ids = [[int(t) for t in args.ids.replace(",", " ").split()]]
        except ValueError:
            raise UserError(f"--ids {args.ids!r} must be integers separated by spaces") from None
        vocab = meta.get("vocab_size")
        if not ids[0] or (vocab and any(not 0 <= t < vocab for t in ids[0])):
            raise UserError(f"--ids must be a non-empty list of token ids in 0..{(vocab or 1) - 1}")
    eos = meta.get("eos_token_id") or (getattr(tokenizer, "eos_token_id", None) if tokenizer else None)
    with open_session(args.model, backend=args.backend, provider=args.provider, threads=args.threads,
                      accuracy_level=args.accuracy_level) as session:
        result = generate(session, ids, args.max_new_tokens, eos_token_id=eos, max_seq_len=meta.get("max_seq_len"))
    new = result.new_tokens[0].tolist()
    if tokenizer is not None:
        print(tokenizer.decode(result.tokens[0].tolist(), skip_special_tokens=True))
    else:
        print(" ".join(str(t) for t in result.tokens[0].tolist()))
    print(f"{len(new)} new tokens; prefill {result.prefill_s * 1e3:.1f} ms, decode {result.decode_tokens_per_s:.1f} tokens/s",
          file=sys.stderr)
    return 0


def _info(args) -> int:
    from .load import open_session, resolve_artifact

    artifact = resolve_artifact(args.model)
    with open_session(args.model, backend=args.backend, provider=args.provider, threads=args.threads) as session:
        print("inputs:")
        for spec in session.input_metadata().values():
            print(f"  {spec.describe()}")
        print("outputs:")
        for spec in session.output_metadata().values():
            print(f"  {spec.describe()}")
        if artifact.backend == "trt":
            env = artifact.build.get("environment", {})
            print(f"backend: TensorRT {env.get('tensorrt')} on {env.get('gpu')}")
        else:
            print(f"providers: {', '.join(session.active_providers)}")
        print(f"artifact: {artifact.kind} ({artifact.model_file})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "generate":
        return _generate(args)
    if args.command == "build":
        return _build(args)
    return _info(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))

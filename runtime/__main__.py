"""``python -m runtime COMMAND``: run exported models.

Commands:
    generate DIR --prompt TEXT [--max-new-tokens N]   greedy generation with the KV cache
    info DIR                                          inputs and outputs of model.onnx

DIR is an export directory (``model.onnx`` + ``export.json`` + tokenizer files) or a
``.onnx`` file. Exit codes: 0 success, 2 bad input or error (one line on stderr).
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from quantize.cli import ArgumentParser, run_cli, setup_logging
from quantize.errors import UserError

log = logging.getLogger("runtime")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m runtime", description=__doc__.split("\n\n")[0],
                       epilog="Exit codes: 0 success, 2 bad input or error.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def common(sp):
        sp.add_argument("model", help="export directory or model.onnx")
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
    return p


def _generate(args) -> int:
    from .generate import generate, load_tokenizer, read_export_meta
    from .ort import OrtSession, resolve_model_path

    model_path = resolve_model_path(args.model)
    directory = model_path.parent
    meta = read_export_meta(directory)
    if meta and meta.get("task") not in (None, "causal-lm"):
        raise UserError(f"{model_path} is a {meta['task']} model; generate needs a causal LM export")
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
    with OrtSession(model_path, providers=args.provider, accuracy_level=args.accuracy_level, threads=args.threads) as session:
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
    from .ort import OrtSession

    with OrtSession(args.model, providers=args.provider, threads=args.threads) as session:
        print("inputs:")
        for spec in session.input_metadata().values():
            print(f"  {spec.describe()}")
        print("outputs:")
        for spec in session.output_metadata().values():
            print(f"  {spec.describe()}")
        print(f"providers: {', '.join(session.active_providers)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "generate":
        return _generate(args)
    return _info(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))

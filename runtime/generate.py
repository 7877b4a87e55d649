"""Greedy generation over any :class:`~runtime.base.Session` holding an exported causal LM.

With the flat KV cache (``past_key_values.{i}.key/value`` in, ``present.{i}.key/value`` out)
the prompt runs once with an empty cache (prefill, past length 0) and every new token is one
decode step of length 1. Without it (``--no-kv-cache`` exports) the whole sequence is
recomputed each step. Left-padded batches work: positions come from the attention mask.
When the session can keep the cache in place (:attr:`~runtime.base.Session.supports_in_place_cache`:
ONNX Runtime on a fused export) the cache is one preallocated buffer per layer that each step
appends to; otherwise each step's ``present.*`` outputs are fed back as the next ``past``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from quantize.errors import UserError

from .base import Session

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


@dataclass
class GenerationResult:
    """``tokens [B, S + n]`` (prompt and continuation), ``new_tokens [B, n]`` and step timings."""

    tokens: np.ndarray
    new_tokens: np.ndarray
    prefill_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        total = sum(self.decode_s)
        return len(self.decode_s) * self.tokens.shape[0] / total if total > 0 else float("nan")


def cache_layout(session: Session) -> list[tuple[str, str]] | None:
    """``[(past name, present name), ...]`` in layer order, or ``None`` for a graph without cache."""
    names = list(session.input_metadata())
    past = sorted(((int(m.group(1)), m.group(2) != "key", n) for n in names if (m := _PAST.match(n))))
    if not past:
        return None
    outputs = set(session.output_metadata())
    pairs = []
    for _, _, name in past:
        present = name.replace("past_key_values.", "present.", 1)
        if present not in outputs:
            raise UserError(f"the model has input {name} but no output {present}; is it an export of this toolchain?")
        pairs.append((name, present))
    return pairs


def empty_cache(session: Session, batch: int) -> dict[str, np.ndarray]:
    """Past-length-0 cache feeds ``{past name: zeros [batch, kv_heads, 0, head_dim]}`` (``{}`` without cache)."""
    specs = session.input_metadata()
    past = {}
    for name, _ in cache_layout(session) or []:
        spec = specs[name]
        heads, head_dim = spec.shape[1], spec.shape[3]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise UserError(f"{name} needs static head and head_dim dimensions, got {spec.describe()}")
        past[name] = np.zeros((batch, heads, 0, head_dim), dtype=spec.dtype)
    return past


def sequence_logits(session: Session, input_ids: np.ndarray) -> np.ndarray:
    """Logits ``[B, S, V]`` (the graph's float type) of one full forward over ``input_ids [B, S]`` int64.

    With a KV cache the sequence runs as a prefill from an empty cache; without one as is.
    No padding: every row is ``S`` real tokens.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise UserError(f"input_ids must be [batch, sequence] with at least one token, got shape {list(ids.shape)}")
    mask = np.ones_like(ids)
    feeds = {"input_ids": ids, "attention_mask": mask, **empty_cache(session, ids.shape[0])}
    if "position_ids" in session.input_metadata():
        feeds["position_ids"] = _positions(mask)
    return session.run(feeds)["logits"]


def _positions(mask: np.ndarray) -> np.ndarray:
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


def generate(session: Session, input_ids: np.ndarray | Sequence[Sequence[int]], max_new_tokens: int, *,
             attention_mask: np.ndarray | None = None, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, max_seq_len: int | None = None,
             in_place: bool | None = None) -> GenerationResult:
    """Greedy decoding of ``max_new_tokens`` tokens (fewer when every row reached EOS).

    Args:
        session: a session whose inputs are ``input_ids``, ``attention_mask`` and optionally
            ``position_ids`` + the flat KV cache; output ``logits`` (plus ``present.*``).
        input_ids: ``[B, S]`` int64 prompt (left-padded when rows differ in length).
        attention_mask: ``[B, S]``, 1 for real tokens (default: all ones).
        eos_token_id: stop a row once it produced one of these; later positions get
            ``pad_token_id`` (default: the first EOS id).
        max_seq_len: refuse when prompt + new tokens would exceed it.
        in_place: keep the KV cache in one preallocated buffer (``None``: whenever the session
            supports it; ``True`` where it does not: one-line error).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise UserError(f"input_ids must be [batch, sequence] with at least one token, got shape {list(ids.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens={max_new_tokens!r} is invalid: expected a non-negative integer")
    if max_seq_len is not None and ids.shape[1] + max_new_tokens > max_seq_len:
        raise UserError(f"prompt ({ids.shape[1]} tokens) + {max_new_tokens} new tokens exceeds the exported "
                        f"max_seq_len {max_seq_len}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    if mask.shape != ids.shape:
        raise UserError(f"attention_mask shape {list(mask.shape)} differs from input_ids {list(ids.shape)}")
    eos = set() if eos_token_id is None else {int(e) for e in np.atleast_1d(eos_token_id)}
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    specs = session.input_metadata()
    layout = cache_layout(session)
    batch = ids.shape[0]
    done = np.zeros(batch, dtype=bool)
    new: list[np.ndarray] = []
    result = GenerationResult(ids, np.zeros((batch, 0), np.int64))
    if in_place is None:
        in_place = layout is not None and session.supports_in_place_cache
    cache = session.allocate_cache(batch, ids.shape[1] + max_new_tokens) if in_place and max_new_tokens else None
    past = empty_cache(session, batch) if layout is not None and not in_place else {}
    step_ids, full_ids, full_mask = ids, ids, mask
    for step in range(max_new_tokens):
        start = time.perf_counter()
        if layout is not None:
            feeds = {"input_ids": step_ids, "attention_mask": full_mask, **past}
            if "position_ids" in specs:  # model-builder graphs derive positions from the mask
                feeds["position_ids"] = _positions(full_mask)[:, -step_ids.shape[1]:]
        else:
            feeds = {"input_ids": full_ids, "attention_mask": full_mask}
            if "position_ids" in specs:
                feeds["position_ids"] = _positions(full_mask)
        out = session.run_in_place(feeds, cache) if cache is not None else session.run(feeds)
        logits = out["logits"][:, -1, :]
        token = logits.astype(np.float32).argmax(axis=-1).astype(np.int64)
        token = np.where(done, pad, token)
        done |= np.isin(token, list(eos)) if eos else False
        new.append(token)
        if layout is not None and cache is None:
            past = {name: out[present] for name, present in layout}
        step_ids = token[:, None]
        full_ids = np.concatenate([full_ids, step_ids], axis=1)
        full_mask = np.concatenate([full_mask, np.ones((batch, 1), np.int64)], axis=1)
        elapsed = time.perf_counter() - start
        if step == 0:
            result.prefill_s = elapsed
        else:
            result.decode_s.append(elapsed)
        if done.all():
            break
    result.tokens = full_ids
    result.new_tokens = np.stack(new, axis=1) if new else np.zeros((batch, 0), np.int64)
    return result


def read_export_meta(directory: str | Path) -> dict[str, Any]:
    """``export.json`` of an export directory (``{}`` when absent, one-line error when corrupt)."""
    path = Path(directory) / "export.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None


def load_tokenizer(directory: str | Path, meta: dict[str, Any] | None = None, override: str | None = None):
    """The tokenizer saved next to ``model.onnx``, else the one in the source checkpoint directory."""
    from transformers import AutoTokenizer

    meta = read_export_meta(directory) if meta is None else meta
    candidates = [override] if override else [str(directory), (meta.get("source") or {}).get("path")]
    reasons = []
    for cand in candidates:
        if not cand or not Path(cand).is_dir():
            continue
        if not any((Path(cand) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            reasons.append(f"{cand} has no tokenizer files")
            continue
        try:
            return AutoTokenizer.from_pretrained(cand)
        except (OSError, ValueError) as exc:
            reasons.append(f"{cand}: {str(exc).splitlines()[0]}")
    where = "; ".join(reasons) if reasons else f"no tokenizer files in {directory}"
    raise UserError(f"no tokenizer found ({where}); pass --tokenizer DIR or --ids")

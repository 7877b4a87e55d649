"""The quantization scheme of a model as the export stage sees it: one entry per quantized Linear.

Light (no onnx import): the capability rules run on it before any export work, either from a
checkpoint's ``quant_config.json`` or from the loaded model's quantized modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class ActQuantSpec:
    """Dynamic per-token activation quantizer in front of a Linear."""

    bits: int
    sym: bool
    clip_ratio: float


@dataclass(frozen=True)
class LayerScheme:
    """How one Linear is quantized: weight bits, symmetric grid, input quantizer (or None)."""

    name: str
    bits: int
    symmetric: bool
    act: ActQuantSpec | None
    group_size: int = -1


def layers_from_meta(meta: Mapping[str, Any], a_bits: int | None = None) -> list[LayerScheme]:
    """Layer schemes of a checkpoint, from :func:`quantize.checkpoint.read_meta` (no weights read)."""
    cfg = meta["quant_config"]
    act = None
    if cfg.a_bits < 16 and a_bits is None:
        act = ActQuantSpec(cfg.a_bits, cfg.a_sym, cfg.a_clip_ratio)
    return [LayerScheme(name, cfg.w_bits, cfg.sym, act, cfg.group_size) for name in meta.get("quantized_modules", [])]


def scheme_name(layers: Sequence[LayerScheme], dtype: str) -> str:
    """``"FP32"``, ``"W4A16"``, ``"W4A4"``, ... or ``"mixed"`` when layers differ."""
    if not layers:
        return dtype.upper()
    kinds = {(lay.bits, lay.act.bits if lay.act else 16) for lay in layers}
    if len(kinds) > 1:
        return "mixed"
    w, a = kinds.pop()
    return f"W{w}A{a}"

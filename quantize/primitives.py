"""Pure tensor primitives: quantization grids, fake quantization and GPTQ int32 packing.

Conventions (all functions run on CPU and CUDA and never touch modules):

* Weight codes are unsigned integers in ``[0, 2**bits - 1]`` with a zero point per group:
  ``w_hat = scale * (code - zero)``. The *symmetric* grid fixes ``zero = 2**(bits-1)`` and
  ``scale = 2 * max|w| / (2**bits - 1)`` (GPTQ's convention: all ``2**bits`` levels are used,
  and ``code - zero`` is a signed integer in ``[-2**(bits-1), 2**(bits-1) - 1]``, which is what
  an ONNX ``int4`` initializer with no zero point holds). The asymmetric grid spans
  ``[min(w, 0), max(w, 0)]``.
* Scales are rounded to fp16 when they are computed, because fp16 is what the checkpoint and
  the ONNX graph store: the solver then feeds back exactly the error that deployment makes.
* Activations use QuaRot's dynamic per-token quantizer (last dimension), see
  :func:`fake_quant_activation`.
"""

from __future__ import annotations

import math

import torch

#: MSE clip search as in the GPTQ / GPTAQ reference code: shrink factors 1 - i/grid for
#: i < max_shrink * grid, error measured with this norm.
MSE_GRID = 100
MSE_MAX_SHRINK = 0.8
MSE_NORM = 2.4
#: Smallest range a group may have (avoids zero scales on constant groups).
MIN_RANGE = 1e-5


def max_code(bits: int) -> int:
    """Largest unsigned code of a ``bits``-bit grid."""
    return (1 << bits) - 1


def _grid_from_range(
    xmin: torch.Tensor, xmax: torch.Tensor, bits: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the grid spanning ``[xmin, xmax]`` (``xmin <= 0 <= xmax``).

    Shapes broadcast; returns fp32 ``scale`` (fp16-representable) and fp32 integer ``zero``.
    """
    maxq = max_code(bits)
    if sym:
        amax = torch.maximum(-xmin, xmax)
        scale = torch.clamp(2.0 * amax, min=MIN_RANGE) / maxq
        scale = scale.to(torch.float16).to(torch.float32)
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        scale = torch.clamp(xmax - xmin, min=MIN_RANGE) / maxq
        scale = scale.to(torch.float16).to(torch.float32)
        zero = torch.clamp(torch.round(-xmin / scale), 0, maxq)
    return scale, zero


def quantize_to_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` onto the grid; returns fp32 codes in ``[0, 2**bits - 1]`` (integers).

    ``scale`` and ``zero`` broadcast against ``w`` (e.g. ``[rows, 1]`` for ``w [rows, cols]``).
    """
    return torch.clamp(torch.round(w / scale) + zero, 0, max_code(bits))


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``scale * (codes - zero)`` in fp32."""
    return scale * (codes.to(torch.float32) - zero)


def weight_qparams(
    w: torch.Tensor, bits: int, sym: bool, mse_clip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid parameters per row of ``w``.

    Args:
        w: ``[rows, cols]`` float; one grid is fitted per row (a row is an output channel,
            restricted to one group of input features when grouping).
        bits: 2..8.
        sym: symmetric grid (zero fixed at ``2**(bits-1)``).
        mse_clip: shrink the range by ``p = 1 - i/100`` (i < 80) and keep, per row, the
            first ``p`` minimising ``sum |dequant(quant(w)) - w| ** 2.4`` (reference search).

    Returns:
        ``scale [rows]`` and ``zero [rows]``, fp32 (zero holds integers).
    """
    x = w.to(torch.float32)
    zeros_row = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xmin = torch.minimum(x.min(dim=1).values, zeros_row)
    xmax = torch.maximum(x.max(dim=1).values, zeros_row)
    scale, zero = _grid_from_range(xmin, xmax, bits, sym)
    if mse_clip:
        scale, zero = _mse_search(x, xmin, xmax, bits, sym, scale, zero)
    return scale, zero


def _mse_search(
    x: torch.Tensor,
    xmin: torch.Tensor,
    xmax: torch.Tensor,
    bits: int,
    sym: bool,
    scale: torch.Tensor,
    zero: torch.Tensor,
    chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised shrink search over candidate ranges, ``chunk`` candidates at a time."""
    steps = int(MSE_MAX_SHRINK * MSE_GRID)
    shrink = 1.0 - torch.arange(steps, device=x.device, dtype=torch.float32) / MSE_GRID
    best = torch.full_like(xmin, float("inf"))
    best_scale, best_zero = scale.clone(), zero.clone()
    for start in range(0, steps, chunk):
        p = shrink[start : start + chunk, None]  # [C, 1]
        s, z = _grid_from_range(p * xmin, p * xmax, bits, sym)  # [C, rows]
        s3, z3 = s.unsqueeze(-1), z.unsqueeze(-1)
        err = (dequantize_codes(quantize_to_codes(x, s3, z3, bits), s3, z3) - x).abs_().pow_(MSE_NORM).sum(-1)
        chunk_best, idx = err.min(dim=0)  # first minimum within the chunk
        better = chunk_best < best  # strict: earlier (wider) candidates win ties
        rows = torch.nonzero(better).squeeze(1)
        best[rows] = chunk_best[rows]
        best_scale[rows] = s[idx[rows], rows]
        best_zero[rows] = z[idx[rows], rows]
    return best_scale, best_zero


def fake_quant_activation(x: torch.Tensor, bits: int, sym: bool, clip_ratio: float = 1.0) -> torch.Tensor:
    """Dynamic per-token quantize-dequantize of ``x [..., features]`` (QuaRot's quantizer).

    Each token (last-dimension row) gets its own grid, computed in fp32:

    * asymmetric: range ``[min(x, 0), max(x, 0)] * clip_ratio`` over ``2**bits - 1`` steps,
      ``zero = round(-xmin / scale)``;
    * symmetric: ``scale = clip_ratio * max|x| / (2**(bits-1) - 1)``, codes clamped to
      ``[-2**(bits-1), 2**(bits-1) - 1]``.

    All-zero tokens use scale 1 (they quantize to 0 exactly). Returns ``x``'s dtype.
    """
    if bits >= 16:
        return x
    xf = x.to(torch.float32)
    if sym:
        maxq = (1 << (bits - 1)) - 1
        amax = xf.abs().amax(dim=-1, keepdim=True) * clip_ratio
        scale = torch.where(amax > 0, amax / maxq, torch.ones_like(amax))
        q = torch.clamp(torch.round(xf / scale), -(maxq + 1), maxq)
        return (q * scale).to(x.dtype)
    maxq = max_code(bits)
    zeros = torch.zeros((), device=x.device)
    xmin = torch.minimum(xf.amin(dim=-1, keepdim=True), zeros) * clip_ratio
    xmax = torch.maximum(xf.amax(dim=-1, keepdim=True), zeros) * clip_ratio
    flat = (xmin == 0) & (xmax == 0)
    xmin = torch.where(flat, -torch.ones_like(xmin), xmin)
    xmax = torch.where(flat, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    q = torch.clamp(torch.round(xf / scale) + zero, 0, maxq)
    return ((q - zero) * scale).to(x.dtype)


# ---------------------------------------------------------------------------------------
# GPTQ int32 packing
# ---------------------------------------------------------------------------------------

_WORD = 32
_U32 = (1 << 32) - 1


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit integers along dim 0 into int32 words (GPTQ layout).

    Values are laid out as one little-endian bit stream per column: value ``k`` occupies bits
    ``[k*bits, (k+1)*bits)``, so value ``k`` of a 4-bit tensor sits at bit ``4*(k % 8)`` of
    word ``k // 8``, and a 3-bit value may straddle two words — exactly GPTQ's ``qweight``
    layout for 2, 3, 4 and 8 bits, extended to 5–7 bits.

    Args:
        values: ``[n, cols]`` integer tensor with entries in ``[0, 2**bits)``.
    Returns:
        ``[ceil(n * bits / 32), cols]`` int32.
    """
    n, cols = values.shape
    v = values.to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) > max_code(bits)):
        raise ValueError(f"values do not fit in {bits} bits")
    pos = torch.arange(n, device=v.device) * bits
    word, off = pos // _WORD, pos % _WORD
    n_words = math.ceil(n * bits / _WORD)
    out = torch.zeros(n_words + 1, cols, dtype=torch.int64, device=v.device)
    out.index_add_(0, word, (v << off[:, None]) & _U32)
    spill = off + bits > _WORD
    if bool(spill.any()):
        out.index_add_(0, word[spill] + 1, v[spill] >> (_WORD - off[spill])[:, None])
    out = out[:n_words]
    return torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Exact inverse of :func:`pack_int32`: ``[ceil(n*bits/32), cols]`` int32 → ``[n, cols]`` int64."""
    p = packed.to(torch.int64) & _U32
    p = torch.cat([p, torch.zeros_like(p[:1])], dim=0)
    pos = torch.arange(n, device=p.device) * bits
    word, off = pos // _WORD, pos % _WORD
    lo = p[word] >> off[:, None]
    hi = (p[word + 1] << (_WORD - off)[:, None]) & _U32
    return (lo | hi) & max_code(bits)


def to_gptq_tensors(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, bits: int
) -> dict[str, torch.Tensor]:
    """Solver output → GPTQ checkpoint tensors (format ``gptq``, i.e. v1 zero points).

    Args:
        codes: ``[out, in]`` integer codes.
        scales: ``[out, groups]`` float. zeros: ``[out, groups]`` integer zero points.
        g_idx: ``[in]`` group of every input feature.
    Returns:
        ``qweight [ceil(in*bits/32), out]`` int32 packed along in-features, ``qzeros
        [groups, ceil(out*bits/32)]`` int32 holding ``zero - 1`` (the v1 convention every GPTQ
        reader expects), ``scales [groups, out]`` fp16, ``g_idx [in]`` int32.
    """
    mask = max_code(bits)
    qweight = pack_int32(codes.to(torch.int64).t().contiguous(), bits)
    zeros_v1 = (zeros.to(torch.int64) - 1) & mask
    qzeros = pack_int32(zeros_v1.contiguous(), bits).t().contiguous()
    return {
        "qweight": qweight,
        "qzeros": qzeros,
        "scales": scales.t().contiguous().to(torch.float16),
        "g_idx": g_idx.to(torch.int32),
    }


def from_gptq_tensors(tensors: dict[str, torch.Tensor], bits: int, in_features: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_gptq_tensors`: returns ``codes [out, in]`` int64, ``scales
    [out, groups]`` fp32, ``zeros [out, groups]`` int64 and ``g_idx [in]`` int64."""
    scales = tensors["scales"].to(torch.float32).t().contiguous()
    out_features = scales.shape[0]
    codes = unpack_int32(tensors["qweight"], bits, in_features).t().contiguous()
    zeros = (unpack_int32(tensors["qzeros"].t().contiguous(), bits, out_features) + 1) & max_code(bits)
    return {"codes": codes, "scales": scales, "zeros": zeros, "g_idx": tensors["g_idx"].to(torch.int64)}


def dequantize_grouped(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor
) -> torch.Tensor:
    """``W_hat [out, in] = scales[:, g_idx] * (codes - zeros[:, g_idx])`` in fp32."""
    return dequantize_codes(codes, scales[:, g_idx], zeros[:, g_idx].to(torch.float32))

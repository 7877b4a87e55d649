"""Executable specification: GPTQ's Algorithm 1 with GPTAQ's P term, written straightforwardly.

This is the official code's loop (one column at a time over the whole block, full ``n x n``
``P``, one lazy update per block), kept for two jobs only: tests check the fast solver in
:mod:`quantize.gptq` against it, and ``python -m tools.bench solver`` times it as the
"straightforward implementation" baseline. Never used by the toolchain itself.

Two switches document where the official code differs from our solver:

* ``cross_block="quantized"`` multiplies the cross-block P term by the quantized block (the
  official code's behaviour); ``"pre"`` (default) by the pre-quantization values, as our
  solver does.
* Dynamic groups are fitted on the current (updated) values of the group; the official code
  fits on the outer weight, which lacks the in-block updates when ``group_size < block_size``
  (the two agree for ``group_size == block_size``, the usual 128/128).
"""

from __future__ import annotations

import math

import torch

from .gptq import SolveResult, _inverse_cholesky_upper, _result, column_order
from .primitives import dequantize_codes, quantize_to_codes, weight_qparams


def reference_solve(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    mse_clip: bool = False,
    dXXT: torch.Tensor | None = None,
    alpha: float = 0.25,
    cross_block: str = "pre",
    reorder: str = "none",
) -> SolveResult:
    """Same contract as :func:`quantize.gptq.solve` (no damping retries)."""
    out_dtype = W.dtype
    work = torch.float64 if H.dtype == torch.float64 else torch.float32
    W, H = W.to(work).clone(), H.to(work).clone()
    n = W.shape[1]
    D = dXXT.to(work).clone() if dXXT is not None and alpha > 0 else None
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if D is not None:
        D[:, dead] = 0

    g = n if group_size == -1 else group_size
    n_groups = math.ceil(n / g)
    g_idx = torch.arange(n) // g
    scales = torch.zeros(W.shape[0], n_groups)
    zeros = torch.zeros(W.shape[0], n_groups)
    reorder = "act" if act_order else reorder
    static = group_size == -1 or reorder == "act"
    if static:
        for k in range(n_groups):
            scales[:, k], zeros[:, k] = weight_qparams(W[:, k * g : (k + 1) * g], bits, sym, mse_clip)
    perm = column_order(torch.diagonal(H), g, reorder)
    perm = torch.arange(n) if perm is None else perm
    if reorder != "none":
        W, H = W[:, perm], H[perm][:, perm]
        if D is not None:
            D = D[perm][:, perm]

    # The official code factors with chol -> cholesky_inverse -> chol(upper); the result is the
    # same matrix, and sharing the solver's factorization keeps speed comparisons about the loop
    # (cholesky_inverse is pathologically slow in some CPU builds of torch).
    Hinv, _ = _inverse_cholesky_upper(H, damp)
    P = alpha * torch.triu(D @ Hinv.t(), diagonal=1) @ Hinv if D is not None else None

    codes = torch.zeros_like(W)
    losses = torch.zeros(W.shape[0], dtype=work)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[:, i1:i2].clone()
        Wpre, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not static and col % g == 0:  # group-aware order keeps groups whole and aligned
                current = W1[:, i : i + g] if g < block_size else W[:, col : col + g]
                kg = int(g_idx[perm[col]])
                scales[:, kg], zeros[:, kg] = weight_qparams(current, bits, sym, mse_clip)
            k = int(g_idx[perm[col]])
            w = W1[:, i].clone()
            code = quantize_to_codes(w, scales[:, k], zeros[:, k], bits)
            q = dequantize_codes(code, scales[:, k], zeros[:, k])
            codes[:, col] = code
            d = Hinv1[i, i]
            losses += (w - q) ** 2 / d**2 / 2
            err = (w - q) / d
            W1[:, i:] -= torch.outer(err, Hinv1[i, i:])
            if P is not None:
                W1[:, i:] += torch.outer(w, P[col, i1 + i : i2])
            W1[:, i] = q
            E1[:, i], Wpre[:, i] = err, w
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
        if P is not None:
            W[:, i2:] += (W1 if cross_block == "quantized" else Wpre) @ P[i1:i2, i2:]

    codes = codes[:, torch.argsort(perm)]
    return _result(codes, scales, zeros, g_idx, losses, damp, out_dtype)

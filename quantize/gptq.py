"""The one-layer GPTQ / GPTAQ solver (pure tensor function) and its statistics accumulator.

GPTQ (Frantar et al., arXiv 2210.17323) quantizes the columns of ``W [out, in]`` one at a time
and spreads each column's rounding error over the not-yet-quantized columns so that
``||W X - W_hat X||^2`` stays small, with ``H = 2/N sum X X^T``. GPTAQ (Li et al., ICML 2025,
arXiv 2504.02692) targets the *full-precision* output instead, ``||W X_fp - W_hat X_q||^2``:
with ``D = 2/N sum (X_fp - X_q) X_q^T`` it adds the term ``w_j * P[j, :]`` to every column's
update, where ``P = alpha * triu(D U^T, 1) U`` and ``U`` is the upper Cholesky factor of
``H^-1`` (Theorem 4.2 of the paper).

Block loop (B = ``block_size`` columns, ``S`` sub-block columns)::

    for each block [i, i+B):                     P_blk = alpha * triu(D[blk, i:] U[i:, i:]^T) U[i:, i:]
        for each sub-block [s, s+S):
            for each column j:  q_j = grid(w_j);  e_j = (w_j - q_j) / U_jj
                                W[:, j+1:s+S] -= e_j U[j, j+1:s+S] - w_j P[j, j+1:s+S]
            W[:, s+S:i+B] -= E_sub U[sub, s+S:i+B] - W_sub P[sub, s+S:i+B]
        W[:, i+B:] -= E_blk U[blk, i+B:] - W_blk P[blk, i+B:]

Cross-block convention (papers.md §1.5 "quirk"): the official code multiplies the
cross-block ``P`` term by the already *quantized* block, while its in-block term uses the
pre-quantization ``w_j``. We use the pre-quantization ``w_j`` everywhere (Eq. 15 taken
literally), so the blocked solver equals the column-by-column one for every block size.
``P`` is never formed whole: each block computes its ``B x (in - i)`` slice, which also keeps
the extra memory at ``B * in`` instead of ``in^2``.

With ``dXXT=None``, ``alpha=0`` or ``dXXT == 0`` no ``P`` term is evaluated: the result is
GPTQ bit for bit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .errors import NumericalError
from .primitives import dequantize_codes, dequantize_grouped, quantize_to_codes, weight_qparams

log = logging.getLogger(__name__)

#: Columns handled by rank-1 updates before a GEMM flushes them into the rest of the block.
SUB_BLOCK = 32
#: Damping is multiplied by this factor after every failed Cholesky, at most MAX_DAMP_RETRIES times.
DAMP_GROWTH = 10.0
MAX_DAMP_RETRIES = 4


@dataclass(frozen=True)
class SolveResult:
    """Everything export needs for one quantized Linear.

    Attributes:
        weight: ``[out, in]`` dequantized weight, dtype of the input ``W``.
        codes: ``[out, in]`` uint8 codes in ``[0, 2**bits - 1]``.
        scales: ``[out, groups]`` fp32 (fp16-representable) scales.
        zeros: ``[out, groups]`` int64 zero points.
        g_idx: ``[in]`` int64 group of every input feature (contiguous: ``col // group``).
        loss: ``[out]`` fp32 GPTQ proxy loss ``sum_j (w_j - q_j)^2 / U_jj^2 / 2`` per row.
        damp: relative damping actually used (larger than asked when Cholesky needed retries).
    """

    weight: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    loss: torch.Tensor
    damp: float


def rtn(W: torch.Tensor, *, bits: int, group_size: int, sym: bool, mse_clip: bool = False) -> SolveResult:
    """Round to nearest on the same grid as :func:`solve` (no data, no error feedback)."""
    _check_finite("weight", W)
    out_f, in_f = W.shape
    Wf = W.to(torch.float32)
    g = in_f if group_size == -1 else group_size
    n_groups = math.ceil(in_f / g)
    pad = n_groups * g - in_f  # a partial last group is padded with zeros, which never widen its range
    groups = torch.nn.functional.pad(Wf, (0, pad)).reshape(out_f * n_groups, g)
    scales, zeros = weight_qparams(groups, bits, sym, mse_clip)
    codes = quantize_to_codes(groups, scales[:, None], zeros[:, None], bits)
    weight = dequantize_codes(codes, scales[:, None], zeros[:, None])
    unpad = lambda t: t.reshape(out_f, n_groups * g)[:, :in_f]  # noqa: E731
    g_idx = torch.arange(in_f, device=W.device) // g
    return _result(
        unpad(codes), scales.reshape(out_f, n_groups), zeros.reshape(out_f, n_groups), g_idx,
        torch.zeros(out_f, device=W.device), 0.0, W.dtype, weight=unpad(weight),
    )


def solve(
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
    reorder: str = "none",
) -> SolveResult:
    """Quantize one Linear weight with GPTQ, or GPTAQ when ``dXXT`` is given and ``alpha > 0``.

    Args:
        W: ``[out, in]`` weight, any float dtype (solved in fp32, or fp64 when ``H`` is fp64).
        H: ``[in, in]`` Hessian proxy ``2/N sum X_q X_q^T`` of the quantized stream.
        bits: 2..8. group_size: -1 (per output channel) or a power of two. sym: symmetric grid.
        damp: relative damping ``lambda = damp * mean(diag(H))``; grown x10 on Cholesky failure.
        block_size: columns per lazy-update block (a power of two).
        act_order: alias of ``reorder="act"``.
        reorder: column order (:func:`column_order`): ``"none"``, ``"act"`` (decreasing
            ``diag(H)``, groups static: fitted up front on the original weight) or ``"group"``
            (group-aware: each group fitted on its updated values when it comes up). Groups
            stay contiguous in the original column order under every order.
        mse_clip: MSE shrink search of each group's range.
        dXXT: ``[in, in]`` asymmetry term ``2/N sum (X_fp - X_q) X_q^T``; ``None`` = GPTQ.
        alpha: GPTAQ's weight on the asymmetry correction.

    Raises:
        NumericalError: NaN/Inf in the inputs, or a Hessian that damping cannot repair.
    """
    out_f, in_f = W.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"H has shape {tuple(H.shape)}, expected {(in_f, in_f)} for W {tuple(W.shape)}")
    if dXXT is not None and dXXT.shape != (in_f, in_f):
        raise ValueError(f"dXXT has shape {tuple(dXXT.shape)}, expected {(in_f, in_f)}")
    # No asymmetry (alpha = 0, no FP stream, or X_fp == X_q) is plain GPTQ: skip P entirely.
    use_p = dXXT is not None and alpha > 0 and bool(dXXT.any())
    _check_finite("weight", W)
    _check_finite("Hessian", H)
    if use_p:
        _check_finite("asymmetry term dXXT", dXXT)

    out_dtype = W.dtype
    work = torch.float64 if H.dtype == torch.float64 else torch.float32
    W = W.to(work).clone()
    H = H.to(work).clone()
    D = dXXT.to(work).clone() if use_p else None

    dead = torch.diagonal(H) == 0
    if bool(dead.any()):
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        if D is not None:
            D[:, dead] = 0.0

    reorder = "act" if act_order else reorder
    g = in_f if group_size == -1 else group_size
    g_idx = torch.arange(in_f, device=W.device) // g
    n_groups = math.ceil(in_f / g)
    static = group_size == -1 or reorder == "act"
    scales = torch.empty(out_f, n_groups, device=W.device)
    zeros = torch.empty(out_f, n_groups, device=W.device)
    if static:
        for k in range(n_groups):
            scales[:, k], zeros[:, k] = weight_qparams(W[:, k * g : (k + 1) * g], bits, sym, mse_clip)

    perm = column_order(torch.diagonal(H), g, reorder)
    if perm is not None:
        # Permuting H and dXXT alike keeps GPTAQ exact: P is computed in the permuted basis.
        W, H = W[:, perm], H[perm][:, perm]
        if D is not None:
            D = D[perm][:, perm]

    U, damp_used = _inverse_cholesky_upper(H, damp)
    if D is not None:
        D.mul_(alpha)  # fold alpha into D once: P = triu((alpha D) U^T, 1) U
    del H

    col_group = g_idx if perm is None else g_idx[perm]
    grid = _Grid(bits, sym, mse_clip, g, static, scales, zeros, col_group)
    codes_t, deq_t, loss = _block_loop(W.t().contiguous(), U, D, grid, block_size)

    codes, weight = codes_t.t(), deq_t.t()
    if perm is not None:
        inverse = torch.argsort(perm)
        codes, weight = codes[:, inverse], weight[:, inverse]
    return _result(codes, scales, zeros, g_idx, loss, damp_used, out_dtype, weight=weight)


def column_order(diag: torch.Tensor, group: int, reorder: str) -> torch.Tensor | None:
    """Processing order of the columns (``None`` = natural order).

    Args:
        diag: ``[in]`` Hessian diagonal (after dead inputs were set to 1).
        group: columns per group (``in`` for per-channel grids).
        reorder: ``"none"``; ``"act"``: all columns by decreasing ``diag``; ``"group"``
            (GAR): columns by decreasing ``diag`` *within* each group, then whole groups by
            decreasing largest ``diag``. A partial last group stays last, so every group
            starts on a multiple of ``group`` in processing order (where the solver fits it).

    Returns:
        ``[in]`` int64 permutation: position ``p`` processes original column ``perm[p]``.
        Sorts are stable, so ties keep the natural order.
    """
    if reorder == "none":
        return None
    if reorder == "act":
        return torch.sort(diag, descending=True, stable=True).indices
    if reorder != "group":
        raise ValueError(f"reorder must be none, act or group, not {reorder!r}")
    n = diag.shape[0]
    full = n // group
    starts = list(range(0, n, group))
    within = [s + torch.sort(diag[s : s + group], descending=True, stable=True).indices for s in starts]
    key = torch.stack([diag[s : s + group].max() for s in starts[:full]]) if full else diag[:0]
    order = torch.sort(key, descending=True, stable=True).indices.tolist() + list(range(full, len(starts)))
    return torch.cat([within[k] for k in order])


@dataclass
class _Grid:
    """Per-column grid lookup; fits dynamic groups when their first column comes up."""

    bits: int
    sym: bool
    mse_clip: bool
    group: int
    static: bool
    scales: torch.Tensor  # [out, groups], filled in place for dynamic groups
    zeros: torch.Tensor
    col_group: torch.Tensor  # [in] group of each column in processing order

    def is_group_start(self, col: int) -> bool:
        return not self.static and col % self.group == 0

    def fit(self, col: int, current_t: torch.Tensor) -> None:
        """Fit the group starting at ``col`` on its current values ``current_t [cols, out]``.

        ``col`` is a processing position; under group-aware order the group found there is
        not ``col // group`` but the one its columns belong to.
        """
        k = int(self.col_group[col])
        self.scales[:, k], self.zeros[:, k] = weight_qparams(current_t.t(), self.bits, self.sym, self.mse_clip)

    def params(self, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(self.col_group[col])
        return self.scales[:, k], self.zeros[:, k]


def _block_loop(
    WT: torch.Tensor, U: torch.Tensor, D: torch.Tensor | None, grid: _Grid, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the blocked column loop in place on ``WT [in, out]`` (columns as contiguous rows).

    Rows of ``WT`` that have been processed keep their *pre-quantization* values, which are
    exactly the ``w_j`` the P term needs. Returns codes and dequantized values, both
    ``[in, out]``, and the per-row loss ``[out]``.
    """
    n, m = WT.shape
    codes_t = torch.empty_like(WT)
    deq_t = torch.empty_like(WT, dtype=torch.float32)
    loss = torch.zeros(m, dtype=WT.dtype, device=WT.device)
    sub = min(SUB_BLOCK, block_size, grid.group)
    for i in range(0, n, block_size):
        j2 = min(i + block_size, n)
        if grid.is_group_start(i) and grid.group >= block_size:
            grid.fit(i, WT[i : i + grid.group])  # whole group is up to date at a block start
        P = _p_rows(D, U, i, j2) if D is not None else None  # [B, n - i]
        E = torch.empty(j2 - i, m, dtype=WT.dtype, device=WT.device)
        for s in range(i, j2, sub):
            s2 = min(s + sub, j2)
            for j in range(s, s2):
                if grid.is_group_start(j) and grid.group < block_size:
                    grid.fit(j, WT[j : j + grid.group])  # flushed: sub-block boundary
                w = WT[j]
                scale, zero = grid.params(j)
                code = quantize_to_codes(w, scale, zero, grid.bits)
                codes_t[j] = code
                q = dequantize_codes(code, scale, zero)
                deq_t[j] = q
                err = (w - q) / U[j, j]
                loss.addcmul_(err, err)
                E[j - i] = err
                if j + 1 < s2:
                    WT[j + 1 : s2].addr_(U[j, j + 1 : s2], err, alpha=-1)
                    if P is not None:
                        WT[j + 1 : s2].addr_(P[j - i, j + 1 - i : s2 - i], w)
            _propagate(WT, E, U, P, i, s, s2, s2, j2)
        _propagate(WT, E, U, P, i, i, j2, j2, n)
    return codes_t, deq_t, loss / 2


def _propagate(
    WT: torch.Tensor, E: torch.Tensor, U: torch.Tensor, P: torch.Tensor | None,
    i: int, a: int, b: int, c: int, d: int,
) -> None:
    """Lazy update of columns ``[c, d)`` by the processed columns ``[a, b)`` of block ``i``:
    ``W[:, c:d] -= E[:, a:b] U[a:b, c:d] - W[:, a:b] P[a:b, c:d]`` (in transposed form).

    With ``P`` the two products run as one GEMM on stacked operands (``[U; -P]^T @ [E; W]``),
    so the trailing weights are read and written once instead of twice.
    """
    if c >= d:
        return
    if P is None:
        WT[c:d].addmm_(U[a:b, c:d].t(), E[a - i : b - i], alpha=-1)
        return
    left = torch.cat([U[a:b, c:d], -P[a - i : b - i, c - i : d - i]]).t()
    right = torch.cat([E[a - i : b - i], WT[a:b]])
    WT[c:d].addmm_(left, right, alpha=-1)


def _p_rows(D: torch.Tensor, U: torch.Tensor, i: int, j2: int, panel: int = 512) -> torch.Tensor:
    """Rows ``[i, j2)`` of ``P = triu(D U^T, 1) U`` restricted to columns ``[i, in)``.

    Row ``q`` of ``P`` needs ``(D U^T)[q, l]`` only for ``l > q >= i``, and ``U`` is upper
    triangular, so both products run on the trailing ``[i:, i:]`` corner and, panel by panel,
    skip the zero triangle of ``U``: about ``2 in^3 / 3`` flops over all blocks instead of the
    ``4 in^3`` of forming ``P`` whole. ``D`` already carries ``alpha``.
    """
    Ut = U[i:, i:]
    Dq = D[i:j2, i:]
    r = Ut.shape[0]
    T = torch.empty(j2 - i, r, dtype=U.dtype, device=U.device)
    for l0 in range(0, r, panel):  # T[:, l] = sum_{t >= l} D[:, t] U[l, t]
        l1 = min(l0 + panel, r)
        torch.mm(Dq[:, l0:], Ut[l0:l1, l0:].t(), out=T[:, l0:l1])
    head = min(j2 - i, r)
    T[:, :head] = torch.triu(T[:, :head], diagonal=1)  # local row q is column i + q: keep l > q
    P = torch.empty_like(T)
    for k0 in range(0, r, panel):  # P[:, k] = sum_{l <= k} T[:, l] U[l, k]
        k1 = min(k0 + panel, r)
        torch.mm(T[:, :k1], Ut[:k1, k0:k1], out=P[:, k0:k1])
    return P


def _inverse_cholesky_upper(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + lambda I)^-1``, ``lambda = damp * mean(diag H)``.

    Computed without forming the inverse: with ``J`` the order-reversing permutation and
    ``K K^T = J H J`` (lower Cholesky), ``H^-1 = (J K^-1 J)^T (J K^-1 J)`` and ``J K^-1 J`` is
    upper triangular with a positive diagonal, so it *is* ``U``. One Cholesky and one
    triangular solve; also sidesteps ``torch.cholesky_inverse``, which took 15.9 s at n=4096 in
    torch 2.14.1's CPU build against about 3 s for this Cholesky plus solve (2-core machine).

    When a factorisation fails the relative damping grows by ``DAMP_GROWTH`` (logged), at most
    ``MAX_DAMP_RETRIES`` times; then :class:`NumericalError` is raised.
    """
    mean_diag = float(torch.diagonal(H).mean())
    flipped = H.flip(0, 1)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    current = damp
    for attempt in range(MAX_DAMP_RETRIES + 1):
        damped = flipped.clone()
        damped.diagonal().add_(current * mean_diag)
        K, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0:
            U = torch.linalg.solve_triangular(K, eye, upper=False).flip(0, 1)
            if bool(torch.isfinite(torch.diagonal(U)).all()):
                return U, current
        if attempt < MAX_DAMP_RETRIES:
            log.warning("Cholesky failed with relative damping %g; retrying with %g", current, current * DAMP_GROWTH)
            current *= DAMP_GROWTH
    raise NumericalError(f"Hessian is not positive definite even with relative damping {current:g}")


def _check_finite(name: str, t: torch.Tensor) -> None:
    # One reduction (NaN and Inf both propagate into the max-norm); cheaper than isfinite().all().
    if not bool(torch.isfinite(torch.linalg.vector_norm(t.detach(), float("inf")))):
        raise NumericalError(f"{name} contains NaN or Inf")


def _result(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
    loss: torch.Tensor, damp: float, dtype: torch.dtype, weight: torch.Tensor | None = None,
) -> SolveResult:
    """Package a result; ``weight`` (fp32 ``scale * (code - zero)``, exactly what deployment
    computes) is rebuilt from the integers when the caller does not have it already."""
    if weight is None:
        weight = dequantize_grouped(codes, scales, zeros, g_idx)
    return SolveResult(
        weight=weight.to(dtype),
        codes=codes.to(torch.uint8),
        scales=scales.to(torch.float32),
        zeros=zeros.to(torch.int64),
        g_idx=g_idx.to(torch.int64),
        loss=loss.to(torch.float32),
        damp=damp,
    )

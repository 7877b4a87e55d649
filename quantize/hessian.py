"""Running second-moment statistics for the solver: ``H`` and GPTAQ's asymmetry term.

For calibration batches of ``t`` sequences with ``N`` sequences seen so far, both statistics
are kept as running means (rescale by ``N / (N + t)`` first, then add the new batch scaled by
``2 / (N + t)``), so they stay O(1) in magnitude however many batches arrive:

    H    = 2/N * sum X_q X_q^T                  [in, in]
    dXXT = 2/N * sum (X_fp - X_q) X_q^T         [in, in]   (only when FP inputs are given)

``N`` counts sequences, as in the reference code: an input ``[batch, seq, in]`` adds ``batch``,
a 2-D input ``[tokens, in]`` adds one.
"""

from __future__ import annotations

import torch


class HessianAccumulator:
    """Accumulates ``H`` (and ``dXXT`` for GPTAQ) for one Linear input of width ``in_features``.

    Memory is O(in_features^2) in ``dtype`` (fp32 default; fp64 on request). Inputs of any
    float dtype are upcast before the products.
    """

    def __init__(
        self, in_features: int, *, asym: bool = False, dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.in_features = in_features
        self.dtype = dtype
        self.H = torch.zeros(in_features, in_features, dtype=dtype, device=device)
        self.dXXT = torch.zeros_like(self.H) if asym else None
        self.nsamples = 0

    def add(self, x_q: torch.Tensor, x_fp: torch.Tensor | None = None) -> None:
        """Add a batch of quantized-stream inputs ``x_q [..., in]`` (and their FP twins).

        ``x_fp`` must have the same shape as ``x_q``; it is required when the accumulator was
        built with ``asym=True`` and ignored otherwise.
        """
        if x_q.shape[-1] != self.in_features:
            raise ValueError(f"input has {x_q.shape[-1]} features, accumulator expects {self.in_features}")
        if self.dXXT is not None:
            if x_fp is None or x_fp.shape != x_q.shape:
                raise ValueError("asymmetric accumulation needs x_fp with the same shape as x_q")
        count = x_q.shape[0] if x_q.dim() == 3 else 1
        total = self.nsamples + count
        keep = self.nsamples / total
        self.nsamples = total
        factor = (2.0 / total) ** 0.5
        xq = x_q.reshape(-1, self.in_features).to(self.H.device, self.dtype) * factor
        self.H.mul_(keep).addmm_(xq.t(), xq)
        if self.dXXT is not None:
            dx = x_fp.reshape(-1, self.in_features).to(self.H.device, self.dtype) * factor - xq
            self.dXXT.mul_(keep).addmm_(dx.t(), xq)

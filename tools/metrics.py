"""Accuracy metrics on logits, shared by the release gate and the benchmarks.

All functions take numpy arrays or torch tensors and compute in fp32 with torch (threaded
``log_softmax``; the logits of one 2048-token window of a 49k vocabulary are 400 MB).
Running sums live in :class:`LMAccumulator` / :class:`ImageAccumulator`, so a gate never holds
more than one batch of logits of each model.

Language models follow the GPTQ protocol of :mod:`quantize.evaluate`: the window loss is the
mean next-token cross-entropy over positions 1..S-1, ``ppl = exp(mean over windows)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


def _tensor(x) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.float()


def window_nll(logits, ids) -> torch.Tensor:
    """Mean next-token NLL per window: ``logits [b, S, V]``, ``ids [b, S]`` -> fp32 ``[b]``."""
    logits, ids = _tensor(logits), torch.as_tensor(np.asarray(ids), dtype=torch.int64)
    b, s, v = logits.shape
    flat = F.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1), reduction="none")
    return flat.view(b, s - 1).mean(dim=1)


def kl_per_position(ref_logits, cand_logits) -> torch.Tensor:
    """``KL(ref || cand)`` in nats for every position: ``[..., V]`` twice -> fp32 ``[...]``."""
    ref, cand = F.log_softmax(_tensor(ref_logits), dim=-1), F.log_softmax(_tensor(cand_logits), dim=-1)
    return (ref.exp() * (ref - cand)).sum(dim=-1)


def argmax_agreement(ref_logits, cand_logits) -> torch.Tensor:
    """Boolean ``[...]``: do both models predict the same top-1 class / next token?"""
    return _tensor(ref_logits).argmax(dim=-1) == _tensor(cand_logits).argmax(dim=-1)


@dataclass
class LMAccumulator:
    """Perplexity of both models, next-token top-1 agreement and mean KL over token windows."""

    ref_nll: list[float] = field(default_factory=list)
    cand_nll: list[float] = field(default_factory=list)
    agree: int = 0
    positions: int = 0
    kl_sum: float = 0.0

    def add(self, ids, ref_logits, cand_logits) -> None:
        """One batch: ``ids [b, S]`` int64, both logits ``[b, S, V]``.

        Agreement and KL use the predictions for positions 0..S-2 (those that have a next
        token in the window, the same positions the perplexity scores).
        """
        self.ref_nll += window_nll(ref_logits, ids).tolist()
        self.cand_nll += window_nll(cand_logits, ids).tolist()
        ref, cand = _tensor(ref_logits)[:, :-1], _tensor(cand_logits)[:, :-1]
        self.agree += int(argmax_agreement(ref, cand).sum())
        self.positions += ref.shape[0] * ref.shape[1]
        self.kl_sum += float(kl_per_position(ref, cand).double().sum())

    def result(self) -> dict[str, float]:
        """``ppl`` of reference and candidate, ``ppl_increase_pct``, ``top1_agreement``, ``kl``."""
        ref = _ppl(self.ref_nll)
        cand = _ppl(self.cand_nll)
        return {"ppl_reference": ref, "ppl_candidate": cand, "ppl_increase_pct": (cand / ref - 1.0) * 100.0,
                "top1_agreement": self.agree / self.positions if self.positions else math.nan,
                "kl": self.kl_sum / self.positions if self.positions else math.nan}


def _ppl(nlls: list[float]) -> float:
    return math.exp(sum(nlls) / len(nlls)) if nlls else math.nan


@dataclass
class ImageAccumulator:
    """Top-1 of both models against labels, their top-1 agreement and mean KL."""

    ref_correct: int = 0
    cand_correct: int = 0
    agree: int = 0
    count: int = 0
    kl_sum: float = 0.0

    def add(self, labels, ref_logits, cand_logits) -> None:
        """One batch: ``labels [n]`` int64, both logits ``[n, classes]``."""
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        ref, cand = _tensor(ref_logits), _tensor(cand_logits)
        self.ref_correct += int((ref.argmax(-1) == labels).sum())
        self.cand_correct += int((cand.argmax(-1) == labels).sum())
        self.agree += int(argmax_agreement(ref, cand).sum())
        self.count += labels.numel()
        self.kl_sum += float(kl_per_position(ref, cand).double().sum())

    def result(self) -> dict[str, float]:
        """``top1_reference`` / ``top1_candidate`` (fractions), ``top1_drop_pts`` (percentage points), ..."""
        if not self.count:
            return {k: math.nan for k in ("top1_reference", "top1_candidate", "top1_drop_pts", "top1_agreement", "kl")}
        ref, cand = self.ref_correct / self.count, self.cand_correct / self.count
        return {"top1_reference": ref, "top1_candidate": cand, "top1_drop_pts": (ref - cand) * 100.0,
                "top1_agreement": self.agree / self.count, "kl": self.kl_sum / self.count}

"""Synthetic layer statistics for solver tests: correlated FP / quantized-stream inputs."""

from __future__ import annotations

import math

import torch


def correlated_streams(n=64, tokens=2048, noise=0.1, seed=0):
    """Correlated FP inputs and a 'quantized-stream' copy, ``[n, tokens]`` each.

    The quantized stream differs by a systematic, input-dependent distortion (as upstream
    weight quantization produces) plus a little independent noise.
    """
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=gen) / math.sqrt(n)
    x_fp = mix @ torch.randn(n, tokens, generator=gen)
    distort = torch.randn(n, n, generator=gen) / math.sqrt(n)
    x_q = x_fp + noise * (distort @ x_fp) + 0.05 * torch.randn(n, tokens, generator=gen)
    return x_fp, x_q


def stats(x_fp, x_q):
    t = x_q.shape[1]
    return 2 / t * x_q @ x_q.T, 2 / t * (x_fp - x_q) @ x_q.T

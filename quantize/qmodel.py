"""Quantized modules: ``QuantLinear`` (fake-quantized weight + optional activation quantizer).

``QuantLinear.forward`` computes exactly what deployment computes: the input passes the
optional online transform (a rotated model's Hadamard), then the activation quantizer (dynamic per-token, off when ``a_bits == 16``), then a matmul with the
dequantized weight ``scale * (code - zero)`` held in the model's dtype. The integer codes,
scales, zeros and ``g_idx`` are kept beside it for saving and export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gptq import SolveResult
from .primitives import fake_quant_activation


class ActivationQuantizer(nn.Module):
    """Dynamic per-token fake quantization of a Linear's input (identity at 16 bits).

    ``enabled`` lets the model walker run the full-precision stream through the same modules.
    The walker observes a Linear's effective input with a forward hook on this module.
    """

    def __init__(self, bits: int = 16, sym: bool = False, clip_ratio: float = 1.0) -> None:
        super().__init__()
        self.bits, self.sym, self.clip_ratio = bits, sym, clip_ratio
        self.enabled = True

    @property
    def active(self) -> bool:
        return self.enabled and self.bits < 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return fake_quant_activation(x, self.bits, self.sym, self.clip_ratio)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, sym={self.sym}, clip_ratio={self.clip_ratio}, enabled={self.enabled}"


class QuantLinear(nn.Module):
    """A Linear whose weight is (or will be) quantized, with an input quantizer in front.

    Attributes:
        weight: ``[out, in]`` parameter in the model dtype; the dequantized weight once
            :meth:`set_quantized` ran, the original weight before.
        bias: ``[out]`` or ``None`` (kept in full precision).
        input_transform: optional module applied to the input before the quantizer (the
            online Hadamard of a rotated model, :class:`~quantize.hadamard.OnlineHadamard`);
            ``weight`` then already holds ``W T``.
        input_quant: :class:`ActivationQuantizer` applied to the (transformed) input.
        codes: ``[out, in]`` uint8, scales ``[out, groups]`` fp32, zeros ``[out, groups]``
            int64, g_idx ``[in]`` int64 — ``None`` until quantized (non-persistent buffers:
            the checkpoint stores them in the GPTQ layout instead).
        bits, group_size, sym: the grid of the stored codes.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None
        self.input_transform: nn.Module | None = None
        self.input_quant = ActivationQuantizer()
        self.bits, self.group_size, self.sym = 16, -1, True
        for name in ("codes", "scales", "zeros", "g_idx"):
            self.register_buffer(name, None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "QuantLinear":
        """Wrap ``linear`` sharing its parameters (no copy)."""
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = linear.in_features, linear.out_features
        q.weight = linear.weight
        q.weight.requires_grad_(False)
        q.bias = linear.bias
        if q.bias is not None:
            q.bias.requires_grad_(False)
        q.input_transform = None
        q.input_quant = ActivationQuantizer()
        q.bits, q.group_size, q.sym = 16, -1, True
        for name in ("codes", "scales", "zeros", "g_idx"):
            q.register_buffer(name, None, persistent=False)
        return q

    @property
    def is_quantized(self) -> bool:
        return self.codes is not None

    def set_activation_quant(self, bits: int, sym: bool, clip_ratio: float) -> None:
        self.input_quant.bits, self.input_quant.sym, self.input_quant.clip_ratio = bits, sym, clip_ratio

    def set_quantized(self, result: SolveResult, bits: int, group_size: int, sym: bool) -> None:
        """Install a solver result: the weight becomes ``result.weight`` in the current dtype."""
        self.weight.data = result.weight.to(device=self.weight.device, dtype=self.weight.dtype)
        device = self.weight.device
        self.codes = result.codes.to(device)
        self.scales = result.scales.to(device)
        self.zeros = result.zeros.to(device)
        self.g_idx = result.g_idx.to(device)
        self.bits, self.group_size, self.sym = bits, group_size, sym

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        return F.linear(self.input_quant(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        state = f"w{self.bits} g{self.group_size} {'sym' if self.sym else 'asym'}" if self.is_quantized else "not quantized"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {state}"


class RowSplitLinear(nn.Module):
    """A Linear cut along its output rows into parts with grids of their own (an LM head with INT8
    rows for the frequent token ids and INT4 for the rest).

    ``forward(x)`` is ``cat([part(x) for part in parts], -1)``: ``[..., in]`` → ``[..., out]``,
    exactly the Linear whose weight stacks the parts' weights. Each part is a
    :class:`QuantLinear`, so saving, loading and export treat it like any quantized Linear
    (``<name>.parts.0``, ``<name>.parts.1``, ...).
    """

    def __init__(self, parts: list[QuantLinear]) -> None:
        super().__init__()
        if not parts or len({p.in_features for p in parts}) != 1:
            raise ValueError("RowSplitLinear needs one or more parts with the same in_features")
        self.parts = nn.ModuleList(parts)
        self.in_features = parts[0].in_features
        self.out_features = sum(p.out_features for p in parts)

    @classmethod
    def from_linear(cls, linear: nn.Module, rows: list[int]) -> "RowSplitLinear":
        """Parts holding copies of ``linear``'s rows ``[0, rows[0])``, ``[rows[0], rows[1])``, ..., ``[rows[-1], out)``."""
        bounds = [0, *rows, linear.out_features]
        if any(b >= e for b, e in zip(bounds, bounds[1:])):
            raise ValueError(f"row boundaries {rows} do not split {linear.out_features} rows into non-empty parts")
        parts = []
        for start, stop in zip(bounds, bounds[1:]):
            # meta: no throwaway allocation, the copied rows replace the parameters right away
            part = nn.Linear(linear.in_features, stop - start, bias=linear.bias is not None, device="meta")
            part.weight = nn.Parameter(linear.weight.detach()[start:stop].clone(), requires_grad=False)
            if linear.bias is not None:
                part.bias = nn.Parameter(linear.bias.detach()[start:stop].clone(), requires_grad=False)
            parts.append(QuantLinear.from_linear(part))
        return cls(parts)

    @property
    def weight(self) -> torch.Tensor:
        """``[out, in]`` the stacked (dequantized) weights of the parts (a copy)."""
        return torch.cat([p.weight for p in self.parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rows={[p.out_features for p in self.parts]}"

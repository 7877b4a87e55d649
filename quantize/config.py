"""Frozen, validated configuration of the quantize stage.

``QuantConfig`` is the one object that says *what* quantization is done; it is validated on
construction (one :class:`~quantize.errors.ConfigError` naming the field, the value and what
is allowed) and round-trips through JSON, which is written next to every artifact.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .errors import ConfigError

METHODS = ("rtn", "gptq", "gptaq")
#: Column orders of the solver: natural, by decreasing ``diag(H)`` (act-order, static groups),
#: or group-aware (by ``diag(H)`` within each group, whole groups ordered; see quantize.gptq).
REORDERS = ("none", "act", "group")
#: GAR lowered SmolLM2-135M W4 g128 perplexity by 5.4 % (GPTAQ) and 10.5 % (GPTQ) at no inference cost
DEFAULT_REORDER = "group"
#: Bits of the LM head: 16 keeps it in full precision.
HEAD_BITS = (16, 8, 4)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and (value & (value - 1)) == 0


def _check_type(owner: str, name: str, value: Any, kind: type | tuple[type, ...], allowed: str) -> None:
    # bool is an int subclass; never accept it where a number is meant (and vice versa).
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(owner, name, value, allowed)
    if kind is float and isinstance(value, int):
        return
    if not isinstance(value, kind):
        raise ConfigError(owner, name, value, allowed)


class _JsonConfig:
    """Mixin: dict/JSON round trip that rejects unknown keys."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(cls.__name__, unknown[0], data[unknown[0]], f"one of the fields {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class QuantConfig(_JsonConfig):
    """What to quantize and how.

    Attributes:
        method: ``"rtn"`` (round to nearest, no data), ``"gptq"`` or ``"gptaq"``.
        w_bits: weight bits, 2..8.
        group_size: -1 for one scale per output channel, else a power of two: one scale per
            ``group_size`` consecutive input features (the last group may be partial).
        sym: symmetric weight grid (zero point fixed at ``2**(w_bits-1)``) — the only one
            TensorRT runs; asymmetric grids are ORT / PyTorch only.
        mse_clip: search a shrink factor of each group's range minimising ``|q - w|^2.4``.
        reorder: solver column order (default ``"group"``, chosen by measurement: README,
            Quality). ``"none"``; ``"act"``: by decreasing Hessian diagonal,
            groups static (fitted up front on the original weight); ``"group"``: group-aware
            (GAR) — by decreasing diagonal within each group, whole groups ordered by their
            largest diagonal, each group fitted when it comes up. Groups stay contiguous in
            the original column order either way, so ``g_idx`` is ``col // group``.
        act_order: alias kept for old configs: ``act_order=True`` means ``reorder="act"``;
            after construction it always equals ``reorder == "act"``.
        alpha: GPTAQ's weight on the asymmetry term (0 = plain GPTQ).
        damp: relative damping, ``lambda = damp * mean(diag(H))`` (0.01 LLM, 0.1 ViT).
        block_size: columns per lazy-update block (power of two).
        a_bits: activation bits, 16 = off, or 4 / 8 (dynamic per-token fake quant).
        a_sym: symmetric activation grid.
        a_clip_ratio: fraction of each token's range kept by the activation grid.
        rotate: Hadamard-rotate the model first (QuaRot style).
        head_bits: LM head bits: 16 (full precision, default), 8 or 4; calibrated with the
            same method on the final-norm outputs. A head tied to the embedding is untied;
            the embedding stays exact.
        head_group_size: the head's group size (-1 = per output channel, else a power of two).
        head_int8_rows: with a 4-bit head, keep its first N output rows (token ids < N) at
            INT8 per output channel and the rest at ``head_bits`` / ``head_group_size``: BPE
            vocabularies number tokens in merge order, so the low ids are the frequent ones and
            carry most of the head's error. 0 (default) quantizes every row alike. The head is
            then two Linears, ``<head>.parts.0`` / ``.parts.1``, whose logits are concatenated.
        seed: seed for calibration sampling and rotations.
    """

    method: str = "gptaq"
    w_bits: int = 4
    group_size: int = 128
    sym: bool = True
    mse_clip: bool = False
    reorder: str | None = None
    act_order: bool = False
    alpha: float = 0.25
    damp: float = 0.01
    block_size: int = 128
    a_bits: int = 16
    a_sym: bool = False
    a_clip_ratio: float = 0.9
    rotate: bool = False
    seed: int = 0
    head_bits: int = 16
    head_group_size: int = -1
    head_int8_rows: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.method not in METHODS:
            raise ConfigError(owner, "method", self.method, f"one of {', '.join(METHODS)}")
        _check_type(owner, "w_bits", self.w_bits, int, "an integer in 2..8")
        if not 2 <= self.w_bits <= 8:
            raise ConfigError(owner, "w_bits", self.w_bits, "an integer in 2..8")
        allowed_group = "-1 (per output channel) or a positive power of two (e.g. 32, 64, 128)"
        _check_type(owner, "group_size", self.group_size, int, allowed_group)
        if self.group_size != -1 and not _is_power_of_two(self.group_size):
            raise ConfigError(owner, "group_size", self.group_size, allowed_group)
        for name in ("sym", "mse_clip", "act_order", "a_sym", "rotate"):
            _check_type(owner, name, getattr(self, name), bool, "true or false")
        if self.reorder is None:  # the default: group-aware, unless the act_order alias asks for "act"
            object.__setattr__(self, "reorder", "act" if self.act_order is True else DEFAULT_REORDER)
        if self.reorder not in REORDERS:
            raise ConfigError(owner, "reorder", self.reorder, f"one of {', '.join(REORDERS)}")
        if self.act_order and self.reorder == "group":
            raise ConfigError(owner, "act_order", self.act_order, 'false with reorder="group" (act_order is reorder="act")')
        # Normalise the alias so equal settings compare, hash and serialise equal.
        object.__setattr__(self, "reorder", "act" if self.act_order else self.reorder)
        object.__setattr__(self, "act_order", self.reorder == "act")
        _check_type(owner, "head_bits", self.head_bits, int, "16 (full precision), 8 or 4")
        if self.head_bits not in HEAD_BITS:
            raise ConfigError(owner, "head_bits", self.head_bits, "16 (full precision), 8 or 4")
        _check_type(owner, "head_group_size", self.head_group_size, int, allowed_group)
        if self.head_group_size != -1 and not _is_power_of_two(self.head_group_size):
            raise ConfigError(owner, "head_group_size", self.head_group_size, allowed_group)
        _check_type(owner, "head_int8_rows", self.head_int8_rows, int, "a non-negative integer")
        if self.head_int8_rows < 0:
            raise ConfigError(owner, "head_int8_rows", self.head_int8_rows, "a non-negative integer")
        if self.head_int8_rows and self.head_bits != 4:
            raise ConfigError(owner, "head_int8_rows", self.head_int8_rows, "0 unless head_bits is 4 (it keeps INT8 rows in an INT4 head)")
        _check_type(owner, "alpha", self.alpha, float, "a number in [0, 1]")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(owner, "alpha", self.alpha, "a number in [0, 1]")
        _check_type(owner, "damp", self.damp, float, "a number in (0, 1]")
        if not 0.0 < self.damp <= 1.0:
            raise ConfigError(owner, "damp", self.damp, "a number in (0, 1]")
        _check_type(owner, "block_size", self.block_size, int, "a power of two in 16..4096")
        if not (16 <= self.block_size <= 4096 and _is_power_of_two(self.block_size)):
            raise ConfigError(owner, "block_size", self.block_size, "a power of two in 16..4096")
        _check_type(owner, "a_bits", self.a_bits, int, "16 (off), 8 or 4")
        if self.a_bits not in (4, 8, 16):
            raise ConfigError(owner, "a_bits", self.a_bits, "16 (off), 8 or 4")
        _check_type(owner, "a_clip_ratio", self.a_clip_ratio, float, "a number in (0, 1]")
        if not 0.0 < self.a_clip_ratio <= 1.0:
            raise ConfigError(owner, "a_clip_ratio", self.a_clip_ratio, "a number in (0, 1]")
        _check_type(owner, "seed", self.seed, int, "a non-negative integer")
        if self.seed < 0:
            raise ConfigError(owner, "seed", self.seed, "a non-negative integer")

    @property
    def uses_data(self) -> bool:
        """Whether the method needs calibration data (RTN does not, unless activations are quantized)."""
        return self.method != "rtn"

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bits < 16

    @property
    def quantizes_head(self) -> bool:
        return self.head_bits < 16

    def grid(self, head: bool = False) -> tuple[int, int]:
        """``(bits, group_size)`` of the block Linears, or of the LM head with ``head=True``."""
        return (self.head_bits, self.head_group_size) if head else (self.w_bits, self.group_size)

    def head_modules(self, head: str) -> dict[str, tuple[int, int]]:
        """``{module path: (bits, group_size)}`` of the quantized LM head at path ``head``, in row order.

        Empty for a float head; ``{head: grid}`` for one grid; with ``head_int8_rows`` the
        :class:`~quantize.qmodel.RowSplitLinear` parts, INT8 per channel rows first.
        """
        if not self.quantizes_head:
            return {}
        if not self.head_int8_rows:
            return {head: self.grid(head=True)}
        return {f"{head}.parts.0": (8, -1), f"{head}.parts.1": self.grid(head=True)}

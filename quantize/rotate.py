"""QuaRot-style Hadamard rotation of RMSNorm decoders (Llama, Mistral, Qwen2, Qwen3).

``rotate_model(model, seed)`` changes the weights so that the network computes the same
function while its activations and weights lose their outliers (QuaRot, arXiv 2404.00456;
``reference/deploy.md`` §5). With ``x W^T`` Linears and row-vector activations:

1. **Untie** the LM head from the embedding (they are rotated differently once the final
   norm is fused) and **fuse every RMSNorm gain** ``γ`` into the Linears it feeds
   (``W ← W diag(γ)``, ``γ ← 1``). RMSNorm without a gain commutes with any orthogonal ``Q``
   (``rms(x Q) = rms(x)``), which is what makes step 2 exact.
2. **R1, the residual stream**: ``Q = diag(s) H / sqrt(d)`` with seeded random signs ``s``.
   The embedding becomes ``E Q``; Linears reading the stream (q/k/v, gate/up, the head) get
   ``W Q``; Linears writing it (o_proj, down_proj) get ``Qᵀ W`` (and ``b Q``).
3. **R2, per head**: a Hadamard of size ``head_dim`` on every value head, folded into
   ``v_proj``'s output and ``o_proj``'s input (attention mixes tokens, not features, so it
   commutes). GQA is fine: each KV head is rotated once and every query head sharing it sees
   the same rotation.
4. **Online Hadamards**, which cannot be folded because a nonlinearity or the attention sits
   in front: before ``down_proj`` a full Hadamard of the intermediate size, and before
   ``o_proj`` a Hadamard across heads (QuaRot's partial transform; with R2 it makes the full
   ``H_heads ⊗ H_head_dim``) or, when the head count has no Hadamard order (SmolLM2's 9), a
   full one. The Linear holds ``W T`` and is wrapped in a
   :class:`~quantize.qmodel.QuantLinear` whose ``input_transform`` applies ``T``.

All products are taken in float64 and cast back to each weight's dtype. The rotation is
recorded on the model (``model.quant_extra["rotation"]``: seed and the online transforms by
module name), which the checkpoint stores so :func:`attach_online_hadamards` can rebuild them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from .arch import ArchSpec, get_module, set_module, spec_for, untie_head
from .errors import UserError
from .hadamard import OnlineHadamard, is_hadamard_order, random_signs
from .qmodel import QuantLinear

log = logging.getLogger(__name__)

ROTATABLE = ("llama", "mistral", "qwen2", "qwen3")


def check_rotatable(spec: ArchSpec) -> None:
    """One-line :class:`UserError` unless ``spec`` names an RMSNorm decoder rotation supports."""
    if spec.name not in ROTATABLE or spec.embedding is None or spec.attn_v is None:
        raise UserError(f"Hadamard rotation supports RMSNorm decoders ({', '.join(ROTATABLE)}), not {spec.name}; "
                        "quantize it without --rotate")


class _Rotation:
    """``x ↦ x Q`` with ``Q = diag(signs) T`` (T = the factored Hadamard / sqrt(d)), on rows of float64 tensors."""

    def __init__(self, features: int, seed: int) -> None:
        self.signs = random_signs(features, seed)
        self.transform = _online(features, "hidden size")  # runs in its input's dtype (float64 here)

    def right(self, w: torch.Tensor) -> torch.Tensor:
        """``w Q`` for ``w [rows, d]`` or ``[d]`` (rows are independent: see :func:`_update_rows`)."""
        return self.transform(w * self.signs)

    def left_t(self, w: torch.Tensor) -> torch.Tensor:
        """``Qᵀ w`` for ``w [d, *]``."""
        return self.right(w.t()).t()


def _online(features: int, what: str, size: int | None = None) -> OnlineHadamard:
    """An :class:`OnlineHadamard`, or a one-line error saying which dimension has no Hadamard."""
    try:
        return OnlineHadamard(features, size)
    except UserError as exc:
        raise UserError(f"cannot rotate: {what} = {features}: {exc}") from None


def _per_head(transform: OnlineHadamard, w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``w (I ⊗ T_hd)``: ``transform`` on every ``head_dim`` chunk of the last axis of ``w [*, heads*hd]``."""
    shape = w.shape
    return transform(w.reshape(*shape[:-1], shape[-1] // head_dim, head_dim)).reshape(shape)


def _update(param: torch.Tensor, fn) -> None:
    """``param ← fn(param in float64)`` in place, in the parameter's own dtype and device."""
    param.data = fn(param.data.to(torch.float64)).to(dtype=param.dtype, device=param.device).contiguous()


def _update_rows(param: torch.Tensor, fn, chunk: int = 4096) -> None:
    """:func:`_update` for an ``fn`` acting on each row alone, ``chunk`` rows at a time.

    The embedding and head (``[vocab, hidden]``, 49152 rows in SmolLM2) would otherwise hold
    several float64 copies of themselves at once, the peak of the whole rotation.
    """
    data = param.data
    for start in range(0, data.shape[0], chunk):
        rows = data[start:start + chunk]
        rows.copy_(fn(rows.to(torch.float64)))


def _check_rms_norm(norm: nn.Module, path: str) -> None:
    if not type(norm).__name__.endswith("RMSNorm") or getattr(norm, "bias", None) is not None:
        raise UserError(f"{path} is {type(norm).__name__}, not a gain-only RMSNorm; rotation would not be exact")


def _fuse_norm(norm: nn.Module, linears: list[nn.Module], path: str) -> None:
    """``W ← W diag(γ)`` for every Linear ``norm`` feeds, then ``γ ← 1``."""
    _check_rms_norm(norm, path)
    gain = norm.weight.data.to(torch.float64)
    for linear in linears:
        _update_rows(linear.weight, lambda w: w * gain)
    norm.weight.data.fill_(1.0)


def _attach(block: nn.Module, path: str, transform: OnlineHadamard) -> QuantLinear:
    """Wrap ``block.path`` in a QuantLinear (sharing its parameters) applying ``transform`` first."""
    linear = block.get_submodule(path)
    module = linear if isinstance(linear, QuantLinear) else QuantLinear.from_linear(linear)
    module.input_transform = transform.to(dtype=module.weight.dtype, device=module.weight.device)
    if module is not linear:
        set_module(block, path, module)
    return module


def _head_geometry(model: nn.Module) -> tuple[int, int, int]:
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return heads, kv_heads, head_dim


def _o_proj_transform(heads: int, head_dim: int) -> tuple[OnlineHadamard, dict[str, Any]]:
    features = heads * head_dim
    size = heads if is_hadamard_order(heads) and heads > 1 else None
    return _online(features, "attention width (heads x head_dim)", size), {"features": features, "size": size}


def _rotate_block(block: nn.Module, spec: ArchSpec, rot: _Rotation, geometry: tuple[int, int, int],
                  prefix: str, online: dict[str, dict[str, Any]]) -> None:
    heads, _, head_dim = geometry
    attn_in = [block.get_submodule(n) for n in spec.attn_in]
    mlp_in = [block.get_submodule(n) for n in spec.mlp_in]
    _fuse_norm(block.get_submodule(spec.attn_norm), attn_in, f"{prefix}.{spec.attn_norm}")
    _fuse_norm(block.get_submodule(spec.mlp_norm), mlp_in, f"{prefix}.{spec.mlp_norm}")
    for linear in attn_in + mlp_in:
        _update(linear.weight, rot.right)
    r2 = _online(head_dim, "head_dim")
    v = block.get_submodule(spec.attn_v)
    _update(v.weight, lambda w: _per_head(r2, w.t(), head_dim).t())
    if v.bias is not None:
        _update(v.bias, lambda b: _per_head(r2, b, head_dim))
    o_transform, o_entry = _o_proj_transform(heads, head_dim)
    d_features = block.get_submodule(spec.mlp_out).in_features
    d_transform, d_entry = _online(d_features, "intermediate size"), {"features": d_features, "size": None}
    for path, transform, extra in ((spec.attn_out, o_transform, lambda w: _per_head(r2, w, head_dim)),
                                   (spec.mlp_out, d_transform, lambda w: w)):
        linear = block.get_submodule(path)
        _update(linear.weight, lambda w, t=transform, extra=extra: t(extra(rot.left_t(w))))
        if linear.bias is not None:
            _update(linear.bias, rot.right)
    _attach(block, spec.attn_out, o_transform)
    _attach(block, spec.mlp_out, d_transform)
    online[f"{prefix}.{spec.attn_out}"] = o_entry
    online[f"{prefix}.{spec.mlp_out}"] = d_entry


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """Rotate a loaded RMSNorm decoder in place (see the module docstring) and return it.

    The rotated model computes the same logits as the original up to float rounding, in any
    float dtype. Refuses (one line) unsupported architectures, non-RMSNorm norms, a model
    rotated already and sizes with no Hadamard construction.
    """
    spec = spec_for(model)
    check_rotatable(spec)
    extra = getattr(model, "quant_extra", None) or {}
    if "rotation" in extra:
        raise UserError("this model is rotated already")
    start = time.perf_counter()
    geometry = _head_geometry(model)
    hidden = get_module(model, spec.embedding).weight.shape[1]
    rot = _Rotation(hidden, seed)
    blocks = get_module(model, spec.blocks)
    # Every transform is built (and so validated) before the first weight changes: a size with
    # no Hadamard leaves the model untouched.
    _o_proj_transform(geometry[0], geometry[2])
    _online(geometry[2], "head_dim")
    for size in sorted({b.get_submodule(spec.mlp_out).in_features for b in blocks}):
        _online(size, "intermediate size")
    if untie_head(model, spec):
        log.info("untied %s from %s for rotation", spec.head, spec.embedding)
    head = get_module(model, spec.head)
    _fuse_norm(get_module(model, spec.final_norm), [head], spec.final_norm)
    _update_rows(get_module(model, spec.embedding).weight, rot.right)
    _update_rows(head.weight, rot.right)
    online: dict[str, dict[str, Any]] = {}
    for i, block in enumerate(blocks):
        _rotate_block(block, spec, rot, geometry, f"{spec.blocks}.{i}", online)
    seconds = time.perf_counter() - start
    model.quant_extra = {**extra, "rotation": {"seed": seed, "hidden": hidden, "online": online,
                                               "seconds": round(seconds, 3)}}
    log.info("rotated %s (hidden %d, %d online Hadamards) in %.1f s", spec.name, hidden, len(online), seconds)
    return model


def attach_online_hadamards(model: nn.Module, rotation: dict[str, Any]) -> None:
    """Rebuild the online transforms a rotated checkpoint records (its weights are rotated already)."""
    for path, entry in rotation.get("online", {}).items():
        parent, _, child = path.rpartition(".")
        try:
            block = model.get_submodule(parent)
            block.get_submodule(child)
        except AttributeError:
            raise UserError(f"rotated checkpoint names an online Hadamard at {path}, which the model lacks") from None
        _attach(block, child, OnlineHadamard(int(entry["features"]), entry.get("size")))
    extra = getattr(model, "quant_extra", None) or {}
    model.quant_extra = {**extra, "rotation": rotation}

"""Quantized checkpoints: GPTQ-layout safetensors plus our own metadata, written atomically.

``out_dir/``::

    model.safetensors    qweight / qzeros / scales / g_idx per quantized Linear (GPTQ v1
                         layout, see :func:`quantize.primitives.to_gptq_tensors`) and every
                         other tensor of the model unchanged
    config.json          the model config with a ``quantization_config`` that transformers'
                         GPTQ loader and GPTQModel / vLLM read (weight-only checkpoints)
    quant_config.json    our QuantConfig, architecture, calibration fingerprint, versions
    quant_log.json       per layer: loss, seconds, damping used
    tokenizer files      when a tokenizer was given

Everything is written into a temporary sibling directory that is renamed into place when
complete, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .atomic import replace_dir
from .arch import ArchSpec, get_module, set_module, spec_by_name
from .config import QuantConfig
from .errors import UserError
from .gptq import SolveResult
from .primitives import dequantize_grouped, from_gptq_tensors, to_gptq_tensors
from .qmodel import QuantLinear, RowSplitLinear

WEIGHTS = "model.safetensors"
QUANT_CONFIG = "quant_config.json"
QUANT_LOG = "quant_log.json"
FORMAT_VERSION = 1


@dataclass
class QuantState:
    """Metadata a quantized model carries (``model.quant_state``) until it is saved.

    Attributes:
        config: the QuantConfig used.
        arch: ArchSpec name.
        calibration: fingerprint and shape of the calibration data.
        log: per-layer dicts (see :class:`quantize.calibrate.LayerLog`).
        source: how to rebuild the float model (``{"library": "timm", "name": ..., "kwargs": ...}``
            for timm; transformers models rebuild from ``config.json``).
        extra: fields later stages add (e.g. rotation).
    """

    config: QuantConfig
    arch: str
    calibration: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    import safetensors
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version(),
            "gptaq_deploy": _own_version()}


def _own_version() -> str:
    try:
        from importlib.metadata import version

        return version("gptaq-deploy")
    except Exception:  # not installed as a distribution (e.g. running from a source tree)
        return "source"


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear) and m.is_quantized}


def _state_tensors(model: nn.Module, qmods: dict[str, QuantLinear]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors to store: GPTQ tensors for quantized Linears, the rest as is.

    Tied parameters (e.g. an LM head sharing the embedding) are stored once; the aliases are
    returned so loading can check them.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    skip = {f"{n}.weight" for n in qmods}
    for name, t in model.state_dict(keep_vars=False).items():
        if name in skip:
            continue
        key = t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    for name, m in qmods.items():
        packed = to_gptq_tensors(m.codes.cpu(), m.scales.cpu(), m.zeros.cpu(), m.g_idx.cpu(), m.bits)
        tensors.update({f"{name}.{k}": v for k, v in packed.items()})
    return tensors, tied


def hf_quantization_config(cfg: QuantConfig, spec: ArchSpec) -> dict[str, Any]:
    """``quantization_config`` in the form transformers' GPTQ integration and GPTQModel read."""
    return {
        "quant_method": "gptq",
        "bits": cfg.w_bits,
        "group_size": cfg.group_size,
        "desc_act": False,  # act-order and group-aware order keep groups contiguous: natural storage order
        "sym": cfg.sym,
        "true_sequential": True,
        "static_groups": cfg.reorder == "act",
        "damp_percent": cfg.damp,
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
        "lm_head": cfg.quantizes_head,
        **_head_override(cfg, spec),
        "modules_in_block_to_quantize": [list(g) for g in spec.groups],
        # A rotated model needs its online Hadamards (quant_config.json) and W4A4 its activation
        # quantizers: weight-only GPTQ readers load the tensors but not those.
        "meta": {"quantizer": ["gptaq-deploy"], "method": cfg.method, "alpha": cfg.alpha, "reorder": cfg.reorder,
                 "rotation": "hadamard" if cfg.rotate else None, "act_bits": cfg.a_bits},
    }


def _head_override(cfg: QuantConfig, spec: ArchSpec) -> dict[str, Any]:
    """GPTQModel's per-module ``dynamic`` override when the head's grid differs from the blocks'."""
    rules = {f"+:^{re.escape(name)}$": {"bits": bits, "group_size": group}
             for name, (bits, group) in cfg.head_modules(spec.head).items() if (bits, group) != cfg.grid()}
    return {"dynamic": rules} if rules else {}


def save_quantized(model: nn.Module, out_dir: str | os.PathLike, *, tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Write ``model`` (quantized by :func:`quantize.quantize_model`) to ``out_dir``.

    Refuses an existing ``out_dir`` unless ``overwrite``; writes to a temporary sibling and
    renames it into place when complete.
    """
    state: QuantState | None = getattr(model, "quant_state", None)
    if state is None:
        raise UserError("model carries no quantization state; quantize it with quantize_model() first")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} already exists; pass --overwrite to replace it")
    spec = spec_by_name(state.arch)
    qmods = quantized_modules(model)
    tensors, tied = _state_tensors(model, qmods)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        _write_model_config(model, spec, state, tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "quant_config": state.config.to_dict(),
            "arch": state.arch,
            "library": spec.library,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "quantized_modules": sorted(qmods),
            "tied": tied,
            "calibration": state.calibration,
            "source": state.source,
            "extra": state.extra,
            "versions": versions(),
        }
        (tmp / QUANT_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / QUANT_LOG).write_text(json.dumps(state.log, indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_model_config(model: nn.Module, spec: ArchSpec, state: QuantState, directory: Path) -> None:
    if spec.library == "transformers":
        config = model.config.to_dict()
        config["quantization_config"] = hf_quantization_config(state.config, spec)
    else:
        config = {"library": spec.library, "architecture": spec.name, **state.source}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``quant_config.json`` of a checkpoint, or a one-line error saying why it is not one."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{d} is not a directory")
    path = d / QUANT_CONFIG
    if not path.is_file() or not (d / WEIGHTS).is_file():
        raise UserError(f"{d} is not a quantized checkpoint (missing {QUANT_CONFIG} or {WEIGHTS})")
    try:
        meta = json.loads(path.read_text())
        meta["quant_config"] = QuantConfig.from_dict(meta["quant_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is corrupt ({type(exc).__name__}: {exc})") from None
    return meta


def _build_float_model(directory: Path, meta: dict[str, Any], spec: ArchSpec) -> nn.Module:
    dtype = getattr(torch, meta["dtype"])
    if spec.library == "timm":
        import timm

        source = meta["source"]
        return timm.create_model(source["name"], pretrained=False, **source.get("kwargs", {})).to(dtype)
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(directory))
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # we install the quantized weights ourselves
    auto = transformers.AutoModelForCausalLM if spec.modality == "text" else transformers.AutoModelForImageClassification
    return auto.from_config(config, dtype=dtype)


def load_quantized(out_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_quantized`; its forward equals the saved model's bit for bit."""
    directory = Path(out_dir)
    meta = read_meta(directory)
    cfg: QuantConfig = meta["quant_config"]
    spec = spec_by_name(meta["arch"])
    model = _build_float_model(directory, meta, spec)
    if cfg.rotate:
        from .rotate import attach_online_hadamards

        rotation = meta.get("extra", {}).get("rotation")
        if not rotation:
            raise UserError(f"{directory} is marked rotated but records no rotation (quant_config.json extra.rotation)")
        attach_online_hadamards(model, rotation)
    tensors = _read_tensors(directory / WEIGHTS)
    dtype = next(model.parameters()).dtype
    head_grids = cfg.head_modules(spec.head)
    if cfg.head_int8_rows:  # the split head's parts are installed into an empty RowSplitLinear of the saved row counts
        _install_split_head(model, spec, cfg, tensors)
    for name in meta["quantized_modules"]:
        _install_quantized(model, name, tensors, cfg, dtype, grid=head_grids.get(name))
    plain = {k: v for k, v in tensors.items() if not k.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales", "g_idx")}
    for alias, target in meta.get("tied", {}).items():
        plain[alias] = plain[target]
    missing, unexpected = model.load_state_dict(plain, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in meta["quantized_modules"]]
    if missing or unexpected:
        raise UserError(f"checkpoint {directory} does not match its model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.quant_state = QuantState(cfg, meta["arch"], meta["calibration"], _read_log(directory), meta["source"], meta["extra"])
    return model.eval().to(device)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for truncated / foreign files
        raise UserError(f"cannot read {path}: {exc}") from None


def _read_log(directory: Path) -> list[dict[str, Any]]:
    path = directory / QUANT_LOG
    return json.loads(path.read_text()) if path.exists() else []


def _install_split_head(model: nn.Module, spec: ArchSpec, cfg: QuantConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the float head with a :class:`RowSplitLinear` whose parts have the stored row counts."""
    head = get_module(model, spec.head)
    rows, start = [], 0
    for name in list(cfg.head_modules(spec.head))[:-1]:
        scales = tensors.get(f"{name}.scales")
        if scales is None:
            raise UserError(f"checkpoint lacks {name}.scales (its head is split at head_int8_rows={cfg.head_int8_rows})")
        start += int(scales.shape[1])  # GPTQ scales are [groups, out]
        rows.append(start)
    try:
        set_module(model, spec.head, RowSplitLinear.from_linear(head, rows))
    except ValueError as exc:
        raise UserError(f"checkpoint head split does not fit the model: {exc}") from None


def _install_quantized(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], cfg: QuantConfig, dtype: torch.dtype,
                       grid: tuple[int, int] | None = None) -> None:
    """Install one stored GPTQ Linear; ``grid`` is an LM head part's ``(bits, group_size)`` (None: a block Linear)."""
    linear = get_module(model, name)
    try:
        parts = {k: tensors[f"{name}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")}
    except KeyError as exc:
        raise UserError(f"checkpoint lacks {exc.args[0]}") from None
    head = grid is not None
    bits, group_size = grid or cfg.grid()
    unpacked = from_gptq_tensors(parts, bits, linear.in_features)
    weight = dequantize_grouped(unpacked["codes"], unpacked["scales"], unpacked["zeros"], unpacked["g_idx"]).to(dtype)
    module = linear if isinstance(linear, QuantLinear) else QuantLinear.from_linear(linear)
    result = SolveResult(weight, unpacked["codes"].to(torch.uint8), unpacked["scales"], unpacked["zeros"],
                         unpacked["g_idx"], torch.zeros(weight.shape[0]), 0.0)
    module.set_quantized(result, bits, group_size, cfg.sym)
    if not head:  # the head never gets an activation quantizer
        module.set_activation_quant(cfg.a_bits, cfg.a_sym, cfg.a_clip_ratio)
    if module is not linear:
        set_module(model, name, module)

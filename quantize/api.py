"""``quantize_model``: the quantize stage's one entry point."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch
from torch import nn

from .arch import ArchSpec, get_module, spec_for
from .calibrate import calibrate_model
from .checkpoint import QuantState
from .config import QuantConfig
from .errors import UserError
from .resume import ResumeStore, model_fingerprint, tensor_digest

log = logging.getLogger(__name__)

#: Calibration samples per forward pass (bounded so activations of big models stay small).
DEFAULT_BATCH = 8


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def prepare_calibration(calib: Any, spec: ArchSpec, model: nn.Module, *, tokenizer: Any = None) -> torch.Tensor:
    """Turn what the user passed into a tensor: ids ``[n, seq]`` (int64) or pixels ``[n, 3, H, W]``.

    ``calib`` may be such a tensor already, a list of strings or a ``datasets`` dataset with a
    ``text`` column (tokenized with ``tokenizer``, else the model's own from its
    ``name_or_path``, and cut into 128 windows of up to 2048 tokens), or, for image models, a
    dataset with an ``image``/``img`` column.
    """
    from .data import CalibConfig, check_modality, sample_windows, tokenize_corpus

    check_modality(calib, spec.modality)
    if isinstance(calib, torch.Tensor):
        return calib
    if spec.modality == "image":
        return _images_from_dataset(calib, model)
    texts = list(calib["text"]) if hasattr(calib, "column_names") else list(calib)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise UserError("calibration data must be token ids, a list of strings or a dataset with a 'text' column")
    tok = tokenizer or _model_tokenizer(model)
    tokens = tokenize_corpus(texts, tok)
    cfg = CalibConfig()
    seqlen = min(cfg.seqlen, max(8, tokens.numel() // 4))
    return sample_windows(tokens, cfg.nsamples, seqlen, cfg.seed)


def _model_tokenizer(model: nn.Module) -> Any:
    from transformers import AutoTokenizer

    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception:
        raise UserError("calibration text needs a tokenizer: pass tokenizer=... or token ids [n, seqlen]") from None


def _images_from_dataset(dataset: Any, model: nn.Module) -> torch.Tensor:
    column = "image" if "image" in dataset.column_names else "img"
    transform = model_image_transform(model)
    return torch.stack([transform(img.convert("RGB")) for img in dataset[column]])


def model_image_transform(model: nn.Module):
    """The model's own eval preprocessing (timm data config, or the HF image processor)."""
    if hasattr(model, "pretrained_cfg"):
        from timm.data import create_transform, resolve_data_config

        return create_transform(**resolve_data_config({}, model=model))
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(model.name_or_path)
    return lambda img: proc(img, return_tensors="pt")["pixel_values"][0]


def _fingerprint(model: nn.Module, config: QuantConfig, calib: torch.Tensor | None) -> dict[str, str]:
    return {
        "model": model_fingerprint(model),
        "config": hashlib.sha256(config.to_json().encode()).hexdigest(),
        "calibration": tensor_digest(calib, max_elems=1 << 40) if calib is not None else "none",
    }


def _place_stem(model: nn.Module, spec: ArchSpec, device: torch.device) -> None:
    """Move everything but the blocks to ``device``; blocks travel one at a time."""
    blocks = get_module(model, spec.blocks)
    for module in model.modules():
        if module is blocks:
            continue
        for name, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if any(p is q for q in blocks.parameters()) or any(p is b for b in blocks.buffers()):
                continue
            if p.device != device:
                p.data = p.data.to(device)


def quantize_model(
    model: nn.Module,
    calib: Any,
    config: QuantConfig,
    *,
    device: str | torch.device | None = None,
    resume_dir: str | os.PathLike | None = None,
    progress: bool = True,
    offload: bool = False,
    tokenizer: Any = None,
    batch_size: int = DEFAULT_BATCH,
) -> nn.Module:
    """Quantize a loaded transformers or timm model in place and return it.

    Args:
        model: a supported model (see :mod:`quantize.arch`), in eval mode or not.
        calib: token ids ``LongTensor [n, seqlen]``, a list of strings, a ``datasets``
            dataset, or images ``[n, 3, H, W]``; ignored by RTN (which needs no data).
        config: what to do.
        device: where blocks are calibrated (default: CUDA when available, else CPU).
        resume_dir: persist progress after every block there and resume from it.
        progress: show a progress bar over blocks.
        offload: keep the streams between blocks on the CPU (one block on the device).
        tokenizer: used when ``calib`` is text.
        batch_size: calibration samples per forward.

    With ``config.rotate`` the model is Hadamard-rotated first (:func:`quantize.rotate.rotate_model`,
    seeded by ``config.seed``); its LM head is then untied from the embedding.

    Returns:
        The same model, its block Linears replaced by fake-quantized
        :class:`~quantize.qmodel.QuantLinear` modules, carrying ``model.quant_state``.
    """
    spec = spec_for(model)
    dev = resolve_device(device)
    model.eval()
    if config.quantizes_head and (spec.final_norm is None or spec.modality != "text"):
        raise UserError(f"{spec.name}: quantizing the head (head_bits={config.head_bits}) is supported for "
                        "causal LMs with a final norm only")
    if config.head_int8_rows:  # refused before calibration, not after the last block
        head_rows = get_module(model, spec.head).out_features
        if config.head_int8_rows >= head_rows:
            raise UserError(f"head_int8_rows={config.head_int8_rows} leaves no INT4 rows: the head has {head_rows} output rows")
    if config.rotate:
        from .rotate import check_rotatable, rotate_model

        check_rotatable(spec)
        rotate_model(model, seed=config.seed)
    needs_data = config.uses_data
    data = prepare_calibration(calib, spec, model, tokenizer=tokenizer) if needs_data else None
    if data is not None and data.shape[0] == 0:
        raise UserError("calibration data is empty")
    batches = list(data.split(batch_size)) if data is not None else None
    fingerprint = _fingerprint(model, config, data)
    store = ResumeStore(resume_dir, fingerprint) if resume_dir is not None else None
    home = next(model.parameters()).device
    _place_stem(model, spec, dev)
    with torch.no_grad():
        logs = calibrate_model(model, spec, config, batches, device=dev, offload=offload, store=store, progress=progress)
    model.to(home)
    calibration = {"fingerprint": fingerprint["calibration"], "shape": list(data.shape) if data is not None else None}
    source = dict(getattr(model, "quant_source", {}) or {})
    model.quant_state = QuantState(config, spec.name, calibration, [l.to_dict() for l in logs], source,
                                   dict(getattr(model, "quant_extra", {}) or {}))
    return model

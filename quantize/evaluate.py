"""Accuracy of a (quantized) model: perplexity for causal LMs, top-1 accuracy for classifiers.

Perplexity follows the GPTQ protocol: the evaluation stream is cut into non-overlapping
windows of ``seqlen`` tokens (the tail is dropped), each window's loss is the mean next-token
cross-entropy over its positions 1..seqlen-1 computed in fp32, and
``ppl = exp(mean over windows of the window loss)``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd, restoring the caller's training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: tensors cached inside the model stay usable later
            yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _model_float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _logits(output: Any) -> torch.Tensor:
    """Logits of a HF output (``.logits``), a plain tensor, or a tuple whose first item they are."""
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _stream(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` as a 1-D int64 stream; ``[1, N]`` (a tokenizer's ``return_tensors``) is accepted."""
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.dim() != 1 or tokens.is_floating_point():
        raise UserError(f"evaluation tokens must be a 1-D integer tensor [N] (got {tokens.dtype} of shape {list(tokens.shape)})")
    return tokens.to(torch.int64)


def _check_vocab(model: nn.Module, tokens: torch.Tensor) -> None:
    # An out-of-range id otherwise fails deep inside the embedding with "index out of range".
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and tokens.numel() and int(tokens.max()) >= vocab:
        raise UserError(f"token id {int(tokens.max())} >= the model's vocab_size {vocab}: the tokenizer does not match the model")


def window_nlls(
    model: nn.Module,
    tokens: torch.Tensor,
    seqlen: int = 2048,
    *,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Mean next-token NLL of each non-overlapping window: FloatTensor ``[nwin]`` (fp32, CPU).

    Args:
        model: HF causal LM (``model(input_ids=..., use_cache=False).logits`` is ``[b, seqlen, V]``).
        tokens: LongTensor ``[N]`` (or ``[1, N]``); ``nwin = N // seqlen``, the tail is dropped.
        seqlen: window length; each window scores its positions 1..seqlen-1.
        batch_size: windows per forward.
        device: where inputs go; default the device of the model's first parameter.
        limit: at most this many windows (the first ones).
        progress: show a tqdm bar.
    """
    tokens = _stream(tokens)
    if seqlen < 2:
        raise UserError(f"seqlen must be >= 2 for perplexity (got {seqlen})")
    if tokens.numel() < seqlen:
        raise UserError(f"evaluation text has {tokens.numel()} tokens; need at least one window of --seqlen {seqlen}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1 window (got {limit})")
    _check_vocab(model, tokens)
    nwin = tokens.numel() // seqlen if limit is None else min(limit, tokens.numel() // seqlen)
    windows = tokens[: nwin * seqlen].view(nwin, seqlen)
    device = _model_device(model) if device is None else torch.device(device)
    from tqdm.auto import tqdm

    nlls = []
    with _eval_mode(model):
        for start in tqdm(range(0, nwin, batch_size), disable=not progress, desc="perplexity", unit="batch"):
            ids = windows[start : start + batch_size].to(device)
            logits = _logits(model(input_ids=ids, use_cache=False))
            # fp32 one window at a time: [seqlen, V] in fp32 is the peak, not [b, seqlen, V].
            for row in range(ids.shape[0]):
                nll = F.cross_entropy(logits[row, :-1].float(), ids[row, 1:], reduction="mean")
                nlls.append(nll.cpu())
            del logits
    return torch.stack(nlls).float()


def perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    seqlen: int = 2048,
    *,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> float:
    """GPTQ-protocol perplexity ``exp(mean(window_nlls))`` of ``model`` on the stream ``tokens [N]``."""
    nlls = window_nlls(model, tokens, seqlen, batch_size=batch_size, device=device, limit=limit, progress=progress)
    return math.exp(nlls.double().mean().item())


def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int = 64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Class logits ``[n, classes]`` (fp32, CPU) of an image classifier on ``images [n, 3, H, W]``.

    timm models are called as ``model(x)``; HF models (``main_input_name == "pixel_values"``)
    as ``model(pixel_values=x)``; an output with ``.logits`` is unwrapped.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise UserError(f"images must be a float tensor [n, 3, H, W] (got {images.dtype} of shape {list(images.shape)})")
    device = _model_device(model) if device is None else torch.device(device)
    dtype = _model_float_dtype(model)
    by_keyword = getattr(model, "main_input_name", None) == "pixel_values"
    out = []
    with _eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device=device, dtype=dtype)
            output = model(pixel_values=x) if by_keyword else model(x)
            out.append(_logits(output).float().cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def top1_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> float:
    """Fraction in [0, 1] of ``images [n, 3, H, W]`` whose argmax logit equals ``labels [n]``."""
    labels = labels.reshape(-1)
    if images.shape[0] != labels.numel():
        raise UserError(f"{images.shape[0]} images but {labels.numel()} labels")
    if labels.numel() == 0:
        raise UserError("no images to measure accuracy on")
    predicted = predict_logits(model, images, batch_size, device).argmax(dim=-1)
    return (predicted == labels.cpu()).double().mean().item()

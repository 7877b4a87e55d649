"""Open any artifact of the toolchain behind one interface: logits for token windows or images.

    with open_artifact("runs/smollm2-w4-ort") as art:          # ORT build dir
        logits = art.lm_logits(ids)                             # ids [b, S] int64 -> [b, S, V] fp32

Kinds (:func:`classify`):

* ``checkpoint``: a quantized checkpoint directory (``quant_config.json``), run in PyTorch
  with :func:`quantize.load_quantized` (fake-quant, exactly what was calibrated);
* ``model``: an FP model (transformers directory, ``.gguf`` file, hub id, ``timm:NAME``, or
  ``smollm2-135m`` = the demo), run in PyTorch via :func:`quantize.loading.load_model`;
* ``onnx`` / ``export`` / ``build`` / ``plan``: a ``.onnx`` file, an export directory, an
  ORT / TensorRT build directory or a ``model.plan``, run through
  :func:`runtime.open_session` (ONNX Runtime or TensorRT).

Errors are one-line :class:`~quantize.errors.UserError`.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quantize.errors import UserError

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")

log = logging.getLogger(__name__)

TORCH_KINDS = ("checkpoint", "model")
SESSION_KINDS = ("onnx", "export", "build", "plan")
BACKENDS = ("torch", "ort", "trt")
TASKS = {"causal-lm": "lm", "image-classification": "image", "text": "lm", "image": "image"}
#: timm's and torchvision's default normalisation, used when an ONNX graph is all we have.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArtifactInfo:
    """What a report records about an artifact (JSON-ready)."""

    path: str
    kind: str
    backend: str
    task: str
    fingerprint: str
    size_bytes: int
    dtype: str
    scheme: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(path: str) -> str:
    """The artifact kind of ``path`` (see the module docstring); one line when it is none."""
    p = Path(path)
    if p.is_dir():
        if (p / "quant_config.json").is_file():
            return "checkpoint"
        if (p / "build.json").is_file():
            return "build"
        if (p / "model.onnx").is_file():
            return "export"
        if (p / "config.json").is_file():
            return "model"
        raise UserError(f"{p} is not an artifact: no quant_config.json (checkpoint), build.json (build), "
                        "model.onnx (export) or config.json (FP model) in it")
    if p.is_file():
        if p.suffix == ".onnx":
            return "build" if (p.parent / "build.json").is_file() and p.name == "model.onnx" else "onnx"
        if p.suffix in (".plan", ".engine"):
            return "plan"
        if p.suffix == ".gguf":
            return "model"
        raise UserError(f"{p} is not an artifact (expected .onnx, .plan, .gguf or a directory)")
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or path.endswith((".onnx", ".plan", ".gguf")):
        raise UserError(f"{p} does not exist")
    return "model"  # a hub id, timm:NAME or the demo name; load_model says why when it cannot load it


def sha256_paths(paths: list[Path]) -> str:
    """SHA-256 over the named files' names and contents (sorted by name)."""
    digest = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str | None:
    """Digest of a tokenizer's vocabulary and special tokens (``None`` without a tokenizer)."""
    if tokenizer is None:
        return None
    import json

    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()


class Artifact(abc.ABC):
    """A loaded artifact: ``lm_logits`` / ``image_logits`` plus what reports need (:attr:`info`)."""

    info: ArtifactInfo
    tokenizer: Any = None

    def __enter__(self) -> "Artifact":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (idempotent)."""

    @abc.abstractmethod
    def lm_logits(self, ids: np.ndarray) -> np.ndarray:
        """Next-token logits ``[b, S, V]`` (fp32) of token windows ``ids [b, S]`` (int64), no cache."""

    @abc.abstractmethod
    def image_logits(self, pixels: np.ndarray) -> np.ndarray:
        """Class logits ``[n, classes]`` (fp32) of ``pixels [n, 3, H, W]`` (fp32, preprocessed)."""

    def image_transform(self) -> Callable | None:
        """PIL image -> ``[3, H, W]`` float tensor as this model was trained with (``None``: unknown)."""
        return None

    @property
    def vocab_size(self) -> int | None:
        return None


# --------------------------------------------------------------------------------- PyTorch


class TorchArtifact(Artifact):
    """A checkpoint or FP model in PyTorch (CPU, or CUDA when ``device`` says so)."""

    def __init__(self, path: str, kind: str, device: str | None = None) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a gate's log shows its own progress, not weight loading
        self._torch = torch
        self.device = torch.device(device or "cpu")
        if kind == "checkpoint":
            from quantize.checkpoint import QUANT_CONFIG, WEIGHTS, load_quantized

            directory = Path(path)
            self.model = load_quantized(directory, device=self.device)
            self.tokenizer = _directory_tokenizer(directory)
            fingerprint = sha256_paths([directory / QUANT_CONFIG, directory / WEIGHTS])
            size = (directory / WEIGHTS).stat().st_size
            cfg = self.model.quant_state.config
            scheme = f"{cfg.method} w{cfg.w_bits}a{cfg.a_bits} g{cfg.group_size}{' rotated' if cfg.rotate else ''}"
            self._directory: Path | None = directory
        else:
            from quantize.loading import load_model

            loaded = load_model(None if path in ("smollm2-135m", "demo") else path)
            self.model = loaded.model.to(self.device)
            self.tokenizer = loaded.tokenizer
            fingerprint, size, self._directory = _model_fingerprint(path, loaded)
            scheme = "fp"
        from quantize.arch import spec_for

        self.spec = spec_for(self.model)
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.info = ArtifactInfo(str(path), kind, "torch", TASKS[self.spec.modality], fingerprint, size, dtype, scheme)

    @property
    def vocab_size(self) -> int | None:
        return getattr(getattr(self.model, "config", None), "vocab_size", None)

    def lm_logits(self, ids: np.ndarray) -> np.ndarray:
        from quantize.evaluate import _logits

        torch = self._torch
        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(ids).to(self.device), use_cache=False)
        return _logits(out).float().cpu().numpy()

    def image_logits(self, pixels: np.ndarray) -> np.ndarray:
        from quantize.evaluate import predict_logits

        return predict_logits(self.model, self._torch.from_numpy(pixels), batch_size=len(pixels), device=self.device).numpy()

    def image_transform(self) -> Callable | None:
        if self.spec.library == "timm":
            from quantize.api import model_image_transform

            return model_image_transform(self.model)
        if self._directory is not None and (self._directory / "preprocessor_config.json").is_file():
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(str(self._directory))
            return lambda img: self._torch.as_tensor(np.asarray(proc(img, return_tensors="np")["pixel_values"][0]))
        size = getattr(getattr(self.model, "config", None), "image_size", None)
        if size is None:
            return None
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return default_image_transform(int(h), int(w))

    def close(self) -> None:
        self.model = None


def _directory_tokenizer(directory: Path):
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise UserError(f"the tokenizer files in {directory} cannot be loaded: {str(exc).splitlines()[0]}") from None


def _model_fingerprint(path: str, loaded) -> tuple[str, int, Path | None]:
    """(fingerprint, size on disk, directory) of an FP model: its weight files when local."""
    from quantize.loading import demo_cache_dir

    p = Path(path)
    directory = demo_cache_dir() if path in ("smollm2-135m", "demo") else (p if p.is_dir() else None)
    files = [p] if p.is_file() else sorted(directory.glob("*.safetensors")) if directory else []
    if not files:
        name = f"{loaded.source.get('library')}:{loaded.source.get('name')}"
        return hashlib.sha256(name.encode()).hexdigest(), 0, directory
    return sha256_paths(files), sum(f.stat().st_size for f in files), directory


# --------------------------------------------------------------------------------- sessions


class SessionArtifact(Artifact):
    """An ONNX file, export / build directory or TensorRT plan, through :func:`runtime.open_session`."""

    def __init__(self, path: str, kind: str, *, backend: str | None = None, provider: str | None = None,
                 threads: int | None = None, accuracy_level: int | None = None) -> None:
        from runtime.generate import cache_layout, load_tokenizer, read_export_meta
        from runtime.load import open_session, resolve_artifact

        resolved = resolve_artifact(path)
        self.session = open_session(path, backend=backend, provider=provider, threads=threads,
                                    accuracy_level=accuracy_level)
        self.meta = read_export_meta(resolved.directory)
        self.specs = self.session.input_metadata()
        self.layout = cache_layout(self.session) if "input_ids" in self.specs else None
        self.kv = kv_layout(path, self.specs) if self.layout else []
        try:
            self.tokenizer = load_tokenizer(resolved.directory, self.meta) if "input_ids" in self.specs else None
        except UserError:
            self.tokenizer = None  # a bare .onnx: the reference's tokenizer is used, vocab size checked
        files = [resolved.model_file] + [f for f in (resolved.model_file.parent / "model.onnx.data",) if f.is_file()]
        task = TASKS.get(self.meta.get("task")) or ("lm" if "input_ids" in self.specs else
                                                    "image" if "pixel_values" in self.specs else "unknown")
        logits = self.session.output_metadata().get("logits")
        if logits is None:
            raise UserError(f"{resolved.model_file} has no 'logits' output (outputs: {', '.join(self.session.output_metadata())})")
        details = {"providers": getattr(self.session, "active_providers", None), "accuracy_level": accuracy_level,
                   "build": resolved.build.get("config") if resolved.build else None}
        self.info = ArtifactInfo(str(path), kind, resolved.backend, task, sha256_paths(files),
                                 sum(f.stat().st_size for f in files), logits.dtype.name,
                                 (self.meta.get("scheme") or {}).get("name"), details)
        self._logits_vocab = logits.shape[-1] if isinstance(logits.shape[-1], int) else None

    @property
    def vocab_size(self) -> int | None:
        return self.meta.get("vocab_size") or self._logits_vocab

    @property
    def max_seq_len(self) -> int | None:
        return self.meta.get("max_seq_len")

    def lm_logits(self, ids: np.ndarray) -> np.ndarray:
        batch, seq = ids.shape
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, seq), np.int64)}
        if "position_ids" in self.specs:
            feeds["position_ids"] = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
        for name, dtype, heads, head_dim in self.kv:
            feeds[name] = np.zeros((batch, heads, 0, head_dim), dtype=dtype)
        return self.session.run(feeds)["logits"].astype(np.float32, copy=False)

    def image_logits(self, pixels: np.ndarray) -> np.ndarray:
        dtype = self.specs["pixel_values"].dtype
        return self.session.run({"pixel_values": pixels.astype(dtype, copy=False)})["logits"].astype(np.float32, copy=False)

    def image_transform(self) -> Callable | None:
        image = self.meta.get("image") or {}
        shape = self.specs.get("pixel_values").shape if "pixel_values" in self.specs else ()
        h, w = image.get("height") or (shape[2] if len(shape) == 4 else None), image.get("width") or (shape[3] if len(shape) == 4 else None)
        if not isinstance(h, int) or not isinstance(w, int):
            return None
        log.warning("image preprocessing of %s is not recorded; using resize to %dx%d and ImageNet mean/std",
                    self.info.path, h, w)
        return default_image_transform(h, w)

    def close(self) -> None:
        self.session.close()


def default_image_transform(height: int, width: int) -> Callable:
    """PIL image -> ``[3, H, W]`` fp32: bilinear resize, scale to [0, 1], ImageNet mean/std."""
    import torch
    from PIL import Image

    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]

    def transform(img) -> torch.Tensor:
        arr = np.asarray(img.convert("RGB").resize((width, height), Image.BILINEAR), np.float32) / 255.0
        return torch.from_numpy((arr.transpose(2, 0, 1) - mean) / std)

    return transform


def open_artifact(path: str | os.PathLike, *, backend: str | None = None, provider: str | None = None,
                  threads: int | None = None, accuracy_level: int | None = None, device: str | None = None) -> Artifact:
    """Load ``path`` as an :class:`Artifact` on ``backend`` (``None``: what the artifact is).

    ``torch`` runs checkpoints and FP models; ``ort`` / ``trt`` run ONNX files, export and
    build directories and plans (a plan needs TensorRT: without it the runtime's one-line
    refusal is raised).
    """
    text = os.fspath(path)
    kind = classify(text)
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is invalid: expected one of {', '.join(BACKENDS)}")
    if kind in TORCH_KINDS:
        if backend not in (None, "torch"):
            raise UserError(f"{text} is a {'quantized checkpoint' if kind == 'checkpoint' else 'PyTorch model'}, which runs "
                            f"with --backend torch; for {backend} export it first (python -m export {text} --out DIR)")
        return TorchArtifact(text, kind, device)
    if backend == "torch":
        raise UserError(f"{text} is an ONNX / engine artifact; --backend torch runs checkpoints and FP models only")
    return SessionArtifact(text, kind, backend=backend, provider=provider, threads=threads, accuracy_level=accuracy_level)


def kv_layout(path: str, specs) -> list[tuple[str, np.dtype, int, int]]:
    """``(name, dtype, kv heads, head size)`` of every cache input; sizes from the graph's input shapes,
    else (a symbolic head size, as onnxruntime-genai's builder writes) from the graph itself."""
    past = sorted((int(m.group(1)), m.group(2) != "key", name) for name in specs if (m := _PAST.match(name)))
    if not past:
        raise UserError(f"{path} has no past_key_values.N.key/value inputs: bench times prefill and decode over the "
                        "KV cache (export without --no-kv-cache)")
    inferred: tuple[int | None, int | None] | None = None
    out = []
    for _, _, name in past:
        shape = specs[name].shape
        if len(shape) != 4:
            raise UserError(f"{path}: {specs[name].describe()} is not [batch, kv_heads, past, head_size]")
        heads, head_dim = shape[1], shape[3]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            inferred = inferred or _graph_kv_sizes(path)
            heads = heads if isinstance(heads, int) else inferred[0]
            head_dim = head_dim if isinstance(head_dim, int) else inferred[1]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise UserError(f"{path}: {specs[name].describe()} has a symbolic head count or head size that the graph "
                            "does not determine")
        out.append((name, specs[name].dtype, heads, head_dim))
    return out


def _graph_kv_sizes(path: str) -> tuple[int | None, int | None]:
    """(kv heads, head size) from ``genai_config.json`` beside the model, else from a
    ``GroupQueryAttention`` node (its ``kv_num_heads`` and the packed QKV MatMulNBits width)."""
    import json

    from runtime.load import resolve_artifact

    model_file = resolve_artifact(path).model_file
    config = model_file.parent / "genai_config.json"
    if config.is_file():
        decoder = (json.loads(config.read_text()).get("model") or {}).get("decoder") or {}
        if decoder.get("head_size"):
            return decoder.get("num_key_value_heads"), int(decoder["head_size"])
    import onnx
    from onnx import helper

    graph = onnx.load(str(model_file), load_external_data=False).graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        heads, kv_heads = int(attrs.get("num_heads", 0)), int(attrs.get("kv_num_heads", 0))
        packed = len(node.input) < 3 or not node.input[1]
        qkv = producers.get(node.input[0])
        widths = {helper.get_attribute_value(a) for a in qkv.attribute if a.name == "N"} if qkv is not None else set()
        if packed and widths and heads and kv_heads:
            return kv_heads, int(widths.pop()) // (heads + 2 * kv_heads)
    return None, None

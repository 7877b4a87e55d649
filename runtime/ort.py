"""ONNX Runtime backend: :class:`OrtSession`.

CPU by default; CUDA first when ``onnxruntime-gpu`` offers it. ORT's CPU graph optimiser fuses
the exported ``DequantizeLinear(int4) -> MatMul`` pairs into ``com.microsoft::MatMulNBits``;
by default that kernel quantizes activations to int8 per block (``accuracy_level`` 4). Pass
``accuracy_level=1`` (fp32 compute) for bit-faithful validation against PyTorch.

Fused decoder exports (``GroupQueryAttention``, marked ``gptaq_deploy.kv_cache = in_place`` in
the model's metadata) can keep their KV cache in place: :meth:`OrtSession.allocate_cache`
preallocates one ``[B, kv_heads, max_len, head_dim]`` buffer per layer and key/value, and
binds it as both ``past_key_values.*`` input and ``present.*`` output, so a decode step writes
one position instead of copying the whole cache (at a 512-token cache on two CPU cores that
copy was most of ``GroupQueryAttention``'s time). onnxruntime-genai model-builder graphs whose
``genai_config.json`` sets ``search.past_present_share_buffer`` get the same treatment, as
onnxruntime-genai's own runtime runs them (their head size comes from that file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from quantize.errors import UserError

from .base import Session, TensorSpec
from .generate import cache_layout

MODEL_FILE = "model.onnx"
#: the model metadata a fused export carries (export.ort_fused) when past and present may share a buffer
KV_CACHE_KEY, KV_IN_PLACE = "gptaq_deploy.kv_cache", "in_place"
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_SHORT = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider",
          "tensorrt": "TensorrtExecutionProvider"}
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/model.onnx`` for an export directory; one-line error if missing."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise UserError(f"{p} does not exist (expected an ONNX file or an export directory holding {MODEL_FILE})")
    return p


def genai_cache_config(model_file: Path) -> tuple[int | None, bool]:
    """``(head size, past and present share one buffer)`` of a model-builder graph.

    Read from ``genai_config.json`` beside ``model_file`` (``model.decoder.head_size``,
    ``search.past_present_share_buffer``). No file, or one that does not parse, is
    ``(None, False)``: most ONNX files have none, and it is a hint, not the model.
    """
    import json

    config = model_file.parent / "genai_config.json"
    try:
        data = json.loads(config.read_text())
        shared = bool((data.get("search") or {}).get("past_present_share_buffer"))
        head_size = ((data.get("model") or {}).get("decoder") or {}).get("head_size")
    except (OSError, ValueError, AttributeError):
        return None, False
    if not isinstance(head_size, int) or isinstance(head_size, bool) or head_size < 1:
        return None, False
    return head_size, shared


def _with_head_dim(spec: TensorSpec, head_dim: int) -> TensorSpec:
    """A ``past_key_values.*`` spec ``[B, kv, P, D]`` with a symbolic ``D`` made ``head_dim``."""
    if not spec.name.startswith("past_key_values.") or len(spec.shape) != 4 or isinstance(spec.shape[3], int):
        return spec
    return replace(spec, shape=(*spec.shape[:3], head_dim))


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """Provider names (``"cpu"``, ``"cuda"`` or ORT's full names); default CUDA when available, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        chosen = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
        return chosen
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p]
    chosen = [_SHORT.get(p.lower(), p) for p in providers]
    bad = [p for p in chosen if p not in available]
    if bad:
        raise UserError(f"ONNX Runtime provider {bad[0]} is not available here; available: {', '.join(available)}")
    return chosen


def _spec(arg) -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        dtype = np.dtype("O")
    else:
        dtype = np.dtype(_ORT_TYPES[arg.type])
    shape = tuple(d if isinstance(d, (int, str)) or d is None else str(d) for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


@dataclass
class InPlaceKVCache:
    """A preallocated KV cache bound to one :class:`OrtSession` (from :meth:`OrtSession.allocate_cache`).

    Attributes:
        batch, max_len: rows and positions of every buffer.
        values: ``{past input name: OrtValue [batch, kv_heads, max_len, head_dim]}``, each bound
            as that input and as its ``present.*`` output.
        outputs: the other outputs (``logits``), bound first, in this order.
        binding: the ORT ``IOBinding`` holding all of it.
    """

    batch: int
    max_len: int
    values: dict
    outputs: list[str]
    binding: object

    def numpy(self, name: str) -> np.ndarray:
        """A host copy of one buffer ``[batch, kv_heads, max_len, head_dim]``."""
        return self.values[name].numpy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OrtSession(Session):
    """An ONNX Runtime inference session behind the :class:`~runtime.base.Session` protocol.

    Args:
        path: ``model.onnx`` or an export directory.
        providers: e.g. ``["cpu"]``, ``["cuda", "cpu"]`` (default: CUDA when available, CPU).
        accuracy_level: ``session.qdq_matmulnbits_accuracy_level`` for the fused INT4 kernels
            (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations); ``None`` keeps ORT's default.
        threads: intra-op threads (``None``: ORT's default).
        optimized_model_path: write the graph after ORT's optimisations there (inspection).
        optimization: ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.
        session_config: extra ``SessionOptions.add_session_config_entry`` pairs.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | str | None = None,
                 accuracy_level: int | None = None, threads: int | None = None, *,
                 optimized_model_path: str | os.PathLike | None = None, optimization: str = "all",
                 session_config: Mapping[str, str] | None = None) -> None:
        import onnxruntime as ort

        self.path = resolve_model_path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise UserError(f"threads={threads!r} is invalid: expected a positive integer")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if accuracy_level is not None:
            if accuracy_level not in (0, 1, 2, 3, 4):
                raise UserError(f"accuracy_level={accuracy_level!r} is invalid: expected 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)")
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
        if optimization not in _LEVELS:
            raise UserError(f"optimization={optimization!r} is invalid: expected one of {', '.join(_LEVELS)}")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
        if optimized_model_path is not None:
            options.optimized_model_filepath = str(optimized_model_path)
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        self.providers = resolve_providers(providers)
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # ORT raises its own pybind exception types for corrupt / foreign files
            raise UserError(f"cannot load ONNX model {self.path}: {_first_line(exc)}") from None
        self._inputs = {a.name: _spec(a) for a in self._session.get_inputs()}
        self._outputs = {a.name: _spec(a) for a in self._session.get_outputs()}
        metadata = self._session.get_modelmeta().custom_metadata_map
        genai_head_dim, genai_shares = genai_cache_config(self.path)
        if genai_head_dim is not None:  # model-builder graphs leave the head size symbolic in the cache inputs
            self._inputs = {n: _with_head_dim(s, genai_head_dim) for n, s in self._inputs.items()}
        shares = metadata.get(KV_CACHE_KEY) == KV_IN_PLACE or genai_shares
        self.supports_in_place_cache = shares and cache_layout(self) is not None

    def input_metadata(self) -> dict[str, TensorSpec]:
        return dict(self._inputs)

    def output_metadata(self) -> dict[str, TensorSpec]:
        return dict(self._outputs)

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise UserError("the session is closed")
        names = list(self._outputs)
        try:
            values = self._session.run(names, feeds)
        except Exception as exc:
            raise UserError(f"ONNX Runtime failed to run {self.path.name}: {_first_line(exc)}") from exc
        return dict(zip(names, values))

    def allocate_cache(self, batch: int, max_len: int,
                       initial: Mapping[str, np.ndarray] | None = None) -> InPlaceKVCache:
        """Zeroed cache buffers ``[batch, kv_heads, max_len, head_dim]`` bound in place.

        Args:
            initial: optional ``{past name: [batch, kv_heads, P, head_dim]}`` written into the
                first ``P`` positions (a cache that already holds ``P`` tokens).
        """
        import onnxruntime as ort

        if not self.supports_in_place_cache:
            return super().allocate_cache(batch, max_len)
        for name, value in (("batch", batch), ("max_len", max_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name}={value!r} is invalid: expected a positive integer")
        device = "cuda" if self.active_providers[:1] == ["CUDAExecutionProvider"] else "cpu"
        binding = self._session.io_binding()
        layout = cache_layout(self)
        outputs = [n for n in self._outputs if n not in {present for _, present in layout}]
        for name in outputs:
            binding.bind_output(name, "cpu")
        values = {}
        for past, present in layout:
            spec = self._inputs[past]
            if not isinstance(spec.shape[1], int) or not isinstance(spec.shape[3], int):
                raise UserError(f"{spec.describe()}: the cache buffers need a static head count and head size")
            host = np.zeros((batch, spec.shape[1], max_len, spec.shape[3]), dtype=spec.dtype)
            if initial is not None and past in initial:
                given = np.asarray(initial[past], dtype=spec.dtype)
                if given.ndim != 4 or given.shape[:2] != host.shape[:2] or given.shape[3] != host.shape[3] \
                        or given.shape[2] > max_len:
                    raise UserError(f"initial {past} has shape {list(given.shape)}; expected "
                                    f"[{batch}, {host.shape[1]}, <= {max_len}, {host.shape[3]}]")
                host[:, :, : given.shape[2]] = given
            values[past] = ort.OrtValue.ortvalue_from_numpy(host, device, 0)
            binding.bind_ortvalue_input(past, values[past])
            binding.bind_ortvalue_output(present, values[past])
        return InPlaceKVCache(batch, max_len, values, outputs, binding)

    def run_in_place(self, feeds: Mapping[str, np.ndarray], cache: InPlaceKVCache) -> dict[str, np.ndarray]:
        if not isinstance(cache, InPlaceKVCache):
            return super().run_in_place(feeds, cache)
        feeds = self.validate(feeds, skip=cache.values)
        total, batch = feeds["attention_mask"].shape[1], feeds["input_ids"].shape[0]
        if batch != cache.batch or total > cache.max_len:
            raise UserError(f"a step of batch {batch} over {total} positions does not fit the cache "
                            f"(batch {cache.batch}, {cache.max_len} positions)")
        return self._run_in_place(feeds, cache)

    def _run_in_place(self, feeds: dict[str, np.ndarray], cache: InPlaceKVCache) -> dict[str, np.ndarray]:
        """Backend call of :meth:`run_in_place` on validated feeds."""
        if self._session is None:
            raise UserError("the session is closed")
        for name, value in feeds.items():
            cache.binding.bind_cpu_input(name, value)
        for name in cache.outputs:  # unallocated again: logits change shape between prefill and decode
            cache.binding.bind_output(name, "cpu")
        try:
            self._session.run_with_iobinding(cache.binding)
        except Exception as exc:
            raise UserError(f"ONNX Runtime failed to run {self.path.name}: {_first_line(exc)}") from exc
        values = cache.binding.get_outputs()[: len(cache.outputs)]
        return {name: value.numpy() for name, value in zip(cache.outputs, values)}

    def close(self) -> None:
        self._session = None

"""Frozen, validated configuration of the export stage.

``ExportConfig`` says *how* a model is written to ONNX. It is validated on construction (one
:class:`~quantize.errors.ConfigError` naming the field, the value and what is allowed) and
round-trips through JSON; ``export.json`` carries it beside every ``model.onnx``.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantize.config import _check_type, _JsonConfig
from quantize.errors import ConfigError

TARGETS = ("ort", "trt")
#: ``auto``: the fused ONNX Runtime decoder where the model and target allow it, else generic.
GRAPHS = ("auto", "fused", "generic")
DTYPES = ("fp32", "fp16")
#: INT4 / UINT4 and ``DequantizeLinear(block_size=...)`` exist from opset 21.
MIN_OPSET = 21
#: Highest opset torch.onnx's dynamo exporter emits reliably (and ORT 1.32 runs).
MAX_OPSET = 23
MAX_SEQ_LEN_LIMIT = 1 << 20


@dataclass(frozen=True)
class ExportConfig(_JsonConfig):
    """How a (quantized) model becomes ``model.onnx``.

    Attributes:
        target: ``"ort"`` (ONNX Runtime: every scheme, W4A4 simulated) or ``"trt"``
            (TensorRT: FP and symmetric weight-only schemes only; checked before any work).
        dtype: float type of the graph (activations, non-quantized weights, DQ scales):
            ``"fp32"`` or ``"fp16"``. TensorRT 11 is strongly typed, so a TensorRT graph with
            INT4 weights must be ``"fp16"``.
        opset: ONNX opset, ``21..23`` (INT4 blocked ``DequantizeLinear`` needs 21).
        kv_cache: LLMs only: export the flat KV cache inputs/outputs (one graph serves
            prefill and decode); off = ``input_ids, attention_mask -> logits``.
        max_seq_len: longest sequence (past + new tokens) the artifact is meant for; recorded in
            ``export.json`` for runtimes (generation limit, TensorRT optimisation profiles).
        a_bits: ``None`` exports the activation quantizers the model was quantized with;
            ``16`` drops them, e.g. to deploy the weights of a (rotated) W4A4 model as W4A16
            in TensorRT.
        graph: decoder LLMs only: ``"generic"`` traces the PyTorch model (one graph for ORT and
            TensorRT); ``"fused"`` writes ONNX Runtime's fused decoder operators
            (GroupQueryAttention, SkipSimplifiedLayerNormalization, packed q|k|v and gate|up
            INT4 blocks; :mod:`export.ort_fused`): ~6x fewer nodes, faster prefill and decode on ORT;
            ``"auto"`` picks ``fused`` for ``target="ort"`` when the model qualifies.
        share_embedding: fused graph only, for a model whose LM head was tied to its input
            embedding and is quantized to symmetric INT4: the embedding reads the head's INT4
            table (``GatherBlockQuantized``) instead of its exact float copy, and the file
            stores that table once. The embedding lookups then carry the head's quantization
            error; the file shrinks by the float table (113 MB for SmolLM2-135M in fp32).
    """

    target: str = "ort"
    dtype: str = "fp32"
    opset: int = MIN_OPSET
    kv_cache: bool = True
    max_seq_len: int = 2048
    a_bits: int | None = None
    graph: str = "auto"
    share_embedding: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.target not in TARGETS:
            raise ConfigError(owner, "target", self.target, f"one of {', '.join(TARGETS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(owner, "dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        allowed_opset = f"an integer in {MIN_OPSET}..{MAX_OPSET} (INT4 DequantizeLinear with block_size needs opset >= {MIN_OPSET})"
        _check_type(owner, "opset", self.opset, int, allowed_opset)
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(owner, "opset", self.opset, allowed_opset)
        _check_type(owner, "kv_cache", self.kv_cache, bool, "true or false")
        allowed_len = f"an integer in 1..{MAX_SEQ_LEN_LIMIT}"
        _check_type(owner, "max_seq_len", self.max_seq_len, int, allowed_len)
        if not 1 <= self.max_seq_len <= MAX_SEQ_LEN_LIMIT:
            raise ConfigError(owner, "max_seq_len", self.max_seq_len, allowed_len)
        if self.graph not in GRAPHS:
            raise ConfigError(owner, "graph", self.graph, f"one of {', '.join(GRAPHS)}")
        if self.graph == "fused" and self.target != "ort":
            raise ConfigError(owner, "graph", self.graph, "auto or generic for target trt (fused uses ONNX Runtime operators)")
        _check_type(owner, "share_embedding", self.share_embedding, bool, "true or false")
        if self.share_embedding and (self.target != "ort" or self.graph == "generic"):
            raise ConfigError(owner, "share_embedding", self.share_embedding,
                              "false for target trt or graph generic (the shared table needs the fused ONNX Runtime graph)")
        if self.a_bits is not None:
            _check_type(owner, "a_bits", self.a_bits, int, "null (as quantized) or 16 (drop activation quantization)")
            if self.a_bits != 16:
                raise ConfigError(owner, "a_bits", self.a_bits, "null (as quantized) or 16 (drop activation quantization)")

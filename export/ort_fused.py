"""A decoder LLM written directly with ONNX Runtime's fused operators (``--graph fused``).

The generic export (:mod:`export.to_onnx` + :mod:`export.qdq`) traces the PyTorch model: one
graph for ORT and TensorRT, but about 70 nodes per decoder layer (RMSNorm, RoPE, repeat-KV,
masking and SDPA decomposed into elementwise ops). At batch 1 on a CPU a decode step is then
bound by per-node overhead, not by the bytes of the INT4 weights. This module writes the same
model as ONNX Runtime's own model builder lays decoders out, about 11 nodes per layer::

    Gather(embedding) ─► RMSNorm ─► [act QDQ] ─► DQ+MatMul (packed q|k|v) ─► GroupQueryAttention
      (RoPE from cos/sin tables, KV cache, causal + padding bias) ─► [Hadamard] ─► DQ+MatMul (o)
      ─► SkipSimplifiedLayerNormalization ─► DQ+MatMul (packed gate|up) ─► Split ─► SiLU·up
      ─► [Hadamard] ─► DQ+MatMul (down) ─► SkipSimplifiedLayerNormalization (next layer) ... ─► head

* Weights keep the INT4 ``DequantizeLinear(axis=0, block_size=g)`` → ``MatMul`` form of
  :mod:`export.qdq` (ORT fuses each into ``MatMulNBits``); Linears that read the same input
  with the same grid are packed into one block (``q|k|v``, ``gate|up``).
* Inputs and outputs are those of the generic graph (``input_ids``, ``attention_mask``,
  ``position_ids``, ``past_key_values.{i}.key/value`` → ``logits``, ``present.{i}.key/value``),
  so every runtime, validate and bench path reads both. ``attention_mask`` becomes an
  additive bias, so left or right padding behaves as in the PyTorch model. The rotary
  embedding rotates by cache position (``position_ids`` is accepted and unused): for the
  mask-derived positions of a padded batch that is a constant shift per row, which RoPE's
  relative attention scores do not see.
* Online Hadamards (rotated models) are the same Reshape + two small MatMuls as the traced
  graph; W4A4 input quantizers the same per-token quantize-dequantize subgraph.

ONNX Runtime only (``com.microsoft`` operators): TensorRT gets the generic graph. Which models
qualify is data (:attr:`quantize.arch.ArchSpec.fused_decoder`) plus the checks of
:func:`unsupported_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from quantize.errors import UserError

from .check import ExportError
from .config import ExportConfig
from .qdq import _FLOAT, QuantWeight, _ActQuantBuilder, _Graph, _weight_tensors

MS_DOMAIN = "com.microsoft"
#: model metadata telling runtimes the KV cache may be one buffer bound as past and present
KV_CACHE_KEY, KV_IN_PLACE = "gptaq_deploy.kv_cache", "in_place"
#: Names of the packed projections (a module path under the layer's attention / MLP).
QKV_NAME, GATE_UP_NAME = "qkv_proj", "gate_up_proj"


def unsupported_reason(model: nn.Module, spec, config: ExportConfig) -> str | None:
    """Why ``model`` cannot be written as a fused ORT decoder (``None`` when it can)."""
    if config.target != "ort":
        return "the fused graph uses ONNX Runtime contrib operators; TensorRT needs the generic graph"
    if spec.modality != "text" or not spec.fused_decoder:
        return f"the {spec.name} family has no fused ONNX Runtime layout"
    if not config.kv_cache:
        return "the fused graph always carries the KV cache (drop --no-kv-cache)"
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (the fused MLP is SiLU-gated)"
    types = set(getattr(cfg, "layer_types", None) or [])
    if len(types) > 1:
        return f"layers mix attention types {sorted(types)}"
    if getattr(cfg, "use_sliding_window", None) is True and getattr(cfg, "max_window_layers", 0):
        return "sliding-window attention on only some layers"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases"
    from quantize.arch import get_module

    block = get_module(model, spec.blocks)[0]
    for path in (spec.attn_norm, spec.mlp_norm):
        if not type(block.get_submodule(path)).__name__.endswith("RMSNorm"):
            return f"{path} is not an RMSNorm"
    for path in (*spec.attn_in, spec.mlp_gate, spec.mlp_up):
        if getattr(block.get_submodule(path), "input_transform", None) is not None:
            return f"{path} has an input transform"
    return None


@dataclass(frozen=True)
class _LinearPart:
    """One Linear of a (possibly packed) projection: its path and what to write for it."""

    path: str
    module: nn.Module
    quant: QuantWeight | None


class _Builder:
    """Accumulates nodes and initializers; names nodes ``{scope}/{op_type}`` (unique)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.np_float, self.onnx_float = _FLOAT[dtype]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.index = _Graph(onnx.GraphProto())
        self.act_quant = _ActQuantBuilder(self.index, dtype)
        self.consts: dict[tuple, str] = {}

    def unique(self, base: str) -> str:
        return self.index.unique(base)

    def init(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def tensor(self, t: onnx.TensorProto) -> str:
        if t.name in self.index.names:
            raise ExportError(f"internal error: value name {t.name} written twice")
        self.index.names.add(t.name)
        self.inits.append(t)
        return t.name

    def const(self, value, dtype) -> str:
        key = (np.dtype(dtype).str, repr(value))
        if key not in self.consts:
            self.consts[key] = self.init(f"const.{np.dtype(dtype).name}.{len(self.consts)}", np.asarray(value, dtype=dtype))
        return self.consts[key]

    def fconst(self, value) -> str:
        return self.const(value, self.np_float)

    def op(self, op_type: str, inputs: list[str], scope: str, *, outputs: int | list[str] = 1,
           domain: str = "", **attrs) -> Any:
        name = self.unique(f"{scope}/{op_type}")
        outs = outputs if isinstance(outputs, list) else [name if i == 0 else f"{name}:{i}" for i in range(outputs)]
        for o in outs:
            if o:
                self.index.names.add(o)
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def absorb_act_quant_inits(self) -> None:
        self.inits.extend(self.act_quant.new_inits)
        self.act_quant.new_inits = []


def _float_array(t: torch.Tensor, np_float) -> np.ndarray:
    return t.detach().cpu().float().numpy().astype(np_float)


def _pack(parts: list[QuantWeight], name: str) -> QuantWeight | None:
    """One QuantWeight holding ``parts`` side by side along out-features, or None if they differ in grid."""
    first = parts[0]
    if any(p.bits != first.bits or p.block != first.block or p.act != first.act or p.in_features != first.in_features
           for p in parts):
        return None
    if len(parts) == 1:
        return replace(first, name=name)
    return QuantWeight(name, np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                       np.concatenate([p.zeros for p in parts]), first.bits, first.block, first.act)


class _DecoderWriter:
    """Writes one decoder model with :class:`_Builder`; see the module docstring for the layout."""

    def __init__(self, model: nn.Module, spec, config: ExportConfig, weights: list[QuantWeight]) -> None:
        self.model, self.spec, self.config = model, spec, config
        self.b = _Builder(config.dtype)
        self.quant = {w.name: w for w in weights}
        self.mapping: dict[str, dict[str, Any]] = {}
        cfg = model.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.vocab = int(cfg.vocab_size)

    # -- linears ------------------------------------------------------------------------

    def _part(self, path: str) -> _LinearPart:
        from quantize.arch import get_module

        module = get_module(self.model, path)
        return _LinearPart(path, module, self.quant.get(path))

    def _transform(self, x: str, transform: nn.Module, scope: str) -> str:
        """Online Hadamard: Reshape → MatMul(H_right) → MatMul(H_leftᵀ) → Mul → Reshape."""
        b = self.b
        n, left = int(transform.features), int(transform.left)
        y = b.op("Reshape", [x, b.const([0, 0, left, n // left], np.int64)], scope)
        if transform.h_right is not None:
            y = b.op("MatMul", [y, b.init(f"{scope}.h_right", _float_array(transform.h_right, b.np_float))], scope)
        y = b.op("MatMul", [b.init(f"{scope}.h_left_t", _float_array(transform.h_left_t, b.np_float)), y], scope)
        y = b.op("Mul", [y, b.fconst(transform.scale)], scope)
        return b.op("Reshape", [y, b.const([0, 0, n], np.int64)], scope)

    def linear(self, x: str, paths: list[str], packed_path: str) -> str:
        """``x @ [W_1 | W_2 | ...] (+ bias)`` for the Linears at ``paths`` (one packed MatMul when they share a grid)."""
        b = self.b
        parts = [self._part(p) for p in paths]
        transform = getattr(parts[0].module, "input_transform", None)
        if transform is not None:
            x = self._transform(x, transform, f"{parts[0].path}.input_transform")
        quants = [p.quant for p in parts]
        if all(q is not None for q in quants) and (packed := _pack(quants, packed_path)) is not None:
            out = self._quant_matmul(x, packed, packed_path, parts)
        elif all(q is None for q in quants):
            weight = np.concatenate([_float_array(p.module.weight, b.np_float).T for p in parts], axis=1)
            out = b.op("MatMul", [x, b.init(f"{packed_path}.weight", weight)], packed_path)
        else:  # mixed grids: one MatMul each, concatenated
            out = b.op("Concat", [self._single(x, p) for p in parts], packed_path, axis=-1)
        return self._bias(out, parts, packed_path)

    def _single(self, x: str, part: _LinearPart) -> str:
        b = self.b
        if part.quant is not None:
            return self._quant_matmul(x, part.quant, part.path, [part])
        return b.op("MatMul", [x, b.init(f"{part.path}.weight", _float_array(part.module.weight, b.np_float).T)], part.path)

    def _bias(self, out: str, parts: list[_LinearPart], scope: str) -> str:
        if all(getattr(p.module, "bias", None) is None for p in parts):
            return out
        b = self.b
        bias = np.concatenate([_float_array(p.module.bias, b.np_float) if p.module.bias is not None
                               else np.zeros(p.module.out_features, b.np_float) for p in parts])
        return b.op("Add", [out, b.init(f"{scope}.bias", bias)], scope)

    def _quant_matmul(self, x: str, qw: QuantWeight, scope: str, parts: list[_LinearPart]) -> str:
        b = self.b
        if qw.act is not None:
            nodes, x = b.act_quant.build(x, qw.act, f"{scope}/act_quant")
            b.nodes.extend(nodes)
            b.absorb_act_quant_inits()
        tensors = _weight_tensors(qw, b.dtype, scope)
        names = [b.tensor(t) for t in tensors]
        dq = b.op("DequantizeLinear", names, scope, axis=0, block_size=qw.block)
        out = b.op("MatMul", [x, dq], scope)
        start = 0
        for part in parts:
            stop = start + int(part.module.out_features)
            entry = {"matmul": out, "dequantize": dq, "qweight": names[0], "type": TensorProto.DataType.Name(qw.onnx_type),
                     "block_size": qw.block}
            if len(parts) > 1:
                entry["columns"] = [start, stop]
            if qw.act is not None:
                entry["act_quant"] = x
            self.mapping[part.path] = entry
            start = stop
        return out

    # -- norms, attention ---------------------------------------------------------------

    def _gamma(self, path: str) -> tuple[str, float]:
        from quantize.arch import get_module

        norm = get_module(self.model, path)
        eps = float(getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6))
        return self.b.init(f"{path}.weight", _float_array(norm.weight, self.b.np_float)), eps

    def rms_norm(self, x: str, path: str) -> str:
        """RMSNorm of the first layer (standard ops: nothing to fuse a residual into yet)."""
        b = self.b
        gamma, eps = self._gamma(path)
        xf = b.op("Cast", [x], path, to=TensorProto.FLOAT) if b.dtype != "fp32" else x
        ms = b.op("ReduceMean", [b.op("Mul", [xf, xf], path), b.const([-1], np.int64)], path, keepdims=1)
        rstd = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, b.const(eps, np.float32)], path)], path)], path)
        y = b.op("Mul", [xf, rstd], path)
        if b.dtype != "fp32":
            y = b.op("Cast", [y], path, to=b.onnx_float)
        return b.op("Mul", [y, gamma], path)

    def skip_norm(self, x: str, residual: str, path: str) -> tuple[str, str]:
        """``(norm(x + residual), x + residual)`` in one SkipSimplifiedLayerNormalization."""
        gamma, eps = self._gamma(path)
        name = self.b.unique(f"{path}/SkipSimplifiedLayerNormalization")
        outs = [name, "", "", f"{name}:sum"]
        self.b.nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [x, residual, gamma], outs, name=name,
                                             domain=MS_DOMAIN, epsilon=eps))
        self.b.index.names.update(o for o in outs if o)
        return outs[0], outs[3]

    def rotary_tables(self) -> tuple[str, str]:
        """``cos, sin [max_seq_len, rotary_dim / 2]`` from the model's own rotary embedding."""
        from quantize.arch import get_module

        rotary = get_module(self.model, self.spec.rotary)
        positions = torch.arange(self.config.max_seq_len, device=next(self.model.parameters()).device)[None]
        probe = torch.zeros(1, dtype=torch.float32, device=positions.device)
        with torch.no_grad():
            cos, sin = rotary(probe, positions)
        half = cos.shape[-1] // 2
        if not torch.allclose(cos[0, :, :half], cos[0, :, half:]):
            raise ExportError("the rotary embedding is not rotate-half (cos halves differ); export with --graph generic")
        b = self.b
        return (b.init("rotary.cos_cache", _float_array(cos[0, :, :half], b.np_float)),
                b.init("rotary.sin_cache", _float_array(sin[0, :, :half], b.np_float)))

    def attention_inputs(self) -> tuple[str, str, str]:
        """``seqlens_k [B] int32``, ``total_sequence_length`` scalar int32, additive ``bias [B,1,S,T]``."""
        b, scope = self.b, "attention_mask"
        total64 = b.op("Shape", ["attention_mask"], scope, start=1, end=2)
        total = b.op("Cast", [total64], scope, to=TensorProto.INT32)
        total_scalar = b.op("Squeeze", [total, b.const([0], np.int64)], scope)
        batch = b.op("Shape", ["input_ids"], scope, start=0, end=1)
        seq = b.op("Shape", ["input_ids"], scope, start=1, end=2)
        # Padding is masked by the bias, so every row's key length is the full total length.
        seqlens = b.op("Expand", [b.op("Sub", [total, b.const([1], np.int32)], scope), batch], scope)
        mask = b.op("Cast", ["attention_mask"], scope, to=b.onnx_float)
        lowest = float(np.finfo(b.np_float).min)
        bias = b.op("Mul", [b.op("Sub", [mask, b.fconst(1.0)], scope), b.fconst(-lowest)], scope)
        bias = b.op("Unsqueeze", [bias, b.const([1, 2], np.int64)], scope)
        shape = b.op("Concat", [batch, b.const([1], np.int64), seq, total64], scope, axis=0)
        return seqlens, total_scalar, b.op("Expand", [bias, shape], scope)

    def attention(self, x: str, layer: int, prefix: str, shared: tuple[str, ...]) -> str:
        from quantize.arch import get_module

        spec, b = self.spec, self.b
        attn_path = prefix + spec.attn_out.rsplit(".", 1)[0]
        qkv_paths = [prefix + p for p in spec.attn_in]
        qkv = self.linear(x, qkv_paths, f"{attn_path}.{QKV_NAME}")
        seqlens, total, bias, cos, sin = shared
        attn = get_module(self.model, attn_path)
        window = getattr(self.model.config, "sliding_window", None)
        if getattr(self.model.config, "use_sliding_window", None) is False:
            window = None
        name = b.unique(f"{attn_path}/GroupQueryAttention")
        outs = [name, f"present.{layer}.key", f"present.{layer}.value"]
        # No position_ids: ORT's CPU kernel ignores them for a first prompt (rotating by buffer
        # index 0..S-1) but applies them in decode, so a left-padded row's cached keys and its new
        # query would disagree. Without them every step rotates by buffer index (past length + s),
        # which differs from the mask-derived positions by a constant per row: RoPE attention
        # scores depend only on position differences, so the logits are the same.
        inputs = [qkv, "", "", f"past_key_values.{layer}.key", f"past_key_values.{layer}.value", seqlens, total, cos, sin,
                  "", bias]
        b.nodes.append(helper.make_node(
            "GroupQueryAttention", inputs, outs, name=name, domain=MS_DOMAIN, num_heads=self.n_heads,
            kv_num_heads=self.n_kv, scale=float(getattr(attn, "scaling", self.head_dim ** -0.5)), do_rotary=1,
            rotary_interleaved=0, local_window_size=int(window) if window else -1))
        b.index.names.update(outs)
        return self.linear(name, [prefix + spec.attn_out], prefix + spec.attn_out)

    def mlp(self, x: str, prefix: str) -> str:
        spec, b = self.spec, self.b
        mlp_path = prefix + spec.mlp_out.rsplit(".", 1)[0]
        gate_up = self.linear(x, [prefix + spec.mlp_gate, prefix + spec.mlp_up], f"{mlp_path}.{GATE_UP_NAME}")
        inter = int(self._part(prefix + spec.mlp_gate).module.out_features)
        gate, up = b.op("Split", [gate_up, b.const([inter, inter], np.int64)], mlp_path, outputs=2, axis=-1)
        silu = b.op("Mul", [gate, b.op("Sigmoid", [gate], mlp_path)], mlp_path)
        return self.linear(b.op("Mul", [silu, up], mlp_path), [prefix + spec.mlp_out], prefix + spec.mlp_out)

    # -- whole model --------------------------------------------------------------------

    def head(self, x: str) -> str:
        from quantize.arch import get_module

        spec, b = self.spec, self.b
        head = get_module(self.model, spec.head)
        embedding = get_module(self.model, spec.embedding)
        parts = getattr(head, "parts", None)  # a RowSplitLinear head (INT8 rows + INT4 rest): one MatMul each, concatenated
        if parts is None and spec.head not in self.quant and head.weight.data_ptr() == embedding.weight.data_ptr():
            # Tied: one table in the file; ORT folds the transpose once at session start.
            table = b.op("Transpose", [self.embedding_table], spec.head, perm=[1, 0])
            return b.op("MatMul", [x, table], spec.head, outputs=["logits"])
        paths = [f"{spec.head}.parts.{i}" for i in range(len(parts))] if parts is not None else [spec.head]
        out = self.linear(x, paths, spec.head)
        return b.op("Identity", [out], spec.head, outputs=["logits"])

    def embedding_from_head(self, embedding: nn.Module) -> str:
        """Embedding rows read from the INT4 head's ``[K, V]`` table: ``[B, S, K]``.

        ``GatherBlockQuantized`` gathers columns of the head's ``qweight`` / ``scales`` (copies
        here, under the embedding's name, byte-identical: the saved file stores them once, see
        :func:`export.external_data.save_deduplicated`). It is not fed the head's own
        initializers because ORT only fuses a ``DequantizeLinear`` whose weight has no other
        consumer into ``MatMulNBits``.
        """
        spec, b = self.spec, self.b
        head = self.quant.get(spec.head)
        if head is None and f"{spec.head}.parts.0" in self.quant:
            raise UserError("--share-embedding: the LM head is split into INT8 and INT4 rows (head_int8_rows); "
                            "the shared table needs one symmetric INT4 head")
        reason = shared_table_reason(head, embedding)
        if reason is not None:
            raise UserError(f"--share-embedding: {reason}")
        qweight, scales = _weight_tensors(head, b.dtype, spec.embedding)
        gathered = b.op("GatherBlockQuantized", [b.tensor(qweight), "input_ids", b.tensor(scales)], spec.embedding,
                        domain=MS_DOMAIN, gather_axis=1, quantize_axis=0, block_size=head.block, bits=4)
        return b.op("Transpose", [gathered], spec.embedding, perm=[1, 2, 0])

    def build(self) -> onnx.ModelProto:
        from quantize.arch import get_module

        spec, b = self.spec, self.b
        embedding = get_module(self.model, spec.embedding)
        if self.config.share_embedding:
            hidden = self.embedding_from_head(embedding)
        else:
            self.embedding_table = b.init(f"{spec.embedding}.weight", _float_array(embedding.weight, b.np_float))
            hidden = b.op("Gather", [self.embedding_table, "input_ids"], spec.embedding)
        shared = (*self.attention_inputs(), *self.rotary_tables())
        residual, normed = hidden, None
        pending = None  # output of the previous sub-block, added to the residual by the next norm
        for i in range(self.n_layers):
            prefix = f"{spec.blocks}.{i}."
            if pending is None:
                normed = self.rms_norm(hidden, prefix + spec.attn_norm)
            else:
                normed, residual = self.skip_norm(pending, residual, prefix + spec.attn_norm)
            attn_out = self.attention(normed, i, prefix, shared)
            normed, residual = self.skip_norm(attn_out, residual, prefix + spec.mlp_norm)
            pending = self.mlp(normed, prefix)
        normed, _ = self.skip_norm(pending, residual, spec.final_norm)
        self.head(normed)
        return self._model()

    def _model(self) -> onnx.ModelProto:
        b = self.b
        value = helper.make_tensor_value_info
        past = [value(f"past_key_values.{i}.{k}", b.onnx_float, ["batch", self.n_kv, "past_sequence", self.head_dim])
                for i in range(self.n_layers) for k in ("key", "value")]
        present = [value(f"present.{i}.{k}", b.onnx_float, ["batch", self.n_kv, "total_sequence", self.head_dim])
                   for i in range(self.n_layers) for k in ("key", "value")]
        inputs = [value("input_ids", TensorProto.INT64, ["batch", "sequence"]),
                  value("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
                  value("position_ids", TensorProto.INT64, ["batch", "sequence"]), *past]
        outputs = [value("logits", b.onnx_float, ["batch", "sequence", self.vocab]), *present]
        graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, initializer=b.inits)
        opsets = [helper.make_opsetid("", self.config.opset), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="gptaq-deploy",
                                  ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True))
        # GroupQueryAttention reads past and writes present in one buffer when both are bound to
        # the same memory, and seqlens_k comes from the mask, not the past's shape: a runtime may
        # preallocate the cache (runtime.ort.OrtSession.allocate_cache) instead of copying it.
        model.metadata_props.add(key=KV_CACHE_KEY, value=KV_IN_PLACE)
        return model


def shared_table_reason(head: QuantWeight | None, embedding: nn.Module) -> str | None:
    """Why the embedding cannot read the quantized head's table (``None`` when it can).

    The head must be symmetric INT4 with ``[vocab, hidden]`` like the embedding, and its
    dequantized weight close to the embedding (relative Frobenius error < 0.5: the two were
    one tied table before quantization; INT4 error is about 0.1, unrelated tables about 1.4).
    """
    if head is None:
        return "the LM head is not quantized (quantize with --head-bits 4)"
    if head.bits != 4 or not head.symmetric:
        return f"the LM head is {'' if head.symmetric else 'asymmetric '}{head.bits}-bit; the shared table needs symmetric INT4"
    table = embedding.weight.detach().float().cpu().numpy()
    if table.shape != (head.out_features, head.in_features):
        return f"embedding {list(table.shape)} and LM head [{head.out_features}, {head.in_features}] differ in shape"
    error = np.linalg.norm(head.dequantized() - table) / max(float(np.linalg.norm(table)), 1e-12)
    if error > 0.5:
        return f"the embedding is not the LM head's table (relative difference {error:.2f}); the model was not tied"
    return None


def build_fused_decoder(model: nn.Module, spec, config: ExportConfig,
                        weights: list[QuantWeight]) -> tuple[onnx.ModelProto, dict[str, dict[str, Any]]]:
    """Write ``model`` (FP or quantized, in the graph dtype already) as a fused ORT decoder.

    Args:
        model: a transformers decoder whose family has ``spec.fused_decoder``; checked with
            :func:`unsupported_reason` by the caller.
        weights: its quantized Linears (:func:`export.qdq.quant_weights`).

    Returns:
        the ModelProto and, per quantized module, the names of its MatMul / DequantizeLinear /
        qweight (plus ``columns`` inside a packed block) as :func:`export.qdq.rewrite_quantized`.
    """
    writer = _DecoderWriter(model, spec, config, weights)
    proto = writer.build()
    missing = sorted(set(writer.quant) - set(writer.mapping))
    if missing:
        raise ExportError(f"{missing[0]}: quantized but not part of the fused decoder layout; export with --graph generic")
    return proto, dict(sorted(writer.mapping.items()))

"""Post-pass on the exported graph: quantized Linear weights become INT4/INT8 ``DequantizeLinear`` blocks.

The exporter traces every :class:`~quantize.qmodel.QuantLinear` as a plain ``MatMul`` whose
weight is a float initializer ``[K=in, N=out]`` holding the dequantized weight. This pass finds
that MatMul for each quantized module (node metadata ``pkg.torch.onnx.name_scopes`` names the
module; the initializer must equal the module's dequantized weight, transposed, bit for bit)
and replaces the float initializer by::

    qweight [K, N] int4|uint4|int8|uint8 ─┐
    scales  [ceil(K/g), N] graph dtype  ──┼─► DequantizeLinear(axis=0, block_size=g) ─► MatMul
    zero_points [ceil(K/g), N] (asym) ────┘

* Symmetric grids (``zero == 2**(bits-1)`` everywhere) store the signed value ``code - zero``
  with no zero point: the form TensorRT accepts (INT4 weight-only) and ORT fuses.
* Asymmetric grids store the unsigned code with a zero point of the same type (ORT only).
* 2- and 3-bit codes are stored as INT4/UINT4 (their values fit; ONNX has no 3-bit type and
  INT2 needs opset 25); 5- to 8-bit codes as INT8/UINT8.
* Per-channel (``group_size == -1``) is one block of ``K``.
* Scales: DequantizeLinear-21 outputs the scale's type, so the scale carries the graph dtype.
  In an fp16 graph they are fp16; in an fp32 graph they are fp32 holding exactly the fp16
  values of the checkpoint (no Cast between DQ and MatMul, which would stop ORT's
  DQ+MatMul -> MatMulNBits fusion). Both dequantize to exactly the PyTorch weight.

For modules with an active input quantizer (W4A4 and friends) the MatMul's activation input
first passes a dynamic per-token quantize-dequantize written as float ops (ReduceMin/ReduceMax,
Div, Round, Clip, Sub, Mul on the last axis) that reproduces
:func:`quantize.primitives.fake_quant_activation` operation for operation in fp32.
Linears reading the same tensor with the same quantizer share one such subgraph.

Every quantized module must be rewritten; anything that cannot be matched raises
:class:`~export.check.ExportError` naming the module.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Iterable

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .check import ExportError
from .scheme import ActQuantSpec

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_FLOAT = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}


@dataclass(frozen=True)
class QuantWeight:
    """What the post-pass needs of one quantized Linear (numpy, CPU).

    Attributes:
        name: module path in the model (e.g. ``model.layers.0.self_attn.q_proj``).
        codes: ``[out, in]`` unsigned integer codes.
        scales: ``[out, groups]`` fp32 (fp16-representable).
        zeros: ``[out, groups]`` integer zero points.
        bits: code width (2..8).
        block: input features per scale, the ``DequantizeLinear`` ``block_size``: the group
            size, or for per-channel one block that covers all of ``in`` (``in`` itself, or
            the next power of two for ONNX Runtime, see :func:`quant_weights`).
        act: the input quantizer, or ``None`` when activations stay in float.
    """

    name: str
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int
    block: int
    act: ActQuantSpec | None

    @property
    def group_size(self) -> int:
        return -1 if self.block >= self.in_features else self.block

    @property
    def in_features(self) -> int:
        return int(self.codes.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.codes.shape[0])

    @property
    def symmetric(self) -> bool:
        """Whether the codes are stored as signed values with no zero point."""
        return bool(np.all(self.zeros == (1 << (self.bits - 1))))

    @property
    def onnx_type(self) -> int:
        small = self.bits <= 4
        if self.symmetric:
            return TensorProto.INT4 if small else TensorProto.INT8
        return TensorProto.UINT4 if small else TensorProto.UINT8

    def dequantized(self) -> np.ndarray:
        """``[out, in]`` fp32 ``scale * (code - zero)``, blocks of :attr:`block` along ``in``."""
        g = np.arange(self.in_features) // self.block
        return self.scales[:, g] * (self.codes.astype(np.float32) - self.zeros[:, g].astype(np.float32))


def quant_weights(model, a_bits: int | None = None, *, ort_blocks: bool = False) -> list[QuantWeight]:
    """The quantized Linears of ``model`` in module order, checked to be expressible as blocked DQ.

    ``a_bits=16`` drops the activation quantizers (W4A4 weights exported as W4A16).
    ``ort_blocks=True`` writes a per-channel layer as one block of the next power of two >= K
    (at least 16) instead of one block of K: ONNX Runtime fuses DQ+MatMul into MatMulNBits
    only for power-of-two blocks, and a block longer than K still holds exactly one scale per
    output column (an INT8 per-channel head with K=576 runs 15x faster fused on ORT CPU).
    """
    from quantize.qmodel import QuantLinear

    out = []
    for name, m in model.named_modules():
        if not (isinstance(m, QuantLinear) and m.is_quantized):
            continue
        k = m.in_features
        block = m.group_size if m.group_size != -1 else (max(16, 1 << (k - 1).bit_length()) if ort_blocks else k)
        g_idx = m.g_idx.cpu().numpy()
        if not np.array_equal(g_idx, np.arange(k) // block):
            raise ExportError(f"{name}: its groups are not contiguous blocks of {block} input features (act-order without "
                              "static groups); blocked DequantizeLinear cannot express it — requantize with static groups")
        scales = m.scales.detach().cpu().float().numpy()
        n_groups = math.ceil(k / block)
        if scales.shape != (m.out_features, n_groups):
            raise ExportError(f"{name}: scales have shape {list(scales.shape)}, expected {[m.out_features, n_groups]}")
        if not np.array_equal(scales.astype(np.float16).astype(np.float32), scales):
            raise ExportError(f"{name}: scales are not fp16 values; the ONNX graph stores fp16 block scales")
        iq = m.input_quant
        act = ActQuantSpec(iq.bits, bool(iq.sym), float(iq.clip_ratio)) if iq.bits < 16 and a_bits is None else None
        out.append(QuantWeight(name, m.codes.cpu().numpy().astype(np.int64), scales,
                               m.zeros.cpu().numpy().astype(np.int64), int(m.bits), block, act))
    return out


# ---------------------------------------------------------------------------------------
# graph helpers
# ---------------------------------------------------------------------------------------


def node_scopes(node: onnx.NodeProto) -> list[str]:
    for p in node.metadata_props:
        if p.key == NAME_SCOPES:
            try:
                value = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else []
    return []


class _Graph:
    """Index of a GraphProto: initializers by name, consumers of every value."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
        self.names = {n.name for n in graph.node} | {v for n in graph.node for v in n.output} | set(self.inits)
        self.names |= {v.name for v in graph.input}

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name


@dataclass
class _Match:
    node_index: int
    weight_name: str
    transposed: bool  # Gemm with transB=1: the initializer is [N, K]


def _weight_matches(init: onnx.TensorProto, expected_kn: np.ndarray, transposed: bool) -> bool:
    arr = numpy_helper.to_array(init)
    if transposed:
        arr = arr.T
    return arr.shape == expected_kn.shape and arr.dtype == expected_kn.dtype and np.array_equal(arr, expected_kn)


def _find_matmul(g: _Graph, qw: QuantWeight, expected_kn: np.ndarray, scope: str) -> _Match:
    """The MatMul/Gemm computing ``qw``: found by name scope, confirmed by its weight values."""
    candidates, by_scope = [], []
    for i, node in enumerate(g.graph.node):
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in g.inits:
            continue
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i == 1 for a in node.attribute):
            continue
        in_scope = scope in node_scopes(node)
        if in_scope:
            by_scope.append(i)
        if _weight_matches(g.inits[node.input[1]], expected_kn, transposed):
            candidates.append((i, transposed, in_scope))
    scoped = [c for c in candidates if c[2]]
    chosen = scoped if scoped else candidates
    if len(chosen) != 1:
        if by_scope and not candidates:
            raise ExportError(f"{qw.name}: the exported MatMul of this module does not hold its dequantized weight")
        what = "no MatMul" if not chosen else f"{len(chosen)} MatMuls"
        raise ExportError(f"{qw.name}: found {what} with this module's weight in the exported graph; cannot place its INT{qw.bits} weight")
    i, transposed, _ = chosen[0]
    weight = g.graph.node[i].input[1]
    users = g.consumers.get(weight, [])
    if users != [i]:
        raise ExportError(f"{qw.name}: its weight initializer is shared with {len(users) - 1} other node(s) (tied weights?); cannot quantize it alone")
    return _Match(i, weight, transposed)


def _const(name: str, value: float | int | list, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


class _ActQuantBuilder:
    """Emits the per-token quantize-dequantize subgraph (fp32 math, as the PyTorch quantizer)."""

    def __init__(self, g: _Graph, dtype: str) -> None:
        self.g, self.dtype = g, dtype
        self.consts: dict[tuple, str] = {}
        self.new_inits: list[onnx.TensorProto] = []

    def _c(self, value, np_dtype=np.float32) -> str:
        key = (np.dtype(np_dtype).str, repr(value))
        if key not in self.consts:
            tag = str(value).replace("-", "m").replace(".", "p").replace("[", "").replace("]", "").replace(", ", "_")
            name = self.g.unique(f"act_quant.const_{tag}")
            self.new_inits.append(_const(name, value, np_dtype))
            self.consts[key] = name
        return self.consts[key]

    def build(self, x: str, spec: ActQuantSpec, prefix: str) -> tuple[list[onnx.NodeProto], str]:
        nodes: list[onnx.NodeProto] = []
        g = self.g

        def op(op_type: str, inputs: list[str], **attrs) -> str:
            out = g.unique(f"{prefix}/{op_type}")
            nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
            return out

        axes = self._c([-1], np.int64)
        xf = op("Cast", [x], to=TensorProto.FLOAT) if self.dtype != "fp32" else x
        clip = np.float32(spec.clip_ratio)
        if spec.sym:
            maxq = (1 << (spec.bits - 1)) - 1
            amax = op("ReduceMax", [op("Abs", [xf]), axes], keepdims=1)
            if clip != 1:
                amax = op("Mul", [amax, self._c(float(clip))])
            scale = op("Where", [op("Greater", [amax, self._c(0.0)]), op("Div", [amax, self._c(float(maxq))]), self._c(1.0)])
            q = op("Clip", [op("Round", [op("Div", [xf, scale])]), self._c(float(-(maxq + 1))), self._c(float(maxq))])
            y = op("Mul", [q, scale])
        else:
            maxq = (1 << spec.bits) - 1
            zero_c = self._c(0.0)
            xmin = op("Min", [op("ReduceMin", [xf, axes], keepdims=1), zero_c])
            xmax = op("Max", [op("ReduceMax", [xf, axes], keepdims=1), zero_c])
            if clip != 1:
                xmin = op("Mul", [xmin, self._c(float(clip))])
                xmax = op("Mul", [xmax, self._c(float(clip))])
            flat = op("And", [op("Equal", [xmin, zero_c]), op("Equal", [xmax, zero_c])])
            xmin = op("Where", [flat, self._c(-1.0), xmin])
            xmax = op("Where", [flat, self._c(1.0), xmax])
            scale = op("Div", [op("Sub", [xmax, xmin]), self._c(float(maxq))])
            zero = op("Round", [op("Div", [op("Neg", [xmin]), scale])])
            q = op("Clip", [op("Add", [op("Round", [op("Div", [xf, scale])]), zero]), zero_c, self._c(float(maxq))])
            y = op("Mul", [op("Sub", [q, zero]), scale])
        if self.dtype != "fp32":
            y = op("Cast", [y], to=_FLOAT[self.dtype][1])
        return nodes, y


def _weight_tensors(qw: QuantWeight, dtype: str, prefix: str) -> list[onnx.TensorProto]:
    """``qweight [K,N]``, ``scales [G,N]`` and, asymmetric only, ``zero_points [G,N]``."""
    np_float = _FLOAT[dtype][0]
    k = qw.in_features
    tensors = []
    if qw.symmetric:
        values = (qw.codes - (1 << (qw.bits - 1))).T
        np_int = ml_dtypes.int4 if qw.onnx_type == TensorProto.INT4 else np.int8
    else:
        values = qw.codes.T
        np_int = ml_dtypes.uint4 if qw.onnx_type == TensorProto.UINT4 else np.uint8
    tensors.append(numpy_helper.from_array(np.ascontiguousarray(values).astype(np_int), f"{prefix}.qweight"))
    tensors.append(numpy_helper.from_array(np.ascontiguousarray(qw.scales.T).astype(np_float), f"{prefix}.scales"))
    if not qw.symmetric:
        tensors.append(numpy_helper.from_array(np.ascontiguousarray(qw.zeros.T).astype(np_int), f"{prefix}.zero_points"))
    assert tensors[0].dims == [k, qw.out_features]
    return tensors


def rewrite_quantized(model: onnx.ModelProto, weights: Iterable[QuantWeight], *, dtype: str,
                      scope_prefix: str = "") -> dict[str, dict[str, str]]:
    """Replace each quantized Linear's float weight in ``model`` (in place) by an integer DQ block.

    Args:
        model: the exported model; its graph is edited in place and stays topologically sorted.
        weights: from :func:`quant_weights`.
        dtype: the graph's float type (``"fp32"`` / ``"fp16"``): scales use it.
        scope_prefix: prefix of module names in the node name scopes (the export wrapper's
            attribute, e.g. ``"model."``).

    Returns:
        per module name: the names of its ``matmul`` and ``dequantize`` nodes, its ``qweight``
        initializer, the integer ``type``, ``block_size`` and, with activation quantization,
        the ``act_quant`` output feeding the MatMul.
    """
    g = _Graph(model.graph)
    np_float = _FLOAT[dtype][0]
    matches: list[tuple[_Match, QuantWeight]] = []
    owner: dict[int, str] = {}
    for qw in weights:
        deq_t = np.ascontiguousarray(qw.dequantized().T)
        match = _find_matmul(g, qw, deq_t.astype(np_float), scope_prefix + qw.name)
        if match.node_index in owner:
            raise ExportError(f"{qw.name}: its MatMul was already matched to {owner[match.node_index]}")
        owner[match.node_index] = qw.name
        matches.append((match, qw))
    # Graph order: a shared activation quantizer is emitted in front of its first consumer.
    matches.sort(key=lambda m: m[0].node_index)
    aq = _ActQuantBuilder(g, dtype)
    before: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    drop: set[str] = set()
    shared_aq: dict[tuple, str] = {}
    mapping: dict[str, dict[str, str]] = {}
    for match, qw in matches:
        node = g.graph.node[match.node_index]
        tensors = _weight_tensors(qw, dtype, qw.name)
        for t in tensors:
            if t.name in g.names:
                raise ExportError(f"{qw.name}: value name {t.name} already exists in the graph")
            g.names.add(t.name)
        dq_out = g.unique(f"{qw.name}.weight_dq")
        dq_name = g.unique(f"{qw.name}/DequantizeLinear")
        nodes = [helper.make_node("DequantizeLinear", [t.name for t in tensors], [dq_out], name=dq_name,
                                  axis=0, block_size=qw.block)]
        if match.transposed:  # Gemm(transB=1): the integer weight is stored [K, N] like MatMul's
            for a in node.attribute:
                if a.name == "transB":
                    a.i = 0
        node.input[1] = dq_out
        node.name = g.unique(f"{qw.name}/{node.op_type}")
        entry = {"matmul": node.name, "dequantize": dq_name, "qweight": tensors[0].name,
                 "type": TensorProto.DataType.Name(qw.onnx_type), "block_size": qw.block}
        if qw.act is not None:
            key = (node.input[0], qw.act)
            if key not in shared_aq:
                aq_nodes, shared_aq[key] = aq.build(node.input[0], qw.act, f"{qw.name}/act_quant")
                nodes = aq_nodes + nodes
            node.input[0] = shared_aq[key]
            entry["act_quant"] = shared_aq[key]
        before[match.node_index] = nodes
        new_inits.extend(tensors)
        drop.add(match.weight_name)
        mapping[qw.name] = entry
    ordered = []
    for i, node in enumerate(model.graph.node):
        ordered.extend(before.get(i, []))
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    kept = [t for t in model.graph.initializer if t.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + aq.new_inits + new_inits)
    for vi in [vi for vi in model.graph.value_info if vi.name in drop]:
        model.graph.value_info.remove(vi)
    return dict(sorted(mapping.items()))

"""What a target can run (checked before any work) and the ONNX checker (before anything is written).

Capability rules, from ``DESIGN.md`` §5 and ``reference/deploy.md`` §1/§3:

* every target: INT4/UINT4 ``DequantizeLinear`` with ``block_size`` needs opset >= 21;
* ``trt``: TensorRT's DequantizeLinear needs zero points of 0, so asymmetric weights are
  refused; TensorRT has no INT4 (or any dynamically scaled) activation quantization, so
  activation-quantized models (W4A4) are refused — the same weights export as W4A16 with
  ``--a-bits 16``; TensorRT 11 is strongly typed and runs INT4 weight-only GEMMs in fp16, so
  a quantized TensorRT graph must be ``--dtype fp16``.

A refusal names what was asked, the first offending layer (and how many there are), what is
supported and the alternative.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from quantize.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from .config import ExportConfig
    from .scheme import LayerScheme

#: Above this size the model is saved with external data and checked by path.
PROTOBUF_LIMIT = 2**31 - 2**20


class ExportError(UserError):
    """The model cannot be exported as asked (unmatched layer, failed ONNX check, ...)."""


class CapabilityError(UserError):
    """The target cannot run the model's quantization scheme."""


def _layers(names: Sequence[str]) -> str:
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"{names[0]}{more}"


def check_capability(weights: Sequence["LayerScheme"], config: "ExportConfig") -> None:
    """Refuse a scheme ``config.target`` cannot run, naming the layer and the alternative.

    ``weights`` are the quantized Linears (:class:`~export.scheme.LayerScheme` or
    :class:`~export.qdq.QuantWeight`), after ``config.a_bits`` was applied.
    """
    if not weights:
        return
    low_bit = [w.name for w in weights if w.bits <= 4]
    if low_bit and config.opset < 21:
        raise CapabilityError(f"INT4 weights ({_layers(low_bit)}) need opset >= 21 (DequantizeLinear with int4 and "
                              f"block_size); got --opset {config.opset}")
    if config.target != "trt":
        return
    act = [w for w in weights if w.act is not None]
    if act:
        a = act[0].act
        raise CapabilityError(
            f"W{act[0].bits}A{a.bits} cannot run in TensorRT: layer {_layers([w.name for w in act])} quantizes its input "
            f"to {a.bits} bits per token at runtime, and TensorRT has no INT{a.bits} dynamic activation quantization; "
            f"export the same (rotated) weights as W{act[0].bits}A16 with --a-bits 16, or simulate W{act[0].bits}A{a.bits} "
            "with --target ort")
    asym = [w.name for w in weights if not w.symmetric]
    if asym:
        raise CapabilityError(
            f"asymmetric weights cannot run in TensorRT: layer {_layers(asym)} has zero points, and TensorRT's "
            "DequantizeLinear needs a zero point of 0; requantize with a symmetric grid (python -m quantize without "
            "--asym) or export for ONNX Runtime with --target ort")
    if config.dtype != "fp16":
        raise CapabilityError(
            f"TensorRT runs INT{weights[0].bits if weights[0].bits <= 4 else 8} weight-only layers ({_layers([w.name for w in weights])}) "
            "in fp16 and TensorRT 11 is strongly typed, so the graph itself must be fp16; export with --dtype fp16")


def check_contrib_ops(model: "onnx.ModelProto") -> None:
    """Refuse, for TensorRT, a graph with ONNX Runtime contrib operators (the fused decoder)."""
    contrib = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
    if contrib:
        raise CapabilityError(f"this graph uses ONNX Runtime operators TensorRT cannot parse ({', '.join(contrib)}; "
                              "written by --graph fused); export the model again with --target trt")


def check_model(model: "onnx.ModelProto | str | os.PathLike") -> None:
    """onnx.checker full check (with strict shape inference); :class:`ExportError` on failure.

    Pass a path for models saved with external data or above 2 GB.
    """
    import onnx

    target: "onnx.ModelProto | str"
    if isinstance(model, (str, os.PathLike)):
        target = str(Path(model))
    else:
        if model.ByteSize() > PROTOBUF_LIMIT:
            raise ExportError("model above 2 GB: check it by path after saving with external data")
        target = model
    try:
        onnx.checker.check_model(target, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the exported graph fails the ONNX checker: {first}") from None


def _act_quant_spec(nodes_by_prefix: dict[str, list["onnx.NodeProto"]], inits: dict, prefix: str):
    """The activation quantizer export wrote under ``prefix`` (its Clip bounds give bits and sym)."""
    from onnx import numpy_helper

    from .scheme import ActQuantSpec

    for node in nodes_by_prefix.get(prefix, []):
        if node.op_type == "Clip" and len(node.input) == 3 and node.input[1] in inits and node.input[2] in inits:
            low = float(numpy_helper.to_array(inits[node.input[1]]))
            high = float(numpy_helper.to_array(inits[node.input[2]]))
            return ActQuantSpec(bits=max(1, round(math.log2(high - low + 1))), sym=low < 0, clip_ratio=1.0)
    return ActQuantSpec(bits=4, sym=True, clip_ratio=1.0)


def layers_from_onnx(model: "onnx.ModelProto", base_dir: str | os.PathLike | None = None) -> list["LayerScheme"]:
    """The quantized Linears of an exported graph, read back from its ``DequantizeLinear`` blocks.

    A layer is a ``DequantizeLinear`` whose input is an integer initializer (int4/uint4/int8/uint8);
    it is symmetric when it has no zero point or an all-zero one, and it has an activation
    quantizer when the MatMul it feeds reads an ``<layer>/act_quant`` subgraph (written by
    :mod:`export.qdq`). Lets the capability rules run again on any ``model.onnx`` before an
    engine is built. ``base_dir`` resolves zero points stored as external data.
    """
    from onnx import TensorProto, numpy_helper

    from .scheme import LayerScheme

    bits_of = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.INT8: 8, TensorProto.UINT8: 8}
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    by_prefix: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        if "/act_quant/" in node.name:
            by_prefix.setdefault(node.name.rsplit("/", 1)[0], []).append(node)
    layers = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        weight = inits[node.input[0]]
        if weight.data_type not in bits_of:
            continue
        name = node.name.rsplit("/DequantizeLinear", 1)[0] if "/DequantizeLinear" in node.name else node.input[0]
        symmetric = weight.data_type in (TensorProto.INT4, TensorProto.INT8)
        if len(node.input) > 2 and node.input[2]:
            zero = inits.get(node.input[2])
            values = numpy_helper.to_array(zero, str(base_dir or "")) if zero is not None else None
            symmetric = values is not None and not values.astype("int64").any()
        block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
        act = None
        for mm in consumers.get(node.output[0], []):
            source = producer.get(mm.input[0]) if mm.input and mm.input[0] != node.output[0] else None
            if source is not None and "/act_quant/" in source.name:
                act = _act_quant_spec(by_prefix, inits, source.name.rsplit("/", 1)[0])
        per_channel = not block or block > weight.dims[0]  # a power-of-two block longer than K (ORT per-channel)
        layers.append(LayerScheme(name, bits_of[weight.data_type], symmetric, act, -1 if per_channel else block))
    return layers


def graph_dtype(model: "onnx.ModelProto") -> str:
    """``"fp16"`` when every float input and output of the graph is fp16, else ``"fp32"``."""
    from onnx import TensorProto

    floats = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.DOUBLE: "fp32", TensorProto.BFLOAT16: "fp32"}
    kinds = {floats[v.type.tensor_type.elem_type] for v in [*model.graph.input, *model.graph.output]
             if v.type.tensor_type.elem_type in floats}
    return "fp16" if kinds == {"fp16"} else "fp32"

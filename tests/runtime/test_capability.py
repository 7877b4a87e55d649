"""The export capability rules run again on a graph before a build: asymmetric INT4 and quantized
activations are refused for TensorRT, naming the layer and the W4A16 alternative.

The graphs are two quantized MatMuls written by the exporter's own post-pass
(:func:`export.qdq.rewrite_quantized`), so no model tracing is needed.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.check import graph_dtype, layers_from_onnx
from export.qdq import QuantWeight, rewrite_quantized
from export.scheme import ActQuantSpec
from quantize.errors import UserError
from runtime import BuildConfig, build_engine

SIZES = [(32, 16), (16, 8)]  # (in, out) of the two layers
NAMES = ["block.fc1", "block.fc2"]


def _quant_weight(name, k, n, rng, *, sym, act):
    codes = rng.integers(0, 16, (n, k))
    zeros = np.full((n, k // 16), 8) if sym else rng.integers(3, 13, (n, k // 16))
    scales = rng.uniform(0.01, 0.1, (n, k // 16)).astype(np.float16).astype(np.float32)
    return QuantWeight(name, codes, scales, zeros, 4, 16, act)


def quantized_graph(path, *, sym=True, act=None, dtype="fp16"):
    """x [batch, 32] -> fc1 -> fc2 -> y [batch, 8], INT4 DQ blocks of 16; saved to ``path``."""
    rng = np.random.default_rng(0)
    np_float, onnx_float = (np.float16, TensorProto.FLOAT16) if dtype == "fp16" else (np.float32, TensorProto.FLOAT)
    weights = [_quant_weight(name, k, n, rng, sym=sym, act=act) for name, (k, n) in zip(NAMES, SIZES)]
    inits = [numpy_helper.from_array(w.dequantized().T.astype(np_float), f"w{i}") for i, w in enumerate(weights)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"), helper.make_node("MatMul", ["h", "w1"], ["y"], name="mm1")]
    graph = helper.make_graph(nodes, "two_layers", [helper.make_tensor_value_info("x", onnx_float, ["batch", 32])],
                              [helper.make_tensor_value_info("y", onnx_float, ["batch", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewrite_quantized(model, weights, dtype=dtype)
    onnx.save(model, str(path))
    return path


def test_layers_read_back_from_the_graph(tmp_path):
    sym = layers_from_onnx(onnx.load(str(quantized_graph(tmp_path / "sym.onnx"))))
    assert [(lay.name, lay.bits, lay.symmetric, lay.act, lay.group_size) for lay in sym] == [
        ("block.fc1", 4, True, None, 16), ("block.fc2", 4, True, None, 16)]
    asym = layers_from_onnx(onnx.load(str(quantized_graph(tmp_path / "asym.onnx", sym=False))))
    assert [lay.symmetric for lay in asym] == [False, False]
    w4a4 = layers_from_onnx(onnx.load(str(quantized_graph(tmp_path / "a4.onnx", act=ActQuantSpec(4, True, 0.9)))))
    assert [(lay.act.bits, lay.act.sym) for lay in w4a4] == [(4, True), (4, True)]
    a8 = layers_from_onnx(onnx.load(str(quantized_graph(tmp_path / "a8.onnx", act=ActQuantSpec(8, False, 1.0), dtype="fp32"))))
    assert [(lay.act.bits, lay.act.sym) for lay in a8] == [(8, False), (8, False)]


def test_graph_dtype(tmp_path):
    assert graph_dtype(onnx.load(str(quantized_graph(tmp_path / "h.onnx")))) == "fp16"
    assert graph_dtype(onnx.load(str(quantized_graph(tmp_path / "f.onnx", dtype="fp32")))) == "fp32"


@pytest.mark.parametrize("kind,message", [
    ("asym", r"asymmetric weights cannot run in TensorRT: layer block\.fc1 and 1 more .*zero point of 0; requantize "
             r"with a symmetric grid .*--target ort"),
    ("w4a4", r"W4A4 cannot run in TensorRT: layer block\.fc1 and 1 more .*export the same \(rotated\) weights as W4A16 "
             r"with --a-bits 16"),
])
def test_trt_build_refuses_before_any_work(tmp_path, kind, message):
    src = tmp_path / "src"
    src.mkdir()
    quantized_graph(src / "model.onnx", sym=kind != "asym", act=ActQuantSpec(4, True, 1.0) if kind == "w4a4" else None)
    with pytest.raises(UserError, match=message) as info:
        build_engine(src, tmp_path / "out", BuildConfig(backend="trt", profile=[("batch", 1, 1, 2)]))
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written


def test_ort_builds_what_tensorrt_refuses(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    quantized_graph(src / "model.onnx", sym=False, dtype="fp32")
    out = build_engine(src, tmp_path / "ort", BuildConfig(provider="cpu"))
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 2 and "DequantizeLinear" not in ops
    meta = json.loads((out / "build.json").read_text())
    assert meta["source"]["quantized_layers"] == 2 and meta["source"]["graph_dtype"] == "fp32"
    assert meta["copied_files"] == []  # a bare ONNX file has no export.json to carry

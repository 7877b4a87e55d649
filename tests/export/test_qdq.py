"""The ONNX post-pass on hand-built graphs: integer types, blocks, zero points, activation quant, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.check import ExportError
from export.qdq import QuantWeight, _ActQuantBuilder, _Graph, quant_weights, rewrite_quantized
from export.scheme import ActQuantSpec
from quantize.primitives import fake_quant_activation
from quantize.qmodel import QuantLinear


def _run(model: onnx.ModelProto, feeds, accuracy_level=1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _qweight(k, n, bits, block, sym, seed=0, act=None) -> QuantWeight:
    rng = np.random.default_rng(seed)
    groups = -(-k // block)
    codes = rng.integers(0, 1 << bits, size=(n, k))
    scales = rng.uniform(0.01, 0.1, size=(n, groups)).astype(np.float16).astype(np.float32)
    zeros = np.full((n, groups), 1 << (bits - 1)) if sym else rng.integers(0, 1 << bits, size=(n, groups))
    return QuantWeight("lin", codes, scales, zeros, bits, block, act)


def _linear_graph(qw: QuantWeight, op="MatMul", weight=None) -> onnx.ModelProto:
    k, n = qw.in_features, qw.out_features
    w = qw.dequantized().T.astype(np.float32) if weight is None else weight
    if op == "Gemm":
        node = helper.make_node("Gemm", ["x", "w"], ["y"], name="node_gemm", transB=1)
        init = numpy_helper.from_array(np.ascontiguousarray(w.T), "w")
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="node_linear")
        init = numpy_helper.from_array(w, "w")
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'model', 'model.lin', 'linear']")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])], [init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("bits,block,sym,wtype", [
    (4, 16, True, TensorProto.INT4),    # K=40: two full blocks and a partial one
    (3, 16, True, TensorProto.INT4),    # 3-bit codes stored as int4 values in [-4, 3]
    (2, 16, False, TensorProto.UINT4),
    (4, 40, False, TensorProto.UINT4),  # per-channel: one block of K
    (8, 16, False, TensorProto.UINT8),
    (8, 16, True, TensorProto.INT8),
])
def test_rewrite_types_blocks_and_numerics(bits, block, sym, wtype):
    qw = _qweight(40, 24, bits, block, sym)
    model = _linear_graph(qw)
    mapping = rewrite_quantized(model, [qw], dtype="fp32", scope_prefix="model.")
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    assert "w" not in inits
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][0]
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": block}
    weight = inits[dq.input[0]]
    assert weight.data_type == wtype and list(weight.dims) == [40, 24]
    assert list(inits[dq.input[1]].dims) == [-(-40 // block), 24]
    assert len(dq.input) == (2 if sym else 3)
    if sym:
        values = numpy_helper.to_array(weight).astype(int)
        assert values.min() >= -(1 << (bits - 1)) and values.max() < (1 << (bits - 1))
    assert mapping["lin"]["matmul"] == "lin/MatMul" and mapping["lin"]["dequantize"] == dq.name
    x = np.random.default_rng(1).standard_normal((3, 40)).astype(np.float32)
    expected = x.astype(np.float64) @ qw.dequantized().T.astype(np.float64)
    np.testing.assert_allclose(_run(model, {"x": x}), expected, rtol=1e-5, atol=1e-5)


def test_gemm_with_transposed_weight_is_rewritten():
    qw = _qweight(32, 16, 4, 16, True)
    model = _linear_graph(qw, op="Gemm")
    rewrite_quantized(model, [qw], dtype="fp32", scope_prefix="model.")
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][0]
    assert {a.name: a.i for a in gemm.attribute}["transB"] == 0
    x = np.random.default_rng(2).standard_normal((2, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(model, {"x": x}), x @ qw.dequantized().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,ort_blocks,block", [(8, True, 64), (4, True, 64), (8, False, 40)])
def test_per_channel_layer_is_written_as_a_block_onnx_runtime_fuses(tmp_path, bits, ort_blocks, block):
    """K=40 per-channel: one power-of-two block (64 > K) for ORT, fused to MatMulNBits and exact."""
    ref = _qweight(40, 24, bits, 40, True)
    layer = QuantLinear(40, 24, bias=False)
    layer.codes, layer.scales, layer.zeros = (torch.from_numpy(a) for a in (ref.codes, ref.scales, ref.zeros))
    layer.g_idx = torch.zeros(40, dtype=torch.int64)
    layer.bits, layer.group_size, layer.sym = bits, -1, True
    (qw,) = quant_weights(torch.nn.Sequential(layer), ort_blocks=ort_blocks)
    assert qw.block == block and qw.group_size == -1
    np.testing.assert_array_equal(qw.dequantized(), ref.dequantized())
    qw = QuantWeight("lin", *[getattr(qw, f) for f in ("codes", "scales", "zeros", "bits", "block", "act")])
    model = _linear_graph(qw)
    rewrite_quantized(model, [qw], dtype="fp32", scope_prefix="model.")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((2, 40)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ ref.dequantized().T, rtol=1e-5, atol=1e-5)
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node].count("MatMulNBits")
    assert fused == (1 if ort_blocks else 0)


def test_mismatched_weight_is_never_rewritten_silently():
    qw = _qweight(32, 16, 4, 16, True)
    w = qw.dequantized().T.astype(np.float32).copy()
    w[3, 5] += 1e-3
    with pytest.raises(ExportError, match="lin: .*does not hold its dequantized weight"):
        rewrite_quantized(_linear_graph(qw, weight=w), [qw], dtype="fp32", scope_prefix="model.")
    with pytest.raises(ExportError, match="other: found no MatMul"):
        other = QuantWeight("other", qw.codes[:, :16], qw.scales[:, :1], qw.zeros[:, :1], 4, 16, None)
        rewrite_quantized(_linear_graph(qw), [other], dtype="fp32", scope_prefix="model.")


def test_weight_found_by_value_when_scopes_are_missing():
    qw = _qweight(32, 16, 4, 16, True)
    model = _linear_graph(qw)
    del model.graph.node[0].metadata_props[:]
    assert "lin" in rewrite_quantized(model, [qw], dtype="fp32", scope_prefix="model.")


def _act_quant_model(spec: ActQuantSpec, dtype: str, cols: int) -> onnx.ModelProto:
    elem = TensorProto.FLOAT if dtype == "fp32" else TensorProto.FLOAT16
    graph = helper.make_graph([], "aq", [helper.make_tensor_value_info("x", elem, ["r", cols])],
                              [helper.make_tensor_value_info("y", elem, ["r", cols])])
    builder = _ActQuantBuilder(_Graph(graph), dtype)
    nodes, out = builder.build("x", spec, "aq")
    nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph.node.extend(nodes)
    graph.initializer.extend(builder.new_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _activation_rows(cols: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal(cols) * s for s in (0.01, 1.0, 30.0)]
    rows.append(np.zeros(cols))                                    # all-zero token
    rows.append(np.abs(rng.standard_normal(cols)))                 # no negatives
    rows.append(-np.abs(rng.standard_normal(cols)))                # no positives
    ties = np.resize(np.array([7.0, 3.5, -0.5, 1.5, -2.5, 0.5, -8.0, 2.5]), cols)
    rows.append(ties)                                              # x / scale lands on .5
    rows.append(np.resize(np.arange(16) + 0.5, cols) - 8.0)
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("clip", [1.0, 0.9])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_activation_quant_subgraph_is_bit_exact(bits, sym, clip, dtype):
    spec = ActQuantSpec(bits, sym, clip)
    x = _activation_rows(24)
    np_dtype = np.float32 if dtype == "fp32" else np.float16
    x = x.astype(np_dtype)
    expected = fake_quant_activation(torch.from_numpy(x), bits, sym, clip).numpy()
    got = _run(_act_quant_model(spec, dtype, x.shape[1]), {"x": x})
    assert got.dtype == np_dtype
    np.testing.assert_array_equal(got, expected)

"""End-to-end export of tiny quantized Llamas: graph structure, ORT vs PyTorch, KV cache, fusion."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from runtime import OrtSession, generate
from tiny_models import token_batch

N_LINEARS = 14


def _session(directory, **kw):
    kw.setdefault("accuracy_level", 1)
    return OrtSession(directory, providers=["cpu"], threads=1, **kw)


def _dq_blocks(model: onnx.ModelProto):
    inits = {t.name: t for t in model.graph.initializer}
    return [(n, [inits.get(i) for i in n.input]) for n in model.graph.node if n.op_type == "DequantizeLinear"]


@pytest.mark.parametrize("scheme,fields,wtype", [("sym", {"graph": "generic"}, TensorProto.INT4),
                                                 ("asym", {"kv_cache": False}, TensorProto.UINT4)])
def test_graph_passes_checker_and_holds_int4_blocks(exported, reference, scheme, fields, wtype):
    directory = exported(scheme, **fields)
    onnx.checker.check_model(str(directory / "model.onnx"), full_check=True)
    model = onnx.load(str(directory / "model.onnx"))
    assert model.opset_import[0].version == 21
    blocks = _dq_blocks(model)
    assert len(blocks) == N_LINEARS
    ref = reference(scheme)
    meta = json.loads((directory / "export.json").read_text())
    for node, inputs in blocks:
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs == {"axis": 0, "block_size": 32}
        weight, scale = inputs[0], inputs[1]
        assert weight.data_type == wtype and scale.data_type == TensorProto.FLOAT
        k, n = weight.dims
        assert list(scale.dims) == [k // 32, n]
        scales = numpy_helper.to_array(scale)
        assert np.array_equal(scales.astype(np.float16).astype(np.float32), scales)  # fp16 values, exactly
        if scheme == "sym":
            assert len(inputs) == 2  # no zero point: TensorRT-compatible
            assert numpy_helper.to_array(weight).min() >= -8
        else:
            assert inputs[2].data_type == TensorProto.UINT4 and list(inputs[2].dims) == list(scale.dims)
        module = node.name.rsplit("/", 1)[0]
        qlin = ref.get_submodule(module)
        assert (k, n) == (qlin.in_features, qlin.out_features)
        assert meta["scheme"]["layers"][module]["dequantize"] == node.name
    float_weights = [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2
                     and not t.name.endswith(".scales")]
    assert float_weights == ["model.lm_head.weight"] or all("proj" not in n for n in float_weights), float_weights


@pytest.mark.parametrize("scheme,fields", [("fp", {"kv_cache": False}), ("fp", {}), ("sym", {}), ("sym", {"graph": "generic"}),
                                           ("asym", {"kv_cache": False}), ("asym", {}),
                                           ("w4a4", {"kv_cache": False}), ("w4a4", {}),
                                           ("rot_w4a4", {"kv_cache": False}), ("rot_w4a4", {}),
                                           ("rot_w4a16", {}), ("rot_w4a16", {"graph": "generic"})])
def test_ort_matches_pytorch(exported, reference, llm_feeds, scheme, fields):
    ids = token_batch(2, 11, seed=5).numpy()
    with torch.no_grad():
        ref = reference(scheme)(torch.from_numpy(ids)).logits.numpy()
    with _session(exported(scheme, **fields)) as session:
        got = session.run(llm_feeds(ids, session))["logits"]
    assert got.shape == ref.shape
    if scheme.endswith("w4a4"):
        # Activation rounding is reproduced op for op (test_qdq checks it bit-exact), but a last-bit
        # difference upstream (ORT's fused RMSNorm) may flip a value sitting on a rounding boundary.
        assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
        assert np.median(np.abs(got - ref)) < 1e-6
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)
        assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_w4a4_graph_quantizes_activations_per_token(exported):
    model = onnx.load(str(exported("w4a4", kv_cache=False) / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    # q/k/v and gate/up share one quantizer: 4 per block
    assert ops.count("ReduceMin") == ops.count("ReduceMax") == 8
    meta = json.loads((exported("w4a4", kv_cache=False) / "export.json").read_text())
    assert meta["scheme"]["name"] == "W4A4" and meta["scheme"]["activation_bits"] == [4]
    layers = meta["scheme"]["layers"]
    assert layers["model.layers.0.self_attn.q_proj"]["act_quant"] == layers["model.layers.0.self_attn.v_proj"]["act_quant"]


def test_online_hadamard_is_reshape_and_two_small_matmuls(exported):
    """Rotated W4A4: each online Hadamard is Reshape + MatMul(H_right) + MatMul(H_leftᵀ), never a
    dense n x n product; the activation quantizer sits between it and the INT4 MatMul."""
    directory = exported("rot_w4a4", kv_cache=False)
    model = onnx.load(str(directory / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    hadamard = [n for n in model.graph.node if ".input_transform/" in n.name]
    matmuls = [n for n in hadamard if n.op_type == "MatMul"]
    # per block: o_proj across 4 heads (one MatMul), down_proj 96 = 12 x 8 (two MatMuls)
    assert len(matmuls) == 2 * 3
    factors = sorted({tuple(inits[i].dims) for n in matmuls for i in n.input if i in inits})
    assert factors == [(4, 4), (8, 8), (12, 12)]
    for t in (inits[i] for n in matmuls for i in n.input if i in inits):
        values = numpy_helper.to_array(t)
        assert set(np.unique(values)) == {-1.0, 1.0}  # Hadamard entries; the 1/sqrt(n) is a Mul
    down = next(n for n in model.graph.node if n.name == "model.layers.0.mlp.down_proj/MatMul")
    chain, node = [], producers[down.input[0]]
    while ".input_transform/" not in node.name:  # walk back through the activation quantizer
        chain.append(node.op_type)
        node = producers[node.input[0]]
    assert "Round" in chain and "ReduceMax" not in chain  # quant-dequant on the Hadamard output


def test_rotated_w4a4_deploys_as_w4a16_for_tensorrt(checkpoint, reference, llm_feeds, tmp_path):
    """The TensorRT route of a rotated W4A4 model: same rotated weights, no activation quant, fp16."""
    from export import ExportConfig, export_onnx

    out = export_onnx(checkpoint("rot_w4a4"), tmp_path / "trt", ExportConfig(target="trt", dtype="fp16", a_bits=16))
    model = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Round" not in ops and ops.count("DequantizeLinear") == N_LINEARS
    assert sum(".input_transform/" in n.name and n.op_type == "MatMul" for n in model.graph.node) == 6
    ref_model = reference("rot_w4a4")
    ids = token_batch(2, 7, seed=3).numpy()
    saved = {m: m.input_quant.bits for m in ref_model.modules() if hasattr(m, "input_quant")}
    try:
        for m in saved:
            m.input_quant.bits = 16
        with torch.no_grad():
            ref = ref_model(torch.from_numpy(ids)).logits.numpy()
    finally:
        for m, bits in saved.items():
            m.input_quant.bits = bits
    with _session(out) as session:
        got = session.run(llm_feeds(ids, session))["logits"].astype(np.float32)
    assert np.abs(got - ref).max() < 2e-2 * np.abs(ref).max()


@pytest.mark.parametrize("graph", ["fused", "generic"])
def test_kv_cache_decode_equals_full_recompute(exported, reference, llm_feeds, graph):
    ids = token_batch(2, 10, seed=7).numpy()
    prompt, steps = 6, 4
    with _session(exported("sym", graph=graph)) as session:
        full = session.run(llm_feeds(ids, session))["logits"]
        out = session.run(llm_feeds(ids[:, :prompt], session))
        np.testing.assert_allclose(out["logits"], full[:, :prompt], rtol=1e-5, atol=1e-5)
        for step in range(steps):
            pos = prompt + step
            past = {n.replace("present.", "past_key_values.", 1): v for n, v in out.items() if n.startswith("present.")}
            assert past["past_key_values.0.key"].shape[2] == pos
            out = session.run(llm_feeds(ids[:, pos:pos + 1], session, past_len=pos, past=past))
            np.testing.assert_allclose(out["logits"][:, 0], full[:, pos], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ref = reference("sym")(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=2e-5)


def test_greedy_generation_matches_transformers(exported, reference):
    """KV-cache decoding (sym export) and full recompute (no-cache asym export) both follow HF's greedy search."""
    ids = token_batch(2, 5, seed=11)
    for scheme, fields in (("sym", {}), ("asym", {"kv_cache": False})):
        with torch.no_grad():
            expected = reference(scheme).generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                                  do_sample=False, pad_token_id=0)
        eos = reference(scheme).generation_config.eos_token_id
        with _session(exported(scheme, **fields)) as session:
            result = generate(session, ids.numpy(), 6, eos_token_id=eos, pad_token_id=0)
        assert 1 <= result.new_tokens.shape[1] <= 6
        assert np.array_equal(result.tokens, expected.numpy())


@pytest.mark.parametrize("graph,matmuls", [("generic", N_LINEARS), ("fused", 8)])  # fused: q|k|v and gate|up packed
def test_ort_cpu_fuses_int4_dq_matmul_into_matmulnbits(exported, tmp_path, graph, matmuls):
    optimized = tmp_path / "optimized.onnx"
    with _session(exported("sym", graph=graph), accuracy_level=None, optimized_model_path=optimized):
        pass
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    assert ops.count("MatMulNBits") == matmuls
    assert "DequantizeLinear" not in ops


def test_export_json_records_source_scheme_and_dynamic_axes(exported, checkpoint):
    directory = exported("sym")
    meta = json.loads((directory / "export.json").read_text())
    ckpt = checkpoint("sym")
    h = hashlib.sha256()
    for name in ("quant_config.json", "model.safetensors"):
        h.update(name.encode() + b"\0" + (ckpt / name).read_bytes())
    assert meta["source"]["fingerprint"] == h.hexdigest() and meta["source"]["kind"] == "checkpoint"
    assert meta["scheme"]["name"] == "W4A16" and meta["scheme"]["quantized_layers"] == N_LINEARS
    assert meta["opset"] == 21 and meta["config"]["target"] == "ort" and meta["task"] == "causal-lm"
    assert meta["graph"] == "fused" and meta["config"]["graph"] == "auto"
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["input_ids"]["shape"] == ["batch", "sequence"]
    assert inputs["attention_mask"]["shape"] == ["batch", "total_sequence"]
    assert inputs["past_key_values.1.value"]["shape"] == ["batch", 2, "past_sequence", 16]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["logits"]["shape"] == ["batch", "sequence", 128]
    assert outputs["present.0.key"]["shape"][:2] == ["batch", 2]
    assert meta["kv_cache"] == {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16}
    assert meta["onnx_sha256"] == hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest()
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(meta["versions"])
    assert "tokenizer.json" in meta["tokenizer_files"] and (directory / "tokenizer.json").is_file()
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_trt_target_exports_fp16_graph_with_fp16_scales(checkpoint, reference, llm_feeds, tmp_path, capsys):
    from export.__main__ import main

    out = tmp_path / "trt"
    assert main([str(checkpoint("sym")), "--out", str(out), "--target", "trt"]) == 0
    assert "exported" in capsys.readouterr().out
    model = onnx.load(str(out / "model.onnx"))
    blocks = _dq_blocks(model)
    assert len(blocks) == N_LINEARS
    assert all(inputs[0].data_type == TensorProto.INT4 and inputs[1].data_type == TensorProto.FLOAT16 and len(inputs) == 2
               for _, inputs in blocks)
    ids = token_batch(2, 7, seed=3).numpy()
    with _session(out) as session:
        assert session.input_metadata()["past_key_values.0.key"].dtype == np.float16
        got = session.run(llm_feeds(ids, session))["logits"].astype(np.float32)
    with torch.no_grad():
        ref = reference("sym")(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(got - ref).max() < 2e-2 * np.abs(ref).max()


def test_runtime_generate_cli_uses_exported_tokenizer(exported, capsys):
    from runtime.__main__ import main

    directory = exported("sym")
    assert main(["generate", str(directory), "--prompt", "the quick brown fox", "--max-new-tokens", "3", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("the quick brown fox")
    assert "3 new tokens" in captured.err

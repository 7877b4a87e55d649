"""Export of a quantized LM head: an INT8 (per channel) or INT4 (grouped) DequantizeLinear block that ORT runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from runtime import OrtSession
from tiny_models import token_batch


@pytest.mark.parametrize("scheme,wtype,block", [("head8", TensorProto.INT8, 64), ("head4", TensorProto.INT4, 32)])
def test_head_is_a_dequantize_block_and_ort_matches_pytorch(exported, reference, llm_feeds, scheme, wtype, block):
    directory = exported(scheme)
    model = onnx.load(str(directory / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    heads = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and "lm_head" in n.name]
    assert len(heads) == 1
    weight = inits[heads[0].input[0]]
    assert weight.data_type == wtype and list(weight.dims) == [64, 128]
    assert {a.name: a.i for a in heads[0].attribute}["block_size"] == block
    embedding = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and list(t.dims) == [128, 64]]
    assert len(embedding) == 1  # the embedding stays float and is no longer shared with the head
    ref = reference(scheme)
    assert torch.equal(torch.from_numpy(numpy_helper.to_array(embedding[0]).copy()), ref.model.embed_tokens.weight)
    ids = token_batch(2, 11, seed=5).numpy()
    with torch.no_grad():
        expect = ref(torch.from_numpy(ids)).logits.numpy()
    with OrtSession(directory, providers=["cpu"], threads=1, accuracy_level=1) as session:
        got = session.run(llm_feeds(ids, session))["logits"]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("graph", ["generic", "fused"])
def test_split_head_exports_two_blocks_and_ort_matches_pytorch(exported, reference, llm_feeds, graph):
    """head_int8_rows: an INT8 per-channel block for token ids < 40 and an INT4 g32 block for the
    rest, both fused into MatMulNBits, logits concatenated in vocabulary order."""
    directory = exported("head_split", graph=graph)
    model = onnx.load(str(directory / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    heads = sorted((n for n in model.graph.node if n.op_type == "DequantizeLinear" and "lm_head" in n.name),
                   key=lambda n: n.name)
    assert len(heads) == 2
    blocks = [(inits[n.input[0]].data_type, list(inits[n.input[0]].dims), {a.name: a.i for a in n.attribute}["block_size"])
              for n in heads]
    assert sorted(blocks) == sorted([(TensorProto.UINT8, [64, 40], 64), (TensorProto.UINT4, [64, 88], 32)])
    ref = reference("head_split")
    ids = token_batch(2, 11, seed=5).numpy()
    with torch.no_grad():
        expect = ref(torch.from_numpy(ids)).logits.numpy()
    with OrtSession(directory, providers=["cpu"], threads=1, accuracy_level=1,
                    optimized_model_path=directory / "optimized.onnx") as session:
        got = session.run(llm_feeds(ids, session))["logits"]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=2e-5)
    fused = [n for n in onnx.load(str(directory / "optimized.onnx")).graph.node if n.op_type == "MatMulNBits"
             and "lm_head" in n.name]
    assert sorted({a.name: a.i for a in n.attribute}["bits"] for n in fused) == [4, 8]


def test_split_head_refuses_the_shared_table(checkpoint, tmp_path):
    from export import ExportConfig, export_onnx
    from quantize.errors import UserError

    with pytest.raises(UserError, match="split into INT8 and INT4 rows"):
        export_onnx(checkpoint("head_split"), tmp_path / "out", ExportConfig(graph="fused", share_embedding=True))
    assert not (tmp_path / "out").exists()

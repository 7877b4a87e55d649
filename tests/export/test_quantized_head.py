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

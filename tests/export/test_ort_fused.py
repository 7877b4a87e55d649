"""The fused ONNX Runtime decoder (``--graph fused``): layout, exactness against PyTorch, refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export import ExportConfig, export_onnx
from quantize import QuantConfig, quantize_model
from quantize.errors import ConfigError, UserError
from runtime import OrtSession
from tiny_models import tiny_decoder, token_batch


def _session(directory):
    return OrtSession(directory, providers=["cpu"], threads=1, accuracy_level=1)


def _logits(model, ids, mask=None, positions=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask), "position_ids": torch.from_numpy(positions)}
        return model(torch.from_numpy(ids), **kw).logits.numpy()


def test_layout_is_a_few_fused_nodes_per_layer(exported):
    directory = exported("sym")
    model = onnx.load(str(directory / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 2
    assert ops.count("SkipSimplifiedLayerNormalization") == 4  # 2 per layer, the first one's is the final norm's
    assert ops.count("DequantizeLinear") == 8  # q|k|v, o, gate|up, down per layer
    assert len(ops) < 70
    assert {o.domain for o in model.opset_import} == {"", "com.microsoft"}
    layers = json.loads((directory / "export.json").read_text())["scheme"]["layers"]
    packed = "model.layers.0.self_attn.qkv_proj"
    assert [layers[f"model.layers.0.self_attn.{p}_proj"]["columns"] for p in "qkv"] == [[0, 64], [64, 96], [96, 128]]
    assert {layers[f"model.layers.0.self_attn.{p}_proj"]["dequantize"] for p in "qkv"} == {f"{packed}/DequantizeLinear"}
    assert "columns" not in layers["model.layers.1.mlp.down_proj"]


def test_left_padded_batch_matches_pytorch(exported, reference):
    """The attention mask becomes an additive bias: padding anywhere behaves as in the PyTorch model."""
    ids = token_batch(3, 9, seed=2).numpy()
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, 7:] = 0  # right padding
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    expect = _logits(reference("sym"), ids, mask, positions)
    with _session(exported("sym")) as session:
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        for name, spec in session.input_metadata().items():
            if name.startswith("past_key_values."):
                feeds[name] = np.zeros((3, spec.shape[1], 0, spec.shape[3]), np.float32)
        got = session.run(feeds)["logits"]
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expect[real], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("kind,overrides", [("qwen2", {}), ("mistral", {"sliding_window": 4}),
                                            ("llama", {"tie_word_embeddings": True})])
def test_other_families_match_pytorch(kind, overrides, llm_feeds, tmp_path):
    """Qwen2's q/k/v biases (packed with the weights), Mistral's sliding window (local_window_size),
    and a float head tied to the embedding (one table in the file, transposed for the head)."""
    model = quantize_model(tiny_decoder(kind, **overrides), token_batch(), QuantConfig(method="rtn", group_size=32),
                           progress=False)
    out = export_onnx(model, tmp_path / kind)
    assert json.loads((out / "export.json").read_text())["graph"] == "fused"
    if overrides.get("tie_word_embeddings"):
        tables = [t for t in onnx.load(str(out / "model.onnx")).graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT and sorted(t.dims) == [64, 128]]
        assert len(tables) == 1
    ids = token_batch(2, 11, seed=5).numpy()
    expect = _logits(model, ids)
    with _session(out) as session:
        got = session.run(llm_feeds(ids, session))["logits"]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=2e-5)


def test_same_source_gives_same_bytes(checkpoint, tmp_path):
    a = export_onnx(checkpoint("sym"), tmp_path / "a")
    b = export_onnx(checkpoint("sym"), tmp_path / "b")
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()


def test_refusals(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="graph"):
        ExportConfig(target="trt", dtype="fp16", graph="fused")
    with pytest.raises(UserError, match="--graph fused is not possible.*KV cache") as err:
        export_onnx(checkpoint("sym"), tmp_path / "nokv", ExportConfig(graph="fused", kv_cache=False))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "nokv").exists()
    from tiny_models import tiny_hf_vit

    with pytest.raises(UserError, match="decoder LLMs"):
        export_onnx(tiny_hf_vit(), tmp_path / "vit", ExportConfig(graph="fused"))
    # A family without a fused layout falls back to the traced graph under "auto".
    out = export_onnx(tiny_decoder("qwen3"), tmp_path / "qwen3")
    assert json.loads((out / "export.json").read_text())["graph"] == "generic"


def test_tensorrt_build_refuses_a_fused_graph(exported, tmp_path):
    from export.check import CapabilityError
    from runtime.build import check_build_capability

    directory = exported("sym")
    proto = onnx.load(str(directory / "model.onnx"))
    with pytest.raises(CapabilityError, match="GroupQueryAttention.*--target trt"):
        check_build_capability(proto, directory / "model.onnx", "trt")
    check_build_capability(proto, directory / "model.onnx", "ort")


def test_in_place_cache_generates_what_the_copied_cache_does(exported, reference):
    """One preallocated buffer per layer bound as past and present: same tokens, logits and cache.

    The decode step after a left-padded prefill matches PyTorch (ORT's kernel rotates a first
    prompt by buffer index whatever position_ids say; the graph rotates every step that way).
    """
    from runtime import generate
    from runtime.generate import cache_layout, empty_cache

    ids = token_batch(2, 7, seed=5).numpy()
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding: the bias masks it, every row appends at the same position
    with _session(exported("sym")) as session:
        assert session.supports_in_place_cache
        copied = generate(session, ids, 6, attention_mask=mask, in_place=False)
        in_place = generate(session, ids, 6, attention_mask=mask, in_place=True)
        np.testing.assert_array_equal(in_place.tokens, copied.tokens)
        # The cache after a prefill and one step holds exactly the present outputs of the copy path.
        full = np.concatenate([ids, copied.new_tokens[:, :1]], axis=1)
        full_mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        positions = np.where(full_mask == 0, 1, np.cumsum(full_mask, 1) - 1)
        cache = session.allocate_cache(2, 12)
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions[:, :7]}
        session.run_in_place(feeds, cache)
        step = {"input_ids": full[:, 7:], "attention_mask": full_mask, "position_ids": positions[:, 7:]}
        logits = session.run_in_place(step, cache)["logits"]
        ref = session.run({"input_ids": full, "attention_mask": full_mask, "position_ids": positions,
                           **empty_cache(session, 2)})
        np.testing.assert_allclose(logits[:, -1], ref["logits"][:, -1], rtol=1e-4, atol=2e-5)
        expect = _logits(reference("sym"), full, full_mask, np.clip(np.cumsum(full_mask, 1) - 1, 0, None))
        np.testing.assert_allclose(logits[:, -1], expect[:, -1], rtol=1e-4, atol=2e-5)
        for name, present in cache_layout(session):
            got = cache.numpy(name)
            np.testing.assert_allclose(got[:, :, :8], ref[present], rtol=1e-5, atol=1e-6)
            assert not got[:, :, 8:].any()  # positions past the sequence are never written
        with pytest.raises(UserError, match="does not fit the cache"):
            session.run_in_place({**step, "attention_mask": np.ones((2, 13), np.int64)}, cache)
        with pytest.raises(UserError, match="missing input"):
            session.run_in_place({"input_ids": full[:, 7:]}, cache)


def test_generic_graph_keeps_the_copied_cache(exported):
    from runtime import generate

    with _session(exported("sym", graph="generic")) as session:
        assert not session.supports_in_place_cache
        with pytest.raises(UserError, match="cannot keep the KV cache in place"):
            generate(session, token_batch(1, 4).numpy(), 2, in_place=True)
        assert generate(session, token_batch(1, 4).numpy(), 2).new_tokens.shape == (1, 2)


@pytest.fixture(scope="module")
def int4_head_checkpoints(tmp_path_factory):
    """``{tied: checkpoint dir}`` of tiny Llamas with an INT4 g32 head, tied and untied before quantization."""
    from quantize import save_quantized
    from tiny_models import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("shared_table")
    config = QuantConfig(method="rtn", group_size=32, head_bits=4, head_group_size=32)
    return {tied: save_quantized(quantize_model(tiny_llama(tie_word_embeddings=tied), token_batch(), config, progress=False),
                                 root / f"tied-{tied}", tokenizer=tiny_tokenizer()) for tied in (True, False)}


def test_shared_embedding_reads_the_int4_head_table_stored_once(int4_head_checkpoints, tmp_path):
    """--share-embedding: logits of the PyTorch model whose embedding is the dequantized head;
    the head still fuses into MatMulNBits; the table's bytes are in the file once."""
    from export.qdq import quant_weights
    from quantize import load_quantized

    src = int4_head_checkpoints[True]
    out = export_onnx(src, tmp_path / "shared", ExportConfig(share_embedding=True))
    again = export_onnx(src, tmp_path / "again", ExportConfig(share_embedding=True))
    for name in ("model.onnx", "model.onnx.data"):  # deterministic: same source, same bytes
        assert (out / name).read_bytes() == (again / name).read_bytes()
    plain = export_onnx(src, tmp_path / "plain", ExportConfig())
    model = load_quantized(src)
    head = {w.name: w for w in quant_weights(model)}["lm_head"]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.from_numpy(head.dequantized()))
    ids = token_batch(2, 6, seed=3).numpy()
    expect = _logits(model, ids)
    with _session(out) as session:
        from runtime.generate import sequence_logits

        np.testing.assert_allclose(sequence_logits(session, ids), expect, rtol=1e-4, atol=2e-5)
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    places = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer if t.external_data}
    assert places["model.embed_tokens.qweight"] == places["lm_head.qweight"]
    assert places["model.embed_tokens.scales"] == places["lm_head.scales"]
    stored = sum(len(t.raw_data) for t in onnx.load(str(plain / "model.onnx")).graph.initializer)
    table = 128 * 64 * 4  # the float embedding the shared export drops (vocab x hidden, fp32)
    data = (out / "model.onnx.data").stat().st_size
    assert data < stored - table + 4096 * len(places)  # page alignment is the only overhead
    optimized = tmp_path / "opt.onnx"
    OrtSession(out, providers=["cpu"], optimized_model_path=optimized).close()
    ops = [n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 2 * 4 + 1 and ops.count("GatherBlockQuantized") == 1


def test_shared_embedding_refusals(int4_head_checkpoints, checkpoint, tmp_path):
    with pytest.raises(UserError, match="not the LM head's table"):
        export_onnx(int4_head_checkpoints[False], tmp_path / "untied", ExportConfig(share_embedding=True))
    with pytest.raises(UserError, match="LM head is not quantized"):
        export_onnx(checkpoint("sym"), tmp_path / "float-head", ExportConfig(share_embedding=True))
    with pytest.raises(ConfigError, match="share_embedding"):
        ExportConfig(share_embedding=True, target="trt")
    assert not (tmp_path / "untied").exists() and not (tmp_path / "float-head").exists()


def _as_model_builder_graph(directory, out, share_buffer):
    """The fused export rewritten the way onnxruntime-genai's builder leaves its graphs: no
    ``position_ids`` input, no cache metadata, a symbolic head size that ``genai_config.json`` states."""
    model = onnx.load(str(directory / "model.onnx"))
    del model.metadata_props[:]
    keep = [i for i in model.graph.input if i.name != "position_ids"]
    head_dim = None
    for value in keep:
        if value.name.startswith("past_key_values."):
            dim = value.type.tensor_type.shape.dim[3]
            head_dim = dim.dim_value
            dim.dim_param = "kv_cache_dim"
    del model.graph.input[:]
    model.graph.input.extend(keep)
    out.mkdir()
    onnx.save(model, str(out / "model.onnx"))
    config = {"model": {"decoder": {"head_size": head_dim}}, "search": {"past_present_share_buffer": share_buffer}}
    (out / "genai_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("share_buffer", [True, False])
def test_model_builder_graphs_run_their_cache_as_genai_config_says(exported, tmp_path, share_buffer):
    from runtime import generate

    directory = exported("sym")
    builder = _as_model_builder_graph(directory, tmp_path / "builder", share_buffer)
    ids = token_batch(2, 7, seed=3).numpy()
    with _session(directory) as ours:
        expect = generate(ours, ids, 5, in_place=False).tokens
    with _session(builder) as session:
        assert "position_ids" not in session.input_metadata()
        assert session.input_metadata()["past_key_values.0.key"].shape[3] == 16  # from genai_config.json
        assert session.supports_in_place_cache is share_buffer
        np.testing.assert_array_equal(generate(session, ids, 5).tokens, expect)
        np.testing.assert_array_equal(generate(session, ids, 5, in_place=False).tokens, expect)


def test_genai_config_is_a_hint_not_a_requirement(tmp_path):
    from runtime.ort import genai_cache_config

    model = tmp_path / "model.onnx"
    assert genai_cache_config(model) == (None, False)  # no file
    (tmp_path / "genai_config.json").write_text("{not json")
    assert genai_cache_config(model) == (None, False)
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"head_size": 64}}}))
    assert genai_cache_config(model) == (64, False)
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"head_size": "64"}},
                                                            "search": {"past_present_share_buffer": True}}))
    assert genai_cache_config(model) == (None, False)

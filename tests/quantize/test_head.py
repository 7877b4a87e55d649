"""Quantized LM head: calibrated on the final-norm outputs, untied from the embedding, saved and loaded."""

from __future__ import annotations

import json

import pytest
import torch

from quantize import QuantConfig, load_quantized, quantize_model, save_quantized
from quantize.errors import ConfigError, UserError
from quantize.qmodel import QuantLinear
from tiny_models import tiny_hf_vit, tiny_llama, token_batch


@pytest.mark.parametrize("method,bits,group", [("gptaq", 8, -1), ("gptq", 4, 32), ("rtn", 8, -1)])
def test_quantized_head_unties_keeps_embedding_exact_and_round_trips(tmp_path, method, bits, group):
    model = tiny_llama(tie_word_embeddings=True)
    embedding = model.model.embed_tokens.weight.detach().clone()
    config = QuantConfig(method=method, group_size=32, reorder="group" if method != "rtn" else "none",
                         head_bits=bits, head_group_size=group)
    quantize_model(model, token_batch(), config, progress=False)
    head = model.lm_head
    assert isinstance(head, QuantLinear) and (head.bits, head.group_size) == (bits, group)
    assert head.input_quant.bits == 16
    assert torch.equal(model.model.embed_tokens.weight, embedding)  # the embedding stays exact
    assert head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not model.config.tie_word_embeddings
    relative = ((head.weight - embedding).norm() / embedding.norm()).item()
    assert relative < {8: 0.02, 4: 0.2}[bits]  # a quantization of the old tied weight
    assert not torch.equal(head.weight, embedding)
    entry = [e for e in model.quant_state.log if e["name"] == "lm_head"]
    assert len(entry) == 1 and (entry[0]["loss"] > 0) == (method != "rtn")  # the solver ran on final-norm outputs
    out = save_quantized(model, tmp_path / "ckpt")
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["lm_head"] is True
    assert ("dynamic" in qcfg) == ((bits, group) != (4, 32))
    loaded = load_quantized(out)
    assert isinstance(loaded.lm_head, QuantLinear) and loaded.lm_head.bits == bits
    ids = token_batch(2, 12, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(loaded.model.embed_tokens.weight, embedding)


def test_solver_head_beats_rtn_head_on_final_norm_outputs():
    """The head is calibrated with the same solver: on the calibration hidden states, its output
    error is below round-to-nearest's."""
    calib = token_batch(8, 32)
    errors = {}
    for method in ("gptq", "rtn"):
        model = tiny_llama(tie_word_embeddings=True)
        fp_weight = model.lm_head.weight.detach().clone()
        quantize_model(model, calib, QuantConfig(method=method, w_bits=8, group_size=32, head_bits=4, head_group_size=32),
                       progress=False)
        with torch.no_grad():
            hidden = model.model(calib).last_hidden_state
            errors[method] = (hidden @ (model.lm_head.weight - fp_weight).t()).pow(2).sum().item()
    assert errors["gptq"] < errors["rtn"]


def test_head_config_is_validated_and_refused_where_unsupported():
    with pytest.raises(ConfigError, match="head_bits"):
        QuantConfig(head_bits=6)
    with pytest.raises(ConfigError, match="head_group_size"):
        QuantConfig(head_bits=4, head_group_size=48)
    with pytest.raises(UserError, match="head"):
        quantize_model(tiny_hf_vit(), torch.randn(4, 3, 32, 32), QuantConfig(method="rtn", head_bits=8), progress=False)


def test_split_head_keeps_int8_rows_and_equals_one_solve_with_per_row_grids(tmp_path, monkeypatch):
    """head_int8_rows: the first N rows INT8 per channel, the rest INT4 g32, logits concatenated.
    Both parts share the input-side H, so each part equals solving the whole head on that part's
    grid and keeping its rows (the solver treats rows independently)."""
    from quantize.gptq import solve
    from quantize.qmodel import RowSplitLinear

    calib = token_batch(8, 32)
    model = tiny_llama(tie_word_embeddings=True)
    vocab = model.config.vocab_size
    config = QuantConfig(method="gptaq", group_size=32, head_bits=4, head_group_size=32, head_int8_rows=40)
    captured = {}
    import quantize.calibrate as calibrate

    real = calibrate.solve

    def spy(weight, H, **kw):
        captured.setdefault("calls", []).append((weight.shape[0], kw["bits"], kw["group_size"]))
        captured["H"], captured["dXXT"], captured["kw"] = H, kw.get("dXXT"), kw
        return real(weight, H, **kw)

    fp_head = model.lm_head.weight.detach().clone()
    monkeypatch.setattr(calibrate, "solve", spy)
    quantize_model(model, calib, config, progress=False)
    head = model.lm_head
    assert isinstance(head, RowSplitLinear) and [p.out_features for p in head.parts] == [40, vocab - 40]
    assert [(p.bits, p.group_size) for p in head.parts] == [(8, -1), (4, 32)]
    assert captured["calls"][-2:] == [(40, 8, -1), (vocab - 40, 4, 32)]
    kw = {k: v for k, v in captured["kw"].items() if k not in ("bits", "group_size")}
    for part, (start, stop, bits, group) in zip(head.parts, [(0, 40, 8, -1), (40, vocab, 4, 32)]):
        whole = solve(fp_head, captured["H"], bits=bits, group_size=group, **kw)
        assert torch.equal(part.weight, whole.weight[start:stop])
    names = [e["name"] for e in model.quant_state.log if e["group"] == -1]
    assert names == ["lm_head.parts.0", "lm_head.parts.1"]

    out = save_quantized(model, tmp_path / "ckpt")
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    # GPTQModel's per-module override names the INT8 part; the INT4 g32 part has the blocks' grid
    assert qcfg["dynamic"] == {r"+:^lm_head\.parts\.0$": {"bits": 8, "group_size": -1}}
    loaded = load_quantized(out)
    assert isinstance(loaded.lm_head, RowSplitLinear)
    assert [(p.bits, p.group_size, p.out_features) for p in loaded.lm_head.parts] == [(8, -1, 40), (4, 32, vocab - 40)]
    ids = token_batch(2, 12, seed=4)
    with torch.no_grad():
        logits = model(ids).logits
        assert logits.shape[-1] == vocab
        assert torch.equal(loaded(ids).logits, logits)


def test_split_head_config_is_validated():
    with pytest.raises(ConfigError, match="head_int8_rows"):
        QuantConfig(head_bits=8, head_int8_rows=16)
    with pytest.raises(ConfigError, match="head_int8_rows"):
        QuantConfig(head_bits=4, head_int8_rows=-1)
    model = tiny_llama()
    with pytest.raises(UserError, match="no INT4 rows"):
        quantize_model(model, token_batch(), QuantConfig(method="rtn", head_bits=4, head_group_size=32,
                                                         head_int8_rows=model.config.vocab_size), progress=False)


def test_row_split_linear_computes_the_linear_it_cuts():
    from quantize.qmodel import RowSplitLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 10)
    split = RowSplitLinear.from_linear(linear, [3, 7])
    assert [p.out_features for p in split.parts] == [3, 4, 3] and split.weight.shape == (10, 8)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.equal(split(x), torch.cat([x @ linear.weight[a:b].t() + linear.bias[a:b]
                                                for a, b in ((0, 3), (3, 7), (7, 10))], -1))
    with pytest.raises(ValueError, match="non-empty parts"):
        RowSplitLinear.from_linear(linear, [10])

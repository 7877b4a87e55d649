"""Column orders of the solver: group-aware reordering (GAR), act-order, and their exactness."""

from __future__ import annotations

import pytest
import torch

from quantize.gptq import column_order, solve
from quantize.gptq_reference import reference_solve
from quantize.primitives import dequantize_grouped

from solver_streams import correlated_streams, stats


def test_group_order_keeps_groups_whole_sorts_within_and_orders_groups_by_max():
    diag = torch.tensor([1.0, 5.0, 2.0, 9.0, 3.0, 4.0, 0.5, 0.2, 7.0, 6.0])  # groups of 4: [0-3] [4-7] [8-9]
    perm = column_order(diag, 4, "group")
    # group 0 (max 9) first, then group 1 (max 4); the partial last group [8, 9] stays last.
    assert perm.tolist() == [3, 1, 2, 0, 5, 4, 6, 7, 8, 9]
    assert column_order(diag, 4, "none") is None
    assert column_order(diag, 4, "act").tolist() == torch.argsort(diag, descending=True, stable=True).tolist()


@pytest.mark.parametrize("n,g", [(72, 16), (96, 32), (64, 64)])
def test_group_order_is_a_permutation_with_aligned_groups(n, g):
    diag = torch.rand(n, generator=torch.Generator().manual_seed(n))
    perm = column_order(diag, g, "group")
    assert sorted(perm.tolist()) == list(range(n))
    groups = perm // g
    for start in range(0, n, g):  # each aligned slot of the processing order holds one whole group
        slot = groups[start : start + g]
        assert (slot == slot[0]).all() and slot.numel() == min(g, n - int(slot[0]) * g)
        assert (diag[perm[start : start + g]].diff() <= 0).all()


@pytest.mark.parametrize("sym,mse", [(True, False), (False, True)], ids=["sym", "asym-mse"])
@pytest.mark.parametrize("asym", [False, True], ids=["gptq", "gptaq"])
def test_group_order_equals_solving_the_permuted_problem(sym, mse, asym):
    """Reordering round-trips: solving in GAR order is exactly solving the permuted layer in
    natural order and un-permuting; ``g_idx`` stays ``col // group`` (plain GPTQ layout)."""
    n, g = 88, 16  # 5 full groups and a partial one
    x_fp, x_q = correlated_streams(n, 1024)
    H, D = (t.double() for t in stats(x_fp, x_q))
    W = torch.randn(12, n, dtype=torch.float64)
    kw = dict(bits=3, group_size=g, sym=sym, mse_clip=mse, block_size=32)
    got = solve(W, H, dXXT=D if asym else None, reorder="group", **kw)
    perm = column_order(torch.diagonal(H), g, "group")
    ref = solve(W[:, perm], H[perm][:, perm], dXXT=D[perm][:, perm] if asym else None, **kw)
    inverse = torch.argsort(perm)
    assert torch.equal(got.codes, ref.codes[:, inverse])
    assert torch.equal(got.weight, ref.weight[:, inverse])
    group_of_slot = perm[::g] // g  # original group processed in slot k
    assert torch.equal(got.scales[:, group_of_slot], ref.scales) and torch.equal(got.zeros[:, group_of_slot], ref.zeros)
    assert torch.equal(got.g_idx, torch.arange(n) // g)
    assert torch.equal(got.weight, dequantize_grouped(got.codes, got.scales, got.zeros, got.g_idx).double())


@pytest.mark.parametrize("reorder", ["none", "act", "group"])
def test_alpha_zero_is_gptq_bit_for_bit_under_every_order(reorder):
    x_fp, x_q = correlated_streams(96, 1024)
    H, D = stats(x_fp, x_q)
    W = torch.randn(40, 96)
    kw = dict(bits=4, group_size=32, sym=True, reorder=reorder, block_size=32)
    gptq = solve(W, H, **kw)
    for other in (solve(W, H, dXXT=D, alpha=0.0, **kw), solve(W, H, dXXT=torch.zeros_like(D), alpha=0.25, **kw)):
        assert torch.equal(other.codes, gptq.codes) and torch.equal(other.weight, gptq.weight)
        assert torch.equal(other.loss, gptq.loss) and torch.equal(other.scales, gptq.scales)
    assert not torch.equal(solve(W, H, dXXT=D, **kw).codes, gptq.codes)


def test_act_order_flag_is_an_alias_of_reorder_act():
    x_fp, x_q = correlated_streams(64, 512)
    H, D = stats(x_fp, x_q)
    W = torch.randn(8, 64)
    kw = dict(bits=4, group_size=16, sym=True, dXXT=D)
    assert torch.equal(solve(W, H, act_order=True, **kw).codes, solve(W, H, reorder="act", **kw).codes)


@pytest.mark.parametrize("g,block", [(16, 32), (32, 32), (64, 32)])
def test_group_order_matches_the_straightforward_reference(g, block):
    x_fp, x_q = correlated_streams(80, 1024)
    H, D = (t.double() for t in stats(x_fp, x_q))
    W = torch.randn(16, 80)
    kw = dict(bits=4, group_size=g, sym=False, reorder="group", block_size=block, dXXT=D)
    fast, ref = solve(W, H, **kw), reference_solve(W, H, **kw)
    assert torch.equal(fast.codes, ref.codes) and torch.equal(fast.scales, ref.scales)


def test_group_order_lowers_the_layer_objective_on_skewed_inputs():
    """Where input energy is uneven within groups, GAR beats natural order on the GPTQ objective
    (averaged over seeds; it is a heuristic, not a guarantee per layer)."""
    wins = 0
    for seed in range(8):
        x_fp, _ = correlated_streams(64, 1024, seed=seed)
        x_fp = x_fp * torch.logspace(-1, 1, 64)[torch.randperm(64, generator=torch.Generator().manual_seed(seed))][:, None]
        H = 2 / x_fp.shape[1] * x_fp @ x_fp.T
        W = torch.randn(32, 64, generator=torch.Generator().manual_seed(seed))
        err = lambda r: ((W - r.weight) @ x_fp).pow(2).sum().item()  # noqa: E731
        kw = dict(bits=3, group_size=16, sym=True)
        wins += err(solve(W, H, reorder="group", **kw)) < err(solve(W, H, **kw))
    assert wins >= 6


def test_mse_clip_is_fitted_per_group():
    from quantize.gptq import rtn
    from quantize.primitives import weight_qparams

    W = torch.randn(6, 96, generator=torch.Generator().manual_seed(3))
    W[:, 5] *= 8  # an outlier column: only group 0 should shrink differently
    res = rtn(W, bits=3, group_size=32, sym=False, mse_clip=True)
    for k in range(3):
        s, z = weight_qparams(W[:, 32 * k : 32 * (k + 1)], 3, False, True)
        assert torch.equal(res.scales[:, k], s) and torch.equal(res.zeros[:, k], z)


def _plain_gptq_dequantize(tensors, prefix, bits, in_features):
    """A GPTQ reader written from the format alone (4-bit, v1 zeros): ``qweight`` packs 8 codes
    per int32 along in-features, ``qzeros`` holds ``zero - 1``, ``scales [groups, out]``, ``g_idx``."""
    qweight = tensors[f"{prefix}.qweight"].to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, bits)
    codes = ((qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(-1, qweight.shape[1])[:in_features]
    qzeros = tensors[f"{prefix}.qzeros"].to(torch.int64) & 0xFFFFFFFF
    zeros = ((qzeros[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(qzeros.shape[0], -1) + 1
    scales = tensors[f"{prefix}.scales"].to(torch.float32)
    g = tensors[f"{prefix}.g_idx"].to(torch.int64)
    return (scales[g] * (codes - zeros[g]).to(torch.float32)).t()  # [out, in]


def test_group_reordered_checkpoint_reads_as_plain_gptq(tmp_path):
    """No GPTQ-kernel reader (transformers + optimum / GPTQModel) is installed here, so this test
    reads the checkpoint with a reader written from the GPTQ format alone, into a plain
    transformers model, and compares logits with ``load_quantized``."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantize import QuantConfig, load_quantized, quantize_model, save_quantized
    from tiny_models import tiny_llama, token_batch

    model = quantize_model(tiny_llama(), token_batch(), QuantConfig(method="gptaq", group_size=32, reorder="group"),
                           progress=False)
    out = save_quantized(model, tmp_path / "ckpt")
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["desc_act"] is False and qcfg["meta"]["reorder"] == "group"
    tensors = load_file(str(out / "model.safetensors"))
    config = AutoConfig.from_pretrained(str(out))
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config).eval()
    state = {k: v for k, v in tensors.items() if not k.endswith(("qweight", "qzeros", "scales", "g_idx"))}
    for prefix in {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".qweight")}:
        in_features = plain.get_submodule(prefix).in_features
        assert torch.equal(tensors[f"{prefix}.g_idx"].long(), torch.arange(in_features) // 32)
        state[f"{prefix}.weight"] = _plain_gptq_dequantize(tensors, prefix, 4, in_features)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    ids = token_batch(2, 16, seed=1)
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, load_quantized(out)(ids).logits)


def test_reorder_config_and_act_order_alias():
    from quantize import QuantConfig
    from quantize.errors import ConfigError

    assert QuantConfig(act_order=True).reorder == "act"
    assert QuantConfig(reorder="act").act_order is True
    assert QuantConfig(reorder="group").act_order is False
    assert QuantConfig.from_dict({"act_order": True}) == QuantConfig(reorder="act")  # old quant_config.json
    cfg = QuantConfig(reorder="group")
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="reorder"):
        QuantConfig(reorder="random")
    with pytest.raises(ConfigError, match="act_order"):
        QuantConfig(reorder="group", act_order=True)

import logging
import math

import pytest
import torch

from quantize.errors import NumericalError
from quantize.gptq import _inverse_cholesky_upper, _p_rows, rtn, solve
from quantize.gptq_reference import reference_solve
from quantize.primitives import dequantize_grouped
from solver_streams import correlated_streams, stats


def test_golden_2x2_gptq_and_gptaq():
    """Hand-computed: H = [[2,1],[1,2]] damped by 0.02, 2-bit symmetric grid with scale 0.5.

    U (upper Cholesky of H_d^-1) = [[0.809789, -0.400886], [0, 0.703597]].
    GPTQ: column 0: 0.75 -> 0.5 (code 3), err 0.25/0.809789 = 0.308722 moves column 1 from
    0.2 to 0.2 + 0.308722*0.400886 = 0.323762 -> 0.5 (code 3); RTN would give 0.0.
    GPTAQ (alpha 1, D01 = -1): P01 = D01 / H_d[1,1] = -0.495050, adds 0.75 * P01 = -0.371287:
    column 1 becomes -0.047525 -> 0.0 (code 2).
    """
    W = torch.tensor([[0.75, 0.2]], dtype=torch.float64)
    H = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    common = dict(bits=2, group_size=-1, sym=True, damp=0.01)
    U, _ = _inverse_cholesky_upper(H, 0.01)
    assert torch.allclose(U, torch.tensor([[0.809789, -0.400886], [0.0, 0.703597]], dtype=torch.float64), atol=1e-6)
    g = solve(W, H, **common)
    assert g.codes.tolist() == [[3, 3]] and g.weight.tolist() == [[0.5, 0.5]]
    assert g.loss.item() == pytest.approx((0.25**2 / 0.655759 + 0.176238**2 / 0.495049) / 2, rel=1e-4)
    assert rtn(W, **{k: v for k, v in common.items() if k != "damp"}).weight.tolist() == [[0.5, 0.0]]
    D = torch.tensor([[0.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    a = solve(W, H, dXXT=D, alpha=1.0, **common)
    assert a.codes.tolist() == [[3, 2]] and a.weight.tolist() == [[0.5, 0.0]]


def test_p_rows_equal_row_wise_definition():
    """P[q, q+1:] = D[q, q+1:] @ inv(H_d[q+1:, q+1:]) (papers.md §1.4), checked in fp64."""
    n = 40
    x_fp, x_q = correlated_streams(n, 500)
    H, D = (t.double() for t in stats(x_fp, x_q))
    H = (H + H.T) / 2  # a float32 product is not bitwise symmetric; Cholesky reads one triangle
    U, damp = _inverse_cholesky_upper(H, 0.01)
    Hd = H + damp * H.diagonal().mean() * torch.eye(n, dtype=torch.float64)
    for i, j2 in [(0, 16), (16, 32), (32, 40)]:
        P = _p_rows(D, U, i, j2, panel=8)
        for q in range(i, j2):
            expect = D[q, q + 1 :] @ torch.linalg.inv(Hd[q + 1 :, q + 1 :])
            assert torch.allclose(P[q - i, q + 1 - i :], expect, atol=1e-10)
            assert torch.all(P[q - i, : q + 1 - i] == 0)


CONFIGS = [
    dict(bits=4, group_size=32, sym=True),
    dict(bits=4, group_size=-1, sym=False),
    dict(bits=3, group_size=16, sym=True, act_order=True),
    dict(bits=2, group_size=64, sym=False, mse_clip=True),
    dict(bits=4, group_size=64, sym=True, block_size=16),
    dict(bits=8, group_size=32, sym=True, act_order=True, block_size=32),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("asym", [False, True], ids=["gptq", "gptaq"])
def test_fast_solver_equals_straightforward_reference(cfg, asym):
    x_fp, x_q = correlated_streams(72, 1024)
    H, D = (t.double() for t in stats(x_fp, x_q))
    W = torch.randn(24, 72)
    fast = solve(W, H, dXXT=D if asym else None, **cfg)
    ref = reference_solve(W, H, dXXT=D if asym else None, **cfg)
    assert torch.equal(fast.codes, ref.codes)
    assert torch.equal(fast.weight, ref.weight)
    assert torch.allclose(fast.loss, ref.loss, rtol=1e-9)
    assert torch.equal(fast.scales, ref.scales) and torch.equal(fast.zeros, ref.zeros)


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=str)
def test_blocked_equals_unblocked(cfg):
    """With the pre-quantization cross-block convention the block size changes nothing."""
    x_fp, x_q = correlated_streams(64, 1024)
    H, D = (t.double() for t in stats(x_fp, x_q))
    W = torch.randn(16, 64)
    small = solve(W, H, dXXT=D, **{**cfg, "block_size": 16})
    whole = solve(W, H, dXXT=D, **{**cfg, "block_size": 64})
    assert torch.equal(small.codes, whole.codes)


@pytest.mark.parametrize("act_order", [False, True])
def test_alpha_zero_and_zero_asymmetry_are_gptq_bit_for_bit(act_order):
    x_fp, x_q = correlated_streams(96, 1024)
    H, D = stats(x_fp, x_q)
    W = torch.randn(40, 96)
    kw = dict(bits=4, group_size=32, sym=True, act_order=act_order, block_size=32)
    gptq = solve(W, H, **kw)
    for other in (solve(W, H, dXXT=D, alpha=0.0, **kw), solve(W, H, dXXT=torch.zeros_like(D), alpha=0.25, **kw)):
        assert torch.equal(other.codes, gptq.codes)
        assert torch.equal(other.weight, gptq.weight)
        assert torch.equal(other.loss, gptq.loss)
    assert not torch.equal(solve(W, H, dXXT=D, **kw).codes, gptq.codes)


def test_gptq_beats_rtn_on_layer_objective_over_seeds():
    for seed in range(10):
        x_fp, _ = correlated_streams(64, 1024, seed=seed)
        H = 2 / x_fp.shape[1] * x_fp @ x_fp.T
        W = torch.randn(32, 64, generator=torch.Generator().manual_seed(seed))
        err = lambda r: ((W - r.weight) @ x_fp).pow(2).sum().item()  # noqa: E731
        assert err(solve(W, H, bits=3, group_size=32, sym=True)) < err(rtn(W, bits=3, group_size=32, sym=True))


def test_gptaq_beats_gptq_on_asymmetric_objective_over_seeds():
    for seed in range(10):
        x_fp, x_q = correlated_streams(64, 2048, seed=seed)
        H, D = stats(x_fp, x_q)
        W = torch.randn(32, 64, generator=torch.Generator().manual_seed(seed))
        obj = lambda r: (W @ x_fp - r.weight @ x_q).pow(2).sum().item()  # noqa: E731
        kw = dict(bits=4, group_size=32, sym=True)
        assert obj(solve(W, H, dXXT=D, **kw)) < obj(solve(W, H, **kw))


def test_weight_is_exactly_dequantized_codes_in_input_dtype():
    x_fp, x_q = correlated_streams(64, 512)
    H, D = stats(x_fp, x_q)
    W = torch.randn(8, 64).to(torch.bfloat16)
    res = solve(W, H, dXXT=D, bits=4, group_size=32, sym=False, act_order=True)
    assert res.weight.dtype == torch.bfloat16 and res.codes.dtype == torch.uint8
    assert torch.equal(res.weight, dequantize_grouped(res.codes, res.scales, res.zeros, res.g_idx).to(torch.bfloat16))
    assert torch.equal(res.g_idx, torch.arange(64) // 32)  # static groups stay contiguous under act-order


def test_dead_inputs_are_zeroed():
    x_fp, x_q = correlated_streams(32, 512)
    x_q[5] = 0.0
    H, D = stats(x_fp, x_q)
    W = torch.randn(8, 32)
    for sym in (True, False):
        res = solve(W, H, dXXT=D, bits=4, group_size=16, sym=sym)
        assert torch.all(res.weight[:, 5] == 0)
        assert torch.isfinite(res.loss).all()


def test_damping_grows_until_cholesky_succeeds(caplog):
    H = torch.diag(torch.tensor([1.0, 1.0, -0.5, 1.0]))  # indefinite: needs lambda > 0.5
    W = torch.randn(3, 4)
    with caplog.at_level(logging.WARNING, logger="quantize.gptq"):
        res = solve(W, H, bits=4, group_size=-1, sym=True, damp=0.01)
    assert res.damp == pytest.approx(1.0)
    assert "retrying" in caplog.text


def test_nan_and_hopeless_hessian_raise_numerical_error_with_layer():
    W = torch.randn(4, 8)
    W[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="weight contains NaN") as info:
        solve(W, torch.eye(8), bits=4, group_size=-1, sym=True)
    assert str(info.value.with_layer("model.layers.3.mlp.down_proj")).startswith("layer model.layers.3.mlp.down_proj:")
    H = torch.eye(8)
    H[0, 0] = float("inf")
    with pytest.raises(NumericalError, match="Hessian"):
        solve(torch.randn(4, 8), H, bits=4, group_size=-1, sym=True)
    with pytest.raises(NumericalError, match="not positive definite"):
        solve(torch.randn(4, 8), -1e6 * torch.eye(8) + torch.ones(8, 8), bits=4, group_size=-1, sym=True)


def test_rtn_partial_last_group_matches_per_group_fit():
    W = torch.randn(6, 80)
    res = rtn(W, bits=4, group_size=32, sym=False)
    assert res.scales.shape == (6, 3)
    tail = rtn(W[:, 64:], bits=4, group_size=-1, sym=False)
    assert torch.equal(res.weight[:, 64:], tail.weight)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x_fp, x_q = correlated_streams(128, 1024)
    H, D = (t.double() for t in stats(x_fp, x_q))
    W = torch.randn(64, 128)
    cpu = solve(W, H, dXXT=D, bits=4, group_size=32, sym=True)
    gpu = solve(W.cuda(), H.cuda(), dXXT=D.cuda(), bits=4, group_size=32, sym=True)
    assert (gpu.codes.cpu() != cpu.codes).float().mean() < 1e-3

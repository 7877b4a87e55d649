import pytest
import torch

from quantize.primitives import (
    dequantize_codes, dequantize_grouped, fake_quant_activation, from_gptq_tensors, pack_int32,
    quantize_to_codes, to_gptq_tensors, unpack_int32, weight_qparams,
)


def test_symmetric_grid_golden():
    # amax 2 -> scale 2*2/15 = 0.2667, rounded to fp16 = 0.2666015625; zero 8.
    w = torch.tensor([[0.5, -1.0, 0.25, 2.0]])
    scale, zero = weight_qparams(w, bits=4, sym=True)
    assert scale.item() == 0.2666015625 and zero.item() == 8
    codes = quantize_to_codes(w, scale[:, None], zero[:, None], 4)
    assert codes.tolist() == [[10, 4, 9, 15]]  # 2.0/s = 7.5 rounds to 8 and clamps to 7 above zero
    assert dequantize_codes(codes, scale[:, None], zero[:, None]).tolist() == [[0.533203125, -1.06640625, 0.2666015625, 1.8662109375]]


def test_asymmetric_grid_golden():
    # range [min(w,0), max(w,0)] = [-0.5, 1.0] over 15 steps: scale 0.1 (fp16 0.0999755859375), zero round(5.0012) = 5
    w = torch.tensor([[0.2, 1.0, -0.5, 0.0]])
    scale, zero = weight_qparams(w, bits=4, sym=False)
    assert scale.item() == pytest.approx(0.0999755859375, abs=0) and zero.item() == 5
    codes = quantize_to_codes(w, scale[:, None], zero[:, None], 4)
    assert codes.tolist() == [[7, 15, 0, 5]]
    # all-positive row: zero point 0, nothing below 0 is representable or needed
    s2, z2 = weight_qparams(torch.tensor([[0.3, 0.6]]), bits=3, sym=False)
    assert z2.item() == 0 and s2.item() == pytest.approx(0.6 / 7, rel=1e-3)


def _brute_force_mse(row, bits, sym):
    best = (float("inf"), None)
    for i in range(80):
        p = 1 - i / 100
        xmin, xmax = min(row.min().item(), 0) * p, max(row.max().item(), 0) * p
        if sym:
            amax = max(-xmin, xmax)
            scale = torch.tensor(2 * amax / (2**bits - 1)).half().float()
            zero = torch.tensor(float(2 ** (bits - 1)))
        else:
            scale = torch.tensor((xmax - xmin) / (2**bits - 1)).half().float()
            zero = torch.clamp(torch.round(-xmin / scale), 0, 2**bits - 1)
        q = dequantize_codes(quantize_to_codes(row, scale, zero, bits), scale, zero)
        err = ((q - row).abs() ** 2.4).sum().item()
        if err < best[0]:
            best = (err, (scale.item(), zero.item()))
    return best[1]


@pytest.mark.parametrize("sym", [True, False])
def test_mse_clip_matches_brute_force_and_shrinks_outlier_rows(sym):
    w = torch.randn(6, 64)
    w[0, 3] = 12.0  # an outlier makes clipping worthwhile
    scale, zero = weight_qparams(w, bits=3, sym=sym, mse_clip=True)
    plain, _ = weight_qparams(w, bits=3, sym=sym)
    for r in range(w.shape[0]):
        assert (scale[r].item(), zero[r].item()) == _brute_force_mse(w[r], 3, sym)
    assert scale[0] < plain[0]


def test_activation_quant_asym_per_token_golden():
    x = torch.tensor([[0.0, 1.5, -1.5, 3.0], [0.0, 0.0, 0.0, 0.0]])
    y = fake_quant_activation(x, bits=2, sym=False, clip_ratio=1.0)
    # token 0: range [-1.5, 3] / 3 steps -> scale 1.5, zero 1: grid {-1.5, 0, 1.5, 3}
    assert y[0].tolist() == [0.0, 1.5, -1.5, 3.0]
    assert y[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    # range [-1.2, 3] -> scale 1.4, zero round(0.857) = 1: grid {-1.4, 0, 1.4, 2.8}
    z = fake_quant_activation(torch.tensor([[0.4, 1.2, -1.2, 3.0]]), bits=2, sym=False)
    assert torch.allclose(z, torch.tensor([[0.0, 1.4, -1.4, 2.8]]))


def test_activation_quant_sym_and_clip_ratio():
    x = torch.tensor([[7.0, -3.5, 1.0, 0.4]])
    assert fake_quant_activation(x, 4, sym=True).tolist() == [[7.0, -4.0, 1.0, 0.0]]  # scale 1
    clipped = fake_quant_activation(x, 4, sym=True, clip_ratio=0.5)  # scale 0.5, 7 -> clamp at 3.5
    assert clipped.tolist() == [[3.5, -3.5, 1.0, 0.5]]
    assert fake_quant_activation(x.half(), 4, sym=True).dtype == torch.float16
    assert fake_quant_activation(x, 16, sym=True) is x


def test_pack_4bit_layout_is_gptq():
    values = torch.arange(16).reshape(16, 1) % 16  # values 0..15 down one column
    packed = pack_int32(values, 4)
    assert packed.shape == (2, 1) and packed.dtype == torch.int32
    # value k at bit 4*(k%8) of word k//8
    assert packed[0, 0].item() == 0x76543210
    assert packed[1, 0].item() == 0xFEDCBA98 - (1 << 32)  # sign bit set: stored as negative int32


def test_pack_3bit_straddles_words():
    values = torch.zeros(11, 1, dtype=torch.int64)
    values[10, 0] = 0b101  # bits 30..32: low two bits end word 0, high bit starts word 1
    packed = pack_int32(values, 3)
    assert packed.shape == (2, 1)
    assert (packed[0, 0].item() & 0xFFFFFFFF) == 0b01 << 30 and packed[1, 0].item() == 1


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n", [1, 31, 64, 97])
def test_pack_unpack_round_trip(bits, n):
    values = torch.randint(0, 2**bits, (n, 5))
    packed = pack_int32(values, bits)
    assert packed.shape == (-(-n * bits // 32), 5)
    assert torch.equal(unpack_int32(packed, bits, n), values)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="do not fit"):
        pack_int32(torch.tensor([[16]]), 4)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_tensors_round_trip_with_partial_group(bits):
    out_f, in_f, g = 12, 80, 32  # 2.5 groups
    n_groups = 3
    codes = torch.randint(0, 2**bits, (out_f, in_f))
    scales = (torch.rand(out_f, n_groups) + 0.01).half().float()
    zeros = torch.randint(0, 2**bits, (out_f, n_groups))
    g_idx = torch.arange(in_f) // g
    tensors = to_gptq_tensors(codes, scales, zeros, g_idx, bits)
    assert tensors["qweight"].shape == (-(-in_f * bits // 32), out_f)
    assert tensors["qzeros"].shape == (n_groups, -(-out_f * bits // 32))
    assert tensors["scales"].shape == (n_groups, out_f) and tensors["scales"].dtype == torch.float16
    back = from_gptq_tensors(tensors, bits, in_f)
    assert torch.equal(back["codes"], codes) and torch.equal(back["zeros"], zeros)
    assert torch.equal(back["scales"], scales) and torch.equal(back["g_idx"], g_idx)
    ref = dequantize_grouped(codes, scales, zeros, g_idx)
    assert torch.equal(dequantize_grouped(back["codes"], back["scales"], back["zeros"], back["g_idx"]), ref)


def test_qzeros_use_v1_offset():
    codes = torch.zeros(8, 8, dtype=torch.int64)
    zeros = torch.full((8, 1), 8)
    t = to_gptq_tensors(codes, torch.ones(8, 1), zeros, torch.zeros(8, dtype=torch.int64), 4)
    assert t["qzeros"][0, 0].item() == 0x77777777  # stored zero - 1 = 7 in every nibble

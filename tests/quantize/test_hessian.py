import pytest
import torch

from quantize.hessian import HessianAccumulator


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_mean_equals_direct_sum(dtype):
    batches_q = [torch.randn(b, 7, 16) for b in (3, 1, 4)]
    batches_fp = [x + 0.1 * torch.randn_like(x) for x in batches_q]
    acc = HessianAccumulator(16, asym=True, dtype=dtype)
    for xq, xfp in zip(batches_q, batches_fp):
        acc.add(xq, xfp)
    assert acc.nsamples == 8
    xq = torch.cat([x.reshape(-1, 16) for x in batches_q]).double()
    xfp = torch.cat([x.reshape(-1, 16) for x in batches_fp]).double()
    H = 2 / 8 * xq.T @ xq
    D = 2 / 8 * (xfp - xq).T @ xq
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert acc.H.dtype == dtype
    assert torch.allclose(acc.H.double(), H, rtol=tol, atol=tol)
    assert torch.allclose(acc.dXXT.double(), D, rtol=tol, atol=tol)


def test_two_dimensional_input_counts_as_one_sequence_and_half_precision_upcasts():
    acc = HessianAccumulator(8)
    acc.add(torch.randn(5, 8).half())
    acc.add(torch.randn(5, 8).half())
    assert acc.nsamples == 2 and acc.dXXT is None and acc.H.dtype == torch.float32


def test_errors():
    acc = HessianAccumulator(8, asym=True)
    with pytest.raises(ValueError, match="features"):
        acc.add(torch.randn(2, 3, 9))
    with pytest.raises(ValueError, match="x_fp"):
        acc.add(torch.randn(2, 3, 8))

"""Hadamard constructions (Sylvester, Paley I/II over prime and prime-power fields, Kronecker),
the fast Walsh–Hadamard transform and the online transform module."""

from __future__ import annotations

import math

import pytest
import torch

from quantize.errors import UserError
from quantize.hadamard import OnlineHadamard, factor_order, fwht, hadamard, is_hadamard_order, random_signs

# Sylvester, Paley I over GF(p) (12, 20, 60, 108, 140) and GF(p^k) (28 = GF(27)+1, 344 = GF(343)+1),
# Paley II over GF(p) (36, 76, 148) and GF(p^k) (52 = 2 (GF(25)+1)), Kronecker products (24, 576, 1536).
ORDERS = [1, 2, 4, 8, 64, 12, 20, 60, 108, 140, 28, 344, 36, 76, 148, 52, 24, 576, 1536]


@pytest.mark.parametrize("n", ORDERS)
def test_constructed_orders_are_hadamard(n):
    h = hadamard(n)
    assert h.shape == (n, n) and set(h.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=h.dtype))


@pytest.mark.parametrize("n,factors", [(11008, (344, 32)), (14336, (112, 128)), (1536, (48, 32)), (18944, (148, 128)),
                                       (8960, (140, 64)), (576, (36, 16)), (4096, (64, 64)), (4864, (76, 64))])
def test_real_model_sizes_split_into_two_small_hadamard_factors(n, factors):
    left, right = factor_order(n)
    assert (left, right) == factors and left * right == n
    for m in (left, right):
        h = hadamard(m)
        assert torch.equal(h @ h.T, m * torch.eye(m, dtype=h.dtype))


@pytest.mark.parametrize("n", [3, 6, 156, 172, 43 * 2])
def test_sizes_without_construction_get_one_line(n):
    assert not is_hadamard_order(n)
    with pytest.raises(UserError) as exc:
        hadamard(n)
    assert f"order {n}" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("n", [1, 2, 16, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fwht_equals_sylvester_matmul(n, dtype):
    x = torch.randn(3, 5, n, dtype=dtype)
    torch.testing.assert_close(fwht(x), x @ hadamard(n, dtype), rtol=1e-6, atol=1e-5)


def test_fwht_refuses_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(12))


@pytest.mark.parametrize("features,size", [(96, None), (576, None), (64, None), (64, 4), (48, 12)])
def test_online_hadamard_equals_dense_orthogonal_matrix(features, size):
    module = OnlineHadamard(features, size)
    t = module.matrix()
    torch.testing.assert_close(t @ t.T, torch.eye(features, dtype=torch.float64), rtol=0, atol=1e-12)
    x = torch.randn(2, 7, features, dtype=torch.float64)
    torch.testing.assert_close(module(x), x @ t, rtol=1e-12, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(module(x32), (x @ t).float(), rtol=1e-5, atol=1e-5)


def test_online_hadamard_full_form_is_kronecker_of_the_factors():
    module = OnlineHadamard(1536)
    assert (module.left, module.right) == (48, 32)
    expected = torch.kron(hadamard(48), hadamard(32)) / math.sqrt(1536)
    torch.testing.assert_close(module.matrix(), expected, rtol=1e-14, atol=0)
    assert not [k for k in module.state_dict()]  # factors are rebuilt, never stored in checkpoints


def test_online_hadamard_follows_dtype_and_refuses_bad_chunks():
    module = OnlineHadamard(64).to(torch.float16)
    assert module(torch.randn(3, 64, dtype=torch.float16)).dtype == torch.float16
    with pytest.raises(UserError):
        OnlineHadamard(64, size=5)
    with pytest.raises(UserError, match="order 9"):
        OnlineHadamard(576, size=9)


def test_random_signs_are_seeded():
    assert torch.equal(random_signs(64, 3), random_signs(64, 3))
    assert not torch.equal(random_signs(64, 3), random_signs(64, 4))
    assert set(random_signs(64, 3).tolist()) == {-1.0, 1.0}

"""Hadamard matrices by construction, and the transforms that apply them to activations.

A Hadamard matrix ``H`` of order ``n`` has entries ``±1`` and ``H Hᵀ = n I``; ``H / sqrt(n)`` is
orthogonal and spreads any outlier evenly over all ``n`` coordinates, which is what makes 4-bit
activations workable (QuaRot). Orders are built, never pasted from tables:

* **Sylvester**: ``H_1 = [1]``, ``H_2k = [[H_k, H_k], [H_k, -H_k]]`` for powers of two.
* **Paley I**: order ``q + 1`` for a prime power ``q ≡ 3 (mod 4)`` (e.g. 12, 20, 28, 60, 140, 344).
* **Paley II**: order ``2 (q + 1)`` for a prime power ``q ≡ 1 (mod 4)`` (e.g. 28, 36, 52, 76, 148).
* **Kronecker products** ``H_a ⊗ H_b`` for the rest: every order a real model needs is
  ``m · 2^k`` with ``m`` from Paley, e.g. 11008 = 344·32, 14336 = 28·512, 1536 = 12·128,
  18944 = 148·128, 8960 = 140·64, 576 = 36·16.

Paley's constructions need the quadratic character of the finite field ``GF(q)``; for
``q = p^k`` with ``k > 1`` the field is built as polynomials over ``GF(p)`` modulo an
irreducible polynomial found by search. Every matrix is verified (``H Hᵀ = n I``) before it is
cached. An order with no construction raises one :class:`~quantize.errors.UserError` naming it.

Applying ``x ↦ x H / sqrt(n)`` never forms the dense ``n x n`` matrix: :func:`factor_order`
splits ``n = left · right`` into two small Hadamard orders and :class:`OnlineHadamard` runs
``Reshape → MatMul(H_right) → MatMul(H_leftᵀ) → scale`` (also the form the ONNX export emits).
:func:`fwht` is the butterfly fast Walsh–Hadamard transform for power-of-two sizes. The
online transform does not use it: with the factors this module picks (at most a few hundred
wide) the two small BLAS MatMuls ran about 3x faster than butterflies on the power-of-two
factor (2-core CPU, fp32: 21 vs 60 ms for 4096 x 1536, 58 vs 86 ms for 512 x 11008), and the
MatMul form is the one ONNX Runtime and TensorRT run well.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from torch import nn

from .errors import UserError

#: Largest Paley order searched for when factoring a size (bounds the finite-field work).
MAX_PALEY_ORDER = 1024


# ---------------------------------------------------------------------------------------
# finite fields GF(p^k): elements are integers 0..q-1 holding base-p polynomial coefficients
# ---------------------------------------------------------------------------------------


def _prime_power(q: int) -> tuple[int, int] | None:
    """``(p, k)`` with ``q = p^k`` for a prime ``p``, or ``None``."""
    if q < 2:
        return None
    p = next(d for d in itertools.count(2) if q % d == 0)  # smallest divisor is prime
    k, rest = 0, q
    while rest % p == 0:
        rest //= p
        k += 1
    return (p, k) if rest == 1 else None


def _poly_mod(a: list[int], f: list[int], p: int) -> list[int]:
    """``a mod f`` over GF(p); polynomials are coefficient lists, lowest degree first; f monic."""
    a = list(a)
    while len(a) >= len(f):
        lead = a[-1] % p
        shift = len(a) - len(f)
        if lead:
            for i, c in enumerate(f):
                a[shift + i] = (a[shift + i] - lead * c) % p
        a.pop()
    return a


def _irreducible(p: int, k: int) -> list[int]:
    """A monic irreducible polynomial of degree ``k`` over GF(p) (coefficients, lowest first)."""
    def monic(d: int):
        for tail in itertools.product(range(p), repeat=d):
            yield list(tail) + [1]

    for f in monic(k):
        if f[0] == 0:
            continue  # divisible by x
        if all(any(_poly_mod(f, g, p)) for d in range(1, k // 2 + 1) for g in monic(d)):
            return f
    raise AssertionError(f"no irreducible polynomial of degree {k} over GF({p})")  # cannot happen


def _quadratic_character(q: int) -> np.ndarray:
    """``chi[a]`` for every element ``a`` of GF(q): 0 at 0, 1 on nonzero squares, -1 otherwise."""
    p, k = _prime_power(q)  # type: ignore[misc]
    digits = np.array([[(a // p**i) % p for i in range(k)] for a in range(q)], dtype=np.int64)
    if k == 1:
        squares = {(a * a) % p for a in range(1, p)}
    else:
        f = _irreducible(p, k)
        squares = set()
        for a in range(1, q):
            coeffs = digits[a].tolist()
            prod = [0] * (2 * k - 1)
            for i, ci in enumerate(coeffs):
                for j, cj in enumerate(coeffs):
                    prod[i + j] = (prod[i + j] + ci * cj) % p
            rem = _poly_mod(prod, f, p) + [0] * k
            squares.add(sum(c * p**i for i, c in enumerate(rem[:k])))
    chi = -np.ones(q, dtype=np.int64)
    chi[0] = 0
    chi[sorted(squares)] = 1
    return chi


def _jacobsthal(q: int) -> np.ndarray:
    """``Q[i, j] = chi(a_i - a_j)`` over GF(q) (subtraction digit-wise mod p), ``[q, q]`` int64."""
    p, k = _prime_power(q)  # type: ignore[misc]
    chi = _quadratic_character(q)
    digits = np.array([[(a // p**i) % p for i in range(k)] for a in range(q)], dtype=np.int64)
    diff = (digits[:, None, :] - digits[None, :, :]) % p
    index = (diff * (p ** np.arange(k))).sum(-1)
    return chi[index]


# ---------------------------------------------------------------------------------------
# constructions
# ---------------------------------------------------------------------------------------


def _verified(h: np.ndarray) -> np.ndarray:
    """``h`` after checking ``h hᵀ = n I`` (float64 BLAS: exact, the entries of the Gram are <= n)."""
    n = h.shape[0]
    hf = h.astype(np.float64)
    if not np.array_equal(hf @ hf.T, n * np.eye(n)):  # a construction bug must never ship
        raise AssertionError(f"constructed Hadamard matrix of order {n} is not orthogonal")
    return h


def _sylvester(n: int) -> np.ndarray:
    """Sylvester order ``n`` (a power of two), verified. Above 256 it is built as the product
    ``H_256 ⊗ H_{n/256}`` of verified factors, which *is* Sylvester's matrix (``H_2^{⊗k}``) and
    spares the ``n^3`` check."""
    if n > 256:
        return np.kron(_sylvester(256), _sylvester(n // 256))
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return _verified(h)


def _paley1(q: int) -> np.ndarray:
    """Order ``q + 1`` (q ≡ 3 mod 4): ``I + [[0, 1ᵀ], [-1, Q]]``."""
    Q = _jacobsthal(q)
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, Q
    return s + np.eye(q + 1, dtype=np.int64)


def _paley2(q: int) -> np.ndarray:
    """Order ``2 (q + 1)`` (q ≡ 1 mod 4): the conference matrix ``C`` doubled with ±1 2x2 blocks."""
    Q = _jacobsthal(q)
    c = np.zeros((q + 1, q + 1), dtype=np.int64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, Q
    plus = np.array([[1, 1], [1, -1]], dtype=np.int64)
    minus = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    return np.kron(c, plus) + np.kron(np.eye(q + 1, dtype=np.int64), minus)


def _paley_route(m: int) -> tuple[str, int] | None:
    """How to build order ``m`` by Paley: ``("I", q)`` / ``("II", q)``, or ``None``."""
    if m % 4 == 0 and _prime_power(m - 1) and (m - 1) % 4 == 3:
        return "I", m - 1
    if m % 4 == 0 and _prime_power(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return "II", m // 2 - 1
    return None


def _base_orders(n: int) -> list[tuple[int, int]]:
    """``(m, 2^k)`` with ``n = m · 2^k`` and ``m`` = 1 or a Paley order, smallest ``m`` first."""
    out = []
    two = 1
    while n % two == 0:
        m = n // two
        if m == 1 or (m <= MAX_PALEY_ORDER and _paley_route(m)):
            out.append((m, two))
        two *= 2
    return sorted(out)


def is_hadamard_order(n: int) -> bool:
    """Whether :func:`hadamard` can construct order ``n``."""
    return n >= 1 and bool(_base_orders(n))


@functools.lru_cache(maxsize=64)
def _hadamard_cached(n: int) -> np.ndarray:
    bases = _base_orders(n)
    if not bases:
        raise UserError(f"no Hadamard matrix construction for order {n}: supported orders are m·2^k with m = 1 or a "
                        f"Paley order (q+1, q ≡ 3 mod 4, or 2(q+1), q ≡ 1 mod 4, q a prime power; m ≤ {MAX_PALEY_ORDER})")
    m, two = bases[0]
    h = _sylvester(two)
    if m > 1:
        kind, q = _paley_route(m)  # type: ignore[misc]
        # Both factors are verified; (A ⊗ B)(A ⊗ B)ᵀ = AAᵀ ⊗ BBᵀ = m·2^k I, so the product is too.
        h = np.kron(_verified(_paley1(q) if kind == "I" else _paley2(q)), h)
    h = h.astype(np.int8)
    h.setflags(write=False)
    return h


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The Hadamard matrix of order ``n`` (entries ±1, ``H Hᵀ = n I``), ``[n, n]`` in ``dtype``."""
    return torch.from_numpy(_hadamard_cached(n).astype(np.float64)).to(dtype)


def random_signs(n: int, seed: int) -> torch.Tensor:
    """Seeded uniform ``±1`` vector ``[n]`` (float64): ``diag(s) H / sqrt(n)`` is QuaRot's
    randomized Hadamard rotation of the residual stream."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1


def factor_order(n: int) -> tuple[int, int]:
    """Split ``n = left · right`` into two Hadamard orders (``right`` a power of two) minimising
    ``left + right`` (the multiply-adds per element of the two-MatMul transform)."""
    bases = _base_orders(n)
    if not bases:
        hadamard(n)  # raises the one-line error
    best = None
    for m, two in bases:
        shift = 1
        while shift <= two:
            left, right = m * shift, two // shift
            if best is None or left + right < sum(best):
                best = (left, right)
            shift *= 2
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform over the last axis: ``x @ H_n`` (Sylvester order).

    ``n = x.shape[-1]`` must be a power of two; ``log2(n)`` butterfly passes of adds and
    subtractions, on any device and float dtype. Returns a new tensor of ``x``'s shape.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two size, got {n}")
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(x.shape)


class OnlineHadamard(nn.Module):
    """``x ↦ x T`` on the last axis at run time, ``T`` orthogonal and Kronecker-factored.

    * full (``size=None``): ``T = (H_left ⊗ H_right) / sqrt(n)`` over all ``n = features``
      (:func:`factor_order`), e.g. before ``down_proj``;
    * partial (``size=s``): ``T = (H_s ⊗ I_{n/s}) / sqrt(s)`` — a Hadamard across ``s`` chunks
      of ``n/s`` features, e.g. across attention heads before ``o_proj``.

    The Linear after it holds ``W T`` so the pair computes exactly ``x Wᵀ``. Forward is
    ``Reshape → MatMul(H_right) → MatMul(H_leftᵀ) → Mul(1/sqrt n) → Reshape``: two small
    MatMuls (what :mod:`torch.onnx` exports and TensorRT / ONNX Runtime run well), never the
    dense ``n x n`` product. The factors are non-persistent buffers (rebuilt from ``features``
    and ``size``), so they follow ``.to(dtype/device)`` but stay out of checkpoints.
    """

    def __init__(self, features: int, size: int | None = None) -> None:
        super().__init__()
        if size is None:
            left, right = factor_order(features)
        else:
            if features % size:
                raise UserError(f"cannot apply a Hadamard across {size} chunks of {features} features")
            left, right = size, 1
            hadamard(size)  # validates the order
        self.features, self.size = features, size
        self.left, self.right = left, right
        self.register_buffer("h_left_t", hadamard(left, torch.float32).t().contiguous(), persistent=False)
        self.register_buffer("h_right", hadamard(right, torch.float32) if right > 1 else None, persistent=False)
        self.scale = 1.0 / math.sqrt(left * right)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The dense ``[n, n]`` ``T`` (for folding into weights and for tests)."""
        left = hadamard(self.left) / math.sqrt(self.left)
        if self.size is None:
            right = hadamard(self.right) / math.sqrt(self.right)
            return torch.kron(left, right).to(dtype)
        return torch.kron(left, torch.eye(self.features // self.size, dtype=torch.float64)).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.size is None:
            y = x.reshape(*shape[:-1], self.left, self.right)
            if self.h_right is not None:
                y = y @ self.h_right.to(x.dtype)
        else:
            y = x.reshape(*shape[:-1], self.left, self.features // self.left)
        y = self.h_left_t.to(x.dtype) @ y
        return (y * self.scale).reshape(shape)

    def extra_repr(self) -> str:
        kind = f"{self.left}x{self.right}" if self.size is None else f"across {self.size} chunks"
        return f"features={self.features}, {kind}"

"""Rounding up (lipdsl.rigorous): products, square roots and printed bounds never below the exact value
(printed lower bounds never above it); large spectral norms certified by banded Cholesky factorizations."""

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from lipdsl.rigorous import format_down, format_up, mul_up, prod_up, spectral_norm_upper, sqrt_up

positive = st.floats(min_value=5e-324, max_value=1e300, allow_nan=False, allow_infinity=False)


@given(positive, positive)
def test_mul_up_is_an_upper_bound_and_never_zero(a, b):
    p = mul_up(a, b)
    if math.isinf(p):  # overflow: +inf is still an upper bound
        assert a * b == math.inf
        return
    assert Fraction(p) >= Fraction(a) * Fraction(b)
    assert p > 0
    assert p <= math.nextafter(math.nextafter(a * b, math.inf), math.inf)  # at most one ulp above


@given(positive)
def test_sqrt_up_is_an_upper_bound(x):
    r = sqrt_up(x)
    assert Fraction(r) ** 2 >= Fraction(x) and r > 0


def test_tiny_products_round_up_to_the_smallest_subnormal():
    assert prod_up([1e-200, 1e-200, 1e-100]) == 5e-324
    assert mul_up(0.5, 3.0) == 1.5  # exact products unchanged
    assert mul_up(0.0, 1e300) == 0.0


@settings(max_examples=300)
@given(st.floats(min_value=1e-320, max_value=1e300), st.integers(min_value=3, max_value=15))
def test_format_up_never_prints_below(x, digits):
    text = format_up(x, digits)
    assert Decimal(text) >= Decimal(x)
    assert Decimal(text) <= Decimal(x) * (1 + Decimal(10) ** (1 - digits)) + Decimal("1e-330")
    assert text != "0"


@settings(max_examples=300)
@given(st.floats(min_value=1e-320, max_value=1e300), st.integers(min_value=3, max_value=15))
def test_format_down_never_prints_above(x, digits):
    text = format_down(x, digits)
    assert Decimal(text) <= Decimal(x)
    assert Decimal(text) >= Decimal(x) * (1 - Decimal(10) ** (1 - digits)) - Decimal("1e-330")
    assert text != "0"


def test_bounds_next_to_a_round_number_print_on_their_safe_side():
    """An upper bound one ulp above 2 is not "2"; a lower bound just below 2 is not "2" either (``.10g``
    printed both as 2); exact values print as they are, in ``%g`` style."""
    assert format_up(2.0000000000000004) == "2.000000001"
    assert format_down(1.99999999999) == "1.999999999"
    assert format_down(1.99999999999, 6) == "1.99999"
    assert format_up(1.99999999999) == format_down(2.0000000000000004) == format(2.0, "g") == "2"
    assert format_down(109.12299234900972) == "109.1229923" and format_up(109.12299234900972) == "109.1229924"
    assert format_down(9.9999999999999e-7, 4) == "9.999e-07" and format_up(9.9999999999999e-7, 4) == "1e-06"
    assert format_down(0.0) == format_up(0.0) == "0"


@pytest.mark.parametrize("seed", range(12))
def test_spectral_norm_upper_is_above_and_close(seed):
    """Random sparse and banded (conv-like) matrices: exact <= bound <= exact (1 + 1e-8)."""
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(20, 400)), int(rng.integers(20, 400))
    if seed % 2:
        M = sp.random(m, n, density=float(rng.uniform(0.01, 0.2)), random_state=seed, format="csr")
    else:
        k = int(rng.integers(1, 6))
        M = sp.diags([rng.normal() for _ in range(k)], list(range(k)), shape=(m, n), format="csr")
    M = M * 10.0 ** rng.integers(-150, 150)
    exact = np.linalg.norm(M.toarray(), 2)
    bound = spectral_norm_upper(M)
    assert bound >= exact
    assert bound <= exact * (1 + 1e-8)


def test_spectral_norm_upper_of_zero_and_huge_band():
    assert spectral_norm_upper(sp.csr_matrix((5, 7))) == 0.0
    from lipdsl import rigorous

    dense = sp.csr_matrix(np.ones((300, 300)))
    old = rigorous.BANDED_LIMIT
    rigorous.BANDED_LIMIT = 1000
    try:
        with pytest.raises(rigorous.NormNotCertified):
            spectral_norm_upper(dense)
    finally:
        rigorous.BANDED_LIMIT = old


def _solve_text(tmp_path, text, *args):
    import subprocess
    import sys

    spec = tmp_path / "t.lip"
    spec.write_text(text)
    return subprocess.run([sys.executable, "-m", "lipdsl", "solve", str(spec), *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("text", [
    # a merged dense product 1e-400 (underflows in float64): not "all-zero weights"
    "input 4\ndense a: 4 -> 1, weight [[1e-200, 0, 0, 0]]\ndense b: 1 -> 1, weight [[1e-200]]\n",
    # the bound's factor 1e-400 (each layer scaled to unit norm, the factors multiplied)
    "input 1 x 8\nconv1d c: 1 -> 1, kernel 2, weight [[[1e-200, 1e-200]]]\nrelu\nflatten\n"
    "dense b: 7 -> 1, weight [[1e-200, 0, 0, 0, 0, 0, 0]]\n",
])
def test_nonzero_map_with_tiny_gain_never_prints_zero(tmp_path, text):
    r = _solve_text(tmp_path, text)
    assert r.returncode == 0, r.stderr
    head = r.stdout.splitlines()[0]
    value = float(head.split(": ")[1].split()[0])
    assert value > 0, head
    import json

    r = _solve_text(tmp_path, text, "--json")
    assert json.loads(r.stdout)["lipschitz"] > 0


@pytest.mark.parametrize("literal", ["1e-400", "10^-400", "2.5e-330 * 1e-10", "-7E-999"])
def test_literals_that_underflow_to_zero_are_refused(tmp_path, literal):
    r = _solve_text(tmp_path, f"input 2\ndense a: 2 -> 1, weight [[{literal}, 1]]\n")
    assert r.returncode == 1, r.stdout
    assert "underflows to 0 in float64" in r.stderr and "Traceback" not in r.stderr


def test_naive_on_large_unrolled_maps_is_a_guaranteed_bound():
    """Above DENSE_SVD_LIMIT the naive product is certified (no more "not a proof"): T_N is a submatrix of
    T_2N, so the bound at 2N is at least the dense SVD's at N; and at most the H-inf product."""
    from lipdsl.baselines.unrolled import DENSE_SVD_LIMIT, naive, naive_hinf
    from nets import Builder

    rng = np.random.default_rng(3)
    w = rng.normal(size=(1, 1, 4))
    small = Builder(1, 1000).conv(w, padding="causal").build()
    big = Builder(1, 2 * DENSE_SVD_LIMIT).conv(w, padding="causal").build()
    b_small, b_big = naive(small), naive(big)
    assert b_small <= b_big <= naive_hinf(big) * (1 + 1e-9)

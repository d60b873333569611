"""Round bounds up: floats and matrices -> guaranteed upper bounds (products, square roots, spectral norms).

A float operation rounds to nearest, so ``fl(a b)`` may lie below ``a b`` and a product of tiny gains can
underflow to 0. For ``x = fl(op)`` with the exact result ``r >= 0``, ``r`` lies closer to ``x`` than to any
other float, so ``r < nextafter(x, +inf)``: :func:`mul_up` and :func:`sqrt_up` return that float, which is
never 0 for a nonzero exact result (at least the smallest subnormal, 5e-324).

Printed bounds round the same way, in one pair of helpers: :func:`format_up` for every upper bound the
commands print, :func:`format_down` for every lower bound (an empirical ``lipschitz >=``); JSON keeps the
full floats.

:func:`spectral_norm_upper` turns an iterative estimate ``s ~ ||M||_2`` of a large sparse matrix into a
certificate: with ``G = M' M`` (computed in floats) and ``t = s^2 (1 + delta)``, a banded Cholesky
factorization ``R' R = t I - G + E`` that runs to completion proves ``lambda_max(fl(G)) <= t + ||E||_2``,
with ``|E| <= gamma_{b+1} |R'| |R|`` (Higham, *Accuracy and Stability of Numerical Algorithms*, Thm 10.3, the
dimension replaced by the bandwidth ``b`` plus one) and ``|fl(G) - G| <= gamma_m |M|' |M|`` (``m`` the
longest column); both are bounded by ``||A||_1 ||A||_inf`` norms computed from the data, so

    ||M||_2^2 <= t + gamma_{b+1} ||R||_1 ||R||_inf + gamma_m ||M||_1 ||M||_inf.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction

__all__ = ["mul_up", "sqrt_up", "format_up", "format_down", "prod_up", "fraction_up", "range_product",
           "spectral_norm_upper", "NormNotCertified"]

EPS = 2.0**-53  # unit roundoff u of float64
#: Largest banded factor (rows x (bandwidth + 1) entries) :func:`spectral_norm_upper` stores: 400 MB.
BANDED_LIMIT = 50_000_000


class NormNotCertified(ArithmeticError):
    """No guaranteed upper bound within the limits (bandwidth too large, or the factorization failed)."""


def mul_up(a: float, b: float) -> float:
    """An upper bound on the exact product ``a b`` of two non-negative floats (0 only if one of them is 0)."""
    if a == 0 or b == 0:
        return 0.0
    p = a * b
    if math.isfinite(p) and Fraction(p) == Fraction(a) * Fraction(b):
        return p  # exact: nothing to round (0.5 * 3 stays 1.5)
    return math.nextafter(p, math.inf)


def range_product(a, b):
    """``(a * b, bad)`` for arrays ``a``, ``b`` (broadcast): ``bad`` the first index (a tuple) where the
    product of two nonzero entries is not finite or below the smallest normal double (0 or a subnormal:
    a nonzero weight lost, or its relative precision), else None. For folds of scales into weights, where a
    lost weight would make a nonzero map look zero."""
    import numpy as np

    with np.errstate(all="ignore"):
        out = np.multiply(a, b)
    nonzero = (np.asarray(a) != 0) & (np.asarray(b) != 0)
    bad = ~np.isfinite(out) | (nonzero & (np.abs(out) < np.finfo(float).tiny))
    if not bad.any():
        return out, None
    return out, np.unravel_index(int(np.flatnonzero(bad)[0]), out.shape)


def fraction_up(d: Fraction) -> float:
    """The least double ``>= d`` (an exact rational, e.g. a bound proved in ``Fraction`` arithmetic)."""
    f = float(d)
    return f if Fraction(f) >= d else math.nextafter(f, math.inf)


def prod_up(values) -> float:
    """:func:`mul_up` over ``values`` (non-negative): an upper bound on their exact product."""
    out = 1.0
    for v in values:
        out = mul_up(out, float(v))
    return out


def sqrt_up(x: float) -> float:
    """An upper bound on ``sqrt(x)`` for ``x >= 0`` (0 only for 0)."""
    if x <= 0:
        return 0.0
    r = math.sqrt(x)
    if Fraction(r) ** 2 == Fraction(x):
        return r
    return math.nextafter(r, math.inf)


def format_up(x: float, digits: int = 10) -> str:
    """``x`` with ``digits`` significant digits, rounded up (``format(x, '.10g')`` rounds to nearest, which
    could print a number below a certified bound), in ``%g`` style; ``'0'`` only for 0. For every printed
    upper bound; :func:`format_down` is its twin for lower bounds."""
    return _format_directed(x, digits, ROUND_CEILING)


def format_down(x: float, digits: int = 10) -> str:
    """``x`` with ``digits`` significant digits, rounded down (never above ``x``), in ``%g`` style: for every
    printed lower bound (an empirical ``lipschitz >=``), which must not print above the value found."""
    return _format_directed(x, digits, ROUND_FLOOR)


def _format_directed(x: float, digits: int, rounding: str) -> str:
    """``x`` (exact, as a Decimal) quantized to ``digits`` significant digits towards ``rounding``."""
    if not math.isfinite(x) or x == 0:
        return format(x, "g")
    d = Decimal(x)  # exact
    exp = d.adjusted() - digits + 1
    q = d.quantize(Decimal(1).scaleb(exp), rounding=rounding)
    if q.adjusted() != d.adjusted():  # 9.99..9 rounded away from 0 to 10: one digit less
        q = d.quantize(Decimal(1).scaleb(exp + 1), rounding=rounding)
    text = format(q, "g")
    if "E" in text or "e" in text or abs(d.adjusted()) >= digits or d.adjusted() < -4:
        mant, _, e = format(q.normalize(), ".%dE" % (digits - 1)).partition("E")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(e):+03d}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _gamma(n: int) -> float:
    nu = n * EPS
    if nu >= 0.5:
        raise NormNotCertified("too many terms for a rounding bound")
    return nu / (1 - nu)


def _abs_norm_1_inf(M) -> tuple[float, float]:
    """``(||M||_1, ||M||_inf)`` rounded up: largest absolute column and row sums."""
    import numpy as np
    import scipy.sparse as sp

    A = abs(sp.csr_matrix(M)) if sp.issparse(M) else np.abs(np.asarray(M))
    cols = np.asarray(A.sum(axis=0)).ravel()
    rows = np.asarray(A.sum(axis=1)).ravel()
    # a sum of n non-negative terms is at most (1 + gamma_n) times its float value
    n = max(A.shape)
    up = 1 + 2 * _gamma(n)
    return float(cols.max(initial=0.0)) * up, float(rows.max(initial=0.0)) * up


def spectral_norm_upper(M, rtol: float = 1e-9) -> float:
    """A guaranteed upper bound on ``||M||_2`` of a sparse matrix, by banded Cholesky certificates.

    The Gram matrix is reordered by reverse Cuthill-McKee (a convolution's Toeplitz structure then has a small
    bandwidth). ``t`` is bisected between a power-iteration Rayleigh quotient (below ``lambda_max``) and
    ``||M||_1 ||M||_inf`` (above it): a factorization of ``t I - G`` that runs to completion certifies
    ``lambda_max <= t + errors`` (module docstring), one that fails moves the lower end up. The result is the
    smallest certified value, within about ``rtol`` of the norm.

    Raises
    ------
    NormNotCertified
        When the banded factor would exceed ``BANDED_LIMIT`` entries or no ``t`` factorizes.
    """
    import numpy as np
    import scipy.linalg
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    M = sp.csr_matrix(M, dtype=float)
    if M.shape[0] < M.shape[1]:
        M = M.T.tocsr()
    if M.nnz == 0 or not np.any(M.data):
        return 0.0
    # scale by a power of two (exact) so that G = M'M neither underflows nor overflows; undone at the end
    shift = math.frexp(float(np.max(np.abs(M.data))))[1]
    M = M * math.ldexp(1.0, -shift)
    n = M.shape[1]
    # the bandwidth of G = M'M from M's column structure, before forming G (it may be large)
    S = sp.csr_matrix((np.ones(M.nnz), M.indices, M.indptr), shape=M.shape)
    G = (M.T @ M).tocsr()
    perm = reverse_cuthill_mckee((S.T @ S).tocsr(), symmetric_mode=True)
    G = G[perm][:, perm].tocoo()
    band = int(np.max(np.abs(G.row - G.col))) if G.nnz else 0
    if n * (band + 1) > BANDED_LIMIT:
        raise NormNotCertified(f"the Gram matrix of {n} rows has bandwidth {band} after reordering "
                               f"({n * (band + 1):,} entries > {BANDED_LIMIT:,})")
    col_len = int(np.max(np.diff(M.tocsc().indptr)))
    m1, minf = _abs_norm_1_inf(M)
    err_gram = _gamma(max(col_len, 1)) * m1 * minf * (1 + 4 * EPS)
    mask = G.row >= G.col
    rows, cols, vals = G.row[mask], G.col[mask], G.data[mask]
    diag_max = float(np.max(np.abs(G.diagonal())))
    band_g = np.zeros((band + 1, n))
    band_g[rows - cols, cols] = vals  # lower form: ab[i - j, j] = A[i, j]

    def certified(t: float) -> float | None:
        ab = -band_g
        ab[0, :] += t
        try:
            R = scipy.linalg.cholesky_banded(ab, lower=True, check_finite=True)
        except (np.linalg.LinAlgError, ValueError):
            return None
        if not np.all(np.isfinite(R)):
            return None
        absR = np.abs(R)
        col1 = absR.sum(axis=0)  # column sums of the factor L (band storage: L[j + d, j] = R[d, j])
        rowinf = np.zeros(n)
        for d in range(band + 1):
            rowinf[d:] += absR[d, : n - d]
        up = 1 + 2 * _gamma(band + 2)
        err_chol = _gamma(band + 1) * float(col1.max()) * float(rowinf.max()) * up * up
        diag_err = EPS * (t + diag_max)  # rounding of t - g_ii
        return (t + err_chol + diag_err + err_gram) * (1 + 8 * EPS)

    # lower end: a Rayleigh quotient after a few power iterations (lambda_max >= any Rayleigh quotient)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n)
    Gc = G.tocsr()
    lo = 0.0
    for _ in range(30):
        y = Gc @ x
        nx = float(np.linalg.norm(x))
        if nx == 0:
            break
        lo = max(lo, float(x @ y) / nx**2 * (1 - 1e-12))
        ny = float(np.linalg.norm(y))
        if ny == 0:
            break
        x = y / ny
    hi = m1 * minf * (1 + 1e-6) + err_gram
    best = certified(hi)
    if best is None:
        hi = hi * 2 + 1e-300
        best = certified(hi)
        if best is None:
            raise NormNotCertified(f"no certificate for ||M||_2^2 <= {hi:.6g} (Cholesky failed)")
    lo = min(lo, hi)
    while hi > lo * (1 + rtol) and hi > 0:
        mid = math.sqrt(lo) * math.sqrt(hi) if lo > 0 else hi / 2
        if mid <= lo or mid >= hi:
            break
        got = certified(mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, min(best, got)
        if lo == 0 and hi < 1e-300:
            break
    root = sqrt_up(best)
    out = math.ldexp(root, shift)
    return out if out >= 2.2250738585072014e-308 else math.nextafter(out, math.inf)  # subnormal: rounded

"""Exact arithmetic for the checker: rational matrices -> proofs of positive semidefiniteness (exact LDL',
integer congruence), with python-flint or sympy."""

from __future__ import annotations

import decimal
import math
from fractions import Fraction

import numpy as np

from lipdsl.errors import CertificateError


class _Flint:
    """Exact matrices with python-flint's ``fmpq_mat``."""

    name = "python-flint"

    def __init__(self):
        import flint

        self.flint = flint

    def q(self, x) -> object:
        if isinstance(x, Fraction):
            return self.flint.fmpq(x.numerator, x.denominator)
        n, d = float(x).as_integer_ratio()
        return self.flint.fmpq(n, d)

    def mat(self, a: np.ndarray):
        a = np.asarray(a, dtype=object if getattr(getattr(a, "dtype", None), "kind", "") == "O" else float)
        m, n = a.shape
        if a.dtype.kind == "f" and a.size:
            # doubles: one common power of two makes every entry an integer (exactly, when it stays finite)
            nz = np.abs(a[a != 0])
            if nz.size == 0:
                return self.flint.fmpq_mat(m, n)
            k = 52 - int(np.frexp(nz.min())[1])
            if int(np.frexp(nz.max())[1]) + k < 1000:
                scaled = np.ldexp(a, k)
                if np.all(scaled == np.round(scaled)):
                    Z = self.flint.fmpz_mat(m, n, [int(v) for v in scaled.ravel()])
                    scale = self.flint.fmpq(1, 2**k) if k >= 0 else self.flint.fmpq(2 ** (-k))
                    return self.flint.fmpq_mat(Z) * scale
        return self.flint.fmpq_mat(m, n, [self.q(v) for v in a.ravel()])

    def zeros(self, m, n):
        return self.flint.fmpq_mat(m, n)

    def block(self, rows):
        m = sum(r[0].nrows() for r in rows)
        n = sum(b.ncols() for b in rows[0])
        entries = []
        for r in rows:
            lists = [b.tolist() for b in r]
            for i in range(r[0].nrows()):
                for L in lists:
                    entries.extend(L[i])
        return self.flint.fmpq_mat(m, n, entries)

    def sub(self, M, r0, r1, c0, c1):
        rows = M.tolist()
        return self.flint.fmpq_mat(r1 - r0, c1 - c0, [v for row in rows[r0:r1] for v in row[c0:c1]])

    def entry(self, M, i, j):
        return M[i, j]

    def size(self, M):
        return M.nrows()

    def rows(self, M):
        return M.tolist()

    def fractions(self, M) -> np.ndarray:
        """``M`` as an object array of ``Fraction``s."""
        return np.array([[Fraction(int(v.p), int(v.q)) for v in row] for row in M.tolist()], dtype=object)

    def integer_matrix(self, rows):
        """``(Z, q)``: the integer matrix ``q M`` (fmpz_mat) and the common denominator ``q > 0``."""
        n = len(rows)
        Z, q = self.flint.fmpq_mat(n, n, [v for row in rows for v in row]).numer_denom()
        return Z, q

    def integer_congruence(self, Q, Z):
        """``Q Z Q'`` exactly (fmpz_mat products in C), as rows of integers."""
        n = len(Q)
        Qm = self.flint.fmpz_mat(n, n, [v for row in Q for v in row])
        return (Qm * Z * Qm.transpose()).tolist()

    def T(self, M):
        return M.transpose()


class _Sympy:
    """Exact matrices with sympy's ``DomainMatrix`` over QQ (for comparison: ``backend="sympy"``)."""

    name = "sympy"

    def __init__(self):
        from sympy import QQ, ZZ
        from sympy.polys.matrices import DomainMatrix

        self.QQ, self.ZZ, self.DM = QQ, ZZ, DomainMatrix

    def q(self, x):
        if isinstance(x, Fraction):
            return self.QQ(x.numerator, x.denominator)
        n, d = float(x).as_integer_ratio()
        return self.QQ(n, d)

    def mat(self, a):
        a = np.asarray(a, dtype=object if getattr(getattr(a, "dtype", None), "kind", "") == "O" else float)
        return self.DM([[self.q(v) for v in row] for row in a], a.shape, self.QQ)

    def zeros(self, m, n):
        return self.DM.zeros((m, n), self.QQ)

    def block(self, rows):
        return _sympy_block(rows)

    def sub(self, M, r0, r1, c0, c1):
        return M[r0:r1, c0:c1]

    def entry(self, M, i, j):
        return M[i, j].element

    def size(self, M):
        return M.shape[0]

    def rows(self, M):
        return M.to_list()

    def fractions(self, M) -> np.ndarray:
        """``M`` as an object array of ``Fraction``s."""
        return np.array([[Fraction(int(self.QQ.numer(v)), int(self.QQ.denom(v))) for v in row]
                         for row in M.to_list()], dtype=object)

    def integer_matrix(self, rows):
        """``(Z, q)``: ``q M`` as rows of Python ints and the common denominator ``q > 0``."""
        q = 1
        for row in rows:
            for v in row:
                q = math.lcm(q, int(self.QQ.denom(v)))
        return [[int(self.QQ.numer(v)) * (q // int(self.QQ.denom(v))) for v in row] for row in rows], q

    def integer_congruence(self, Q, Z):
        """``Q Z Q'`` exactly with Python ints (sympy's pure-Python path)."""
        n = len(Q)
        QZ = [[sum(Q[i][m] * Z[m][j] for m in range(i + 1) if Q[i][m]) for j in range(n)] for i in range(n)]
        return [[sum(QZ[i][m] * Q[j][m] for m in range(j + 1) if Q[j][m]) for j in range(n)]
                for i in range(n)]

    def T(self, M):
        return M.transpose()


def _sympy_block(rows):
    out = None
    for r in rows:
        row = r[0]
        for b in r[1:]:
            row = row.hstack(b)
        out = row if out is None else out.vstack(row)
    return out


def backend(name: str = "auto"):
    """The exact-arithmetic backend: ``flint`` (python-flint), ``sympy``, or ``auto`` (flint if installed)."""
    if name in ("auto", "flint"):
        try:
            return _Flint()
        except ImportError:
            if name == "flint":
                raise CertificateError("--exact with python-flint: python-flint is not installed",
                                       hint="pip install 'lipdsl[exact]', or use the sympy backend") from None
    return _Sympy()


def ldl_pivots(rows: list[list]) -> tuple[bool, int, object]:
    """Exact LDL' of a symmetric rational matrix (rows of exact numbers: fmpq, QQ or Fraction), in the
    natural order, without pivoting: (ok, index of the first pivot <= 0, that pivot).

    ``M = L D L'``, ``L`` unit lower triangular, is a congruence, so ``M > 0`` iff every pivot ``d_k > 0``.
    Step k: ``d_k = m_kk``, then ``m_ij -= (m_ik / d_k) m_kj`` for ``i, j > k`` with ``m_ik, m_kj != 0``.
    Only the upper triangle is kept, row by row as {column: value} dicts, so structural zeros (``X (x) I_N``
    after a flatten, the zeros of ``A`` and ``B``) are never touched and fill-in is only where it occurs.
    """
    n = len(rows)
    upper = [{j: v for j, v in enumerate(row[i:], start=i) if v != 0} for i, row in enumerate(rows)]
    for k in range(n):
        r = upper[k]
        d = r.get(k, 0)
        if not d > 0:
            return False, k, d
        items = sorted((j, v) for j, v in r.items() if j > k)
        for a_, (i, vi) in enumerate(items):
            f = vi / d
            ri = upper[i]
            for j, vj in items[a_:]:
                ri[j] = ri.get(j, 0) - f * vj
        upper[k] = {}  # row k of L and d_k are not needed later
    return True, -1, None


#: Up to this order an LMI is proved by the exact LDL' itself; above it by the rounded-LDL' congruence.
EXACT_LDL_MAX = 24


def to_double(v) -> float:
    """An exact number as a double, ``+-inf`` beyond the range of doubles (``float`` raises there)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def exact_text(v, digits: int = 6) -> str:
    """An exact rational (fmpq, QQ, Fraction) as ``format(v, '.6g')`` would print its exact value, at any
    magnitude (a double overflows beyond 1.8e308 and shows 0 below 4.9e-324)."""
    context = decimal.Context(prec=digits)
    q = context.divide(decimal.Decimal(int(v.numerator)), decimal.Decimal(int(v.denominator)))
    return format(q, f".{digits}g")


def congruence_check(be, rows: list[list]) -> tuple[bool, str]:
    """Prove ``M > 0`` (exact rationals) by an LDL' rounded to integers: True only if proved.

    ``M`` is scaled to the integer matrix ``Z = q M`` (``q > 0`` its common denominator). In floating point,
    ``Z ~ S L L' S`` (``S = diag(Z)^(1/2)``, Cholesky of the unit-diagonal matrix), and ``F = L^-1 S^-1``
    rounded to integers times ``2^k`` gives ``Q`` (lower triangular, nonzero diagonal: nonsingular). Then
    ``R = Q Z Q'`` is computed exactly; ``R`` strictly diagonally dominant with a positive diagonal implies
    ``R > 0`` (Gershgorin), hence ``M = q^-1 Q^-1 R Q^-T > 0`` (Sylvester's law of inertia). This is the exact
    congruence ``M = L~ D~ L~'`` with ``L~ = Q^-1`` and the remainder ``D~ = R / q`` checked instead of
    assumed diagonal.
    """
    n = len(rows)
    Z, _ = be.integer_matrix(rows)
    Zf = np.array([[to_double(v) for v in row] for row in rows])
    d = np.diag(Zf)
    if np.any(~(d > 0)) or not np.all(np.isfinite(Zf)):
        return False, "nonpositive diagonal"
    s = 1 / np.sqrt(d)
    try:
        L = np.linalg.cholesky(Zf * s[:, None] * s[None, :])
    except np.linalg.LinAlgError:
        return False, "floating-point Cholesky failed"
    F = np.linalg.inv(L) * s[None, :]
    F = np.tril(F)
    big = float(np.max(np.abs(F)))
    k = 60 - math.frexp(big)[1]
    Qf = np.round(np.ldexp(F, k))
    if np.any(np.diag(Qf) == 0):
        return False, "rounded factor singular"
    Q = [[int(v) for v in row] for row in Qf]
    R = be.integer_congruence(Q, Z)
    for i in range(n):
        off = sum(abs(R[i][j]) for j in range(n) if j != i)
        if not R[i][i] > off:
            return False, f"remainder not diagonally dominant at row {i}"
    return True, "exact congruence to a diagonally dominant matrix (rounded LDL')"

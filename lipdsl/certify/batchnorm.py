"""The checker's batch-norm scales: a typed.BatchNorm -> a rational ``delta`` with ``|s*_i / s_i - 1| <=
delta`` per channel (exact rational comparisons); an LMI's moving terms -> a bound ``tau`` on the change of
its matrix when every scale moves within that relative ``delta``.

The spec's scale ``s* = w / sqrt(v + eps)`` (``w`` the weight, ``v`` the running variance, ``eps`` as the
doubles the spec holds, i.e. exact rationals) is irrational in general; the layer holds its rounded double
``s`` (``typed.batchnorm_scale``), and the checker's exact realization is built from ``s``. With
``r = s* / s``, the true folded weights are ``diag(r) W`` (batch norm after a conv or dense layer),
``W diag(r)`` (before one) or ``diag(r s)`` (alone), so every tap of a map with at most ``k`` batch norms
on a path moves by at most ``eps_rel = (1 + delta)^k - 1`` times the same tap computed with absolute values
(``|E* - E| <= eps_rel |E|abs`` entrywise, ``|E| <= |E|abs``).

An LMI matrix is ``M = M_0 + sum_j [E_j; S_j]' Q_j [E_j; S_j] - E_y' X_out E_y`` (``verify_block``; a plain
system is the case of one activation, or of none), where only the rows ``E`` of ``[C D]`` move. With
``Q_j = [[2ab L, -(a+b) L], [-(a+b) L, 2L]]`` and ``dE = E* - E``,

    |M(E*) - M(E)| <= B = sum_j (2 eps_rel + eps_rel^2) |2 a_j b_j| |E_j|abs' L_j |E_j|abs
                          + eps_rel |a_j + b_j| (|E_j|abs' L_j S_j + S_j' L_j |E_j|abs)
                        + (2 eps_rel + eps_rel^2) |E_y|abs' |X_out| |E_y|abs              (entrywise),

so ``||M(E*) - M(E)||_2 <= rho(B) <= max_i (B 1)_i =: tau`` (Perron-Frobenius: ``rho(|H|) <= rho(B)`` for
``|H| <= B``; the spectral radius is at most the largest row sum), and ``M(E) - tau I > 0`` proves
``M(E*) > 0``. ``B 1`` needs only products of matrices with vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lipdsl.lang import typed
from lipdsl.rigorous import fraction_up

#: The relative bounds tried for a batch norm's scales, tightest first (a double quotient is within about
#: ``2.5 * 2^-53`` of the exact one: three roundings, the first halved by the square root; ``2^-50`` holds
#: with room to spare).
DELTAS = tuple(Fraction(1, 1 << k) for k in (50, 45, 40, 35, 30, 25, 20))


def scale_fails(layer: typed.BatchNorm, delta: Fraction) -> int:
    """The first channel ``i`` for which ``|s*_i / s_i - 1| <= delta`` does not hold, or -1 (all hold).

    With ``d = v + eps > 0`` and ``s``, ``w`` of one sign (``s* / s > 0``), for ``0 <= delta < 1``:
    ``s* / s <= 1 + delta`` iff ``w^2 <= (1 + delta)^2 s^2 d`` and ``s* / s >= 1 - delta`` iff
    ``w^2 >= (1 - delta)^2 s^2 d``; ``w = 0`` needs ``s = 0`` (then ``s* = s``). Exact rationals only.
    """
    if layer.weight is None or layer.running_var is None:
        return -1  # the scale is the layer's definition
    eps = Fraction(float(layer.eps))
    hi, lo = (1 + delta) ** 2, (1 - delta) ** 2
    rows = zip(*(np.asarray(x, dtype=float) for x in (layer.scale, layer.weight, layer.running_var)))
    for i, (s, w, v) in enumerate(rows):
        s, w, d = Fraction(float(s)), Fraction(float(w)), Fraction(float(v)) + eps
        if not d > 0:
            return i
        if w == 0:
            if s != 0:
                return i
            continue
        if s == 0 or (s > 0) != (w > 0):
            return i
        s2d, w2 = s * s * d, w * w
        if not (lo * s2d <= w2 <= hi * s2d):
            return i
    return -1


def scale_delta(layer: typed.BatchNorm) -> Fraction | None:
    """The least ``delta`` of ``DELTAS`` proved for every channel of ``layer`` (``scale_fails``); 0 when the
    layer has no raw parameters (its scale defines it); None when none is proved."""
    if layer.weight is None or layer.running_var is None:
        return Fraction(0)
    return next((d for d in DELTAS if scale_fails(layer, d) < 0), None)


@dataclass(frozen=True)
class ScaleCover:
    """How a realization's ``C``, ``D`` may move with the true batch-norm scales: ``|dC| <= relative C_abs``
    and ``|dD| <= relative D_abs`` entrywise (module docstring), ``relative = (1 + delta)^count - 1``."""

    layers: tuple[str, ...]  # the batch norms folded in
    delta: Fraction  # per scale, proved (``scale_delta``)
    count: int  # at least the most batch norms on one path through the map (the checker: all of them)
    C_abs: np.ndarray  # object arrays of nonnegative Fractions
    D_abs: np.ndarray

    @property
    def relative(self) -> Fraction:
        return (1 + self.delta) ** self.count - 1

    def note(self, tau: float) -> str:
        """The report's words for it."""
        k = -math.log2(self.delta) if self.delta > 0 else math.inf
        exp = f"2^-{k:g}" if float(k).is_integer() else f"{float(self.delta):.3g}"
        return (f"batch norm scale w/sqrt(v+eps) of {', '.join(self.layers)} covered to relative {exp} "
                f"(tau = {tau:.3g} added to the LMI margin)")


def covers(layers) -> tuple[tuple[str, ...], Fraction] | None:
    """``(names, delta)`` of the batch norms among ``layers`` that have raw parameters (``delta`` the
    largest proved), or None when one of them has no proved ``delta``."""
    names, delta = [], Fraction(0)
    for layer in layers:
        if not isinstance(layer, typed.BatchNorm):
            continue
        d = scale_delta(layer)
        if d is None:
            return None
        if d > 0:
            names.append(layer.name)
            delta = max(delta, d)
    return tuple(names), delta


# -- tau -----------------------------------------------------------------------------------------------


def tau_bound(cover: ScaleCover, E_abs: np.ndarray, acts: list, X_out_abs: np.ndarray | None,
              exact: bool, be=None) -> float:
    """``tau >= max_i (B 1)_i`` (module docstring) as a double rounded up.

    ``E_abs``: ``|[C D]|abs`` padded to the LMI's columns (``n``); ``acts``: per activation term
    ``(rows, (c0, c1), lam, (a, b))`` with ``rows`` a slice of ``E_abs``'s rows and ``(c0, c1)`` the columns
    of its output ``w_j``; ``X_out_abs``: ``|X_out|`` for a linear output term on the last rows ``E_y``
    (None: none). ``exact``: in rationals (the matrix-vector products with the exact backend ``be`` if
    given, else with Fractions); else in doubles, every value nonnegative, so the exact sum is at most the
    computed one times ``1 + 2^-20`` (the factor applied).
    """
    eps = cover.relative
    if eps == 0:
        return 0.0
    n = E_abs.shape[1]
    two = 2 * eps + eps * eps
    if exact:
        E = E_abs
        total = np.empty(n, dtype=object)
        total.fill(Fraction(0))
        conv = Fraction  # (exact for doubles and Fractions)
    else:
        E = np.array(E_abs, dtype=float)
        total = np.zeros(n)
        conv = float
        eps, two = fraction_up(eps), fraction_up(two)
    dot, tdot = _products(E, exact, be)
    ones = np.ones(n, dtype=object if exact else float)
    if exact:
        ones.fill(Fraction(1))
    for rows, (c0, c1), lam, (a, b) in acts:
        lam_q = np.array([conv(v) for v in lam], dtype=object if exact else float)
        u = lam_q * dot(rows, ones)  # L |E_j| 1
        ab, apb = abs(Fraction(a) * Fraction(b) * 2), abs(Fraction(a) + Fraction(b))
        if not exact:
            ab, apb = fraction_up(ab), fraction_up(apb)
        total = total + tdot(rows, u) * (two * ab) + tdot(rows, lam_q) * (eps * apb)
        total[c0:c1] = total[c0:c1] + u * (eps * apb)
    if X_out_abs is not None and X_out_abs.size:
        k = X_out_abs.shape[0]
        y = slice(E.shape[0] - k, E.shape[0])
        Xa = np.array([[conv(v) for v in row] for row in X_out_abs], dtype=object if exact else float)
        total = total + tdot(y, Xa.dot(dot(y, ones))) * two
    top = max(total) if len(total) else 0
    if exact:
        return fraction_up(Fraction(top))
    # every rounding (of |E| to doubles, of each product and sum, of |X_out|) is relative u = 2^-53 on a
    # nonnegative value; fewer than 2^31 of them in a chain stay below 2^-21 in all
    return math.nextafter(float(top) * (1 + 2.0**-20), math.inf)


def _products(E: np.ndarray, exact: bool, be):
    """``(dot, tdot)``: ``E[rows] v`` and ``E[rows]' v`` (numpy, or ``be``'s exact matrices: one conversion
    of ``E``, products in C)."""
    if not (exact and be is not None):
        return (lambda rows, v: E[rows].dot(v)), (lambda rows, v: E[rows].T.dot(v))
    Eq = be.mat(E)
    n = E.shape[1]

    def column(v) -> object:
        return be.mat(np.asarray(v, dtype=object).reshape(-1, 1))

    def part(rows: slice):
        r0, r1, _ = rows.indices(E.shape[0])
        return be.sub(Eq, r0, r1, 0, n)

    def dot(rows, v):
        return be.fractions(part(rows) * column(v)).ravel()

    def tdot(rows, v):
        return be.fractions(be.T(part(rows)) * column(v)).ravel()

    return dot, tdot

"""The checker's residual-block LMI: one block (``Link`` with its internal multipliers, weights) -> the matrix
``M`` in doubles with ``|M|`` (for Rump's test), or in exact rationals.

A block (``model.residual.residual_system``, docs/method.md) is one system ``x+ = A x + B (u, w)``,
``(v_1, ..., v_q, y) = C x + D (u, w)`` whose inputs ``w_j = phi_j(v_j)`` are its internal activations
(feedforward: ``v_j`` reads ``w_i`` for ``i < j`` only). Over ``xi = (x, u, w_1 .. w_q[, w_out])``, with
``E_j`` the rows of ``[C D]`` giving ``v_j`` (zero on ``w_out``), ``S_j`` the coordinates of ``w_j`` and
``Q(L; a, b) = [[2ab L, -(a+b) L], [-(a+b) L, 2L]]`` the slope ``[a, b]`` multiplier of ``L = diag(lambda)``:

    M = diag(P, X_in, 0, [-X_out]) - [A B 0]' P [A B 0]
        + sum_j [E_j; S_j]' Q(L_j; a_j, b_j) [E_j; S_j]            (j over the internal activations)
        + [E_y; S_out]' Q(L; a, b) [E_y; S_out]                     (an activation after the block)
        - E_y' X_out E_y                                            (a linear block, instead)

``M >= 0`` summed along two trajectories from rest gives ``sum |dw_out|^2_{X_out} <= sum |du|^2_{X_in}``
(each activation term is >= 0 by its slope bounds). Imports no solver code.
"""

from __future__ import annotations

import numpy as np

from lipdsl.certify.batchnorm import tau_bound
from lipdsl.certify.realization import _q_zeros


def _pieces(link, with_out: bool, exact: bool):
    """``(n, AB, terms, y_rows)``: the order of ``M``, ``[A B 0]`` padded to ``xi``, and per activation
    ``(E, w_cols, lam, (a, b) exact, (a, b) float)`` (internal ones, then the output's if ``with_out``);
    ``y_rows``: the rows of ``[C D]`` giving ``y``, padded. With ``link.mats`` (the realization recomputed
    exactly, ``realization_block``) ``C`` and ``D`` are its Fractions (``exact``) or their doubles rounded
    to nearest (else), otherwise lower's doubles."""
    sys = link.sys
    ss = sys.ss
    nx, nu = ss.nx, ss.nu
    n = nx + nu + (sys.n_out if with_out else 0)
    C, D = (ss.C, ss.D) if link.mats is None else link.mats[2:]
    E = np.zeros((ss.ny, n), dtype=object if exact and link.mats is not None else float)
    if E.dtype == object:
        E.fill(0)
    E[:, :nx] = C
    E[:, nx : nx + nu] = D
    AB = np.zeros((nx, n))
    AB[:, :nx] = ss.A
    AB[:, nx : nx + nu] = ss.B
    terms = []
    r, col = 0, nx + sys.n_in
    for act, lam, qs, fs in zip(sys.internal, link.inner, link.inner_slopes, link.inner_slopes_float):
        terms.append((E[r : r + act.n], (col, col + act.n), lam, qs, fs))
        r += act.n
        col += act.n
    if with_out:
        terms.append((E[r:], (nx + nu, n), link.lam, link.slope, link.slope_float))
    return n, AB, terms, E[r:]


def float_block_lmi(link, X_in: np.ndarray, X_out: np.ndarray, X_out_abs: np.ndarray):
    """``(fl(M), |M|)`` of a residual block's LMI (module docstring), ``|M|`` the sum of its terms' absolute
    products (Rump's test in ``verify_float.psd_float``)."""
    sys = link.sys
    nx, n_in = sys.ss.nx, sys.n_in
    with_out = sys.slope is not None
    n, AB, terms, Ey = _pieces(link, with_out, exact=False)
    M = np.zeros((n, n))
    Mabs = np.zeros((n, n))
    if nx:
        M[:nx, :nx] += link.P
        Mabs[:nx, :nx] += np.abs(link.P)
        M -= AB.T @ link.P @ AB
        Mabs += np.abs(AB).T @ np.abs(link.P) @ np.abs(AB)
    M[nx : nx + n_in, nx : nx + n_in] += X_in
    Mabs[nx : nx + n_in, nx : nx + n_in] += np.abs(X_in)
    for Ej, (c0, c1), lam, _, (a, b) in terms:
        aE = np.abs(Ej)
        M += 2 * a * b * ((Ej.T * lam) @ Ej)
        Mabs += abs(2 * a * b) * ((aE.T * lam) @ aE)
        cross = -(a + b) * (Ej.T * lam)
        M[:, c0:c1] += cross
        M[c0:c1, :] += cross.T
        Mabs[:, c0:c1] += np.abs(cross)
        Mabs[c0:c1, :] += np.abs(cross).T
        M[c0:c1, c0:c1] += 2 * np.diag(lam)
        Mabs[c0:c1, c0:c1] += 2 * np.diag(lam)
    if with_out:
        M[nx + sys.ss.nu :, nx + sys.ss.nu :] -= X_out
        Mabs[nx + sys.ss.nu :, nx + sys.ss.nu :] += X_out_abs
    else:
        M -= Ey.T @ X_out @ Ey
        Mabs += np.abs(Ey).T @ X_out_abs @ np.abs(Ey)
    return (M + M.T) / 2, Mabs


def rounding_terms(link) -> int:
    """``K`` of ``gamma_K`` for ``float_block_lmi``: the longest chain of products and sums in an entry,
    plus 4 for a recomputed realization rounded to nearest (each product has at most two of its entries,
    each within ``u`` relative of the exact one: two more factors ``(1 + delta)`` in its chain)."""
    sys = link.sys
    return (2 * (sys.ss.nx + sys.ss.nu + sys.ss.ny) + 16 + 6 * (len(sys.internal) + 1)
            + (4 if link.mats is not None else 0))


def exact_block_lmi(be, link, X_in, X_out):
    """A residual block's LMI ``M`` in exact rationals (module docstring; ``X_in``, ``X_out`` are ``be``
    matrices), from the doubles of its realization and the certificate's values taken as exact."""
    sys = link.sys
    nx, n_in, nu = sys.ss.nx, sys.n_in, sys.ss.nu
    with_out = sys.slope is not None
    n, AB, terms, Ey = _pieces(link, with_out, exact=True)

    def select(c0: int, c1: int):
        S = np.zeros((c1 - c0, n))
        S[:, c0:c1] = np.eye(c1 - c0)
        return be.mat(S)

    M = be.zeros(n, n)
    if nx:
        P = be.mat(link.P)
        Sx = select(0, nx)
        ABq = be.mat(AB)
        M = M + be.T(Sx) * P * Sx - be.T(ABq) * P * ABq
    Su = select(nx, nx + n_in)
    M = M + be.T(Su) * X_in * Su
    for Ej, (c0, c1), lam, (a, b), _ in terms:
        L = be.mat(np.diag(lam))
        Eq, Sj = be.mat(Ej), select(c0, c1)
        qa, qb = be.q(a), be.q(b)
        LE = L * Eq
        cross = be.T(Eq) * L * Sj * (-(qa + qb))
        M = M + be.T(Eq) * LE * (2 * qa * qb) + cross + be.T(cross) + be.T(Sj) * L * Sj * 2
    if with_out:
        So = select(nx + nu, n)
        M = M - be.T(So) * X_out * So
    else:
        Eyq = be.mat(Ey)
        M = M - be.T(Eyq) * X_out * Eyq
    return M


def scale_tau(link, X_out_abs, exact: bool, be=None) -> float:
    """``tau`` (``batchnorm.tau_bound``) for the LMI of ``link`` (a block, or a plain system: no internal
    activations) whose ``C``, ``D`` move with batch-norm scales (``link.cover``); 0.0 without. Its terms are
    the module docstring's: ``E_j`` the rows of ``|[C D]|abs`` per activation (slopes exact or, ``exact``
    False, the doubles the floating-point LMI uses), ``E_y`` with ``|X_out|`` for a linear output; ``be``: the
    exact backend for its products (``exact``)."""
    cover = link.cover
    if cover is None:
        return 0.0
    sys = link.sys
    ss = sys.ss
    nx, nu = ss.nx, ss.nu
    with_out = sys.slope is not None
    n = nx + nu + (sys.n_out if with_out else 0)
    E = _q_zeros((ss.ny, n))
    E[:, :nx] = cover.C_abs
    E[:, nx : nx + nu] = cover.D_abs
    acts = []
    r, col = 0, nx + sys.n_in
    for act, lam, qs, fs in zip(sys.internal, link.inner, link.inner_slopes, link.inner_slopes_float):
        acts.append((slice(r, r + act.n), (col, col + act.n), lam, qs if exact else fs))
        r += act.n
        col += act.n
    if with_out:
        acts.append((slice(r, ss.ny), (nx + nu, n), link.lam, link.slope if exact else link.slope_float))
    return tau_bound(cover, E, acts, None if with_out else X_out_abs, exact, be)

"""The checker's floating-point test: one LMI (``Link``, weights) -> (fl(M), |M|) and a rigorous verdict
that ``M >= 0`` (Rump's ``isspd``: Cholesky of ``fl(M) - cI``, ``c`` as in ``verify``'s docstring)."""

from __future__ import annotations

import numpy as np

from lipdsl.certify.verify_links import Link

U = np.finfo(float).eps / 2  # unit roundoff
ETA = 2.0**-1074  # smallest subnormal


# -- floating-point check (Rump's isspd) -----------------------------------------------------------------


def _gamma(k: int) -> float:
    return k * U / (1 - k * U)


def float_lmi(link: Link, X_in: np.ndarray, X_out: np.ndarray, X_out_abs: np.ndarray):
    """``(fl(M), |M|)``: the LMI in doubles and the sum of its terms' absolute products (module doc)."""
    ss = link.sys.ss
    A, B, C, D = ss.A, ss.B, ss.C, ss.D
    nx, nu = ss.nx, ss.nu
    AB, E = np.hstack([A, B]), np.hstack([C, D])
    aAB, aE = np.abs(AB), np.abs(E)
    top = np.zeros((nx + nu, nx + nu))
    top_abs = np.zeros_like(top)
    if nx:
        P = link.P
        top[:nx, :nx] += P
        top -= AB.T @ P @ AB
        top_abs[:nx, :nx] += np.abs(P)
        top_abs += aAB.T @ np.abs(P) @ aAB
    top[nx:, nx:] += X_in
    top_abs[nx:, nx:] += np.abs(X_in)
    if link.sys.slope is None:
        top -= E.T @ X_out @ E
        top_abs += aE.T @ X_out_abs @ aE
        return (top + top.T) / 2, top_abs
    a, b = link.slope_float
    lam = link.lam
    top += 2 * a * b * ((E.T * lam) @ E)
    top_abs += abs(2 * a * b) * ((aE.T * lam) @ aE)
    cross = -(a + b) * (E.T * lam)
    M = np.block([[top, cross], [cross.T, 2 * np.diag(lam) - X_out]])
    Mabs = np.block([[top_abs, np.abs(cross)], [np.abs(cross).T, 2 * np.diag(lam) + np.abs(X_out)]])
    return (M + M.T) / 2, Mabs


def float_schur(link: Link, rho: float, X_out: np.ndarray, X_out_abs: np.ndarray):
    """``(fl(S), |S|)`` of ``S = 2L - X_out - ((a+b)^2 / rho) L W W' L`` (``compressed_weight``)."""
    W = link.full_weight
    a, b = link.slope_float
    c2 = (a + b) ** 2 / rho
    lam = link.lam
    LW = W * lam[:, None]
    S = 2 * np.diag(lam) - X_out - c2 * (LW @ LW.T)
    aLW = np.abs(W) * lam[:, None]
    Sabs = 2 * np.diag(lam) + X_out_abs + c2 * (aLW @ aLW.T)
    return (S + S.T) / 2, Sabs


def psd_float(M: np.ndarray, Mabs: np.ndarray, K: int, shift: float = 0.0) -> tuple[bool, str, bool]:
    """Rump's criterion (module docstring): True if the exact ``M`` (within ``gamma_K |M|`` of ``fl(M)``)
    minus ``shift I`` is positive semidefinite (``shift``: a ``tau`` of ``batchnorm``, added to ``c``); the
    detail names the smallest eigenvalue when not. The third value: the test was inconclusive (the
    smallest eigenvalue is within 4 rounding bounds of ``shift``, so exact arithmetic may still prove it)."""
    n = M.shape[0]
    if n == 0:
        return True, "empty", False
    g = _gamma(2 * (n + 1))
    tr = float(np.sum(np.maximum(np.diag(M), 0.0)))
    d_form = 1.01 * _gamma(K) * float(np.linalg.norm(Mabs, "fro")) * (1 + n * n * U)
    c = (d_form + 1.01 * g / (1 - g) * tr + 3 * n * (2 * n + tr) * ETA
         + 2 * U * float(np.max(np.abs(np.diag(M)))))
    if shift:
        c_round = c
        c = c + shift
        c = c + 2 * U * c  # (the sum rounded up)
    try:
        np.linalg.cholesky(M - c * np.eye(n))
        what = "rounding bound" if not shift else f"rounding bound {c_round:.3g} + tau {shift:.3g}"
        return True, f"Cholesky of M - c I with c = {c:.3g} ({what})", False
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(M)
        k = int(np.argmax(np.abs(V[:, 0])))
        what = "rounding bound" if not shift else "rounding bound plus tau"
        return False, (f"smallest eigenvalue {w[0]:.6g} (largest component at row {k}) is below the "
                       f"{what} {c:.3g}"), bool(w[0] >= shift - 4 * (c - shift))

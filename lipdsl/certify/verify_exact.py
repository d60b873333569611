"""The checker's exact test: one LMI (``Link``, weights, rho as a rational) -> (proved, detail, raise of rho),
``M`` formed in exact rationals and ``M > 0`` proved by an exact LDL' or a rounded-LDL' congruence."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from lipdsl.certify.exact import EXACT_LDL_MAX, backend, congruence_check, exact_text, ldl_pivots, to_double
from lipdsl.certify.verify_block import exact_block_lmi, scale_tau
from lipdsl.certify.verify_float import psd_float
from lipdsl.certify.verify_links import Link


# -- exact check -----------------------------------------------------------------------------------------


def _exact_lmi(be, link: Link, X_in, X_out):
    """The LMI ``M`` in exact rationals (module docstring), with the recomputed exact realization if any."""
    if link.sys.kind == "block":  # a residual block (verify_block)
        return exact_block_lmi(be, link, X_in, X_out)
    ss = link.sys.ss
    nx, nu = ss.nx, ss.nu
    A, B, C, D = link.mats if link.mats is not None else (ss.A, ss.B, ss.C, ss.D)
    AB = be.mat(np.hstack([np.asarray(A, dtype=object), np.asarray(B, dtype=object)]) if link.mats
                else np.hstack([A, B]))
    E = be.mat(np.hstack([C, D]) if link.mats is None else np.hstack([np.asarray(C, dtype=object), D]))
    m = nx + nu
    top = be.zeros(m, m)
    if nx:
        P = be.mat(link.P)
        Pbig = be.block([[P, be.zeros(nx, nu)], [be.zeros(nu, nx), be.zeros(nu, nu)]])
        top = top + Pbig - be.T(AB) * P * AB
    if nx:
        top = top + be.block([[be.zeros(nx, nx), be.zeros(nx, nu)], [be.zeros(nu, nx), X_in]])
    else:
        top = top + X_in
    if link.sys.slope is None:
        return top - be.T(E) * X_out * E
    a, b = link.slope
    lam = be.mat(np.diag(link.lam))
    qa, qb = be.q(a), be.q(b)
    LE = lam * E
    top = top + be.T(E) * LE * (2 * qa * qb)
    cross = be.T(LE) * (-(qa + qb))
    return be.block([[top, cross], [be.T(cross), lam * 2 - X_out]])


def exact_link(be, link: Link, X_in, X_out, systems, rho_q: Fraction, allow_raise: bool,
               notes: list | None = None):
    """One LMI in exact arithmetic: (ok, detail, raise of rho). The first LMI (``X_in = rho I``) may get
    ``rho`` raised by the least of ``2^-51 rho, ..., 2^-40 rho`` that makes it strictly feasible. With
    batch norm in its map (``link.cover``), ``M - tau I > 0`` is proved instead (``batchnorm``), and the
    note saying so is appended to ``notes``."""
    if link.w_out[0] == "WtW":
        Dq = be.mat(link.out_D if link.out_D is not None else systems[link.w_out[1]].ss.D)
        Xo = be.T(Dq) * Dq
    else:
        Xo = be.mat(X_out)
    if link.full_weight is not None:  # the Schur complement with the spec's W (``compressed_weight``)
        W = be.mat(link.full_weight)
        lam = be.mat(np.diag(link.lam))
        a, b = link.slope
        LWWL = lam * W * be.T(W) * lam
        raise_by = Fraction(0)
        for attempt in range(RHO_RAISE_STEPS + 1 if allow_raise else 1):
            if attempt:
                raise_by = max(rho_q, Fraction(1, 1 << 1000)) / (1 << (RHO_RAISE_STEPS + 40 - attempt))
            r = rho_q + raise_by
            if r <= 0:
                return False, "rho must be > 0", Fraction(0)
            S = lam * 2 - Xo - LWWL * be.q((a + b) ** 2 / r)
            ok, how = _prove(be, S)
            if ok:
                n_in = link.full_weight.shape[1]
                how = f"Schur complement on rho I with the full weight W ({n_in} inputs): {how}"
                return True, how + (f"; rho raised by {float(raise_by):.3g}" if raise_by else ""), raise_by
        return False, "Schur complement with the full weight W: " + _explain(be, S), Fraction(0)
    tau = scale_tau(link, abs(be.fractions(Xo)), exact=True, be=be) if link.cover is not None else 0.0

    def lmi(X):
        """The LMI, minus ``tau I`` when batch-norm scales move ``C``, ``D`` (``batchnorm``)."""
        M = _exact_lmi(be, link, X, Xo)
        return M - _scaled_identity(be, be.size(M), be.q(tau)) if tau else M

    note = f"; {link.cover.note(tau)}" if link.cover is not None else ""
    of = "M - tau I: " if tau else ""  # (what a failing pivot belongs to)
    if note and notes is not None:
        notes.append(f"LMI[{link.sys.name}]: {link.cover.note(tau)}")
    if link.w_in[0] != "rho":
        M = lmi(be.mat(X_in))
        ok, how = _prove(be, M)
        return ok, (how if ok else of + _explain(be, M)) + note, Fraction(0)
    raise_by = Fraction(0)
    for attempt in range(RHO_RAISE_STEPS + 1 if allow_raise else 1):
        if attempt:
            raise_by = max(rho_q, Fraction(1, 1 << 1000)) / (1 << (RHO_RAISE_STEPS + 40 - attempt))
        M = lmi(_scaled_identity(be, link.sys.n_in, be.q(rho_q + raise_by)))
        ok, how = _prove(be, M)
        if ok:
            return True, how + (f"; rho raised by {float(raise_by):.3g}" if raise_by else "") + note, raise_by
    M = lmi(_scaled_identity(be, link.sys.n_in, be.q(rho_q)))
    also = " (also with rho raised by up to 2^-40 of itself)" if allow_raise else ""
    return False, of + _explain(be, M) + also + note, Fraction(0)


def _scaled_identity(be, n: int, r):
    M = be.zeros(n, n)
    if be.name == "sympy":
        from sympy.polys.matrices import DomainMatrix

        return DomainMatrix.eye(n, be.QQ) * r
    for i in range(n):
        M[i, i] = r
    return M


def side_psd(be, S: np.ndarray, exact: bool, backend_name: str = "auto") -> tuple[bool, str]:
    """``S >= 0`` for a side condition (``P``, pooled ``X``): exact LDL' or Rump's test on ``S`` itself
    (exact arithmetic when that is inconclusive)."""
    if not exact:
        ok, detail, inconclusive = psd_float(S, np.abs(S), 4)
        if not inconclusive:
            return ok, detail
        be = be if be is not None else backend(backend_name)
    M = be.mat(S)
    ok, how = _prove(be, M)
    return ok, how if ok else _explain(be, M)


#: In exact mode rho is raised by at most 2^-40 of itself, in this many doublings from 2^-(40+steps).
RHO_RAISE_STEPS = 12
#: A failed exact check names its first pivot <= 0 by the exact LDL' up to this order (beyond it, the
#: floating-point Cholesky's breakdown row).
EXPLAIN_LDL_MAX = 100


def _prove(be, M) -> tuple[bool, str]:
    """``M > 0`` proved in exact arithmetic (``EXACT_LDL_MAX``: exact LDL' or the rounded-LDL'
    congruence); False if not proved."""
    rows = be.rows(M)
    if len(rows) <= EXACT_LDL_MAX:
        ok, _, _ = ldl_pivots(rows)
        return ok, "exact LDL': every pivot > 0"
    return congruence_check(be, rows)


def _explain(be, M) -> str:
    """Why ``M > 0`` fails: the first pivot <= 0 of the exact LDL', or the float Cholesky's breakdown."""
    rows = be.rows(M)
    if len(rows) <= EXPLAIN_LDL_MAX:
        ok, at, v = ldl_pivots(rows)
        if not ok:
            return f"exact LDL': pivot {at} is {exact_text(v)} <= 0"
        return "exact LDL': every pivot > 0, but the congruence test failed"  # pragma: no cover
    from scipy.linalg import lapack

    Mf = np.array([[to_double(v) for v in row] for row in rows])
    if not np.all(np.isfinite(Mf)):
        return "not proved (entries beyond the range of doubles)"
    _, info = lapack.dpotrf(Mf, lower=1)
    w = np.linalg.eigvalsh(Mf)
    return (f"floating-point Cholesky breaks down at pivot {info - 1}; smallest eigenvalue about {w[0]:.6g}"
            if info > 0 else f"not proved (smallest eigenvalue about {w[0]:.6g})")

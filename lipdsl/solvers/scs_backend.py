"""The SCS backend (``--solver scs``): Sdp -> SCS's cone data -> ADMM (SCS 3.x) -> Solution.

SCS solves ``min c'x  s.t.  A x + s = b,  s in K`` by ADMM: no Newton matrix, one projection onto each cone
per iteration (an eigendecomposition of each LMI). Here ``K = R+^l x S+^(m_1) x ... x H+^(h_1) x ...``:

* ``x[nonneg] >= 0``: rows ``-e_i`` of ``A`` with ``b = 0`` (``'l'``);
* an LMI ``F(x) = F0 + sum_k x_k F_k >= 0`` of order ``m``: ``s = svec(F(x))``, i.e. ``b = svec(F0)`` and
  ``A = -svec(F_k)`` by columns (``'s'``), with SCS's scaled vectorisation

      svec(S) = (S_11, sqrt2 S_21, ..., sqrt2 S_m1, S_22, sqrt2 S_32, ..., S_mm)

  (the lower triangle column by column, off-diagonal entries times sqrt 2, so ``svec(S)'svec(T) = tr(ST)``);
* a frequency LMI, which ``sdp.build`` writes as the real embedding of a Hermitian ``M = Re M + i Im M``
  (order ``2h``, rows interleaved: entry ``(2i+p, 2j+q)`` is the ``(p, q)`` entry of
  ``[[Re M_ij, -Im M_ij], [Im M_ij, Re M_ij]]``): the Hermitian ``M`` itself, a complex cone of order ``h``
  (``'cs'``; the embedding's eigenvalues are ``M``'s, each twice, so the two cones are the same set), with

      hvec(M) = (M_11, sqrt2 Re M_21, sqrt2 Im M_21, ..., sqrt2 Re M_h1, sqrt2 Im M_h1, M_22, ..., M_hh).

  An LMI is mapped to ``'cs'`` when its coefficient matrices have that structure (``Lmi.hermitian``),
  whatever its name; the projection then costs an ``h x h`` complex eigendecomposition instead of a
  ``2h x 2h`` real one (about half the flops).

The ``LowRank`` terms of subspace weights enter through ``Lmi.G`` (their dense columns): with SCS a full ``X``
(``--weight-rank full``) is the sparser choice. What SCS claims is checked by ``certify`` as any solver's.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from lipdsl import limits
from lipdsl.errors import SolveError
from lipdsl.solvers.solution import Solution, nonneg_indices, objective

#: SCS's ``eps_abs = eps_rel = TOL_FACTOR * tol``: ``--tol`` is an interior-point tolerance (default 1e-7),
#: beyond what ADMM reaches in useful time; 1e-4 at the default (FCN 32/64/32: 1,300 iterations, a 0.4 %
#: repair, the certified bound within 0.03 % of CVXOPT's; at 1e-6 SCS had not converged after 2,250),
#: ``--tol 1e-9`` asks SCS for 1e-6. Certify's repair pays for what is left.
TOL_FACTOR = 1e3
#: ``--max-iterations`` counts interior-point iterations (default 100); SCS may run this many ADMM
#: iterations per one of them.
ADMM_PER_ITERATION = 500
#: Of the command's remaining time, what SCS may spend (the rest: storage recovery and certify).
TIME_SHARE = 0.8


@dataclass(frozen=True)
class ConeData:
    """SCS's problem: ``min c'x  s.t.  A x + s = b,  s in cone``; ``kinds[k]`` is ``'s'`` or ``'cs'`` for
    the k-th LMI of the Sdp (its cone among ``cone['s']`` or ``cone['cs']``)."""

    A: sp.csc_matrix
    b: np.ndarray
    c: np.ndarray
    cone: dict
    kinds: tuple[str, ...]


def svec_map(m: int) -> sp.csr_matrix:
    """``T`` with ``T vec(S) = svec(S)`` (``vec`` column-major, m^2 entries) for any, also unsymmetric,
    ``S``: each off-diagonal entry of ``svec`` is ``sqrt2 (S_ij + S_ji) / 2``, i.e. ``svec((S + S')/2)``."""
    r, c = np.triu_indices(m)  # (r <= c) row by row = the lower triangle (i = c, j = r) column by column
    i, j = c, r
    k = np.arange(len(i))
    w = np.where(i == j, 0.5, math.sqrt(0.5))  # 0.5 + 0.5 on the diagonal; sqrt2 / 2 off it
    return sp.csr_matrix((np.concatenate([w, w]), (np.concatenate([k, k]),
                                                   np.concatenate([j * m + i, i * m + j]))),
                         shape=(len(k), m * m))


@functools.lru_cache(maxsize=8)
def hvec_map(h: int) -> sp.csr_matrix:
    """``T`` with ``T vec(E) = hvec(M)`` for the real embedding ``E`` (order 2h, interleaved; module
    docstring) of a Hermitian ``M``; each part is the mean of its four copies in ``E``:
    ``Re M_ij = (E[2i,2j] + E[2i+1,2j+1] + E[2j,2i] + E[2j+1,2i+1]) / 4`` and
    ``Im M_ij = (E[2i+1,2j] - E[2i,2j+1] + E[2j,2i+1] - E[2j+1,2i]) / 4``."""
    m = 2 * h
    rows, cols, vals = [], [], []
    k = 0
    for j in range(h):
        for i in range(j, h):
            if i == j:
                parts = [(1.0, [(2 * i, 2 * i, 0.5), (2 * i + 1, 2 * i + 1, 0.5)])]
            else:
                s = math.sqrt(2.0) / 4
                parts = [(s, [(2 * i, 2 * j, 1), (2 * i + 1, 2 * j + 1, 1), (2 * j, 2 * i, 1),
                              (2 * j + 1, 2 * i + 1, 1)]),
                         (s, [(2 * i + 1, 2 * j, 1), (2 * i, 2 * j + 1, -1), (2 * j, 2 * i + 1, 1),
                              (2 * j + 1, 2 * i, -1)])]
            for scale, entries in parts:
                for a, b, sign in entries:
                    rows.append(k), cols.append(b * m + a), vals.append(scale * sign)
                k += 1
    return sp.csr_matrix((vals, (rows, cols)), shape=(k, m * m))



def cone_data(sdp, complex_cones: bool = True) -> ConeData:
    """SCS's ``(A, b, c, cone)`` for ``sdp`` (module docstring); ``complex_cones=False`` keeps every LMI a
    real ``'s'`` cone (the real embedding of the frequency LMIs, for comparison)."""
    n = sdp.n
    idx = nonneg_indices(sdp)
    blocks_A = [sp.csr_matrix((-np.ones(len(idx)), (np.arange(len(idx)), idx)), shape=(len(idx), n))]
    blocks_b = [np.zeros(len(idx))]
    real_A, real_b, cplx_A, cplx_b, s, cs, kinds = [], [], [], [], [], [], []
    svecs: dict[int, sp.csr_matrix] = {}
    for lmi in sdp.lmis:
        limits.checkpoint("scs: cone data")
        G = lmi.G
        f0 = lmi.F0.reshape(-1, order="F")
        if complex_cones and lmi.hermitian:
            T = hvec_map(lmi.size // 2)
            cplx_A.append(-(T @ G)), cplx_b.append(T @ f0), cs.append(lmi.size // 2), kinds.append("cs")
        else:
            T = svecs.setdefault(lmi.size, svec_map(lmi.size))
            real_A.append(-(T @ G)), real_b.append(T @ f0), s.append(lmi.size), kinds.append("s")
    A = sp.vstack(blocks_A + real_A + cplx_A, format="csc")
    b = np.concatenate(blocks_b + real_b + cplx_b)
    cone = {"l": len(idx), "s": s, "cs": cs}
    return ConeData(A, b, np.asarray(objective(sdp), dtype=float), cone, tuple(kinds))


#: SCS's ``status_val`` -> the claimed status lipdsl reports ('optimal' is what ``solution.converged``
#: accepts; SCS's own words, e.g. "solved (inaccurate - reached time_limit_secs)", go to the log).
STATUS = {1: "optimal", 2: "solved_inaccurate"}
#: ``status_val`` of infeasible (-2), unbounded (-1) and their inaccurate forms (-7, -6): no point to certify.
INFEASIBLE = {-2: "infeasible", -7: "infeasible", -1: "unbounded", -6: "unbounded"}


def settings(tol: float, max_iterations: int, verbose: bool, **overrides) -> dict:
    """SCS's settings: ``eps_abs = eps_rel = TOL_FACTOR * tol``, ``max_iters = ADMM_PER_ITERATION *
    max_iterations``, ``time_limit_secs`` from the active deadline (``limits.current()``), and SCS's own
    rescaling (``normalize``, adaptive ``scale``) and Anderson acceleration left at its defaults."""
    eps = min(TOL_FACTOR * float(tol), 1e-2)
    out = {"eps_abs": eps, "eps_rel": eps, "max_iters": int(ADMM_PER_ITERATION * max_iterations),
           "verbose": bool(verbose)}
    deadline = limits.current()
    if deadline.seconds is not None:
        out["time_limit_secs"] = max(1.0, TIME_SHARE * deadline.remaining())
    out.update(overrides)
    return out


def solve_sdp(sdp, *, tol: float, max_iterations: int, verbose: bool, complex_cones: bool = True,
              **overrides) -> Solution:
    """``--solver scs``: the SDP handed to SCS (module docstring); ``overrides``: more SCS settings.

    Raises ``SolveError`` when SCS is not installed, fails, or reports the SDP infeasible or unbounded.
    """
    try:
        import scs
    except ImportError as exc:
        raise SolveError("solver 'scs' is not installed",
                         hint="pip install scs (or pip install 'lipdsl[solvers]'), or use --solver cvxopt"
                         ) from exc
    t0 = time.perf_counter()
    data = cone_data(sdp, complex_cones)
    if not (np.all(np.isfinite(data.A.data)) and np.all(np.isfinite(data.b))):
        raise SolveError("the SDP has non-finite coefficients", hint="check the weights for overflow")
    opts = settings(tol, max_iterations, verbose, **overrides)
    try:
        solver = scs.SCS({"A": data.A, "b": data.b, "c": data.c}, data.cone, **opts)
        limits.checkpoint("scs")
        out = solver.solve()
    except (ValueError, TypeError, MemoryError) as exc:
        raise SolveError(f"SCS failed before its first iterate: {exc}", hint="try --solver cvxopt") from exc
    seconds = time.perf_counter() - t0
    info = out["info"]
    status, value = str(info["status"]), int(info["status_val"])
    if value in INFEASIBLE:
        meaning = "no multipliers satisfy the LMIs" if INFEASIBLE[value] == "infeasible" else "unbounded"
        raise SolveError(f"SCS reports the SDP {status} ({meaning}) after {info['iter']} iterations",
                         hint="try --solver cvxopt, or check the weights' scale")
    x = np.asarray(out["x"], dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise SolveError(f"SCS returned no finite point (status {status!r})", hint="try --solver cvxopt")
    pobj, dobj = float(info["pobj"]), float(info["dobj"])
    gap = abs(pobj - dobj) / max(1.0, abs(pobj), abs(dobj))
    residual = max(float(info["res_pri"]), float(info["res_dual"]))
    log = (f"scs {info.get('lin_sys_solver', '')}: cones l={data.cone['l']}, {len(data.cone['s'])} real "
           f"(max order {max(data.cone['s'], default=0)}), {len(data.cone['cs'])} complex (max order "
           f"{max(data.cone['cs'], default=0)}); A {data.A.shape[0]} x {data.A.shape[1]}, {data.A.nnz} nnz; "
           f"setup {info['setup_time'] / 1e3:.2f} s, cones {info['cone_time'] / 1e3:.2f} s, linear systems "
           f"{info['lin_sys_time'] / 1e3:.2f} s; status {status}",)
    return Solution(STATUS.get(value, status), float(x[sdp.rho.offset]), x, "scs", seconds,
                    int(info["iter"]), log, relative_gap=gap, residual=residual)

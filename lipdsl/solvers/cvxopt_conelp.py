"""The CVXOPT backends: ``conelp`` with lipdsl's structured KKT solver (``cvxopt``) or CVXOPT's own
'chol' KKT solver (``cvxopt-generic``); Sdp -> Solution.

CVXOPT's generic 'chol' KKT solver forms the Schur complement ``H = G' W^-1 W^-T G`` by scaling
every column ``F_k`` of ``G`` with the Nesterov-Todd scaling: ``n * O(m^3)`` per iteration (about 0.17 s per
iteration on the ECG net: 88 variables, a 156 x 156 LMI). Every ``F_k`` here is a short sum of symmetric
rank-two terms ``c_r (u_r v_r' + v_r u_r')`` (sdp.Factored), so with ``S = rti rti'`` per LMI block

    H_ij = sum_{r in i, s in j} c_r c_s tr((u_r v_r' + v_r u_r') S (u_s v_s' + v_s u_s') S)
         = sum 2 c_r c_s [ (u_r'S u_s)(v_r'S v_s) + (u_r'S v_s)(v_r'S u_s) ],

which costs ``O(m^2 R + m R^2)`` for ``R`` terms instead (``cvxopt_kkt``). For large SDPs
(``THREAD_MIN_ENTRIES``) the per-block work runs on two threads: the KKT solver's and, through
``cvxopt_cones``, CVXOPT's own scaling and step-length operations.
The structured solves refine a KKT solve (one more solve on its residual) only in the iterations whose first
solve leaves a relative residual above ``cvxopt_kkt.REFINE_ABOVE`` (``cvxopt_kkt.refined``; CVXOPT refines
every solve of an SDP, which costs 10-15 % of a 32-channel net's solve for nothing in its early iterations).
CVXOPT's "singular KKT matrix" ending after progress is not retried: its last iterate is returned with
status 'unknown' and handed to the certificate check, which either proves a bound from it or refuses.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from lipdsl import limits
from lipdsl.errors import SolveError
from lipdsl.sdp.problem import Sdp
from lipdsl.solvers.cvxopt_kkt import (
    block_threads,
    gram_kkt,
    refined,
    split_by_cost,
    structured_kkt,
    write_into,
    thread_map,
)
from lipdsl.solvers.solution import Solution, iteration_hook, nonneg_indices, objective


#: A structured solve that stalls far from ``tol`` (CVXOPT's 'singular KKT matrix' ending: 'unknown' before
#: the iteration limit, at a relative gap above ``STALL_GAP * tol``) is solved again with CVXOPT's own
#: 'chol' KKT solver when that is cheap: at most ``GENERIC_RETRY_WORK`` multiply-adds an iteration
#: (variables x the sum of the LMI orders cubed; the ECG net's 88 x 156^3 = 3.3e8 take 0.17 s); the closer
#: of the two points is kept. Seen on a linear residual block of 1x1 convs (19 variables): structured
#: stalled at gap 2.2e-3 (its certificate 1.003 times the solver's value: refused as unconverged), 'chol'
#: at 6.8e-5 (certified, repair 1.1e-4). The trained nets' stalls near ``tol`` (FCN: 4e-7 at 1e-7; their
#: repairs ~1e-6) are left to the certificate check, as before.
STALL_GAP = 1e3
GENERIC_RETRY_WORK = 1e9


def solve_structured(sdp: Sdp, *, tol: float, max_iterations: int, verbose: bool,
                     warm: Solution | None = None, start: dict | None = None) -> Solution:
    """CVXOPT's conelp with the structured (or, for LipSDP problems, Gram) KKT solver; ``warm``: a solution
    of the same variables under fewer LMIs to start from (``warm_start``); ``start``: CVXOPT's own
    ``primalstart``/``dualstart`` instead. With ``sdp.keep_duals``, ``Solution.duals`` holds CVXOPT's ``z``
    by LMI (as for the frequency form, whose re-solves start from it)."""
    return _solve_cvxopt(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose, structured=True,
                         warm=warm, start=start)


def solve_cvxopt(sdp: Sdp, *, tol: float, max_iterations: int, verbose: bool,
                 warm: Solution | None = None, start: dict | None = None) -> Solution:
    """``--solver cvxopt``: ``solve_structured``; a small SDP on which it stalls is solved again with
    CVXOPT's 'chol' KKT solver (``GENERIC_RETRY_WORK``), the closer point kept and ``Solution.notes`` saying
    so."""
    sol = solve_structured(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose, warm=warm,
                           start=start)
    stalled = (sol.claimed_status == "unknown" and sol.relative_gap is not None
               and abs(sol.relative_gap) > STALL_GAP * tol and (sol.iterations or 0) < max_iterations)
    if not stalled or getattr(sdp, "kkt", None) == "gram" or not hasattr(sdp, "lmis"):
        return sol
    if sdp.n * sum(float(lmi.size) ** 3 for lmi in sdp.lmis) > GENERIC_RETRY_WORK:
        return sol
    retry = _solve_cvxopt(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose, structured=False)
    closer = (retry.claimed_status == "optimal" or retry.near_optimal(tol)
              or (retry.relative_gap is not None and abs(retry.relative_gap) < abs(sol.relative_gap)))
    if not closer:  # (the first point goes on to the certificate check, as before)
        return sol
    said = (f"the structured KKT solver stalled after {sol.iterations} iterations (relative gap "
            f"{sol.relative_gap:.2g}); solved again with CVXOPT's 'chol' KKT solver, which got closer "
            f"({retry.iterations} iterations)")
    return replace(retry, seconds=sol.seconds + retry.seconds, notes=(*sol.notes, said))


#: ``warm_start``: how far into the cone the previous point's blocks are moved (relative to each block's
#: norm). Measured on the residual TCN's re-solve: 1e-2 took 14 iterations (cold: 31), 1e-1 took 22.
WARM_SHIFT = 1e-2


def warm_start(sdp: Sdp, previous: Solution, nonneg_idx: np.ndarray) -> dict:
    """CVXOPT's ``primalstart`` and ``dualstart`` for ``sdp`` from ``previous``, a solution of the same
    variables under some of its LMIs (the refinement's re-solve adds frequencies: docs/method.md §3).

    Primal: ``x`` as it was, each slack ``S = F(x)`` shifted into the interior, ``S + (max(0, -lambda_min) +
    WARM_SHIFT |S|) I``; dual: each LMI's previous block (a new LMI: zero) shifted the same way, so that both
    start strictly inside their cones, near the previous optimum. Any start is sound: ``certify`` judges the
    point the solve returns."""
    import cvxopt

    x = previous.x
    duals = previous.duals or {}
    z_scale = np.mean([np.linalg.norm(Z, 2) for key, Z in duals.items() if key is not None] or [1.0])
    zl = duals.get(None, np.zeros(len(nonneg_idx)))
    s_parts, z_parts = [into_orthant(x[nonneg_idx], 1.0)], [into_orthant(zl, 1e-8)]
    for lmi in sdp.lmis:
        S = lmi.value(x)
        s_parts.append(into_cone(S, max(float(np.linalg.norm(S, 2)), 1e-12)).reshape(-1, order="F"))
        Z = duals.get(lmi.name)
        Z = np.zeros_like(S) if Z is None else Z
        z_parts.append(into_cone(Z, max(float(np.linalg.norm(Z, 2)), z_scale)).reshape(-1, order="F"))
    return {"primalstart": {"x": cvxopt.matrix(x), "s": cvxopt.matrix(np.concatenate(s_parts))},
            "dualstart": {"z": cvxopt.matrix(np.concatenate(z_parts))}}


def into_cone(M: np.ndarray, scale: float) -> np.ndarray:
    """A block of a warm start strictly inside the PSD cone: ``M`` (symmetrised) plus ``(max(0, -lambda_min)
    + WARM_SHIFT scale) I``."""
    M = (M + M.T) / 2
    lo = float(np.linalg.eigvalsh(M)[0]) if len(M) else 0.0
    return M + (max(0.0, -lo) + WARM_SHIFT * scale) * np.eye(len(M))


def into_orthant(v: np.ndarray, floor: float) -> np.ndarray:
    """The nonnegative part of a warm start strictly positive: ``max(v, 0) + WARM_SHIFT max(floor,
    |v|_max)``."""
    return np.maximum(v, 0) + WARM_SHIFT * max(floor, float(np.abs(v).max(initial=0.0)))


def _duals(sdp, z, dims: dict) -> dict:
    """``Solution.duals``: CVXOPT's ``z`` by LMI name (each block symmetrised from its lower triangle)."""
    v = np.asarray(z).ravel()
    out, at = {None: v[: dims["l"]].copy()}, dims["l"]
    for lmi, m in zip(sdp.lmis, dims["s"]):
        B = v[at : at + m * m].reshape(m, m, order="F")
        out[lmi.name] = np.tril(B) + np.tril(B, -1).T
        at += m * m
    return out


def solve_generic(sdp: Sdp, *, tol: float, max_iterations: int, verbose: bool) -> Solution:
    """``--solver cvxopt-generic``: CVXOPT's conelp with its own 'chol' KKT solver on the same data."""
    return _solve_cvxopt(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose, structured=False)


def cone_data(sdp: Sdp, rest: bool = False):
    """CVXOPT's ``(c, G, h, dims)`` for ``min c'x  s.t.  G x + s = h,  s in R+^l x S+^m1 x ...``.

    ``rest``: each LMI's ``G_rest`` (its low-rank terms left to ``_operator``) instead of the whole ``G``."""
    nonneg_idx = nonneg_indices(sdp)
    n_l = len(nonneg_idx)
    Gl = sp.csr_matrix((-np.ones(n_l), (np.arange(n_l), nonneg_idx)), shape=(n_l, sdp.n))
    G_all = sp.vstack([Gl] + [-(lmi.G_rest if rest else lmi.G) for lmi in sdp.lmis], format="csr")
    h = np.concatenate([np.zeros(n_l)] + [lmi.F0.reshape(-1, order="F") for lmi in sdp.lmis])
    dims = {"l": n_l, "q": [], "s": [lmi.size for lmi in sdp.lmis]}
    return objective(sdp), G_all, h, dims, nonneg_idx


def _operator(G_all: sp.csr_matrix, dims: dict, lmis=()):
    """``G`` for CVXOPT as the function ``y := alpha op(G) x + beta y`` (``op`` = ``G`` or ``G'``).

    As in ``cvxopt.misc.sgemv``, the 's' blocks of ``x`` in ``G'x`` are in lower-triangular storage:
    the strictly lower entries count twice and the upper ones not at all. ``lmis``: the LMIs whose
    ``lowrank`` terms ``G_all`` leaves out (``cone_data(rest=True)``), applied here as products.
    """
    lowrank = []  # (offset of the block in z, m, its LowRank terms)
    at = dims["l"]
    for lmi, m in zip(lmis, dims["s"]):
        if lmi.lowrank:
            lowrank.append((at, m, lmi.lowrank))
        at += m * m
    lower = [np.ones(dims["l"])]
    for m in dims["s"]:
        i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")  # vec index j*m + i (column-major)
        lower.append(np.where(i > j, 2.0, np.where(i == j, 1.0, 0.0)).reshape(-1, order="F"))
    lower = np.concatenate(lower)
    GT = G_all.T.tocsr()

    def G(x, y, alpha=1.0, beta=0.0, trans="N"):
        x = np.asarray(x).ravel()
        if trans == "N":
            out = G_all @ x
            for at, m, terms in lowrank:  # the block is -F(x): minus the low-rank terms
                out[at : at + m * m] -= sum(t.apply(x) for t in terms).reshape(-1, order="F")
            out *= alpha
        else:
            out = GT @ (lower * x)
            for at, m, terms in lowrank:
                Z = x[at : at + m * m].reshape(m, m, order="F")
                Z = np.tril(Z) + np.tril(Z, -1).T
                for t in terms:
                    out[t.columns] -= t.adjoint(Z)
            out *= alpha
        if beta != 0.0:
            out += beta * np.asarray(y).ravel()
        write_into(y, out)

    return G


#: The structured solves refine their KKT solves themselves, in the iterations that need it
#: (``cvxopt_kkt.refined``), instead of CVXOPT's refinement of every solve; False: CVXOPT's.
GATED_REFINEMENT = True


def _counted(kkt, hook):
    """The KKT solver ``kkt`` calling ``hook(k)`` before its k-th factorisation."""
    calls = [0]

    def factor(W):
        calls[0] += 1
        hook(calls[0])
        return kkt(W)

    return factor


def _solve_cvxopt(sdp: Sdp, *, tol: float, max_iterations: int, verbose: bool, structured: bool,
                  warm: Solution | None = None, start: dict | None = None) -> Solution:
    import cvxopt
    import cvxopt.misc  # (not imported by cvxopt.solvers: kkt_chol below)
    import cvxopt.solvers

    c, G_all, h, dims, nonneg_idx = cone_data(sdp, rest=structured)
    if not (np.all(np.isfinite(G_all.data)) and np.all(np.isfinite(h))):
        raise SolveError("the SDP has non-finite coefficients", hint="check the weights for overflow")
    if structured:  # G as an operator (scipy products): building a cvxopt.spmatrix costs ~1.6 us per entry
        G = _operator(G_all, dims, sdp.lmis if hasattr(sdp, "lmis") else ())
    else:
        Gc = G_all.tocoo()
        G = cvxopt.spmatrix(Gc.data, Gc.row.astype(int).tolist(), Gc.col.astype(int).tolist(), G_all.shape)
    opts = {
        "show_progress": verbose,
        "abstol": tol * 1e-2,
        "reltol": tol,
        "feastol": tol,
        "maxiters": max_iterations,
    }
    if not structured:  # CVXOPT's own 'chol', with the deadline checked once per iteration
        chol = cvxopt.misc.kkt_chol(G, dims, cvxopt.spmatrix([], [], [], (0, sdp.n)))

        def kkt(W):
            limits.checkpoint("cvxopt")
            return chol(W)
    elif getattr(sdp, "kkt", None) == "gram":  # the LipSDP baseline's problems (baselines.LipsdpProblem)
        kkt = gram_kkt(sdp, nonneg_idx)
    else:
        kkt = structured_kkt(sdp, nonneg_idx)
    if structured and GATED_REFINEMENT:  # (refines where the solves need it, not every solve)
        kkt = refined(kkt, G, dims)
        opts["refinement"] = 0
    if structured and iteration_hook() is not None:
        kkt = _counted(kkt, iteration_hook())
    threads = block_threads(dims["s"]) if structured else 1
    hermitian = [structured and lmi.hermitian for lmi in getattr(sdp, "lmis", ())]
    cone_ops, marks = contextlib.nullcontext(), contextlib.nullcontext()
    if threads > 1 or any(hermitian):
        # CVXOPT's per-block scaling work on the KKT solver's threads, and on the frequency LMIs' Hermitian
        # matrices of half the order (lipdsl.solvers.cvxopt_cones)
        from lipdsl.solvers.cvxopt_cones import hermitian_blocks, installed

        cone_ops = installed(functools.partial(thread_map, threads=threads),
                             lambda sizes: split_by_cost(np.asarray(sizes, dtype=float) ** 3, threads))
        marks = hermitian_blocks(hermitian)
    t0 = time.perf_counter()
    try:
        with cone_ops, marks:
            if start is None:
                start = {} if warm is None or warm.x is None else warm_start(sdp, warm, nonneg_idx)
            res = cvxopt.solvers.conelp(cvxopt.matrix(c), G, cvxopt.matrix(h), dims, kktsolver=kkt,
                                        options=opts, **start)
    except (ArithmeticError, ValueError) as exc:
        raise SolveError(
            f"CVXOPT failed before its first iterate: {exc}",
            hint="try another solver with --solver, e.g. --solver qics",
        ) from exc
    seconds = time.perf_counter() - t0
    if res["status"] in ("primal infeasible", "dual infeasible"):
        # x'' is a certificate of infeasibility here, not a point: nothing to certify.
        meaning = "no multipliers satisfy the LMIs" if res["status"] == "primal infeasible" else "unbounded"
        raise SolveError(
            f"CVXOPT reports the SDP {res['status']} ({meaning}) after {res.get('iterations')} iterations",
            hint="try another solver (--solver sdpa) or check the weights' scale",
        )
    x = None if res["x"] is None else np.asarray(res["x"]).ravel()
    rho = None if x is None else float(x[sdp.rho.offset])
    gap = res.get("relative gap")
    if gap is None and res.get("gap") is not None and rho:  # (CVXOPT leaves it None when an objective <= 0)
        gap = float(res["gap"]) / abs(rho)
    residuals = [res.get("primal infeasibility"), res.get("dual infeasibility")]
    residual = None if any(r is None for r in residuals) else float(max(residuals))
    # (only the frequency form is solved again, on a refined grid: other solves keep no copy of z)
    keep = getattr(sdp, "storage", ()) or getattr(sdp, "keep_duals", False)
    duals = _duals(sdp, res["z"], dims) if keep and res.get("z") is not None else None
    return Solution(res["status"], rho, x, "cvxopt", seconds, res.get("iterations"),
                    relative_gap=None if gap is None else float(gap), residual=residual, duals=duals)

"""Solve the SDP: Sdp -> Solution (what the solver claims; ``certify`` decides what is proven).

The default backend calls CVXOPT's cone solver with a KKT solver that exploits the low-rank structure of
our LMIs. CVXOPT's generic 'chol' KKT solver forms the Schur complement ``H = G' W^-1 W^-T G`` by scaling
every column ``F_k`` of ``G`` with the Nesterov-Todd scaling: ``n * O(m^3)`` per iteration (about 0.17 s per
iteration on the ECG net: 88 variables, a 156 x 156 LMI). Every ``F_k`` here is a short sum of symmetric
rank-two terms ``c_r (u_r v_r' + v_r u_r')`` (sdp.Factored), so with ``S = rti rti'`` per LMI block

    H_ij = sum_{r in i, s in j} c_r c_s tr((u_r v_r' + v_r u_r') S (u_s v_s' + v_s u_s') S)
         = sum 2 c_r c_s [ (u_r'S u_s)(v_r'S v_s) + (u_r'S v_s)(v_r'S u_s) ],

which costs ``O(m^2 R + m R^2)`` for ``R`` terms instead. For large SDPs (``THREAD_MIN_ENTRIES``) the
per-block work runs on two threads: the KKT solver's and, through ``lipdsl.cones``, CVXOPT's own scaling
and step-length operations. Other solvers go through PICOS (``--solver``).
CVXOPT's "singular KKT matrix" ending after progress is not retried: its last iterate is returned with
status 'unknown' and handed to the certificate check, which either proves a bound from it or refuses.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from lipdsl import limits
from lipdsl.errors import SolveError, TimeLimitError
from lipdsl.sdp.problem import Sdp
from lipdsl.solvers.cvxopt_kkt import (
    block_threads,
    gram_kkt,
    split_by_cost,
    structured_kkt,
    write_into,
    thread_map,
)


@dataclass(frozen=True)
class Solution:
    """The solver's answer: its claimed status, ``rho`` (= L^2 of the scaled problem) and the point ``x``."""

    claimed_status: str
    rho: float | None
    x: np.ndarray | None
    solver: str
    seconds: float
    iterations: int | None = None
    log: tuple[str, ...] = field(default=())
    #: where the solver stopped: relative duality gap and the larger of the primal/dual residuals (CVXOPT)
    relative_gap: float | None = None
    residual: float | None = None

    def near_optimal(self, tol: float) -> bool:
        """Stopped without claiming optimality (e.g. CVXOPT's singular KKT ending) but within ``tol`` on the
        relative gap and the residuals: as good as converged, whatever the status says."""
        return (self.relative_gap is not None and self.residual is not None
                and abs(self.relative_gap) <= tol and self.residual <= tol)


def cone_data(sdp: Sdp):
    """CVXOPT's ``(c, G, h, dims)`` for ``min c'x  s.t.  G x + s = h,  s in R+^l x S+^m1 x ...``."""
    nonneg_idx = np.concatenate([np.arange(v.offset, v.offset + v.dim) for v in sdp.nonneg])
    n_l = len(nonneg_idx)
    Gl = sp.csr_matrix((-np.ones(n_l), (np.arange(n_l), nonneg_idx)), shape=(n_l, sdp.n))
    G_all = sp.vstack([Gl] + [-lmi.G for lmi in sdp.lmis], format="csr")
    h = np.concatenate([np.zeros(n_l)] + [lmi.F0.reshape(-1, order="F") for lmi in sdp.lmis])
    dims = {"l": n_l, "q": [], "s": [lmi.size for lmi in sdp.lmis]}
    return _objective(sdp), G_all, h, dims, nonneg_idx


def _objective(sdp) -> np.ndarray:
    """What the solver minimises: ``Sdp.solver_objective`` (``rho``, plus the frequency-mode trace term),
    or the problem's own ``objective`` (the LipSDP baselines' problems)."""
    return (sdp.solver_objective if hasattr(sdp, "solver_objective") else sdp.objective)()


def _operator(G_all: sp.csr_matrix, dims: dict):
    """``G`` for CVXOPT as the function ``y := alpha op(G) x + beta y`` (``op`` = ``G`` or ``G'``).

    As in ``cvxopt.misc.sgemv``, the 's' blocks of ``x`` in ``G'x`` are in lower-triangular storage:
    the strictly lower entries count twice and the upper ones not at all.
    """
    lower = [np.ones(dims["l"])]
    for m in dims["s"]:
        i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")  # vec index j*m + i (column-major)
        lower.append(np.where(i > j, 2.0, np.where(i == j, 1.0, 0.0)).reshape(-1, order="F"))
    lower = np.concatenate(lower)
    GT = G_all.T.tocsr()

    def G(x, y, alpha=1.0, beta=0.0, trans="N"):
        if trans == "N":
            out = alpha * (G_all @ np.asarray(x).ravel())
        else:
            out = alpha * (GT @ (lower * np.asarray(x).ravel()))
        if beta != 0.0:
            out += beta * np.asarray(y).ravel()
        write_into(y, out)

    return G


#: ``hook(k)`` for the k-th KKT factorisation of CVXOPT solves in this context (``on_iteration``).
_ITERATION_HOOK: contextvars.ContextVar = contextvars.ContextVar("lipdsl_iteration_hook", default=None)


@contextlib.contextmanager
def on_iteration(hook):
    """Call ``hook(k)`` at the k-th iteration of the CVXOPT solves run in this context (progress reports).

    CVXOPT factors the KKT system once for its starting point and once per iteration, so ``k`` runs from 1 to
    ``iterations + 1``; the hook runs on the solving thread and must be quick.
    """
    token = _ITERATION_HOOK.set(hook)
    try:
        yield
    finally:
        _ITERATION_HOOK.reset(token)


def _counted(kkt, hook):
    """The KKT solver ``kkt`` calling ``hook(k)`` before its k-th factorisation."""
    calls = [0]

    def factor(W):
        calls[0] += 1
        hook(calls[0])
        return kkt(W)

    return factor


def _solve_cvxopt(sdp: Sdp, *, tol: float, max_iterations: int, verbose: bool, structured: bool) -> Solution:
    import cvxopt
    import cvxopt.solvers

    c, G_all, h, dims, nonneg_idx = cone_data(sdp)
    if not (np.all(np.isfinite(G_all.data)) and np.all(np.isfinite(h))):
        raise SolveError("the SDP has non-finite coefficients", hint="check the weights for overflow")
    if structured:  # G as an operator (scipy products): building a cvxopt.spmatrix costs ~1.6 us per entry
        G = _operator(G_all, dims)
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
    if structured and _ITERATION_HOOK.get() is not None:
        kkt = _counted(kkt, _ITERATION_HOOK.get())
    threads = block_threads(dims["s"]) if structured else 1
    cone_ops = contextlib.nullcontext()
    if threads > 1:  # CVXOPT's per-block scaling work on the same threads (lipdsl.solvers.cvxopt_cones)
        from lipdsl.solvers.cvxopt_cones import installed

        cone_ops = installed(functools.partial(thread_map, threads=threads),
                             lambda sizes: split_by_cost(np.asarray(sizes, dtype=float) ** 3, threads))
    t0 = time.perf_counter()
    try:
        with cone_ops:
            res = cvxopt.solvers.conelp(cvxopt.matrix(c), G, cvxopt.matrix(h), dims, kktsolver=kkt,
                                        options=opts)
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
    return Solution(res["status"], rho, x, "cvxopt", seconds, res.get("iterations"),
                    relative_gap=None if gap is None else float(gap), residual=residual)


def _solve_picos(sdp: Sdp, solver: str, *, tol: float, max_iterations: int, verbose: bool) -> Solution:
    import picos

    problem = to_picos(sdp)
    problem.options.solver = solver
    problem.options.verbosity = 1 if verbose else 0
    problem.options.primals = None
    problem.options.duals = None
    problem.options.rel_ipm_opt_tol = tol
    problem.options.rel_prim_fsb_tol = tol
    problem.options.rel_dual_fsb_tol = tol
    problem.options.max_iterations = max_iterations
    t0 = time.perf_counter()
    try:
        sol = problem.solve()
    except picos.SolutionFailure as exc:
        raise SolveError(f"{solver} failed: {exc}", hint="try --solver cvxopt") from exc
    except TimeLimitError:
        raise
    except Exception as exc:  # noqa: BLE001 - solver back-ends raise anything; report it, do not trace back
        raise SolveError(f"{solver} failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - t0
    xvar = problem.variables["x"]
    x = None if xvar.value is None else np.asarray(xvar.value, dtype=float).ravel()
    rho = None if x is None else float(x[sdp.rho.offset])
    status = f"{sol.claimedStatus}/{sol.primalStatus}"
    return Solution(status, rho, x, solver, seconds)


def _solve_sdpa(sdp: Sdp, *, tol: float, max_iterations: int, verbose: bool) -> Solution:
    """Solve with sdpa-python: the SDP is written in SDPA sparse format (``sdpa.write_sdpa``) and read back.

    SDPA's LMI form ``sum_k F_k x_k - F_0 >= 0`` has our ``x`` as its primal vector, so no mapping is needed.
    """
    from lipdsl.solvers.sdpa import solve_with_sdpa

    res = solve_with_sdpa(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose)
    return Solution(res.status, float(res.x[sdp.rho.offset]), res.x, "sdpa", res.seconds, res.iterations)


def to_picos(sdp: Sdp):
    """The same SDP as a ``picos.Problem`` over one vector variable ``x`` (LMIs as F0 + sum x_k F_k)."""
    import cvxopt
    import picos

    problem = picos.Problem()
    x = picos.RealVariable("x", sdp.n)
    for lmi in sdp.lmis:
        m = lmi.size
        G = lmi.G.tocoo()
        coef = cvxopt.spmatrix(G.data, G.row.astype(int).tolist(), G.col.astype(int).tolist(), (m * m, sdp.n))
        expr = picos.expressions.AffineExpression(
            lmi.name, (m, m), {x: coef, (): cvxopt.matrix(lmi.F0.reshape(-1, order="F"))}
        )
        problem.add_constraint(expr >> 0)
    idx = [int(i) for v in sdp.nonneg for i in range(v.offset, v.offset + v.dim)]
    problem.add_constraint(x[idx] >= 0)
    c = _objective(sdp)
    nz = np.flatnonzero(c)
    problem.set_objective("min", sum(float(c[i]) * x[int(i)] for i in nz))  # rho (+ the frequency trace)
    return problem


SOLVERS = ("cvxopt", "cvxopt-generic", "sdpa", "qics", "smcp", "mosek")


def converged(status: str) -> bool:
    """Whether a solver's claimed status says it reached its optimality tolerance (CVXOPT, SDPA, PICOS)."""
    return status in ("optimal", "pdOPT", "closed-form") or status.startswith("optimal/")


def solve(
    sdp: Sdp,
    solver: str = "cvxopt",
    *,
    tol: float = 1e-9,
    max_iterations: int = 100,
    verbose: bool = False,
    timeout: float | None = None,
    deadline: limits.Deadline | None = None,
) -> Solution:
    """Solve ``min rho`` over the SDP with ``solver``; ``certify`` judges the point it returns.

    The time limit is ``deadline`` (the command's, ``limits.Deadline``), else ``timeout`` seconds from now,
    else the caller's active deadline (``limits.current()``). With one, the solver runs on a worker thread
    (``limits.run_within``): CVXOPT checks it once per iteration (in the KKT solver) and stops; a solver
    that stays in C (a PICOS back-end) is abandoned when it passes. Any thread may call this.

    Raises
    ------
    SolveError
        The solver is not installed, failed without returning any point, reports the SDP infeasible or
        unbounded, or did not finish within the time limit (``TimeLimitError``).
    """
    if deadline is None:
        deadline = limits.current() if timeout is None else limits.Deadline.after(timeout)
    with limits.blas_threads(), deadline.active():  # (the KKT pools are shut down when the last user leaves)
        return limits.run_within(
            lambda: _solve(sdp, solver, tol=tol, max_iterations=max_iterations, verbose=verbose),
            deadline, solver)


def _solve(sdp: Sdp, solver: str, *, tol: float, max_iterations: int, verbose: bool) -> Solution:
    if solver == "cvxopt":
        return _solve_cvxopt(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose, structured=True)
    if solver == "cvxopt-generic":
        return _solve_cvxopt(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose, structured=False)
    if solver == "sdpa":
        return _solve_sdpa(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose)
    solver = solver.removeprefix("picos-")  # picos-cvxopt: CVXOPT through PICOS (the generic reference path)
    try:
        import picos
    except ImportError as exc:  # pragma: no cover - picos is a core dependency
        raise SolveError("PICOS is not installed") from exc
    available = picos.available_solvers()
    if solver not in available:
        raise SolveError(
            f"solver {solver!r} is not installed (PICOS can use: {', '.join(available)})",
            hint="pip install the solver's package, or use the default --solver cvxopt",
        )
    return _solve_picos(sdp, solver, tol=tol, max_iterations=max_iterations, verbose=verbose)

"""The PICOS backend: the SDP as a ``picos.Problem`` handed to any solver PICOS knows (``qics``, ``smcp``,
``mosek``, ``scs``, ... and ``picos-NAME``); Sdp -> Solution."""

from __future__ import annotations

import time

import numpy as np

from lipdsl.errors import SolveError, TimeLimitError
from lipdsl.sdp.problem import Sdp
from lipdsl.solvers.solution import Solution, nonneg_indices, objective


def solve_picos(sdp: Sdp, *, solver: str, tol: float, max_iterations: int, verbose: bool) -> Solution:
    """Solve with PICOS's back-end ``solver`` (refused in words when PICOS cannot use it here)."""
    try:
        import picos
    except ImportError as exc:  # pragma: no cover - picos is a core dependency
        raise SolveError("PICOS is not installed") from exc
    available = picos.available_solvers()
    if solver not in available:
        from lipdsl.solvers.registry import SOLVERS

        known = SOLVERS.get(solver)
        raise SolveError(
            f"solver {solver!r} is not installed (PICOS can use: {', '.join(available)})",
            hint=(known.install + ", or use the default --solver cvxopt") if known is not None
            else "pip install the solver's package, or use the default --solver cvxopt",
        )
    return _solve_picos(sdp, solver, tol=tol, max_iterations=max_iterations, verbose=verbose)


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
    idx = nonneg_indices(sdp).tolist()
    problem.add_constraint(x[idx] >= 0)
    c = objective(sdp)
    nz = np.flatnonzero(c)
    problem.set_objective("min", sum(float(c[i]) * x[int(i)] for i in nz))  # rho (+ the frequency trace)
    return problem

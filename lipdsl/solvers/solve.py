"""Solve the SDP: Sdp -> Solution (what the solver claims; ``certify`` decides what is proven).

``solve(sdp, solver)`` looks the name up in the solver registry (``solvers.registry.SOLVERS``: ``cvxopt``,
the default, CVXOPT with lipdsl's structured KKT solver; ``cvxopt-generic``; ``hkm``, lipdsl's HKM
interior-point method; ``sdpa``; PICOS back-ends and ``picos-NAME``) and runs its backend, one module per
backend (``cvxopt_conelp``, ``hkm``, ``sdpa``, ``picos_backend``), within the command's deadline.
"""

from __future__ import annotations

from lipdsl import limits
from lipdsl.sdp.problem import Sdp
from lipdsl.solvers.registry import SOLVERS, lookup
from lipdsl.solvers.solution import Solution, converged, on_iteration

__all__ = ["solve", "Solution", "converged", "on_iteration", "SOLVERS"]


def solve(
    sdp: Sdp,
    solver: str = "cvxopt",
    *,
    tol: float = 1e-9,
    max_iterations: int = 100,
    verbose: bool = False,
    timeout: float | None = None,
    deadline: limits.Deadline | None = None,
    warm: Solution | None = None,
) -> Solution:
    """Solve ``min rho`` over the SDP with ``solver``; ``certify`` judges the point it returns.

    The time limit is ``deadline`` (the command's, ``limits.Deadline``), else ``timeout`` seconds from now,
    else the caller's active deadline (``limits.current()``). With one, the solver runs on a worker thread
    (``limits.run_within``): CVXOPT and HKM check it once per iteration and stop; a solver that stays in C
    (a PICOS back-end) is abandoned when it passes. Any thread may call this. ``warm``: a solution of the
    same variables under fewer LMIs to start from, for the backends that take one (``Backend.warm_start``;
    the others ignore it).

    Raises
    ------
    LipdslError
        ``solver`` is not a registered name (nor ``picos-NAME``): the message has a did-you-mean.
    SolveError
        The solver is not installed, failed without returning any point, reports the SDP infeasible or
        unbounded, or did not finish within the time limit (``TimeLimitError``).
    """
    backend = lookup(solver)
    if deadline is None:
        deadline = limits.current() if timeout is None else limits.Deadline.after(timeout)
    with limits.blas_threads(), deadline.active():  # (the KKT pools are shut down when the last user leaves)
        return limits.run_within(
            lambda: backend.function()(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose,
                                       **({"warm": warm} if warm is not None and backend.warm_start else {})),
            deadline, solver)

"""What every backend returns (``Solution``: the solver's claim, never a proof) and the per-iteration hook
the backends call for progress reports (``on_iteration``)."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Solution:
    """The solver's answer: its claimed status, ``rho`` (= L^2 of the scaled problem) and the point ``x``."""

    claimed_status: str
    rho: float | None
    x: np.ndarray | None
    solver: str
    seconds: float
    iterations: int | None = None
    log: tuple[str, ...] = field(default=())  # (an iteration log: HKM's)
    #: where the solver stopped: relative duality gap and the larger of the primal/dual residuals (CVXOPT,
    #: HKM)
    relative_gap: float | None = None
    residual: float | None = None
    #: the dual point by LMI name (CVXOPT: each 's' block of ``z``, and the 'l' part under ``None``), for a
    #: warm start of a re-solve with more LMIs (``cvxopt_conelp.warm_start``; kept for frequency-form SDPs,
    #: the ones the grid refinement solves again)
    duals: dict | None = field(default=None, compare=False, repr=False)
    #: what the backend did beyond one plain solve, in words (reports print them: ``solver: ...``)
    notes: tuple[str, ...] = ()

    def near_optimal(self, tol: float) -> bool:
        """Stopped without claiming optimality (e.g. CVXOPT's singular KKT ending) but within ``tol`` on the
        relative gap and the residuals: as good as converged, whatever the status says."""
        return (self.relative_gap is not None and self.residual is not None
                and abs(self.relative_gap) <= tol and self.residual <= tol)


def objective(sdp) -> np.ndarray:
    """What the solver minimises: ``Sdp.solver_objective`` (``rho``, plus the frequency-mode trace term),
    or the problem's own ``objective`` (the LipSDP baselines' problems)."""
    return (sdp.solver_objective if hasattr(sdp, "solver_objective") else sdp.objective)()


def nonneg_indices(sdp) -> np.ndarray:
    """The indices of ``x`` constrained ``>= 0`` (``sdp.nonneg``'s variables, in order): every backend's
    ``'l'`` cone or bound rows."""
    return np.concatenate([np.arange(v.offset, v.offset + v.dim) for v in sdp.nonneg]
                          + [np.zeros(0, dtype=int)]).astype(int)


def converged(status: str) -> bool:
    """Whether a solver's claimed status says it reached its optimality tolerance (CVXOPT, HKM, SDPA,
    PICOS)."""
    return status in ("optimal", "pdOPT", "closed-form") or status.startswith("optimal/")


#: ``hook(k)`` for the k-th iteration of the solves in this context (``on_iteration``).
_ITERATION_HOOK: contextvars.ContextVar = contextvars.ContextVar("lipdsl_iteration_hook", default=None)


@contextlib.contextmanager
def on_iteration(hook):
    """Call ``hook(k)`` at the k-th iteration of the solves run in this context (progress reports).

    CVXOPT factors the KKT system once for its starting point and once per iteration, and ``hook(k)`` comes
    before the k-th factorisation, so ``k`` runs from 1 to ``iterations + 1``, or ``iterations + 2`` when the
    solve ends on a singular KKT matrix (the factorisation that failed is counted too); lipdsl's HKM method
    calls it once per iteration. The hook runs on the solving thread and must be quick.
    """
    token = _ITERATION_HOOK.set(hook)
    try:
        yield
    finally:
        _ITERATION_HOOK.reset(token)


def iteration_hook():
    """The hook of the enclosing ``on_iteration`` context, or None."""
    return _ITERATION_HOOK.get()

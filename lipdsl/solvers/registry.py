"""The solver registry: every name ``--solver``, ``solve(sdp, solver)`` and the Python API accept, with its
backend (in the spirit of cvxpy's ``SOLVER_MAP_CONIC``).

A backend is a function ``run(sdp, *, tol, max_iterations, verbose) -> Solution`` in its own module of
``lipdsl.solvers``, named here as ``"module:function"`` and imported only when it is used (importing this
module loads no solver). PICOS back-ends share one function and differ by ``picos`` (PICOS's name); any
other PICOS solver is reachable as ``picos-NAME`` (``picos-cvxopt``: CVXOPT through PICOS, the generic
reference path). A backend returns what the solver *claims*; ``certify`` decides what is proven.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from dataclasses import dataclass

from lipdsl.errors import LipdslError


#: The solver's relative tolerance when none is given (``pipeline.solve_tolerance``; ``--tol``'s help):
#: ``EXACT_TOL``, except for an interior-point solve of the frequency form, which stops at ``FREQUENCY_TOL``:
#: its certificate repairs the grid by 0.1-4 % (docs/method.md §9), so the last iterations' precision never
#: reaches the bound. Measured on ``bench/wide.py``'s frequency-form nets (docs/performance.md): 2-7 fewer
#: iterations each, 10-22 % less time, every bound within +1e-6 of 1e-7's or below it.
EXACT_TOL = 1e-7
FREQUENCY_TOL = 1e-4


def tolerance_text(tol: float) -> str:
    """``tol`` as the help and the report write it: ``1e-4``, ``1e-7``."""
    return f"{tol:.0e}".replace("e-0", "e-")


@dataclass(frozen=True)
class Backend:
    """One solver name: where its backend lives, a line of help, how to install it, and its memory class."""

    name: str
    run: str  # "module:function" in lipdsl.solvers
    summary: str
    install: str
    #: Solves without CVXOPT's dense scaled copy of ``G`` (``(sum m_k^2) x n``): ``limits.solver_bytes``.
    structured: bool = False
    #: A first-order method (SCS): no Newton matrix, so neither the ``n^2`` memory of ``limits.solver_bytes``
    #: nor the variable limit ``--max-variables`` that stands for it applies.
    first_order: bool = False
    #: Accepts ``warm=`` (a solution of the same variables under fewer LMIs) to start from: the frequency
    #: grid's refined re-solves (``pipeline._refine``).
    warm_start: bool = False
    #: PICOS's name for the solver (PICOS back-ends only).
    picos: str | None = None

    def function(self):
        """The backend function (its module imported now), with ``solver=picos`` bound for PICOS ones."""
        module, name = self.run.split(":")
        fn = getattr(importlib.import_module(f"lipdsl.solvers.{module}"), name)
        return functools.partial(fn, solver=self.picos) if self.picos else fn


def _picos(name: str, what: str, install: str) -> Backend:
    return Backend(name, "picos_backend:solve_picos", f"{what} (through PICOS)", install, picos=name)


#: name -> backend; the order is the order of ``--help``.
SOLVERS: dict[str, Backend] = {b.name: b for b in (
    Backend("cvxopt", "cvxopt_conelp:solve_cvxopt",
            "CVXOPT's conelp with lipdsl's structured KKT solver (the default)",
            "pip install cvxopt (a dependency of lipdsl)", structured=True, warm_start=True),
    Backend("cvxopt-generic", "cvxopt_conelp:solve_generic", "CVXOPT's conelp with its own 'chol' KKT solver",
            "pip install cvxopt (a dependency of lipdsl)"),
    Backend("hkm", "hkm:solve_sdp", "lipdsl's HKM interior-point method (numpy/scipy, no SVD)",
            "part of lipdsl (numpy and scipy only)", structured=True),
    Backend("sdpa", "sdpa:solve_sdp", "SDPA through sdpa-python (in a child process)",
            "pip install sdpa-python"),
    _picos("qics", "QICS", "pip install qics"),
    _picos("smcp", "SMCP", "pip install smcp"),
    _picos("mosek", "MOSEK", "pip install mosek (and a MOSEK licence)"),
    _picos("mskfsn", "MOSEK's Fusion API", "pip install mosek (and a MOSEK licence)"),
    Backend("scs", "scs_backend:solve_sdp",
            "SCS's ADMM, called directly; frequency LMIs as complex PSD cones (first-order: looser, no "
            "Newton matrix; SCS through PICOS is picos-scs)", "pip install scs (or lipdsl[solvers])",
            first_order=True),
    _picos("clarabel", "Clarabel", "pip install clarabel"),
)}


def names() -> tuple[str, ...]:
    """The registered solver names, in order."""
    return tuple(SOLVERS)


def suggestion(name: str) -> str | None:
    """The registered name closest to ``name`` (for "did you mean"), or None."""
    close = difflib.get_close_matches(str(name), names(), n=1)
    return close[0] if close else None


def unknown_message(name: str) -> tuple[str, str]:
    """``(message, hint)`` for an unknown solver name: the did-you-mean and the names there are."""
    close = suggestion(name)
    mean = f" (did you mean {close!r}?)" if close else ""
    return f"unknown solver {name!r}{mean}", f"use one of {', '.join(names())} (or picos-NAME)"


def lookup(name: str) -> Backend:
    """The backend of ``name`` (a registered name, or ``picos-NAME`` for any PICOS solver).

    Raises ``LipdslError`` with a did-you-mean for a name that is neither.
    """
    if not isinstance(name, str):
        message, hint = unknown_message(repr(name))
        raise LipdslError(message, hint=hint)
    if name in SOLVERS:
        return SOLVERS[name]
    if name.startswith("picos-") and len(name) > len("picos-"):
        inner = name.removeprefix("picos-")
        return Backend(name, "picos_backend:solve_picos", f"{inner} through PICOS",
                       "see PICOS's documentation", picos=inner)
    message, hint = unknown_message(name)
    raise LipdslError(message, hint=hint)


def first_order(name: str) -> bool:
    """Whether ``name``'s backend is a first-order method (no Newton matrix; ``Backend.first_order``)."""
    backend = SOLVERS.get(name)
    return backend is not None and backend.first_order


def structured(name: str) -> bool:
    """Whether ``name``'s backend avoids the dense scaled ``G`` (unknown names: as a PICOS back-end)."""
    backend = SOLVERS.get(name)
    return backend is not None and backend.structured

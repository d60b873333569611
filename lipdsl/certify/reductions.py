"""Map a solution back to the LMIs' original form: (Sdp, Solution) -> Point, through the chain of reductions
the SDP was built with, each recording how to undo itself (cvxpy's ``Chain.invert``).

The SDP a solver sees differs from the LMIs that prove the bound in three ways, each undone here and nowhere
else, so that ``recheck.certify`` only ever sees a point of the original LMIs:

- ``Inverse``: variables solved in inverse form (``sdp.build``: ``Y = X^-1``, role ``"Xinv"``, and
  ``M = Lambda^-1``, role ``"lambdainv"``) are mapped back to ``X`` and ``Lambda``;
- ``StorageRecovery``: a frequency-domain solve has no storage matrix ``P`` for its gridded systems; they
  are recovered from Riccati equations (``storage.recover_point``, raising ``rho``, ``Lambda``, ``X`` as
  needed);
- ``Scaling``: ``lower`` divided each system's map by ``s_i = ||[C D]||_2`` and the network by ``factor``:
  the bound is ``sqrt(rho) * factor`` (rounded up), and the point of the unscaled LMIs is
  ``T_{i-1} P_i``, ``T_i Lambda_i``, ``T_i X_i``, ``rho prod_j s_j^2`` with ``T_i = prod_{j > i} s_j^2``
  (``certificate``'s module docstring).

``chain(sdp)`` reads what ``build_sdp`` recorded on the ``Sdp`` (variable roles, ``storage``, ``factor``)
and returns the reductions in the order they are undone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from lipdsl.model import lowered
from lipdsl.rigorous import mul_up, sqrt_up

if TYPE_CHECKING:  # (the certificate checker imports Scaling: no sdp or solver module at run time)
    from lipdsl.certify.storage import RecoveryCache
    from lipdsl.sdp.problem import Sdp, Variable
    from lipdsl.solvers.solution import Solution

#: Roles of variables solved in inverse form (``sdp.build``), undone by ``Inverse``.
INVERSE_ROLES = ("Xinv", "lambdainv")


class NotInvertible(ValueError):
    """The solver's ``Y`` is not positive definite, so ``X = Y^-1`` does not exist (``args[0]``: its name)."""


def solver_values(sdp: Sdp, x: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """``(rho, {name: value})`` of a decision vector of ``sdp`` as the solver left it (storage ``P`` of
    gridded systems zero when ``x`` has only the solver's ``sdp.n`` entries)."""
    if len(x) < sdp.n_total:
        x = np.concatenate([x, np.zeros(sdp.n_total - len(x))])
    rho = float(x[sdp.rho.offset])
    return rho, {v.name: v.value(x) for v in sdp.variables if v.role != "rho"}


@dataclass(frozen=True)
class Inverse:
    """Variables solved in inverse form: ``Y = X^-1`` (``"Xinv"``) and ``M = Lambda^-1`` (``"lambdainv"``)."""

    variables: tuple[Variable, ...]

    @classmethod
    def of(cls, sdp: Sdp) -> "Inverse":
        return cls(tuple(v for v in sdp.variables if v.role in INVERSE_ROLES))

    def invert(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``Y -> X = Y^-1`` (``NotInvertible`` unless ``Y > 0``), ``M -> Lambda = 1/M``; others unchanged."""
        out = dict(values)
        for v in self.variables:
            val = values[v.name]
            if v.role == "lambdainv":
                # M_i = 0 only for a neuron with no input (its Lambda_i is free): any large value serves
                floor = max(float(val.max(initial=0.0)), 1e-300) * 1e-12
                out[v.name] = 1.0 / np.maximum(val, floor)
            else:
                w, V = np.linalg.eigh((val + val.T) / 2)
                if w.size and w[0] <= 0:
                    raise NotInvertible(v.name)
                out[v.name] = (V / w) @ V.T
        return out

    def apply(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The forward map, back to the solved form: ``X -> Y = X^-1``, ``Lambda -> M = 1/Lambda``."""
        out = dict(values)
        for v in self.variables:
            out[v.name] = np.linalg.inv(values[v.name]) if v.role == "Xinv" else 1.0 / values[v.name]
        return out


@dataclass(frozen=True)
class StorageRecovery:
    """A frequency-domain solve: the storage ``P`` of the gridded systems, recovered (Riccati equations)."""

    sdp: Sdp
    #: what ``storage.refined_grids`` computed for the same solver point, if any
    cache: RecoveryCache | None = None

    def invert(self, point):
        """The point with every storage ``P`` filled in (``storage.recover_point``; a new ``Point``)."""
        from lipdsl.certify.storage import recover_point

        return recover_point(self.sdp, point, cache=self.cache)


@dataclass(frozen=True)
class Scaling:
    """``lower``'s scaling: each system's map divided by ``scales[i]``, the network's bound by ``factor``."""

    factor: float
    scales: tuple[float, ...]

    @classmethod
    def of(cls, network: lowered.Network) -> "Scaling":
        return cls(float(network.factor), tuple(s.scale for s in network.systems))

    def bound(self, rho: float) -> float:
        """``L = sqrt(rho) * factor``, rounded up (never below the certified value, never 0 for rho > 0)."""
        return mul_up(sqrt_up(rho), self.factor)

    def tails(self) -> list[float]:
        """``T_i = prod_{j > i} s_j^2`` by position in the system list (``T_{-1}`` first): the factors that
        turn system i's scaled LMI into the unscaled one (``certificate``'s module docstring)."""
        tail = [1.0] * (len(self.scales) + 1)
        for i in range(len(self.scales) - 1, -1, -1):
            tail[i] = tail[i + 1] * self.scales[i] ** 2
        return tail


@dataclass(frozen=True)
class Chain:
    """The reductions of one SDP, in the order ``invert`` undoes them (``Scaling`` is applied to the bound
    and the certificate file, not to the point ``certify`` checks: its LMIs are the scaled ones)."""

    sdp: Sdp
    inverse: Inverse
    storage: StorageRecovery | None
    scaling: Scaling

    def invert(self, solution: Solution, *, progress: Callable[[str], None] = lambda stage: None,
               seconds: dict | None = None):
        """The solver's point in the original form (a ``recheck.Point``): inverse forms undone, then the
        storage ``P`` recovered (timed into ``seconds["storage"]``). Raises ``NotInvertible``."""
        from lipdsl.certify.recheck import Point

        rho, values = solver_values(self.sdp, solution.x)
        point = Point.of(rho, self.inverse.invert(values), self.sdp)
        if self.storage is not None:
            t0 = time.perf_counter()
            progress("recovering P (Riccati)")
            point = self.storage.invert(point)
            if seconds is not None:
                seconds["storage"] = time.perf_counter() - t0
        return point

    def solved_form(self, point) -> np.ndarray:
        """``point`` as a decision vector of the SDP (the forward map of ``inverse``)."""
        values = self.inverse.apply(point.vars)
        x = np.zeros(self.sdp.n_total)
        for v in self.sdp.variables:
            x[v.slice] = point.rho if v.role == "rho" else v.pack(values[v.name])
        return x


def chain(sdp: Sdp, *, storage: bool = True, recovery_cache: RecoveryCache | None = None) -> Chain:
    """The reductions ``build_sdp`` applied to get ``sdp`` (``storage=False``: the storage ``P`` are taken
    from the solution as they are, e.g. a solution already through ``storage.recover_storage``;
    ``recovery_cache``: a ``storage.RecoveryCache`` of the same point for the storage recovery)."""
    recovery = StorageRecovery(sdp, recovery_cache) if storage and sdp.storage else None
    return Chain(sdp, Inverse.of(sdp), recovery,
                 Scaling(float(sdp.factor), tuple(s.scale for s in sdp.network.systems)))

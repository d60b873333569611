"""Run the pipeline: typed.Network -> Result (lower, build the SDP, solve, certify), with stage times.

The Python API the CLI uses::

    >>> from lipdsl.load import load_network
    >>> from lipdsl.api import solve_network
    >>> _, net = load_network("specs/ecg.lip")            # doctest: +SKIP
    >>> result = solve_network(net)                        # doctest: +SKIP
    >>> result.certificate.verified, round(result.certificate.lipschitz, 4)   # doctest: +SKIP
    (True, 109.123)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import typed
from .certify import Certificate, certify
from .lower import lower
from .lowered import Network as LoweredNetwork
from .sdp import Sdp, build_sdp
from .solve import Solution, solve


@dataclass(frozen=True)
class Result:
    """Everything a report needs: the certificate (the proof), the solver's claim, and how it was built."""

    network: typed.Network
    lowered: LoweredNetwork
    sdp: Sdp
    solution: Solution
    certificate: Certificate
    seconds: dict[str, float] = field(default_factory=dict)
    min_length: int | None = None

    @property
    def validity(self) -> str:
        """For which input lengths the bound holds, in words."""
        if not self.network.any_length:
            return f"inputs of shape {self.network.input_shape}"
        if any(s.op == "global_avg" for s in self.lowered.steps if hasattr(s, "op")):
            return f"every input length N >= {self.min_length}"
        return "every input length N (fully convolutional)"


def solve_network(net: typed.Network, *, solver: str = "cvxopt", tol: float = 1e-7, max_iterations: int = 100,
                  margin: float = 1e-11, verbose: bool = False, min_length: int | None = None,
                  lift: int = 1, seconds: dict[str, float] | None = None) -> Result:
    """Certified Lipschitz upper bound of ``net`` by the layer-wise dissipativity SDP.

    ``min_length``: for any-length inputs, the shortest input length the bound must cover (needed only by a
    global average pool). ``lift``: realize conv layers on blocks of ``lift`` samples (tighter, larger
    LMIs; see ``lipdsl.lower.lower``). ``seconds`` may carry earlier stage times (e.g. ``{"parse+check": ...}``); the stages run here are added.
    Raises ``LipdslError`` subclasses for unsupported networks or a solver that fails without a point; an
    uncertified point is *not* an exception: see ``result.certificate.verified``.
    """
    times = dict(seconds or {})
    t0 = time.perf_counter()
    low = lower(net, min_length=min_length, lift=lift)
    t1 = time.perf_counter()
    sdp = build_sdp(low)
    t2 = time.perf_counter()
    sol = solve(sdp, solver, tol=tol, max_iterations=max_iterations, verbose=verbose)
    t3 = time.perf_counter()
    cert = certify(sdp, sol, margin=margin)
    t4 = time.perf_counter()
    times.update({"lower": t1 - t0, "sdp": t2 - t1, "solve": t3 - t2, "certify": t4 - t3})
    return Result(net, low, sdp, sol, cert, times, min_length)

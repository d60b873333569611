"""Bounds the residual tests compare: the certified dissipative bound of a typed network (build, solve,
recover the storage of a frequency-form solve, certify), an empirical lower bound (largest Jacobian
norm over random inputs), and the check that the first is between the second and a naive product."""

from __future__ import annotations

import numpy as np

from lipdsl.certify.recheck import certify
from lipdsl.certify.storage import recover_storage
from lipdsl.lang import typed
from lipdsl.model.forward import jacobian
from lipdsl.model.lower import lower
from lipdsl.sdp.build import build_sdp
from lipdsl.solvers.solve import solve


def certified(net: typed.Network, **kw) -> float:
    """The certified bound of ``net`` (``build_sdp`` options in ``kw``); fails the test if not certified."""
    sdp = build_sdp(lower(net), **kw)
    sol = solve(sdp)
    if sdp.storage:
        sol = recover_storage(sdp, sol)
    cert = certify(sdp, sol)
    assert cert.verified, cert.reason
    return cert.lipschitz


def jacobian_lower(net: typed.Network, rng, count: int = 12) -> float:
    """The largest spectral norm of ``net``'s Jacobian at ``count`` random inputs of random scale."""
    shape = (net.input_shape.channels, net.input_shape.length)
    return max(np.linalg.norm(jacobian(net, rng.normal(size=shape) * rng.uniform(0.1, 3)), 2)
               for _ in range(count))


def sandwiched(net: typed.Network, rng, naive_bound: float, label) -> tuple[float, float, float]:
    """``(lower, certified, naive_bound)`` of ``net``, asserting ``jacobian_lower <= certified <=
    naive_bound`` (relative slack 1e-9 below, 1e-6 above; ``label`` names the case in a failure)."""
    lo, up = jacobian_lower(net, rng), certified(net)
    assert lo <= up * (1 + 1e-9), (label, lo, up)
    assert up <= naive_bound * (1 + 1e-6), (label, up, naive_bound)
    return lo, up, naive_bound

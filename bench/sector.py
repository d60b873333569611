"""The sector lower bound of docs/method.md §3 ("Where the ResNet's factor 14 comes from"):

    python bench/sector.py SPEC [--seconds 60] [--length N] [--seed 0]

``max_D ||J(D)||`` over the linear networks in which each neuron's activation is a fixed gain ``d_q`` in its
slope interval ``[alpha, beta]``: each satisfies every sector constraint, so the value of every SDP with
slope multipliers (LipSDP-Neuron on the unrolled graph, lipdsl's LMIs) is at least any ``||J(D)||`` found.
Coordinate sign ascent on the unrolled graph (``baselines.unrolled.unroll_graph``): with ``sigma = u'J v``
the top singular triple, ``d sigma / d d_q = g_q p_q`` (``p`` the pre-activations along ``v``, ``g`` the
adjoint of ``u``), and ``sigma`` is convex in each ``d_q``, so ``d_q = beta`` where that is positive and
``alpha`` elsewhere; restarts from random vertices until the time is up. Prints the best value (a lower
estimate of the maximum, not a bound on the network's Lipschitz constant).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lipdsl.baselines.unrolled import unroll_graph
from lipdsl.lang.load import load_network


def sector_lower_bound(net, seconds: float, length: int | None = None, seed: int = 0) -> tuple[float, int]:
    """``(best ||J(D)||, starts)`` after ``seconds`` of sign ascent (the first start: every gain at beta)."""
    g = unroll_graph(net, length)
    n0 = g.n0
    Ms = [U.matrix.tocsr() for U in g.hidden]
    MT = [M.T.tocsr() for M in Ms]
    lo = [U.slope[0] for U in g.hidden]
    hi = [U.slope[1] for U in g.hidden]
    offs = np.concatenate([[0], np.cumsum([n0] + [M.shape[0] for M in Ms])])
    outT = g.out.T.tocsr()

    def pre_activations(v, d):
        z = np.zeros(offs[-1])
        z[:n0] = v
        pre = []
        for k, M in enumerate(Ms):
            p = M @ z[:offs[k + 1]]
            pre.append(p)
            z[offs[k + 1]:offs[k + 2]] = d[k] * p
        return pre

    def adjoint(u, d):
        gz = outT @ u
        gw = [None] * len(Ms)
        for k in reversed(range(len(Ms))):
            gw[k] = gz[offs[k + 1]:offs[k + 2]].copy()
            gz[:offs[k + 1]] += MT[k] @ (d[k] * gw[k])
        return gz[:n0], gw

    rng = np.random.default_rng(seed)
    m = g.out.shape[0]
    best, starts, t0 = 0.0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        d = [np.where(rng.random(M.shape[0]) < (1.0 if starts == 0 else rng.uniform(0.2, 0.9)), b, a)
             for M, a, b in zip(Ms, lo, hi)]
        starts += 1
        prev = -1.0
        for _ in range(50):
            J = np.stack([adjoint(e, d)[0] for e in np.eye(m)])
            U, s, Vt = np.linalg.svd(J, full_matrices=False)
            if s[0] <= prev * (1 + 1e-9):
                break
            prev = float(s[0])
            pre, (_, gw) = pre_activations(Vt[0], d), adjoint(U[:, 0], d)
            d = [np.where(gk * pk > 0, b, a) for gk, pk, a, b in zip(gw, pre, lo, hi)]
        best = max(best, prev)
    return best, starts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    _, net = load_network(a.spec)
    best, starts = sector_lower_bound(net, a.seconds, a.length, a.seed)
    print(f"{a.spec}: sector lower bound {best:.6g} ({starts} starts in {a.seconds:g} s)")


if __name__ == "__main__":
    main()

"""Empirical lower bound: typed.Network -> LowerBound (max of ||J(u)||_2 over sampled and ascended inputs)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lipdsl import limits

from lipdsl.lang import typed
from lipdsl.lang.check import shapes_at
from lipdsl.errors import LipdslError
from lipdsl.model.forward import _activation_functions, linearize

#: Input length used for nets declared ``input c x *`` when no ``length`` is given.
DEFAULT_LENGTH = 64


@dataclass(frozen=True)
class LowerBound:
    """``value = ||J(argmax_input)||_2 <= L``: a Lipschitz lower bound witnessed by one input."""

    value: float
    argmax_input: np.ndarray  # (c, N) or flat, as the network takes it
    evaluations: int  # exact Jacobian norms computed
    seconds: float
    starts: int  # starts completed (fewer than asked if the time budget ran out)
    length: int | None = None


def _input_shape(net: typed.Network, length: int | None) -> tuple[int, ...]:
    shp = net.input_shape
    if shp.flat:
        return (shp.channels,)
    if shp.length is not None:
        if length is not None and length != shp.length:
            raise LipdslError(
                f"the network's input length is {shp.length}, got length={length}", span=net.span
            )
        return (shp.channels, shp.length)
    return (shp.channels, int(length or DEFAULT_LENGTH))


def search_cost(net: typed.Network, shape: tuple[int, ...], starts: int,
                oversample: int) -> tuple[float, float]:
    """Peak bytes of ``lower_bound`` at input ``shape``, and the floating-point operations of one Jacobian.

    Bytes: the scored inputs (``oversample * starts`` of ``n_in``), the tangents pushed through the widest
    layer to form a Jacobian (``min(n_in, n_out)`` of them, forward and backward), and the dense Jacobian
    with its SVD (``n_out x n_in``, a few copies). Operations: ``min(n_in, n_out)`` tangents through every
    conv (``2 c_out c_in k N_out`` each) and dense layer, and the SVD."""
    n_in = int(np.prod(shape, dtype=float))
    length = None if len(shape) == 1 else shape[1]
    widest = float(n_in)
    per_tangent = 0.0
    for L, c, n in shapes_at(net, length):
        if isinstance(L, typed.Conv1d):
            per_tangent += 2.0 * L.c_out * L.c_in * L.kernel * max(n, 0)
        elif isinstance(L, typed.Dense):
            per_tangent += 2.0 * L.n_in * L.n_out
        widest = max(widest, float(c) * (n or 1))
    n_out = float(c) * (n or 1)
    batch = min(n_in, n_out)
    memory = limits.BASE_BYTES + 8.0 * (oversample * starts * n_in + 4.0 * batch * widest
                                        + 4.0 * n_in * n_out)
    return memory, batch * per_tangent + 4.0 * n_in * n_out * batch


def _top_triple(J: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(sigma, v, w)`` with ``J w = sigma v``, the largest singular value and its unit vectors."""
    U, S, Vt = np.linalg.svd(J, full_matrices=False)
    return float(S[0]), U[:, 0], Vt[0]


def _sigma(net, u) -> float:
    """Exact ``||J(u)||_2`` of the true network."""
    return float(np.linalg.norm(linearize(net, u).matrix(), 2))


def _ascent(net, u, steps, tau_range, deadline, record):
    """Ascend ``sigma_max(J_tau(u))`` of the smooth surrogate, recording the exact norm at every iterate.

    ``d sigma/du = grad_u (v^T J_tau(u) w) = (J_tau(u + h w)^T v - J_tau(u - h w)^T v) / (2h) + O(h^2)``
    for the top singular pair ``(v, w)`` (exact derivative of a simple singular value). Steps are normalised
    to a fraction ``eta`` of ``||u||``; ``eta`` halves when the surrogate value drops.
    ``tau`` (relative to each
    activation input's RMS) is annealed geometrically from ``tau_range[0]`` to ``tau_range[1]``.
    """
    eta = 0.2
    prev = -np.inf

    def stop() -> bool:  # (checked between the Jacobians of a step: each may take seconds on long inputs)
        return time.perf_counter() > deadline or limits.current().expired

    for it in range(steps):
        if stop():
            return
        rel = tau_range[0] * (tau_range[1] / tau_range[0]) ** (it / max(steps - 1, 1))
        base = linearize(net, u)
        record(u, float(np.linalg.norm(base.matrix(), 2)))
        if stop():
            return
        taus = [rel * max(st.rms, 1e-12) for st in base.activation_steps]
        lin = linearize(net, u, surrogate_tau=taus)
        s, v, w = _top_triple(lin.matrix())
        if stop():
            return
        if s < prev:
            eta /= 2
        prev = s
        norm_u = np.linalg.norm(u) + 1e-12
        h = 1e-4 * rel * norm_u
        pair = linearize(net, np.stack([u + h * w, u - h * w]), batch=True, surrogate_tau=taus)
        gv = pair.vjp(np.stack([v, v]))
        g = (gv[0] - gv[1]) / (2 * h)
        gn = np.linalg.norm(g)
        if not np.isfinite(gn) or gn == 0:
            return
        u = u + eta * norm_u * g / gn
    if not stop():
        record(u, _sigma(net, u))


def lower_bound(
    net: typed.Network,
    *,
    starts: int = 32,
    seed: int = 0,
    time_budget: float = 20.0,
    length: int | None = None,
    steps: int = 30,
    oversample: int = 8,
    progress: Callable[[int, int, float], None] | None = None,
) -> LowerBound:
    """``max_u ||J(u)||_2`` over random starts followed by gradient ascent: a lower bound on the ℓ2 Lipschitz
    constant (``||J(u)||_2 <= L`` wherever ``f`` is differentiable).

    ``oversample * starts`` Gaussian inputs at log-uniform scales in ``[0.1, 10]`` are scored, and the best
    ``starts`` of them are ascended (at most a quarter of the budget goes to scoring). The ascent follows
    ``sigma_max(J(u))``; for piecewise-linear activations (whose Jacobian is locally constant) it follows a
    smoothed surrogate ``phi_tau`` instead and anneals ``tau -> 0``, so it moves towards activation patterns
    with a larger gain; every iterate is scored with the exact Jacobian of the true network.

    Parameters
    ----------
    starts : int
        Number of random starts (fewer are done if ``time_budget`` seconds run out; at least one is done).
    seed : int
        Seed of ``numpy.random.default_rng``; the result is reproducible for a given seed when the budget
        does not cut the search short.
    length : int, optional
        Input length for a network declared ``input c x *`` (default ``DEFAULT_LENGTH``).
    progress : callable, optional
        Called as ``progress(starts_done, starts, best_value)`` after every start.

    Raises
    ------
    LipdslError
        If an activation has no known function (only a slope bound).
    """
    t0 = time.perf_counter()
    for L in typed.flat_layers(net.layers):
        if isinstance(L, typed.Activation):
            _activation_functions(L)  # raises for activations known only by their slope
    shape = _input_shape(net, length)
    memory, flops = search_cost(net, shape, starts, oversample)
    what = f"the lower bound's search on inputs of shape {' x '.join(map(str, shape))}"
    fitting = [s for s in (16, 8, 4, 2, 1) if s < starts
               and search_cost(net, shape, s, oversample)[0] <= limits.available_memory()]
    if net.any_length:
        hint = "give a shorter --length (each Jacobian is a dense outputs x inputs matrix)"
    elif fitting:
        hint = f"give fewer --starts (e.g. --starts {fitting[0]}: {oversample} inputs are kept per start)"
    else:
        hint = "the input is too large for dense Jacobians; the upper-bound methods do not need them"
    limits.require_memory(memory, f"{what} ({starts} starts)", hint=hint, span=net.span)
    with limits.current().earlier(time_budget + limits.SEARCH_GRACE).active():
        limits.require_time(flops, f"one Jacobian in {what}", span=net.span,
                            hint="give a shorter --length" if net.any_length else
                            "the input is too large for dense Jacobians; the upper-bound methods do not need "
                            "them (or give a larger --time-budget)")
    # the search stops itself at its budget, also inside the first ascent (the CLI's hard deadline is
    # SEARCH_GRACE later: time for the step in progress)
    hard = limits.current().earlier(time_budget)
    with hard.active():
        rng = np.random.default_rng(seed)
        deadline = t0 + time_budget
        best = {"value": -1.0, "u": None, "n": 0}

        def record(u, s):
            best["n"] += 1
            if s > best["value"]:
                best["value"], best["u"] = s, u.copy()

        # Phase 1: score `oversample * starts` random inputs (Gaussian, log-uniform scale in [0.1, 10]).
        n_in = int(np.prod(shape))
        pool, scores = [], []
        for j in range(oversample * starts):
            if j > 0 and (time.perf_counter() > t0 + time_budget / 4 or hard.expired):
                break
            u = 10.0 ** rng.uniform(-1, 1) * rng.standard_normal(n_in)
            pool.append(u)
            scores.append(_sigma(net, u))
            record(u, scores[-1])
        order = np.argsort(scores)[::-1]
        # Phase 2: ascend from the best of them.
        done = 0
        for i in range(starts):
            if i > 0 and time.perf_counter() > deadline:
                break
            _ascent(net, pool[order[i % len(order)]], steps, (0.5, 0.005), deadline if i > 0 else np.inf,
                    record)
            done += 1
            if progress is not None:
                progress(done, starts, best["value"])
        return LowerBound(
            best["value"],
            best["u"].reshape(shape),
            best["n"],
            time.perf_counter() - t0,
            done,
            None if net.input_shape.flat else shape[-1],
        )

"""Step 3 of the storage recovery: (system, multipliers, weights) -> the storage matrix ``P`` from the
stabilizing solution of the system's Riccati equation (structured doubling; QZ for small systems or as the
fallback). See ``lipdsl.certify.storage`` for where it is used and why ``M(P) >= shrink I``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.linalg

from lipdsl import limits
from lipdsl.certify.recheck import system_matrix
from lipdsl.model import lowered
from lipdsl.model.realize import shift_structure
from lipdsl.solvers.cvxopt_kkt import kkt_threads, thread_map

#: Doubling steps: the iteration converges quadratically when ``Phi > 0`` by a clear margin; at the
#: solver's optimum ``Phi`` is singular at some frequencies, the symplectic pencil has eigenvalues next to
#: the unit circle and the steps stall at a rounding floor (``~1e-4`` relative at 32 channels): the
#: doubling stops after ``DOUBLING_STALL`` steps without progress and keeps its best iterate.
DOUBLING_STEPS = 60
DOUBLING_STALL = 3
#: A doubling solution whose relative Riccati residual exceeds this goes to the QZ method as well, and so
#: does every system with at most ``QZ_STATES`` states (QZ is cheap there, and near the unit circle its
#: residual is a few times smaller); the solution with the smaller residual is kept.
RICCATI_RESIDUAL = 1e-6
QZ_STATES = 64
#: ... but never for more states than this: QZ is O(nx^3) with a large constant (5.5 s at 256 states, about
#: 100 s at 1024: a dilation-16 layer of 32 channels); there a poor doubling solution is retried with a larger
#: margin instead (``_raise_chain``), which the doubling solves better.
QZ_MAX_STATES = 256


def riccati_residual(A, B, Q, R, S, X) -> float:
    """``|A'XA - X - (A'XB + S)(R + B'XB)^-1 (B'XA + S') + Q|_F / max(|Q|_F, |X|_F)``."""
    K = A.T @ X @ B + S
    E = A.T @ X @ A - X - K @ np.linalg.solve(R + B.T @ X @ B, K.T) + Q
    return float(np.linalg.norm(E) / max(np.linalg.norm(Q), np.linalg.norm(X), 1e-300))


def riccati_doubling(A, B, Q, R, S) -> np.ndarray:
    """The stabilizing solution of ``A'XA - X - (A'XB + S)(R + B'XB)^-1 (B'XA + S') + Q = 0`` by the
    structured doubling algorithm (Chu, Fan, Lin 2005), ``R`` invertible.

    With the cross term eliminated (``A0 = A - B R^-1 S'``, ``H0 = Q - S R^-1 S'``, ``G0 = B R^-1 B'``) the
    equation is ``X = A0' X (I + G0 X)^-1 A0 + H0``, and with ``W_j = I + G_j H_j``

        A_{j+1} = A_j W_j^-1 A_j,  G_{j+1} = G_j + A_j W_j^-1 G_j A_j',  H_{j+1} = H_j + A_j' H_j W_j^-1 A_j,

    ``H_j -> X`` quadratically (the closed loop's eigenvalues squared each step). Stops when ``H`` changes by
    less than 1e-14 relative, or (eigenvalues at the unit circle: no progress) after ``DOUBLING_STALL``
    steps without a smaller change; returns the ``H`` after the smallest change.
    """
    RS = np.linalg.solve(R, S.T)
    Aj = A - B @ RS
    Hj = Q - S @ RS
    Gj = B @ np.linalg.solve(R, B.T)
    Hj, Gj = (Hj + Hj.T) / 2, (Gj + Gj.T) / 2
    eye = np.eye(len(A))
    best, best_change, stalled = Hj, np.inf, 0
    threads = min(2, kkt_threads())
    for _ in range(DOUBLING_STEPS):
        limits.checkpoint("storage recovery")
        Wj = eye + Gj @ Hj
        if not np.all(np.isfinite(Wj)):
            raise np.linalg.LinAlgError("the doubling iteration diverged")

        def next_g(Aj=Aj, Gj=Gj, Wj=Wj):  # G_{j+1} = G_j + A_j W_j^-1 G_j A_j'
            return Gj + Aj @ np.linalg.solve(Wj, Gj) @ Aj.T

        def next_a_h(Aj=Aj, Hj=Hj, Wj=Wj):  # A_{j+1} = A_j W_j^-1 A_j,  H_{j+1} = H_j + A_j' H_j W_j^-1 A_j
            WA = np.linalg.solve(Wj, Aj)
            return Aj @ WA, Hj + Aj.T @ (Hj @ WA)

        # the two chains on two threads (numpy releases the GIL); the same operations either way
        G_next, (Aj, H_next) = thread_map(lambda step: step(), [next_g, next_a_h], threads)
        G_next, H_next = (G_next + G_next.T) / 2, (H_next + H_next.T) / 2
        change = float(np.linalg.norm(H_next - Hj) / max(np.linalg.norm(H_next), 1e-300))
        Hj, Gj = H_next, G_next
        if not np.isfinite(change):
            raise np.linalg.LinAlgError("the doubling iteration diverged")
        if change < best_change:
            best, best_change, stalled = Hj, change, 0
        else:
            stalled += 1
        if change < 1e-14 or stalled >= DOUBLING_STALL:
            break
    return best


def undilated(sys):
    """``(system, stage, chain)`` when ``sys`` is a delay line of ``L = g s`` stages of its ``nu`` inputs
    (``model.realize.shift_structure``: stage ``j`` holds the input of lag ``L - j``) whose taps are zero at
    every lag that is not a multiple of ``g > 1`` (a dilated conv): the undilated system (``s`` stages, the
    taps at lags ``g, 2g, .., L``), and for each stage of ``sys`` the stage of the undilated system and the
    chain (lag mod ``g``) it belongs to. None otherwise (residual blocks included)."""
    ss = sys.ss
    nx, nu = ss.nx, ss.nu
    if sys.internal or not nx or not nu or nx % nu:
        return None
    L = nx // nu
    A, B = shift_structure(nu, L + 1)
    if not (np.array_equal(ss.A, A) and np.array_equal(ss.B, B)):
        return None
    lags = L - np.arange(L)  # of the stages
    blocks = ss.C.reshape(len(ss.C), L, nu)
    used = np.flatnonzero(np.any(blocks != 0, axis=(0, 2)))
    g = math.gcd(L, *(int(a) for a in lags[used]))
    if g <= 1:
        return None
    s = L // g
    A0, B0 = shift_structure(nu, s + 1)
    C0 = blocks[:, ::g].reshape(len(ss.C), s * nu)  # stages 0, g, 2g, ..: lags L, L - g, .., g
    small = dataclasses.replace(sys, ss=lowered.StateSpace(A0, B0, C0, ss.D))
    chain = (lags - 1) % g
    stage = s - (lags - 1 - chain) // g - 1  # lag chain + 1 + (m - 1) g is the undilated lag m, stage s - m
    return small, stage, chain


def spread_storage(P0: np.ndarray, stage: np.ndarray, chain: np.ndarray, nu: int) -> np.ndarray:
    """The storage of the dilated system from the undilated one's ``P0`` (``undilated``): ``V(x) = sum_r
    V0(x_r)`` over the ``g`` chains ``x_r`` (the inputs of lags ``r + 1, r + 1 + g, ..``), each read as the
    undilated state. One step moves every chain into the next and only the chain of lags ``g, 2g, ..`` meets
    the taps, so ``V(x) - V(x+)`` is the undilated ``V0(x_g) - V0(x_g+)``: the dilated LMI is the undilated
    one on that chain's states and zero on the others."""
    s = len(P0) // nu
    blocks = P0.reshape(s, nu, s, nu)[stage][:, :, stage]  # (L, nu, L, nu)
    blocks = blocks * (chain[:, None] == chain[None, :])[:, None, :, None]
    return blocks.reshape(len(stage) * nu, len(stage) * nu)


def storage_matrix(sys, lam, X_in: np.ndarray, X_out: np.ndarray, inner=(),
                   shrink: float = 0.0) -> np.ndarray:
    """``P`` from the stabilizing solution of the Riccati equation (module docstring, step 3): by doubling,
    and by QZ too for small systems or when the doubling's residual is above ``RICCATI_RESIDUAL`` (the
    smaller residual wins). ``inner``: a residual block's internal multipliers. ``shrink``: solve it for
    ``M(P) - shrink I`` instead, so that ``M(P) >= shrink I`` (a strictly feasible LMI whose rounding
    ``certify`` need not repair; it exists when ``Phi`` has a margin of about ``k shrink``).

    A dilated system (``undilated``: ``L = g s`` stages, taps every ``g``) is solved on its undilated
    system (``s`` stages: g^3 times less work; a dilation-16 layer of 32 channels has 1,024 states, 64
    undilated) and spread over its chains (``spread_storage``), plus ``shrink diag(1, 2, .., L) (x) I`` on
    the stages: with ``E`` that diagonal, ``x'Ex - x+'Ex+ = shrink (|x|^2 - L |u|^2)``, so the undilated
    LMI taken with ``(L + 1) shrink`` gives ``M(P) >= shrink I`` on every state, as the direct solution."""
    nx = sys.ss.nx
    parts = undilated(sys)  # (None for a residual block, the only system with ``inner`` multipliers)
    if parts is not None:
        small, stage, chain = parts
        L, nu = len(stage), sys.ss.nu
        try:
            P0 = storage_matrix(small, lam, X_in, X_out, shrink=(L + 1) * shrink)
        except (np.linalg.LinAlgError, ValueError):
            P0 = None  # (the whole delay line's equation below)
        if P0 is not None:
            return spread_storage(P0, stage, chain, nu) + np.diag(
                shrink * np.repeat(np.arange(1.0, L + 1), nu))
    M0 = system_matrix(sys, np.zeros((nx, nx)), lam, X_in, X_out, inner)
    if shrink:
        M0 = M0 - shrink * np.eye(len(M0))
    Q, S, R = M0[:nx, :nx], M0[:nx, nx:], M0[nx:, nx:]
    B_ = np.zeros((nx, R.shape[0]))
    B_[:, : sys.ss.nu] = sys.ss.B
    candidates = []
    try:
        X = riccati_doubling(sys.ss.A, B_, Q, R, S)
        candidates.append((riccati_residual(sys.ss.A, B_, Q, R, S, X), 0, X))
    except (np.linalg.LinAlgError, ValueError):
        pass
    poor = not candidates or not candidates[0][0] <= RICCATI_RESIDUAL
    if nx <= QZ_STATES or (nx <= QZ_MAX_STATES and poor):
        X = scipy.linalg.solve_discrete_are(sys.ss.A, B_, Q, R, s=S)
        candidates.append((riccati_residual(sys.ss.A, B_, Q, R, S, X), 1, X))
    candidates = [c for c in candidates if np.isfinite(c[0])] or candidates
    X = min(candidates, key=lambda c: (c[0], c[1]))[2]
    return -(X + X.T) / 2

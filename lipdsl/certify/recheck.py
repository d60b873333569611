"""Certify a solver's point: (Sdp, Solution) -> Certificate (LMIs rebuilt in numpy, repaired, verified).

The LMIs are rebuilt from the systems' ``(A, B, C, D)`` with the closed-form blocks (independently of the
sparse assembly in ``sdp``). An interior-point solver returns a point whose LMIs hold only up to its
tolerance (minimum eigenvalues around -1e-10), so the point is repaired, from the output back to the input:
for a system whose output weight was raised by ``t`` (by the repair of the system after it) and whose LMI
has ``lambda_min = -e0``, with ``e = max(e0, 0) + margin`` and ``E = [C D]``:

    Lambda += eta I,  eta = t + e;        P += tau G,  tau = e + eta (alpha^2 + beta^2) ||E||^2;
    X_in += t_in I,   t_in = (k-1) tau + e + eta (alpha^2 + beta^2) ||E||^2,

where ``G = sum_j (A')^j A^j`` solves ``G - A'GA = I`` (``A`` is nilpotent: FIR, also when lifted). For the
FIR shift, ``G = diag(1, ..., k-1) (x) I``, ``A'GB = 0`` and ``B'GB = (k-1) I``. When ``K = A'GB != 0`` (a
lifted system), ``tau`` is doubled and ``t_in`` gets ``tau ||B'GB|| + tau^2 ||K||^2 / (tau - e - q)``
instead, with ``q = eta (alpha^2 + beta^2) ||E||^2``. The change of the LMI is then ``>= e I`` by a Schur
complement, so the repaired LMI is positive semidefinite with margin. ``X_in`` is the previous system's
output weight (repaired next) or, for the first system, ``rho I``: the certified bound is
``sqrt(rho + t_in) * factor``. A linear system (no
activation) uses ``eta = 0`` and ``t ||E||^2`` in place of ``eta (alpha^2 + beta^2) ||E||^2``. Side
conditions (``lambda >= 0``, ``P >= 0`` where not implied, ``X >= 0`` before pooling) are enforced too.
Finally every LMI is recomputed at the repaired point and its minimum eigenvalue must be at least
``16 m eps ||M||`` (a bound on the eigenvalue solver's rounding error) for the bound to be called certified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lipdsl.certify.reductions import INVERSE_ROLES, Inverse, NotInvertible, chain, solver_values
from lipdsl.model import lowered
from lipdsl.sdp.problem import Link, Sdp, Weight
from lipdsl.solvers.solution import Solution

EPS = np.finfo(float).eps


def system_matrix(sys: lowered.System, P, lam, X_in: np.ndarray, X_out: np.ndarray, inner=()) -> np.ndarray:
    """The LMI matrix of one system (sdp module docstring), from its state space and multipliers.

    ``inner``: the multiplier vectors of a residual block's internal activations (``System.internal``);
    each pair ``(v_j, w_j)`` adds ``2ab C_j'L_jC_j``, ``-(a+b) C_j'L_j S_j``, ``2 S_j'L_jS_j`` with
    ``v_j = C_j xi`` and ``w_j = S_j xi`` over ``xi = (x, u, w)`` (docs/method.md, residual blocks).
    """
    ss = sys.ss
    A, B, C, D = ss.A, ss.B, ss.C, ss.D
    nx, nu = ss.nx, ss.nu
    AB = np.hstack([A, B])
    E = np.hstack([C, D])
    top = np.zeros((nx + nu, nx + nu))
    if nx:
        top[:nx, :nx] += P
        top -= AB.T @ P @ AB
    top[nx : nx + sys.n_in, nx : nx + sys.n_in] += X_in
    r = 0
    for act, lj in zip(sys.internal, inner):
        Ej = E[r : r + act.n]
        col = nx + sys.n_in + r
        cross = -(act.alpha + act.beta) * (Ej.T * lj)  # -(a+b) E_j' L_j, into the columns of w_j
        top += 2 * act.alpha * act.beta * (Ej.T * lj) @ Ej
        top[:, col : col + act.n] += cross
        top[col : col + act.n, :] += cross.T
        top[col : col + act.n, col : col + act.n] += 2 * np.diag(lj)
        r += act.n
    E = E[r:]
    if sys.slope is None:
        top -= E.T @ X_out @ E
        return (top + top.T) / 2
    alpha, beta = sys.slope
    L = np.diag(lam)
    top += 2 * alpha * beta * (E.T @ L @ E)
    cross = -(alpha + beta) * (E.T @ L)
    M = np.block([[top, cross], [cross.T, 2 * L - X_out]])
    return (M + M.T) / 2


@dataclass(frozen=True)
class LmiCheck:
    """One LMI at the solver's point and at the repaired point (eigenvalues relative to ``||M||``)."""

    name: str
    size: int
    min_eig_solver: float
    min_eig_certified: float
    threshold: float
    ok: bool


@dataclass(frozen=True)
class Certificate:
    """What was proven: ``lipschitz`` is an upper bound iff ``verified``; ``claimed_status`` is the solver's
    word."""

    verified: bool
    lipschitz: float | None
    rho: float | None
    lipschitz_solver: float | None
    rho_solver: float | None
    claimed_status: str
    factor: float
    checks: tuple[LmiCheck, ...] = field(default=())
    reason: str = ""
    #: the certified point in the LMIs' original form (``"rho"`` and each variable's name -> its value:
    #: ``X`` and ``Lambda`` mapped back from ``Y = X^-1``, ``M = Lambda^-1``), for ``lipdsl.certificate``
    point: dict | None = field(default=None, repr=False)

    @property
    def inflation(self) -> float | None:
        """Relative increase of the bound made by the repair (certified / solver - 1)."""
        if self.lipschitz is None or not self.lipschitz_solver:
            return None
        return self.lipschitz / self.lipschitz_solver - 1.0


def _min_eig(M: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(M)[0]) if M.size else 0.0


def _norm(M: np.ndarray) -> float:
    return float(np.linalg.norm(M, 2)) if M.size else 0.0


def _stein_gramian(A: np.ndarray) -> np.ndarray:
    """``G = sum_j (A')^j A^j``, the solution of ``G - A'GA = I`` for a nilpotent ``A`` (``G >= I``)."""
    n = A.shape[0]
    G = np.eye(n)
    M = np.eye(n)
    for _ in range(n):
        M = A.T @ M @ A
        if not M.any():
            return G
        G += M
    raise ValueError("the state matrix is not nilpotent")  # pragma: no cover - FIR realizations are


class Point:
    """Mutable multiplier values of every link in the LMIs' original form, so the repair can shift them.

    ``Point(sdp, x)``: a decision vector of ``sdp`` mapped back through ``reductions.Inverse`` (``Y = X^-1``,
    ``M = Lambda^-1`` undone; raises ``reductions.NotInvertible``); ``Point.of``: values already in the
    original form (``reductions.Chain.invert``). Either way ``rho``, ``lambda`` and diagonal ``X`` are
    clipped to their sign constraints.
    """

    def __init__(self, sdp: Sdp, x: np.ndarray):
        rho, values = solver_values(sdp, x)
        self._set(rho, Inverse.of(sdp).invert(values), sdp)

    @classmethod
    def of(cls, rho: float, values: dict[str, np.ndarray], sdp: Sdp) -> "Point":
        point = cls.__new__(cls)
        point._set(rho, values, sdp)
        return point

    def _set(self, rho: float, values: dict[str, np.ndarray], sdp: Sdp) -> None:
        self.rho = max(float(rho), 0.0)
        self.vars = {}
        for v in sdp.variables:
            if v.role == "rho":
                continue
            val = values[v.name]
            if v.role == "lambda":
                val = np.maximum(val, 0.0)
            elif v.role not in INVERSE_ROLES and v.structure == "diagonal":
                val = np.diag(np.maximum(np.diag(val), 0.0))
            self.vars[v.name] = np.array(val, dtype=float)

    def vector(self, sdp: Sdp) -> np.ndarray:
        """The point as a decision vector of ``sdp`` (``Y = X^-1`` and ``M = Lambda^-1`` mapped back)."""
        return chain(sdp, storage=False).solved_form(self)

    def weight(self, w: Weight) -> np.ndarray:
        if w.kind == "const":
            return w.constant
        if w.kind == "rho":
            return self.rho * np.eye(w.n)
        X = self.vars[w.variable.name]
        return np.kron(X, np.eye(w.kron)) if w.kron > 1 else X

    def matrix(self, link: Link) -> np.ndarray:
        P = self.vars[link.P.name] if link.P is not None else None
        lam = self.vars[link.lam.name] if link.lam is not None else None
        inner = [self.vars[v.name] for v in link.inner]
        return system_matrix(link.system, P, lam, self.weight(link.w_in), self.weight(link.w_out), inner)

    def scale_weight(self, w: Weight, f: float) -> None:
        if f == 1 or w.kind == "const":
            return
        if w.kind == "rho":
            self.rho *= f
        else:
            self.vars[w.variable.name] = self.vars[w.variable.name] * f

    def shift_weight(self, w: Weight, t: float) -> None:
        if t == 0 or w.kind == "const":
            return
        if w.kind == "rho":
            self.rho += t
        else:
            n = w.variable.n
            self.vars[w.variable.name] = self.vars[w.variable.name] + t * np.eye(n)


def _term_scale(point: "Point", link: Link) -> float:
    """Sum of the norms of the terms added up in a link's LMI (``P``, ``A'PA``, ``X_in``, ``E'X_out E``,
    the multiplier blocks): the rounding of the computed ``M`` is a few ``eps`` times this, not times
    ``||M||``, which is far smaller when the terms cancel (a tight 1 x 1 LMI ``X - W'W ~ 0``)."""
    sys = link.system
    nE = _norm(np.hstack([sys.ss.C, sys.ss.D])) ** 2
    total = _norm(point.weight(link.w_in)) + _norm(point.weight(link.w_out)) * (1.0 if sys.slope else nE)
    if link.P is not None:
        total += _norm(point.vars[link.P.name]) * (1.0 + _norm(np.hstack([sys.ss.A, sys.ss.B])) ** 2)
    if link.lam is not None and sys.slope is not None:
        alpha, beta = sys.slope
        lam = float(np.max(np.abs(point.vars[link.lam.name]))) if point.vars[link.lam.name].size else 0.0
        total += lam * (2.0 + 2 * abs(alpha * beta) * nE + 2 * abs(alpha + beta) * math.sqrt(nE))
    for act, v in zip(sys.internal, link.inner):
        lam = float(np.max(np.abs(point.vars[v.name]))) if point.vars[v.name].size else 0.0
        a, b = act.alpha, act.beta
        total += lam * (2.0 + 2 * abs(a * b) * nE + 2 * abs(a + b) * math.sqrt(nE))
    return total


def _psd_short(point: "Point", link: Link, psd_names: set, margin: float) -> bool:
    """Whether ``P >= 0`` (where the link needs it) or its input weight ``X >= 0`` (where pooling needs it)
    lacks the eigenvalue margin the repair aims for."""
    if link.needs_P_psd:
        P = point.vars[link.P.name]
        if _min_eig(P) < _margin(P, margin):
            return True
    if link.w_in.kind == "var" and link.w_in.variable.name in psd_names:
        X = point.vars[link.w_in.variable.name]
        if _min_eig(X) < _margin(X, margin):
            return True
    return False


def _margin(M: np.ndarray, rel: float) -> float:
    """Eigenvalue margin: the rounding bound ``16 m eps ||M||`` times 4, plus ``rel * ||M||``."""
    nrm = max(_norm(M), 1e-300)
    return 64 * M.shape[0] * EPS * nrm + rel * nrm


def state_groups(sys: lowered.System) -> list[tuple[np.ndarray, slice]]:
    """The states of a block driven by each input group (``u``, then each internal activation): the
    ``(state indices, input columns)`` of the shift registers fed by that group (``residual_system``)."""
    ss = sys.ss
    groups, cols = [], [slice(0, sys.n_in)]
    r = sys.n_in
    for act in sys.internal:
        cols.append(slice(r, r + act.n))
        r += act.n
    for c in cols:
        reach = np.zeros(ss.nx, dtype=bool)
        M = ss.B[:, c]
        for _ in range(ss.nx + 1):
            hit = np.abs(M).sum(axis=1) > 0
            if not (hit & ~reach).any():
                break
            reach |= hit
            M = ss.A @ M
        groups.append((np.flatnonzero(reach), c))
    return groups


def _repair_block(point: "Point", link: Link, t: float, e: float, margin: float) -> float:
    """Repair a residual block's LMI (output weight raised by ``t``, eigenvalue deficit ``e`` included in
    ``e``); returns the raise ``t_in`` of its input weight.

    Coordinates are grouped (states driven by ``u`` or by ``w_j``, ``u``, each ``w_j``, the output). Raising
    a multiplier by ``eta`` adds at least ``eta (|w|^2 - (a^2 + b^2) |E xi|^2)`` (``|w - (a+b) v|^2 >= 0``),
    ``P += tau G_g`` (``G_g - A'G_gA = I`` on the group's states, ``A'G_gB = 0``) adds
    ``tau (|x_g|^2 - xi_g'B'G_gB xi_g)``; from the output back to ``u`` each group gets ``e`` plus what the
    later raises took from it (``need``), through ``|E xi|^2 <= ||E||^2 |xi_S|^2`` over the columns ``S`` that
    ``E`` uses. The final eigenvalue check decides; this only finds the point.
    """
    sys = link.system
    ss = sys.ss
    nx = ss.nx
    E = np.hstack([ss.C, ss.D])
    groups = state_groups(sys)
    # coordinate -> group: states by driving group, then u, then each w_j
    owner = np.full(nx + ss.nu, -1)
    for g, (idx, cols) in enumerate(groups):
        owner[idx] = g  # state groups 0..q
        owner[nx + np.arange(cols.start, cols.stop)] = len(groups) + g  # input groups q+1..
    need = np.zeros(2 * len(groups))

    def charge(rows: np.ndarray, amount: float) -> None:
        used = np.unique(owner[np.abs(rows).sum(axis=0) > 0])
        need[used[used >= 0]] += amount * _norm(rows) ** 2

    r_out = sys.n_internal
    Ey = E[r_out:]
    if sys.slope is not None:
        alpha, beta = sys.slope
        eta = t + e
        point.vars[link.lam.name] = point.vars[link.lam.name] + eta
        charge(Ey, eta * (alpha**2 + beta**2))
    else:
        charge(Ey, t)
    tau_psd = 0.0
    if link.needs_P_psd:
        tau_psd = max(-_min_eig(point.vars[link.P.name]), 0.0) + _margin(point.vars[link.P.name], margin)
    offsets = np.concatenate([[0], np.cumsum([a.n for a in sys.internal])]).astype(int)
    P = point.vars[link.P.name] if link.P is not None else None
    q = len(sys.internal)
    for g in range(q, -1, -1):  # states driven by w_g (g >= 1) or u (g = 0), then w_g itself
        idx, cols = groups[g]
        if len(idx):
            sub = np.ix_(idx, idx)
            G = _stein_gramian(ss.A[sub])
            tau = e + need[g] + tau_psd
            P[sub] += tau * G
            Bg = ss.B[np.ix_(idx, np.arange(cols.start, cols.stop))]
            need[len(groups) + g] += tau * _norm(Bg.T @ G @ Bg)
        if g == 0:
            break
        j = g - 1
        act, v = sys.internal[j], link.inner[j]
        eta = e + need[len(groups) + g]
        point.vars[v.name] = point.vars[v.name] + eta
        charge(E[offsets[j] : offsets[j + 1]], eta * (act.alpha**2 + act.beta**2))
    if P is not None:
        point.vars[link.P.name] = P
    return e + need[len(groups)]


def certify(sdp: Sdp, solution: Solution, *, margin: float = 1e-11,
            point: Point | None = None) -> Certificate:
    """Repair the solver's point until every LMI provably holds, then verify (module docstring).

    ``margin`` is the relative eigenvalue margin (times ``||M||``) the repair aims for. ``point``: the
    solution already mapped back to the original form (``reductions.Chain.invert``, e.g. with its storage
    ``P`` recovered); by default ``solution`` is mapped back here (inverse forms only).
    """
    scaling = chain(sdp, storage=False).scaling
    factor = sdp.factor
    if solution.x is None or solution.rho is None or not np.all(np.isfinite(solution.x)):
        return Certificate(
            False,
            None,
            None,
            None,
            None,
            solution.claimed_status,
            factor,
            reason="the solver returned no point",
        )
    rho_solver = float(solution.rho)
    L_solver = math.sqrt(max(rho_solver, 0.0)) * factor
    if point is None:
        try:
            point = chain(sdp, storage=False).invert(solution)
        except NotInvertible as exc:
            return Certificate(False, None, None, L_solver, rho_solver, solution.claimed_status, factor,
                               reason=f"{exc.args[0]} = X^-1 is not positive definite at the solver's point")
    before = {
        link.lmi.name: _min_eig(point.matrix(link)) / max(_norm(point.matrix(link)), 1e-300)
        for link in sdp.links
    }
    psd_names = {v.name for v in sdp.psd_weights}
    t_next = 0.0
    for link in reversed(sdp.links):
        sys = link.system
        point.shift_weight(link.w_out, t_next)
        M = point.matrix(link)
        required = _margin(M, margin) + 64 * M.shape[0] * EPS * _term_scale(point, link)
        lo = _min_eig(M)
        if lo >= required and not _psd_short(point, link, psd_names, margin):
            t_next = 0.0  # (holds with its margin, the raised output weight included: nothing to repair)
            continue
        e = max(required - lo, 0.0)
        if sys.internal:  # a residual block: the repair by groups of coordinates (_repair_block)
            t_in = _repair_block(point, link, t_next, e, margin)
            if link.w_in.kind == "var" and link.w_in.variable.name in psd_names:
                X = point.vars[link.w_in.variable.name]
                t_in = max(t_in, -_min_eig(X) + _margin(X, margin))
            t_next = t_in
            continue
        E = np.hstack([sys.ss.C, sys.ss.D])
        nE = _norm(E) ** 2
        if sys.slope is not None:
            alpha, beta = sys.slope
            eta = t_next + e
            point.vars[link.lam.name] = point.vars[link.lam.name] + eta
            need = eta * (alpha**2 + beta**2) * nE
        else:
            need = t_next * nE
        t_in = e + need
        if link.P is not None:
            A, B = sys.ss.A, sys.ss.B
            G = _stein_gramian(A)
            bgb = _norm(B.T @ G @ B)
            k2 = _norm(A.T @ G @ B) ** 2
            q = e + need  # the state block needs tau - e - (need) >= 0, plus room for the cross term
            tau = q if k2 == 0 else 2 * q
            if link.needs_P_psd:
                tau += max(-_min_eig(point.vars[link.P.name] + tau * G), 0.0) + _margin(G, margin)
            point.vars[link.P.name] = point.vars[link.P.name] + tau * G
            t_in += tau * bgb + (tau**2 * k2 / (tau - q) if k2 else 0.0)
        # X >= 0 where pooling needs it (the input weight of this link is that X after the shift)
        if link.w_in.kind == "var" and link.w_in.variable.name in psd_names:
            X = point.vars[link.w_in.variable.name]
            t_in = max(t_in, -_min_eig(X) + _margin(X, margin))
        t_next = t_in
    first = sdp.links[0]
    point.shift_weight(first.w_in, t_next) if first.w_in.kind == "rho" else None

    checks = []
    ok_all = True
    for link in sdp.links:
        M = point.matrix(link)
        nrm = max(_norm(M), 1e-300)
        thr = 16 * M.shape[0] * EPS * max(nrm, _term_scale(point, link))  # rounding of M's terms included
        lo = _min_eig(M)
        ok = lo >= thr
        ok_all &= ok
        checks.append(LmiCheck(link.lmi.name, M.shape[0], before[link.lmi.name], lo / nrm, thr / nrm, ok))
        if link.needs_P_psd:
            Pm = point.vars[link.P.name]
            okp = _min_eig(Pm) >= 16 * Pm.shape[0] * EPS * max(_norm(Pm), 1e-300)
            ok_all &= okp
            checks.append(
                LmiCheck(
                    f"P[{link.system.name}]>=0",
                    Pm.shape[0],
                    float("nan"),
                    _min_eig(Pm) / max(_norm(Pm), 1e-300),
                    0.0,
                    okp,
                )
            )
    for v in sdp.psd_weights:
        X = point.vars[v.name]
        okx = _min_eig(X) >= 16 * X.shape[0] * EPS * max(_norm(X), 1e-300)
        ok_all &= okx
        checks.append(
            LmiCheck(f"{v.name}>=0", X.shape[0], float("nan"), _min_eig(X) / max(_norm(X), 1e-300), 0.0, okx)
        )
    # lambda >= 0 and diagonal X >= 0 hold by construction (clipped, then only increased).
    rho = point.rho
    lip = scaling.bound(rho)  # rounded up: never below the certified value, never 0 for rho > 0
    if not math.isfinite(lip):
        ok_all = False
    reason = "" if ok_all else "an LMI is not positive semidefinite at the repaired point"
    return Certificate(
        bool(ok_all),
        lip if ok_all else None,
        rho if ok_all else None,
        L_solver,
        rho_solver,
        solution.claimed_status,
        factor,
        tuple(checks),
        reason,
        {"rho": rho, **point.vars} if ok_all else None,
    )

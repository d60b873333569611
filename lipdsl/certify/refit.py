"""Re-solve the first system's exact LMI for its repaired output weight: (Sdp, Point) -> the Point with its
``P``, multipliers and ``rho`` refitted (step 4 of ``storage``'s recovery).

The repairs of a frequency-domain solve's recovery cascade from the last system to the first, and each
raised output weight costs more input weight upstream. When the first system kept its exact LMI (its ``P``
a solver variable: typically a first conv layer, or residual block, on one input channel), the least
``rho`` for the repaired downstream weights is a small SDP over its ``P``, multipliers and ``rho``, solved
here with CVXOPT: lipdsl's structured KKT solver from ``REFIT_STRUCTURED_MIN`` variables, dense data below
it or when that fails. Nothing here is trusted: ``certify`` checks the point as any other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lipdsl.certify.recheck import Point, _min_eig, system_matrix
from lipdsl.sdp.problem import Lmi, LmiBuilder, Sdp, Variable, from_upper

#: ``refit_first_system`` runs when its small SDP has at most this many variables.
REFIT_MAX_VARIABLES = 2000
#: ... with CVXOPT's 'chol' KKT solver (``G'W^-1 G``: half the time of its default 'qr' on the residual TCN's
#: first block, 6,938 x 644 dense ``G``), accepting its singular-KKT ending within ``REFIT_NEAR_OPTIMAL``
#: (relative gap and residuals: the point is certified as any other), else the default (None: 'qr').
REFIT_KKT_SOLVERS = ("chol", None)
REFIT_NEAR_OPTIMAL = 1e-6
#: A refit of at least ``REFIT_STRUCTURED_MIN`` variables is first solved with lipdsl's structured KKT
#: solver (``_refit_structured``: its coefficients are a few entries each), to CVXOPT tolerance
#: ``REFIT_TOL``; the dense solves (``REFIT_KKT_SOLVERS``) are its fallback, and the path for smaller refits
#: (whose setup they do faster).
#: The residual TCN's first block (644 variables, an 83-row LMI; four refits per recovery): 10.0-11.2 s
#: dense, 3.3-4.4 s structured; the 32-channel k9 net's first layer (69 variables): 0.24-0.31 s dense,
#: 0.40 s structured.
REFIT_STRUCTURED_MIN = 256
REFIT_TOL = 1e-7
#: The final refit of a recovery (the one ``certify`` checks; the others only choose the raise direction) is
#: then solved on to this tolerance by CVXOPT's 'qr' KKT solver from its point (``_polish``). The structured
#: and 'chol' solves form normal equations, whose conditioning squares that of the scaled ``G``, and stop
#: 'unknown' at relative gaps of 2e-7 to 9e-7 on the residual TCN's first block (83 rows, 644 variables):
#: where they stop depended on the last bits of the weights and moved the certified bound by up to 3e-8.
#: The QR factorisation of the scaled ``G`` reaches 1e-9 from there in about 13 iterations (2.8 s).
REFIT_FINAL_TOL = 1e-9
#: ... when its dense QR factorisation costs at most this (``rows * variables^2`` of ``G``, per iteration;
#: the residual TCN's first block: 6,938 x 644, 2.9e9, 0.2 s an iteration). Larger refits keep the looser
#: solve: as sound, but their last digits follow the weights' last bits.
REFIT_POLISH_MAX_WORK = 1e10


def _refit_start(previous: dict, G: np.ndarray, h: np.ndarray, dims: dict) -> dict:
    """CVXOPT's ``primalstart``/``dualstart`` for a refit from the last refit's ``(x, z)`` (same ``G``, a
    new ``h``: another repaired output weight): ``x`` as it was, each slack ``h - G x`` and each dual
    block shifted strictly inside its cone by ``WARM_SHIFT`` of its norm (as ``cvxopt_conelp.warm_start``)."""
    import cvxopt

    from lipdsl.solvers.cvxopt_conelp import into_cone, into_orthant

    def block(v: np.ndarray, m: int) -> np.ndarray:  # (CVXOPT's 's' blocks: the lower triangle)
        M = v.reshape(m, m, order="F")
        M = np.tril(M) + np.tril(M, -1).T
        return into_cone(M, max(float(np.linalg.norm(M, 2)), 1e-12)).reshape(-1, order="F")

    x, z = previous["x"], previous["z"]
    s = h - G @ x
    at = dims["l"]
    parts_s, parts_z = [into_orthant(s[:at], 1e-8)], [into_orthant(z[:at], 1e-8)]
    for m in dims["s"]:
        parts_s.append(block(s[at : at + m * m], m))
        parts_z.append(block(z[at : at + m * m], m))
        at += m * m
    return {"primalstart": {"x": cvxopt.matrix(x), "s": cvxopt.matrix(np.concatenate(parts_s))},
            "dualstart": {"z": cvxopt.matrix(np.concatenate(parts_z))}}


def _factored(M0: np.ndarray, F: np.ndarray, name: str) -> Lmi:
    """``M0 + sum_k z_k F_k >= 0`` (``F``: ``vec F_k`` as columns) as an ``Lmi`` for the structured KKT
    solver (``LmiBuilder``): each entry ``(a, b)``, ``a <= b``, of each ``F_k`` one unit term
    ``c (e_a e_b' + e_b e_a')`` (``c`` half the entry on the diagonal). The refit's coefficients are a few
    entries each (``P - A'PA`` of a shift register, ``rho I``), so ``H`` comes from entries of
    ``S = rti rti'`` instead of dense scalings."""
    m, n = M0.shape[0], F.shape[1]
    upper = np.triu_indices(m)
    values = F.reshape(m, m, n)[upper]  # (upper entries, variables)
    entry, col = np.nonzero(values)
    a, b = upper[0][entry], upper[1][entry]
    builder = LmiBuilder(m, [n])
    builder.F0 += M0
    builder.units(col, a, b, values[entry, col] * np.where(a == b, 0.5, 1.0))
    return builder.build(name, None, ((name, m),))


@dataclasses.dataclass(frozen=True)
class _RefitProblem:
    """The first system's own LMI (and ``P >= 0`` where needed) as an SDP for CVXOPT's structured backend:
    ``min rho`` over ``(rho, multipliers, P)``, ``rho`` and the multipliers ``>= 0`` (what ``_solve_cvxopt``
    reads of an ``Sdp``)."""

    variables: tuple
    lmis: tuple
    n: int
    keep_duals: bool = True

    @property
    def rho(self) -> Variable:
        return self.variables[0]

    @property
    def nonneg(self) -> tuple:
        return self.variables[:-1]

    def objective(self) -> np.ndarray:
        c = np.zeros(self.n)
        c[0] = 1.0
        return c


def _refit_structured(problem: _RefitProblem, starts: list) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x, z)`` (CVXOPT's vectors) of the refit by CVXOPT with lipdsl's structured KKT solver from the
    first of ``starts`` that ends optimal or within ``REFIT_NEAR_OPTIMAL``, else None."""
    from lipdsl.errors import LipdslError
    from lipdsl.solvers.cvxopt_conelp import solve_structured
    from lipdsl.solvers.solution import converged, on_iteration

    for start in starts:
        try:
            with on_iteration(None):  # (not the main solve's iterations in a progress report)
                sol = solve_structured(problem, tol=REFIT_TOL, max_iterations=100, verbose=False,
                                       start=start)
        except LipdslError:
            continue
        if sol.x is not None and sol.duals and (converged(sol.claimed_status)
                                                or sol.near_optimal(REFIT_NEAR_OPTIMAL)):
            z = np.concatenate([sol.duals[None]] + [sol.duals[lmi.name].reshape(-1, order="F")
                                                    for lmi in problem.lmis])
            return sol.x, z
    return None


def _polish(c: np.ndarray, G: np.ndarray, h: np.ndarray, dims: dict, res: dict) -> dict | None:
    """CVXOPT's result for ``min c'x`` s.t. ``G x + s = h``, ``s`` in the cones, solved to ``REFIT_FINAL_TOL``
    by its 'qr' KKT solver from ``res`` (a refit's ``x``, ``z``), or None when that does not end optimal."""
    import cvxopt
    import cvxopt.misc
    import cvxopt.solvers

    from lipdsl import limits

    start = _refit_start({"x": np.asarray(res["x"]).ravel(), "z": np.asarray(res["z"]).ravel()}, G, h, dims)
    options = {"show_progress": False, "abstol": REFIT_FINAL_TOL * 1e-2, "reltol": REFIT_FINAL_TOL,
               "feastol": REFIT_FINAL_TOL}
    Gc = cvxopt.matrix(G)
    qr = cvxopt.misc.kkt_qr(Gc, dims, cvxopt.spmatrix([], [], [], (0, G.shape[1])))

    def kkt(W):  # (CVXOPT's 'qr', with the command's deadline checked once per iteration)
        limits.checkpoint("storage recovery")
        return qr(W)

    try:
        trial = cvxopt.solvers.conelp(cvxopt.matrix(c), Gc, cvxopt.matrix(h), dims, kktsolver=kkt,
                                      options=options, **start)
    except (ArithmeticError, ValueError):
        return None
    return trial if trial["status"] == "optimal" and trial["x"] is not None else None


def refit_first_system(sdp: Sdp, point: Point, warm: dict | None = None, *, final: bool = False) -> bool:
    """Re-solve the first system's own LMI, ``min rho`` over its ``P``, ``Lambda`` and ``rho`` with its output
    weight fixed at the repaired value (step 4 of ``storage``'s module docstring); keep it if ``rho`` drops.

    The repairs cascade from the last system to the first, and each raised output weight ``t`` costs more
    input weight upstream (``Lambda += t/2`` changes the cross terms ``-(a+b) H*Lambda``): at 32 channels,
    k = 9, K = 17 the first system's input shift is 9.5 % of ``rho``, from a ``t`` of 2.3 %. When the first
    system kept its exact LMI (its ``P`` is a solver variable, typically a first conv layer with one input
    channel), the least ``rho`` for the repaired downstream weights is a small SDP (``nx (nx+1)/2 + ny + 1``
    variables): CVXOPT with dense data (0.75 % off the bound at 32 channels: 2.8902 -> 2.8686). Returns
    whether the point changed; ``certify`` checks it as always. ``warm``: a dict shared by the refits of one
    recovery (the same ``G``, other output weights): each starts from the last one's solution
    (``_refit_start``). ``final``: the refit ``certify`` will check, solved on to ``REFIT_FINAL_TOL``
    (``_polish``) so that the bound does not depend on where a looser solve happened to stop.
    """
    link = sdp.links[0]
    sys = link.system
    if (link.w_in.kind != "rho" or link.P is None or link.P in sdp.storage or not sys.ss.nx
            or (link.lam is not None and link.lam.role != "lambda")):
        return False
    nx, nu = sys.ss.nx, sys.n_in
    # the multipliers: the output activation's, then (a residual block) each internal activation's
    sizes = [len(point.vars[name]) for name in link.multiplier_names]
    n_lam = sum(sizes)
    bounds = np.cumsum([1] + sizes)
    iu = np.triu_indices(nx)
    n = 1 + n_lam + len(iu[0])
    if n > REFIT_MAX_VARIABLES:
        return False
    X_out = point.weight(link.w_out)

    def storage(z: np.ndarray) -> np.ndarray:  # P from its upper triangle, row by row
        return from_upper(z[1 + n_lam :], nx)

    def multipliers(z: np.ndarray) -> list:
        return [z[bounds[j] : bounds[j + 1]] for j in range(len(sizes))]

    def lmi(z: np.ndarray) -> np.ndarray:
        parts = multipliers(z)
        lam = parts.pop(0) if link.lam is not None else None
        return system_matrix(sys, storage(z), lam, z[0] * np.eye(nu), X_out, parts)

    M0 = lmi(np.zeros(n))
    if warm is not None and "F" in warm:
        F = warm["F"]  # (the coefficients do not depend on the output weight, which is all M0 has new)
    else:
        F = np.stack([lmi(e) - M0 for e in np.eye(n)], axis=-1).reshape(-1, n)  # column k: vec F_k
        if warm is not None:
            warm.update(F=F)
    blocks = [(M0, F)]
    if link.needs_P_psd:  # P >= 0 as a second LMI
        E = np.zeros((nx * nx, n))
        for k, (i, j) in enumerate(zip(*iu)):
            E[i * nx + j, 1 + n_lam + k] = E[j * nx + i, 1 + n_lam + k] = 1.0
        blocks.append((np.zeros((nx, nx)), E))
    import cvxopt
    import cvxopt.solvers

    G = np.vstack([-np.eye(n)[: 1 + n_lam]] + [-Fk for _, Fk in blocks])
    h = np.concatenate([np.zeros(1 + n_lam)] + [M.reshape(-1) for M, _ in blocks])
    c = np.zeros(n)
    c[0] = 1.0
    dims = {"l": 1 + n_lam, "q": [], "s": [M.shape[0] for M, _ in blocks]}
    res = None
    # (the last refit's point: the same G, built from the same F; then the default start)
    starts = ([_refit_start(warm, G, h, dims)] if warm is not None and "x" in warm else []) + [{}]
    if n >= REFIT_STRUCTURED_MIN:
        variables = (Variable("rho", "rho", None, 1, "scalar", 0),) + tuple(
            Variable(name, "lambda", None, size, "vector", int(at))
            for name, size, at in zip(link.multiplier_names, sizes, bounds[:-1])) + (
            Variable(link.P.name, "P", None, nx, "symmetric", 1 + n_lam),)
        lmis = tuple(_factored(M, Fk, f"refit {k}") for k, (M, Fk) in enumerate(blocks))
        fitted = _refit_structured(_RefitProblem(variables, lmis, n), starts)
        if fitted is not None:
            res = {"x": fitted[0], "z": fitted[1]}
    for kkt, start in ((k, st) for k in REFIT_KKT_SOLVERS for st in starts if res is None):
        try:
            trial = cvxopt.solvers.conelp(cvxopt.matrix(c), cvxopt.matrix(G), cvxopt.matrix(h), dims,
                                          kktsolver=kkt, options={"show_progress": False}, **start)
        except (ArithmeticError, ValueError):
            continue
        stopped_near = all(trial.get(key) is not None and trial[key] <= REFIT_NEAR_OPTIMAL for key in (
            "relative gap", "primal infeasibility", "dual infeasibility"))
        if trial["x"] is not None and (trial["status"] == "optimal" or stopped_near):
            res = trial
            break
    if res is None:
        return False
    if final and G.shape[0] * G.shape[1] ** 2 <= REFIT_POLISH_MAX_WORK:
        res = _polish(c, G, h, dims, res) or res
    if warm is not None:
        warm.update(x=np.asarray(res["x"]).ravel(), z=np.asarray(res["z"]).ravel())
    z = np.asarray(res["x"]).ravel()
    # (kept if it lowers rho, or if the first LMI does not hold at the point: a system the chain of
    # shifts skipped, whose output weight was raised by the systems after it)
    if not (z[0] < point.rho or _min_eig(point.matrix(link)) < 0):
        return False
    point.rho = float(z[0])
    names = link.multiplier_names
    for name, value in zip(names, multipliers(z)):
        point.vars[name] = np.maximum(value, 0.0)
    point.vars[link.P.name] = storage(z)
    return True

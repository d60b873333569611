"""Recover the storage matrices of a frequency-domain solve: (Sdp, Solution) -> Solution with every P.

For wide conv layers the storage matrix ``P`` (``nx = (k-1) c`` states, ``nx (nx+1)/2`` entries) dominates
the SDP; ``build_sdp(..., frequencies=K)`` leaves it out and imposes, for each conv system, the
frequency-domain form of its LMI on ``K`` frequencies instead. By the discrete-time KYP lemma (``(A, B)``
controllable, as the FIR shift realization is), with ``Q, S, R`` the blocks of the system's LMI at ``P = 0``
and ``B_ = [B 0]`` (the activation's output does not drive the state),

    exists P:  M(P) = [[P - A'PA + Q, S - A'PB_], [., R - B_'PB_]] > 0
    <=>  Phi(w) = [[X_in + 2ab H*LH, -(a+b) H*L], [., 2L - X_out]] > 0  for every w in [0, pi],

``H = H(e^{iw})`` the layer's frequency response (``Phi = X_in - H* X_out H`` for a linear layer): only
``rho``, the multipliers ``L`` and the weights ``X`` remain, and the SDP shrinks from ``O(k^2 c^2)`` to
``O(c^2)`` variables per layer. The solver enforces ``Phi`` only on its grid, so from the last system to
the first:

1. the output weight was raised by ``t`` (by the system after it): ``L += t/2`` restores ``2L - X_out``;
   When the output weight was raised as ``(1 + s) X_out + t I``, ``L`` becomes ``(1 + s) L + t/2`` and
   ``X_in`` ``(1 + s) X_in`` first (``Phi`` is linear: the scaled part is exact);
2. on a fine grid (``FINE_GRID`` frequencies), ``L += eta`` and ``X_in += e D`` with ``e`` the least
   shift that makes ``Phi >= 0`` there (``input_shifts``, a Schur complement on ``2L - X_out``), ``eta``
   the one of a few multiplier shifts (0, ``v``, ``4v``, ...; ``v = -min lambda_min(Phi)``) that needs the
   least ``e``, plus a margin; ``X_in`` is the previous system's output weight (or ``rho``). The direction
   ``D = X_in + delta ||X_in|| I`` (``D = I`` for ``delta = None``) is one of ``RAISE_DIRECTIONS``, the one
   whose whole chain of shifts ends with the least ``rho`` (an isotropic ``e I`` is cheap for the layer
   but the layers upstream pay for it in the directions where their ``X`` is small, layer after layer; a
   raise along ``X`` itself passes upstream as an exact scaling), or the first within ``DIRECTION_TIE`` of
   it: the trials' refits are not exact enough to tell closer ones apart;
3. ``P`` = minus the stabilizing solution of the Riccati equation
   ``A'XA - X - (A'XB_ + S)(R + B_'XB_)^-1 (B_'XA + S') + Q = 0`` for the LMI less ``shrink I``
   (``shrink`` a fraction of the margin of step 2), which makes ``M(P) >= shrink I``: strictly positive,
   so ``certify`` finds nothing to repair (a rounding deficit left to it was repaired by raises that grew
   with every layer upstream). It is found by the structured doubling algorithm (``riccati_doubling``:
   matrix products of order ``nx``, about 20 ms a step at 256 states against 5.5 s for the QZ method of
   ``scipy.linalg.solve_discrete_are``, which remains the fallback); a ``P`` whose LMI is not positive
   (a stalled doubling) is recomputed with ten times the margin.

4. if the first system kept its exact LMI (its ``P`` a solver variable), its ``P``, ``Lambda`` and ``rho``
   are re-solved for the repaired output weight (``refit.refit_first_system``): the least ``rho`` it
   allows. The refits of one recovery (one per raise direction tried, then the final one) share the LMI's
   coefficients and start from the last refit's solution; the final one is solved to ``REFIT_FINAL_TOL``,
   so the bound does not depend on where a looser solve stopped.

The multiplier shift of step 2 is chosen on a coarse grid (``COARSE_GRID``, every 8th fine frequency); only
the chosen one is checked on the fine grid. Candidates are compared by ``PeakFirst``: one is evaluated
first at the frequencies where the last full evaluation on the same grid peaked, and dropped when those
alone need as much as the best so far (the same choices as full evaluations, at a fraction of the cost).
The chosen one's shift on the fine grid is ``largest_shift``: batched Cholesky tests of the Schur
complements at the level found so far, eigenvalues only for the batches where one fails.
These eigenvalue checks run on the solver's KKT threads (``cvxopt_kkt.kkt_threads``), the frequencies split
in parts.

Nothing here is trusted: ``certify`` rebuilds every LMI with these ``P``, repairs what rounding or the
grid left negative, and checks the minimum eigenvalues as for any other solve.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial

import numpy as np
import scipy.linalg

from lipdsl import limits
from lipdsl.certify.recheck import Point, _min_eig, system_matrix
from lipdsl.certify.refit import refit_first_system
from lipdsl.certify.riccati import (  # noqa: F401 (imported from here too)
    DOUBLING_STALL, DOUBLING_STEPS, QZ_MAX_STATES, QZ_STATES, RICCATI_RESIDUAL, riccati_doubling,
    riccati_residual, storage_matrix)
from lipdsl.sdp.build import frequency_grid, frequency_response
from lipdsl.sdp.problem import Sdp
from lipdsl.solvers.solve import Solution
from lipdsl.solvers.cvxopt_kkt import kkt_threads, thread_map

#: Frequencies of the check in step 2 (the entries of ``Phi`` are trigonometric polynomials of degree
#: ``2 (k-1)``, far below this).
FINE_GRID = 2049
#: Frequencies on which the multiplier shift of step 2 is chosen (every 8th of the fine grid).
COARSE_GRID = 257
def _h(H: np.ndarray) -> np.ndarray:
    """Conjugate transpose of each matrix in a stack."""
    return np.conj(np.transpose(H, (0, 2, 1)))


def phi_min_eigenvalue(sys, lam, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray) -> float:
    """``min_w lambda_min(Phi(w))`` over the frequencies of ``H`` (``frequency_response``; module doc)."""
    return float(np.linalg.eigvalsh(phi_matrices(sys, lam, X_in, X_out, H)).min())


def phi_matrices(sys, lam, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``Phi(w)`` at each frequency of ``H`` (stacked; module docstring)."""
    if sys.slope is None:
        Phi = X_in[None] - _h(H) @ X_out @ H
    else:
        a, b = sys.slope
        L = np.diag(lam)
        top = np.broadcast_to(X_in, (len(H),) + X_in.shape)
        if a * b != 0:  # (ReLU-like slopes: no such term)
            top = top + 2 * a * b * (_h(H) @ L @ H)
        cross = -(a + b) * (_h(H) @ L)
        bottom = np.broadcast_to(2 * L - X_out, (len(H),) + L.shape)
        Phi = np.concatenate([np.concatenate([top, cross], axis=2),
                              np.concatenate([_h(cross), bottom], axis=2)], axis=1)
    return Phi


def input_shifts(sys, lam, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray,
                 whiten: np.ndarray | None = None) -> np.ndarray:
    """At each frequency of ``H``, ``s(w) = -lambda_min(X_in + 2ab H*LH - (a+b)^2 H*L (2L - X_out)^-1 LH)``
    (a Schur complement on ``2L - X_out``; ``inf`` at every frequency when that block is not positive
    definite): the least ``e >= 0`` with ``Phi + diag(e I, 0) >= 0`` on ``H`` is ``max(0, max_w s(w))``
    (``PeakFirst``). ``whiten = R^-1`` for ``D = R R'``: the same for ``Phi + diag(e D, 0)`` (the
    eigenvalues of ``R^-1 schur R^-T``)."""
    return _shifts(input_schur(sys, lam, X_in, X_out, H, whiten), len(H))


def input_schur(sys, lam, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray,
                whiten: np.ndarray | None = None) -> np.ndarray | None:
    """The Schur complements whose ``-lambda_min`` are ``input_shifts`` (stacked; None when ``2L - X_out``
    is not positive definite)."""
    if sys.slope is None:
        schur = X_in[None] - _h(H) @ X_out @ H
    else:
        a, b = sys.slope
        L = np.diag(lam)
        bottom = 2 * L - X_out
        try:
            chol = np.linalg.cholesky((bottom + bottom.T) / 2)
        except np.linalg.LinAlgError:
            return None
        # chol^-1 L H (one triangular solve for all frequencies), so that H*L bottom^-1 LH = G*G
        LH = L @ H
        G = scipy.linalg.solve_triangular(chol, LH.transpose(1, 0, 2).reshape(len(L), -1), lower=True)
        G = G.reshape(len(L), len(H), -1).transpose(1, 0, 2)
        schur = X_in[None] - (a + b) ** 2 * (_h(G) @ G)
        if a * b != 0:
            schur = schur + 2 * a * b * (_h(H) @ LH)
    if whiten is not None:
        schur = whiten @ schur @ whiten.T
    return schur


def _shifts(schur: np.ndarray | None, count: int) -> np.ndarray:
    """``-lambda_min`` of each Schur complement of a stack (from its lower triangle, as ``eigvalsh``);
    ``inf`` at each of ``count`` frequencies for None (no complement: the other block is not definite)."""
    return np.full(count, np.inf) if schur is None else -np.linalg.eigvalsh(schur)[:, 0]


#: ``largest_shift``: frequencies per batched Cholesky test, and the stride of the sample whose eigenvalues
#: set the first level tested.
CHOLESKY_BATCH = 32
SHIFT_SAMPLE = 8


def largest_shift(schur: np.ndarray | None) -> float:
    """``max(0, max_w s(w))`` for ``s = _shifts(schur)``, with eigenvalues only where they can raise it.

    The level ``f`` starts at the clamped maximum over every ``SHIFT_SAMPLE``-th frequency; a batch of
    ``CHOLESKY_BATCH`` frequencies whose ``schur + f I`` all have a Cholesky factor needs less than ``f``
    (``lambda_min(schur) > -f``) and is done; the eigenvalues of a batch where one fails raise ``f`` to its
    maximum. The shifts peak at a few frequencies, so most batches cost a Cholesky factorisation (a few
    times cheaper than the eigenvalues at 32 rows). Both tests read the lower triangle, as ``eigvalsh``
    does; the value is the full evaluation's up to rounding at a frequency whose ``s`` ties with ``f``
    (and ``certify`` rechecks the recovered point in any case)."""
    if schur is None:
        return np.inf
    level = max(0.0, float(_shifts(schur[::SHIFT_SAMPLE], 0).max()))
    eye = np.eye(schur.shape[1])
    for start in range(0, len(schur), CHOLESKY_BATCH):
        part = schur[start : start + CHOLESKY_BATCH]
        try:
            np.linalg.cholesky(part + level * eye)
        except np.linalg.LinAlgError:
            level = max(level, float(_shifts(part, 0).max()))
    return level


#: ``_over_frequencies`` hands ``fn`` at most this many bytes of ``Phi`` at a time (a block LMI of order 128
#: on the fine grid is 540 MB; chunks stay in cache-sized buffers instead of fresh pages on every call).
CHUNK_BYTES = 1 << 23


def _over_frequencies(fn, H: np.ndarray, threads: int, combine):
    """``combine`` of ``fn`` on parts of the frequencies of ``H`` (e.g. ``min`` of minimum eigenvalues, or
    ``np.concatenate`` of ``input_shifts``: the same as on all of them at once), on ``threads`` threads
    (batched numpy releases the GIL), each part's ``Phi`` (order about ``ny + nu`` for ``H`` of ``ny x nu``)
    of at most ``CHUNK_BYTES``."""
    order = H.shape[1] + H.shape[2] if H.ndim == 3 else 1
    parts = max(threads if len(H) >= 8 * threads else 1, -(-len(H) * order * order * 16 // CHUNK_BYTES))
    parts = min(parts, len(H))
    if parts <= 1:
        return fn(H)
    return combine(thread_map(fn, np.array_split(H, parts), threads))


#: ``PeakFirst``: how many of the frequencies where the last full evaluation on a grid peaked are tried
#: first.
PEAK_FREQUENCIES = 8


class PeakFirst:
    """The input shift ``max(0, max_w s(w))`` (``s``: ``input_shifts``, ``block_input_shifts``) of
    candidate multipliers on a few fixed grids, for keeping the one that needs the least (step 2 of the
    module docstring). With ``above`` (the least so far), a candidate is first evaluated at the
    ``PEAK_FREQUENCIES`` frequencies where the last full evaluation on the same grid peaked, and when these
    alone need ``above`` or more, that lower bound is returned: the caller drops the candidate all the same.
    The peaks move little between candidates, so most are dropped after a few frequencies; the choices and
    the values kept are those of full evaluations. Grids are told apart by their length."""

    def __init__(self, threads: int):
        self.threads = threads
        self.peaks: dict[int, np.ndarray] = {}

    def __call__(self, shifts, H: np.ndarray, above: float = np.inf) -> float:
        peaks = self.peaks.get(len(H))
        if above < np.inf and peaks is not None:
            probe = max(0.0, float(shifts(H[peaks]).max()))
            if probe >= above:
                return probe
        values = _over_frequencies(shifts, H, self.threads, np.concatenate)
        self.peaks[len(H)] = np.argsort(values)[-PEAK_FREQUENCIES:]
        return max(0.0, float(values.max()))

    def largest(self, schur, H: np.ndarray) -> float:
        """The input shift ``max(0, max_w s(w))`` of one candidate, ``schur`` giving its Schur complements
        (``input_schur``, ``block_schur``) on parts of ``H``: ``largest_shift`` on each part (the value a
        full evaluation gives, without the per-frequency values: no peaks are recorded)."""
        return _over_frequencies(lambda part: largest_shift(schur(part)), H, self.threads, max)

    def least(self, candidates: list, shifts: list, H: np.ndarray) -> float:
        """The first of ``candidates`` whose per-frequency shifts (``shifts``, one function each) need the
        least on ``H`` (as an argmin; the first candidate when none is finite)."""
        best, needed = candidates[0], np.inf
        for candidate, fn in zip(candidates, shifts):
            value = self(fn, H, above=needed)
            if value < needed:
                best, needed = candidate, value
        return best


#: ``refined_grids``: a gridded system gets up to ``REFINE_ADD`` more frequencies per round where its
#: ``Phi`` at the solver's point dips below ``-REFINE_THRESHOLD`` times the size of its terms.
REFINE_ADD = 8
REFINE_THRESHOLD = 1e-3
#: ... and only when the recovery would raise the bound by more than this (relative; the report's warning
#: threshold; ``refined_grids(repair=)`` sets another): a re-solve costs as much as the first solve.
REFINE_REPAIR = 0.01
#: ... judged from one raise direction's trial when that one exceeds this many times the threshold, else
#: from the least of all directions (FCN 128/256/128: one direction said just over 1 %, the recovery then
#: repaired 0.96 %, and the refinement round it set off took 835 s).
REFINE_SURE = 2.0


def system_grid(sdp: Sdp, sys, grid: np.ndarray) -> np.ndarray:
    """``grid`` (frequencies in ``[0, pi]``) on a system's own period: ``grid / g`` for its tap spacing
    ``g`` (``Sdp.spacings``; ``build.tap_spacing``: its ``Phi`` takes on ``[0, pi / g]`` every value it
    takes on ``[0, pi]``)."""
    return grid / sdp.spacings.get(sys.name, 1)


def _solver_point(sdp: Sdp, solution: Solution) -> Point:
    """The solver's point, with the storage ``P`` of the gridded systems (not solver variables) at zero."""
    x = np.zeros(sdp.n_total)
    x[: sdp.n] = solution.x
    return Point(sdp, x)


@dataclasses.dataclass
class RecoveryCache:
    """What ``refined_grids``'s check and the recovery of the same solver point share (``recover_point``):
    each system's response on the fine grid (by link) and the raise trials already made, by ``(delta,
    margin)``, each with the point it started from (reused only from an equal point). Belongs to ``sdp``."""

    sdp: Sdp
    responses: dict = dataclasses.field(default_factory=dict)
    trials: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, sdp: Sdp, cache: "RecoveryCache | None") -> "RecoveryCache":
        """``cache`` if it belongs to ``sdp``, else an empty one."""
        return cache if cache is not None and cache.sdp is sdp else cls(sdp)

    def trial(self, start: Point, delta: float | None, margin: float, warm: dict | None = None) -> Point:
        """A copy of ``start`` through steps 1-3 along ``delta`` without the Riccati equations, then the first
        system's refit (``warm``: ``refit_first_system``'s): the recovery's cheap pass, which decides the
        raise direction. Made once and kept; a later call from an equal point gets a copy."""
        done = self.trials.get((delta, margin))
        if done is not None and _equal_points(done[0], start):
            return copy.deepcopy(done[1])
        trial = copy.deepcopy(start)
        _raise_chain(self.sdp, trial, frequency_grid(FINE_GRID), self.responses, margin, delta, storage=False)
        refit_first_system(self.sdp, trial, warm)  # (a first system with its exact LMI pays its raise here)
        self.trials[delta, margin] = (start, copy.deepcopy(trial))
        return trial


def _equal_points(a: Point, b: Point) -> bool:
    return a.rho == b.rho and a.vars.keys() == b.vars.keys() and all(
        np.array_equal(a.vars[k], b.vars[k]) for k in a.vars)


def refined_grids(sdp: Sdp, solution: Solution, *, add: int = REFINE_ADD,
                  threshold: float = REFINE_THRESHOLD, repair: float = REFINE_REPAIR,
                  cache: RecoveryCache | None = None) -> dict | None:
    """Each gridded system's frequencies plus those where its frequency-domain LMI fails most between them
    at the solver's point, or None when no system's ``Phi`` dips below ``-threshold`` (relative) there.

    The solver enforces ``Phi(w) >= 0`` only on the grid, and the recovery pays for the dips between
    (step 2 of the module docstring). Per system (on its own period, ``system_grid``: a dilated layer's
    ``Phi`` repeats every ``2 pi / d``) the local minima of ``lambda_min(Phi(w))`` on the
    fine grid below ``-threshold * scale`` (``scale`` the largest of ``||X_in||``, ``||X_out||``,
    ``max L``), the ``add`` deepest, join its grid; ``build_sdp(grids=...)`` then imposes them too.

    Nothing is refined when the recovery's repair stays within ``repair`` (relative): judged from its trial
    of the raise direction ``CHECK_DELTA``, and, when that one is within ``REFINE_SURE`` times ``repair``
    (close to the line), from the least of all ``RAISE_DIRECTIONS``, as the recovery itself chooses (the
    trials are left in ``cache`` for it).
    """
    if not sdp.storage or solution.x is None:
        return None
    point = _solver_point(sdp, solution)
    fine = frequency_grid(FINE_GRID)
    cache = RecoveryCache.of(sdp, cache)  # (kept for the recovery of this point when nothing is refined)
    responses = cache.responses
    least = cache.trial(point, CHECK_DELTA, RECOVERY_MARGIN).rho  # what the recovery would cost
    line = point.rho * (1 + repair) ** 2
    if line < least <= point.rho * (1 + REFINE_SURE * repair) ** 2:
        least = min([least] + [cache.trial(point, d, RECOVERY_MARGIN).rho for d in RAISE_DIRECTIONS
                               if d != CHECK_DELTA])
    if not least > line:
        return None
    grids, changed = {}, False
    threads = kkt_threads()
    for link in sdp.links:
        if link.P not in sdp.storage:
            continue
        sys = link.system
        grid = np.asarray(sdp.grids.get(sys.name, ()), dtype=float)
        X_in, X_out = point.weight(link.w_in), point.weight(link.w_out)
        lam = point.vars[link.lam.name] if link.lam is not None else None
        own = system_grid(sdp, sys, fine)
        H = _response(sdp, link, fine, responses)
        inner = [point.vars[v.name] for v in link.inner]

        def lowest(part, sys=sys, lam=lam, inner=inner, X_in=X_in, X_out=X_out):  # per frequency
            Phi = (block_phi(sys, lam, inner, X_in, X_out, part) if sys.internal
                   else phi_matrices(sys, lam, X_in, X_out, part))
            return np.linalg.eigvalsh((Phi + _h(Phi)) / 2)[:, 0]

        low = _over_frequencies(lowest, H, threads, np.concatenate)
        limits.checkpoint("refining the frequency grid")
        scale = max(np.linalg.norm(X_in, 2), np.linalg.norm(X_out, 2),
                    float(np.max(lam, initial=0.0)) if lam is not None else 0.0, 1e-300)
        depth = -low / scale
        inner = (depth[1:-1] >= depth[:-2]) & (depth[1:-1] >= depth[2:])
        peaks = np.concatenate([[depth[0] > depth[1]], inner, [depth[-1] > depth[-2]]])
        candidates = np.flatnonzero(peaks & (depth > threshold))
        if len(grid):
            far = np.min(np.abs(own[candidates, None] - grid[None, :]), axis=1) > (own[1] - own[0]) / 2
            candidates = candidates[far]
        chosen = candidates[np.argsort(-depth[candidates])][:add]
        if len(chosen):
            changed = True
            grid = np.unique(np.concatenate([grid, own[chosen]]))
        grids[sys.name] = grid
    return grids if changed else None


#: ``refined_grids`` decides from the trial of this raise direction (``RAISE_DIRECTIONS``) at the
#: recovery's margin: the recovery's own trial of it, which ``RecoveryCache`` lets the recovery reuse.
CHECK_DELTA = 0.1
#: The margin of the recovery's raises (``recover_storage``, ``recover_point``) and of the check's trials.
RECOVERY_MARGIN = 1e-6


#: How step 2 raises an input weight ``X``: ``X += e D`` with ``D = X + delta ||X|| I`` for each ``delta``
#: here (``None``: ``D = I``); the one whose whole chain ends with the least ``rho`` is kept.
RAISE_DIRECTIONS = (None, 1.0, 0.1)
#: ... the first of them (in that order) whose chain ends within this (relative) of the least ``rho``: the
#: trials' refits (``refit.REFIT_TOL``) stop at relative gaps up to ``refit.REFIT_NEAR_OPTIMAL``, so their
#: ``rho`` tell apart only directions further apart than that.
DIRECTION_TIE = 2e-6


@dataclasses.dataclass
class _Raise:
    """How much an output weight was raised above the value the multipliers cover:
    ``X_new = (1 + relative) X_old + absolute I``."""

    relative: float = 0.0
    absolute: float = 0.0

    def scaled(self, f: float) -> "_Raise":
        return _Raise((1 + self.relative) * f - 1, self.absolute * f)

    def plus(self, t: float) -> "_Raise":
        return _Raise(self.relative, self.absolute + t)


def recover_storage(sdp: Sdp, solution: Solution, *, margin: float = RECOVERY_MARGIN) -> Solution:
    """The solver's point with every storage ``P`` filled in (and ``rho``, ``L``, ``X`` raised as needed).

    Every system is treated the same way, from the last to the first (module docstring): the exact LMIs
    too (a dense layer's ``Phi`` is its LMI, at one "frequency"; a conv layer solved with its P gets P
    from the Riccati equation as well), so a raised output weight costs the least input shift everywhere.
    The raise direction of step 2 is chosen among ``RAISE_DIRECTIONS`` by running the chain of shifts
    (without the Riccati equations) once per direction. Systems that need ``P >= 0`` are left to
    ``certify``. ``solution.rho`` stays the solver's value, so the certificate's inflation shows the whole
    cost.
    """
    if not sdp.storage or solution.x is None:
        return solution
    point = recover_point(sdp, _solver_point(sdp, solution), margin=margin)
    return dataclasses.replace(solution, x=point.vector(sdp))


def recover_point(sdp: Sdp, start: Point, *, margin: float = RECOVERY_MARGIN,
                  cache: RecoveryCache | None = None) -> Point:
    """``recover_storage`` on a point in the original form (``reductions.StorageRecovery``): a new point.
    ``cache``: what ``refined_grids`` computed for this point (responses, trials), else nothing."""
    fine = frequency_grid(FINE_GRID)
    cache = RecoveryCache.of(sdp, cache)
    warm = {}  # (the refits of the first system start from the last one)
    trials = [(cache.trial(start, delta, margin, warm).rho, delta) for delta in RAISE_DIRECTIONS]
    least = min(rho for rho, _ in trials)
    # the first direction within DIRECTION_TIE of the least: the trials' refits stop at relative gaps of
    # about 1e-6, so closer ones are a toss-up that the last bits of the weights would decide
    delta = next(delta for rho, delta in trials if rho <= least * (1 + DIRECTION_TIE))
    point = copy.deepcopy(start)
    _raise_chain(sdp, point, fine, cache.responses, margin, delta, storage=True)
    refit_first_system(sdp, point, warm, final=True)
    return point


def _cover_raised_output(point: Point, link, raised: _Raise) -> _Raise:
    """Step 1 for an output weight raised to ``(1 + s) X_out + t I``: every multiplier of the link (its
    activation's and a block's internal ones) times ``1 + s``, the output multiplier ``+ t/2``, and the input
    weight times ``1 + s`` (``Phi`` is linear in all of them: the scaled part is exact). Returns the raise
    of the input weight so far."""
    names = link.multiplier_names
    for name in names:
        point.vars[name] = (1 + raised.relative) * point.vars[name]
    if link.lam is not None:
        point.vars[link.lam.name] = point.vars[link.lam.name] + raised.absolute / 2
    up = _Raise()
    if raised.relative and link.w_in.kind != "const":
        point.scale_weight(link.w_in, 1 + raised.relative)
        up = up.scaled(1 + raised.relative)
    return up


def _raise_input(point: Point, link, up: _Raise, shift: float, whiten, delta: float | None,
                 tiny: float) -> _Raise:
    """Step 2's raise of the input weight by ``shift`` along ``D`` plus the margin ``tiny I``: ``X_in +=
    e I`` (``whiten`` None) or ``X_in += e (X_in + delta ||X_in|| I)``; returns ``up`` with it added."""
    if whiten is None:
        point.shift_weight(link.w_in, shift + tiny)
        return up.plus(shift + tiny)
    iso = shift * delta * np.linalg.norm(point.weight(link.w_in), 2) + tiny
    point.scale_weight(link.w_in, 1 + shift)
    point.shift_weight(link.w_in, iso)
    return up.scaled(1 + shift).plus(iso)


def _response(sdp: Sdp, link, fine: np.ndarray, responses: dict) -> np.ndarray:
    """``link``'s system's frequency response on ``fine`` mapped to its own period (``system_grid``; a
    static system: its one matrix), computed once per ``responses`` cache (keyed by the link)."""
    key = id(link)
    if key not in responses:
        sys = link.system
        own = system_grid(sdp, sys, fine) if sys.ss.nx else np.zeros(1)
        responses[key] = frequency_response(sys.ss, own)
    return responses[key]


def _raise_chain(sdp: Sdp, point: Point, fine: np.ndarray, responses: dict, margin: float,
                 delta: float | None, *, storage: bool) -> None:
    """Steps 1-3 of the module docstring on ``point``, from the last system to the first; step 2 raises each
    input weight along ``D = X + delta ||X|| I`` (``D = I`` for ``delta = None``); ``storage``: also solve
    the Riccati equations for ``P`` (else only the weights and multipliers are raised)."""
    threads = kkt_threads()
    every = (FINE_GRID - 1) // (COARSE_GRID - 1)
    raised = _Raise()
    for link in reversed(sdp.links):
        if link.needs_P_psd or (link.system.internal and link.P not in sdp.storage):
            raised = _Raise()  # (its raised output weight is repaired by certify)
            continue
        if link.system.internal:  # a residual block in the frequency domain
            raised = _recover_block(point, link, raised, _response(sdp, link, fine, responses), margin,
                                    delta, storage)
            continue
        sys = link.system
        up = _cover_raised_output(point, link, raised)
        lam = point.vars[link.lam.name] if link.lam is not None else None
        X_out = point.weight(link.w_out)
        H = _response(sdp, link, fine, responses)
        # (the passes that only choose the raise direction work on a quarter of the coarse grid)
        H_coarse = (H[::every] if storage else H[:: 4 * every]) if sys.ss.nx else H
        peak_first = PeakFirst(threads)
        P = None
        for attempt in range(6):
            limits.checkpoint("storage recovery")
            X_in = point.weight(link.w_in)
            scale = max(np.linalg.norm(X_in, 2), np.linalg.norm(X_out, 2), 1e-300)
            tiny = margin * scale * 10.0**attempt
            whiten = _whitening(X_in, delta) if link.w_in.kind == "var" else None
            # the multiplier shift eta that needs the least input shift (only the latter costs bound),
            # chosen on the coarse grid; the input shift it needs is then taken on the fine one
            if lam is not None:
                phi_min = _over_frequencies(partial(phi_min_eigenvalue, sys, lam, X_in, X_out), H_coarse,
                                            threads, min)
                v = max(0.0, -phi_min) + tiny
                etas = [0.0] + [v * 4.0**j for j in range(6)]
                candidates = [partial(input_shifts, sys, lam + e, X_in, X_out, whiten=whiten) for e in etas]
                eta = peak_first.least(etas, candidates, H_coarse)
                point.vars[link.lam.name] = point.vars[link.lam.name] + eta
                lam = point.vars[link.lam.name]
            # (the passes that only choose the direction take it on the coarse grid too)
            shift = peak_first.largest(partial(input_schur, sys, lam, X_in, X_out, whiten=whiten),
                                       H if storage else H_coarse)
            up = _raise_input(point, link, up, shift, whiten, delta, tiny)
            if not sys.ss.nx or not storage:
                break
            try:
                P = storage_matrix(sys, lam, point.weight(link.w_in), X_out, shrink=tiny / (4 * sys.ss.nx))
            except (np.linalg.LinAlgError, ValueError):
                P = None
                continue
            # the LMI must come out strictly positive: a rounding deficit of 1e-16 left to certify is
            # repaired there by isotropic raises that grow with every layer upstream (x31 over 16 layers);
            # a stalled doubling (Phi nearly singular) gets ten times the margin
            if np.all(np.isfinite(P)) and (attempt == 5 or _min_eig(
                    system_matrix(sys, P, lam, point.weight(link.w_in), X_out)) > 0):
                break
        if sys.ss.nx and storage:
            point.vars[link.P.name] = P if P is not None else np.zeros((sys.ss.nx, sys.ss.nx))
        raised = up


def block_phi(sys, lam, inner, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray) -> np.ndarray:
    """A residual block's frequency-domain LMI at each frequency of ``H`` (``frequency_response``: rows
    ``(v_1 .. v_q, y)``, columns ``(u, w_1 .. w_q)``), over ``xi = (u, w, w_out)``: the block's LMI
    (``certify.system_matrix``) with ``H`` in place of ``[C D]`` and no state.

    With ``q_r = 2 a b l_r``, ``c_r = -(a + b) l_r`` and ``l_r`` the multiplier of row ``r`` of ``H`` (the
    activations', then the output's when it has a slope), ``Phi`` is

        [ X_in (+) 0 + H* Q H    H* diag(c) ]          Q = diag(q)  (and -X_out on the output rows
        [ diag(c) H              2 diag(l)  ]  - (0 (+) X_out)       when the output has no slope)

    where ``H* diag(c)`` fills the columns of the multipliered rows (the activations' outputs ``w``, then
    ``w_out``): one batched product for the quadratic part, none where ``a b = 0`` (ReLU-like slopes).
    """
    K, ny, nu = H.shape
    n_in, n_out = sys.n_in, sys.n_out
    m = nu + (n_out if sys.slope is not None else 0)
    slopes = [(a.alpha, a.beta, np.asarray(lj, dtype=float)) for a, lj in zip(sys.internal, inner)]
    if sys.slope is not None:
        slopes.append((sys.slope[0], sys.slope[1], np.asarray(lam, dtype=float)))
    quad = np.concatenate([2 * a * b * lj for a, b, lj in slopes] + [np.zeros(0)])
    cross = np.concatenate([-(a + b) * lj for a, b, lj in slopes] + [np.zeros(0)])
    nc = len(cross)  # the rows of H with a multiplier
    Hh = _h(H)
    top = np.zeros((K, nu, nu), dtype=complex)
    rows = np.flatnonzero(quad)
    if len(rows):
        top += (Hh[:, :, rows] * quad[rows]) @ H[:, rows]
    if sys.slope is None:
        top -= Hh[:, :, nc:] @ X_out.astype(complex) @ H[:, nc:]
    top = (top + _h(top)) / 2
    top[:, :n_in, :n_in] += X_in
    Phi = np.zeros((K, m, m), dtype=complex)
    Phi[:, :nu, :nu] = top
    C = Hh[:, :, :nc] * cross
    Phi[:, :nu, n_in : n_in + nc] += C
    Phi[:, n_in : n_in + nc, :nu] += _h(C)
    at = n_in + np.arange(nc)
    Phi[:, at, at] += 2 * np.concatenate([lj for _, _, lj in slopes] + [np.zeros(0)])
    if sys.slope is not None:
        Phi[:, nu:, nu:] -= X_out
    return Phi


def _block_min_eigenvalue(sys, lam, inner, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray,
                          threads: int) -> float:
    """``min_w lambda_min(block_phi(w))`` over the frequencies of ``H``, in parts (``_over_frequencies``)."""
    return _over_frequencies(
        lambda part: float(np.linalg.eigvalsh(block_phi(sys, lam, inner, X_in, X_out, part)).min()),
        H, threads, min)


def block_input_shifts(sys, lam, inner, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray,
                       whiten: np.ndarray | None = None) -> np.ndarray:
    """``input_shifts`` for a residual block: at each frequency of ``H``, ``-lambda_min`` of the Schur
    complement of ``block_phi`` on the coordinates other than ``u`` (``inf`` at every frequency when that
    block is not positive definite at one of them); the least ``e >= 0`` with ``block_phi + diag(e I, 0) >=
    0`` is the clamped maximum (``whiten``: ``e D`` instead of ``e I``, as there)."""
    return _shifts(block_schur(sys, lam, inner, X_in, X_out, H, whiten), len(H))


def block_schur(sys, lam, inner, X_in: np.ndarray, X_out: np.ndarray, H: np.ndarray,
                whiten: np.ndarray | None = None) -> np.ndarray | None:
    """The Hermitian Schur complements whose ``-lambda_min`` are ``block_input_shifts`` (stacked; None when
    the other coordinates' block is not positive definite at some frequency)."""
    Phi = block_phi(sys, lam, inner, X_in, X_out, H)
    n = sys.n_in
    R = Phi[:, n:, n:]
    if R.shape[1] == 0:
        return whiten @ Phi @ whiten.T if whiten is not None else Phi
    try:
        chol = np.linalg.cholesky(R)
    except np.linalg.LinAlgError:
        return None
    G = np.linalg.solve(chol, _h(Phi[:, :n, n:]))  # chol^-1 S*, so that S R^-1 S* = G*G
    schur = Phi[:, :n, :n] - _h(G) @ G
    if whiten is not None:
        schur = whiten @ schur @ whiten.T
    return (schur + _h(schur)) / 2


def _whitening(X: np.ndarray, delta: float | None) -> np.ndarray | None:
    """``R^-1`` for ``D = X + delta ||X|| I = R R'`` (None: ``D = I``, or ``D`` not positive definite)."""
    if delta is None:
        return None
    D = X + delta * np.linalg.norm(X, 2) * np.eye(len(X))
    try:
        return scipy.linalg.solve_triangular(np.linalg.cholesky((D + D.T) / 2), np.eye(len(D)), lower=True)
    except np.linalg.LinAlgError:
        return None


def _recover_block(point: Point, link, raised: _Raise, H: np.ndarray, margin: float,
                   delta: float | None = None, storage: bool = True) -> _Raise:
    """Steps 1-3 of the module docstring for a residual block (``H``: its frequency response on the fine
    grid of its own period, ``_response``); returns the raise of its input weight.

    Step 1: every multiplier of the block and its input weight are scaled by ``1 + s`` and the output
    multiplier gets ``t/2`` (the output weight was raised as ``(1 + s) X_out + t I``). Step 2: every
    multiplier of the block gets ``eta`` (one of ``0, v, 4v, ..., 4^5 v``, ``v`` the deficit of the
    frequency-domain LMI ``block_phi``, chosen on the coarse grid for the least input shift), then (only
    when ``storage``, i.e. not while the raise direction is being chosen) each multiplier alone a further
    ``v/4 .. 16 v`` where that lowers the input shift (two passes; each trial on a quarter of the coarse
    grid, as are all the choices while the raise direction is being chosen), then ``X_in`` the least raise
    along ``D`` (``_raise_chain``) that makes ``block_phi >= 0`` on the fine grid (``block_input_shifts``)
    plus a margin. Step 3: ``P`` from the Riccati equation.
    """
    sys = link.system
    names = link.multiplier_names
    up = _cover_raised_output(point, link, raised)

    def multipliers(eta: float):
        lam = point.vars[link.lam.name] + eta if link.lam is not None else None
        return lam, [point.vars[v.name] + eta for v in link.inner]

    X_out = point.weight(link.w_out)
    X_in = point.weight(link.w_in)
    whiten = _whitening(X_in, delta) if link.w_in.kind == "var" else None
    every = (FINE_GRID - 1) // (COARSE_GRID - 1)
    # (the passes that only choose the raise direction: a quarter of the coarse grid, as in _raise_chain)
    Hc = H[::every] if storage else H[:: 4 * every]
    scale = max(np.linalg.norm(X_in, 2), np.linalg.norm(X_out, 2), 1e-300)
    tiny = margin * scale
    threads = kkt_threads()

    peak_first = PeakFirst(threads)

    def shifts(lam, inner):  # block_input_shifts at these multipliers
        return partial(block_input_shifts, sys, lam, inner, X_in, X_out, whiten=whiten)

    def shift_at(lam, inner, H, above=np.inf):  # the clamped max of block_input_shifts (PeakFirst)
        return peak_first(shifts(lam, inner), H, above)

    v = max(0.0, -_block_min_eigenvalue(sys, *multipliers(0.0), X_in, X_out, Hc, threads)) + tiny
    etas = [0.0] + [v * 4.0**j for j in range(6)]
    eta = peak_first.least(etas, [shifts(*multipliers(e)) for e in etas], Hc)
    for name in names:
        point.vars[name] = point.vars[name] + eta
    # then one multiplier at a time, where it lowers the input shift (the trials on a quarter of the grid:
    # they choose the multipliers; the shift itself is taken on the fine grid below)
    best = shift_at(*multipliers(0.0), Hc[::4]) if storage else None
    for _ in range(2 if storage else 0):
        for name in names:
            base = point.vars[name]
            for extra in (v / 4, v, 4 * v, 16 * v):
                point.vars[name] = base + extra
                trial = shift_at(*multipliers(0.0), Hc[::4], above=best)
                if trial < best:
                    best, base = trial, base + extra
            point.vars[name] = base
    lam, inner = multipliers(0.0)
    shift = peak_first.largest(partial(block_schur, sys, lam, inner, X_in, X_out, whiten=whiten),
                               H if storage else Hc)
    if not np.isfinite(shift):  # (no multiplier shift made the block's other coordinates definite)
        whiten = None
        shift = max(0.0, -_block_min_eigenvalue(sys, lam, inner, X_in, X_out, H, threads))
    up = _raise_input(point, link, up, shift, whiten, delta, tiny)
    if not storage:
        return up
    try:  # (strictly positive, as in _raise_chain)
        P = storage_matrix(sys, lam, point.weight(link.w_in), X_out, inner, shrink=tiny / (4 * sys.ss.nx))
    except (np.linalg.LinAlgError, ValueError):
        P = np.zeros((sys.ss.nx, sys.ss.nx))
    point.vars[link.P.name] = P if np.all(np.isfinite(P)) else np.zeros((sys.ss.nx, sys.ss.nx))
    return up

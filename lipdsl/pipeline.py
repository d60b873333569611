"""Run the pipeline: typed.Network -> Result (lower, build the SDP, solve, certify), with stage times.

The Python API the CLI uses::

    >>> from lipdsl.lang.load import load_network
    >>> from lipdsl.pipeline import solve_network
    >>> _, net = load_network("specs/ecg.lip")            # doctest: +SKIP
    >>> result = solve_network(net)                        # doctest: +SKIP
    >>> result.certificate.verified, round(result.certificate.lipschitz, 4)   # doctest: +SKIP
    (True, 109.123)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from lipdsl import limits

from lipdsl.lang import typed
from lipdsl.certify import reductions
from lipdsl.certify.recheck import Certificate, certify
from lipdsl.errors import LimitError, LipdslError, SolveError, UnsupportedError
from lipdsl.model.lower import lower
from lipdsl.model.lowered import Network as LoweredNetwork
from lipdsl.rigorous import format_up
from lipdsl.sdp.build import NO_FREQUENCY_FORM, build_sdp, weight_bases
from lipdsl.sdp.problem import Sdp, Variable
from lipdsl.sizes import (  # noqa: F401 (imported from here too)
    ProblemSize, SubspaceWeights, lowered_size, problem_size)
from lipdsl.solvers.registry import EXACT_TOL, FREQUENCY_TOL, first_order, tolerance_text
from lipdsl.solvers.solve import Solution, converged, solve

#: Default limit on the order of the largest LMI (``lipdsl solve --max-lmi``). Interior-point solvers need
#: O(m^2) memory per LMI and O(n^2) for the Newton system; one 1000-row LMI takes ~80 s (method.md §9).
MAX_LMI = 4000
#: Default limit on the number of scalar decision variables: the Newton (KKT) matrix is n x n doubles.
MAX_VARIABLES = 20000
#: A certified bound from a solver that did not converge is reported only if the repair raised it by at
#: most this much relative to the solver's own value (a nearly feasible point; e.g. CVXOPT ending on a
#: singular KKT matrix after reaching its tolerance), or with ``accept_unconverged``.
UNCONVERGED_INFLATION = 1e-3
#: ... or if the solver stopped with relative gap and residuals within this many times ``tol`` (the point is
#: then as good as an 'optimal' one; with ``--frequencies`` the repair also pays for the frequency grid, so
#: the inflation test alone would reject converged solves).
NEAR_OPTIMAL = 10.0
#: ... or if it stopped (CVXOPT's singular-KKT ending near the optimum, e.g. on the residual TCN) with
#: relative gap and residuals at most this: its value is then within this of the SDP's optimum, and what
#: infeasibility remains is paid by the repair, which the certified bound includes (the report shows the gap).
STOPPED_NEAR_OPTIMAL = 1e-4
#: In frequency mode a repair above this (relative) is reported first, as a warning.
REPAIR_WARNING = 0.01


#: ``frequencies="auto"`` (``lipdsl solve``'s default): the exact LMIs unless they would have more than this
#: many variables (a Newton matrix of 128 MB: a few seconds per iteration) and the frequency form on
#: ``AUTO_FREQUENCIES`` frequencies has fewer.
AUTO_VARIABLES = 4000
AUTO_FREQUENCIES = 17
#: ... and on fewer when its largest frequency LMI has many rows (``2 (c_in + c_out)``, or a residual
#: block's stacked signals): each costs ``O(rows^3)`` per interior-point iteration, and the repair of a
#: coarser grid costs less than those iterations. ``(rows, frequencies)``, the first that applies:
#: FCN 32/64/32 (192 rows) 9, ResNet-1D (256) 9, FCN 64/128/64 (384) 7, FCN 128/256/128 (768) 5.
AUTO_WIDE_FREQUENCIES = ((768, 5), (384, 7), (192, 9))
#: Frequency mode: re-solves with the grid refined where the LMIs dip between its frequencies
#: (``certify.storage.refined_grids``; none when they do not dip): up to this many by default, ...
REFINE_ROUNDS = 2
#: ... and by default only when the recovery would raise the bound by more than this (relative): a round
#: costs about a whole solve. An explicit ``refine_rounds`` (``--refine-rounds N``) refines above
#: ``storage.REFINE_REPAIR`` (1 %, the report's warning threshold) instead.
AUTO_REFINE_REPAIR = 0.05


#: ``weight_rank="auto"``: the weights X between layers on a subspace of this rank (``diag(d) + V S V'``,
#: ``sdp.build.weight_bases``) when the chosen form with full X would have more than
#: ``AUTO_WEIGHT_VARIABLES`` variables (wide layers: a full X of 256 channels alone is 32,896 variables;
#: FCN 32/64/32 in frequency form: 3,293, where the dense Newton matrix's Cholesky and Gram products are half
#: of each iteration).
AUTO_WEIGHT_RANK = 16
AUTO_WEIGHT_VARIABLES = 2000
#: ... for the weights of at least this many channels (a full X of 64 channels: 2,080 variables); narrower
#: ones stay full (a deep chain of narrow layers has a banded Newton matrix: full X is cheap there).
AUTO_WEIGHT_MIN_ORDER = 64


def solved(sol: Solution, tol: float) -> bool:
    """Whether ``sol`` converged, or stopped as near the optimum as ``NEAR_OPTIMAL`` and
    ``STOPPED_NEAR_OPTIMAL`` ask (``Solution.near_optimal``)."""
    return converged(sol.claimed_status) or sol.near_optimal(max(NEAR_OPTIMAL * tol, STOPPED_NEAR_OPTIMAL))


def solve_tolerance(sdp: Sdp, solver: str, tol: float | None) -> tuple[float, str]:
    """The solver's relative tolerance (``tol``, or the default for ``sdp``'s form: ``FREQUENCY_TOL`` for a
    frequency-form SDP solved by an interior-point method, else ``EXACT_TOL``) and the clause the ``form``
    sentence gets when the default is the looser one ("" otherwise). A first-order solver keeps
    ``EXACT_TOL``: it scales it up to what it can reach (``scs_backend.TOL_FACTOR``)."""
    if tol is not None:
        return float(tol), ""
    if sdp.storage and not first_order(solver):
        return FREQUENCY_TOL, (f"solver tolerance {tolerance_text(FREQUENCY_TOL)}: the grid's repair is "
                               "larger (--tol sets it)")
    return EXACT_TOL, ""


def choose_form(net: typed.Network, lift: int = 1, frequencies: int | str | None = "auto"
                ) -> tuple[int | None, str]:
    """The number of frequencies to solve ``net`` with (None: the exact LMIs) and a sentence saying which
    form that is and why. ``frequencies``: a number (kept), None or ``"none"`` (the exact LMIs), or
    ``"auto"``: the exact LMIs unless they have more than ``AUTO_VARIABLES`` variables and the frequency
    form on ``AUTO_FREQUENCIES`` frequencies fewer (sizes from ``problem_size``, before lowering); on fewer
    (``AUTO_WIDE_FREQUENCIES``) when its largest LMI has many rows."""
    if frequencies is None or frequencies == "none":
        return None, "exact LMIs (the storage P of every conv layer a solver variable)"
    if frequencies != "auto":
        k = int(frequencies)
        return k, f"frequency-domain LMIs for the wide conv layers on {k} frequencies (--frequencies {k})"
    exact = problem_size(net, lift)
    if exact.variables <= AUTO_VARIABLES:
        return None, (f"exact LMIs ({exact.variables:,} variables; chosen automatically, at most "
                      f"{AUTO_VARIABLES:,})")
    gridded = problem_size(net, lift, AUTO_FREQUENCIES)
    if gridded.variables >= exact.variables:
        return None, (f"exact LMIs ({exact.variables:,} variables; the frequency form would not have fewer)")
    k, wide = AUTO_FREQUENCIES, ""
    for rows, fewer in AUTO_WIDE_FREQUENCIES:
        if gridded.largest_lmi >= rows:
            k = fewer
            gridded = problem_size(net, lift, k)
            wide = (f" ({k}, not {AUTO_FREQUENCIES}: LMIs of {gridded.largest_lmi:,} rows, each O(rows^3) an "
                    f"iteration)")
            break
    return k, (
        f"frequency-domain LMIs for the wide conv layers on {k} frequencies, chosen "
        f"automatically{wide}: {gridded.variables:,} variables instead of the exact LMIs' "
        f"{exact.variables:,} (--frequencies none keeps the exact ones, --frequencies K sets K)")


def choose_weights(net: typed.Network, lift: int, frequencies: int | None,
                   weight_rank: int | str | None = "auto") -> tuple[SubspaceWeights | None, str]:
    """The rank of the subspace weights (None: full X) and a sentence saying why. ``weight_rank``: a number
    (kept), None or ``"full"`` (full X), or ``"auto"``: ``AUTO_WEIGHT_RANK`` when the form being solved
    (``frequencies``) would have more than ``AUTO_WEIGHT_VARIABLES`` variables with full X and fewer with the
    subspace weights (docs/method.md, "Weights on a subspace")."""
    if weight_rank is None or weight_rank == "full":
        return None, ""
    if weight_rank != "auto":
        r = int(weight_rank)
        return SubspaceWeights(r), f"weights X = diag + rank-{r} subspace (--weight-rank {r})"
    full = problem_size(net, lift, frequencies)
    if full.variables <= AUTO_WEIGHT_VARIABLES:
        return None, ""
    auto = SubspaceWeights(AUTO_WEIGHT_RANK, AUTO_WEIGHT_MIN_ORDER)
    reduced = problem_size(net, lift, frequencies, auto)
    if reduced.variables >= full.variables:
        return None, ""
    return auto, (
        f"weights X of {AUTO_WEIGHT_MIN_ORDER}+ channels = diag + rank-{AUTO_WEIGHT_RANK} subspace, chosen "
        f"automatically: {reduced.variables:,} variables instead of {full.variables:,} with full X "
        f"(--weight-rank full keeps them full, --weight-rank R sets R)")


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
    #: with ``--frequencies``: the product of the layers' H-infinity gains (``baselines.unrolled.naive_hinf``,
    #: a cheap certified bound); the report flags a frequency-form bound above it. None otherwise.
    hinf_product: float | None = None
    #: which LMIs were solved and why (``choose_form``)
    form: str = ""
    #: the ``refine_rounds`` asked for (None: the default, ``AUTO_REFINE_REPAIR``)
    refine_rounds: int | None = None

    @property
    def frequencies(self) -> int | None:
        """How many frequencies the frequency-domain LMIs were asked for (``--frequencies K``; the grid
        refinement may have added some to each system, ``sdp.grids``); None: no gridded layer."""
        return self.sdp.frequencies if self.sdp.storage else None

    @property
    def above_hinf_product(self) -> bool | None:
        """Whether the certified bound is above ``hinf_product`` (None: no certified bound or no product)."""
        if self.hinf_product is None or not self.certificate.verified:
            return None
        return bool(self.certificate.lipschitz > self.hinf_product)

    @property
    def warnings(self) -> list[str]:
        """What a reader of a frequency-form bound must see first: a large repair (the grid missed the worst
        frequencies) and a bound above the cheap product of H-infinity gains (``--method naive-hinf``).
        The one place these are decided: ``lipdsl solve``, ``compare``, ``sweep`` and the Python API's
        ``Bound`` all report this list."""
        cert = self.certificate
        if not cert.verified or not self.sdp.storage:
            return []
        out = []
        if cert.inflation is not None and cert.inflation > REPAIR_WARNING:
            k = self.frequencies  # (every gridded system has its grid in sdp.grids, refined or K long)
            sizes = sorted({len(grid) for grid in self.sdp.grids.values()})
            lo, hi = sizes[0], sizes[-1]
            refined = sizes != [k]  # (the refinement added frequencies to some systems, or to all alike)
            grid = (f"the {k}-frequency grid misses" if not refined else
                    f"the grids, refined to {lo}{'' if lo == hi else f'-{hi}'} frequencies, miss")
            if refined:
                more = "more refinement rounds (--refine-rounds N), "
            elif not self.refine_rounds:  # (by default, grids are refined only above AUTO_REFINE_REPAIR)
                more = f"the grid refined where they dip (--refine-rounds {max(REFINE_ROUNDS, 1)}), "
            else:
                more = ""
            out.append(f"the certificate repair raised the solver value {cert.lipschitz_solver:.6g} by "
                       f"{cert.inflation:.1%} (x{1 + cert.inflation:.3g}): {grid} where the LMIs are tight; "
                       f"{more}more frequencies (--frequencies {2 * k - 1}) or the exact "
                       "SDP (--frequencies none) give a tighter bound")
        if self.above_hinf_product:
            out.append(f"this bound is above the product of the layers' H-infinity gains, "
                       f"{format_up(self.hinf_product)} (also certified: lipdsl solve --method naive-hinf)")
        return out

    def frequency_report(self) -> dict:
        """The frequency-mode fields of every report (``solve --json``, ``compare --json``, the API's
        ``Bound``): ``frequencies``, ``hinf_product``, ``above_hinf_product``, ``warnings``."""
        return {
            "frequencies": self.frequencies,
            "hinf_product": self.hinf_product,
            "above_hinf_product": self.above_hinf_product,
            "warnings": self.warnings,
        }

    @property
    def closed_form(self) -> bool:
        """Whether the bound needed no SDP (``_exact_bound``: zero weights, a slope [0, 0], a merged map that
        is zero in float64, pooling only): no LMI was solved or checked, and ``sdp.notes`` says why."""
        return self.solution.claimed_status == "closed-form"

    @property
    def validity(self) -> str:
        """For which input lengths the bound holds, in words (``lowered.Network.validity``)."""
        return self.lowered.validity(self.min_length)


def solve_network(
    net: typed.Network,
    *,
    solver: str = "cvxopt",
    tol: float | None = None,
    max_iterations: int = 100,
    margin: float = 1e-11,
    verbose: bool = False,
    min_length: int | None = None,
    lift: int = 1,
    seconds: dict[str, float] | None = None,
    max_lmi: int | None = MAX_LMI,
    max_variables: int | None = MAX_VARIABLES,
    timeout: float | None = None,
    accept_unconverged: bool = False,
    frequencies: int | str | None = None,
    merge_linear: bool = True,
    deadline: limits.Deadline | None = None,
    progress=None,
    weight_rank: int | str | None = None,
    refine_rounds: int | None = None,
) -> Result:
    """Certified Lipschitz upper bound of ``net`` by the layer-wise dissipativity SDP.

    ``min_length``: for any-length inputs, the shortest input length the bound must cover (needed only by a
    global average pool). ``lift``: realize conv layers on blocks of ``lift`` samples (tighter, larger
    LMIs; see ``lipdsl.model.lower.lower``). ``merge_linear=False``: one linear LMI per linear layer instead
    of
    merged maps (for comparison; never tighter). ``seconds`` may carry earlier stage times
    (e.g. ``{"parse+check": ...}``); the stages run here are added.
    Raises ``LipdslError`` subclasses for unsupported networks or a solver that fails without a point; an
    uncertified point is *not* an exception: see ``result.certificate.verified``.

    Limits: ``max_lmi`` (order of the largest LMI) and ``max_variables`` are checked before anything is
    lowered or allocated, and again on the lowered systems before the SDP is built (``LimitError``), and so
    is the estimated peak memory (``ProblemSize.memory``) against ``limits.available_memory()``;
    ``timeout`` (seconds, finite and > 0) or the command's ``deadline`` bounds the whole call, lowering,
    solve and storage recovery (``TimeLimitError``, a ``SolveError``). BLAS runs on one thread meanwhile
    (``limits.blas_threads``; restored on return). A bound
    certified from a solver that did not converge is sound but may be loose: unless ``accept_unconverged``,
    it raises ``SolveError`` (with the Result in ``err.result``) when the repair raised the solver's value
    by more than ``UNCONVERGED_INFLATION``.

    ``frequencies``: solve the conv layers' LMIs in the frequency domain on that many frequencies and
    recover their storage matrices P afterwards (``lipdsl.certify.storage``): far fewer variables for wide
    layers, a bound slightly above the exact SDP's (still certified the same way); ``"auto"``: that on
    ``AUTO_FREQUENCIES`` frequencies when the exact LMIs would be large (``choose_form``; ``result.form``
    says which).

    ``tol``: the solver's relative tolerance; None: ``EXACT_TOL`` (1e-7), or ``FREQUENCY_TOL`` (1e-4) for an
    interior-point solve of the frequency form (``solve_tolerance``; ``result.form`` says so).

    ``refine_rounds``: in the frequency domain, at most that many re-solves with the grid refined where the
    LMIs dip between its frequencies, when the certificate's repair would exceed ``storage.REFINE_REPAIR``
    (0: none, the fastest; each, started from the last point, costs about a solve and lowers the repair);
    None: up to ``REFINE_ROUNDS``, when the repair would exceed ``AUTO_REFINE_REPAIR``.

    ``progress``: called as ``progress(stage)`` when a stage starts ("lowering", "building the SDP",
    "solving", "recovering P (Riccati)", "certifying"; on the working thread; for a progress display).
    """
    if deadline is None:
        deadline = limits.current() if timeout is None else limits.Deadline.after(timeout)
    frequencies, form = choose_form(net, lift, frequencies)
    weights, weights_form = choose_weights(net, lift, frequencies, weight_rank)
    form = f"{form}; {weights_form}" if weights_form else form
    options = dict(solver=solver, lift=lift, frequencies=frequencies)
    # refused on the calling thread, before anything is lowered or allocated (again after lowering, inside)
    _check_limits(net, problem_size(net, lift, frequencies, weights), max_lmi, max_variables, **options)
    with limits.blas_threads(), deadline.active():
        return limits.run_within(
            lambda: _solve_network(net, solver, tol, max_iterations, margin, verbose, min_length, lift,
                                   seconds, max_lmi, max_variables, accept_unconverged, frequencies,
                                   merge_linear, deadline, options, progress or (lambda stage: None), form,
                                   weights, refine_rounds),
            deadline, "lipdsl solve", grace=0.5)


def _solve_network(net, solver, tol, max_iterations, margin, verbose, min_length, lift, seconds, max_lmi,
                   max_variables, accept_unconverged, frequencies, merge_linear, deadline, options,
                   progress, form, weights=None, refine_rounds=None) -> Result:
    """``solve_network`` inside its deadline and thread limits."""
    times = dict(seconds or {})
    t0 = time.perf_counter()
    progress("lowering")
    low = lower_within_limits(net, min_length=min_length, lift=lift, frequencies=frequencies, solver=solver,
                              merge_linear=merge_linear, max_lmi=max_lmi, max_variables=max_variables,
                              weights=weights)
    t1 = time.perf_counter()
    limits.checkpoint("lowering")
    exact = _exact_bound(low)
    if exact is not None:
        times.update({"lower": t1 - t0})
        return _exact_result(net, low, *exact, times, min_length)
    progress("building the SDP")
    weights = {} if weights is None else dict(
        weights="subspace", bases=weight_bases(low, weights.rank, weights.min_order))
    sdp = build_sdp(low, frequencies=frequencies, **weights)
    if frequencies is not None and not sdp.storage:  # (no system took the frequency form: build_sdp's note)
        form = NO_FREQUENCY_FORM.format(k=frequencies)
    tol, tolerance = solve_tolerance(sdp, solver, tol)
    form = f"{form}; {tolerance}" if tolerance else form
    t2 = time.perf_counter()
    progress("solving")
    limits.checkpoint("building the SDP")
    sol = solve(sdp, solver, tol=tol, max_iterations=max_iterations, verbose=verbose, deadline=deadline)
    t3 = time.perf_counter()
    stages = {"lower": t1 - t0, "sdp": t2 - t1, "solve": t3 - t2}
    cache = None
    if sdp.storage and refine_rounds != 0:
        sdp, sol, cache = _refine(low, sdp, sol, frequencies, solver, tol, max_iterations, verbose, deadline,
                                  progress, weights, refine_rounds)
        stages["refine"] = time.perf_counter() - t3
        t3 = time.perf_counter()
    # the solver's point mapped back to the LMIs' original form by the reductions build_sdp applied (inverse
    # forms; the storage P of frequency-domain layers, from Riccati equations): certify sees only that point
    chain = reductions.chain(sdp, recovery_cache=cache)
    point = None
    if sol.x is not None and np.all(np.isfinite(sol.x)):
        try:
            point = chain.invert(sol, progress=progress, seconds=stages)
        except reductions.NotInvertible:
            point = None  # certify says so
        if chain.storage is not None and point is not None:
            sol = replace(sol, x=chain.solved_form(point))  # the report shows the recovered P
        t3 = time.perf_counter()
    limits.checkpoint("storage recovery")
    progress("certifying")
    cert = certify(sdp, sol, margin=margin, point=point)
    t4 = time.perf_counter()
    times.update({**stages, "certify": t4 - t3})
    product = _hinf_product(net, min_length) if sdp.storage else None
    result = Result(net, low, sdp, sol, cert, times, min_length, product, form, refine_rounds)
    if (
        cert.verified
        and not accept_unconverged
        and not solved(sol, tol)
        and not (cert.inflation is not None and cert.inflation <= UNCONVERGED_INFLATION)
    ):
        err = SolveError(
            f"{sol.solver} stopped after {sol.iterations} iterations without converging (status "
            f"{sol.claimed_status!r}); the bound certified from its last point, "
            f"{format_up(cert.lipschitz, 6)}, "
            + (f"is {1 + cert.inflation:.4g} times the solver's value {cert.lipschitz_solver:.6g} and "
               if cert.inflation is not None else f"(the solver's value: {cert.lipschitz_solver}) ")
            + "may be loose",
            hint="raise --max-iterations, try another --solver, or pass --accept-unconverged to report this "
            "(sound) bound",
        )
        err.result = result
        raise err
    return result


def _refine(low, sdp, sol, frequencies, solver, tol, max_iterations, verbose, deadline, progress, weights,
            refine_rounds):
    """Frequency mode: up to ``refine_rounds`` re-solves with each system's grid refined where its ``Phi``
    dips between the frequencies at the solver's point, while the recovery would raise the bound by more
    than ``storage.REFINE_REPAIR`` (``storage.refined_grids``); ``refine_rounds=None``: up to
    ``REFINE_ROUNDS``, while it would raise it by more than ``AUTO_REFINE_REPAIR``. A note says so.

    A re-solve that stops short of its tolerance (neither converged nor ``near_optimal``; e.g. CVXOPT's
    singular-KKT ending on a denser grid) is dropped for the last one that did, so refining never turns a
    converged solve into an unconverged one. Returns the SDP, its solution and, when the last check found
    nothing to refine, what that check computed for the recovery of the same point
    (``storage.RecoveryCache``; else None)."""
    from lipdsl.certify.storage import REFINE_REPAIR, RecoveryCache, refined_grids

    max_rounds, repair = ((REFINE_ROUNDS, AUTO_REFINE_REPAIR) if refine_rounds is None
                          else (refine_rounds, REFINE_REPAIR))
    rounds, dropped, cache = 0, None, None
    while rounds < max_rounds and sol.x is not None:
        cache = RecoveryCache(sdp)
        grids = refined_grids(sdp, sol, repair=repair, cache=cache)
        if grids is None:
            break
        cache = None
        progress("refining the frequency grid")
        limits.checkpoint("refining the frequency grid")
        refined = build_sdp(low, frequencies=frequencies, grids=grids, **weights)
        # started from the last point (its LMIs are among the refined ones): about half the iterations
        again = solve(refined, solver, tol=tol, max_iterations=max_iterations, verbose=verbose,
                      deadline=deadline, warm=sol if solved(sol, tol) else None)
        if solved(sol, tol) and not solved(again, tol):
            dropped = again
            break
        sdp, sol = refined, again
        rounds += 1
    notes = ()
    if rounds:
        counts = ", ".join(f"{name} {len(grid)}" for name, grid in sdp.grids.items())
        notes += (f"frequency grid refined {rounds} time(s) where the LMIs dipped between the {frequencies} "
                  f"frequencies at the solver's point (solved again each time): {counts} frequencies",)
    if dropped is not None:
        notes += (f"a re-solve on a further refined grid stopped without converging ({dropped.solver} "
                  f"{dropped.claimed_status!r} after {dropped.iterations} iterations); the last converged "
                  "solve is certified",)
    if notes:
        sdp = replace(sdp, notes=sdp.notes + notes)  # (the same links and grids: the cache still applies)
        cache = None if cache is None else replace(cache, sdp=sdp)
    return sdp, sol, cache


def _hinf_product(net: typed.Network, min_length: int | None) -> float | None:
    """``naive_hinf(net)`` to compare a frequency-form bound with, or None if it is not available (a
    network it does not cover, or beyond its time estimate)."""
    from lipdsl.baselines.unrolled import naive_hinf

    try:
        return naive_hinf(net, min_length)
    except LipdslError:
        return None


def lower_within_limits(
    net: typed.Network,
    *,
    min_length: int | None = None,
    lift: int = 1,
    frequencies: int | None = None,
    merge_linear: bool = True,
    max_lmi: int | None = MAX_LMI,
    max_variables: int | None = MAX_VARIABLES,
    solver: str = "cvxopt",
    weights: SubspaceWeights | None = None,
) -> LoweredNetwork:
    """``lower(net)``, refused (``LimitError``) before anything is allocated when the SDP it leads to would
    exceed the limits or the machine's memory (for ``solver``), and again on the lowered systems (merges and
    folds can outgrow the estimate). The one way into the SDP for ``solve_network`` and the SDPA export."""
    options = dict(solver=solver, lift=lift, frequencies=frequencies)
    _check_limits(net, problem_size(net, lift, frequencies, weights), max_lmi, max_variables, **options)
    low = lower(net, min_length=min_length, lift=lift, merge_linear=merge_linear)
    _check_limits(net, lowered_size(low, frequencies, weights), max_lmi, max_variables, low, **options)
    return low


def _check_limits(net: typed.Network, size: ProblemSize, max_lmi: int | None, max_variables: int | None,
                  low: LoweredNetwork | None = None, *, solver: str = "cvxopt", lift: int = 1,
                  frequencies: int | None = None) -> None:
    """``LimitError`` when ``size`` (``problem_size``, or ``lowered_size`` of ``low``) exceeds a limit or its
    estimated memory (``ProblemSize.memory``) exceeds the machine's (``limits.available_memory``)."""
    merged = "" if low is None else " after merging linear layers"
    system = size.largest_system
    if low is not None:  # a system (e.g. "c1+c2+relu3"): its first layer for the position
        system = next((s.layers[0] for s in low.systems if s.name == system), system)
    if max_lmi is not None and size.largest_lmi > max_lmi:
        raise LimitError(
            f"the LMI of {'layer ' if low is None else ''}{size.largest_system!r} would have "
            f"{size.largest_lmi} rows ({size.detail}){merged}, more than --max-lmi {max_lmi}; the SDP would "
            f"have {size.variables} variables (about {limits.describe_bytes(size.memory(solver))} for the "
            "solver)",
            span=_span(net, system),
            hint="raise --max-lmi if the machine has the memory and time; a conv layer costs "
            "(dilation*(kernel-1)+1)*c_in rows (times --lift)" if low is None else
            "raise --max-lmi if the machine has the memory and time (the merged map is exact and its bound "
            "tighter than one LMI per layer)",
        )
    if max_variables is not None and size.variables > max_variables and not first_order(solver):
        # (the limit stands for the n x n Newton matrix, which a first-order solver does not form)
        raise LimitError(
            f"the SDP would have {size.variables} variables{merged}, more than {max_variables} (about "
            f"{limits.describe_bytes(size.memory(solver))} for the solver); its largest LMI has "
            f"{size.largest_lmi} rows",
            span=None,
            hint=_smaller_hint(net, low, size, solver, lift, frequencies, max_lmi, max_variables),
        )
    needed = size.memory(solver)
    if needed > limits.available_memory():
        states = max((s[0] for s in size.systems), default=0)
        lowering = limits.lowering_bytes(size.systems)
        what = (f"the SDP ({size.variables} variables{merged}, largest LMI {size.largest_lmi} rows, "
                f"{len(size.lmi_orders)} LMIs)")
        if lowering > needed / 2:  # the state spaces themselves, not the solver
            what = f"lowering (state spaces with up to {states} states) and solving {what}"
        limits.require_memory(
            needed,
            what,
            hint=_smaller_hint(net, low, size, solver, lift, frequencies, max_lmi, max_variables),
            span=_span(net, system),
        )


def _fits(size: ProblemSize, solver: str, max_lmi: int | None, max_variables: int | None) -> bool:
    return ((max_lmi is None or size.largest_lmi <= max_lmi)
            and (max_variables is None or size.variables <= max_variables)
            and size.memory(solver) <= limits.available_memory())


def _smaller_hint(net, low, size: ProblemSize, solver: str, lift: int, frequencies: int | None,
                  max_lmi: int | None, max_variables: int | None) -> str:
    """A hint that is true: the first of the options lipdsl has (frequency form, a smaller lift, the
    structured CVXOPT solver) whose problem would pass every limit, else what the machine would need."""
    def size_of(lift_, freq):
        if low is not None and lift_ == lift:
            return lowered_size(low, freq)
        return problem_size(net, lift_, freq)

    tries = []
    if frequencies is None:
        tries.append((lift, 33, "solve with --frequencies 33 (P eliminated by the KYP lemma, recovered "
                                "afterwards)"))
    elif frequencies > 9:
        tries.append((lift, 9, f"use fewer frequencies (--frequencies 9 instead of {frequencies})"))
    for smaller in sorted({1, lift // 2} - {lift}, reverse=True):
        if 0 < smaller < lift:
            tries.append((smaller, frequencies, f"use a smaller lift (--lift {smaller} instead of {lift})"))
    for lift_, freq, words in tries:
        try:
            if _fits(size_of(lift_, freq), solver, max_lmi, max_variables):
                return words
        except LipdslError:  # pragma: no cover - a size computation that cannot be done
            continue
    if solver != "cvxopt" and _fits(size, "cvxopt", max_lmi, max_variables):
        return "use --solver cvxopt (lipdsl's structured KKT solver needs far less memory)"
    return (f"reduce {_what_to_reduce(net, low, size.largest_system)}, or run on a machine with "
            f"{limits.about_bytes(size.memory(solver))} of memory")


def _what_to_reduce(net: typed.Network, low, system: str) -> str:
    """What makes the system ``system`` (a layer, a block, or a merged run of ``low``) large, in words: the
    channels and kernel sizes of its conv layers, and their dilation when that is the largest factor of a
    conv's ``dilation*(kernel-1)*c_in`` states."""
    names = {system}
    if low is not None:
        names.update(next((s.layers for s in low.systems if s.name == system), ()))
    layers = [x for layer in net.layers
              for x in ([layer] + (typed.flat_layers([layer]) if isinstance(layer, typed.Residual) else []))]
    convs = [c for layer in layers if layer.name in names
             for c in typed.flat_layers([layer]) if isinstance(c, typed.Conv1d)]
    general = "(a conv layer has dilation*(kernel-1)*c_in states and (states)^2/2 storage variables)"
    if not convs:
        return f"the channels or kernel sizes of {system!r} {general}"
    conv = max(convs, key=lambda c: c.dilation * (c.kernel - 1) * c.c_in)
    d, k1, c_in = conv.dilation, conv.kernel - 1, conv.c_in
    if d <= 1 or d < max(k1, c_in):
        return f"the channels or kernel sizes of {system!r} {general}"
    which = f"its conv {conv.name!r}" if conv.name != system else "it"
    return (f"the dilation, channels or kernel sizes of {system!r} ({which} has dilation {d}: "
            f"dilation*(kernel-1)*c_in = {d}*{k1}*{c_in} = {d * k1 * c_in:,} states, and (states)^2/2 "
            "storage variables)")


def _exact_bound(low: LoweredNetwork) -> tuple[float, str] | None:
    """A bound that needs no SDP, with the reason, or None.

    A layer that maps everything to zero (all-zero weights) or an activation with slope [0, 0] makes the
    network constant: L = 0. A network with no conv, dense or activation layer (pooling and flattening only)
    is bounded by the product of the pooling factors, which ``lower`` already multiplied into ``factor``.
    """
    for s in low.systems:
        if not (s.ss.C.any() or s.ss.D.any()):
            zero = _zero_layer(low, s.layers)
            if zero is not None:
                return 0.0, f"layer {zero!r} has all-zero weights: the network is constant"
            return _product_bound(low, s)
        if s.slope == (0.0, 0.0):
            return 0.0, f"{s.activation} {s.layers[-1]!r} has slope [0, 0]: the network is constant"
    if not low.systems:
        return float(low.factor), "no conv, dense or activation layer: the product of the pooling factors"
    return None


def _zero_layer(low: LoweredNetwork, names) -> str | None:
    """The first of the typed layers ``names`` whose weights are all zero (exactly, as given), or None."""
    for layer in low.typed.layers:
        if layer.name in names and getattr(layer, "weight", None) is not None and not np.any(layer.weight):
            return layer.name
    return None


def _product_bound(low: LoweredNetwork, s) -> tuple[float, str]:
    """A system that is zero in float64 although none of its layers is (a merged product that underflowed
    or cancelled): never claim L = 0; bound by the product of the layers' gains, rounded up."""
    from lipdsl.baselines.unrolled import naive_hinf

    n = low.typed.input_shape.length
    try:
        gain = naive_hinf(low.typed, n)
    except LipdslError:
        raise UnsupportedError(
            f"the merged map {s.name!r} is zero in float64 although its layers are not (underflow or "
            "cancellation), and no closed-form bound applies",
            hint="rescale the weights (the bound scales with them) or give an input length",
        ) from None
    return gain, (f"merged map {s.name!r} is zero in float64 but its layers are not: the product of the "
                  "layers' gains (rounded up), not 0")


def _exact_result(net, low, lipschitz: float, why: str, times, min_length) -> Result:
    """A Result whose certificate needs no solver: an empty SDP, status 'closed-form'."""
    rho_var = Variable("rho", "rho", None, 1, "scalar", 0)
    rho = (lipschitz / low.factor) ** 2 if low.factor else 0.0
    sdp = Sdp(low, (rho_var,), (), (rho_var,), rho_var, low.factor, (), (), (f"closed form, no SDP: {why}",))
    sol = Solution("closed-form", rho, np.array([rho]), "none", 0.0, 0)
    cert = Certificate(True, lipschitz, rho, lipschitz, rho, "closed-form", low.factor)
    return Result(net, low, sdp, sol, cert, times, min_length)


def _span(net: typed.Network, name: str):
    return next((layer.span for layer in net.layers if layer.name == name), None)

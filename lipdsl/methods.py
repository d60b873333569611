"""Compare methods: typed.Network -> Comparison (dissipative, naive, naive-hinf, LipSDP, lower bound).

Every upper bound is kept with how it is known (``certified`` LMI, ``exact norm`` product, ``verified LMI``)
or why there is none (``refused``, ``failed``, ``skipped``); a refusal never comes with a number.
"""
from __future__ import annotations

import contextvars
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from lipdsl import limits
from lipdsl.errors import LipdslError, TimeLimitError, UnsupportedError

if TYPE_CHECKING:  # typed imports numpy: the CLI reads METHODS at start-up without it
    from lipdsl.lang import typed

#: The one method registry: name -> what it bounds, in table order. The CLI's ``--method``/``--methods``
#: choices, ``compare`` and the Python API's ``Network.solve(method)`` all take these names, spelled so.
METHOD_HELP = {
    "dissipative": "the paper's layer-wise dissipativity LMIs, certified (lipdsl's method)",
    "lipsdp-neuron": "LipSDP-Neuron on the unrolled network (one multiplier per neuron), verified LMI",
    "lipsdp-layer": "LipSDP-Layer on the unrolled network (one multiplier per layer), verified LMI",
    "naive": "product of the unrolled maps' spectral norms at the input length",
    "naive-hinf": "product of the layers' length-independent gains (conv: H-infinity norm)",
}
METHODS = tuple(METHOD_HELP)
#: LipSDP on the unrolled network is one LMI of n_0 + sum(hidden) rows. lipdsl's HKM method (chordal split of
#: time-banded nets into clique LMIs) costs ~0.5-0.8 s per interior-point iteration on one core for an
#: unsplit 640-row block (ECG: ~30 iterations), growing like rows^3; a net with a dense layer does not split
#: (every clique would hold its neurons). Larger LMIs are skipped (with a note) unless forced.
MAX_LIPSDP_ROWS = 1000
MAXPOOL_REFUSAL = "refused: max pooling is not slope-restricted"
#: ``compare``'s empirical lower bound by default (``lipdsl compare`` and ``Network.compare`` alike): random
#: starts and seconds of search.
LOWER_STARTS = 16
LOWER_SECONDS = 10.0
#: The order ``compare`` runs methods on the calling thread (the table keeps ``METHODS``' order).
CHEAP_FIRST = ("naive-hinf", "dissipative", "naive")


@dataclass(frozen=True)
class MethodResult:
    """One method's upper bound (``None`` unless ``status`` is certified/exact norm/verified LMI)."""

    method: str
    bound: float | None
    seconds: float
    status: str  # "certified", "exact norm", "verified LMI", "not certified", "refused", "failed", "skipped"
    note: str = ""
    length: int | None = None  # input length the bound is for; None: the spec's shape, or any length
    lmi_rows: int | None = None
    #: the method's own result (dissipative: the pipeline's ``Result``; LipSDP: ``BaselineResult``)
    result: Any = field(default=None, compare=False, repr=False)
    #: the user-level error behind a "refused"/"failed" status (the Python API re-raises it)
    error: LipdslError | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.bound is not None

    def frequency_report(self) -> dict:
        """The frequency-mode fields of the dissipative method's result (``pipeline.Result.frequency_report``:
        ``frequencies``, ``hinf_product``, ``above_hinf_product``, ``warnings``); empty ones otherwise."""
        if self.method == "dissipative" and self.result is not None:
            return self.result.frequency_report()
        return {"frequencies": None, "hinf_product": None, "above_hinf_product": None, "warnings": []}


@dataclass(frozen=True)
class Comparison:
    """All methods' results on one network, with the empirical lower bound (``lower``, may be None)."""

    network: typed.Network
    results: tuple[MethodResult, ...]
    lower: float | None = None
    lower_detail: dict = field(default_factory=dict)
    length: int | None = None
    #: the lower bound's search result (``baselines.empirical.LowerBound``: its witness inputs too)
    lower_result: Any = field(default=None, compare=False, repr=False)

    def get(self, method: str) -> MethodResult | None:
        return next((r for r in self.results if r.method == method), None)

    def ratio_lower(self, r: MethodResult) -> float | None:
        """``bound / lower``: >= 1 for every sound upper bound."""
        return None if r.bound is None or not self.lower else r.bound / self.lower

    def ratio_dissipative(self, r: MethodResult | float | None) -> float | None:
        """``bound / dissipative bound`` for a result or a plain value (e.g. the lower bound)."""
        value = r.bound if isinstance(r, MethodResult) else r
        d = self.get("dissipative")
        return None if value is None or d is None or not d.bound else value / d.bound


def lipsdp_rows(net: typed.Network, length: int | None) -> int:
    """Rows of the LipSDP LMI: input size (at most the first hidden size, by the input reduction) plus every
    hidden layer's size (an upper estimate: constant or unused neurons are pruned later)."""
    from lipdsl.baselines.unrolled import unroll, unroll_graph

    if net.residual:  # the unrolled graph: the input (at most what reads it) and every activation
        g = unroll_graph(net, length)
        if not g.hidden:
            return 0
        readers = sum(U.matrix.shape[0] for U in g.hidden if U.matrix[:, :g.n0].nnz) + g.out.shape[0]
        return min(g.n0, readers) + sum(U.matrix.shape[0] for U in g.hidden)
    steps = unroll(net, length)
    hidden = [U.shape[0] for U in steps if U.slope is not None]
    if not hidden:
        return 0
    first = next(U for U in steps if U.slope is not None)
    return min(first.shape[1], first.shape[0]) + sum(hidden)


def _lipsdp_rows_bound(net: typed.Network, length: int | None) -> int:
    """An upper bound on ``lipsdp_rows`` from the layers' sizes alone: the input size plus every
    activation's size at input length ``length``."""
    from lipdsl.lang import typed
    from lipdsl.lang.check import shapes_at

    shp = net.input_shape
    rows = shp.channels * (1 if shp.flat else (shp.length or length or 1))
    for L, c, n in shapes_at(net, length):
        if isinstance(L, typed.Activation):
            rows += c * max(n or 1, 0)
        elif isinstance(L, typed.Residual):  # (no strides or pools inside a block: its length is n)
            rows += sum(A.out_shape.channels * max(n or 1, 0) for A in typed.flat_layers([L])
                        if isinstance(A, typed.Activation))
    return rows


def _any_maxpool(net: typed.Network) -> bool:
    from lipdsl.lang import typed

    return any(isinstance(L, typed.Pool) and L.op == "max" for L in net.layers)


def _unroll_length(net: typed.Network, length: int | None) -> int | None:
    """The length the N-dependent baselines use: the spec's, ``length``, or the lower bound's default."""
    from lipdsl.baselines.empirical import DEFAULT_LENGTH

    if net.input_shape.flat or net.input_shape.length is not None:
        return None
    return int(length or DEFAULT_LENGTH)


def run_method(net: typed.Network, method: str, *, length: int | None = None, solver: str = "cvxopt",
               lift: int = 1, force: bool = False, max_rows: int = MAX_LIPSDP_ROWS,
               timeout: float | None = None, lipsdp_solver: str = "hkm", **options: Any) -> MethodResult:
    """One method's bound on ``net`` (the one dispatcher over ``METHODS``); user-level failures become a
    ``MethodResult`` without a bound, carrying the error. Input errors every method shares are raised, for
    every method alike: a spec contradicting ``length`` (``check.require_length``), a batch norm whose fold
    leaves float64's range (``WeightError`` at its line, ``residual.require_foldable``).

    Parameters
    ----------
    length : int, optional
        Input length for nets declared ``input c x *`` (the N-dependent baselines unroll for it; the
        dissipative bound holds for every length, or for ``N >= length`` with a global average pool).
    solver, lift, timeout, **options
        For ``dissipative``: passed to ``api.solve_network`` (``tol``, ``max_iterations``, ``margin``, ...).
    lipsdp_solver
        For ``lipsdp-*``: the solver of the unrolled LMI (``hkm``, lipdsl's own; ``cvxopt``, ``sdpa``, ...).
    force, max_rows
        LipSDP is skipped when its LMI would have more than ``max_rows`` rows, unless ``force``.
    timeout
        Seconds for this method (any method; the caller's active deadline, ``limits.current()``, otherwise):
        when they pass, the result is ``failed`` with the time limit as its note.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    from lipdsl.lang.check import require_length
    from lipdsl.model.residual import require_foldable

    require_length(net, length)  # (raised: a contradiction of the caller's, not this method's failure)
    require_foldable(net)  # (raised too: an input error at the batch norm's line, for every method)
    if timeout is not None:
        deadline = limits.Deadline.after(timeout)
        with limits.blas_threads(), deadline.active():
            try:
                return limits.run_within(
                    lambda: run_method(net, method, length=length, solver=solver, lift=lift, force=force,
                                       max_rows=max_rows, lipsdp_solver=lipsdp_solver, **options),
                    deadline, method)
            except TimeLimitError as err:
                return MethodResult(method, None, deadline.seconds, "failed", err.message,
                                    length=_unroll_length(net, length), error=err)
    n = _unroll_length(net, length)
    t0 = time.perf_counter()
    try:
        if method == "dissipative":
            from lipdsl.pipeline import solve_network

            options.setdefault("frequencies", "auto")  # (as lipdsl solve: the frequency form for wide nets)
            options.setdefault("weight_rank", "auto")  # (and subspace weights for very wide ones)
            res = solve_network(net, solver=solver, min_length=length if net.any_length else None, lift=lift,
                                timeout=timeout, **options)
            cert = res.certificate
            note = f"valid for {res.validity}"
            if lift > 1:
                note += f"; lifted by {lift}"
            if res.frequencies:
                note += f"; frequency form on {res.frequencies} frequencies"
            if not cert.verified:
                return MethodResult(method, None, time.perf_counter() - t0, "not certified",
                                    cert.reason or "", result=res)
            if res.closed_form:  # no LMI: the pipeline's reason ("closed form, no SDP: ...") is the note
                note = "; ".join((note, *res.sdp.notes))
            return MethodResult(method, cert.lipschitz, time.perf_counter() - t0, "certified", note,
                                lmi_rows=max((c.size for c in cert.checks), default=None), result=res)
        if method == "naive-hinf":
            from lipdsl.baselines.unrolled import naive_hinf

            bound = _finite(naive_hinf(net, length), method)
            return MethodResult(method, bound, time.perf_counter() - t0, "exact norm",
                                "product of the layers' length-independent gains (conv: H-inf norm)")
        if method == "naive":
            from lipdsl.baselines.unrolled import naive

            bound = _finite(naive(net, n), method)  # large maps: a certified bound, or CertificateError
            return MethodResult(method, bound, time.perf_counter() - t0, "exact norm",
                                "product of the unrolled maps' spectral norms" + (f", N = {n}" if n else ""),
                                length=n)
        # LipSDP
        if _any_maxpool(net):
            return MethodResult(method, None, 0.0, "refused", MAXPOOL_REFUSAL.removeprefix("refused: "),
                                length=n)
        bound = _lipsdp_rows_bound(net, n)  # (before unrolling: that alone can take minutes)
        limits.require_memory(limits.lipsdp_bytes(bound), f"the LipSDP LMI of up to {bound} rows",
                              hint="LipSDP unrolls the network: give a shorter --length, or use the "
                              "dissipative method (its LMIs do not grow with the length)")
        rows = lipsdp_rows(net, n)
        if rows > max_rows and not force:
            return MethodResult(method, None, time.perf_counter() - t0, "skipped",
                                f"LMI of {rows} rows > {max_rows}: likely many minutes (use --force to run)",
                                length=n, lmi_rows=rows)
        from lipdsl.baselines.lipsdp import lipsdp

        b = lipsdp(net, mode=method.removeprefix("lipsdp-"), length=n, solver=lipsdp_solver)
        return MethodResult(method, b.bound, time.perf_counter() - t0, "verified LMI",
                            "unrolled network" + (f", N = {n}" if n else "")
                            + (f"; solver claimed '{b.claimed_status}'" if b.claimed_status else ""),
                            length=n, lmi_rows=b.lmi_size, result=b)
    except UnsupportedError as err:
        return MethodResult(method, None, time.perf_counter() - t0, "refused", err.message, length=n,
                            error=err)
    except LipdslError as err:
        return MethodResult(method, None, time.perf_counter() - t0, "failed", err.message, length=n,
                            error=err)


def _finite(bound: float, method: str) -> float:
    """``bound``, or a CertificateError when the product overflowed float64 (inf is no useful bound)."""
    if not math.isfinite(bound):
        from lipdsl.errors import CertificateError

        raise CertificateError(f"the norm product of {method} overflows float64 (beyond 1.8e308)",
                               hint="rescale the weights (the bound scales with them)")
    return bound


def compare(net: typed.Network, *, methods: tuple[str, ...] = METHODS, length: int | None = None,
            lower_starts: int = LOWER_STARTS, time_budget: float = LOWER_SECONDS, seed: int = 0,
            solver: str = "cvxopt",
            lift: int = 1, force: bool = False, max_rows: int = MAX_LIPSDP_ROWS,
            progress: Callable[[str], None] | None = None, workers: int | None = None,
            timeout: float | None = None, frequencies: int | str | None = "auto") -> Comparison:
    """Run ``methods`` (see ``run_method``) and, unless ``lower_starts == 0``, the empirical lower bound.

    The LipSDP methods run in up to ``workers`` threads (default: 2 if the machine has 2 cores) while the
    others run on the calling thread: their time is in LAPACK calls, which release the GIL, so LipSDP-Neuron
    and -Layer share the cores (each with the BLAS threads it is given; the CLI pins one). The lower bound
    runs after them, alone, so that its time budget is not shared. ``progress(label)`` is called before each
    step (for a CLI status line; this module prints nothing).

    ``timeout`` (seconds, else the caller's active deadline) bounds the whole comparison: methods still
    running when it passes are reported as ``failed``, and the lower bound's search gets what is left (at
    most ``time_budget``). BLAS runs on one thread meanwhile (``limits.blas_threads``).

    ``frequencies``: the dissipative method in frequency form (``solve_network(frequencies=...)``); its row
    then carries the frequency-mode warnings (``MethodResult.frequency_report``).
    """
    from lipdsl.lang.check import require_length
    from lipdsl.model.residual import require_foldable

    require_length(net, length)
    require_foldable(net)  # (before any method or search: refused as check and solve refuse it)
    deadline = limits.current() if timeout is None else limits.Deadline.after(timeout)
    with limits.blas_threads(), deadline.active():
        return _compare(net, methods, length, lower_starts, time_budget, seed, solver, lift, force, max_rows,
                        progress, workers, deadline, frequencies)


def _compare(net, methods, length, lower_starts, time_budget, seed, solver, lift, force, max_rows, progress,
             workers, deadline, frequencies) -> Comparison:
    """``compare`` inside its deadline."""
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)

    def run(m):
        options = {"frequencies": frequencies} if m == "dissipative" else {}
        t0 = time.perf_counter()
        try:
            return limits.run_within(
                lambda: run_method(net, m, length=length, solver=solver, lift=lift, force=force,
                                   max_rows=max_rows, **options), deadline, m)
        except TimeLimitError as err:  # (the time it ran until the limit)
            return MethodResult(m, None, time.perf_counter() - t0, "failed", err.message,
                                length=_unroll_length(net, length), error=err)

    background = [m for m in methods if m.startswith("lipsdp")] if workers > 1 else []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {m: pool.submit(contextvars.copy_context().run, run, m) for m in background}
        done = {}
        # the cheap, length-independent ones first: a time limit should cut the expensive ones
        rank = {m: CHEAP_FIRST.index(m) if m in CHEAP_FIRST else len(CHEAP_FIRST) for m in methods}
        for m in sorted(methods, key=rank.get):
            if m in futures:
                continue
            if progress is not None:
                progress(m + (f" ({', '.join(background)} in the background)" if background else ""))
            done[m] = run(m)
        if futures and progress is not None:
            progress(", ".join(background))
        done.update({m: f.result() for m, f in futures.items()})
    results = [done[m] for m in methods]
    lower, detail, lb = None, {}, None
    if lower_starts > 0 and deadline.expired:
        detail = {"error": f"the time limit of {deadline.seconds:g} s has passed"}
    elif lower_starts > 0:
        from lipdsl.baselines.empirical import lower_bound

        if progress is not None:
            progress("lower bound")
        try:
            lb = lower_bound(net, starts=lower_starts, seed=seed,
                             time_budget=min(time_budget, deadline.remaining()),
                             length=_unroll_length(net, length))
            lower = lb.value
            detail = {"starts": lb.starts, "evaluations": lb.evaluations, "seconds": lb.seconds, "seed": seed,
                      "length": lb.length, "search": lb.search, "witness": lb.witness}
        except LipdslError as err:  # e.g. an activation known only by its slope
            detail = {"error": err.message}
    return Comparison(net, tuple(results), lower, detail, _unroll_length(net, length), lb)


def check_ordering(c: Comparison, rtol: float = 1e-6) -> list[str]:
    """Violations of the orderings that must hold (empty if none):
    lower <= neuron <= layer <= naive (same N) and neuron <= dissipative <= naive-hinf."""
    def b(m):
        r = c.get(m)
        return None if r is None else r.bound

    chains = [("lower", "lipsdp-neuron", "lipsdp-layer", "naive"),
              ("lipsdp-neuron", "dissipative", "naive-hinf"),
              ("lower", "dissipative")]
    vals = {m: b(m) for m in METHODS}
    vals["lower"] = c.lower
    bad = []
    for chain in chains:
        known = [(m, vals[m]) for m in chain if vals.get(m) is not None]
        for (m1, v1), (m2, v2) in zip(known, known[1:]):
            if v1 > v2 * (1 + rtol):
                bad.append(f"{m1} {v1:.7g} > {m2} {v2:.7g}")
    return bad



def as_dict(c: Comparison) -> dict:
    """The comparison as one JSON-ready dict (``bound`` is null for refused, failed or skipped methods; each
    method's row has the frequency-mode fields of ``lipdsl solve --json``: ``frequencies``, ``hinf_product``,
    ``above_hinf_product``, ``warnings``, null or empty unless the dissipative method ran in frequency
    form)."""
    net = c.network
    return {
        "network": net.name,
        "source": net.source_path,
        "input": str(net.input_shape),
        "output": str(net.output_shape),
        "length": c.length,
        "lower_bound": None if c.lower is None else {"value": c.lower, **c.lower_detail},
        "lower_bound_error": c.lower_detail.get("error") if c.lower is None else None,
        "methods": [{"method": r.method, "bound": r.bound, "status": r.status, "note": r.note,
                     "ratio_lower": c.ratio_lower(r), "ratio_dissipative": c.ratio_dissipative(r),
                     "seconds": r.seconds, "length": r.length, "lmi_rows": r.lmi_rows, **r.frequency_report()}
                    for r in c.results],
        "ordering_violations": check_ordering(c),
    }

"""Resource limits: sizes -> memory and time estimates, refusals, and the command's Deadline (one place).

Everything lipdsl knows about the machine's resources is here:

- ``Deadline``: one per command (``--timeout``, ``--time-budget``; ``timeout=`` in the Python API), on the
  monotonic clock. ``active()`` makes it the current deadline of the calling context; long loops outside the
  solver call ``checkpoint(what)`` (lowering, frequency responses, storage recovery, the empirical lower
  bound, the baselines), the solver gets it through its KKT callback, and ``run_within`` runs work that may
  sit in one long C call (a Cholesky factorization, SDPA) on a worker thread that is abandoned when the
  deadline passes. No signal, no ITIMER_REAL: it works on any thread.
- The memory model (``solver_bytes``, ``lowering_bytes``, ...) fitted to peaks measured on CVXOPT solves
  (docs/performance.md), and ``require_memory``, which refuses with a ``LimitError`` before anything large is
  allocated when the estimate exceeds ``available_memory()``.
- ``blas_threads()``: BLAS/OpenMP pinned to one thread for the duration of a solve (threadpoolctl), with the
  KKT worker pools shut down when the last user leaves: nothing process-wide outlives a command or an API
  call, and importing lipdsl changes nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lipdsl.errors import LimitError, LipdslError, TimeLimitError

# -- the deadline ------------------------------------------------------------------------------------------


def check_seconds(value, name: str = "timeout", *, allow_zero: bool = False) -> float | None:
    """``value`` as seconds (None stays None), or ``LipdslError`` unless it is a finite number > 0
    (>= 0 with ``allow_zero``): ``nan``, ``inf`` and negative budgets are mistakes, never "no limit"."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise LipdslError(f"{name} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0 or (seconds == 0
                                                                                  and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise LipdslError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}",
            hint=f"give e.g. {name}=60, or leave it out (None) for no limit",
        )
    return seconds


@dataclass(frozen=True)
class Deadline:
    """The end of a command's time budget: ``seconds`` after ``started`` (``time.monotonic``); None: never.

    ``remaining()`` is what is left (``inf`` without a budget); ``check(what)`` raises ``TimeLimitError``
    ("<what> did not finish within the time limit of T s", exit 3) once it has passed.
    """

    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def after(cls, seconds, name: str = "timeout") -> Deadline:
        """A deadline ``seconds`` from now, validated by ``check_seconds``; None gives one that never ends."""
        return cls(check_seconds(seconds, name))

    def remaining(self) -> float:
        """Seconds left (0 once passed, ``inf`` without a budget)."""
        if self.seconds is None:
            return math.inf
        return max(0.0, self.seconds - (time.monotonic() - self.started))

    @property
    def expired(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.started >= self.seconds

    def check(self, what: str = "lipdsl") -> None:
        """``TimeLimitError`` if the deadline has passed."""
        if self.expired:
            raise self.error(what)

    def error(self, what: str, hint: str | None = None) -> TimeLimitError:
        """The ``TimeLimitError`` saying that ``what`` ran out of time (with a hint for the solver's
        options unless ``hint`` is given)."""
        return TimeLimitError(
            f"{what} did not finish within the time limit of {self.seconds:g} s",
            hint=hint or "raise --timeout, lower --max-iterations, try another --solver, or make the problem "
            "smaller (--frequencies, fewer channels)",
        )

    def earlier(self, seconds: float | None) -> Deadline:
        """The earlier of this deadline and ``seconds`` from now (e.g. a search budget inside a command)."""
        if seconds is None:
            return self
        if self.seconds is not None and self.remaining() <= seconds:
            return self
        return Deadline(seconds)

    @contextlib.contextmanager
    def active(self) -> Iterator[Deadline]:
        """Make this the deadline ``checkpoint`` sees in this context (restored on exit)."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


NEVER = Deadline(None, 0.0)
#: A search command (``lower --time-budget``, ``compare --timeout``) stops its own work at its budget; the
#: command's hard deadline is this much later (the search may be inside one Jacobian when the budget ends).
SEARCH_GRACE = 5.0
_current: contextvars.ContextVar[Deadline] = contextvars.ContextVar("lipdsl_deadline", default=NEVER)


def current() -> Deadline:
    """The deadline made active by the caller (``Deadline.active``), or ``NEVER``."""
    return _current.get()


def checkpoint(what: str = "lipdsl") -> None:
    """Raise ``TimeLimitError`` if the current deadline has passed: called in every long loop."""
    _current.get().check(what)


def run_within(fn: Callable[[], object], deadline: Deadline | None, what: str, grace: float = 0.0,
               hint: str | None = None):
    """``fn()``, or ``TimeLimitError`` once ``deadline`` passes even if ``fn`` is inside one long C call.

    With a budget, ``fn`` runs on a daemon worker thread (in a copy of the caller's context, so it sees the
    same ``current()`` deadline and stops at its next ``checkpoint``); the caller waits at most the remaining
    time (plus ``grace``: an outer runner lets an inner one report where the time ran out) and then abandons
    it. Exceptions (also ``SystemExit``) are re-raised in the caller.
    """
    deadline = deadline or current()
    if deadline.seconds is None:
        return fn()
    deadline.check(what)
    box: dict[str, object] = {}
    context = contextvars.copy_context()

    def work():
        try:
            box["value"] = context.run(fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"lipdsl-{what}", daemon=True)
    worker.start()
    worker.join(deadline.remaining() + grace)
    if worker.is_alive():
        raise deadline.error(what, hint)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


# -- memory ------------------------------------------------------------------------------------------------

GIB = 2**30
#: Kept free for the interpreter, the libraries and the rest of the machine when deciding what fits.
MEMORY_MARGIN = 0.15
MEMORY_MARGIN_BYTES = 0.5 * GIB
#: Resident size of a process that has imported numpy, scipy, sympy and CVXOPT, before the problem.
BASE_BYTES = 0.15 * GIB

#: The fitted memory model of a CVXOPT solve with lipdsl's structured KKT solver (docs/performance.md):
#: ``bytes = BASE + 8 (N2 n^2 + S2 sum_k m_k^2 + SN n sqrt(sum_k m_k^2))``, ``n`` variables, ``m_k`` the LMI
#: orders. ``n^2`` terms: the Newton matrix ``H``, its Cholesky factor, the previous iteration's factor (still
#: referenced by CVXOPT while the next is formed), the per-family blocks and the temporaries summed into H.
#: ``m^2`` terms: CVXOPT's iterates and scalings (``s``, ``z``, ``W``'s ``r``/``rti``, steps, residuals), and
#: our per-block ``R``, ``S`` and right-hand sides. Fitted with a safety factor (the model is an upper one).
N2 = 5.5
S2 = 60.0
SN = 2.0
#: A first-order solver (SCS): ``bytes = BASE + 8 (S2 sum_k m_k^2 + N n)``, no ``n^2`` term: the LMIs' ``G``,
#: SCS's ``A`` and its factorisation, ADMM's iterates with their acceleration history. Fitted to the SCS phase
#: of FCN 64/128/64 (1.46 GB, full X) and 128/256/128 (5.5 GB; docs/performance.md, "SCS"); storage recovery
#: after it is not counted (it peaked at 11.3 GB there).
FIRST_ORDER_S2 = 40.0
FIRST_ORDER_N = 100.0


def as_float(count) -> float:
    """``float(count)``, or ``inf`` for an integer beyond float64 (a size such as ``10^400`` samples of a
    dilated conv's padding): a size model's arithmetic then refuses it instead of raising OverflowError."""
    try:
        return float(count)
    except OverflowError:
        return math.inf if count > 0 else -math.inf


def available_memory() -> int:
    """Bytes a command may use: ``min(physical, cgroup limit)`` less ``MEMORY_MARGIN`` and a fixed margin."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    total = min(limits) if limits else 16 * GIB
    return max(0, int(total * (1 - MEMORY_MARGIN) - MEMORY_MARGIN_BYTES))


def solver_bytes(variables: int, lmi_orders, solver: str = "cvxopt") -> float:
    """Peak resident bytes of solving an SDP of ``variables`` unknowns and LMIs of ``lmi_orders`` rows.

    lipdsl's CVXOPT driver (``solver="cvxopt"``): the fitted model above; lipdsl's HKM method (``hkm``: about
    20 ``m^2`` doubles per block, H and its factor) stays within it. CVXOPT's generic 'chol' KKT solver
    (``cvxopt-generic``) and the PICOS back-ends also hold ``G`` scaled column by column, a dense
    ``(sum_k m_k^2) x n`` matrix: the registry's ``Backend.structured`` says which solver does not.
    """
    from lipdsl.solvers.registry import first_order, structured

    n = as_float(variables)
    s2 = sum(as_float(m) ** 2 for m in lmi_orders)
    if first_order(solver):  # SCS: A, its factorisation and ADMM's iterates (with Anderson's history)
        return BASE_BYTES + 8.0 * (FIRST_ORDER_S2 * s2 + FIRST_ORDER_N * n)
    words = N2 * n * n + S2 * s2 + SN * n * math.sqrt(s2)
    if not structured(solver):
        words += 2.0 * n * s2
    return BASE_BYTES + 8.0 * words


def lowering_bytes(systems) -> float:
    """Bytes of the numeric state spaces of ``(nx, nu, ny)`` systems: dense ``A`` (``nx x nx``), ``B``, ``C``,
    ``D``, a few copies while merging, and the storage matrices ``P`` that certify builds (``nx x nx``
    each)."""
    total = 0.0
    for nx, nu, ny in systems:
        nx, nu, ny = as_float(nx), as_float(nu), as_float(ny)
        total += 4.0 * nx * nx + 3.0 * nx * (nu + ny) + 3.0 * nu * ny
    return 8.0 * total


def frequency_bytes(systems, frequencies: int) -> float:
    """Bytes of the frequency responses ``H(e^{iw})`` (complex ``ny x nu`` per frequency and per tap) on
    the solver's grid and on storage recovery's fine grid (``kyp.FINE_GRID``)."""
    from lipdsl.certify.storage import FINE_GRID

    grid = max(frequencies, FINE_GRID)
    return 16.0 * sum((grid + as_float(nx // max(nu, 1)) + 1) * as_float(nu) * as_float(ny) * 2.0
                      for nx, nu, ny in systems)


def lipsdp_bytes(rows: int, first: tuple[int, int] = (0, 0)) -> float:
    """Bytes of a LipSDP solve on an LMI of ``rows`` rows: the dense LMI, its coefficient blocks, the
    interior-point iterates and the multipliers' Schur complement (about ``LIPSDP_WORDS`` ``rows^2``
    doubles), and the dense first matrix of the input reduction (``first``: its shape)."""
    return BASE_BYTES + 8.0 * (LIPSDP_WORDS * float(rows) ** 2 + 3.0 * first[0] * first[1])


#: Doubles per squared LMI row of a LipSDP solve (``lipsdp_bytes``): a 4,950-row LMI reached 6 GB (issue 22).
LIPSDP_WORDS = 40.0


def describe_bytes(b: float) -> str:
    """``b`` bytes in words: '1.2 GiB', '340 MiB' ('more than 1e+300 GiB' beyond float64)."""
    if not math.isfinite(b):
        return "more than 1e+300 GiB"
    return f"{b / GIB:.3g} GiB" if b >= 0.1 * GIB else f"{b / 2**20:.3g} MiB"


def about_bytes(b: float) -> str:
    """``'about 1.2 GiB'`` (``describe_bytes``), or ``'more than 1e+300 GiB'`` for a size beyond float64."""
    return ("about " if math.isfinite(b) else "") + describe_bytes(b)


def require_memory(needed: float, what: str, hint: str | None = None, span=None,
                   available: int | None = None) -> None:
    """``LimitError`` (exit 3) when ``needed`` bytes exceed ``available`` (default ``available_memory()``)."""
    limit = available_memory() if available is None else available
    if needed > limit:
        raise LimitError(
            f"{what} would need {about_bytes(needed)} of memory; {describe_bytes(limit)} are available",
            span=span,
            hint=hint or "make the problem smaller, or run it on a machine with more memory",
        )


def require_elements(count: float, what: str, hint: str | None = None, span=None, itemsize: int = 8,
                     copies: float = 4.0) -> None:
    """``require_memory`` for an array of ``count`` elements held ``copies`` times (inputs, products,
    temporaries): the check every command makes before allocating something whose size the input decides."""
    require_memory(BASE_BYTES + float(count) * itemsize * copies, what, hint, span)


#: ``show --state-space`` prints realizations of at most this many state blocks (sympy builds blocks^2).
DISPLAY_MAX_BLOCKS = 64


# -- time --------------------------------------------------------------------------------------------------

#: Sustained floating-point rate of one core in dense linear algebra (flop/s), for time estimates only.
FLOPS = 4e9


#: A rate no single core reaches (flop/s): ``require_time`` refuses only work that cannot finish in time.
FLOPS_OPTIMISTIC = 2e10
#: Without a ``--timeout``, work that would take longer than this (at ``FLOPS_OPTIMISTIC``) is refused.
DEFAULT_TIME_LIMIT = 3600.0


def require_time(flops: float, what: str, hint: str | None = None, span=None) -> None:
    """``LimitError`` (exit 3) before starting ``flops`` of work that cannot finish before the active
    deadline (or within ``DEFAULT_TIME_LIMIT`` without one), even at ``FLOPS_OPTIMISTIC``."""
    deadline = current()
    limit = DEFAULT_TIME_LIMIT if deadline.seconds is None else deadline.remaining()
    seconds = float(flops) / FLOPS_OPTIMISTIC
    if seconds > limit:
        budget = ("the default limit of " if deadline.seconds is None else "the time left, ")
        budget += f"{limit:.3g} s"
        raise LimitError(
            f"{what} would take at least {seconds:.3g} s ({float(flops):.3g} floating-point operations), "
            f"more than {budget}",
            span=span,
            hint=hint or "make the problem smaller (fewer channels, shorter kernels or inputs)",
        )


def solver_seconds_per_iteration(variables: int, lmi_orders) -> float:
    """A rough time of one interior-point iteration: forming and factoring the Newton matrix
    (``n^3 / 3 + n^2 sum m``) and the per-block eigen/Cholesky work (``sum m^3``), at ``FLOPS``."""
    n = float(variables)
    orders = [float(m) for m in lmi_orders]
    return (n**3 / 3 + n * n * sum(orders) + 10.0 * sum(m**3 for m in orders)) / FLOPS


# -- threads -----------------------------------------------------------------------------------------------

_users = 0
_pinned = 0  # active ``blas_threads(1)`` contexts: while any is, BLAS is pinned (threadpoolctl is global)
_users_lock = threading.Lock()


def blas_pinned() -> bool:
    """Whether every BLAS/OpenMP pool numpy and scipy use runs on one thread (threadpoolctl's view, which
    also sees limits set by ``blas_threads`` or by the application, not only environment variables)."""
    if _pinned:
        return True
    from threadpoolctl import threadpool_info

    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return bool(pools) and all(p.get("num_threads") == 1 for p in pools)


@contextlib.contextmanager
def blas_threads(limit: int | None = 1) -> Iterator[None]:
    """BLAS and OpenMP limited to ``limit`` threads while active (threadpoolctl; restored on exit), and the
    KKT worker pools (``solve.thread_map``) shut down when the last active user leaves.

    The LMIs are small (tens to hundreds of rows): a multi-threaded BLAS only adds contention (the ECG solve
    was 3x slower with it on a loaded 2-core machine); lipdsl shares the cores out by LMI block instead.
    ``limit=None`` leaves the pools as they are.
    """
    global _users, _pinned
    import numpy  # noqa: F401 - threadpoolctl limits the libraries loaded when it is entered
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with _users_lock:
        _users += 1
        nested = limit == 1 and _pinned > 0  # already pinned by an outer context: nothing to change
        if limit == 1:
            _pinned += 1
    try:
        if limit is None or nested:
            yield
        else:
            with threadpool_limits(limits=limit):
                yield
    finally:
        with _users_lock:
            _users -= 1
            if limit == 1:
                _pinned -= 1
            last = _users == 0
        if last:
            from lipdsl.solvers.cvxopt_kkt import shutdown_pools

            shutdown_pools()

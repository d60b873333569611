"""Verify a certificate: (spec, certificate file) -> Verdict (every LMI rebuilt and checked, no solver code).

The checker is independent of the solver side: it imports none of cvxopt, picos, ``lipdsl.sdp``,
``lipdsl.solve``, ``lipdsl.certify``, ``lipdsl.kyp``, ``lipdsl.hkm``, ``lipdsl.cones``. From the front end it
uses the spec loader (parse, check, weights) and ``lipdsl.lower`` with ``scale=False`` for the chain of
systems, pools and flattens and their numeric realizations ``(A, B, C, D)``. A plain conv or dense layer's
realization is rebuilt here too (``realize``) and must equal lower's entry for entry (then it is the
weights themselves, exactly); maps lower composes in floating point (merged convs and pools, overlapping
pools, folded Toeplitz maps, merged dense layers) are recomputed exactly (``exact_realization``) and their
LMIs checked in exact arithmetic; a compressed dense first layer is checked with its own ``W``
(``compressed_weight``); lifted realizations are lower's, flagged. Every LMI matrix is built here from
``(A, B, C, D)``, the slopes and the certificate's values (``docs/certificate.md``):

    M = [[P - A'PA + 2ab C'LC,   -A'PB + 2ab C'LD,        -(a+b) C'L],
         [      .,               X_in - B'PB + 2ab D'LD,  -(a+b) D'L],
         [      .,                     .,                  2L - X_out]],   L = diag(lambda) >= 0,

(``[[P - A'PA - C'X_out C, -A'PB - C'X_out D], [., X_in - B'PB - D'X_out D]]`` for a linear system), with
``X_in = rho I`` for the first system, else the previous output weight ``X (x) I_r`` (``r``: the block
length times the flattened lengths between), ``X_out = X (x) I_tied``, ``I`` for the last system, or
``W'W`` of a last linear dense layer (whose own LMI ``W'W - W'W = 0`` then holds exactly). Side conditions:
``lambda >= 0``, ``X`` diagonal before a max pool, ``X >= 0`` before any other pool, ``P >= 0`` where
``alpha beta > 0``. The bound is ``L = sqrt(rho) * prod(pooling gains)``, printed rounded up.

Floating-point mode (default): ``M`` is computed in double precision together with ``|M|``, the sum of
the terms' absolute products, so that ``|M - fl(M)| <= gamma_K |M|`` entrywise (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., §3.5; ``gamma_K = K u / (1 - K u)``, ``K`` the longest chain of
products and sums). Then ``fl(M) - c I`` is factored by Cholesky, with

    c = d_form + 2 gamma_{n+1} / (1 - gamma_{n+1}) tr(fl(M)) + 3 n (2 n + tr) eta,
    d_form = gamma_K || |M| ||_F.

If the factorization runs to completion, ``fl(M) - cI + Delta = R'R`` with ``|Delta| <= gamma_{n+1} |R'||R|``
and ``||Delta||_2 <= gamma_{n+1} / (1 - gamma_{n+1}) tr(fl(M) - cI)`` (Demmel 1989; Higham, Thm. 10.3);
so ``M >= 0``: the criterion of Rump's ``isspd`` (S. M. Rump, *Verification of positive definiteness*, BIT
46 (2006) 433-452), with a factor 2 of safety for blocked LAPACK factorizations and ``eta`` the smallest
subnormal for underflow. A test that fails with the smallest eigenvalue within 4 rounding bounds of 0 is
inconclusive: that LMI is then checked in exact arithmetic.

Exact mode: the weights are binary fractions and so are the certificate's values (doubles): both are
taken as exact rationals (``fmpq``), ``M`` is formed exactly and ``M > 0`` is proved by an exact LDL'
(``ldl_pivots``, up to ``EXACT_LDL_MAX`` rows), or for larger LMIs by the exact congruence of a rounded
floating-point LDL' to a diagonally dominant remainder (``congruence_check``), with python-flint's
``fmpq_mat``/``fmpz_mat`` or sympy's ``DomainMatrix`` over QQ. If the first LMI (the only one ``rho`` enters)
is not strictly feasible, ``rho`` is raised by the least of ``2^-51 rho, ..., 2^-40 rho`` that makes it so
(Peyrl and Parrilo, *Computing sum of squares decompositions with rational coefficients*, TCS 409 (2008)
269-281: round, keep strict feasibility, prove exactly; here only rho moves).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

import numpy as np

from lipdsl.certify.certificate import Document, describe_steps, read, validate, weight_digests
from lipdsl.certify.exact import EXACT_LDL_MAX, backend, congruence_check, ldl_pivots
from lipdsl.certify.realization import realizations_match, own_realization, exact_realization
from lipdsl.errors import CertificateError
from lipdsl.lang import typed
from lipdsl.model import lowered

U = np.finfo(float).eps / 2  # unit roundoff
ETA = 2.0**-1074  # smallest subnormal


@dataclass(frozen=True)
class LmiVerdict:
    """One checked matrix inequality: its name, order, whether it holds and how it was shown."""

    name: str
    size: int
    ok: bool
    detail: str
    exact_realization: bool = True


@dataclass(frozen=True)
class Verdict:
    """What the checker showed: ``ok`` iff every LMI holds; ``lipschitz`` is then a proved upper bound
    (``bound_text``, rounded up to the digits shown; ``rho`` raised by ``rho_raise`` in exact mode)."""

    ok: bool
    mode: str  # "float" or "exact"
    network: str
    lipschitz: float | None
    bound_text: str | None
    claimed: float
    checks: tuple[LmiVerdict, ...] = field(default=())
    reason: str = ""
    rho_raise: float = 0.0
    seconds: float = 0.0
    backend: str = ""

    @property
    def realization_exact(self) -> bool:
        """Whether every system's ``(A, B, C, D)`` is the weights themselves (no rounded products)."""
        return all(c.exact_realization for c in self.checks)

    def to_json(self) -> dict:
        """A JSON-ready dict (``lipdsl verify --json``)."""
        return {
            "network": self.network, "ok": self.ok, "mode": self.mode, "lipschitz": self.lipschitz,
            "bound": self.bound_text, "claimed": self.claimed, "reason": self.reason,
            "rho_raise": self.rho_raise, "seconds": self.seconds, "backend": self.backend,
            "realization_exact": self.realization_exact,
            "checks": [{"name": c.name, "size": c.size, "ok": c.ok, "detail": c.detail,
                        "exact_realization": c.exact_realization} for c in self.checks],
        }


# -- realizations -----------------------------------------------------------------------------------------


# -- exact realizations of composed maps ----------------------------------------------------------------


# -- the chain of LMIs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    """One LMI to check: the system, its certificate values and where its weights come from."""

    sys: lowered.System
    P: np.ndarray | None
    lam: np.ndarray | None
    w_in: tuple  # ("rho",) or ("X", name, kron)
    w_out: tuple  # ("I",), ("X", name, tied) or ("WtW", system)
    needs_P_psd: bool
    exact_realization: bool
    slope: tuple[Fraction, Fraction] | None = None  # exact, outward: [a, b] contains the spec's slopes
    slope_float: tuple[float, float] | None = None  # doubles a' <= a, b' >= b
    full_weight: np.ndarray | None = None  # a compressed dense first layer's own W (``compressed_weight``)
    mats: tuple | None = None  # exact (A, B, C, D) recomputed from the weights (``exact_realization``)
    out_D: np.ndarray | None = None  # exact D of an eliminated last layer (X_out = D'D), if recomputed


def compressed_weight(sys: lowered.System, net: typed.Network, first: bool) -> np.ndarray | None:
    """The spec's weight ``W`` of a dense first layer that ``lower`` compressed to ``U_r S_r`` (its SVD, in
    floating point), when its LMI can be checked with ``W`` itself: activation slopes with ``ab = 0`` (else
    None, and lower's realization is used).

    With ``X_in = rho I`` and ``2ab = 0``, for ``rho > 0`` the LMI
    ``[[rho I, -(a+b) W'L], [-(a+b) LW, 2L - X_out]] >= 0`` holds iff its Schur complement
    ``2L - X_out - ((a+b)^2 / rho) L W W' L >= 0`` does (n_out rows); ``W W' = U_r S_r^2 U_r'`` is why the
    compressed LMI is equivalent. Built from ``W W'``, exactly.
    """
    if not first or sys.kind != "dense" or sys.slope is None or sys.ss.nx != 0:
        return None
    layer = next((x for x in net.layers if x.name == sys.layers[0]), None)
    if not isinstance(layer, typed.Dense) or len(sys.layers) != 2 or layer.n_in <= sys.ss.nu:
        return None
    a, b = sys.slope
    if a * b != 0 or layer.weight.shape[0] != sys.ss.ny:
        return None
    return np.asarray(layer.weight, dtype=float)


def slope_bounds(sys: lowered.System, net: typed.Network) -> tuple[tuple[Fraction, Fraction],
                                                                   tuple[float, float]] | None:
    """The activation's slope interval ``[a, b]`` as exact rationals and as doubles, both outward.

    A rational expression in the spec (``leaky_relu(1/10)``) is taken exactly; a number without one is
    covered both as the double the checker holds and as its shortest decimal (what the spec most likely
    wrote, e.g. ``0.01``): ``a = min`` of the two, ``b = max``. A wider interval is sound (the sector
    condition only gets weaker), and the LMI's margin absorbs the change of an ulp.
    """
    if sys.slope is None:
        return None
    act = next((layer for layer in net.layers if layer.name == sys.layers[-1]), None)
    alpha, beta = sys.slope

    def exact(value: float, expr, low: bool) -> Fraction:
        try:
            if expr is not None and getattr(expr, "is_Rational", False):
                return Fraction(int(expr.p), int(expr.q))
        except (TypeError, ValueError):  # pragma: no cover - sympy Rationals have p and q
            pass
        pair = (Fraction(value), Fraction(repr(value)))
        return min(pair) if low else max(pair)

    a = exact(alpha, getattr(act, "alpha_expr", None), True)
    b = exact(beta, getattr(act, "beta_expr", None), False)
    af = float(a) if Fraction(float(a)) <= a else math.nextafter(float(a), -math.inf)
    bf = float(b) if Fraction(float(b)) >= b else math.nextafter(float(b), math.inf)
    return (a, b), (af, bf)


def _fail(message: str, hint: str | None = None) -> CertificateError:
    return CertificateError(message, hint=hint)


def _matrix(value, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        M = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise _fail(f"{what}: not a matrix of numbers") from None
    if M.shape != shape or not np.all(np.isfinite(M)):
        raise _fail(f"{what}: expected a finite {shape[0]} x {shape[1]} matrix, got shape {M.shape}")
    if not np.array_equal(M, M.T):
        raise _fail(f"{what}: not symmetric")
    return M


def _structure(doc: dict, low: lowered.Network) -> None:
    """The certificate's steps must be the lowering of the spec (names, sizes, slopes, pools, flattens)."""
    mine = describe_steps(low)
    theirs = doc["steps"]
    keys = {"system": ("name", "layers", "kind", "nx", "nu", "ny", "slope", "block_in"),
            "pool": ("name", "op", "diagonal", "tied"), "flatten": ("name", "channels", "length")}
    if len(mine) != len(theirs):
        raise _fail(f"the certificate has {len(theirs)} steps, the spec lowers to {len(mine)}",
                    hint="the certificate was written for another network or other options")
    for a, b in zip(mine, theirs):
        if not isinstance(b, dict) or b.get("type") != a["type"] or any(
                b.get(k) != a[k] for k in keys[a["type"]]):
            raise _fail(f"step {a['name']!r} of the spec ({a['type']}) does not match the certificate's "
                        f"{b.get('name') if isinstance(b, dict) else b!r}",
                        hint="the certificate was written for another network or other options")


def _links(doc: dict, low: lowered.Network, net: typed.Network, lift: int = 1) -> tuple[list[_Link], tuple]:
    """The LMIs the chain needs, from the lowering; values from the certificate. Returns the links and
    ``(name, exact)`` of an eliminated last system (its LMI ``W'W - W'W = 0`` holds exactly; ``exact``: its
    ``W`` is the weights or recomputed exactly), or ``(None, True)``."""
    steps = list(low.steps)
    pos = [i for i, s in enumerate(steps) if isinstance(s, lowered.System)]
    if len({steps[i].name for i in pos}) != len(pos):  # (certificate.build refuses to write these)
        raise _fail("the spec lowers to two systems of the same name: not checkable")
    entries = {e["system"]: e for e in doc["lmis"]}
    Xs = doc["X"]
    eliminated = None
    if len(pos) >= 2 and steps[pos[-1]].name not in entries:
        last = steps[pos[-1]]
        between = steps[pos[-2] + 1 : pos[-1]]
        if (last.kind == "dense" and last.slope is None and last.ss.nx == 0
                and all(isinstance(s, lowered.Pool) and s.op != "max" for s in between)):
            eliminated = last.name
    out_D = None  # the eliminated layer's exact D when lower composed it (merged dense layers)
    elim_exact = True
    if eliminated is not None:
        last = steps[pos[-1]]
        if not own_realization(last, net):
            ex = exact_realization(last, low, net, pos[-1]) if lift == 1 else None
            if ex is not None and realizations_match(ex, last.ss):
                out_D = ex[3]
            else:
                elim_exact = False
    links = []
    for j, i in enumerate(pos):
        sys: lowered.System = steps[i]
        if sys.name == eliminated:
            continue
        e = entries.get(sys.name)
        if e is None:
            raise _fail(f"the certificate has no LMI for {sys.name!r} (layers {', '.join(sys.layers)})")
        nx, ny = sys.ss.nx, sys.ss.ny
        P = _matrix(e.get("P"), (nx, nx), f"P of LMI[{sys.name}]") if nx else None
        lam = None
        if sys.slope is not None:
            try:
                lam = np.array(e.get("lambda"), dtype=float).ravel()
            except (TypeError, ValueError):
                raise _fail(f"lambda of LMI[{sys.name}]: not a vector of numbers") from None
            if lam.shape != (ny,) or not np.all(np.isfinite(lam)):
                raise _fail(f"lambda of LMI[{sys.name}]: expected {ny} finite numbers")
            if np.any(lam < 0):
                k = int(np.argmax(lam < 0))
                raise _fail(f"LMI[{sys.name}]: multiplier lambda[{k}] = {lam[k]!r} is negative")
        before = steps[(pos[j - 1] + 1) if j else 0 : i]
        after = steps[i + 1 : pos[j + 1]] if j + 1 < len(pos) else steps[i + 1 :]
        kron = sys.block_in * math.prod(s.length for s in before if isinstance(s, lowered.Flatten))
        w_in = ("rho",) if j == 0 else ("X", steps[pos[j - 1]].name, kron)
        if j + 1 == len(pos):
            w_out = ("I",)
        elif steps[pos[j + 1]].name == eliminated:
            w_out = ("WtW", eliminated)
        else:
            tied = max((s.tied for s in after if isinstance(s, lowered.Pool)), default=1)
            if sys.name not in Xs:
                raise _fail(f"the certificate has no output weight X for {sys.name!r}")
            n = ny // tied
            X = _matrix(Xs[sys.name].get("matrix") if isinstance(Xs[sys.name], dict) else None, (n, n),
                        f"X[{sys.name}]")
            max_pooled = any(isinstance(s, lowered.Pool) and s.diagonal for s in after)
            if max_pooled and np.any(X - np.diag(np.diag(X))):
                raise _fail(f"X[{sys.name}] must be diagonal (max pooling follows)")
            w_out = ("X", sys.name, tied)
        needs = nx > 0 and sys.slope is not None and sys.slope[0] * sys.slope[1] > 0
        slopes = slope_bounds(sys, net)
        full = compressed_weight(sys, net, j == 0)
        if full is not None and slopes is not None and slopes[0][0] * slopes[0][1] != 0:
            full = None  # (outward slopes with ab != 0: the Schur form does not apply)
        own = full is not None or own_realization(sys, net)
        mats = None
        if not own and lift == 1:  # (lifted realizations keep lower's arrangement and values)
            ex = exact_realization(sys, low, net, i)
            mats = ex if ex is not None and realizations_match(ex, sys.ss) else None
        links.append(_Link(sys, P, lam, w_in, w_out, needs, own or mats is not None,
                           None if slopes is None else slopes[0], None if slopes is None else slopes[1],
                           full, mats, out_D if w_out[0] == "WtW" else None))
    return links, (eliminated, elim_exact)


def _pooled(low: lowered.Network) -> set[str]:
    """Systems whose output weight passes a pool (other than an exact merged map): X >= 0 is needed."""
    out = set()
    steps = list(low.steps)
    for i, s in enumerate(steps):
        if isinstance(s, lowered.System):
            for t in steps[i + 1 :]:
                if isinstance(t, lowered.System):
                    break
                if isinstance(t, lowered.Pool) and t.op != "merged":
                    out.add(s.name)
    return out


def _gain_squared(low: lowered.Network) -> Fraction:
    """``prod(gain^2)`` of the pools, exactly: each gain is the square root of a small rational (its float
    is checked against the rational's root to 8 ulp), else its float squared and rounded up."""
    total = Fraction(1)
    for s in low.steps:
        if isinstance(s, lowered.Pool):
            g = float(s.gain)
            q = Fraction(g * g).limit_denominator(1 << 24)
            if abs(math.sqrt(q.numerator / q.denominator) - g) <= 8 * math.ulp(g) and q > 0:
                total *= q
            else:
                total *= Fraction(g) ** 2 * (1 + Fraction(1, 1 << 40))
    return total


def _sqrt_up(x: Fraction, digits: int = 10) -> tuple[Fraction, str]:
    """A decimal ``d >= sqrt(x)`` with ``digits`` significant digits and its text (exact integers)."""
    if x <= 0:
        return Fraction(0), "0"
    e = math.floor(math.log10(math.sqrt(float(x)))) - digits + 1
    scale = Fraction(10) ** (-e)  # d = n / scale with n an integer of about ``digits`` digits
    y = x * scale * scale
    n = math.isqrt(y.numerator // y.denominator)
    while Fraction(n * n) < y:
        n += 1
    value = Decimal(n).scaleb(e)
    text = format(value, "f") if -6 <= value.adjusted() < 15 else format(value, "e")
    return Fraction(n) / scale, text


def _float_up(d: Fraction) -> float:
    """The least double ``>= d``."""
    f = float(d)
    return f if Fraction(f) >= d else math.nextafter(f, math.inf)


# -- floating-point check (Rump's isspd) -----------------------------------------------------------------


def _gamma(k: int) -> float:
    return k * U / (1 - k * U)


def _float_lmi(link: _Link, X_in: np.ndarray, X_out: np.ndarray, X_out_abs: np.ndarray):
    """``(fl(M), |M|)``: the LMI in doubles and the sum of its terms' absolute products (module doc)."""
    ss = link.sys.ss
    A, B, C, D = ss.A, ss.B, ss.C, ss.D
    nx, nu = ss.nx, ss.nu
    AB, E = np.hstack([A, B]), np.hstack([C, D])
    aAB, aE = np.abs(AB), np.abs(E)
    top = np.zeros((nx + nu, nx + nu))
    top_abs = np.zeros_like(top)
    if nx:
        P = link.P
        top[:nx, :nx] += P
        top -= AB.T @ P @ AB
        top_abs[:nx, :nx] += np.abs(P)
        top_abs += aAB.T @ np.abs(P) @ aAB
    top[nx:, nx:] += X_in
    top_abs[nx:, nx:] += np.abs(X_in)
    if link.sys.slope is None:
        top -= E.T @ X_out @ E
        top_abs += aE.T @ X_out_abs @ aE
        return (top + top.T) / 2, top_abs
    a, b = link.slope_float
    lam = link.lam
    top += 2 * a * b * ((E.T * lam) @ E)
    top_abs += abs(2 * a * b) * ((aE.T * lam) @ aE)
    cross = -(a + b) * (E.T * lam)
    M = np.block([[top, cross], [cross.T, 2 * np.diag(lam) - X_out]])
    Mabs = np.block([[top_abs, np.abs(cross)], [np.abs(cross).T, 2 * np.diag(lam) + np.abs(X_out)]])
    return (M + M.T) / 2, Mabs


def _float_schur(link: _Link, rho: float, X_out: np.ndarray, X_out_abs: np.ndarray):
    """``(fl(S), |S|)`` of ``S = 2L - X_out - ((a+b)^2 / rho) L W W' L`` (``compressed_weight``)."""
    W = link.full_weight
    a, b = link.slope_float
    c2 = (a + b) ** 2 / rho
    lam = link.lam
    LW = W * lam[:, None]
    S = 2 * np.diag(lam) - X_out - c2 * (LW @ LW.T)
    aLW = np.abs(W) * lam[:, None]
    Sabs = 2 * np.diag(lam) + X_out_abs + c2 * (aLW @ aLW.T)
    return (S + S.T) / 2, Sabs


def _psd_float(M: np.ndarray, Mabs: np.ndarray, K: int) -> tuple[bool, str, bool]:
    """Rump's criterion (module docstring): True if the exact ``M`` (within ``gamma_K |M|`` of ``fl(M)``)
    is positive semidefinite; the detail names the smallest eigenvalue when not. The third value: the
    test was inconclusive (the smallest eigenvalue is within 4 rounding bounds of 0, so exact arithmetic
    may still prove ``M >= 0``)."""
    n = M.shape[0]
    if n == 0:
        return True, "empty", False
    g = _gamma(2 * (n + 1))
    tr = float(np.sum(np.maximum(np.diag(M), 0.0)))
    d_form = 1.01 * _gamma(K) * float(np.linalg.norm(Mabs, "fro")) * (1 + n * n * U)
    c = (d_form + 1.01 * g / (1 - g) * tr + 3 * n * (2 * n + tr) * ETA
         + 2 * U * float(np.max(np.abs(np.diag(M)))))
    try:
        np.linalg.cholesky(M - c * np.eye(n))
        return True, f"Cholesky of M - c I with c = {c:.3g} (rounding bound)", False
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(M)
        k = int(np.argmax(np.abs(V[:, 0])))
        return False, (f"smallest eigenvalue {w[0]:.6g} (largest component at row {k}) is below the "
                       f"rounding bound {c:.3g}"), bool(w[0] >= -4 * c)


# -- exact check -----------------------------------------------------------------------------------------


def _exact_lmi(be, link: _Link, X_in, X_out):
    """The LMI ``M`` in exact rationals (module docstring), with the recomputed exact realization if any."""
    ss = link.sys.ss
    nx, nu = ss.nx, ss.nu
    A, B, C, D = link.mats if link.mats is not None else (ss.A, ss.B, ss.C, ss.D)
    AB = be.mat(np.hstack([np.asarray(A, dtype=object), np.asarray(B, dtype=object)]) if link.mats
                else np.hstack([A, B]))
    E = be.mat(np.hstack([C, D]) if link.mats is None else np.hstack([np.asarray(C, dtype=object), D]))
    m = nx + nu
    top = be.zeros(m, m)
    if nx:
        P = be.mat(link.P)
        Pbig = be.block([[P, be.zeros(nx, nu)], [be.zeros(nu, nx), be.zeros(nu, nu)]])
        top = top + Pbig - be.T(AB) * P * AB
    if nx:
        top = top + be.block([[be.zeros(nx, nx), be.zeros(nx, nu)], [be.zeros(nu, nx), X_in]])
    else:
        top = top + X_in
    if link.sys.slope is None:
        return top - be.T(E) * X_out * E
    a, b = link.slope
    lam = be.mat(np.diag(link.lam))
    qa, qb = be.q(a), be.q(b)
    LE = lam * E
    top = top + be.T(E) * LE * (2 * qa * qb)
    cross = be.T(LE) * (-(qa + qb))
    return be.block([[top, cross], [be.T(cross), lam * 2 - X_out]])


# -- the checker -----------------------------------------------------------------------------------------


def verify(spec, certificate, *, exact: bool = False, backend_name: str = "auto",
           allow_outside: bool = False) -> Verdict:
    """Check a certificate against a spec (module docstring).

    Parameters
    ----------
    spec : str, Path or lipdsl.lang.typed.Network
        The ``.lip`` file (weights loaded from its files) or a checked network.
    certificate : str, Path, dict or lipdsl.certify.certificate.Document
        The certificate file (``lipdsl solve --certificate``) or its parsed JSON.
    exact : bool
        Prove every LMI with exact rational arithmetic instead of the rigorous floating-point test.
    backend_name : str
        ``auto``, ``flint`` or ``sympy`` (exact mode).

    Returns
    -------
    Verdict
        ``ok`` False (with ``reason`` naming the LMI and the failing pivot or eigenvalue) when a check
        fails; never raises for a certificate that merely does not prove its claim.

    Raises
    ------
    LipdslError
        An unreadable spec, or a certificate file that is not valid JSON or has another schema or lipdsl
        version (``CertificateFileError``, exit code 1); ``CertificateError`` (exit code 3) when the
        certificate does not belong to the spec (weights, structure) or a value is malformed.
    """
    t0 = time.perf_counter()
    if isinstance(spec, typed.Network):
        net = spec
    else:
        from lipdsl.lang.load import load_network

        _, net = load_network(spec, allow_outside=allow_outside)
    if isinstance(certificate, Document):
        doc = certificate.data
    elif isinstance(certificate, dict):
        doc = validate(certificate)
    else:
        doc = read(certificate).data
    mine = weight_digests(net)
    theirs = doc["weights"]
    for key in sorted(set(mine) | set(theirs)):
        if key not in theirs or key not in mine or not isinstance(theirs[key], dict) \
                or theirs[key].get("sha256") != mine[key]["sha256"]:
            ours = mine[key]["sha256"][:16] if key in mine else "absent"
            entry = theirs.get(key)
            certified = str(entry.get("sha256", "absent"))[:16] if isinstance(entry, dict) else "absent"
            raise _fail(f"weight tensor {key!r} of the spec does not match the certificate's (SHA-256 "
                        f"{ours}... vs {certified}...)", hint="the certificate was written for other weights")
    opts = doc["options"]
    from lipdsl.model.lower import lower

    try:
        min_length = opts.get("min_length")
        lift = int(opts.get("lift", 1))
        if (min_length is not None and not isinstance(min_length, int)) or lift < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise _fail(f"the certificate's options {opts!r} are not valid (min_length: an integer or null, "
                    "lift: a positive integer)") from None
    low = lower(net, scale=False, min_length=min_length, lift=lift,
                merge_linear=bool(opts.get("merge_linear", True)))
    if any(s.internal for s in low.systems):  # (their LMIs have one multiplier per internal activation)
        raise _fail("residual blocks are not supported by the certificate checker yet",
                    hint="lipdsl solve certifies residual networks itself (without --certificate)")
    _structure(doc, low)
    links, (eliminated, elim_exact) = _links(doc, low, net, lift)
    pooled = _pooled(low)
    rho = float(doc["rho"])
    if not math.isfinite(rho) or rho < 0:
        raise _fail(f"rho = {rho!r} is not a nonnegative number")
    claimed = float(doc["lipschitz"])
    gain2 = _gain_squared(low)
    systems = {s.name: s for s in low.systems}
    Xs = {name: np.array(v["matrix"], dtype=float) for name, v in doc["X"].items()
          if any(lk.w_out[:2] == ("X", name) for lk in links)}
    checks: list[LmiVerdict] = []
    rho_raise = Fraction(0)
    be = backend(backend_name) if exact else None
    rho_q = Fraction(rho)

    def weight(w) -> np.ndarray | None:
        """``X (x) I_r`` of a ``("X", name, r)`` weight; None for ``rho I``, ``I`` and ``W'W``."""
        if w[0] != "X":
            return None
        X = Xs[w[1]]
        return np.kron(X, np.eye(w[2])) if w[2] > 1 else X

    for link in links:
        ss = link.sys.ss
        n = ss.nx + ss.nu + (ss.ny if link.sys.slope is not None else 0)
        name = f"LMI[{link.sys.name}]"
        where = f" (layers {', '.join(link.sys.layers)})"
        X_in = weight(link.w_in)
        if link.w_out[0] == "WtW":
            Dl = systems[link.w_out[1]].ss.D
            X_out, X_out_abs = Dl.T @ Dl, np.abs(Dl).T @ np.abs(Dl)
        elif link.w_out[0] == "I":
            X_out = np.eye(ss.ny)
            X_out_abs = X_out
        else:
            X_out = weight(link.w_out)
            X_out_abs = np.abs(X_out)
        inconclusive = False
        if link.full_weight is not None:
            n = link.full_weight.shape[1] + ss.ny
        if not exact and link.full_weight is not None:
            if not rho > 0:
                ok, detail, inconclusive = False, "rho must be > 0", False
            else:
                M, Mabs = _float_schur(link, rho, X_out, X_out_abs)
                ok, detail, inconclusive = _psd_float(M, Mabs, 2 * link.full_weight.shape[1] + 2 * ss.ny + 16)
                detail = "Schur complement with the full weight W: " + detail
        elif not exact and (link.mats is not None or link.out_D is not None):
            inconclusive = True  # lower's composed map is rounded: this LMI with the exact one instead
            detail = "composed map recomputed exactly from the weights"
        elif not exact:
            Xi = rho * np.eye(ss.nu) if X_in is None else X_in
            M, Mabs = _float_lmi(link, Xi, X_out, X_out_abs)
            K = 2 * (ss.nx + ss.nu + ss.ny) + 16 + (ss.ny if link.w_out[0] == "WtW" else 0)
            ok, detail, inconclusive = _psd_float(M, Mabs, K)
        if exact or inconclusive:  # (floating point too close to call: this LMI in exact arithmetic)
            be = be if be is not None else backend(backend_name)
            ok, how, raise_by = _exact_link(be, link, X_in, X_out, systems, rho_q, allow_raise=exact)
            if exact and link.w_in[0] == "rho":
                rho_raise = raise_by
            if exact:
                detail = how
            elif link.mats is not None or link.out_D is not None:
                detail = f"{detail}: {how}"
            else:
                detail = (f"floating point inconclusive ({detail}); exact: {how}" if ok else
                          f"{how} (floating point: {detail})")
        checks.append(LmiVerdict(name + where, n, ok, detail, link.exact_realization))
        if link.needs_P_psd:
            okp, dp = _side_psd(be, link.P, exact, backend_name)
            checks.append(LmiVerdict(f"P[{link.sys.name}] >= 0", ss.nx, okp, dp, True))
    for name in sorted(pooled):
        if name in Xs:
            okx, dx = _side_psd(be, Xs[name], exact, backend_name)
            checks.append(LmiVerdict(f"X[{name}] >= 0 (pooled)", Xs[name].shape[0], okx, dx, True))
    if eliminated is not None:
        checks.append(LmiVerdict(f"LMI[{eliminated}]", systems[eliminated].ss.nu, True,
                                 "X := W'W: the LMI is 0 >= 0 exactly", elim_exact))
    bad = next((c for c in checks if not c.ok), None)
    rho_final = rho_q + rho_raise
    L2 = rho_final * gain2
    d, text = _sqrt_up(L2)
    seconds = time.perf_counter() - t0
    mode = "exact" if exact else "float"
    bname = "numpy" if not exact else be.name
    if bad is not None:
        return Verdict(False, mode, doc["network"], None, None, claimed, tuple(checks),
                       f"{bad.name} fails: {bad.detail}", float(rho_raise), seconds, bname)
    if Fraction(claimed) < d * (1 - Fraction(1, 10**9)):
        return Verdict(False, mode, doc["network"], None, None, claimed, tuple(checks),
                       f"the claimed bound {claimed!r} is below what the certificate proves, "
                       f"sqrt(rho * prod(pool gains^2)) <= {text}", float(rho_raise), seconds, bname)
    return Verdict(True, mode, doc["network"], _float_up(d), text, claimed, tuple(checks), "",
                   float(rho_raise), seconds, bname)


def _exact_link(be, link: _Link, X_in, X_out, systems, rho_q: Fraction, allow_raise: bool):
    """One LMI in exact arithmetic: (ok, detail, raise of rho). The first LMI (``X_in = rho I``) may get
    ``rho`` raised by the least of ``2^-51 rho, ..., 2^-40 rho`` that makes it strictly feasible."""
    ss = link.sys.ss
    if link.w_out[0] == "WtW":
        Dq = be.mat(link.out_D if link.out_D is not None else systems[link.w_out[1]].ss.D)
        Xo = be.T(Dq) * Dq
    else:
        Xo = be.mat(X_out)
    if link.full_weight is not None:  # the Schur complement with the spec's W (``compressed_weight``)
        W = be.mat(link.full_weight)
        lam = be.mat(np.diag(link.lam))
        a, b = link.slope
        LWWL = lam * W * be.T(W) * lam
        raise_by = Fraction(0)
        for attempt in range(RHO_RAISE_STEPS + 1 if allow_raise else 1):
            if attempt:
                raise_by = max(rho_q, Fraction(1, 1 << 1000)) / (1 << (RHO_RAISE_STEPS + 40 - attempt))
            r = rho_q + raise_by
            if r <= 0:
                return False, "rho must be > 0", Fraction(0)
            S = lam * 2 - Xo - LWWL * be.q((a + b) ** 2 / r)
            ok, how = _prove(be, S)
            if ok:
                n_in = link.full_weight.shape[1]
                how = f"Schur complement on rho I with the full weight W ({n_in} inputs): {how}"
                return True, how + (f"; rho raised by {float(raise_by):.3g}" if raise_by else ""), raise_by
        return False, "Schur complement with the full weight W: " + _explain(be, S), Fraction(0)
    if link.w_in[0] != "rho":
        M = _exact_lmi(be, link, be.mat(X_in), Xo)
        ok, how = _prove(be, M)
        return ok, how if ok else _explain(be, M), Fraction(0)
    raise_by = Fraction(0)
    for attempt in range(RHO_RAISE_STEPS + 1 if allow_raise else 1):
        if attempt:
            raise_by = max(rho_q, Fraction(1, 1 << 1000)) / (1 << (RHO_RAISE_STEPS + 40 - attempt))
        M = _exact_lmi(be, link, _scaled_identity(be, ss.nu, be.q(rho_q + raise_by)), Xo)
        ok, how = _prove(be, M)
        if ok:
            return True, how + (f"; rho raised by {float(raise_by):.3g}" if raise_by else ""), raise_by
    M = _exact_lmi(be, link, _scaled_identity(be, ss.nu, be.q(rho_q)), Xo)
    also = " (also with rho raised by up to 2^-40 of itself)" if allow_raise else ""
    return False, _explain(be, M) + also, Fraction(0)


def _scaled_identity(be, n: int, r):
    M = be.zeros(n, n)
    if be.name == "sympy":
        from sympy.polys.matrices import DomainMatrix

        return DomainMatrix.eye(n, be.QQ) * r
    for i in range(n):
        M[i, i] = r
    return M


def _side_psd(be, S: np.ndarray, exact: bool, backend_name: str = "auto") -> tuple[bool, str]:
    """``S >= 0`` for a side condition (``P``, pooled ``X``): exact LDL' or Rump's test on ``S`` itself
    (exact arithmetic when that is inconclusive)."""
    if not exact:
        ok, detail, inconclusive = _psd_float(S, np.abs(S), 4)
        if not inconclusive:
            return ok, detail
        be = be if be is not None else backend(backend_name)
    M = be.mat(S)
    ok, how = _prove(be, M)
    return ok, how if ok else _explain(be, M)


#: In exact mode rho is raised by at most 2^-40 of itself, in this many doublings from 2^-(40+steps).
RHO_RAISE_STEPS = 12
#: A failed exact check names its first pivot <= 0 by the exact LDL' up to this order (beyond it, the
#: floating-point Cholesky's breakdown row).
EXPLAIN_LDL_MAX = 100


def _prove(be, M) -> tuple[bool, str]:
    """``M > 0`` proved in exact arithmetic (``EXACT_LDL_MAX``: exact LDL' or the rounded-LDL'
    congruence); False if not proved."""
    rows = be.rows(M)
    if len(rows) <= EXACT_LDL_MAX:
        ok, _, _ = ldl_pivots(rows)
        return ok, "exact LDL': every pivot > 0"
    return congruence_check(be, rows)


def _explain(be, M) -> str:
    """Why ``M > 0`` fails: the first pivot <= 0 of the exact LDL', or the float Cholesky's breakdown."""
    rows = be.rows(M)
    if len(rows) <= EXPLAIN_LDL_MAX:
        ok, at, v = ldl_pivots(rows)
        if not ok:
            return f"exact LDL': pivot {at} is {float(v):.6g} <= 0"
        return "exact LDL': every pivot > 0, but the congruence test failed"  # pragma: no cover
    from scipy.linalg import lapack

    Mf = np.array([[float(v) for v in row] for row in rows])
    _, info = lapack.dpotrf(Mf, lower=1)
    w = np.linalg.eigvalsh(Mf)
    return (f"floating-point Cholesky breaks down at pivot {info - 1}; smallest eigenvalue about {w[0]:.6g}"
            if info > 0 else f"not proved (smallest eigenvalue about {w[0]:.6g})")

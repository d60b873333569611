"""The checker's chain of LMIs: (typed.Network, lowered chain, certificate Document) -> ``Link`` records (each
system with its weights, slope, multipliers and realization, checked against the certificate's shapes).

Part of ``verify`` (its module docstring has the LMI); imports no solver code."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lipdsl.certify.batchnorm import ScaleCover
from lipdsl.certify.certificate import BEYOND_DOUBLE, REDO, describe_steps
from lipdsl.certify.realization import exact_realization, own_realization, realizations_match
from lipdsl.certify.realization_block import exact_block_realization
from lipdsl.errors import CertificateError
from lipdsl.lang import typed
from lipdsl.model import lowered


# -- realizations -----------------------------------------------------------------------------------------


# -- exact realizations of composed maps ----------------------------------------------------------------


# -- the chain of LMIs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
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
    #: a residual block: the multipliers of its internal activations and their slopes (exact, float), outward
    inner: tuple[np.ndarray, ...] = ()
    inner_slopes: tuple[tuple[Fraction, Fraction], ...] = ()
    inner_slopes_float: tuple[tuple[float, float], ...] = ()
    #: how far ``mats``' C, D may move with the batch norms' exact scales (``batchnorm.ScaleCover``)
    cover: ScaleCover | None = None


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
        q = _rational(expr)
        return q if q is not None else _outward([Fraction(value), Fraction(repr(value))], low)[0]

    (a, af) = _outward([exact(alpha, getattr(act, "alpha_expr", None), True)], True)
    (b, bf) = _outward([exact(beta, getattr(act, "beta_expr", None), False)], False)
    return (a, b), (af, bf)


def _rational(expr) -> Fraction | None:
    """A spec's slope expression as an exact rational (``leaky_relu(1/10)``), or None if it is not one."""
    try:
        if expr is not None and getattr(expr, "is_Rational", False):
            return Fraction(int(expr.p), int(expr.q))
    except (TypeError, ValueError):  # pragma: no cover - sympy Rationals have p and q
        pass
    return None


def _outward(values: list[Fraction], low: bool) -> tuple[Fraction, float]:
    """The least (``low``) or greatest of exact candidates for a slope bound, and a double beyond it."""
    q = min(values) if low else max(values)
    f = float(q)
    if low and Fraction(f) > q:
        f = math.nextafter(f, -math.inf)
    elif not low and Fraction(f) < q:
        f = math.nextafter(f, math.inf)
    return q, f


def internal_slopes(sys: lowered.System, net: typed.Network,
                    widened: frozenset | None) -> tuple[tuple, tuple]:
    """The slope intervals of a residual block's internal activations, exact and as doubles, outward.

    Each covers lower's interval (the double and its shortest decimal: lower widens the sector of an
    activation before a masked conv to ``[min(a, 0), max(b, 0)]`` and gives a window ``[0, 1]``), the
    spec's activation (its rational expression, when it has one), as ``slope_bounds`` does, and 0 for the
    activations the checker's own realization found before a masked conv (``widened``; None: not rebuilt).
    """
    acts = {}
    for layer in net.layers:
        if isinstance(layer, typed.Residual):
            for inner in typed.flat_layers(layer.main) + typed.flat_layers(layer.shortcut):
                if isinstance(inner, typed.Activation):
                    acts[inner.name] = inner
    exact, floats = [], []
    for act in sys.internal:
        lo = [Fraction(act.alpha), Fraction(repr(act.alpha))]
        hi = [Fraction(act.beta), Fraction(repr(act.beta))]
        spec = acts.get(act.name)
        for expr, out in ((getattr(spec, "alpha_expr", None), lo), (getattr(spec, "beta_expr", None), hi)):
            if _rational(expr) is not None:
                out.append(_rational(expr))
        if act.name.endswith(".window") or (widened is not None and act.name in widened):
            lo.append(Fraction(0))
            hi.append(Fraction(0))
        if act.name.endswith(".window"):
            hi.append(Fraction(1))
        (a, af), (b, bf) = _outward(lo, True), _outward(hi, False)
        exact.append((a, b))
        floats.append((af, bf))
    return tuple(exact), tuple(floats)


def number(value, what: str) -> float:
    """A certificate's number as a double (its type was checked by ``certificate.validate``); a JSON
    integer beyond the range of a double is refused, naming ``what``."""
    try:
        return float(value)
    except OverflowError:
        raise invalid(f"{what} is {BEYOND_DOUBLE}", hint=REDO) from None


def _floats(value, what: str, shape: str) -> np.ndarray:
    """A certificate's array of numbers as doubles (``shape``: 'vector' or 'matrix', for the message)."""
    try:
        return np.array(value, dtype=float)
    except OverflowError:
        raise invalid(f"{what}: an entry is {BEYOND_DOUBLE}", hint=REDO) from None
    except (TypeError, ValueError):
        raise invalid(f"{what}: not a {shape} of numbers") from None


def _multipliers(value, n: int, what: str) -> np.ndarray:
    """A multiplier vector from the certificate: ``n`` finite numbers ``>= 0``."""
    lam = _floats(value, what, "vector").ravel()
    if lam.shape != (n,):
        raise invalid(f"{what}: expected {n} numbers, got {lam.size}")
    _finite(lam, what, "lambda")
    if np.any(lam < 0):
        k = int(np.argmax(lam < 0))
        raise invalid(f"{what}: multiplier lambda[{k}] = {float(lam[k])!r} is negative")
    return lam


def block_multipliers(sys: lowered.System, entry: dict) -> tuple[np.ndarray, ...]:
    """A residual block's internal multipliers from its certificate entry (``"internal"``: one
    ``{"activation", "lambda"}`` per internal activation, in the block's order)."""
    listed = entry.get("internal")
    if not isinstance(listed, list) or len(listed) != len(sys.internal):
        raise invalid(f"LMI[{sys.name}] is a residual block with {len(sys.internal)} internal activation(s) "
                      f"({', '.join(a.name for a in sys.internal)}); the certificate lists "
                      f"{len(listed) if isinstance(listed, list) else 'no'} multiplier(s) for them",
                      hint="the certificate was written for another network or by another lipdsl")
    out = []
    for act, item in zip(sys.internal, listed):
        if not isinstance(item, dict) or item.get("activation") != act.name:
            raise invalid(f"LMI[{sys.name}]: expected the multipliers of {act.name!r}, got "
                          f"{item.get('activation') if isinstance(item, dict) else item!r}")
        out.append(_multipliers(item.get("lambda"), act.n, f"lambda of {act.name!r} in LMI[{sys.name}]"))
    return tuple(out)


def invalid(message: str, hint: str | None = None) -> CertificateError:
    return CertificateError(message, hint=hint)


def _finite(values: np.ndarray, what: str, symbol: str) -> None:
    """Refuse a NaN or an infinity in a certificate's array, naming its first such entry (``P[2,3] is
    nan``); the shape was checked before."""
    bad = ~np.isfinite(values)
    if bad.any():
        at = np.unravel_index(int(np.flatnonzero(bad)[0]), values.shape)
        raise invalid(f"{what}: {symbol}[{','.join(map(str, at))}] is {float(values[at])!r}, expected a "
                      "finite number", hint=REDO)


def _matrix(value, shape: tuple[int, int], what: str, symbol: str) -> np.ndarray:
    M = _floats(value, what, "matrix")
    if M.shape != shape:
        raise invalid(f"{what}: expected a {shape[0]} x {shape[1]} matrix, got shape {M.shape}")
    _finite(M, what, symbol)
    if not np.array_equal(M, M.T):
        raise invalid(f"{what}: not symmetric")
    return M


def structure(doc: dict, low: lowered.Network) -> None:
    """The certificate's steps must be the lowering of the spec (names, sizes, slopes, pools, flattens)."""
    mine = describe_steps(low)
    theirs = doc["steps"]
    keys = {"system": ("name", "layers", "kind", "nx", "nu", "ny", "slope", "block_in", "internal"),
            "pool": ("name", "op", "diagonal", "tied"), "flatten": ("name", "channels", "length")}
    if len(mine) != len(theirs):
        raise invalid(f"the certificate has {len(theirs)} steps, the spec lowers to {len(mine)}",
                    hint="the certificate was written for another network or other options")
    for a, b in zip(mine, theirs):
        if not isinstance(b, dict) or b.get("type") != a["type"] or any(
                b.get(k) != a.get(k) for k in keys[a["type"]]):
            raise invalid(f"step {a['name']!r} of the spec ({a['type']}) does not match the certificate's "
                        f"{b.get('name') if isinstance(b, dict) else b!r}",
                        hint="the certificate was written for another network or other options")


def lmi_chain(doc: dict, low: lowered.Network, net: typed.Network, lift: int = 1) -> tuple[list[Link], tuple]:
    """The LMIs the chain needs, from the lowering; values from the certificate. Returns the links and
    ``(name, exact)`` of an eliminated last system (its LMI ``W'W - W'W = 0`` holds exactly; ``exact``: its
    ``W`` is the weights or recomputed exactly), or ``(None, True)``."""
    steps = list(low.steps)
    pos = [i for i, s in enumerate(steps) if isinstance(s, lowered.System)]
    if len({steps[i].name for i in pos}) != len(pos):  # (certificate.build refuses to write these)
        raise invalid("the spec lowers to two systems of the same name: not checkable")
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
            # (a batch norm folded into it would move X_out = D'D: lower's D, flagged, as before)
            if ex is not None and ex[1] is None and realizations_match(ex[0], last.ss):
                out_D = ex[0][3]
            else:
                elim_exact = False
    links = []
    for j, i in enumerate(pos):
        sys: lowered.System = steps[i]
        if sys.name == eliminated:
            continue
        e = entries.get(sys.name)
        if e is None:
            raise invalid(f"the certificate has no LMI for {sys.name!r} (layers {', '.join(sys.layers)})")
        nx = sys.ss.nx
        P = _matrix(e.get("P"), (nx, nx), f"P of LMI[{sys.name}]", "P") if nx else None
        lam = None
        if sys.slope is not None:  # one multiplier per output (a block's: its n_out outputs, not ny)
            lam = _multipliers(e.get("lambda"), sys.n_out, f"lambda of LMI[{sys.name}]")
        inner, inner_q, inner_f = (), (), ()
        rebuilt = exact_block_realization(sys, net) if sys.kind == "block" and lift == 1 else None
        if sys.internal:
            inner = block_multipliers(sys, e)
            inner_q, inner_f = internal_slopes(sys, net, None if rebuilt is None else rebuilt.widened)
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
                raise invalid(f"the certificate has no output weight X for {sys.name!r}")
            n = sys.n_out // tied
            X = _matrix(Xs[sys.name].get("matrix") if isinstance(Xs[sys.name], dict) else None, (n, n),
                        f"X[{sys.name}]", "X")
            max_pooled = any(isinstance(s, lowered.Pool) and s.diagonal for s in after)
            if max_pooled and np.any(X - np.diag(np.diag(X))):
                raise invalid(f"X[{sys.name}] must be diagonal (max pooling follows)")
            w_out = ("X", sys.name, tied)
        slopes = slope_bounds(sys, net)
        products = [q[0] * q[1] for q in inner_q] + ([] if slopes is None else [slopes[0][0] * slopes[0][1]])
        needs = nx > 0 and any(p > 0 for p in products)  # (alpha beta <= 0: implied by the (x, x) block)
        full = compressed_weight(sys, net, j == 0)
        if full is not None and slopes is not None and slopes[0][0] * slopes[0][1] != 0:
            full = None  # (outward slopes with ab != 0: the Schur form does not apply)
        own = full is not None or own_realization(sys, net)
        mats, cover = None, None
        if not own and lift == 1 and sys.kind == "block":  # a residual block: its taps recomputed exactly
            mats, cover = (None, None) if rebuilt is None else (rebuilt.mats, rebuilt.cover)
        elif not own and lift == 1:  # (lifted realizations keep lower's arrangement and values)
            ex = exact_realization(sys, low, net, i)
            if ex is not None and realizations_match(ex[0], sys.ss):
                mats, cover = ex
        links.append(Link(sys, P, lam, w_in, w_out, needs, own or mats is not None,
                           None if slopes is None else slopes[0], None if slopes is None else slopes[1],
                           full, mats, out_D if w_out[0] == "WtW" else None, inner, inner_q, inner_f, cover))
    return links, (eliminated, elim_exact)


def pooled_steps(low: lowered.Network) -> set[str]:
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


def gain_squared(low: lowered.Network) -> Fraction:
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

"""Verify a certificate: (spec, certificate file) -> Verdict (every LMI rebuilt and checked, no solver code).

The checker is independent of the solver side: it imports none of cvxopt, picos, ``lipdsl.sdp``,
``lipdsl.solve``, ``lipdsl.certify``, ``lipdsl.kyp``, ``lipdsl.hkm``, ``lipdsl.cones``. From the front end it
uses the spec loader (parse, check, weights) and ``lipdsl.lower`` with ``scale=False`` for the chain of
systems, pools and flattens and their numeric realizations ``(A, B, C, D)``. A plain conv or dense layer's
realization is rebuilt here too (``realize``) and must equal lower's entry for entry (then it is the
weights themselves, exactly); maps lower composes in floating point (merged convs and pools, overlapping
pools, folded Toeplitz maps, merged dense layers, folded batch norms) are recomputed exactly
(``exact_realization``) and their LMIs checked in exact arithmetic; a batch norm's double scales ``s`` are
within a proved ``2^-50`` of ``w / sqrt(v + eps)``, and ``M - tau I > 0`` is checked instead of ``M > 0``
where one moves ``C``, ``D`` (``batchnorm``); a compressed dense first layer is checked with its own ``W``
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
``alpha beta > 0``. The bound is ``L = sqrt(rho) * prod(pooling gains)``, printed rounded up. A residual
block's LMI, with one multiplier vector per activation inside it, is built by ``verify_block`` from the
realization ``realization_block`` rebuilds from the weights (lower's shift registers, exact ``C``, ``D``).

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

import json
import math
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

import numpy as np

from lipdsl.certify.certificate import (REDO, SCHEMA_1, Document, read, validate, weight_digests,
                                       weight_tensors)
from lipdsl.certify.exact import backend
from lipdsl.certify.verify_block import float_block_lmi, rounding_terms, scale_tau
from lipdsl.certify.verify_exact import exact_link, side_psd
from lipdsl.certify.verify_float import ETA, U, float_lmi, float_schur, psd_float  # noqa: F401
from lipdsl.certify.verify_links import invalid, gain_squared, lmi_chain, number, pooled_steps, structure
from lipdsl.errors import LipdslError, shorten
from lipdsl.lang import typed
from lipdsl.lang.source import Source
from lipdsl.rigorous import fraction_up


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
    #: the certificate file's (``certificate_notes``), then the batch-norm scales covered: per LMI, the
    #: relative bound and its tau
    notes: tuple[str, ...] = ()
    #: for which inputs the bound holds, in ``solve``'s words (``lowered.Network.validity``)
    valid_for: str = ""
    #: the certificate's ``options.min_length`` (None: not given)
    min_length: int | None = None
    #: whether the bound holds only for inputs of at least ``min_length`` samples (a global average pool)
    length_bound: bool = False

    @property
    def realization_exact(self) -> bool:
        """Whether every system's ``(A, B, C, D)`` is the weights themselves (no rounded products)."""
        return all(c.exact_realization for c in self.checks)

    @property
    def realization_note(self) -> str | None:
        """What a proof does not cover when some realization is ``lower.py``'s rounded one (None: all exact):
        the LMIs concerned, named. ``verify`` and ``solve --exact`` print it alike."""
        rounded = [c.name.split(" ")[0] for c in self.checks if not c.exact_realization]
        if not rounded:
            return None
        return (f"{', '.join(rounded)}: checked with lower.py's floating-point realization (lifted maps, and "
                "residual blocks the checker does not rebuild, e.g. strided ones): its products of weights "
                "rounded to double are not covered")

    def to_json(self) -> dict:
        """A JSON-ready dict (``lipdsl verify --json``)."""
        return {
            "network": self.network, "ok": self.ok, "mode": self.mode, "lipschitz": self.lipschitz,
            "bound": self.bound_text, "claimed": self.claimed, "reason": self.reason,
            "rho_raise": self.rho_raise, "seconds": self.seconds, "backend": self.backend,
            "realization_exact": self.realization_exact, "valid_for": self.valid_for,
            "min_length": self.min_length, "length_bound": self.length_bound,
            "checks": [{"name": c.name, "size": c.size, "ok": c.ok, "detail": c.detail,
                        "exact_realization": c.exact_realization} for c in self.checks],
        } | ({"notes": list(self.notes)} if self.notes else {})


def same_weights(net: typed.Network, doc: dict) -> None:
    """Refuse a certificate written for another network or other weights, naming the tensors: the spec's
    weight digests (``certificate.weight_digests``: every tensor the bound depends on, or for a certificate
    of schema ``lipdsl-certificate/1`` the top-level conv and dense weights it recorded) must be the
    certificate's, key for key.

    Raises
    ------
    CertificateError
        Tensors on one side only (another network), or a tensor whose SHA-256 differs (other weights).
    """
    mine, theirs = weight_digests(net, doc["schema"]), doc["weights"]
    spec_only, cert_only = [k for k in mine if k not in theirs], sorted(set(theirs) - set(mine))
    redo = "re-create it: lipdsl solve SPEC --certificate FILE"
    named = f" ({shorten(doc['network'])!r}, the spec is {net.name!r})" if doc["network"] != net.name else ""
    if spec_only or cert_only:
        parts = [f"{side} {_kind(keys, entries)} {_tensors(keys)} {'is' if len(keys) == 1 else 'are'} not in "
                 f"the {other}"
                 for side, keys, entries, other in (("the spec's", spec_only, mine, "certificate"),
                                                    ("the certificate's", cert_only, theirs, "spec")) if keys]
        raise invalid(f"the certificate was made for a different network{named}: " + "; ".join(parts),
                      hint=f"verify it against the spec it was written for, or {redo}")
    differ = [k for k in mine if not isinstance(theirs[k], dict)  # (in the network's order)
              or theirs[k].get("sha256") != mine[k]["sha256"]]
    if differ:
        key, entry = differ[0], theirs[differ[0]]
        certified = str(entry.get("sha256", "absent"))[:16] if isinstance(entry, dict) else "absent"
        more = "" if len(differ) == 1 else \
            f"; {_tensors(differ[1:])} differ{'s' if len(differ) == 2 else ''} too"
        raise invalid(f"the certificate was made for other weights{named}: {_kind([key], mine)} {key!r} of "
                      f"the spec does not match the certificate's (SHA-256 {mine[key]['sha256'][:16]}... vs "
                      f"{certified}...){more}",
                      hint=f"verify it against the weights it was written for, or {redo}")


def certificate_notes(net: typed.Network, doc: dict) -> list[str]:
    """What a verdict must add about the certificate file itself: another network name than the spec's
    (the spec is what is verified; its weights matched), and for a ``lipdsl-certificate/1`` file of a net
    with residual blocks or batch norms, the tensors it does not fingerprint (``same_weights`` compared the
    top-level conv and dense weights only: the bound verified is the one of the spec's values of those)."""
    notes = []
    if doc["network"] != net.name:
        notes.append(f"the certificate names the network {shorten(doc['network'])!r}; the spec verified is "
                     f"{net.name!r} (its weights and lowering match the certificate)")
    if doc["schema"] == SCHEMA_1:
        tensors = weight_tensors(net)
        loose = [k for k in tensors if k not in weight_tensors(net, top_level=True)]
        if loose:
            shapes = {k: {"shape": list(np.shape(tensors[k]))} for k in loose}
            notes.append(f"this {SCHEMA_1} file fingerprints the top-level conv and dense weights only: "
                         f"{_kind(loose, shapes)} {_tensors(loose)} of the residual blocks and "
                         "batch norms are not pinned by it; the bound verified holds for the spec's values "
                         "(re-create the certificate to pin them: lipdsl solve SPEC --certificate FILE)")
    return notes


def _kind(keys: list[str], entries: dict) -> str:
    """What ``keys`` name, by their digest ``entries``: ``weight tensor(s)``, or ``value(s)`` for numbers
    (shape ``[]``: a batch norm's ``eps``), or ``weight tensors and values`` for both."""
    numbers = [isinstance(entries.get(k), dict) and entries[k].get("shape") == [] for k in keys]
    one = len(keys) == 1
    if all(numbers):
        return "value" if one else "values"
    return ("weight tensor" if one else "weight tensors") if not any(numbers) else "weight tensors and values"


def _tensors(keys: list[str], shown: int = 3) -> str:
    """``'a', 'b' and 2 more``: the first ``shown`` keys of a list, each shortened."""
    names = [repr(shorten(k)) for k in keys[:shown]]
    rest = len(keys) - shown
    if rest > 0:
        return ", ".join(names) + f" and {rest} more"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


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
    if "." in text and "e" not in text:  # (trailing zeros dropped, as rigorous.format_up prints bounds)
        text = text.rstrip("0").rstrip(".")
    return Fraction(n) / scale, text


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
        An unreadable spec, or a certificate file that cannot be read (too large, not UTF-8, not JSON) or
        has another schema or lipdsl version (``CertificateFileError``, exit code 1); ``CertificateError``
        (exit code 3) when the certificate does not belong to the spec (weights, structure, options) or a
        field is missing, mistyped or malformed (an integer beyond the range of a double). Errors about a
        certificate file carry ``err.source`` (its path), so ``err.render(err.source)`` gives ``cert.json:
        error: ...``.
    """
    t0 = time.perf_counter()
    if isinstance(spec, typed.Network):
        net = spec
    else:
        from lipdsl.lang.load import load_network

        _, net = load_network(spec, allow_outside=allow_outside)
    try:
        return _verify(net, certificate, exact, backend_name, t0)
    except LipdslError as err:  # (the certificate's errors render as "cert.json: error: ...")
        if err.span is None and err.source is None and isinstance(certificate, (str, os.PathLike)):
            err.source = Source(str(certificate), "")
        raise


def lowering_options(opts: dict) -> tuple[int | None, int, bool]:
    """The certificate's ``options`` that change the lowering: ``min_length`` (an integer >= 1 or null),
    ``lift`` (an integer >= 1, default 1), ``merge_linear`` (true or false, default true); ``true`` is not
    an integer here, nor ``"2"``.

    Raises
    ------
    CertificateError
        For any other value, naming it.
    """
    min_length, lift, merge = opts.get("min_length"), opts.get("lift", 1), opts.get("merge_linear", True)
    for key, value, ok, expected in (
            ("min_length", min_length, value_is_int(min_length, 1) or min_length is None,
             "an integer >= 1 or null (solve's --length)"),
            ("lift", lift, value_is_int(lift, 1), "an integer >= 1 (solve's --lift)"),
            ("merge_linear", merge, isinstance(merge, bool), "true or false")):
        if not ok:
            raise invalid(f"the certificate's options.{key} = {json_text(value)} is not valid: expected "
                          f"{expected}", hint=REDO)
    return min_length, lift, merge


def value_is_int(value, least: int) -> bool:
    """Whether a JSON value is an integer (not ``true``/``false``) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def json_text(value) -> str:
    """A certificate's value as its JSON text, shortened (``true``, ``"2"``, ``-5``)."""
    try:
        return shorten(json.dumps(value))
    except (TypeError, ValueError):  # (not JSON: a Python object given in the dict; a 10^5000 integer)
        return type(value).__name__


def _verify(net: typed.Network, certificate, exact: bool, backend_name: str, t0: float) -> Verdict:
    """``verify`` after the spec is loaded."""
    if isinstance(certificate, Document):
        doc = certificate.data
    elif isinstance(certificate, dict):
        doc = validate(certificate)
    else:
        doc = read(certificate).data
    same_weights(net, doc)
    file_notes = certificate_notes(net, doc)
    min_length, lift, merge_linear = lowering_options(doc["options"])
    if not net.any_length:  # (a certificate of a fixed-length spec may record the --length that solve
        min_length = None   # used to ignore: only the spec's length enters its lowering and validity)
    from lipdsl.model.lower import lower

    try:
        low = lower(net, scale=False, min_length=min_length, lift=lift, merge_linear=merge_linear)
    except LipdslError as err:
        # (lower words its errors for solve's options; verify has none: the lowering's are the certificate's)
        given = {"--lift": ("lift", lift) if lift != 1 else None,
                 "--length": ("min_length", min_length) if min_length is not None else None}
        words = err.message + (err.hint or "")
        flag = next((f for f, option in given.items() if option and f in words), None)
        if flag is None:
            raise
        key, value = given[flag]
        raise invalid(f"the certificate's options.{key} = {value} (the {key} comes from the certificate; "
                      f"verify has no {flag} option) cannot be used with this spec: "
                      + err.message.replace(f"{flag} {value}", f"{key} {value}"),
                      hint="lipdsl solve writes no such certificate for this spec: verify the certificate "
                      "against the spec it was written for, or re-create it: lipdsl solve SPEC --certificate "
                      "FILE") from None
    structure(doc, low)
    links, (eliminated, elim_exact) = lmi_chain(doc, low, net, lift)
    pooled = pooled_steps(low)
    rho = number(doc["rho"], "rho")
    if not math.isfinite(rho) or rho < 0:
        raise invalid(f"rho = {rho!r} is not a nonnegative number")
    claimed = number(doc["lipschitz"], "the claimed bound lipschitz")
    if not math.isfinite(claimed):  # (NaN, Infinity: JSON reads them; a claim must be a number to compare)
        raise invalid(f"the claimed bound lipschitz = {claimed!r} is not a finite number")
    gain2 = gain_squared(low)
    systems = {s.name: s for s in low.systems}
    Xs = {name: np.array(v["matrix"], dtype=float) for name, v in doc["X"].items()
          if any(lk.w_out[:2] == ("X", name) for lk in links)}
    checks: list[LmiVerdict] = []
    notes: list[str] = []  # batch-norm scales covered (``batchnorm``)
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
        n = ss.nx + ss.nu + (link.sys.n_out if link.sys.slope is not None else 0)
        name = f"LMI[{link.sys.name}]"
        where = f" (layers {', '.join(link.sys.layers)})"
        X_in = weight(link.w_in)
        if link.w_out[0] == "WtW":
            Dl = systems[link.w_out[1]].ss.D
            X_out, X_out_abs = Dl.T @ Dl, np.abs(Dl).T @ np.abs(Dl)
        elif link.w_out[0] == "I":
            X_out = np.eye(link.sys.n_out)
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
                M, Mabs = float_schur(link, rho, X_out, X_out_abs)
                ok, detail, inconclusive = psd_float(M, Mabs, 2 * link.full_weight.shape[1] + 2 * ss.ny + 16)
                detail = "Schur complement with the full weight W: " + detail
        elif not exact and link.sys.kind == "block" and link.out_D is None:  # a residual block (verify_block)
            Xi = rho * np.eye(link.sys.n_in) if X_in is None else X_in
            M, Mabs = float_block_lmi(link, Xi, X_out, X_out_abs)
            tau = scale_tau(link, X_out_abs, exact=False)
            ok, detail, inconclusive = psd_float(M, Mabs, rounding_terms(link), shift=tau)
            if link.mats is not None and ok:
                detail = "block realization recomputed exactly from the weights; " + detail
            if link.cover is not None and ok:
                detail += f"; {link.cover.note(tau)}"
                notes.append(f"LMI[{link.sys.name}]: {link.cover.note(tau)}")
        elif not exact and (link.mats is not None or link.out_D is not None):
            inconclusive = True  # lower's composed map is rounded: this LMI with the exact one instead
            detail = "composed map recomputed exactly from the weights"
        elif not exact:
            Xi = rho * np.eye(ss.nu) if X_in is None else X_in
            M, Mabs = float_lmi(link, Xi, X_out, X_out_abs)
            K = 2 * (ss.nx + ss.nu + ss.ny) + 16 + (ss.ny if link.w_out[0] == "WtW" else 0)
            ok, detail, inconclusive = psd_float(M, Mabs, K)
        if exact or inconclusive:  # (floating point too close to call: this LMI in exact arithmetic)
            be = be if be is not None else backend(backend_name)
            ok, how, raise_by = exact_link(be, link, X_in, X_out, systems, rho_q, allow_raise=exact,
                                           notes=notes)
            if exact and link.w_in[0] == "rho":
                rho_raise = raise_by
            if exact:
                detail = how
            elif (link.mats is not None and link.sys.kind != "block") or link.out_D is not None:
                detail = f"{detail}: {how}"
            else:
                detail = (f"floating point inconclusive ({detail}); exact: {how}" if ok else
                          f"{how} (floating point: {detail})")
        checks.append(LmiVerdict(name + where, n, ok, detail, link.exact_realization))
        if link.needs_P_psd:
            okp, dp = side_psd(be, link.P, exact, backend_name)
            checks.append(LmiVerdict(f"P[{link.sys.name}] >= 0", ss.nx, okp, dp, True))
    for name in sorted(pooled):
        if name in Xs:
            okx, dx = side_psd(be, Xs[name], exact, backend_name)
            checks.append(LmiVerdict(f"X[{name}] >= 0 (pooled)", Xs[name].shape[0], okx, dx, True))
    if eliminated is not None:
        checks.append(LmiVerdict(f"LMI[{eliminated}]", systems[eliminated].ss.nu, True,
                                 "X := W'W: the LMI is 0 >= 0 exactly", elim_exact))
    notes = file_notes + notes
    bad = next((c for c in checks if not c.ok), None)
    rho_final = rho_q + rho_raise
    L2 = rho_final * gain2
    d, text = _sqrt_up(L2)
    seconds = time.perf_counter() - t0
    mode = "exact" if exact else "float"
    bname = "numpy" if not exact else be.name
    validity = dict(valid_for=low.validity(min_length), min_length=min_length, length_bound=low.length_bound)
    if bad is not None:
        return Verdict(False, mode, net.name, None, None, claimed, tuple(checks),
                       f"{bad.name} fails: {bad.detail}", float(rho_raise), seconds, bname, tuple(notes),
                       **validity)
    if Fraction(claimed) < d * (1 - Fraction(1, 10**9)):
        return Verdict(False, mode, net.name, None, None, claimed, tuple(checks),
                       f"the claimed bound {claimed!r} is below what the certificate proves, "
                       f"sqrt(rho * prod(pool gains^2)) <= {text}", float(rho_raise), seconds, bname,
                       tuple(notes), **validity)
    return Verdict(True, mode, net.name, fraction_up(d), text, claimed, tuple(checks), "",
                   float(rho_raise), seconds, bname, tuple(notes), **validity)



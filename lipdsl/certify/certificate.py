"""Certificate file: api.Result (certified point) -> JSON document; read and validate its schema.

The document (``docs/certificate.md``) holds the certified point of every LMI in its original form and for
the *unscaled* weights, so that a checker can rebuild each LMI from the spec's weights alone. ``lower``
divides each system's map by ``s_i = ||[C D]||_2``; with ``T_i = prod_{j > i} s_j^2`` (over the systems
after system i, the eliminated last dense layer included) the congruence ``diag(s_i I, s_i I, I)`` and the
factor ``T_i`` turn system i's scaled LMI into the unscaled one with

    rho^ = rho prod_j s_j^2,   P^_i = T_{i-1} P_i,   Lambda^_i = T_i Lambda_i,   X^_i = T_i X_i,

(``T_{i-1} = T_i s_i^2``) so that the chain ``X_in = rho^ I``, ..., ``X_out = I`` is kept and the bound is
``L = sqrt(rho^) * prod(pooling gains)``. The weights (every tensor the bound depends on,
``weight_tensors``) are identified by the SHA-256 of their bytes (``weight_digest``), not stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipdsl.certify.reductions import Scaling
from lipdsl.model import lowered

from lipdsl.lang import typed
from lipdsl.lang.source import binary_kind, read_regular
from lipdsl.errors import CertificateError, LipdslError, shorten

SCHEMA = "lipdsl-certificate/2"
#: The schema before every tensor of the map was fingerprinted (``weights``: the top-level conv and dense
#: layers' weights only, ``weight_tensors(..., top_level=True)``); still read, otherwise the same.
SCHEMA_1 = "lipdsl-certificate/1"


def version() -> str:
    """The running lipdsl's version (written into, and required of, every certificate)."""
    from lipdsl import __version__

    return __version__


def weight_digest(array: np.ndarray) -> str:
    """SHA-256 of ``dtype.str``, the shape and the C-order bytes of ``array`` (hex)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(a.dtype.str.encode())
    h.update(repr(tuple(int(n) for n in a.shape)).encode())
    h.update(a.tobytes(order="C"))
    return h.hexdigest()


def weight_tensors(net: typed.Network, *, top_level: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of the spec that the bound depends on, by its name in a certificate: ``<layer>.weight``
    of each conv and dense layer and, of each batch norm, ``<layer>.weight``, ``.running_var`` and ``.eps``
    (its scale ``weight / sqrt(running_var + eps)`` multiplies the map; ``.scale`` itself for a batch norm
    built without them), residual blocks' layers included (``typed.walk``), named ``<block>/<branch>/<layer>``
    as ``lipdsl show`` lists them (``down1/main/conv2.weight``, ``down2/shortcut/bn6.running_var``).

    Biases, and a batch norm's ``bias`` and ``running_mean`` (its ``shift``), are left out: no LMI contains
    them. A bias adds the same constant to a layer's output for every input, which the difference of two
    signals does not see through a linear layer, and an activation keeps its slope bounds at any offset.
    ``top_level``: only the top-level conv and dense weights (what schema ``lipdsl-certificate/1`` held).
    """
    out: dict[str, np.ndarray] = {}
    for block, branch, layer in typed.walk(net.layers):
        name = layer.name if block is None else f"{block.name}/{branch}/{layer.name}"
        if isinstance(layer, (typed.Conv1d, typed.Dense)):
            if block is None or not top_level:
                out[f"{name}.weight"] = np.asarray(layer.weight)
        elif isinstance(layer, typed.BatchNorm) and not top_level:
            if layer.weight is None or layer.running_var is None:  # (its scale defines it)
                out[f"{name}.scale"] = np.asarray(layer.scale)
            else:
                out |= {f"{name}.weight": np.asarray(layer.weight),
                        f"{name}.running_var": np.asarray(layer.running_var),
                        f"{name}.eps": np.asarray(layer.eps, dtype=float)}
    return out


def weight_digests(net: typed.Network, schema: str = SCHEMA) -> dict[str, dict]:
    """``{"<tensor>": {"sha256", "dtype", "shape"}}`` of every tensor of ``weight_tensors`` (of the top-level
    conv and dense weights only for ``schema`` ``lipdsl-certificate/1``)."""
    return {key: {"sha256": weight_digest(a), "dtype": a.dtype.str, "shape": list(a.shape)}
            for key, a in weight_tensors(net, top_level=schema == SCHEMA_1).items()}


def describe_steps(low: lowered.Network) -> list[dict]:
    """The lowered steps as the certificate records them (what identifies how each LMI is built)."""
    out: list[dict] = []
    for st in low.steps:
        if isinstance(st, lowered.System):
            out.append({"type": "system", "name": st.name, "layers": list(st.layers), "kind": st.kind,
                        "nx": st.ss.nx, "nu": st.ss.nu, "ny": st.ss.ny,
                        "slope": None if st.slope is None else list(st.slope),
                        "activation": st.activation, "block_in": st.block_in, "scale": st.scale,
                        "note": st.note})
            if st.internal:  # a residual block: its activations, in the order of its inputs w_j
                out[-1]["internal"] = [{"name": a.name, "n": a.n, "slope": [a.alpha, a.beta]}
                                       for a in st.internal]
        elif isinstance(st, lowered.Pool):
            out.append({"type": "pool", "name": st.name, "op": st.op, "gain": st.gain,
                        "diagonal": st.diagonal, "tied": st.tied, "note": st.note})
        else:
            out.append({"type": "flatten", "name": st.name, "channels": st.channels, "length": st.length})
    return out


def _unscaled_storage(sys: lowered.System, P: np.ndarray) -> np.ndarray:
    """A residual block's ``P`` for its unscaled realization: ``lower`` divides internal signal ``w_j`` by
    ``s_j`` and the shift register fed by ``w_j`` holds the scaled samples (``A``, ``B`` unchanged), so the
    scaled state is ``x' = S x`` with ``S = diag(1 / s_j on the states driven by w_j, 1 elsewhere)`` and
    ``x'^T P x' = x^T (S P S) x``. Other systems: ``P`` itself."""
    if not sys.internal:
        return P
    from lipdsl.certify.recheck import state_groups

    d = np.ones(sys.ss.nx)
    for (states, _), act in zip(state_groups(sys)[1:], sys.internal):  # (the first group is u's)
        d[states] /= act.scale
    return P * d[:, None] * d[None, :]


def solve_options(min_length, lift, merge_linear, frequencies, solver) -> dict:
    """The options a certificate records: those that change the lowering (``min_length``, ``lift``,
    ``merge_linear``: the verifier lowers with them) and, for the record, ``frequencies`` and the solver."""
    return {"min_length": min_length, "lift": int(lift), "merge_linear": bool(merge_linear),
            "frequencies": frequencies, "solver": solver}


def _matrix(a: np.ndarray) -> list:
    """A symmetric matrix as nested lists (``(a + a')/2``: an inverse ``X = Y^-1`` is symmetric only to
    rounding, which the repair's margin covers)."""
    a = np.asarray(a, dtype=float)
    return ((a + a.T) / 2).tolist()


def _require_double_range(scaling: Scaling, rho: float) -> None:
    """Refuse a point whose unscaled values leave the normal range of doubles: ``rho^ = rho T_{-1}``, and
    ``P^_i``, ``Lambda^_i``, ``X^_i`` scale with ``T_{i-1}``, ``T_i`` (module docstring). A net whose layers'
    gains ``s_i`` are tiny or huge (two convs of weight ``1e-300``: ``rho^`` about ``1e-1200``) has a
    certified bound (the solver and ``certify`` work with the scaled point), but its certificate would hold
    zeros, infinities or subnormal doubles (too few bits), and no such file verifies.

    Raises
    ------
    CertificateError
        Naming the first value out of range and its size (a power of ten, from logarithms).
    """
    logs = [2 * math.log2(s) for s in scaling.scales if s > 0]
    tails = [sum(logs[i:]) for i in range(len(logs) + 1)]  # log2 T_{-1}, log2 T_0, ..., log2 T_{n-1} = 0
    named = ([("rho^ = rho * prod s_i^2", math.log2(rho) + tails[0])] if rho > 0 else []) + \
        [(f"the factor T = prod s_j^2 of the systems after system {i}", t) for i, t in enumerate(tails[1:])]
    low, high = math.log2(sys.float_info.min), math.log2(sys.float_info.max)
    bad = next(((what, t) for what, t in named if not low <= t <= high), None)
    if bad is not None:
        raise CertificateError(
            "cannot write a certificate for this bound: a certificate holds the point for the unscaled "
            f"weights (docs/certificate.md), and {bad[0]} is about 1e{bad[1] * math.log10(2):+.0f}, outside "
            "the normal range of doubles (2.2e-308 to 1.8e308): the layers' gains s_i = ||[C D]||_2 are too "
            "small or too large",
            hint="the bound itself is certified; run without --certificate / --exact")


def build(result, *, options: dict[str, Any] | None = None) -> dict:
    """The certificate document of a certified ``api.Result`` (``Result.certificate.verified``).

    Raises
    ------
    CertificateError
        When the result is not certified, or its point cannot be exported.
    """
    cert = result.certificate
    if not cert.verified or cert.lipschitz is None:
        raise CertificateError("no certified point to write: the bound is not certified",
                               hint="a certificate file is written only for a certified bound")
    low: lowered.Network = result.lowered
    systems = list(low.systems)
    links = list(result.sdp.links)
    if not links and systems:  # a closed-form bound of a constant network (zero weights, slope [0, 0])
        raise CertificateError(
            "cannot export a certificate for this closed-form bound yet: " + " ".join(result.sdp.notes),
            hint="the bound needs no SDP; lipdsl solve prints it without --certificate / --exact")
    if links and cert.point is None:  # pragma: no cover - certify always attaches it to a certified point
        raise CertificateError("cannot export this certificate: certify kept no point")
    if len({s.name for s in systems}) != len(systems):
        raise CertificateError("cannot export this certificate yet: two systems of the lowering share a "
                               "name (" + ", ".join(s.name for s in systems) + ")",
                               hint="the bound itself is certified; run without --certificate / --exact")
    scaling = Scaling.of(low)
    tail = scaling.tails()  # T_i = prod_{j > i} s_j^2, by position in the system list
    index = {s.name: i for i, s in enumerate(systems)}
    point = cert.point or {}
    rho = float(point.get("rho", cert.rho or 0.0))
    _require_double_range(scaling, rho)
    rho_hat = rho * tail[0]
    lmis = []
    X_values: dict[str, dict] = {}
    for link in links:
        sys = link.system
        i = index[sys.name]
        entry: dict[str, Any] = {"name": f"LMI[{sys.name}]", "system": sys.name, "layers": list(sys.layers)}
        if link.P is not None:  # T_{i-1} = T_i s_i^2 ... tail[i] = T_{i-1}
            entry["P"] = _matrix(_unscaled_storage(sys, point[link.P.name]) * tail[i])
        else:
            entry["P"] = None
        if sys.internal:  # a residual block: Lambda^_j = T_{i-1} Lambda_j / s_j^2 per internal activation
            entry["internal"] = [
                {"activation": act.name, "lambda": (np.asarray(point[v.name], dtype=float).ravel()
                                                    * (tail[i] / act.scale**2)).tolist()}
                for act, v in zip(sys.internal, link.inner)]
        if link.lam is not None:
            entry["lambda"] = np.asarray(point[link.lam.name] * tail[i + 1], dtype=float).ravel().tolist()
        else:
            entry["lambda"] = None
        w = link.w_out
        if w.kind == "var":
            X = point[w.variable.name] * tail[i + 1]
            X_values[sys.name] = {"diagonal": w.variable.structure == "diagonal", "matrix": _matrix(X)}
            entry["output_weight"] = "X"
        elif i == len(systems) - 1:
            entry["output_weight"] = "identity"
        else:
            entry["output_weight"] = "eliminated"  # X := W'W of the last dense layer
        entry["input_weight"] = "rho" if link.w_in.kind == "rho" else (
            "X" if link.w_in.kind == "var" else "eliminated")
        lmis.append(entry)
    squared_gain = math.prod(st.gain**2 for st in low.steps if isinstance(st, lowered.Pool))
    return {
        "schema": SCHEMA,
        "lipdsl_version": version(),
        "network": low.name,
        "input_shape": [result.network.input_shape.channels, result.network.input_shape.length],
        "options": dict(options or {}),
        "lipschitz": float(cert.lipschitz),
        "rho": rho_hat,
        "pool_gain_squared": squared_gain,
        "weights": weight_digests(result.network),
        "steps": describe_steps(low),
        "lmis": lmis,
        "X": X_values,
        "solver": {"name": result.solution.solver, "claimed_status": result.solution.claimed_status},
    }


def write(result, path: str | Path, *, options: dict[str, Any] | None = None, check: bool = True) -> dict:
    """``build`` the document, check it with ``lipdsl.verify`` (floating point) and write it to ``path``
    (JSON, floats written exactly by ``repr``). A document that does not verify is never written.

    Raises
    ------
    CertificateError
        Not certified, not exportable, or (``check``) the independent check fails.
    """
    doc = build(result, options=options)
    if check:
        from lipdsl.certify.verify import verify

        verdict = verify(result.network, doc)
        if not verdict.ok:
            raise CertificateError(f"the certificate does not verify: {verdict.reason}",
                                   hint="nothing was written; please report this (certified by "
                                   "lipdsl.certify.recheck but not by the independent check)")
    Path(path).write_text(encode(doc))
    return doc


class CertificateFileError(LipdslError):
    """An unreadable certificate file, not JSON, or one of another schema or lipdsl version (exit code 1).
    A readable certificate of this schema with a missing, mistyped or malformed field is a
    ``CertificateError`` (exit code 3)."""


@dataclass(frozen=True)
class Document:
    """A read certificate: its path and the validated JSON object."""

    path: str
    data: dict


#: Largest certificate read or written, in bytes. Its ``P`` matrices dominate it, about 28 bytes per entry
#: as ``write`` lays them out (``specs/resnet1d.lip``'s, blocks of 152, 416 and 544 rows: 14 MB); reading
#: one takes about twice its size in memory.
MAX_CERTIFICATE_BYTES = 256 << 20

#: The hint of a certificate that cannot be used as it is.
REDO = "the certificate was edited or damaged; re-create it: lipdsl solve SPEC --certificate FILE"
#: A JSON integer beyond the range of a double (``10^400``) in words, for the messages that refuse one.
BEYOND_DOUBLE = "an integer beyond the range of a double (about 1.8e308)"

_REQUIRED = {"schema": str, "lipdsl_version": str, "network": str, "options": dict, "lipschitz": float,
             "rho": float, "weights": dict, "steps": list, "lmis": list, "X": dict}
_KIND = {str: "a string", dict: "an object", float: "a number", list: "a list"}


def encode(doc: dict) -> str:
    """The text of a certificate file (JSON, floats written exactly by ``repr``).

    Raises
    ------
    CertificateError
        When the text would exceed ``MAX_CERTIFICATE_BYTES`` (``read`` would refuse it).
    """
    text = json.dumps(doc, indent=1) + "\n"
    if len(text) > MAX_CERTIFICATE_BYTES:
        raise CertificateError(f"the certificate would have {len(text):,} bytes, more than lipdsl reads "
                               f"({MAX_CERTIFICATE_BYTES:,})",
                               hint="the bound itself is certified; run without --certificate / --exact")
    return text


def read(path: str | Path) -> Document:
    """Read and validate a certificate file: at most ``MAX_CERTIFICATE_BYTES``, UTF-8 (a leading byte-order
    mark dropped, as for specs), JSON; then ``validate``.

    Raises
    ------
    CertificateFileError
        Unreadable or too large file, not UTF-8 text, not JSON (or nested too deeply to parse), another
        schema or lipdsl version.
    CertificateError
        A missing or mistyped field (``validate``), or an integer too long to read.
    """
    p = str(path)
    try:
        data = read_regular(path, MAX_CERTIFICATE_BYTES, "certificate")
    except OSError as exc:
        raise CertificateFileError(f"cannot read certificate: {exc.strerror or exc}") from None
    expected = "a certificate is a JSON file written by lipdsl solve --certificate"
    kind = binary_kind(data)
    if kind is not None:
        raise CertificateFileError(f"not a JSON certificate: it is {kind}", hint=expected)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf16 = " (UTF-16?)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise CertificateFileError(f"not a JSON certificate: not UTF-8 text{utf16}: byte "
                                   f"0x{data[exc.start]:02x} at offset {exc.start}", hint=expected) from None
    del data
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CertificateFileError(f"not a JSON certificate: {exc.msg} at line {exc.lineno} column "
                                   f"{exc.colno}") from None
    except RecursionError:  # (a certificate nests 4 levels deep; the JSON parser recurses per level)
        raise CertificateFileError("not a JSON certificate: arrays or objects nested too deeply to read",
                                   hint=expected) from None
    except ValueError:  # (Python converts integers of at most sys.get_int_max_str_digits() digits)
        raise CertificateError(f"it holds {BEYOND_DOUBLE}: one of more than {sys.get_int_max_str_digits()} "
                               "digits", hint=REDO) from None
    return Document(p, validate(doc))


def validate(data: Any) -> dict:
    """Check the schema of a certificate object (``read``); returns it.

    Raises
    ------
    CertificateFileError
        Not a JSON object with a ``schema`` field, another schema or another lipdsl version.
    CertificateError
        A required field missing or of another type (``true`` is not a number).
    """
    if not isinstance(data, dict) or "schema" not in data:
        raise CertificateFileError("not a lipdsl certificate (no 'schema' field)",
                                   hint=f"expected a JSON object with \"schema\": \"{SCHEMA}\"")
    if data["schema"] not in (SCHEMA, SCHEMA_1):
        raise CertificateFileError(f"certificate schema {shorten(data['schema'])!r} is not supported; this "
                                   f"lipdsl reads {SCHEMA!r} and {SCHEMA_1!r}",
                                   hint="re-create the certificate with this lipdsl: lipdsl solve SPEC "
                                   "--certificate FILE")
    if data.get("lipdsl_version") != version():
        raise CertificateFileError(f"certificate written by lipdsl {shorten(data.get('lipdsl_version'))!r}, "
                                   f"this is lipdsl {version()!r}",
                                   hint="verify with the lipdsl version that wrote it, or re-create it with "
                                   "this one (the lowering may differ between versions)")
    for key, kind in _REQUIRED.items():
        value = data.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
            isinstance(value, kind)
        if not ok:
            got = "is missing" if key not in data else f"is {_json_kind(value)}"
            raise CertificateError(f"field {key!r} {got}, expected {_KIND[kind]}", hint=REDO)
    for j, entry in enumerate(data["lmis"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("system"), str):
            raise CertificateError(f"lmis[{j}] has no 'system' name", hint=REDO)
    return data


def _json_kind(value: Any) -> str:
    """A JSON value's type in words: ``true``, ``null``, ``a string``, ``a list``, ..."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return next((words for kind, words in _KIND.items() if isinstance(value, kind)),
                "a number" if isinstance(value, (int, float)) else type(value).__name__)

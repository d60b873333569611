"""Python API: spec (path or text), ONNX file or torch module -> Network (the CLI's commands as methods).

Load a spec and bound it, as ``lipdsl solve`` does:

>>> import lipdsl
>>> net = lipdsl.load("specs/ecg.lip")
>>> net
Network('ecg', input 1x128 -> 5, 10 layers)
>>> bound = net.solve()                        # the paper's layer-wise SDP, CVXOPT, then certified with numpy
>>> bound.verified, round(bound.lipschitz, 4)
(True, 109.123)
>>> bound.to_json()["lipschitz"] == bound.lipschitz
True

A spec as text (weight files, if any, are relative to the working directory):

>>> net = lipdsl.parse('''
... input 2
... dense d: 2 -> 2, weight [[3, 0], [0, 1]]
... ''')
>>> net.solve("naive").lipschitz
3.0

A PyTorch ``nn.Sequential`` converts without files (``lipdsl.from_torch``); see :func:`from_torch`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lipdsl.errors import OutsideError
from lipdsl.lang import typed
from lipdsl.lang.source import Source
from lipdsl.methods import LOWER_SECONDS, LOWER_STARTS, METHODS

__all__ = ["Network", "Bound", "LowerBound", "Comparison", "load", "parse", "verify", "from_torch",
           "from_onnx"]



@dataclass(frozen=True)
class Bound:
    """An upper bound on the ℓ2 Lipschitz constant, by one method; ``lipschitz`` is None unless ``verified``.

    ``details`` holds the method's report (for ``dissipative``: the dict ``lipdsl solve --json`` prints; for
    LipSDP: its status, rho, max_eig and LMI size; otherwise ``status`` and ``note``, e.g. why a comparison's
    method has no bound).
    In frequency form (``solve(frequencies=K)``) the fields of ``lipdsl solve --frequencies K``:
    ``frequencies`` (K), ``hinf_product`` (the product of the layers' H-infinity gains, a cheap certified
    bound), ``above_hinf_product`` and ``warnings`` (a repair above 1 %, a bound above that product); the
    repr and ``str()`` show them.
    """

    network: str
    method: str
    lipschitz: float | None
    verified: bool
    seconds: float
    solver: str | None = None
    claimed_status: str | None = None
    details: dict = field(default_factory=dict, repr=False)
    frequencies: int | None = None
    hinf_product: float | None = None
    above_hinf_product: bool | None = None
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ["network", "method", "lipschitz", "verified", "seconds", "solver", "claimed_status"]
        if self.frequencies is not None or self.warnings:
            fields += ["frequencies", "hinf_product", "above_hinf_product", "warnings"]
        return f"Bound({', '.join(f'{k}={getattr(self, k)!r}' for k in fields)})"

    def __str__(self) -> str:
        from lipdsl.rigorous import format_up

        if self.lipschitz is None:
            head = f"{self.network} ({self.method}): no certified bound ({self.claimed_status})"
        else:
            head = f"{self.network} ({self.method}): L <= {format_up(self.lipschitz)}"
        form = f", {self.frequencies} frequencies" if self.frequencies is not None else ""
        lines = [f"{head} ({self.seconds:.2f} s{form})"] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_json(self) -> dict:
        """A JSON-ready dict of every field."""
        return {
            "network": self.network,
            "method": self.method,
            "lipschitz": self.lipschitz,
            "verified": self.verified,
            "seconds": self.seconds,
            "solver": self.solver,
            "claimed_status": self.claimed_status,
            "frequencies": self.frequencies,
            "hinf_product": self.hinf_product,
            "above_hinf_product": self.above_hinf_product,
            "warnings": list(self.warnings),
            "details": self.details,
        }


@dataclass(frozen=True)
class LowerBound:
    """``value <= ||J(u)||_2 <= L`` at the input ``u = argmax_input`` (``witness == "jacobian"``), or
    ``value <= ||f(u) - f(v)||_2 / ||u - v||_2 <= L`` with ``v = second_input`` (``witness == "difference"``):
    an empirical lower bound (no proof of L), the witness's computed value less its rounding margin
    (``baselines.empirical.lower_bound``); ``search`` names the search that found it."""

    network: str
    value: float
    argmax_input: np.ndarray = field(repr=False)
    seed: int
    starts: int
    evaluations: int
    seconds: float
    length: int | None = None
    search: str = "random"
    witness: str = "jacobian"
    second_input: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """A JSON-ready dict, as ``lipdsl lower --json`` prints it."""
        return {
            "network": self.network,
            "lower_bound": self.value,
            "seed": self.seed,
            "starts": self.starts,
            "evaluations": self.evaluations,
            "length": self.length,
            "seconds": self.seconds,
            "argmax_input": self.argmax_input.tolist(),
            "search": self.search,
            "witness": self.witness,
            "second_input": None if self.second_input is None else self.second_input.tolist(),
        }


@dataclass(frozen=True)
class Comparison:
    """Upper bounds by several methods beside an empirical lower bound: ``lower <= L <= every bound``."""

    network: str
    bounds: tuple[Bound, ...]
    lower: LowerBound | None = None

    def to_json(self) -> dict:
        """A JSON-ready dict with one entry per method and the lower bound."""
        return {
            "network": self.network,
            "bounds": [b.to_json() for b in self.bounds],
            "lower_bound": None if self.lower is None else self.lower.to_json(),
        }

    def __str__(self) -> str:
        from lipdsl.rigorous import format_down, format_up

        rows = [f"{self.network}:"]
        for b in self.bounds:  # (upper bounds rounded up, the lower bound down: as the commands print them)
            value = (format_up(b.lipschitz) if b.lipschitz is not None
                     else b.claimed_status or "not certified")
            rows.append(f"  {b.method:<14} {value:>16}  ({b.seconds:.2f} s)")
            rows.extend(f"    warning: {w}" for w in b.warnings)
        if self.lower is not None:
            low = format_down(self.lower.value)
            rows.append(f"  {'lower bound':<14} {low:>16}  ({self.lower.seconds:.2f} s)")
        return "\n".join(rows)


class Network:
    """A checked network with the CLI's commands as methods: ``solve``, ``compare``, ``lower_bound``,
    ``export_sdpa``, ``forward``. Build one with :func:`load`, :func:`parse`, :func:`from_torch` or
    :func:`from_onnx`.

    Attributes
    ----------
    typed : lipdsl.lang.typed.Network
        The checked network every stage consumes.
    source : Source or None
        The spec it came from (None for an imported model).
    """

    def __init__(self, net: typed.Network, source: Source | None = None, imported: Any = None):
        self.typed = net
        self.source = source
        self._imported = imported

    def __repr__(self) -> str:
        return (
            f"Network({self.typed.name!r}, input {self.typed.input_shape} -> {self.typed.output_shape}, "
            f"{len(self.typed.layers)} layers)"
        )

    @property
    def name(self) -> str:
        return self.typed.name

    @property
    def layers(self) -> tuple[typed.Layer, ...]:
        return self.typed.layers

    def solve(
        self,
        method: str = "dissipative",
        solver: str | None = None,
        *,
        length: int | None = None,
        **options: Any,
    ) -> Bound:
        """Upper bound on the ℓ2 Lipschitz constant, verified with numpy at the solver's point.

        Parameters
        ----------
        method : str
            ``dissipative`` (the paper's layer-wise SDP, as ``lipdsl solve``), ``naive`` (product of the
            layers' norms at this input length), ``naive-hinf`` (product of the filters' H-infinity norms),
            ``lipsdp-neuron`` or ``lipsdp-layer`` (one SDP on the unrolled network): ``compare.METHODS``,
            the names ``lipdsl solve --method`` takes.
        solver : str, optional
            For the SDP methods: a name of the solver registry (``lipdsl.solvers.registry.SOLVERS``, the
            names ``lipdsl solve --solver`` takes) or ``picos-NAME``: ``cvxopt`` is dissipative's default,
            ``hkm`` (lipdsl's HKM interior-point method) LipSDP's.
        length : int, optional
            For ``input c x *`` nets: the (shortest) input length to cover.
        **options
            Passed to :func:`lipdsl.pipeline.solve_network` (``tol``, ``max_iterations``, ``margin``,
            ``lift``,
            ``frequencies``: ``"auto"`` by default, as ``lipdsl solve``; ``None`` or ``"none"`` for the exact
            LMIs, or a number; ``weight_rank``: ``"auto"`` by default, ``"full"`` or a rank R, as
            ``lipdsl solve --weight-rank``; ``refine_rounds``: re-solves on a refined frequency grid, by
            default up to 2 when the repair would exceed 5 %, as ``lipdsl solve --refine-rounds``);
            ``certificate=path`` (dissipative only) writes the certificate file of a certified bound after
            checking it independently (``docs/certificate.md``; nothing is written for an uncertified
            bound; re-check it with :func:`verify`); ``timeout`` (seconds, finite and > 0) bounds every
            method (``TimeLimitError`` when it passes).

        Returns
        -------
        Bound
            ``lipschitz`` is None when the point could not be certified (``verified`` False).

        Examples
        --------
        >>> net = load("specs/ecg.lip")
        >>> net.solve("naive-hinf").lipschitz >= net.solve("naive").lipschitz > 109.123
        True
        """
        from lipdsl.methods import MAX_LIPSDP_ROWS, run_method
        from lipdsl.errors import LimitError, LipdslError, UnsupportedError

        if method not in METHODS:
            import difflib

            close = difflib.get_close_matches(method.replace("_", "-"), METHODS, n=1)
            raise LipdslError(
                f"unknown method {method!r}",
                hint=(f"did you mean {close[0]!r}? " if close else "") + f"use one of {', '.join(METHODS)}",
            )
        cert_path = options.pop("certificate", None)
        if cert_path is not None and method != "dissipative":
            raise LipdslError("certificate= applies to the dissipative method only")
        from lipdsl import limits
        from lipdsl.app.arguments import SOLVE_OPTIONS, integer

        length = integer("length", length, 1, optional=True)
        SOLVE_OPTIONS(options)
        if solver is not None:  # the solver registry: an unknown name is refused with a did-you-mean
            from lipdsl.solvers.registry import lookup

            lookup(solver)

        with limits.blas_threads():  # BLAS on one thread, as the CLI (the LMIs are small)
            r = run_method(
                self.typed,
                method,
                length=length,
                solver=solver or "cvxopt",
                lipsdp_solver=solver or "hkm",
                **options,
            )
        if r.status in ("refused", "failed"):
            raise r.error or UnsupportedError(f"{method}: {r.note}")
        if r.status == "skipped":  # LipSDP above the size guard
            raise LimitError(f"{method}: the unrolled LMI has {r.lmi_rows} rows, more than "
                             f"{options.get('max_rows', MAX_LIPSDP_ROWS)}: likely many minutes",
                             hint="pass force=True to run it anyway")
        if cert_path is not None and r.result.certificate.verified:
            from lipdsl.certify import certificate

            certificate.write(r.result, cert_path, options=certificate.solve_options(
                length if self.typed.any_length else None, options.get("lift", 1),
                options.get("merge_linear", True), r.result.frequencies, solver or "cvxopt"))
        return self._bound(r, solver)

    def _bound(self, r, solver: str | None) -> Bound:
        """One method's ``lipdsl.methods.MethodResult`` as a :class:`Bound` (``solver``: the one asked for,
        None for each method's default). A result without a bound (not certified, or ``failed``/``skipped``
        in a comparison) has ``lipschitz`` None and its status in ``claimed_status``."""
        method = r.method
        if method == "dissipative" and r.result is not None:
            from lipdsl.app.report import to_json

            result = r.result
            cert = result.certificate
            freq = r.frequency_report()  # the same fields and warnings as `lipdsl solve --json`
            return Bound(
                self.name,
                method,
                cert.lipschitz if cert.verified else None,
                bool(cert.verified),
                r.seconds,
                result.solution.solver,
                result.solution.claimed_status,
                to_json(result),
                freq["frequencies"],
                freq["hinf_product"],
                freq["above_hinf_product"],
                tuple(freq["warnings"]),
            )
        if method.startswith("lipsdp") and r.result is not None:
            res = r.result
            return Bound(
                self.name,
                method,
                float(res.bound),
                res.status in ("verified", "exact"),
                r.seconds,
                solver or "hkm",
                res.claimed_status,
                {"status": res.status, "rho": res.rho, "max_eig": res.max_eig, "lmi_size": res.lmi_size},
            )
        proven = r.status == "exact norm"  # an iterative norm estimate is not a proof
        return Bound(
            self.name,
            method,
            r.bound if proven else None,
            proven,
            r.seconds,
            None,
            "exact" if proven else r.status,
            {"note": r.note, "status": r.status},
        )

    def lower_bound(
        self, *, starts: int = 32, seed: int = 0, time_budget: float = 20.0, length: int | None = None
    ) -> LowerBound:
        """Empirical lower bound ``max ||J(u)||_2`` over searched inputs, as ``lipdsl lower``.

        Examples
        --------
        >>> net = load("specs/ecg.lip")
        >>> low = net.lower_bound(starts=2, time_budget=2)
        >>> 0 < low.value <= 109.123
        True
        """
        from lipdsl.app.arguments import integer, real
        from lipdsl.baselines.empirical import lower_bound

        starts = integer("starts", starts, 1)
        seed = integer("seed", seed, 0)
        time_budget = real("time_budget", time_budget, minimum=0.0, strict=True)
        length = integer("length", length, 1, optional=True)
        r = lower_bound(self.typed, starts=starts, seed=seed, time_budget=time_budget, length=length)
        return self._lower(r, seed)

    def _lower(self, r, seed: int) -> LowerBound:
        """The search's ``lipdsl.baselines.empirical.LowerBound`` as the API's :class:`LowerBound`."""
        return LowerBound(
            self.name, float(r.value), r.argmax_input, seed, r.starts, r.evaluations, r.seconds, r.length,
            r.search, r.witness, r.second_input
        )

    def compare(
        self,
        solver: str = "cvxopt",
        *,
        methods: tuple[str, ...] = METHODS,
        length: int | None = None,
        lower: bool = True,
        lower_starts: int = LOWER_STARTS,
        time_budget: float = LOWER_SECONDS,
        seed: int = 0,
        frequencies: int | str | None = "auto",
        lift: int = 1,
        force: bool = False,
        timeout: float | None = None,
    ) -> Comparison:
        """Bounds by several methods and an empirical lower bound, as ``lipdsl compare`` (the same runner,
        ``lipdsl.methods.compare``, and the same defaults: every method of ``lipdsl.methods.METHODS``, 16
        starts and 10 s for the lower bound; ``lower=False`` skips it).

        A method that does not apply to this network (LipSDP with max pooling, say) is left out. One that
        ran out of ``timeout`` (seconds for the whole comparison), was stopped by a size or memory guard
        (LipSDP on a long unrolled net; ``force=True`` runs it past the row guard) or was not certified is
        kept, with ``lipschitz`` None and why in ``claimed_status`` and ``details``. ``frequencies``: the
        dissipative bound's form (as ``solve(frequencies=...)``: ``"auto"``, None or K; a frequency-form
        ``Bound`` carries the warnings, and ``str()`` prints them); ``solver``: the dissipative SDP's.

        Examples
        --------
        >>> cmp = load("specs/ecg.lip").compare(methods=("naive", "naive-hinf"), time_budget=1)
        >>> [b.method for b in cmp.bounds]
        ['naive', 'naive-hinf']
        >>> cmp.lower.value <= cmp.bounds[0].lipschitz <= cmp.bounds[1].lipschitz
        True
        >>> print(cmp)                                                    # doctest: +NORMALIZE_WHITESPACE
        ecg:
          naive ... s)
          naive-hinf ... s)
          lower bound ... s)
        """
        from lipdsl.app.arguments import SOLVE_OPTIONS, choice, integer, real
        from lipdsl.methods import compare
        from lipdsl.solvers.registry import lookup

        methods = tuple(methods)
        for method in methods:
            choice("method", method, METHODS)
        length = integer("length", length, 1, optional=True)
        lower_starts = integer("lower_starts", lower_starts, 1)
        seed = integer("seed", seed, 0)
        time_budget = real("time_budget", time_budget, minimum=0.0, strict=True)
        timeout = real("timeout", timeout, minimum=0.0, strict=True, optional=True)
        checked = SOLVE_OPTIONS({"frequencies": frequencies, "lift": lift})
        frequencies, lift = checked["frequencies"], checked["lift"]
        lookup(solver)
        c = compare(self.typed, methods=methods, length=length, lower_starts=lower_starts if lower else 0,
                    time_budget=time_budget, seed=seed, solver=solver, lift=lift, force=force,
                    timeout=timeout, frequencies=frequencies)
        bounds = tuple(self._bound(r, solver if r.method == "dissipative" else None)
                       for r in c.results if r.status != "refused")
        low = None if c.lower_result is None else self._lower(c.lower_result, seed)
        return Comparison(self.name, bounds, low)

    def export_sdpa(self, path: str | os.PathLike, *, length: int | None = None, lift: int = 1):
        """Write the SDP of ``solve(lift=lift)`` in SDPA sparse format (.dat-s), as ``lipdsl export``; the
        same size limits as ``solve`` apply (``LimitError`` before anything is allocated).

        Returns
        -------
        lipdsl.solvers.sdpa.SdpaSize
            Its size: ``m`` variables, ``blocks``, ``nonzeros``, ``bytes``.

        Examples
        --------
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     size = load("specs/ecg.lip").export_sdpa(os.path.join(tmp, "ecg.dat-s"))
        >>> size.m > 0
        True
        """
        from lipdsl.pipeline import lower_within_limits
        from lipdsl.app.arguments import integer
        from lipdsl.lang.check import require_length
        from lipdsl.sdp.build import build_sdp
        from lipdsl.solvers.sdpa import write_sdpa

        length = integer("length", length, 1, optional=True)
        lift = integer("lift", lift, 1)
        require_length(self.typed, length)
        sdp = build_sdp(lower_within_limits(self.typed, min_length=length, lift=lift))
        name = self.typed.source_path or self.name
        return write_sdpa(sdp, path, spec_name=name)

    def forward(self, u: np.ndarray) -> np.ndarray:
        """``f(u)`` for one input of shape ``(channels, length)`` (or ``(features,)``), with numpy."""
        from lipdsl.model.forward import forward

        return forward(self.typed, np.asarray(u, dtype=np.float64))

    def save(self, spec_path: str | os.PathLike, weights_path: str | os.PathLike | None = None):
        """Write an imported network (``from_torch``, ``from_onnx``) as a ``.lip`` spec plus an ``.npz``.

        Returns
        -------
        (Path, Path)
            The spec and the weights file.
        """
        from lipdsl.errors import LipdslError

        if self._imported is None:
            raise LipdslError(
                f"network {self.name!r} was read from a spec; it is saved already", hint="copy the spec file"
            )
        return self._imported.write(spec_path, weights_path)


#: How the API allows weight files outside the spec's directory (the CLI's ``--allow-outside``).
ALLOW_OUTSIDE = "allow_outside=True"


@contextlib.contextmanager
def _allow_outside_hint() -> Iterator[None]:
    """A weight file refused as outside the spec's directory: the hint names the API's parameter
    (``allow_outside=True``), not the CLI's option."""
    try:
        yield
    except OutsideError as err:
        err.allow(ALLOW_OUTSIDE)
        raise


def load(path: str | os.PathLike, *, allow_outside: bool = False) -> Network:
    """Read, parse and check the spec at ``path`` -> Network (``lipdsl check``).

    Raises
    ------
    LipdslError
        With ``err.source`` set, so ``err.render(err.source)`` gives ``path:line:col: error: ...``.

    Examples
    --------
    >>> load("specs/ecg.lip").typed.input_shape
    Shape(channels=1, length=128, flat=False)
    """
    from lipdsl.lang.load import load_network

    with _allow_outside_hint():
        source, net = load_network(path, allow_outside=allow_outside)
    return Network(net, source)


def parse(text: str, *, path: str = "<string>", allow_outside: bool = False) -> Network:
    """Parse and check spec ``text`` -> Network; weight files are relative to the working directory.

    Examples
    --------
    >>> parse("input 3\\nrelu\\n")
    Network('network', input 3 -> 3, 1 layers)
    """
    from lipdsl.lang.load import check_source

    source = Source(path, text)
    with _allow_outside_hint():
        return Network(check_source(source, allow_outside=allow_outside), source)


def verify(spec: "str | os.PathLike | Network", certificate: "str | os.PathLike | dict", *,
           exact: bool = False, backend: str = "auto", allow_outside: bool = False):
    """Check a certificate file against a spec, independently of the solver -> a
    ``lipdsl.certify.verify.Verdict``.

    ``verdict.ok`` is True when every LMI holds (rigorous floating point, or ``exact=True``: rational
    arithmetic); ``verdict.lipschitz`` is then a proved upper bound (``verdict.bound_text`` rounded up).
    Raises ``LipdslError`` for an unreadable spec or certificate, another schema or lipdsl version, or a
    certificate written for other weights or another network (``docs/certificate.md``).
    """
    from lipdsl.certify.verify import verify as check

    target = spec.typed if isinstance(spec, Network) else spec
    with _allow_outside_hint():
        return check(target, certificate, exact=exact, backend_name=backend, allow_outside=allow_outside)


def from_torch(module: Any, input_shape: Any, *, name: str | None = None) -> Network:
    """Convert an in-memory ``torch.nn.Sequential`` -> Network, without writing files.

    Parameters
    ----------
    module : torch.nn.Module
        ``nn.Sequential`` of Conv1d, ReLU, Tanh, Sigmoid, LeakyReLU, ELU, AvgPool1d, MaxPool1d,
        AdaptiveAvgPool1d(1), Flatten, Linear (and ZeroPad1d before a Conv1d, Identity, Dropout).
    input_shape : tuple
        ``(channels, length)``, ``(channels, None)`` for any length, or ``(features,)``; no batch axis.

    Raises
    ------
    UnsupportedError
        For any other module, named by its index and type.

    Examples
    --------
    >>> import torch                                                   # doctest: +SKIP
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                             torch.nn.Linear(4 * 30, 2))      # doctest: +SKIP
    >>> net = from_torch(model, (1, 32))                               # doctest: +SKIP
    >>> net.solve().verified                                           # doctest: +SKIP
    True
    """
    from lipdsl.importers.pytorch import import_torch

    imported = import_torch(module, input_shape, name=name)
    return Network(imported.to_network(), None, imported)


def from_onnx(path: str | os.PathLike, *, length: int | None = None, name: str | None = None) -> Network:
    """Read a sequential 1D CNN from an ONNX file -> Network, without writing files (``lipdsl import``).

    ``length`` fixes a symbolic time axis. Needs the package ``onnx`` (``pip install 'lipdsl[onnx]'``).
    """
    from lipdsl.importers.importer import import_onnx

    imported = import_onnx(Path(path), name=name, length=length)
    return Network(imported.to_network(), None, imported)

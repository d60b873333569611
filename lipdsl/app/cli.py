"""Command line: argv -> exit code (0 certified/ok, 1 input error, 2 usage, 3 failed or not certified)."""

from __future__ import annotations

import sys

import click

from lipdsl.app.progress import run_sweep, solve_progress
from lipdsl.app.render import (
    console,
    lower_bound_json,
    lower_bound_text,
    print_baseline,
    print_comparison,
    print_layers,
    print_lowering,
    print_state_space,
    show_json,
    summary,
)
from lipdsl.errors import LipdslError
from lipdsl.lang.source import Source
from lipdsl.methods import METHODS as _METHODS  # the one method registry (no numpy at start-up)
from lipdsl.solvers import registry  # the one solver registry (imports no solver)


def fail(err: LipdslError, source: Source | None) -> None:
    """Print a rendered LipdslError to stderr and exit with its code (the one place errors are shown)."""
    click.echo(err.render(source), err=True)
    sys.exit(err.exit_code)


def read_source(path: str) -> Source:
    """Read a spec, turning I/O problems into a clean usage-level error."""
    try:
        return Source.read(path)
    except OSError as exc:
        click.echo(f"{path}: error: cannot read spec: {exc.strerror or exc}", err=True)
        sys.exit(1)


class Seconds(click.ParamType):
    """A time budget in seconds: a finite number > 0 (>= 0 with ``allow_zero``); nan, inf and negative
    values are usage errors (exit 2), never "no limit"."""

    name = "seconds"

    def __init__(self, allow_zero: bool = False):
        self.allow_zero = allow_zero

    def convert(self, value, param, ctx):
        from lipdsl.limits import check_seconds

        if isinstance(value, float):
            text = value
        else:
            text = str(value).strip()
        try:
            return check_seconds(text, param.opts[0] if param is not None else "seconds",
                                 allow_zero=self.allow_zero)
        except LipdslError as err:
            self.fail(err.message, param, ctx)


class Frequencies(click.ParamType):
    """``--frequencies``: ``auto`` (the frequency form when the exact LMIs are large), ``none`` (the exact
    LMIs) or a number of frequencies >= 3."""

    name = "auto|none|K"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            text = value
        else:
            text = str(value).strip().lower()
        if text in ("auto", "none", None):
            return text
        try:
            k = int(text)
        except ValueError:
            self.fail(f"{value!r} is not 'auto', 'none' or a whole number of frequencies", param, ctx)
        if k < 3:
            self.fail(f"{k} is too few frequencies (at least 3: 0, pi/2, pi)", param, ctx)
        return k


class WeightRank(click.ParamType):
    """``--weight-rank``: ``auto`` (subspace weights when full ones would be large), ``full`` or a rank."""

    name = "auto|full|R"

    def convert(self, value, param, ctx):
        text = value if value is None or isinstance(value, int) else str(value).strip().lower()
        if text in ("auto", "full", None):
            return text
        try:
            r = int(text)
        except ValueError:
            self.fail(f"{value!r} is not 'auto', 'full' or a whole number (the subspace's rank)", param, ctx)
        if r < 1:
            self.fail(f"{r} is not a rank (at least 1; 'full' for full weights)", param, ctx)
        return r


def within(deadline, what: str, work, source: Source | None = None, hint: str | None = None):
    """``work()`` for a command: BLAS pinned to one thread (``limits.blas_threads``, restored after), the
    command's ``deadline`` active for every ``checkpoint``, and the whole of it bounded by that deadline
    (``limits.run_within``: exit 3 once it passes, even inside one long C call)."""
    from lipdsl import limits

    try:
        with limits.blas_threads(), deadline.active():
            return limits.run_within(work, deadline, what, grace=1.0, hint=hint)
    except LipdslError as err:
        fail(err, source)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipdsl")
def cli() -> None:
    """lipdsl: certified Lipschitz bounds for 1D convolutional neural networks."""


# -- front end: check / show (issue 2) -------------------------------------------------------------------


def load_or_fail(path: str, allow_outside: bool = False):
    """``lipdsl.lang.load.load_network`` for commands: (Source, typed.Network), or print the error and
    exit 1."""
    from lipdsl.lang.load import load_network

    try:
        return load_network(path, allow_outside=allow_outside)
    except LipdslError as err:
        fail(err, err.source)


# Options that solve and export share: both build the same SDP.
_MIN_LENGTH = click.option(
    "--length",
    "min_length",
    type=click.IntRange(min=1),
    default=None,
    help="For 'input c x *' nets with global average pooling: the shortest input length to cover.",
)
_LIFT = click.option(
    "--lift",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Realize conv layers on blocks of L samples: tighter (towards LipSDP-Neuron), larger LMIs.",
)
_ALLOW_OUTSIDE = click.option(
    "--allow-outside",
    is_flag=True,
    help="Allow weight files outside the spec's directory (absolute paths, '..').",
)


@cli.command("check")
@click.argument("spec")
@_ALLOW_OUTSIDE
def check_command(spec: str, allow_outside: bool) -> None:
    """Parse and check SPEC: print OK and a summary, or the errors (exit 1)."""
    _, net = load_or_fail(spec, allow_outside)
    click.echo(f"OK {summary(net)}")


@cli.command("show")
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--state-space",
    "state_space",
    is_flag=True,
    help="Print each conv layer's causal realization (A, B, C, D), symbolically.",
)
@click.option("--latex", is_flag=True, help="With --state-space: LaTeX instead of pretty-printed matrices.")
@click.option(
    "--lowering", is_flag=True, help="Show how each layer enters the SDP (which construct, and why)."
)
@click.option(
    "--length",
    "min_length",
    type=click.IntRange(min=1),
    default=None,
    help="With --lowering, for 'input c x *' nets with global average pooling: the shortest length.",
)
@click.option(
    "--lift", type=click.IntRange(min=1), default=1, help="With --lowering: as `lipdsl solve --lift`."
)
@_ALLOW_OUTSIDE
def show_command(
    spec: str,
    as_json: bool,
    state_space: bool,
    latex: bool,
    lowering: bool,
    min_length: int | None,
    lift: int,
    allow_outside: bool,
) -> None:
    """Show the layers of SPEC as lipdsl understood them: shapes, parameters, slopes."""
    if latex and not state_space:
        raise click.UsageError("--latex applies to --state-space only")
    if (min_length is not None or lift != 1) and not lowering:
        raise click.UsageError("--length and --lift apply to --lowering only")
    source, net = load_or_fail(spec, allow_outside)
    if lowering:
        print_lowering(net, *_lower_or_fail(net, source, min_length, lift), lift=lift)
        return
    if state_space:
        _check_state_space_size(net, source)
        print_state_space(net, latex)
        return
    if as_json:
        import json

        click.echo(json.dumps(show_json(net)))
        return
    print_layers(net)


def _lower_or_fail(net, source, min_length, lift):
    """``show --lowering``: the lowered network and the problem's size, within the memory model (else
    the error and its exit code)."""
    from lipdsl import limits
    from lipdsl.model.lower import lower
    from lipdsl.pipeline import problem_size

    try:
        size = problem_size(net, lift)
        limits.require_memory(
            limits.BASE_BYTES + limits.lowering_bytes(size.systems),
            f"lowering (state spaces with up to {max((s[0] for s in size.systems), default=0)} states)",
            hint="the realization of a conv layer has dilation*(kernel-1)*c_in states (times --lift): "
            "a smaller --lift, or smaller kernels",
            span=net.span,
        )
        low = lower(net, min_length=min_length, lift=lift)
    except LipdslError as err:
        fail(err, source)
    return low, size


def _check_state_space_size(net, source) -> None:
    """Exit 3 (``LimitError``) before printing a realization of more than ``limits.DISPLAY_MAX_BLOCKS``
    state blocks: sympy would build and print a matrix of blocks^2 entries."""
    from lipdsl.errors import LimitError
    from lipdsl.limits import DISPLAY_MAX_BLOCKS

    for layer in net.layers:
        if layer.kind == "conv1d" and layer.dilation * (layer.kernel - 1) > DISPLAY_MAX_BLOCKS:
            fail(LimitError(
                f"conv1d {layer.name!r} has {layer.dilation * (layer.kernel - 1)} state blocks "
                f"(dilation {layer.dilation} x (kernel {layer.kernel} - 1)); show --state-space prints at "
                f"most {DISPLAY_MAX_BLOCKS}",
                span=layer.span,
                hint="its realization is a shift register: A shifts the past inputs by one block, "
                "B = [0; ...; I], C = [W_{k-1} ... W_1] (with zero blocks between dilated taps), D = W_0; "
                "`lipdsl show --lowering` gives the sizes",
            ), source)


# -- solve (issue 3) --------------------------------------------------------------------------------------


#: Solver names ``--solver`` accepts: the solver registry's (anything else is a usage error, exit 2; a PICOS
#: back-end that is not installed exits 3).
SOLVERS = registry.names()


def _solver_name(ctx, param, value: str) -> str:
    if value not in SOLVERS:
        message, hint = registry.unknown_message(value)
        raise click.BadParameter(f"{message}; {hint.removesuffix(' (or picos-NAME)')}")
    return value


def _solver_help(lead: str) -> str:
    """``--solver``'s help from the registry: every name and its one-line summary."""
    return lead + " " + "; ".join(f"{b.name}: {b.summary}" for b in registry.SOLVERS.values()) + "."


@cli.command("solve")
@click.argument("spec")
@click.option(
    "--solver",
    default="cvxopt",
    show_default=True,
    callback=_solver_name,
    help=_solver_help("The SDP solver (PICOS ones must be installed)."),
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
@click.option("--tol", default=1e-7, show_default=True, type=float, help="Solver's relative tolerance.")
@click.option("--max-iterations", default=100, show_default=True, type=int)
@click.option("--verbose", is_flag=True, help="Show the solver's iterations (and the per-LMI table).")
@click.option("-v", "--details", is_flag=True, help="Also print the per-LMI table of the certificate.")
@_MIN_LENGTH
@_LIFT
@click.option(
    "--max-lmi",
    type=click.IntRange(min=1),
    default=4000,
    show_default=True,
    help="Refuse (exit 3, before allocating) SDPs whose largest LMI has more rows than this.",
)
@click.option(
    "--timeout",
    type=Seconds(),
    default=None,
    help="Bound the whole command (lowering, solve, storage recovery; also --method lipsdp-*) to SECONDS "
    "(exit 3 when they pass).",
)
@click.option(
    "--frequencies",
    type=Frequencies(),
    default="auto",
    show_default=True,
    help="Solve conv layers' LMIs in the frequency domain on K frequencies and recover their storage "
    "matrices afterwards (KYP lemma + Riccati): for wide conv layers; certified the same way, slightly "
    "looser. auto: K = 17 when the exact LMIs would have more than 4000 variables; none: the exact LMIs.",
)
@click.option(
    "--weight-rank",
    type=WeightRank(),
    default="auto",
    show_default=True,
    help="The weights X between layers as diag + a rank-R part on the directions the next layer amplifies "
    "most (far fewer variables for wide layers; certified the same way, slightly looser). auto: R = 16 "
    "when full X would give more than 4000 variables; full: full X.",
)
@click.option(
    "--accept-unconverged",
    is_flag=True,
    help="Report a bound certified from a solver that did not converge (sound, possibly loose).",
)
@click.option(
    "--method",
    type=click.Choice(_METHODS),
    default="dissipative",
    show_default=True,
    help="dissipative (the paper's LMIs, certified), or a baseline: naive (unrolled norm product), "
    "naive-hinf (length-independent), lipsdp-neuron / lipsdp-layer (LipSDP on the unrolled net).",
)
@click.option(
    "--force", is_flag=True, help="With --method lipsdp-*: run even a LipSDP LMI above the size guard."
)
@click.option(
    "--certificate",
    "certificate_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the certified point to this JSON file (docs/certificate.md); check it with lipdsl verify.",
)
@click.option(
    "--exact",
    is_flag=True,
    help="Also prove the bound in exact rational arithmetic (lipdsl verify --exact on the certificate): "
    "reports 'proved'; exit 3 if the proof fails.",
)
@_ALLOW_OUTSIDE
def solve_command(
    spec: str,
    solver: str,
    as_json: bool,
    tol: float,
    max_iterations: int,
    verbose: bool,
    details: bool,
    min_length: int | None,
    lift: int,
    max_lmi: int,
    timeout: float | None,
    frequencies: int | str | None,
    weight_rank: int | str | None,
    accept_unconverged: bool,
    method: str,
    force: bool,
    certificate_path: str | None,
    exact: bool,
    allow_outside: bool,
) -> None:
    """Certified Lipschitz upper bound of SPEC (exit 0 certified, 3 solver failed or not certified)."""
    import time

    if method != "dissipative" and (certificate_path is not None or exact):
        raise click.UsageError("--certificate and --exact apply to --method dissipative only")
    from lipdsl.limits import Deadline

    deadline = Deadline(timeout)  # the whole command's
    t0 = time.perf_counter()
    source, net = load_or_fail(spec, allow_outside)
    t1 = time.perf_counter()
    if min_length is not None and net.input_shape.length is not None and not as_json:
        click.echo(f"note: --length {min_length} is ignored: {net.name} takes inputs of fixed shape "
                   f"{net.input_shape}", err=True)
    if method != "dissipative":
        within(deadline, f"--method {method}",
               lambda: _solve_baseline(net, method, min_length, force, as_json), source)
        return
    within(deadline, "lipdsl solve",
           lambda: _solve_dissipative(net, source, t1 - t0, deadline, solver=solver, tol=tol,
                                      max_iterations=max_iterations, verbose=verbose, min_length=min_length,
                                      lift=lift, max_lmi=max_lmi, accept_unconverged=accept_unconverged,
                                      frequencies=frequencies, weight_rank=weight_rank, as_json=as_json,
                                      spec=spec,
                                      certificate_path=certificate_path, exact=exact,
                                      details=details), source)


def _solve_dissipative(net, source, load_seconds: float, deadline, *, as_json: bool, spec: str,
                       certificate_path: str | None, exact: bool, details: bool, **options) -> None:
    """``lipdsl solve`` with the dissipative method: solve, print (with the certificate file and the exact
    proof when asked), exit 3 unless certified."""
    from lipdsl.app.report import print_text, to_json
    from lipdsl.pipeline import solve_network

    try:
        with solve_progress(options["solver"], quiet=as_json) as progress:
            result = solve_network(
                net,
                seconds={"parse+check": load_seconds},
                deadline=deadline,
                progress=progress,
                **options,
            )
    except LipdslError as err:
        fail(err, source)
    proof = None
    if result.certificate.verified and (certificate_path is not None or exact):
        proof = _certify_file(result, net, certificate_path, exact, options["min_length"], options["lift"],
                              result.frequencies, options["solver"])
    if as_json:
        import json

        out = to_json(result)
        if proof is not None:
            out["proof"] = proof.to_json()
        if certificate_path is not None and result.certificate.verified:
            out["certificate_file"] = certificate_path
        click.echo(json.dumps(out))
    else:

        print_text(result, console(), proof=proof, verbose=bool(details or options["verbose"]))
        if certificate_path is not None and result.certificate.verified:
            click.echo(f"  certificate written to {certificate_path} (check it: lipdsl verify {spec} "
                       f"{certificate_path} [--exact])")
    if not result.certificate.verified:
        sys.exit(3)


def _certify_file(result, net, path, exact, min_length, lift, frequencies, solver):
    """Write the certificate (to ``path`` if given) and, with ``exact``, prove it: the Verdict, or exit 3
    with the failing check (never a certificate file that does not verify)."""
    from lipdsl.certify import certificate
    from lipdsl.certify.verify import verify

    options = certificate.solve_options(min_length, lift, True, frequencies, solver)
    try:
        doc = certificate.build(result, options=options)
        verdict = verify(net, doc, exact=exact)
    except LipdslError as err:
        fail(err, None)
    if not verdict.ok:
        click.echo(f"error: the certificate does not verify{' exactly' if exact else ''}: {verdict.reason}",
                   err=True)
        click.echo("  hint: please report this: the solver's point was certified but the independent check "
                   "failed (no certificate written)", err=True)
        sys.exit(3)
    if path is not None:
        import json
        from pathlib import Path

        Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    return verdict if exact else None


# -- verify (issue 18) ------------------------------------------------------------------------------------


@cli.command("verify")
@click.argument("spec")
@click.argument("certificate")
@click.option("--exact", is_flag=True, help="Prove every LMI in exact rational arithmetic (python-flint).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "flint", "sympy"]),
    default="auto",
    show_default=True,
    help="Exact arithmetic: python-flint (auto, if installed) or sympy.",
)
@_ALLOW_OUTSIDE
def verify_command(spec: str, certificate: str, exact: bool, as_json: bool, backend: str,
                   allow_outside: bool) -> None:
    """Check CERTIFICATE (from lipdsl solve --certificate) against SPEC's weights, without the solver
    (exit 0 verified, 1 unreadable input, 3 a check failed)."""
    source, net = load_or_fail(spec, allow_outside)
    from lipdsl.app.report import print_verdict
    from lipdsl.certify.verify import verify

    try:
        verdict = verify(net, certificate, exact=exact, backend_name=backend)
    except LipdslError as err:
        fail(err, None)
    if as_json:
        import json

        click.echo(json.dumps(verdict.to_json()))
    else:
        from rich.console import Console

        print_verdict(verdict, Console(), Console(stderr=True))
    if not verdict.ok:
        sys.exit(3)


# -- export (issue 5) -------------------------------------------------------------------------------------


@cli.command("export")
@click.argument("spec")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The .dat-s file to write (SDPA sparse format).",
)
@_MIN_LENGTH
@_LIFT
@_ALLOW_OUTSIDE
def export_command(spec: str, output: str, min_length: int | None, lift: int, allow_outside: bool) -> None:
    """Write the SDP that `solve` builds for SPEC in SDPA sparse format (.dat-s), for any SDP solver."""
    source, net = load_or_fail(spec, allow_outside)
    from lipdsl.pipeline import lower_within_limits
    from lipdsl.sdp.build import build_sdp
    from lipdsl.solvers.sdpa import write_sdpa

    try:
        sdp = build_sdp(lower_within_limits(net, min_length=min_length, lift=lift))
    except LipdslError as err:
        fail(err, source)
    try:
        size = write_sdpa(sdp, output, spec_name=spec)
    except OSError as exc:
        click.echo(f"{output}: error: cannot write: {exc.strerror or exc}", err=True)
        sys.exit(1)
    blocks = " ".join(str(b) for b in size.blocks)
    click.echo(
        f"wrote {output}: SDPA sparse, m = {size.m} variables, {len(size.blocks)} blocks ({blocks}), "
        f"{size.nonzeros} nonzeros, {size.bytes} bytes"
    )
    click.echo(f"bound = sqrt(objective) * {float(sdp.factor)!r}")


# -- lower (issue 4) --------------------------------------------------------------------------------------


@cli.command("lower")
@click.argument("spec")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random starts.")
@click.option(
    "--starts",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Random starts to ascend from.",
)
@click.option(
    "--time-budget",
    default=20.0,
    show_default=True,
    type=Seconds(allow_zero=True),
    help="Seconds after which no new start is begun; the command ends within a few seconds more.",
)
@click.option(
    "--length",
    type=click.IntRange(min=1),
    default=None,
    help="Input length for 'input c x *' nets (default 64).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
@_ALLOW_OUTSIDE
def lower_command(
    spec: str,
    seed: int,
    starts: int,
    time_budget: float,
    length: int | None,
    as_json: bool,
    allow_outside: bool,
) -> None:
    """Empirical lower bound of SPEC's Lipschitz constant: the largest ||J(u)||_2 or
    ||f(u) - f(v)|| / ||u - v|| found (a pair ascent over inputs u, v)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lipdsl.baselines.empirical import lower_bound
    from lipdsl.limits import SEARCH_GRACE, Deadline

    deadline = Deadline(time_budget + SEARCH_GRACE)
    source, net = load_or_fail(spec, allow_outside)
    err_console = console(stderr=True)

    def search():
        with Progress(
            TextColumn("lower bound"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]:.6g}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=as_json or not err_console.is_terminal,
        ) as bar:
            task = bar.add_task("starts", total=starts, best=0.0)
            return lower_bound(
                net,
                starts=starts,
                seed=seed,
                time_budget=time_budget,
                length=length,
                progress=lambda done, total, best: bar.update(task, completed=done, best=best),
            )

    result = within(deadline, "the lower bound's search", search, source,
                    hint="raise --time-budget, or give a shorter --length")
    if as_json:
        import json

        click.echo(json.dumps(lower_bound_json(spec, net, result, seed)))
        return
    click.echo(lower_bound_text(net, result, seed))


# -- compare and solve --method (issue 4) ----------------------------------------------------------------


def _solve_baseline(net, method: str, length: int | None, force: bool, as_json: bool) -> None:
    """``lipdsl solve --method <baseline>``: the bound with how it is known; exit 3 when refused or failed."""
    import json

    from lipdsl.methods import run_method

    r = run_method(net, method, length=length, force=force)
    if as_json:
        from lipdsl.app.report import baseline_to_json

        click.echo(json.dumps(baseline_to_json(net, method, r)))
    else:
        print_baseline(net, method, r)
    if not r.ok:
        sys.exit(3)


@cli.command("compare")
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a bar chart of bounds and times (PNG; needs the 'plot' extra: matplotlib).",
)
@click.option(
    "--methods", default=",".join(_METHODS), show_default=True, help="Comma-separated methods to run."
)
@click.option(
    "--length",
    type=click.IntRange(min=1),
    default=None,
    help="Input length for 'input c x *' nets (the N-dependent baselines and the lower bound; default 64).",
)
@click.option(
    "--lower-starts",
    default=16,
    show_default=True,
    type=click.IntRange(min=0),
    help="Random starts of the empirical lower bound (0: skip it).",
)
@click.option(
    "--time-budget",
    default=10.0,
    show_default=True,
    type=Seconds(allow_zero=True),
    help="Seconds for the lower bound's search.",
)
@click.option(
    "--timeout",
    type=Seconds(),
    default=None,
    help="Bound the whole command to SECONDS: methods still running then are reported as failed.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the lower bound's starts.")
@click.option("--solver", default="cvxopt", show_default=True, callback=_solver_name,
              help=_solver_help("Solver of the dissipative SDP:"))
@click.option(
    "--lift",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Lift of the dissipative method (see solve --lift).",
)
@click.option(
    "--frequencies",
    type=Frequencies(),
    default="auto",
    show_default=True,
    help="The dissipative method's form, as solve --frequencies (auto, none or K); its warnings "
    "(a large repair, a bound above the H-infinity product) are printed as solve prints them.",
)
@click.option("--force", is_flag=True, help="Run LipSDP even when its LMI exceeds the size guard (minutes).")
@_ALLOW_OUTSIDE
def compare_command(
    spec: str,
    as_json: bool,
    plot: str | None,
    methods: str,
    length: int | None,
    lower_starts: int,
    time_budget: float,
    seed: int,
    solver: str,
    lift: int,
    frequencies: int | str | None,
    force: bool,
    timeout: float | None,
    allow_outside: bool,
) -> None:
    """Compare the dissipative bound of SPEC with naive products, LipSDP and an empirical lower bound."""
    import contextlib
    import json

    from lipdsl.limits import SEARCH_GRACE, Deadline
    from lipdsl.methods import as_dict, compare

    deadline = Deadline(None if timeout is None else timeout + SEARCH_GRACE)

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in _METHODS]
    if unknown:
        raise click.BadParameter(
            f"unknown method(s) {', '.join(unknown)}; expected some of {', '.join(_METHODS)}",
            param_hint="--methods",
        )
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            click.echo(
                "error: --plot needs matplotlib; install it with: pip install 'lipdsl[plot]'", err=True
            )
            sys.exit(1)
    source, net = load_or_fail(spec, allow_outside)
    err_console = console(stderr=True)

    def run():
        with (
            err_console.status("", spinner="dots")
            if (err_console.is_terminal and not as_json)
            else contextlib.nullcontext() as st
        ):

            def progress(label):
                if st is not None:
                    st.update(f"running {label} ...")

            return compare(
                net,
                methods=chosen,
                length=length,
                lower_starts=lower_starts,
                time_budget=time_budget,
                seed=seed,
                solver=solver,
                lift=lift,
                force=force,
                progress=progress,
                timeout=timeout,
                frequencies=frequencies,
            )

    c = within(deadline, "lipdsl compare", run, source)
    if plot is not None:
        from lipdsl.app.plot import plot_comparison

        plot_comparison(c, plot)
    if as_json:
        click.echo(json.dumps(as_dict(c)))
    else:
        print_comparison(c)
        if plot is not None:
            click.echo(f"wrote {plot}")


# -- import (issue 7) -------------------------------------------------------------------------------------


@cli.command("import")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .lip spec to write."
)
@click.option(
    "-w",
    "--weights",
    "weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="The .npz to write the tensors to (default: the spec's path with .npz).",
)
@click.option(
    "--like",
    type=click.Path(dir_okay=False),
    default=None,
    help="For a PyTorch state_dict (.pt/.pth): the .lip spec giving the architecture; its weight "
    "keys are filled from the state_dict.",
)
@click.option(
    "--length",
    type=click.IntRange(min=1),
    default=None,
    help="ONNX: input length when the model's time axis is symbolic.",
)
@click.option("--name", default=None, help="The network's name (default: the model file's stem).")
def import_command(
    model: str, output: str, weights: str | None, like: str | None, length: int | None, name: str | None
) -> None:
    """Write a .lip spec and an .npz of weights from MODEL: an ONNX graph (.onnx) or, with --like, a
    PyTorch state_dict (loaded with torch.load(weights_only=True); pickled modules are refused)."""
    from lipdsl.importers.importer import import_onnx
    from lipdsl.importers.pytorch import import_state_dict
    from lipdsl.lang.load import load_network

    try:
        _check_import_paths(model, output, weights)
        if like is not None:
            spec_path, weights_path = import_state_dict(model, like, output, weights)
        elif model.lower().endswith((".pt", ".pth", ".bin", ".ckpt")):
            raise LipdslError(
                f"{model!r} looks like a PyTorch file; its architecture is not in it",
                hint="pass --like ARCH.lip (a spec whose weight keys name the state_dict's "
                "tensors), export the model to ONNX, or use lipdsl.from_torch in Python",
            )
        else:
            imported = import_onnx(model, name=name, length=length)
            spec_path, weights_path = imported.write(output, weights)
        _, net = load_network(spec_path)
    except LipdslError as err:
        fail(err, err.source)
    click.echo(f"wrote {spec_path} and {weights_path}")
    click.echo(f"OK {summary(net)}")


# -- sweep (issue 21) -------------------------------------------------------------------------------------


@cli.command("sweep")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--like",
    type=click.Path(dir_okay=False),
    default=None,
    help="Architecture spec for weight-file inputs (.npz, PyTorch state_dict .pt): its weight keys are "
    "filled from each file.",
)
@click.option(
    "--method", type=click.Choice(_METHODS), default="dissipative", show_default=True,
    help="As in `lipdsl solve --method`.",
)
@click.option("--solver", default="cvxopt", show_default=True, help="As in `lipdsl solve`.")
@click.option("--tol", default=1e-7, show_default=True, type=float, help="Solver's relative tolerance.")
@click.option("--max-iterations", default=100, show_default=True, type=int)
@click.option("--length", "length", type=click.IntRange(min=1), default=None,
              help="For 'input c x *' nets: the shortest input length to cover (as `solve --length`).")
@_LIFT
@click.option("--max-lmi", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Refuse (in the item's row) SDPs whose largest LMI has more rows than this.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop an item's solver after SECONDS (the item fails; the others go on).")
@click.option("--frequencies", type=Frequencies(), default="auto", show_default=True,
              help="As `lipdsl solve --frequencies`.")
@click.option("--accept-unconverged", is_flag=True, help="As `lipdsl solve --accept-unconverged`.")
@click.option("--force", is_flag=True, help="With --method lipsdp-*: run even LMIs above the size guard.")
@click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=None,
    help="Local worker processes (default: the CPUs this process may use).",
)
@click.option(
    "--scheduler", default=None, metavar="ADDRESS",
    help="Run the items on a Dask cluster: a scheduler address (tcp://host:8786), or 'local' for a "
    "LocalCluster of --jobs workers (pip install 'lipdsl[dask]').",
)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Cache directory (default: .lipdsl-cache beside the first input).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per item and line (solve --json's keys plus name, path, status).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also write the bound per checkpoint as a PNG (needs matplotlib: 'lipdsl[plot]').")
@click.option("--lower", is_flag=True,
              help="Also the empirical lower bound of each item (as `lipdsl lower`).")
@click.option("--lower-starts", default=16, show_default=True, type=click.IntRange(min=1),
              help="With --lower: random starts.")
@click.option("--time-budget", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="With --lower: seconds per item.")
@click.option("--seed", default=0, show_default=True, type=int, help="With --lower: seed of the starts.")
@_ALLOW_OUTSIDE
def sweep_command(inputs, like, jobs, scheduler, cache_dir, no_cache, as_json, as_csv, plot,
                  **options) -> None:
    """Bound many networks in one run: .lip specs, .onnx models, or weight files with --like ARCH.lip.

    \b
      lipdsl sweep runs/*.lip
      lipdsl sweep --like specs/ecg.lip ecg/*.npz --jobs 2 --plot bounds.png
      lipdsl sweep --like arch.lip ckpt/*.pt --scheduler tcp://10.0.0.5:8786

    Items run side by side in worker processes (or on a Dask cluster) and arrive as bytes: workers need no
    shared filesystem. A bad item (unreadable file, refused layer, solver failure) is reported in its row
    and never stops the others. Finished items are cached by content (spec text, weight bytes, options,
    lipdsl version): a rerun solves only what changed. Ctrl-C stops and prints what finished.

    \b
    Exit code: 0 every item certified (or bounded, for a baseline --method);
               1 some item's input is bad (unreadable, unsupported), whatever the others did;
               3 otherwise, some item failed or is not certified;
               2 usage error; 130 interrupted by Ctrl-C (finished items printed and cached).
    """
    import json

    from rich.console import Console

    from lipdsl.app.sweep import default_jobs

    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive")
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            click.echo("error: --plot needs matplotlib; install it with: pip install 'lipdsl[plot]'",
                       err=True)
            sys.exit(1)
    client = cluster = None
    if scheduler is not None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            click.echo("error: --scheduler needs Dask; install it with: pip install 'lipdsl[dask]'", err=True)
            sys.exit(1)
        try:
            if scheduler == "local":
                cluster = LocalCluster(n_workers=jobs or default_jobs(), threads_per_worker=1, processes=True,
                                       dashboard_address=None)
                client = Client(cluster)
            else:
                client = Client(scheduler, timeout=15)
        except (OSError, TimeoutError, ValueError) as exc:
            click.echo(f"error: cannot connect to the Dask scheduler {scheduler!r}: {exc}", err=True)
            sys.exit(1)
    err = Console(stderr=True)
    out = Console()
    live = not (as_json or as_csv) and out.is_terminal
    try:
        result = run_sweep(inputs, like, jobs, client, cache_dir, no_cache, options, err, out, live)
    except LipdslError as exc:
        fail(exc, exc.source)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    from lipdsl.app.report import sweep_notes, sweep_table

    if as_json:
        for row in result.rows:
            click.echo(json.dumps(row))
    elif as_csv:
        click.echo(result.to_csv(), nl=False)
    else:
        if not live:
            out.print(sweep_table(result.rows, lower=options["lower"]))
        for note in sweep_notes(result.rows):
            click.echo("  " + note)
    if plot is not None:
        from lipdsl.app.plot import plot_sweep

        plot_sweep(result.rows, plot)
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    sys.stdout.flush()
    err.print(
        f"{len(result)} item{'s' if len(result) != 1 else ''}: {summary}; {result.solved} solved, "
        f"{result.cached} from the cache; "
        f"{result.seconds:.1f} s" + ("; interrupted (Ctrl-C)" if result.interrupted else "")
        + (f"; wrote {plot}" if plot else ""),
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(result.exit_code)


def _check_import_paths(model: str, output: str, weights: str | None) -> None:
    """Refuse an ``import`` that would write the spec over the weights (``-o net.npz``) or over its input."""
    from pathlib import Path

    out = Path(output)
    w = out.with_suffix(".npz") if weights is None else Path(weights)
    if out.suffix.lower() in (".npz", ".npy", ".onnx", ".pt", ".pth"):
        raise LipdslError(
            f"-o {output!r} names the spec to write, a text file, but it has the suffix {out.suffix!r}",
            hint=f"write the spec to {str(out.with_suffix('.lip'))!r}; the weights go beside it "
            f"({str(out.with_suffix('.npz'))!r}) or to --weights",
        )
    resolved = {p.resolve() for p in (out, w)}
    if len(resolved) < 2 or Path(model).resolve() in resolved:
        raise LipdslError(
            "the spec, its weights and the model must be three different files",
            hint="choose another -o or --weights",
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lipdsl`` console script."""
    try:
        cli.main(args=argv, prog_name="lipdsl", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command line: argv -> exit code (0 certified/ok, 1 input error, 2 usage, 3 failed or not certified)."""

from __future__ import annotations

import sys

import click

from lipdsl.app.progress import solve_progress
from lipdsl.app.render import (
    console,
    print_baseline,
    print_layers,
    print_lowering,
    print_state_space,
    show_json,
    summary,
)
from lipdsl.app.cli_batch import import_command, sweep_command
from lipdsl.app.cli_bounds import compare_command, lower_command
from lipdsl.app.options import (  # noqa: F401 (fail, read_source, SOLVERS: imported from here too)
    ALLOW_OUTSIDE,
    LIFT,
    MIN_LENGTH,
    SOLVERS,
    Frequencies,
    WeightRank,
    check_length,
    check_state_space_size,
    fail,
    load_or_fail,
    load_with_deadline,
    lower_or_fail,
    read_source,
    solver_help,
    solver_name,
    timeout_option,
    within,
)
from lipdsl import __version__
from lipdsl.errors import LipdslError
from lipdsl.methods import METHODS as _METHODS  # the one method registry (no numpy at start-up)
from lipdsl.solvers import registry  # (tolerances and solver names; imports no solver)
from lipdsl.solvers.registry import tolerance_text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, package_name="lipdsl")  # (from the source: no metadata needed)
def cli() -> None:
    """lipdsl: certified Lipschitz bounds for 1D convolutional neural networks."""


# -- front end: check / show (issue 2) -------------------------------------------------------------------


@cli.command("check")
@click.argument("spec")
@ALLOW_OUTSIDE
def check_command(spec: str, allow_outside: bool) -> None:
    """Parse and check SPEC: print OK and a summary, or the errors (exit 1)."""
    from lipdsl.model.residual import require_foldable

    source, net = load_or_fail(spec, allow_outside)
    try:  # (a batch norm whose fold leaves float64's range is refused here as every command that lowers does)
        require_foldable(net)
    except LipdslError as err:
        fail(err, source)
    click.echo(f"OK {summary(net)}")


@cli.command("show")
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--state-space",
    "state_space",
    is_flag=True,
    help="Print each conv layer's causal realization (A, B, C, D), symbolically, those in residual blocks "
    "too.",
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
@timeout_option("the lowering of --lowering, the realizations of --state-space")
@ALLOW_OUTSIDE
def show_command(
    spec: str,
    as_json: bool,
    state_space: bool,
    latex: bool,
    lowering: bool,
    min_length: int | None,
    lift: int,
    timeout: float | None,
    allow_outside: bool,
) -> None:
    """Show the layers of SPEC as lipdsl understood them: shapes, parameters, slopes."""
    if latex and not state_space:
        raise click.UsageError("--latex applies to --state-space only")
    if (min_length is not None or lift != 1) and not lowering:
        raise click.UsageError("--length and --lift apply to --lowering only")
    deadline, source, net = load_with_deadline(spec, allow_outside, timeout)
    check_length(net, source, min_length)
    within(deadline, "lipdsl show",
           lambda: _show(net, source, as_json, state_space, latex, lowering, min_length, lift), source)


def _show(net, source, as_json: bool, state_space: bool, latex: bool, lowering: bool, min_length: int | None,
          lift: int) -> None:
    """``lipdsl show`` after the spec is read: the lowering, the realizations, JSON or the table."""
    if lowering:
        print_lowering(net, *lower_or_fail(net, source, min_length, lift), lift=lift)
        return
    if state_space:
        check_state_space_size(net, source)
        print_state_space(net, latex)
        return
    if as_json:
        import json

        click.echo(json.dumps(show_json(net)))
        return
    print_layers(net)


# -- solve (issue 3) --------------------------------------------------------------------------------------


@cli.command("solve")
@click.argument("spec")
@click.option(
    "--solver",
    default="cvxopt",
    show_default=True,
    callback=solver_name,
    help=solver_help("The SDP solver (PICOS ones must be installed)."),
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
@click.option("--tol", default=None, type=float,
              help=f"Solver's relative tolerance. Default: {tolerance_text(registry.EXACT_TOL)}, or "
              f"{tolerance_text(registry.FREQUENCY_TOL)} for an interior-point solve of the frequency form "
              "(its grid repair is larger).")
@click.option("--max-iterations", default=100, show_default=True, type=int)
@click.option("--verbose", is_flag=True, help="Show the solver's iterations (and the per-LMI table).")
@click.option("-v", "--details", is_flag=True, help="Also print the per-LMI table of the certificate.")
@MIN_LENGTH
@LIFT
@click.option(
    "--max-lmi",
    type=click.IntRange(min=1),
    default=4000,
    show_default=True,
    help="Refuse (exit 3, before allocating) SDPs whose largest LMI has more rows than this.",
)
@timeout_option("lowering, solve, storage recovery; also --method lipsdp-*")
@click.option(
    "--frequencies",
    type=Frequencies(),
    default="auto",
    show_default=True,
    help="Solve conv layers' LMIs in the frequency domain on K frequencies and recover their storage "
    "matrices afterwards (KYP lemma + Riccati): for wide conv layers; certified the same way, slightly "
    "looser. auto: K = 17 (9 for LMIs of 192+ rows, 7 for 384+, 5 for 768+) when the exact LMIs would "
    "have more than 4000 variables; none: the exact LMIs.",
)
@click.option(
    "--weight-rank",
    type=WeightRank(),
    default="auto",
    show_default=True,
    help="The weights X between layers as diag + a rank-R part on the directions the next layer amplifies "
    "most (far fewer variables for wide layers; certified the same way, slightly looser). auto: R = 16 "
    "for weights of 64+ channels when full X would give more than 2000 variables; full: full X.",
)
@click.option(
    "--refine-rounds",
    type=click.IntRange(0, 10),
    default=None,
    help="In the frequency domain: at most N re-solves with the grid refined where the LMIs dip between its "
    "frequencies, when the certificate's repair would exceed 1% (each starts from the last point, costs "
    "about a solve and lowers the repair; 0 is fastest). Default: at most 2, when it would exceed 5%.",
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
@ALLOW_OUTSIDE
def solve_command(
    spec: str,
    solver: str,
    as_json: bool,
    tol: float | None,
    max_iterations: int,
    verbose: bool,
    details: bool,
    min_length: int | None,
    lift: int,
    max_lmi: int,
    timeout: float | None,
    frequencies: int | str | None,
    weight_rank: int | str | None,
    refine_rounds: int | None,
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
    t0 = time.perf_counter()
    deadline, source, net = load_with_deadline(spec, allow_outside, timeout)
    t1 = time.perf_counter()
    check_length(net, source, min_length)
    if method != "dissipative":
        within(deadline, f"--method {method}",
               lambda: _solve_baseline(net, method, min_length, force, as_json), source)
        return
    within(deadline, "lipdsl solve",
           lambda: _solve_dissipative(net, source, t1 - t0, deadline, solver=solver, tol=tol,
                                      max_iterations=max_iterations, verbose=verbose, min_length=min_length,
                                      lift=lift, max_lmi=max_lmi, accept_unconverged=accept_unconverged,
                                      frequencies=frequencies, weight_rank=weight_rank, as_json=as_json,
                                      refine_rounds=refine_rounds,
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
    proof, refused = None, None
    if result.certificate.verified and (certificate_path is not None or exact):
        try:
            proof = _certify_file(result, net, certificate_path, exact, options["min_length"],
                                  options["lift"], result.frequencies, options["solver"])
        except LipdslError as err:  # shown after the bound, which is certified all the same
            refused = err
    written = certificate_path is not None and result.certificate.verified and refused is None
    if as_json:
        import json

        out = to_json(result)
        if proof is not None:
            out["proof"] = proof.to_json()
        if written:
            out["certificate_file"] = certificate_path
        if refused is not None:
            out["certificate_error"] = refused.message
        click.echo(json.dumps(out))
    else:

        print_text(result, console(), proof=proof, verbose=bool(details or options["verbose"]))
        if written:
            click.echo(f"  certificate written to {certificate_path} (check it: lipdsl verify {spec} "
                       f"{certificate_path} [--exact])")
    if refused is not None:
        fail(refused, None)
    if not result.certificate.verified:
        sys.exit(3)


def _certify_file(result, net, path, exact, min_length, lift, frequencies, solver):
    """Write the certificate (to ``path`` if given) and, with ``exact``, prove it: the Verdict (None
    without ``exact``). Never writes a certificate file that does not verify.

    Raises
    ------
    LipdslError
        The certificate cannot be built, written or proved (``solve`` shows it after the certified bound).
    """
    from lipdsl.certify import certificate
    from lipdsl.certify.verify import verify
    from lipdsl.errors import CertificateError

    options = certificate.solve_options(min_length, lift, True, frequencies, solver)
    doc = certificate.build(result, options=options)
    verdict = verify(net, doc, exact=exact)
    if not verdict.ok:
        how = " exactly" if exact else ""
        raise CertificateError(f"the certificate does not verify{how}: {verdict.reason}",
                               hint="please report this: the solver's point was certified but the "
                               "independent check failed (no certificate written)")
    if path is not None:
        from pathlib import Path

        text = certificate.encode(doc)
        Path(path).write_text(text)
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
@ALLOW_OUTSIDE
def verify_command(spec: str, certificate: str, exact: bool, as_json: bool, backend: str,
                   allow_outside: bool) -> None:
    """Check CERTIFICATE (from lipdsl solve --certificate) against SPEC's weights, without the solver
    (exit 0 verified, 1 unreadable input, 3 a check failed, or the certificate belongs to another network,
    other weights or options, or holds a malformed value)."""
    source, net = load_or_fail(spec, allow_outside)
    from lipdsl.app.report import print_verdict
    from lipdsl.certify.verify import verify

    try:
        verdict = verify(net, certificate, exact=exact, backend_name=backend)
    except LipdslError as err:  # the certificate's (no span: "cert.json: error: ..."), or the spec's
        fail(err, source if err.span is not None else err.source)
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
@MIN_LENGTH
@LIFT
@timeout_option("lowering, building the SDP, writing it")
@ALLOW_OUTSIDE
def export_command(spec: str, output: str, min_length: int | None, lift: int, timeout: float | None,
                   allow_outside: bool) -> None:
    """Write the SDP that `solve` builds for SPEC in SDPA sparse format (.dat-s), for any SDP solver."""
    deadline, source, net = load_with_deadline(spec, allow_outside, timeout)
    check_length(net, source, min_length)
    within(deadline, "lipdsl export", lambda: _export(net, source, spec, output, min_length, lift), source)


def _export(net, source, spec: str, output: str, min_length: int | None, lift: int) -> None:
    """``lipdsl export`` after the spec is read: lower, build the SDP, write it."""
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


for _command in (lower_command, compare_command, import_command, sweep_command):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lipdsl`` console script."""
    try:
        cli.main(args=argv, prog_name="lipdsl", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command line: argv -> exit code (0 certified/ok, 1 input error, 2 usage, 3 failed or not certified)."""

from __future__ import annotations

import os
import sys

# The LMIs are small (tens to hundreds of rows): multi-threaded BLAS only adds contention, and on a loaded
# 2-core machine it made the ECG solve 3x slower. Users can still override this from the environment.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import click  # noqa: E402

from .errors import LipdslError  # noqa: E402
from .source import Source  # noqa: E402


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipdsl")
def cli() -> None:
    """lipdsl: certified Lipschitz bounds for 1D convolutional neural networks."""


# -- front end: check / show (issue 2) -------------------------------------------------------------------


def load_or_fail(path: str, allow_outside: bool = False):
    """``lipdsl.load.load_network`` for commands: (Source, typed.Network), or print the error and exit 1."""
    from .load import load_network

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


def _params(layer) -> int:
    weight = getattr(layer, "weight", None)
    bias = getattr(layer, "bias", None)
    return (0 if weight is None else int(weight.size)) + (0 if bias is None else int(bias.size))


def _details(layer) -> str:
    exact = " (exact)" if getattr(layer, "weight_expr", None) is not None else ""
    if layer.kind == "conv1d":
        pads = layer.padding
        if not pads.isdigit():
            pads += f" ({layer.pad_left},{layer.pad_right})"
        bias = "" if layer.bias is not None else ", no bias"
        return f"k={layer.kernel} s={layer.stride} d={layer.dilation} pad={pads}{bias}{exact}"
    if layer.kind == "dense":
        return ("bias" if layer.bias is not None else "no bias") + exact
    if layer.kind == "pool":
        return f"{layer.op}, kernel {layer.kernel}, stride {layer.stride}"
    if layer.kind == "activation":
        fn = layer.function if layer.parameter is None else f"{layer.function}({layer.parameter:g})"
        return f"{fn}, slope [{layer.alpha:g}, {layer.beta:g}]"
    return ""


def _shape_json(shape) -> list:
    return [shape.channels] if shape.flat else [shape.channels, shape.length]


def _summary(net) -> str:
    counts: dict[str, int] = {}
    for layer in net.layers:
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
    params = sum(_params(layer) for layer in net.layers)
    return (
        f"network {net.name!r}: {net.input_shape} -> {net.output_shape}, {len(net.layers)} layers "
        f"({kinds}), {params} parameters"
    )


@cli.command("check")
@click.argument("spec")
@_ALLOW_OUTSIDE
def check_command(spec: str, allow_outside: bool) -> None:
    """Parse and check SPEC: print OK and a summary, or the errors (exit 1)."""
    _, net = load_or_fail(spec, allow_outside)
    click.echo(f"OK {_summary(net)}")


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
    source, net = load_or_fail(spec, allow_outside)
    if lowering:
        _print_lowering(net, source, min_length, lift)
        return
    if state_space:
        _print_state_space(net, latex)
        return
    if as_json:
        import json

        layers = []
        for layer in net.layers:
            entry = {
                "name": layer.name,
                "kind": layer.kind,
                "in": _shape_json(layer.in_shape),
                "out": _shape_json(layer.out_shape),
                "params": _params(layer),
                "line": layer.span.line,
            }
            if layer.kind == "conv1d":
                entry.update(
                    kernel=layer.kernel,
                    stride=layer.stride,
                    dilation=layer.dilation,
                    padding=layer.padding,
                    pad_left=layer.pad_left,
                    pad_right=layer.pad_right,
                    bias=layer.bias is not None,
                )
            elif layer.kind == "dense":
                entry.update(bias=layer.bias is not None)
            elif layer.kind == "pool":
                entry.update(op=layer.op, kernel=layer.kernel, stride=layer.stride)
            elif layer.kind == "activation":
                entry.update(
                    function=layer.function, parameter=layer.parameter, slope=[layer.alpha, layer.beta]
                )
            layers.append(entry)
        click.echo(
            json.dumps(
                {
                    "name": net.name,
                    "source": net.source_path,
                    "input": _shape_json(net.input_shape),
                    "output": _shape_json(net.output_shape),
                    "any_length": net.any_length,
                    "params": sum(e["params"] for e in layers),
                    "layers": layers,
                }
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{net.name}  ({net.source_path})")
    for col in ("#", "name", "kind", "in", "out", "params", "details"):
        table.add_column(col, justify="right" if col in ("#", "params") else "left")
    table.add_row("", "input", "", "", str(net.input_shape), "", "")
    for i, layer in enumerate(net.layers, 1):
        kind = layer.function if layer.kind == "activation" else layer.kind
        table.add_row(
            str(i),
            layer.name,
            kind,
            str(layer.in_shape),
            str(layer.out_shape),
            str(_params(layer) or ""),
            _details(layer),
        )
    Console().print(table)
    click.echo(_summary(net))


def _print_lowering(net, source, min_length, lift=1) -> None:
    """One row per SDP step: the systems (one LMI each) and the pooling/flatten steps between them."""
    from rich.console import Console
    from rich.table import Table

    from . import lowered
    from .lower import lower

    try:
        low = lower(net, min_length=min_length, lift=lift)
    except LipdslError as err:
        fail(err, source)
    table = Table(title=f"{net.name}: how each layer enters the SDP (bound = sqrt(rho) x {low.factor:.6g})")
    for col in ("step", "layers", "construct", "LMI rows (state+in+out)", "scale / factor"):
        table.add_column(col)
    for st in low.steps:
        if isinstance(st, lowered.System):
            ss = st.ss
            slope = (
                "linear" if st.slope is None else f"{st.activation} slope [{st.slope[0]:g}, {st.slope[1]:g}]"
            )
            what = {"conv": "causal FIR state space", "dense": "static map", "activation": "identity map",
                    "pool": "causal FIR state space"}[st.kind]
            rows = ss.nx + ss.nu + (ss.ny if st.slope is not None else 0)
            table.add_row(
                st.name,
                ", ".join(st.layers),
                f"{what} + {slope}" + (f"; {st.note}" if st.note else ""),
                f"{rows} ({ss.nx}+{ss.nu}+{ss.ny if st.slope is not None else 0})",
                f"{st.scale:.4g}",
            )
        elif isinstance(st, lowered.Pool):
            table.add_row(st.name, st.name, st.note, "-", f"{st.gain:.4g}")
        else:
            table.add_row(
                st.name,
                st.name,
                f"flatten {st.channels}x{st.length}: next input weight X (x) I_{st.length}",
                "-",
                "1",
            )
    Console().print(table)


def _print_state_space(net, latex: bool) -> None:
    """Each conv layer's (A, B, C, D): entry by entry when small, else in block form with taps W_j."""
    import sympy

    from .lower import symbolic_block_state_space, symbolic_state_space

    convs = [layer for layer in net.layers if layer.kind == "conv1d"]
    if not convs:
        click.echo(f"network {net.name!r} has no conv1d layer (dense layers are static: v = W u)")
    for layer in convs:
        ke = layer.dilation * (layer.kernel - 1) + 1
        nx = (ke - 1) * layer.c_in
        click.echo(
            f"conv1d {layer.name}: {layer.c_in} -> {layer.c_out}, kernel {layer.kernel}"
            f"{f', dilation {layer.dilation}' if layer.dilation > 1 else ''}: causal realization, "
            f"{nx} states (independent of the signal length)"
        )
        state = {0: "no state: v[t] = D u[t]", 1: "x[t] = u[t-1]"}.get(
            ke - 1, f"x[t] = [u[t-{ke - 1}]; ...; u[t-1]]"
        )
        click.echo(f"  x[t+1] = A x[t] + B u[t],  v[t] = C x[t] + D u[t],  {state}")
        small = nx + layer.c_in <= 16 and layer.c_out <= 16
        mats = symbolic_state_space(layer) if small else symbolic_block_state_space(layer)
        if not small:
            click.echo("  (block form: W_j = W[:, :, j] is c_out x c_in in PyTorch layout)")
        for label, M in zip("ABCD", mats):
            if M is None or 0 in M.shape:
                click.echo(f"  {label}: empty (no state)")
                continue
            if latex:
                click.echo(f"  {label} = {sympy.latex(M)}")
            else:
                text = sympy.pretty(M, use_unicode=True)
                click.echo(f"  {label} =\n" + "\n".join("    " + line for line in text.splitlines()))


# -- solve (issue 3) --------------------------------------------------------------------------------------

from .compare import METHODS as _METHODS  # noqa: E402  (the one method registry; no numpy at start-up)


@cli.command("solve")
@click.argument("spec")
@click.option(
    "--solver",
    default="cvxopt",
    show_default=True,
    help="cvxopt (structured KKT), cvxopt-generic, sdpa (sdpa-python), or any PICOS solver installed "
    "(qics, smcp, mosek).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
@click.option("--tol", default=1e-7, show_default=True, type=float, help="Solver's relative tolerance.")
@click.option("--max-iterations", default=100, show_default=True, type=int)
@click.option("--verbose", is_flag=True, help="Show the solver's iterations.")
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
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop the solver after SECONDS (exit 3).",
)
@click.option(
    "--frequencies",
    type=click.IntRange(min=3),
    default=None,
    help="Solve conv layers' LMIs in the frequency domain on K frequencies and recover their storage "
    "matrices afterwards (KYP lemma + Riccati): for wide conv layers; certified the same way, slightly "
    "looser.",
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
    min_length: int | None,
    lift: int,
    max_lmi: int,
    timeout: float | None,
    frequencies: int | None,
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
    source, net = load_or_fail(spec, allow_outside)
    t1 = time.perf_counter()
    if method != "dissipative":
        _solve_baseline(net, method, min_length, force, as_json)
        return
    from .api import solve_network
    from .report import print_text, to_json

    try:
        result = solve_network(
            net,
            solver=solver,
            tol=tol,
            max_iterations=max_iterations,
            verbose=verbose,
            min_length=min_length,
            lift=lift,
            seconds={"parse+check": t1 - t0},
            max_lmi=max_lmi,
            timeout=timeout,
            accept_unconverged=accept_unconverged,
            frequencies=frequencies,
        )
    except LipdslError as err:
        fail(err, source)
    proof = None
    if result.certificate.verified and (certificate_path is not None or exact):
        proof = _certify_file(result, net, certificate_path, exact, min_length, lift, frequencies, solver)
    if as_json:
        import json

        out = to_json(result)
        if proof is not None:
            out["proof"] = proof.to_json()
        if certificate_path is not None and result.certificate.verified:
            out["certificate_file"] = certificate_path
        click.echo(json.dumps(out))
    else:
        from rich.console import Console

        print_text(result, Console(), proof=proof)
        if certificate_path is not None and result.certificate.verified:
            click.echo(f"  certificate written to {certificate_path} (check it: lipdsl verify {spec} "
                       f"{certificate_path} [--exact])")
    if not result.certificate.verified:
        sys.exit(3)


def _certify_file(result, net, path, exact, min_length, lift, frequencies, solver):
    """Write the certificate (to ``path`` if given) and, with ``exact``, prove it: the Verdict, or exit 3
    with the failing check (never a certificate file that does not verify)."""
    from . import certificate
    from .verify import verify

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
    from .report import print_verdict
    from .verify import verify

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
    from .api import lower_within_limits
    from .sdp import build_sdp
    from .sdpa import write_sdpa

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
    type=click.FloatRange(min=0),
    help="Seconds after which no new start is begun.",
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
    """Empirical lower bound of SPEC's Lipschitz constant: max of ||J(u)||_2 over searched inputs u."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .empirical import lower_bound

    source, net = load_or_fail(spec, allow_outside)
    err_console = Console(stderr=True)
    try:
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
            result = lower_bound(
                net,
                starts=starts,
                seed=seed,
                time_budget=time_budget,
                length=length,
                progress=lambda done, total, best: bar.update(task, completed=done, best=best),
            )
    except LipdslError as err:
        fail(err, source)
    if as_json:
        import json

        click.echo(
            json.dumps(
                {
                    "spec": spec,
                    "network": net.name,
                    "lower_bound": result.value,
                    "seed": seed,
                    "starts": result.starts,
                    "evaluations": result.evaluations,
                    "length": result.length,
                    "seconds": result.seconds,
                    "argmax_input": result.argmax_input.tolist(),
                }
            )
        )
        return
    where = f", input length {result.length}" if net.any_length else ""
    click.echo(
        f"{net.name}: lipschitz >= {result.value:.10g}  (empirical: max ||J(u)||_2 over {result.starts} "
        f"starts, {result.evaluations} Jacobians, seed {seed}{where}, {result.seconds:.2f} s)"
    )


# -- compare and solve --method (issue 4) ----------------------------------------------------------------

_STATUS_WORDS = {
    "exact norm": "exact norm product",
    "iterative norm": "iterative norm product (not a proof)",
    "verified LMI": "verified LMI",
    "certified": "certified",
}


def _solve_baseline(net, method: str, length: int | None, force: bool, as_json: bool) -> None:
    """``lipdsl solve --method <baseline>``: the bound with how it is known; exit 3 when refused or failed."""
    import json

    from .compare import run_method

    r = run_method(net, method, length=length, force=force)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "network": net.name,
                    "source": net.source_path,
                    "method": method,
                    "lipschitz": r.bound,
                    "status": r.status,
                    "note": r.note,
                    "length": r.length,
                    "lmi_rows": r.lmi_rows,
                    "seconds": r.seconds,
                }
            )
        )
    elif r.ok:
        words = _STATUS_WORDS[r.status]
        click.echo(f"Lipschitz upper bound of {net.name} ({method}): {r.bound:.10g} ({words})")
        size = f", LMI {r.lmi_rows} rows" if r.lmi_rows else ""
        click.echo(f"  {r.note}{size}; time {r.seconds:.3f} s")
    else:
        click.echo(f"no bound for {net.name} ({method}): {r.status}: {r.note}")
    if not r.ok:
        sys.exit(3)


def _fmt(x: float | None, spec: str = ".6g") -> str:
    return "-" if x is None else format(x, spec)


def _print_comparison(c) -> None:
    """The comparison as a rich table (the lower bound first), then one note line per method."""
    from rich.console import Console
    from rich.table import Table

    net = c.network
    where = f", unrolled for N = {c.length}" if c.length else ""
    table = Table(title=f"{net.name}: Lipschitz bounds ({net.input_shape} -> {net.output_shape}{where})")
    for col in ("method", "bound", "/ lower", "/ dissip.", "time", "status"):
        table.add_column(col, justify="left" if col in ("method", "status") else "right", no_wrap=True)
    d = c.lower_detail
    notes = []
    if c.lower is not None:
        table.add_row(
            "lower (empirical)",
            f"{c.lower:.6g}",
            "1",
            _fmt(c.ratio_dissipative(c.lower), ".3f"),
            f"{d['seconds']:.2f} s",
            "witnessed",
        )
        notes.append(f"lower: max ||J(u)||_2 over {d['starts']} starts, seed {d['seed']}")
    elif "error" in d:
        table.add_row("lower (empirical)", "-", "", "", "", "[red]not run[/]")
        notes.append(f"lower: not run: {d['error']}")
    for r in c.results:
        status = r.status if r.ok else f"[red]{r.status}[/]"
        table.add_row(
            r.method,
            _fmt(r.bound),
            _fmt(c.ratio_lower(r), ".3f"),
            _fmt(c.ratio_dissipative(r), ".3f"),
            "" if r.status == "refused" else f"{r.seconds:.2f} s",
            status,
        )
        size = f" (LMI {r.lmi_rows} rows)" if r.lmi_rows and r.ok else ""
        notes.append(f"{r.method}: {r.note}{size}" if r.ok else f"{r.method}: {r.status}: {r.note}")
    Console().print(table)
    for line in notes:
        click.echo("  " + line)


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
    type=click.FloatRange(min=0),
    help="Seconds for the lower bound's search.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the lower bound's starts.")
@click.option("--solver", default="cvxopt", show_default=True, help="Solver of the dissipative SDP.")
@click.option(
    "--lift",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Lift of the dissipative method (see solve --lift).",
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
    force: bool,
    allow_outside: bool,
) -> None:
    """Compare the dissipative bound of SPEC with naive products, LipSDP and an empirical lower bound."""
    import contextlib
    import json

    from rich.console import Console

    from .compare import as_dict, compare

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
    err_console = Console(stderr=True)
    with (
        err_console.status("", spinner="dots")
        if (err_console.is_terminal and not as_json)
        else contextlib.nullcontext() as st
    ):

        def progress(label):
            if st is not None:
                st.update(f"running {label} ...")

        try:
            c = compare(
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
            )
        except LipdslError as err:
            fail(err, source)
    if plot is not None:
        from .plot import plot_comparison

        plot_comparison(c, plot)
    if as_json:
        click.echo(json.dumps(as_dict(c)))
    else:
        _print_comparison(c)
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
    from .importer import import_onnx, import_state_dict
    from .load import load_network

    try:
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
    click.echo(f"OK {_summary(net)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lipdsl`` console script."""
    try:
        cli.main(args=argv, prog_name="lipdsl", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Bounds beside `solve`: `lipdsl lower` (a spec -> an empirical lower bound) and `lipdsl compare` (a spec ->
every method's bound in one table)."""

from __future__ import annotations

import sys

import click

from lipdsl.app.render import console, lower_bound_json, lower_bound_text, print_comparison
from lipdsl.app.options import (
    ALLOW_OUTSIDE,
    Frequencies,
    Seconds,
    check_length,
    load_or_fail,
    search_deadlines,
    solver_help,
    solver_name,
    timeout_option,
    within,
)
from lipdsl.methods import LOWER_SECONDS, LOWER_STARTS
from lipdsl.methods import METHODS as _METHODS  # the one method registry (no numpy at start-up)


# -- lower (issue 4) --------------------------------------------------------------------------------------


@click.command("lower")
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
@ALLOW_OUTSIDE
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
    from lipdsl.rigorous import format_down

    budget, deadline = search_deadlines(time_budget)  # (reading the spec counts against the budget)
    source, net = load_or_fail(spec, allow_outside)
    check_length(net, source, length)
    err_console = console(stderr=True)

    def search():
        with Progress(
            TextColumn("lower bound"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),  # (format_down: a lower bound never shows above)
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=as_json or not err_console.is_terminal,
        ) as bar:
            task = bar.add_task("starts", total=starts, best="0")
            return lower_bound(
                net,
                starts=starts,
                seed=seed,
                time_budget=budget.remaining(),
                length=length,
                progress=lambda done, total, best: bar.update(task, completed=done,
                                                              best=format_down(best, 6)),
            )

    result = within(deadline, "the lower bound's search", search, source,
                    hint="raise --time-budget, or give a shorter --length")
    if as_json:
        import json

        click.echo(json.dumps(lower_bound_json(spec, net, result, seed)))
        return
    click.echo(lower_bound_text(net, result, seed))


@click.command("compare")
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
    default=LOWER_STARTS,
    show_default=True,
    type=click.IntRange(min=0),
    help="Random starts of the empirical lower bound (0: skip it).",
)
@click.option(
    "--time-budget",
    default=LOWER_SECONDS,
    show_default=True,
    type=Seconds(allow_zero=True),
    help="Seconds for the lower bound's search.",
)
@timeout_option(help="Bound the comparison to SECONDS from the command's start: methods still running then "
                "are reported as failed (the command ends within a few seconds more).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the lower bound's starts.")
@click.option("--solver", default="cvxopt", show_default=True, callback=solver_name,
              help=solver_help("Solver of the dissipative SDP:"))
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
@ALLOW_OUTSIDE
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

    from lipdsl.methods import as_dict, compare

    # One clock, started before the spec is read: the methods' budget (``--timeout``: reading the spec counts
    # against it; methods still running when it ends are reported as failed) and, SEARCH_GRACE later, the
    # command's hard deadline (``within``: exit 3, no table), which only a call stuck past the budget meets.
    budget, deadline = search_deadlines(timeout)

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
    check_length(net, source, length)
    err_console = console(stderr=True)

    def run():
        with (
            budget.active(),
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
                frequencies=frequencies,  # (no timeout=: the active budget, whose clock started above)
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

"""Batch commands: `lipdsl import` (an ONNX/torch model file -> .lip + .npz) and `lipdsl sweep` (many specs
or models -> one table of bounds)."""

from __future__ import annotations

import sys

import click

from lipdsl.app.options import ALLOW_OUTSIDE, LIFT, Frequencies, fail
from lipdsl.app.progress import run_sweep
from lipdsl.app.render import summary
from lipdsl.errors import LipdslError
from lipdsl.methods import METHODS as _METHODS  # the one method registry (no numpy at start-up)


# -- import (issue 7) -------------------------------------------------------------------------------------


@click.command("import")
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
    help="For a PyTorch state_dict (.pt/.pth; needs torch) or an .npz of its tensors: the .lip spec giving "
    "the architecture; its weight keys are filled from the checkpoint (a weight-normalised X.weight from "
    "its g and v).",
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

    if weights is not None and not weights.lower().endswith(".npz"):  # (a usage error, not the spec's)
        raise click.BadParameter(f"the weights file to write must be an .npz, got {weights!r}",
                                 param_hint="-w/--weights")
    try:
        _check_import_paths(model, output, weights)
        if like is not None:
            spec_path, weights_path = import_state_dict(
                model, like, output, weights, on_warning=lambda m: click.echo(f"warning: {m}", err=True))
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


@click.command("sweep")
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
@click.option("--tol", default=None, type=float, help="As in `lipdsl solve` (default: its default).")
@click.option("--max-iterations", default=100, show_default=True, type=int)
@click.option("--length", "length", type=click.IntRange(min=1), default=None,
              help="For 'input c x *' nets: the shortest input length to cover (as `solve --length`); "
              "an item of another fixed length is an error in its row.")
@LIFT
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
@ALLOW_OUTSIDE
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
        f"{len(result)} item{'s' if len(result) != 1 else ''}: {summary}; {result.solved} run, "
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

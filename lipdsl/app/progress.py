"""Progress on the terminal: a running solve or sweep -> a status line, a bar with ETA, a live table."""

from __future__ import annotations

import contextlib

from lipdsl.app.render import console


@contextlib.contextmanager
def solve_progress(solver: str, quiet: bool):
    """On a terminal (stderr), a one-line status while ``solve`` works: the stage, and the solver's
    iteration (``solvers.solve.on_iteration``); yields the pipeline's ``progress(stage)`` callback, or None
    (and shows nothing) when stderr is not a terminal or with ``--json``."""
    import time

    from lipdsl.solvers.solve import on_iteration

    err_console = console(stderr=True)
    if quiet or not err_console.is_terminal:
        yield None
        return
    start = time.monotonic()
    with err_console.status("lipdsl solve: starting", spinner="dots") as status:
        def show(text):
            status.update(f"lipdsl solve: {text} ({time.monotonic() - start:.0f} s)")

        def stage(name):
            show(f"{name} ({solver})" if name == "solving" else name)

        with on_iteration(lambda k: show(f"solving ({solver}): iteration {k}")):
            yield stage


def run_sweep(inputs, like, jobs, client, cache_dir, no_cache, options, err, out, live):
    """``sweep.sweep`` with progress (done/total, ETA) on a terminal and, on a terminal stdout, the table
    growing as items finish."""
    import contextlib

    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lipdsl.app.report import sweep_table
    from lipdsl.app.sweep import sweep

    progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), TextColumn("{task.fields[running]}"),
                        console=err if not live else out, transient=True,
                        disable=not (live or err.is_terminal))
    task = progress.add_task("items", total=len(inputs), running="")
    running: dict[str, int] = {}  # item -> its solver's iteration

    def show_running():
        shown = ", ".join(f"{name}: iteration {k}" for name, k in list(running.items())[:3])
        progress.update(task, running=shown + (" ..." if len(running) > 3 else ""))
    done_rows: dict[str, dict] = {}
    order = {p: i for i, p in enumerate(inputs)}

    def view():
        rows = sorted(done_rows.values(), key=lambda r: order.get(r["path"], 0))
        return Group(sweep_table(rows, lower=options["lower"]), progress)

    display = Live(view(), console=out, auto_refresh=False) if live else contextlib.nullcontext()
    cache = False if no_cache else (cache_dir or True)
    with display if live else progress:

        def on_row(row, done, total):
            running.pop(row["name"], None)
            show_running()
            progress.update(task, completed=done, total=total)
            if live:
                done_rows[f"{order.get(row['path'], 0)}"] = row
                display.update(view(), refresh=True)

        def on_progress(name, k):
            running[name] = k
            show_running()
            if live:
                display.update(view(), refresh=True)

        result = sweep(list(inputs), like, jobs=jobs, client=client, cache=cache, on_row=on_row,
                       on_progress=on_progress, **options)
        if live:
            display.update(sweep_table(result.rows, lower=options["lower"]), refresh=True)
    return result

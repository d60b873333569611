"""Sweep many checkpoints: inputs -> SweepResult (items as bytes, content-keyed cache, executors, one table).

This module schedules the items and collects the table; ``sweep_items`` reads them and runs one.

An *item* is one network to bound, carried as bytes so that a worker needs no shared filesystem:

- a ``.lip`` spec: its text and the bytes of every weight file it names (``weights.weight_files``);
- ``--like arch.lip`` + a weight file: the architecture's text with its ``weights "..."`` lines pointing at
  the file, and the file's bytes (an ``.npz``, or a PyTorch ``state_dict`` read with
  ``torch.load(weights_only=True)`` on the worker);
- an ``.onnx`` model: its bytes, external data read in (``importer.import_onnx`` on the worker).

A worker rebuilds the network with ``load.check_source(..., files=...)`` (the same checks as from disk:
path rules, size caps, ``allow_pickle=False``, finite weights), runs the method and returns one row: the
keys of ``lipdsl solve --json`` plus ``name``, ``path``, ``status``, ``item_seconds`` (wall) and
``item_cpu_seconds`` (the worker's CPU time). Errors of one item
(unreadable file, refused layer, solver failure, a worker that died twice) are reported in its row.

Cache: a finished row is stored under ``sha256(lipdsl version, kind, spec text, weight bytes, options)``
(``Item.key``), so a rerun solves only what changed; rows that depend on the machine's load (a solver
``--timeout``, a lost worker) and input errors are not stored.

Executors: ``jobs`` local worker processes (``_LocalPool``: forkserver processes, SIGINT ignored, BLAS
pinned to one thread with threadpoolctl; a worker that dies is replaced and its item retried once), the
current process (``jobs=0``, for debugging), or a Dask ``distributed.Client``. Ctrl-C
(``KeyboardInterrupt``) stops the workers; the rows finished so far are returned (and cached).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from lipdsl.app.sweep_items import (  # noqa: F401 (the items' names, imported from here too)
    NPZ_SUFFIXES,
    ONNX_SUFFIXES,
    SPEC_SUFFIXES,
    TORCH_SUFFIXES,
    Item,
    Options,
    _cacheable,
    _names,
    default_jobs,
    expand,
    run_item,
)
from lipdsl.errors import LipdslError

__all__ = ["Item", "Options", "SweepResult", "expand", "run_item", "sweep", "default_jobs", "CSV_COLUMNS"]

#: Statuses that count as a bound (``lipdsl solve --method``'s ways of knowing a number).
OK_STATUSES = ("certified", "exact norm", "verified LMI")
#: Columns of ``SweepResult.to_csv`` (and of the table, with ``lower_bound`` only when computed).
CSV_COLUMNS = ("name", "path", "method", "status", "lipschitz", "lower_bound", "iterations", "item_seconds",
               "cached", "error")
#: How often a local item is started again after its worker process died.
RETRIES = 1
#: Items larger than this (bytes) are sent to a Dask cluster with ``Client.scatter`` before their task.
SCATTER_BYTES = 1 << 20


@dataclass(frozen=True)
class SweepResult:
    """The rows of a sweep in input order (dicts as ``lipdsl sweep --json``), and how they were obtained.

    ``solved``: items run by an executor in this call (items with the same content run once);
    ``cached``: rows read from the cache;
    ``interrupted``: Ctrl-C stopped the sweep (rows of items not finished have status ``not run``).
    """

    rows: tuple[dict, ...]
    solved: int = 0
    cached: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    options: Options = field(default_factory=Options)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    @property
    def bounds(self) -> list[float | None]:
        """Each item's upper bound (None where there is none), in input order."""
        return [r.get("lipschitz") for r in self.rows]

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self.rows]

    @property
    def ok(self) -> bool:
        """Every item has a bound (certified, for the dissipative method)."""
        return bool(self.rows) and all(r["status"] in OK_STATUSES for r in self.rows)

    @property
    def exit_code(self) -> int:
        """0: every item certified; 1: some item's input is bad (unreadable, unsupported); 3: otherwise some
        item failed or is not certified; 130: interrupted (Ctrl-C)."""
        if self.interrupted:
            return 130
        if self.ok:
            return 0
        return 1 if any(r["status"] == "error" for r in self.rows) else 3

    def records(self) -> list[dict]:
        """One flat dict per row with ``CSV_COLUMNS``."""
        return [{c: _flat(r.get(c)) for c in CSV_COLUMNS} for r in self.rows]

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The rows as CSV (``CSV_COLUMNS``); written to ``path`` if given. Returns the text."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records())
        if path is not None:
            Path(path).write_text(buf.getvalue(), encoding="utf-8")
        return buf.getvalue()

    def to_pandas(self):
        """A ``pandas.DataFrame`` of ``records()`` (pandas is not a dependency of lipdsl)."""
        try:
            import pandas
        except ImportError as exc:
            raise LipdslError("to_pandas needs pandas, which is not installed",
                              hint="pip install pandas, or use to_csv()") from exc
        return pandas.DataFrame(self.records(), columns=list(CSV_COLUMNS))


def _flat(v: Any) -> Any:
    return "" if v is None else v


# -- cache ---------------------------------------------------------------------------------------------------


class _Cache:
    """Rows by content key, one JSON file each (written atomically)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def get(self, key: str) -> dict | None:
        if self.directory is None:
            return None
        try:
            return json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, row: dict) -> None:
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(row), encoding="utf-8")
            os.replace(tmp, self.directory / f"{key}.json")
        except OSError:
            pass  # a cache that cannot be written only costs a re-solve next time


# -- executors -----------------------------------------------------------------------------------------------

Task = tuple[int, Item, Options]


#: Seconds between two progress messages of a worker (the first iteration of an item is always sent).
PROGRESS_EVERY = 0.5


def _reporting(send):
    """A ``solve.on_iteration`` hook that calls ``send(k)`` for iteration 1 and then at most every
    ``PROGRESS_EVERY`` seconds."""
    last = [-float("inf")]

    def hook(k: int) -> None:
        now = time.monotonic()
        if k == 1 or now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            send(k)

    return hook


def _serial(tasks: Sequence[Task], on_progress=None) -> Iterator[tuple[int, dict]]:
    from lipdsl.solvers.solve import on_iteration

    for index, item, options in tasks:
        hook = None if on_progress is None else _reporting(lambda k, name=item.name: on_progress(name, k))
        with on_iteration(hook):
            row = run_item(item, options)
        yield index, row


def _worker_main(conn) -> None:
    """A local worker: SIGINT ignored (the parent stops it), one BLAS thread; runs items until told so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from threadpoolctl import threadpool_limits

    from lipdsl.solvers.solve import on_iteration

    threadpool_limits(limits=1)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, item, options = task
        with on_iteration(_reporting(lambda k, name=item.name: conn.send(("iteration", name, k)))):
            row = run_item(item, options)
        conn.send(("done", index, row))


def _lost_row(item: Item, why: str) -> dict:
    return {"name": item.name, "path": item.path, "status": "lost", "lipschitz": None, "error": why}


class _LocalPool:
    """``jobs`` worker processes fed one item at a time over pipes; a worker that dies is replaced and its
    item started once more (``RETRIES``), then reported as ``lost``."""

    def __init__(self, jobs: int, on_progress=None) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("forkserver")
        # the forkserver imports the pipeline once; each worker forked from it starts warm
        preload = ["lipdsl.pipeline", "lipdsl.app.report", "lipdsl.lang.load"]
        self.ctx.set_forkserver_preload([__name__, *preload])
        self.jobs = jobs
        self.on_progress = on_progress
        self.workers: list[list] = []  # [process, conn, task or None]

    def _start(self) -> list:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child,), daemon=True, name="lipdsl-sweep-worker")
        proc.start()
        child.close()
        worker = [proc, parent, None]
        self.workers.append(worker)
        return worker

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, dict]]:
        from multiprocessing.connection import wait

        pending = deque(tasks)
        tries: dict[int, int] = {}
        try:
            for _ in range(min(self.jobs, len(pending))):
                self._start()
            while pending or any(w[2] is not None for w in self.workers):
                for w in self.workers:
                    if w[2] is None and pending:
                        w[2] = pending.popleft()
                        try:
                            w[1].send(w[2])
                        except OSError:
                            pass  # the worker died: its sentinel says so below
                busy = [w for w in self.workers if w[2] is not None]
                ready = wait([w[1] for w in busy] + [w[0].sentinel for w in busy])
                for w in busy:
                    if w[1] in ready:
                        try:
                            kind, index, row = w[1].recv()
                        except (EOFError, OSError):
                            pass  # died: handled below with its sentinel
                        else:
                            if kind == "iteration":  # (name, k) of the running item
                                if self.on_progress is not None:
                                    self.on_progress(index, row)
                                continue
                            w[2] = None
                            yield index, row
                            continue
                    if w[2] is not None and (w[0].sentinel in ready or not w[0].is_alive()):
                        w[0].join(timeout=5)
                        index, item, options = w[2]
                        self.workers.remove(w)
                        w[1].close()
                        tries[index] = tries.get(index, 0) + 1
                        if tries[index] <= RETRIES:
                            pending.appendleft(w[2])
                        else:
                            why = (f"the worker process died (exit code {w[0].exitcode}) {tries[index]} "
                                   "times while solving this item")
                            yield index, _lost_row(item, why)
                        if pending:
                            self._start()
        finally:
            self.close()

    def close(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones (interrupted) are terminated."""
        for proc, conn, task in self.workers:
            try:
                if task is None:
                    conn.send(None)
                else:
                    proc.terminate()
            except OSError:
                proc.terminate()
        for proc, conn, _ in self.workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            conn.close()
        self.workers = []


def _dask_item(item: Item, options: Options, topic: str | None) -> dict:
    """``run_item`` as a Dask task; with a ``topic``, the solver's iterations are logged as events on it."""
    if topic is None:
        return run_item(item, options)
    from distributed import get_worker

    from lipdsl.solvers.solve import on_iteration

    worker = get_worker()
    with on_iteration(_reporting(lambda k: worker.log_event(topic, (item.name, k)))):
        return run_item(item, options)


def _dask(tasks: Sequence[Task], client, keys: dict[int, str],
          on_progress=None) -> Iterator[tuple[int, dict]]:
    """Items as tasks on a Dask cluster (the scheduler reschedules the task of a worker that dies); the
    running items' iterations come back as events on a topic of this sweep's own."""
    import uuid

    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    topic = None
    if on_progress is not None:
        topic = f"lipdsl-sweep-{run}"
        client.subscribe_topic(topic, lambda event: on_progress(*event[1]))
    futures = {}
    for index, item, options in tasks:
        # small items travel inside the task; large ones are scattered first (Dask warns of large graphs)
        size = sum(len(data) for _, data in item.files) + len(item.text)
        payload = item if size < SCATTER_BYTES else client.scatter(item, hash=False)
        fut = client.submit(_dask_item, payload, options, topic,
                            key=f"lipdsl-{keys[index][:16]}-{run}-{index}", pure=False, retries=RETRIES)
        futures[fut] = (index, item)
    try:
        for fut in as_completed(list(futures)):
            index, item = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, CommClosedError...: reported in the row
                row = _lost_row(item, f"the cluster lost this item: {type(exc).__name__}: {exc}")
            yield index, row
    finally:
        client.cancel([f for f in futures if not f.done()])
        if topic is not None:
            client.unsubscribe_topic(topic)


# -- the sweep -----------------------------------------------------------------------------------------------


def sweep(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    like: str | os.PathLike | None = None,
    *,
    jobs: int | None = None,
    client=None,
    cache: str | os.PathLike | bool | None = True,
    on_row: Callable[[dict, int, int], None] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
    **options,
) -> SweepResult:
    """Bound every network in ``paths``: ``.lip`` specs, ``.onnx`` models, or weight files with ``like``.

    Parameters
    ----------
    paths : path or sequence of paths
        The inputs (see ``expand``).
    like : path, optional
        An architecture spec whose weight keys each ``.npz`` / PyTorch state_dict in ``paths`` fills.
    jobs : int, optional
        Local worker processes (default: ``default_jobs()``); 0 runs the items in this process.
    client : distributed.Client, optional
        Run the items on this Dask cluster instead (``jobs`` is then ignored).
    cache : path, bool or None
        The cache directory; True: ``.lipdsl-cache`` beside the first input; False/None: no cache.
    on_row : callable, optional
        Called as ``on_row(row, done, total)`` whenever an item finishes (cached ones first).
    on_progress : callable, optional
        Called as ``on_progress(name, k)`` while item ``name`` is at CVXOPT iteration ``k`` (at its first
        iteration, then at most every ``PROGRESS_EVERY`` seconds; on a Dask cluster from the client's
        event thread, as the events arrive).
    **options
        ``Options`` fields: ``method``, ``solver``, ``tol``, ``max_iterations``, ``length``, ``lift``,
        ``max_lmi``, ``timeout`` (per item), ``frequencies``, ``accept_unconverged``, ``force``,
        ``allow_outside``, ``lower`` (also the empirical lower bound), ``lower_starts``, ``time_budget``,
        ``seed``.

    Returns
    -------
    SweepResult
        Rows in input order; ``interrupted`` if Ctrl-C stopped it (finished rows kept and cached).

    Raises
    ------
    LipdslError
        The architecture spec ``like`` is unreadable, or an option is invalid.
    """
    t0 = time.perf_counter()
    names = {f.name for f in fields(Options)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown sweep option(s): {', '.join(unknown)}; expected some of "
                        f"{', '.join(sorted(names))}")
    opts = Options(**options)
    from lipdsl.methods import METHODS

    if opts.method not in METHODS:
        raise LipdslError(f"unknown method {opts.method!r}", hint=f"one of {', '.join(METHODS)}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    items = expand(paths, like, allow_outside=opts.allow_outside)
    if cache is True:
        first = Path(paths[0]) if paths else Path(".")
        cache_dir = first.parent / ".lipdsl-cache"
    elif cache:
        cache_dir = Path(cache)
    else:
        cache_dir = None
    store = _Cache(cache_dir)
    keys = {i: item.key(opts) for i, item in enumerate(items)}
    rows: list[dict | None] = [None] * len(items)
    done = 0
    tasks: list[Task] = []
    n_cached = 0

    def finish(index: int, row: dict, from_cache: bool = False) -> None:
        nonlocal done
        row["cached"] = from_cache
        row.setdefault("method", opts.method)
        rows[index] = row
        done += 1
        if on_row is not None:
            on_row(row, done, len(items))

    first: dict[str, int] = {}  # key -> the item that is run for it
    copies: dict[int, list[int]] = {}  # that item -> the items with the same content
    for i, item in enumerate(items):
        hit = None if item.error is not None else store.get(keys[i])
        if hit is not None:
            hit.update(name=item.name, path=item.path)
            n_cached += 1
            finish(i, hit, True)
        elif item.error is not None:
            finish(i, run_item(item, opts))
        elif keys[i] in first:  # the same content as an earlier item (a copy): solved once
            copies.setdefault(first[keys[i]], []).append(i)
        else:
            first[keys[i]] = i
            tasks.append((i, item, opts))
    interrupted = False
    if client is not None:
        results: Iterable[tuple[int, dict]] = _dask(tasks, client, keys, on_progress)
    elif jobs == 0 or not tasks:
        results = _serial(tasks, on_progress)
    else:
        results = _LocalPool(min(jobs or default_jobs(), len(tasks)), on_progress).run(tasks)
    solved = 0
    try:
        for index, row in results:
            if _cacheable(row, opts):
                store.put(keys[index], row)
            solved += 1
            finish(index, row)
            for j in copies.get(index, ()):
                finish(j, {**row, "name": items[j].name, "path": items[j].path})
    except KeyboardInterrupt:
        interrupted = True
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # runs the executors' finally: workers stopped, cluster tasks cancelled
    final = tuple(
        row if row is not None else {"name": item.name, "path": item.path, "method": opts.method,
                                     "status": "not run", "lipschitz": None, "cached": False,
                                     "error": "interrupted before this item finished"}
        for row, item in zip(rows, items)
    )
    return SweepResult(final, solved=solved, cached=n_cached, interrupted=interrupted,
                       seconds=time.perf_counter() - t0, options=opts)

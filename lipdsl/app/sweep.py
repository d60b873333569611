"""Sweep many checkpoints: inputs -> SweepResult (items as bytes, content-keyed cache, executors, one table).

An *item* is one network to bound, carried as bytes so that a worker needs no shared filesystem:

- a ``.lip`` spec: its text and the bytes of every weight file it names (``weights.weight_files``);
- ``--like arch.lip`` + a weight file: the architecture's text with its ``weights "..."`` lines pointing at
  the file, and the file's bytes (an ``.npz``, or a PyTorch ``state_dict`` read with
  ``torch.load(weights_only=True)`` on the worker);
- an ``.onnx`` model: its bytes (``importer.import_onnx`` on the worker).

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
import hashlib
import io
import json
import os
import posixpath
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from lipdsl.errors import LipdslError

__all__ = ["Item", "Options", "SweepResult", "expand", "run_item", "sweep", "default_jobs", "CSV_COLUMNS"]

#: Suffixes of the inputs a sweep understands.
SPEC_SUFFIXES = (".lip",)
NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
ONNX_SUFFIXES = (".onnx",)
#: Statuses that count as a bound (``lipdsl solve --method``'s ways of knowing a number).
OK_STATUSES = ("certified", "exact norm", "verified LMI")
#: Columns of ``SweepResult.to_csv`` (and of the table, with ``lower_bound`` only when computed).
CSV_COLUMNS = ("name", "path", "method", "status", "lipschitz", "lower_bound", "iterations", "item_seconds",
               "cached", "error")
#: How often a local item is started again after its worker process died.
RETRIES = 1
#: Items larger than this (bytes) are sent to a Dask cluster with ``Client.scatter`` before their task.
SCATTER_BYTES = 1 << 20
#: Seconds an item may take beyond its solver's ``--timeout`` when it runs in a child process (Dask).
CHILD_GRACE = 60.0


@dataclass(frozen=True)
class Options:
    """What is done to every item (all of it goes into the cache key); as ``lipdsl solve``'s options."""

    method: str = "dissipative"
    solver: str = "cvxopt"
    tol: float = 1e-7
    max_iterations: int = 100
    length: int | None = None
    lift: int = 1
    max_lmi: int | None = 4000
    timeout: float | None = None
    frequencies: int | str | None = "auto"
    accept_unconverged: bool = False
    force: bool = False
    allow_outside: bool = False
    lower: bool = False
    lower_starts: int = 16
    time_budget: float = 10.0
    seed: int = 0


@dataclass(frozen=True)
class Item:
    """One network of a sweep, in bytes.

    ``kind``: ``spec`` (``text`` with ``files``: weight files by ``weights.memory_key``), ``state_dict``
    (``text`` is the architecture retargeted at ``files[0]``'s name, an ``.npz`` once converted), ``onnx``
    (``files[0]`` is the model). ``error``: why the item could not be read (it is then not run).
    """

    name: str
    path: str
    kind: str
    text: str = ""
    spec_path: str = ""
    files: tuple[tuple[str, bytes], ...] = ()
    error: str | None = None

    def key(self, options: Options) -> str:
        """sha256 of the content: lipdsl version, kind, spec text, weight files (name and bytes), options."""
        from lipdsl import __version__

        h = hashlib.sha256()
        head = {"lipdsl": __version__, "kind": self.kind, "text": self.text, "options": asdict(options)}
        h.update(json.dumps(head, sort_keys=True).encode())
        for name, data in self.files:
            h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()


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


# -- items ---------------------------------------------------------------------------------------------------


def default_jobs() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _read(path: Path, what: str) -> tuple[bytes | None, str | None]:
    """The bytes of ``path`` (at most ``weights.MAX_WEIGHT_BYTES``), or None and why not."""
    from lipdsl.lang.weights import MAX_WEIGHT_BYTES

    try:
        size = path.stat().st_size
        if not path.is_file():
            return None, f"{what} {str(path)!r} is not a file"
        if size > MAX_WEIGHT_BYTES:
            return None, (f"{what} {str(path)!r} has {size / 2**30:.1f} GiB, more than lipdsl reads "
                          f"({MAX_WEIGHT_BYTES / 2**30:.0f} GiB)")
        return path.read_bytes(), None
    except OSError as exc:
        return None, f"cannot read {what} {str(path)!r}: {exc.strerror or exc}"


def _names(paths: Sequence[str]) -> list[str]:
    """Item names: file stems, or the paths themselves where two stems clash."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths)]


def expand(paths: Sequence[str | os.PathLike], like: str | os.PathLike | None = None, *,
           allow_outside: bool = False) -> list[Item]:
    """The items of a sweep, read into memory: ``.lip`` specs and ``.onnx`` models, or weight files
    (``.npz``, PyTorch ``.pt``/``.pth``/``.bin``/``.ckpt`` state_dicts) with the architecture spec ``like``.

    An input that cannot be read becomes an Item with ``error`` set (reported in its row, not run).

    Raises
    ------
    LipdslError
        The architecture spec ``like`` cannot be read or parsed (``err.source`` set): no item could run.
    """
    from lipdsl.lang.parse import parse
    from lipdsl.lang.source import Source

    paths = [str(p) for p in paths]
    names = _names(paths)
    arch = tree = None
    if like is not None:
        try:
            arch = Source.read(like)
        except OSError as exc:
            err = LipdslError(f"cannot read architecture spec {str(like)!r}: {exc.strerror or exc}")
            err.source = None
            raise err from None
        try:
            tree = parse(arch)
        except LipdslError as err:
            err.source = arch
            raise
    items = []
    for name, p in zip(names, paths):
        suffix = Path(p).suffix.lower()
        if like is not None:
            items.append(_like_item(name, p, suffix, arch, tree, allow_outside))
        elif suffix in SPEC_SUFFIXES:
            items.append(_spec_item(name, p, allow_outside))
        elif suffix in ONNX_SUFFIXES:
            data, why = _read(Path(p), "model file")
            items.append(Item(name, p, "onnx", files=((Path(p).name, data),) if data is not None else (),
                              error=why))
        elif suffix in NPZ_SUFFIXES + TORCH_SUFFIXES:
            items.append(Item(name, p, "spec", error=f"{p!r} holds weights only; its architecture is not in "
                              "it (pass --like ARCH.lip, a spec whose weight keys name its tensors)"))
        else:
            items.append(Item(name, p, "spec", error=f"{p!r} is not a .lip spec, an .onnx model, or (with "
                              "--like) an .npz or PyTorch state_dict"))
    return items


def _like_item(name: str, p: str, suffix: str, arch, tree, allow_outside: bool) -> Item:
    if suffix not in NPZ_SUFFIXES + TORCH_SUFFIXES:
        return Item(name, p, "spec", error=f"{p!r}: with --like, inputs are .npz files or PyTorch "
                    f"state_dicts ({', '.join(TORCH_SUFFIXES)}), got {suffix or 'no suffix'!r}")
    data, why = _read(Path(p), "weight file")
    if data is None:
        return Item(name, p, "spec", error=why)
    from lipdsl.importers.pytorch import retarget_weights

    from lipdsl.lang import ast

    weights = Path(p).stem + ".npz"
    text = retarget_weights(arch.text, tree, weights)
    kind = "spec" if suffix in NPZ_SUFFIXES else "state_dict"
    # tensors the architecture takes from files of its own ("extra.npy", "f.npz":key) travel along
    defaults = {st.path for st in tree.body if isinstance(st, ast.Weights)}
    others, why = _weight_bytes(arch, tree, allow_outside, skip=defaults | {weights})
    if why is not None:
        return Item(name, p, kind, text, arch.path, error=why)
    return Item(name, p, kind, text, arch.path, ((weights, data),) + others)


def _spec_item(name: str, p: str, allow_outside: bool) -> Item:
    from lipdsl.lang.parse import parse
    from lipdsl.lang.source import Source

    data, why = _read(Path(p), "spec")
    if data is None:
        return Item(name, p, "spec", error=why)
    source = Source(p, data.decode("utf-8", errors="replace"))
    try:
        tree = parse(source)
    except LipdslError:
        return Item(name, p, "spec", source.text, p)  # the worker parses again and reports the error
    files, why = _weight_bytes(source, tree, allow_outside)
    return Item(name, p, "spec", source.text, p, files, error=why)


def _weight_bytes(source, tree, allow_outside: bool, skip=frozenset()):
    """The bytes of the weight files the spec ``tree`` names (but ``skip``), by ``weights.memory_key``, or
    ``((), why)`` if one cannot be read. Files the worker's check refuses (outside the spec's directory
    without ``allow_outside``) or will not find are left out: its message says why."""
    from lipdsl.lang.weights import memory_key, weight_files

    files = []
    for rel in weight_files(tree):
        if rel in skip:
            continue
        if not allow_outside and (os.path.isabs(rel) or rel.startswith("~")
                                  or posixpath.normpath(rel.replace(os.sep, "/")).split("/")[0] == ".."):
            continue
        target = source.directory / os.path.expanduser(rel)
        if not target.is_file():
            continue
        blob, why = _read(target, "weight file")
        if blob is None:
            return (), why
        files.append((memory_key(rel), blob))
    return tuple(files), None


# -- one item (runs on a worker) -----------------------------------------------------------------------------


def _network(item: Item, options: Options):
    """(Source or None, typed.Network) of ``item``, from its bytes only."""
    from lipdsl.lang.load import check_source
    from lipdsl.lang.source import Source

    if item.kind == "onnx":
        from lipdsl.importers.importer import import_onnx

        return None, import_onnx(item.files[0][1], name=item.name).to_network()
    files = dict(item.files)
    if item.kind == "state_dict":
        import numpy as np

        from lipdsl.importers.spec import sanitize_key

        from lipdsl.importers.pytorch import load_state_dict

        (weights, blob), = item.files
        tensors = load_state_dict(io.BytesIO(blob), shown=item.path)
        keys: dict[str, Any] = {}
        for k, v in tensors.items():
            keys.setdefault(sanitize_key(k), v)
        buf = io.BytesIO()
        np.savez(buf, **keys)
        files = {weights: buf.getvalue()}
    source = Source(item.spec_path or item.path, item.text)
    return source, check_source(source, allow_outside=options.allow_outside, files=files)


def run_item(item: Item, options: Options) -> dict:
    """Bound one item; never raises for the item's own problems: they are its row's ``status`` and ``error``.

    Status: ``certified`` (or a baseline's ``exact norm`` / ``verified LMI``), ``not certified``, ``failed``
    (solver failure, limit, timeout), ``refused``/``skipped`` (a baseline that does not apply), ``error``
    (the input: unreadable, unsupported), ``crashed`` (a bug in lipdsl, with the exception's text).
    """
    from threadpoolctl import threadpool_limits

    t0, c0 = time.perf_counter(), time.process_time()
    if options.timeout is not None and threading.current_thread() is not threading.main_thread():
        row = _run_in_child(item, options)  # a Dask worker's thread: the solver's alarm needs a main thread
    else:
        with threadpool_limits(limits=1):  # items run side by side: one BLAS thread each
            row = _run_item(item, options)
    row.update(name=item.name, path=item.path, item_seconds=time.perf_counter() - t0,
               item_cpu_seconds=time.process_time() - c0)
    row.setdefault("method", options.method)
    row.setdefault("lipschitz", None)
    return row


def _run_in_child(item: Item, options: Options) -> dict:
    """``_run_item`` in a child Python process (its main thread), for ``--timeout`` on a worker thread.

    The child is killed if it outlives the solver's timeout by ``CHILD_GRACE`` seconds (start-up, lowering,
    certification); its row then says so.
    """
    import pickle
    import subprocess
    import sys

    code = f"from {__name__} import _child_main; _child_main()"
    try:
        done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((item, options)),
                              capture_output=True, timeout=options.timeout + CHILD_GRACE)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"the item did not finish within --timeout "
                f"{options.timeout:g} s (+ {CHILD_GRACE:g} s for the rest of the pipeline)"}
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {"status": "crashed",
                "error": f"the item's process exited with code {done.returncode}: {tail[0]}"}
    return pickle.loads(done.stdout)  # our own child's output


def _child_main() -> None:
    """Entry of ``_run_in_child``'s process: (item, options) pickled on stdin -> the row pickled on stdout."""
    import pickle
    import sys

    from threadpoolctl import threadpool_limits

    item, options = pickle.loads(sys.stdin.buffer.read())
    out, sys.stdout = sys.stdout, sys.stderr  # anything printed while solving must not corrupt the row
    with threadpool_limits(limits=1):
        row = _run_item(item, options)
    out.buffer.write(pickle.dumps(row))


def _run_item(item: Item, options: Options) -> dict:
    if item.error is not None:
        return {"status": "error", "error": item.error}
    source = None
    try:
        source, net = _network(item, options)
        row = _method(net, options, source)
        if options.lower and row.get("lipschitz") is not None:
            from lipdsl.baselines.empirical import lower_bound

            lb = lower_bound(net, starts=options.lower_starts, seed=options.seed,
                             time_budget=options.time_budget, length=options.length)
            row["lower_bound"] = lb.value
        return row
    except LipdslError as err:
        status = "failed" if err.exit_code == 3 else "error"
        row = {"status": status, "error": err.render(getattr(err, "source", None) or source)}
        if getattr(err, "result", None) is not None:  # unconverged: the report, without a bound
            from lipdsl.app.report import to_json

            row = {**to_json(err.result), **row, "lipschitz": None}
        return row
    except Exception as exc:  # noqa: BLE001 - one item's bug must not stop the sweep: reported in its row
        return {"status": "crashed", "error": f"{type(exc).__name__}: {exc}"}


def _method(net, options: Options, source) -> dict:
    """The row of ``options.method`` on ``net`` from ``compare.run_method`` (the one method dispatcher):
    ``solve --json``'s keys for the dissipative method, ``solve --method M --json``'s for a baseline.

    Raises
    ------
    LipdslError
        The error behind a failed method (``_run_item`` reports it), except a refusal: a row ``refused``.
    """
    from lipdsl.methods import run_method
    from lipdsl.app.report import baseline_to_json, to_json

    r = run_method(
        net, options.method, length=options.length, solver=options.solver, lift=options.lift,
        force=options.force, timeout=options.timeout, tol=options.tol, max_iterations=options.max_iterations,
        max_lmi=options.max_lmi, accept_unconverged=options.accept_unconverged,
        frequencies=options.frequencies,
    )
    if r.error is not None and r.status != "refused":
        raise r.error
    dissipative = options.method == "dissipative" and r.result is not None
    row = to_json(r.result) if dissipative else baseline_to_json(net, options.method, r)
    row["status"] = r.status
    if not r.ok:
        row["error"] = r.error.render(source) if r.error is not None else f"{r.status}: {r.note}"
    return row


def _cacheable(row: dict, options: Options) -> bool:
    """Rows that the same content always gives: not those a timeout or a lost worker decided, nor crashes;
    nor input errors (cheap to find again, and some depend on what is installed, e.g. torch or onnx)."""
    if row["status"] in ("crashed", "lost", "not run", "error"):
        return False
    return not (row["status"] == "failed" and options.timeout is not None)


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

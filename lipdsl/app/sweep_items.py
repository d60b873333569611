"""Sweep items: paths -> ``Item`` (a network as bytes: spec text and weight files, or an ONNX model), and one
item with its ``Options`` -> one row (the network rebuilt from the bytes, its method run; in a child process
where a solver timeout must hold)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from lipdsl.errors import LipdslError
from lipdsl.importers.retarget import Retargeted


#: Suffixes of the inputs a sweep understands.
SPEC_SUFFIXES = (".lip",)
NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
ONNX_SUFFIXES = (".onnx",)


#: Seconds an item may take beyond its solver's ``--timeout`` when it runs in a child process (Dask).
CHILD_GRACE = 60.0


@dataclass(frozen=True)
class Options:
    """What is done to every item (all of it goes into the cache key); as ``lipdsl solve``'s options."""

    method: str = "dissipative"
    solver: str = "cvxopt"
    tol: float | None = None  # (None: lipdsl solve's default for the form solved)
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
    (``text`` is the architecture retargeted at ``files[0]``'s name, an ``.npz`` once converted; the other
    ``files`` are those the architecture names itself), ``onnx`` (``files[0]`` is the model, its external
    data read in). ``like``: for
    an item of ``--like``, the architecture and how ``text`` was made from it (its errors are reported at
    the architecture's lines). ``error``: why the item could not be read (it is then not run).
    """

    name: str
    path: str
    kind: str
    text: str = ""
    spec_path: str = ""
    files: tuple[tuple[str, bytes], ...] = ()
    error: str | None = None
    like: Retargeted | None = None

    def key(self, options: Options) -> str:
        """sha256 of the content: lipdsl version, kind, spec text, weight files (name and bytes), options."""
        from lipdsl import __version__

        h = hashlib.sha256()
        head = {"lipdsl": __version__, "kind": self.kind, "text": self.text, "options": asdict(options)}
        h.update(json.dumps(head, sort_keys=True).encode())
        for name, data in self.files:
            h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()


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


def _model_bytes(path: Path) -> tuple[bytes | None, str | None]:
    """An ONNX model's bytes, self-contained (its external data files read in from its folder, as ``lipdsl
    import`` reads them: ``onnx_file.model_bytes``), or None and why not."""
    from lipdsl.importers.onnx_file import model_bytes

    try:
        return model_bytes(path), None
    except LipdslError as err:
        return None, err.render()


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
        The architecture spec ``like`` cannot be read or parsed, or names two weights files (``err.source``
        set): no item could run.
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
            Retargeted.of(arch, tree, "x.npz")  # (refuses an architecture no checkpoint can be put in)
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
            data, why = _model_bytes(Path(p))
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
    from lipdsl.lang import ast

    weights = Path(p).stem + ".npz"
    like = Retargeted.of(arch, tree, weights)
    kind = "spec" if suffix in NPZ_SUFFIXES else "state_dict"
    # tensors the architecture takes from files of its own ("extra.npy", "f.npz":key) travel along
    defaults = {st.path for st in tree.body if isinstance(st, ast.Weights)}
    others, why = _weight_bytes(arch, tree, allow_outside, skip=defaults | {weights})
    if why is not None:
        return Item(name, p, kind, like.text, arch.path, error=why, like=like)
    return Item(name, p, kind, like.text, arch.path, ((weights, data),) + others, like=like)


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
    from lipdsl.lang.weights import leaves_directory, memory_key, weight_files

    files = []
    for rel in weight_files(tree):
        if rel in skip:
            continue
        if not allow_outside and (os.path.isabs(rel) or rel.startswith("~") or leaves_directory(rel)):
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
    """(Source or None, typed.Network, warnings) of ``item``, from its bytes only; the warnings: a --like
    checkpoint's tensors the architecture never reads (``_unread``)."""
    from lipdsl.lang.load import check_source
    from lipdsl.lang.source import Source

    if item.kind == "onnx":
        from lipdsl.importers.importer import import_onnx

        return None, import_onnx(item.files[0][1], name=item.name).to_network(), []
    files = dict(item.files)
    keys = None  # (a state_dict item's tensors, for _unread)
    if item.kind == "state_dict":
        import numpy as np

        from lipdsl.importers.pytorch import load_state_dict, spec_tensors
        from lipdsl.lang.parse import parse
        from lipdsl.lang.weights import tensor_refs

        # the state_dict fills the architecture's default weight keys (as import --like); files the
        # architecture names itself ("extra.npy", "f.npz":key) come after it and keep their tensors
        weights, blob = item.files[0]
        checkpoint = f"the checkpoint {Path(item.path).name!r}"
        try:  # (the tensors the architecture reads: a weight-norm pair it does not read is not refused)
            keys = spec_tensors(load_state_dict(io.BytesIO(blob), shown=item.path),
                                tensor_refs(parse(item.like.arch)), checkpoint)
        except LipdslError as err:
            if err.span is not None:  # (a place in the architecture spec)
                err.source = item.like.arch
            raise
        buf = io.BytesIO()
        np.savez(buf, **keys)
        files[weights] = buf.getvalue()
    source = Source(item.spec_path or item.path, item.text)
    try:
        net = check_source(source, allow_outside=options.allow_outside, files=files)
    except LipdslError as err:
        if item.like is None:
            raise
        # reported at the architecture's lines; a tensor of a .pt item's .npz is one of the checkpoint
        checkpoint = f"the checkpoint {Path(item.path).name!r}" if item.kind == "state_dict" else None
        raise item.like.locate(err, checkpoint=checkpoint) from None
    return source, net, _unread(item, net, files, keys)


def _unread(item: Item, net, files: dict, tensors: dict | None) -> list[str]:
    """The warning (a list of one, or empty) when a ``--like`` item's checkpoint holds tensors the
    architecture never reads (``pytorch.unread_tensors``, as ``import --like`` warns); ``tensors``: a
    state_dict item's, else the ``.npz`` is read lazily."""
    if item.like is None:
        return []
    import numpy as np

    from lipdsl.importers.pytorch import unread_tensors, unread_warning

    weights = item.files[0][0]
    if tensors is not None:
        unread = unread_tensors(net, weights, tensors)
    else:
        with np.load(io.BytesIO(files[weights]), allow_pickle=False) as data:
            unread = unread_tensors(net, weights, data)
    return [unread_warning(unread, f"the checkpoint {Path(item.path).name!r}")] if unread else []


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
        from lipdsl.lang.check import require_length

        source, net, unread = _network(item, options)
        try:
            require_length(net, options.length, "--length")
        except LipdslError as err:  # the rule of every command; in a sweep the length is every item's
            err.hint = (f"{err.hint}; a sweep's --length applies to every item: sweep the specs of fixed "
                        "length in a run without it")
            raise
        row = _method(net, options, source)
        if unread:
            row["warnings"] = unread + list(row.get("warnings") or [])
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

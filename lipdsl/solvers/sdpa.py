"""Export the SDP in SDPA sparse format: Sdp -> .dat-s text (from lipdsl's own LMIs); read it back, solve it.

SDPA's primal problem is the LMI form

    minimize  c' x   subject to   sum_{i=1}^{m} F_i x_i - F_0 >= 0   (block diagonal, symmetric),

and lipdsl's LMIs are ``F(x) = F0 + sum_k x_k F_k >= 0``, so SDPA's ``F_i`` is our ``F_k`` (``i = k + 1``) and
SDPA's ``F_0`` is ``-F0``. Each LMI is one SDP block; the sign constraints ``x_k >= 0`` (``rho``, the
``lambda``, diagonal ``X``) form one LP (diagonal) block, written with a negative size, whose ``F_0`` is 0.
The objective is ``c = e_rho``, so the optimum is ``rho`` and the Lipschitz bound is
``L = sqrt(objective) * factor`` (``factor``: the layers' scales and pooling gains), stated in the file by the
one machine-readable comment line ``* bound = sqrt(objective) * <factor>``.

Entries are ``matno blkno i j value`` (1-based), upper triangle only (``i <= j``), one line per nonzero,
values in Python's shortest round-trip form (``repr``), sorted by matrix, block, row, column.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import scipy.sparse as sp

from lipdsl.errors import LipdslError, SolveError
from lipdsl.sdp.problem import Lmi, Sdp, Variable
from lipdsl.solvers.solution import nonneg_indices

BOUND_LINE = re.compile(r"^\* bound = sqrt\(objective\) \* (\S+)\s*$")


class SdpaFormatError(LipdslError):
    """A .dat-s file is not valid SDPA sparse format (as lipdsl writes it)."""


@dataclass(frozen=True)
class SdpaData:
    """The contents of a .dat-s file: ``min c'x  s.t.  sum_i F_i x_i - F_0 >= 0`` (blocks: >0 SDP, <0 LP).

    ``entries`` has one row ``(matno, blkno, i, j)`` (1-based, ``i <= j``) per nonzero, ``values`` its value.
    """

    m: int
    blocks: tuple[int, ...]
    c: np.ndarray
    entries: np.ndarray  # (nnz, 4) int64
    values: np.ndarray
    comments: tuple[str, ...]

    @property
    def nonzeros(self) -> int:
        return len(self.values)

    @property
    def factor(self) -> float | None:
        """The factor of the ``* bound = sqrt(objective) * <factor>`` line, if any."""
        for line in self.comments:
            match = BOUND_LINE.match(line)
            if match:
                return float(match.group(1))
        return None

    def matrix(self, matno: int, blkno: int) -> np.ndarray:
        """Dense symmetric ``F_matno`` on block ``blkno`` (both 1-based; an LP block as a diagonal matrix)."""
        n = abs(self.blocks[blkno - 1])
        sel = (self.entries[:, 0] == matno) & (self.entries[:, 1] == blkno)
        i, j = self.entries[sel, 2] - 1, self.entries[sel, 3] - 1
        M = np.zeros((n, n))
        M[i, j] = self.values[sel]
        M[j, i] = self.values[sel]
        return M

    def slack(self, x: np.ndarray, blkno: int) -> np.ndarray:
        """``sum_i F_i x_i - F_0`` on block ``blkno`` at ``x`` (length ``m``)."""
        n = abs(self.blocks[blkno - 1])
        sel = self.entries[:, 1] == blkno
        mat, i, j = self.entries[sel, 0], self.entries[sel, 2] - 1, self.entries[sel, 3] - 1
        coef = np.where(mat == 0, -1.0, np.concatenate([[0.0], np.asarray(x, float)])[mat])
        S = np.zeros((n, n))
        np.add.at(S, (i, j), coef * self.values[sel])
        off = i != j
        np.add.at(S, (j[off], i[off]), (coef * self.values[sel])[off])
        return S


@dataclass(frozen=True)
class SdpaSize:
    """What ``write_sdpa`` wrote: ``m`` variables, the block structure, nonzero entries, bytes."""

    m: int
    blocks: tuple[int, ...]
    nonzeros: int
    bytes: int


def _describe(v: Variable, sdp: Sdp) -> list[str]:
    """One comment per scalar entry of ``v``: which layer, which multiplier, which matrix entry."""
    out = []
    link = next((lk for lk in sdp.links if lk.system.name == v.system), None)
    layers = "+".join(link.system.layers) if link is not None else v.system
    if v.role == "rho":
        return [f"x{v.offset + 1} = rho: input supply weight rho*I; objective; bound = sqrt(rho) * factor"]
    if v.role == "P":
        what = f"P[{v.system}]: storage matrix of layer {layers} (symmetric {v.n}x{v.n})"
    elif v.role == "lambda":
        what = f"lambda[{v.system}]: activation multiplier of layer {layers} (Lambda = diag, >= 0)"
    elif v.role == "lambdainv":
        what = f"M[{v.system}] = Lambda^-1: inverse activation multiplier of layer {layers} (diagonal, > 0)"
    elif v.role == "Xinv":
        shape = "diagonal, > 0" if v.structure == "diagonal" else f"symmetric {v.n}x{v.n}, > 0"
        what = f"Y[{v.system}] = X^-1: inverse of the output supply weight of layer {layers} ({shape})"
    else:
        shape = "diagonal, >= 0" if v.structure == "diagonal" else f"symmetric {v.n}x{v.n}"
        what = f"X[{v.system}]: output supply weight of layer {layers} ({shape})"
    if v.structure in ("vector", "diagonal"):
        idx = [(i, i) for i in range(v.n)]
    else:
        idx = list(zip(*np.triu_indices(v.n)))
    for k, (i, j) in enumerate(idx):
        entry = f"[{i + 1}]" if v.structure == "vector" else f"({i + 1},{j + 1})"
        out.append(f"x{v.offset + k + 1} = {v.name}{entry}" + (f"  -- {what}" if k == 0 else ""))
    return out


def _block_comment(lmi: Lmi, sdp: Sdp) -> str:
    parts = ", ".join(f"{label} {size}" for label, size in lmi.blocks)
    link = next((lk for lk in sdp.links if lk.lmi is lmi), None)
    if link is None:
        return f"{lmi.name}: {lmi.size}x{lmi.size} ({parts}), side condition"
    w_in = link.w_in
    weight = {"rho": "rho*I", "const": "constant"}.get(w_in.kind, w_in.variable.name if w_in.variable else "")
    if w_in.kind == "var" and w_in.kron > 1:
        weight += f" kron I_{w_in.kron} (after flatten)"
    w_out = "constant" if link.w_out.kind == "const" else link.w_out.variable.name
    return (f"{lmi.name}: {lmi.size}x{lmi.size} ({parts}); dissipation inequality of layer "
            f"{'+'.join(link.system.layers)}\n    with input weight {weight}, output weight {w_out}")


def _upper(M: sp.coo_matrix | np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upper triangle of ``(M + M')/2`` for columns ``vec`` (m^2 x n, column-major): (col, i, j, value)."""
    C = sp.coo_matrix(M)
    r, k, v = C.row, C.col, C.data
    i, j = r % m, r // m
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    v = np.where(i == j, v, v / 2)
    S = sp.coo_matrix((v, (k * m + lo, hi)), shape=(C.shape[1] * m, m)).tocsr()
    S.sum_duplicates()
    S.eliminate_zeros()
    S = S.tocoo()
    return S.row // m, S.row % m, S.col, S.data


def sdpa_entries(sdp: Sdp) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Block structure, ``(matno, blkno, i, j)`` rows (1-based, sorted) and values of ``sdp`` in SDPA form.

    ``F_0 = -blockdiag(F0_1, ..., F0_p, 0)``, ``F_{k+1} = blockdiag(F_k on each LMI, e_q e_q' on the LP
    block where x_k is the q-th sign-constrained entry)``.
    """
    rows, vals = [], []
    blocks = []
    for b, lmi in enumerate(sdp.lmis, start=1):
        m = lmi.size
        blocks.append(m)
        k, i, j, v = _upper(lmi.G, m)
        rows.append(np.column_stack([k + 1, np.full_like(k, b), i + 1, j + 1]))
        vals.append(v)
        F0 = -lmi.F0.reshape(-1, 1, order="F")
        k, i, j, v = _upper(F0, m)
        rows.append(np.column_stack([np.zeros_like(k), np.full_like(k, b), i + 1, j + 1]))
        vals.append(v)
    nonneg = nonneg_indices(sdp)
    if len(nonneg):
        b = len(blocks) + 1
        blocks.append(-len(nonneg))
        q = np.arange(1, len(nonneg) + 1)
        rows.append(np.column_stack([nonneg + 1, np.full_like(q, b), q, q]))
        vals.append(np.ones(len(nonneg)))
    E = np.concatenate(rows).astype(np.int64)
    V = np.concatenate(vals)
    order = np.lexsort((E[:, 3], E[:, 2], E[:, 1], E[:, 0]))
    return tuple(blocks), E[order], V[order]


def write_sdpa(sdp: Sdp, path_or_file: str | os.PathLike | IO[str], *, spec_name: str | None = None,
               method: str = "dissipative", objective: np.ndarray | None = None) -> SdpaSize:
    """Write ``sdp`` as an SDPA sparse (.dat-s) file: ``min rho  s.t.  sum_k F_k x_k - (-F0) >= 0``.

    Parameters
    ----------
    sdp
        The SDP from ``build_sdp``.
    path_or_file
        A path, or an open text file.
    spec_name
        The spec's path, named in the header comments.
    method
        The method's name, for the header comments.

    Returns
    -------
    SdpaSize
        ``m``, block structure, number of nonzero entries and bytes written.
    """
    blocks, E, V = sdpa_entries(sdp)
    net = sdp.network
    out = io.StringIO()
    origin = f" from {spec_name}" if spec_name else ""
    c = [f"lipdsl SDPA sparse export of network {net.name!r}{origin}",
         f"method: {method} (layer-wise dissipativity SDP; Pauli, Gramlich, Allgower, L4DC 2023, Cor. 10)",
         "problem: minimize x1 = rho  s.t.  F_1 x_1 + ... + F_m x_m - F_0 >= 0 (block diagonal);",
         "  each SDP block is one lipdsl LMI F0 + sum_k x_k F_k >= 0 (so F_0 = -F0); the LP block: x_k >= 0",
         "  objective = rho, the SDPA primal optimum (solvers that report the dual form may print -rho)",
         f"bound = sqrt(objective) * {float(sdp.factor)!r}",
         "  (machine-readable line above: the l2 Lipschitz upper bound is sqrt(rho) * factor, factor =",
         "   layer scales and pooling gains; a bound only once the solver's point is checked by certify)"]
    for note in sdp.notes:
        c.append(f"note: {note}")
    c.append(f"blocks ({len(blocks)}):")
    for b, lmi in enumerate(sdp.lmis, start=1):
        c.append(f"  block {b}: {_block_comment(lmi, sdp)}")
    if blocks and blocks[-1] < 0:
        names = ", ".join(v.name for v in sdp.nonneg)
        c.append(f"  block {len(blocks)}: LP block of size {-blocks[-1]}: x >= 0 for {names}")
    c.append(f"variables (m = {sdp.n}; symmetric matrices stored as their upper triangle, row by row):")
    for v in sdp.variables:
        c.extend("  " + s for s in _describe(v, sdp))
    for line in "\n".join(c).splitlines():  # a comment may span lines: each gets its '*'
        out.write(f"* {line}\n")
    out.write(f"{sdp.n} = mDIM\n")
    out.write(f"{len(blocks)} = nBLOCK\n")
    out.write(" ".join(str(b) for b in blocks) + " = bLOCKsTRUCT\n")
    c = sdp.objective() if objective is None else objective  # (the solver's own: Sdp.solver_objective)
    out.write(" ".join(repr(float(v)) for v in c) + "\n")
    for (k, b, i, j), v in zip(E.tolist(), V.tolist()):
        out.write(f"{k} {b} {i} {j} {v!r}\n")
    text = out.getvalue()
    if hasattr(path_or_file, "write"):
        path_or_file.write(text)
    else:
        Path(path_or_file).write_text(text)
    return SdpaSize(sdp.n, blocks, len(V), len(text.encode()))


_SEPARATORS = str.maketrans("{}(),", "     ")


def _tokens(line: str) -> list[str]:
    """Whitespace-separated tokens, with SDPA's optional braces, parentheses and commas dropped."""
    return line.translate(_SEPARATORS).split()


def read_sdpa(path: str | os.PathLike) -> SdpaData:
    """Read a .dat-s file strictly: header, block sizes, ``c``, and every entry checked.

    Checks: ``mDIM``, ``nBLOCK`` and the block sizes are integers (sizes nonzero); ``c`` has ``m`` values;
    each entry has ``0 <= matno <= m``, ``1 <= blkno <= nBLOCK``, ``1 <= i <= j <= |size|`` (upper
    triangle: each symmetric entry once), ``i == j`` in LP blocks, a finite value, and no repeats.

    Raises
    ------
    SdpaFormatError
        The first violation, with its line number.
    """
    lines = Path(path).read_text().splitlines()
    comments = []
    n = 0
    while n < len(lines) and lines[n][:1] in ("*", '"'):
        comments.append(lines[n])
        n += 1

    def bad(msg: str, at: int):
        raise SdpaFormatError(f"{path}:{at + 1}: {msg}")

    def ints(at: int, count: int) -> list[int]:
        """The first ``count`` integers of line ``at`` (SDPA allows ``{``, ``}``, ``(``, ``)`` and commas)."""
        toks = _tokens(lines[at]) if at < len(lines) else []
        try:
            if len(toks) >= count:
                return [int(t) for t in toks[:count]]
        except ValueError:
            pass
        bad(f"expected {count} integer(s), got {lines[at] if at < len(lines) else 'end of file'!r}", at)

    (m,) = ints(n, 1)
    (nblocks,) = ints(n + 1, 1)
    blocks = tuple(ints(n + 2, nblocks))
    if m < 1 or nblocks < 1 or 0 in blocks:
        bad(f"expected m >= 1, nBLOCK >= 1 and nonzero block sizes, got m={m}, blocks={blocks}", n)
    try:
        c = np.array([float(t) for t in _tokens(lines[n + 3])])
    except (ValueError, IndexError):
        bad("expected the objective vector c", n + 3)
    if len(c) != m:
        bad(f"expected {m} values in c, got {len(c)}", n + 3)
    body = lines[n + 4:]
    E = np.zeros((len(body), 4), dtype=np.int64)
    V = np.zeros(len(body))
    for r, line in enumerate(body):
        at = n + 4 + r
        toks = line.split()
        if len(toks) != 5:
            bad(f"expected 'matno blkno i j value', got {line!r}", at)
        try:
            k, b, i, j = (int(t) for t in toks[:4])
            v = float(toks[4])
        except ValueError:
            bad(f"expected 'matno blkno i j value', got {line!r}", at)
        if not 0 <= k <= m:
            bad(f"matrix number {k} out of range 0..{m}", at)
        if not 1 <= b <= nblocks:
            bad(f"block number {b} out of range 1..{nblocks}", at)
        size = abs(blocks[b - 1])
        if not (1 <= i <= size and 1 <= j <= size):
            bad(f"entry ({i},{j}) outside block {b} of size {size}", at)
        if i > j:
            bad(f"entry ({i},{j}) below the diagonal: expected the upper triangle only", at)
        if blocks[b - 1] < 0 and i != j:
            bad(f"entry ({i},{j}) off the diagonal of LP block {b}", at)
        if not math.isfinite(v):
            bad(f"non-finite value {toks[4]!r}", at)
        E[r] = (k, b, i, j)
        V[r] = v
    if len(E):
        key = np.unique(E, axis=0, return_index=True, return_counts=True)
        if (key[2] > 1).any():
            first = int(np.sort(key[1][key[2] > 1])[0])
            bad(f"duplicate entry {tuple(E[first].tolist())}", n + 4 + first)
    return SdpaData(m, blocks, c, E, V, tuple(comments))


@dataclass(frozen=True)
class SdpaResult:
    """sdpa-python's answer for a .dat-s file, in SDPA's LMI form: ``objective = c'x`` at its primal ``x``."""

    objective: float
    x: np.ndarray
    status: str
    iterations: int
    seconds: float


def solve_sdpa_file(path: str | os.PathLike, *, tol: float = 1e-9, max_iterations: int = 100,
                    verbose: bool = False) -> SdpaResult:
    """Solve a .dat-s file with sdpa-python (``sdpap.importsdpa`` + ``sdpap.solve``, one thread).

    ``importsdpa`` turns the LMI form into sdpa-python's conic form, whose primal is SDPA's dual: its
    ``primalObj`` is ``-(c'x)`` and its dual vector ``y`` is the LMI form's ``x``, which is returned here.

    Raises
    ------
    SolveError
        sdpa-python is not installed, or returned no point.
    """
    try:
        import sdpap
    except ImportError as exc:
        raise SolveError("sdpa-python is not installed", hint="pip install sdpa-python") from exc
    with warnings.catch_warnings():
        # NOTE: importsdpa never closes its file; the ResourceWarning fires when it returns.
        warnings.simplefilter("ignore", ResourceWarning)
        A, b, c, K, J = sdpap.importsdpa(str(path))
    option = {"print": "display" if verbose else "no", "numThreads": 1, "maxIteration": int(max_iterations),
              "epsilonStar": float(tol), "epsilonDash": float(tol),
              "lowerBound": -1.0e30, "upperBound": 1.0e30}
    t0 = time.perf_counter()
    with warnings.catch_warnings(), _quiet_fds(not verbose):
        # sdpa-python recomputes feasibility errors with scipy eigs and warns on small blocks; the point is
        # judged by lipdsl's certificate, not by these diagnostics.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            out = sdpap.solve(A, b, c, K, J, option)
        except (ValueError, RuntimeError, ArithmeticError) as exc:
            raise SolveError(f"sdpa-python failed: {exc}") from exc
    if out is None:  # sdpa-python returns None when it rejects the cone data
        raise SolveError(f"sdpa-python refused the problem in {path}")
    _, y, info, _, sdpainfo = out
    seconds = time.perf_counter() - t0
    x = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=float).ravel()
    objective = float(np.asarray(b.toarray() if sp.issparse(b) else b).ravel() @ x) * -1.0
    return SdpaResult(objective, x, str(info["phasevalue"]), int(sdpainfo["iteration"]), seconds)


_FDS_LOCK = threading.Lock()


class _quiet_fds:
    """Send what C, C++ and Fortran code writes to fds 1 and 2 (SDPA's "Strange behavior" notes, ARPACK's
    messages from sdpa-python's eigenvalue checks) to a temporary file while active: a solver's chatter never
    reaches the user's terminal (the CLI prints the solver's status and lipdsl's own diagnostics). The text
    is kept in ``self.text``. One redirection at a time (a lock: the descriptors are the process's), and the
    C library's buffers are flushed before the descriptors are restored, so nothing leaks out later.
    """

    def __init__(self, active: bool):
        self.active = active
        self.text = ""

    def __enter__(self):
        if self.active:
            _FDS_LOCK.acquire()
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                self.sink = tempfile.TemporaryFile()
                self.saved = (os.dup(1), os.dup(2))
                os.dup2(self.sink.fileno(), 1)
                os.dup2(self.sink.fileno(), 2)
            except BaseException:
                _FDS_LOCK.release()
                raise
        return self

    def __exit__(self, *exc):
        if self.active:
            try:
                _flush_c_stdio()
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(self.saved[0], 1)
                os.dup2(self.saved[1], 2)
                for fd in self.saved:
                    os.close(fd)
                self.sink.seek(0)
                self.text = self.sink.read().decode(errors="replace")
                self.sink.close()
            finally:
                _FDS_LOCK.release()
        return False


def _flush_c_stdio() -> None:
    """``fflush(NULL)``: the C library's buffered output goes to the redirected descriptors now."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - no C library to flush
        pass


def solve_with_sdpa(sdp: Sdp, *, tol: float = 1e-9, max_iterations: int = 100,
                    verbose: bool = False) -> SdpaResult:
    """Write ``sdp`` to a temporary .dat-s file and solve it with ``solve_sdpa_file`` in a child process;
    ``x`` is lipdsl's x.

    The child (``python -m lipdsl.sdpa``) owns its stdout: SDPA's C++ messages never reach the caller's
    terminal (with ``verbose`` they go to stderr), the caller's fd 1 is never redirected (so concurrent
    calls from threads are safe), and the child is killed when the active deadline (``limits.current()``)
    passes (``TimeLimitError``).
    """
    from lipdsl import limits

    try:
        import sdpap  # noqa: F401 - the parent reports a missing solver as the in-process path did
    except ImportError as exc:
        raise SolveError("sdpa-python is not installed", hint="pip install sdpa-python") from exc
    deadline = limits.current()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problem.dat-s"
        out = Path(tmp) / "result.npz"
        objective = sdp.solver_objective() if hasattr(sdp, "solver_objective") else None
        write_sdpa(sdp, path, objective=objective)
        deadline.check("sdpa")
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        args = [sys.executable, "-m", "lipdsl.solvers.sdpa", str(path), str(out), repr(float(tol)),
                str(int(max_iterations)), "1" if verbose else "0"]
        timeout = None if deadline.seconds is None else max(deadline.remaining(), 0.01)
        try:
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=2 if verbose else subprocess.PIPE,
                                  stderr=2 if verbose else subprocess.PIPE, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise deadline.error("sdpa") from None
        if not out.exists():
            text = "" if verbose else (proc.stderr or b"").decode(errors="replace")
            detail = text.strip().splitlines()[-1:]
            raise SolveError(f"sdpa-python's process ended with code {proc.returncode} without an answer"
                             + (f": {detail[0]}" if detail else ""), hint="try --solver cvxopt")
        with np.load(out) as data:
            meta = json.loads(str(data["meta"]))
            if "error" in meta:
                raise SolveError(meta["error"], hint=meta.get("hint"))
            return SdpaResult(float(meta["objective"]), np.array(data["x"]), meta["status"],
                              int(meta["iterations"]), float(meta["seconds"]))


def solve_sdp(sdp: Sdp, *, tol: float, max_iterations: int, verbose: bool):
    """``--solver sdpa``: ``solve_with_sdpa`` -> Solution. SDPA's LMI form ``sum_k F_k x_k - F_0 >= 0`` has
    our ``x`` as its primal vector, so no mapping is needed."""
    from lipdsl.solvers.solution import Solution

    res = solve_with_sdpa(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose)
    return Solution(res.status, float(res.x[sdp.rho.offset]), res.x, "sdpa", res.seconds, res.iterations)


def _child(argv: list[str]) -> int:
    """``python -m lipdsl.solvers.sdpa PROBLEM.dat-s RESULT.npz TOL MAX_ITERATIONS VERBOSE``
    (``solve_with_sdpa``)."""
    path, out, tol, max_iterations, verbose = argv
    try:
        res = solve_sdpa_file(path, tol=float(tol), max_iterations=int(max_iterations),
                              verbose=verbose == "1")
        meta = {"objective": res.objective, "status": res.status, "iterations": res.iterations,
                "seconds": res.seconds}
        x = res.x
    except LipdslError as err:
        meta, x = {"error": err.message, "hint": err.hint}, np.zeros(0)
    np.savez(out, x=x, meta=np.array(json.dumps(meta)))
    return 0


__all__ = ["write_sdpa", "read_sdpa", "solve_sdpa_file", "solve_with_sdpa", "sdpa_entries", "SdpaData",
           "SdpaSize", "SdpaResult", "SdpaFormatError", "BOUND_LINE"]

if __name__ == "__main__":  # the child process of ``solve_with_sdpa``
    sys.exit(_child(sys.argv[1:]))

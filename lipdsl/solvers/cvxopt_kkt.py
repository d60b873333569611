"""CVXOPT's KKT systems for lipdsl's SDPs: (Sdp, NT scaling W) -> factor and solve, from the LMIs' low-rank
structure (unit terms, Gram products), with the block work shared among threads."""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from lipdsl import limits
from lipdsl.sdp.problem import Sdp
from lipdsl.solvers.cvxopt_cones import project

#: A block keeps all its factored terms on the general path below this many unit terms (``e_a e_b'``):
#: the unit path's bookkeeping does not pay on small LMIs.
UNIT_MIN = 64


#: Threads for the structured KKT solver's loops over LMI blocks (numpy's BLAS calls release the GIL), used
#: when the blocks hold at least ``THREAD_MIN_ENTRIES`` entries in all (e.g. 52 frequency LMIs of 128 rows);
#: 1 runs everything inline. Each thread sums its own share, and the shares are added in a fixed order,
#: so the result does not depend on the scheduling. None: two (at most the cores) when BLAS is pinned to
#: one thread (threadpoolctl's view: ``limits.blas_threads``, as ``solve_network`` does), else 1 -- a
#: multi-threaded BLAS already uses
#: the cores (at 32 channels the whole solve takes the same time either way), and both together
#: oversubscribe them (KKT solves 0.11 -> 0.19 s).
KKT_THREADS: int | None = None


THREAD_MIN_ENTRIES = 1 << 18


_pools: dict[int, ThreadPoolExecutor] = {}


_pools_lock = threading.Lock()


def kkt_threads() -> int:
    """``KKT_THREADS``, or its default rule (above) when it is None."""
    if KKT_THREADS is not None:
        return KKT_THREADS
    pinned = limits.blas_pinned()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(2, cores) if pinned else 1


def write_into(target, values: np.ndarray) -> None:
    """``target[:] = values`` for a one-column ``cvxopt.matrix``, through a numpy view of its buffer (CVXOPT's
    own slice assignment from an array costs ~15 ns an entry: 12 ms for a 32-channel net's ``z``)."""
    np.copyto(np.asarray(target)[:, 0], values)


def block_threads(sizes) -> int:
    """Threads for work shared out by LMI block (the KKT solver's loops, CVXOPT's cone operations): those of
    ``kkt_threads`` when the blocks of orders ``sizes`` hold at least ``THREAD_MIN_ENTRIES`` entries."""
    return kkt_threads() if np.sum(np.square(np.asarray(sizes, dtype=float))) >= THREAD_MIN_ENTRIES else 1


def thread_map(fn, items: list, threads: int) -> list:
    """``[fn(item) for item in items]``, on ``threads`` worker threads when more than one."""
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="lipdsl-kkt")
    return list(pool.map(fn, items))


def shutdown_pools() -> None:
    """Shut the worker pools of ``thread_map`` down (``limits.blas_threads`` does when its last user leaves;
    a later ``thread_map`` starts new ones)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=False)


def split_by_cost(costs: np.ndarray, parts: int) -> list[np.ndarray]:
    """Indices ``0 .. len(costs)-1`` in at most ``parts`` contiguous runs of about equal total cost."""
    if parts <= 1 or len(costs) <= 1:
        return [np.arange(len(costs))]
    edges = np.searchsorted(np.cumsum(costs), np.sum(costs) * np.arange(1, parts) / parts)
    return [run for run in np.split(np.arange(len(costs)), edges) if len(run)]


def _block(rows: np.ndarray, cols: np.ndarray):
    """The index of the submatrix ``[rows, cols]``: slices where both are contiguous ranges (an in-place
    update through slices is much cheaper than through ``np.ix_``)."""
    if np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1):
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    return np.ix_(rows, cols)


def _runs(index: np.ndarray) -> list[tuple[slice, slice]]:
    """The sorted ``index`` as runs of consecutive values: ``(positions in index, values)`` slice pairs."""
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, len(index)]
    return [(slice(int(a), int(b)), slice(int(index[a]), int(index[b - 1]) + 1))
            for a, b in zip(starts, ends)]


def _add_at(H: np.ndarray, rows: np.ndarray, cols: np.ndarray, X: np.ndarray) -> None:
    """``H[np.ix_(rows, cols)] += X`` for sorted ``rows``, ``cols``, one slice per pair of runs (far cheaper
    than the fancy-indexed update when they are a few ranges, e.g. a frequency LMI's weights and
    multipliers)."""
    for pr, hr in _runs(rows):
        for pc, hc in _runs(cols):
            H[hr, hc] += X[pr, pc]


#: ``_UnitFamily.gram``'s rows per batched product: its operands (rows x terms x blocks x d) and its ``Y``
#: (rows x d x d) each within this many doubles (1 MB). Against the rule before, ``2^15 // (d blocks terms)``
#: rows, the Gram products of a whole solve: the 32-channel k9 net 1.14-1.36 -> 1.01-1.11 s, glip16 6.7-6.9
#: -> 5.3-5.7 s, FCN 32/64/32 (K = 9, full X) 4.3-4.6 -> 3.6-3.7 s; the same bounds to every digit.
GRAM_BATCH = 2**17


@dataclass
class _UnitFamily:
    """The unit terms ``c_r (e_a e_b' + e_b e_a')`` shared by LMI blocks of identical structure (e.g. one
    layer's frequency LMIs), and how ``H`` is formed from them (``structured_kkt``).

    Terms are sorted by variable; ``local`` indexes the blocks' factored variables. ``rows``: per number
    ``T`` of unit terms of a variable, (local rows, ``a``, ``b``, ``c`` as ``(vars, T)`` arrays).
    ``cols``: groups of terms (one variable, its ``t``-th term each) whose rows and columns fall in a small
    index set ``D`` (``|D|^2 <= 4 * terms``: e.g. ``X (x) I_2``), with each term's position in ``D x D``.
    ``rest``: the other terms (sorted-term indices), formed entry by entry.
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    loc: np.ndarray  # position of each term's variable in ``local``
    agg: sp.csr_matrix  # (variables x terms) with the coefficients c
    rows: list
    cols: list
    rest: np.ndarray
    rest_agg: sp.csr_matrix  # (variables x rest terms)
    members: list = field(default_factory=list)  # the blocks (indices into ``sdp.lmis``)
    local: np.ndarray | None = None

    @classmethod
    def plan(cls, a, b, c, loc, var_of, nloc):
        order = np.lexsort((np.arange(len(loc)), loc))
        a, b, c, loc, var_of = a[order], b[order], c[order], loc[order], var_of[order]
        first = np.r_[0, np.flatnonzero(np.diff(loc)) + 1]
        count = np.diff(np.r_[first, len(loc)])
        occ = np.arange(len(loc)) - np.repeat(first, count)
        per_term = np.repeat(count, count)
        rows = []
        for T in np.unique(count):
            sel = np.flatnonzero(per_term == T).reshape(-1, T)
            rows.append((loc[sel[:, 0]], a[sel], b[sel], c[sel]))
        cols, rest = [], []
        key = var_of * (occ.max() + 1) + occ
        for k in np.unique(key):
            sel = np.flatnonzero(key == k)
            D = np.unique(np.r_[a[sel], b[sel]])
            if len(sel) >= 16 and len(D) ** 2 <= 64 * len(sel):
                flat = np.searchsorted(D, a[sel]) * len(D) + np.searchsorted(D, b[sel])
                cols.append((D, flat, 2.0 * c[sel], loc[sel]))
            else:
                rest.append(sel)
        rest = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
        agg = sp.csr_matrix((c, (loc, np.arange(len(loc)))), shape=(nloc, len(loc)))
        return cls(a, b, c, loc, agg, rows, cols, rest, agg[:, rest].tocsr())

    def gram(self, Hl: np.ndarray, S: list[np.ndarray], threads: int = 1):
        """Add the unit-unit part of ``H`` (every member block, ``S = rti rti'`` each) to ``Hl``.

        ``H_kl = 2 sum_{s in l} c_s (Y_k + Y_k')[a_s, b_s]``, ``Y_k = sum_{r in k} c_r S e_{a_r} e_{b_r}' S``,
        summed over the blocks: for a column group only ``Y_k`` on ``D x D`` is needed, a batched product
        with inner dimension (blocks x terms of k), then two gathers. With ``threads > 1`` the rows of each
        group are shared out (each thread writes its own rows of ``Hl``).
        """
        St = np.stack(S)
        B = len(S)
        for D, flat, cg, lg in self.cols:
            d = len(D)
            Z = np.ascontiguousarray(St[:, :, D].transpose(1, 0, 2))  # Z[a, b] = S_b[a, D]
            flat_t = (flat % d) * d + flat // d  # (Y + Y')[a, b] = Y[a, b] + Y[b, a]
            cols = _block(lg[:1], lg)[1]
            for row_group in self.rows:
                # rows per batch: its products (rows x terms x blocks x d) and Y (rows x d x d) in cache
                step = max(1, GRAM_BATCH // max(d * d, d * B * row_group[1].shape[1]))
                batch = functools.partial(_gram_rows, Hl, Z, (flat, flat_t, cg, lg, cols), row_group, step)
                thread_map(batch, split_by_cost(np.ones(len(row_group[0])), threads), threads)
        if len(self.rest):
            ar, br = self.a[self.rest], self.b[self.rest]
            for Sb in S:
                Sa, Sbb = Sb[:, ar], Sb[:, br]  # T_rs = S[a_r, a_s] S[b_r, b_s] + S[a_r, b_s] S[b_r, a_s]
                T = Sa[self.a] * Sbb[self.b]
                T += Sbb[self.a] * Sa[self.b]
                Z = np.asarray(self.agg @ T)  # (variables x rest terms)
                Hl += 2.0 * np.asarray(self.rest_agg @ Z.T).T


def _gram_rows(Hl, Z, column_group, row_group, step: int, share: np.ndarray):
    """``_UnitFamily.gram`` for the rows ``share`` of one row group against one column group, ``step``
    rows per batched product (a thread writes only its own rows of ``Hl``)."""
    flat, flat_t, cg, lg, cols = column_group
    lr, A, Bi, C = row_group
    T, B, d = A.shape[1], Z.shape[1], Z.shape[2]
    whole = _block(lr, lg[:1])[0]
    for i in range(share[0], share[-1] + 1, step):
        sl = slice(i, min(i + step, share[-1] + 1))
        nr = len(lr[sl])
        if isinstance(whole, slice) and isinstance(cols, slice):
            where = slice(whole.start + i, whole.start + i + nr), cols
        else:
            where = np.ix_(lr[sl], lg)
        P = Z[A[sl]]  # (rows, T, B, d)
        P *= C[sl][:, :, None, None]
        Q = Z[Bi[sl]].reshape(nr, T * B, d)
        Y = np.matmul(P.reshape(nr, T * B, d).transpose(0, 2, 1), Q).reshape(nr, d * d)
        G = np.take(Y, flat, axis=1)
        G += np.take(Y, flat_t, axis=1)
        G *= cg
        Hl[where] += G


@functools.cache
def _lower(m: int) -> np.ndarray:
    """``True`` on and below the diagonal of an ``m x m`` matrix."""
    return np.tri(m, dtype=bool)


#: The Newton matrix is factored by parts (``ChainCholesky``) only from this many variables: below, one
#: dense Cholesky costs little, and small SDPs (the ECG net's 88 variables) keep their rounding.
CHAIN_MIN = 1000


def newton_chain(variables_of_blocks, n: int) -> np.ndarray:
    """Boundaries ``0 = p_0 < p_1 < ... < p_k = n`` of a partition of the variables in which the Newton
    matrix ``H = sum_blocks [tr(F_k S F_l S)]`` is block tridiagonal (``ChainCholesky``).

    ``H_kl`` can be nonzero only when ``k`` and ``l`` occur in the same LMI (or ``k = l``), so it suffices
    that the span ``[lo, hi]`` of every LMI's variables holds at most one boundary in ``(lo, hi]``.
    ``build_sdp`` numbers the variables along the chain (each layer's output weight and multipliers after
    the previous layer's), so the LMIs' first variables are where the parts begin: each is kept, from the
    left, unless some LMI would then hold two. A net whose LMIs all share variables gives one part, and so
    does one of fewer than ``CHAIN_MIN`` variables."""
    if n < CHAIN_MIN:
        return np.array([0, n], dtype=np.int64)
    spans = np.array([(int(v.min()), int(v.max())) for v in variables_of_blocks if len(v)], dtype=np.int64)
    kept = [0]
    if len(spans):
        held = np.zeros(len(spans), dtype=np.int64)  # boundaries kept in each span's (lo, hi]
        for t in np.unique(spans[:, 0]):
            inside = (spans[:, 0] < t) & (t <= spans[:, 1])
            if t > 0 and not held[inside].any():
                held[inside] += 1
                kept.append(int(t))
    return np.array(kept + [n], dtype=np.int64)


class ChainCholesky:
    """The Cholesky factor of a symmetric positive definite ``H`` that is block tridiagonal in the parts
    ``bounds`` (``newton_chain``), by blocks, from ``H``'s lower triangle (nothing outside the diagonal and
    subdiagonal blocks is read):

        L_00 L_00' = H_00,   L_i+1,i = H_i+1,i L_ii^-T,   L_i+1,i+1 L_i+1,i+1' = H_i+1,i+1 - L_i+1,i L_i+1,i'

    ``O(sum_i s_i^3)`` flops for parts of ``s_i`` variables instead of ``O(n^3)`` (a deep chain of 32-channel
    layers: parts of ~560, a block Cholesky and two products per layer); ``H`` itself is left as it was.
    Raises ``numpy.linalg.LinAlgError`` when ``H`` is not positive definite, ``ValueError`` when not finite.
    """

    def __init__(self, H: np.ndarray, bounds: np.ndarray):
        self.bounds = bounds
        self.diagonal: list[np.ndarray] = []  # L_ii
        self.below: list[np.ndarray] = []  # L_i+1,i
        self.dense = None
        if len(bounds) == 2:  # one part: LAPACK's potrf/potrs as they are
            self.dense = scipy.linalg.cho_factor(H, lower=True, check_finite=True)
            return
        parts = list(zip(bounds[:-1], bounds[1:]))
        carry = None  # L_i,i-1 L_i,i-1' (lower triangle), subtracted from the next diagonal block
        for i, (a, b) in enumerate(parts):
            D = H[a:b, a:b] if carry is None else H[a:b, a:b] - carry
            L = scipy.linalg.cholesky(D, lower=True, check_finite=True)
            self.diagonal.append(L)
            if i + 1 < len(parts):
                c = parts[i + 1][1]
                X = scipy.linalg.solve_triangular(L, H[b:c, a:b].T, lower=True, check_finite=True).T
                self.below.append(X)
                carry = scipy.linalg.blas.dsyrk(1.0, X, lower=1)

    def solve(self, r: np.ndarray) -> np.ndarray:
        """``H^-1 r``: ``L y = r`` forward, then ``L' x = y`` backward, by parts."""
        if self.dense is not None:
            return scipy.linalg.cho_solve(self.dense, r, check_finite=False)  # (checked when factored)
        bounds, x = self.bounds, np.array(r, dtype=float)
        for i, L in enumerate(self.diagonal):
            a, b = bounds[i], bounds[i + 1]
            if i:
                x[a:b] -= self.below[i - 1] @ x[bounds[i - 1] : a]
            x[a:b] = scipy.linalg.solve_triangular(L, x[a:b], lower=True, check_finite=False)
        for i in range(len(self.diagonal) - 1, -1, -1):
            a, b = bounds[i], bounds[i + 1]
            if i + 1 < len(self.diagonal):
                x[a:b] -= self.below[i].T @ x[b : bounds[i + 2]]
            x[a:b] = scipy.linalg.solve_triangular(self.diagonal[i], x[a:b], lower=True, trans="T",
                                                   check_finite=False)
        return x


def chain_zero(H: np.ndarray, bounds: np.ndarray) -> None:
    """Zero the blocks of ``H`` that a matrix block tridiagonal in ``bounds`` may fill (both triangles):
    rows of part ``i``, columns of parts ``i - 1`` to ``i + 1``. Nothing is written outside them, so a buffer
    made by ``np.zeros`` keeps the rest as zero pages never touched (16 layers of 32 channels: about 120 of
    its 570 MB)."""
    k = len(bounds) - 1
    for i in range(k):
        H[bounds[i] : bounds[i + 1], bounds[max(i - 1, 0)] : bounds[min(i + 2, k)]] = 0.0


def dense_variables(lmi, n: int) -> np.ndarray:
    """The variables of ``lmi`` cheaper in ``H`` as one (dense or sparse) ``F_k`` than as their ``R_k``
    rank-two terms: ``O(m^3)`` against ``O(m^2 R_k + m R_k R)`` for ``R`` terms in the block, i.e.
    ``2 m^2 < R_k (2 m + R)`` (an entry of ``Y`` in the head's inverse form, ``rho`` on a wide input)."""
    m, col = lmi.size, lmi.factored.col
    dense = np.flatnonzero(2 * m * m < np.bincount(col, minlength=n) * (2 * m + len(col)))
    for term in lmi.lowrank:  # (a subspace weight's S entries: two terms each, and no column in G_rest)
        dense = np.setdiff1d(dense, term.columns)
    return dense


def structured_kkt(sdp: Sdp, nonneg_idx: np.ndarray, unit_terms: bool = True):
    """A CVXOPT ``kktsolver`` for ``[[0, G'], [G, -W'W]]`` using the factored LMIs (module docstring).

    Works with the scaled factors ``u~ = rti' u``, ``v~ = rti' v`` (so that ``rti' F_k rti`` is the sum of
    ``c (u~ v~' + v~ u~')``), exactly the quantities CVXOPT's own 'chol' solver forms column by column.
    A variable with many terms in one LMI (e.g. an entry of ``Y`` in ``I - sum_t W_t Y W_t'``: N terms) is
    cheaper the classic way, scaling its dense ``F_k`` (``O(m^3)`` against ``O(m^2 R_k + m R_k R)``): within
    each block every variable takes the cheaper of the two, and the mixed entries of ``H`` are
    ``H_kl = sum_{r in l} 2 c_r u~_r' F~_k v~_r`` (``k`` dense, ``l`` factored).

    Unit terms ``c (e_a e_b' + e_b e_a')`` (the weights ``X (x) I``, ``rho I``, multipliers on output rows:
    almost all terms of a frequency LMI) need no ``rti' u``: their products are entries of ``S = rti rti'``
    (``_UnitFamily``), formed once for all blocks of the same structure; right-hand sides use
    ``rti B rti'`` and ``rti' F rti``. ``unit_terms=False`` treats every term as general (the reference).
    """
    from cvxopt import misc

    n = sdp.n
    n_l = len(nonneg_idx)
    offsets = np.array(sorted(v.offset for v in sdp.variables))
    blocks = []
    hermitian: list[bool] = []  # blocks whose solutions are projected onto embeddings (``cvxopt_cones``)
    families: dict[bytes, _UnitFamily] = {}
    for lmi in sdp.lmis:
        f = lmi.factored
        m = lmi.size
        dense_cols = dense_variables(lmi, n)
        is_dense = np.isin(f.col, dense_cols)
        F = None
        if len(dense_cols):
            F = np.asarray(lmi.G_rest[:, dense_cols].todense()).T.reshape(len(dense_cols), m, m)
            F = (np.transpose(F, (0, 2, 1)) + F) / 2
        keep = np.flatnonzero(~is_dense)
        U, V = f.U.tocsc()[:, keep], f.V.tocsc()[:, keep]
        coef, col = f.coef[keep], f.col[keep]
        local = np.unique(col)
        loc = np.searchsorted(local, col)
        unit = np.zeros(len(keep), dtype=bool)
        if unit_terms:
            unit = (np.diff(U.indptr) == 1) & (np.diff(V.indptr) == 1)
            if unit.sum() < UNIT_MIN:
                unit[:] = False
        fam = units = None
        if unit.any():
            u = np.flatnonzero(unit)
            a, b = U.indices[U.indptr[u]], V.indices[V.indptr[u]]
            c = coef[u] * U.data[U.indptr[u]] * V.data[V.indptr[u]]
            key = b"".join(x.tobytes() for x in (np.array([m]), local, a, b, c, col[u]))
            fam = families.get(key)
            if fam is None:
                var_of = np.searchsorted(offsets, col[u], side="right")
                fam = families[key] = _UnitFamily.plan(a, b, c, loc[u], var_of, len(local))
                fam.local = local
            fam.members.append(len(blocks))
            units = (a, b, c, col[u])
        g = np.flatnonzero(~unit)
        gen = None
        if len(g):
            gl = np.unique(loc[g])  # the general terms' variables, among ``local``
            agg = sp.csr_matrix((coef[g], (np.searchsorted(gl, loc[g]), np.arange(len(g)))),
                                shape=(len(gl), len(g)))
            # where the general-general part goes: H itself, or the local block of a unit family
            where = np.ix_(gl, gl) if fam is not None else np.ix_(local[gl], local[gl])
            gen = (U[:, g], V[:, g], coef[g], col[g], gl, agg, where)
        cross = None
        if F is not None and len(keep):  # mixed dense/factored entries need rti' u for every term
            cross = (U, V, sp.csr_matrix((coef, (loc, np.arange(len(keep)))), shape=(len(local), len(keep))))
        blocks.append((m, dense_cols, F, local, gen, units, fam, cross))
        hermitian.append(bool(lmi.hermitian))
    chain = newton_chain([np.concatenate([b[1], b[3]]) for b in blocks], n)
    sizes = np.array([b[0] for b in blocks], dtype=float)
    threads = block_threads(sizes)
    shares = split_by_cost(sizes**3, threads)  # the solve's blocks per thread
    starts = n_l + np.concatenate([[0], np.cumsum(sizes**2)]).astype(int)  # each block in CVXOPT's z

    newton_buffer = [np.zeros((n, n))]

    def factor(W):
        limits.checkpoint("cvxopt")  # once per interior-point iteration
        di = np.asarray(W["di"]).ravel()
        H = newton_buffer[0]  # (one n x n buffer for all iterations: no fresh pages to fault in each time)
        chain_zero(H, chain)
        H[nonneg_idx, nonneg_idx] += di**2  # (distinct indices)
        acc: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # local variables -> their block of H
        S_of: dict[int, np.ndarray] = {}
        mixed: dict[tuple[bytes, bytes], list] = {}  # unit x general parts of the local blocks
        scaled = []

        def scale_block(bi: int):
            """Block ``bi``'s scaled factors and its parts of ``H`` (on a worker thread: nothing shared is
            written here; the parts are added below in block order, so the sums do not depend on threads)."""
            m, cols, F, local, gen, units, fam, cross = blocks[bi]
            R = np.asarray(W["rti"][bi])
            Ft = Ut = Vt = S = mix = None
            parts = []  # (into the local block of its family?, index, value)
            if F is not None:
                Ft = R.T @ F @ R  # rti' F_k rti for every dense k (stacked matmul)
                Fv = Ft.reshape(len(cols), -1)
                parts.append((False, np.ix_(cols, cols), Fv @ Fv.T))
            if gen is not None:
                Ug, Vg, _, _, gl, agg, where = gen
                Ut = np.asarray((Ug.T @ R).T)  # rti' U  (m x R)
                Vt = np.asarray((Vg.T @ R).T)
                AB = Ut.T @ Vt
                T = 2.0 * ((Ut.T @ Ut) * (Vt.T @ Vt) + AB * AB.T)
                parts.append((fam is not None, where, agg @ (agg @ T).T))  # (T is symmetric)
            if fam is not None:
                S = R @ R.T
                if gen is not None:  # unit x general: u_r'S u_s = (S u_s)[a_r] etc.
                    SU, SV = R @ Ut, R @ Vt
                    a, b = fam.a, fam.b
                    T = 2.0 * (SU[a] * SV[b] + SV[a] * SU[b])  # (unit terms x general terms)
                    mix = (gl, np.asarray(agg @ np.asarray(fam.agg @ T).T))  # (general vars x local vars)
            if cross is not None:  # H_kl = sum_{r in l} 2 c_r u~_r' F~_k v~_r
                U, V, agg_all = cross
                if fam is None:  # every term general: the same rti' U as above
                    Uc, Vc = Ut, Vt
                else:
                    Uc, Vc = np.asarray((U.T @ R).T), np.asarray((V.T @ R).T)
                Q = np.einsum("ir,kir->kr", Uc, Ft @ Vc)
                X = 2.0 * np.asarray((agg_all @ Q.T).T)  # (dense cols) x local
                parts += [(False, np.ix_(cols, local), X), (False, np.ix_(local, cols), X.T)]
            fac = None if gen is None else (Ut, Vt, gen[2], gen[3])
            return (m, R, cols, Ft, fac, units), parts, S, mix

        prepared = thread_map(lambda share: [scale_block(bi) for bi in share], shares, threads)
        for bi, (block_scaled, parts, S, mix) in enumerate(r for share in prepared for r in share):
            fam, local = blocks[bi][6], blocks[bi][3]
            if fam is not None:
                k = local.tobytes()
                if k not in acc:
                    acc[k] = (local, np.zeros((len(local), len(local))))
                Hl = acc[k][1]
                S_of[bi] = S
            for into_local, where, value in parts:
                (Hl if into_local else H)[where] += value
            if mix is not None:
                key = (k, mix[0].tobytes())  # summed over the family, added to rows and columns below
                if key in mixed:
                    mixed[key][2] += mix[1]
                else:
                    mixed[key] = [Hl, *mix]
            scaled.append(block_scaled)
        for Hl, gl, X in mixed.values():
            Hl[gl, :] += X
            Hl[:, gl] += X.T
        for fam in families.values():
            fam.gram(acc[fam.local.tobytes()][1], [S_of[i] for i in fam.members], threads)
        for local, Hl in acc.values():
            _add_at(H, local, local, Hl)
        try:
            cho = ChainCholesky(H, chain)  # (one part: the dense Cholesky)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise ArithmeticError("singular KKT matrix") from exc

        def solve(x, y, z):
            # bt = W^-T bz (lower triangles meaningful in each 's' block); z is overwritten below anyway
            # (lipdsl.solvers.cvxopt_cones' threaded version for large SDPs)
            misc.scale(z, W, trans="T", inverse="I")
            bt = np.array(z).ravel()
            rhs = np.array(x).ravel()
            rhs[nonneg_idx] -= di * bt[:n_l]  # G_l = -selection, W^-T = di on 'l'

            def rhs_share(share):  # this share's part of -sum_blocks <rti' F_k rti, B>, and its B
                part = np.zeros(n)
                for i in share:
                    m, R, cols, Ft, fac, units = scaled[i]
                    B = bt[starts[i] : starts[i] + m * m].reshape(m, m, order="F")
                    B = np.where(_lower(m), B, B.T)  # (its lower triangle)
                    bt[starts[i] : starts[i] + m * m] = B.ravel()
                    if Ft is not None:  # <rti' F_k rti, B>; G = -F on 's' blocks
                        part[cols] -= np.einsum("kij,ij->k", Ft, B)
                    if fac is not None:  # <rti' F_k rti, B> = sum_r 2 c_r u~_r' B v~_r
                        Ut, Vt, coef, col = fac
                        part -= np.bincount(col, 2.0 * coef * np.einsum("ir,ir->r", Ut, B @ Vt), minlength=n)
                    if units is not None:  # u~' B v~ = (rti B rti')[a, b]
                        a, b, c, col = units
                        C = R @ B @ R.T
                        part -= np.bincount(col, 2.0 * c * C[a, b], minlength=n)
                return part

            for part in thread_map(rhs_share, shares, threads):  # (in a fixed order)
                rhs += part
            if not np.all(np.isfinite(rhs)):
                raise ValueError("non-finite right-hand side in the KKT system")
            ux = cho.solve(rhs)
            write_into(x, ux)
            # W uz = W^-T (G ux - bz) = W^-T G ux - bt
            out = -bt
            out[:n_l] -= di * ux[nonneg_idx]

            def out_share(share):  # each block's own slice of out
                for i in share:
                    m, R, cols, Ft, fac, units = scaled[i]
                    M = np.zeros((m, m))
                    if fac is not None:
                        Ut, Vt, coef, col = fac
                        M = (Ut * (coef * ux[col])) @ Vt.T
                        M = M + M.T
                    if units is not None:  # rti' (sum_r c_r x_r (e_a e_b' + e_b e_a')) rti
                        a, b, c, col = units
                        E = np.bincount(a * m + b, c * ux[col], minlength=m * m).reshape(m, m)
                        M += R.T @ (E + E.T) @ R
                    if Ft is not None:
                        M += np.einsum("k,kij->ji", ux[cols], Ft)
                    block = out[starts[i] : starts[i] + m * m].reshape(m, m, order="F")
                    block -= M
                    if hermitian[i]:  # (cvxopt_cones.project: keep the iterates embeddings)
                        project(block)

            thread_map(out_share, shares, threads)
            write_into(z, out)

        return solve

    return factor


def gram_kkt(sdp, nonneg_idx: np.ndarray):
    """A CVXOPT ``kktsolver`` for LMIs of many very sparse rank-two terms (the LipSDP baseline).

    With ``S = rti rti'`` formed once per block (``O(m^3)``), the entries of ``H`` (module docstring) need
    only the Gram matrices ``U'SU``, ``V'SV`` and ``U'SV``, which sparse products give in
    ``O(m nnz(U) + R nnz(U))``, instead of the dense ``m x R`` factors ``rti' U`` (``O(m^2 R + m R^2)``).
    Right-hand sides use ``<rti' F_k rti, B> = <F_k, rti B rti'>`` and ``rti' (sum_k x_k F_k) rti``.
    Chosen by ``solve`` for a problem whose ``kkt`` attribute is ``"gram"``.
    """
    import cvxopt
    from cvxopt import misc

    n = sdp.n
    n_l = len(nonneg_idx)
    blocks = []
    for lmi in sdp.lmis:
        f = lmi.factored
        agg = sp.csr_matrix((f.coef, (f.col, np.arange(len(f.col)))), shape=(n, len(f.col)))
        blocks.append((lmi.size, f.U.tocsc(), f.V.tocsc(), f.coef, f.col, agg, lmi.G.tocsr()))

    def factor(W):
        limits.checkpoint("cvxopt")  # once per interior-point iteration
        di = np.asarray(W["di"]).ravel()
        H = np.zeros((n, n))
        np.add.at(H, (nonneg_idx, nonneg_idx), di**2)
        scaled = []
        for (m, U, V, coef, col, agg, G), rti in zip(blocks, W["rti"]):
            R = np.asarray(rti)
            S = R @ R.T
            SU, SV = np.asarray(U.T @ S).T, np.asarray(V.T @ S).T
            UV = np.asarray(U.T @ SV)
            T = 2.0 * (np.asarray(U.T @ SU) * np.asarray(V.T @ SV) + UV * UV.T)
            H += np.asarray(agg @ (agg @ T.T).T)
            scaled.append((m, R, U, V, coef, col, G))
        try:
            cho = scipy.linalg.cho_factor(H, lower=True, check_finite=True)
        except (np.linalg.LinAlgError, ValueError) as exc:
            # Free variables (a chordal split's separators) make H singular to rounding near the optimum:
            # CVXOPT then ends with 'singular KKT matrix' and its last iterate goes to the certificate check.
            raise ArithmeticError("singular KKT matrix") from exc

        def solve(x, y, z):
            w = cvxopt.matrix(z)
            misc.scale(w, W, trans="T", inverse="I")
            bt = np.asarray(w).ravel()
            rhs = np.asarray(x).ravel().copy()
            rhs[nonneg_idx] -= di * bt[:n_l]
            at = n_l
            for m, R, U, V, coef, col, _ in scaled:
                B = bt[at : at + m * m].reshape(m, m, order="F")
                B = np.tril(B) + np.tril(B, -1).T
                BV = np.asarray(V.T @ (R @ B @ R.T)).T  # <rti' F_k rti, B> = sum 2 c_r u_r' (rti B rti') v_r
                np.subtract.at(rhs, col, 2.0 * coef * np.asarray(U.multiply(BV).sum(axis=0)).ravel())
                at += m * m
            if not np.all(np.isfinite(rhs)):
                raise ValueError("non-finite right-hand side in the KKT system")
            ux = scipy.linalg.cho_solve(cho, rhs, check_finite=False)  # (cho was checked when formed)
            write_into(x, ux)
            out = np.asarray(w).ravel() * -1.0
            out[:n_l] -= di * ux[nonneg_idx]
            at = n_l
            for m, R, _, _, _, _, G in scaled:
                out[at : at + m * m] -= (R.T @ (G @ ux).reshape(m, m, order="F") @ R).reshape(-1, order="F")
                at += m * m
            write_into(z, out)

        return solve

    return factor


#: ``refined``: an interior-point iteration's KKT solves are refined when its first solve leaves a relative
#: residual above this (``|r| / |b|`` over the whole right-hand side, 's' blocks by their lower triangles).
REFINE_ABOVE = 1e-9


def refined(kkt, G, dims: dict, above: float = REFINE_ABOVE, log: list | None = None):
    """The CVXOPT ``kktsolver`` ``kkt`` with one step of iterative refinement, in the iterations that need it.

    A solve of ``[[0, G'], [G, -W'W]] [ux; W^-1 uz] = [bx; bz]`` leaves the residual

        rx = bx - G' W^-1 uz,    rz = bz - G ux + W' uz,

    and solving again for it (``ux += dx``, ``uz += dz``) is one step of refinement. CVXOPT's ``refinement``
    option (1 for SDPs) does that for every solve of every iteration, on its self-dual embedding's system,
    which nearly doubles the cost of the solves. The error grows only towards the end (from 1e-15 to 1e-6 on
    a 32-channel net, to 1e-3 on the ResNet's last iterations, where CVXOPT without refinement stops
    'unknown'), so here the residual of each iteration's first solve (after ``kkt(W)``, the one for the
    embedding's ``(c, h)``, which grows first) decides: above ``above``, every solve of that iteration is
    refined once; else none is checked again until the next factorisation. ``G``: the operator
    ``G(x, y, alpha, beta, trans)`` CVXOPT gets; ``log``: a list to append each checked residual to.
    (lipdsl's cone programs have no equality constraints: ``y`` is empty, and so is its residual.)
    """
    import cvxopt
    from cvxopt import misc

    lower = np.concatenate([np.ones(dims["l"])] + [_lower(m).ravel(order="F") for m in dims["s"]],
                           dtype=float)  # (the entries that count: 'l', and each 's' block's lower triangle)

    def factor(W):
        solve = kkt(W)
        state = {"first": True, "refine": False}

        def residual(bx, bz, x, z):
            """``(rx, rz)`` of the solve ``(x, z)`` for ``(bx, bz)``: ``rx`` an array, ``rz`` a CVXOPT
            vector."""
            rz = cvxopt.matrix(z)
            misc.scale(rz, W, trans="T")  # W' uz
            gx = cvxopt.matrix(0.0, (len(bz), 1))
            G(x, gx)  # G ux
            r = np.asarray(rz)[:, 0]  # (a view: rz := bz - G ux + W' uz in place)
            r -= np.asarray(gx)[:, 0]
            r += bz
            wz = cvxopt.matrix(z)
            misc.scale(wz, W, inverse="I")  # W^-1 uz
            gtz = cvxopt.matrix(0.0, (len(bx), 1))
            G(wz, gtz, trans="T")
            return bx - np.asarray(gtz)[:, 0], rz

        def refined_solve(x, y, z):
            if not (state["first"] or state["refine"]):
                return solve(x, y, z)
            bx, bz = np.array(x).ravel(), np.array(z).ravel()
            solve(x, y, z)
            rx, rz = residual(bx, bz, x, z)
            if state["first"]:
                r = np.asarray(rz)[:, 0]
                size = np.sqrt(bx @ bx + np.einsum("i,i,i", lower, bz, bz))
                error = np.sqrt(rx @ rx + np.einsum("i,i,i", lower, r, r)) / max(size, np.finfo(float).tiny)
                if log is not None:
                    log.append(float(error))
                state["first"], state["refine"] = False, bool(error > above)
            if state["refine"]:
                dx = cvxopt.matrix(rx)
                solve(dx, cvxopt.matrix(0.0, (0, 1)), rz)
                write_into(x, np.asarray(x)[:, 0] + np.asarray(dx)[:, 0])
                write_into(z, np.asarray(z)[:, 0] + np.asarray(rz)[:, 0])

        return refined_solve

    return factor

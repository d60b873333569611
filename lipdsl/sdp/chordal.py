"""Chordal decomposition of one large sparse LMI into a chain of smaller ones (Agler / Grone, exact).

An LMI ``A(x) = F0 + sum_r x_{col_r} c_r (a_r b_r' + b_r a_r') >= 0`` of ``N`` rows whose aggregate sparsity
pattern ``E`` (every entry any term or ``F0`` can touch) lies inside a chordal graph with maximal cliques
``C_1, ..., C_K`` holds if and only if (Agler, Helton, McCullough, Rodman 1988)

    A(x) = sum_k P_k' S_k P_k,   S_k >= 0   (P_k: selection of the rows C_k),

so ``A(x) >= 0`` is equivalent to the ``K`` smaller LMIs

    S_k = A_k(x) + Z_k - Z_{k-1} >= 0,   k = 1..K,

with ``A(x) = sum_k P_k' A_k(x) P_k`` any split of the terms among cliques containing their support and, for
a chain of cliques, one free symmetric matrix ``Z_k`` on each separator ``C_k n C_{k+1}`` (added to clique
``k``, subtracted from clique ``k+1``; ``Z_0 = Z_K = 0``). The split is exact: any feasible point of one
form gives one of the other with the same ``x``.

The chordal graph used here (``chain_cliques``): the few *dense* rows (degree above a quarter of ``N``: e.g.
the neurons of a dense layer, or the rows of a lifted output map) go into every clique; the others are ordered
by reverse Cuthill-McKee, and with ``f(i)`` the first position row ``i`` touches and ``g(i) = min_{j >= i}
f(j)``, the windows ``[s_k, e_k]`` with ``s_{k+1} = g(e_k + 1)`` form an interval graph (chordal, a chain of
cliques) that contains every edge ``(i, j)``, ``j < i``: ``i``'s first window starts at or before
``g(i) <= f(i) <= j``. Universal (dense) vertices keep it chordal. The window length is picked by a cost model
of one interior-point iteration: ``50 sum_k m_k^3`` (CVXOPT's scalings of each block) plus ``n^3`` (the
Schur complement over all ``n`` variables, separators' ``|S|(|S|+1)/2`` included); one window (no
decomposition) is a candidate too, and a split must be ``SPLIT_GAIN`` times cheaper than it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: Rows whose degree exceeds this fraction of N go into every clique.
DENSE_FRACTION = 0.25
#: Weight of sum m_k^3 against n^3 in the per-iteration cost model (CVXOPT's SVD, scalings, step lengths).
BLOCK_WEIGHT = 50.0
#: A split is taken only when its modelled cost is this many times below one block's: its free separator
#: variables also slow the interior-point method down (measured: ECG LipSDP-Layer split in two, 2,400 free
#: variables, more than 4x slower than unsplit).
SPLIT_GAIN = 2.0

Term = tuple  # (col, a_idx, a_val, b_idx, b_val, coef): coef * (a b' + b a') added to F_col


@dataclass(frozen=True)
class Chain:
    """A chain of cliques covering an LMI's pattern: ``cliques[k]`` sorted row indices; ``cost`` estimated.

    ``window[k] = (s_k, e_k)``: positions in ``order`` (the non-dense rows, RCM order); ``dense``: rows in
    every clique.
    """

    order: np.ndarray
    dense: np.ndarray
    windows: tuple[tuple[int, int], ...]
    cost: float

    @property
    def cliques(self) -> list[np.ndarray]:
        return [np.sort(np.concatenate([self.order[s:e + 1], self.dense])) for s, e in self.windows]

    @property
    def separators(self) -> list[np.ndarray]:
        out = []
        for (_, e), (s2, _) in zip(self.windows, self.windows[1:]):
            out.append(np.sort(np.concatenate([self.order[s2:e + 1], self.dense])))
        return out

    def overlap_variables(self) -> int:
        return sum(len(S) * (len(S) + 1) // 2 for S in self.separators)


def pattern(N: int, F0: np.ndarray, terms: list[Term]) -> sp.csr_matrix:
    """Boolean symmetric aggregate sparsity pattern (diagonal included) of ``F0`` and every term."""
    rows, cols = [np.arange(N)], [np.arange(N)]
    i, j = np.nonzero(F0)
    rows.append(i)
    cols.append(j)
    for _, ai, _, bi, _, _ in terms:
        rows.append(np.repeat(ai, len(bi)))
        cols.append(np.tile(bi, len(ai)))
    r, c = np.concatenate(rows), np.concatenate(cols)
    A = sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=(N, N))
    return ((A + A.T) > 0).tocsr()


def _windows(g: np.ndarray, width: int) -> list[tuple[int, int]]:
    n = len(g)
    out: list[tuple[int, int]] = []
    s = 0
    while True:
        e = min(s + width - 1, n - 1)
        if out:
            e = max(e, out[-1][1] + 1)
            if s <= out[-1][0]:  # the previous window would lie inside this one: merge
                s = out.pop()[0]
        out.append((s, e))
        if e >= n - 1:
            return out
        s = int(g[e + 1])


def chain_cliques(A: sp.csr_matrix, n_vars: int, widths: list[int] | None = None) -> Chain:
    """The cheapest chain of cliques (cost model in the module docstring) covering the pattern ``A``."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    N = A.shape[0]
    deg = np.asarray(A.sum(axis=1)).ravel()
    dense = np.flatnonzero(deg > DENSE_FRACTION * N)
    rest = np.setdiff1d(np.arange(N), dense)
    Ar = A[rest][:, rest].tocsr()
    perm = reverse_cuthill_mckee(Ar, symmetric_mode=True) if len(rest) else np.zeros(0, int)
    order = rest[perm]
    pos = np.empty(len(rest), dtype=np.int64)
    pos[perm] = np.arange(len(rest))
    P = Ar.tocoo()
    f = np.arange(len(rest))
    np.minimum.at(f, pos[P.row], pos[P.col])
    g = np.minimum.accumulate(f[::-1])[::-1]
    nd = len(dense)

    def cost(win):
        sizes = [e - s + 1 + nd for s, e in win]
        seps = [e - s2 + 1 + nd for (_, e), (s2, _) in zip(win, win[1:])]
        n = n_vars + sum(t * (t + 1) // 2 for t in seps)
        return BLOCK_WEIGHT * sum(float(m) ** 3 for m in sizes) + float(n) ** 3

    n = len(rest)
    if widths is None:
        widths = sorted({int(w) for w in np.geomspace(min(16, max(n, 1)), max(n, 1), 24)} | {max(n, 1)})
    best = None
    single = cost([(0, n - 1)])
    for w in widths:
        win = _windows(g, max(int(w), 1)) if n else [(0, -1)]
        c = cost(win) if len(win) == 1 else cost(win) / SPLIT_GAIN  # a split must pay for its free variables
        if best is None or c < best[1]:
            best = (win, c)
    if len(best[0]) > 1 and best[1] * SPLIT_GAIN >= single and n in widths:
        best = ([(0, n - 1)], single)
    return Chain(order, dense, tuple(best[0]), best[1])


def split_terms(chain: Chain, N: int, F0: np.ndarray, terms: list[Term]):
    """Assign every entry of ``F0`` and every term (or, if no clique holds its whole support, each of its
    entries) to the first clique whose window contains it.

    Returns per clique ``((i, j, value) arrays of its F0 entries, terms)``, in global rows.
    """
    K = len(chain.windows)
    pos = np.full(N, -1, dtype=np.int64)
    pos[chain.order] = np.arange(len(chain.order))
    ends = np.array([e for _, e in chain.windows])
    starts = np.array([s for s, _ in chain.windows])

    def home(idx: np.ndarray) -> int | None:
        p = pos[idx]
        p = p[p >= 0]
        if len(p) == 0:
            return 0
        k = int(np.searchsorted(ends, p.max()))
        return k if starts[k] <= p.min() else None

    i, j = np.nonzero(F0)
    pi, pj = pos[i], pos[j]
    hi = np.maximum(pi, pj)
    k0 = np.where(hi >= 0, np.searchsorted(ends, np.maximum(hi, 0)), 0)
    lo = np.where((pi >= 0) & (pj >= 0), np.minimum(pi, pj), np.maximum(pi, pj))
    assert np.all((hi < 0) | (starts[k0] <= lo))  # every entry of F0 is an edge of the pattern
    entries = [(i[k0 == k], j[k0 == k], F0[i[k0 == k], j[k0 == k]]) for k in range(K)]
    parts: list[list[Term]] = [[] for _ in range(K)]
    for t in terms:
        col, ai, av, bi, bv, c = t
        k = home(np.concatenate([ai, bi])) if K > 1 else 0
        if k is not None:
            parts[k].append(t)
            continue
        for x, xv in zip(ai, av):  # c (a b' + b a') = sum_ij c a_i b_j (e_i e_j' + e_j e_i')
            for y, yv in zip(bi, bv):
                k = home(np.array([x, y]))
                assert k is not None
                parts[k].append((col, np.array([x]), np.array([xv]), np.array([y]), np.array([yv]), c))
    return list(zip(entries, parts))


def decompose(N: int, F0: np.ndarray, terms: list[Term], n_vars: int, chain: Chain | None = None):
    """The ``K`` clique LMIs equivalent to ``F0 + sum terms >= 0`` (module docstring).

    Returns ``(chain, blocks, n_total)``: ``blocks[k] = (rows, F0_k, terms_k)`` in the clique's local rows,
    where the terms include the separators' free variables ``Z`` (columns ``n_vars ..  n_total - 1``, one
    per upper-triangular entry, free in sign).
    """
    if chain is None:
        chain = chain_cliques(pattern(N, F0, terms), n_vars)
    cliques = chain.cliques
    split = split_terms(chain, N, F0, terms)
    blocks = []
    local_of = []
    for rows, ((fi, fj, fv), tk) in zip(cliques, split):
        loc = np.full(N, -1, dtype=np.int64)
        loc[rows] = np.arange(len(rows))
        local_of.append(loc)
        F0l = np.zeros((len(rows), len(rows)))
        F0l[loc[fi], loc[fj]] = fv
        tl = [(col, loc[ai], av, loc[bi], bv, c) for col, ai, av, bi, bv, c in tk]
        assert all((t[1] >= 0).all() and (t[3] >= 0).all() for t in tl)
        blocks.append((rows, F0l, tl))
    col = n_vars
    for k, S in enumerate(chain.separators):
        iu, ju = np.triu_indices(len(S))
        for sign, b in ((1.0, k), (-1.0, k + 1)):
            loc = local_of[b]
            one = np.ones(1)
            for t, (i, j) in enumerate(zip(S[iu], S[ju])):
                coef = sign * (0.5 if i == j else 1.0)  # Z_ii e_i e_i' ; Z_ij (e_i e_j' + e_j e_i')
                blocks[b][2].append((col + t, np.array([loc[i]]), one, np.array([loc[j]]), one, coef))
        col += len(iu)
    return chain, blocks, col

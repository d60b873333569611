"""The SDP's types: decision-vector blocks (Variable), supply weights, LMIs as F0 + sum_k x_k F_k (Lmi,
LmiBuilder) and the Sdp itself, with the objective its solvers minimise."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from lipdsl.model import lowered

#: Weight of the trace term that makes the frequency-form SDP's optimum unique (Sdp.solver_objective).
FREQUENCY_TRACE = 1e-3


@dataclass(frozen=True)
class Variable:
    """A block of the decision vector ``x``: ``rho``, a system's ``P``, ``lambda`` or an output weight ``X``.

    ``structure``: ``scalar`` (1 entry), ``symmetric`` (upper triangle, row by row: n(n+1)/2 entries),
    ``diagonal`` or ``vector`` (n entries), or ``subspace``: ``X = diag(d) + V S V'`` with a fixed basis
    ``V`` (``basis``, n x r, orthonormal columns): the n entries of ``d``, then the upper triangle of the
    r x r ``S`` row by row (``n + r(r+1)/2`` entries; docs/method.md, "Weights on a subspace").
    """

    name: str
    role: str
    system: str | None
    n: int
    structure: str
    offset: int
    basis: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def rank(self) -> int:
        """Columns of the ``subspace`` basis (0 for the other structures)."""
        return 0 if self.basis is None else self.basis.shape[1]

    @property
    def dim(self) -> int:
        if self.structure == "subspace":
            return self.n + self.rank * (self.rank + 1) // 2
        return {"scalar": 1, "symmetric": self.n * (self.n + 1) // 2}.get(self.structure, self.n)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.dim)

    def value(self, x: np.ndarray):
        """The variable's value at ``x``: float, vector, or (diagonal / symmetric) matrix."""
        v = np.asarray(x[self.slice], dtype=float)
        if self.structure == "scalar":
            return float(v[0])
        if self.structure == "vector":
            return v
        if self.structure == "diagonal":
            return np.diag(v)
        if self.structure == "subspace":
            return np.diag(v[: self.n]) + self.basis @ from_upper(v[self.n :], self.rank) @ self.basis.T
        return from_upper(v, self.n)

    def pack(self, value) -> np.ndarray:
        """The entries of ``x[self.slice]`` that ``value`` returns ``value`` for (its inverse)."""
        if self.structure == "scalar":
            return np.array([float(value)])
        if self.structure == "vector":
            return np.asarray(value, dtype=float)
        if self.structure == "diagonal":
            return np.diag(value).astype(float)
        if self.structure == "subspace":
            return _subspace_fit(np.asarray(value, dtype=float), self.basis)
        return np.asarray(value, dtype=float)[np.triu_indices(self.n)]


def _subspace_fit(X: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``(d, S)`` (packed) with ``diag(d) + V S V'`` closest to ``X`` in the Frobenius norm (exact when ``X``
    has that form, e.g. a subspace weight scaled and raised along ``X + t I`` by the storage recovery).

    With ``V'V = I`` and ``Q = V V'``: for a given ``d``, ``S = V'(X - diag d)V``; asking the diagonal of the
    remainder ``(X - diag d) - Q (X - diag d) Q`` to vanish gives ``(I - Q∘Q) d = diag(X) - diag(Q X Q)``
    (``diag(Q diag(d) Q) = (Q∘Q) d``), solved by least squares (singular where ``V`` contains a unit
    vector ``e_i``: then ``d_i`` and ``S`` trade off, and either choice reproduces ``X``).
    """
    r = V.shape[1]
    X = (X + X.T) / 2
    Q = V @ V.T
    d = np.linalg.lstsq(np.eye(len(X)) - Q * Q, np.diag(X) - np.diag(Q @ X @ Q), rcond=None)[0]
    S = V.T @ (X - np.diag(d)) @ V
    return np.concatenate([d, S[np.triu_indices(r)]])


def from_upper(v: np.ndarray, n: int) -> np.ndarray:
    """The symmetric n x n matrix whose upper triangle, row by row, is ``v`` (``Variable``'s packing)."""
    M = np.zeros((n, n))
    M[np.triu_indices(n)] = v
    return M + np.triu(M, 1).T


def upper_diagonal(n: int) -> np.ndarray:
    """The positions of the diagonal entries in an n x n upper triangle packed row by row."""
    i = np.arange(n)
    return i * n - i * (i - 1) // 2


@dataclass(frozen=True)
class Weight:
    """A supply weight: ``rho * I``, a variable ``X`` (times ``I_N`` after a flatten), or a constant."""

    kind: str  # "rho", "var" or "const"
    n: int  # order of the matrix the LMI sees
    variable: Variable | None = None
    kron: int = 1
    constant: np.ndarray | None = None


@dataclass(frozen=True)
class Factored:
    """``F_k = sum_{r: col_r = k} coef_r (u_r v_r' + v_r u_r')`` with ``u_r``, ``v_r`` the columns of U, V."""

    U: sp.csc_matrix
    V: sp.csc_matrix
    coef: np.ndarray
    col: np.ndarray


@dataclass(frozen=True)
class LowRank:
    """``coef * U S U'``: the ``S`` block of a ``subspace`` variable in an LMI (``U``: m x r, its basis
    placed on the LMI's rows). Its ``F_k`` are dense, so ``Lmi.G_rest`` leaves them out and the solvers
    apply them as products (``apply``, ``adjoint``): ``O(m^2 r)`` work instead of ``O(m^2 r^2)`` entries
    of ``G``."""

    variable: Variable
    U: np.ndarray
    coef: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``sum_{a<=b} s_ab F_ab`` at ``x`` (m x m)."""
        return self.coef * (self.U @ from_upper(x[self.columns], self.variable.rank) @ self.U.T)

    def adjoint(self, Z: np.ndarray) -> np.ndarray:
        """``<F_ab, Z>`` for the upper triangle ``a <= b`` (row by row) of ``S``, ``Z`` symmetric."""
        M = self.U.T @ Z @ self.U
        M = (M + M.T) - np.diag(np.diag(M))  # F_ab = U_a U_b' + U_b U_a' (a < b), U_a U_a' (a = b)
        return self.coef * M[np.triu_indices(self.variable.rank)]

    @property
    def columns(self) -> np.ndarray:
        """The decision-vector indices of the ``S`` entries."""
        v = self.variable
        return np.arange(v.offset + v.n, v.slice.stop)


#: Relative tolerance of the Hermitian-embedding test (the two copies of each entry are computed alike).
HERMITIAN_TOL = 1e-12


def embedded_hermitian(F0: np.ndarray, G: sp.spmatrix) -> bool:
    """Whether ``F0`` and every ``F_k`` (the columns of ``G``, column-major ``vec``) are real embeddings
    ``[[Re M, -Im M], [Im M, Re M]]`` (interleaved) of Hermitian matrices: ``E[2i,2j] = E[2i+1,2j+1]`` and
    ``E[2i+1,2j] = -E[2i,2j+1]`` for all ``i, j``."""
    m = F0.shape[0]
    if m % 2 or m == 0:
        return False
    h = m // 2
    i, j = (a.ravel() for a in np.meshgrid(np.arange(h), np.arange(h), indexing="ij"))

    def at(r, c):
        return c * m + r

    rows = np.r_[np.arange(h * h), np.arange(h * h)]
    ones = np.r_[np.ones(h * h), -np.ones(h * h)]
    D = sp.csr_matrix((ones, (rows, np.r_[at(2 * i, 2 * j), at(2 * i + 1, 2 * j + 1)])),
                      shape=(h * h, m * m))  # Re copies: E[2i,2j] - E[2i+1,2j+1]
    S = sp.csr_matrix((np.abs(ones), (rows, np.r_[at(2 * i + 1, 2 * j), at(2 * i, 2 * j + 1)])),
                      shape=(h * h, m * m))  # Im copies: E[2i+1,2j] + E[2i,2j+1]
    f0 = F0.reshape(-1, order="F")
    scale = max(np.abs(f0).max(initial=0.0), np.abs(G.data).max(initial=0.0) if G.nnz else 0.0, 1e-300)
    for T in (D, S):
        if np.abs(T @ f0).max(initial=0.0) > HERMITIAN_TOL * scale:
            return False
        R = T @ G
        if R.nnz and np.abs(R.data).max() > HERMITIAN_TOL * scale:
            return False
    return True


@dataclass(frozen=True)
class Lmi:
    """``F(x) = F0 + sum_k x_k F_k >= 0`` with ``vec(F(x)) = vec(F0) + G x`` (column-major vec, m^2 rows).

    ``G = G_rest + `` the dense columns of the ``lowrank`` terms (subspace weights), formed only when asked
    for (``G``); the CVXOPT backend uses ``G_rest`` and applies ``lowrank`` as products.
    """

    name: str
    system: str | None
    blocks: tuple[tuple[str, int], ...]  # (label, size) of the diagonal blocks, in order
    F0: np.ndarray
    G_rest: sp.csc_matrix
    factored: Factored
    lowrank: tuple[LowRank, ...] = ()

    @property
    def size(self) -> int:
        return self.F0.shape[0]

    @functools.cached_property
    def G(self) -> sp.csc_matrix:
        """All of ``vec F_k`` as columns (the low-rank terms' dense columns included)."""
        if not self.lowrank:
            return self.G_rest
        r_, c_, v_ = [], [], []
        for term in self.lowrank:
            U, a, b = term.U, *np.triu_indices(term.variable.rank)
            for k, i, j in zip(term.columns, a, b):
                F = np.outer(U[:, i], U[:, j])
                F = term.coef * (F + F.T if i != j else F).reshape(-1, order="F")
                nz = np.flatnonzero(F)
                r_.append(nz), c_.append(np.full(len(nz), k)), v_.append(F[nz])
        extra = sp.csc_matrix((np.concatenate(v_), (np.concatenate(r_), np.concatenate(c_))),
                              shape=self.G_rest.shape)
        return (self.G_rest + extra).tocsc()

    @functools.cached_property
    def hermitian(self) -> bool:
        """Whether ``F0`` and every ``F_k`` are real embeddings of Hermitian matrices (``embedded_hermitian``:
        the frequency-domain LMIs), so that a solver may work on the Hermitian ``M`` of order ``m/2``. The
        ``lowrank`` terms (a subspace weight ``(V S V') (x) I_2`` is two of them, one per parity) are tested
        together at one random ``S``: their sum is an embedding for every ``S`` or else for almost none."""
        if not embedded_hermitian(self.F0, self.G_rest):
            return False
        if not self.lowrank:
            return True
        x = np.zeros(max(int(t.columns.max()) for t in self.lowrank) + 1)
        for t in self.lowrank:
            x[t.columns] = np.random.default_rng(len(t.columns)).normal(size=len(t.columns))
        F = sum(t.apply(x) for t in self.lowrank)
        return embedded_hermitian(F, sp.csc_matrix((F.size, 0)))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``sum_k x_k F_k`` (m x m, not symmetrised)."""
        m = self.size
        F = (self.G_rest @ x).reshape(m, m, order="F")
        for term in self.lowrank:
            F = F + term.apply(x)
        return F

    def value(self, x: np.ndarray) -> np.ndarray:
        F = self.F0 + self.apply(x)
        return (F + F.T) / 2


@dataclass(frozen=True)
class Link:
    """One system's LMI with its variables, as ``certify`` needs them to rebuild and repair it."""

    system: lowered.System
    lmi: Lmi
    P: Variable | None
    lam: Variable | None
    w_in: Weight
    w_out: Weight
    needs_P_psd: bool
    inner: tuple[Variable, ...] = ()  # multipliers of a residual block's internal activations, in order

    @property
    def multiplier_names(self) -> list[str]:
        """The link's multiplier variables: its activation's, then (a residual block) each internal one's."""
        return ([self.lam.name] if self.lam is not None else []) + [v.name for v in self.inner]


@dataclass(frozen=True)
class Sdp:
    """minimize rho over x subject to every LMI and ``x[nonneg] >= 0``; ``L = sqrt(rho) * factor``."""

    network: lowered.Network
    variables: tuple[Variable, ...]
    lmis: tuple[Lmi, ...]
    nonneg: tuple[Variable, ...]
    rho: Variable
    factor: float
    links: tuple[Link, ...]
    psd_weights: tuple[Variable, ...]  # X that must be >= 0 (pooled), with an explicit LMI in ``lmis``
    notes: tuple[str, ...] = field(default=())
    storage: tuple[Variable, ...] = field(default=())  # P left to ``kyp`` (frequency-domain LMIs instead)
    #: the frequencies of each gridded system's LMIs (system name -> omegas in [0, pi / g], ascending)
    grids: dict = field(default_factory=dict)
    #: each gridded system's tap spacing ``g`` (``build.tap_spacing``: its LMIs are ``2 pi / g``-periodic)
    spacings: dict = field(default_factory=dict)
    #: the number of frequencies asked for (``build_sdp(frequencies=K)``; a refined grid has more), None
    #: when no system is gridded
    frequencies: int | None = None

    @property
    def n(self) -> int:
        """The solver's variables (the storage P of gridded systems, which come last, excluded)."""
        return sum(v.dim for v in self.variables) - sum(v.dim for v in self.storage)

    @property
    def n_total(self) -> int:
        return sum(v.dim for v in self.variables)

    def objective(self) -> np.ndarray:
        c = np.zeros(self.n)
        c[self.rho.offset] = 1.0
        return c

    def solver_objective(self) -> np.ndarray:
        """What the solvers minimise: ``rho``, plus ``eps * sum_l tr(X_l)`` in frequency mode.

        In the frequency form the weights ``X`` between layers are not unique at the optimum (a face of
        optimal points: the directions of ``X`` that no active frequency LMI pins down), the Newton matrix
        becomes singular to rounding near it, and interior-point solvers stop short ("singular KKT matrix",
        SDPA's stalls; docs/method.md §3). The small trace term selects one point of that face, which makes
        the Newton system regular again. ``eps = FREQUENCY_TRACE / sum_l n_l`` (``n_l`` the order of ``X_l``):
        ``eps * sum tr(X)`` is ``FREQUENCY_TRACE`` times the mean diagonal entry of the ``X_l``. Any feasible
        point is certified the same way, so this can only raise ``rho`` (by at most ``eps sum tr(X*)``),
        never make the bound unsound. Measured on the trained GunPoint FCN/TCN (docs/method.md §3): 1e-3
        makes CVXOPT converge where it stopped 'unknown'; an absolute ``eps`` of 1e-6 was too small.
        The exact SDP (no ``storage``) keeps ``rho`` alone; the SDPA export always writes ``rho`` alone.
        """
        c = self.objective()
        weights = [v for v in self.variables if v.role == "X" and v.offset < self.n]
        if not self.storage or not weights:
            return c
        eps = FREQUENCY_TRACE / sum(v.n for v in weights)
        for v in weights:
            if v.structure == "symmetric":  # the diagonal of the upper triangle, row by row
                c[v.offset + upper_diagonal(v.n)] += eps
            elif v.structure == "subspace":  # tr(diag d + V S V') = sum d + tr S (V'V = I)
                c[v.offset : v.offset + v.n] += eps
                c[v.offset + v.n + upper_diagonal(v.rank)] += eps
            else:
                c[v.offset : v.offset + v.dim] += eps
        return c


class LmiBuilder:
    """Accumulates ``F(x) = F0 + sum_r x_{col_r} c_r (a_r b_r' + b_r a_r')``: every term symmetric, low rank.

    The factored terms give both ``G`` (``vec F_k`` as columns) and the structure the KKT solver uses.
    """

    def __init__(self, size: int, n_vars_ref: list[int]):
        self.m = size
        self.F0 = np.zeros((size, size))
        self.terms: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] = []
        self.lowrank: list[LowRank] = []
        self.lowrank_terms: set[int] = set()  # indices into ``terms`` that ``lowrank`` stands for in G
        self._n = n_vars_ref

    def _outer(self, col: int, a_idx, a_val, b_idx, b_val, coef: float):
        """Add ``coef * (a b' + b a')`` (a, b sparse m-vectors) to ``F_col``."""
        if len(a_idx) == 0 or len(b_idx) == 0 or coef == 0:
            return
        self.terms.append(
            (
                col,
                np.asarray(a_idx, dtype=np.int64),
                np.asarray(a_val, dtype=float),
                np.asarray(b_idx, dtype=np.int64),
                np.asarray(b_val, dtype=float),
                float(coef),
            )
        )

    def units(self, cols, i, j, coef):
        """Add ``coef_r (e_{i_r} e_{j_r}' + e_{j_r} e_{i_r}')`` to ``F_{cols_r}`` for every ``r`` (arrays, or
        scalars broadcast): one entry of ``terms`` for the whole batch (``_UnitBatch``)."""
        cols, i, j, coef = np.broadcast_arrays(np.asarray(cols, np.int64), np.asarray(i, np.int64),
                                               np.asarray(j, np.int64), np.asarray(coef, float))
        if cols.size:
            self.terms.append(_UnitBatch(cols.ravel(), i.ravel(), j.ravel(), coef.ravel()))

    def congruence(self, var: Variable, T: sp.csr_matrix, coef: float):
        """Add ``coef * T' V T`` for a symmetric, diagonal or scalar*I variable ``V`` (``T``: n x m)."""
        T = sp.csr_matrix(T)
        rows = [
            (T.indices[T.indptr[i] : T.indptr[i + 1]], T.data[T.indptr[i] : T.indptr[i + 1]])
            for i in range(T.shape[0])
        ]
        if var.structure == "scalar":
            for a_idx, a_val in rows:
                self._outer(var.offset, a_idx, a_val, a_idx, a_val, coef / 2)
            return
        if var.structure in ("diagonal", "vector", "subspace"):
            for i, (a_idx, a_val) in enumerate(rows):
                self._outer(var.offset + i, a_idx, a_val, a_idx, a_val, coef / 2)
            if var.structure == "subspace":  # T'(V S V')T = sum_{a<=b} s_ab (u_a u_b' + u_b u_a'), u = T'V
                self._subspace_terms(var, np.asarray(T.T @ var.basis), coef)
            return
        k = var.offset
        for i in range(var.n):
            for j in range(i, var.n):
                a_idx, a_val = rows[i]
                b_idx, b_val = rows[j]
                # V = sum_{i<=j} v_ij (E_ij + E_ji) for i < j, v_ii E_ii:  T'E_ijT = t_i t_j'
                self._outer(k, a_idx, a_val, b_idx, b_val, coef if i != j else coef / 2)
                k += 1

    def _subspace_terms(self, var: Variable, U: np.ndarray, coef: float):
        """Add ``coef * U S U'`` for the ``S`` block of a ``subspace`` variable (``U``: m x r, dense): its
        rank-two terms for the KKT solver, and one ``LowRank`` in place of their dense columns of ``G``."""
        k = var.offset + var.n
        nz = [np.flatnonzero(U[:, a]) for a in range(var.rank)]
        first = len(self.terms)
        for a in range(var.rank):
            for b in range(a, var.rank):
                self._outer(k, nz[a], U[nz[a], a], nz[b], U[nz[b], b], coef if a != b else coef / 2)
                k += 1
        self.lowrank_terms.update(range(first, len(self.terms)))
        self.lowrank.append(LowRank(var, U, coef))

    def diag_bilinear(self, var: Variable, L: sp.csr_matrix, R: sp.csr_matrix, coef: float, repeat: int = 1):
        """Add ``coef * (L' diag(v (x) 1_repeat) R + R' diag(v (x) 1_repeat) L)`` (``L``, ``R``: n x m)."""
        L, R = sp.csr_matrix(L), sp.csr_matrix(R)
        for i in range(var.n * repeat):
            a = slice(L.indptr[i], L.indptr[i + 1])
            b = slice(R.indptr[i], R.indptr[i + 1])
            self._outer(var.offset + i // repeat, L.indices[a], L.data[a], R.indices[b], R.data[b], coef)

    def weight(self, w: Weight, offset: int, coef: float):
        """Add ``coef * W`` on the diagonal block at ``offset`` (``W`` = rho I, X, X (x) I_N or const)."""
        if w.kind == "const":
            self.F0[offset : offset + w.n, offset : offset + w.n] += coef * w.constant
            return
        var, N = w.variable, w.kron
        if w.kind == "rho":
            idx = offset + np.arange(w.n)
            self.units(var.offset, idx, idx, coef / 2)
            return
        if var.structure in ("diagonal", "subspace"):  # v_i on rows i*N + t
            idx = offset + np.arange(var.n * N)
            self.units(var.offset + (idx - offset) // N, idx, idx, coef / 2)
            if var.structure == "subspace":  # V S V' (x) I_N: the basis on the rows i*N + t, for each t
                for t in range(N):
                    U = np.zeros((self.m, var.rank))
                    U[offset + np.arange(var.n) * N + t] = var.basis
                    self._subspace_terms(var, U, coef)
            return
        # the upper triangle i <= j row by row (the variable's order), each pair on its N rows
        iu, ju = np.triu_indices(var.n)
        t = np.tile(np.arange(N), len(iu))  # channel-major: index ch*N + t
        iu, ju, k = np.repeat(iu, N), np.repeat(ju, N), np.repeat(var.offset + np.arange(len(iu)), N)
        self.units(k, offset + iu * N + t, offset + ju * N + t, np.where(iu != ju, coef, coef / 2))

    def build(self, name, system, blocks) -> Lmi:
        n, m = self._n[0], self.m
        # every term as (column, a, b, coefficient) in the order added; unit batches stay arrays
        parts = []  # (columns, nnz of a, a rows, a values, nnz of b, b rows, b values, coefficients)
        for t in self.terms:
            if isinstance(t, _UnitBatch):
                one, ones = np.ones(len(t.cols), np.int64), np.ones(len(t.cols))
                parts.append((t.cols, one, t.i, ones, one, t.j, ones, t.coef))
            else:
                k, ai, av, bi, bv, c = t
                parts.append(([k], [len(ai)], ai, av, [len(bi)], bi, bv, [c]))
        if parts:
            cols, nnz_a, a_idx, a_val, nnz_b, b_idx, b_val, coef = (np.concatenate([p[f] for p in parts])
                                                                    for f in range(8))
            cols, coef = cols.astype(np.int64), coef.astype(float)
            U, V = _columns(nnz_a, a_idx, a_val, m), _columns(nnz_b, b_idx, b_val, m)
        else:
            cols, coef = np.zeros(0, dtype=np.int64), np.zeros(0)
            U = V = sp.csc_matrix((m, 0))
        R = len(cols)
        rows_, cols_, vals_ = [], [], []
        # columns made of many terms (a congruence through a flatten): F_k = U_k C V_k' + V_k C U_k' as one
        # sparse product, which merges the duplicate entries far faster than a sort of all of them
        counts = np.bincount(cols, minlength=n) if R else np.zeros(n, dtype=np.int64)
        many = counts >= 8
        for term in self.lowrank:  # (their columns of G are not formed: see LowRank)
            many[term.columns] = False
        for k in np.flatnonzero(many):
            sel = np.flatnonzero(cols == k)
            Fk = (U[:, sel] @ sp.diags(coef[sel]) @ V[:, sel].T).tocoo()
            Fk = (Fk + Fk.T).tocoo()
            rows_.append(Fk.col.astype(np.int64) * m + Fk.row)
            vals_.append(Fk.data)
            cols_.append(np.full(Fk.data.shape, k))
        for index, t in enumerate(self.terms):
            if index in self.lowrank_terms:
                continue
            if isinstance(t, _UnitBatch):  # vec(e_i e_j') = e_{j m + i}, plus the transpose
                keep = ~many[t.cols]
                i, j, c, k = t.i[keep], t.j[keep], t.coef[keep], t.cols[keep]
                rows_ += [j * m + i, i * m + j]
                vals_ += [c, c]
                cols_ += [k, k]
                continue
            k, ai, av, bi, bv, c = t
            if many[k]:
                continue
            # vec(a b') = kron(b, a), plus its transpose
            rows_ += [(bi[:, None] * m + ai[None, :]).ravel(), (ai[:, None] * m + bi[None, :]).ravel()]
            v = (bv[:, None] * av[None, :]).ravel() * c
            vals_ += [v, (av[:, None] * bv[None, :]).ravel() * c]
            cols_ += [np.full(v.shape, k), np.full(v.shape, k)]
        if rows_:
            G = sp.coo_matrix(
                (np.concatenate(vals_), (np.concatenate(rows_), np.concatenate(cols_))), shape=(m * m, n)
            ).tocsc()
            G.sum_duplicates()
        else:
            G = sp.csc_matrix((m * m, n))
        return Lmi(name, system, tuple(blocks), self.F0, G, Factored(U, V, coef, cols), tuple(self.lowrank))


@dataclass(frozen=True)
class _UnitBatch:
    """Unit terms ``coef_r (e_{i_r} e_{j_r}' + e_{j_r} e_{i_r}')`` of ``F_{cols_r}``, one batch."""

    cols: np.ndarray
    i: np.ndarray
    j: np.ndarray
    coef: np.ndarray


def _columns(nnz: np.ndarray, idx: np.ndarray, val: np.ndarray, m: int) -> sp.csc_matrix:
    """Sparse m x R matrix whose column r has the next ``nnz[r]`` entries of ``val`` at rows of ``idx``."""
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    return sp.csc_matrix((np.asarray(val, float), np.asarray(idx, np.int64), indptr), shape=(m, len(nnz)))


def selector(n: int, offset: int, m: int) -> sp.csr_matrix:
    """Selection ``[0 I 0]`` (n x m) picking coordinates ``offset .. offset+n-1``."""
    return sp.csr_matrix((np.ones(n), (np.arange(n), offset + np.arange(n))), shape=(n, m))


def place_block(M: np.ndarray, col_offset: int, m: int) -> sp.csr_matrix:
    """``[0 M 0]``: the matrix ``M`` (r x c) placed at columns ``col_offset..`` of an r x m matrix."""
    M = sp.csr_matrix(M)
    out = sp.hstack(
        [
            sp.csr_matrix((M.shape[0], col_offset)),
            M,
            sp.csr_matrix((M.shape[0], m - col_offset - M.shape[1])),
        ],
        format="csr",
    )
    return out

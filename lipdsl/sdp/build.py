"""Build the dissipativity SDP: lowered.Network -> Sdp (LMIs as F0 + sum_k x_k F_k, sparse; PICOS on demand).

For a system ``(A, B, C, D)`` followed by an activation with slope in ``[alpha, beta]``, input weight ``X_in``
and output weight ``X_out`` (method.md §4-5, the paper's Corollary 10 with general slopes)::

    M = [[P - A'PA + 2ab C'LC,   -A'PB + 2ab C'LD,        -(a+b) C'L],
         [      .,               X_in - B'PB + 2ab D'LD,  -(a+b) D'L],
         [      .,                     .,                  2L - X_out]]  >= 0,   L = diag(lambda) >= 0,

which makes ``sum_t |dw_t|^2_{X_out} <= sum_t |du_t|^2_{X_in}`` along any two trajectories from rest. A linear
system (no activation) uses
``[[P - A'PA - C'X_out C, -A'PB - C'X_out D], [., X_in - B'PB - D'X_out D]] >= 0``.
The chain starts with ``X_in = rho I`` and ends with ``X_out = I``; a flatten makes the next input weight
``X (x) I_N`` (channel-major); pooling keeps ``X`` (diagonal before max pooling, ``X >= 0`` explicitly where
no later LMI implies it); a system that reads its input in blocks of ``S`` samples (an overlapping average
pool, ``System.block_in``) sees ``X (x) I_S``. When the last layer is a linear dense map after an
activation, its constraint ``X_{l-1} >= W'W`` is tight at the optimum, so ``X_{l-1} := W'W`` is
substituted (method.md §8).
When the network ends in ``flatten -> linear dense W`` (m outputs from c x N), the constraint
``X (x) I_N - W'W >= 0`` (cN rows) is solved in the inverse ``Y = X^-1`` instead: it is equivalent to
``I_m - sum_t W_t Y W_t' >= 0`` (m rows; ``W_t`` the columns of time t), and the previous system's
``-X`` becomes the Schur form ``[[., 0], [., 2L, I], [0, I, Y]] >= 0`` (``[[Q, E'], [E, Y]] >= 0`` for a
linear system) - exact, and an LMI of cN rows turns into one of m. ``certify`` maps ``Y`` back to ``X``.
When it ends in ``flatten -> dense W + activation [0, b]`` with a constant output weight ``E = F'F``
(``W_2'W_2`` substituted, or ``I``), its LMI ``[[X (x) I_N, -b W'L], [-b L W, 2L - E]] >= 0`` (cN + n rows)
is, for ``X > 0`` and ``L > 0`` (Schur complement on ``X (x) I_N``, congruence with ``M = L^-1``, Schur
complement again), equivalent to

    [[2M - b^2 sum_t W_t Y W_t',  M F'],
     [F M,                        I_r ]]  >= 0,     Y = X^-1,  M = L^-1  (n + r rows),

linear in ``(Y, M)``; used when it is smaller (ECG: 156 rows -> 60 + 5, plus 3 Schur rows upstream).
Only ``alpha = 0``: a nonzero ``alpha`` adds ``2ab W'LW`` to the flattened block, which has no such form.
The bound is ``L = sqrt(rho) * factor`` (scales and pooling gains). ``P >= 0`` is implied by the (1,1)
block when ``A`` is nilpotent and ``alpha*beta <= 0``, so it is added only when ``alpha*beta > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from lipdsl import limits

from lipdsl.model import lowered
from lipdsl.errors import UnsupportedError


#: Weight of the trace term that makes the frequency-form SDP's optimum unique (Sdp.solver_objective).
FREQUENCY_TRACE = 1e-3


@dataclass(frozen=True)
class Variable:
    """A block of the decision vector ``x``: ``rho``, a system's ``P``, ``lambda`` or an output weight ``X``.

    ``structure``: ``scalar`` (1 entry), ``symmetric`` (upper triangle, row by row: n(n+1)/2 entries),
    ``diagonal`` or ``vector`` (n entries).
    """

    name: str
    role: str
    system: str | None
    n: int
    structure: str
    offset: int

    @property
    def dim(self) -> int:
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
        M = np.zeros((self.n, self.n))
        iu = np.triu_indices(self.n)
        M[iu] = v
        return M + np.triu(M, 1).T

    def pack(self, value) -> np.ndarray:
        """The entries of ``x[self.slice]`` that ``value`` returns ``value`` for (its inverse)."""
        if self.structure == "scalar":
            return np.array([float(value)])
        if self.structure == "vector":
            return np.asarray(value, dtype=float)
        if self.structure == "diagonal":
            return np.diag(value).astype(float)
        return np.asarray(value, dtype=float)[np.triu_indices(self.n)]


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
class Lmi:
    """``F(x) = F0 + sum_k x_k F_k >= 0`` with ``vec(F(x)) = vec(F0) + G x`` (column-major vec, m^2 rows)."""

    name: str
    system: str | None
    blocks: tuple[tuple[str, int], ...]  # (label, size) of the diagonal blocks, in order
    F0: np.ndarray
    G: sp.csc_matrix
    factored: Factored

    @property
    def size(self) -> int:
        return self.F0.shape[0]

    def value(self, x: np.ndarray) -> np.ndarray:
        m = self.size
        F = self.F0 + (self.G @ x).reshape(m, m, order="F")
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
                c[[v.offset + i * v.n - i * (i - 1) // 2 for i in range(v.n)]] += eps
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

    def _units(self, cols, i, j, coef):
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
        if var.structure in ("diagonal", "vector"):
            for i, (a_idx, a_val) in enumerate(rows):
                self._outer(var.offset + i, a_idx, a_val, a_idx, a_val, coef / 2)
            return
        k = var.offset
        for i in range(var.n):
            for j in range(i, var.n):
                a_idx, a_val = rows[i]
                b_idx, b_val = rows[j]
                # V = sum_{i<=j} v_ij (E_ij + E_ji) for i < j, v_ii E_ii:  T'E_ijT = t_i t_j'
                self._outer(k, a_idx, a_val, b_idx, b_val, coef if i != j else coef / 2)
                k += 1

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
            self._units(var.offset, idx, idx, coef / 2)
            return
        if var.structure == "diagonal":  # v_i on rows i*N + t
            idx = offset + np.arange(var.n * N)
            self._units(var.offset + (idx - offset) // N, idx, idx, coef / 2)
            return
        # the upper triangle i <= j row by row (the variable's order), each pair on its N rows
        iu, ju = np.triu_indices(var.n)
        t = np.tile(np.arange(N), len(iu))  # channel-major: index ch*N + t
        iu, ju, k = np.repeat(iu, N), np.repeat(ju, N), np.repeat(var.offset + np.arange(len(iu)), N)
        self._units(k, offset + iu * N + t, offset + ju * N + t, np.where(iu != ju, coef, coef / 2))

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
        for k in np.flatnonzero(many):
            sel = np.flatnonzero(cols == k)
            Fk = (U[:, sel] @ sp.diags(coef[sel]) @ V[:, sel].T).tocoo()
            Fk = (Fk + Fk.T).tocoo()
            rows_.append(Fk.col.astype(np.int64) * m + Fk.row)
            vals_.append(Fk.data)
            cols_.append(np.full(Fk.data.shape, k))
        for t in self.terms:
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
        return Lmi(name, system, tuple(blocks), self.F0, G, Factored(U, V, coef, cols))


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


def _sel(n: int, offset: int, m: int) -> sp.csr_matrix:
    """Selection ``[0 I 0]`` (n x m) picking coordinates ``offset .. offset+n-1``."""
    return sp.csr_matrix((np.ones(n), (np.arange(n), offset + np.arange(n))), shape=(n, m))


def _place(M: np.ndarray, col_offset: int, m: int) -> sp.csr_matrix:
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


def system_lmi_terms(
    b: LmiBuilder, sys: lowered.System, P, lam, w_in: Weight, w_out: Weight, inverse_out: bool = False,
    repeat: int = 1, inner: tuple = (),
):
    """Add the terms of one system's LMI (module docstring) to ``b``; coordinates (state, input, output).

    ``inverse_out``: ``w_out`` holds ``Y = X_out^-1``; ``-X_out`` is written in Schur form with ``ny`` more
    rows (after the output rows, or after the input rows for a linear system). ``repeat``: each multiplier
    serves ``repeat`` consecutive outputs (the real and imaginary parts of a frequency LMI). ``inner``: the
    multipliers of a residual block's internal activations (``System.internal``): coordinates (state,
    input, internal activations' outputs, output), each internal pair ``(v_j, w_j)`` adding the
    activation's term as the output pair does (docs/method.md, residual blocks).
    """
    ss = sys.ss
    nx, nu = ss.nx, ss.nu
    ny = sys.n_out
    m = b.m
    xs, us, ws = 0, nx, nx + nu
    if nx:
        E2 = _place(np.hstack([ss.A, ss.B]), 0, m)  # x+ = [A B](x,u)
        b.congruence(P, _sel(nx, xs, m), +1.0)
        b.congruence(P, E2, -1.0)
    b.weight(w_in, us, +1.0)
    CD = np.hstack([ss.C, ss.D])
    r = 0  # a residual block's internal activations: w_j = phi_j(v_j), v_j = rows r.. of [C D] (feedforward)
    for act, lam_j in zip(sys.internal, inner):
        Pv, Pw = _place(CD[r : r + act.n], 0, m), _sel(act.n, nx + sys.n_in + r, m)
        if act.alpha * act.beta != 0:
            b.diag_bilinear(lam_j, Pv, Pv, act.alpha * act.beta, repeat)
        b.diag_bilinear(lam_j, Pv, Pw, -(act.alpha + act.beta), repeat)
        b.diag_bilinear(lam_j, Pw, Pw, 1.0, repeat)
        r += act.n
    CD = CD[r:]
    Psi_v = _place(CD, 0, m)  # v = C x + D u (the system's output rows)
    if sys.slope is not None:
        alpha, beta = sys.slope
        Psi_w = _sel(ny, ws, m)
        if alpha * beta != 0:
            b.diag_bilinear(lam, Psi_v, Psi_v, alpha * beta, repeat)  # 2ab C'LC etc. (symmetrised)
        b.diag_bilinear(lam, Psi_v, Psi_w, -(alpha + beta), repeat)
        b.diag_bilinear(lam, Psi_w, Psi_w, 1.0, repeat)  # 2 L
        if inverse_out:  # [[2L, I], [I, Y]]: 2L - Y^-1 by a Schur complement
            zs = ws + ny
            b.F0[ws + np.arange(ny), zs + np.arange(ny)] = 1.0
            b.F0[zs + np.arange(ny), ws + np.arange(ny)] = 1.0
            b.weight(w_out, zs, +1.0)
        else:
            b.weight(w_out, ws, -1.0)
    elif inverse_out:  # [[Q, E'], [E, Y]]: Q - E' Y^-1 E by a Schur complement
        zs = nx + nu
        b.F0[: nx + nu, zs : zs + ny] += CD.T
        b.F0[zs : zs + ny, : nx + nu] += CD
        b.weight(w_out, zs, +1.0)
    else:
        # - [C D]' X_out [C D]
        if w_out.kind == "const":
            b.F0[: nx + nu, : nx + nu] -= CD.T @ w_out.constant @ CD
        else:  # X (x) I_k: sum_t T_t' X T_t with T_t the rows i*k + t (channel-major)
            k = w_out.kron
            for t in range(k):
                b.congruence(w_out.variable, Psi_v[t::k], -1.0)


def frequency_response(ss: lowered.StateSpace, omegas: np.ndarray) -> np.ndarray:
    """``H(e^{iw}) = D + sum_j C A^j B e^{-iw(j+1)}`` at each ``w`` (``A`` nilpotent: a finite sum)."""
    limits.require_time(2.0 * ss.nx**3 * max(ss.nu, 1) + 8.0 * len(omegas) * ss.nx * ss.nu * ss.ny,
                        f"the frequency response of a system with {ss.nx} states",
                        hint="the frequency form needs the filter's taps C A^j B: use smaller kernels or "
                        "dilations (states = dilation*(kernel-1)*c_in)")
    taps = [ss.D]
    AjB = ss.B
    for _ in range(ss.nx):
        limits.checkpoint("frequency response")
        if not AjB.any():
            break
        taps.append(ss.C @ AjB)
        AjB = ss.A @ AjB
    else:
        if AjB.any():
            raise ValueError("the state matrix is not nilpotent")  # pragma: no cover - FIR realizations are
    phase = np.exp(-1j * np.outer(omegas, np.arange(len(taps))))  # (K, J)
    taps = np.array(taps, dtype=complex)
    return (phase @ taps.reshape(len(taps), -1)).reshape((len(omegas),) + taps.shape[1:])  # one product


def _repeat_weight(w: Weight, r: int) -> Weight:
    """``W (x) I_r`` (the real embedding of a real weight when ``r = 2``)."""
    if r == 1:
        return w
    if w.kind == "rho":
        return Weight("rho", w.n * r, w.variable)
    if w.kind == "var":
        return Weight("var", w.n * r, w.variable, kron=w.kron * r)
    return Weight("const", w.n * r, constant=np.kron(w.constant, np.eye(r)))


def frequency_lmi_terms(b: LmiBuilder, sys: lowered.System, H: np.ndarray, lam, w_in: Weight, w_out: Weight,
                        inverse_out: bool = False, inner: tuple = ()):
    """The frequency-domain LMI of a system at one frequency (module docstring, KYP lemma).

    ``H`` is ``H(e^{iw})``; a complex one enters through its real embedding ``[[Re H, -Im H], [Im H, Re H]]``
    with rows and columns interleaved (index ``2 i + part``), so the weights become ``X (x) I_2`` and each
    multiplier serves two rows.
    """
    if np.iscomplexobj(H):
        D = np.kron(H.real, np.eye(2)) + np.kron(H.imag, np.array([[0.0, -1.0], [1.0, 0.0]]))
        r = 2
    else:
        D, r = H, 1
    internal = tuple(lowered.Internal(a.name, a.n * r, a.alpha, a.beta) for a in sys.internal)  # r rows each
    static = lowered.System(sys.name, sys.layers, "frequency",
                            lowered.StateSpace(np.zeros((0, 0)), np.zeros((0, D.shape[1])),
                                               np.zeros((D.shape[0], 0)), D),
                            sys.scale, sys.slope, sys.activation, internal=internal)
    system_lmi_terms(b, static, None, lam, _repeat_weight(w_in, r), _repeat_weight(w_out, r), inverse_out, r,
                     inner=inner)


def in_frequency_form(nx: int, nu: int, ny: int, slope: tuple[float, float] | None) -> bool:
    """Whether ``build_sdp(frequencies=K)`` imposes a system's LMI in the frequency domain: it has a state,
    at least as many states as inputs and outputs together (a small P, e.g. of a first layer with one
    input channel, is cheaper than K frequency LMIs), and no ``P >= 0`` constraint (``alpha * beta > 0``)."""
    return nx > 0 and nx >= nu + ny and not (slope is not None and slope[0] * slope[1] > 0)


def frequency_grid(count: int) -> np.ndarray:
    """``count`` frequencies ``pi j / (count - 1)``, ``j = 0 .. count-1`` (both ends included)."""
    return np.pi * np.arange(count) / max(count - 1, 1)


def final_inverse_terms(b: LmiBuilder, sys: lowered.System, w_in: Weight):
    """``I_m - sum_t W_t Y W_t' >= 0``: the final ``X (x) I_N - W'W >= 0`` in ``Y = X^-1`` (module doc)."""
    W = sys.ss.D
    c, N = w_in.variable.n, w_in.kron
    b.F0[np.arange(W.shape[0]), np.arange(W.shape[0])] += 1.0
    for t in range(N):
        Wt = W[:, np.arange(c) * N + t]  # channel-major: column ch*N + t
        b.congruence(w_in.variable, sp.csr_matrix(Wt.T), -1.0)


def final_inverse_activation_terms(b: LmiBuilder, sys: lowered.System, w_in: Weight, mu: Variable,
                                   F: np.ndarray):
    """``[[2M - beta^2 sum_t W_t Y W_t', M F'], [F M, I_r]] >= 0``, ``M = Lambda^-1`` (module docstring).

    The last activation layer ``w = phi(W u)``, slope ``[0, beta]``, input weight ``X (x) I_N`` (``Y = X^-1``)
    and constant output weight ``E = F'F``; coordinates (outputs, the r rows of ``F``).
    """
    W = sys.ss.D
    ny, m = W.shape[0], b.m
    beta = sys.slope[1]
    c, N = w_in.variable.n, w_in.kron
    out = _sel(ny, 0, m)
    b.diag_bilinear(mu, out, out, 1.0)  # 2M
    b.diag_bilinear(mu, out, _place(F.T, ny, m), 1.0)  # M F' and F M
    b.F0[ny + np.arange(F.shape[0]), ny + np.arange(F.shape[0])] += 1.0
    for t in range(N):
        Wt = W[:, np.arange(c) * N + t]  # channel-major: column ch*N + t
        b.congruence(w_in.variable, _place(Wt.T, 0, m), -(beta**2))


def _factor(E: np.ndarray) -> np.ndarray:
    """``F`` with ``F'F = E`` and as few rows as ``rank(E)`` (``E`` symmetric positive semidefinite)."""
    w, V = np.linalg.eigh((E + E.T) / 2)
    keep = w > w.max(initial=0.0) * E.shape[0] * np.finfo(float).eps
    return (V[:, keep] * np.sqrt(w[keep])).T


def build_sdp(net: lowered.Network, *, inverse: bool = True, frequencies: int | None = None) -> Sdp:
    """The layer-wise dissipativity SDP of ``net`` (see the module docstring for the LMIs).

    ``frequencies``: replace the LMI of each conv system with at least as many states as inputs and
    outputs together by its frequency-domain form on that many frequencies (no ``P`` among the solver's
    variables; ``P`` is recovered afterwards, see ``lipdsl.kyp``).
    """
    steps = list(net.steps)
    systems = [i for i, s in enumerate(steps) if isinstance(s, lowered.System)]
    if not systems:
        raise UnsupportedError(f"network {net.name!r} has no conv, dense or activation layer to bound")
    variables: list[Variable] = []
    count = [0]

    def new_var(name, role, system, n, structure) -> Variable:
        v = Variable(name, role, system, n, structure, count[0])
        count[0] += v.dim
        variables.append(v)
        return v

    rho = new_var("rho", "rho", None, 1, "scalar")
    notes: list[str] = []

    # Substitute X_{l-1} := W'W when the network ends in a linear dense layer after an activation.
    eliminated: np.ndarray | None = None
    eliminated_factor: np.ndarray | None = None
    last = steps[systems[-1]]
    if (
        len(systems) >= 2
        and last.kind == "dense"
        and last.slope is None
        and steps[systems[-2]].slope is not None
    ):
        between = steps[systems[-2] + 1 : systems[-1]]
        if all(isinstance(s, lowered.Pool) and s.op != "max" for s in between):
            eliminated = last.ss.D.T @ last.ss.D
            eliminated_factor = last.ss.D if last.ss.D.shape[0] <= last.ss.D.shape[1] else _factor(eliminated)
            notes.append(f"{last.name}: X_(l-1) := W'W substituted (tight at the optimum)")
            steps = steps[: systems[-1]] + steps[systems[-1] + 1 :]
            systems = systems[:-1]

    # Solve in Y = X^-1 when the network ends in flatten -> linear dense with fewer outputs than inputs.
    invert_at = None
    head_factor: np.ndarray | None = None  # F (E = F'F) when the last activation layer is solved in M, Y
    if inverse and len(systems) >= 2 and not steps[systems[-2]].internal:  # (no Schur form for blocks yet)
        final = steps[systems[-1]]
        kron = int(np.prod([st.length for st in steps[systems[-2] + 1 : systems[-1]]
                            if isinstance(st, lowered.Flatten)] or [1]))
        if final.kind == "dense" and final.slope is None and kron > 1 and final.ss.ny < final.ss.nu:
            invert_at = len(systems) - 2
            notes.append(f"{final.name}: X (x) I_{kron} - W'W >= 0 solved as I - W (Y (x) I) W' >= 0, "
                         f"Y = X^-1 ({final.ss.nu} -> {final.ss.ny} rows)")
        elif (final.kind == "dense" and final.slope is not None and final.slope[0] == 0 and final.slope[1] > 0
              and kron > 1 and final.ss.nx == 0):
            F = eliminated_factor if eliminated is not None else np.eye(final.ss.ny)
            before_rows = final.ss.nu + final.ss.ny
            after_rows = final.ss.ny + F.shape[0] + steps[systems[-2]].ss.ny  # (+ the Schur rows upstream)
            if after_rows < before_rows:
                invert_at, head_factor = len(systems) - 2, F
                notes.append(f"{final.name}: [[X (x) I_{kron}, -W'L], [-LW, 2L - E]] >= 0 solved in "
                             f"Y = X^-1, M = L^-1 as [[2M - W (Y (x) I) W', M F'], [F M, I]] >= 0 "
                             f"({before_rows} -> {final.ss.ny + F.shape[0]} rows)")

    nonneg: list[Variable] = [rho]
    links: list[Link] = []
    lmis: list[Lmi] = []
    psd_weights: list[Variable] = []
    prev_out: Weight | None = None
    # Walk: input weight of each system = output weight of the previous one, through pools/flattens.
    for pos, i in enumerate(systems):
        sys: lowered.System = steps[i]
        before = steps[(systems[pos - 1] + 1) if pos else 0 : i]
        kron = sys.block_in  # input in blocks of samples (an overlapping average pool): X (x) I_block_in
        for s in before:
            if isinstance(s, lowered.Flatten):
                kron *= s.length
        if pos == 0:
            w_in = Weight("rho", sys.n_in, rho)
        else:
            assert prev_out is not None
            if prev_out.kind == "var":
                w_in = Weight("var", sys.n_in, prev_out.variable, kron=kron)
            else:
                w_in = Weight("const", sys.n_in, constant=np.kron(prev_out.constant, np.eye(kron)))
        after = steps[i + 1 : systems[pos + 1]] if pos + 1 < len(systems) else steps[i + 1 :]
        diagonal = any(isinstance(s, lowered.Pool) and s.diagonal for s in after)
        pooled = any(isinstance(s, lowered.Pool) and s.op != "merged" for s in after)
        ny = sys.n_out
        if pos + 1 < len(systems):
            inverted = pos == invert_at
            # a lifted max pool: X (x) I_tied on the system's outputs, X on the next system's inputs
            tied = max((s.tied for s in after if isinstance(s, lowered.Pool)), default=1)
            X = new_var(f"{'Y' if inverted else 'X'}[{sys.name}]", "Xinv" if inverted else "X", sys.name,
                        ny // tied, "diagonal" if diagonal else "symmetric")
            w_out = Weight("var", ny, X, kron=tied)
            if diagonal:
                nonneg.append(X)
            consumer: lowered.System = steps[systems[pos + 1]]
            implied = inverted or (consumer.slope is not None and consumer.slope[0] * consumer.slope[1] <= 0)
            if pooled and not diagonal and not implied:  # (Y > 0, hence X > 0, is forced by its Schur LMI)
                psd_weights.append(X)
        elif eliminated is not None:
            w_out = Weight("const", ny, constant=eliminated)
        else:
            w_out = Weight("const", ny, constant=np.eye(ny))
        needs_P_psd = sys.ss.nx > 0 and ((sys.slope is not None and sys.slope[0] * sys.slope[1] > 0)
                                         or any(a.alpha * a.beta > 0 for a in sys.internal))
        gridded = (frequencies is not None and in_frequency_form(sys.ss.nx, sys.ss.nu, sys.ss.ny, sys.slope)
                   and not any(a.alpha * a.beta > 0 for a in sys.internal))
        P = None
        if sys.ss.nx and not gridded:
            P = new_var(f"P[{sys.name}]", "P", sys.name, sys.ss.nx, "symmetric")
        lam = None
        if sys.slope is not None and head_factor is not None and pos == len(systems) - 1:
            lam = new_var(f"M[{sys.name}]", "lambdainv", sys.name, ny, "vector")  # M = Lambda^-1
            nonneg.append(lam)
        elif sys.slope is not None:
            lam = new_var(f"lambda[{sys.name}]", "lambda", sys.name, ny, "vector")
            nonneg.append(lam)
        inner = []
        for act in sys.internal:  # a residual block's internal activations: one multiplier vector each
            inner.append(new_var(f"lambda[{sys.name}/{act.name}]", "lambda", sys.name, act.n, "vector"))
            nonneg.append(inner[-1])
        links.append(Link(sys, None, P, lam, w_in, w_out, needs_P_psd, tuple(inner)))  # lmi filled below
        prev_out = w_out

    n_ref = [count[0]]  # the solver's variables; the storage P of gridded systems come after them
    storage: list[Variable] = []
    for j, link in enumerate(links):
        if frequencies is not None and link.system.ss.nx and link.P is None:
            sys = link.system
            P = new_var(f"P[{sys.name}]", "P", sys.name, sys.ss.nx, "symmetric")
            storage.append(P)
            links[j] = Link(sys, None, P, link.lam, link.w_in, link.w_out, False, link.inner)
    omegas = frequency_grid(frequencies) if frequencies is not None else np.zeros(0)
    if storage:
        notes.append(f"{', '.join(v.system for v in storage)}: LMI imposed in the frequency domain on "
                     f"{frequencies} frequencies (KYP lemma); P from a Riccati equation afterwards, then "
                     "certified")
    final_links = []
    for link in links:
        sys = link.system
        nx, nu, ny = sys.ss.nx, sys.ss.nu, sys.n_out
        inverse_out = link.w_out.kind == "var" and link.w_out.variable.role == "Xinv"
        if link.lam is not None and link.lam.role == "lambdainv":  # the last activation layer in M, Y
            blocks = [("outputs", ny), ("F rows", head_factor.shape[0])]
            b = LmiBuilder(ny + head_factor.shape[0], n_ref)
            final_inverse_activation_terms(b, sys, link.w_in, link.lam, head_factor)
        elif link.w_in.kind == "var" and link.w_in.variable.role == "Xinv":  # I - W (Y (x) I) W' >= 0
            b = LmiBuilder(ny, n_ref)
            final_inverse_terms(b, sys, link.w_in)
            blocks = [("outputs", ny)]
        else:
            outputs = [("output", ny)] if sys.slope is not None else []
            extra = [("Y = X_out^-1", ny)] if inverse_out else []
            inputs = [("input", nu)] if not sys.internal else [("input", sys.n_in)] + [
                (f"w[{a.name}]", a.n) for a in sys.internal]
            blocks = [("state", nx)] + inputs + outputs + extra
            b = LmiBuilder(sum(size for _, size in blocks), n_ref)
            if link.P not in storage:
                system_lmi_terms(b, sys, link.P, link.lam, link.w_in, link.w_out, inverse_out,
                                 inner=link.inner)
            else:  # the frequency-domain LMIs; the link keeps the empty ``b`` as a stand-in of its LMI
                H = frequency_response(sys.ss, omegas)
                for w, Hw in zip(omegas, H):
                    limits.checkpoint("building the SDP")
                    real = w == 0 or w == np.pi
                    r = 1 if real else 2
                    fblocks = [(lbl, r * s) for lbl, s in blocks[1:]]  # (input, output, Y rows) x r
                    fb = LmiBuilder(sum(size for _, size in fblocks), n_ref)
                    frequency_lmi_terms(fb, sys, Hw.real if real else Hw, link.lam, link.w_in, link.w_out,
                                        inverse_out, link.inner)
                    name = f"LMI[{sys.name}](w={w:.4g})"
                    lmis.append(fb.build(name, sys.name, [x for x in fblocks if x[1]]))
        lmi = b.build(f"LMI[{sys.name}]", sys.name, [(lbl, s) for lbl, s in blocks if s])
        if link.P not in storage:
            lmis.append(lmi)
        final_links.append(Link(sys, lmi, link.P, link.lam, link.w_in, link.w_out, link.needs_P_psd,
                                link.inner))
        if link.needs_P_psd:
            bp = LmiBuilder(nx, n_ref)
            bp.congruence(link.P, _sel(nx, 0, nx), 1.0)
            lmis.append(bp.build(f"P[{sys.name}]>=0", sys.name, [("state", nx)]))
    for X in psd_weights:
        bx = LmiBuilder(X.n, n_ref)
        bx.congruence(X, _sel(X.n, 0, X.n), 1.0)
        lmis.append(bx.build(f"{X.name}>=0", X.system, [("weight", X.n)]))
    return Sdp(
        net,
        tuple(variables),
        tuple(lmis),
        tuple(nonneg),
        rho,
        net.factor,
        tuple(final_links),
        tuple(psd_weights),
        tuple(notes),
        tuple(storage),
    )

"""LipSDP (Fazlyab et al. 2019) on the unrolled network: typed.Network -> BaselineResult (one LMI, or its
chordal split, verified with numpy at the solver's multipliers)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from lipdsl import limits
from lipdsl.baselines.unrolled import (
    BaselineResult,
    UnrolledLayer,
    spectral_norm,
    unit_scaled_divide,
    unroll,
    unroll_graph,
)
from lipdsl.errors import CertificateError, SolveError, UnsupportedError
from lipdsl.lang import typed
from lipdsl.rigorous import mul_up, sqrt_up

if TYPE_CHECKING:
    from lipdsl.sdp.problem import Lmi, Variable

#: LipSDP asks its (scaled) hidden block to be <= -HIDDEN_MARGIN * I; see ``lipsdp``.
HIDDEN_MARGIN = 1e-7


def _prune(mats: list[sp.csr_matrix]) -> list[sp.csr_matrix] | None:
    """Drop hidden neurons whose output is constant (zero row of ``M_k``) or unused (zero column of
    ``M_{k+1}``); they do not change the Lipschitz constant and would leave a multiplier free in the SDP."""
    mats = list(mats)
    changed = True
    while changed:
        changed = False
        for k in range(len(mats) - 1):
            used = np.asarray(abs(mats[k]).sum(axis=1)).ravel() != 0
            used &= np.asarray(abs(mats[k + 1]).sum(axis=0)).ravel() != 0
            if not used.all():
                if not used.any():
                    return None
                mats[k] = mats[k][used]
                mats[k + 1] = mats[k + 1][:, used]
                changed = True
    return mats


def _graph_data(net: typed.Network, length: int | None):
    """``_lipsdp_data`` for a network with residual blocks: the unrolled graph (``unroll_graph``) in graph
    form (``_as_graph``), pruned and scaled.

    Pruning as ``_prune``: a neuron whose row of ``M_k`` is zero (constant output) or whose column is zero
    in every later ``M_j`` and in ``M_out`` (unused) is dropped, repeatedly.

    Scaling: with ``w_k = g_k w~_k``, ``w~_k = psi_k(v_k / c_k)``, ``psi_k(s) = phi_k(c_k s) / g_k`` and
    ``g_k = c_k m_k`` (``m_k = max |slope|``), ``psi_k`` has the slope ``[alpha_k, beta_k] / m_k`` and
    the scaled net reads ``M~_k = M_k diag(1, g_1, ..., g_(k-1)) / c_k``, with ``c_k`` such that
    ``||M~_k|| = 1``; ``M~_out = M_out diag(1, g) / s``, ``s = ||M_out diag(1, g)||`` the scale. The LMI's
    congruence by ``diag(1, g)``, divided by ``s^2``, is the scaled net's LMI with ``rho~ = rho / s^2`` and
    ``lam~_q = lam_q g_k^2 / s^2``: the optimum is unchanged; on a chain this is ``_lipsdp_data``'s scaling
    (``g_k = prod_j s_j m_j``).
    """
    g = unroll_graph(net, length)
    n0 = g.n0
    if not g.hidden:
        return [], [], g.out, _finite_norm(g.out, "the output")
    sizes = [n0] + [U.matrix.shape[0] for U in g.hidden]
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    N = int(offs[-1])
    # one matrix over z for every neuron's pre-activation (rows offs[1]..N) and the outputs (rows N..)
    rows = [sp.csr_matrix((n0, N))]
    for U in g.hidden:
        m = max(abs(U.slope[0]), abs(U.slope[1]))
        M = U.matrix if m != 0 else U.matrix * 0.0  # a constant activation: its neurons are dead
        rows.append(sp.csr_matrix((M.data, M.indices, M.indptr), shape=(M.shape[0], N)))
    G = sp.vstack(rows + [g.out], format="csr")
    G.eliminate_zeros()
    live = np.ones(N, bool)
    while True:
        nz_row = np.diff((G[:, np.flatnonzero(live)]).tocsr().indptr) != 0  # a neuron reading something
        reader = np.concatenate([live, np.ones(G.shape[0] - N, bool)])  # rows still in the graph
        used = np.asarray(abs(G[np.flatnonzero(reader)]).sum(axis=0)).ravel() != 0
        new = live.copy()
        new[n0:] &= nz_row[n0:N] & used[n0:]
        if (new == live).all():
            break
        live = new
    keep_blocks = [k for k in range(1, len(sizes)) if live[offs[k]:offs[k + 1]].any()]
    idx = np.flatnonzero(live)
    Gl = G[:, idx].tocsr()
    new_sizes = [n0] + [int(live[offs[k]:offs[k + 1]].sum()) for k in keep_blocks]
    new_offs = np.concatenate([[0], np.cumsum(new_sizes)]).astype(int)
    gain = np.ones(len(idx))  # g of each live column of z (1 on the input)
    mats, slopes = [], []
    for j, k in enumerate(keep_blocks):
        U = g.hidden[k - 1]
        r = offs[k] + np.flatnonzero(live[offs[k]:offs[k + 1]])
        width = int(new_offs[j + 1])
        M = Gl[r][:, :width] @ sp.diags(gain[:width])
        c = _finite_norm(M, U.name)
        m = max(abs(U.slope[0]), abs(U.slope[1]))
        mats.append(sp.csr_matrix(unit_scaled_divide(M, c)))
        slopes.append((U.slope[0] / m, U.slope[1] / m))
        gain[new_offs[j + 1]:new_offs[j + 2]] = c * m
    out = Gl[N:] @ sp.diags(gain)
    s_out = _finite_norm(out, "the output")
    if s_out == 0:
        return None, None, None, 0.0
    return mats, slopes, sp.csr_matrix(unit_scaled_divide(out, s_out)), s_out


def _as_graph(mats, out):
    """``(mats, out)`` in graph form: ``M_k`` over all of ``z``'s blocks before its own (``offs[k+1]``
    columns, ``_layout``), ``M_out`` over all of ``z``. A chain (``M_k`` over block ``k`` only, ``M_out``
    over the last block: what ``_lipsdp_data`` returns for a sequential net) is padded with zero columns;
    a graph is returned as it is. The two are told apart by the widths (a chain's ``M_out`` has ``n_l``
    columns, a graph's ``n_0 + ... + n_l``)."""
    sizes, offs = _layout(mats)
    if all(M.shape[1] == offs[k + 1] for k, M in enumerate(mats)) and out.shape[1] == offs[-1]:
        return [sp.csr_matrix(M) for M in mats], sp.csr_matrix(out)
    if not (all(M.shape[1] == sizes[k] for k, M in enumerate(mats)) and out.shape[1] == sizes[-1]):
        raise ValueError("LipSDP data: the matrices' widths fit neither a chain nor a graph")
    full = [sp.hstack([sp.csr_matrix((M.shape[0], int(offs[k]))), sp.csr_matrix(M)], format="csr")
            for k, M in enumerate(mats)]
    out = sp.hstack([sp.csr_matrix((out.shape[0], int(offs[-2]))), sp.csr_matrix(out)], format="csr")
    return full, out


def _reduce_graph_input(mats, out):
    """The input reduction of ``lipsdp`` in graph form: the LMI depends on ``x_0`` only through
    ``K x_0`` (``K`` the input columns of every ``M_k`` and of ``M_out``) and ``-rho |x_0|^2``; with
    ``K = U S V^T`` (thin SVD, ``r`` rows < ``n_0``) the input columns become ``U S`` (``r`` of them): the
    directions ``V_perp`` only add ``-rho I`` (an equivalent, smaller LMI)."""
    n0 = mats[0].shape[1]
    K = sp.vstack([M[:, :n0] for M in mats] + [out[:, :n0]], format="csr")
    if K.shape[0] >= n0:
        return mats, out
    U, S, _ = np.linalg.svd(K.toarray(), full_matrices=False)
    R = sp.csr_matrix(U * S)
    pieces, at = [], 0
    for M in mats + [out]:
        pieces.append(sp.hstack([R[at:at + M.shape[0]], M[:, n0:]], format="csr"))
        at += M.shape[0]
    return pieces[:-1], pieces[-1]


def _lipsdp_data(net: typed.Network, length: int | None):
    """Unrolled, scaled data of the LipSDP LMI: hidden matrices, slopes, output matrix and the scale
    (a chain for a sequential net, graph form (``_graph_data``) for a net with residual blocks)."""
    if net.residual:
        return _graph_data(net, length)
    steps = unroll(net, length)
    for U in steps:
        if U.maxpool is not None:
            raise UnsupportedError(
                f"LipSDP needs slope-restricted activations, but max pool {U.name!r} is not one "
                "(it is a maximum over a window, not an elementwise map)",
                hint="use the naive bound or the dissipative method, which handle max pooling")
    hidden = [U for U in steps if U.slope is not None]
    last = steps[-1].matrix
    out = last if steps[-1].slope is None else sp.identity(last.shape[0], format="csr")
    if steps[-1].slope is None:
        assert all(U.slope is not None for U in steps[:-1])
    hidden_mats = _prune([sp.csr_matrix(U.matrix) for U in hidden] + [sp.csr_matrix(out)])
    if hidden_mats is None:
        return None, None, None, 0.0  # some layer has no live neuron: the output is constant
    hidden = [UnrolledLayer(M, U.slope, U.name) for M, U in zip(hidden_mats[:-1], hidden)]
    out = hidden_mats[-1]
    mats, slopes, scale = [], [], 1.0
    for U in hidden:
        s = _finite_norm(U.matrix, U.name)
        m = max(abs(U.slope[0]), abs(U.slope[1]))
        if s == 0 or m == 0:
            return None, None, None, 0.0  # the network is constant
        # NOTE: phi(s M^ x) with slope [a, b] = S_k psi(M^ x / S_{k-1}) with psi of slope [a/m, b/m]; the
        # LipSDP optimum is unchanged by this change of variables, and all matrices have unit norm.
        mats.append(unit_scaled_divide(U.matrix, s))
        slopes.append((U.slope[0] / m, U.slope[1] / m))
        scale = mul_up(scale, mul_up(s, m))  # (rounded up: the bound is scale * sqrt(rho))
    s_out = _finite_norm(out, "the output")
    if s_out == 0:
        return None, None, None, 0.0
    return mats, slopes, unit_scaled_divide(out, s_out), mul_up(scale, s_out)


def _finite_norm(M, name: str) -> float:
    """``spectral_norm(M)``, or a CertificateError when the merged map overflowed float64."""
    s = spectral_norm(M)
    if not math.isfinite(s):
        raise CertificateError(f"LipSDP: the map before {name!r} overflows float64 (norm beyond 1.8e308)",
                               hint="rescale the weights (the bound scales with them)")
    return s


def _layout(mats) -> tuple[list[int], np.ndarray]:
    """Block sizes ``n_0, ..., n_l`` of ``x = [x_0; ...; x_l]`` and their offsets (``offs[-1]`` = total)."""
    sizes = [mats[0].shape[1]] + [M.shape[0] for M in mats]
    return sizes, np.concatenate([[0], np.cumsum(sizes)])


def _neurons(mats, slopes, offs):
    """Every hidden neuron in order: ``(q, k, alpha, beta, idx, v, e)`` with ``q`` its running index, ``k``
    its layer, ``a_q`` (its row of ``M_k`` in graph form, ``_as_graph``: over the blocks before its own) as
    indices ``idx`` and values ``v``, and ``e`` the index of its output on block ``k + 1`` (the LipSDP LMI of
    ``_lmi_coefficients`` and ``_lipsdp_terms``)."""
    q = 0
    for k, (M, (a, b)) in enumerate(zip(mats, slopes)):
        M = sp.csr_matrix(M)
        for r in range(M.shape[0]):
            lo, hi = M.indptr[r], M.indptr[r + 1]
            yield q, k, a, b, M.indices[lo:hi], M.data[lo:hi], int(offs[k + 1] + r)
            q += 1


def _lmi_coefficients(mats, slopes, out, mode):
    """Sparse coefficients of ``F(rho, lam) = C - rho E0 + sum_q lam_q F_q`` (to be ``<= 0``), vectorised.

    With ``x = [x_0; x_1; ...; x_l]`` (sizes ``n_0, ..., n_l``), neuron ``q`` of hidden layer ``k`` has
    pre-activation row ``a_q`` (row of ``M_k`` placed on block ``k-1``) and output ``e_q`` (on block ``k``):
    ``F_q = -2 alpha beta a_q a_q^T + (alpha + beta)(a_q e_q^T + e_q a_q^T) - 2 e_q e_q^T``,
    ``E0 = diag(I_{n_0}, 0)``, ``C = diag(0, ..., 0, M_out^T M_out)``. Layer mode sums the ``F_q`` of a layer.
    Returns ``(C, E0, Fcoef, N)`` with columns ``vec(F)`` (column-major, ``vec(F)[r + c*N] = F[r, c]``).
    In graph form (``_as_graph``; a chain is converted) ``a_q`` may read any earlier block and
    ``C = M_out^T M_out`` any block.
    """
    mats, out = _as_graph(mats, out)
    sizes, offs = _layout(mats)
    N = int(offs[-1])
    rows, cols, vals, var = [], [], [], []
    for q, _, a, b, idx, v, e in _neurons(mats, slopes, offs):
        if a != 0.0:
            rows.append(np.repeat(idx, idx.size))
            cols.append(np.tile(idx, idx.size))
            vals.append(-2 * a * b * np.outer(v, v).ravel())
        rows.append(np.concatenate([idx, np.full(idx.size, e), [e]]))
        cols.append(np.concatenate([np.full(idx.size, e), idx, [e]]))
        vals.append(np.concatenate([(a + b) * v, (a + b) * v, [-2.0]]))
        var.append(np.full(rows[-1].size + (idx.size ** 2 if a != 0.0 else 0), q))
    n_neurons = sum(M.shape[0] for M in mats)
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    var = np.concatenate(var)
    F = sp.csr_matrix((vals, (rows + cols * N, var)), shape=(N * N, n_neurons))
    if mode == "layer":
        layer_of = np.repeat(np.arange(len(mats)), [M.shape[0] for M in mats])
        F = (F @ sp.csr_matrix((np.ones(n_neurons), (np.arange(n_neurons), layer_of)),
                               shape=(n_neurons, len(mats)))).tocsr()
    elif mode != "neuron":
        raise ValueError(f"mode must be 'neuron' or 'layer', got {mode!r}")
    OtO = (out.T @ out).tocoo()
    C = sp.csr_matrix((OtO.data, (OtO.row + OtO.col * N, np.zeros(OtO.nnz, int))), shape=(N * N, 1))
    i0 = np.arange(sizes[0])
    E0 = sp.csr_matrix((np.ones(sizes[0]), (i0 + i0 * N, np.zeros(sizes[0], int))), shape=(N * N, 1))
    return C, E0, F, N, sizes[0]


def _to_cvxopt(M: sp.spmatrix):
    import cvxopt
    M = M.tocoo()
    return cvxopt.spmatrix(M.data.tolist(), M.row.tolist(), M.col.tolist(), M.shape)


def _certify(C, E0, F, N, n0, lam, rho_claimed, margin=1e-9):
    """Smallest verified ``rho`` for the multipliers ``lam``: ``F(rho, lam) <= 0`` checked by ``eigvalsh``.

    With ``F(0, lam) = [[P, Q], [Q^T, R]]`` split after the ``n0`` input rows and ``R < 0`` (Cholesky of
    ``-R``), ``F(rho, lam) <= 0  <=>  rho >= lambda_max(P - Q R^{-1} Q^T)`` (Schur complement); that value
    times ``1 + margin`` is checked directly. If ``R`` is not negative definite, ``rho_claimed`` is raised
    instead.
    """
    M0 = (C + F @ sp.csr_matrix(lam.reshape(-1, 1))).toarray().reshape(N, N, order="F")
    M0 = (M0 + M0.T) / 2
    keep = np.flatnonzero(np.any(M0 != 0, axis=0) | (np.arange(N) < n0))  # zero rows: eigenvalue exactly 0
    M0 = M0[np.ix_(keep, keep)]
    E = np.zeros(len(keep))
    E[:n0] = 1.0

    def max_eig(rho):
        try:
            return float(np.linalg.eigvalsh(M0 - rho * np.diag(E))[-1])
        except (np.linalg.LinAlgError, ValueError):  # (NaN from a solver that failed: no bound)
            return math.inf

    candidates = []
    P, Q, R = M0[:n0, :n0], M0[:n0, n0:], M0[n0:, n0:]
    try:
        Lc = np.linalg.cholesky(-R) if R.size else np.zeros((0, 0))
        Y = scipy.linalg.solve_triangular(Lc, Q.T, lower=True) if R.size else np.zeros((0, n0))
        S = P + Y.T @ Y  # P - Q R^{-1} Q^T with R = -Lc Lc^T
        rho_s = max(float(np.linalg.eigvalsh((S + S.T) / 2)[-1]), 0.0)
        candidates += [rho_s * (1 + margin * 10 ** i) + 1e-300 for i in range(7)]
    except np.linalg.LinAlgError:
        pass
    candidates += [rho_claimed * (1 + margin * 10 ** i) for i in range(8)]
    for rho in candidates:
        ev = max_eig(rho)
        if ev <= 0.0:
            return rho, ev
    raise CertificateError(
        f"LipSDP: the LMI does not hold at the solver's multipliers "
        f"(largest eigenvalue {ev:.3g} at rho={rho:.6g})",
        hint="the solver did not converge; no bound is reported")


@dataclass(frozen=True)
class LipsdpProblem:
    """The LipSDP LMI in ``solve``'s form: ``min rho`` s.t. every ``lmis[k] >= 0``, ``x[nonneg] >= 0``.

    ``x = (rho, lam, Z)``: ``lam`` one multiplier per neuron (or per layer), ``Z`` the free separator
    variables of the chordal split (``chordal.decompose``; none when ``cliques`` has one entry). Solved by
    ``hkm.solve_hkm`` (default) or ``solve.solve`` with the sparse Gram KKT solver (``kkt = "gram"``).
    """

    n: int
    lmis: tuple[Lmi, ...]
    nonneg: tuple[Variable, ...]
    rho: Variable
    cliques: tuple[np.ndarray, ...]
    lifted: bool  # the output map entered as the Schur block [[., M_out'], [M_out, I]]
    kkt: str = "gram"

    @property
    def lam(self) -> Variable:
        return self.nonneg[1]

    def objective(self) -> np.ndarray:
        c = np.zeros(self.n)
        c[self.rho.offset] = 1.0
        return c


def _lipsdp_terms(mats, slopes, out, mode):
    """The LMI ``-F(rho, lam) - HIDDEN_MARGIN diag(0, I) >= 0`` (``_lmi_coefficients``) as ``F0`` and terms
    ``coef (a b' + b a')`` on the variables ``x = (rho, lam)``:

        rho:       e_i e_i' (i < n_0);
        neuron q:  2 alpha beta a_q a_q' - (alpha + beta)(a_q e_q' + e_q a_q') + 2 e_q e_q',
        F0 = -diag(0, HIDDEN_MARGIN I) - diag(0, ..., 0, M_out' M_out).

    When ``M_out`` has fewer rows ``p`` than columns and ``M_out' M_out`` is denser than ``M_out``, the last
    term is lifted exactly into ``p`` more rows, ``[[F0 + M_out' M_out, M_out'], [M_out, I_p]]`` (Schur
    complement), which keeps the pattern sparse for the chordal split.
    Returns ``(N, F0, terms, n_vars, lifted)``. Graph form as in ``_lmi_coefficients``.
    """
    mats, out = _as_graph(mats, out)
    sizes, offs = _layout(mats)
    N0 = int(offs[-1])
    OtO = (out.T @ out).tocsr()
    lifted = out.shape[0] < out.shape[1] and OtO.nnz > 4 * out.nnz
    N = N0 + (out.shape[0] if lifted else 0)
    F0 = np.zeros((N, N))
    hidden = np.arange(sizes[0], N0)
    F0[hidden, hidden] -= HIDDEN_MARGIN
    if lifted:
        p = out.shape[0]
        F0[:N0, N0:] = out.T.toarray()
        F0[N0:, :N0] = out.toarray()
        F0[N0 + np.arange(p), N0 + np.arange(p)] = 1.0
    else:
        F0[:N0, :N0] -= OtO.toarray()
    one = np.ones(1)
    terms = [(0, np.array([i]), one, np.array([i]), one, 0.5) for i in range(sizes[0])]
    for q, k, a, b, idx, v, e in _neurons(mats, slopes, offs):
        col = 1 + (q if mode == "neuron" else k)
        e = np.array([e])
        if a * b != 0.0:
            terms.append((col, idx, v, idx, v, a * b))
        terms.append((col, idx, v, e, one, -(a + b)))
        terms.append((col, e, one, e, one, 1.0))
    if mode not in ("neuron", "layer"):
        raise ValueError(f"mode must be 'neuron' or 'layer', got {mode!r}")
    n_neurons = sum(M.shape[0] for M in mats)
    return N, F0, terms, 1 + (n_neurons if mode == "neuron" else len(mats)), lifted


def lipsdp_problem(mats, slopes, out, mode: str, chordal: bool | None = None) -> LipsdpProblem:
    """The LipSDP LMI (``_lipsdp_terms``), split into a chain of clique LMIs (``chordal.decompose``) when
    the cost model says so (``chordal=None``), always (``True``: the cheapest split with at least two cliques
    if there is one) or never (``False``)."""
    from lipdsl.sdp import chordal as ch
    from lipdsl.sdp.problem import LmiBuilder, Variable

    N, F0, terms, n_vars, lifted = _lipsdp_terms(mats, slopes, out, mode)
    chain = None
    if chordal is not False:
        A = ch.pattern(N, F0, terms)
        chain = ch.chain_cliques(A, n_vars)
        if chordal and len(chain.windows) == 1:
            n = len(chain.order)
            widths = [w for w in np.geomspace(min(16, n), n, 24).astype(int) if w < n] if n > 1 else []
            if widths:
                chain = ch.chain_cliques(A, n_vars, widths)
    if chordal is False or chain is None:
        blocks, n_total = [(np.arange(N), F0, terms)], n_vars
    else:
        chain, blocks, n_total = ch.decompose(N, F0, terms, n_vars, chain)
    n_ref = [n_total]
    lmis = []
    for k, (rows, F0k, tk) in enumerate(blocks):
        b = LmiBuilder(len(rows), n_ref)
        b.F0 = F0k
        b.terms = [(int(c), np.asarray(ai, np.int64), np.asarray(av, float), np.asarray(bi, np.int64),
                    np.asarray(bv, float), float(cf)) for c, ai, av, bi, bv, cf in tk]
        lmis.append(b.build(f"LipSDP[{k}]", None, [("rows", len(rows))]))
    rho = Variable("rho", "rho", None, 1, "scalar", 0)
    lam = Variable("lambda", "lambda", None, n_vars - 1, "vector", 1)
    return LipsdpProblem(n_total, tuple(lmis), (rho, lam), rho, tuple(rows for rows, _, _ in blocks), lifted)


def lipsdp(net: typed.Network, mode: str = "neuron", length: int | None = None, solver: str = "hkm",
           reduce_input: bool = True, chordal: bool | None = None) -> BaselineResult:
    """LipSDP-Neuron/-Layer (Fazlyab et al. 2019) on the unrolled network, as one LMI, verified with numpy.

    Residual networks: the unrolled graph (``unroll_graph``, ``_graph_data``), ``z = [x; w]``,
    ``v = A_x x + A_w w`` (``A_w`` strictly lower block-triangular), ``y = C_x x + C_w w``, and the same LMI
    with ``[A; B] = [[A_x, A_w], [0, I]]`` and ``diag(-rho I, 0) + [C_x, C_w]^T [C_x, C_w]`` (a chain is the
    case ``A_w = blkdiag(M_2, ..., M_l)`` below the diagonal, ``C_x = 0``, ``C_w = [0, ..., M_out]``).

    For ``x_k = phi_k(M_k x_{k-1})`` (``k = 1..l``), ``y = M_out x_l``, each ``phi_k`` slope-restricted to
    ``[alpha_k, beta_k]`` and ``T = diag(lam) >= 0`` (one entry per neuron, or one per layer for "layer"):

        [A; B]^T [[-2 alpha beta T, (alpha+beta) T], [(alpha+beta) T, -2 T]] [A; B]
            + diag(-rho I_{n_0}, 0, ..., 0, M_out^T M_out)  <= 0,

    ``A = [blkdiag(M_1, ..., M_l), 0]``, ``B = [0, I]``; then ``L = sqrt(rho)``. Each ``M_k`` is scaled to
    unit norm (and the slopes to max 1) and the scale is multiplied back into ``L``. If ``n_0 > n_1``, ``M_1``
    is replaced by ``U S`` from its SVD ``M_1 = U S V^T``: the dropped input directions only add the block
    ``-rho I``, so the LMI is equivalent and much smaller (MNIST: 834 -> 100).

    Raises
    ------
    UnsupportedError
        Max pooling (not slope-restricted: LipSDP would need an unsound relaxation), or any-length input
        without ``length``.
    SolveError, CertificateError
        The solver failed, or its point could not be verified.

    Solvers: ``hkm`` (default) builds the LMI with ``lipsdp_problem`` (split into a chain of clique LMIs by
    ``chordal``: ``None`` lets the cost model decide) and solves it with lipdsl's HKM interior-point method
    (``hkm.solve_hkm``: no SVD per iteration, the Schur complement from sparse Gram products); ``cvxopt`` is
    the same problem through lipdsl's CVXOPT driver and its sparse Gram KKT solver (NT scaling: 4-7x slower
    at 500-650 rows); any other name goes to ``solve.solve`` with the LMI unsplit (``picos-cvxopt``: through
    PICOS with CVXOPT's generic KKT solver, the reference; ``cvxopt-generic``; a PICOS solver) -- the one
    driver of every backend (not SDPA: its writer documents the dissipative SDP). Either way the returned
    multipliers are judged by ``_certify`` on the full, unsplit LMI rebuilt in numpy.
    """
    t0 = time.perf_counter()
    mats, slopes, out, scale = _lipsdp_data(net, length)
    if mats:  # the LMI's order (after the input reduction) and the solver's dense work arrays
        rows = min(mats[0].shape) + sum(M.shape[0] for M in mats)
        limits.require_memory(limits.lipsdp_bytes(rows, mats[0].shape), f"the LipSDP LMI of {rows} rows",
                              hint="LipSDP unrolls the network: give a shorter --length, or use the "
                              "dissipative method (its LMIs do not grow with the length)")
    if scale == 0.0:
        return BaselineResult(0.0, time.perf_counter() - t0, "exact", 0.0)
    if not mats:  # a linear network: the bound is exactly ||M_out||
        return BaselineResult(scale, time.perf_counter() - t0, "exact", scale * scale)
    if net.residual:  # graph form: the input may feed several layers and the output
        if reduce_input:
            mats, out = _reduce_graph_input(mats, out)
    elif reduce_input and mats[0].shape[1] > mats[0].shape[0]:
        U, S, _ = np.linalg.svd(mats[0].toarray(), full_matrices=False)
        mats[0] = sp.csr_matrix(U * S)
    C, E0, F, N, n0 = _lmi_coefficients(mats, slopes, out, mode)
    return _lipsdp_structured(mats, slopes, out, mode, scale, chordal, (C, E0, F, N, n0), t0, solver)


#: Relative tolerance of the structured LipSDP solve (CVXOPT's reltol/feastol; abstol 1e-2 of it). At 1e-9
#: CVXOPT stalls on the LipSDP-Layer nets; ``_certify`` recomputes the least rho for the multipliers anyway.
LIPSDP_TOL = 1e-8


#: An HKM run that stops with a relative gap above this is solved again by CVXOPT (``_lipsdp_structured``).
HKM_STALLED_GAP = 1e-3


#: The HKM method's (relative gap and residuals). Its dual residual carries the rounding of ``Z dS S^-1``,
#: which reaches 1e-8 as ``S`` becomes singular; the bound moves by less than 1e-7 relative.
LIPSDP_HKM_TOL = 1e-7


def _lipsdp_structured(mats, slopes, out, mode, scale, chordal, full, t0, solver: str) -> BaselineResult:
    """Solve ``lipsdp_problem`` with ``hkm.solve_hkm`` or ``solve.solve`` (CVXOPT with the Gram KKT, or any
    other backend but SDPA on the unsplit LMI) and certify on the full LMI."""
    from lipdsl.solvers.hkm import solve_hkm
    from lipdsl.solvers.solve import solve

    if solver == "sdpa":  # the SDPA writer documents the dissipative SDP's variables, not LipSDP's
        raise SolveError(f"LipSDP-{mode}: solver 'sdpa' is not available for LipSDP",
                         hint="use hkm (the default), cvxopt, cvxopt-generic or a PICOS solver "
                              "(picos-cvxopt)")
    if solver not in ("hkm", "cvxopt"):
        chordal = False  # the structured split is for lipdsl's own solvers; the others get the one LMI
    problem = lipsdp_problem(mats, slopes, out, mode, chordal)
    if solver == "hkm":
        sol = solve_hkm(problem, tol=LIPSDP_HKM_TOL)
        if sol.relative_gap is None or not sol.relative_gap <= HKM_STALLED_GAP:
            # HKM stalled far from the optimum (seen on the graph LMI of a trained residual TCN: gap 1.9 after
            # 5 iterations, a verified but 15x loose bound); CVXOPT's NT steps reach it (45 iterations)
            try:
                sol = solve(problem, "cvxopt", tol=LIPSDP_TOL)
            except SolveError:
                pass  # keep HKM's point: _certify still judges it
    else:
        try:
            sol = solve(problem, solver, tol=LIPSDP_TOL)
        except SolveError as exc:
            raise SolveError(f"LipSDP-{mode}: {exc.message}", hint=exc.hint) from exc
    if sol.x is None or sol.rho is None:
        raise SolveError(f"LipSDP-{mode}: {solver} returned no point ({sol.claimed_status})")
    lam_v = np.maximum(sol.x[problem.lam.slice], 0.0)
    C, E0, F, N, n0 = full
    rho_v, ev = _certify(C, E0, F, N, n0, lam_v, float(sol.rho))
    bound = mul_up(scale, sqrt_up(rho_v))
    if not math.isfinite(bound):
        raise CertificateError(f"LipSDP-{mode}: the bound overflows float64 "
                               f"({scale:.3g} x {math.sqrt(rho_v):.3g})",
                               hint="rescale the weights (the bound scales with them)")
    return BaselineResult(bound, time.perf_counter() - t0, "verified", bound * bound,
                          claimed_status=str(sol.claimed_status), max_eig=ev, lmi_size=N,
                          blocks=tuple(len(c) for c in problem.cliques), iterations=sol.iterations)

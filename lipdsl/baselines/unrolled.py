"""Reference upper bounds: typed.Network -> naive products and LipSDP (Fazlyab et al. 2019), unrolled."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from lipdsl import limits

from lipdsl.lang import typed
from lipdsl.errors import CertificateError, LipdslError, SolveError, UnsupportedError

if TYPE_CHECKING:
    from lipdsl.sdp.build import Lmi, Variable

#: Largest matrix dimension whose spectral norm is a dense SVD (exact); above it a Cholesky certificate.
DENSE_SVD_LIMIT = 5000
#: Work allowed to ``svds``' restarts (``spectral_norm``) before it is given up as not converging.
SVDS_FLOPS = 2e10
#: LipSDP asks its (scaled) hidden block to be <= -HIDDEN_MARGIN * I; see ``lipsdp``.
HIDDEN_MARGIN = 1e-7


@dataclass(frozen=True)
class UnrolledLayer:
    """One step ``x <- phi(M x)`` of the unrolled network (``phi`` absent when ``slope`` is None).

    ``matrix`` is the merged product of consecutive linear maps (conv as a Toeplitz matrix, pooling, flatten,
    dense), indices channel-major. A max pool is not linear: it is an entry with ``matrix=None`` and
    ``maxpool=(kernel, stride)``.
    """

    matrix: sp.csr_matrix | None
    slope: tuple[float, float] | None
    name: str
    maxpool: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int] | None:
        return None if self.matrix is None else self.matrix.shape


@dataclass(frozen=True)
class BaselineResult:
    """An upper bound, verified with numpy at the solver's point; the solver's claim is kept apart."""

    bound: float
    seconds: float
    status: str  # "verified" or "exact"
    rho: float | None = None  # bound**2
    claimed_status: str | None = None  # what the solver said
    max_eig: float | None = None  # largest eigenvalue of the LMI at the certified point (<= 0)
    lmi_size: int | None = None
    blocks: tuple[int, ...] | None = None  # rows of the clique LMIs the solver saw (chordal split)
    iterations: int | None = None


# --------------------------------------------------------------------------- unrolling


#: Bytes per stored entry while a sparse unrolled matrix is built (index grids, values, CSR conversion).
ENTRY_BYTES = 96


def _require_entries(entries: float, what: str, span=None) -> None:
    """Refuse (``LimitError``) before building ``what`` of ``entries`` sparse entries beyond the memory."""
    limits.require_memory(limits.BASE_BYTES + ENTRY_BYTES * float(entries), what,
                          hint="the unrolled baselines grow with the input length: give a shorter --length, "
                          "or use the length-independent methods (dissipative, naive-hinf)", span=span)


def _conv_matrix(L: typed.Conv1d, n: int) -> sp.csr_matrix:
    """Toeplitz matrix of a conv1d on ``c_in x n``: ``M[o*n_out + t, i*n + s*t + d*j - p_l] = W[o,i,j]``."""
    c_out, c_in, k = L.weight.shape
    n_out = (n + L.pad_left + L.pad_right - L.dilation * (k - 1) - 1) // L.stride + 1
    _require_entries(float(c_out) * c_in * k * max(n_out, 0), f"the unrolled matrix of conv1d {L.name!r}",
                     L.span)
    limits.checkpoint("unrolling")
    o, i, j, t = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(k), np.arange(n_out), indexing="ij")
    pos = L.stride * t + L.dilation * j - L.pad_left
    keep = (pos >= 0) & (pos < n)  # taps that land on padding contribute nothing
    rows = (o * n_out + t)[keep]
    cols = (i * n + pos)[keep]
    vals = L.weight[o[keep], i[keep], j[keep]]
    return sp.csr_matrix((vals, (rows, cols)), shape=(c_out * n_out, c_in * n))


def _avgpool_matrix(c: int, n: int, kernel: int, stride: int) -> sp.csr_matrix:
    """``M[ch*n_out + t, ch*n + s*t + j] = 1/k`` (floor mode, no padding)."""
    n_out = (n - kernel) // stride + 1
    ch, t, j = np.meshgrid(np.arange(c), np.arange(n_out), np.arange(kernel), indexing="ij")
    rows = (ch * n_out + t).ravel()
    cols = (ch * n + stride * t + j).ravel()
    return sp.csr_matrix((np.full(rows.size, 1.0 / kernel), (rows, cols)), shape=(c * n_out, c * n))


def _length_of(net: typed.Network, length: int | None) -> int | None:
    """The input length to unroll for: the spec's, or ``length`` for a net declared ``input c x *``."""
    shp = net.input_shape
    if shp.flat:
        return None
    if shp.length is not None:
        if length is not None and length != shp.length:
            raise LipdslError(f"the network's input length is {shp.length}, got length={length}",
                              span=net.span)
        return shp.length
    if length is None:
        raise UnsupportedError(
            f"network {net.name!r} takes inputs of any length; this bound depends on the length",
            span=net.span, hint="give an input length (e.g. --length 64)")
    return int(length)


def unroll(net: typed.Network, length: int | None = None) -> list[UnrolledLayer]:
    """The network as ``x_{k+1} = phi_k(M_k x_k)`` with explicit sparse matrices for one input length.

    Consecutive linear maps (conv, average pooling, global average pooling, flatten, dense) are multiplied
    into one ``M_k``; an activation closes a step (``M_k = I`` if nothing linear preceded it); a max pool is
    its own entry with ``matrix=None``. Biases are dropped (they do not change any Lipschitz constant).

    Raises
    ------
    UnsupportedError
        For a net of any input length when ``length`` is not given.
    """
    n = _length_of(net, length)
    if net.residual:
        block = next(L for L in net.layers if isinstance(L, typed.Residual))
        raise UnsupportedError(
            f"residual block {block.name!r}: the unrolled network is a graph, not a chain x_(k+1) = "
            "phi_k(M_k x_k); LipSDP and the unrolled naive product are not available for residual "
            "networks yet",
            span=block.span,
            hint="the dissipative bound, naive-hinf and the lower bound handle residual blocks")
    if any(isinstance(L, typed.BatchNorm) for L in net.layers):
        from lipdsl.model.residual import fold_batchnorm

        net = typed.Network(net.name, net.input_shape, tuple(fold_batchnorm(net.layers)), net.span,
                            net.source_path)
    c = net.input_shape.channels
    size = c if net.input_shape.flat else c * n
    out: list[UnrolledLayer] = []
    pending: sp.csr_matrix | None = None
    names: list[str] = []

    def push(M):
        nonlocal pending
        if pending is not None:  # nnz(M P) <= sum_j nnz(M[:, j]) nnz(P[j, :])
            per_col = np.bincount(M.indices, minlength=M.shape[1]).astype(float)
            _require_entries(per_col @ np.diff(pending.indptr).astype(float),
                             f"the product of the unrolled linear maps up to {names[-1]!r}")
        pending = M if pending is None else (M @ pending).tocsr()

    def close(slope):
        nonlocal pending, names
        if pending is None:
            _require_entries(size, "the unrolled identity map")
        M = pending if pending is not None else sp.identity(size, format="csr")
        out.append(UnrolledLayer(M, slope, "+".join(names) or "identity"))
        pending, names = None, []

    if size is not None and not net.input_shape.flat:
        _require_entries(size, f"the unrolled input ({net.input_shape.channels} x {n})", net.span)
    for L in net.layers:
        if isinstance(L, typed.Conv1d):
            M = _conv_matrix(L, n)
            c, n = L.c_out, M.shape[0] // L.c_out
        elif isinstance(L, typed.Dense):
            M = sp.csr_matrix(L.weight)
            c, n = L.n_out, None
        elif isinstance(L, typed.Pool) and L.op == "avg":
            M = _avgpool_matrix(c, n, L.kernel, L.stride)
            n = M.shape[0] // c
        elif isinstance(L, typed.GlobalAvgPool):
            M = sp.kron(sp.identity(c), np.full((1, n), 1.0 / n), format="csr")
            n = None
        elif isinstance(L, typed.Flatten):
            c, n = size, None
            continue
        elif isinstance(L, typed.Activation):
            names.append(L.name)
            close((L.alpha, L.beta))
            continue
        elif isinstance(L, typed.Pool) and L.op == "max":
            if pending is not None:
                close(None)
            n_out = (n - L.kernel) // L.stride + 1
            out.append(UnrolledLayer(None, None, L.name, maxpool=(L.kernel, L.stride)))
            n = n_out
            size = c * n
            continue
        else:
            raise UnsupportedError(f"cannot unroll layer {L.name!r} of kind {L.kind!r}", span=L.span)
        names.append(L.name)
        push(M)
        size = M.shape[0]
    if pending is not None:
        close(None)
    return out


# --------------------------------------------------------------------------- naive products


def spectral_norm(M) -> float:
    """``||M||_2`` by a dense SVD (exact up to rounding) when ``min(M.shape) <= DENSE_SVD_LIMIT``.

    Larger matrices: :func:`lipdsl.rigorous.spectral_norm_upper`, a guaranteed upper bound within about 1e-9
    relative (banded Cholesky certificates of ``t I - M'M``); when it cannot (bandwidth too large), a
    CertificateError: no number that is not a proof.
    """
    if min(M.shape) == 0:
        return 0.0
    limits.checkpoint("spectral norm")
    if min(M.shape) <= DENSE_SVD_LIMIT:
        limits.require_memory(limits.BASE_BYTES + 8.0 * 3 * M.shape[0] * M.shape[1],
                              f"a dense {M.shape[0]} x {M.shape[1]} matrix for its spectral norm",
                              hint="give a shorter --length, or use --method naive-hinf (length-independent)")
        D = M.toarray() if sp.issparse(M) else np.asarray(M)
        if D.shape[0] > 2 * D.shape[1] or D.shape[1] > 2 * D.shape[0]:
            # ||M|| = ||R|| for M = QR (or its transpose): SVD of a small square factor.
            D = scipy.linalg.qr(D if D.shape[0] > D.shape[1] else D.T, mode="r")[0][:min(D.shape)]
        return float(scipy.linalg.svdvals(D)[0])
    from lipdsl.rigorous import NormNotCertified, spectral_norm_upper

    try:
        return spectral_norm_upper(M)
    except NormNotCertified as exc:
        raise CertificateError(
            f"the spectral norm of a {M.shape[0]}x{M.shape[1]} unrolled map could not be certified: {exc}",
            hint="use --method naive-hinf (length-independent, guaranteed) or a shorter --length",
        ) from None


def _maxpool_gain(kernel: int, stride: int) -> float:
    """Lipschitz constant of max pooling: ``sqrt(ceil(k/s))`` (each input is in at most that many windows)."""
    return math.sqrt(math.ceil(kernel / stride))


def naive(net: typed.Network, length: int | None = None) -> float:
    """``prod_k ||M_k||_2 * max(|alpha_k|, |beta_k|)`` over the unrolled steps (max pool: sqrt(ceil(k/s))).

    Depends on the input length: for short signals it can lie below :func:`naive_hinf`, never above it.
    A residual block contributes ``naive(main) + naive(shortcut)`` (1 for an identity shortcut).
    """
    if net.residual:
        return _residual_product(net, length, naive)
    from lipdsl.rigorous import mul_up

    gain = 1.0
    for U in unroll(net, length):
        if U.maxpool is not None:
            gain = mul_up(gain, _maxpool_gain(*U.maxpool))
            continue
        gain = mul_up(gain, spectral_norm(U.matrix))
        if U.slope is not None:
            gain = mul_up(gain, max(abs(U.slope[0]), abs(U.slope[1])))
    return gain


def hinf_norm(weight: np.ndarray, rtol: float = 1e-9, max_intervals: int = 1 << 16) -> float:
    """A guaranteed upper bound on ``max_w sigma_max(G(w))``, ``G(w) = sum_j W[:, :, j] exp(-i w j)``.

    The H-infinity norm of the conv filter (dilation does not change it: ``w -> w d`` only re-parametrises the
    circle). Zero leading/trailing taps are trimmed (a delay has gain 1). With ``c = (k-1)/2`` and
    ``H(w) = sum_j W_j exp(-i w (j - c))`` (same singular values as ``G``), Taylor's theorem on an interval
    ``|w - m| <= h/2`` gives ``||H(w) - H(m) - H'(m)(w - m)|| <= L2 (h/2)^2 / 2`` with
    ``L2 = sum_j (j - c)^2 ||W_j||_2``; the norm of the affine part is convex in ``w``, so

        sigma_max(H(w)) <= max(||H(m) + H'(m) h/2||, ||H(m) - H'(m) h/2||) + L2 h^2 / 8.

    ``[0, pi]`` suffices (real weights: ``sigma(-w) = sigma(w)``). Intervals are bisected while this bound
    exceeds the best point value times ``1 + rtol`` (at most ``max_intervals`` live); the largest bound over
    all intervals is returned, so the result is an upper bound whatever the tolerance.
    """
    W = np.asarray(weight, dtype=float)
    nz = np.flatnonzero(np.any(W != 0, axis=(0, 1)))
    if nz.size == 0:
        return 0.0
    W = W[:, :, nz[0]:nz[-1] + 1]
    k = W.shape[2]
    if k > 1:
        limits.require_time(64.0 * k * k * W.shape[0] * W.shape[1] * 16.0,
                            f"the H-infinity norm of a {W.shape[0]} x {W.shape[1]} filter of {k} taps",
                            hint="it evaluates the filter on 64 x (taps) frequencies: use shorter kernels, "
                            "or the dissipative method")
    # every tap's spectral norm at once (a batched SVD; one call per tap costs ~0.1 ms each)
    tap_norms = np.linalg.norm(np.moveaxis(W, 2, 0), ord=2, axis=(1, 2))
    if k == 1:
        return float(tap_norms[0])
    lag = np.arange(k) - (k - 1) / 2
    L2 = float(np.sum(lag ** 2 * tap_norms))
    Wt = np.moveaxis(W, 2, 0)  # (k, c_out, c_in)

    def norms(G):
        if G.shape[1] == 1 or G.shape[2] == 1:
            return np.linalg.norm(G.reshape(G.shape[0], -1), axis=1)
        return np.linalg.svd(G, compute_uv=False)[:, 0]

    def evaluate_chunk(w, h):
        E = np.exp(-1j * np.outer(w, lag))
        H = np.einsum("mj,jab->mab", E, Wt)
        dH = np.einsum("mj,jab->mab", -1j * lag * E, Wt)
        ub = np.maximum(norms(H + dH * (h / 2)), norms(H - dH * (h / 2))) + L2 * h * h / 8
        return norms(H), ub

    # frequencies in chunks of ~2^22 complex entries of E and H (a long filter would need m x k at once)
    chunk = max(1, (1 << 22) // max(k, W.shape[0] * W.shape[1]))

    def evaluate(w, h):
        parts = []
        for i in range(0, len(w), chunk):
            limits.checkpoint("H-infinity norm")
            parts.append(evaluate_chunk(w[i:i + chunk], h))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    m = 64 * k
    h = math.pi / m
    mids = (np.arange(m) + 0.5) * h
    vals, ub = evaluate(mids, h)
    best = float(vals.max())
    dropped = 0.0  # largest bound over intervals no longer refined
    while True:
        live = ub > best * (1 + rtol)
        if not live.any() or 2 * live.sum() > max_intervals:
            return float(max(ub.max(), dropped, best))
        if (~live).any():
            dropped = max(dropped, float(ub[~live].max()))
        mids = np.concatenate([mids[live] - h / 4, mids[live] + h / 4])
        h /= 2
        vals, ub = evaluate(mids, h)
        best = max(best, float(vals.max()))


def naive_hinf(net: typed.Network, length: int | None = None) -> float:
    """The length-independent product of layer gains.

    conv: :func:`hinf_norm` of its filter (also for strides: sub-sampling cannot raise the gain);
    average pool ``k, s``: ``sqrt(ceil(k/s)/k)``; max pool: ``sqrt(ceil(k/s))``; global average pool over
    ``N`` samples: ``1/sqrt(N)``; dense: ``||W||_2``; activation: ``max(|alpha|, |beta|)``.

    Raises
    ------
    UnsupportedError
        For a global average pool in a net of any length when ``length`` is not given.

    Batch norm: ``max |scale|`` after folding (``lower.fold_batchnorm``); a residual block:
    ``naive_hinf(main) + naive_hinf(shortcut)`` (1 for an identity shortcut).
    """
    if net.residual or any(isinstance(L, typed.BatchNorm) for L in net.layers):
        return _residual_product(net, length, naive_hinf)
    from lipdsl.rigorous import mul_up

    gain = 1.0
    n = net.input_shape.length if net.input_shape.length is not None else length
    for L in net.layers:
        if isinstance(L, typed.Conv1d):
            gain = mul_up(gain, hinf_norm(L.weight))
            if n is not None:
                n = (n + L.pad_left + L.pad_right - L.dilation * (L.kernel - 1) - 1) // L.stride + 1
        elif isinstance(L, typed.Dense):
            gain = mul_up(gain, spectral_norm(L.weight))
        elif isinstance(L, typed.Activation):
            gain = mul_up(gain, max(abs(L.alpha), abs(L.beta)))
        elif isinstance(L, typed.Pool):
            q = math.ceil(L.kernel / L.stride)
            gain = mul_up(gain, math.sqrt(q / L.kernel) if L.op == "avg" else math.sqrt(q))
            if n is not None:
                n = (n - L.kernel) // L.stride + 1
        elif isinstance(L, typed.GlobalAvgPool):
            if n is None:
                raise UnsupportedError(
                    f"global average pool {L.name!r} scales by 1/sqrt(N), and this network takes any length",
                    span=L.span, hint="give an input length (e.g. --length 64)")
            gain = mul_up(gain, math.nextafter(1 / math.sqrt(n), math.inf))
    return gain


def _residual_product(net: typed.Network, length: int | None, fn) -> float:
    """``fn`` (a naive product) of a net with residual blocks or batch norm: batch norm folded
    (``lower.fold_batchnorm``), then the product over the sequential runs between blocks of ``fn(run)``,
    times ``fn(main) + fn(shortcut)`` per block (``||f + g|| <= ||f|| + ||g||``; identity shortcut: 1)."""
    from lipdsl.model.lower import _lengths
    from lipdsl.model.residual import fold_batchnorm

    layers = fold_batchnorm(net.layers)
    flat = typed.Network(net.name, net.input_shape, tuple(layers), net.span, net.source_path)
    if not net.residual:
        return fn(flat, length)
    n0 = net.input_shape.length if net.input_shape.length is not None else length
    lens = _lengths(flat, n0)

    def run(ls, i) -> float:
        shape = ls[0].in_shape
        if not shape.flat and lens[i] is not None:
            shape = typed.Shape(shape.channels, lens[i])
        return fn(typed.Network(net.name, shape, tuple(ls), net.span, net.source_path), lens[i])

    from lipdsl.rigorous import mul_up

    gain, start = 1.0, 0
    for i, L in enumerate(layers):
        if isinstance(L, typed.Residual):
            if start < i:
                gain = mul_up(gain, run(layers[start:i], start))
            total = run(list(L.main), i) + (run(list(L.shortcut), i) if L.shortcut else 1.0)
            gain = mul_up(gain, math.nextafter(total, math.inf))  # (the sum rounded up)
            start = i + 1
    if start < len(layers):
        gain = mul_up(gain, run(layers[start:], start))
    return gain


# --------------------------------------------------------------------------- LipSDP


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


def _lipsdp_data(net: typed.Network, length: int | None):
    """Unrolled, scaled data of the LipSDP LMI: hidden matrices, slopes, output matrix and the scale."""
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
        s = spectral_norm(U.matrix)
        m = max(abs(U.slope[0]), abs(U.slope[1]))
        if s == 0 or m == 0:
            return None, None, None, 0.0  # the network is constant
        # NOTE: phi(s M^ x) with slope [a, b] = S_k psi(M^ x / S_{k-1}) with psi of slope [a/m, b/m]; the
        # LipSDP optimum is unchanged by this change of variables, and all matrices have unit norm.
        mats.append(U.matrix / s)
        slopes.append((U.slope[0] / m, U.slope[1] / m))
        scale *= s * m
    s_out = spectral_norm(out)
    if s_out == 0:
        return None, None, None, 0.0
    return mats, slopes, out / s_out, scale * s_out


def _layout(mats) -> tuple[list[int], np.ndarray]:
    """Block sizes ``n_0, ..., n_l`` of ``x = [x_0; ...; x_l]`` and their offsets (``offs[-1]`` = total)."""
    sizes = [mats[0].shape[1]] + [M.shape[0] for M in mats]
    return sizes, np.concatenate([[0], np.cumsum(sizes)])


def _neurons(mats, slopes, offs):
    """Every hidden neuron in order: ``(q, k, alpha, beta, idx, v, e)`` with ``q`` its running index, ``k``
    its layer, ``a_q`` (row ``q`` of ``M_k`` on block ``k - 1``) as indices ``idx`` and values ``v``, and
    ``e`` the index of its output on block ``k`` (the LipSDP LMI of ``_lmi_coefficients`` and
    ``_lipsdp_terms``)."""
    q = 0
    for k, (M, (a, b)) in enumerate(zip(mats, slopes)):
        M = sp.csr_matrix(M)
        for r in range(M.shape[0]):
            lo, hi = M.indptr[r], M.indptr[r + 1]
            yield q, k, a, b, M.indices[lo:hi] + offs[k], M.data[lo:hi], int(offs[k + 1] + r)
            q += 1


def _lmi_coefficients(mats, slopes, out, mode):
    """Sparse coefficients of ``F(rho, lam) = C - rho E0 + sum_q lam_q F_q`` (to be ``<= 0``), vectorised.

    With ``x = [x_0; x_1; ...; x_l]`` (sizes ``n_0, ..., n_l``), neuron ``q`` of hidden layer ``k`` has
    pre-activation row ``a_q`` (row of ``M_k`` placed on block ``k-1``) and output ``e_q`` (on block ``k``):
    ``F_q = -2 alpha beta a_q a_q^T + (alpha + beta)(a_q e_q^T + e_q a_q^T) - 2 e_q e_q^T``,
    ``E0 = diag(I_{n_0}, 0)``, ``C = diag(0, ..., 0, M_out^T M_out)``. Layer mode sums the ``F_q`` of a layer.
    Returns ``(C, E0, Fcoef, N)`` with columns ``vec(F)`` (column-major, ``vec(F)[r + c*N] = F[r, c]``).
    """
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
    C = sp.csr_matrix((OtO.data, ((OtO.row + offs[-2]) + (OtO.col + offs[-2]) * N, np.zeros(OtO.nnz, int))),
                      shape=(N * N, 1))
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
        return float(np.linalg.eigvalsh(M0 - rho * np.diag(E))[-1])

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
    Returns ``(N, F0, terms, n_vars, lifted)``.
    """
    sizes, offs = _layout(mats)
    N0 = int(offs[-1])
    out = sp.csr_matrix(out)
    OtO = (out.T @ out).tocsr()
    lifted = out.shape[0] < out.shape[1] and OtO.nnz > 4 * out.nnz
    N = N0 + (out.shape[0] if lifted else 0)
    F0 = np.zeros((N, N))
    hidden = np.arange(sizes[0], N0)
    F0[hidden, hidden] -= HIDDEN_MARGIN
    if lifted:
        p = out.shape[0]
        F0[offs[-2]:N0, N0:] = out.T.toarray()
        F0[N0:, offs[-2]:N0] = out.toarray()
        F0[N0 + np.arange(p), N0 + np.arange(p)] = 1.0
    else:
        F0[offs[-2]:N0, offs[-2]:N0] -= OtO.toarray()
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
    from lipdsl.sdp.build import Variable, LmiBuilder

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
        return BaselineResult(scale, time.perf_counter() - t0, "exact", scale ** 2)
    if reduce_input and mats[0].shape[1] > mats[0].shape[0]:
        U, S, _ = np.linalg.svd(mats[0].toarray(), full_matrices=False)
        mats[0] = sp.csr_matrix(U * S)
    C, E0, F, N, n0 = _lmi_coefficients(mats, slopes, out, mode)
    return _lipsdp_structured(mats, slopes, out, mode, scale, chordal, (C, E0, F, N, n0), t0, solver)


#: Relative tolerance of the structured LipSDP solve (CVXOPT's reltol/feastol; abstol 1e-2 of it). At 1e-9
#: CVXOPT stalls on the LipSDP-Layer nets; ``_certify`` recomputes the least rho for the multipliers anyway.
LIPSDP_TOL = 1e-8
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
    bound = scale * math.sqrt(rho_v)
    return BaselineResult(bound, time.perf_counter() - t0, "verified", bound ** 2,
                          claimed_status=str(sol.claimed_status), max_eig=ev, lmi_size=N,
                          blocks=tuple(len(c) for c in problem.cliques), iterations=sol.iterations)

"""Reference upper bounds: typed.Network -> naive products and LipSDP (Fazlyab et al. 2019), unrolled."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from lipdsl import limits
from lipdsl.errors import CertificateError, UnsupportedError
from lipdsl.lang import typed
from lipdsl.lang.check import require_length

#: Largest matrix dimension whose spectral norm is a dense SVD (exact); above it a Cholesky certificate.
DENSE_SVD_LIMIT = 5000
#: Work allowed to ``svds``' restarts (``spectral_norm``) before it is given up as not converging.
SVDS_FLOPS = 2e10


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
    """Toeplitz matrix of a conv1d on ``c_in x n``: ``M[o*n_out + t, i*n + s*t + d*j - p_l] = W[o,i,j]``.

    Only the taps that land on the input are built, tap by tap, with their times ``t`` found in Python
    integers: a huge stride, dilation or padding (beyond int64) is exact, and taps on padding cost nothing."""
    c_out, c_in, k = L.weight.shape
    n_out = (n + L.pad_left + L.pad_right - L.dilation * (k - 1) - 1) // L.stride + 1
    # entries: at most min(k, n) taps land at each time and min(n_out, n) times per tap; a row pointer per row
    landing = min(k * min(n_out, n), n_out * min(k, n)) if n_out > 0 else 0
    pointers = limits.as_float(max(n_out, 0))
    _require_entries(limits.as_float(c_out) * (c_in * limits.as_float(landing) + pointers),
                     f"the unrolled matrix of conv1d {L.name!r}", L.span)
    limits.checkpoint("unrolling")
    o, i = np.meshgrid(np.arange(c_out), np.arange(c_in), indexing="ij")
    rows, cols, vals = [], [], []
    for j in range(k):
        offset = L.dilation * j - L.pad_left  # input sample of tap j at time t: s*t + offset, kept in [0, n)
        first = max(0, -(offset // L.stride))  # the first t >= 0 with s*t + offset >= 0
        last = min(n_out - 1, (n - 1 - offset) // L.stride)
        if first > last:
            continue  # this tap only ever reads padding
        count = last - first + 1  # (> 1 only if s*(count-1) < n: then s fits int64)
        t = first + np.arange(count)
        pos = (offset + L.stride * first) + (L.stride if count > 1 else 0) * np.arange(count)
        rows.append((o[..., None] * n_out + t).ravel())
        cols.append((i[..., None] * n + pos).ravel())
        vals.append(np.broadcast_to(L.weight[:, :, j, None], (c_out, c_in, count)).ravel())
    if not rows:
        return sp.csr_matrix((c_out * n_out, c_in * n))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(c_out * n_out, c_in * n))


def _window_starts(n_out: int, stride: int) -> np.ndarray:
    """``stride * t`` for ``t < n_out`` (the first sample of each pooling window): with one window the
    stride is never multiplied, so a stride beyond int64 is no overflow."""
    return (stride if n_out > 1 else 0) * np.arange(max(n_out, 0))


def _avgpool_matrix(c: int, n: int, kernel: int, stride: int) -> sp.csr_matrix:
    """``M[ch*n_out + t, ch*n + s*t + j] = 1/k`` (floor mode, no padding)."""
    n_out = (n - kernel) // stride + 1
    ch, t, j = np.meshgrid(np.arange(c), np.arange(n_out), np.arange(kernel), indexing="ij")
    rows = (ch * n_out + t).ravel()
    cols = (ch * n + _window_starts(n_out, stride)[None, :, None] + j).ravel()
    return sp.csr_matrix((np.full(rows.size, 1.0 / kernel), (rows, cols)), shape=(c * n_out, c * n))


def _length_of(net: typed.Network, length: int | None) -> int | None:
    """The input length to unroll for: the spec's, or ``length`` for a net declared ``input c x *``."""
    require_length(net, length)
    shp = net.input_shape
    if shp.flat:
        return None
    if shp.length is not None:
        return shp.length
    if length is None:
        raise UnsupportedError(
            f"network {net.name!r} takes inputs of any length; this bound depends on the length",
            span=net.span, hint="give an input length (e.g. --length 64)")
    return int(length)


def _linear_step(L, c: int, n: int | None):
    """``(M, c, n)`` for a linear layer (conv, dense, average pool, global average pool) on ``c x n``, else
    None: its unrolled matrix (channel-major indices) and the channels and samples after it."""
    if isinstance(L, typed.Conv1d):
        M = _conv_matrix(L, n)
        return M, L.c_out, M.shape[0] // L.c_out
    if isinstance(L, typed.Dense):
        return sp.csr_matrix(L.weight), L.n_out, None
    if isinstance(L, typed.Pool) and L.op == "avg":
        M = _avgpool_matrix(c, n, L.kernel, L.stride)
        return M, c, M.shape[0] // c
    if isinstance(L, typed.GlobalAvgPool):
        return sp.kron(sp.identity(c), np.full((1, n), 1.0 / n), format="csr"), c, None
    return None


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
            "phi_k(M_k x_k)",
            span=block.span,
            hint="unroll_graph unrolls it as a graph (LipSDP uses that); naive multiplies per block")
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
        step = _linear_step(L, c, n)
        if step is not None:
            M, c, n = step
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


@dataclass(frozen=True)
class UnrolledGraph:
    """The unrolled network as a feedforward graph on ``z = [x_0; w_1; ...; w_l]`` (``x_0`` the input, ``w_k``
    the outputs of the k-th activation, in the order they are computed):

        w_k = phi_k(v_k),  v_k = M_k z_(<k),   y = M_out z,

    ``M_k`` (``hidden[k].matrix``) reads only the blocks before ``w_k`` (``n_0 + n_1 + ... + n_(k-1)``
    columns: strictly lower block-triangular), ``M_out`` (``out``) reads all of ``z``. A chain has ``M_k``
    nonzero on the block ``k - 1`` only; a residual block adds the shortcut's map of its input's block to
    the sum's consumers.
    """

    n0: int
    hidden: tuple[UnrolledLayer, ...]
    out: sp.csr_matrix


def unroll_graph(net: typed.Network, length: int | None = None) -> UnrolledGraph:
    """The network (residual blocks allowed) as an :class:`UnrolledGraph` for one input length.

    Every signal is kept as a sparse matrix ``E`` with ``signal = E z`` over the neurons created so far: a
    linear layer multiplies it (``M E``), an activation appends its ``E`` as the next ``M_k`` and becomes the
    selection of its own block, a residual block is ``E_main + E_shortcut`` of its two branches run from the
    same ``E`` (``E`` itself for an identity shortcut). Batch norm is folded first (``fold_batchnorm``);
    biases are dropped.

    A max pool is exact with ReLUs (``maxpool_relus``): its ``k - 1`` layers are named ``NAME.maxJ``.

    Raises
    ------
    UnsupportedError
        A net of any input length when ``length`` is not given.
    """
    from lipdsl.model.residual import fold_batchnorm

    n = _length_of(net, length)
    c = net.input_shape.channels
    size = c if net.input_shape.flat else c * n
    if not net.input_shape.flat:
        _require_entries(size, f"the unrolled input ({net.input_shape.channels} x {n})", net.span)
    hidden: list[UnrolledLayer] = []
    total = size  # columns of z so far

    def widen(E):
        E = sp.csr_matrix(E)
        return sp.csr_matrix((E.data, E.indices, E.indptr), shape=(E.shape[0], total))

    def run(layers, E, c, n):
        nonlocal total
        for L in layers:
            limits.checkpoint("unrolling")
            if isinstance(L, typed.Residual):
                Em, cm, nm = run(L.main, E, c, n)
                Es, cs, ns = run(L.shortcut, E, c, n) if L.shortcut else (E, c, n)
                assert (cm, nm) == (cs, ns), (L.name, (cm, nm), (cs, ns))
                E, c, n = (widen(Em) + widen(Es)).tocsr(), cm, nm
                continue
            if isinstance(L, typed.Activation):
                k = E.shape[0]
                hidden.append(UnrolledLayer(widen(E), (L.alpha, L.beta), L.name))
                _require_entries(total + k, f"the unrolled graph up to {L.name!r}", L.span)
                E = sp.csr_matrix((np.ones(k), (np.arange(k), total + np.arange(k))), shape=(k, total + k))
                total += k
                continue
            if isinstance(L, typed.Flatten):
                c, n = c * (n or 1), None
                continue
            if isinstance(L, typed.Pool) and L.op == "max":  # exact as ReLUs (maxpool_relus)
                E, n = maxpool_relus(L, E, c, n)
                continue
            step = _linear_step(L, c, n)
            if step is None:
                raise UnsupportedError(f"cannot unroll layer {L.name!r} of kind {L.kind!r}", span=L.span)
            M, c, n = step
            per_col = np.bincount(M.indices, minlength=M.shape[1]).astype(float)
            _require_entries(per_col @ np.diff(E.indptr).astype(float),
                             f"the unrolled linear maps up to {L.name!r}", L.span)
            E = (M @ E).tocsr()
        return E, c, n

    def maxpool_relus(L, E, c, n):
        """``max_{j<k} x_j = m_(k-1)``, ``m_0 = x_0``, ``m_j = m_(j-1) + relu(x_j - m_(j-1))``: k - 1 ReLU
        layers (slope [0, 1]) per window and channel, exact."""
        nonlocal total
        n_out = (n - L.kernel) // L.stride + 1
        ch, t = np.meshgrid(np.arange(c), np.arange(n_out), indexing="ij")
        rows = (ch * n_out + t).ravel()

        def pick(j):  # x_j: sample stride t + j of each window
            cols = (ch * n + _window_starts(n_out, L.stride)[None, :] + j).ravel()
            return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(c * n_out, c * n))

        m = (pick(0) @ E).tocsr()
        for j in range(1, L.kernel):
            v = (widen(pick(j) @ E) - widen(m)).tocsr()
            k = v.shape[0]
            hidden.append(UnrolledLayer(v, (0.0, 1.0), f"{L.name}.max{j}"))
            _require_entries(total + k, f"the unrolled graph up to {L.name!r}", L.span)
            w = sp.csr_matrix((np.ones(k), (np.arange(k), total + np.arange(k))), shape=(k, total + k))
            total += k
            m = (widen(m) + w).tocsr()
        return m, n_out

    E, _, _ = run(fold_batchnorm(net.layers), sp.identity(size, format="csr"), c, n)
    return UnrolledGraph(size, tuple(hidden), widen(E))


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
    M, e = _unit_scaled(M)  # (entries of 1e-200 square to 0: the norm is taken of M / 2^e, exactly scaled)
    if e is None:
        return 0.0
    if e == math.inf:  # a merged map that overflowed float64 (weights of 1e300 times 1e300)
        return math.inf
    return _times_power_of_two_up(_spectral_norm(M), e)


def unit_scaled_divide(M, s: float):
    """``M / s`` for a positive ``s`` (a norm of ``M``) without overflowing ``1 / s`` when ``s`` is subnormal
    (scipy divides a sparse matrix by multiplying with ``1 / s``: 1e-320 gave inf entries)."""
    M2, e = _unit_scaled(M)
    if e is None or e == math.inf:
        return M / s
    return M2 / math.ldexp(s, -e)


def _unit_scaled(M):
    """``(M / 2^e, e)`` with the largest entry of ``M / 2^e`` in ``[1/2, 1)`` (an exact scaling; ``(M, 0)``
    when the largest entry is between 2^-300 and 2^300 already), so that the norms below neither underflow
    (entries of 1e-200: their squares are 0) nor overflow (1e200); ``(M, None)`` for a zero matrix, ``(M,
    inf)`` for one with an infinite or NaN entry. A sparse matrix stays sparse."""
    data = M.data if sp.issparse(M) else np.asarray(M)
    top = max(float(np.max(data)), -float(np.min(data))) if data.size else 0.0  # (no |data| temporary)
    if top == 0 or not math.isfinite(top):
        return M, (None if top == 0 else math.inf)
    e = math.frexp(top)[1]
    if -300 < e < 300:  # squares and their sums stay normal: no copy (an unrolled map can take GBs)
        return M, 0
    if sp.issparse(M):
        M = M.copy()
        M.data = np.ldexp(M.data, -e)
        return M, e
    return np.ldexp(np.asarray(M, dtype=float), -e), e


def _times_power_of_two_up(x: float, e: int) -> float:
    """An upper bound on ``x 2^e`` (exact unless the product is subnormal; inf past float64's range)."""
    from fractions import Fraction

    try:
        out = math.ldexp(x, e)
    except OverflowError:
        return math.inf
    if math.isfinite(out) and Fraction(out) < Fraction(x) * Fraction(2) ** e:
        out = math.nextafter(out, math.inf)
    return out


def _spectral_norm(M) -> float:
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

    Where the mean value theorem's ``sigma_max(H(m)) + L1 h / 2`` (``L1 = sum_j |j - c| ||W_j||_2``) is
    already below the bisection's threshold, it is the interval's bound instead (one SVD, not three: most
    intervals of the first grid).

    ``[0, pi]`` suffices (real weights: ``sigma(-w) = sigma(w)``). Intervals are bisected while their bound
    exceeds the best point value times ``1 + rtol`` (at most ``max_intervals`` live); the largest bound over
    all intervals is returned, so the result is an upper bound whatever the tolerance.
    """
    W = np.asarray(weight, dtype=float)
    nz = np.flatnonzero(np.any(W != 0, axis=(0, 1)))
    if nz.size == 0:
        return 0.0
    W, e = _unit_scaled(W[:, :, nz[0]:nz[-1] + 1])  # (taps of 1e-200 gave 1e-210: their squares underflow)
    return _times_power_of_two_up(_hinf_norm(W, rtol, max_intervals), e)


def _hinf_norm(W: np.ndarray, rtol: float, max_intervals: int) -> float:
    """:func:`hinf_norm` of a filter with nonzero first and last taps and entries of order 1."""
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
    L1 = float(np.sum(np.abs(lag) * tap_norms))  # >= max_w ||H'(w)||
    L2 = float(np.sum(lag ** 2 * tap_norms))  # >= max_w ||H''(w)||
    Wt = np.moveaxis(W, 2, 0)  # (k, c_out, c_in)

    def norms(G):
        if G.shape[1] == 1 or G.shape[2] == 1:
            return np.linalg.norm(G.reshape(G.shape[0], -1), axis=1)
        return np.linalg.svd(G, compute_uv=False)[:, 0]

    # frequencies in chunks of ~2^22 complex entries of E and H (a long filter would need m x k at once)
    chunk = max(1, (1 << 22) // max(k, W.shape[0] * W.shape[1]))

    def chunked(fn, w):
        parts = []
        for i in range(0, len(w), chunk):
            limits.checkpoint("H-infinity norm")
            parts.append(fn(w[i:i + chunk]))
        return np.concatenate(parts) if parts else np.zeros(0)

    def evaluate(w, h, best):
        """Each interval's midpoint value and upper bound (and the best value so far). The bound is
        ``value + L1 h / 2`` (mean value theorem) where that already keeps it below ``best (1 + rtol)``:
        most intervals, for one SVD each; the Taylor bound above (two more SVDs) elsewhere."""
        vals = chunked(lambda v: norms(np.einsum("mj,jab->mab", np.exp(-1j * np.outer(v, lag)), Wt)), w)
        best = max(best, float(vals.max()))
        ub = vals + L1 * h / 2
        near = np.flatnonzero(ub > best * (1 + rtol))

        def taylor(v):
            E = np.exp(-1j * np.outer(v, lag))
            H = np.einsum("mj,jab->mab", E, Wt)
            dH = np.einsum("mj,jab->mab", -1j * lag * E, Wt)
            return np.maximum(norms(H + dH * (h / 2)), norms(H - dH * (h / 2))) + L2 * h * h / 8

        ub[near] = np.minimum(ub[near], chunked(taylor, w[near]))
        return vals, ub, best

    m = 64 * k
    h = math.pi / m
    mids = (np.arange(m) + 0.5) * h
    vals, ub, best = evaluate(mids, h, 0.0)
    dropped = 0.0  # largest bound over intervals no longer refined
    while True:
        live = ub > best * (1 + rtol)
        if not live.any() or 2 * live.sum() > max_intervals:
            return float(max(ub.max(), dropped, best))
        if (~live).any():
            dropped = max(dropped, float(ub[~live].max()))
        mids = np.concatenate([mids[live] - h / 4, mids[live] + h / 4])
        h /= 2
        vals, ub, best = evaluate(mids, h, best)


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



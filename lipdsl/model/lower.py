"""Lower to state space: typed.Network -> lowered.Network (conv filters as causal FIR systems, numpy).

A conv layer with PyTorch weight ``W`` (c_out, c_in, k), dilation ``d``, is the causal filter

    z[t] = sum_{m=0}^{k_e-1} K_m u[t-m],   K_m = W_e[:, :, k_e-1-m],   k_e = d (k-1) + 1,

(``W_e`` = ``W`` with ``d-1`` zero taps between taps), realized with state
``x[t] = [u[t-k_e+1]; ...; u[t-1]]``:

    A = block up-shift (identity blocks on the super-diagonal),  B = [0; ...; 0; I],
    C = [K_{k_e-1}, ..., K_1] = [W_e[:,:,0], ..., W_e[:,:,k_e-2]],  D = K_0 = W_e[:,:,k_e-1].

Any padding, stride or cropping only selects samples of this causal output (run on the input followed by
zeros), and dropping samples can only lower the left side of a dissipation inequality: the bound stays sound.
An average pool with stride s < kernel is the same kind of filter read on blocks of s samples
(``strided_fir``, ``avgpool_systems``): a linear system with input weight ``X (x) I_s``, merged with a linear
conv before it or folded into a dense layer after a flatten, instead of the factor ``sqrt(ceil(k/s)/k)``.
Adjacent linear layers (no activation between) are merged into one exact map where that keeps the LMI
small: convs and pools into one strided FIR (``compose_fir``, ``linear_chain_system``), a run of them
before ``flatten -> dense`` into the dense layer, dense layers into one (``merge_dense_layers``).
The symbolic form (``symbolic_state_space``) is for display and derivation; the numeric path fills the same
block structure with numpy so that it stays fast for wide layers.
"""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np

from lipdsl import limits
from lipdsl.errors import LoweringError
from lipdsl.lang import typed
from lipdsl.model import lowered
from lipdsl.rigorous import mul_up


def shift_structure(c_in: int, taps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` of the FIR state: ``A`` shifts the ``taps-1`` input blocks up, ``B`` loads the newest."""
    nx = (taps - 1) * c_in
    A = np.eye(nx, k=c_in) if nx else np.zeros((0, 0))
    B = np.zeros((nx, c_in))
    if nx:
        B[nx - c_in :, :] = np.eye(c_in)
    return A, B


def dilated_kernel(weight: np.ndarray, dilation: int) -> np.ndarray:
    """``W_e``: the kernel with ``dilation-1`` zero taps between taps (shape c_out, c_in, d(k-1)+1)."""
    c_out, c_in, k = weight.shape
    if dilation == 1:
        return weight
    out = np.zeros((c_out, c_in, dilation * (k - 1) + 1), dtype=weight.dtype)
    out[:, :, ::dilation] = weight
    return out


def conv_state_space(weight: np.ndarray, dilation: int = 1) -> lowered.StateSpace:
    """Numeric causal realization ``(A, B, C, D)`` of a conv1d kernel (see the module docstring)."""
    W = dilated_kernel(np.asarray(weight, dtype=float), dilation)
    c_out, c_in, k = W.shape
    A, B = shift_structure(c_in, k)
    # C = [W[:,:,0], ..., W[:,:,k-2]] as one (c_out, (k-1) c_in) matrix: tap-major blocks.
    C = np.ascontiguousarray(W[:, :, : k - 1].transpose(0, 2, 1).reshape(c_out, (k - 1) * c_in))
    D = np.ascontiguousarray(W[:, :, k - 1])
    return lowered.StateSpace(A, B, C, D)


def dense_state_space(weight: np.ndarray) -> lowered.StateSpace:
    """Static system ``v = W u`` (``nx = 0``)."""
    W = np.asarray(weight, dtype=float)
    return lowered.StateSpace(np.zeros((0, 0)), np.zeros((0, W.shape[1])), np.zeros((W.shape[0], 0)), W)


def symbolic_state_space(conv: typed.Conv1d):
    """Symbolic ``(A, B, C, D)`` as sympy ImmutableMatrix: taps as the spec's expressions, else symbols.

    Entries of ``C`` and ``D`` are ``w_{o,i,j}`` (``W[o, i, j]`` in PyTorch layout) when the weights came
    from a file, or the spec's own expressions when written inline.
    """
    import sympy

    c_out, c_in, k = conv.c_out, conv.c_in, conv.kernel
    if conv.weight_expr is not None:

        def tap(o, i, j):
            return sympy.sympify(conv.weight_expr[o, i, j])
    else:

        def tap(o, i, j):
            return sympy.Symbol(f"w_{{{o},{i},{j}}}")

    d = conv.dilation
    ke = d * (k - 1) + 1

    def expanded(o, i, m):  # tap m of the dilated kernel
        return tap(o, i, m // d) if m % d == 0 else sympy.Integer(0)

    A, B = shift_structure(c_in, ke)
    C = sympy.ImmutableMatrix(c_out, (ke - 1) * c_in, lambda r, col: expanded(r, col % c_in, col // c_in))
    D = sympy.ImmutableMatrix(c_out, c_in, lambda r, col: expanded(r, col, ke - 1))
    return sympy.ImmutableMatrix(A.astype(int)), sympy.ImmutableMatrix(B.astype(int)), C, D


def symbolic_block_state_space(conv: typed.Conv1d):
    """``(A, B, C, D)`` as sympy block matrices: ``c_in x c_in`` identities and taps ``W_j`` (c_out x c_in).

    The compact form for layers too wide to print entry by entry: ``W_j = W[:, :, j]`` in PyTorch layout.
    """
    import sympy

    c_out, c_in, d = conv.c_out, conv.c_in, conv.dilation
    ke = d * (conv.kernel - 1) + 1
    blocks = ke - 1
    Z, eye = sympy.ZeroMatrix(c_in, c_in), sympy.Identity(c_in)

    def tap(m):  # tap m of the dilated kernel, as a c_out x c_in symbol (or zero)
        return sympy.MatrixSymbol(f"W_{m // d}", c_out, c_in) if m % d == 0 else sympy.ZeroMatrix(c_out, c_in)

    if blocks == 0:
        return None, None, None, tap(0)
    A = (
        sympy.BlockMatrix([[eye if j == i + 1 else Z for j in range(blocks)] for i in range(blocks)])
        if blocks > 1
        else sympy.ZeroMatrix(c_in, c_in)
    )
    B = sympy.BlockMatrix([[Z] for _ in range(blocks - 1)] + [[eye]]) if blocks > 1 else eye
    C = sympy.BlockMatrix([[tap(m) for m in range(blocks)]]) if blocks > 1 else tap(0)
    D = tap(ke - 1)
    return A, B, C, D


def scale_of(ss: lowered.StateSpace) -> float:
    """``||[C D]||_2``, the factor divided out of a layer's weights; 1 for an all-zero map."""
    s = float(np.linalg.norm(np.hstack([ss.C, ss.D]), 2)) if ss.ny and (ss.nx + ss.nu) else 0.0
    return s if s > 0 and math.isfinite(s) else 1.0


def scaled(ss: lowered.StateSpace, s: float) -> lowered.StateSpace:
    return lowered.StateSpace(ss.A, ss.B, ss.C / s, ss.D / s)


def pool_step(layer: typed.Pool) -> lowered.Pool:
    """The gain of a pooling layer, kernel k, stride s, no padding: each sample is in <= ceil(k/s) windows.

    Average: ``y_t = (1/k) sum_{j in window t} w_j`` gives
    ``sum_t |y_t|_X^2 <= (ceil(k/s)/k) sum_t |w_t|_X^2`` for ``X >= 0``.
    Max: ``|max_j a_j - max_j b_j| <= max_j |a_j - b_j|`` per channel, so the factor is
    ``sqrt(ceil(k/s))`` with a diagonal ``X``.
    """
    overlap = math.ceil(layer.kernel / layer.stride)
    if layer.op == "avg":
        gain = math.sqrt(overlap / layer.kernel)
        note = f"avg pool k{layer.kernel} s{layer.stride}: factor sqrt({overlap}/{layer.kernel})"
    else:
        gain = math.sqrt(overlap)
        note = f"max pool k{layer.kernel} s{layer.stride}: factor sqrt({overlap}), diagonal X"
    return lowered.Pool(layer.name, layer.op, gain, layer.op == "max", note)


def overlapping_avgpool(layer) -> bool:
    """Whether ``layer`` is an average pool whose windows overlap (stride < kernel): realized as an FIR."""
    return isinstance(layer, typed.Pool) and layer.op == "avg" and layer.stride < layer.kernel


def strided_fir(taps: np.ndarray, stride: int, delay: int) -> tuple[lowered.StateSpace, int]:
    """Causal realization, on blocks of ``S = stride`` input samples, of the strided filter

        o[t] = z[S t + delay],   z[n] = sum_q G_q u[n - q]   (taps ``G_q`` = ``taps[q]``, c_out x c_in),

    with input blocks ``u~[tau] = (u[S tau + r])`` channel-major (index ``ch S + r``) and output
    ``y~[tau] = o[tau - m0]``, ``m0 = max(0, ceil((delay - S + 1) / S))`` (the first block that holds the
    newest sample of ``o[t]`` is ``t + m0``). Sample ``S (tau - m0) + delay - q`` lies ``b_q`` blocks back, at
    position ``r_q`` in its block, so ``y~`` is a causal FIR in ``tau`` with block taps
    ``K~_b[:, ch S + r] = sum_{q: (b_q, r_q) = (b, r)} G_q[:, ch]``, realized as in ``conv_state_space``
    (``c_in S`` input channels, ``max b_q`` block taps of state). Returns the system and ``m0``: the first
    ``m0`` outputs are extra (partial windows before the signal), every ``o[t]``, ``t >= 0``, is an output.
    """
    q_count, c_out, c_in = taps.shape
    S = stride
    m0 = max(0, -(-(delay - S + 1) // S))
    rel = delay - S * m0 - np.arange(q_count)  # sample offset of tap q from S tau (<= S - 1)
    back, pos = -(rel // S), rel % S
    nb = int(back.max()) + 1
    W = np.zeros((c_out, c_in * S, nb))  # PyTorch layout: W[:, :, nb-1-b] multiplies u~[tau - b]
    for q in range(q_count):
        W[:, np.arange(c_in) * S + pos[q], nb - 1 - back[q]] += taps[q]
    return conv_state_space(W), m0


def avgpool_fir(c: int, kernel: int, stride: int) -> lowered.StateSpace:
    """An average pool (kernel k, stride s, c channels) at the pooled rate: ``strided_fir`` with taps
    ``G_q = I/k`` (q < k) and ``delay = k-1`` (window ``[s t, s t + k - 1]`` ends at ``z[s t + k - 1]``).

    Never looser than the factor ``sqrt(q/k)``, ``q = ceil(k/s)``: for ``X >= 0``, with ``n_j`` the number
    of windows at or after block ``tau`` that contain sample ``j`` (<= q), the storage
    ``V = sum_{j in state} (n_j / q) |u_j|^2_X`` (quadratic in the state, ``P = diag(n_j / q) (x) X >= 0``)
    satisfies ``V(tau+1) - V(tau) <= |u~[tau]|^2_{X (x) I_s} - (1/q) sum_{j in window tau} |u_j|^2_X
    <= |u~[tau]|^2_{X (x) I_s} - (k/q) |y~[tau]|^2_X`` (Jensen), i.e. the factor's certificate is a feasible
    point of this system's LMI with ``X_out = (k/q) X``.
    """
    taps = np.broadcast_to(np.eye(c) / kernel, (kernel, c, c))
    return strided_fir(np.array(taps), stride, kernel - 1)[0]


def conv_avgpool_fir(conv: typed.Conv1d, pool: typed.Pool) -> lowered.StateSpace:
    """A conv layer (no activation) followed by an average pool as one strided FIR on blocks of
    ``S = s_conv s_pool`` input samples.

    The conv's output ``t`` is its causal filter ``z_c[n] = sum_m K_m u[n-m]`` at ``n = s_c t + d1``,
    ``d1 = k_e - 1 - pad_left`` (module docstring); the pool averages outputs ``s_p t .. s_p t + k - 1``, so

        y[t] = (1/k) sum_j z_c[S t + s_c j + d1] = sum_q G_q u[S t + delay - q],
        delay = d1 + s_c (k-1),   G_q = (1/k) sum_{j < k} K_{q - s_c (k-1-j)}.
    """
    W = dilated_kernel(np.asarray(conv.weight, dtype=float), conv.dilation)
    ke = W.shape[2]
    K = W[:, :, ::-1].transpose(2, 0, 1)  # K_m = W_e[:, :, k_e-1-m]
    k, sc = pool.kernel, conv.stride
    G = np.zeros((sc * (k - 1) + ke, conv.c_out, conv.c_in))
    for j in range(k):
        G[sc * (k - 1 - j) : sc * (k - 1 - j) + ke] += K / k
    return strided_fir(G, sc * pool.stride, ke - 1 - conv.pad_left + sc * (k - 1))[0]


def fold_avgpool_into_dense(pool: typed.Pool, flatten: typed.Flatten, dense: typed.Dense):
    """``pool -> flatten -> dense W`` as ``flatten -> dense W (I_c (x) T)``: ``T`` (N' x N) the pool's
    Toeplitz matrix, ``T[t, s t + j] = 1/k``; exact (channel-major flatten). Returns the new flatten and
    dense."""
    c, n, n_out = pool.in_shape.channels, int(pool.in_shape.length), int(pool.out_shape.length)
    T = np.zeros((n_out, n))
    for t in range(n_out):
        T[t, pool.stride * t : pool.stride * t + pool.kernel] = 1.0 / pool.kernel
    W = np.asarray(dense.weight, dtype=float).reshape(dense.n_out, c, n_out) @ T
    flat = typed.Shape(c * n, None, True)
    return (
        dataclasses_replace(flatten, in_shape=pool.in_shape, out_shape=flat),
        dataclasses_replace(dense, weight=W.reshape(dense.n_out, c * n), n_in=c * n, in_shape=flat,
                            weight_expr=None),
    )


FOLD_LIMIT = 1024  # fold an overlapping pool into the dense layer after a flatten while c N stays this small
MERGE_GROWTH = 2  # merge a conv with the pool after it while its LMI has at most this times the separate rows


def avgpool_systems(layers: list, i: int, scale: bool):
    """Lower an overlapping average pool at ``layers[i]`` (or a conv at ``layers[i]`` followed by one) without
    the factor ``sqrt(ceil(k/s)/k)``; returns ``(steps, consumed, channels)`` or None if it does not apply.

    Three constructs, each exact for the pooled samples (derivation: docs/method.md, "Overlapping average
    pooling"):

    - ``conv -> avgpool`` (no activation between): one strided FIR (``conv_avgpool_fir``), with the
      activation after the pool, while its LMI has at most ``MERGE_GROWTH`` times the rows of the two
      separate ones (a conv with many input channels before a large stride can grow it);
    - ``avgpool -> flatten -> dense``: the pool's Toeplitz matrix folded into the dense layer
      (``fold_avgpool_into_dense``; ``layers`` is updated in place), while ``c N <= FOLD_LIMIT``;
    - else ``avgpool`` as a linear FIR system at the pooled rate (``avgpool_fir``), with the activation
      after it if there is one.

    The FIR systems read ``S`` input samples per step (``System.block_in = S``), so their input weight is
    ``X (x) I_S``: ``sum_tau |u~[tau]|^2_{X (x) I_S} = sum_t |u[t]|^2_X`` and the previous system's
    dissipation inequality chains exactly. Their first ``m0`` outputs are partial windows that the network
    does not compute; they only add to the left side of the dissipation inequality (``X_out >= 0``).
    """
    layer = layers[i]
    after = layers[i + 1] if i + 1 < len(layers) else None
    if isinstance(layer, typed.Conv1d) and overlapping_avgpool(after):
        conv, pool = layer, after
        ss = conv_avgpool_fir(conv, pool)
        S = conv.stride * pool.stride
        ke = conv.dilation * (conv.kernel - 1) + 1
        q = math.ceil(pool.kernel / pool.stride)
        separate = ke * conv.c_in + q * pool.stride * conv.c_out
        if ss.nx + ss.nu > MERGE_GROWTH * separate:
            return None
        act = layers[i + 2] if i + 2 < len(layers) and isinstance(layers[i + 2], typed.Activation) else None
        note = (f"FIR k={conv.kernel}" + (f" d={conv.dilation}" if conv.dilation > 1 else "")
                + (f" s={conv.stride}" if conv.stride > 1 else "")
                + f" and avg pool k{pool.kernel} s{pool.stride} merged: one FIR on blocks of {S} samples "
                f"(input weight X (x) I_{S}; overlapping windows exact, no factor sqrt({q}/{pool.kernel}))")
        sys = make_system(conv, act, ss, "conv", note, scale, block_in=S)
        sys = dataclasses_replace(sys, name="+".join((conv.name, pool.name) + ((act.name,) if act else ())),
                                  layers=(conv.name, pool.name) + ((act.name,) if act else ()))
        return [sys], 2 + (act is not None), conv.c_out
    if not overlapping_avgpool(layer):
        return None
    pool = layer
    c = pool.in_shape.channels
    q = math.ceil(pool.kernel / pool.stride)
    nxt2 = layers[i + 2] if i + 2 < len(layers) else None
    if (isinstance(after, typed.Flatten) and isinstance(nxt2, typed.Dense)
            and pool.in_shape.length is not None and c * pool.in_shape.length <= FOLD_LIMIT):
        layers[i + 1], layers[i + 2] = fold_avgpool_into_dense(pool, after, nxt2)
        note = (f"avg pool k{pool.kernel} s{pool.stride}: its Toeplitz map folded into dense {nxt2.name!r} "
                f"after the flatten (exact, no factor sqrt({q}/{pool.kernel}))")
        return [lowered.Pool(pool.name, "merged", 1.0, False, note)], 1, c
    act = after if isinstance(after, typed.Activation) else None
    note = (f"avg pool k{pool.kernel} s{pool.stride} as a linear FIR on blocks of {pool.stride} samples "
            f"(input weight X (x) I_{pool.stride}; overlapping windows exact, no factor "
            f"sqrt({q}/{pool.kernel}))")
    ss = avgpool_fir(c, pool.kernel, pool.stride)
    return [make_system(pool, act, ss, "pool", note, scale, block_in=pool.stride)], 1 + (act is not None), c


# --------------------------------------------------------------------------- linear layers merged
def causal_taps(layer) -> tuple[np.ndarray, int, int]:
    """``(K, s, delta)`` of a conv or average pool: ``y[t] = sum_m K_m u[s t + delta - m]`` (module
    docstring; ``K``: (taps, c_out, c_in), ``delta = k_e - 1 - pad_left``; a pool: taps ``I/k``)."""
    if isinstance(layer, typed.Conv1d):
        W = dilated_kernel(np.asarray(layer.weight, dtype=float), layer.dilation)
        return W[:, :, ::-1].transpose(2, 0, 1), layer.stride, W.shape[2] - 1 - layer.pad_left
    c = layer.in_shape.channels
    taps = np.array(np.broadcast_to(np.eye(c) / layer.kernel, (layer.kernel, c, c)))
    return taps, layer.stride, layer.kernel - 1


def compose_fir(G: np.ndarray, S: int, delta: int, layer, n0: int | None):
    """A strided filter ``y[j] = sum_q G_q u[S j + delta - q]`` followed by ``layer`` (a conv or an average
    pool, no activation between) as one strided filter, or None where that is not exact.

    With the layer's taps ``K_m``, stride ``s`` and ``delta_2`` (``causal_taps``),

        y2[t] = sum_m K_m y[s t + delta_2 - m] = sum_q' G'_q' u[S' t + delta' - q'],
        S' = S s,  delta' = S delta_2 + delta,  G'_q' = sum_m K_m G_{q' - S m}.

    The formula for ``y[j]`` agrees with the network's signal for ``0 <= j < N_1``; the layer's zero
    padding must agree with it too: on the left ``y[j] = 0`` for ``j < 0`` holds for every input (the
    input is zero before ``t = 0``) iff ``delta < S``; on the right ``y[j] = 0`` for ``j >= N_1`` holds iff
    ``S N_1 + delta - (Q - 1) >= N_0`` (every tap reads past the input's end; needs the input length
    ``n0``, else refused).
    """
    K, s, d2 = causal_taps(layer)
    pl = layer.pad_left if isinstance(layer, typed.Conv1d) else 0
    pr = layer.pad_right if isinstance(layer, typed.Conv1d) else 0
    if pl > 0 and delta >= S:
        return None
    if pr > 0:
        n1 = layer.in_shape.length
        if n0 is None or n1 is None or S * n1 + delta - (G.shape[0] - 1) < n0:
            return None
    G2 = np.zeros((S * (K.shape[0] - 1) + G.shape[0], K.shape[1], G.shape[2]))
    for m in range(K.shape[0]):
        G2[S * m : S * m + G.shape[0]] += np.einsum("ab,qbc->qac", K[m], G)
    return G2, S * s, S * d2 + delta


def _separate_rows(layer) -> int:
    """Rows ``nx + nu`` of the linear LMI a conv or average pool gets on its own (0 for a pooling factor)."""
    if isinstance(layer, typed.Conv1d):
        return (layer.dilation * (layer.kernel - 1) + 1) * layer.c_in
    if overlapping_avgpool(layer):
        ss = avgpool_fir(layer.in_shape.channels, layer.kernel, layer.stride)
        return ss.nx + ss.nu
    return 0


def _linear_chain_layer(layer) -> bool:
    return isinstance(layer, typed.Conv1d) or (isinstance(layer, typed.Pool) and layer.op == "avg")


def linear_chain_system(layers: list, i: int, scale: bool):
    """Adjacent linear convs (and average pools) from ``layers[i]`` merged into one strided FIR system, with
    the activation after the last one; ``(steps, consumed, channels)``, or None if fewer than two layers merge
    (or only a conv and an overlapping pool: ``avgpool_systems`` does that).

    ``compose_fir`` builds the composed filter while it is exact; ``strided_fir`` realizes it on blocks of
    ``S`` (product of the strides) input samples, input weight ``X (x) I_S`` (``System.block_in``). A layer
    joins while the merged LMI has at most ``MERGE_GROWTH`` times the rows of the separate linear LMIs.
    Exact, so never looser than the chain through intermediate weights: the separate systems' joint state
    (their shift registers) is a linear function ``T x`` of the merged system's past inputs, so their summed
    storage ``x' T' P T x`` (delayed to the merged system's output time, as in docs/method.md) certifies the
    merged LMI with the same multipliers.
    """
    first = layers[i]
    if not isinstance(first, typed.Conv1d):
        return None
    if i + 1 < len(layers) and isinstance(layers[i + 1], typed.Activation):
        return None
    G, S, delta = causal_taps(first)
    n0 = first.in_shape.length
    chain, separate, best = [first], _separate_rows(first), None
    j = i + 1
    while j < len(layers) and _linear_chain_layer(layers[j]):
        new = compose_fir(G, S, delta, layers[j], n0)
        if new is None:
            break
        ss = strided_fir(*new)[0]
        sep = separate + _separate_rows(layers[j])
        if ss.nx + ss.nu > MERGE_GROWTH * max(sep, 1):
            break
        chain.append(layers[j])
        G, S, delta = new
        separate, best = sep, (ss, S)
        j += 1
        if j < len(layers) and isinstance(layers[j], typed.Activation):
            break
    if best is None or (len(chain) == 2 and overlapping_avgpool(chain[1])):
        return None
    ss, S = best
    act = layers[j] if j < len(layers) and isinstance(layers[j], typed.Activation) else None
    names = tuple(layer.name for layer in chain)
    note = (f"linear layers {', '.join(names)} merged: one FIR with {G.shape[0]} taps"
            + (f" on blocks of {S} samples (input weight X (x) I_{S})" if S > 1 else "")
            + f", {ss.nx + ss.nu} rows instead of {separate} (exact composition, no intermediate X)")
    sys = make_system(first, act, ss, "conv", note, scale, block_in=S)
    names += (act.name,) if act is not None else ()
    sys = dataclasses_replace(sys, name="+".join(names), layers=names)
    c_out = chain[-1].c_out if isinstance(chain[-1], typed.Conv1d) else chain[-1].in_shape.channels
    return [sys], len(chain) + (act is not None), c_out


def _toeplitz(run: list) -> np.ndarray:
    """The matrix of linear convs / average pools applied in turn, on channel-major flattened signals."""
    from lipdsl.model.forward import conv1d

    c, n = run[0].in_shape.channels, int(run[0].in_shape.length)
    x = np.eye(c * n).reshape(c * n, c, n)
    for layer in run:
        if isinstance(layer, typed.Conv1d):
            x = conv1d(x, layer.weight, layer.stride, layer.dilation, layer.pad_left, layer.pad_right)
        else:
            s = layer.stride
            n_out = int(layer.out_shape.length)
            x = np.stack([x[:, :, s * t : s * t + layer.kernel].mean(axis=2) for t in range(n_out)], axis=2)
    return x.reshape(c * n, -1).T


def fold_linear_into_dense(layers: list, i: int) -> tuple | None:
    """``conv/avgpool ... (linear) -> flatten -> dense W`` as ``flatten -> dense W T`` (``T``: the run's
    Toeplitz matrix, paddings and strides included, so always exact); ``layers`` is updated in place.
    Applies to a run with at least one conv, while the new dense layer's ``c_0 N_0`` inputs are at most
    ``FOLD_LIMIT`` and ``MERGE_GROWTH`` times the separate rows (the run's linear LMIs plus the dense
    layer's inputs). Returns the fields of the ``lowered.Pool`` step that records it, or None."""
    j = i
    while j < len(layers) and _linear_chain_layer(layers[j]):
        j += 1
    run = layers[i:j]
    if (not any(isinstance(layer, typed.Conv1d) for layer in run) or j + 1 >= len(layers)
            or not isinstance(layers[j], typed.Flatten) or not isinstance(layers[j + 1], typed.Dense)
            or run[0].in_shape.length is None):
        return None
    flatten, dense = layers[j], layers[j + 1]
    n_in = run[0].in_shape.channels * int(run[0].in_shape.length)
    separate = sum(_separate_rows(layer) for layer in run) + dense.n_in
    if n_in > FOLD_LIMIT or n_in > MERGE_GROWTH * separate:
        return None
    W = np.asarray(dense.weight, dtype=float) @ _toeplitz(run)
    flat = typed.Shape(n_in, None, True)
    layers[i:j + 2] = [
        dataclasses_replace(flatten, in_shape=run[0].in_shape, out_shape=flat),
        dataclasses_replace(dense, weight=W, n_in=n_in, in_shape=flat, weight_expr=None),
    ]
    note = (f"linear {', '.join(layer.name for layer in run)} folded into dense {dense.name!r} after the "
            f"flatten: W T, T their Toeplitz map ({n_in} inputs; exact)")
    return "+".join(layer.name for layer in run), "merged", 1.0, False, note


def merge_dense_layers(layers: list) -> tuple[list, dict[str, str]]:
    """Adjacent dense layers with no activation between as one: ``W_2 (W_1 u + b_1) + b_2`` has the matrix
    ``W_2 W_1`` (exact; the merged LMI has ``n_in + n_out`` rows instead of the two LMIs' ``n_in + n_mid``
    and ``n_mid + n_out``, and no intermediate weight). Returns the new list and a note per merged layer."""
    out, notes = [], {}
    for layer in layers:
        prev = out[-1] if out else None
        if isinstance(layer, typed.Dense) and isinstance(prev, typed.Dense):
            W = np.asarray(layer.weight, dtype=float) @ np.asarray(prev.weight, dtype=float)
            name = f"{prev.name}+{layer.name}"
            out[-1] = dataclasses_replace(layer, name=name, weight=W, n_in=prev.n_in, in_shape=prev.in_shape,
                                          weight_expr=None, bias=None)
            notes[name] = f"linear dense layers {', '.join(name.split('+'))} merged: W = W2 W1 (exact)"
        else:
            out.append(layer)
    return out, notes


def merge_causal_convs(layers: list) -> tuple[list, dict[str, str]]:
    """Runs of causal stride-1 convs with no activation between as one causal conv (for ``--lift``, whose
    blocks do not use ``linear_chain_system``): with ``y1[t] = sum_j K1_j u[t - d1 (k1-1-j)]`` and ``y2`` the
    same of ``y1``, ``y2[t] = sum_lag W[lag] u[t - lag]``, ``W[lag] = sum_{d2 a + d1 b = lag} K2_a K1_b``
    (``a, b`` the lags of the two kernels; ``compose_fir`` with stride 1), and causal padding is zero before
    ``t = 0`` for both (exact for the linear part; the biases only add an offset that does not depend on the
    input, ``K2 b1`` summed over the taps that read real samples, so the merged layer carries none). Merged
    only while
    ``linear_chain_system`` would merge the pair at one sample per block too, so that ``--lift L`` starts
    from the same realization as ``--lift 1``."""
    out, notes = [], {}
    for layer in layers:
        prev = out[-1] if out else None
        if (isinstance(layer, typed.Conv1d) and isinstance(prev, typed.Conv1d)
                and layer.padding == prev.padding == "causal" and layer.stride == prev.stride == 1
                and linear_chain_system([prev, layer], 0, False) is not None):
            G, _, _ = compose_fir(*causal_taps(prev), layer, prev.in_shape.length)  # (causal: delta 0)
            W = np.ascontiguousarray(G[::-1].transpose(1, 2, 0))  # taps G_q on u[t - q]: a conv kernel
            span = W.shape[2] - 1
            name = f"{prev.name}+{layer.name}"
            out[-1] = dataclasses_replace(layer, name=name, weight=W, c_in=prev.c_in, kernel=span + 1,
                                          dilation=1, pad_left=span, pad_right=0, in_shape=prev.in_shape,
                                          bias=None, weight_expr=None)
            notes[name] = (f"linear convs {', '.join(name.split('+'))} merged: one causal conv with "
                           f"{span + 1} taps (exact)")
        else:
            out.append(layer)
    return out, notes


def global_pool_step(name: str, n: int, note: str = "") -> lowered.Pool:
    """Global average pooling over ``n`` samples: ``|mean_t w_t|_X^2 <= (1/n) sum_t |w_t|_X^2``."""
    return lowered.Pool(name, "global_avg", 1.0 / math.sqrt(n), False,
                        f"global avg over {n} samples: factor 1/sqrt({n})" + note)


def make_system(layer, act, ss: lowered.StateSpace, kind: str, note: str, scale: bool,
                block_in: int = 1) -> lowered.System:
    """A System for ``layer`` (conv, dense, pool or a lone activation) followed by ``act`` (or None), scaled.

    ``scale``: divide the map by ``||[C D]||_2`` (recorded in ``System.scale``); an identity "activation"
    (slope [1, 1]) makes the system linear. ``block_in``: samples per input step (``System.block_in``).
    """
    s = scale_of(ss) if scale else 1.0
    names = (layer.name,) if act is None or act is layer else (layer.name, act.name)
    slope = None if act is None else (float(act.alpha), float(act.beta))
    if slope == (1.0, 1.0):
        slope = None
    return lowered.System(
        "+".join(names), names, kind, scaled(ss, s), s, slope, None if act is None else act.function, note,
        block_in,
    )


def _lengths(net: typed.Network, min_length: int | None) -> list[int | None]:
    """Length of the signal entering each layer for an input of ``min_length`` samples (any-length nets)."""
    from lipdsl.lang.check import conv1d_length, pool_length

    n = net.input_shape.length if net.input_shape.length is not None else min_length
    out = []
    for layer in net.layers:
        out.append(n)
        if n is None:
            continue
        if isinstance(layer, typed.Residual):  # both branches have the same length (check.py)
            n = _branch_length(net, layer, n)
        elif isinstance(layer, typed.Conv1d):
            n = conv1d_length(n, layer.kernel, layer.stride, layer.dilation, layer.pad_left, layer.pad_right)
        elif isinstance(layer, typed.Pool):
            n = pool_length(n, layer.kernel, layer.stride)
        if n is not None and n < 1:
            raise LoweringError(
                f"an input of length {min_length} is too short for layer {layer.name!r}",
                span=layer.span,
                hint="give a larger --length",
            )
    return out


def _branch_length(net: typed.Network, block: typed.Residual, n: int) -> int:
    """Length of a residual block's output for an input of ``n`` samples (through its main path)."""
    sub = dataclasses_replace(net, input_shape=typed.Shape(block.in_shape.channels, n), layers=block.main + (
        typed.Flatten("probe", None, block.out_shape, block.out_shape),))
    return _lengths(sub, n)[-1]


def compress_input(ss: lowered.StateSpace) -> tuple[lowered.StateSpace, int]:
    """Replace a first dense map ``W`` (ny x nu, nu > rank) by ``U_r S_r`` from its thin SVD ``W = U S V'``.

    Exact for the first system, whose input weight is ``rho I``: its LMI depends on the input ``u`` only
    through ``|u|^2`` and ``W u``, and ``min |u|^2`` subject to ``W u = U_r S_r s`` is ``|s|^2`` (take
    ``u = V_r s``). The LMI shrinks from ``nu + ny`` to ``r + ny`` (method.md §8: 784-50-10 gives 834 -> 100).
    Returns the new system and the original input size.
    """
    W = ss.D
    U, S, _ = np.linalg.svd(W, full_matrices=False)
    tol = S.max(initial=0.0) * max(W.shape) * np.finfo(float).eps
    r = max(int((S > tol).sum()), 1)
    return dense_state_space(U[:, :r] * S[:r]), W.shape[1]


def lower(
    net: typed.Network,
    *,
    scale: bool = True,
    min_length: int | None = None,
    compress: bool = True,
    lift: int = 1,
    pool_fir: bool = True,
    merge_linear: bool = True,
) -> lowered.Network:
    """Group layers into systems (linear map + optional activation) and reshaping steps; realize each map.

    ``scale``: divide each map by ``||[C D]||_2`` (a congruence of the SDP; the factor is moved into
    ``lowered.Network.factor``) so that the SDP is well conditioned.
    ``lift``: realize conv layers on blocks of ``lift`` samples (``lift.lift_state_space``): ``c lift``
    channels with a multiplier each, average pools (kernel = stride) become exact linear maps merged into the
    next layer, and the bound tightens towards LipSDP-Neuron as ``lift`` grows. Needs strides and pools
    (kernel = stride, average or max) that divide the block, and lengths the block divides for right padding
    and a global average pool (``lift.lower_lifted``); other layers are refused with a hint (``lift = 1``).
    ``pool_fir``: realize average pools with stride < kernel as linear FIR systems at the pooled rate,
    merged with a conv before them or folded into a dense layer after a flatten (``avgpool_systems``);
    False keeps the factor ``sqrt(ceil(k/s)/k)`` (``pool_step``), which is never tighter.
    ``merge_linear``: merge adjacent linear layers into one exact map where that keeps the LMI small:
    convs and average pools with no activation between into one strided FIR (``linear_chain_system``), such
    a run before ``flatten -> dense`` into the dense layer (``fold_linear_into_dense``), dense layers into
    one (``merge_dense_layers``); False keeps one linear LMI per layer (never tighter).
    ``compress``: shrink a wide dense first layer to its row space (``compress_input``; exact).
    ``min_length``: for an any-length input, the shortest input the bound must hold for; only a global
    average pool needs it (its factor ``1/sqrt(N)`` shrinks as N grows, so the bound holds for every longer
    input too).

    Raises
    ------
    LoweringError
        For a global average pool over a signal of unspecified length (the factor 1/sqrt(N) needs N).
    """
    # (lift and residual import this module: loaded here)
    from lipdsl.model.lift import lower_lifted
    from lipdsl.model.residual import fold_batchnorm, residual_system

    typed_net = net
    if any(isinstance(layer, (typed.Residual, typed.BatchNorm)) for layer in net.layers):
        if lift > 1:
            first = next(layer for layer in net.layers
                         if isinstance(layer, (typed.Residual, typed.BatchNorm)))
            raise LoweringError(f"--lift {lift} is not supported with residual blocks or batch norm yet",
                                span=first.span, hint="use --lift 1 (the default)")
        net = dataclasses_replace(net, layers=tuple(fold_batchnorm(net.layers)))
    if lift > 1 and not net.input_shape.flat:
        return lower_lifted(net, lift, scale, pool_fir, merge_linear)
    steps: list[lowered.Step] = []
    factor = 1.0
    layers = list(net.layers)
    lengths = _lengths(net, min_length)
    dense_notes: dict[str, str] = {}
    if merge_linear:  # (dense layers come after every layer with a length: ``lengths`` stays aligned)
        layers, dense_notes = merge_dense_layers(layers)
    i = 0
    while i < len(layers):
        limits.checkpoint("lowering")
        before = len(layers)
        folded = fold_linear_into_dense(layers, i) if merge_linear else None
        if folded is not None:  # a linear conv run folded into the dense layer after the flatten
            del lengths[i + 1 : i + 1 + before - len(layers)]
            steps.append(lowered.Pool(*folded))
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        chain = linear_chain_system(layers, i, scale) if merge_linear else None
        if chain is not None:  # adjacent linear convs (and pools): one FIR, exact
            new, consumed, _ = chain
            steps += new
            factor = mul_up(factor, new[0].scale)
            i += consumed
            continue
        fir = avgpool_systems(layers, i, scale) if pool_fir else None
        if fir is not None:  # an overlapping average pool (with the conv before it): exact, no factor
            new, consumed, _ = fir
            steps += new
            factor = mul_up(factor, new[0].scale if isinstance(new[0], lowered.System) else new[0].gain)
            i += consumed
            continue
        if isinstance(layer, typed.Residual):  # one system with internal activations (and the one after it)
            act = nxt if isinstance(nxt, typed.Activation) else None
            steps.append(residual_system(layer, act, scale))
            factor *= steps[-1].scale
            i += 1 + (act is not None)
            continue
        if isinstance(layer, (typed.Conv1d, typed.Dense, typed.Activation)):
            if isinstance(layer, typed.Conv1d):
                ss, kind = conv_state_space(layer.weight, layer.dilation), "conv"
                note = (
                    f"FIR k={layer.kernel}"
                    + (f" d={layer.dilation}" if layer.dilation > 1 else "")
                    + (f", stride {layer.stride} as sub-sampling" if layer.stride > 1 else "")
                )
            elif isinstance(layer, typed.Dense):
                ss, kind, note = dense_state_space(layer.weight), "dense", dense_notes.get(layer.name, "")
                if compress and not any(isinstance(st, lowered.System) for st in steps) and ss.nu > ss.ny:
                    ss, n_in = compress_input(ss)
                    note = "; ".join(filter(None, [note, f"input compressed {n_in} -> {ss.nu} (exact: first "
                                                  "layer, input weight rho I)"]))
            else:
                ss, kind, note = dense_state_space(np.eye(layer.in_shape.channels)), "activation", ""
            act = None
            if kind == "activation":
                act = layer
            elif isinstance(nxt, typed.Activation):
                act = nxt
                i += 1
            steps.append(make_system(layer, act, ss, kind, note, scale))
            factor = mul_up(factor, steps[-1].scale)
        elif isinstance(layer, typed.Pool):
            steps.append(pool_step(layer))
            factor = mul_up(factor, steps[-1].gain)
        elif isinstance(layer, typed.GlobalAvgPool):
            n = lengths[i]
            if n is None:
                raise LoweringError(
                    f"global average pool {layer.name!r} over a signal of any length: the bound needs N",
                    span=layer.span,
                    hint="give the shortest input length the bound must cover with --length N, "
                    "or declare it in the spec, e.g. 'input 1 x 128'",
                )
            longer = f" (input length >= {min_length}: the bound holds for every longer input too)"
            steps.append(global_pool_step(layer.name, n, longer if net.any_length else ""))
            factor = mul_up(factor, steps[-1].gain)
        elif isinstance(layer, typed.Flatten):
            if layer.in_shape.flat:
                pass  # flattening a vector is the identity
            else:
                steps.append(lowered.Flatten(layer.name, layer.in_shape.channels, int(layer.in_shape.length)))
        else:  # pragma: no cover - typed.Layer is closed
            raise LoweringError(f"cannot lower layer {layer!r}")
        i += 1
    return lowered.Network(net.name, tuple(steps), factor, typed_net)



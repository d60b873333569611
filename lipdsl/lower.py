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
The symbolic form (``symbolic_state_space``) is for display and derivation; the numeric path fills the same
block structure with numpy so that it stays fast for wide layers.
"""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np

from . import lowered, typed
from .errors import LoweringError


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


def _scale_of(ss: lowered.StateSpace) -> float:
    """``||[C D]||_2``, the factor divided out of a layer's weights; 1 for an all-zero map."""
    s = float(np.linalg.norm(np.hstack([ss.C, ss.D]), 2)) if ss.ny and (ss.nx + ss.nu) else 0.0
    return s if s > 0 and math.isfinite(s) else 1.0


def _scaled(ss: lowered.StateSpace, s: float) -> lowered.StateSpace:
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
    s = _scale_of(ss) if scale else 1.0
    names = (layer.name,) if act is None or act is layer else (layer.name, act.name)
    slope = None if act is None else (float(act.alpha), float(act.beta))
    if slope == (1.0, 1.0):
        slope = None
    return lowered.System(
        "+".join(names), names, kind, _scaled(ss, s), s, slope, None if act is None else act.function, note,
        block_in,
    )


def lift_state_space(ss: lowered.StateSpace, b: int) -> lowered.StateSpace:
    """The system on blocks of ``b`` samples: ``u~[tau] = [u[tau b]; ...; u[tau b + b-1]]`` (sample-major).

        A~ = A^b,  B~ = [A^(b-1) B, ..., A B, B],  C~ = [C; C A; ...; C A^(b-1)],
        D~[i, j] = D (i = j),  C A^(i-1-j) B (i > j),  0 (i < j),

    the same input-output map (x~[tau] = x[tau b]); the state dimension does not grow.
    """
    A, B, C, D = ss.A, ss.B, ss.C, ss.D
    nx, nu, ny = ss.nx, ss.nu, ss.ny
    powers = [np.eye(nx)]
    for _ in range(b):
        powers.append(A @ powers[-1])
    Bt = np.hstack([powers[b - 1 - j] @ B for j in range(b)]) if nx else np.zeros((0, nu * b))
    Ct = np.vstack([C @ powers[i] for i in range(b)]) if nx else np.zeros((ny * b, 0))
    Dt = np.zeros((ny * b, nu * b))
    for i in range(b):
        Dt[i * ny : (i + 1) * ny, i * nu : (i + 1) * nu] = D
        for j in range(i):
            if nx:
                Dt[i * ny : (i + 1) * ny, j * nu : (j + 1) * nu] = C @ powers[i - 1 - j] @ B
    return lowered.StateSpace(powers[b] if nx else A, Bt, Ct, Dt)


def _avgpool_block(c: int, b: int, s: int) -> np.ndarray:
    """Average pooling (kernel = stride = s) of one block of ``b`` samples, sample-major: (c b/s) x (c b)."""
    P = np.zeros((c * (b // s), c * b))
    for j in range(b // s):
        for m in range(s):
            P[j * c : (j + 1) * c, (j * s + m) * c : (j * s + m + 1) * c] = np.eye(c) / s
    return P


def _lower_lifted(net: typed.Network, lift: int, scale: bool, pool_fir: bool = True) -> lowered.Network:
    """``lower`` on blocks of ``lift`` samples (see ``lower``); average pools become exact linear maps."""
    from .errors import UnsupportedError

    def refuse(layer, why):
        raise UnsupportedError(
            f"--lift {lift}: {why} ({layer.kind} {layer.name!r})",
            span=layer.span,
            hint="use --lift 1 (the paper's realization), which supports every layer",
        )

    steps: list[lowered.Step] = []
    factor = 1.0
    b = lift  # samples per block of the current signal
    c = net.input_shape.channels
    premap: np.ndarray | None = None  # a static map (average pools) waiting to be merged into the next system
    flat_from: tuple[int, int, int, int] | None = None  # (channels, length, block, blocks) at a flatten
    layers = list(net.layers)
    i = 0

    def merge(ss: lowered.StateSpace) -> lowered.StateSpace:
        if premap is None:
            return ss
        return lowered.StateSpace(ss.A, ss.B @ premap, ss.C, ss.D @ premap)

    def flush() -> None:
        """Turn pending average pools into a linear static system of their own (exact)."""
        nonlocal premap, factor
        if premap is None:
            return
        ss = dense_state_space(premap)
        sc = _scale_of(ss) if scale else 1.0
        factor *= sc
        steps.append(
            lowered.System(
                "avgpool-map",
                ("avgpool",),
                "dense",
                _scaled(ss, sc),
                sc,
                None,
                None,
                "average pooling as an exact linear map",
            )
        )
        premap = None

    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        fir = (avgpool_systems(layers, i, scale)
               if pool_fir and b == 1 and flat_from is None and not layer.in_shape.flat else None)
        if fir is not None:  # one sample per block again: overlapping average pools as at lift 1
            flush()
            new, consumed, c = fir
            steps += new
            factor *= new[0].scale if isinstance(new[0], lowered.System) else new[0].gain
            i += consumed
            continue
        if (
            isinstance(layer, (typed.Conv1d, typed.Activation))
            and flat_from is None
            and not layer.in_shape.flat
        ):
            if isinstance(layer, typed.Conv1d) and b == 1:
                # one sample per block: the plain realization, any padding and stride (sample selection)
                ss, kind, c_out = conv_state_space(layer.weight, layer.dilation), "conv", layer.c_out
                note = f"FIR k={layer.kernel}" + (
                    f", stride {layer.stride} as sub-sampling" if layer.stride > 1 else ""
                )
            elif isinstance(layer, typed.Conv1d):
                span = layer.dilation * (layer.kernel - 1)
                if (layer.pad_left, layer.pad_right) != (span, 0):
                    refuse(layer, "lifting keeps block boundaries aligned only with causal padding")
                if b % layer.stride:
                    refuse(layer, f"stride {layer.stride} does not divide the block of {b} samples")
                ss = lift_state_space(conv_state_space(layer.weight, layer.dilation), b)
                if layer.stride > 1:  # keep samples 0, s, 2s, ... of each block
                    keep = np.concatenate(
                        [np.arange(j * layer.c_out, (j + 1) * layer.c_out) for j in range(0, b, layer.stride)]
                    )
                    ss = lowered.StateSpace(ss.A, ss.B, ss.C[keep], ss.D[keep])
                    b //= layer.stride
                kind, c_out = "conv", layer.c_out
                note = f"FIR k={layer.kernel} lifted by {b * layer.stride}"
            else:
                ss, kind, c_out, note = dense_state_space(np.eye(c * b)), "activation", c, f"lifted by {b}"
            ss = merge(ss)
            premap = None
            act = layer if kind == "activation" else (nxt if isinstance(nxt, typed.Activation) else None)
            if act is nxt and act is not None:
                i += 1
            steps.append(make_system(layer, act, ss, kind, note, scale))
            factor *= steps[-1].scale
            c = c_out
        elif (
            isinstance(layer, typed.Pool)
            and layer.op == "avg"
            and layer.kernel == layer.stride
            and b > 1
            and b % layer.stride == 0
        ):
            P = _avgpool_block(c, b, layer.stride)
            premap = P if premap is None else P @ premap
            b //= layer.stride
            steps.append(
                lowered.Pool(
                    layer.name,
                    "merged",
                    1.0,
                    False,
                    f"avg pool k{layer.kernel}: exact linear map merged into the next layer",
                )
            )
        elif isinstance(layer, (typed.Pool, typed.GlobalAvgPool)) and b == 1:
            flush()
            if isinstance(layer, typed.GlobalAvgPool):
                if layer.in_shape.length is None:
                    refuse(layer, "a global average pool over any length needs --lift 1 and --length")
                steps.append(global_pool_step(layer.name, layer.in_shape.length))
            else:
                steps.append(pool_step(layer))
            factor *= steps[-1].gain
        elif isinstance(layer, (typed.Pool, typed.GlobalAvgPool)):
            refuse(
                layer,
                f"only average pooling with kernel = stride dividing the block of {b} is exact when lifted",
            )
        elif isinstance(layer, typed.Flatten) and layer.in_shape.flat:
            pass  # flattening a vector (after a global average pool) is the identity
        elif isinstance(layer, typed.Flatten):
            n = int(layer.in_shape.length)
            blocks = -(-n // b)
            flat_from = (c, n, b, blocks)
            width = premap.shape[1] if premap is not None else c * b  # lifted channels of the last system
            steps.append(lowered.Flatten(layer.name, width, blocks))
        elif isinstance(layer, typed.Dense) and flat_from is not None and flat_from[0] >= 0:
            # dense on the flattened signal: columns reordered from channel-major (ch N + t) to the lifted
            # kron order (q T + tau), and the pending average pools folded in
            ch, n, bb, T = flat_from
            W = np.asarray(layer.weight, dtype=float)
            width = premap.shape[1] if premap is not None else ch * bb
            Weff = np.zeros((W.shape[0], width * T))
            for tau in range(T):
                sel = np.zeros((W.shape[0], ch * bb))
                for j in range(bb):
                    t = tau * bb + j
                    if t < n:
                        sel[:, j * ch : (j + 1) * ch] = W[:, np.arange(ch) * n + t]
                blk = sel @ premap if premap is not None else sel
                Weff[:, np.arange(width) * T + tau] = blk
            premap = None
            flat_from = (-1, 0, 0, 0)
            ss = dense_state_space(Weff)
            act = nxt if isinstance(nxt, typed.Activation) else None
            if act is not None:
                i += 1
            steps.append(
                make_system(layer, act, ss, "dense", "columns in lifted order, pooling folded in", scale)
            )
            factor *= steps[-1].scale
            c = layer.n_out
        elif isinstance(layer, (typed.Dense, typed.Activation)):  # on a vector: the plain static maps
            flush()
            if isinstance(layer, typed.Dense):
                ss, kind, width = dense_state_space(layer.weight), "dense", layer.n_out
            else:
                ss, kind, width = dense_state_space(np.eye(layer.in_shape.channels)), "activation", c
            act = layer if kind == "activation" else (nxt if isinstance(nxt, typed.Activation) else None)
            if act is nxt and act is not None:
                i += 1
            steps.append(make_system(layer, act, ss, kind, "", scale))
            factor *= steps[-1].scale
            c = width
        else:  # pragma: no cover - every typed layer is handled above
            refuse(layer, "not supported with lifting")
        i += 1
    flush()  # a network ending in average pooling: a final linear map
    return lowered.Network(net.name, tuple(steps), factor, net)


def _lengths(net: typed.Network, min_length: int | None) -> list[int | None]:
    """Length of the signal entering each layer for an input of ``min_length`` samples (any-length nets)."""
    from .check import conv1d_length, pool_length

    n = net.input_shape.length if net.input_shape.length is not None else min_length
    out = []
    for layer in net.layers:
        out.append(n)
        if n is None:
            continue
        if isinstance(layer, typed.Conv1d):
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
) -> lowered.Network:
    """Group layers into systems (linear map + optional activation) and reshaping steps; realize each map.

    ``scale``: divide each map by ``||[C D]||_2`` (a congruence of the SDP; the factor is moved into
    ``lowered.Network.factor``) so that the SDP is well conditioned.
    ``lift``: realize conv layers on blocks of ``lift`` samples (``lift_state_space``): ``c lift`` channels
    with a multiplier each, average pools (kernel = stride) become exact linear maps merged into the next
    layer, and the bound tightens towards LipSDP-Neuron as ``lift`` grows. Needs causal convs, strides and
    pools that divide the block; other layers are refused with a hint to use ``lift = 1``.
    ``pool_fir``: realize average pools with stride < kernel as linear FIR systems at the pooled rate,
    merged with a conv before them or folded into a dense layer after a flatten (``avgpool_systems``);
    False keeps the factor ``sqrt(ceil(k/s)/k)`` (``pool_step``), which is never tighter.
    ``compress``: shrink a wide dense first layer to its row space (``compress_input``; exact).
    ``min_length``: for an any-length input, the shortest input the bound must hold for; only a global
    average pool needs it (its factor ``1/sqrt(N)`` shrinks as N grows, so the bound holds for every longer
    input too).

    Raises
    ------
    LoweringError
        For a global average pool over a signal of unspecified length (the factor 1/sqrt(N) needs N).
    """
    if lift > 1 and not net.input_shape.flat:
        return _lower_lifted(net, lift, scale, pool_fir)
    steps: list[lowered.Step] = []
    factor = 1.0
    layers = list(net.layers)
    lengths = _lengths(net, min_length)
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        fir = avgpool_systems(layers, i, scale) if pool_fir else None
        if fir is not None:  # an overlapping average pool (with the conv before it): exact, no factor
            new, consumed, _ = fir
            steps += new
            factor *= new[0].scale if isinstance(new[0], lowered.System) else new[0].gain
            i += consumed
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
                ss, kind, note = dense_state_space(layer.weight), "dense", ""
                if compress and not any(isinstance(st, lowered.System) for st in steps) and ss.nu > ss.ny:
                    ss, n_in = compress_input(ss)
                    note = f"input compressed {n_in} -> {ss.nu} (exact: first layer, input weight rho I)"
            else:
                ss, kind, note = dense_state_space(np.eye(layer.in_shape.channels)), "activation", ""
            act = None
            if kind == "activation":
                act = layer
            elif isinstance(nxt, typed.Activation):
                act = nxt
                i += 1
            steps.append(make_system(layer, act, ss, kind, note, scale))
            factor *= steps[-1].scale
        elif isinstance(layer, typed.Pool):
            steps.append(pool_step(layer))
            factor *= steps[-1].gain
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
            factor *= steps[-1].gain
        elif isinstance(layer, typed.Flatten):
            if layer.in_shape.flat:
                pass  # flattening a vector is the identity
            else:
                steps.append(lowered.Flatten(layer.name, layer.in_shape.channels, int(layer.in_shape.length)))
        else:  # pragma: no cover - typed.Layer is closed
            raise LoweringError(f"cannot lower layer {layer!r}")
        i += 1
    return lowered.Network(net.name, tuple(steps), factor, net)

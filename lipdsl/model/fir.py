"""FIR algebra for lowering: runs of linear layers (convs, overlapping average pools, dense) -> one exact map
(a strided FIR system on blocks of samples, or a dense layer), where that keeps the LMI small.

An average pool with stride s < kernel is the same kind of filter read on blocks of s samples
(``strided_fir``, ``avgpool_systems``): a linear system with input weight ``X (x) I_s``, merged with a linear
conv before it or folded into a dense layer after a flatten, instead of the factor ``sqrt(ceil(k/s)/k)``.
Adjacent linear layers (no activation between) are merged into one exact map where that keeps the LMI
small: convs and pools into one strided FIR (``compose_fir``, ``linear_chain_system``), a run of them
before ``flatten -> dense`` into the dense layer, dense layers into one (``merge_dense_layers``).
"""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np

from lipdsl.lang import typed
from lipdsl.model import lowered
from lipdsl.model.realize import conv_state_space, dilated_kernel, make_system


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
            + f", {_rows_against(ss.nx + ss.nu, separate)} (exact composition, no intermediate X)")
    sys = make_system(first, act, ss, "conv", note, scale, block_in=S)
    names += (act.name,) if act is not None else ()
    sys = dataclasses_replace(sys, name="+".join(names), layers=names)
    c_out = chain[-1].c_out if isinstance(chain[-1], typed.Conv1d) else chain[-1].in_shape.channels
    return [sys], len(chain) + (act is not None), c_out


def _rows_against(merged: int, separate: int) -> str:
    """"14 rows instead of 34" ("4 rows, as many as separately" when the merge saves none)."""
    if merged == separate:
        return f"{merged} rows, as many as separately"
    return f"{merged} rows instead of {separate}"


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

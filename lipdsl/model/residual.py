"""Residual blocks and batch norm as systems: a typed residual block -> one lowered.System (branches aligned,
activations inside, one multiplier each; a strided block in lifted time); batch norm folded into its
neighbour or kept as a diagonal layer."""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np

from lipdsl.errors import LoweringError, WeightError
from lipdsl.lang import typed
from lipdsl.model import lowered
from lipdsl.rigorous import range_product
from lipdsl.model.lower import causal_taps, scale_of, conv_state_space


# --------------------------------------------------------------------------- batch norm and residual blocks
def _diag_layer(bn: typed.BatchNorm):
    """A batch norm with no conv or dense layer next to it, as the linear layer ``diag(scale)``."""
    c, shape = bn.channels, bn.in_shape
    if shape.flat:
        return typed.Dense(bn.name, bn.span, c, c, np.diag(bn.scale), bn.shift, shape, shape)
    return typed.Conv1d(bn.name, bn.span, c, c, 1, 1, 1, 0, 0, "0", np.diag(bn.scale)[:, :, None], bn.shift,
                        shape, shape)


def _folded(bn: typed.BatchNorm, other, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``weight * factor`` (broadcast): a fold of ``bn`` with the layer ``other``, refused (``WeightError`` at
    the batch norm) where a product of two nonzero entries leaves float64's normal range: 0 or a subnormal
    in floats would turn a nonzero map into a (nearly) zero one, whose bound is then no bound of the spec's
    network, and an overflow is no number."""
    out, i = range_product(weight, factor)
    if i is not None:
        w, f = np.broadcast_to(weight, out.shape)[i], np.broadcast_to(factor, out.shape)[i]
        where = "not finite" if not np.isfinite(out[i]) else "below 2.2e-308"
        raise WeightError(f"folding batchnorm {bn.name!r} into {other.kind} {other.name!r} leaves float64's "
                          f"range: weight {w:.3g} times scale {f:.3g} is {where}", bn.span,
                          hint="rescale the two layers' weights (the bound scales with them)")
    return out


def require_foldable(net: typed.Network) -> None:
    """Refuse ``net`` when a batch norm's fold leaves float64's range (``WeightError`` at the batch norm's
    line, from ``fold_batchnorm``): the one check that ``check``, ``solve`` (every method), ``lower``,
    ``compare`` and the Python API make before any work, so that they refuse the same specs."""
    fold_batchnorm(net.layers)


def fold_batchnorm(layers) -> list:
    """Batch norms folded into the conv or dense layer before them, else after them, else kept as the
    diagonal linear layer ``diag(scale)`` (a kernel-1 conv, or a dense layer on a vector); recursively
    inside residual blocks. ``y = scale * x + shift`` after ``W``: ``W' = diag(scale) W`` (bias
    ``scale * b + shift``), exact. Before ``W``: ``W' = W diag(scale)``
    (``W'[:, i, :] = scale_i W[:, i, :]``), exact for the Jacobian (zero padding stays zero); the bias is
    not used by the bound and is dropped.
    """
    out: list = []
    pending: typed.BatchNorm | None = None  # a batch norm waiting for the conv/dense after it
    for layer in layers:
        if isinstance(layer, typed.Residual):
            layer = dataclasses_replace(layer, main=tuple(fold_batchnorm(layer.main)),
                                        shortcut=tuple(fold_batchnorm(layer.shortcut)))
        if pending is not None:
            if isinstance(layer, typed.Conv1d):
                s = pending.scale
                layer = dataclasses_replace(layer, name=f"{pending.name}+{layer.name}",
                                            in_shape=pending.in_shape, bias=None, weight_expr=None,
                                            weight=_folded(pending, layer, layer.weight, s[None, :, None]))
            elif isinstance(layer, typed.Dense) and layer.in_shape == pending.out_shape:
                s = pending.scale
                layer = dataclasses_replace(layer, name=f"{pending.name}+{layer.name}",
                                            in_shape=pending.in_shape, bias=None, weight_expr=None,
                                            weight=_folded(pending, layer, layer.weight, s[None, :]))
            else:
                out.append(_diag_layer(pending))
            pending = None
        if isinstance(layer, typed.BatchNorm):
            prev = out[-1] if out else None
            s, t = layer.scale, layer.shift
            if isinstance(prev, (typed.Conv1d, typed.Dense)):
                b = s * (prev.bias if prev.bias is not None else 0.0) + t
                if not np.all(np.isfinite(b)):  # (the bias only needs to be a number: a forward pass)
                    raise WeightError(f"folding batchnorm {layer.name!r} into {prev.kind} {prev.name!r} "
                                      "gives a bias that is not finite in float64", layer.span,
                                      hint="rescale the two layers' weights and biases")
                axes = (slice(None), None, None) if isinstance(prev, typed.Conv1d) else (slice(None), None)
                out[-1] = dataclasses_replace(prev, name=f"{prev.name}+{layer.name}", bias=b,
                                              weight=_folded(layer, prev, prev.weight, s[axes]),
                                              weight_expr=None)
            else:
                pending = layer
            continue
        out.append(layer)
    if pending is not None:
        out.append(_diag_layer(pending))
    return out


def lifted_taps(K: np.ndarray, s: int, delta: int, b: int, e: int) -> tuple[np.ndarray, int]:
    """``y[t] = sum_m K_m x[s t + delta - m]`` (``causal_taps``) between lifted signals; returns
    ``(T, e')``: causal block taps ``T_q`` ((b/s) c_out x b c_in) and the output's offset ``e'``.

    A signal ``x`` at ``b`` samples per step with offset ``e`` is ``x^[tau]_j = x[b tau + j - e]``
    (sample-major: entry ``j c + ch``). With ``b' = b/s`` and ``e' = floor((delta + e) / s)``,

        y^[tau]_j' = y[b' tau + j' - e'] = sum_m K_m x[b tau + n - e],   n = s j' - s e' + delta + e - m,

    which is ``x^[tau + floor(n/b)]`` at entry ``n mod b``; ``n <= s (b'-1) - s e' + delta + e < b``, so
    ``floor(n/b) <= 0``: causal, tap ``q = -floor(n/b)``. At ``b = s = 1`` this is ``T_q = K_q``,
    ``e' = e + delta``.
    """
    q_count, c_out, c_in = K.shape
    bo, e2 = b // s, (delta + e) // s
    entries = []
    for j in range(bo):
        for m in range(q_count):
            n = s * j - s * e2 + delta + e - m
            entries.append((j, m, -(n // b), n % b))
    T = np.zeros((max(q for _, _, q, _ in entries) + 1, bo * c_out, b * c_in))
    for j, m, q, jp in entries:
        T[q, j * c_out : (j + 1) * c_out, jp * c_in : (jp + 1) * c_in] += K[m]
    return T, e2


def _compose(T: np.ndarray, K: np.ndarray) -> np.ndarray:
    """The FIR ``T`` after the FIR ``K`` (block taps): ``G_q = sum_m T_m K_(q-m)``."""
    G = np.zeros((T.shape[0] + K.shape[0] - 1, T.shape[1], K.shape[2]))
    for m in range(T.shape[0]):
        G[m : m + K.shape[0]] += np.einsum("ab,qbc->qac", T[m], K)
    return G


def _plus(a: dict, b: dict, sign: float = 1.0) -> dict:
    """``a + sign b`` of signals written as sums of FIRs of sources (``{source: taps}``)."""
    out = dict(a)
    for src, K in b.items():
        if src in out:
            A = out[src]
            q = max(A.shape[0], K.shape[0])
            S = np.zeros((q,) + A.shape[1:])
            S[: A.shape[0]] += A
            S[: K.shape[0]] += sign * K
            out[src] = S
        else:
            out[src] = sign * K
    return out


def _is_identity(signal: dict) -> bool:
    """Whether the signal is one source's output itself (one tap, the identity)."""
    if len(signal) != 1:
        return False
    (K,) = signal.values()
    return K.shape[0] == 1 and K.shape[1] == K.shape[2] and np.array_equal(K[0], np.eye(K.shape[1]))


def _branch_maps(block: typed.Residual, branch, masked: bool, lift: int, internal: list,
                 maps: list) -> tuple[dict, int]:
    """A branch of a residual block in lifted time: appends its activations to ``internal`` and the maps
    that feed them to ``maps`` (``(taps, source, internal index)``; source ``-1`` is the block input, on
    blocks of ``lift`` samples, sample-major); returns its output ``{source: taps}`` and its offset.

    The signal after each layer is a sum of causal FIRs (``lifted_taps``, block taps) of the block input
    and of earlier activations' outputs, at ``b`` samples per step (``lift`` divided by the strides so
    far; one at the branch's end), offset ``e`` (``lifted_taps``; negative after a conv padded beyond its
    kernel's reach, ``delta < 0``: its first outputs read only padding and fall before time 0, where every
    stream is at rest, docs/method.md "Alignment and padding"): convolutions and average pools with no
    activation between are composed into one filter. An activation on a signal of ``b`` samples per step
    is ``b c`` scalar activations, one multiplier each. A max pool (kernel ``k``) is exact with ReLUs:
    ``m_0 = x_0``, ``m_j = m_(j-1) + relu(x_j - m_(j-1))``, ``max = m_(k-1)``.

    ``masked``: the block has a non-causal conv or a pool, so the causal realization of a conv after the
    first layer sees the previous signal outside its window where the network sees zero padding.
    Multiplying by the window (1 inside, 0 outside) is a time-varying gain with slope in
    ``{0} u [alpha, beta]``: the activation before the conv gets the sector ``[min(alpha, 0), max(beta, 0)]``,
    and a conv right after a linear layer gets a window "activation" with slope ``[0, 1]`` between them
    (docs/method.md, residual blocks). Pools read no padding: they need no window.
    """
    c, b, e = block.in_shape.channels, lift, 0
    signal = {-1: np.eye(lift * c)[None]}
    seen, last_act = False, None  # a layer read already; the internal index of the last activation

    def activation(signal: dict, name: str, alpha: float, beta: float) -> dict:
        n = next(iter(signal.values())).shape[1]
        internal.append(lowered.Internal(name, n, alpha, beta))
        maps.extend((K, src, len(internal) - 1) for src, K in signal.items())
        return {len(internal) - 1: np.eye(n)[None]}

    for layer in branch:
        if isinstance(layer, typed.Activation):
            if (layer.alpha, layer.beta) != (1.0, 1.0):  # (an identity is linear: nothing to split at)
                signal = activation(signal, layer.name, float(layer.alpha), float(layer.beta))
                last_act = len(internal) - 1
            continue
        if not isinstance(layer, (typed.Conv1d, typed.Pool)):
            raise LoweringError(
                f"residual block {block.name!r}: {layer.kind} {layer.name!r} inside a block is not supported",
                span=layer.span, hint="a block's branches take conv1d, batchnorm, pooling and activations; "
                "put flatten and dense layers after the block")
        if isinstance(layer, typed.Conv1d):
            K, s, d = causal_taps(layer)
            if seen and masked:
                if _is_identity(signal) and last_act in signal:  # right after an activation: widen it
                    a = internal[last_act]
                    internal[last_act] = dataclasses_replace(a, alpha=min(a.alpha, 0.0),
                                                             beta=max(a.beta, 0.0))
                else:  # after a linear layer: a window "activation" with slope [0, 1]
                    signal = activation(signal, f"{layer.name}.window", 0.0, 1.0)
            T, e2 = lifted_taps(K, s, d, b, e)
            signal = {src: _compose(T, G) for src, G in signal.items()}
        elif layer.op == "avg":
            K, s, d = causal_taps(layer)
            T, e2 = lifted_taps(K, s, d, b, e)
            signal = {src: _compose(T, G) for src, G in signal.items()}
        else:  # max pool: x_j = x[s t + j] is the conv with taps K_m = I at m = k - 1 - j only
            k, s = layer.kernel, layer.stride
            picks = []
            for j in range(k):
                E = np.zeros((k, c, c))
                E[k - 1 - j] = np.eye(c)
                T, e2 = lifted_taps(E, s, k - 1, b, e)
                picks.append({src: _compose(T, G) for src, G in signal.items()})
            signal = picks[0]
            for j in range(1, k):  # m_j = m_(j-1) + relu(x_j - m_(j-1))
                relu = activation(_plus(picks[j], signal, -1.0), f"{layer.name}.max{j}", 0.0, 1.0)
                signal = _plus(signal, relu)
        b, e, seen = b // s, e2, True
        c = layer.c_out if isinstance(layer, typed.Conv1d) else c
    return signal, e


def _fir_system(K: np.ndarray) -> lowered.StateSpace:
    """The shift realization (``conv_state_space``) of causal taps ``K`` (taps, c_out, c_in)."""
    return conv_state_space(K[::-1].transpose(1, 2, 0))


def residual_system(block: typed.Residual, act: typed.Activation | None, scale: bool) -> lowered.System:
    """A residual block (and the activation after it, if any) as one system with internal activations.

    Each branch is causal FIR maps ``F_0, F_1, ..., F_r`` with activations ``phi_1 .. phi_r`` between them
    (``_branch_maps``; convolutions and pools with no activation between are composed into one filter); the
    branch with the smaller delay gets zero taps in front of its last map so both branches are aligned.
    Branches that downsample by ``L`` (the product of their strides) are realized in lifted time: the
    block reads ``u`` in blocks of ``L`` samples, channel-major (``System.block_in = L``, input weight
    ``X (x) I_L``), and gives one output sample per step (``lifted_taps``; docs/method.md, strided blocks).
    The system stacks every map's shift state, ``x = [x_F; ...]``, and reads ``(u, w_1, ..., w_q)``:

        x+ = A x + B_u u + B_w w,   v_j = C_j x + D_j (u, w),   y = C_y x + D_y (u, w),

    with ``A = blkdiag(A_F)``, ``w_j = phi_j(v_j)`` (``v_j`` depends on ``w_i``, ``i < j``, only), and
    ``y = F_r(main) + F_r'(shortcut)``; an identity shortcut is the one-tap filter ``I``. Maps reading the
    same signal share one shift register (the first conv of the main path and a delayed shortcut both
    read ``u``). With ``scale``
    each internal signal is divided by the norm of its rows of ``[C D]`` (a congruence: every activation
    class is closed under ``phi(s v) / s``; the register of ``w_j`` holds the scaled signal, a similarity)
    and ``y`` by ``||[C_y D_y]||`` (``System.scale``).
    """
    branches = [fold_batchnorm(block.main), fold_batchnorm(block.shortcut)]
    masked = any((isinstance(layer, typed.Conv1d)
                  and not (layer.pad_left == layer.dilation * (layer.kernel - 1) and layer.pad_right == 0))
                 or (isinstance(layer, typed.Pool) and layer.kernel > 1)
                 for branch in branches for layer in branch)
    lifts = [typed.branch_stride(branch) for branch in branches]
    if lifts[0] != lifts[1]:
        raise LoweringError(
            f"residual block {block.name!r}: the main path downsamples by {lifts[0]} and the shortcut by "
            f"{lifts[1]}", span=block.span, hint="give both branches the same product of strides")
    lift = lifts[0]
    maps = []  # (taps, input index: -1 = u, else internal activation j; output: internal j or None = y)
    internal: list[lowered.Internal] = []
    outputs = [_branch_maps(block, branch, masked, lift, internal, maps) for branch in branches]
    delay = max(e for _, e in outputs)
    for signal, e in outputs:  # the branch with the smaller offset: its output delayed by the difference
        for src, K in signal.items():
            maps.append((np.concatenate([np.zeros((delay - e,) + K.shape[1:]), K]), src, None))
    c_in = lift * block.in_shape.channels  # the block input on blocks of ``lift`` samples
    if lift > 1:  # its columns channel-major (``System.block_in``): column ch lift + r is entry r c + ch
        c = block.in_shape.channels
        perm = np.array([r * c + ch for ch in range(c) for r in range(lift)])
        maps = [(K[:, :, perm] if src < 0 else K, src, dst) for K, src, dst in maps]
    c_out = block.out_shape.channels
    widths = [a.n for a in internal]
    in_off = np.concatenate([[c_in], c_in + np.cumsum(widths)]).astype(int)  # input offsets of w_j
    out_off = np.concatenate([[0], np.cumsum(widths)]).astype(int)  # output offsets of v_j; y after them
    nu, ny = c_in + sum(widths), sum(widths) + c_out
    # the maps that read the same signal share one shift register (e.g. the first conv of the main path and
    # the delayed shortcut both read u): one FIR per source, its outputs stacked
    sources: dict[int, list] = {}
    for K, src, dst in maps:
        sources.setdefault(src, []).append((K, dst))
    systems = []
    for src, group in sources.items():
        taps = max(K.shape[0] for K, _ in group)
        stacked = np.concatenate([np.concatenate([K, np.zeros((taps - K.shape[0],) + K.shape[1:])])
                                  for K, _ in group], axis=1)
        systems.append((_fir_system(stacked), src, [dst for _, dst in group], [K.shape[1] for K, _ in group]))
    nx = sum(ss.nx for ss, *_ in systems)
    A, B, C, D = np.zeros((nx, nx)), np.zeros((nx, nu)), np.zeros((ny, nx)), np.zeros((ny, nu))
    x0 = 0
    registers: dict[int, slice] = {}  # the states that hold past values of each signal
    for ss, src, dsts, sizes in systems:
        xs = slice(x0, x0 + ss.nx)
        registers[src] = xs
        cols = slice(0, c_in) if src < 0 else slice(in_off[src], in_off[src] + widths[src])
        A[xs, xs] = ss.A
        B[xs, cols] = ss.B
        r0 = 0
        for dst, size in zip(dsts, sizes):
            rows = slice(out_off[-1], ny) if dst is None else slice(out_off[dst], out_off[dst] + widths[dst])
            C[rows, xs] += ss.C[r0 : r0 + size]
            D[rows, cols] += ss.D[r0 : r0 + size]
            r0 += size
        x0 += ss.nx
    if scale:  # internal signals in feedforward order, then the output
        for j, a in enumerate(internal):
            rows = slice(out_off[j], out_off[j] + a.n)
            s = float(np.linalg.norm(np.hstack([C[rows], D[rows]]), 2))
            if s > 0 and math.isfinite(s):
                C[rows] /= s
                D[rows] /= s
                # w_j = s w'_j: its register keeps holding w'_j (B stays a 0/1 shift, so that certify's
                # G - A'GA = I repair costs (k-1) on w'_j), what reads w_j or its register is scaled
                D[:, in_off[j] : in_off[j] + a.n] *= s
                if j in registers:
                    C[:, registers[j]] *= s
                internal[j] = dataclasses_replace(a, scale=s)  # (certificate.build undoes it)
    ss = lowered.StateSpace(A, B, C, D)
    s_out = 1.0
    if scale:
        rows = slice(out_off[-1], ny)
        s_out = scale_of(lowered.StateSpace(A, B, C[rows], D[rows]))
        C[rows] /= s_out
        D[rows] /= s_out
    names = tuple(layer.name for layer in typed.flat_layers(block.main) + typed.flat_layers(block.shortcut))
    names = (block.name,) + names + ((act.name,) if act is not None else ())
    slope = None if act is None else (float(act.alpha), float(act.beta))
    if slope == (1.0, 1.0):
        slope = None
    note = (f"residual block: {len(internal)} internal activation layer(s), {nx} states"
            + (f", branches aligned by a delay of {delay}" if any(e != delay for _, e in outputs) else "")
            + (f"; lifted: input on blocks of {lift} samples (weight X (x) I_{lift}), "
               f"activations at {lift} or fewer samples per step, one multiplier each" if lift > 1 else "")
            + ("; windows of non-causal paddings as slope [0, 1] gains" if masked and len(internal) else ""))
    return lowered.System(block.name + (f"+{act.name}" if act is not None else ""), names, "block", ss, s_out,
                          slope, None if act is None else act.function, note, lift, tuple(internal))

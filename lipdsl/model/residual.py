"""Residual blocks and batch norm as systems: a typed residual block -> one lowered.System (branches aligned,
activations inside, one multiplier each); batch norm folded into its neighbour or kept as a diagonal layer."""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np

from lipdsl.errors import LoweringError
from lipdsl.lang import typed
from lipdsl.model import lowered
from lipdsl.model.lower import causal_taps, scale_of, conv_state_space


# --------------------------------------------------------------------------- batch norm and residual blocks
def _diag_layer(bn: typed.BatchNorm):
    """A batch norm with no conv or dense layer next to it, as the linear layer ``diag(scale)``."""
    c, shape = bn.channels, bn.in_shape
    if shape.flat:
        return typed.Dense(bn.name, bn.span, c, c, np.diag(bn.scale), bn.shift, shape, shape)
    return typed.Conv1d(bn.name, bn.span, c, c, 1, 1, 1, 0, 0, "0", np.diag(bn.scale)[:, :, None], bn.shift,
                        shape, shape)


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
                                            in_shape=pending.in_shape, weight=layer.weight * s[None, :, None],
                                            bias=None, weight_expr=None)
            elif isinstance(layer, typed.Dense) and layer.in_shape == pending.out_shape:
                layer = dataclasses_replace(layer, name=f"{pending.name}+{layer.name}",
                                            in_shape=pending.in_shape, bias=None, weight_expr=None,
                                            weight=layer.weight * pending.scale[None, :])
            else:
                out.append(_diag_layer(pending))
            pending = None
        if isinstance(layer, typed.BatchNorm):
            prev = out[-1] if out else None
            s, t = layer.scale, layer.shift
            if isinstance(prev, typed.Conv1d):
                b = s * (prev.bias if prev.bias is not None else 0.0) + t
                out[-1] = dataclasses_replace(prev, name=f"{prev.name}+{layer.name}",
                                              weight=prev.weight * s[:, None, None], bias=b, weight_expr=None)
            elif isinstance(prev, typed.Dense):
                b = s * (prev.bias if prev.bias is not None else 0.0) + t
                out[-1] = dataclasses_replace(prev, name=f"{prev.name}+{layer.name}",
                                              weight=prev.weight * s[:, None], bias=b, weight_expr=None)
            else:
                pending = layer
            continue
        out.append(layer)
    if pending is not None:
        out.append(_diag_layer(pending))
    return out


def _branch_segments(block: typed.Residual, branch, masked: bool) -> tuple[list, int]:
    """A branch of a residual block as ``[(K, act), ..., (K_r, None)]``: causal FIR taps ``K`` (taps, c_out,
    c_in; ``K_m`` multiplies ``u[n - m]``) each followed by an activation (slope ``[alpha, beta]``), the
    last one linear; and the branch's delay (sum over its convs of ``k_e - 1 - pad_left``).

    ``masked``: the block has a non-causal conv, so the causal realization of a conv after the first one
    sees the previous signal outside its window where the network sees zero padding. Multiplying by the
    window (1 inside, 0 outside) is a time-varying gain with slope in ``{0} u [alpha, beta]``: the
    activation before the conv gets the sector ``[min(alpha, 0), max(beta, 0)]``, and a conv right after
    a conv gets a window "activation" with slope ``[0, 1]`` between them (docs/method.md, residual blocks).
    """
    c = block.in_shape.channels
    K = np.eye(c)[None]  # identity: one tap
    segments, delay, seen_conv = [], 0, False
    for layer in branch:
        if isinstance(layer, typed.Activation):
            if (layer.alpha, layer.beta) != (1.0, 1.0):  # (an identity is linear: nothing to split at)
                segments.append((K, (layer.name, float(layer.alpha), float(layer.beta))))
                K = np.eye(K.shape[1])[None]
            continue
        if not isinstance(layer, typed.Conv1d):
            raise LoweringError(
                f"residual block {block.name!r}: {layer.kind} {layer.name!r} inside a block is not supported",
                span=layer.span, hint="a block's branches take conv1d, batchnorm and activations; put "
                "pooling, flatten and dense layers after the block")
        if layer.stride != 1:
            raise LoweringError(
                f"residual block {block.name!r}: conv1d {layer.name!r} has stride {layer.stride}; strided "
                "convolutions inside a block are not supported yet", span=layer.span,
                hint="stride the signal outside the block (a strided conv or a pool before it)")
        Kc, _, d = causal_taps(layer)
        if d < 0:
            raise LoweringError(
                f"residual block {block.name!r}: conv1d {layer.name!r} pads more than its kernel reaches "
                f"({layer.pad_left} zeros on the left)", span=layer.span,
                hint="use padding same or causal inside residual blocks")
        if seen_conv and masked:
            if segments and segments[-1][1] is not None and K.shape[0] == 1 and \
                    np.array_equal(K[0], np.eye(K.shape[1])):  # right after an activation: widen its sector
                Kp, (name, a, b) = segments[-1]
                segments[-1] = (Kp, (name, min(a, 0.0), max(b, 0.0)))
            else:  # after a conv: a window "activation" with slope [0, 1]
                segments.append((K, (f"{layer.name}.window", 0.0, 1.0)))
                K = np.eye(K.shape[1])[None]
        G = np.zeros((K.shape[0] + Kc.shape[0] - 1, Kc.shape[1], K.shape[2]))
        for m in range(Kc.shape[0]):
            G[m : m + K.shape[0]] += np.einsum("ab,qbc->qac", Kc[m], K)
        K, delay, seen_conv = G, delay + d, True
    segments.append((K, None))
    return segments, delay


def _fir_system(K: np.ndarray) -> lowered.StateSpace:
    """The shift realization (``conv_state_space``) of causal taps ``K`` (taps, c_out, c_in)."""
    return conv_state_space(K[::-1].transpose(1, 2, 0))


def residual_system(block: typed.Residual, act: typed.Activation | None, scale: bool) -> lowered.System:
    """A residual block (and the activation after it, if any) as one system with internal activations.

    Each branch is causal FIR maps ``F_0, F_1, ..., F_r`` with activations ``phi_1 .. phi_r`` between them
    (``_branch_segments``; convolutions with no activation between are composed into one filter); the
    branch with the smaller delay gets zero taps in front of its last map so both branches are aligned.
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
    masked = any(isinstance(layer, typed.Conv1d)
                 and not (layer.pad_left == layer.dilation * (layer.kernel - 1) and layer.pad_right == 0)
                 for branch in branches for layer in branch)
    parts = [_branch_segments(block, branch, masked) for branch in branches]
    delay = max(d for _, d in parts)
    maps = []  # (taps, input index: -1 = u, else internal activation j; output: internal j or None = y)
    internal: list[lowered.Internal] = []
    for segments, d in parts:
        src = -1
        for K, a in segments:
            if a is None and d < delay:  # the last map of the branch with the smaller delay: delayed
                K = np.concatenate([np.zeros((delay - d,) + K.shape[1:]), K])
            if a is None:
                maps.append((K, src, None))
            else:
                maps.append((K, src, len(internal)))
                internal.append(lowered.Internal(a[0], K.shape[1], a[1], a[2]))
                src = len(internal) - 1
    c_in, c_out = block.in_shape.channels, block.out_shape.channels
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
            + (f", branches aligned by a delay of {delay}" if any(d != delay for _, d in parts) else "")
            + ("; windows of non-causal paddings as slope [0, 1] gains" if masked and len(internal) else ""))
    return lowered.System(block.name + (f"+{act.name}" if act is not None else ""), names, "block", ss, s_out,
                          slope, None if act is None else act.function, note, 1, tuple(internal))

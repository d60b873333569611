"""The checker's residual-block realization: a spec's residual block and lower's (A, B, C, D) of it -> the
same shift-register arrangement with C and D recomputed exactly (Fractions) from the weights, or None.

The block's map from ``(u, w_1, ..., w_q)`` to ``(v_1, ..., v_q, y)`` is an FIR with taps ``h_m``
(``h_0 = D``, ``h_m = C A^(m-1) B``), computed here from the weights with exact arithmetic as
docs/method.md (residual blocks) defines it: batch norm folded (``diag(s) W`` after a conv, ``W diag(s)``
before one, else the kernel-1 conv ``diag(s)``), each branch cut at its activations into causal filters
(convs in a row composed, ``G_q = sum_m K_m F_(q-m)``), a window ``[0, 1]`` before a conv that follows a
conv when a padding is not causal, the branch with the smaller delay given zero taps in front of its last
filter. lower's ``A`` and ``B`` must be 0/1 shift registers (every state is input ``c`` delayed by ``m``
samples for exactly one ``(m, c)``: ``A^(m-1) B e_c = e_state``); then ``C[:, state] = h_m[:, c]`` and
``D = h_0`` exactly, and every other tap must be zero. The realization is used only if lower's matrices
agree with it to 1e-9 (a check that both follow the same formulas). Imports no solver code.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lipdsl.certify.batchnorm import ScaleCover, covers
from lipdsl.certify.realization import _q_array, _q_zeros, _qdot, conv_taps, realizations_match
from lipdsl.lang import typed
from lipdsl.model import lowered


def _eye(n: int) -> np.ndarray:
    out = _q_zeros((1, n, n))
    for i in range(n):
        out[0, i, i] = Fraction(1)
    return out


def _folded(branch, absolute: bool = False) -> list | None:
    """The branch as ``("conv", W, layer)`` (W exact, batch norm folded in) and ``("act", layer)`` items
    (``absolute``: with ``|W|`` and ``|s|``, for the bound of ``batchnorm.ScaleCover``)."""
    out: list = []
    pending = None  # an exact scale vector of a batch norm waiting for the conv after it
    q = (lambda a: abs(_q_array(a))) if absolute else _q_array
    for layer in branch:
        if isinstance(layer, typed.BatchNorm):
            s = q(layer.scale)
            if out and out[-1][0] == "conv" and pending is None:
                W = out[-1][1] * s[:, None, None]
                out[-1] = ("conv", W, out[-1][2])
            elif pending is None:
                pending = s
            else:
                return None
            continue
        if isinstance(layer, typed.Conv1d):
            W = q(layer.weight)
            if pending is not None:
                W = W * pending[None, :, None]
                pending = None
            out.append(("conv", W, layer))
            continue
        if pending is not None:  # a lone batch norm: the kernel-1 conv diag(s)
            out.append(("conv", _eye(len(pending))[0][:, :, None] * pending[:, None, None], None))
            pending = None
        if isinstance(layer, typed.Activation):
            out.append(("act", layer))
        else:
            return None
    if pending is not None:
        out.append(("conv", _eye(len(pending))[0][:, :, None] * pending[:, None, None], None))
    return out


def _causal(W: np.ndarray, layer) -> tuple[np.ndarray, int]:
    """``(K, delta)``: taps ``K_m`` multiplying ``u[n - m]`` (m, c_out, c_in) and the delay ``k_e - 1 -
    pad_left`` of a conv (``layer`` None: the kernel-1 batch-norm conv)."""
    if layer is None:
        return W.transpose(2, 0, 1), 0
    return conv_taps(W, layer)


def _identity(K: np.ndarray) -> bool:
    """Whether taps ``K`` are the one tap ``I``."""
    return K.shape[0] == 1 and K.shape[1] == K.shape[2] and all(
        K[0, i, j] == (1 if i == j else 0) for i in range(K.shape[1]) for j in range(K.shape[2]))


def _causal_padding(layer) -> bool:
    return layer is None or (layer.pad_left == layer.dilation * (layer.kernel - 1) and layer.pad_right == 0)


def _segments(items: list, c: int, masked: bool, widened: set):
    """``([(K, name or None), ...], delay)`` of a branch (module docstring); None if not realizable. An
    activation right before a masked conv is added to ``widened`` (its sector becomes ``[min(a, 0),
    max(b, 0)]``: ``m_t phi(v)`` with the window ``m_t`` in ``{0, 1}``)."""
    K = _eye(c)
    segments, delay, seen_conv = [], 0, False
    for item in items:
        if item[0] == "act":
            act = item[1]
            if (act.alpha, act.beta) != (1.0, 1.0):
                segments.append((K, act.name))
                K = _eye(K.shape[1])
            continue
        _, W, layer = item
        if layer is not None and layer.stride != 1:
            return None
        Kc, d = _causal(W, layer)
        if seen_conv and masked:
            if segments and segments[-1][1] is not None and _identity(K):
                widened.add(segments[-1][1])
            else:
                segments.append((K, ".window"))
                K = _eye(K.shape[1])
        if _identity(K):  # (the first conv after an activation or the block's input: G = K_c)
            G = Kc
        else:
            G = _q_zeros((K.shape[0] + Kc.shape[0] - 1, Kc.shape[1], K.shape[2]))
            for m in range(Kc.shape[0]):
                for q in range(K.shape[0]):
                    G[m + q] = G[m + q] + _qdot(Kc[m], K[q])
        K, delay, seen_conv = G, delay + d, True
    segments.append((K, None))
    return segments, delay


@dataclass(frozen=True)
class BlockRealization:
    """A block's realization rebuilt by the checker: ``mats = (A, B, C, D)`` (``A``, ``B`` lower's 0/1
    shifts; ``C``, ``D`` exact Fractions, batch norm folded with its double scales), the internal activations
    whose sector a masked conv after them widens to ``[min(a, 0), max(b, 0)]`` (``widened``) and how far
    ``C``, ``D`` may move with the scales' exact values (``cover``)."""

    mats: tuple[np.ndarray, ...]
    widened: frozenset[str]
    cover: ScaleCover | None = None  # the batch norms' true scales (``batchnorm``), if any


def block_taps(block: typed.Residual, sys: lowered.System, widened: set,
               absolute: bool = False) -> list[np.ndarray] | None:
    """The exact taps ``h_m`` (ny x nu, object arrays) of the block's map ``(u, w) -> (v, y)``, in the
    order of ``sys``'s internal activations, or None when the block is not one this checker rebuilds
    (``absolute``: each tap's sum of the absolute values of its products of weights and scales)."""
    branches = [_folded(block.main, absolute), _folded(block.shortcut, absolute)]
    if any(b is None for b in branches):
        return None
    masked = any(item[0] == "conv" and not _causal_padding(item[2]) for b in branches for item in b)
    parts = [_segments(b, block.in_shape.channels, masked, widened) for b in branches]
    if any(p is None for p in parts):
        return None
    delay = max(d for _, d in parts)
    maps, widths, names = [], [], []
    for segments, d in parts:
        src = -1
        for K, name in segments:
            if name is None:
                if d < delay:
                    K = np.concatenate([_q_zeros((delay - d,) + K.shape[1:]), K])
                maps.append((K, src, None))
            else:
                maps.append((K, src, len(widths)))
                widths.append(K.shape[1])
                names.append(name)
                src = len(widths) - 1
    if len(widths) != len(sys.internal) or any(
            w != a.n or not (a.name == n or (n == ".window" and a.name.endswith(".window")))
            for w, a, n in zip(widths, sys.internal, names)):
        return None
    c_in = block.in_shape.channels
    in_off = np.concatenate([[c_in], c_in + np.cumsum(widths)]).astype(int)
    out_off = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    ny, nu = int(out_off[-1]) + block.out_shape.channels, int(in_off[-1])
    if (ny, nu) != (sys.ss.ny, sys.ss.nu):
        return None
    taps = max(K.shape[0] for K, _, _ in maps)
    h = [_q_zeros((ny, nu)) for _ in range(taps)]
    for K, src, dst in maps:
        rows = slice(out_off[-1], ny) if dst is None else slice(out_off[dst], out_off[dst] + widths[dst])
        cols = slice(0, c_in) if src < 0 else slice(in_off[src], in_off[src] + widths[src])
        for m in range(K.shape[0]):
            h[m][rows, cols] = h[m][rows, cols] + K[m]
    return h


def _registers(h: list, A: np.ndarray, B: np.ndarray, ny: int) -> np.ndarray | None:
    """``C`` with ``C[:, state] = h_m[:, c]`` for the state that holds input ``c`` delayed by ``m``
    (``A^(m-1) B e_c = e_state``), or None when lower's ``A``, ``B`` are not such shift registers or a
    nonzero tap has no state."""
    nx, nu = B.shape
    C = _q_zeros((ny, nx))
    seen = np.zeros(nx, dtype=bool)
    M = B.copy()
    for m in range(1, nx + len(h) + 1):  # M = A^(m-1) B: state s holds input c delayed by m
        if m >= len(h) and not M.any():
            break
        for c in range(nu):
            rows = np.flatnonzero(M[:, c])
            tap = h[m][:, c] if m < len(h) else None
            if len(rows) == 0:
                if tap is not None and any(v != 0 for v in tap):
                    return None  # a nonzero tap the registers do not reach
                continue
            if len(rows) != 1 or M[rows[0], c] != 1 or seen[rows[0]]:
                return None
            seen[rows[0]] = True
            C[:, rows[0]] = tap if tap is not None else _q_zeros(ny)
        M = A @ M
    if M.any() or not seen.all():  # (A nilpotent on reachable states only)
        return None
    return C


def _cover(block: typed.Residual, sys: lowered.System, A, B, widened: set) -> ScaleCover | None | bool:
    """The block's ``batchnorm.ScaleCover`` (``C``, ``D`` of the taps with absolute values), None when it
    has no batch norm with raw parameters, False when one's scale is not bounded or the absolute taps do
    not take lower's arrangement."""
    bns = [x for x in typed.flat_layers(block.main) + typed.flat_layers(block.shortcut)
           if isinstance(x, typed.BatchNorm)]
    found = covers(bns)
    if found is None:
        return False
    names, delta = found
    if not names:
        return None
    same: set = set()
    h_abs = block_taps(block, sys, same, absolute=True)
    C_abs = None if h_abs is None or same != widened else _registers(h_abs, A, B, sys.ss.ny)
    if C_abs is None:
        return False
    return ScaleCover(names, delta, len(bns), C_abs, h_abs[0])


def exact_block_realization(sys: lowered.System, net: typed.Network) -> BlockRealization | None:
    """lower's ``(A, B)`` and ``(C, D)`` recomputed exactly from the weights (module docstring), or None."""
    block = next((layer for layer in net.layers
                  if isinstance(layer, typed.Residual) and layer.name == sys.layers[0]), None)
    if block is None or sys.block_in != 1:
        return None
    widened: set = set()
    h = block_taps(block, sys, widened)
    if h is None:
        return None
    A, B = sys.ss.A, sys.ss.B
    if not (np.isin(A, (0.0, 1.0)).all() and np.isin(B, (0.0, 1.0)).all()):
        return None
    C = _registers(h, A, B, sys.ss.ny)
    if C is None:
        return None
    ex = (A, B, C, h[0])
    if not realizations_match(ex, sys.ss):
        return None
    cover = _cover(block, sys, A, B, widened)
    if cover is False:
        return None
    return BlockRealization(ex, frozenset(widened), cover)

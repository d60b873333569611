"""Realize layers as state space: conv/dense weights -> lowered.StateSpace (numeric, or symbolic for display),
and a layer with its activation -> lowered.System (scaled by ``||[C D]||_2``).

A conv layer with PyTorch weight ``W`` (c_out, c_in, k), dilation ``d``, is the causal filter

    z[t] = sum_{m=0}^{k_e-1} K_m u[t-m],   K_m = W_e[:, :, k_e-1-m],   k_e = d (k-1) + 1,

(``W_e`` = ``W`` with ``d-1`` zero taps between taps), realized with state
``x[t] = [u[t-k_e+1]; ...; u[t-1]]``:

    A = block up-shift (identity blocks on the super-diagonal),  B = [0; ...; 0; I],
    C = [K_{k_e-1}, ..., K_1] = [W_e[:,:,0], ..., W_e[:,:,k_e-2]],  D = K_0 = W_e[:,:,k_e-1].

The symbolic form (``symbolic_state_space``) is for display and derivation; the numeric path fills the same
block structure with numpy so that it stays fast for wide layers.
"""

from __future__ import annotations

import math

import numpy as np

from lipdsl.lang import typed
from lipdsl.model import lowered


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

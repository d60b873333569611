"""Realizations for the checker: a spec's layers -> (A, B, C, D) rebuilt from the weights, in floating point
and exactly (Fractions)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lipdsl.certify.batchnorm import ScaleCover, covers
from lipdsl.lang import typed
from lipdsl.model import lowered


def realize(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(A, B, C, D)`` of a conv (causal FIR, ``docs/certificate.md``) or dense layer from its weights.

    Conv ``W`` (c_out, c_in, k), dilation d: ``W_e`` with d-1 zero taps between taps, ``k_e = d(k-1)+1``;
    ``A`` shifts the ``k_e - 1`` input blocks up, ``B = [0; ...; I]``,
    ``C = [W_e[:,:,0] ... W_e[:,:,k_e-2]]``,
    ``D = W_e[:,:,k_e-1]``. Dense ``W``: ``(0, 0, 0, W)``. None for other layers.
    """
    if isinstance(layer, typed.Dense):
        W = np.asarray(layer.weight, dtype=float)
        return np.zeros((0, 0)), np.zeros((0, W.shape[1])), np.zeros((W.shape[0], 0)), W
    if not isinstance(layer, typed.Conv1d):
        return None
    W0 = np.asarray(layer.weight, dtype=float)
    c_out, c_in, k = W0.shape
    d = layer.dilation
    ke = d * (k - 1) + 1
    W = np.zeros((c_out, c_in, ke))
    W[:, :, ::d] = W0
    nx = (ke - 1) * c_in
    A = np.zeros((nx, nx))
    B = np.zeros((nx, c_in))
    for j in range(ke - 2):
        A[j * c_in : (j + 1) * c_in, (j + 1) * c_in : (j + 2) * c_in] = np.eye(c_in)
    if nx:
        B[nx - c_in :, :] = np.eye(c_in)
    C = np.concatenate([W[:, :, j] for j in range(ke - 1)], axis=1) if ke > 1 else np.zeros((c_out, 0))
    return A, B, C, W[:, :, ke - 1].copy()


def own_realization(sys: lowered.System, net: typed.Network) -> bool:
    """Whether ``sys``'s realization equals ``realize`` of its one map layer, exactly (the weights)."""
    if sys.block_in != 1 or sys.kind not in ("conv", "dense", "activation"):
        return False
    layers = {layer.name: layer for layer in net.layers}
    first = layers.get(sys.layers[0])
    if sys.kind == "activation":
        ss = sys.ss
        return ss.nx == 0 and ss.D.shape[0] == ss.D.shape[1] and np.array_equal(ss.D, np.eye(ss.ny))
    if first is None or len([n for n in sys.layers if not isinstance(layers.get(n), typed.Activation)]) != 1:
        return False
    own = realize(first)
    if own is None:
        return False
    return all(a.shape == b.shape and np.array_equal(a, b)
               for a, b in zip(own, (sys.ss.A, sys.ss.B, sys.ss.C, sys.ss.D)))


def _q_array(a) -> np.ndarray:
    """A float array as an object array of exact ``Fraction``s."""
    a = np.asarray(a, dtype=float)
    out = np.empty(a.shape, dtype=object)
    for idx, v in np.ndenumerate(a):
        out[idx] = Fraction(v)
    return out


def _q_zeros(shape) -> np.ndarray:
    out = np.empty(shape, dtype=object)
    out.fill(Fraction(0))
    return out


def _qdot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The exact product of two object arrays of Fractions (python-flint's ``fmpq_mat`` when installed)."""
    try:
        import flint
    except ImportError:  # pragma: no cover - flint is in the test extras
        return A.dot(B)
    m, k = A.shape
    n = B.shape[1]
    if m == 0 or n == 0 or k == 0:
        return _q_zeros((m, n))
    fa = flint.fmpq_mat(m, k, [flint.fmpq(v.numerator, v.denominator) for v in A.ravel()])
    fb = flint.fmpq_mat(k, n, [flint.fmpq(v.numerator, v.denominator) for v in B.ravel()])
    out = np.empty((m, n), dtype=object)
    for i, row in enumerate((fa * fb).tolist()):
        out[i] = [Fraction(int(v.p), int(v.q)) for v in row]
    return out


def conv_taps(W0: np.ndarray, layer: typed.Conv1d) -> tuple[np.ndarray, int]:
    """``(K, delta)`` of conv ``layer`` with the exact weights ``W0`` (c_out x c_in x k: its own, or with a
    batch norm folded in): taps ``K_m`` (m, c_out, c_in) multiplying ``u[s t + delta - m]``, dilated."""
    c_out, c_in, k = W0.shape
    ke = layer.dilation * (k - 1) + 1
    W = _q_zeros((c_out, c_in, ke))
    W[:, :, :: layer.dilation] = W0
    return W[:, :, ::-1].transpose(2, 0, 1), ke - 1 - layer.pad_left


def _exact_taps(layer, W: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """``(K, s, delta)``: ``y[t] = sum_m K_m u[s t + delta - m]`` of a conv (its weights, or the exact ``W``
    given) or average pool (``I/k``), exactly (object arrays of Fractions; ``lower.causal_taps`` in
    floating point)."""
    if isinstance(layer, typed.Conv1d):
        K, delta = conv_taps(_q_array(layer.weight) if W is None else W, layer)
        return K, layer.stride, delta
    c = layer.in_shape.channels
    K = _q_zeros((layer.kernel, c, c))
    for m in range(layer.kernel):
        for ch in range(c):
            K[m, ch, ch] = Fraction(1, layer.kernel)
    return K, layer.stride, layer.kernel - 1


def _exact_compose(G: np.ndarray, S: int, delta: int, layer,
                   W: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """``G'_q = sum_m K_m G_{q - S m}``, ``S' = S s``, ``delta' = S delta_2 + delta``
    (``lower.compose_fir``, exactly; ``W``: the conv's exact weights if not its own)."""
    K, s, d2 = _exact_taps(layer, W)
    G2 = _q_zeros((S * (K.shape[0] - 1) + G.shape[0], K.shape[1], G.shape[2]))
    for m in range(K.shape[0]):
        for q in range(G.shape[0]):
            G2[S * m + q] = G2[S * m + q] + np.dot(K[m], G[q])
    return G2, S * s, S * d2 + delta


def _exact_strided(G: np.ndarray, S: int, delay: int) -> tuple[np.ndarray, ...]:
    """``(A, B, C, D)`` of ``lower.strided_fir`` for exact taps ``G`` (same arrangement, exact values)."""
    q_count, c_out, c_in = G.shape
    m0 = max(0, -(-(delay - S + 1) // S))
    rel = delay - S * m0 - np.arange(q_count)
    back, pos = -(rel // S), rel % S
    nb = int(back.max()) + 1
    W = _q_zeros((c_out, c_in * S, nb))
    for q in range(q_count):
        cols = np.arange(c_in) * S + pos[q]
        W[:, cols, nb - 1 - back[q]] = W[:, cols, nb - 1 - back[q]] + G[q]
    k = nb
    ci = c_in * S
    nx = (k - 1) * ci
    A = np.eye(nx, k=ci) if nx else np.zeros((0, 0))
    B = np.zeros((nx, ci))
    if nx:
        B[nx - ci :, :] = np.eye(ci)
    C = W[:, :, : k - 1].transpose(0, 2, 1).reshape(c_out, (k - 1) * ci) if k > 1 else _q_zeros((c_out, 0))
    return A, B, C, W[:, :, k - 1]


def _exact_toeplitz(run: list) -> np.ndarray:
    """The exact matrix (channel-major in and out) of linear convs / average pools applied in turn
    (``lower._toeplitz``): ``y[o, t] = sum_{i, j} W[o, i, j] x[i, s t + d j - pad_left]``; a pool averages
    its window."""
    c, n = run[0].in_shape.channels, int(run[0].in_shape.length)
    T = None
    for layer in run:
        n_out = int(layer.out_shape.length)
        if isinstance(layer, typed.Conv1d):
            W = _q_array(layer.weight)
            c_out = W.shape[0]
            L = _q_zeros((c_out * n_out, layer.c_in * n))
            for o in range(c_out):
                for t in range(n_out):
                    for j in range(layer.kernel):
                        src = layer.stride * t + layer.dilation * j - layer.pad_left
                        if 0 <= src < n:
                            for i in range(layer.c_in):
                                L[o * n_out + t, i * n + src] += W[o, i, j]
        else:
            c_out = c
            L = _q_zeros((c * n_out, c * n))
            for ch in range(c):
                for t in range(n_out):
                    for j in range(layer.kernel):
                        L[ch * n_out + t, ch * n + layer.stride * t + j] += Fraction(1, layer.kernel)
        T = L if T is None else _qdot(L, T)
        c, n = c_out, n_out
    return T


@dataclass(frozen=True)
class _Map:
    """A conv or dense map of a lowered system's layer name (``"c"``, or batch norms folded in as lower's
    ``fold_batchnorm`` names them: ``"c+bn"``, ``"bn+c"``, ``"bn"`` alone): its geometry ``layer``, its
    exact weights ``W`` (batch norm folded with its double scales) and ``W_abs`` (with ``|W|``, ``|s|``; None
    without batch norm: ``|W|``), and the batch norms folded in."""

    layer: object
    W: np.ndarray
    W_abs: np.ndarray | None
    norms: tuple

    def weights(self, absolute: bool) -> np.ndarray:
        if not absolute:
            return self.W
        return self.W_abs if self.W_abs is not None else abs(self.W)


def _map(name: str, layers: dict) -> _Map | None:
    """The conv or dense map named ``name`` (``_Map``), or None (a pool, an unknown name)."""
    parts = [layers.get(n) for n in name.split("+")]
    if any(p is None for p in parts):
        return None
    norms = tuple(p for p in parts if isinstance(p, typed.BatchNorm))
    maps = [p for p in parts if not isinstance(p, typed.BatchNorm)]
    if len(maps) > 1 or (maps and not isinstance(maps[0], (typed.Conv1d, typed.Dense))):
        return None
    if not maps:  # a lone batch norm: lower's diagonal layer diag(s)
        if len(norms) != 1:
            return None
        from lipdsl.model.residual import _diag_layer

        layer = _diag_layer(norms[0])
        W = _q_zeros(layer.weight.shape)
        for i, v in enumerate(_q_array(norms[0].scale)):
            W[(i, i) + (0,) * (W.ndim - 2)] = v
        return _Map(layer, W, abs(W), norms)
    layer = maps[0]
    W = _q_array(layer.weight)
    if not norms:
        return _Map(layer, W, None, ())
    W_abs = abs(W)
    at = next(k for k, p in enumerate(parts) if p is layer)
    for k, bn in enumerate(parts):
        if k == at:
            continue
        shape = (-1, 1) + (1,) * (W.ndim - 2) if k > at else (1, -1) + (1,) * (W.ndim - 2)
        s = _q_array(bn.scale).reshape(shape)  # after the map: diag(s) W; before it: W diag(s)
        W, W_abs = W * s, W_abs * abs(s)
    return _Map(layer, W, W_abs, norms)


def exact_realization(sys: lowered.System, low: lowered.Network, net: typed.Network,
                      index: int) -> tuple[tuple[np.ndarray, ...], ScaleCover | None] | None:
    """The exact ``(A, B, C, D)`` (object arrays of Fractions) of a map ``lower`` composed in floating
    point, recomputed from the spec's weights with lower's formulas, and its ``batchnorm.ScaleCover`` when
    batch norms are folded in (else None); None for another kind of system.

    Covers linear convs and average pools merged into one strided FIR (``linear_chain_system``,
    ``conv_avgpool_fir``, ``avgpool_fir``), dense layers merged into one (``W_k ... W_1``), a linear
    conv/pool run folded into the dense layer after a flatten (``W T``), and batch norms folded into a
    conv or dense layer (``diag(s) W``, ``W diag(s)``) or alone (``diag(s)``). The caller checks that
    lower's matrices agree with these to rounding (else they are not used).
    """
    layers = {layer.name: layer for layer in net.layers}
    names = [n for n in sys.layers if not isinstance(layers.get(n), typed.Activation)]
    maps = {n: _map(n, layers) for n in names}
    norms = tuple(layers[p] for n in names for p in n.split("+")  # (every batch norm folded in)
                  if isinstance(layers.get(p), typed.BatchNorm))
    found = covers(norms)
    if found is None:
        return None

    def cover(C_abs, D_abs) -> ScaleCover | None:
        return ScaleCover(found[0], found[1], len(norms), C_abs, D_abs) if found[0] else None

    if sys.kind in ("conv", "pool") and names and all(
            maps[n] is not None and isinstance(maps[n].layer, typed.Conv1d)
            or isinstance(layers.get(n), typed.Pool) for n in names):
        run = [maps[n] or layers[n] for n in names]
        if len(run) == 1 and isinstance(run[0], _Map) and not run[0].norms:
            return None  # a plain conv: ``realize``

        def taps(absolute: bool):
            """The run's taps composed, with ``|W|``, ``|s|`` when ``absolute``."""
            def one(item):
                if not isinstance(item, _Map):
                    return item, None
                return item.layer, item.weights(absolute)

            G, S, delta = _exact_taps(*one(run[0]))
            for item in run[1:]:
                G, S, delta = _exact_compose(G, S, delta, *one(item))
            return G, S, delta

        G, S, delta = taps(False)
        if S != sys.block_in:
            return None
        mats = _exact_strided(G, S, delta)
        if not norms:
            return mats, None
        abs_mats = _exact_strided(taps(True)[0], S, delta)
        return mats, cover(abs_mats[2], abs_mats[3])
    if sys.kind != "dense" or len(names) != 1:
        return None
    parts = names[0].split("+")
    if not all(isinstance(layers.get(n), (typed.Dense, typed.BatchNorm)) for n in parts):
        return None
    D = D_abs = None
    for n in parts:  # the layers in turn: y = W x (dense), y = diag(s) x (batch norm)
        layer = layers[n]
        if isinstance(layer, typed.Dense):
            W = _q_array(layer.weight)
            D = W if D is None else _qdot(W, D)
            if norms:
                D_abs = abs(W) if D_abs is None else _qdot(abs(W), D_abs)
        else:
            s = _q_array(layer.scale)
            if D is None:
                D = _q_zeros((len(s), len(s)))
                for i, v in enumerate(s):
                    D[i, i] = v
                D_abs = abs(D)
            else:
                D, D_abs = D * s[:, None], D_abs * abs(s)[:, None]
    steps = list(low.steps)
    before = []
    for st in reversed(steps[:index]):
        if isinstance(st, lowered.System):
            break
        before.append(st)
    folded = [st for st in before if isinstance(st, lowered.Pool) and st.op == "merged"]
    if folded:
        names = folded[0].name.split("+")
        if len(folded) != 1 or not all(n in layers for n in names):
            return None
        T = _exact_toeplitz([layers[n] for n in names])
        D, D_abs = _qdot(D, T), (_qdot(D_abs, abs(T)) if norms else None)
    ny, nu = D.shape
    z = _q_zeros((ny, 0))
    return (np.zeros((0, 0)), np.zeros((0, nu)), z, D), (cover(z, D_abs) if norms else None)


def realizations_match(exact: tuple[np.ndarray, ...], ss: lowered.StateSpace) -> bool:
    """Whether lower's float matrices equal the exact ones to rounding (``1e-9`` of the largest entry)."""
    for e, f in zip(exact, (ss.A, ss.B, ss.C, ss.D)):
        if e.shape != f.shape:
            return False
        if e.size == 0:
            continue
        ef = np.array(e, dtype=float)
        scale = max(float(np.max(np.abs(ef))), 1e-300)
        if float(np.max(np.abs(ef - f))) > 1e-9 * scale:
            return False
    return True

"""Lifting: conv layers and pools realized on blocks of L samples, (typed.Network, L) -> lowered.Network:
tighter bounds (towards LipSDP-Neuron), larger LMIs."""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np

from lipdsl import limits
from lipdsl.lang import typed
from lipdsl.model import lowered
from lipdsl.model.lower import (
    scaled,
    avgpool_systems,
    conv_state_space,
    dense_state_space,
    dilated_kernel,
    fold_linear_into_dense,
    global_pool_step,
    linear_chain_system,
    make_system,
    merge_causal_convs,
    merge_dense_layers,
    pool_step,
    scale_of,
)
from lipdsl.rigorous import mul_up


def lift_state_space(ss: lowered.StateSpace, b: int) -> lowered.StateSpace:
    """The system on blocks of ``b`` samples: ``u~[tau] = [u[tau b]; ...; u[tau b + b-1]]`` (sample-major).

        A~ = A^b,  B~ = [A^(b-1) B, ..., A B, B],  C~ = [C; C A; ...; C A^(b-1)],
        D~[i, j] = D (i = j),  C A^(i-1-j) B (i > j),  0 (i < j),

    the same input-output map (x~[tau] = x[tau b]); the state dimension does not grow.
    """
    A, B, C, D = ss.A, ss.B, ss.C, ss.D
    nx, nu, ny = ss.nx, ss.nu, ss.ny
    what = f"lifting a system of {nx} states by {b} samples"
    hint = "use a smaller --lift, or shorter kernels or fewer channels"
    limits.require_memory(limits.BASE_BYTES + 8.0 * (2 * nx * nx + 2 * nx * (nu + ny) * b + ny * nu * b * b),
                          what, hint=hint)
    sparse = nx > 64 and np.count_nonzero(A) <= 0.05 * A.size  # (a conv's A is a shift: nx - c entries)
    if sparse:  # powers of a sparse A stay sparse: no dense nx^3 products (k 3000, 2 channels: 155 s)
        import scipy.sparse as sp

        As = sp.csr_matrix(A)
        limits.require_time(2.0 * b * nx * (nx + nu + ny), what, hint=hint)
        P = sp.identity(nx, format="csr")
        CP, PB = [], []  # C A^i and A^i B, i = 0 .. b-1
        for _ in range(b):
            limits.checkpoint("lowering")
            CP.append(np.asarray((P.T @ C.T).T))
            PB.append(np.asarray(P @ B))
            P = As @ P
        Ab = P.toarray()
    else:
        limits.require_time(2.0 * b * float(nx) ** 3 + 4.0 * b * nx * nx * (nu + ny), what, hint=hint)
        powers = [np.eye(nx)]
        for _ in range(b):
            limits.checkpoint("lowering")
            powers.append(A @ powers[-1])
        CP = [C @ powers[i] for i in range(b)]
        PB = [powers[i] @ B for i in range(b)]
        Ab = powers[b]
    Bt = np.hstack([PB[b - 1 - j] for j in range(b)]) if nx else np.zeros((0, nu * b))
    Ct = np.vstack(CP) if nx else np.zeros((ny * b, 0))
    Dt = np.zeros((ny * b, nu * b))
    CAB = [CP[m] @ B for m in range(b - 1)] if nx else []  # C A^m B
    for i in range(b):
        Dt[i * ny : (i + 1) * ny, i * nu : (i + 1) * nu] = D
        for j in range(i):
            if nx:
                Dt[i * ny : (i + 1) * ny, j * nu : (j + 1) * nu] = CAB[i - 1 - j]
    return lowered.StateSpace(Ab if nx else A, Bt, Ct, Dt)


def _avgpool_block(c: int, b: int, s: int) -> np.ndarray:
    """Average pooling (kernel = stride = s) of one block of ``b`` samples, sample-major: (c b/s) x (c b)."""
    P = np.zeros((c * (b // s), c * b))
    for j in range(b // s):
        for m in range(s):
            P[j * c : (j + 1) * c, (j * s + m) * c : (j * s + m + 1) * c] = np.eye(c) / s
    return P


def delayed_lifted_conv(layer: typed.Conv1d, b: int) -> tuple[lowered.StateSpace, int, int]:
    """A conv with any padding on blocks of ``b`` samples; returns ``(system, m0, D)``.

    The layer is ``y[t] = z[s t + delta]`` (``z`` its causal filter, ``delta = k_e - 1 - pad_left``; the
    zeros of the padding are the input's zeros before ``0`` and after its end). With
    ``m0 = max(0, ceil(delta / b))`` and ``D = b m0 - delta >= 0``, let ``zbar[n] = z[n - D]`` (the causal
    filter with ``D`` more zero taps, still causal): then ``y[t] = zbar[s t + b m0]``, so output sample ``j``
    of block ``tau`` is ``y[(tau - m0) b/s + j] = zbar[b tau + s j]`` -- the causal lifted system
    (``lift_state_space``) of the delayed filter, keeping samples ``0, s, 2s, ...`` of each block. Its
    output blocks ``tau < m0`` are not computed by the network (partial windows before the signal); dropping
    them keeps the chain sound since the output weight is ``>= 0`` (``lower`` docstring). The right padding's
    zeros are the input's zeros after its end only if the system is fed exactly the network's signal, which
    ends on a block boundary when ``b | N`` (checked by the caller). Never looser than the undelayed
    realization: with ``V`` a storage of it, ``V(x[n - D]) + sum_{n-D <= m < n} |u[m]|^2_X`` is one of the
    delayed system (whose state holds ``u[n - D - k_e + 1 .. n - 1]``).
    """
    W = dilated_kernel(np.asarray(layer.weight, dtype=float), layer.dilation)
    delta = W.shape[2] - 1 - layer.pad_left
    m0 = max(0, -(-delta // b))
    D = b * m0 - delta
    if D:
        W = np.concatenate([W, np.zeros(W.shape[:2] + (D,))], axis=2)  # K'_m = K_{m-D}: D zero taps first
    ss = lift_state_space(conv_state_space(W), b)
    if layer.stride > 1:  # keep samples 0, s, 2s, ... of each block (sample-major)
        keep = np.concatenate([np.arange(j * layer.c_out, (j + 1) * layer.c_out)
                               for j in range(0, b, layer.stride)])
        ss = lowered.StateSpace(ss.A, ss.B, ss.C[keep], ss.D[keep])
    return ss, m0, D


def global_pool_lifted(c: int, b: int) -> np.ndarray:
    """The static map ``(1/sqrt(b)) [I_c, ..., I_c]`` (c x cb, sample-major) of a global average pool over
    ``N = T b`` samples on blocks of ``b``, whose factor stays ``1/sqrt(N)``.

    ``g = (1/N) sum_{tau < T} S y~[tau]`` with ``S = [I ... I]``. For ``X >= 0`` Jensen gives
    ``T |v|_X^2 <= sum_tau |y~[tau]|_X^2`` for the block mean ``v``, and ``g = (1/b) S v
    = (1/sqrt(N)) (1/sqrt(b)) S (sqrt(T) v)``. The lift-1 weight is feasible: with ``X (x) I_b`` on the
    block, ``|(1/sqrt(b)) S w|_X^2 <= |w|_{X (x) I_b}^2`` (Jensen again), so lifting never loosens it.
    """
    return np.tile(np.eye(c), (1, b)) / math.sqrt(b)


def _window_major(c: int, b: int, k: int) -> np.ndarray:
    """Row order ``(window j, channel ch, sample m)`` of a block of ``b`` samples (sample-major rows
    ``(j k + m) c + ch``): after it, the weight ``diag(x) (x) I_k`` is equal on the k samples of a window.

    A max pool (kernel = stride = k) with ``X_out = diag(x) (x) I_k`` and next input weight ``diag(x)``:
    ``x |max_m a_m - max_m b_m|^2 <= x max_m |a_m - b_m|^2 <= sum_m x |a_m - b_m|^2`` per channel and window.
    The lift-1 certificate (one ``x`` per channel) has this form, so lifting never loosens it.
    """
    return np.array([(j * k + m) * c + ch for j in range(b // k) for ch in range(c) for m in range(k)])


def lower_lifted(net: typed.Network, lift: int, scale: bool, pool_fir: bool = True,
                  merge_linear: bool = True) -> lowered.Network:
    """``lower`` on blocks of ``lift`` samples (see ``lower``); average pools become exact linear maps.

    While a block holds ``b > 1`` samples, besides causal convs and average pools with kernel = stride:

    - a conv with any padding (``delayed_lifted_conv``): a causal conv with ``D`` more zero taps, read
      ``m0`` blocks late; the ``m0`` leading output blocks are extra, and right padding needs ``b | N``;
    - a global average pool over ``N`` samples, ``b | N`` (``global_pool_lifted``): factor ``1/sqrt(N)`` and
      the static map ``(1/sqrt(b)) [I ... I]`` merged into the next system;
    - a max pool with kernel = stride ``k`` dividing ``b``: the previous system's outputs reordered so that
      its output weight is ``diag(x) (x) I_k`` (``lowered.Pool.tied``), equal on the k samples of a window.

    Each interface passes the *network's* signal to the next system; dropping whole blocks of a system's
    output (leading extra blocks, trailing ones) only lowers the left side of its dissipation inequality
    because every output weight is ``>= 0`` (docs/method.md, "Lifting").
    """
    from lipdsl.errors import UnsupportedError

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
    dense_notes: dict[str, str] = {}
    if merge_linear:
        layers, dense_notes = merge_dense_layers(layers)
        layers, conv_notes = merge_causal_convs(layers)
        dense_notes.update(conv_notes)
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
        sc = scale_of(ss) if scale else 1.0
        factor = mul_up(factor, sc)
        steps.append(
            lowered.System(
                "avgpool-map",
                ("avgpool",),
                "dense",
                scaled(ss, sc),
                sc,
                None,
                None,
                "average pooling as an exact linear map",
            )
        )
        premap = None

    while i < len(layers):
        if merge_linear and flat_from is None and not layers[i].in_shape.flat:
            folded = fold_linear_into_dense(layers, i)
            if folded is not None:  # a linear conv run folded into the dense layer after the flatten
                steps.append(lowered.Pool(*folded))
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        chain = (linear_chain_system(layers, i, scale)
                 if merge_linear and b == 1 and flat_from is None and not layer.in_shape.flat else None)
        if chain is not None:  # one sample per block: adjacent linear convs as at lift 1
            flush()
            new, consumed, c = chain
            steps += new
            factor = mul_up(factor, new[0].scale)
            i += consumed
            continue
        fir = (avgpool_systems(layers, i, scale)
               if pool_fir and b == 1 and flat_from is None and not layer.in_shape.flat else None)
        if fir is not None:  # one sample per block again: overlapping average pools as at lift 1
            flush()
            new, consumed, c = fir
            steps += new
            factor = mul_up(factor, new[0].scale if isinstance(new[0], lowered.System) else new[0].gain)
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
                n_in = layer.in_shape.length
                if layer.pad_right and (n_in is None or n_in % b):
                    refuse(layer, f"right padding needs an input length that the block of {b} samples "
                           f"divides (got {'any length' if n_in is None else n_in})")
                if b % layer.stride:
                    refuse(layer, f"stride {layer.stride} does not divide the block of {b} samples")
                ss, m0, delay = delayed_lifted_conv(layer, b)  # (samples 0, s, 2s, ... of each block kept)
                b //= layer.stride
                kind, c_out = "conv", layer.c_out
                note = f"FIR k={layer.kernel} lifted by {b * layer.stride}" + (
                    f"; padding {layer.padding}: {delay} delay taps, output {m0} block(s) late"
                    if delay or m0 else "")
            else:
                ss, kind, c_out, note = dense_state_space(np.eye(c * b)), "activation", c, f"lifted by {b}"
            if layer.name in dense_notes:  # a run of linear causal convs merged (merge_causal_convs)
                note = f"{dense_notes[layer.name]}; {note}"
            ss = merge(ss)
            premap = None
            act = layer if kind == "activation" else (nxt if isinstance(nxt, typed.Activation) else None)
            if act is nxt and act is not None:
                i += 1
            steps.append(make_system(layer, act, ss, kind, note, scale))
            factor = mul_up(factor, steps[-1].scale)
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
            factor = mul_up(factor, steps[-1].gain)
        elif isinstance(layer, typed.GlobalAvgPool):
            n = layer.in_shape.length
            if n is None or n % b:
                refuse(layer, f"a global average pool needs a length that the block of {b} samples divides "
                       f"(got {'any length' if n is None else n})")
            G = global_pool_lifted(c, b)
            premap = G if premap is None else G @ premap
            steps.append(global_pool_step(layer.name, n, f"; blocks of {b}: (1/sqrt({b})) [I ... I] merged "
                                          "into the next layer"))
            factor = mul_up(factor, steps[-1].gain)
            b = 1
        elif (isinstance(layer, typed.Pool) and layer.op == "max" and layer.kernel == layer.stride
              and b % layer.kernel == 0):
            flush()
            if not steps or not isinstance(steps[-1], lowered.System):
                refuse(layer, "a lifted max pool needs a conv, dense or activation layer right before it")
            k = layer.kernel
            sys = steps[-1]
            perm = _window_major(c, b, k)
            steps[-1] = dataclasses_replace(sys, ss=lowered.StateSpace(sys.ss.A, sys.ss.B, sys.ss.C[perm],
                                                                       sys.ss.D[perm]))
            b //= k
            steps.append(lowered.Pool(layer.name, "max", 1.0, True,
                                      f"max pool k{k} on blocks: exact per window with diagonal X equal on "
                                      f"its {k} samples (X (x) I_{k} before, X after)", tied=k))
        elif isinstance(layer, (typed.Pool, typed.GlobalAvgPool)):
            refuse(
                layer,
                f"only pooling with kernel = stride dividing the block of {b} is exact when lifted",
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
                limits.checkpoint("lowering")
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
            factor = mul_up(factor, steps[-1].scale)
            c = layer.n_out
        elif isinstance(layer, typed.Activation) and flat_from is not None and flat_from[0] >= 0:
            # an activation on the flattened lifted signal, in its kron order (q T + tau): elementwise, so the
            # order is the Flatten step's; pending average pools act per block, D = premap (x) I_T. The
            # trailing samples t >= n of the last block pass through and meet zero columns of the next dense.
            ch, n, bb, T = flat_from
            D = np.kron(premap, np.eye(T)) if premap is not None else np.eye(ch * bb * T)
            premap = None
            ss = dense_state_space(D)
            steps.append(make_system(layer, layer, ss, "activation",
                                     f"on the flattened signal in lifted order ({T} blocks of {bb})", scale))
            factor = mul_up(factor, steps[-1].scale)
            c = ch * bb * T
        elif isinstance(layer, (typed.Dense, typed.Activation)):  # on a vector: the plain static maps
            if isinstance(layer, typed.Dense):
                ss, kind, width = dense_state_space(layer.weight), "dense", layer.n_out
            else:
                ss, kind, width = dense_state_space(np.eye(layer.in_shape.channels)), "activation", c
            note = "; ".join(filter(None, [dense_notes.get(layer.name),
                                           "global average pool's block map merged in" if premap is not None
                                           else None]))
            ss = merge(ss)  # (a pending global average pool's block map)
            premap = None
            act = layer if kind == "activation" else (nxt if isinstance(nxt, typed.Activation) else None)
            if act is nxt and act is not None:
                i += 1
            steps.append(make_system(layer, act, ss, kind, note, scale))
            factor = mul_up(factor, steps[-1].scale)
            c = width
        else:  # pragma: no cover - every typed layer is handled above
            refuse(layer, "not supported with lifting")
        i += 1
    flush()  # a network ending in average pooling: a final linear map
    return lowered.Network(net.name, tuple(steps), factor, net)

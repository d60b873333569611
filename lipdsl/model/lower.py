"""Lower to state space: typed.Network -> lowered.Network (conv filters as causal FIR systems, numpy).

A conv layer is a causal FIR filter realized with a shift-register state (``realize``, whose docstring has
the equations). Any padding, stride or cropping only selects samples of this causal output (run on the input
followed by zeros), and dropping samples can only lower the left side of a dissipation inequality: the bound
stays sound.

The realizations are in ``realize``, the merges of linear layers in ``fir``; this module walks the
layers and picks one for each.
"""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace

import numpy as np

from lipdsl import limits
from lipdsl.errors import LoweringError
from lipdsl.lang import typed
from lipdsl.lang.check import require_length
from lipdsl.model import lowered
from lipdsl.model.fir import (  # noqa: F401 (the FIR algebra, imported from here too)
    MERGE_GROWTH,
    avgpool_fir,
    avgpool_systems,
    causal_taps,
    compose_fir,
    conv_avgpool_fir,
    fold_avgpool_into_dense,
    fold_linear_into_dense,
    linear_chain_system,
    merge_causal_convs,
    merge_dense_layers,
    overlapping_avgpool,
    strided_fir,
)
from lipdsl.model.realize import (  # noqa: F401 (the realizations, imported from here too)
    conv_state_space,
    dense_state_space,
    dilated_kernel,
    make_system,
    scale_of,
    scaled,
    shift_structure,
    symbolic_block_state_space,
    symbolic_state_space,
)
from lipdsl.rigorous import mul_up


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


def global_pool_step(name: str, n: int, note: str = "") -> lowered.Pool:
    """Global average pooling over ``n`` samples: ``|mean_t w_t|_X^2 <= (1/n) sum_t |w_t|_X^2``."""
    return lowered.Pool(name, "global_avg", 1.0 / math.sqrt(n), False,
                        f"global avg over {n} samples: factor 1/sqrt({n})" + note)


def _lengths(net: typed.Network, min_length: int | None) -> list[int | None]:
    """Length of the signal entering each layer for an input of ``min_length`` samples (any-length nets),
    by ``check.length_after`` (a residual block through its main path); past a flatten, a global average
    pool or a dense layer the last length is repeated (those layers have none)."""
    from lipdsl.lang.check import length_after

    def after(layer: typed.Layer, n: int) -> int:
        if isinstance(layer, typed.Residual):  # (layer by layer: a too-short input names the inner layer)
            for inner in layer.main:
                n = after(inner, n)
            return n
        m = length_after(layer, n)
        if m is not None and m < 1:
            raise LoweringError(
                f"an input of length {min_length} is too short for layer {layer.name!r}",
                span=layer.span,
                hint="give a larger --length",
            )
        return n if m is None else m

    n = net.input_shape.length if net.input_shape.length is not None else min_length
    out = []
    for layer in net.layers:
        out.append(n)
        if n is not None:
            n = after(layer, n)
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
    SpecError
        For a ``min_length`` the spec contradicts (``check.require_length``).
    """
    require_length(net, min_length, "min_length")
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



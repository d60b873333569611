"""Check each layer: an ast layer and its input shape -> the typed layer and its output shape (PyTorch's
shape rules, weights against the declared sizes, slopes from the activation table)."""

from __future__ import annotations

import dataclasses

import numpy as np

from lipdsl.errors import ShapeError, SpecError, WeightError, did_you_mean
from lipdsl.lang import ast, typed
from lipdsl.lang.check import (
    ACTIVATIONS,
    Checker,
    format_shape,
    Loaded,
    layer_options,
    plural,
    producer,
    conv1d_length,
    conv1d_padding,
    length_after,
    pool_length,
    layer_kind,
)
from lipdsl.lang.source import Span
from lipdsl.lang.syntax_errors import LAYER_KEYWORDS, suggest_keyword
from lipdsl.lang.typed import Shape


def check_layer(ck: Checker, st, name: str, shape: Shape, prev: str | None) -> typed.Layer:
    if isinstance(st, ast.Conv1d):
        return _conv1d(ck, st, name, shape, prev)
    if isinstance(st, ast.Dense):
        return _dense(ck, st, name, shape, prev)
    if isinstance(st, ast.Pool):
        return _pool(ck, st, name, shape)
    if isinstance(st, ast.GlobalAvgPool):
        layer_options(st, "global_avgpool", "global_avgpool")
        _need_signal(shape, "global_avgpool", name, st.span, prev)
        return typed.GlobalAvgPool(name, st.span, shape, Shape(shape.channels, None, flat=True))
    if isinstance(st, ast.Flatten):
        layer_options(st, "flatten", "flatten")
        if shape.flat:
            raise ShapeError(
                f"flatten {name!r}: the input is already a flat vector of {shape.channels}",
                st.span,
                hint="remove this line",
            )
        if shape.length is None:
            raise ShapeError(
                f"flatten {name!r} needs a known length, but the input is declared with any length ('x *')",
                st.span,
                hint="use global_avgpool to turn any-length signals into vectors, or declare a length",
            )
        return typed.Flatten(name, st.span, shape, Shape(shape.channels * shape.length, None, flat=True))
    if isinstance(st, ast.BatchNorm):
        return _batchnorm(ck, st, name, shape, prev)
    if isinstance(st, ast.Residual):
        raise SpecError("residual blocks do not nest", st.span, hint="close the outer block with 'end' first")
    return _activation(ck, st, name, shape)


def _branch(ck: Checker, nodes, names, shape: Shape, prev: str | None,
            block: str) -> tuple[list, Shape, str | None]:
    """Check one branch of the residual block ``block``: its layers in order, from ``shape``; returns the
    typed layers, the branch's output shape and its last layer's name (``prev`` for an empty branch).

    Raises
    ------
    ShapeError
        At a flatten, global_avgpool or dense layer: a block maps signals to signals.
    """
    layers = []
    for st in nodes:
        name = next(names)
        if isinstance(st, (ast.Flatten, ast.GlobalAvgPool, ast.Dense)):
            kind = layer_kind(st)
            raise ShapeError(
                f"{kind} {name!r} inside residual block {block!r}: a block maps signals (channels x samples) "
                "to signals", st.span,
                hint=f"a block's branches take conv1d, avgpool, maxpool, batchnorm and activations; put "
                f"{kind} after the block's 'end'")
        layer = check_layer(ck, st, name, shape, prev)
        layers.append(layer)
        shape, prev = layer.out_shape, layer.name
    return layers, shape, prev


def check_residual(ck: Checker, st: ast.Residual, name: str, names, shape: Shape,
                   prev: str | None) -> typed.Residual:
    """``main(x) + shortcut(x)``: both branches from the signal ``shape`` to the same shape (for ``input C x
    *``, the same length for every input length: probed at 64 and 65 samples); returns the typed block.

    Raises
    ------
    ShapeError
        At the block for a flat input; at a flatten, global_avgpool or dense layer inside it (``_branch``);
        at the ``shortcut`` line (the block's line for the identity) when the branches end in other
        channels or lengths, with a hint that fits the mismatch (``_mismatch_hint``).
    """
    if shape.flat:
        raise ShapeError(f"residual block {name!r} needs signals (channels x samples), but {producer(prev)} "
                         f"a flat vector of {shape.channels}", st.span,
                         hint="put the block before flatten/global_avgpool")
    main, out, last = _branch(ck, st.main, names, shape, prev, name)
    short, out_s, _ = _branch(ck, st.shortcut or (), names, shape, prev, name)
    inputs = (shape.length,) if shape.length is not None else (64, 65)  # (any length: two probes)
    ends = [(n, _branch_length(main, n), _branch_length(short, n)) for n in inputs]
    differ = next(((n, a, b) for n, a, b in ends if a != b), None)
    down = [typed.branch_stride(branch) for branch in (main, short)]
    if out.channels == out_s.channels and differ is None and down[0] == down[1]:
        return typed.Residual(name, st.span, tuple(main), tuple(short), shape, out)
    where = st.shortcut_span if st.shortcut else st.span
    hint = _mismatch_hint(main, short, out, out_s, inputs if differ is not None or down[0] != down[1] else (),
                          not st.shortcut, down)
    if out.channels == out_s.channels and differ is None:  # (the same shape, downsampled otherwise)
        raise ShapeError(f"residual block {name!r}: both branches give {out}, but they downsample by "
                         "different factors, and the bound realizes a block in lifted time, one factor for "
                         "both", where, hint=hint)
    if out.channels != out_s.channels or shape.length is not None:
        what = f"the shortcut produces {out_s}" if st.shortcut else f"the identity shortcut passes {out_s} on"
        raise ShapeError(f"residual block {name!r}: the main path produces {out} (after {last!r}), "
                         f"but {what}", where, hint=hint)
    n, a, b = differ
    raise ShapeError(f"residual block {name!r}: for an input of {n} samples the main path gives {a} and the "
                     f"shortcut {b}", where, hint=hint)


def _mismatch_hint(main: list, short: list, out: Shape, out_s: Shape, inputs: tuple[int, ...],
                   identity: bool, down: list[int]) -> str:
    """The hint for a residual block whose branches ``main`` and ``short`` (``identity``: none written) end
    in ``out`` and ``out_s``, downsampling by ``down`` (``typed.branch_stride`` of each). Other channels: a
    1x1 conv to the main path's channels. Other lengths for the input lengths ``inputs`` (empty: the
    lengths agree): when the products of the branches' strides differ, a shortcut that downsamples alike
    (the bound needs it: docs/language.md); else one conv's padding that makes the lengths agree
    (``_padding_fix``); else how convs and pools change the length."""
    parts = []
    strided = bool(inputs) and down[0] != down[1] and down[0] % down[1] == 0  # (a shortcut example follows)
    if inputs and down[0] != down[1]:
        example = _stride_example(down, short, out_s, out, identity)
        parts.append(f"the main path downsamples by {down[0]} and the shortcut by {down[1]} (the "
                     f"products of their strides): both must downsample alike{example}")
    elif inputs:
        fix = _padding_fix(main, short, inputs)
        if fix is not None:
            conv, mode, n = fix
            then = f"give {n} samples" if out.length is not None else "keep the same length"
            parts.append(f"the lengths differ: with 'padding {mode}' on conv1d {conv.name!r} (line "
                         f"{conv.span.line}) both branches {then}")
        else:
            parts.append("both branches must change the length alike: a stride-1 conv1d keeps it with "
                         "'padding same' (or causal); a pool of kernel k, stride 1, takes k - 1 samples off")
    convs = [layer for layer in short if isinstance(layer, typed.Conv1d)]
    if out.channels != out_s.channels and convs:
        parts.insert(0, f"both branches must end in the same channels, e.g. the shortcut's conv1d "
                     f"{convs[-1].name!r} (line {convs[-1].span.line}) to {out.channels} channels")
    elif out.channels != out_s.channels and not (identity and strided):  # (the example maps the channels)
        parts.insert(0, f"the shortcut needs a layer to {out.channels} channels, e.g. 'conv1d "
                     f"{out_s.channels} -> {out.channels}, kernel 1, weight KEY'"
                     + (" in a 'shortcut' section" if identity else ""))
    return "; ".join(parts)


def _stride_example(down: list[int], short: list, out_s: Shape, out: Shape, identity: bool) -> str:
    """``_mismatch_hint``'s example of a shortcut that downsamples as the main path (``down``: the products
    of the main path's and the shortcut's strides), or "" when the shortcut downsamples more."""
    if down[0] % down[1]:
        return ""
    r = down[0] // down[1]
    if identity:
        pool = f" (or 'avgpool {r}')" if out_s.channels == out.channels else ""
        return (f", e.g. a 'shortcut' section with 'conv1d {out_s.channels} -> {out.channels}, kernel 1, "
                f"stride {r}, weight KEY'{pool}")
    convs = [layer for layer in short if isinstance(layer, typed.Conv1d)]
    where = f" on conv1d {convs[0].name!r} (line {convs[0].span.line})" if convs else ""
    return f", e.g. 'stride {r}'{where} in the shortcut, or an 'avgpool {r}' there"


def _branch_length(layers, n: int | None) -> int | None:
    """The samples after the branch ``layers`` for an input of ``n`` samples (``check.length_after``, the
    one length rule), or None once a layer has no output."""
    for layer in layers:
        if n is None or n < 1 or (isinstance(layer, typed.Pool) and n < layer.kernel):
            return None
        n = length_after(layer, n)
    return n if n is None or n >= 1 else None


def _padding_fix(main: list, short: list, inputs: tuple[int, ...]) -> tuple[typed.Conv1d, str, int] | None:
    """The first conv (main path, then shortcut) whose padding alone, made ``same`` (stride 1), an integer
    up to ``dilation*(kernel-1)`` or ``causal``, gives both branches the same length for every input length
    in ``inputs``: ``(conv, the padding as written, the branches' length for inputs[0])``, or None."""
    for i, branch in enumerate((main, short)):
        for j, layer in enumerate(branch):
            if not isinstance(layer, typed.Conv1d):
                continue
            reach = layer.dilation * (layer.kernel - 1)
            for mode in (["same"] if layer.stride == 1 else []) + list(range(reach + 1)) + ["causal"]:
                left, right = conv1d_padding(mode, layer.kernel, layer.dilation)
                if (left, right) == (layer.pad_left, layer.pad_right):
                    continue
                trial = list(branch)
                trial[j] = dataclasses.replace(layer, pad_left=left, pad_right=right)
                pair = (trial, short) if i == 0 else (main, trial)
                ends = [(_branch_length(pair[0], n), _branch_length(pair[1], n)) for n in inputs]
                if all(a == b and a is not None for a, b in ends):
                    return layer, str(mode), ends[0][0]
    return None


def _batchnorm(ck: Checker, st: ast.BatchNorm, name: str, shape: Shape, prev: str | None) -> typed.BatchNorm:
    """``scale = weight / sqrt(running_var + eps)``, ``shift = bias - scale * running_mean`` per channel."""
    opts = layer_options(st, "batchnorm", "batchnorm")
    c = ck.integer(st.channels, "channels", 1)
    if c != shape.channels:
        raise ShapeError(f"batchnorm {name!r} expects {plural(c, 'channel')}, but {producer(prev)} "
                         f"{shape.channels}", st.channels.span, hint=f"write batchnorm {shape.channels}")
    eps = ck.number(opts["eps"].value, "eps")[0] if "eps" in opts else 1e-5
    if not eps > 0:
        raise SpecError(f"batchnorm {name!r}: eps must be positive, got {eps:g}", opts["eps"].span,
                        hint="PyTorch's default is eps 1e-5")
    prefix = opts.get("weights")
    if prefix is not None and not (isinstance(prefix.value, ast.TensorRef) and prefix.value.key):
        raise SpecError(f"batchnorm {name!r}: 'weights' takes the key prefix of the BatchNorm1d module, "
                        "as in 'weights layer1.bn1'", prefix.span,
                        hint="or give running_mean, running_var, weight and bias one by one")
    tensors = {}

    def prefixed(role: str) -> ast.TensorRef:
        ref = prefix.value
        return ast.TensorRef(ref.file, f"{ref.key}.{role}", ref.span)

    # BatchNorm1d(affine=False) has neither weight nor bias in its state_dict: 1 and 0, as without a prefix
    affine = prefix is None or any(r in opts or ck.holds(prefixed(r)) for r in ("weight", "bias"))
    for role, default in (("weight", 1.0), ("bias", 0.0), ("running_mean", None), ("running_var", None)):
        if role in opts:
            src = opts[role].value
        elif prefix is not None and (affine or default is None):
            src = prefixed(role)
        elif default is not None:
            tensors[role] = np.full(c, default)
            continue
        else:
            raise SpecError(f"batchnorm {name!r} needs its {role}", st.span,
                            hint=f"add ', weights PREFIX' (the module's state_dict prefix, e.g. bn1) or "
                            f"', {role} KEY'")
        t = ck.tensor(src, role)
        _expect_shape(t, (c,), f"batchnorm {name!r} {role}", "(channels,)", {0: "channels"})
        tensors[role] = t.values
    var = tensors["running_var"]
    if np.any(var + eps <= 0):
        i = int(np.flatnonzero(var + eps <= 0)[0])
        raise WeightError(f"batchnorm {name!r}: running_var + eps must be positive, got {var[i] + eps:g} at "
                          f"channel {i}", (opts.get("running_var") or prefix or opts.get("eps")).span)
    with np.errstate(all="ignore"):  # (judged below)
        scale = typed.batchnorm_scale(tensors["weight"], var, eps)
        shift = tensors["bias"] - scale * tensors["running_mean"]
    w, b, mean = tensors["weight"], tensors["bias"], tensors["running_mean"]
    tiny = np.finfo(float).tiny  # (a nonzero weight whose scale is 0 or subnormal: a nonzero map lost)
    for values, bad, what in (
            (scale, ~np.isfinite(scale) | ((w != 0) & (np.abs(scale) < tiny)),
             lambda i: f"weight / sqrt(running_var + eps) = {w[i]:.3g} / sqrt({var[i]:.3g} + {eps:.3g})"),
            (shift, ~np.isfinite(shift),
             lambda i: f"bias - scale * running_mean = {b[i]:.3g} - {scale[i]:.3g} * {mean[i]:.3g}")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise WeightError(f"batchnorm {name!r}: {what(i)} is {values[i]:.3g} at channel {i}, out of "
                              "float64's range", st.span,
                              hint="rescale the layer's parameters (the bound scales with them)")
    return typed.BatchNorm(name, st.span, c, scale, shift, float(eps), shape, shape, tensors["weight"], var)


def _need_signal(shape: Shape, kind: str, name: str, span: Span, prev: str | None) -> None:
    if shape.flat:
        raise ShapeError(
            f"{kind} {name!r} needs a signal (channels x samples), but {producer(prev)} a flat "
            f"vector of {shape.channels}",
            span,
            hint="put flatten/global_avgpool after the convolutional part, not before it",
        )


def _conv1d(ck: Checker, st: ast.Conv1d, name: str, shape: Shape, prev: str | None) -> typed.Conv1d:
    opts = layer_options(st, "conv1d", "conv1d")
    _need_signal(shape, "conv1d", name, st.span, prev)
    c_in = ck.integer(st.c_in, "input channels", 1)
    c_out = ck.integer(st.c_out, "output channels", 1)
    if c_in != shape.channels:
        raise ShapeError(
            f"conv1d {name!r} expects {plural(c_in, 'input channel')}, but {producer(prev)} "
            f"{shape.channels}",
            st.c_in.span,
            hint=f"write {shape.channels} -> {c_out}",
        )
    if "kernel" not in opts:
        raise SpecError(
            f"conv1d {name!r} needs a kernel size", st.span, hint="add ', kernel 3' (for example)"
        )
    kernel = ck.integer(opts["kernel"].value, "kernel", 1)
    stride = ck.integer(opts["stride"].value, "stride", 1) if "stride" in opts else 1
    dilation = ck.integer(opts["dilation"].value, "dilation", 1) if "dilation" in opts else 1
    padding: str | int = 0
    if "padding" in opts:
        p = opts["padding"].value
        if isinstance(p, str):
            padding = p
        else:
            if (
                len(p.names) == 1
                and not p.names[0].call
                and p.names[0].id not in ck.env
                and p.names[0].span == p.span
            ):
                raise SpecError(
                    f"padding must be an integer, valid, same or causal, got {p.names[0].id!r}",
                    p.span,
                    hint=did_you_mean(p.names[0].id, ("valid", "same", "causal")).strip() or None,
                )
            padding = ck.integer(p, "padding", 0)
        if padding == "same" and stride != 1:
            raise ShapeError(
                f"conv1d {name!r}: padding same needs stride 1, got stride {stride}",
                opts["padding"].span,
                hint="PyTorch refuses 'same' for strided convolutions; give the padding as a number",
            )
    pad_left, pad_right = conv1d_padding(padding, kernel, dilation)
    length = None
    if shape.length is not None:
        length = conv1d_length(shape.length, kernel, stride, dilation, pad_left, pad_right)
        if length < 1:
            reach = dilation * (kernel - 1) + 1
            raise ShapeError(
                f"conv1d {name!r} has no output: its kernel spans {reach} samples, but the padded "
                f"input has {shape.length + pad_left + pad_right}",
                st.span,
                hint="use a smaller kernel or dilation, or more padding",
            )
    if "weight" not in opts:
        raise SpecError(
            f"conv1d {name!r} needs a weight",
            st.span,
            hint="add ', weight KEY' (a key of the weights file) or an inline [[[...]]] tensor",
        )
    w = ck.tensor(opts["weight"].value, "weight")
    _expect_shape(
        w,
        (c_out, c_in, kernel),
        f"conv1d {name!r} weight",
        "(c_out, c_in, kernel)",
        {0: "output channels", 1: "input channels", 2: "kernel"},
    )
    b = _bias(ck, opts, c_out, f"conv1d {name!r}")
    return typed.Conv1d(
        name,
        st.span,
        c_in,
        c_out,
        kernel,
        stride,
        dilation,
        pad_left,
        pad_right,
        str(padding),
        w.values,
        b,
        shape,
        Shape(c_out, length),
        w.expr,
    )


def _dense(ck: Checker, st: ast.Dense, name: str, shape: Shape, prev: str | None) -> typed.Dense:
    opts = layer_options(st, "dense", "dense")
    n_in = ck.integer(st.n_in, "input size", 1)
    n_out = ck.integer(st.n_out, "output size", 1)
    if not shape.flat:
        if shape.length is None:
            hint = f"add 'global_avgpool' before it ({shape.channels} values)"
        else:
            hint = (
                f"add 'flatten' before it ({shape.size} values, channel-major) or 'global_avgpool' "
                f"({shape.channels} values)"
            )
        raise ShapeError(
            f"dense {name!r} needs a vector, but {producer(prev)} a {shape} signal", st.span, hint=hint
        )
    if n_in != shape.channels:
        raise ShapeError(
            f"dense {name!r} expects {plural(n_in, 'input')}, but {producer(prev)} {shape.channels}",
            st.n_in.span,
            hint=f"write {shape.channels} -> {n_out}",
        )
    if "weight" not in opts:
        raise SpecError(
            f"dense {name!r} needs a weight",
            st.span,
            hint="add ', weight KEY' (a key of the weights file) or an inline [[...]] tensor",
        )
    w = ck.tensor(opts["weight"].value, "weight")
    _expect_shape(
        w, (n_out, n_in), f"dense {name!r} weight", "(out, in)", {0: "output size", 1: "input size"}
    )
    b = _bias(ck, opts, n_out, f"dense {name!r}")
    return typed.Dense(name, st.span, n_in, n_out, w.values, b, shape, Shape(n_out, None, flat=True), w.expr)


def _bias(ck: Checker, opts, n: int, what: str) -> np.ndarray | None:
    if "bias" not in opts:
        return None
    b = ck.tensor(opts["bias"].value, "bias")
    _expect_shape(b, (n,), f"{what} bias", "(out,)", {0: "output size"})
    return b.values


def _expect_shape(t: Loaded, want: tuple[int, ...], what: str, layout: str, axes: dict[int, str]) -> None:
    got = t.values.shape
    if got == want:
        return
    hint = None
    if len(got) == len(want):
        diffs = [i for i in range(len(want)) if got[i] != want[i]]
        hint = "; ".join(f"the {axes[i]} would be {got[i]}" for i in diffs) + " if the tensor is right"
    elif len(got) + 1 == len(want) or len(got) == len(want) + 1:
        hint = f"PyTorch layout is {layout}"
    given = ", given inline," if t.label.startswith("the inline ") else f" {t.label}"  # (or: 'k' in 'f')
    raise ShapeError(
        f"{what}{given} has shape {format_shape(got)}, "
        f"but the layer declares {layout} = {format_shape(want)}",
        t.span,
        hint=hint,
    )


def _pool(ck: Checker, st: ast.Pool, name: str, shape: Shape) -> typed.Pool:
    kind = f"{st.op}pool"
    opts = layer_options(st, kind, "pool")
    if st.kernel is not None and "kernel" in opts:
        raise SpecError(
            f"{kind} {name!r}: the kernel is given twice",
            opts["kernel"].span,
            hint=f"write '{kind} {_expr_text(st.kernel)}' or '{kind} kernel {_expr_text(st.kernel)}'",
        )
    kernel_expr = st.kernel if st.kernel is not None else (opts["kernel"].value if "kernel" in opts else None)
    if kernel_expr is None:
        raise SpecError(
            f"{kind} {name!r} needs a kernel size", st.span, hint=f"write '{kind} 2' (for example)"
        )
    _need_signal(shape, kind, name, st.span, None)
    kernel = ck.integer(kernel_expr, "kernel", 1)
    stride = (
        ck.integer(opts["stride"].value, "stride", 1) if "stride" in opts else kernel
    )  # PyTorch's default
    length = None
    if shape.length is not None:
        if shape.length < kernel:
            raise ShapeError(
                f"{kind} {name!r} has no output: kernel {kernel} is longer than the input's "
                f"{shape.length} samples",
                st.span,
                hint="use a smaller kernel",
            )
        length = pool_length(shape.length, kernel, stride)
    return typed.Pool(name, st.span, st.op, kernel, stride, shape, Shape(shape.channels, length))


def _unknown_activation(fn: str, st: ast.Activation) -> SpecError:
    """An unknown name in a layer's place: a misspelled or PyTorch-style layer keyword, or an activation."""
    guess = suggest_keyword(fn)
    if guess in LAYER_KEYWORDS:
        return SpecError(
            f"unknown layer {fn!r} -- did you mean {guess!r}?",
            st.function_span,
            hint=f"lipdsl's layers: {', '.join(LAYER_KEYWORDS)} (docs/language.md)",
        )
    if guess is not None:
        return SpecError(
            f"unknown activation {fn!r} -- did you mean {guess!r}?",
            st.function_span,
            hint=f"for another function, give the bounds of its slope: '{fn} slope [alpha, beta]'",
        )
    return SpecError(
        f"unknown layer or activation {fn!r}",
        st.function_span,
        hint=f"layers: {', '.join(LAYER_KEYWORDS)}; for an activation lipdsl does not know, give the "
        f"bounds of its slope: '{fn} slope [alpha, beta]'",
    )


def _expr_text(e: ast.Expr) -> str:
    return str(e.value)


def _activation(ck: Checker, st: ast.Activation, name: str, shape: Shape) -> typed.Activation:
    fn = st.function
    opts = layer_options(st, fn, "activation")
    builtin = ACTIVATIONS.get(fn)
    parameter = None
    param_exact = None
    if st.parameter is not None:
        if builtin is not None and builtin.parameter == "none":
            raise SpecError(f"{fn} takes no parameter", st.parameter.span, hint=f"write '{fn}'")
        parameter, param_exact = ck.number(st.parameter, f"{fn} parameter")
    elif builtin is not None and builtin.parameter == "required":
        raise SpecError(
            f"{fn} needs its parameter", st.function_span, hint=f"write '{fn}(0.01)' (for example)"
        )
    elif builtin is not None and builtin.parameter == "optional":
        parameter = float(builtin.default)

    alpha_expr = beta_expr = None
    if "slope" in opts:
        lo, hi = opts["slope"].value
        alpha, alpha_expr = ck.number(lo, "slope alpha")
        beta, beta_expr = ck.number(hi, "slope beta")
        if alpha > beta:
            raise SpecError(
                f"slope [alpha, beta] needs alpha <= beta, got [{alpha:g}, {beta:g}]",
                opts["slope"].span,
                hint=f"swap them: slope [{beta:g}, {alpha:g}]",
            )
    elif builtin is None:
        raise _unknown_activation(fn, st)
    else:
        if fn == "elu" and parameter < 0:
            raise SpecError(
                f"elu needs alpha >= 0, got {parameter:g}",
                st.parameter.span,
                hint="for a negative alpha give the slope: 'elu(a) slope [alpha, beta]'",
            )
        alpha, beta = builtin.bounds(parameter)
        if param_exact is not None and builtin.exact is not None:
            alpha_expr, beta_expr = builtin.exact(param_exact)
    return typed.Activation(name, st.span, fn, alpha, beta, shape, shape, parameter, alpha_expr, beta_expr)

"""Check each layer: an ast layer and its input shape -> the typed layer and its output shape (PyTorch's
shape rules, weights against the declared sizes, slopes from the activation table)."""

from __future__ import annotations

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
    pool_length,
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


def _branch(ck: Checker, nodes, names, shape: Shape, prev: str | None) -> tuple[list, Shape, str | None]:
    """Check one branch of a residual block: its layers in order, from ``shape``."""
    layers = []
    for st in nodes:
        layer = check_layer(ck, st, next(names), shape, prev)
        layers.append(layer)
        shape, prev = layer.out_shape, layer.name
    return layers, shape, prev


def check_residual(ck: Checker, st: ast.Residual, name: str, names, shape: Shape,
              prev: str | None) -> typed.Residual:
    """``main(x) + shortcut(x)``: both branches from ``shape``, to the same shape (else a ShapeError)."""
    main, out, last = _branch(ck, st.main, names, shape, prev)
    short, out_s, _ = _branch(ck, st.shortcut or (), names, shape, prev)
    if out != out_s:
        where = st.shortcut_span if st.shortcut else st.span
        what = f"the shortcut produces {out_s}" if st.shortcut else f"the identity shortcut passes {out_s} on"
        hint = (f"the shortcut needs a layer to {out.channels} channels, e.g. 'conv1d {out_s.channels} -> "
                f"{out.channels}, kernel 1, weight KEY' in a 'shortcut' section"
                if not st.shortcut else "both branches must end in the same channels x samples")
        raise ShapeError(f"residual block {name!r}: the main path produces {out} (after {last!r}), "
                         f"but {what}", where, hint=hint)
    if shape.length is None and not shape.flat:  # any length: the branches must change it the same way
        for n in (64, 65):
            a, b = _probe_length(main, n), _probe_length(short, n)
            if a != b:
                raise ShapeError(
                    f"residual block {name!r}: for an input of {n} samples the main path gives {a} and the "
                    f"shortcut {b}", st.shortcut_span if st.shortcut else st.span,
                    hint="both branches must keep the same length (e.g. padding same or causal in both)")
    if out.flat or shape.flat:
        raise ShapeError(f"residual block {name!r} needs signals (channels x samples), not flat vectors",
                         st.span, hint="put the block before flatten/global_avgpool")
    return typed.Residual(name, st.span, tuple(main), tuple(short), shape, out)


def _probe_length(layers, n: int | None) -> int | None:
    """The length after ``layers`` for an input of ``n`` samples (None once a layer has no output)."""
    for layer in layers:
        if n is None or n < 1:
            return None
        if isinstance(layer, typed.Conv1d):
            n = conv1d_length(n, layer.kernel, layer.stride, layer.dilation, layer.pad_left, layer.pad_right)
        elif isinstance(layer, typed.Pool):
            n = pool_length(n, layer.kernel, layer.stride) if n >= layer.kernel else None
    return n


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

"""Render for the terminal: typed networks, lowerings, state spaces, bounds, comparisons -> text (rich)."""

from __future__ import annotations

import os
import sys

import click

from lipdsl.errors import LipdslError
from lipdsl.rigorous import format_down, format_up


def console(stderr: bool = False):
    """A rich Console that does not wrap sentences: on a terminal its width; piped, ``$COLUMNS`` or 200
    columns (rich would otherwise wrap at 80 mid-sentence)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(stderr=stderr, soft_wrap=True, width=wide)


def parameter_count(layer) -> int:
    if layer.kind == "residual":
        return sum(parameter_count(sub) for sub in layer.main + layer.shortcut)
    if layer.kind == "batchnorm":
        return 2 * layer.channels  # the folded scale and shift (PyTorch: weight, bias + running mean, var)
    weight = getattr(layer, "weight", None)
    bias = getattr(layer, "bias", None)
    return (0 if weight is None else int(weight.size)) + (0 if bias is None else int(bias.size))


def layer_details(layer) -> str:
    exact = " (exact)" if getattr(layer, "weight_expr", None) is not None else ""
    if layer.kind == "conv1d":
        pads = layer.padding
        if not pads.isdigit():
            pads += f" ({layer.pad_left},{layer.pad_right})"
        bias = "" if layer.bias is not None else ", no bias"
        return f"k={layer.kernel} s={layer.stride} d={layer.dilation} pad={pads}{bias}{exact}"
    if layer.kind == "dense":
        return ("bias" if layer.bias is not None else "no bias") + exact
    if layer.kind == "pool":
        return f"{layer.op}, kernel {layer.kernel}, stride {layer.stride}"
    if layer.kind == "activation":
        fn = layer.function if layer.parameter is None else f"{layer.function}({layer.parameter:g})"
        return f"{fn}, slope [{layer.alpha:g}, {layer.beta:g}]"
    if layer.kind == "batchnorm":
        scale = abs(layer.scale)
        return f"eval mode, eps {layer.eps:g}, |scale| in [{scale.min():.3g}, {scale.max():.3g}]"
    if layer.kind == "residual":
        main = " -> ".join(sub.name for sub in layer.main)
        short = " -> ".join(sub.name for sub in layer.shortcut) or "identity"
        return f"y = main(x) + shortcut(x); main: {main}; shortcut: {short}"
    return ""


def layer_json(layer) -> dict:
    """``lipdsl show --json``'s entry of one typed layer: its name, kind, shapes, parameter count and line,
    and the options of its kind (a conv's kernel, stride, dilation, padding and bias; a pool's op, kernel
    and stride; an activation's function, parameter and slope; a batch norm's channels and eps); a residual
    block's ``main`` and ``shortcut`` are lists of such entries (this function, recursively), so a layer
    inside a block is described as at the top level."""
    entry = {
        "name": layer.name,
        "kind": layer.kind,
        "in": shape_json(layer.in_shape),
        "out": shape_json(layer.out_shape),
        "params": parameter_count(layer),
        "line": layer.span.line if layer.span else None,
    }
    if layer.kind == "residual":
        entry.update(main=[layer_json(sub) for sub in layer.main],
                     shortcut=[layer_json(sub) for sub in layer.shortcut])
    elif layer.kind == "conv1d":
        entry.update(kernel=layer.kernel, stride=layer.stride, dilation=layer.dilation, padding=layer.padding,
                     pad_left=layer.pad_left, pad_right=layer.pad_right, bias=layer.bias is not None)
    elif layer.kind == "dense":
        entry.update(bias=layer.bias is not None)
    elif layer.kind == "pool":
        entry.update(op=layer.op, kernel=layer.kernel, stride=layer.stride)
    elif layer.kind == "activation":
        entry.update(function=layer.function, parameter=layer.parameter, slope=[layer.alpha, layer.beta])
    elif layer.kind == "batchnorm":
        entry.update(channels=layer.channels, eps=layer.eps)
    return entry


def shape_json(shape) -> list:
    return [shape.channels] if shape.flat else [shape.channels, shape.length]


def summary(net) -> str:
    counts: dict[str, int] = {}
    for layer in net.layers:
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
    params = sum(parameter_count(layer) for layer in net.layers)
    return (
        f"network {net.name!r}: {net.input_shape} -> {net.output_shape}, {len(net.layers)} layers "
        f"({kinds}), {params} parameters"
    )


def show_json(net) -> dict:
    """``lipdsl show --json``: the network, its shapes and every layer (``layer_json``: options, parameters,
    slopes; the layers of residual blocks alike)."""
    layers = [layer_json(layer) for layer in net.layers]
    return {
        "name": net.name,
        "source": net.source_path,
        "input": shape_json(net.input_shape),
        "output": shape_json(net.output_shape),
        "any_length": net.any_length,
        "params": sum(e["params"] for e in layers),
        "layers": layers,
    }


def print_layers(net) -> None:
    """``lipdsl show``: one table row per layer (a residual block's main path and shortcut below it), then
    the summary line."""
    from rich.table import Table

    table = Table(title=f"{net.name}  ({net.source_path})")
    for col in ("#", "name", "kind", "in", "out", "params", "details"):
        table.add_column(col, justify="right" if col in ("#", "params") else "left")
    table.add_row("", "input", "", "", str(net.input_shape), "", "")
    def rows(layers, prefix: str, indent: str) -> None:
        for i, layer in enumerate(layers, 1):
            kind = layer.function if layer.kind == "activation" else layer.kind
            table.add_row(f"{prefix}{i}", indent + layer.name, kind, str(layer.in_shape),
                          str(layer.out_shape), str(parameter_count(layer) or ""), layer_details(layer))
            if layer.kind == "residual":  # the block's structure: its main path, then its shortcut
                rows(layer.main, f"{prefix}{i}.", indent + "  main ")
                if layer.shortcut:
                    rows(layer.shortcut, f"{prefix}{i}.s", indent + "  shortcut ")

    rows(net.layers, "", "")
    console().print(table)
    click.echo(summary(net))


#: ``show --state-space`` writes a conv's matrices entry by entry up to this many columns (``nx + c_in``; an
#: entry ``w_{o,i,j}`` takes about 12 characters, so wider matrices wrap), else in block form with taps W_j.
ENTRY_COLUMNS = 6


def print_state_space(net, latex: bool) -> None:
    """``lipdsl show --state-space``: each conv layer's (A, B, C, D), entry by entry when small, else in block
    form with taps W_j; a kernel-1 conv has no state and shows D only. A residual block's convs too (its
    main path, then its shortcut, in ``show``'s order), after a line naming the block (and, for a
    downsampling block, its lifted time), each header saying its block and branch. A strided conv's header
    gives its stride, and a line says how the stride enters the bound (``stride_note``): the realization
    shown is the stride-1 filter."""
    import sympy

    from lipdsl.lang.typed import branch_stride
    from lipdsl.model.lower import symbolic_block_state_space, symbolic_state_space

    convs = list(_convs(net.layers))
    if not convs:
        click.echo(f"network {net.name!r} has no conv1d layer (dense layers are static: v = W u)")
    shown = None  # the residual block whose line is printed
    for block, branch, layer in convs:
        if block is not None and block is not shown:
            lifted = branch_stride(block.main)  # (the samples per step of its lifted realization)
            how = "" if lifted == 1 else f" in lifted time, reading its input {lifted} samples per step"
            refs = ("docs/method.md, \"Strided blocks\"; " if lifted > 1 else "") + "lipdsl show --lowering"
            click.echo(f"residual {block.name} ({layer_details(block)}): its convs' realizations follow; "
                       f"the SDP takes the block as one system{how} ({refs})")
            shown = block
        where = "" if block is None else f" (residual {block.name!r}, {branch})"
        ke = layer.dilation * (layer.kernel - 1) + 1
        nx = (ke - 1) * layer.c_in
        click.echo(
            f"conv1d {layer.name}{where}: {layer.c_in} -> {layer.c_out}, kernel {layer.kernel}"
            f"{f', stride {layer.stride}' if layer.stride > 1 else ''}"
            f"{f', dilation {layer.dilation}' if layer.dilation > 1 else ''}: causal realization, "
            f"{nx} states (independent of the signal length)"
        )
        if ke == 1:  # a kernel-1 conv is static: D only (entry by entry when small)
            click.echo(f"  no state (kernel 1): v[t] = D u[t] with D = W[:, :, 0] ({layer.c_out} x "
                       f"{layer.c_in}, PyTorch layout); A, B and C are empty")
        else:
            state = "x[t] = u[t-1]" if ke == 2 else f"x[t] = [u[t-{ke - 1}]; ...; u[t-1]]"
            click.echo(f"  x[t+1] = A x[t] + B u[t],  v[t] = C x[t] + D u[t],  {state}")
        if layer.stride > 1:
            click.echo("  " + stride_note(layer, block))
        small = nx + layer.c_in <= ENTRY_COLUMNS and layer.c_out <= 16
        mats = symbolic_state_space(layer) if small else symbolic_block_state_space(layer)
        if ke == 1 and not small:
            continue
        if not small:
            click.echo("  (block form: W_j = W[:, :, j] is c_out x c_in in PyTorch layout)")
        for label, M in zip("ABCD", mats):
            if ke == 1 and label != "D":
                continue
            if M is None or 0 in M.shape:
                click.echo(f"  {label}: empty (no state)")
                continue
            if latex:
                click.echo(f"  {label} = {sympy.latex(M)}")
            else:
                text = sympy.pretty(M, use_unicode=True)
                click.echo(f"  {label} =\n" + "\n".join("    " + line for line in text.splitlines()))


def stride_note(layer, block=None) -> str:
    """How a strided conv's stride enters the bound (docs/method.md, "Lowering" and "Strided blocks").

    At the top level the realization runs at the input rate and the layer keeps the samples
    ``y[t] = v[s t + delta]``, ``delta = k_e - 1 - pad_left``: dropping samples only lowers the left side of
    a dissipation inequality, so the bound stays valid. Inside a residual block, the block is realized in
    lifted time and the stride is exact."""
    s = layer.stride
    delta = layer.dilation * (layer.kernel - 1) - layer.pad_left
    at = f"{s}t" + ("" if delta == 0 else f" {'+' if delta > 0 else '-'} {abs(delta)}")
    head = (f"stride {s}: this realization runs at the input's rate (as for stride 1); the layer's output is "
            f"every {s}{_ordinal_suffix(s)} sample, y[t] = v[{at}]")
    if block is not None:
        return (f"{head}, which the lifted realization of residual {block.name!r} computes exactly (and no "
                "sample in between)")
    return (f"{head}. The SDP bounds all of v (dropping samples only lowers the left side of the dissipation "
            "inequality, so the bound holds for y: docs/method.md, \"Lowering\"), unless a merge with linear "
            f"neighbours or solve --lift L (L a multiple of {s}, \"Lifting\") keeps only y's samples (lipdsl "
            "show --lowering)")


def _ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _convs(layers):
    """``(block, branch, conv)`` for every conv1d layer of ``layers``, in order (``typed.walk``): ``block`` is
    the residual block holding it (None at the top level), ``branch`` ``"main path"`` or ``"shortcut"``
    (None at the top level)."""
    from lipdsl.lang.typed import walk

    for block, branch, layer in walk(layers):
        if layer.kind == "conv1d":
            yield block, "main path" if branch == "main" else branch, layer


def print_lowering(net, low, size, lift: int = 1) -> None:
    """``lipdsl show --lowering``: one row per SDP step of ``low`` (the lowered ``net``; ``size``: its
    ``pipeline.problem_size``): the systems (one LMI each) and the pooling/flatten steps between them, then
    the form ``lipdsl solve`` picks by default (``pipeline.choose_form``)."""
    from rich.table import Table

    from lipdsl.model import lowered

    solver_rows, notes = solver_lmis(low, size)
    factor = format_up(low.factor, 6)  # (a factor of the upper bound: rounded up, as the bound)
    table = Table(title=f"{net.name}: how each layer enters the SDP (bound = sqrt(rho) x {factor})")
    for col in ("step", "layers", "construct", "direct LMI rows (state+in+out)", "solver rows",
                "scale / factor"):
        table.add_column(col)
    for st in low.steps:
        if isinstance(st, lowered.System):
            ss = st.ss
            slope = (
                "linear" if st.slope is None else f"{st.activation} slope [{st.slope[0]:g}, {st.slope[1]:g}]"
            )
            what = {"conv": "causal FIR state space", "dense": "static map", "activation": "identity map",
                    "pool": "causal FIR state space", "block": "residual block, one LTI system"}[st.kind]
            if st.internal:
                what += " with internal " + ", ".join(f"{a.name} [{a.alpha:g}, {a.beta:g}]"
                                                      for a in st.internal)
            n_out = st.n_out if st.slope is not None else 0
            rows = ss.nx + ss.nu + n_out
            table.add_row(
                st.name,
                ", ".join(st.layers),
                f"{what} + {slope}" + (f"; {st.note}" if st.note else ""),
                f"{rows} ({ss.nx}+{ss.nu}+{n_out})",
                solver_rows.get(st.name, "-"),
                f"{st.scale:.4g}",
            )
        elif isinstance(st, lowered.Pool):
            table.add_row(st.name, st.name, st.note, "-", "-", format_up(st.gain, 4))
        else:
            table.add_row(
                st.name,
                st.name,
                f"flatten {st.channels}x{st.length}: next input weight X (x) I_{st.length}",
                "-",
                "-",
                "1",
            )
    console().print(table)
    click.echo("direct: the layer's LMI as certify re-checks it (an eliminated layer has none); solver: the "
               "LMI the solver sees (Y: rows of Y = X_out^-1, F: the inverse head's F rows), as in "
               "`lipdsl solve --json`'s sdp.lmi_sizes")
    for note in notes:
        click.echo(f"  note: {note}")
    from lipdsl.pipeline import choose_form, choose_weights

    frequencies, form = choose_form(net, lift)
    weights = choose_weights(net, lift, frequencies)[1]
    click.echo(f"lipdsl solve's form (--frequencies auto, --weight-rank auto): {form}"
               + (f"; {weights}" if weights else ""))


def solver_lmis(low, size) -> tuple[dict[str, str], list[str]]:
    """Per system name, the rows of the LMIs ``build_sdp`` gives the solver (``"none"`` for an eliminated
    system), and the SDP's notes; nothing (and a note) when the SDP is beyond ``solve``'s default limits."""
    from lipdsl.pipeline import MAX_LMI, MAX_VARIABLES
    from lipdsl.sdp.build import build_sdp

    if size.largest_lmi > MAX_LMI or size.variables > MAX_VARIABLES:
        return {}, ["solver LMI rows not shown: the SDP is beyond `lipdsl solve`'s default --max-lmi / "
                    "--max-variables"]
    try:
        sdp = build_sdp(low)
    except LipdslError as err:
        return {}, [f"solver LMI rows not shown: {err.message}"]
    rows: dict[str, str] = {}
    for lmi in sdp.lmis:
        if lmi.system is None or lmi.name != f"LMI[{lmi.system}]":  # P >= 0, X >= 0: listed in the notes
            continue
        short = {"Y = X_out^-1": "Y", "F rows": "F"}  # the blocks the inverse forms add
        rows[lmi.system] = f"{lmi.size} (" + "+".join(
            f"{n}{short.get(label, '')}" for label, n in lmi.blocks) + ")"
    for st in low.systems:
        rows.setdefault(st.name, "none (eliminated)")
    extra = [lmi.name for lmi in sdp.lmis if lmi.name.startswith(("P[", "X[", "Y["))]
    notes = list(sdp.notes) + ([f"also {', '.join(extra)}"] if extra else [])
    return rows, notes


STATUS_WORDS = {
    "exact norm": "exact norm product",
    "verified LMI": "verified LMI",
    "certified": "certified",
}


def format_seconds(x: float | None, spec: str = ".6g") -> str:
    return "-" if x is None else format(x, spec)


def print_comparison(c) -> None:
    """The comparison as a rich table (the lower bound first), then the warnings of a frequency-form bound
    (``lipdsl compare --frequencies K``: as ``lipdsl solve`` prints them), then one note line per method."""
    from rich.table import Table

    net = c.network
    where = f", unrolled for N = {c.length}" if c.length else ""
    table = Table(title=f"{net.name}: Lipschitz bounds ({net.input_shape} -> {net.output_shape}{where})")
    for col in ("method", "bound", "/ lower", "/ dissip.", "time", "status"):
        table.add_column(col, justify="left" if col in ("method", "status") else "right", no_wrap=True)
    d = c.lower_detail
    notes, warnings = [], []
    if c.lower is not None:
        table.add_row(
            "lower (empirical)",
            format_down(c.lower, 6),
            "1",
            format_seconds(c.ratio_dissipative(c.lower), ".3f"),
            f"{d['seconds']:.2f} s",
            "witnessed",
        )
        notes.append(f"lower: max ||J(u)||_2 over {d['starts']} starts, seed {d['seed']}")
    elif "error" in d:
        table.add_row("lower (empirical)", "-", "", "", "", "[red]not run[/]")
        notes.append(f"lower: not run: {d['error']}")
    for r in c.results:
        status = r.status if r.ok else f"[red]{r.status}[/]"
        table.add_row(
            r.method,
            "-" if r.bound is None else format_up(r.bound, 6),
            format_seconds(c.ratio_lower(r), ".3f"),
            format_seconds(c.ratio_dissipative(r), ".3f"),
            "" if r.status == "refused" else f"{r.seconds:.2f} s",
            status,
        )
        size = f" (LMI {r.lmi_rows} rows)" if r.lmi_rows and r.ok else ""
        notes.append(f"{r.method}: {r.note}{size}" if r.ok else f"{r.method}: {r.status}: {r.note}")
        # a frequency-form bound's warnings (a large repair, a bound above the H-infinity product), as solve's
        warnings.extend(f"{r.method}: warning: {w}" for w in r.frequency_report()["warnings"])
    console().print(table)
    for line in warnings:
        click.echo("  " + line)
    for line in notes:
        click.echo("  " + line)


def print_baseline(net, method: str, r) -> None:
    """``lipdsl solve --method <baseline>``: the bound with how it is known, or why there is none."""
    if r.ok:
        words = STATUS_WORDS[r.status]
        click.echo(f"Lipschitz upper bound of {net.name} ({method}): {format_up(r.bound)} ({words})")
        size = f", LMI {r.lmi_rows} rows" if r.lmi_rows else ""
        click.echo(f"  {r.note}{size}; time {r.seconds:.3f} s")
    else:
        click.echo(f"no bound for {net.name} ({method}): {r.status}: {r.note}")


def lower_bound_json(spec: str, net, result, seed: int) -> dict:
    """``lipdsl lower --json``: the empirical lower bound, how it was searched, and its maximizing input."""
    return {
        "spec": spec,
        "network": net.name,
        "lower_bound": result.value,
        "seed": seed,
        "starts": result.starts,
        "evaluations": result.evaluations,
        "length": result.length,
        "seconds": result.seconds,
        "argmax_input": result.argmax_input.tolist(),
        "search": result.search,
        "witness": result.witness,
        "second_input": None if result.second_input is None else result.second_input.tolist(),
    }


def lower_bound_text(net, result, seed: int) -> str:
    """``lipdsl lower``: the empirical lower bound in one line."""
    where = f", input length {result.length}" if net.any_length else ""
    what = "||J(u)||_2" if result.witness == "jacobian" else "||f(u) - f(v)||_2 / ||u - v||_2"
    return (
        f"{net.name}: lipschitz >= {format_down(result.value)}  (empirical: {what} found by {result.search}, "
        f"{result.starts} starts, {result.evaluations} Jacobians, seed {seed}{where}, {result.seconds:.2f} s)"
    )

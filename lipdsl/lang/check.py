"""Check shapes and load weights: ast.Network -> typed.Network (PyTorch's shape rules; files: weights.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lipdsl.errors import ShapeError, SpecError, did_you_mean, shorten
from lipdsl.lang import activations as _activation_table
from lipdsl.lang import ast, typed
from lipdsl.lang.source import Source, Span
from lipdsl.lang.typed import Shape
from lipdsl.lang.weights import WeightFiles

__all__ = ["check", "conv1d_length", "pool_length", "conv1d_padding", "ACTIVATIONS"]

# Built-in activations (their names, parameters and slope bounds): lipdsl.lang.activations, the one table.
ACTIVATIONS = _activation_table.ACTIVATIONS
_FUNCTIONS = ("sqrt", "exp", "log", "sin", "cos", "tan", "tanh", "atan", "abs")
_RESERVED = ("pi", "e") + _FUNCTIONS


def conv1d_padding(mode: str | int, kernel: int, dilation: int) -> tuple[int, int]:
    """(pad_left, pad_right) of a Conv1d: an int pads both sides; 'same' as PyTorch; 'causal' left only.

    ``same``: total = dilation*(kernel-1), left = total // 2, right = total - left (PyTorch's split).
    ``causal``: left = dilation*(kernel-1), right = 0.
    """
    reach = dilation * (kernel - 1)
    if mode == "valid":
        return 0, 0
    if mode == "same":
        return reach // 2, reach - reach // 2
    if mode == "causal":
        return reach, 0
    return int(mode), int(mode)


def conv1d_length(length: int, kernel: int, stride: int, dilation: int, pad_left: int, pad_right: int) -> int:
    """PyTorch Conv1d: ``L_out = floor((L + pl + pr - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (length + pad_left + pad_right - dilation * (kernel - 1) - 1) // stride + 1


def pool_length(length: int, kernel: int, stride: int) -> int:
    """PyTorch Avg/MaxPool1d, no padding, floor mode: ``L_out = floor((L - kernel) / stride) + 1``."""
    return (length - kernel) // stride + 1


def length_after(layer, n: int | None) -> int | None:
    """Samples after ``layer`` for ``n`` samples in (None: a vector, before or after it): a conv or pool by
    its PyTorch formula, a residual block through its main path (the shortcut has the same length: check),
    None after a flatten, a global average pool or a dense layer; unchanged otherwise."""
    if isinstance(layer, (typed.Flatten, typed.GlobalAvgPool, typed.Dense)) or n is None:
        return None
    if isinstance(layer, typed.Conv1d):
        return conv1d_length(n, layer.kernel, layer.stride, layer.dilation, layer.pad_left, layer.pad_right)
    if isinstance(layer, typed.Pool):
        return pool_length(n, layer.kernel, layer.stride)
    if isinstance(layer, typed.Residual):
        for inner in layer.main:
            n = length_after(inner, n)
    return n


def shapes_at(net: typed.Network, length: int | None):
    """``(layer, channels, samples)`` after each layer of ``net`` for inputs of ``length`` samples (the spec's
    own length if it has one; ``samples`` is None once the signal is a vector: after a flatten, a global
    average pool or a dense layer; ``length_after``). For size estimates made before anything is lowered or
    allocated."""
    shp = net.input_shape
    c, n = shp.channels, (None if shp.flat else (shp.length or length or 1))
    for L in net.layers:
        if isinstance(L, typed.Flatten):
            c = c * (n or 1)
        elif isinstance(L, (typed.Conv1d, typed.Dense, typed.Residual)):
            c = L.out_shape.channels
        n = length_after(L, n)
        yield L, c, n


def require_length(net: typed.Network, length: int | None, given: str = "length") -> None:
    """Refuse an input ``length`` (``--length``, ``length=``) that the spec contradicts: every command and
    function that takes one treats it alike. Any length goes for ``input C x *``, and the spec's own length
    for ``input C x N``.

    Raises
    ------
    SpecError
        At the ``input`` line, for another length than ``N``, or any length for a vector input
        (``input N``).
    """
    shp = net.input_shape
    if length is None or net.any_length or length == shp.length:
        return
    if shp.flat:
        raise SpecError(f"{given} {length} does not apply to {net.name!r}: its input is a vector of "
                        f"{shp.channels} values", net.input_span,
                        hint=f"leave out {given} (it is for 'input C x *' nets)")
    raise SpecError(f"{given} {length} contradicts the input line: {net.name!r} takes inputs of length "
                    f"{shp.length}", net.input_span,
                    hint=f"leave out {given}, or declare 'input {shp.channels} x *' for inputs of any length")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class Loaded:
    """A tensor ready for a layer: float64 values, exact values if written with expressions, a label."""

    values: np.ndarray
    expr: Any
    label: str
    span: Span


@dataclass
class Checker:
    source: Source
    allow_outside: bool
    env: dict[str, Any] = field(default_factory=dict)  # let name -> int | float | sympy
    env_lines: dict[str, int] = field(default_factory=dict)
    weights: tuple[str, Span] | None = None  # current default weights file
    memory: Mapping[str, bytes] | None = None  # weight files in memory (memory_key(rel) -> bytes), no disk
    cache: dict = field(default_factory=dict)  # bare-name tensor entry (sympy) -> (float, exact)
    files: WeightFiles = field(init=False)  # the weight files, read safely (lipdsl.lang.weights)

    def __post_init__(self) -> None:
        self.files = WeightFiles(self.source, self.allow_outside, self.memory)
    bare: dict = field(default_factory=dict)  # (name, negated) of a NameTable entry -> (float, exact)
    fractions: dict = field(default_factory=dict)  # let name -> its rational value as a Fraction
    let_floats: dict = field(default_factory=dict)  # let name (sympy value) -> its float, from the let

    # -- expressions -------------------------------------------------------------------------------
    def value(self, e: ast.Expr, what: str) -> Any:
        """The value of ``e`` with let names substituted: int/float, or a sympy number."""
        if e.is_number:
            if isinstance(e.value, float) and not math.isfinite(e.value):
                raise SpecError(f"{what}: the number is too large for float64", e.span)
            return e.value
        import sympy

        for n in e.names:
            if n.call:
                if n.id not in _FUNCTIONS:
                    raise SpecError(
                        f"unknown function {n.id!r}",
                        n.span,
                        hint=did_you_mean(n.id, _FUNCTIONS) + "functions: " + ", ".join(_FUNCTIONS),
                    )
            elif n.id not in self.env:
                from lipdsl.lang.parse import keywords

                if n.id in keywords():  # (no let can define it: keywords cannot be names)
                    raise SpecError(f"{n.id!r} is a keyword, not a value", n.span,
                                    hint="a value is a number, a let name or an expression of them, as in "
                                    "'let k = 3'")
                hint = did_you_mean(n.id, self.env) + f"define it first, as in 'let {n.id} = 1/8'"
                raise SpecError(f"unknown name {n.id!r}", n.span, hint=hint)
        value = e.value
        if isinstance(value, ast.Deferred):  # + - * / of numbers and names (the parser's fast let reader)
            fast = value.rational(self.env, self.fractions)
            if fast is not None:
                return fast
            value = value.sympy()
        subs = {sympy.Symbol(n.id): ast.exact(self.env[n.id]) for n in e.names if not n.call}
        if not subs:
            return value
        try:
            return ast.substitute(value, subs)
        except ast.TooLarge as exc:
            raise SpecError(
                f"{what}: number too large to compute exactly: {exc}",
                e.span,
                hint="values must fit in float64 (about 1.8e308); lipdsl computes expressions exactly first",
            ) from None

    def number(self, e: ast.Expr, what: str) -> tuple[float, Any]:
        """(float value, exact sympy value or None when ``e`` is a plain number) of a real expression."""
        v = self.value(e, what)
        if isinstance(v, float):
            return v, None
        if isinstance(v, int):
            try:
                return float(v), None
            except OverflowError:
                raise SpecError(f"{what}: the number is too large for float64", e.span) from None
        return self.to_float(v, e.span, what), v

    @staticmethod
    def to_float(v: Any, span: Span, what: str) -> float:
        from sympy.core.evalf import PrecisionExhausted

        try:
            # strict: raise rather than return digits lost to cancellation
            f = float(v.evalf(20, strict=True) if hasattr(v, "evalf") else v)
        except (TypeError, ValueError, OverflowError):
            raise SpecError(f"{what} is not a real number: {shorten(v)}", span) from None
        except PrecisionExhausted:
            raise SpecError(
                f"{what} cannot be evaluated to 20 significant digits: {shorten(v)}",
                span,
                hint="write it in a simpler form (it may be an exact zero sympy cannot recognise)",
            ) from None
        if not math.isfinite(f):
            raise SpecError(
                f"{what} is not finite: {shorten(v)}", span,
                hint="check for a division by zero or an overflow",
            )
        if f == 0 and getattr(v, "is_zero", None) is False:
            raise SpecError(
                f"{what} underflows to 0 in float64: {shorten(v)}",
                span,
                hint="values must be 0 or at least about 5e-324 in magnitude; rescale the weights (the "
                "bound scales with them)",
            )
        return f

    def integer(self, e: ast.Expr, what: str, minimum: int) -> int:
        """An integer-valued expression, at least ``minimum``."""
        v = self.value(e, what)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        elif not isinstance(v, int):
            if getattr(v, "is_Integer", False):
                v = int(v)
            else:
                shown = v if isinstance(v, float) else self.to_float(v, e.span, what)
                raise SpecError(f"{what} must be an integer, got {shown:g}", e.span)
        if v < minimum:
            raise SpecError(f"{what} must be at least {minimum}, got {v}", e.span)
        return v

    # -- tensors -----------------------------------------------------------------------------------
    def tensor(self, src: ast.TensorSource, role: str) -> Loaded:
        """Load a weight or bias: from a file (by key) or inline; float64, finite."""
        if isinstance(src, ast.Tensor):
            return self.inline(src, role)
        values, label = self.files.read(src, self.weights)
        return Loaded(values, None, label, src.span)

    def holds(self, ref: ast.TensorRef) -> bool:
        """Whether the file ``ref`` names (or the current ``weights`` file) has its key."""
        return self.files.holds(ref, self.weights)

    def inline(self, t: ast.Tensor, role: str) -> Loaded:
        if t.values is not None:  # plain numbers, already float64 (the parser's fast path)
            bad = np.argwhere(~np.isfinite(t.values))
            if bad.size:
                raise SpecError(
                    f"inline {role} entry at index {tuple(int(i) for i in bad[0])}: the number is too large "
                    "for float64",
                    t.span,
                )
            return Loaded(t.values, None, f"the inline {role}", t.span)
        if t.table is not None:  # plain numbers and bare names (the parser's NAMES fast path)
            return self.inline_names(t, role)
        shape = self.inline_shape(t)
        entries: list[ast.Expr] = []

        def walk(node):
            for item in node.items:
                if isinstance(item, ast.Tensor):
                    walk(item)
                else:
                    entries.append(item)

        walk(t)
        floats, exact = [], []
        for e in entries:
            # a bare name (or its negation) has one value for the whole spec (let names are defined once,
            # before use): evaluated once, not once per entry (a 1 MB tensor of names)
            bare = len(e.names) == 1 and not e.names[0].call and e.depth <= 2 and not e.is_number
            if bare and e.value in self.cache:
                f, x = self.cache[e.value]
            else:
                f, x = self.number(e, f"inline {role} entry")
                if bare:
                    self.cache[e.value] = (f, x)
            floats.append(f)
            exact.append(x)
        values = np.array(floats, dtype=np.float64).reshape(shape)
        values.setflags(write=False)
        expr = None
        if any(x is not None for x in exact):
            import sympy

            flat = [ast.exact(e) if x is None else x for e, x in zip(entries, exact, strict=True)]
            expr = sympy.ImmutableDenseNDimArray(flat, shape)
        return Loaded(values, expr, f"the inline {role}", t.span)

    def inline_names(self, t: ast.Tensor, role: str) -> Loaded:
        """``inline`` of a ``NameTable`` tensor: each distinct (signed) name is evaluated once, in the order
        of first use (so the first failing entry is the one reported, as entry by entry), and the entries
        are filled in with numpy; the exact values (``ExactArray``) are built only if read."""
        table = t.table
        floats, exact = [], []
        for (id_, negated), (span, name_span) in zip(table.symbols, table.first, strict=True):
            f, x = self.bare_name(id_, negated, span, name_span, f"inline {role} entry")
            floats.append(f)
            exact.append(x)
        values = table.numbers.copy()
        named = table.codes >= 0
        values[named] = np.asarray(floats, dtype=np.float64)[table.codes[named]]
        values.setflags(write=False)
        expr = ast.ExactArray(table.shape, table.codes, tuple(exact), table.exact_numbers)
        return Loaded(values, expr, f"the inline {role}", t.span)

    def bare_name(self, id_: str, negated: bool, span: Span, name_span: Span, what: str) -> tuple[float, Any]:
        """(float value, exact value) of a tensor entry that is a bare name, negated or not (cached per spec).

        A name bound to a plain number (``let a = 0.1``; an integer float64 holds exactly) needs no sympy:
        its float is the number, its exact value the number as written (``ast.exact``, built on demand);
        anything else (``let a = 1/3``, ``pi``, an unknown name) is evaluated as ``number`` does, with its
        errors at the name's first use."""
        key = (id_, negated)
        hit = self.bare.get(key)
        if hit is not None:
            return hit
        v = None if id_ in ("pi", "e") else self.env.get(id_)
        if type(v) is float or (type(v) is int and abs(v) <= 2**53):
            v = -v if negated else v
            hit = (float(v) or 0.0, v)  # (a zero is +0.0, as its exact value, 0, evaluates)
        elif id_ in self.let_floats and getattr(v, "is_Rational", False):
            # the let's own evaluation (rounding to nearest is symmetric: -v rounds to -f); an exact zero
            # is +0.0, as ``number`` gives it
            f = self.let_floats[id_]
            hit = ((-f if negated else f) or 0.0, -v if negated else v)
        else:
            f, x = self.number(ast.bare_name(id_, "-" if negated else "", span, name_span), what)
            hit = (f, f if x is None else x)
        self.bare[key] = hit
        return hit

    def inline_shape(self, t: ast.Tensor) -> tuple[int, ...]:
        if not t.items:
            return (0,)
        kinds = {isinstance(i, ast.Tensor) for i in t.items}
        if len(kinds) == 2:
            raise ShapeError(
                "inline tensor mixes numbers and lists at the same depth",
                t.span,
                hint="every row of a nested list needs the same shape",
            )
        if kinds == {False}:
            return (len(t.items),)
        first = self.inline_shape(t.items[0])
        for row in t.items[1:]:
            shape = self.inline_shape(row)
            if shape != first:
                raise ShapeError(
                    f"ragged inline tensor: this row has shape {format_shape(shape)}, "
                    f"the first has {format_shape(first)}",
                    row.span,
                    hint="every row of a nested list needs the same shape",
                )
        return (len(t.items),) + first


def format_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def layer_kind(layer) -> str:
    """The keyword of an ``ast`` layer statement (``conv1d``, ``avgpool``, ...), as messages name it."""
    if isinstance(layer, ast.Conv1d):
        return "conv1d"
    if isinstance(layer, ast.Dense):
        return "dense"
    if isinstance(layer, ast.Pool):
        return f"{layer.op}pool"
    if isinstance(layer, ast.GlobalAvgPool):
        return "global_avgpool"
    if isinstance(layer, ast.Flatten):
        return "flatten"
    if isinstance(layer, ast.BatchNorm):
        return "batchnorm"
    if isinstance(layer, ast.Residual):
        return "residual"
    return layer.function


#: Prefix of auto-generated layer names (``conv1``, ``gap1``, ...); importers/spec.py gives the same names.
AUTO_PREFIX = {
    "conv1d": "conv",
    "dense": "dense",
    "avgpool": "avgpool",
    "maxpool": "maxpool",
    "global_avgpool": "gap",
    "flatten": "flatten",
    "batchnorm": "bn",
    "residual": "block",
}


def _names(layers) -> list[str]:
    """Layer names: as written, else ``<kind><n>`` (conv1, dense2, relu1, avgpool1...) skipping taken ones.

    ``n`` counts the layers of that kind so far, named or not, so inserting a named layer does not rename
    the unnamed ones before it.
    """
    taken: dict[str, Span] = {}
    for layer in layers:
        if layer.name is not None:
            if layer.name in taken:
                raise SpecError(
                    f"duplicate layer name {layer.name!r}",
                    layer.span,
                    hint=f"{layer.name!r} is already the name of the layer at line "
                    f"{taken[layer.name].line}; layer names must be unique",
                )
            taken[layer.name] = layer.span
    counts: dict[str, int] = {}
    out = []
    for layer in layers:
        kind = layer_kind(layer)
        prefix = AUTO_PREFIX.get(kind, kind)
        counts[prefix] = counts.get(prefix, 0) + 1
        if layer.name is not None:
            out.append(layer.name)
            continue
        n = counts[prefix]
        while f"{prefix}{n}" in taken:
            n += 1
        taken[f"{prefix}{n}"] = layer.span
        out.append(f"{prefix}{n}")
    return out


def layer_options(layer, kind: str, family: str) -> dict[str, ast.Option]:
    got: dict[str, ast.Option] = {}
    allowed = ast.OPTIONS[family]
    for opt in layer.options:
        if opt.key not in allowed:
            takes = ("takes " + ", ".join(allowed)) if allowed else "takes no options"
            raise SpecError(f"{kind} takes no {opt.key!r} option", opt.span, hint=f"{kind} {takes}")
        if opt.key in got:
            raise SpecError(
                f"option {opt.key!r} given twice",
                opt.span,
                hint=f"the first is at column {got[opt.key].span.col}",
            )
        got[opt.key] = opt
    return got


def producer(prev: str | None) -> str:
    return f"{prev!r} produces" if prev else "the input is"



def check(
    net: ast.Network,
    source: Source,
    *,
    allow_outside: bool = False,
    files: Mapping[str, bytes] | None = None,
) -> typed.Network:
    """Infer and check every layer's shape, load the weights, and resolve activations' slopes.

    Shapes follow PyTorch: Conv1d ``L_out = floor((L + pl + pr - d*(k-1) - 1)/s) + 1``, pooling
    ``floor((L - k)/s) + 1``, channel-major flatten, Linear ``(out, in)``.

    Parameters
    ----------
    net : ast.Network
        The parsed spec.
    source : Source
        Its text and path; weight paths are relative to ``source.directory``.
    allow_outside : bool
        Allow weight files given by absolute paths or outside the spec's directory (``..``).
    files : mapping of str to bytes, optional
        The weight files' contents in memory, keyed by ``memory_key`` of the names the spec writes
        (``weight_files``): nothing is read from disk, with the same checks (path rules, size limits,
        ``allow_pickle=False``, finite values); a name not in ``files`` is "not found".

    Returns
    -------
    typed.Network
        Every layer with its input/output Shape, float64 weights and slope bounds.

    Raises
    ------
    ShapeError
        Sizes that do not fit together (channels, lengths, weight shapes).
    WeightError
        A missing, unreadable, unsafe or non-finite weight file or tensor.
    SpecError
        Unknown names, duplicate layer names, bad slopes or options.
    """
    ck = Checker(source, allow_outside, memory=files)
    try:
        return _check(ck, net, source)
    finally:
        ck.files.close()


def _check(ck: Checker, net: ast.Network, source: Source) -> typed.Network:
    from lipdsl.lang.layers import check_layer, check_residual  # (layers builds on this module)

    names = iter(_names(ast.layer_nodes(net.layers)))
    shape: Shape | None = None
    input_shape: Shape | None = None
    prev: str | None = None
    layers: list[typed.Layer] = []
    for st in net.body:
        if isinstance(st, ast.Let):
            if st.name in _RESERVED:
                raise SpecError(
                    f"{st.name!r} is a built-in name and cannot be redefined",
                    st.name_span,
                    hint="pick another name",
                )
            if st.name in ck.env:
                raise SpecError(
                    f"{st.name!r} is already defined",
                    st.name_span,
                    hint=f"it was defined at line {ck.env_lines[st.name]}; pick another name",
                )
            v = ck.value(st.value, f"let {st.name}")
            if not isinstance(v, (int, float)):  # refuse complex/infinite values early
                ck.let_floats[st.name] = ck.to_float(v, st.value.span, f"let {st.name}")
            ck.env[st.name] = v
            ck.env_lines[st.name] = st.span.line
            continue
        if isinstance(st, ast.Weights):
            ck.weights = (st.path, st.path_span or st.span)
            ck.files.open(st.path, st.path_span or st.span)  # report a missing file where it is declared
            continue
        if isinstance(st, ast.Input):
            channels = ck.integer(st.channels, "input size" if st.flat else "input channels", 1)
            if st.flat:
                shape = Shape(channels, None, flat=True)
            elif st.any_length:
                shape = Shape(channels, None)
            else:
                shape = Shape(channels, ck.integer(st.length, "input length", 1))
            input_shape = shape
            continue
        assert shape is not None  # parse() refuses layers before the input
        name = next(names)
        layer = check_residual(ck, st, name, names, shape, prev) if isinstance(st, ast.Residual) else \
            check_layer(ck, st, name, shape, prev)
        layers.append(layer)
        shape = layer.out_shape
        prev = name
    if not layers:
        raise SpecError("the network has no layers", net.input.span, hint="add layers after the input line")
    title = net.name or (Path(source.path).stem if source.path not in ("<string>", "<stdin>") else "network")
    length_span = net.input.span if net.input.length is None else net.input.length.span
    return typed.Network(title, input_shape, tuple(layers), net.span, source.path, length_span,
                         tuple(ck.files.read_keys))



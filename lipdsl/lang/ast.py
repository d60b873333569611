"""Syntax tree of a spec: what the text says, unchecked (built by parse, read by check).

Every node is a frozen, slotted dataclass carrying the ``Span`` it was written at. Numbers stay plain Python
``int``/``float`` (so a spec without arithmetic never imports sympy); any other expression holds a sympy
expression whose free symbols are the ``let`` names it uses, listed with their spans in ``Expr.names``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Union

from lipdsl.lang.source import Span


@dataclass(frozen=True, slots=True)
class Name:
    """A name used inside an expression: a ``let`` constant, or a function when ``call`` is true."""

    id: str
    span: Span
    call: bool = False


@dataclass(frozen=True, slots=True)
class Expr:
    """An arithmetic expression as written: ``value`` is an int/float literal or a sympy expression."""

    value: Any  # int | float | sympy.Expr
    span: Span
    names: tuple[Name, ...] = ()
    depth: int = 1  # nesting of operators and calls; parse refuses more than MAX_DEPTH

    @property
    def is_number(self) -> bool:
        """True for a plain literal (possibly negated): no sympy involved."""
        return isinstance(self.value, (int, float))


class Deferred:
    """A ``let`` value of numbers and names under + - * / and negation, as the parser's fast ``let`` reader
    keeps it (sympy's symbolic arithmetic on 1 MB of such lines takes ~20 s): a tree of ``("op", "add" |
    "sub" | "mul" | "div", left, right)``, ``("neg", x)``, ``("name", id)`` and numbers (int, float,
    ``Fraction``). ``rational(env)`` evaluates it exactly with Fractions when every name is bound to a
    rational; ``sympy()`` is the expression the general parser builds, for anything else."""

    __slots__ = ("tree", "_sympy", "terms")

    def __init__(self, tree, terms=None):
        #: the line as ``(negative, factors)`` terms when it is a flat sum of products (``let_flat``):
        #: factors in order, names as str and numbers as exact ``(m, e)`` decimals (``m / 10^e``)
        self.tree, self._sympy, self.terms = tree, None, terms

    def sympy(self):
        """The sympy expression, built as parse's ``_operator`` and ``neg`` build it."""
        if self._sympy is None:
            import sympy

            def build(node):
                if isinstance(node, Fraction):
                    return sympy.Rational(node.numerator, node.denominator)
                if not isinstance(node, tuple):
                    return node  # int or float: `exact` below, as the parser's operands
                if node[0] == "name":
                    return sympy.Symbol(node[1])
                if node[0] == "neg":
                    return -exact(build(node[1]))
                a, b = exact(build(node[2])), exact(build(node[3]))
                op = node[1]
                return bounded(a + b if op == "add" else a - b if op == "sub" else a * b if op == "mul"
                               else a / b)

            self._sympy = build(self.tree)
        return self._sympy

    def rational(self, env: dict, fractions: dict | None = None):
        """The exact value (a sympy Rational) with names from ``env``, or None when a name is not bound to a
        rational, or a division by zero or a value beyond ``MAX_BITS`` needs sympy's own handling.
        ``fractions``: name -> Fraction of its ``env`` value, filled as names are met (bound once)."""
        fractions = {} if fractions is None else fractions

        def value(node):
            if isinstance(node, tuple):
                if node[0] == "name":
                    f = fractions.get(node[1])
                    if f is None:
                        f = fractions[node[1]] = fraction(env[node[1]])
                    return f
                if node[0] == "neg":
                    return -value(node[1])
                a, b = value(node[2]), value(node[3])
                op = node[1]
                v = a + b if op == "add" else a - b if op == "sub" else a * b if op == "mul" else a / b
            else:
                v = fraction(node)
            if max(v.numerator.bit_length(), v.denominator.bit_length()) > MAX_BITS:
                raise ZeroDivisionError  # (leave it to sympy)
            return v

        try:
            if self.terms is None:
                raise _NotDecimal
            v = _terms_value(self.terms, env, fractions)
        except _NotDecimal:
            try:
                v = _decimal_value(self.tree, env, fractions)
            except _NotDecimal:
                try:
                    v = value(self.tree)
                except (ZeroDivisionError, TypeError, ValueError):
                    return None
        import sympy

        return sympy.Rational(v.numerator, v.denominator)

    def __eq__(self, other) -> bool:
        return self.sympy() == (other.sympy() if isinstance(other, Deferred) else other)

    def __hash__(self) -> int:
        return hash(self.sympy())

    def __repr__(self) -> str:
        return repr(self.sympy())


class _NotDecimal(Exception):
    """``_decimal_value`` cannot evaluate a tree (a division, a name or leaf that is no finite decimal, or a
    value past ``MAX_BITS``): the Fraction path takes it."""


def _scaled(f: Fraction) -> tuple[int, int]:
    """``(m, e)`` with ``f == m / 10^e``, or ``_NotDecimal`` when ``f``'s denominator is not ``2^a 5^b``."""
    d = f.denominator
    twos = (d & -d).bit_length() - 1
    d >>= twos
    fives = round((d.bit_length() - 1) / 2.321928094887362) if d > 1 else 0  # log2(5)
    for b in (fives - 1, fives, fives + 1):  # (the estimate is off by at most one)
        if b >= 0 and 5**b == d:
            break
    else:
        raise _NotDecimal
    e = max(twos, b)
    return f.numerator * (10**e // f.denominator), e


def _name_decimal(name: str, env: dict, fractions: dict) -> tuple[int, int]:
    """The let name's value as ``(m, e)``, cached in ``fractions`` next to its Fraction."""
    key = (name, "decimal")
    found = fractions.get(key)
    if found is None:
        f = fractions.get(name)
        try:
            if f is None:
                f = fractions[name] = fraction(env[name])
        except (TypeError, ValueError, KeyError):
            raise _NotDecimal from None
        found = fractions[key] = _scaled(f)
    return found


def _terms_value(terms, env: dict, fractions: dict) -> Fraction:
    """The exact value of ``Deferred.terms`` (a flat sum of products, ``let_flat``): each term's factors
    multiplied in order, the terms added in order, as ``m / 10^e``; every partial product and partial sum
    (which include the tree's) is kept within ``MAX_BITS`` unreduced, else ``_NotDecimal`` (the tree's
    evaluation decides). The value is the tree's: exact arithmetic does not depend on the grouping."""
    total_m = total_e = 0
    max_bits = MAX_BITS
    for negative, factors in terms:
        m, e = 1, 0
        for f in factors:
            fm, fe = _name_decimal(f, env, fractions) if f.__class__ is str else f
            m *= fm
            e += fe
            if e > MAX_DECIMAL_EXPONENT or m.bit_length() > max_bits:
                raise _NotDecimal
        if negative:
            m = -m
        if e > total_e:
            total_m *= 10 ** (e - total_e)
            total_e = e
        elif e < total_e:
            m *= 10 ** (total_e - e)
        total_m += m
        if total_m.bit_length() > max_bits:
            raise _NotDecimal
    return Fraction(total_m, 10**total_e)


def _decimal_value(tree, env: dict, fractions: dict) -> Fraction:
    """The exact value of a tree of ``add``/``sub``/``mul``/``neg`` over decimals, as ``m / 10^e`` integer
    pairs: the same value as the Fraction arithmetic without a gcd at every operation (lets of decimals
    and earlier names: 1 MB of them spent most of ``check`` normalising fractions). Raises ``_NotDecimal``
    for anything else."""
    scaled = _scaled

    def value(node) -> tuple[int, int]:
        if isinstance(node, tuple):
            kind = node[0]
            if kind == "name":
                return _name_decimal(node[1], env, fractions)
            if kind == "neg":
                m, e = value(node[1])
                return -m, e
            op = node[1]
            if op == "div":
                raise _NotDecimal
            (m1, e1), (m2, e2) = value(node[2]), value(node[3])
            if op == "mul":
                m, e = m1 * m2, e1 + e2
            else:
                e = max(e1, e2)
                m1, m2 = m1 * 10 ** (e - e1), m2 * 10 ** (e - e2)
                m = m1 + m2 if op == "add" else m1 - m2
        else:
            try:
                m, e = scaled(fraction(node))
            except (TypeError, ValueError):
                raise _NotDecimal from None
        if m.bit_length() > 2 * MAX_BITS or e > MAX_BITS:  # (unreduced: the Fraction path decides)
            raise _NotDecimal
        return m, e

    m, e = value(tree)
    v = Fraction(m, 10**e)
    if max(v.numerator.bit_length(), v.denominator.bit_length()) > MAX_BITS:
        raise _NotDecimal
    return v


def fraction(v) -> Fraction:
    """``exact(v)`` as a Fraction, for a number, a Fraction or a sympy Rational (TypeError otherwise; a
    non-finite float: ValueError)."""
    if isinstance(v, Fraction):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(v)
        text = repr(v)
        if "e" in text:
            return Fraction(text)
        whole, _, decimals = text.partition(".")  # (Fraction(text) does the same, 2x slower)
        return Fraction(int(whole + decimals), 10 ** len(decimals))
    if isinstance(v, int):
        return Fraction(v)
    if getattr(v, "is_Rational", False):
        return Fraction(int(v.p), int(v.q))
    raise TypeError(type(v).__name__)


def exact(e: "Expr | int | float"):
    """The exact sympy value of an Expr or a plain number: decimals become the rationals they spell."""
    import sympy

    value = e.value if isinstance(e, Expr) else e
    if isinstance(value, int):
        return sympy.Integer(value)
    if isinstance(value, float):
        finite = value == value and abs(value) != float("inf")
        # repr() is the shortest text that reads back as this float, i.e. what the user wrote.
        return sympy.Rational(repr(value)) if finite else sympy.Float(value)
    return value


#: Deepest expression (operators and calls, as a tree) the parser accepts: sympy walks expressions
#: recursively, and a spec has no use for a chain of hundreds of operators.
MAX_DEPTH = 100
#: Deepest bracket nesting, ``(`` and ``[`` together: weights need three levels.
MAX_NESTING = 32

#: Largest exact number an expression may reach: numerators and denominators of at most this many bits
#: (2**8192 ~ 1e2466, far beyond float64). Larger values would be computed digit by digit (10^10^10 takes
#: hours), and keeping them unevaluated lets evalf lose every digit to cancellation (10^400 - 10^400).
MAX_BITS = 8192
#: Largest decimal exponent ``e`` with ``10^e`` within ``MAX_BITS`` bits (a denominator of ``m / 10^e``).
MAX_DECIMAL_EXPONENT = int(MAX_BITS / math.log2(10)) - 1
#: Largest exponent of an irrational base (sqrt(2)^n is expanded exactly by sympy).
MAX_EXPONENT = 4096
#: Highest tower of powers with an irrational or symbolic exponent, ``2^(2^(... ^ sqrt(2)))``: sympy's
#: assumptions evaluate each level again (2^-2^-...^2, 20 levels: 2 s; 30: minutes).
MAX_TOWER = 6


class TooLarge(ArithmeticError):
    """An exact value would exceed ``MAX_BITS``; the caller raises a LipdslError with the span."""


def _bits(value) -> int:
    """Bits of the numerator/denominator of a rational value, 0 for anything else."""
    if getattr(value, "is_Rational", False):
        return max(int(value.p).bit_length(), int(value.q).bit_length())
    return 0


def bounded(value):
    """``value`` if its exact size is within ``MAX_BITS``, else raise TooLarge."""
    if _bits(value) > MAX_BITS:
        raise TooLarge("the exact value has more than %d bits" % MAX_BITS)
    return value


def _tower(value) -> int:
    """Height of the highest tower of powers in a sympy expression (``2^(3^x)``: 2; no power: 0)."""
    import sympy

    pows = value.atoms(sympy.Pow) if isinstance(value, sympy.Basic) else ()
    return max((1 + _tower(p.exp) for p in pows), default=0)


def power(base, exponent):
    """``base ** exponent`` (sympy), refusing results beyond ``MAX_BITS`` before computing them."""
    import sympy

    if exponent.is_Number and base.is_number and exponent is not sympy.nan:  # (nan: no size to compare)
        e = abs(exponent)
        if base.is_Rational:
            if base not in (0, 1, -1) and e * _bits(base) > MAX_BITS:
                raise TooLarge(
                    f"the power would have about {float(e) * _bits(base):.3g} bits (at most {MAX_BITS})"
                )
        elif e > MAX_EXPONENT:
            raise TooLarge(f"the exponent exceeds {MAX_EXPONENT}")
    elif not exponent.is_Number and max(_tower(base), 1 + _tower(exponent)) > MAX_TOWER:
        raise TooLarge(f"powers are nested more than {MAX_TOWER} deep with irrational exponents")
    return bounded(sympy.Pow(base, exponent))


#: Largest |argument| of exp/tanh (exp(709) is float64's limit; beyond 1000 sympy's exact evaluation of
#: exp(-10^2000) takes seconds) and of sin/cos/tan (range reduction needs as many digits of pi as the
#: argument has).
MAX_EXP_ARGUMENT = 1000
MAX_TRIG_ARGUMENT = 10**6


def call(func, arg):
    """``func(arg)`` (sympy), refusing arguments whose exact evaluation would be slow and whose value cannot
    be a float64 weight anyway (``exp(-10^2000)``), before sympy evaluates anything."""
    import sympy

    limit = {sympy.exp: MAX_EXP_ARGUMENT, sympy.tanh: MAX_EXP_ARGUMENT, sympy.sin: MAX_TRIG_ARGUMENT,
             sympy.cos: MAX_TRIG_ARGUMENT, sympy.tan: MAX_TRIG_ARGUMENT}.get(func)
    if limit is not None and getattr(arg, "is_number", False) and not arg.free_symbols:
        try:
            magnitude = abs(complex(arg.evalf(15)))
        except (TypeError, ValueError, OverflowError):
            magnitude = math.inf
        if not magnitude <= limit:
            raise TooLarge(f"the argument of {func.__name__} is beyond +-{limit:g} "
                           f"(its value would not fit float64, or take long to compute exactly)")
    return bounded(func(arg))


def substitute(value, subs: dict):
    """``value`` with symbols replaced by ``subs``, rebuilt bottom up (no recursion) with ``power``'s limits.

    sympy's own ``xreplace`` would evaluate ``a^a^a`` with ``a = 2`` without bounds.
    """
    import sympy

    post: list = []
    stack = [value]
    while stack:
        node = stack.pop()
        post.append(node)
        stack.extend(node.args)
    done: dict = {}
    for node in reversed(post):
        if node in done:
            continue
        if not node.args:
            done[node] = subs.get(node, node)
            continue
        args = [done[a] for a in node.args]
        if isinstance(node, sympy.Pow):
            new = power(args[0], args[1])
        elif isinstance(node, (sympy.Add, sympy.Mul)):
            new = args[0]
            for a in args[1:]:
                new = bounded(new + a if isinstance(node, sympy.Add) else new * a)
        elif len(args) == 1 and isinstance(node, sympy.Function):
            new = call(node.func, args[0])
        else:
            new = bounded(node.func(*args))
        done[node] = new
    return done[value]


def bare_name(id_: str, sign: str, span: Span, name_span: Span, symbol=None) -> Expr:
    """The Expr of a tensor entry that is a bare, possibly signed name (``a``, ``-a``, ``+pi``), as the
    ``name`` and ``neg`` rules build it; ``symbol``: its sympy value if known already."""
    if symbol is None:
        import sympy

        symbol = {"pi": sympy.pi, "e": sympy.E}.get(id_) or sympy.Symbol(id_)
        symbol = -symbol if sign == "-" else symbol
    names = () if id_ in ("pi", "e") else (Name(id_, name_span),)
    return Expr(symbol, span, names, 2) if sign == "-" else Expr(symbol, span, names)


class LazyItems(Sequence):
    """The items of a ``Tensor`` built on first use (by ``build()``): a tensor read through the parser's fast
    path (``NameTable``) is checked without them; anything that walks the tree still sees them."""

    __slots__ = ("_build", "_items")

    def __init__(self, build):
        self._build, self._items = build, None

    def _get(self) -> tuple:
        if self._items is None:
            self._items = tuple(self._build())
        return self._items

    def __len__(self) -> int:
        return len(self._get())

    def __getitem__(self, i):
        return self._get()[i]

    def __iter__(self):
        return iter(self._get())

    def __eq__(self, other) -> bool:
        return self._get() == (tuple(other) if isinstance(other, (LazyItems, tuple)) else other)

    def __hash__(self) -> int:
        return hash(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


@dataclass(frozen=True, slots=True)
class NameTable:
    """A regular inline tensor of plain numbers and bare (signed) names, as the parser's NAMES fast path
    reads it: entry ``i`` (row-major) is the number ``numbers.flat[i]`` when ``codes.flat[i] < 0``, else the
    name ``symbols[codes.flat[i]]``, an ``(id, negated)`` pair. ``first[k]``: the spans (entry, name) where
    symbol ``k`` first appears (what an error about it points at); ``exact_numbers``: the numbers as written
    (int or float), for the exact value of the tensor."""

    symbols: tuple[tuple[str, bool], ...]
    codes: Any  # np.ndarray of int, the tensor's shape
    numbers: Any  # np.ndarray of float64, the tensor's shape (0 where a name is)
    exact_numbers: tuple  # the number entries in order, as parsed (int | float)
    first: tuple[tuple[Span, Span], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape


class ExactArray:
    """The exact values of an inline tensor of names (a sympy ``ImmutableDenseNDimArray``), built on first
    use: ``check`` keeps the parts (``NameTable``, each symbol's exact value) and indexing, ``==``, ``repr``
    and any other attribute go to the sympy array, computed then, once."""

    __slots__ = ("shape", "_parts", "_array")

    def __init__(self, shape: tuple[int, ...], codes, symbols: tuple, numbers: tuple):
        self.shape = tuple(shape)
        self._parts = (codes, symbols, numbers)
        self._array = None

    def sympy(self):
        """The sympy array (every entry ``exact``: a decimal is the rational it spells)."""
        if self._array is None:
            import sympy

            codes, symbols, numbers = self._parts
            sym = [exact(v) if isinstance(v, (int, float)) else v for v in symbols]
            num = iter(numbers)
            flat = [sym[c] if c >= 0 else exact(next(num)) for c in codes.ravel().tolist()]
            self._array = sympy.ImmutableDenseNDimArray(flat, self.shape)
        return self._array

    def __getitem__(self, index):
        return self.sympy()[index]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.sympy(), name)

    def __eq__(self, other) -> bool:
        return self.sympy() == (other.sympy() if isinstance(other, ExactArray) else other)

    __hash__ = None

    def __len__(self) -> int:
        return len(self.sympy())

    def __iter__(self):
        return iter(self.sympy())

    def __repr__(self) -> str:
        return repr(self.sympy())

    def __str__(self) -> str:
        return str(self.sympy())

    def __reduce__(self):
        return (ExactArray, (self.shape, *self._parts))


@dataclass(frozen=True, slots=True)
class Tensor:
    """Inline nested lists of expressions, e.g. ``[[1, -a], [0, sqrt(2)]]``; items are Tensors or Exprs.

    A regular tensor of plain numbers (the parser's fast path) has no items but ``values`` (float64,
    its shape). A regular tensor of plain numbers and bare names (the NAMES fast path) has ``table``, a
    ``NameTable``, and its items are built only when something reads them (``LazyItems``).
    """

    items: tuple[Union["Tensor", Expr], ...]
    span: Span
    values: Any = None
    table: NameTable | None = None


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A stored tensor: ``key`` in the current ``weights`` file, ``"file.npz":key``, or a ``"file.npy"``."""

    file: str | None
    key: str | None
    span: Span


TensorSource = Union[Tensor, TensorRef]


@dataclass(frozen=True, slots=True)
class Option:
    """``kernel 3``, ``padding causal``, ``weight conv1.weight``, ``slope [0, 1]``... written after a layer.

    ``value`` is an Expr, a padding mode string, a TensorSource, or a pair of Exprs for ``slope``.
    """

    key: str
    value: Any
    span: Span


@dataclass(frozen=True, slots=True)
class Input:
    """``input 1 x 128`` (a signal), ``input 3 x *`` (``any_length``) or ``input 784`` (a vector)."""

    channels: Expr
    length: Expr | None
    any_length: bool
    span: Span

    @property
    def flat(self) -> bool:
        return self.length is None and not self.any_length


@dataclass(frozen=True, slots=True)
class Weights:
    """``weights "file.npz"``: default source of keyed tensors for the layers that follow."""

    path: str
    span: Span
    path_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Let:
    """``let name = expr``: a constant usable in later expressions."""

    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Conv1d:
    """``conv1d [name:] c_in -> c_out, kernel k[, stride s][, dilation d][, padding p], weight W[, bias b]``.

    Options are kept as written (checked in check.py).
    """

    name: str | None
    c_in: Expr
    c_out: Expr
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Dense:
    """``dense [name:] n_in -> n_out, weight W[, bias b]``."""

    name: str | None
    n_in: Expr
    n_out: Expr
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Pool:
    """``avgpool [name:] k[, stride s]`` or ``maxpool ...``; ``op`` is "avg" or "max"."""

    op: str
    name: str | None
    kernel: Expr | None
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class GlobalAvgPool:
    """``global_avgpool [name]``: mean over time of each channel."""

    name: str | None
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Flatten:
    """``flatten [name]``: channel-major, as torch.flatten."""

    name: str | None
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Activation:
    """``relu``, ``leaky_relu(0.01)``, ``tanh t1, slope [0, 1]``, ``swish slope [-0.1, 1.1]``..."""

    function: str
    parameter: Expr | None
    name: str | None
    options: tuple[Option, ...]
    span: Span
    function_span: Span


@dataclass(frozen=True, slots=True)
class BatchNorm:
    """``batchnorm [name:] C, weights PREFIX[, eps E]``, or ``weight/bias/running_mean/running_var`` keys."""

    name: str | None
    channels: Expr
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Residual:
    """``residual [name]`` ... [``shortcut`` ...] ``end``: ``y = main(x) + shortcut(x)``.

    ``shortcut`` is None for an identity shortcut; ``span`` covers the ``residual`` line only (the block's
    header, where messages about the whole block point).
    """

    name: str | None
    main: tuple["Layer", ...]
    shortcut: tuple["Layer", ...] | None
    span: Span
    shortcut_span: Span | None = None
    end_span: Span | None = None
    options: tuple[Option, ...] = ()


Layer = Union[Conv1d, Dense, Pool, GlobalAvgPool, Flatten, Activation, BatchNorm, Residual]
Statement = Union[Input, Let, Weights, Layer]


@dataclass(frozen=True, slots=True)
class Network:
    """A whole spec: its name, its input, and every statement in order (``input`` too, not ``network``)."""

    name: str | None
    input: Input
    body: tuple[Statement, ...]
    span: Span
    name_span: Span | None = None

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(s for s in self.body if not isinstance(s, (Input, Let, Weights)))

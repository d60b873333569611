"""Syntax tree of a spec: what the text says, unchecked (built by parse, read by check).

Every node is a frozen, slotted dataclass carrying the ``Span`` it was written at. Numbers stay plain Python
``int``/``float`` (so a spec without arithmetic never imports sympy); any other expression holds a sympy
expression whose free symbols are the ``let`` names it uses, listed with their spans in ``Expr.names``.
Their exact arithmetic and its size limits are in ``arith`` (imported here by name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from lipdsl.lang.arith import (  # noqa: F401 (the exact arithmetic, part of the tree's vocabulary)
    _bits,
    bounded,
    call,
    exact_number,
    _decimal_value,
    Deferred,
    fraction,
    MAX_BITS,
    MAX_DECIMAL_EXPONENT,
    MAX_DEPTH,
    MAX_EXP_ARGUMENT,
    MAX_EXPONENT,
    MAX_NESTING,
    MAX_TOWER,
    MAX_TRIG_ARGUMENT,
    _NotDecimal,
    power,
    substitute,
    TooLarge,
    _tower,
)
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


def exact(e: "Expr | int | float"):
    """The exact sympy value of an Expr or a plain number: decimals become the rationals they spell."""
    return exact_number(e.value if isinstance(e, Expr) else e)


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


#: The options each layer family takes (``pool``: avgpool and maxpool; ``activation``: any activation name).
OPTIONS: dict[str, tuple[str, ...]] = {
    "conv1d": ("kernel", "stride", "dilation", "padding", "weight", "bias"),
    "dense": ("weight", "bias"),
    "pool": ("kernel", "stride"),
    "global_avgpool": (),
    "flatten": (),
    "activation": ("slope",),
    "batchnorm": ("weights", "weight", "bias", "running_mean", "running_var", "eps"),
}


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


def layer_nodes(layers) -> list:
    """Every layer node in naming order: a residual block, then its main path, then its shortcut (the AST's
    ``typed.flat_layers``, blocks kept: what walks a spec's layers, for names or tensor references)."""
    out = []
    for layer in layers:
        out.append(layer)
        if isinstance(layer, Residual):
            out += layer_nodes(layer.main) + layer_nodes(layer.shortcut or ())
    return out


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

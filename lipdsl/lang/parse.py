"""Parse spec text: Source -> ast.Network (Lark LALR, grammar/lipdsl.lark)."""

from __future__ import annotations

import bisect
import importlib.resources
import math
import os
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedInput, VisitError
from lark.lark import PostLex

from lipdsl.errors import LipdslError, ParseError
from lipdsl.lang import ast
from lipdsl.lang.let_flat import read_flat
from lipdsl.lang.source import Source, Span

__all__ = ["parse", "grammar_text"]


_FUNCTIONS = ("sqrt", "exp", "log", "sin", "cos", "tan", "tanh", "atan", "abs")
_CONSTANTS = ("pi", "e")

_OPENERS = {"LSQB": "RSQB", "LPAR": "RPAR"}


class _Continuation(PostLex):
    """Join continued lines: drop line breaks inside brackets and after a comma; end the text with one.

    At the end of a text with an unclosed bracket, the final line break is placed at that bracket, so the
    syntax error points at it.
    """

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        open_brackets: list[Token] = []
        last: Token | None = None
        for tok in stream:
            if tok.type == "_NL":
                if last is None or last.type in ("_NL", "COMMA") or open_brackets:
                    continue
            elif tok.type in _OPENERS:
                open_brackets.append(tok)
                if len(open_brackets) > ast.MAX_NESTING:
                    raise ParseError(
                        f"brackets nested more than {ast.MAX_NESTING} deep",
                        Span(tok.line, tok.column, tok.end_line, tok.end_column),
                        hint="weights need at most three levels: [[[...]]] for conv1d (c_out, c_in, kernel)",
                    )
            elif tok.type in ("RSQB", "RPAR") and open_brackets:
                open_brackets.pop()
            last = tok
            yield tok
        if last is not None and last.type != "_NL":
            at = open_brackets[-1] if open_brackets else None
            if at is not None:
                yield Token(
                    "_NL", "", at.start_pos, at.line, at.column, at.end_line, at.end_column, at.end_pos
                )
            else:
                yield Token(
                    "_NL",
                    "",
                    last.end_pos,
                    last.end_line,
                    last.end_column,
                    last.end_line,
                    last.end_column,
                    last.end_pos,
                )


def grammar_text() -> str:
    """The text of lipdsl.lark: from the installed package, else from the repository (editable installs).

    Hatchling's editable install puts the repository on ``sys.path`` and copies force-included files as a
    snapshot that the import system never sees, so ``lipdsl/grammar/`` is absent and ``grammar/`` is used.
    """
    packaged = importlib.resources.files("lipdsl").joinpath("grammar").joinpath("lipdsl.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "grammar" / "lipdsl.lark").read_text(encoding="utf-8")


def _cache_path() -> str | bool:
    """A per-user file for Lark's pickled parser tables (building them costs ~0.1 s); False to not cache.

    Not Lark's ``cache=True``, which loads a pickle from the shared temporary directory.
    """
    if os.environ.get("LIPDSL_NO_CACHE"):
        return False
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "lipdsl")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return False
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    return os.path.join(folder, "grammar-py%d%d.lark-cache" % sys.version_info[:2])


_PARSER: Lark | None = None


def _parser() -> Lark:
    """The Lark parser, built once per process (lazily)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = Lark(
            grammar_text(),
            parser="lalr",
            lexer="contextual",
            propagate_positions=True,
            maybe_placeholders=True,
            postlex=_Continuation(),
            cache=_cache_path(),
        )
    return _PARSER


def _nested(meta, *kids: ast.Expr) -> int:
    """Depth of an expression node over ``kids``; refuses more than ``ast.MAX_DEPTH``."""
    depth = 1 + max(k.depth for k in kids)
    if depth > ast.MAX_DEPTH:
        raise ParseError(
            f"expression nested more than {ast.MAX_DEPTH} levels deep",
            Span.of(meta),
            hint="split it into 'let' constants",
        )
    return depth


def _too_large(exc: ast.TooLarge, meta) -> ParseError:
    return ParseError(
        f"number too large to compute exactly: {exc}",
        Span.of(meta),
        hint="values must fit in float64 (about 1.8e308); lipdsl computes expressions exactly first",
    )


def _operator(fn_name: str, meta, left: ast.Expr, right: ast.Expr) -> ast.Expr:
    depth = _nested(meta, left, right)
    a, b = ast.exact(left), ast.exact(right)
    try:
        if fn_name == "add":
            value = ast.bounded(a + b)
        elif fn_name == "sub":
            value = ast.bounded(a - b)
        elif fn_name == "mul":
            value = ast.bounded(a * b)
        elif fn_name == "div":
            value = ast.bounded(a / b)
        else:
            value = ast.power(a, b)
    except ast.TooLarge as exc:
        raise _too_large(exc, meta) from None
    return ast.Expr(value, Span.of(meta), left.names + right.names, depth)


class _Marker:
    """A ``residual``, ``shortcut`` or ``end`` line, before ``_group_blocks`` turns them into ast.Residual."""

    __slots__ = ("word", "name", "span")

    def __init__(self, word: str, name: str | None, span: Span):
        self.word, self.name, self.span = word, name, span


def _group_blocks(statements: list) -> list:
    """Replace each ``residual ... [shortcut ...] end`` run of statements by one ``ast.Residual``.

    Raises ParseError for a ``shortcut``/``end`` outside a block, a nested block, a second ``shortcut``,
    a block with no ``end`` or no layers, and header statements (``input``, ``weights``, ...) inside one.
    """
    out: list = []
    block: _Marker | None = None
    main: list = []
    short: list | None = None
    short_span: Span | None = None
    for st in statements:
        if isinstance(st, _Marker):
            if st.word == "residual":
                if block is not None:
                    raise ParseError("residual blocks do not nest", st.span,
                                     hint=f"close the block of line {block.span.line} with 'end' first")
                block, main, short, short_span = st, [], None, None
            elif block is None:
                raise ParseError(f"'{st.word}' outside a residual block", st.span,
                                 hint="a block is 'residual NAME:', its layers, optionally 'shortcut' "
                                 "and the shortcut's layers, then 'end'")
            elif st.word == "shortcut":
                if short is not None:
                    raise ParseError("a residual block has one 'shortcut'", st.span,
                                     hint=f"the shortcut already starts at line {short_span.line}")
                short, short_span = [], st.span
            else:
                if not main:
                    raise ParseError("a residual block needs at least one layer on its main path", block.span,
                                     hint="write the main path's layers between 'residual' and "
                                     "'shortcut'/'end'")
                out.append(ast.Residual(block.name, tuple(main), None if short is None else tuple(short),
                                        block.span, short_span, st.span))
                block = None
            continue
        if block is None:
            out.append(st)
        elif isinstance(st, (tuple, ast.Input, ast.Let, ast.Weights)):
            raise ParseError("only layers go inside a residual block", st.span if not isinstance(st, tuple)
                             else st[3], hint=f"move this line before the block of line {block.span.line}")
        else:
            (main if short is None else short).append(st)
    if block is not None:
        raise ParseError("this residual block has no 'end'", block.span,
                         hint="close it with a line 'end' after its last layer")
    return out


@v_args(meta=True)
class ToAst(Transformer_NonRecursive):
    """Parse tree -> ast nodes; builds nodes and nothing else (checks belong to check.py).

    Non-recursive, so that long operator chains (``1+1+...+1``) cannot exhaust Python's stack; depth and
    number size limits are enforced while building (``_nested``, ``ast.power``).
    """

    def start(self, meta, kids):
        return list(kids)

    # -- statements --------------------------------------------------------------------------------
    def network(self, meta, kids):
        (name,) = kids
        return ("network", str(name), Span.of(name), Span.of(meta))

    def input_flat(self, meta, kids):
        return ast.Input(kids[0], None, False, Span.of(meta))

    def input_signal(self, meta, kids):
        return ast.Input(kids[0], kids[1], False, Span.of(meta))

    def input_any(self, meta, kids):
        return ast.Input(kids[0], None, True, Span.of(meta))

    def weights(self, meta, kids):
        return ast.Weights(str(kids[0])[1:-1], Span.of(meta), Span.of(kids[0]))

    def let(self, meta, kids):
        name, value = kids
        return ast.Let(str(name), value, Span.of(meta), Span.of(name))

    def conv1d(self, meta, kids):
        name, c_in, c_out, *options = kids
        return ast.Conv1d(name, c_in, c_out, tuple(options), Span.of(meta))

    def dense(self, meta, kids):
        name, n_in, n_out, *options = kids
        return ast.Dense(name, n_in, n_out, tuple(options), Span.of(meta))

    def avgpool(self, meta, kids):
        name, kernel, *options = kids
        return ast.Pool("avg", name, kernel, tuple(options), Span.of(meta))

    def maxpool(self, meta, kids):
        name, kernel, *options = kids
        return ast.Pool("max", name, kernel, tuple(options), Span.of(meta))

    def global_avgpool(self, meta, kids):
        name, *options = kids
        return ast.GlobalAvgPool(name, tuple(options), Span.of(meta))

    def flatten(self, meta, kids):
        name, *options = kids
        return ast.Flatten(name, tuple(options), Span.of(meta))

    def activation(self, meta, kids):
        function, parameter, name, *options = kids
        return ast.Activation(
            str(function), parameter, name, tuple(options), Span.of(meta), Span.of(function)
        )

    def batchnorm(self, meta, kids):
        name, channels, *options = kids
        return ast.BatchNorm(name, channels, tuple(options), Span.of(meta))

    def residual(self, meta, kids):
        return _Marker("residual", kids[0], Span.of(meta))

    def shortcut(self, meta, kids):
        return _Marker("shortcut", None, Span.of(meta))

    def end(self, meta, kids):
        return _Marker("end", None, Span.of(meta))

    def layer_name(self, meta, kids):
        return str(kids[0])

    label = layer_name

    # -- options -----------------------------------------------------------------------------------
    def _option(key):
        def build(self, meta, kids):
            return ast.Option(key, kids[0], Span.of(meta))

        return build

    kernel = _option("kernel")
    stride = _option("stride")
    dilation = _option("dilation")
    padding = _option("padding")
    weight = _option("weight")
    bias = _option("bias")
    prefix = _option("weights")
    running_mean = _option("running_mean")
    running_var = _option("running_var")
    eps = _option("eps")
    del _option

    def slope(self, meta, kids):
        return ast.Option("slope", (kids[0], kids[1]), Span.of(meta))

    def pad_mode(self, meta, kids):
        return str(kids[0])

    def tensor_key(self, meta, kids):
        return ast.TensorRef(None, str(kids[0]), Span.of(meta))

    def tensor_file(self, meta, kids):
        path, key = kids
        return ast.TensorRef(str(path)[1:-1], None if key is None else str(key), Span.of(meta))

    def tensor_numbers(self, meta, kids):
        return _numbers(kids[0])

    def tensor_names(self, meta, kids):
        return _names(kids[0])

    def tensor(self, meta, kids):
        items = tuple(k for k in kids if k is not None)  # `[]` gives one placeholder
        return ast.Tensor(items, Span.of(meta))

    # -- expressions -------------------------------------------------------------------------------
    def number(self, meta, kids):
        text = str(kids[0])
        if any(c in text for c in ".eE"):
            value = float(text)  # inf when out of range: check reports it with the span
            if value == 0 and _nonzero_digits(text):
                raise ParseError(f"number {text} underflows to 0 in float64", Span.of(meta),
                                 hint=UNDERFLOW_HINT)
        elif len(text) > 1000:  # beyond float64 (and Python's int(str) limit of 4300 digits)
            raise ParseError(
                f"number with {len(text)} digits is too large",
                Span.of(meta),
                hint="values must fit in float64 (about 1.8e308)",
            )
        else:
            value = int(text)
        return ast.Expr(value, Span.of(meta))

    def name(self, meta, kids):
        import sympy

        id_ = str(kids[0])
        value = {"pi": sympy.pi, "e": sympy.E}.get(id_) or sympy.Symbol(id_)
        names = () if id_ in _CONSTANTS else (ast.Name(id_, Span.of(meta)),)
        return ast.Expr(value, Span.of(meta), names)

    def call(self, meta, kids):
        import sympy

        fn, arg = kids
        builtin = {
            "sqrt": sympy.sqrt,
            "exp": sympy.exp,
            "log": sympy.log,
            "sin": sympy.sin,
            "cos": sympy.cos,
            "tan": sympy.tan,
            "tanh": sympy.tanh,
            "atan": sympy.atan,
            "abs": sympy.Abs,
        }
        f = builtin.get(str(fn)) or sympy.Function(str(fn))
        depth = _nested(meta, arg)
        try:
            value = ast.call(f, ast.exact(arg))
        except ast.TooLarge as exc:
            raise _too_large(exc, meta) from None
        return ast.Expr(value, Span.of(meta), (ast.Name(str(fn), Span.of(fn), call=True),) + arg.names, depth)

    def neg(self, meta, kids):
        (arg,) = kids
        value = -arg.value if arg.is_number else -ast.exact(arg)
        return ast.Expr(value, Span.of(meta), arg.names, arg.depth if arg.is_number else _nested(meta, arg))

    def add(self, meta, kids):
        return _operator("add", meta, *kids)

    def sub(self, meta, kids):
        return _operator("sub", meta, *kids)

    def mul(self, meta, kids):
        return _operator("mul", meta, *kids)

    def div(self, meta, kids):
        return _operator("div", meta, *kids)

    def pow(self, meta, kids):
        return _operator("pow", meta, *kids)


_NUMBERS_PARTS = re.compile(r"\[|\]|([+-]?)[ \t\f\r\n]*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")


def _name_entry(id_: str, sign: str, span: Span, name_span: Span, memo: dict) -> ast.Expr:
    """A tensor entry that is a bare (possibly signed) name, as the ``name`` and ``neg`` rules build it
    (``memo`` keeps one sympy value per name and sign: a 1 MB tensor repeats a few names)."""
    e = ast.bare_name(id_, sign, span, name_span, memo.get((id_, sign)))
    memo[(id_, sign)] = e.value
    return e


#: A nonzero literal below float64's range would be read as 0 and the network bounded as another one.
UNDERFLOW_HINT = ("values must be 0 or at least about 5e-324 in magnitude; rescale the weights "
                  "(the bound scales)")


def _nonzero_digits(text: str) -> bool:
    """True when the mantissa of a decimal literal has a nonzero digit (so its exact value is not 0)."""
    return any(c in "123456789" for c in re.split("[eE]", text, maxsplit=1)[0])


def _numbers(tok: Token) -> ast.Tensor:
    """An inline tensor of plain numbers lexed as one NUMBERS token: float64 values when it is regular (the
    fast path), else the same ``ast.Tensor`` of ``ast.Expr`` the grammar's ``tensor`` rule builds, with spans,
    so that check reports ragged rows exactly as for any tensor."""
    text = str(tok)
    stack: list[list] = [[]]
    for m in _NUMBERS_PARTS.finditer(text):
        part = m.group()
        if part == "[":
            stack.append([])
        elif part == "]":
            row = stack.pop()
            stack[-1].append(row)
        else:
            value = float(m.group(1) + m.group(2))
            if value == 0 and _nonzero_digits(m.group(2)):
                return _numbers_slow(tok)  # reports the entry with its span
            stack[-1].append(value)
    (nested,) = stack[0]
    try:
        values = np.array(nested, dtype=np.float64)
    except ValueError:  # ragged or mixed depth
        return _numbers_slow(tok)
    if not np.isfinite(values).all():  # 1e400: let check point at the entry itself
        return _numbers_slow(tok)
    values.setflags(write=False)
    return ast.Tensor((), Span.of(tok), values)


_NAMES_PARTS = re.compile(
    r"\[|\]|([+-]?)[ \t\f\r\n]*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[A-Za-z_][A-Za-z0-9_]*)"
)


def _names(tok: Token) -> ast.Tensor:
    """An inline tensor of plain numbers and bare names lexed as one NAMES token: when it is regular, an
    ``ast.Tensor`` with a ``NameTable`` (each distinct name once, with the spans of its first use; no Expr or
    sympy value per entry) whose items are built only if read; else (ragged, a number that is not a finite
    float64 or an integer float64 cannot hold exactly) what ``_numbers_slow`` builds, errors and all."""
    text = str(tok)
    index: dict[tuple[str, bool], int] = {}
    first: list[tuple[int, int, int]] = []  # per symbol: offsets of its first entry, of its name, its end
    numbers: list[float] = []
    exact: list = []
    stack: list[list] = [[]]
    for m in _NAMES_PARTS.finditer(text):
        part = m.group()
        if part == "[":
            stack.append([])
        elif part == "]":
            row = stack.pop()
            stack[-1].append(row)
        else:
            sign, word = m.group(1), m.group(2)
            if word[0].isalpha() or word[0] == "_":
                key = (word, sign == "-")
                code = index.get(key)
                if code is None:
                    code = index[key] = len(first)
                    first.append((m.start(1) if sign else m.start(2), m.start(2), m.end()))
                stack[-1].append(code)
                continue
            if any(c in word for c in ".eE"):
                value = float(word)
                if not math.isfinite(value) or (value == 0 and _nonzero_digits(word)):
                    return _numbers_slow(tok, names=True)  # check (or here, underflow) reports it
            elif len(word) > 15:  # not exactly a float64 (and maybe beyond it): the general path
                return _numbers_slow(tok, names=True)
            else:
                value = int(word)
            value = -value if sign == "-" else value
            stack[-1].append(-1 - len(numbers))
            numbers.append(float(value))
            exact.append(value)
    (nested,) = stack[0]
    try:
        codes = np.array(nested, dtype=np.int64)
    except ValueError:  # ragged or mixed depth
        return _numbers_slow(tok, names=True)
    values = np.zeros(codes.shape)
    is_number = codes < 0
    values[is_number] = np.asarray(numbers, dtype=np.float64)[-1 - codes[is_number]]
    codes[is_number] = -1
    at = _positions(tok, text)
    spans = tuple((Span(*at(a), *at(c)), Span(*at(b), *at(c))) for a, b, c in first)
    table = ast.NameTable(tuple(index), codes, values, tuple(exact), spans)
    return ast.Tensor(ast.LazyItems(lambda: _numbers_slow(tok, names=True).items), Span.of(tok), None, table)


def _positions(tok: Token, text: str):
    """``at(offset) -> (line, column)`` of an offset into the text of ``tok`` (1-based, as Lark's)."""
    newlines = [m.start() for m in re.finditer("\n", text)]

    def at(offset: int) -> tuple[int, int]:
        k = bisect.bisect_left(newlines, offset)  # line breaks before offset (O(log n), not a count)
        nl = newlines[k - 1] if k else -1
        return tok.line + k, (offset - nl) if nl >= 0 else tok.column + offset

    return at


def _numbers_slow(tok: Token, names: bool = False) -> ast.Tensor:
    """The ``ast.Tensor`` of a NUMBERS (or, with ``names``, a NAMES) token, every entry an ``ast.Expr`` with
    its span: what the ``tensor`` rule would build for the same text."""
    text = str(tok)
    at = _positions(tok, text)
    stack: list[tuple[int, list]] = [(0, [])]
    memo: dict = {}
    for m in (_NAMES_PARTS if names else _NUMBERS_PARTS).finditer(text):
        part = m.group()
        if part == "[":
            stack.append((m.start(), []))
        elif part == "]":
            start, items = stack.pop()
            stack[-1][1].append(ast.Tensor(tuple(items), Span(*at(start), *at(m.end()))))
        else:
            sign, digits = m.group(1), m.group(2)
            span = Span(*at(m.start(1) if sign else m.start(2)), *at(m.end()))
            if digits[0].isalpha() or digits[0] == "_":  # a bare name (NAMES only)
                name_span = Span(*at(m.start(2)), span.end_line, span.end_col) if sign else span
                stack[-1][1].append(_name_entry(digits, sign, span, name_span, memo))
                continue
            if any(c in digits for c in ".eE"):
                value = float(digits)
                if value == 0 and _nonzero_digits(digits):
                    raise ParseError(f"number {digits} underflows to 0 in float64", span, hint=UNDERFLOW_HINT)
            elif len(digits) > 1000:
                raise ParseError(f"number with {len(digits)} digits is too large", span,
                                 hint="values must fit in float64 (about 1.8e308)")
            else:
                value = int(digits)
            stack[-1][1].append(ast.Expr(-value if sign == "-" else value, span))
    return stack[0][1][0]


#: Most statements (lines starting with a word) a spec may have. Real 1D CNNs have tens of layers; the limit
#: keeps a pathological spec (1 MB of 'relu' lines: ~30 s in Lark's pure-Python LALR) a fast, clear error.
MAX_STATEMENTS = 2000
_STATEMENT = re.compile(r"^[ \t\f\r]*[A-Za-z_]", re.MULTILINE)  # the grammar ignores \f and \r too


def _check_statement_count(source: Source) -> None:
    """Refuse a spec of more than ``MAX_STATEMENTS`` statements before Lark sees it (a cheap regex count)."""
    count = 0
    text = source.text
    for match in _STATEMENT.finditer(text):
        j = match.start() - 1
        while j >= 0 and text[j] in " \t\f\r\n":
            j -= 1
        if j >= 0 and text[j] in ",[(":  # a continued tensor or expression (names on their own lines)
            continue
        count += 1
        if count > MAX_STATEMENTS:
            line = text.count("\n", 0, match.start()) + 1
            raise ParseError(
                f"the spec has more than {MAX_STATEMENTS} statements",
                Span(line, 1, line, 2),
                hint="lipdsl describes networks of up to a few thousand layers; is this file really a spec?",
            )


# -- `let` lines of plain arithmetic, without Lark -----------------------------------------------------------
# Lark's pure-Python LALR parser takes ~4.5 s for 1 MB of `let a = 0.1 + 0.2 + ...` lines, and sympy ~3 s
# for their exact arithmetic. A `let` line whose value is numbers, + - * / ^ ** and parentheses only, standing
# alone (not inside brackets or after a comma: no continuation), is read here instead: the same ast.Let
# (value, spans, depth) with rationals computed as Python Fractions (sympy Rationals only at the end).
# Anything else (names, calls, a syntax or size error, a line that may continue another) is left to Lark.

# (group 3 is greedy and keeps trailing blanks, which _fast_let strips: a lazy group tried the tail at every
# character, 70 ms for 1 MB of lets)
_LET_LINE = re.compile(r"([ \t]*)let[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]*=([ \t0-9A-Za-z_.+\-*/^()]*)"
                       r"(?:#[^\n]*)?\r?")
_LET_TOKEN = re.compile(r"[ \t]*(?:((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(\*\*|[-+*/^()])"
                        r"|([A-Za-z_][A-Za-z0-9_]*))")
_KEYWORDS = frozenset(("avgpool batchnorm bias causal conv1d dense dilation end eps flatten global_avgpool "
                       "input kernel let maxpool network padding residual running_mean running_var same "
                       "shortcut slope stride valid weight weights x").split())
_NOT_A_STATEMENT_END = re.compile(r'"[^"\n]*"|#[^\n]*')


class _NotFast(Exception):
    """The fast `let` reader gives up: Lark reads the line (and reports what is wrong with it)."""


class _LetReader:
    """Recursive descent over the grammar's ``expr`` rules for numbers only; each node is ``(value, depth,
    start, end)`` with its span's offsets in the line, and ``parse`` returns it with the offsets of its first
    and last token (parentheses and a leading '+' included, as Lark's spans of the rule around it are)."""

    def __init__(self, text: str, offset: int, line: int):
        toks = self.toks = []
        self.line, self.names = line, []
        pos, nesting = offset, 0
        for m in _LET_TOKEN.finditer(text, offset):
            if m.start() != pos:
                raise _NotFast
            number, op, name = m.groups()
            end = pos = m.end()
            if number:
                toks.append(("num", number, end - len(number), end))
            elif name:
                toks.append(("name", name, end - len(name), end))
            else:
                toks.append((op, op, end - len(op), end))
            if op == "(":
                nesting += 1
                if nesting > ast.MAX_NESTING:  # _Continuation's refusal, through Lark
                    raise _NotFast
            elif op == ")":
                nesting -= 1
        if text[pos:].strip(" \t"):
            raise _NotFast
        toks.append((None, "", pos, pos))  # the end
        self.i = 0

    def peek(self):
        return self.toks[self.i][0]

    def take(self):
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self):
        node, first, last = self.sum()
        if self.i != len(self.toks) - 1:
            raise _NotFast
        return node, first, last

    def _left_assoc(self, operand, ops: dict):
        """``operand (op operand)*`` for the operators ``ops`` (symbol -> name), folded from the left."""
        node, first, last = operand()
        while self.peek() in ops:
            op = self.take()[0]
            right, _, last = operand()
            node = _fast_operator(ops[op], node, right, first, last)
        return node, first, last

    def sum(self):
        return self._left_assoc(self.product, {"+": "add", "-": "sub"})

    def product(self):
        return self._left_assoc(self.unary, {"*": "mul", "/": "div"})

    def unary(self):
        kind = self.peek()
        if kind == "-":
            start = self.take()[2]
            arg, _, last = self.unary()
            value, depth = arg[0], arg[1]
            if isinstance(value, tuple):  # names: ast.Deferred's tree
                value, depth = ("neg", value), depth + 1
                if depth > ast.MAX_DEPTH:
                    raise _NotFast
            elif isinstance(value, Fraction):
                value, depth = -value, depth + 1
                if depth > ast.MAX_DEPTH:
                    raise _NotFast
            else:
                value = -value
            return (value, depth, start, last), start, last
        if kind == "+":
            start = self.take()[2]
            node, _, last = self.unary()
            return node, start, last
        return self.power()

    def power(self):
        base, first, last = self.atom()
        if self.peek() in ("^", "**"):
            self.take()
            exponent, _, last = self.unary()
            base = _fast_operator("pow", base, exponent, first, last)
        return base, first, last

    def atom(self):
        if self.peek() == "num":
            _, text, start, end = self.take()
            if any(c in text for c in ".eE"):
                value = float(text)
                if value == 0 and _nonzero_digits(text):
                    raise _NotFast
            elif len(text) > 1000:
                raise _NotFast
            else:
                value = int(text)
            return (value, 1, start, end), start, end
        if self.peek() == "name":
            _, name, start, end = self.take()
            if name in ("pi", "e") or name in _KEYWORDS or self.peek() == "(":  # constants, calls: Lark
                raise _NotFast
            self.names.append(ast.Name(name, Span(self.line, start + 1, self.line, end + 1)))
            return (("name", name), 1, start, end), start, end
        if self.peek() == "(":
            start = self.take()[2]
            node, _, _ = self.sum()
            if self.peek() != ")":
                raise _NotFast
            return node, start, self.take()[3]
        raise _NotFast


def _fraction(value) -> Fraction:
    """The exact value of a number or Fraction (``ast.exact``'s: a decimal is the rational it spells)."""
    try:
        return ast.fraction(value)
    except ValueError:  # inf: sympy's
        raise _NotFast from None


def _fast_operator(op: str, left, right, start: int, end: int):
    """``_operator`` on Fractions: the same value (sympy's rational arithmetic is exact too), depth and size
    limits; a division by zero or a non-integer power is left to sympy (through Lark)."""
    depth = 1 + max(left[1], right[1])
    if depth > ast.MAX_DEPTH:
        raise _NotFast
    if isinstance(left[0], tuple) or isinstance(right[0], tuple):  # names: evaluated by check
        if op == "pow":
            raise _NotFast
        return (("op", op, left[0], right[0]), depth, start, end)
    a, b = _fraction(left[0]), _fraction(right[0])
    try:
        if op == "add":
            value = a + b
        elif op == "sub":
            value = a - b
        elif op == "mul":
            value = a * b
        elif op == "div":
            value = a / b
        else:
            if b.denominator != 1:
                raise _NotFast
            bits = max(a.numerator.bit_length(), a.denominator.bit_length())
            if a not in (0, 1, -1) and abs(b.numerator) * bits > ast.MAX_BITS:
                raise _NotFast
            value = a ** b.numerator
    except ZeroDivisionError:
        raise _NotFast from None
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > ast.MAX_BITS:
        raise _NotFast
    return (value, depth, start, end)


def _fast_lets(text: str) -> tuple[str, list[ast.Let]]:
    """``(text, lets)``: the ``let`` lines read without Lark, blanked in the text (same length, so every
    position Lark reports is unchanged), and their ast.Let nodes; ``text`` as given when there are none."""
    if "let" not in text:
        return text, []
    lines = text.split("\n")
    lets: list[ast.Let] = []
    depth = 0  # open brackets at the start of a line
    continued = False  # the previous statement line ended with ',' (its line break is dropped)
    for n, line in enumerate(lines):
        if depth == 0 and not continued and "let" in line:
            m = _LET_LINE.fullmatch(line)
            if m is not None and m.group(2) not in _KEYWORDS:
                let = _fast_let(line, m, n + 1)
                if let is not None:
                    lets.append(let)
                    lines[n] = " " * len(line)
                    continue
        code = _NOT_A_STATEMENT_END.sub("", line)
        if '"' in code:  # an unterminated string: Lark reports it; nothing more here
            return text, []
        depth += code.count("[") + code.count("(") - code.count("]") - code.count(")")
        if depth < 0:
            return text, []
        stripped = code.rstrip(" \t\f\r")
        if stripped:
            continued = stripped[-1] == ","
    if not lets:
        return text, []
    return "\n".join(lines), lets


def _fast_let(line: str, m: re.Match, number: int) -> ast.Let | None:
    """The ast.Let of one matched line (1-based ``number``), or None to leave it to Lark."""
    text = line[:m.start(3) + len(m.group(3).rstrip(" \t"))]  # the expression, without trailing blanks
    flat = read_flat(text, m.start(3), number)  # a flat sum of products: one loop
    if flat is not None:
        node, last, names, terms = flat
    else:
        try:
            reader = _LetReader(text, m.start(3), number)
            node, _, last = reader.parse()
        except (_NotFast, RecursionError):
            return None
        names, terms = reader.names, None
    value, depth, start, end = node
    if isinstance(value, tuple):
        value = ast.Deferred(value, terms)
    elif isinstance(value, Fraction):
        import sympy

        value = sympy.Rational(value.numerator, value.denominator)
    expr = ast.Expr(value, Span(number, start + 1, number, end + 1), tuple(names), depth)
    head = m.end(1)
    return ast.Let(m.group(2), expr, Span(number, head + 1, number, last + 1),
                   Span(number, m.start(2) + 1, number, m.end(2) + 1))


def parse(source: Source) -> ast.Network:
    """Parse the text of a spec into an ``ast.Network``.

    Parameters
    ----------
    source : Source
        The spec text and the path that messages name.

    Returns
    -------
    ast.Network
        Unchecked syntax tree; every node carries its span.

    Raises
    ------
    ParseError
        On a syntax error (message in plain words, located at the offending token), or when the spec has no
        ``input`` line, or more than one ``network``/``input`` line, or a layer before the ``input`` line.
    """
    _check_statement_count(source)
    text, lets = _fast_lets(source.text)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        from lipdsl.lang.syntax_errors import syntax_error  # (the error path only: its tables load late)

        raise syntax_error(exc, source) from None
    try:
        statements = ToAst().transform(tree)
    except VisitError as exc:  # Lark wraps what the callbacks raise; ours are LipdslErrors with a span
        if isinstance(exc.orig_exc, LipdslError):
            raise exc.orig_exc from None
        raise
    if lets:  # in the order of the text, as Lark would have given them
        statements = sorted(statements + lets, key=_line_of)
    statements = _group_blocks(statements)

    name = name_span = None
    network_span = None
    inputs: list[ast.Input] = []
    body: list = []
    for st in statements:
        if isinstance(st, tuple):  # ("network", name, name_span, span)
            if name is not None:
                raise ParseError(
                    "a spec has one 'network' line",
                    st[3],
                    hint=f"the network is already named {name!r} at line {network_span.line}",
                )
            _, name, name_span, network_span = st
            continue
        if isinstance(st, ast.Input):
            if inputs:
                raise ParseError(
                    "a spec has one 'input' line",
                    st.span,
                    hint=f"the input is already declared at line {inputs[0].span.line}",
                )
            inputs.append(st)
        elif not isinstance(st, (ast.Let, ast.Weights)) and not inputs:
            raise ParseError(
                f"{_kind_word(st)} before the 'input' line",
                st.span,
                hint="declare the input first, as in 'input 1 x 128'",
            )
        body.append(st)
    if not inputs:
        last = max(1, len(source.text.splitlines()))
        raise ParseError(
            "the spec has no 'input' line",
            Span(1, 1, 1, 2),  # even for an empty file: every error has a place
            hint="declare the input's shape, as in 'input 1 x 128' (channels x samples)" if last else None,
        )
    end = source.text.count("\n") + 1
    span = Span(1, 1, end, 1)
    return ast.Network(name, inputs[0], tuple(body), span, name_span)


def _line_of(statement) -> tuple[int, int]:
    span = statement[3] if isinstance(statement, tuple) else statement.span
    return span.line, span.col


def _kind_word(layer) -> str:
    if isinstance(layer, ast.Activation):
        return f"activation {layer.function!r}"
    if isinstance(layer, ast.Pool):
        return f"'{layer.op}pool'"
    if isinstance(layer, ast.Residual):
        return "'residual'"
    if isinstance(layer, ast.BatchNorm):
        return "'batchnorm'"
    return {
        "Conv1d": "'conv1d'",
        "Dense": "'dense'",
        "GlobalAvgPool": "'global_avgpool'",
        "Flatten": "'flatten'",
    }[type(layer).__name__]

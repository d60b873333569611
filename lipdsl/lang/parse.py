"""Parse spec text: Source -> ast.Network (Lark LALR, grammar/lipdsl.lark)."""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedInput, VisitError
from lark.lark import PostLex
from lark.lexer import PatternStr

from lipdsl.errors import LipdslError, ParseError
from lipdsl.lang import ast
from lipdsl.lang.fast_let import _fast_lets  # noqa: F401 (tests reach it through this module)
from lipdsl.lang.source import Source, Span
from lipdsl.lang.tensor_tokens import (  # noqa: F401 (ToAst's fast paths, looked up here: tests patch them)
    UNDERFLOW_HINT,
    _names,
    _nonzero_digits,
    _numbers,
    _numbers_slow,
)

__all__ = ["parse", "grammar_text", "keywords"]


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


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.cache
def keywords() -> frozenset[str]:
    """The language's keywords: the grammar's quoted words that are spelt like names (``network``, ``conv1d``,
    ``kernel``, ``end``, ``eps``, ...; not ``x``, which is an ordinary name wherever a name may go).

    They cannot be names. The contextual lexer reads a keyword as a NAME wherever the keyword itself cannot
    come next (``residual end``, ``batchnorm eps: 2``), so ``ToAst`` refuses it where a name is defined.
    """
    return frozenset(t.pattern.value for t in _parser().terminals
                     if isinstance(t.pattern, PatternStr) and _WORD.fullmatch(t.pattern.value))


def _defined_name(token: Token | None, what: str) -> str | None:
    """The name ``token`` defines (None when there is none); ParseError at it when it is a keyword."""
    if token is None:
        return None
    word = str(token)
    if word in keywords():
        raise keyword_name_error(word, Span.of(token), what)
    return word


def keyword_name_error(word: str, span: Span, what: str) -> ParseError:
    """The error for the keyword ``word`` written as the name of ``what`` ('a layer', 'a constant', ...)."""
    return ParseError(f"{word!r} is a keyword and cannot name {what}", span,
                      hint=f"choose another name, such as '{word}1' (keywords: docs/language.md)")


#: How each layer kind's line starts, and an example value of each option: for "as in ..." in messages.
_EXAMPLE_HEADS = {"conv1d": "conv1d c1: 1 -> 2", "dense": "dense f1: 96 -> 60", "pool": "avgpool 2",
                  "global_avgpool": "global_avgpool", "flatten": "flatten", "activation": "swish",
                  "batchnorm": "batchnorm 16"}
_EXAMPLE_VALUES = {"kernel": "3", "stride": "2", "dilation": "2", "padding": "same", "slope": "[0, 1]",
                   "eps": "1e-5", "weights": "bn1"}


def option_keyword_error(word: str, span: Span, family: str) -> ParseError:
    """The error for the option keyword ``word`` of the layer family ``family`` (an ``ast.OPTIONS`` key)
    written where a name or a size goes (``batchnorm eps``, ``conv1d kernel``): the lexer read a name."""
    tensor = {"conv1d": "conv1", "dense": "fc1", "batchnorm": "bn1"}.get(family, "t")
    value = _EXAMPLE_VALUES.get(word, f"{tensor}.{word}")
    sep = " " if family == "activation" else ", "
    kind = "an activation" if family == "activation" else "avgpool/maxpool" if family == "pool" else family
    return ParseError(f"{word!r} is an option of {kind} and needs a value, as in "
                      f"'{_EXAMPLE_HEADS[family]}{sep}{word} {value}'", span,
                      hint="options come after the layer's sizes; a keyword cannot be a name or a value "
                      "(keywords: docs/language.md)")


def _sizes(family: str, *sizes: ast.Expr | None) -> None:
    """ParseError at a layer's size that is an option keyword alone (``batchnorm eps``, ``avgpool kernel``):
    a keyword is never a name, so it cannot be a ``let`` constant either."""
    for size in sizes:
        if size is not None and len(size.names) == 1 and size.names[0].span == size.span \
                and size.names[0].id in ast.OPTIONS[family]:
            raise option_keyword_error(size.names[0].id, size.span, family)


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
                _misspelled("residual", out)  # ('residul r' parses as an activation named r)
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
        _misspelled("end", main + (short or []))  # ('End' parses as an activation)
        raise ParseError("this residual block has no 'end'", block.span,
                         hint="close it with a line 'end' after its last layer")
    return out


def _misspelled(keyword: str, statements: list) -> None:
    """Raise a ParseError at the first activation among ``statements`` whose name most likely means the
    block keyword ``keyword`` (``syntax_errors.suggest_keyword``, or the keyword in other letter case): the
    block error it explains would point elsewhere (at a later ``end``, at the block's first line)."""
    from lipdsl.lang.syntax_errors import suggest_keyword

    for st in statements:
        word = getattr(st, "function", None)
        if isinstance(st, ast.Activation) and (word.lower() == keyword or suggest_keyword(word) == keyword):
            raise ParseError(f"unknown keyword {word!r} -- did you mean {keyword!r}?", st.function_span,
                             hint="keywords are lowercase; a block is 'residual NAME:', its layers, "
                             "optionally 'shortcut' and the shortcut's layers, then 'end'")


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
        return ("network", _defined_name(name, "the network"), Span.of(name), Span.of(meta))

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
        return ast.Let(_defined_name(name, "a constant"), value, Span.of(meta), Span.of(name))

    def conv1d(self, meta, kids):
        name, c_in, c_out, *options = kids
        _sizes("conv1d", c_in, c_out)
        return ast.Conv1d(_defined_name(name, "a layer"), c_in, c_out, tuple(options), Span.of(meta))

    def dense(self, meta, kids):
        name, n_in, n_out, *options = kids
        _sizes("dense", n_in, n_out)
        return ast.Dense(_defined_name(name, "a layer"), n_in, n_out, tuple(options), Span.of(meta))

    def avgpool(self, meta, kids):
        name, kernel, *options = kids
        _sizes("pool", kernel)
        return ast.Pool("avg", _defined_name(name, "a layer"), kernel, tuple(options), Span.of(meta))

    def maxpool(self, meta, kids):
        name, kernel, *options = kids
        _sizes("pool", kernel)
        return ast.Pool("max", _defined_name(name, "a layer"), kernel, tuple(options), Span.of(meta))

    def global_avgpool(self, meta, kids):
        name, *options = kids
        return ast.GlobalAvgPool(_defined_name(name, "a layer"), tuple(options), Span.of(meta))

    def flatten(self, meta, kids):
        name, *options = kids
        return ast.Flatten(_defined_name(name, "a layer"), tuple(options), Span.of(meta))

    def activation(self, meta, kids):
        function, parameter, name, *options = kids
        return ast.Activation(
            str(function), parameter, _defined_name(name, "a layer"), tuple(options), Span.of(meta),
            Span.of(function),
        )

    def batchnorm(self, meta, kids):
        name, channels, *options = kids
        _sizes("batchnorm", channels)
        return ast.BatchNorm(_defined_name(name, "a layer"), channels, tuple(options), Span.of(meta))

    def residual(self, meta, kids):
        return _Marker("residual", _defined_name(kids[0], "a residual block"), Span.of(meta))

    def shortcut(self, meta, kids):
        return _Marker("shortcut", None, Span.of(meta))

    def end(self, meta, kids):
        return _Marker("end", None, Span.of(meta))

    def layer_name(self, meta, kids):
        return kids[0]  # the NAME token: the layer's rule checks it (_defined_name) and keeps its text

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

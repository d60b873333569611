"""Inline tensors lexed as one token (NUMBERS, NAMES) -> ``ast.Tensor``: float64 values, or a name table,
on the fast path; the per-entry ``ast.Expr`` tensor the grammar's ``tensor`` rule builds otherwise."""

from __future__ import annotations

import bisect
import math
import re

import numpy as np
from lark import Token

from lipdsl.errors import ParseError
from lipdsl.lang import ast
from lipdsl.lang.source import Span


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

"""Read `let` lines of plain arithmetic without Lark: spec text -> (the text with those lines blanked, their
``ast.Let`` nodes).

Lark's pure-Python LALR parser takes ~4.5 s for 1 MB of `let a = 0.1 + 0.2 + ...` lines, and sympy ~3 s for
their exact arithmetic. A `let` line whose value is numbers, + - * / ^ ** and parentheses only, standing alone
(not inside brackets or after a comma: no continuation), is read here instead: the same ast.Let (value, spans,
depth) with rationals computed as Python Fractions (sympy Rationals only at the end). Anything else (names,
calls, a syntax or size error, a line that may continue another) is left to Lark.
"""

from __future__ import annotations

import re
from fractions import Fraction

from lipdsl.lang import ast
from lipdsl.lang.let_flat import read_flat
from lipdsl.lang.source import Span
from lipdsl.lang.tensor_tokens import _nonzero_digits


# (group 3 is greedy and keeps trailing blanks, which _fast_let strips: a lazy group tried the tail at every
# character, 70 ms for 1 MB of lets)
_LET_LINE = re.compile(r"([ \t]*)let[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]*=([ \t0-9A-Za-z_.+\-*/^()]*)"
                       r"(?:#[^\n]*)?\r?")
_LET_TOKEN = re.compile(r"[ \t]*(?:((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(\*\*|[-+*/^()])"
                        r"|([A-Za-z_][A-Za-z0-9_]*))")
_NOT_A_STATEMENT_END = re.compile(r'"[^"\n]*"|#[^\n]*')


class _NotFast(Exception):
    """The fast `let` reader gives up: Lark reads the line (and reports what is wrong with it)."""


class _LetReader:
    """Recursive descent over the grammar's ``expr`` rules for numbers only; each node is ``(value, depth,
    start, end)`` with its span's offsets in the line, and ``parse`` returns it with the offsets of its first
    and last token (parentheses and a leading '+' included, as Lark's spans of the rule around it are)."""

    def __init__(self, text: str, offset: int, line: int, keywords: frozenset[str]):
        self.keywords = keywords
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
            if name in ("pi", "e") or name in self.keywords or self.peek() == "(":  # constants, calls: Lark
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
    from lipdsl.lang.parse import keywords  # (parse imports this module)

    reserved = keywords()  # a let named so is left to Lark, which refuses it
    lines = text.split("\n")
    lets: list[ast.Let] = []
    depth = 0  # open brackets at the start of a line
    continued = False  # the previous statement line ended with ',' (its line break is dropped)
    for n, line in enumerate(lines):
        if depth == 0 and not continued and "let" in line:
            m = _LET_LINE.fullmatch(line)
            if m is not None and m.group(2) not in reserved:
                let = _fast_let(line, m, n + 1, reserved)
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


def _fast_let(line: str, m: re.Match, number: int, reserved: frozenset[str]) -> ast.Let | None:
    """The ast.Let of one matched line (1-based ``number``), or None to leave it to Lark."""
    text = line[:m.start(3) + len(m.group(3).rstrip(" \t"))]  # the expression, without trailing blanks
    flat = read_flat(text, m.start(3), number, reserved)  # a flat sum of products: one loop
    if flat is not None:
        node, last, names, terms = flat
    else:
        try:
            reader = _LetReader(text, m.start(3), number, reserved)
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

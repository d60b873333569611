"""`let` lines that are flat sums of products (``a1 * 0.5 + a2 * 0.25 - 0.125``), read in one loop.

The parser's fast `let` reader (``parse._LetReader``, recursive descent with Fractions) took ~1 s of the 2 s
budget on 1 MB of such lines (``bench/check_speed.py``: let-long, let-names). A line whose expression has
no parentheses, ``/`` or ``^`` and at least one binary operator is read here instead, with numbers kept as
exact decimals ``m / 10^e`` (no gcd per operation). The result is the reader's own: the same value (a
Fraction, or the same ``ast.Deferred`` tree), depth, spans and names. Whenever a limit could be reached
(depth, ``MAX_BITS``, a literal that underflows, overflows or is too long, a constant or keyword name),
``read_flat`` returns None and the recursive reader decides, so no check is loosened: an unreduced
``m / 10^e`` within ``MAX_BITS`` has a reduced fraction within it too.

``Deferred.terms`` (``ast.flat_value``) keeps the line as terms for ``check``: a sign and the factors in
order (names, and numbers as ``(m, e)``), evaluated without walking the tree.
"""

from __future__ import annotations

import re
from fractions import Fraction

from lipdsl.lang import ast
from lipdsl.lang.source import Span

_TOKEN = re.compile(r"([ \t]*)(?:((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|([-+*])|([A-Za-z_][A-Za-z0-9_]*))")
_NOT_FLAT = re.compile(r"[()/^]")


def decimal(v) -> tuple[int, int] | None:
    """``(m, e)`` with ``v == m / 10^e`` exactly as ``ast.fraction`` reads ``v`` (a float is the decimal its
    repr spells); None for a non-finite float."""
    if isinstance(v, int):
        return v, 0
    text = repr(v)
    mantissa, _, exponent = text.partition("e")
    whole, _, decimals = mantissa.partition(".")
    if not (whole.lstrip("-").isdigit() and (decimals.isdigit() or not decimals)):
        return None  # inf, nan
    m = int(whole + decimals)
    e = len(decimals) - (int(exponent) if exponent else 0)
    if e < 0:
        return m * 10 ** -e, 0
    return m, e


_LITERALS: dict = {}  # literal text -> (raw, m, e), or False when the recursive reader must judge it


def _literal(number: str):
    """``(raw, m, e)`` of a number token as the recursive reader reads it (a float when it has '.', 'e' or
    'E', else an int; ``raw == m / 10^e``), or False: underflow to 0, inf, more than 1000 digits."""
    from lipdsl.lang.tensor_tokens import _nonzero_digits

    if "." in number or "e" in number or "E" in number:
        raw = float(number)
        if raw == 0 and _nonzero_digits(number):
            return False
        pair = decimal(raw)
        return False if pair is None else (raw, pair[0], pair[1])
    if len(number) > 1000:
        return False
    raw = int(number)
    return raw, raw, 0


def read_flat(text: str, offset: int, line: int, reserved: frozenset[str] = frozenset()):
    """``(node, last, names, terms)`` for the expression ``text[offset:]`` (the parser's reader's ``node =
    (value, depth, start, end)``, ``last`` the end of the last token), or None: the recursive reader reads
    it. ``terms`` is the line's ``Deferred.terms`` (None for a value without names). A name in ``reserved``
    (the keywords, ``parse.keywords``) gives None as well.

    One pass over the tokens: a term is ``unary (* unary)*`` with ``unary = (+|-)* atom``, folded from the
    left as the reader folds it (two numbers: exactly, as ``m / 10^e``; anything with a name: a tree node,
    its numbers the literals or the folded Fractions), and the terms likewise under + and -."""
    if _NOT_FLAT.search(text, offset):
        return None
    toks = _TOKEN.findall(text, offset)
    max_depth, max_bits, max_e = ast.MAX_DEPTH, ast.MAX_BITS, ast.MAX_DECIMAL_EXPONENT
    literals = _LITERALS
    if len(literals) > 100_000:
        literals.clear()
    Name, Span_ = ast.Name, Span
    names: list = []
    terms: list = []
    pos, first, ops = offset, -1, 0
    expect, minus, join = True, 0, "+"
    factors = None  # the current term's factors; None before its first operand
    t_num = t_neg = False
    t_m = t_e = t_depth = 0
    t_raw = t_tree = None
    s_num, s_m, s_e, s_raw, s_tree, s_depth = True, 0, 0, None, None, -1  # the sum so far (depth -1: none)

    def close():
        """Add the current term to the sum (the reader's _left_assoc over + and -); False to give up."""
        nonlocal s_num, s_m, s_e, s_raw, s_tree, s_depth, ops
        terms.append((t_neg if join == "+" else not t_neg, factors))
        if s_depth < 0:
            s_num, s_m, s_e, s_raw, s_tree, s_depth = t_num, t_m, t_e, t_raw, t_tree, t_depth
            return True
        s_depth = 1 + (s_depth if s_depth > t_depth else t_depth)
        ops += 1
        if s_depth > max_depth:
            return False
        if s_num and t_num:
            if t_e > s_e:
                m1, m2, s_e = s_m * 10 ** (t_e - s_e), t_m, t_e
            else:
                m1, m2 = s_m, t_m * 10 ** (s_e - t_e)
            s_m = m1 + m2 if join == "+" else m1 - m2
            s_raw = None
            return s_e <= max_e and s_m.bit_length() <= max_bits
        left = s_tree if not s_num else (s_raw if s_raw is not None else Fraction(s_m, 10 ** s_e))
        right = t_tree if not t_num else (t_raw if t_raw is not None else Fraction(t_m, 10 ** t_e))
        s_tree, s_num = ("op", "add" if join == "+" else "sub", left, right), False
        return True

    for space, number, op, name in toks:
        start = pos + len(space)
        if first < 0:
            first = start
        if not expect:  # an operator
            if not op:
                return None
            pos = start + 1
            expect = True
            if op == "*":
                continue
            if not close():
                return None
            join, factors = op, None
            continue
        if op:  # a unary sign
            if op == "*":
                return None
            minus += op == "-"
            pos = start + 1
            continue
        if number:
            pos = start + len(number)
            lit = literals.get(number)
            if lit is None:
                lit = literals[number] = _literal(number)
            if lit is False:
                return None
            raw, m, e = lit
            if minus & 1:
                raw, m = -raw, -m
            o_num, o_depth, o_tree, factor = True, 1, None, (m, e)
        else:
            end = pos = start + len(name)
            if name in reserved or name == "pi" or name == "e":
                return None
            names.append(Name(name, Span_(line, start + 1, line, end + 1)))
            o_tree = ("name", name)
            for _ in range(minus):
                o_tree = ("neg", o_tree)
            o_depth = 1 + minus
            if o_depth > max_depth:
                return None
            o_num, factor = False, name
        expect, neg, minus = False, minus & 1, 0
        if factors is None:  # the term's first operand
            factors = [factor]
            t_num, t_depth, t_tree, t_neg = o_num, o_depth, o_tree, (not o_num and neg == 1)
            if o_num:
                t_raw, t_m, t_e = raw, m, e
            continue
        factors.append(factor)
        if not o_num and neg:
            t_neg = not t_neg
        t_depth = 1 + (t_depth if t_depth > o_depth else o_depth)
        ops += 1
        if t_depth > max_depth:
            return None
        if t_num and o_num:
            t_m, t_e, t_raw = t_m * m, t_e + e, None
            if t_e > max_e or t_m.bit_length() > max_bits:
                return None
        else:
            left = t_tree if not t_num else (t_raw if t_raw is not None else Fraction(t_m, 10 ** t_e))
            t_tree, t_num = ("op", "mul", left, o_tree if not o_num else raw), False
    if expect or pos != len(text) or not close() or ops == 0:
        return None  # a trailing operator, a character the tokens skipped, a lone operand: the reader's
    if s_num:
        return (Fraction(s_m, 10 ** s_e), s_depth, first, pos), pos, names, None
    return (s_tree, s_depth, first, pos), pos, names, tuple(terms)

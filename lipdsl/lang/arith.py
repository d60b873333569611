"""Exact arithmetic of spec expressions: numbers, names and operators -> exact values (Fractions, or sympy
expressions), within the size limits a spec may reach (``MAX_DEPTH``, ``MAX_BITS``, ``MAX_TOWER``, ...).

Part of the syntax tree's vocabulary: ``ast`` imports every name here, so ``ast.power``, ``ast.MAX_BITS``
etc. keep working.
"""

from __future__ import annotations

import math
from fractions import Fraction


def exact_number(value):
    """The exact sympy value of a plain number (decimals become the rationals they spell); others as given."""
    import sympy

    if isinstance(value, int):
        return sympy.Integer(value)
    if isinstance(value, float):
        finite = value == value and abs(value) != float("inf")
        # repr() is the shortest text that reads back as this float, i.e. what the user wrote.
        return sympy.Rational(repr(value)) if finite else sympy.Float(value)
    return value


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
                    return -exact_number(build(node[1]))
                a, b = exact_number(build(node[2])), exact_number(build(node[3]))
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

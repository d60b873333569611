"""The activation table: name -> slope bounds [alpha, beta], numpy function and derivative, ONNX/torch names.

The one place an activation is described; ``check`` (slopes), ``importers.spec`` (slopes of imported ops),
``forward`` (functions for the lower bound) and the tests read it.

Slope bounds are the sector every difference quotient ``(phi(a) - phi(b)) / (a - b)`` lies in. For a
differentiable ``phi`` it is ``[inf phi', sup phi']`` (mean value theorem; tight, since quotients of nearby
points approach ``phi'``), found where ``phi'' = 0``:

- ``silu`` (``swish``), ``phi(x) = x s(x)``, ``s`` the logistic function:
  ``phi'(x) = s(x) (1 + x (1 - s(x)))``, ``phi''(x) = s'(x) (2 - x tanh(x/2))``, zero at
  ``x0 tanh(x0/2) = 2``, ``x0 = 2.39935728...``;
  ``phi'(-x) = 1 - phi'(x)``, so ``[1 - b, b]`` with ``b = phi'(x0) = 1.09983932012886691...``.
- ``gelu`` (the exact, erf form: PyTorch's default ``approximate='none'``, ONNX ``Gelu``),
  ``phi(x) = x Phi(x)``: ``phi''(x) = varphi(x) (2 - x^2)``, zero at ``x = +-sqrt(2)``, so
  ``b = (1 + erf(1))/2 + 1/(e sqrt(pi)) = 1.12890414518515478...`` and ``alpha = 1 - b``.
- ``gelu_tanh`` (PyTorch's ``approximate='tanh'``): ``phi(x) = x (1 + tanh(c (x + 0.044715 x^3))) / 2``,
  ``c = sqrt(2/pi)``; ``phi''`` vanishes at ``x = +-1.41850400879...``, ``phi'(-x) = 1 - phi'(x)``:
  ``[-0.12899306865877177, 1.12899306865877177]``.
- ``mish``: ``phi(x) = x tanh(softplus(x))``; ``phi''`` vanishes at ``x = -2.25637639...`` (the least slope
  ``-0.11252612238946256``) and ``x = 1.49057117...`` (the greatest, ``1.08849816125172786``).
- ``hardswish``: ``phi(x) = x relu6(x + 3) / 6``; ``phi' = (2x + 3)/6`` on ``[-3, 3]``, 0 below, 1 above:
  ``[-1/2, 3/2]``, exact.

Constants not in closed form are computed at 50 digits (tests/lang/test_activations.py recomputes them with
mpmath) and rounded outward by one float, so the bounds are never tighter than the truth and tight to 1e-15.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Activation", "ACTIVATIONS", "get", "names", "slope", "slope_exact", "functions"]


def _up(text: str) -> float:
    return math.nextafter(float(text), math.inf)


def _down(text: str) -> float:
    return math.nextafter(float(text), -math.inf)


def _sig(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function without overflow


@dataclass(frozen=True)
class Activation:
    """One activation: its names, parameter, slope bounds, functions and the ops that import to it.

    ``bounds(p)`` gives ``(alpha, beta)`` as floats (never tighter than the exact sector); ``exact(p)`` the
    same as sympy expressions where they have a closed form (``p`` a sympy number), else None.
    ``phi(z, p)`` and ``dphi(z, p)`` act elementwise on numpy arrays.
    """

    name: str
    parameter: str  # "none", "required" or "optional"
    default: float | None
    bounds: Callable[[float | None], tuple[float, float]]
    phi: Callable[[np.ndarray, float | None], np.ndarray]
    dphi: Callable[[np.ndarray, float | None], np.ndarray]
    aliases: tuple[str, ...] = ()
    onnx: tuple[str, ...] = ()
    torch: tuple[str, ...] = ()
    exact: Callable[[Any], tuple[Any, Any]] | None = None
    form: str = ""


def _exact_const(a: str, b: str) -> Callable[[Any], tuple[Any, Any]]:
    def exact(_p):
        import sympy

        return sympy.sympify(a), sympy.sympify(b)

    return exact


def _leaky_exact(p):
    import sympy

    return sympy.Min(p, 1), sympy.Max(p, 1)


def _elu_exact(p):
    import sympy

    return sympy.Integer(0), sympy.Max(p, 1)


def _gelu_exact(_p):
    import sympy

    b = sympy.Rational(1, 2) + sympy.erf(1) / 2 + 1 / (sympy.E * sympy.sqrt(sympy.pi))
    return 1 - b, b


def _gelu(z, _p=None):
    from scipy.special import ndtr

    return z * ndtr(z)


def _dgelu(z, _p=None):
    from scipy.special import ndtr

    return ndtr(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


_C = math.sqrt(2 / math.pi)


def _gelu_tanh(z, _p=None):
    return 0.5 * z * (1.0 + np.tanh(_C * (z + 0.044715 * z**3)))


def _dgelu_tanh(z, _p=None):
    t = np.tanh(_C * (z + 0.044715 * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * z * z)


def _mish(z, _p=None):
    return z * np.tanh(np.logaddexp(0.0, z))


def _dmish(z, _p=None):
    t = np.tanh(np.logaddexp(0.0, z))
    return t + z * (1.0 - t * t) * _sig(z)


_SILU_B = "1.0998393201288669169581849"
_GELU_B = "1.1289041451851547863407444"
_GELU_TANH_B = "1.1289930686587717654559045"
_MISH_A, _MISH_B = "-0.1125261223894625564073279", "1.088498161251727861228294"


def _leaky(a):
    return 0.01 if a is None else float(a)  # PyTorch's default negative slope


def _elu_a(a):
    return 1.0 if a is None else float(a)


_TABLE = (
    Activation("relu", "none", None, lambda p: (0.0, 1.0),
               lambda z, p: np.maximum(z, 0.0), lambda z, p: (z > 0).astype(float),
               onnx=("Relu",), torch=("ReLU",), exact=_exact_const("0", "1")),
    Activation("leaky_relu", "required", None, lambda p: (min(p, 1.0), max(p, 1.0)),
               lambda z, p: np.where(z > 0, z, _leaky(p) * z),
               lambda z, p: np.where(z > 0, 1.0, _leaky(p)),
               onnx=("LeakyRelu",), torch=("LeakyReLU",), exact=_leaky_exact),
    Activation("tanh", "none", None, lambda p: (0.0, 1.0), lambda z, p: np.tanh(z),
               lambda z, p: 1.0 - np.tanh(z) ** 2, onnx=("Tanh",), torch=("Tanh",),
               exact=_exact_const("0", "1")),
    Activation("sigmoid", "none", None, lambda p: (0.0, 0.25), lambda z, p: _sig(z),
               lambda z, p: _sig(z) * (1.0 - _sig(z)), onnx=("Sigmoid",), torch=("Sigmoid",),
               exact=_exact_const("0", "1/4")),
    Activation("elu", "optional", 1.0, lambda p: (0.0, max(1.0, p)),
               lambda z, p: np.where(z > 0, z, _elu_a(p) * np.expm1(np.minimum(z, 0.0))),
               lambda z, p: np.where(z > 0, 1.0, _elu_a(p) * np.exp(np.minimum(z, 0.0))),
               onnx=("Elu",), torch=("ELU",), exact=_elu_exact),
    Activation("softplus", "none", None, lambda p: (0.0, 1.0), lambda z, p: np.logaddexp(0.0, z),
               lambda z, p: _sig(z), onnx=("Softplus",), torch=("Softplus",), exact=_exact_const("0", "1")),
    Activation("hardtanh", "none", None, lambda p: (0.0, 1.0), lambda z, p: np.clip(z, -1.0, 1.0),
               lambda z, p: ((z > -1.0) & (z < 1.0)).astype(float), torch=("Hardtanh",),
               exact=_exact_const("0", "1")),
    Activation("identity", "none", None, lambda p: (1.0, 1.0), lambda z, p: z, lambda z, p: np.ones_like(z),
               onnx=("Identity",), torch=("Identity",), exact=_exact_const("1", "1")),
    Activation("silu", "none", None, lambda p: (_down("-0.0998393201288669169581849"), _up(_SILU_B)),
               lambda z, p: z * _sig(z), lambda z, p: _sig(z) * (1.0 + z * (1.0 - _sig(z))),
               aliases=("swish",), torch=("SiLU",), form="x sigmoid(x)"),
    Activation("gelu", "none", None, lambda p: (_down("-0.1289041451851547863407444"), _up(_GELU_B)),
               _gelu, _dgelu, onnx=("Gelu",), torch=("GELU",), exact=_gelu_exact,
               form="x Phi(x), the exact (erf) form: PyTorch's GELU(approximate='none'), ONNX Gelu"),
    Activation("gelu_tanh", "none", None,
               lambda p: (_down("-0.1289930686587717654559045"), _up(_GELU_TANH_B)),
               _gelu_tanh, _dgelu_tanh, torch=("GELU(approximate='tanh')",),
               form="x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2"),
    Activation("mish", "none", None, lambda p: (_down(_MISH_A), _up(_MISH_B)), _mish, _dmish,
               onnx=("Mish",), torch=("Mish",), form="x tanh(softplus(x))"),
    Activation("hardswish", "none", None, lambda p: (-0.5, 1.5),
               lambda z, p: z * np.clip(z + 3.0, 0.0, 6.0) / 6.0,
               lambda z, p: np.where(z < -3.0, 0.0, np.where(z > 3.0, 1.0, (2.0 * z + 3.0) / 6.0)),
               onnx=("HardSwish",), torch=("Hardswish",), exact=_exact_const("-1/2", "3/2"),
               form="x relu6(x + 3) / 6"),
)

#: Every activation by its name and aliases.
ACTIVATIONS: dict[str, Activation] = {n: a for a in _TABLE for n in (a.name,) + a.aliases}


def names() -> tuple[str, ...]:
    """Every name the language accepts for a built-in activation (aliases included)."""
    return tuple(ACTIVATIONS)


def get(name: str) -> Activation | None:
    """The table entry for ``name`` (or an alias), or None."""
    return ACTIVATIONS.get(name)


def slope(name: str, parameter: float | None = None) -> tuple[float, float]:
    """``(alpha, beta)`` of the built-in ``name`` with ``parameter`` (its default when None)."""
    a = ACTIVATIONS[name]
    return a.bounds(a.default if parameter is None else parameter)


def slope_exact(name: str, parameter: Any = None) -> tuple[Any, Any] | None:
    """The sector as sympy expressions where it has a closed form, else None."""
    a = ACTIVATIONS[name]
    return None if a.exact is None else a.exact(parameter)


def functions(name: str, parameter: float | None = None) -> tuple[Callable, Callable]:
    """``(phi, dphi)`` of ``name`` with its parameter bound, elementwise on numpy arrays."""
    a = ACTIVATIONS[name]
    return (lambda z: a.phi(z, parameter)), (lambda z: a.dphi(z, parameter))

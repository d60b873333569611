"""Check Python API arguments: user values -> the same values, or a LipdslError saying what was expected.

The CLI's click types do this for the command line (``--lift`` is an ``IntRange(min=1)``); the Python API
(:mod:`lipdsl.network`) calls these so that ``lift=0``, ``margin=nan`` or ``length=2.5`` are refused in
words ("lift must be an integer >= 1, got 0") instead of a ZeroDivisionError, a LinAlgError or a bound
computed for something else.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from lipdsl.errors import LipdslError

__all__ = ["integer", "real", "choice", "SOLVE_OPTIONS"]


def integer(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    """``value`` as an int ``>= minimum`` (None allowed when ``optional``); bools and 2.5 are refused."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok:
        raise LipdslError(f"{name} must be an integer >= {minimum}, got {value!r}",
                          hint=f"pass {name}={max(minimum, 1)} (for example)")
    if value < minimum:
        raise LipdslError(f"{name} must be an integer >= {minimum}, got {value}",
                          hint=f"pass {name}={minimum} or more")
    return int(value)


def real(name: str, value: Any, *, minimum: float = -math.inf, strict: bool = False,
         optional: bool = False) -> float | None:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` when ``strict``); NaN and inf refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LipdslError(f"{name} must be a number, got {value!r}")
    v = float(value)
    rel = ">" if strict else ">="
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        bound = "" if minimum == -math.inf else f" {rel} {minimum:g}"
        raise LipdslError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


def choice(name: str, value: Any, allowed) -> str:
    """``value`` if it is one of ``allowed`` (strings), else an error listing them."""
    if value not in allowed:
        raise LipdslError(f"unknown {name} {value!r}", hint=f"use one of {', '.join(allowed)}")
    return value


def _check_solve_options(options: dict) -> dict:
    """The keyword options of ``Network.solve`` / ``solve_network`` checked, in place."""
    checks = {
        "lift": lambda v: integer("lift", v, 1),
        "margin": lambda v: real("margin", v, minimum=0.0),
        "tol": lambda v: real("tol", v, minimum=0.0, strict=True, optional=True),
        "max_iterations": lambda v: integer("max_iterations", v, 1),
        "frequencies": lambda v: v if v in ("auto", "none") else integer("frequencies", v, 3, optional=True),
        "weight_rank": lambda v: v if v in ("auto", "full") else integer("weight_rank", v, 1, optional=True),
        "refine_rounds": lambda v: integer("refine_rounds", v, 0, optional=True),
        "max_lmi": lambda v: integer("max_lmi", v, 1, optional=True),
        "max_variables": lambda v: integer("max_variables", v, 1, optional=True),
    }
    for key, check in checks.items():
        if key in options:
            options[key] = check(options[key])
    return options


#: Options of :func:`lipdsl.pipeline.solve_network` that ``Network.solve`` passes on, and their checks.
SOLVE_OPTIONS = _check_solve_options

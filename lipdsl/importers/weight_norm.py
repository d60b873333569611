"""Evaluate weight norm: a state_dict's (g, v) pairs -> the effective weights ``w = g v / ||v||``, by name.

torch stores a weight-normalised parameter ``X.weight`` as two tensors, never as ``X.weight`` itself:
``X.parametrizations.weight.original0`` (g) and ``...original1`` (v) for
``torch.nn.utils.parametrizations.weight_norm``, ``X.weight_g`` and ``X.weight_v`` for the older
``torch.nn.utils.weight_norm``. Its forward pass computes (``torch._weight_norm``)::

    w = v * (g / ||v||)

with ``||v||`` the 2-norm over every axis of ``v`` but ``dim`` (``dim=0``, the default: one norm per output
channel, ``g`` of shape ``(c_out, 1, 1)``), or over all of ``v`` for ``dim=None`` (``g`` a scalar). The state
dict does not record ``dim``; ``g``'s shape does, and is read from it here. The ONNX importer evaluates the
same formula from the exported graph's own nodes and names the result with :func:`weight_norm_key` too.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import numpy as np

from lipdsl.errors import LipdslError

__all__ = ["WeightNormError", "weight_norm_key", "weight_norm", "weight_norm_pairs", "with_weight_norm"]

_PARAMETRIZED = re.compile(r"(?:(.+)\.)?parametrizations\.(\w+)\.original([01])")
_OLD = re.compile(r"(?:(.+)\.)?(\w+)_([gv])")


class WeightNormError(LipdslError):
    """A weight-norm pair (g, v) that does not give a finite weight: the message names the tensor, ``weight``
    the effective weight (``X.weight``) when known."""

    weight: str | None = None


def weight_norm_key(key: str) -> tuple[str, str] | None:
    """``(name of the effective weight, "g" or "v")`` if ``key`` names a weight-norm tensor, else None.

    ``X.parametrizations.weight.original0`` -> ``("X.weight", "g")``, ``original1`` -> ``"v"``;
    ``X.weight_g`` -> ``("X.weight", "g")``, ``X.weight_v`` -> ``"v"``. A name of the older form is only a
    candidate: :func:`with_weight_norm` evaluates it only when both of the pair are there.
    """
    found = _parts(key)
    return None if found is None else found[:2]


def _parts(key: str) -> tuple[str, str, str] | None:
    """``weight_norm_key(key)`` and the form of the name: ``"parametrizations"`` or ``"weight_norm"``."""
    m = _PARAMETRIZED.fullmatch(key)
    if m:
        role, form = ("g" if m.group(3) == "0" else "v"), "parametrizations"
    else:
        m = _OLD.fullmatch(key)
        if not m:
            return None
        role, form = m.group(3), "weight_norm"
    prefix, name = m.group(1), m.group(2)
    return (f"{prefix}.{name}" if prefix else name), role, form


def weight_norm(g: np.ndarray, v: np.ndarray, g_key: str = "g", v_key: str = "v") -> np.ndarray:
    """The effective weight ``w = v * (g / ||v||)`` in float64, as torch's forward pass computes it.

    ``dim`` is read from ``g``'s shape: a scalar ``g`` is ``dim=None`` (one norm over all of ``v``); otherwise
    ``g`` has ``v``'s number of axes, all of size 1 but axis ``dim``, whose size is ``v``'s. (A ``g`` of size
    1 along every axis is ``dim=None`` too: it can only come from a ``dim`` along which ``v`` has size 1, and
    the norm over all other axes is then the norm over all of ``v``.)

    Parameters
    ----------
    g, v : ndarray
        The stored tensors (any float dtype; computed in float64 from their stored values).
    g_key, v_key : str
        Their names, for messages.

    Raises
    ------
    WeightNormError
        ``g`` or ``v`` holds NaN or Inf; ``g``'s shape does not fit ``v``; ``||v||`` is 0 (torch would divide
        by zero) or the result is not finite.
    """
    g = np.asarray(g, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    for key, t in ((g_key, g), (v_key, v)):
        bad = np.argwhere(~np.isfinite(t))
        if bad.size:
            where = tuple(int(i) for i in bad[0])
            what = "NaN" if np.isnan(t[where]) else "Inf"
            raise WeightNormError(
                f"weight-norm tensor {key!r} holds {what} at index {where}",
                hint="lipdsl bounds finite weights only; check how the checkpoint was saved",
            )
    if g.ndim == 0 or (g.ndim == v.ndim and g.size == 1):
        axes: tuple[int, ...] = tuple(range(v.ndim))
        per = "all of it"
    else:
        big = [i for i in range(g.ndim) if g.shape[i] != 1]
        if g.ndim != v.ndim or len(big) != 1 or g.shape[big[0]] != v.shape[big[0]]:
            raise WeightNormError(
                f"weight-norm tensors {g_key!r} (g) of shape {g.shape} and {v_key!r} (v) of shape {v.shape} "
                f"do not fit: g must be a scalar (dim=None) or have v's {v.ndim} axes, all of size 1 but "
                "one, the axis dim, of v's size there",
                hint="lipdsl reads the weight_norm of torch.nn.utils (w = g v / ||v||); for another "
                "parametrization, save the model after torch.nn.utils.parametrize.remove_parametrizations",
            )
        dim = big[0]
        axes = tuple(i for i in range(v.ndim) if i != dim)
        per = f"the norm over every axis but {dim}"
    # NOTE: v is scaled by a power of two 2**e >= max|v| before squaring, which is exact: the norm is the one
    # torch computes wherever torch's squares neither overflow nor underflow, and right where they would.
    scale = np.ldexp(1.0, np.frexp(np.max(np.abs(v), axis=axes, keepdims=True))[1])
    norm = scale * np.sqrt(np.sum(np.square(v / scale), axis=axes, keepdims=True))
    bad = np.argwhere(~(norm > 0) | ~np.isfinite(norm))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        which = "" if per == "all of it" else f" at index {where} ({per})"
        raise WeightNormError(
            f"weight-norm tensor {v_key!r} (v) has norm {norm[where]:g}{which}: w = g v / ||v|| is undefined",
            hint="torch would divide by zero too; check the checkpoint"
            if norm[where] == 0
            else "rescale the checkpoint's weights",
        )
    w = v * (g / norm)
    if not np.isfinite(w).all():
        raise WeightNormError(
            f"the weight g v / ||v|| of {g_key!r} and {v_key!r} overflows float64",
            hint="check the checkpoint",
        )
    return w


def weight_norm_pairs(names: Iterable[str]) -> dict[tuple[str, str], dict[str, str]]:
    """The weight-norm tensors among ``names``, by pair: (effective name, form of the names) -> {"g": key,
    "v": key}; a pair missing one of its tensors has one entry."""
    pairs: dict[tuple[str, str], dict[str, str]] = {}
    for key in names:
        found = _parts(key)
        if found is not None:
            pairs.setdefault((found[0], found[2]), {})[found[1]] = key
    return pairs


def with_weight_norm(tensors: Mapping[str, np.ndarray],
                     wanted: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """``tensors`` and, for each complete weight-norm pair in it (of those whose effective weight is
    ``wanted``, default all), the effective weight under its own name (``X.weight``; :func:`weight_norm_key`),
    placed right after the pair's second tensor. A pair not wanted is neither evaluated nor refused.

    Raises
    ------
    WeightNormError
        A pair does not give a finite weight (:func:`weight_norm`), or ``tensors`` also holds a tensor under
        the effective weight's name (which of the two the spec means is unknown); its ``weight`` is that
        name.
    """
    order = {key: i for i, key in enumerate(tensors)}
    pairs = weight_norm_pairs(tensors)
    complete = {named: pair for named, pair in pairs.items() if set(pair) == {"g", "v"}}
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        out[key] = value
        found = _parts(key)
        pair = None if found is None else complete.get((found[0], found[2]))
        if pair is None or key != max(pair.values(), key=order.__getitem__):
            continue  # an incomplete pair stays as it is; a complete one is evaluated at its second tensor
        name = found[0]
        if wanted is not None and not wanted(name):
            continue
        try:
            out[name] = _evaluated(tensors, complete, pair, name, found[2])
        except WeightNormError as err:
            err.weight = name
            raise
    return out


def _evaluated(tensors, complete, pair: dict[str, str], name: str, form: str) -> np.ndarray:
    """The effective weight ``name`` of ``pair``, refused if ``tensors`` defines it otherwise too."""
    other = next((p for (n, f), p in complete.items() if n == name and f != form), None)
    if name in tensors or other is not None:
        given = repr(name) if name in tensors else f"the pair {other['g']!r}, {other['v']!r}"
        raise WeightNormError(
            f"the state_dict holds both {given} and the weight-norm pair {pair['g']!r}, {pair['v']!r}, "
            f"two definitions of {name!r}",
            hint="keep one of them",
        )
    return weight_norm(tensors[pair["g"]], tensors[pair["v"]], pair["g"], pair["v"])

"""Read, parse and check a spec: path -> (Source, typed.Network); the front end in one call."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Mapping

from lipdsl.lang import typed
from lipdsl.lang.check import check
from lipdsl.errors import LipdslError
from lipdsl.lang.parse import parse
from lipdsl.lang.source import Source

__all__ = ["load_network", "check_source"]


def check_source(
    source: Source, *, allow_outside: bool = False, files: Mapping[str, bytes] | None = None
) -> typed.Network:
    """Parse and check a Source already in memory (e.g. ``Source("<string>", text)``).

    ``files``: the weight files' bytes, keyed by the names the spec writes (``weights.memory_key``); then
    nothing is read from disk (see ``check.check``).

    Raises
    ------
    LipdslError
        ParseError, ShapeError, WeightError or SpecError, with ``err.source`` set to ``source``.
    """
    paused = gc.isenabled()
    gc.disable()  # (1 MB of `let` lines builds ~10^6 objects and no cycles: the collector took 0.3 s of 1 s)
    try:
        return check(parse(source), source, allow_outside=allow_outside, files=files)
    except LipdslError as err:
        err.source = source
        raise
    finally:
        if paused:
            gc.enable()


def load_network(path: str | Path, allow_outside: bool = False) -> tuple[Source, typed.Network]:
    """Read the spec at ``path``, parse it and check it.

    Parameters
    ----------
    path : str or Path
        The ``.lip`` file; weight files are found relative to its directory.
    allow_outside : bool
        Allow weight paths that are absolute or leave the spec's directory.

    Returns
    -------
    (Source, typed.Network)
        The source (for rendering later errors against it) and the checked network.

    Raises
    ------
    LipdslError
        Any user error, with ``err.source`` set (None if the file could not be read), so that
        ``err.render(err.source)`` gives ``path:line:col: error: ...``.
    """
    try:
        source = Source.read(path)
    except OSError as exc:
        shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:56]}...{str(path)[-56:]}"
        err = LipdslError(f"cannot read spec {shown!r}: {exc.strerror or exc}")
        err.source = None
        raise err from None
    return source, check_source(source, allow_outside=allow_outside)

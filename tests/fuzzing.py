"""Fuzzing the front end: hypothesis strategies for valid specs and their mutations; one case -> an outcome.

``valid_specs()`` draws specs from the grammar with consistent shapes and inline weights (names, options,
expressions, ``let`` constants, comments and continued lines included); ``hostile_specs()`` mutates them
(tokens deleted, duplicated or swapped, random and non-UTF-8 bytes, huge numbers, deep nesting, very long
lines, truncation). ``run_case`` reads the bytes as ``Source.read`` does and runs parse + check: the only
acceptable outcomes are a typed network or a ``LipdslError`` that renders as ``path:line:col: error: ...``.
Used by tests/test_fuzz.py (a few hundred cases) and bench/fuzz.py (>= 10,000).
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from lipdsl.errors import LipdslError
from lipdsl.load import check_source
from lipdsl.source import Source

ACTIVATIONS = [
    "relu",
    "tanh",
    "sigmoid",
    "softplus",
    "hardtanh",
    "identity",
    "leaky_relu(0.1)",
    "elu",
    "elu(2)",
    "swish slope [-0.1, 1.1]",
    "tanh slope [0, 1/2]",
]
EXPRESSIONS = [
    "1/2",
    "sqrt(2)/2",
    "-3^2",
    "2**-1",
    "(1 + 2) * 3",
    "pi/4",
    "e",
    "abs(-1)",
    "tanh(1)",
    "0.25e1",
    ".5",
    "1e-3",
    "atan(1)*4",
    "exp(0)",
    "log(2)",
    "-(1)",
]


def _number(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return repr(round(draw(st.floats(-3, 3, allow_nan=False)), draw(st.integers(0, 6))))
    if kind < 8:
        return str(draw(st.integers(-5, 5)))
    return draw(st.sampled_from(EXPRESSIONS))


def _tensor(draw, shape: tuple[int, ...], multiline: bool) -> str:
    if len(shape) == 1:
        return "[" + ", ".join(_number(draw) for _ in range(shape[0])) + "]"
    sep = ",\n    " if multiline else ", "
    return "[" + sep.join(_tensor(draw, shape[1:], False) for _ in range(shape[0])) + "]"


@st.composite
def valid_specs(draw) -> str:
    """A spec the checker must accept: consistent shapes, inline weights, random formatting."""
    lines = []
    if draw(st.booleans()):
        lines.append(f"network {draw(st.sampled_from(['net', 'ecg', 'n_1', 'Fuzz']))}")
    if draw(st.booleans()):
        lines.append(
            "# " + draw(st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=30))
        )
    flat = draw(st.integers(0, 4)) == 0
    channels = draw(st.integers(1, 3))
    length = draw(st.integers(1, 12))
    lets = []
    if draw(st.booleans()):
        lets.append("h")
        lines.append(f"let h = {draw(st.sampled_from(EXPRESSIONS))}")
    size = lambda n: f"{n}" if draw(st.integers(0, 5)) else f"({n} + 0)"  # noqa: E731
    lines.append(
        f"input {size(channels)}"
        if flat
        else f"input {size(channels)} {draw(st.sampled_from(['x', '×']))} {length}"
    )
    multiline = draw(st.booleans())
    named = draw(st.booleans())
    n_layers = draw(st.integers(1, 5))
    convs = denses = 0
    for _ in range(n_layers):
        choice = draw(st.integers(0, 5))
        if not flat and choice <= 2:
            c_out = draw(st.integers(1, 3))
            k = draw(st.integers(1, 3))
            padding = draw(st.sampled_from(["causal", "same", "valid", "1", "0"]))
            dilation = draw(st.integers(1, 2))
            reach = dilation * (k - 1)
            pads = {"causal": reach, "same": reach, "valid": 0, "1": 2, "0": 0}[padding]
            if length + pads - reach < 1:
                padding, pads = "causal", reach
            stride = 1 if padding == "same" else draw(st.integers(1, 2))
            new_length = (length + pads - reach - 1) // stride + 1
            convs += 1
            name = f"c{convs}: " if named else ""
            w = _tensor(draw, (c_out, channels, k), multiline)
            if lets and draw(st.booleans()):
                w = w.replace("[[[", "[[[h*", 1)  # first entry uses the let constant
            opts = [f"kernel {k}", f"padding {padding}"]
            if stride != 1:
                opts.append(f"stride {stride}")
            if dilation != 1:
                opts.append(f"dilation {dilation}")
            opts.append(f"weight {w}")
            if draw(st.booleans()):
                opts.append(f"bias {_tensor(draw, (c_out,), False)}")
            opts = draw(st.permutations(opts))
            comma = ", " if draw(st.integers(0, 4)) else " "
            lines.append(f"conv1d {name}{channels} -> {c_out}, " + comma.join(opts))
            channels, length = c_out, new_length
        elif not flat and choice == 3 and length >= 2:
            op = draw(st.sampled_from(["avgpool", "maxpool"]))
            k = draw(st.integers(1, min(3, length)))
            stride = draw(st.integers(1, 3))
            lines.append(f"{op} {k}" + (f", stride {stride}" if draw(st.booleans()) else ""))
            if not lines[-1].endswith(f"stride {stride}"):
                stride = k
            length = (length - k) // stride + 1
        elif not flat and choice == 4:
            lines.append(draw(st.sampled_from(["flatten", "global_avgpool"])))
            channels = channels * length if lines[-1] == "flatten" else channels
            flat = True
        elif flat and choice <= 3:
            out = draw(st.integers(1, 4))
            denses += 1
            name = f"d{denses}: " if named else ""
            lines.append(
                f"dense {name}{channels} -> {out}, weight {_tensor(draw, (out, channels), multiline)}"
                + (f", bias {_tensor(draw, (out,), False)}" if draw(st.booleans()) else "")
            )
            channels = out
        else:
            lines.append(draw(st.sampled_from(ACTIVATIONS)))
        if draw(st.integers(0, 6)) == 0:
            lines[-1] += "   # " + draw(st.sampled_from(["comment", "x -> y", "[", "ü"]))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(lines) + (end if draw(st.integers(0, 5)) else "")


_TOKEN = re.compile(rb"\s+|[\[\](),:]|[^\s\[\](),:]+")
HUGE = [
    b"1e400",
    b"9" * 400,
    b"9" * 5000,
    b"10^10^10",
    b"2^2^2^2^2",
    b"1e-400",
    b"-0",
    b"0/0",
    b"1/0",
    b"999999999999999999999",
    b"10**308*10",
    b"exp(1000)",
    b"2^-2000",
    b"sin(10^100)",
]
NESTING = [
    b"(" * 2000 + b"1" + b")" * 2000,
    b"[" * 2000 + b"1" + b"]" * 2000,
    b"-" * 3000 + b"1",
    b"2^" * 500 + b"2",
    b"+".join([b"1"] * 3000),
    b"a" * 10000,
    b"[" * 40,
    b"(" * 40 + b"1",
]


@st.composite
def hostile_specs(draw) -> bytes:
    """A valid spec mangled by 1-4 mutations, as bytes (possibly not UTF-8)."""
    data = draw(valid_specs()).encode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        tokens = _TOKEN.findall(data) or [b""]
        i = draw(st.integers(0, len(tokens) - 1))
        j = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.integers(0, 10))
        if kind == 0:
            del tokens[i]
        elif kind == 1:
            tokens.insert(i, tokens[i])
        elif kind == 2:
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == 3:
            tokens.insert(i, draw(st.binary(min_size=1, max_size=8)))
        elif kind == 4:
            tokens[i] = draw(st.sampled_from(HUGE))
        elif kind == 5:
            tokens.insert(i, draw(st.sampled_from(NESTING)))
        elif kind == 6:
            tokens.insert(i, b"x" * draw(st.sampled_from([10_000, 200_000])))
        elif kind == 7:
            tokens.insert(
                i,
                draw(
                    st.sampled_from(
                        [
                            b"\xff",
                            b"\xc3",
                            b"\x00",
                            b"\xed\xa0\x80",
                            b"\xe2\x80\xa8",
                            b"\x0c",
                            b"\r",
                            b"\x85",
                            b"\t",
                        ]
                    )
                ),
            )
        elif kind == 8:
            tokens = tokens[:i]
        elif kind == 9:
            tokens.insert(
                i,
                draw(
                    st.sampled_from(
                        [
                            b"input 1 x 4",
                            b'weights "w.npz"',
                            b"let a = 1",
                            b"weight w",
                            b"bias b",
                            b'"w.npz":w',
                            b'"../w.npy"',
                            b'"/etc/passwd"',
                            b"flatten",
                            b"\n",
                            b",",
                            b"->",
                            b"*",
                        ]
                    )
                ),
            )
        else:
            tokens[i] = tokens[i].upper() if draw(st.booleans()) else tokens[i][::-1]
        data = b"".join(tokens)
    return data


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok", "error" (LipdslError rendered with path:line:col), "error-no-position", "traceback"
    seconds: float
    detail: str = ""


@functools.lru_cache(maxsize=None)
def fixture_dir(root: Path) -> Path:
    """A directory with the weight files the mutations name (``w.npz`` with keys w and b, ``w.npy``)."""
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "w.npz", w=np.ones((2, 2)), b=np.zeros(2))
    np.save(root / "w.npy", np.ones(2))
    return root


def run_case(data: bytes, directory: Path) -> Outcome:
    """Parse + check ``data`` as the spec ``directory/fuzz.lip``; classify what happened.

    Only ``LipdslError`` is caught: any other exception propagates (a bug), as it would in the CLI.
    """
    path = str(directory / "fuzz.lip")
    source = Source(path, data.decode("utf-8", errors="replace"))  # exactly what Source.read does
    t0 = time.perf_counter()
    try:
        check_source(source)
        kind, detail = "ok", ""
    except LipdslError as err:
        text = err.render(err.source)
        detail = text.splitlines()[0]
        assert detail.startswith(path + ":"), text
        assert "Traceback" not in text
        positioned = re.match(re.escape(path) + r":\d+:\d+: error: ", detail) is not None
        kind = "error" if positioned else "error-no-position"
    return Outcome(kind, time.perf_counter() - t0, detail)

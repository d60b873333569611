"""Fuzzing the front end: hypothesis strategies for valid specs and their mutations; one case -> an outcome.

``valid_specs()`` draws specs from the grammar with consistent shapes and inline weights (names, options,
expressions, ``let`` constants, comments and continued lines included); ``hostile_specs()`` mutates them
(tokens deleted, duplicated or swapped, random and non-UTF-8 bytes, huge numbers, deep nesting, very long
lines, truncation). ``run_case`` reads the bytes as ``Source.read`` does and runs parse + check: the only
acceptable outcomes are a typed network or a ``LipdslError`` that renders as ``path:line:col: error: ...``.
Used by tests/lang/test_fuzz.py (a few hundred cases) and bench/fuzz.py (>= 10,000).
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
from lipdsl.lang.load import check_source
from lipdsl.lang.source import Source

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


# -- issue 17: hostile classes beyond the spec text ----------------------------------------------------------
# Each generator draws a case description; ``run_class_case`` builds it in a fresh directory and classifies
# the outcome as ``run_case`` does ("ok", "error", "error-no-position"; anything else propagates as a bug).

def _npy_header(shape, version, descr="<f8") -> bytes:
    import struct

    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    fmt, pre = ("<H", 10) if version == (1, 0) else ("<I", 12)
    pad = (-(pre + len(header) + 1)) % 64
    size = struct.pack(fmt, len(header) + pad + 1)
    return b"\x93NUMPY" + bytes(version) + size + header + b" " * pad + b"\n"


@st.composite
def weight_file_cases(draw) -> dict:
    """An .npz or .npy with members of any name, header version, claimed shape, dtype and payload."""
    members = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["w", "w.npy", "w.bin", "w.npy.npy", "b.npy", "W", "w.NPY",
                                     "w" * 300 + ".npy", "\u2028.npy", "../w.npy", "/w.npy", "w\x00.npy"]))
        kind = draw(st.integers(0, 5))
        if kind == 0:
            payload = draw(st.binary(max_size=64))
        elif kind == 1:  # a header claiming a huge shape over a tiny payload
            version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0)]))
            payload = _npy_header((draw(st.integers(1, 10**15)),), version)
        elif kind == 2:  # a valid tensor, maybe the wrong shape or dtype
            shape = draw(st.sampled_from([(1, 2), (2,), (2, 2), (1, 2, 1), ()]))
            descr = draw(st.sampled_from(["<f8", "<f4", "<i8", "|b1", "<c16", "|O", "<U3"]))
            n = int(np.prod(shape))
            size = {"<f8": 8, "<f4": 4, "<i8": 8, "|b1": 1, "<c16": 16, "|O": 8, "<U3": 12}[descr] * n
            payload = _npy_header(shape, draw(st.sampled_from([(1, 0), (2, 0), (3, 0)])), descr) + bytes(size)
        elif kind == 3:  # a bad header dict or version
            payload = b"\x93NUMPY" + bytes([draw(st.integers(0, 9)), 0]) + draw(st.binary(max_size=40))
        elif kind == 4:  # zeros that deflate to almost nothing
            payload = b"\0" * draw(st.sampled_from([1 << 10, 1 << 20, 8 << 20]))
        else:  # NaN / inf entries
            payload = _npy_header((1, 2), (1, 0)) + np.array([np.nan, np.inf]).tobytes()
        members.append((name, payload))
    npy = draw(st.booleans())
    compressed = draw(st.booleans())
    key = draw(st.sampled_from(["w", "W", "b", "x", "w" * 300, "w" * 70_000]))
    return {"class": "weight files", "npy": npy, "members": members, "compressed": compressed, "key": key}


@st.composite
def path_cases(draw) -> dict:
    """Weight paths and spec paths that are links, FIFOs, directories, devices, long or absent."""
    target = draw(st.sampled_from(["link-in", "link-out", "link-dir-out", "link-loop", "fifo", "dir", "dev",
                                   "long", "missing", "dotdot", "abs"]))
    role = draw(st.sampled_from(["weights", "spec"]))
    suffix = draw(st.sampled_from([".npz", ".npy", ".lip", ""]))
    return {"class": "paths", "target": target, "role": role, "suffix": suffix}


LET_BOMBS = ["exp(-10^2000)", "exp(10^2000)", "exp(exp(exp(10)))", "sin(10^3000)", "tanh(10^2000)",
             "cos(9^9^9)", "2^2^2^2^2", "10^8000", "(1/3)^5000", "sqrt(2)^5000", "log(0)", "1/0",
             "atan(10^4000)",
             "exp(710)", "exp(-750)", "tan(pi/2)", "a^a^a", "e^e^e^e", "(10^300)^2", "10^-400", "1e-400",
             "abs(-10^3000)", "exp(a)*exp(-a)"]


@st.composite
def let_cases(draw) -> str:
    """``let`` expressions that explode (powers, functions of huge arguments) used several times."""
    expr = draw(st.sampled_from(LET_BOMBS))
    uses = draw(st.integers(1, 16))
    entries = ", ".join(["b"] * uses)
    return (f"let a = {draw(st.sampled_from(['2', '10^300', '10^2000', '1/3']))}\nlet b = {expr}\n"
            f"input {uses}\ndense d: {uses} -> 1, weight [[{entries}]]\n")


LAYER_TEMPLATES = {"conv1d": "{kw} c: 2 -> 2, kernel 1, weight [[[1], [1]], [[1], [1]]]",
                   "dense": "{kw} d: 16 -> 1, weight [[" + ", ".join(["1"] * 16) + "]]",
                   "avgpool": "{kw} 2", "maxpool": "{kw} 2", "global_avgpool": "{kw}", "flatten": "{kw}"}
PYTORCH_WORDS = ["linear", "Linear", "Conv1d", "conv1D", "MaxPool1d", "maxpool1d", "AvgPool1d", "avg_pool1d",
                 "AdaptiveAvgPool1d", "Flatten", "flatten()", "nn.ReLU()", "ReLU", "GELU", "SiLU", "Dense",
                 "BatchNorm1d", "Dropout(0.5)", "kernel_size=3", "kernal 5", "stride=2", "padding='same'"]


@st.composite
def keyword_cases(draw) -> str:
    """Layer lines with misspelled or PyTorch-style keywords and options."""
    kw = draw(st.sampled_from(sorted(LAYER_TEMPLATES)))
    line = LAYER_TEMPLATES[kw]
    how = draw(st.integers(0, 3))
    if how == 0:
        i = draw(st.integers(0, len(kw) - 1))
        word = kw[:i] + kw[i + 1:]
    elif how == 1 and len(kw) > 1:
        i = draw(st.integers(0, len(kw) - 2))
        word = kw[:i] + kw[i + 1] + kw[i] + kw[i + 2:]
    elif how == 2:
        word = draw(st.sampled_from(PYTORCH_WORDS))
    else:
        word = kw
        line = line + ", " + draw(st.sampled_from(["kernal 3", "kernel_size=3", "strides 1", "wieght w",
                                                     "padd 1", "bias=b", "dilations 2"]))
    return "input 2 x 8\n" + line.format(kw=word) + "\n"


API_VALUES = [0, -1, 1, 2, 2.5, 3.0, True, None, "2", float("nan"), float("inf"), -float("inf"), 1e300, -0.0,
              10**30, 1e-30]


@st.composite
def api_cases(draw) -> dict:
    """Keyword arguments of ``Network.solve`` / ``lower_bound`` / ``compare`` drawn from odd values."""
    fn = draw(st.sampled_from(["solve", "lower_bound", "compare", "export_sdpa"]))
    keys = {"solve": ["lift", "margin", "tol", "max_iterations", "frequencies", "length", "max_lmi"],
            "lower_bound": ["starts", "seed", "time_budget", "length"],
            "compare": ["length"], "export_sdpa": ["length"]}[fn]
    kw = {k: draw(st.sampled_from(API_VALUES)) for k in draw(st.lists(st.sampled_from(keys), min_size=1,
                                                                       max_size=3, unique=True))}
    method = draw(st.sampled_from(["naive", "naive-hinf", "naive_hinf", "dissipative", "lipsdp", "bogus"]))
    return {"class": "API arguments", "fn": fn, "kw": kw, "method": method}


# -- issue 17, round 3: commands on sizes beyond the machine, soundness corners, --lift, ONNX graphs,
# import --like templates, statement-count bombs. Each case runs a command (in-process, click's runner) or an
# importer; "wrong" marks an outcome that is not a traceback but breaks a promise (exit 0 without a bound, a
# bound below the Jacobian's norm, a spurious "infeasible", a dropped layer, an import that computes another
# function, a command past its time budget).

SIZE_COMMANDS = [["lower", "--time-budget", "2"], ["solve", "--method", "naive", "--timeout", "3"],
                 ["solve", "--method", "naive-hinf", "--timeout", "3"],
                 ["solve", "--method", "lipsdp-neuron", "--timeout", "3"],
                 ["solve", "--method", "lipsdp-layer", "--force", "--timeout", "3"],
                 ["solve", "--timeout", "3"], ["solve", "--frequencies", "9", "--timeout", "3"],
                 ["solve", "--frequencies", "none", "--timeout", "3"],
                 ["compare", "--methods", "naive,naive-hinf", "--lower-starts", "0", "--timeout", "3"],
                 ["compare", "--timeout", "3", "--time-budget", "1"],
                 ["show", "--state-space"], ["show", "--lowering"], ["show"], ["export", "-o", "{d}/x.dat-s"]]
#: seconds a command may run past its budget (3 s or 2 s above; `show` and `export` have none: 10 s)
SIZE_GRACE = 7.0


@st.composite
def size_cases(draw) -> dict:
    """A conv net with a kernel or input length far beyond the machine (or just within it), and a command."""
    kernel = draw(st.sampled_from([2, 9, 3000, 30_000, 300_000, 1_000_000]))
    channels = draw(st.sampled_from([1, 2, 4, 32]))
    while channels * channels * kernel > 4_000_000:
        channels //= 2
    length = draw(st.sampled_from([None, kernel, 2 * kernel, 60_000, 10**6, 10**9, "*"]))
    if isinstance(length, int) and length < kernel:
        length = kernel
    return {"class": "sizes", "kernel": kernel, "channels": channels, "length": length,
            "dilation": draw(st.sampled_from([1, 1, 16])), "gap": draw(st.booleans()),
            "command": draw(st.sampled_from(SIZE_COMMANDS)), "extra": draw(st.sampled_from(
                [[], [], ["--length", "100000"], ["--length", "1000000000"], ["--lift", "4"]]))}


def _size_spec(case: dict, d: Path) -> Path:
    c, k = case["channels"], case["kernel"]
    key = f"k{c}_{k}.npy"
    np.save(d / key, np.random.default_rng(k).standard_normal((c, c, k)) / np.sqrt(c * k))
    length = case["length"]
    shape = f"{c} x {length if length is not None else 1 + case['dilation'] * (k - 1)}"
    ones = ", ".join(["1"] * c)
    head = f"global_avgpool\ndense d: {c} -> 1, weight [[{ones}]]\n" if case["gap"] or length == "*" else ""
    text = (f"input {shape}\nconv1d c: {c} -> {c}, kernel {k}, dilation {case['dilation']}, padding causal, "
            f'weight "{key}"\nrelu\n{head}')
    (d / "net.lip").write_text(text)
    return d / "net.lip"


_BOUND = re.compile(r"Lipschitz upper bound of .*?: (\S+)")


def _cli(args: list[str]):
    from click.testing import CliRunner

    from lipdsl.app.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _run_sizes(case: dict, d: Path) -> tuple[str, str]:
    spec = _size_spec(case, d)
    command = [a.replace("{d}", str(d)) for a in case["command"]]
    extra = case["extra"]  # (where a command has no such option: a usage error, exit 2)
    t0 = time.monotonic()
    res = _cli(command[:1] + extra + command[1:] + [spec])
    dt = time.monotonic() - t0
    out = res.stdout + res.stderr
    budget = next((float(command[i + 1]) for i, a in enumerate(command)
                   if a in ("--timeout", "--time-budget")), 10.0)
    if dt > budget + SIZE_GRACE:
        return "wrong", f"{command} ran {dt:.1f} s (budget {budget} s)"
    if "Traceback" in out:
        return "wrong", "a traceback in the output"
    if res.exit_code not in (0, 1, 2, 3):
        return "wrong", f"exit {res.exit_code}"
    if command[0] == "solve" and res.exit_code == 0 and not _BOUND.search(res.stdout):
        return "wrong", "exit 0 without a bound"
    if command[0] == "solve" and res.exit_code != 0 and _BOUND.search(res.stdout):
        return "wrong", f"exit {res.exit_code} with a bound printed"
    return ("ok" if res.exit_code == 0 else "error"), out.strip().splitlines()[-1] if out.strip() else ""


@st.composite
def small_nets(draw, flat_then_activation: bool = False) -> tuple[str, int]:
    """A small conv net's spec text (inline weights) and its input length."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = draw(st.integers(1, 3))
    n = draw(st.integers(2, 9))
    lines = [f"input {c} x {n}"]
    for i in range(draw(st.integers(1, 2))):
        co, k = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        w = np.round(rng.standard_normal((co, c, k)), 3).tolist()
        stride = draw(st.sampled_from([1, 1, 2]))
        lines.append(f"conv1d c{i}: {c} -> {co}, kernel {k}, padding causal, stride {stride}, weight {w}")
        n = (n - 1) // stride + 1
        c = co
        lines.append(draw(st.sampled_from(["relu", "tanh", "leaky_relu(0.1)", "sigmoid"])))
    pool = draw(st.sampled_from(["", "avgpool 2", "maxpool 2"]))
    if pool and n >= 2:
        lines.append(pool)
        n = (n - 2) // 2 + 1
    lines.append("flatten")
    f = c * n
    if flat_then_activation or draw(st.booleans()):
        lines.append(draw(st.sampled_from(["relu", "tanh", "leaky_relu(0.2)"])))
    if draw(st.booleans()):
        h = draw(st.integers(1, 4))
        lines.append(f"dense h: {f} -> {h}, weight {np.round(rng.standard_normal((h, f)), 3).tolist()}")
        lines.append(draw(st.sampled_from(["relu", "tanh"])))
        f = h
    return "\n".join(lines), f


@st.composite
def soundness_cases(draw) -> dict:
    """A small net whose last layer (or an extra first conv layer) is scaled by 10^-E .. 10^E: the bound is
    10^-E .. 10^E times the unscaled net's (f_s(x) = s f(x), or f(s x): any activation), so it must not print
    as 0 or fall below 10^E times the unscaled Jacobian's norm; and a method."""
    text, f = draw(small_nets())
    return {"class": "soundness", "text": text, "features": f,
            "where": draw(st.sampled_from(["last", "first"])),
            "kernel": draw(st.integers(1, 3)),
            "exponent": draw(st.sampled_from([0, -20, -150, -200, -300, -320, -330, 150, 200, 300])),
            "method": draw(st.sampled_from(["dissipative", "naive", "naive-hinf", "lipsdp-neuron",
                                            "lipsdp-layer"])), "seed": draw(st.integers(0, 1000))}


def _jacobian_norm(text: str, seed: int, points: int = 8) -> float:
    from lipdsl.lang.load import check_source
    from lipdsl.model.forward import jacobian

    net = check_source(Source("<jac>", text))
    rng = np.random.default_rng(seed)
    shape = (net.input_shape.channels, net.input_shape.length)
    return max(float(np.linalg.norm(jacobian(net, u), 2)) for u in rng.standard_normal((points,) + shape))


def _bound_of(res) -> float | None:
    m = _BOUND.search(res.stdout)
    return None if m is None else float(m.group(1))


def _run_soundness(case: dict, d: Path) -> tuple[str, str]:
    e = case["exponent"]
    scale = f"10^{e}" if e >= 0 else f"10^({e})"
    rng = np.random.default_rng(case["seed"])
    first = case.get("where") == "first"
    factor = "" if first else "s*"
    last = f"dense out: {case['features']} -> 1, weight [[" + ", ".join(
        f"{factor}{v}" for v in np.round(rng.standard_normal(case["features"]), 3)) + "]]"
    body = case["text"]
    if first:  # an extra first layer, conv1d c -> c of s * W: f_s(x) = f(s x)
        head, _, rest = body.partition("\n")
        c = int(head.split()[1])
        w = [[[f"s*{v}" for v in np.round(rng.standard_normal(case["kernel"]), 3)] for _ in range(c)]
             for _ in range(c)]
        body = (f"{head}\nconv1d sc: {c} -> {c}, kernel {case['kernel']}, padding causal, weight "
                f"{str(w).replace(chr(39), '')}\n{rest}")
    text = f"let s = {scale}\n{body}\n{last}\n"
    unscaled = f"let s = 1\n{body}\n{last}\n"
    (d / "net.lip").write_text(text)
    res = _cli(["solve", "--method", case["method"], "--timeout", "20", d / "net.lip"])
    out = res.stdout + res.stderr
    if res.exit_code not in (0, 1, 3) or "Traceback" in out:
        return "wrong", f"exit {res.exit_code}: {out[-300:]}"
    bound = _bound_of(res)
    if res.exit_code == 0 and bound is None:
        return "wrong", "exit 0 without a bound"
    if res.exit_code != 0:
        return "error", out.strip().splitlines()[-1]
    low = _jacobian_norm(unscaled, case["seed"])
    lower = low * 10.0 ** e if -308 <= e <= 308 else None
    if lower is not None and low > 0 and bound < lower * (1 - 1e-9):
        return "wrong", f"{case['method']}: {bound} < Jacobian norm {lower}"
    if bound == 0 and low > 0:
        return "wrong", f"{case['method']}: 0 printed for a nonzero map"
    return "ok", ""


@st.composite
def lift_cases(draw) -> dict:
    """A conv net with flatten -> activation, solved with --lift L."""
    text, f = draw(small_nets(flat_then_activation=True))
    w = np.round(np.random.default_rng(draw(st.integers(0, 1000))).standard_normal(f), 3).tolist()
    return {"class": "lift", "text": f"{text}\ndense out: {f} -> 1, weight [{w}]\n",
            "lift": draw(st.integers(1, 5)), "seed": draw(st.integers(0, 1000))}


def _run_lift(case: dict, d: Path) -> tuple[str, str]:
    (d / "net.lip").write_text(case["text"])
    res = _cli(["solve", "--lift", case["lift"], "--timeout", "20", d / "net.lip"])
    out = res.stdout + res.stderr
    if res.exit_code not in (0, 1, 3) or "Traceback" in out:
        return "wrong", f"exit {res.exit_code}: {out[-300:]}"
    if "infeasible" in out:
        return "wrong", "a spurious 'infeasible': " + out.strip().splitlines()[-1]
    if res.exit_code != 0:
        return "error", out.strip().splitlines()[-1]
    bound = _bound_of(res)
    low = _jacobian_norm(case["text"], case["seed"])
    if bound is None or bound < low * (1 - 1e-7):
        return "wrong", f"--lift {case['lift']}: bound {bound} below the Jacobian norm {low}"
    return "ok", ""


@st.composite
def onnx_cases(draw) -> dict:
    """A small ONNX chain: Conv (pads or auto_pad, strides, dilations), Add of constants of any broadcast
    shape, Pad, Dropout (training mode or not), activations, pools, Flatten + Gemm, batch norm; sometimes a
    huge declared shape or external data."""
    c = draw(st.integers(1, 3))
    n = draw(st.integers(4, 12))
    ops = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "add", "mul", "pad", "dropout", "act", "pool", "bn"]))
        op = {"kind": kind}
        if kind == "conv":
            op.update(out=draw(st.integers(1, 3)), k=draw(st.integers(1, 4)),
                      stride=draw(st.sampled_from([1, 1, 2])),
                      dilation=draw(st.sampled_from([1, 1, 2])), bias=draw(st.booleans()),
                      pad=draw(st.sampled_from(["none", "pads", "SAME_UPPER", "SAME_LOWER", "VALID"])),
                      pads=(draw(st.integers(0, 3)), draw(st.integers(0, 3))))
        elif kind in ("add", "mul"):
            op.update(shape=draw(st.sampled_from(["c11", "1c1", "c1", "1", "n", "1cn", "311", "11n",
                                                  "scalar"])),
                      left=draw(st.booleans()))
        elif kind == "pad":
            op.update(pads=(draw(st.integers(0, 2)), draw(st.integers(0, 2))),
                      mode=draw(st.sampled_from(["constant", "constant", "reflect", "edge"])),
                      value=draw(st.sampled_from([0.0, 0.0, 1.0])))
        elif kind == "dropout":
            op.update(training=draw(st.sampled_from([None, False, True])),
                      ratio=draw(st.sampled_from([0.0, 0.5])))
        elif kind == "act":
            op.update(name=draw(st.sampled_from(["Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "Softplus",
                                                 "Abs", "Exp"])))
        elif kind == "pool":
            op.update(name=draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"])),
                      k=draw(st.integers(1, 3)), stride=draw(st.integers(1, 3)))
        ops.append(op)
    head = draw(st.sampled_from(["none", "gemm", "matmul"]))
    hostile = draw(st.sampled_from([None] * 6 + ["huge-dims", "external-missing", "external-huge",
                                                 "raw-short", "batch-2"]))
    return {"class": "onnx", "c": c, "n": n, "ops": ops, "head": head, "hostile": hostile,
            "seed": draw(st.integers(0, 1000))}


def _onnx_model(case: dict, d: Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(case["seed"])
    c, n = case["c"], case["n"]
    nodes, inits = [], []
    x = "x"
    count = 0

    def fresh(prefix):
        nonlocal count
        count += 1
        return f"{prefix}{count}"

    def const(values, name=None):
        name = name or fresh("k")
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32), name))
        return name

    for op in case["ops"]:
        y = fresh("t")
        kind = op["kind"]
        if kind == "conv":
            w = const(rng.standard_normal((op["out"], c, op["k"])))
            ins = [x, w] + ([const(rng.standard_normal(op["out"]))] if op["bias"] else [])
            attrs = {"kernel_shape": [op["k"]], "strides": [op["stride"]], "dilations": [op["dilation"]]}
            if op["pad"] == "pads":
                attrs["pads"] = list(op["pads"])
            elif op["pad"] != "none":
                attrs["auto_pad"] = op["pad"]
            nodes.append(helper.make_node("Conv", ins, [y], **attrs))
            c = op["out"]
        elif kind in ("add", "mul"):
            shape = {"c11": (c, 1, 1), "1c1": (1, c, 1), "c1": (c, 1), "1": (1,), "n": (n,), "1cn": (1, c, n),
                     "311": (3, 1, 1), "11n": (1, 1, n), "scalar": ()}[op["shape"]]
            k = const(rng.standard_normal(shape))
            nodes.append(helper.make_node("Add" if kind == "add" else "Mul",
                                          [k, x] if op["left"] else [x, k], [y]))
        elif kind == "pad":
            pads = fresh("p")
            widths = np.array([0, 0, op["pads"][0], 0, 0, op["pads"][1]], np.int64)
            inits.append(numpy_helper.from_array(widths, pads))
            ins = [x, pads]
            if op["value"]:
                ins.append(const(np.array(op["value"])))
            nodes.append(helper.make_node("Pad", ins, [y], mode=op["mode"]))
        elif kind == "dropout":
            ins = [x]
            if op["training"] is not None:
                r = const(np.array(op["ratio"]))
                t = fresh("tm")
                inits.append(numpy_helper.from_array(np.array(op["training"]), t))
                ins += [r, t]
            nodes.append(helper.make_node("Dropout", ins, [y]))
        elif kind == "act":
            nodes.append(helper.make_node(op["name"], [x], [y]))
        elif kind == "pool":
            if op["name"] == "GlobalAveragePool":
                nodes.append(helper.make_node(op["name"], [x], [y]))
            else:
                nodes.append(helper.make_node(op["name"], [x], [y], kernel_shape=[op["k"]],
                                              strides=[op["stride"]]))
        else:  # bn
            ins = [x] + [const(v) for v in (rng.uniform(0.5, 2, c), rng.standard_normal(c),
                                           rng.standard_normal(c), rng.uniform(0.5, 2, c))]
            nodes.append(helper.make_node("BatchNormalization", ins, [y], epsilon=1e-5))
        x = y
    if case["head"] != "none":  # global average pool (c features), flatten, a dense layer
        g, f = fresh("g"), fresh("f")
        nodes.append(helper.make_node("GlobalAveragePool", [x], [g]))
        nodes.append(helper.make_node("Flatten", [g], [f], axis=1))
        y = fresh("t")
        if case["head"] == "gemm":
            nodes.append(helper.make_node("Gemm", [f, const(rng.standard_normal((2, c)))], [y], transB=1))
        else:
            nodes.append(helper.make_node("MatMul", [f, const(rng.standard_normal((c, 2)))], [y]))
        x = y
    h = case["hostile"] if inits else None  # (a graph without initializers has nothing to spoil)
    if h == "huge-dims" and inits:
        t = inits[0]
        t.dims[:] = [10**6, 10**6, 10**3][:len(t.dims)] or [10**12]
    elif h in ("external-missing", "external-huge") and inits:
        t = inits[0]
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        loc = "w.bin"
        if h == "external-huge":
            with open(d / loc, "wb") as fh:
                fh.truncate(2 << 30)  # sparse: 2 GB of zeros that take no disk
            t.dims[:] = [1 << 28]
        t.external_data.add(key="location", value=loc)
    elif h == "raw-short" and inits:
        inits[0].raw_data = inits[0].raw_data[:3]
    batch = 2 if h == "batch-2" else 1
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, case["c"], case["n"]])
    graph = helper.make_graph(nodes, "fuzz", [x_info],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = d / "m.onnx"
    onnx.save(model, str(path))
    return path, h


def _run_onnx(case: dict, d: Path) -> tuple[str, str]:
    from lipdsl.importers.importer import import_onnx

    path, hostile = _onnx_model(case, d)
    imported = import_onnx(path)  # LipdslError: refused (caught by the caller)
    net = imported.to_network()
    if hostile in ("huge-dims", "external-missing", "external-huge", "raw-short"):
        return "wrong", f"a {case['hostile']} model was accepted"
    try:
        import onnx.reference
    except ImportError:
        return "ok", ""
    from lipdsl.model.forward import forward

    try:
        ref = onnx.reference.ReferenceEvaluator(str(path))
    except Exception:  # noqa: BLE001 - the reference itself cannot run the model: nothing to compare
        return "ok", ""
    rng = np.random.default_rng(case["seed"] + 1)
    for _ in range(3):
        u = rng.standard_normal((case["c"], case["n"]))
        try:
            want = np.asarray(ref.run(None, {"x": u[None].astype(np.float32)})[0], dtype=float)
        except Exception:  # noqa: BLE001
            return "ok", ""
        got = np.asarray(forward(net, u), dtype=float)
        if want.size != got.size or not np.allclose(want.ravel(), got.ravel(), rtol=1e-3, atol=1e-3):
            return "wrong", f"imported net computes another function: {got.ravel()[:4]} vs {want.ravel()[:4]}"
    return "ok", ""


SEPARATORS = ["\u2028", "\u2029", "\x0c", "\x0b", "\x85", "\x1c", "\x1d", "\x1e", "\r"]


@st.composite
def like_cases(draw) -> dict:
    """``import --like`` templates with odd line separators in comments (Lark splits lines at '\n' only)."""
    layers = []
    c = 2
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "act", "dense"]))
        if kind == "conv":
            layers.append(f"conv1d c{i}: {c} -> 2, kernel 2, padding causal, weight l{i}.weight")
        elif kind == "act":
            layers.append("relu")
        else:
            layers.append(f"dense d{i}: 8 -> 8, weight l{i}.weight")
    # dense layers only on a flat input: the conv layers first, then a flatten (2 x 4 = 8 features)
    convs = [x for x in layers if not x.startswith("dense")]
    denses = [x for x in layers if x.startswith("dense")]
    body = convs + (["flatten"] if denses and convs else []) + denses
    lines = ["input 2 x 4" if convs else "input 8"]
    for line in body:
        if draw(st.booleans()):
            sep = draw(st.sampled_from(SEPARATORS))
            lines.append(draw(st.sampled_from([f"# note{sep} more", f"#{sep}", f"# a{sep}b{sep}c"])))
        lines.append(line)
    if draw(st.booleans()):  # (before the first layer: layers above a weights line would have no file)
        lines.insert(draw(st.integers(0, 1)), 'weights "old.npz"')
    return {"class": "import --like", "text": "\n".join(lines) + "\n", "layers": len(body)}


def _run_like(case: dict, d: Path) -> tuple[str, str]:
    from lipdsl.importers.pytorch import import_state_dict

    (d / "arch.lip").write_text(case["text"], encoding="utf-8")
    rng = np.random.default_rng(0)
    state = {}
    for m in re.finditer(r"(conv1d|dense) (\w+): (\d+) -> (\d+)(?:, kernel (\d+))?.*?weight (l\d+)\.weight",
                         case["text"]):
        shape = (int(m.group(4)), int(m.group(3))) + ((int(m.group(5)),) if m.group(5) else ())
        state[f"{m.group(6)}.weight"] = rng.standard_normal(shape)
    spec, _ = import_state_dict(state, d / "arch.lip", d / "out.lip")
    from lipdsl.lang.load import load_network

    _, net = load_network(spec)
    if len(net.layers) != case["layers"]:
        return "wrong", f"{len(net.layers)} layers imported from a template of {case['layers']}"
    return "ok", ""


@st.composite
def statement_cases(draw) -> dict:
    """Many short statements behind line starts that are not '\n' (\f, \r, \v, U+2028 ...), or many lets."""
    sep = draw(st.sampled_from(["\n", "\n\x0c", "\n\r", "\r", "\x0c", "\n\x0b", "\u2028", "\n\u2028", "\n\t",
                                "\n \x0c", "\r\n"]))
    stmt = draw(st.sampled_from(["relu", "identity", "let a = 1", "# c", "tanh", "avgpool 1"]))
    count = draw(st.sampled_from([10, 1000, 2500, 50_000, 150_000]))
    return {"class": "statement bombs", "text": "input 2 x 8" + sep + sep.join([stmt] * count) + "\n"}


def _run_statements(case: dict, d: Path) -> tuple[str, str]:
    """The statement limit holds whatever separates the statements, and parse + check stays under 2 s."""
    from lipdsl.lang import parse as parse_module
    from lipdsl.lang.load import load_network

    (d / "fuzz.lip").write_text(case["text"], encoding="utf-8", newline="")
    t0 = time.process_time()
    try:
        _, net = load_network(d / "fuzz.lip")
    except LipdslError as err:
        net, error = None, err
    seconds = time.process_time() - t0
    if seconds > 2.0:
        return "wrong", f"parse + check took {seconds:.2f} s of CPU"
    if net is None:
        raise error
    if len(net.layers) > parse_module.MAX_STATEMENTS:
        return "wrong", f"{len(net.layers)} layers accepted past the statement limit"
    return "ok", ""


#: what a "sizes" child may use: lipdsl is told the machine has CHILD_MEMORY bytes (so it refuses above
#: that) and the child's address space is capped a few GiB above it (Python, numpy and BLAS map ~1.5 GiB):
#: a MemoryError there is an allocation beyond what the command announced.
CHILD_MEMORY = 3 << 30
CHILD_ADDRESS_SPACE = 7 << 30


def _in_child(fn, case: dict, d: Path) -> tuple[str, str]:
    """``fn(case, d)`` in a forked child (its memory is returned to the machine when it ends); a traceback
    in the child is raised here as a RuntimeError with the child's text."""
    import json
    import os
    import resource
    import signal
    import traceback

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
            from lipdsl import limits

            limits.available_memory = lambda: CHILD_MEMORY
            try:
                out = list(fn(case, d))
            except LipdslError as err:
                out = ["error", err.message]
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
            out = ["traceback", traceback.format_exc()]
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    try:
        chunks = []
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.waitpid(pid, 0)
    except BaseException:  # (the harness's alarm: a hang) the child goes with it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    if not chunks:
        raise RuntimeError(f"the child died without an answer on {case!r}")
    kind, detail = json.loads(b"".join(chunks))
    if kind == "traceback":
        raise RuntimeError(f"in the child, on {case!r}:\n{detail}")
    return kind, detail


CASE_RUNNERS = {"sizes": _run_sizes, "soundness": _run_soundness, "lift": _run_lift, "onnx": _run_onnx,
                "import --like": _run_like, "statement bombs": _run_statements}


def _build_weight_files(case: dict, d: Path) -> str:
    import zipfile

    if case["npy"]:
        (d / "w.npy").write_bytes(case["members"][0][1])
        return 'input 2\ndense a: 2 -> 1, weight "w.npy"\n'
    mode = zipfile.ZIP_DEFLATED if case["compressed"] else zipfile.ZIP_STORED
    with zipfile.ZipFile(d / "w.npz", "w", mode) as z:
        seen = set()
        for name, payload in case["members"]:
            stored = zipfile.ZipInfo(name).filename  # (what the archive keeps: cut at a NUL, '/' for os.sep)
            if stored not in seen:
                seen.add(stored)
                z.writestr(name, payload)
    return f'input 2\ndense a: 2 -> 1, weight "w.npz":{case["key"]}\n'


def _build_path(case: dict, d: Path) -> Path:
    """The spec to check: for role 'weights' a spec naming the odd path; for 'spec' the odd path itself."""
    import os

    inside, outside = d / "in", d / "out"
    inside.mkdir()
    outside.mkdir()
    np.save(outside / "w.npy", np.ones((1, 2)))
    (outside / "secret.lip").write_text("input 2\nrelu\n")
    name = "x" + case["suffix"]
    p = inside / name
    t = case["target"]
    if t == "link-in":
        np.save(inside / "real.npy", np.ones((1, 2)))
        (inside / "real.lip").write_text("input 2\nrelu\n")
        p.symlink_to(inside / ("real.lip" if case["role"] == "spec" else "real.npy"))
    elif t == "link-out":
        p.symlink_to(outside / ("secret.lip" if case["role"] == "spec" else "w.npy"))
    elif t == "link-dir-out":
        (inside / "sub").symlink_to(outside, target_is_directory=True)
        name = "sub/" + ("secret.lip" if case["role"] == "spec" else "w.npy")
        p = inside / name
    elif t == "link-loop":
        p.symlink_to(p)
    elif t == "fifo":
        os.mkfifo(p)
    elif t == "dir":
        p.mkdir()
    elif t == "dev":
        p.symlink_to("/dev/zero")
    elif t == "long":
        name = "y" * 300 + case["suffix"]
        p = inside / name
    elif t == "dotdot":
        name = "../out/w.npy"
        p = inside / name
    elif t == "abs":
        name = str(outside / "w.npy")
        p = Path(name)
    if case["role"] == "spec":
        return p
    spec = inside / "spec.lip"
    spec.write_text(f'input 2\ndense a: 2 -> 1, weight "{name}"\n')
    return spec


def run_class_case(case, directory: Path) -> Outcome:
    """Run one case of the classes above (a dict, or spec text) in a fresh folder below ``directory``."""
    import tempfile

    from lipdsl.lang.load import load_network

    d = Path(tempfile.mkdtemp(dir=directory))
    t0 = time.perf_counter()
    try:
        if isinstance(case, str):
            path = d / "fuzz.lip"
            path.write_text(case, encoding="utf-8")
            load_network(path)
        elif case["class"] == "weight files":
            path = d / "fuzz.lip"
            path.write_text(_build_weight_files(case, d))
            load_network(path)
        elif case["class"] == "paths":
            path = _build_path(case, d)
            load_network(path)
        elif case["class"] == "sizes":  # in a child process with a memory cap (the machine is shared)
            kind, detail = _in_child(_run_sizes, case, d)
            return Outcome(kind, time.perf_counter() - t0, detail)
        elif case["class"] in CASE_RUNNERS:
            kind, detail = CASE_RUNNERS[case["class"]](case, d)
            return Outcome(kind, time.perf_counter() - t0, detail)
        else:
            import lipdsl

            net = lipdsl.parse("input 1 x 8\nconv1d c: 1 -> 1, kernel 2, padding causal, weight [[[1, -1]]]\n"
                               "relu\nflatten\ndense d: 8 -> 1, weight [[1, 1, 1, 1, 1, 1, 1, 1]]\n")
            kw = dict(case["kw"])
            if case["fn"] == "solve":
                net.solve(case["method"] if case["method"] in ("naive", "naive-hinf", "naive_hinf", "bogus")
                          else "naive", **kw)
            elif case["fn"] == "lower_bound":
                kw.setdefault("time_budget", 0.05)
                if isinstance(kw["time_budget"], (int, float)) and kw["time_budget"] > 0.05:
                    kw["time_budget"] = 0.05
                net.lower_bound(**kw)
            elif case["fn"] == "compare":
                net.compare(methods=("naive",), lower=False, **kw)
            else:
                net.export_sdpa(d / "x.dat-s", **kw)
        kind, detail = "ok", ""
    except LipdslError as err:
        text = err.render(err.source)
        detail = text.splitlines()[0]
        assert "Traceback" not in text
        positioned = re.match(r".*:\d+:\d+: error: ", detail) or err.span is None
        kind = "error" if positioned else "error-no-position"
    return Outcome(kind, time.perf_counter() - t0, detail)


#: The generator of each class (spec text ones are run by ``run_class_case`` as files).
CLASSES = {
    "weight files": weight_file_cases,
    "paths": path_cases,
    "let bombs": let_cases,
    "keyword typos": keyword_cases,
    "API arguments": api_cases,
    "sizes": size_cases,
    "soundness": soundness_cases,
    "lift": lift_cases,
    "onnx": onnx_cases,
    "import --like": like_cases,
    "statement bombs": statement_cases,
}
#: classes that run commands or solvers (seconds per case): fewer cases in bench/fuzz.py and tests
SLOW_CLASSES = ("sizes", "soundness", "lift", "onnx")

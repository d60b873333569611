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
        name = draw(st.sampled_from(["w", "w.npy", "w.bin", "w.npy.npy", "b.npy", "W", "w.NPY"]))
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
    key = draw(st.sampled_from(["w", "W", "b", "x"]))
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


def _build_weight_files(case: dict, d: Path) -> str:
    import zipfile

    if case["npy"]:
        (d / "w.npy").write_bytes(case["members"][0][1])
        return 'input 2\ndense a: 2 -> 1, weight "w.npy"\n'
    mode = zipfile.ZIP_DEFLATED if case["compressed"] else zipfile.ZIP_STORED
    with zipfile.ZipFile(d / "w.npz", "w", mode) as z:
        seen = set()
        for name, payload in case["members"]:
            if name not in seen:
                seen.add(name)
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
}

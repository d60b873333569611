"""Test helper: build typed networks directly (no parser): layer list -> typed.Network with shapes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lipdsl.lang import typed
from lipdsl.lang.activations import slope as activation_slope
from lipdsl.lang.source import Source
from lipdsl.lang.typed import Shape
from repo_paths import DATA
from repo_paths import SHARED as _SHARED
from repo_paths import SPECS

SHARED = _SHARED / "cases"
SPECS_WEIGHTS = SPECS / "weights"



def case_file(*parts: str) -> Path | None:
    """A shared reference file (``../shared/cases/...``) or its copy in ``specs/weights``, else None."""
    p = SHARED.joinpath(*parts)
    if p.exists():
        return p
    q = SPECS_WEIGHTS / parts[-1]
    return q if q.exists() else None


class Builder:
    """Append layers to a network, computing every in/out shape as PyTorch would."""

    def __init__(self, channels: int, length: int | None = None, flat: bool = False, name: str = "net"):
        self.name = name
        self.input_shape = Shape(channels, length, flat)
        self.shape = self.input_shape
        self.layers: list = []

    def _name(self, kind: str) -> str:
        return f"{kind}{len(self.layers) + 1}"

    def conv(self, weight, *, stride=1, dilation=1, padding="valid", bias=None) -> "Builder":
        w = np.asarray(weight, dtype=float)
        c_out, c_in, k = w.shape
        assert not self.shape.flat and self.shape.channels == c_in
        span = dilation * (k - 1)
        if padding == "valid":
            pl = pr = 0
        elif padding == "causal":
            pl, pr = span, 0
        elif padding == "same":
            pl, pr = span // 2, span - span // 2
        else:
            pl = pr = int(padding)
        n = self.shape.length
        n_out = None if n is None else (n + pl + pr - span - 1) // stride + 1
        assert n_out is None or n_out >= 1
        out = Shape(c_out, n_out)
        self.layers.append(typed.Conv1d(self._name("conv"), None, c_in, c_out, k, stride, dilation, pl, pr,
                                        str(padding), w, None if bias is None else np.asarray(bias, float),
                                        self.shape, out))
        self.shape = out
        return self

    def act(self, function="relu", parameter=None, slope=None) -> "Builder":
        if slope is None:
            if function == "leaky_relu" and parameter is None:
                parameter = 0.01  # PyTorch's default
            slope = activation_slope(function, parameter)
        self.layers.append(typed.Activation(self._name(function), None, function, float(slope[0]),
                                            float(slope[1]), self.shape, self.shape, parameter))
        return self

    def pool(self, op="avg", kernel=2, stride=None) -> "Builder":
        stride = kernel if stride is None else stride
        n = self.shape.length
        out = Shape(self.shape.channels, None if n is None else (n - kernel) // stride + 1)
        self.layers.append(typed.Pool(self._name(op + "pool"), None, op, kernel, stride, self.shape, out))
        self.shape = out
        return self

    def gap(self) -> "Builder":
        out = Shape(self.shape.channels, None, True)
        self.layers.append(typed.GlobalAvgPool(self._name("gap"), None, self.shape, out))
        self.shape = out
        return self

    def flatten(self) -> "Builder":
        out = Shape(self.shape.size, None, True)
        self.layers.append(typed.Flatten(self._name("flatten"), None, self.shape, out))
        self.shape = out
        return self

    def dense(self, weight, bias=None) -> "Builder":
        w = np.asarray(weight, dtype=float)
        assert self.shape.flat and self.shape.channels == w.shape[1], (self.shape, w.shape)
        out = Shape(w.shape[0], None, True)
        self.layers.append(typed.Dense(self._name("fc"), None, w.shape[1], w.shape[0], w,
                                       None if bias is None else np.asarray(bias, float), self.shape, out))
        self.shape = out
        return self

    def build(self) -> typed.Network:
        return typed.Network(self.name, self.input_shape, tuple(self.layers))


def random_head(b: Builder, rng: np.random.Generator, act: str, p_gap: float,
                max_outputs: int) -> typed.Network:
    """Finish a random conv stack: global average pool (probability ``p_gap``) or flatten, sometimes a hidden
    dense layer with ``act``, then a dense output of 1 .. ``max_outputs - 1`` (the draws in this order)."""
    if rng.random() < p_gap:
        b.gap()
    else:
        b.flatten()
    if rng.random() < 0.5:
        h = int(rng.integers(2, 6))
        b.dense(rng.normal(size=(h, b.shape.channels))).act(act)
    return b.dense(rng.normal(size=(int(rng.integers(1, max_outputs)), b.shape.channels))).build()


def dense_net(weights, activation="relu", biases=None) -> typed.Network:
    """Dense net ``W_l phi(... phi(W_1 x))`` from a list of (out, in) matrices."""
    b = Builder(weights[0].shape[1], flat=True)
    for i, w in enumerate(weights):
        b.dense(w, None if biases is None else biases[i])
        if i < len(weights) - 1:
            b.act(activation)
    return b.build()


def lipsdp_net(name: str) -> typed.Network | None:
    """LipSDP's example nets (``random_weights``, ``mnist_weights``) from the shared cases, or None."""
    f = case_file("lipsdp", f"{name}.npz")
    if f is None:
        return None
    d = np.load(f)
    keys = sorted((k for k in d.files if k.endswith(".weight")), key=lambda k: int(k[2:k.index(".")]))
    return dense_net([d[k] for k in keys])


def ecg_from_npz(path, name: str | None = None, biases: bool = True) -> typed.Network:
    """The authors' ECG CNN (1x128; [conv k3 causal, ReLU, avgpool 2] x 2; flatten; 96-60-5) from an .npz."""
    d = np.load(path, allow_pickle=False)

    def bias(k):
        return d[k] if biases else None

    return (Builder(1, 128, name=name or Path(path).stem)
            .conv(d["conv1.weight"], padding="causal", bias=bias("conv1.bias")).act("relu").pool("avg", 2)
            .conv(d["conv2.weight"], padding="causal", bias=bias("conv2.bias")).act("relu").pool("avg", 2)
            .flatten().dense(d["fc1.weight"], bias("fc1.bias")).act("relu")
            .dense(d["fc2.weight"], bias("fc2.bias"))
            .build())


def ecg_network(name: str = "CNN_23_03_08_11_52", biases: bool = True) -> typed.Network | None:
    """The ECG CNN ``name`` from the shared cases (or its copy in specs/weights), or None."""
    f = case_file("ecg", f"{name}.npz")
    return None if f is None else ecg_from_npz(f, name, biases)


def random_cnn(rng: np.random.Generator, *, activation: str | None = None, length: int | None = None,
               pool: str | None = None, max_size: int = 60) -> typed.Network:
    """A small random CNN: 1-2 conv layers (random k, padding, stride, dilation), optional pooling,
    flatten, optional hidden dense layer, dense output. Hidden sizes stay small so LipSDP-Neuron is quick."""
    act = activation or rng.choice(["relu", "tanh"])
    c = int(rng.integers(1, 3))
    n = length or int(rng.integers(6, 13))
    b = Builder(c, n)
    for _ in range(int(rng.integers(1, 3))):
        c_out = int(rng.integers(1, 4))
        k = int(rng.integers(1, 4))
        padding = str(rng.choice(["valid", "causal", "same", "1"]))
        stride = int(rng.choice([1, 1, 2])) if padding != "same" else 1
        dilation = int(rng.choice([1, 1, 2]))
        span = dilation * (k - 1)
        pl, pr = {"valid": (0, 0), "causal": (span, 0), "same": (span // 2, span - span // 2),
                  "1": (1, 1)}[padding]
        if b.shape.length + pl + pr - span < 1 or c_out * b.shape.length > max_size:
            continue
        b.conv(rng.standard_normal((c_out, b.shape.channels, k)) / np.sqrt(k * b.shape.channels),
               stride=stride, dilation=dilation, padding=padding if padding != "1" else 1,
               bias=0.1 * rng.standard_normal(c_out))
        b.act(act)
        p = pool if pool is not None else rng.choice(["none", "avg", "avg2"])
        if p != "none" and b.shape.length >= 3:
            if p == "avg2":
                b.pool("avg", 3, 2)  # overlapping
            else:
                b.pool(p, 2)
    b.flatten()
    if rng.random() < 0.5:
        h = int(rng.integers(2, 8))
        b.dense(rng.standard_normal((h, b.shape.channels)) / np.sqrt(b.shape.channels),
                0.1 * rng.standard_normal(h))
        b.act(act)
    m = int(rng.integers(1, 4))
    b.dense(rng.standard_normal((m, b.shape.channels)) / np.sqrt(b.shape.channels))
    return b.build()


#: Small reference files copied into the repository (a user's clone has no ../shared): ``DATA``
#: (tests/data, from repo_paths).


def ecg(name="CNN_23_03_08_11_52"):
    """One of the three reference ECG models copied into tests/data (biases left out: they do not matter)."""
    return ecg_from_npz(DATA / "ecg" / f"{name}.npz", biases=False)


def mixed_net(seed):
    rng = np.random.default_rng(seed)
    return (
        Builder(2, 12)
        .conv(rng.normal(size=(3, 2, 3)), padding="same")
        .act("leaky_relu", 0.1)
        .pool("max", 2)
        .conv(rng.normal(size=(2, 3, 2)), padding="valid")
        .act("sigmoid")
        .pool("avg", 3, 2)
        .flatten()
        .dense(rng.normal(size=(4, 4)))
        .act("tanh")
        .dense(rng.normal(size=(3, 4)))
        .build()
    )


def deep_tcn_spec(folder: Path, seed: int = 1, ch: int = 8, k: int = 3, depth: int = 5) -> Path:
    """A deep dilated causal TCN (1x64; conv 1 -> ch, then ``depth`` convs of dilation 1, 2, 4, ...; ReLU;
    global average pooling; dense ch -> 2) written as ``folder/deep_tcn.lip`` + ``deep_tcn.npz``: on 3
    frequencies its frequency-form bound (seed 1) needs a ~10x repair and lands above the H-infinity
    product, so it draws both frequency-mode warnings (the weights are drawn as test_kyp's ``_deep_tcn``)."""
    rng = np.random.default_rng(seed)
    weights = {"c0": rng.normal(size=(ch, 1, k)) / 2}
    lines = ["network deep_tcn", "input 1 x 64", 'weights "deep_tcn.npz"',
             f"conv1d 1 -> {ch}, kernel {k}, padding causal, weight c0", "relu"]
    for d in range(depth):
        weights[f"c{d + 1}"] = rng.normal(size=(ch, ch, k)) / np.sqrt(ch * k) * 1.5
        lines += [f"conv1d {ch} -> {ch}, kernel {k}, dilation {2 ** d}, padding causal, weight c{d + 1}",
                  "relu"]
    weights["fc"] = rng.normal(size=(2, ch))
    lines += ["global_avgpool", f"dense {ch} -> 2, weight fc"]
    np.savez(folder / "deep_tcn.npz", **weights)
    spec = folder / "deep_tcn.lip"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def wide_gap_net(seed: int, channels: int = 8, length: int = 16):
    """conv 1 -> c (k3) -> relu -> conv c -> c (k3) -> relu -> conv c -> c (k3) -> relu -> GAP -> dense 2."""
    rng = np.random.default_rng(seed)
    b = Builder(1, length)
    c_in = 1
    for _ in range(3):
        b.conv(rng.normal(size=(channels, c_in, 3)) / np.sqrt(3 * c_in), padding="same")
        b.act("relu")
        c_in = channels
    b.gap()
    b.dense(rng.normal(size=(2, channels)))
    return b.build()


def random_small_cnn(rng: np.random.Generator):
    """conv/pool/dense nets with ReLU or tanh: strides, dilation, paddings, avg/max pools, flatten or GAP."""
    act = str(rng.choice(["relu", "tanh"]))
    b = Builder(int(rng.integers(1, 3)), int(rng.integers(8, 16)))
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(1, 4))
        padding = str(rng.choice(["valid", "causal", "same", "1"]))
        stride = 1 if padding == "same" else int(rng.choice([1, 1, 2]))
        dilation = int(rng.choice([1, 2]))
        span = dilation * (k - 1)
        extra = {"valid": 0, "causal": span, "same": span, "1": 2}[padding]
        if b.shape.length + extra - span < 2:
            continue
        c_out = int(rng.integers(1, 4))
        b.conv(
            rng.normal(size=(c_out, b.shape.channels, k)),
            stride=stride,
            dilation=dilation,
            padding=padding if padding != "1" else 1,
        )
        b.act(act)
        if b.shape.length >= 4 and rng.random() < 0.6:
            op = str(rng.choice(["avg", "max"]))
            kernel = int(rng.integers(2, 4))
            b.pool(op, kernel, int(rng.integers(1, kernel + 1)))
    return random_head(b, rng, act, p_gap=0.3, max_outputs=4)


# --------------------------------------------------------------------------- residual nets (spec text)
ACTS = ("relu", "tanh", "leaky_relu(0.1)")


def _check_source(source):
    from lipdsl.lang.load import check_source

    return check_source(source)


class Spec:
    """Spec text and its weights, written into ``tmp_path`` and checked."""

    def __init__(self, c: int, n: int | None):
        self.lines = [f"input {c} x {'*' if n is None else n}", 'weights "w.npz"']
        self.w: dict[str, np.ndarray] = {}
        self.k = 0

    def key(self, value: np.ndarray) -> str:
        self.k += 1
        self.w[f"t{self.k}"] = value
        return f"t{self.k}"

    def conv(self, rng, c_in, c_out, k, *, padding="same", dilation=1, stride=1, indent="") -> None:
        w = self.key(rng.normal(size=(c_out, c_in, k)) / np.sqrt(c_in * k))
        self.lines.append(f"{indent}conv1d {c_in} -> {c_out}, kernel {k}, dilation {dilation}, "
                          f"stride {stride}, padding {padding}, weight {w}")

    def bn(self, rng, c, indent="") -> None:
        self.k += 1
        p = f"bn{self.k}"
        self.w.update({f"{p}.weight": rng.uniform(0.5, 1.5, c), f"{p}.bias": rng.normal(size=c),
                       f"{p}.running_mean": rng.normal(size=c), f"{p}.running_var": rng.uniform(0.3, 2.0, c)})
        self.lines.append(f"{indent}batchnorm {c}, weights {p}")

    def load(self, tmp_path) -> typed.Network:
        np.savez(tmp_path / "w.npz", **self.w)
        path = tmp_path / "net.lip"
        path.write_text("\n".join(self.lines) + "\n")
        return _check_source(Source(str(path), path.read_text()))


def random_residual(rng: np.random.Generator, tmp_path, *, n: int | None = 14) -> typed.Network:
    """A random residual net: a stem conv (strided sometimes), one or two blocks (identity, batch-norm-only or
    1x1 conv (+ batch norm) shortcut; dilations, causal/same/int paddings, batch norm), an activation after
    a block sometimes, and a head (global average pool, or flatten, then dense) unless ``n`` is None."""
    c0 = int(rng.integers(1, 3))
    s = Spec(c0, n)
    act = ACTS[int(rng.integers(len(ACTS)))]
    c = int(rng.integers(2, 4))
    stride = int(rng.integers(1, 3)) if n is not None else 1
    s.conv(rng, c0, c, int(rng.integers(1, 4)), padding="causal", stride=stride)
    causal = rng.random() < 0.5
    for b in range(int(rng.integers(1, 3))):
        c_in = c
        c_out = c if rng.random() < 0.5 else c + 1
        s.lines.append(f"residual blk{b}:")
        for _ in range(int(rng.integers(1, 3))):
            pad = "causal" if causal else ["same", 1][int(rng.integers(2))]
            k, d = (3, 1) if pad == 1 else (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
            s.conv(rng, c, c_out, k, padding=pad, dilation=d, indent="  ")
            if rng.random() < 0.5:
                s.bn(rng, c_out, indent="  ")
            if rng.random() < 0.7:
                s.lines.append(f"  {act}")
            c = c_out
        if c_out != c_in:
            s.lines.append("shortcut")
            s.conv(rng, c_in, c_out, 1, padding=0, indent="  ")
            if rng.random() < 0.5:
                s.bn(rng, c_out, indent="  ")
        elif rng.random() < 0.3:
            s.lines.append("shortcut")
            s.bn(rng, c_out, indent="  ")
        s.lines.append("end")
        if rng.random() < 0.7:
            s.lines.append(act)
    if n is not None and rng.random() < 0.5:
        s.lines += ["global_avgpool", f"dense {c} -> 2, weight {s.key(rng.normal(size=(2, c)))}"]
    elif n is not None:
        size = s.load(tmp_path).output_shape.size  # the flattened size, known once checked
        w = s.key(rng.normal(size=(2, size)) / np.sqrt(size))
        s.lines += ["flatten", f"dense {size} -> 2, weight {w}"]
    return s.load(tmp_path)


# --------------------------------------------------------------------------- closed-form bounds (no SDP)
#: Specs whose dissipative bound needs no SDP (``pipeline._exact_bound``), by name: a conv with all-zero
#: weights (L = 0), a batch norm of weight [0, 0] merged into the conv before it (a zero merged map: the
#: product of the layers' gains, 0), and a residual block whose branches cancel in float64 (identity minus
#: ``x / sqrt(1 + 2^-60)``: a zero merged map whose layers are not zero, bounded by their gains, 1 + 1).
CLOSED_FORM_SPECS = {
    "zero_conv": "input 2 x 8\nconv1d 2 -> 2, kernel 1, weight [[[0], [0]], [[0], [0]]]\nrelu\n",
    "zero_batchnorm": "input 2 x 8\nconv1d 2 -> 2, kernel 1, weight [[[1], [0]], [[0], [1]]]\n"
                      "batchnorm 2, running_mean [0, 0], running_var [1, 1], weight [0, 0]\n",
    "cancelling_residual": "input 2 x 8\nresidual r:\n  identity\nshortcut\n"
                           "  batchnorm 2, running_mean [0, 0], running_var [1, 1], weight [-1, -1], "
                           "eps 0.5^60\nend\n",
}


def closed_form_spec(folder: Path, name: str) -> Path:
    """``CLOSED_FORM_SPECS[name]`` written to ``folder/NAME.lip`` (its network is called ``name``)."""
    path = folder / f"{name}.lip"
    path.write_text(CLOSED_FORM_SPECS[name])
    return path

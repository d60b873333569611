"""Check stage: ast.Network -> typed.Network; shapes vs numpy windows (PyTorch rules), weights, slopes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from lipdsl.lang.check import check
from lipdsl.errors import ShapeError, SpecError, WeightError
from lipdsl.lang.load import check_source, load_network
from lipdsl.lang.parse import parse
from lipdsl.lang.source import Source
from repo_paths import ROOT

SPECS = ROOT / "specs"


def net_of(text: str, directory: Path | None = None, **kw):
    path = "<string>" if directory is None else str(directory / "spec.lip")
    src = Source(path, text)
    return check(parse(src), src, **kw)


def zeros(*shape) -> str:
    return str(np.zeros(shape).tolist())


# -- shapes: an oracle that slides windows over a padded numpy signal ------------------------------------


def conv_oracle(n, kernel, stride, dilation, pad_left, pad_right) -> int:
    """Number of outputs of a strided, dilated cross-correlation: windows that fit in the padded signal."""
    xp = np.pad(np.arange(n, dtype=float), (pad_left, pad_right))
    reach = dilation * (kernel - 1) + 1
    if reach > xp.size:
        return 0
    return sliding_window_view(xp, reach)[::stride].shape[0]


def pool_oracle(n, kernel, stride) -> int:
    x = np.arange(n, dtype=float)
    return 0 if kernel > n else sliding_window_view(x, kernel)[::stride].shape[0]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 60),
    kernel=st.integers(1, 9),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 4),
    padding=st.one_of(st.integers(0, 6), st.sampled_from(["valid", "same", "causal"])),
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
)
def test_conv1d_length_matches_numpy_windows(n, kernel, stride, dilation, padding, c_in, c_out):
    if padding == "same" and stride != 1:
        stride = 1
    total = dilation * (kernel - 1)
    pads = {"valid": (0, 0), "same": (total // 2, total - total // 2), "causal": (total, 0)}
    pl, pr = pads.get(padding, (padding, padding))
    want = conv_oracle(n, kernel, stride, dilation, pl, pr)
    text = (
        f"input {c_in} x {n}\nconv1d c: {c_in} -> {c_out}, kernel {kernel}, stride {stride}, "
        f"dilation {dilation}, padding {padding}, weight {zeros(c_out, c_in, kernel)}\n"
    )
    if want == 0:
        with pytest.raises(ShapeError, match="no output"):
            net_of(text)
        return
    conv = net_of(text).layers[0]
    assert (conv.pad_left, conv.pad_right) == (pl, pr)
    assert conv.out_shape.length == want and conv.out_shape.channels == c_out
    if padding == "same":
        assert want == n  # what 'same' promises


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 60),
    kernel=st.integers(1, 9),
    stride=st.one_of(st.none(), st.integers(1, 5)),
    op=st.sampled_from(["avgpool", "maxpool"]),
)
def test_pool_length_matches_numpy_windows(n, kernel, stride, op):
    want = pool_oracle(n, kernel, kernel if stride is None else stride)
    text = f"input 2 x {n}\n{op} {kernel}" + ("" if stride is None else f", stride {stride}") + "\n"
    if want == 0:
        with pytest.raises(ShapeError, match="no output"):
            net_of(text)
        return
    pool = net_of(text).layers[0]
    assert pool.out_shape.length == want and pool.out_shape.channels == 2


# torch warns (performance only) about 'same' padding with even kernels; the shapes are what is tested
@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
def test_torch_agrees_when_installed():
    torch = pytest.importorskip("torch")
    for n, k, s, d, p in [(16, 3, 2, 2, 1), (7, 4, 1, 1, "same"), (9, 2, 3, 1, 0)]:
        conv = torch.nn.Conv1d(1, 1, k, stride=s, dilation=d, padding=p)
        want = conv(torch.zeros(1, 1, n)).shape[-1]
        got = (
            net_of(
                f"input 1 x {n}\nconv1d 1 -> 1, kernel {k}, stride {s}, dilation {d}, padding {p}, "
                f"weight {zeros(1, 1, k)}\n"
            )
            .layers[0]
            .out_shape.length
        )
        assert got == want


# -- the shipped specs -------------------------------------------------------------------------------------


def test_ecg_shapes_and_weights():
    _, net = load_network(SPECS / "ecg.lip")
    shapes = [str(net.input_shape)] + [str(layer.out_shape) for layer in net.layers]
    assert shapes == ["1x128", "2x128", "2x128", "2x64", "3x64", "3x64", "3x32", "96", "60", "60", "5"]
    conv = net.layers[0]
    assert (conv.pad_left, conv.pad_right, conv.padding) == (2, 0, "causal")
    ref = np.load(SPECS / "weights" / "ecg_CNN_23_03_08_11_52.npz")
    assert conv.weight.dtype == np.float64 and np.array_equal(conv.weight, ref["conv1.weight"])
    assert np.array_equal(net.layers[7].bias, ref["fc1.bias"])
    assert conv.weight_expr is None
    assert [layer.name for layer in net.layers] == [
        "c1",
        "relu1",
        "avgpool1",
        "c2",
        "relu2",
        "avgpool2",
        "flatten1",
        "f1",
        "relu3",
        "f2",
    ]


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.lip")), ids=lambda s: s.name)
def test_every_spec_checks(spec):
    _, net = load_network(spec)
    for a, b in zip(net.layers, net.layers[1:], strict=False):
        assert a.out_shape == b.in_shape
    assert net.layers[0].in_shape == net.input_shape


def test_ecg_check_does_not_import_sympy():
    code = (
        "import sys; from lipdsl.lang.load import load_network; load_network(sys.argv[1]); "
        "assert 'sympy' not in sys.modules, 'sympy imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(SPECS / "ecg.lip")], check=True)


def test_exact_weights_from_expressions():
    import sympy

    _, net = load_network(SPECS / "haar_exact.lip")
    haar, _, rotate, _ = net.layers
    assert haar.weight_expr[1, 0, 1] == -sympy.Rational(1, 2)
    assert rotate.weight_expr[0, 1, 0] == -sympy.sqrt(2) / 2
    assert np.allclose(rotate.weight[:, :, 0], np.sqrt(0.5) * np.array([[1, -1], [1, 1]]))
    assert np.array_equal(rotate.bias, [0, 0.125])
    assert net.any_length and net.output_shape.length is None


# -- activations -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,slope",
    [
        ("relu", (0, 1)),
        ("tanh", (0, 1)),
        ("sigmoid", (0, 0.25)),
        ("leaky_relu(0.1)", (0.1, 1)),
        ("leaky_relu(2)", (1, 2)),
        ("elu", (0, 1)),
        ("elu(3/2)", (0, 1.5)),
        ("softplus", (0, 1)),
        ("identity", (1, 1)),
        ("tanh slope [0, 1/2]", (0, 0.5)),
        ("gelu slope [-0.17, 1.13]", (-0.17, 1.13)),
        ("relu slope [0, sqrt(2)]", (0, 2**0.5)),
    ],
)
def test_activation_slopes(line, slope):
    act = net_of(f"input 3\n{line}\n").layers[0]
    assert (act.alpha, act.beta) == pytest.approx(slope)


def test_activation_errors():
    with pytest.raises(SpecError, match="unknown layer or activation 'squash'"):
        net_of("input 3\nsquash\n")
    with pytest.raises(SpecError, match="alpha <= beta"):
        net_of("input 3\nrelu slope [1, 0]\n")
    with pytest.raises(SpecError, match="takes no parameter"):
        net_of("input 3\nrelu(1)\n")
    with pytest.raises(SpecError, match="needs its parameter"):
        net_of("input 3\nleaky_relu\n")
    with pytest.raises(SpecError, match="takes no 'kernel' option"):
        net_of("input 3\nrelu kernel 3\n")


# -- shape errors ------------------------------------------------------------------------------------------


#: batch norms whose scale or shift leaves float64's range (a nonzero weight with a zero scale: underflow)
BN_OVERFLOW = ("input 2 x 8\nbatchnorm 2, running_mean [0, 0], running_var [0, 0], weight [1e200, 1], "
               "eps 1e-300\n")
BN_UNDERFLOW = "input 2 x 8\nbatchnorm 2, running_mean [0, 0], running_var [1e300, 1], weight [1e-200, 1]\n"
BN_SHIFT = ("input 2 x 8\nbatchnorm 2, running_mean [1e308, 0], running_var [1e-300, 1], weight [1e10, 1], "
            "bias [1e308, 0]\n")


@pytest.mark.parametrize(
    "body,error,match",
    [
        (
            "input 1 x 8\nconv1d 2 -> 1, kernel 1, weight [[[1], [1]]]\n",
            ShapeError,
            "expects 2 input channels",
        ),
        ("input 1 x 8\nconv1d 1 -> 1, kernel 3, weight [[[1, 1]]]\n", ShapeError, r"has shape \(1, 1, 2\)"),
        ("input 2 x 8\ndense 16 -> 1, weight [[1]]\n", ShapeError, "needs a vector"),
        (
            "input 2 x 8\nflatten\ndense 15 -> 1, weight [[1]]\n",
            ShapeError,
            "expects 15 inputs, but 'flatten1' produces 16",
        ),
        ("input 2 x *\nflatten\n", ShapeError, "needs a known length"),
        ("input 2\nflatten\n", ShapeError, "already a flat vector"),
        ("input 4\nconv1d 4 -> 1, kernel 1, weight [[[1], [1], [1], [1]]]\n", ShapeError, "needs a signal"),
        ("input 2\nglobal_avgpool\n", ShapeError, "needs a signal"),
        ("input 2 x 8\nmaxpool 9\n", ShapeError, "no output"),
        (
            "input 1 x 8\nconv1d 1 -> 1, kernel 3, stride 2, padding same, weight [[[1, 1, 1]]]\n",
            ShapeError,
            "stride 1",
        ),
        ("input 0 x 8\nrelu\n", SpecError, "at least 1"),
        ("input 2 x 8\navgpool 0\n", SpecError, "at least 1"),
        ("input 2 x 8\navgpool 3/2\n", SpecError, "must be an integer"),
        (
            "input 1 x 8\nconv1d 1 -> 1, kernel 1, padding full, weight [[[1]]]\n",
            SpecError,
            "valid, same or causal",
        ),
        ("input 1 x 8\nconv1d 1 -> 1, kernel 1, padding -1, weight [[[1]]]\n", SpecError, "at least 0"),
        ("input 1 x 8\nconv1d 1 -> 1, weight [[[1]]]\n", SpecError, "needs a kernel"),
        ("input 1 x 8\nconv1d 1 -> 1, kernel 1\n", SpecError, "needs a weight"),
        ("input 1 x 8\nconv1d 1 -> 1, kernel 1, kernel 1, weight [[[1]]]\n", SpecError, "given twice"),
        ("input 2\ndense 2 -> 1, weight [[1, 2], [3]]\n", ShapeError, "ragged"),
        ("input 2\ndense 2 -> 1, weight [[1, [2]]]\n", ShapeError, "mixes numbers and lists"),
        (
            "input 2\ndense 2 -> 1, weight [[1, 1]], bias [1, 2]\n",
            ShapeError,
            r"dense 'dense1' bias, given inline, has shape \(2,\)",
        ),
        ("input 2\nlet a = 1\nlet a = 2\nrelu\n", SpecError, "already defined"),
        ("input 2\nlet pi = 3\nrelu\n", SpecError, "built-in name"),
        ("input 2\ndense 2 -> 1, weight [[b, 1]]\n", SpecError, "unknown name 'b'"),
        ("input 1 x 8\navgpool 2, stride eps\n", SpecError, "'eps' is a keyword, not a value"),
        ("input 2\ndense 2 -> 1, weight [[kernel, 1]]\n", SpecError, "'kernel' is a keyword, not a value"),
        ("input 2\ndense 2 -> 1, weight [[foo(1), 1]]\n", SpecError, "unknown function 'foo'"),
        ("input 2\ndense 2 -> 1, weight [[1/0, 1]]\n", SpecError, "not finite|not a real number"),
        ("input 2\ndense 2 -> 1, weight [[sqrt(-1), 1]]\n", SpecError, "not a real number"),
        ("input 2\ndense 2 -> 1, weight [[1e999, 1]]\n", SpecError, "too large"),
        ("input 2\nrelu r\nrelu r\n", SpecError, "duplicate layer name 'r'"),
        ("input 2\n", SpecError, "no layers"),
        (BN_OVERFLOW, WeightError, r"= 1e\+200 / sqrt\(0 \+ 1e-300\) is inf at channel 0, out of float64"),
        (BN_UNDERFLOW, WeightError, r"= 1e-200 / sqrt\(1e\+300 \+ 1e-05\) is 0 at channel 0, out of float64"),
        (BN_SHIFT, WeightError, r"bias - scale \* running_mean = 1e\+308 - 3.16e\+12 \* 1e\+308 is -inf"),
    ],
)
def test_check_errors(body, error, match):
    with pytest.raises(error, match=match) as info:
        net_of(body)
    # every error points at the statement at fault (the last one, but for these three), and there at the
    # text that is wrong: a size, an option's value, a name, the whole statement when it is the statement
    line = {"input 0 x 8\nrelu\n": 1, "input 2\nlet a = 1\nlet a = 2\nrelu\n": 3,
            "input 2\nlet pi = 3\nrelu\n": 2}.get(body, len(body.splitlines()))
    span = info.value.span
    assert span.line == span.end_line == line
    statement = body.splitlines()[line - 1]
    assert statement[span.col - 1:span.end_col - 1] == (CHECK_ERROR_SPANS[body] or statement)


#: the text under the span of each error of test_check_errors (None: the whole statement)
CHECK_ERROR_SPANS = {
    "input 1 x 8\nconv1d 2 -> 1, kernel 1, weight [[[1], [1]]]\n": "2",
    "input 1 x 8\nconv1d 1 -> 1, kernel 3, weight [[[1, 1]]]\n": "[[[1, 1]]]",
    "input 2 x 8\ndense 16 -> 1, weight [[1]]\n": None,
    "input 2 x 8\nflatten\ndense 15 -> 1, weight [[1]]\n": "15",
    "input 2 x *\nflatten\n": None,
    "input 2\nflatten\n": None,
    "input 4\nconv1d 4 -> 1, kernel 1, weight [[[1], [1], [1], [1]]]\n": None,
    "input 2\nglobal_avgpool\n": None,
    "input 2 x 8\nmaxpool 9\n": None,
    "input 1 x 8\nconv1d 1 -> 1, kernel 3, stride 2, padding same, weight [[[1, 1, 1]]]\n": "padding same",
    "input 0 x 8\nrelu\n": "0",
    "input 2 x 8\navgpool 0\n": "0",
    "input 2 x 8\navgpool 3/2\n": "3/2",
    "input 1 x 8\nconv1d 1 -> 1, kernel 1, padding full, weight [[[1]]]\n": "full",
    "input 1 x 8\nconv1d 1 -> 1, kernel 1, padding -1, weight [[[1]]]\n": "-1",
    "input 1 x 8\nconv1d 1 -> 1, weight [[[1]]]\n": None,
    "input 1 x 8\nconv1d 1 -> 1, kernel 1\n": None,
    "input 1 x 8\nconv1d 1 -> 1, kernel 1, kernel 1, weight [[[1]]]\n": "kernel 1",
    "input 2\ndense 2 -> 1, weight [[1, 2], [3]]\n": "[3]",
    "input 2\ndense 2 -> 1, weight [[1, [2]]]\n": "[1, [2]]",
    "input 2\ndense 2 -> 1, weight [[1, 1]], bias [1, 2]\n": "[1, 2]",
    "input 2\nlet a = 1\nlet a = 2\nrelu\n": "a",
    "input 2\nlet pi = 3\nrelu\n": "pi",
    "input 2\ndense 2 -> 1, weight [[b, 1]]\n": "b",
    "input 1 x 8\navgpool 2, stride eps\n": "eps",
    "input 2\ndense 2 -> 1, weight [[kernel, 1]]\n": "kernel",
    "input 2\ndense 2 -> 1, weight [[foo(1), 1]]\n": "foo",
    "input 2\ndense 2 -> 1, weight [[1/0, 1]]\n": "1/0",
    "input 2\ndense 2 -> 1, weight [[sqrt(-1), 1]]\n": "sqrt(-1)",
    "input 2\ndense 2 -> 1, weight [[1e999, 1]]\n": "1e999",
    "input 2\nrelu r\nrelu r\n": None,
    "input 2\n": None,
    BN_OVERFLOW: None,
    BN_UNDERFLOW: None,
    BN_SHIFT: None,
}


def test_lets_are_substituted_in_order_and_sizes_can_be_expressions():
    net = net_of(
        "let c = 2\nlet n = 4 * c\ninput c x n\nconv1d c -> 2*c, kernel c + 1, padding same, "
        "weight [[[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], "
        "[[0, 0, 0], [0, 0, 0]]]\n"
    )
    assert str(net.input_shape) == "2x8" and str(net.output_shape) == "4x8"


def test_auto_names_skip_explicit_ones():
    net = net_of(
        "input 2 x 8\nrelu relu2\nrelu\nrelu\nswish slope [0, 1]\nconv1d 2 -> 2, kernel 1, "
        "weight [[[1], [0]], [[0], [1]]]\navgpool 2\nmaxpool 2\nglobal_avgpool\n"
    )
    assert [layer.name for layer in net.layers] == [
        "relu2",
        "relu3",
        "relu4",
        "swish1",
        "conv1",
        "avgpool1",
        "maxpool1",
        "gap1",
    ]


# -- weight files ------------------------------------------------------------------------------------------


@pytest.fixture
def wdir(tmp_path):
    np.savez(
        tmp_path / "w.npz",
        **{
            "a.weight": np.eye(2),
            "ints": np.eye(2, dtype=np.int64),
            "bad": np.array([[1.0, np.inf], [0, 1]]),
        },
    )
    np.save(tmp_path / "one.npy", np.ones((1, 2), dtype=np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "b.npy", np.zeros(2))
    return tmp_path


def test_weight_sources(wdir):
    net = net_of(
        'input 2\nweights "w.npz"\ndense 2 -> 2, weight a.weight, bias "sub/b.npy"\n'
        'dense 2 -> 1, weight "one.npy"\n',
        wdir,
    )
    assert np.array_equal(net.layers[0].weight, np.eye(2)) and net.layers[1].weight.dtype == np.float64
    net = net_of('input 2\ndense 2 -> 2, weight "w.npz":a.weight\n', wdir)
    assert not net.layers[0].weight.flags.writeable


@pytest.mark.parametrize(
    "body,match",
    [
        ('weights "nope.npz"\n', "'nope.npz' not found"),
        ('weights "w.npz"\ndense 2 -> 2, weight a.bias\n', "no tensor 'a.bias'"),
        ("dense 2 -> 2, weight a.weight\n", "no weights file"),
        ('dense 2 -> 2, weight "w.npz"\n', "holds several tensors"),
        ('dense 2 -> 1, weight "one.npy":k\n', "holding one tensor"),
        ('dense 2 -> 2, weight "w.npz":ints\n', "integer dtype int64"),
        ('dense 2 -> 2, weight "w.npz":bad\n', r"holds Inf at index \(0, 1\)"),
        ('dense 2 -> 1, weight "obj.npy"\n', "holds Python objects"),
        ('dense 2 -> 2, weight "../w.npz":a.weight\n', "outside the spec's directory"),
        ('dense 2 -> 2, weight "sub/../../w.npz":a.weight\n', "outside the spec's directory"),
        ('dense 2 -> 2, weight "/etc/passwd.npz":a.weight\n', "absolute path"),
    ],
)
def test_weight_errors(wdir, body, match):
    with pytest.raises(WeightError, match=match) as info:
        net_of("input 2\n" + body, wdir)
    # the layer naming the file: the last line
    assert info.value.span is not None and info.value.span.line == len(("input 2\n" + body).splitlines())


def test_allow_outside(wdir):
    inner = wdir / "sub"
    text = (
        'input 2\ndense 2 -> 2, weight "../w.npz":a.weight\n'
        f'dense 2 -> 2, weight "{wdir / "w.npz"}":a.weight\n'
    )
    net = net_of(text, inner, allow_outside=True)
    assert np.array_equal(net.layers[1].weight, np.eye(2))


def test_errors_carry_their_source():
    src = Source("<string>", "input 2\nrleu\n")
    with pytest.raises(SpecError) as info:
        check_source(src)
    assert info.value.source is src
    assert info.value.render(src).startswith("<string>:2:1: error: unknown activation 'rleu'")


@pytest.mark.parametrize("expr", ["2^(0*(1/0))", "sqrt(2)^(0*(1/0))", "(1/2)^(0*(1/0))"])
def test_a_power_to_nan_is_refused_as_not_finite(expr):
    """An exponent that is NaN (0 * (1/0)) met ast.power's size check ('Invalid NaN comparison' traceback);
    the power is NaN, refused by check as any other non-finite let."""
    from lipdsl.errors import SpecError
    from lipdsl.lang.load import check_source
    from lipdsl.lang.source import Source

    with pytest.raises(SpecError, match="let a is not finite: nan"):
        check_source(Source("<s>", f"let a = {expr}\ninput 1\nrelu\n"))


@pytest.mark.parametrize("levels", [30, 200])
def test_a_tower_of_irrational_powers_is_refused_fast(levels):
    """`let a = -2^-2^...^2`: from the third level the exponents are irrational and sympy's assumptions
    evaluate the whole tower again at each level (20 levels: 2 s, 30: minutes); ast.MAX_TOWER refuses it at
    once, with its place; lower towers are still computed exactly."""
    import time

    import sympy

    from lipdsl.errors import LipdslError
    from lipdsl.lang import ast
    from lipdsl.lang.load import check_source
    from lipdsl.lang.source import Source

    t0 = time.perf_counter()
    with pytest.raises(LipdslError, match=f"powers are nested more than {ast.MAX_TOWER} deep") as info:
        check_source(Source("<s>", "let a = " + "-2^" * levels + "2\ninput 1\nrelu\n"))
    assert time.perf_counter() - t0 < 5 and info.value.span.line == 1
    low = check_source(Source("<s>", "let a = 2^(2^sqrt(2))\ninput 1\ndense d: 1 -> 1, weight [[a]]\n"))
    assert low.layers[0].weight_expr[0, 0] == sympy.Integer(2) ** (2 ** sympy.sqrt(2))


@pytest.mark.parametrize("name", ["resnet1d_strided.lip", "tcn.lip", "fcn.lip", "tcn_any_length.lip"])
def test_shapes_at_follows_every_layer_and_block(name):
    """``shapes_at`` (size estimates before lowering) gives each layer's output shape as checked: the
    layers' own ``out_shape`` where the spec has a length (a strided residual block halves it: 150 -> 75
    -> 38), and the lengths the lowering computes (``model.lower._lengths``) where it has none."""
    from lipdsl.lang.check import shapes_at
    from lipdsl.model.lower import _lengths

    _, net = load_network(SPECS / name)
    if net.input_shape.length is not None:
        for L, c, n in shapes_at(net, None):
            assert (c, n) == (L.out_shape.channels, L.out_shape.length), L.name
        return
    lengths = [n for _, _, n in shapes_at(net, 40)]
    assert lengths[:-1] == [n for n in _lengths(net, 40)[1:]]


def test_a_length_the_spec_contradicts_is_refused_by_every_function_that_takes_one():
    """check.require_length, the one rule: the library's entry points that take a length (lower's
    min_length, the lower bound, the unrolled baselines, run_method, compare) refuse another length than a
    fixed spec's, at the input's length; the spec's own length and any length for 'input C x *' are fine."""
    from lipdsl.baselines.empirical import lower_bound
    from lipdsl.baselines.unrolled import unroll
    from lipdsl.lang.check import require_length
    from lipdsl.lang.source import Span
    from lipdsl.methods import compare, run_method
    from lipdsl.model.lower import lower

    net = net_of("input 2 x 8\nconv1d c: 2 -> 2, kernel 1, weight [[[1], [0]], [[0], [1]]]\nrelu\n")
    calls = [lambda: lower(net, min_length=9), lambda: lower_bound(net, starts=1, length=9),
             lambda: unroll(net, length=9), lambda: run_method(net, "naive", length=9),
             lambda: compare(net, methods=("naive",), length=9, lower_starts=0)]
    for call in calls:
        with pytest.raises(SpecError, match="length 9 contradicts the input line") as err:
            call()
        assert err.value.span == Span(1, 11, 1, 12)
    require_length(net, 8)
    assert unroll(net, length=8)[0].shape == (16, 16)
    any_length = net_of("input 2 x *\nrelu\n")
    require_length(any_length, 9)
    with pytest.raises(SpecError, match="does not apply") as err:
        require_length(net_of("input 3\nrelu\n"), 3, "--length")
    assert err.value.span == Span(1, 1, 1, 8) and "leave out --length" in err.value.hint


# -- residual blocks: a branch mismatch's hint fits the mismatch ------------------------------------------
def _conv(c_in: int, c_out: int, kernel: int, options: str = "") -> str:
    return f"conv1d {c_in} -> {c_out}, kernel {kernel}{options}, weight {zeros(c_out, c_in, kernel)}"


@pytest.mark.parametrize("lines,message,hint", [
    # lengths only: the padding that makes them agree (the identity shortcut, an any-length input, a
    # strided conv whose shortcut is a strided 1x1 conv)
    (["input 6 x 16", "residual", "  " + _conv(6, 6, 3), "end"], "the main path produces 6x14",
     "with 'padding same' on conv1d 'conv1' (line 3) both branches give 16 samples"),
    (["input 2 x *", "residual", "  " + _conv(2, 2, 3, ", dilation 2, padding 1"), "end"],
     "for an input of 64 samples the main path gives 62 and the shortcut 64",
     "with 'padding same' on conv1d 'conv1' (line 3) both branches keep the same length"),
    (["input 2 x 16", "residual", "  " + _conv(2, 2, 3, ", stride 2"), "shortcut",
      "  " + _conv(2, 2, 1, ", stride 2"), "end"], "main path produces 2x7",
     "with 'padding 1' on conv1d 'conv1' (line 3) both branches give 8 samples"),
    (["input 2 x 16", "residual", "  " + _conv(2, 2, 1), "shortcut", "  " + _conv(2, 2, 3, ", padding 3"),
      "end"], "the shortcut produces 2x20", "with 'padding same' on conv1d 'conv2' (line 5)"),
    # strides: the shortcut must downsample alike (an identity one: a strided 1x1 conv to the channels)
    (["input 2 x 16", "residual", "  " + _conv(2, 4, 3, ", stride 2, padding 1"), "end"],
     "identity shortcut passes 2x16 on", "both must downsample alike, e.g. a 'shortcut' section with "
     "'conv1d 2 -> 4, kernel 1, stride 2, weight KEY'"),
    (["input 2 x 16", "residual", "  " + _conv(2, 2, 3, ", stride 2, padding 1"), "shortcut",
      "  " + _conv(2, 2, 1), "end"], "the shortcut produces 2x16",
     "e.g. 'stride 2' on conv1d 'conv2' (line 5)"),
    # channels: a 1x1 conv (lengths that agree are not mentioned)
    (["input 2 x 16", "residual", "  " + _conv(2, 4, 3, ", padding same"), "end"], "passes 2x16 on",
     "the shortcut needs a layer to 4 channels, e.g. 'conv1d 2 -> 4, kernel 1, weight KEY' in a 'shortcut'"),
    (["input 2 x 16", "residual", "  " + _conv(2, 4, 3), "shortcut", "  " + _conv(2, 2, 1), "end"],
     "the main path produces 4x14",
     "the shortcut's conv1d 'conv2' (line 5) to 4 channels; the lengths differ: with 'padding same'"),
    # no padding makes a pool's length agree: the rule
    (["input 2 x 16", "residual", "  avgpool 3, stride 1", "end"], "the main path produces 2x14",
     "both branches must change the length alike"),
    # the same shape, downsampled by 2 and 1 (a wide padding): refused here (check accepted it, solve
    # refused it)
    (["input 2 x 8", "residual", "  " + _conv(2, 2, 3, ", stride 2, padding 5"), "end"],
     "both branches give 2x8, but they downsample by different factors",
     "the main path downsamples by 2 and the shortcut by 1"),
])
def test_a_residual_mismatch_gets_a_hint_that_fits_it(lines, message, hint):
    """A block whose branches end in other shapes is refused at its 'shortcut' line (the block's line for
    the identity), with a hint for that mismatch; where lengths alone differ, the padding the hint names
    makes the spec check."""
    import re

    text = "\n".join(lines) + "\n"
    with pytest.raises(ShapeError) as err:
        net_of(text)
    assert message in err.value.message
    assert hint in err.value.hint, err.value.hint
    assert err.value.span.line == (lines.index("shortcut") + 1 if "shortcut" in lines else 2)
    fix = re.search(r"with 'padding (\w+)' on conv1d '\w+' \(line (\d+)\)", err.value.hint)
    if fix is not None and "channels" not in err.value.hint:
        mode, line = fix.group(1), int(fix.group(2))
        fixed = list(lines)
        fixed[line - 1] = re.sub(r", padding \w+", "", fixed[line - 1]).replace(", weight",
                                                                               f", padding {mode}, weight")
        net_of("\n".join(fixed) + "\n")


@pytest.mark.parametrize("layer", ["flatten", "global_avgpool", "dense 2 -> 2, weight [[1, 0], [0, 1]]"])
def test_a_layer_that_leaves_signals_is_refused_inside_a_block_at_its_line(layer):
    """flatten, global_avgpool and dense inside a residual block: refused at their line (a block maps
    signals to signals), not as a channel mismatch of the branches."""
    text = f"input 2 x 8\nresidual b:\n  relu\n  {layer}\nend\n"
    if layer.startswith("dense"):
        text = text.replace("  relu\n", "  global_avgpool\n")
    with pytest.raises(ShapeError, match="inside residual block 'b': a block maps signals") as err:
        net_of(text)
    assert err.value.span.line == (3 if layer.startswith("dense") else 4)
    assert "after the block's 'end'" in err.value.hint

"""lipdsl import: ONNX graphs (onnx.helper) -> spec + npz; forward pass vs onnx's numpy reference evaluator.

Torch-based tests are in tests/importers/test_pytorch.py (skipped without torch).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from lipdsl.pipeline import solve_network  # noqa: E402
from lipdsl.app.cli import main  # noqa: E402
from lipdsl.errors import LipdslError, UnsupportedError  # noqa: E402
from lipdsl.model.forward import forward  # noqa: E402
from lipdsl.importers.importer import import_onnx  # noqa: E402
from lipdsl.lang.weights import spelt_key  # noqa: E402
from lipdsl.lang.load import load_network  # noqa: E402
from lipdsl.lang.parse import parse  # noqa: E402
from lipdsl.lang.source import Source  # noqa: E402
from repo_paths import ROOT  # noqa: E402

RNG = np.random.default_rng(7)
ECG_SPEC = ROOT / "specs" / "ecg.lip"


def model(nodes, inits, shape, opset=17, out="y"):
    """A float64 ONNX model with input 'x' of ``shape`` (batch axis included) and output ``out``."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, shape)],
        [helper.make_tensor_value_info(out, TensorProto.DOUBLE, None)],
        [
            numpy_helper.from_array(
                np.asarray(v) if np.asarray(v).dtype.kind == "i" else np.asarray(v, np.float64), k
            )
            for k, v in inits.items()
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def w(*shape):
    return RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))


def net_pads_pools():
    """Causal pads (2, 0), dilation, LeakyRelu, MaxPool, SAME_UPPER, Tanh, overlapping AveragePool, 2 Gemm."""
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "c1.weight", "c1.bias"],
            ["a"],
            name="c1",
            pads=[2, 0],
            dilations=[2],
            kernel_shape=[2],
        ),
        helper.make_node("LeakyRelu", ["a"], ["b"], alpha=0.1),
        helper.make_node("MaxPool", ["b"], ["c"], kernel_shape=[2], strides=[2]),
        helper.make_node(
            "Conv", ["c", "c2.weight"], ["d"], name="c2", auto_pad="SAME_UPPER", kernel_shape=[4]
        ),
        helper.make_node("Tanh", ["d"], ["e"]),
        helper.make_node("AveragePool", ["e"], ["f"], kernel_shape=[3], strides=[1]),
        helper.make_node("Flatten", ["f"], ["g"]),
        helper.make_node("Gemm", ["g", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Elu", ["h"], ["i"], alpha=0.5),
        helper.make_node("Gemm", ["i", "fc2.w", "fc2.b"], ["y"], alpha=0.5, beta=2.0),  # transB=0: (in, out)
    ]
    inits = {
        "c1.weight": w(3, 2, 2),
        "c1.bias": w(3),
        "c2.weight": w(4, 3, 4),
        "fc1.weight": w(5, 4 * 6),
        "fc1.bias": w(5),
        "fc2.w": w(5, 3),
        "fc2.b": w(3),
    }
    return model(nodes, inits, [1, 2, 16])


def net_stride_gap():
    """Stride-2 conv with symmetric pads, Sigmoid, GlobalAveragePool, Flatten, MatMul + Add."""
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["a"], pads=[1, 1], strides=[2]),
        helper.make_node("Sigmoid", ["a"], ["b"]),
        helper.make_node("GlobalAveragePool", ["b"], ["c"]),
        helper.make_node("Flatten", ["c"], ["d"]),
        helper.make_node("MatMul", ["d", "onnx::MatMul_9"], ["e"]),
        helper.make_node("Add", ["e", "head.bias"], ["y"]),
    ]
    inits = {"conv.weight": w(4, 1, 3), "conv.bias": w(4), "onnx::MatMul_9": w(4, 2), "head.bias": w(2)}
    return model(nodes, inits, [1, 1, 15])


def net_pad_reshape():
    """torch-style zero Pad node before a Conv, Relu, ReduceMean over time (keepdims=0), Gemm; odd names."""
    nodes = [
        helper.make_node(
            "Constant", [], ["pads"], value=numpy_helper.from_array(np.array([0, 0, 2, 0, 0, 0]))
        ),
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
        helper.make_node("Conv", ["p", "/0/Conv.weight"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "0.weight", "0.bias"], ["c"]),
        helper.make_node("Identity", ["c"], ["c2"]),
        helper.make_node("Reshape", ["c2", "shape"], ["d"]),
        helper.make_node("Gemm", ["d", "1.weight"], ["y"], transB=1),
    ]
    inits = {
        "/0/Conv.weight": w(2, 3, 3),
        "0.weight": w(3, 2, 1),
        "0.bias": w(3),
        "shape": np.array([0, -1]),
        "1.weight": w(2, 3 * 12),
    }
    return model(nodes, inits, [1, 3, 12])


def net_reduce_mean():
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["a"], pads=[1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("ReduceMean", ["b"], ["c"], axes=[-1], keepdims=0),
        helper.make_node("Gemm", ["c", "fc"], ["y"], transB=1),
    ]
    return model(nodes, {"k": w(3, 2, 3), "fc": w(2, 3)}, [1, 2, 10])


NETS = {
    "pads_pools": net_pads_pools,
    "stride_gap": net_stride_gap,
    "pad_reshape": net_pad_reshape,
    "reduce_mean": net_reduce_mean,
}


def write(tmp_path, m, name="model"):
    path = tmp_path / f"{name}.onnx"
    onnx.save(m, str(path))
    return path


def same_network(a, b):
    assert a.input_shape == b.input_shape and len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert (type(x), x.name, x.in_shape, x.out_shape) == (type(y), y.name, y.in_shape, y.out_shape)
        for attr in ("weight", "bias"):
            u, v = getattr(x, attr, None), getattr(y, attr, None)
            assert (u is None) == (v is None) and (u is None or np.array_equal(u, v))
        if hasattr(x, "alpha"):
            assert (x.function, x.alpha, x.beta, x.parameter) == (y.function, y.alpha, y.beta, y.parameter)


@pytest.mark.parametrize("which", sorted(NETS))
def test_model_bytes_import_as_the_file(tmp_path, which):
    path = write(tmp_path, NETS[which]())
    same_network(import_onnx(path.read_bytes(), name="model").to_network(), import_onnx(path).to_network())
    with pytest.raises(LipdslError, match="cannot read 'x' as an ONNX model"):
        import_onnx(b"\x08garbage", name="x")


@pytest.mark.parametrize("which", sorted(NETS))
def test_roundtrip_forward_matches_onnx_reference(tmp_path, which):
    m = NETS[which]()
    imported = import_onnx(write(tmp_path, m))
    spec, weights = imported.write(tmp_path / "out" / "net.lip")
    _, net = load_network(spec)
    same_network(net, imported.to_network())  # the in-memory network is the spec's network
    ref = ReferenceEvaluator(m)
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
    for _ in range(5):
        u = 3 * RNG.standard_normal(shape)
        want = ref.run(None, {"x": u[None]})[0][0]
        got = forward(net, u)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.solver
@pytest.mark.parametrize("which", ["pads_pools", "stride_gap"])
def test_imported_bound_above_empirical_lower_bound(tmp_path, which):
    from lipdsl.baselines.empirical import lower_bound

    net = import_onnx(write(tmp_path, NETS[which]())).to_network()
    result = solve_network(net)
    low = lower_bound(net, starts=4, time_budget=3.0)
    assert result.certificate.verified
    assert low.value <= result.certificate.lipschitz


def test_spec_is_readable_and_keys_follow_initializers(tmp_path):
    imported = import_onnx(write(tmp_path, net_pad_reshape(), "odd"))
    text = imported.spec_text("odd.npz")
    assert "network odd\ninput 3 x 12\n" in text
    assert "padding causal, weight _0_Conv.weight" in text  # Pad node (2, 0) folded into the conv
    assert "weight _0.weight, bias _0.bias" in text
    assert set(imported.tensors) == {"_0_Conv.weight", "_0.weight", "_0.bias", "_1.weight"}
    parse(Source("odd.lip", text))  # valid syntax with every generated key


def test_gemm_transposition_and_scaling_are_noted(tmp_path):
    imported = import_onnx(write(tmp_path, net_pads_pools()))
    W = imported.tensors["fc2.w"]
    assert W.shape == (3, 5)  # PyTorch layout (out, in) from B (in, out)
    assert any("transpose of B" in n for n in imported.notes)
    assert any("beta * C" in n for n in imported.notes)


def test_symbolic_length_gives_any_length_or_fixed(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "k"], ["a"], pads=[2, 0]), helper.make_node("Relu", ["a"], ["y"])]
    m = model(nodes, {"k": w(2, 1, 3)}, ["batch", 1, "N"])
    assert str(import_onnx(m).input_shape) == "1x*"
    assert str(import_onnx(m, length=20).input_shape) == "1x20"


@pytest.mark.parametrize(
    "name",
    [
        "0.weight",
        "features.3.bias",
        "onnx::Conv_7",
        "/0/Conv_output_0",
        "a..b.",
        "weight",
        "flatten",
        "é",
    ],
)
def test_sanitized_keys_parse(name):
    """A sanitized key is read back as that key, whole (not split, not taken for a keyword)."""
    key = spelt_key(name)
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key)
    net = parse(Source("k.lip", f'input 2\nweights "w.npz"\ndense d: 2 -> 2, weight {key}\n'))
    (option,) = net.layers[0].options
    assert option.key == "weight" and option.value.key == key and option.value.file is None


def _bn_of_pad():
    """A batch norm of zeros padded before it, with no conv after it to fold into (others are folded or
    kept: test_onnx_batchnorm.py)."""
    return model(
        [
            helper.make_node("Pad", ["x", "pads"], ["p"]),
            helper.make_node("BatchNormalization", ["p", "s", "b", "m", "v"], ["n"], name="bn1"),
            helper.make_node("Relu", ["n"], ["r"]),
            helper.make_node("Conv", ["r", "k"], ["y"]),
        ],
        {"pads": np.array([0, 0, 1, 0, 0, 1]), "k": w(2, 1, 3), "s": np.ones(1), "b": np.ones(1),
         "m": np.zeros(1), "v": np.ones(1)},
        [1, 1, 8],
    )


def _residual():
    return model(
        [
            helper.make_node("Conv", ["x", "k"], ["a"], pads=[1, 1]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Mul", ["a", "b"], ["y"], name="skip"),  # a residual Add is imported (a block)
        ],
        {"k": w(1, 1, 3)},
        [1, 1, 8],
    )


def _concat():
    return model(
        [
            helper.make_node("Conv", ["x", "k"], ["a"]),
            helper.make_node("Concat", ["a", "a"], ["y"], axis=1, name="cat"),
        ],
        {"k": w(1, 1, 3)},
        [1, 1, 8],
    )


def _grouped():
    return model(
        [helper.make_node("Conv", ["x", "k"], ["y"], group=2, name="dw")], {"k": w(2, 1, 3)}, [1, 2, 8]
    )


def _asymmetric():
    return model(
        [helper.make_node("Conv", ["x", "k"], ["y"], pads=[1, 2], name="asym")], {"k": w(1, 1, 3)}, [1, 1, 8]
    )


def _conv2d():
    return model([helper.make_node("Conv", ["x", "k"], ["y"], name="c2d")], {"k": w(1, 1, 3, 3)}, [1, 1, 8])


def _ceil_pool():
    return model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], strides=[2], ceil_mode=1, name="mp")],
        {},
        [1, 1, 9],
    )


def _padded_pool():
    return model(
        [
            helper.make_node(
                "AveragePool", ["x"], ["y"], kernel_shape=[3], pads=[1, 1], count_include_pad=0, name="ap"
            )
        ],
        {},
        [1, 1, 9],
    )


def _mul():
    return model(
        [helper.make_node("Mul", ["x", "s"], ["y"], name="scale")], {"s": np.array([2.0])}, [1, 1, 9]
    )


def _reshape_not_flatten():
    return model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="rs")],
        {"shape": np.array([0, 2, 4])},
        [1, 1, 8],
    )


@pytest.mark.parametrize(
    "build, words",
    [
        (_bn_of_pad, ["'bn1' (BatchNormalization)", "zeros of the Pad", "cannot express"]),
        (_residual, ["'skip' (Mul)", "combines 2 tensors", "residual Add"]),
        (_concat, ["'cat' (Concat)"]),
        (_grouped, ["'dw' (Conv)", "grouped"]),
        (_asymmetric, ["'asym' (Conv)", "1 zeros on the left and 2 on the right"]),
        (_conv2d, ["'c2d' (Conv)", "1-D convolutions"]),
        (_ceil_pool, ["'mp' (MaxPool)", "ceil_mode"]),
        (_padded_pool, ["'ap' (AveragePool)", "pads"]),
        (_mul, ["'scale' (Mul)", "not supported"]),
        (_reshape_not_flatten, ["'rs' (Reshape)", "not a flatten"]),
    ],
)
def test_unsupported_ops_name_the_node_and_op(build, words):
    with pytest.raises(UnsupportedError) as info:
        import_onnx(build())
    for word in words:
        assert word in str(info.value)


def test_residual_add_of_two_branches_is_a_block(tmp_path):
    m = model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Tanh", ["x"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"], name="res"),
        ],
        {},
        [1, 1, 8],
    )
    imported = import_onnx(m)  # both branches hold an activation: the first is the main path
    (block,) = imported.layers
    assert block.kind == "residual" and block.origin == "node 'res' (Add)"
    functions = [L.options["function"] for L in block.options["main"] + block.options["shortcut"]]
    assert functions == ["relu", "tanh"]


def test_ceil_mode_accepted_when_windows_tile(tmp_path):
    m = model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], strides=[2], ceil_mode=1)], {}, [1, 1, 8]
    )
    assert import_onnx(m).layers[0].options == {"kernel": 2, "stride": 2}


# -- CLI --------------------------------------------------------------------------------------------------


def test_cli_import_then_check(tmp_path, capsys):
    path = write(tmp_path, net_stride_gap(), "small")
    assert main(["import", str(path), "-o", str(tmp_path / "specs" / "small.lip")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "OK network 'small'" in out
    assert (tmp_path / "specs" / "small.npz").is_file()
    assert main(["check", str(tmp_path / "specs" / "small.lip")]) == 0


def test_cli_import_unsupported_exits_1(tmp_path, capsys):
    assert main(["import", str(write(tmp_path, _bn_of_pad())), "-o", str(tmp_path / "x.lip")]) == 1
    err = capsys.readouterr().err
    assert "error: node 'bn1' (BatchNormalization)" in err and "hint:" in err
    assert not (tmp_path / "x.lip").exists()  # never a wrong spec


def test_cli_import_pt_without_architecture(tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(b"not read")
    assert main(["import", str(tmp_path / "m.pt"), "-o", str(tmp_path / "x.lip")]) == 1
    assert "--like" in capsys.readouterr().err


def test_cli_import_not_onnx(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"\x00garbage")
    assert main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.lip")]) == 1
    assert "cannot read" in capsys.readouterr().err


# -- acceptance: the ECG model, built as ONNX directly, gives the hand-written spec's bound ----------------


def ecg_onnx():
    d = np.load(ROOT / "specs" / "weights" / "ecg_CNN_23_03_08_11_52.npz")
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["a"], pads=[2, 0], kernel_shape=[3]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("AveragePool", ["b"], ["c"], kernel_shape=[2], strides=[2]),
        helper.make_node("Conv", ["c", "conv2.weight", "conv2.bias"], ["d"], pads=[2, 0], kernel_shape=[3]),
        helper.make_node("Relu", ["d"], ["e"]),
        helper.make_node("AveragePool", ["e"], ["f"], kernel_shape=[2], strides=[2]),
        helper.make_node("Flatten", ["f"], ["g"]),
        helper.make_node("Gemm", ["g", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["i"]),
        helper.make_node("Gemm", ["i", "fc2.weight", "fc2.bias"], ["y"], transB=1),
    ]
    return model(nodes, {k: d[k] for k in d.files}, [1, 1, 128])


@pytest.mark.solver
def test_ecg_onnx_gives_the_hand_written_bound(tmp_path, ecg_spec_bound):
    m = ecg_onnx()
    spec, _ = import_onnx(write(tmp_path, m, "ecg")).write(tmp_path / "ecg.lip")
    _, net = load_network(spec)
    _, ref = load_network(ECG_SPEC)
    same_network_weights = all(
        np.array_equal(getattr(a, "weight", 0), getattr(b, "weight", 0))
        for a, b in zip(net.layers, ref.layers)
    )
    assert same_network_weights
    u = RNG.standard_normal((1, 128))
    np.testing.assert_allclose(
        forward(net, u), ReferenceEvaluator(m).run(None, {"x": u[None]})[0][0], rtol=1e-6, atol=1e-9
    )
    bound = solve_network(net).certificate
    assert bound.verified
    assert abs(bound.lipschitz - ecg_spec_bound) <= 1e-9 * ecg_spec_bound


# -- issue 17: import --like keeps Lark's lines; -o never overwrites the weights ----------------------------

@pytest.mark.parametrize("odd", ["\u2028", "\x0c", "\x85", "\u2029", "\x1c"])
def test_like_template_with_odd_line_breaks_in_comments_keeps_every_layer(tmp_path, odd):
    from lipdsl.importers.pytorch import import_state_dict
    from lipdsl.lang.load import load_network

    arch = tmp_path / "arch.lip"
    arch.write_text(f"input 2\n# a comment{odd}with an odd break\nweights \"old.npz\"\n"
                    "dense a: 2 -> 3, weight fc1.weight\nrelu\n"
                    f"# again{odd}\ndense b: 3 -> 1, weight fc2.weight\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    state = {"fc1.weight": rng.normal(size=(3, 2)), "fc2.weight": rng.normal(size=(1, 3))}
    spec, _ = import_state_dict(state, arch, tmp_path / "out" / "net.lip")
    _, net = load_network(spec)
    assert [layer.name for layer in net.layers] == ["a", "relu1", "b"]


def test_like_spec_header_comes_first_and_says_whose_comments_follow(tmp_path):
    """The generated spec opens with where its weights and architecture come from, then says the comments
    below are the architecture's (they may name its old weights); no such line when it has no comment."""
    from lipdsl.importers.pytorch import import_state_dict

    arch = tmp_path / "arch.lip"
    arch.write_text('# arch.lip -- a tiny net\n# Weights: old.npz (stale once imported)\ninput 2\n'
                    'weights "old#1.npz"\ndense a: 2 -> 1, weight fc.weight  # the head\n', encoding="utf-8")
    state = {"fc.weight": np.ones((1, 2))}
    spec, _ = import_state_dict(state, arch, tmp_path / "net.lip")
    lines = spec.read_text(encoding="utf-8").splitlines()
    assert lines[:4] == ["# Weights from a state_dict, architecture from arch.lip.",
                         "# The comments below are arch.lip's (its weights are replaced by these).",
                         "# arch.lip -- a tiny net", "# Weights: old.npz (stale once imported)"]
    arch.write_text('input 2\nweights "old#1.npz"\ndense a: 2 -> 1, weight fc.weight\n', encoding="utf-8")
    spec, _ = import_state_dict(state, arch, tmp_path / "net2.lip")
    lines = spec.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# Weights from a state_dict, architecture from arch.lip." and lines[1] == "input 2"


@pytest.mark.parametrize("output", ["net.npz", "net.npy", "net.onnx"])
def test_import_output_must_be_a_spec_path(tmp_path, capsys, output):
    from lipdsl.app.cli import main

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read")
    (tmp_path / "net.npz").write_bytes(b"precious weights")
    assert main(["import", str(model), "-o", str(tmp_path / output)]) == 1
    assert "names the spec to write" in capsys.readouterr().err
    assert (tmp_path / "net.npz").read_bytes() == b"precious weights"


@pytest.mark.parametrize("shortcut", ["conv", "maxpool", "avgpool"])
def test_strided_residual_block_imports_and_matches_the_reference(shortcut, tmp_path):
    """A downsampling block (ResNet-style): relu(conv s2 -> relu -> conv + shortcut), the shortcut a 1x1
    stride-2 conv, or a 2-wide max or average pool; imported as one block, its forward pass equal to onnx's
    reference evaluator, its bound certified and above the empirical lower bound."""
    from lipdsl.baselines.empirical import lower_bound

    c2 = 3 if shortcut == "conv" else 2
    short = {
        "conv": [helper.make_node("Conv", ["x", "s.weight"], ["s"], kernel_shape=[1], strides=[2], name="s")],
        "maxpool": [helper.make_node("MaxPool", ["x"], ["s"], kernel_shape=[2], strides=[2], name="s")],
        "avgpool": [helper.make_node("AveragePool", ["x"], ["s"], kernel_shape=[2], strides=[2], name="s")],
    }[shortcut]
    nodes = [
        helper.make_node("Conv", ["x", "c1.weight"], ["a"], kernel_shape=[3], strides=[2], pads=[1, 1],
                         name="c1"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "c2.weight"], ["c"], kernel_shape=[3], pads=[1, 1], name="c2"),
        *short,
        helper.make_node("Add", ["c", "s"], ["d"], name="res"),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    inits = {"c1.weight": w(c2, 2, 3), "c2.weight": w(c2, c2, 3)}
    if shortcut == "conv":
        inits["s.weight"] = w(c2, 2, 1)
    m = model(nodes, inits, [1, 2, 16])
    imported = import_onnx(write(tmp_path, m))
    net = imported.to_network()
    assert [L.kind for L in net.layers] == ["residual", "activation"]
    ref = ReferenceEvaluator(m)
    for _ in range(3):
        u = RNG.standard_normal((2, 16))
        want = ref.run(None, {"x": u[None]})[0][0]
        np.testing.assert_allclose(forward(net, u), want, rtol=1e-9, atol=1e-12)
    result = solve_network(net)
    assert result.certificate.verified
    assert lower_bound(net, starts=2, time_budget=1.0).value <= result.certificate.lipschitz

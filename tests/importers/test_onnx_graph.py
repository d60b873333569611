"""ONNX graph normalisation (lipdsl/importers/onnx_graph.py) and the import of real exports, without torch.

The exported files are in tests/data/onnx (tiny models, written once by tests/data/onnx/make_onnx.py) and
specs/weights/trained (the GunPoint models of specs/train/train_ucr.py); corner cases are built with
onnx.helper. The oracle is onnx's own numpy reference evaluator, never lipdsl.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from lipdsl.importers import onnx_file  # noqa: E402
from lipdsl.pipeline import solve_network  # noqa: E402
from lipdsl.errors import LipdslError, UnsupportedError  # noqa: E402
from lipdsl.model.forward import forward  # noqa: E402
from lipdsl.importers.importer import import_onnx  # noqa: E402
from lipdsl.lang.load import load_network  # noqa: E402
from lipdsl.importers.onnx_graph import check_against_reference  # noqa: E402
from repo_paths import ROOT  # noqa: E402

DATA = ROOT / "tests" / "data" / "onnx"
TRAINED = ROOT / "specs" / "weights" / "trained"
RNG = np.random.default_rng(11)


def reference(m, u: np.ndarray) -> np.ndarray:
    """The model's output for one input (no batch axis), by onnx.reference, in the model's input dtype."""
    proto = onnx.load(str(m)) if isinstance(m, Path) else m
    vi = proto.graph.input[0]
    dtype = {1: np.float32, 11: np.float64}[vi.type.tensor_type.elem_type]
    return np.asarray(ReferenceEvaluator(proto).run(None, {vi.name: u[None].astype(dtype)})[0][0], np.float64)


def model(nodes, inits, shape, opset=17, out="y", dtype=TensorProto.DOUBLE, extra_inputs=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, shape), *extra_inputs],
        [helper.make_tensor_value_info(out, dtype, None)],
        [
            numpy_helper.from_array(
                np.asarray(v) if np.asarray(v).dtype.kind in "ib" else np.asarray(v, np.float64), k
            )
            for k, v in inits.items()
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def w(*shape):
    return RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))


# -- real exports: batch norm, weight norm, chomps, both exporters -------------------------------------------

ACCEPTED = [
    DATA / "fcn.ts.onnx",
    DATA / "fcn.dynamo.onnx",
    DATA / "tcn.ts.onnx",
    DATA / "tcn.dynamo.onnx",
    DATA / "bn_before_dense.ts.onnx",
    DATA / "bn_after_dense.ts.onnx",
    DATA / "bn_first.ts.onnx",
    DATA / "bn_first_padded.ts.onnx",  # (a batchnorm layer before the padded conv)
    DATA / "old_weight_norm.ts.onnx",
    TRAINED / "fcn_8_16_8.torchscript.onnx",
    TRAINED / "fcn_8_16_8.dynamo.onnx",
    TRAINED / "tcn_plain16.torchscript.onnx",
    TRAINED / "tcn_plain16.dynamo.onnx",
    DATA / "tcn_residual.ts.onnx",
    TRAINED / "resnet1d_16_32_32.torchscript.onnx",
    TRAINED / "resnet1d_16_32_32.dynamo.onnx",
    TRAINED / "tcn_res16.torchscript.onnx",
    TRAINED / "tcn_res16.dynamo.onnx",
    TRAINED / "resnet1d_strided_8_8_16.torchscript.onnx",
    TRAINED / "resnet1d_strided_8_8_16.dynamo.onnx",
]


@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: p.name)
def test_exported_models_import_and_match_the_onnx_reference(path):
    imported = import_onnx(path)
    net = imported.to_network()
    assert [L.kind for L in imported.layers].count("conv1d") + [L.kind for L in imported.layers].count(
        "dense"
    ) >= 1
    shape = net.input_shape
    for _ in range(3):
        u = 2 * RNG.standard_normal((shape.channels,) if shape.flat else (shape.channels, shape.length))
        ref = reference(path, u)
        mine = forward(net, u)
        np.testing.assert_allclose(
            mine.reshape(-1), ref.reshape(-1), rtol=1e-4, atol=1e-4 * np.abs(ref).max()
        )


@pytest.mark.parametrize(
    "path, words",
    [
        (DATA / "dropout_training.ts.onnx", ["(Dropout)", "training mode", "ratio 0.3"]),
    ],
    ids=lambda p: p.name if isinstance(p, Path) else "",
)
def test_exports_lipdsl_cannot_express_are_refused_naming_the_node(path, words):
    with pytest.raises(UnsupportedError) as info:
        import_onnx(path)
    for word in words:
        assert word in str(info.value)


def _fold(d, conv, bn, eps=1e-5):
    s = d[f"{bn}.weight"] / np.sqrt(d[f"{bn}.running_var"] + eps)
    return d[f"{conv}.weight"] * s[:, None, None], (d[f"{conv}.bias"] - d[f"{bn}.running_mean"]) * s + d[
        f"{bn}.bias"
    ]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_batchnorm_is_folded_as_pytorch_defines_it(exporter):
    """The folded tensors equal diag(s) W and s (b - mean) + beta from the state_dict, to rounding."""
    d = np.load(TRAINED / "fcn_8_16_8.npz")
    imported = import_onnx(TRAINED / f"fcn_8_16_8.{exporter}.onnx")
    convs = [L for L in imported.layers if L.kind == "conv1d"]
    assert [L.name for L in convs] == ["conv1", "conv2", "conv3"]
    for i, L in enumerate(convs, 1):
        W, b = _fold(d, f"conv{i}", f"bn{i}")
        np.testing.assert_allclose(imported.tensors[L.options["weight"]], W, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(imported.tensors[L.options["bias"]], b, rtol=1e-14, atol=1e-15)
    assert [L.options["padding"] for L in convs] == ["same", 2, 1]  # k8 'same' from Pad (dynamo) or pads
    assert any("folded into" in n for n in imported.notes)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_weight_norm_is_evaluated_in_float64_and_named_after_the_parameter(exporter):
    d = np.load(TRAINED / "tcn_plain16.npz")
    imported = import_onnx(TRAINED / f"tcn_plain16.{exporter}.onnx")
    convs = [L for L in imported.layers if L.kind == "conv1d"]
    assert [L.options["weight"] for L in convs] == [f"network.{i}.weight" for i in (0, 3, 6, 9, 12, 15)]
    assert [L.options["dilation"] for L in convs] == [1, 2, 4, 1, 2, 4]
    assert all(L.options["padding"] == "causal" for L in convs)  # Conv pads (2d, 2d) + Slice [:-2d]
    for L in convs:
        np.testing.assert_allclose(
            imported.tensors[L.options["weight"]], d[L.options["weight"]], rtol=0, atol=2e-16
        )
    old = import_onnx(DATA / "old_weight_norm.ts.onnx")  # torch.nn.utils.weight_norm: weight_g, weight_v
    assert old.layers[0].options["weight"] == "conv.weight" and old.layers[0].options["padding"] == "causal"


def _folded_fcn_spec(tmp_path, name="fcn_8_16_8"):
    """The FCN written by hand with batch norm folded in numpy (the reference the import must equal)."""
    d = np.load(TRAINED / f"{name}.npz")
    out = {}
    for i in (1, 2, 3):
        out[f"c{i}.w"], out[f"c{i}.b"] = _fold(d, f"conv{i}", f"bn{i}")
    out["fc.w"], out["fc.b"] = d["fc.weight"], d["fc.bias"]
    np.savez(tmp_path / "folded.npz", **out)
    c1, c2, c3 = (d[f"conv{i}.weight"].shape[0] for i in (1, 2, 3))
    text = f"""network fcn
input 1 x 150
weights "folded.npz"
conv1d c1: 1 -> {c1}, kernel 8, padding same, weight c1.w, bias c1.b
relu
conv1d c2: {c1} -> {c2}, kernel 5, padding same, weight c2.w, bias c2.b
relu
conv1d c3: {c2} -> {c3}, kernel 3, padding same, weight c3.w, bias c3.b
relu
global_avgpool
dense fc: {c3} -> 2, weight fc.w, bias fc.b
"""
    (tmp_path / "fcn.lip").write_text(text)
    return tmp_path / "fcn.lip"


@pytest.mark.solver
def test_trained_fcn_exports_give_the_hand_written_bound(tmp_path):
    _, ref = load_network(_folded_fcn_spec(tmp_path))
    expected = solve_network(ref).certificate
    assert expected.verified
    for exporter in ("torchscript", "dynamo"):
        spec, _ = import_onnx(TRAINED / f"fcn_8_16_8.{exporter}.onnx").write(tmp_path / f"{exporter}.lip")
        _, net = load_network(spec)
        cert = solve_network(net).certificate
        assert cert.verified
        assert abs(cert.lipschitz_solver - expected.lipschitz_solver) <= 1e-9 * expected.lipschitz_solver
        assert abs(cert.lipschitz - expected.lipschitz) <= 1e-5 * expected.lipschitz


def test_trained_tcn_exports_equal_the_hand_written_spec():
    """specs/tcn_plain.lip (weights by key from the npz) and both exports are the same network, tensor for
    tensor (so the SDPs, hence the bounds, are the same; the bound itself: tests/e2e/test_specs.py)."""
    _, ref = load_network(ROOT / "specs" / "tcn_plain.lip")
    for exporter in ("torchscript", "dynamo"):
        net = import_onnx(TRAINED / f"tcn_plain16.{exporter}.onnx").to_network()
        assert len(net.layers) == len(ref.layers)
        for a, b in zip(net.layers, ref.layers):
            assert type(a) is type(b)
            for attr in ("stride", "dilation", "pad_left", "pad_right"):
                assert getattr(a, attr, None) == getattr(b, attr, None)
            for attr in ("weight", "bias"):
                x, y = getattr(a, attr, None), getattr(b, attr, None)
                assert (x is None) == (y is None)
                if x is not None:
                    np.testing.assert_allclose(x, y, rtol=0, atol=2e-16)


# -- residual blocks --------------------------------------------------------------------------------------


def _same_tensor(x, y):
    assert (x is None) == (y is None)
    if x is not None:
        np.testing.assert_allclose(x, y, rtol=1e-14, atol=2e-16)


def _folded(layers):
    """Conv/dense layers with any batch norm right after them folded (y = s (W x + b) + t), in order."""
    out = []
    for L in layers:
        if L.kind == "batchnorm":
            W, b, P = out[-1]
            out[-1] = (W * L.scale[:, None, None], L.scale * b + L.shift, P)
        elif L.kind in ("conv1d", "dense"):
            out.append((L.weight, L.bias, (L.stride, L.dilation, L.pad_left, L.pad_right) if L.kind ==
                        "conv1d" else None))
    return out


def _assert_same_network(net, ref):
    """The same blocks and layers, the same (batch-norm-folded) tensors and the same paddings."""
    assert [L.kind for L in net.layers] == [L.kind for L in ref.layers]
    for a, b in zip(net.layers, ref.layers):
        if a.kind == "residual":
            for x, y in ((a.main, b.main), (a.shortcut, b.shortcut)):
                assert [L.kind for L in x] == [L.kind for L in y if L.kind != "batchnorm"]
                for (Wa, ba, Pa), (Wb, bb, Pb) in zip(_folded(x), _folded(y), strict=True):
                    _same_tensor(Wa, Wb), _same_tensor(ba, bb)
                    assert Pa == Pb
        elif a.kind in ("conv1d", "dense"):
            _same_tensor(a.weight, b.weight), _same_tensor(a.bias, b.bias)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("stem, spec", [("resnet1d_16_32_32", "resnet1d.lip"), ("tcn_res16", "tcn.lip")])
def test_trained_residual_exports_equal_the_hand_written_spec(stem, spec, exporter, tmp_path):
    """ResNet-1D (conv + BN shortcut, BN folded) and the residual TCN (1x1 downsample, identity shortcuts,
    chomps): the import (checked against onnx.reference at every block output) is the hand-written spec."""
    _, ref = load_network(ROOT / "specs" / spec)
    imported = import_onnx(TRAINED / f"{stem}.{exporter}.onnx")
    assert [L.kind for L in imported.layers][:2] == ["residual", "activation"]
    _assert_same_network(imported.to_network(), ref)
    path, _ = imported.write(tmp_path / "imported.lip")  # the spec text reads back as the same network
    text = path.read_text()
    assert text.count("residual") == 3 and text.count("\nend") == 3
    _, net = load_network(path)
    _assert_same_network(net, ref)
    u = RNG.standard_normal((1, 150))
    np.testing.assert_allclose(forward(net, u), reference(TRAINED / f"{stem}.{exporter}.onnx", u),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_trained_strided_resnet_exports_equal_the_hand_written_spec(exporter):
    """Downsampling blocks (conv stride 2; max pool and 1x1 stride-2 conv + BN shortcuts): the import is the
    hand-written spec (batch norms folded), whose forward pass is onnx.reference's; the dynamo export's zero
    bias of a bias-free conv (a CastLike of a constant) is a constant."""
    import dataclasses

    from lipdsl.model.residual import fold_batchnorm

    _, ref = load_network(ROOT / "specs" / "resnet1d_strided.lip")
    path = TRAINED / f"resnet1d_strided_8_8_16.{exporter}.onnx"
    imported = import_onnx(path)
    assert [L.kind for L in imported.layers] == ["conv1d", "activation", "residual", "activation", "residual",
                                                  "activation", "global_avgpool", "dense"]
    folded = dataclasses.replace(ref, layers=tuple(fold_batchnorm(ref.layers)))  # (the stem's batch norm)
    _assert_same_network(imported.to_network(), folded)
    u = RNG.standard_normal((1, 150))
    np.testing.assert_allclose(forward(ref, u), reference(path, u), rtol=1e-4, atol=1e-4)


def _residual_model(shortcut: str, act="Relu"):
    """x -> conv(k3, same) -> act -> conv(k3, same) [+ x | + conv1x1(x) with BN] -> act -> GAP -> dense."""
    rng = np.random.default_rng(5)
    c_in, c = (2, 2) if shortcut == "identity" else (2, 3)
    inits = {"w1": rng.standard_normal((c, c_in, 3)), "b1": rng.standard_normal(c),
             "w2": rng.standard_normal((c, c, 3)), "fw": rng.standard_normal((2, c)),
             "fb": rng.standard_normal(2)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1], name="c1"),
        helper.make_node(act, ["a"], ["b"], name="r1"),
        helper.make_node("Conv", ["b", "w2"], ["m"], pads=[1, 1], name="c2"),
    ]
    if shortcut == "identity":
        nodes.append(helper.make_node("Add", ["m", "x"], ["s"], name="skip"))
    else:
        inits.update(ws=rng.standard_normal((c, c_in, 1)), g=rng.uniform(0.5, 2, c),
                     be=rng.standard_normal(c),
                     mu=rng.standard_normal(c), var=rng.uniform(0.5, 2, c))
        nodes += [helper.make_node("Conv", ["x", "ws"], ["p"], name="down"),
                  helper.make_node("BatchNormalization", ["p", "g", "be", "mu", "var"], ["q"], name="bn"),
                  helper.make_node("Add", ["q", "m"], ["s"], name="skip")]
    nodes += [helper.make_node(act, ["s"], ["t"], name="r2"),
              helper.make_node("GlobalAveragePool", ["t"], ["gp"]),
              helper.make_node("Flatten", ["gp"], ["f"]),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "res",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, c_in, 12])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 2])],
        [numpy_helper.from_array(np.asarray(v, np.float64), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("shortcut", ["identity", "conv"])
@pytest.mark.parametrize("act", ["Relu", "Tanh"])
def test_synthetic_residual_blocks_import_exactly(shortcut, act, tmp_path):
    m = _residual_model(shortcut, act)
    imported = import_onnx(m)
    block = imported.layers[0]
    assert block.kind == "residual" and block.origin == "node 'skip' (Add)"
    assert [L.kind for L in block.options["main"]] == ["conv1d", "activation", "conv1d"]
    assert [L.kind for L in block.options["shortcut"]] == ([] if shortcut == "identity" else ["conv1d"])
    assert imported.outputs[0] == "s"  # the block's output is compared with onnx.reference
    path, _ = imported.write(tmp_path / "res.lip")
    assert ("shortcut" in path.read_text()) == (shortcut == "conv")
    _, net = load_network(path)
    for _ in range(3):
        u = RNG.standard_normal((net.input_shape.channels, 12))
        np.testing.assert_allclose(forward(net, u), reference(m, u), rtol=1e-12, atol=1e-12)


def test_a_wrong_block_output_is_caught_by_the_reference_check():
    imported = import_onnx(_residual_model("conv"))
    short = imported.layers[0].options["shortcut"][0]
    imported.tensors[short.options["weight"]] = imported.tensors[short.options["weight"]] * 1.01
    with pytest.raises(UnsupportedError, match="'q' of layer 1 .*'down'"):  # the shortcut's conv + BN
        check_against_reference(_residual_model("conv"), imported)
    names = [n for n in imported.layers[0].options["outputs"]["main"]]
    assert names == ["a", "b", "m"]  # every branch layer is compared with its ONNX tensor, then the block (s)


def _graph(nodes, inits, c=1, n=8):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, c, n])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(np.asarray(v, np.float64), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case, words", [
    ("three", ["feeds 3 nodes", "branches"]),
    ("mul", ["(Mul)", "not supported"]),
    ("two_joins", ["feeds 2 nodes", "inside a residual branch"]),
])
def test_branches_that_are_not_residual_blocks_are_refused(case, words):
    k = {"k": np.ones((1, 1, 3))}
    if case == "three":
        nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Tanh", ["x"], ["b"]),
                 helper.make_node("Sigmoid", ["x"], ["c"]), helper.make_node("Add", ["a", "b"], ["d"]),
                 helper.make_node("Add", ["d", "c"], ["y"])]
    elif case == "mul":
        nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mul", ["a", "x"], ["y"], name="m")]
    else:
        nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Tanh", ["a"], ["b"]),
                 helper.make_node("Sigmoid", ["a"], ["c"]), helper.make_node("Add", ["b", "c"], ["d"]),
                 helper.make_node("Add", ["d", "x"], ["y"])]
    with pytest.raises(UnsupportedError) as info:
        import_onnx(_graph(nodes, k))
    for word in words:
        assert word in str(info.value)


def test_a_pool_inside_a_branch_is_part_of_the_block():
    """Pools may sit in a residual branch (a downsampling block's shortcut: test_importer.py)."""
    nodes = [helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[1]),
             helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Add", ["b", "x"], ["y"])]
    (block,) = import_onnx(_graph(nodes, {})).layers
    assert block.kind == "residual" and [L.kind for L in block.options["main"]] == ["avgpool", "activation"]


# -- Constant nodes, every attribute form ------------------------------------------------------------------


def test_every_constant_form_is_evaluated():
    W = w(2, 1, 3)
    nodes = [
        helper.make_node("Constant", [], ["wflat"], value=numpy_helper.from_array(W.reshape(-1))),
        helper.make_node("Constant", [], ["wshape"], value_ints=[2, 1, 3]),
        helper.make_node("Reshape", ["wflat", "wshape"], ["w0"]),
        helper.make_node("Constant", [], ["two32"], value_float=2.0),
        helper.make_node("Cast", ["two32"], ["two"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["w0", "two"], ["k"]),
        helper.make_node("Constant", [], ["b"], value_floats=[0.5, -0.5]),
        helper.make_node("Constant", [], ["one"], value_int=1),
        helper.make_node("Constant", [], ["label"], value_string="unused"),
        helper.make_node("Constant", [], ["labels"], value_strings=["a", "b"]),
        helper.make_node("Cast", ["b"], ["b64"], to=TensorProto.DOUBLE),
        helper.make_node("Conv", ["x", "k", "b64"], ["y"], pads=[1, 1]),
    ]
    m = model(nodes, {}, [1, 1, 8])
    imported = import_onnx(m)
    conv = imported.layers[0]
    np.testing.assert_array_equal(imported.tensors[conv.options["weight"]], 2 * W)
    np.testing.assert_array_equal(imported.tensors[conv.options["bias"]], [0.5, -0.5])
    u = RNG.standard_normal((1, 8))
    np.testing.assert_allclose(forward(imported.to_network(), u), reference(m, u), rtol=1e-12)


def test_sparse_constant_is_refused_clearly():
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0]), "v"),
        numpy_helper.from_array(np.array([0], np.int64), "i"),
        [3],
    )
    node = helper.make_node("Constant", [], ["c"], name="sp", sparse_value=sparse)
    m = model([node, helper.make_node("Add", ["x", "c"], ["y"])], {}, [1, 3])
    with pytest.raises(UnsupportedError, match="'sp' .*sparse"):
        import_onnx(m)


# -- Conv + Add: only a per-channel bias is folded ---------------------------------------------------------


@pytest.mark.parametrize(
    "shape, ok",
    [
        ((3, 1), True),
        ((1, 3, 1), True),
        ((1, 1, 1), True),
        ((1,), True),
        ((), True),
        ((3, 1, 1), False),  # issue 17: broadcasts a batch axis of 3 (the unsound import)
        ((2, 3, 1), False),
        ((1, 1, 3, 1), False),
        ((8,), False),
        ((1, 3, 8), False),
        ((3,), False),
    ],
)
def test_conv_add_is_folded_only_when_it_is_a_per_channel_bias(shape, ok):
    length = 8 if shape != (3,) else 3  # (3,) on a length-3 signal: a per-sample bias
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["a"], pads=[1, 1]),
        helper.make_node("Add", ["a", "c"], ["y"], name="add"),
    ]
    m = model(nodes, {"k": w(3, 1, 3), "c": RNG.standard_normal(shape)}, [1, 1, length])
    if not ok:
        with pytest.raises(UnsupportedError, match="'add' .*not a per-channel bias"):
            import_onnx(m)
        return
    net = import_onnx(m).to_network()
    u = RNG.standard_normal((1, length))
    np.testing.assert_allclose(forward(net, u), reference(m, u), rtol=1e-12, atol=1e-12)


def test_batch_broadcast_is_named():
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["a"]),
        helper.make_node("Add", ["a", "c"], ["y"], name="add"),
    ]
    m = model(nodes, {"k": w(3, 1, 3), "c": np.ones((3, 1, 1))}, [1, 1, 8])
    with pytest.raises(UnsupportedError, match="batch axis"):
        import_onnx(m)


# -- padding: Pad + auto_pad, strides, chomps ----------------------------------------------------------------


def test_pad_then_same_upper_stride_2_has_the_right_length():
    """issue 17: Pad (1, 0) + Conv(auto_pad=SAME_UPPER, stride 2) on 9 samples: ONNX pads the padded
    length."""
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Conv", ["p", "k"], ["y"], auto_pad="SAME_UPPER", strides=[2]),
    ]
    m = model(nodes, {"k": w(2, 1, 3), "pads": np.array([0, 0, 1, 0, 0, 0], np.int64)}, [1, 1, 9])
    net = import_onnx(m).to_network()
    u = RNG.standard_normal((1, 9))
    assert forward(net, u).shape == reference(m, u).shape == (2, 5)
    np.testing.assert_allclose(forward(net, u), reference(m, u), rtol=1e-12)


@pytest.mark.parametrize("auto", ["SAME_UPPER", "SAME_LOWER"])
def test_generated_pad_auto_pad_convs_are_exact_or_refused(auto):
    accepted = 0
    for n in range(6, 12):
        for before in ((0, 0), (1, 0), (0, 2), (1, 1)):
            for k in (1, 2, 3, 4):
                for s in (1, 2, 3):
                    nodes = [
                        helper.make_node("Pad", ["x", "pads"], ["p"]),
                        helper.make_node("Conv", ["p", "k"], ["y"], auto_pad=auto, strides=[s]),
                    ]
                    pads = np.array([0, 0, before[0], 0, 0, before[1]], np.int64)
                    m = model(nodes, {"k": w(2, 1, k), "pads": pads}, [1, 1, n])
                    try:
                        net = import_onnx(m).to_network()
                    except UnsupportedError:
                        continue
                    accepted += 1
                    u = RNG.standard_normal((1, n))
                    ref = reference(m, u)
                    assert forward(net, u).shape == ref.shape
                    np.testing.assert_allclose(forward(net, u), ref, rtol=1e-12, atol=1e-12)
    assert accepted > 100  # of 288: most are expressible (symmetric, causal or 'same' after flooring)


def _chomp(pads, starts, ends, axes=(2,), steps=None, length=8, k=3, dilation=1):
    inits = {
        "k": w(2, 1, k),
        "starts": np.array(starts, np.int64),
        "ends": np.array(ends, np.int64),
        "axes": np.array(axes, np.int64),
    }
    ins = ["a", "starts", "ends", "axes"]
    if steps is not None:
        inits["steps"] = np.array(steps, np.int64)
        ins.append("steps")
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["a"], pads=list(pads), dilations=[dilation]),
        helper.make_node("Slice", ins, ["y"], name="chomp"),
    ]
    return model(nodes, inits, [1, 1, length])


@pytest.mark.parametrize(
    "case, padding",
    [
        (dict(pads=(2, 2), starts=[0], ends=[-2]), "causal"),
        (dict(pads=(4, 4), starts=[0], ends=[-4], dilation=2), "causal"),
        (dict(pads=(2, 2), starts=[1], ends=[-1]), 1),
        (dict(pads=(2, 2), starts=[0], ends=[2**63 - 1]), 2),
        (dict(pads=(2, 2), starts=[0, 0], ends=[2**63 - 1, -2], axes=[1, -1], steps=[1, 1]), "causal"),
        (dict(pads=(2, 2), starts=[0], ends=[8]), "causal"),  # 10 outputs, keep the first 8
    ],
)
def test_chomps_become_padding(case, padding):
    m = _chomp(**case)
    imported = import_onnx(m)
    assert imported.layers[0].options["padding"] == padding
    u = RNG.standard_normal((1, 8))
    np.testing.assert_allclose(forward(imported.to_network(), u), reference(m, u), rtol=1e-12)


def test_chomp_of_a_symbolic_length_is_causal():
    m = _chomp((2, 2), [0], [-2])
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "N"
    imported = import_onnx(m)
    assert imported.input_shape.length is None and imported.layers[0].options["padding"] == "causal"


@pytest.mark.parametrize(
    "case, words",
    [
        (dict(pads=(1, 1), starts=[0], ends=[-2]), "more of the output"),
        (dict(pads=(2, 2), starts=[0], ends=[1], axes=[1]), "axis 1"),
        (dict(pads=(2, 2), starts=[0], ends=[-2], steps=[2]), "step 2"),
    ],
)
def test_chomps_that_are_not_padding_are_refused(case, words):
    with pytest.raises(UnsupportedError, match=words):
        import_onnx(_chomp(**case))


# -- batch norm corners -------------------------------------------------------------------------------------


def _bn_model(before=None, after=None, training=0, pads=(0, 0), size=1.0):
    nodes, x = [], "x"
    if before == "conv":
        nodes.append(helper.make_node("Conv", ["x", "k"], ["a"], pads=list(pads)))
        x = "a"
    nodes.append(
        helper.make_node(
            "BatchNormalization",
            [x, "s", "b", "m", "v"],
            ["n"],
            name="bn",
            epsilon=1e-3,
            training_mode=training,
        )
    )
    out = "n"
    if after == "conv":
        nodes.append(helper.make_node("Conv", ["n", "k2"], ["c"], pads=list(pads)))
        out = "c"
    nodes.append(helper.make_node("Tanh", [out], ["y"]))
    inits = {  # (size: the conv weights' and the batch norm scale's order of magnitude)
        "k": w(2, 2, 3) * size,
        "k2": w(3, 2, 3) * size,
        "s": RNG.uniform(0.5, 2, 2) * size,
        "b": RNG.standard_normal(2),
        "m": RNG.standard_normal(2),
        "v": RNG.uniform(0.5, 2, 2),
    }
    return model(nodes, inits, [1, 2, 9])


@pytest.mark.parametrize(
    "before, after, pads", [("conv", None, (1, 1)), (None, "conv", (0, 0)), ("conv", "conv", (1, 1))]
)
def test_batchnorm_folds_before_or_after_and_matches_reference(before, after, pads):
    m = _bn_model(before, after, pads=pads)
    net = import_onnx(m).to_network()
    assert sum(type(L).__name__ == "Conv1d" for L in net.layers) == (before is not None) + (after is not None)
    u = RNG.standard_normal((2, 9))
    # (1e-9: lipdsl takes epsilon as the decimal 1e-3 that ONNX stored as a float32)
    np.testing.assert_allclose(forward(net, u), reference(m, u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("after, pads", [(None, (0, 0)), ("conv", (1, 1))])
def test_batchnorm_that_cannot_be_folded_is_a_batchnorm_layer(after, pads):
    """(No layer before it; none after it, or a padded conv, whose zeros are not normalised.) The placements
    of real models: tests/importers/test_onnx_batchnorm.py."""
    m = _bn_model(None, after, pads=pads)
    imported = import_onnx(m)
    assert [L.kind for L in imported.layers][0] == "batchnorm" and imported.layers[0].options["eps"] == 1e-3
    u = RNG.standard_normal((2, 9))
    np.testing.assert_allclose(forward(imported.to_network(), u), reference(m, u), rtol=1e-9, atol=1e-9)


def test_batchnorm_in_training_mode_is_refused():
    with pytest.raises(UnsupportedError, match="training mode") as info:
        import_onnx(_bn_model("conv", training=1))
    assert "'bn' (BatchNormalization)" in str(info.value)


@pytest.mark.parametrize("before, after", [("conv", None), (None, "conv")])
@pytest.mark.parametrize("size", [1e-200, 1e200])
def test_batchnorm_fold_out_of_the_float_range_is_refused(before, after, size):
    """Folding a batch norm of scale ~1e-200 into a conv of weights ~1e-200 would leave zero weights (a
    nonzero network imported as a constant one, bound 0); 1e200 would overflow: both refused, named."""
    with pytest.raises(UnsupportedError, match="leaves float64's range") as info:
        import_onnx(_bn_model(before, after, size=size))
    assert "'bn' (BatchNormalization)" in str(info.value)


# -- Dropout -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, training, ok", [(0.5, False, True), (0.5, True, False), (0.0, True, True)])
def test_dropout_in_training_mode_is_refused(ratio, training, ok):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Dropout", ["a", "r", "t"], ["y"], name="drop"),
    ]
    m = model(nodes, {"r": np.array(ratio), "t": np.array(training)}, [1, 1, 4])
    if ok:
        assert [L.kind for L in import_onnx(m).layers] == ["activation"]
        return
    with pytest.raises(UnsupportedError, match="'drop' .*training mode"):
        import_onnx(m)


def test_dropout_mode_from_a_graph_input_is_refused():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Dropout", ["a", "", "t"], ["y"], name="drop"),
    ]
    m = model(nodes, {}, [1, 1, 4], extra_inputs=[helper.make_tensor_value_info("t", TensorProto.BOOL, [])])
    with pytest.raises(UnsupportedError, match="training_mode is an input"):
        import_onnx(m)


# -- sizes: refused before allocating ------------------------------------------------------------------------


def _huge_initializer(tmp_path):
    t = TensorProto(name="k", data_type=TensorProto.DOUBLE, dims=[1, 1, 2**40])
    t.raw_data = np.zeros(3).tobytes()
    m = model([helper.make_node("Conv", ["x", "k"], ["y"])], {}, [1, 1, 8])
    m.graph.initializer.append(t)
    path = tmp_path / "huge.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_huge_dims_are_refused_before_allocating(tmp_path):
    path = _huge_initializer(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(UnsupportedError, match="initializer 'k' has dims"):
        import_onnx(path)
    assert time.perf_counter() - t0 < 5


def test_dims_that_do_not_match_the_data_are_refused():
    t = TensorProto(name="k", data_type=TensorProto.DOUBLE, dims=[2, 1, 3])
    t.raw_data = np.zeros(3).tobytes()
    m = model([helper.make_node("Conv", ["x", "k"], ["y"])], {}, [1, 1, 8])
    m.graph.initializer.append(t)
    with pytest.raises(UnsupportedError, match="stores 3"):
        import_onnx(m)


def test_external_data_is_refused_in_memory_and_missing_beside_the_file(tmp_path):
    """(Data beside the file is read: tests/importers/test_onnx_file.py.)"""
    t = TensorProto(name="k", data_type=TensorProto.DOUBLE, dims=[1, 1, 3])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="weights.bin")
    m = model([helper.make_node("Conv", ["x", "k"], ["y"])], {}, [1, 1, 8])
    m.graph.initializer.append(t)
    with pytest.raises(UnsupportedError, match="external file 'weights.bin'") as info:
        import_onnx(m)
    assert "save_as_external_data=False" in info.value.hint and "external_data=False" in info.value.hint
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(LipdslError, match="'weights.bin', which is not in the model's folder"):
        import_onnx(tmp_path / "m.onnx")


def test_huge_constant_subgraph_is_refused():
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    m = model(nodes, {"shape": np.array([1, 1, 2**40], np.int64)}, [1, 1, 8])
    with pytest.raises(UnsupportedError, match="'fill' .*values"):
        import_onnx(m)


def test_oversized_file_is_refused(tmp_path, monkeypatch):
    path = DATA / "fcn.ts.onnx"
    monkeypatch.setattr(onnx_file, "MAX_FILE_BYTES", 1000)
    with pytest.raises(LipdslError, match="bytes"):
        import_onnx(path)


def test_huge_input_is_not_evaluated():
    m = model([helper.make_node("Relu", ["x"], ["y"])], {}, [1, 4, 2**22])
    with pytest.raises(UnsupportedError, match="refuses inputs"):
        import_onnx(m)


# -- the reference check -------------------------------------------------------------------------------------


def test_reference_check_names_the_first_output_that_differs():
    proto = onnx.load(str(DATA / "fcn.ts.onnx"))
    imported = import_onnx(proto)
    key = imported.layers[2].options["weight"]  # conv2
    imported.tensors[key] = imported.tensors[key] * 1.01
    with pytest.raises(UnsupportedError) as info:
        check_against_reference(proto, imported)
    msg = str(info.value)
    assert "layer 3" in msg and repr(imported.outputs[2]) in msg and "differs" in msg
    imported.tensors[key] = imported.tensors[key] / 1.01
    check_against_reference(proto, imported)  # restored: passes


def test_outputs_name_one_tensor_per_layer():
    imported = import_onnx(DATA / "tcn.dynamo.onnx")
    assert len(imported.outputs) == len(imported.layers)
    names = {v for n in onnx.load(str(DATA / "tcn.dynamo.onnx")).graph.node for v in n.output}
    assert set(imported.outputs) <= names


@pytest.mark.slow
@pytest.mark.solver
def test_trained_tcn_residual_exports_give_the_hand_written_bound(tmp_path):
    """specs/tcn.lip and its two exports, imported: the same SDP (every LMI's data to 1e-14 relative) and
    the same bound at --frequencies 17 (solver value and certified bound 1e-9).

    The solves are compared after 30 iterations. CVXOPT ends this SDP on a singular KKT matrix near the
    optimum (relative gap ~1e-5), and where exactly is chaotic: the dynamo export, whose SDP differs from
    the hand-written one by 1.7e-16, stopped after 34 iterations where the others took 35, its solver value
    6e-8 and its certified bound 2.8e-4 away. After 30 iterations all three agree to 1e-15 and 6e-10. (The
    certified bounds agree to 1e-9 since the recovery's final refit is solved to ``REFIT_FINAL_TOL``: its
    looser solve stopped where the weights' last bits decided, 1e-8 apart.)
    """
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp

    _, ref = load_network(ROOT / "specs" / "tcn.lip")
    options = dict(frequencies=17, accept_unconverged=True, max_iterations=30, refine_rounds=0)
    expected = solve_network(ref, **options).certificate
    assert expected.verified
    reference = build_sdp(lower(ref), frequencies=17)
    for exporter in ("torchscript", "dynamo"):
        spec, _ = import_onnx(TRAINED / f"tcn_res16.{exporter}.onnx").write(tmp_path / f"{exporter}.lip")
        _, net = load_network(spec)
        sdp = build_sdp(lower(net), frequencies=17)
        assert len(sdp.lmis) == len(reference.lmis)
        for a, b in zip(reference.lmis, sdp.lmis):
            assert abs(a.G - b.G).max() <= 1e-14 * abs(a.G).max() and np.array_equal(a.F0, b.F0)
        cert = solve_network(net, **options).certificate
        assert cert.verified
        assert abs(cert.lipschitz_solver - expected.lipschitz_solver) <= 1e-9 * expected.lipschitz_solver
        assert abs(cert.lipschitz - expected.lipschitz) <= 1e-9 * expected.lipschitz

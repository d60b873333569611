"""Global average pools as exporters write them (lipdsl/importers/onnx_pooling.py): Unsqueeze -> ReduceMean ->
Squeeze read as one mean over time, in every axes form; other means left to the reader, which refuses them.
Models built with onnx.helper (no torch) and compared with onnx.reference; the torch export at the end."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from lipdsl.errors import UnsupportedError  # noqa: E402
from lipdsl.importers.importer import import_onnx  # noqa: E402
from lipdsl.model.forward import forward  # noqa: E402


def _gap_model(opset: int, unsq: list[int], mean: list[int] | None, keepdims: int, squeeze: list[int] | None,
               flatten: bool = True):
    """conv 2 -> 3 (k3, pads 1) -> relu -> Unsqueeze(unsq) -> ReduceMean(mean, keepdims) [-> Squeeze(squeeze)]
    [-> Flatten] -> Gemm 3 -> 2; axes as attributes or inputs, as ``opset`` has them."""
    rng = np.random.default_rng(3)
    inits = {"conv.weight": rng.standard_normal((3, 2, 3)), "conv.bias": rng.standard_normal(3),
             "fc.weight": rng.standard_normal((2, 3)), "fc.bias": rng.standard_normal(2)}

    def with_axes(op, x, y, axes, since, **attrs):
        if axes is None:
            return helper.make_node(op, [x], [y], **attrs)
        if opset >= since:
            inits[f"{y}_axes"] = np.array(axes, np.int64)
            return helper.make_node(op, [x, f"{y}_axes"], [y], **attrs)
        return helper.make_node(op, [x], [y], axes=axes, **attrs)

    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["a"], pads=[1, 1], kernel_shape=[3]),
        helper.make_node("Relu", ["a"], ["b"]),
        with_axes("Unsqueeze", "b", "u", unsq, 13),
        with_axes("ReduceMean", "u", "m", mean, 18, keepdims=keepdims),
    ]
    last = "m"
    if squeeze is not None:
        nodes.append(with_axes("Squeeze", "m", "s", squeeze, 13))
        last = "s"
    if flatten:
        nodes.append(helper.make_node("Flatten", [last], ["f"]))
        last = "f"
    nodes.append(helper.make_node("Gemm", [last, "fc.weight", "fc.bias"], ["y"], transB=1))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2, 10])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 20])
@pytest.mark.parametrize("unsq, mean, keepdims, squeeze", [
    ([-2], [-1, -2], 1, [-2]),  # the dynamo exporter's AdaptiveAvgPool1d(1): (N, C, 1, 1) -> (N, C, 1)
    ([2], [2, 3], 1, [2]),
    ([2], [2, 3], 1, [2, 3]),  # -> (N, C)
    ([3], [2], 1, [3]),  # mean over L only, then the inserted axis dropped
    ([-1], [-2, -1], 0, None),  # keepdims 0: (N, C) without a Squeeze
    ([1], [3], 1, [1]),  # inserted before the channels
    ([0, 3], [3, 4], 1, [0, 3]),  # two inserted axes
])
def test_unsqueezed_means_over_time_are_a_global_average_pool(opset, unsq, mean, keepdims, squeeze):
    m = _gap_model(opset, unsq, mean, keepdims, squeeze)
    imported = import_onnx(m)  # (checked against onnx.reference layer by layer; again here on the output)
    assert [L.kind for L in imported.layers] == ["conv1d", "activation", "global_avgpool", "dense"]
    assert any("a global average pool" in n for n in imported.notes)
    u = np.random.default_rng(0).standard_normal((2, 10))
    want = ReferenceEvaluator(m).run(None, {"x": u[None]})[0][0]
    np.testing.assert_allclose(forward(imported.to_network(), u), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unsq, mean, keepdims, squeeze, node", [
    ([2], [1, 3], 1, [2], "Unsqueeze"),  # also over the channels: not a pool over time
    ([2], [2], 1, [2], "Unsqueeze"),  # over the inserted axis only: the identity, not a mean over time
    ([2], None, 1, None, "Unsqueeze"),  # over every axis (batch too)
])
def test_other_unsqueezed_means_are_left_to_the_reader_which_names_the_node(unsq, mean, keepdims, squeeze,
                                                                            node):
    with pytest.raises(UnsupportedError, match=rf"node 'u' \({node}\) is not supported"):
        import_onnx(_gap_model(18, unsq, mean, keepdims, squeeze))


def test_a_mean_that_keeps_a_size_one_axis_too_many_is_left_alone():
    """(N, C, 1, 1) without a Squeeze is not a signal lipdsl has: refused, not read as another shape."""
    with pytest.raises(UnsupportedError, match="Unsqueeze"):
        import_onnx(_gap_model(18, [2], [2, 3], 1, None))


def test_the_dynamo_export_of_adaptive_avg_pool_gives_the_bound_of_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import warnings

    import torch.nn as nn

    import lipdsl

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                      nn.Linear(4, 2)).eval()
    path = tmp_path / "gap.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 1, 32),), str(path), dynamo=True, external_data=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Unsqueeze" in ops and "ReduceMean" in ops
    net = lipdsl.from_onnx(path)
    ref = lipdsl.from_torch(m, (1, 32))
    assert [L.kind for L in net.layers] == [L.kind for L in ref.layers]
    a, b = net.solve().lipschitz, ref.solve().lipschitz
    assert abs(a - b) <= 1e-9 * b

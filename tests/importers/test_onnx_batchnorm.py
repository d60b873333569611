"""Batch norm in ONNX imports (lipdsl/importers/onnx_batchnorm.py, onnx_nodes.py): folded into the conv or
dense layer beside it where it can be (test_onnx_graph.py), else a ``batchnorm`` layer with PyTorch's tensor
names: pre-activation blocks, after an activation, on the input, after a residual Add, on a vector. Models
built with onnx.helper (no torch), checked against onnx.reference and a hand-written spec; torch exports at
the end."""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from lipdsl.importers.importer import import_onnx  # noqa: E402
from lipdsl.lang.load import load_network  # noqa: E402
from lipdsl.model.forward import forward  # noqa: E402
from lipdsl.pipeline import solve_network  # noqa: E402

C, N = 3, 12


def _bn_tensors(rng, prefix: str, c: int = C) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": rng.uniform(0.5, 2, c), f"{prefix}.bias": rng.standard_normal(c),
            f"{prefix}.running_mean": rng.standard_normal(c), f"{prefix}.running_var": rng.uniform(0.5, 2, c)}


def _bn(prefix: str, x: str, y: str, **attrs):
    names = [f"{prefix}.{r}" for r in ("weight", "bias", "running_mean", "running_var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, **attrs)


def _conv(name: str, x: str, y: str, pads=(1, 1)):
    return helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, pads=list(pads),
                            kernel_shape=[3])


def _model(nodes, inits, dtype=TensorProto.DOUBLE):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", dtype, [1, C, N])],
        [helper.make_tensor_value_info("y", dtype, None)],
        [numpy_helper.from_array(np.asarray(v, np.float64 if dtype == TensorProto.DOUBLE else np.float32), k)
         for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _placements():
    """name -> (ONNX nodes, tensors, the spec lipdsl should write (layers after the header), the spec written
    by hand when it is another: a batch norm lipdsl folds written as a layer)."""
    rng = np.random.default_rng(8)
    conv = {f"{c}.{p}": rng.standard_normal((C, C, 3) if p == "weight" else C) / 3
            for c in ("c1", "c2") for p in ("weight", "bias")}
    fc = {"fc.weight": rng.standard_normal((2, C)), "fc.bias": rng.standard_normal(2)}
    c1 = "conv1d c1: 3 -> 3, kernel 3, padding 1, weight c1.weight, bias c1.bias"
    c2 = "conv1d c2: 3 -> 3, kernel 3, padding 1, weight c2.weight, bias c2.bias"
    head = [helper.make_node("GlobalAveragePool", ["h"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1)]
    head_spec = "global_avgpool\ndense fc: 3 -> 2, weight fc.weight, bias fc.bias\n"
    return {
        # x -> relu -> [bn -> relu -> conv -> bn2 -> relu -> conv] + identity (a pre-activation block)
        "preact": ([helper.make_node("Relu", ["x"], ["r"]), _bn("bn", "r", "a"),
                    helper.make_node("Relu", ["a"], ["b"]), _conv("c1", "b", "c"),
                    _bn("bn2", "c", "d"), helper.make_node("Relu", ["d"], ["e"]), _conv("c2", "e", "o"),
                    helper.make_node("Add", ["r", "o"], ["h"])] + head,
                   {**conv, **fc, **_bn_tensors(rng, "bn"), **_bn_tensors(rng, "bn2")},
                   "relu\nresidual\n  batchnorm bn: 3, weights bn\n  relu\n"
                   + f"  {c1.replace('c1.bias', 'c1.bias_bn2').replace('c1.weight', 'c1.weight_bn2')}\n"
                   "  relu\n" f"  {c2}\nend\n" + head_spec,
                   "relu\nresidual\n  batchnorm bn: 3, weights bn\n  relu\n"
                   f"  {c1}\n  batchnorm bn2: 3, weights bn2\n  relu\n  {c2}\nend\n" + head_spec),
        # conv -> relu -> bn -> conv (padded): after an activation, before a padded conv
        "after_relu": ([_conv("c1", "x", "a"), helper.make_node("Relu", ["a"], ["b"]), _bn("bn", "b", "c"),
                        _conv("c2", "c", "h")] + head,
                       {**conv, **fc, **_bn_tensors(rng, "bn")},
                       f"{c1}\nrelu\nbatchnorm bn: 3, weights bn\n{c2}\n" + head_spec),
        # bn on the input -> conv (padded) -> relu, then a block whose Add feeds a batch norm
        "input_and_after_add": ([_bn("bn", "x", "a"), _conv("c1", "a", "b"),
                                 helper.make_node("Relu", ["b"], ["r"]), _conv("c2", "r", "o"),
                                 helper.make_node("Add", ["o", "r"], ["s"]), _bn("bn2", "s", "h")] + head,
                                {**conv, **fc, **_bn_tensors(rng, "bn"), **_bn_tensors(rng, "bn2")},
                                f"batchnorm bn: 3, weights bn\n{c1}\nrelu\nresidual\n  {c2}\nend\n"
                                "batchnorm bn2: 3, weights bn2\n" + head_spec),
        # a batch norm on the pooled vector, before an activation, with its own eps
        "vector": ([_conv("c1", "x", "a"), helper.make_node("GlobalAveragePool", ["a"], ["g"]),
                    helper.make_node("Flatten", ["g"], ["f"]), _bn("bn", "f", "v", epsilon=1e-3),
                    helper.make_node("Tanh", ["v"], ["t"]),
                    helper.make_node("Gemm", ["t", "fc.weight", "fc.bias"], ["y"], transB=1)],
                   {**conv, **fc, **_bn_tensors(rng, "bn")},
                   f"{c1}\nglobal_avgpool\nbatchnorm bn: 3, weights bn, eps 0.001\ntanh\n"
                   "dense fc: 3 -> 2, weight fc.weight, bias fc.bias\n"),
    }


def _strip(text: str) -> str:
    """The layer lines of a written spec, without the origin comments or the header."""
    body = text.split("\n\n", 1)[1]
    return "".join(line.split("  #")[0].rstrip() + "\n" for line in body.splitlines())


@pytest.mark.parametrize("name", sorted(_placements()))
def test_batchnorms_with_no_layer_to_fold_into_are_batchnorm_layers(name, tmp_path):
    nodes, inits, want, *by_hand = _placements()[name]
    m = _model(nodes, inits)
    imported = import_onnx(m)  # (checked against onnx.reference layer by layer when it is read)
    spec, weights = imported.write(tmp_path / "net.lip")
    assert _strip(spec.read_text()) == want
    with np.load(weights) as z:  # PyTorch's names, as `batchnorm C, weights P` reads them
        for prefix in re.findall(r"weights (\w+)", want):
            for role in ("weight", "bias", "running_mean", "running_var"):
                np.testing.assert_array_equal(z[f"{prefix}.{role}"], inits[f"{prefix}.{role}"])
    assert any("kept as a batchnorm layer" in n for n in imported.notes)
    net = load_network(spec)[1]
    u = np.random.default_rng(1).standard_normal((C, N))
    # (1e-9: lipdsl takes epsilon as the decimal that ONNX stored as a float32)
    np.testing.assert_allclose(forward(net, u), ReferenceEvaluator(m).run(None, {"x": u[None]})[0][0],
                               rtol=1e-9, atol=1e-9)
    # the bound of the network written by hand, from the model's tensors (folded by lipdsl's lowering)
    hand = tmp_path / "hand.lip"
    np.savez(tmp_path / "hand.npz", **inits)
    hand.write_text(f'input {C} x {N}\nweights "hand.npz"\n' + (by_hand[0] if by_hand else want))
    got, ref = (solve_network(n).certificate.lipschitz for n in (net, load_network(hand)[1]))
    assert abs(got - ref) <= 1e-9 * ref


def test_batchnorm_tensors_without_state_dict_names_are_named_one_by_one():
    rng = np.random.default_rng(2)
    inits = {"scale": rng.uniform(0.5, 2, C), "shift": rng.standard_normal(C), "mu": rng.standard_normal(C),
             "sigma2": rng.uniform(0.5, 2, C)}
    m = _model([helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("BatchNormalization", ["r", "scale", "shift", "mu", "sigma2"], ["y"])],
               inits, dtype=TensorProto.FLOAT)
    imported = import_onnx(m)
    assert _strip(imported.spec_text("w.npz")) == (
        "relu\nbatchnorm 3, running_mean mu, running_var sigma2, weight scale, bias shift\n")


def _torch_nets():
    torch = pytest.importorskip("torch")
    import torch.nn as nn
    import torch.nn.functional as F

    class PreActBlock(nn.Module):  # He et al.'s pre-activation: x + conv2(relu(bn2(conv1(relu(bn1(x))))))
        def __init__(self, c):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm1d(c), nn.Conv1d(c, c, 3, padding=1)
            self.bn2, self.conv2 = nn.BatchNorm1d(c), nn.Conv1d(c, c, 3, padding=1)

        def forward(self, x):
            return x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))

    class BnAfterAdd(nn.Module):  # post-activation with the batch norm after the sum
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv1d(c, c, 3, padding=1)
            self.bn = nn.BatchNorm1d(c)

        def forward(self, x):
            return F.relu(self.bn(x + self.conv(F.relu(x))))

    torch.manual_seed(0)
    nets = {
        "preact": nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), PreActBlock(6), PreActBlock(6),
                                nn.BatchNorm1d(6), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                nn.Linear(6, 3)),
        "input_and_after_add": nn.Sequential(nn.BatchNorm1d(2), nn.Conv1d(2, 6, 3, padding=1), BnAfterAdd(6),
                                             nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3)),
    }
    for net in nets.values():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):  # (trained statistics, not the identity of a fresh module)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 2)
                m.bias.data.uniform_(-1, 1)
        net.eval()
    return torch, nets


@pytest.mark.parametrize("name", ["preact", "input_and_after_add"])
def test_torch_exports_with_batchnorm_layers_give_the_bound_of_from_torch(name, tmp_path):
    """from_torch (TorchScript export, no constant folding), and both exporters' files as torch writes them
    (the dynamo exporter's default: weights in f.onnx.data), give one bound: to 1e-9, or 1e-7 where the
    exporter folded a batch norm into the conv before it itself (its weights rounded to float32 after the
    fold: another network in the last bits; measured 1e-9 to 1e-8)."""
    torch, nets = _torch_nets()
    pytest.importorskip("onnxscript")
    import warnings

    import lipdsl

    net = nets[name]
    want = lipdsl.from_torch(net, (2, 32)).solve().lipschitz
    bns = sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
    x = (torch.randn(1, 2, 32),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, x, str(tmp_path / "d.onnx"))
        torch.onnx.export(net, x, str(tmp_path / "t.onnx"), dynamo=False)
        torch.onnx.export(net, x, str(tmp_path / "t0.onnx"), dynamo=False, do_constant_folding=False)
    for path in (tmp_path / "d.onnx", tmp_path / "t.onnx", tmp_path / "t0.onnx"):
        imported = lipdsl.from_onnx(path)
        assert "batchnorm" in str(imported.layers)
        kept = [n.op_type for n in onnx.load(str(path)).graph.node].count("BatchNormalization")
        got = imported.solve().lipschitz
        assert abs(got - want) <= (1e-9 if kept == bns else 1e-7) * want, (path.name, got, want)

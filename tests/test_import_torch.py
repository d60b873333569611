"""PyTorch -> lipdsl: from_torch, state_dict --like, torch.onnx.export -> import (skipped without torch)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import lipdsl  # noqa: E402
from lipdsl.api import solve_network  # noqa: E402
from lipdsl.cli import main  # noqa: E402
from lipdsl.errors import LipdslError, UnsupportedError  # noqa: E402
from lipdsl.forward import forward  # noqa: E402
from lipdsl.importer import import_state_dict  # noqa: E402
from lipdsl.load import load_network  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ECG_SPEC = ROOT / "specs" / "ecg.lip"
ECG_WEIGHTS = ROOT / "specs" / "weights" / "ecg_CNN_23_03_08_11_52.npz"


def torch_forward(module, u: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(u[None])).numpy()[0]


def every_module_net():
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.ZeroPad1d((4, 0)),
            nn.Conv1d(2, 4, 3, dilation=2),
            nn.LeakyReLU(0.2),
            nn.Sequential(nn.Conv1d(4, 4, 3, stride=2, padding=1), nn.Tanh()),
            nn.MaxPool1d(2),
            nn.Conv1d(4, 3, 5, padding="same"),
            nn.ELU(0.7),
            nn.AvgPool1d(3, stride=1),
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(3 * 4, 8),
            nn.Sigmoid(),
            nn.Identity(),
            nn.Linear(8, 3),
        )
        .double()
        .eval()
    )


def gap_net():
    torch.manual_seed(1)
    return (
        nn.Sequential(
            nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 2)
        )
        .double()
        .eval()
    )


def export(module, shape, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the TorchScript exporter's DeprecationWarning; the dynamo one needs onnxscript
        torch.onnx.export(
            module, (torch.randn(1, *shape, dtype=torch.float64),), str(path), dynamo=False, **kw
        )


@pytest.mark.parametrize("build, shape", [(every_module_net, (2, 24)), (gap_net, (1, 17))])
def test_from_torch_forward_matches_torch(build, shape):
    module = build()
    net = lipdsl.from_torch(module, shape)
    rng = np.random.default_rng(3)
    for _ in range(5):
        u = 2 * rng.standard_normal(shape)
        np.testing.assert_allclose(net.forward(u), torch_forward(module, u), rtol=1e-6, atol=1e-9)


def test_from_torch_any_length_with_global_pool():
    module = gap_net()
    net = lipdsl.from_torch(module, (1, None))
    assert net.typed.any_length
    u = np.random.default_rng(4).standard_normal((1, 40))
    np.testing.assert_allclose(net.forward(u), torch_forward(module, u), rtol=1e-6, atol=1e-9)


@pytest.mark.solver
def test_from_torch_bound_above_lower_bound():
    net = lipdsl.from_torch(every_module_net(), (2, 24))
    bound = net.solve()
    assert bound.verified
    assert net.lower_bound(starts=4, time_budget=3).value <= bound.lipschitz


def test_from_torch_save_writes_a_checked_spec(tmp_path):
    module = every_module_net()
    spec, _ = lipdsl.from_torch(module, (2, 24), name="demo").save(tmp_path / "demo.lip")
    _, net = load_network(spec)
    u = np.random.default_rng(5).standard_normal((2, 24))
    np.testing.assert_allclose(forward(net, u), torch_forward(module, u), rtol=1e-6, atol=1e-9)
    assert "padding causal" in spec.read_text()  # ZeroPad1d((4, 0)) + dilation-2 conv of kernel 3


@pytest.mark.parametrize(
    "module, words",
    [
        (
            nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2)),
            ["module '1' (BatchNorm1d)", "fuse_conv_bn_eval"],
        ),
        (nn.Sequential(nn.Conv1d(1, 2, 3), nn.GELU()), ["module '1' (GELU)"]),
        (nn.Sequential(nn.Conv1d(2, 2, 3, groups=2)), ["groups=2"]),
        (nn.Sequential(nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular")), ["'circular'"]),
        (nn.Sequential(nn.Conv1d(1, 2, 3), nn.AdaptiveAvgPool1d(2)), ["AdaptiveAvgPool1d(1)"]),
        (nn.Sequential(nn.Conv1d(1, 2, 3), nn.Linear(6, 2)), ["nn.Flatten()"]),
        (nn.Sequential(nn.ConstantPad1d((1, 0), 1.0), nn.Conv1d(1, 2, 3)), ["pads with 1.0"]),
    ],
)
def test_from_torch_refuses_naming_the_module(module, words):
    with pytest.raises(UnsupportedError) as info:
        lipdsl.from_torch(module, (module[0].in_channels if hasattr(module[0], "in_channels") else 1, 8))
    for word in words:
        assert word in f"{info.value} {info.value.hint}"


def ecg_torch():
    """The ECG classifier in PyTorch: causal convs as ZeroPad1d((2, 0)) + Conv1d, as method.md section 10."""
    d = np.load(ECG_WEIGHTS)
    model = (
        nn.Sequential(
            nn.ZeroPad1d((2, 0)),
            nn.Conv1d(1, 2, 3),
            nn.ReLU(),
            nn.AvgPool1d(2),
            nn.ZeroPad1d((2, 0)),
            nn.Conv1d(2, 3, 3),
            nn.ReLU(),
            nn.AvgPool1d(2),
            nn.Flatten(),
            nn.Linear(96, 60),
            nn.ReLU(),
            nn.Linear(60, 5),
        )
        .double()
        .eval()
    )
    idx = {"conv1": 1, "conv2": 5, "fc1": 9, "fc2": 11}
    model.load_state_dict(
        {f"{idx[k.split('.')[0]]}.{k.split('.')[1]}": torch.from_numpy(d[k]) for k in d.files}
    )
    return model


@pytest.mark.solver
def test_ecg_torch_onnx_export_import_gives_the_hand_written_bound(tmp_path, ecg_spec_bound):
    model = ecg_torch()
    export(model, (1, 128), tmp_path / "ecg.onnx")
    assert main(["import", str(tmp_path / "ecg.onnx"), "-o", str(tmp_path / "ecg.lip")]) == 0
    _, net = load_network(tmp_path / "ecg.lip")
    u = np.random.default_rng(6).standard_normal((1, 128))
    np.testing.assert_allclose(forward(net, u), torch_forward(model, u), rtol=1e-6, atol=1e-9)
    cert = solve_network(net).certificate
    assert cert.verified
    assert abs(cert.lipschitz - ecg_spec_bound) <= 1e-9 * ecg_spec_bound


def test_torch_onnx_export_roundtrip(tmp_path):
    module = every_module_net()
    export(module, (2, 24), tmp_path / "m.onnx")
    net = lipdsl.from_onnx(tmp_path / "m.onnx")
    u = np.random.default_rng(8).standard_normal((2, 24))
    np.testing.assert_allclose(net.forward(u), torch_forward(module, u), rtol=1e-6, atol=1e-9)


def test_state_dict_like_architecture(tmp_path, capsys):
    d = np.load(ECG_WEIGHTS)
    torch.save({k: torch.from_numpy(d[k]) for k in d.files}, tmp_path / "state.pt")
    assert (
        main(
            [
                "import",
                str(tmp_path / "state.pt"),
                "--like",
                str(ECG_SPEC),
                "-o",
                str(tmp_path / "out" / "ecg.lip"),
            ]
        )
        == 0
    )
    _, net = load_network(tmp_path / "out" / "ecg.lip")
    _, ref = load_network(ECG_SPEC)
    for a, b in zip(net.layers, ref.layers):
        assert np.array_equal(getattr(a, "weight", 0), getattr(b, "weight", 0))
    assert 'weights "ecg.npz"' in (tmp_path / "out" / "ecg.lip").read_text()


def test_state_dict_missing_key_reported_against_new_spec(tmp_path):
    torch.save({"conv1.weight": torch.zeros(2, 1, 3, dtype=torch.float64)}, tmp_path / "part.pt")
    with pytest.raises(LipdslError, match="no tensor 'conv1.bias'"):
        import_state_dict(tmp_path / "part.pt", ECG_SPEC, tmp_path / "x.lip")


def test_pickled_module_is_never_unpickled(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "whole.pt")
    buf = io.StringIO()
    with pytest.raises(LipdslError) as info:
        import_state_dict(tmp_path / "whole.pt", ECG_SPEC, tmp_path / "x.lip")
    assert "weights_only=True" in str(info.value) and "Sequential" in str(info.value)
    assert not (tmp_path / "x.lip").exists() and not buf.getvalue()

"""PyTorch -> lipdsl: from_torch, state_dict --like, torch.onnx.export -> import (skipped without torch)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import lipdsl  # noqa: E402
from lipdsl.pipeline import solve_network  # noqa: E402
from lipdsl.app.cli import main  # noqa: E402
from lipdsl.errors import LipdslError, UnsupportedError  # noqa: E402
from lipdsl.model.forward import forward  # noqa: E402
from lipdsl.importers.pytorch import import_state_dict  # noqa: E402
from lipdsl.lang.load import load_network  # noqa: E402
from repo_paths import ROOT  # noqa: E402

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


def test_state_dict_missing_key_reported_against_the_like_spec(tmp_path, capsys):
    torch.save({"conv1.weight": torch.zeros(2, 1, 3, dtype=torch.float64)}, tmp_path / "part.pt")
    with pytest.raises(LipdslError, match="no tensor 'conv1.bias' in the checkpoint 'part.pt'"):
        import_state_dict(tmp_path / "part.pt", ECG_SPEC, tmp_path / "x.lip")
    out = tmp_path / "out" / "x.lip"
    assert main(["import", str(tmp_path / "part.pt"), "--like", str(ECG_SPEC), "-o", str(out)]) == 1
    lines = ECG_SPEC.read_text().split("\n")
    line = next(i for i, t in enumerate(lines, 1) if "bias conv1.bias" in t)
    col = lines[line - 1].index("conv1.bias") + 1
    err = capsys.readouterr().err.split("\n")
    assert err[0] == f"{ECG_SPEC}:{line}:{col}: error: no tensor 'conv1.bias' in the checkpoint 'part.pt'"
    assert err[1] == f"{line:>5} | {lines[line - 1]}"
    assert err[3].startswith("  hint: did you mean 'conv1.weight'? it holds: conv1.weight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.pt"]  # neither x.lip nor out/


def test_pickled_module_is_never_unpickled(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "whole.pt")
    buf = io.StringIO()
    with pytest.raises(LipdslError) as info:
        import_state_dict(tmp_path / "whole.pt", ECG_SPEC, tmp_path / "x.lip")
    assert "weights_only=True" in str(info.value) and "Sequential" in str(info.value)
    assert not (tmp_path / "x.lip").exists() and not buf.getvalue()


def test_a_training_checkpoint_gives_its_one_state_dict(tmp_path):
    """``{"model": sd, "optimizer": ..., "epoch": 3}`` reads as ``sd`` (the one entry that is a state_dict);
    two state_dicts, or none, are refused naming what the file holds (was: "does not hold a state_dict" with
    no word of its keys)."""
    from lipdsl.importers.pytorch import load_state_dict

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sd = model.state_dict()
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    got = load_state_dict(tmp_path / "ck.pt")
    assert sorted(got) == ["bias", "weight"] and np.array_equal(got["weight"], sd["weight"].double().numpy())
    torch.save({"model": sd, "ema": sd, "epoch": 3}, tmp_path / "two.pt")
    with pytest.raises(LipdslError, match="it holds a dict of 'model', 'ema', 'epoch' \\('model', 'ema' are "
                       "state_dicts: say which\\)") as info:
        load_state_dict(tmp_path / "two.pt")
    assert "torch.save(checkpoint['model'], path)" in info.value.hint
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(LipdslError, match="does not hold a state_dict .*; it holds a dict of 'epoch'$"):
        load_state_dict(tmp_path / "none.pt")


# -- batch norm, chomps, weight norm, custom modules (through ONNX) ------------------------------------------


def _random_bn(model):
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g, dtype=m.running_var.dtype))
            m.weight.data.copy_(1 + 0.5 * torch.randn(n, generator=g, dtype=m.weight.dtype))
            m.bias.data.copy_(torch.randn(n, generator=g, dtype=m.bias.dtype))
    return model


class Chomp(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return x[:, :, : -self.p].contiguous()


class Tcn(nn.Module):
    """Bai et al.'s causal convs: weight_norm(Conv1d(padding=(k-1)d)) + Chomp1d, ReLU; GAP + linear."""

    def __init__(self):
        super().__init__()
        from torch.nn.utils.parametrizations import weight_norm

        layers, c = [], 1
        for d in (1, 2, 4):
            layers += [weight_norm(nn.Conv1d(c, 4, 3, padding=2 * d, dilation=d)), Chomp(2 * d), nn.ReLU()]
            c = 4
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.net(x).mean(dim=2))


class Fcn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(1, 3, 8, padding="same"), nn.BatchNorm1d(3)
        self.conv2, self.bn2 = nn.Conv1d(3, 4, 5, padding="same"), nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=2))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


def _matches(module, shape, net, rtol):
    rng = np.random.default_rng(9)
    for _ in range(3):
        u = rng.standard_normal(shape)
        with torch.no_grad():
            ref = module(torch.from_numpy(u[None]).to(next(module.parameters()).dtype)).double().numpy()[0]
        np.testing.assert_allclose(net.forward(u), ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def test_from_torch_folds_batchnorm_in_a_sequential():
    torch.manual_seed(3)
    module = _random_bn(
        nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Conv1d(4, 3, 3),
            nn.BatchNorm1d(3),
            nn.Tanh(), nn.Flatten(), nn.Linear(3 * 10, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2),
        ).double().eval()
    )
    net = lipdsl.from_torch(module, (2, 12))
    assert [type(L).__name__ for L in net.typed.layers].count("Conv1d") == 2
    _matches(module, (2, 12), net, 1e-9)


def test_from_torch_custom_modules_chomp_and_weight_norm(tmp_path):
    torch.manual_seed(4)
    module = Tcn().eval()
    net = lipdsl.from_torch(module, (1, 20))
    text = net.save(tmp_path / "tcn.lip")[0].read_text()
    assert text.count("padding causal") == 3 and "dilation 4" in text and "net.0.weight" in text
    _matches(module, (1, 20), net, 1e-4)  # a float32 module
    any_length = lipdsl.from_torch(module, (1, None))
    assert any_length.typed.any_length
    u = np.random.default_rng(1).standard_normal((1, 33))
    with torch.no_grad():
        ref = module(torch.from_numpy(u[None]).float()).double().numpy()[0]
    np.testing.assert_allclose(any_length.forward(u), ref, rtol=1e-4, atol=1e-5)


class _CropToInput(torch.nn.Module):
    """Two causal convs, each cropped as ``x[..., :n]`` with ``n = x.shape[-1]`` (not ``x[..., :-p]``)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv1d(1, 4, 3, padding=2)
        self.c2 = torch.nn.Conv1d(4, 4, 3, padding=4, dilation=2)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        n = x.shape[-1]
        x = torch.relu(self.c1(x)[..., :n])
        x = torch.relu(self.c2(x)[..., :n])
        return self.fc(x.mean(-1))


def test_from_torch_crops_to_the_input_length_at_a_fixed_length(tmp_path):
    """A crop to the input's own length (``x[..., :x.shape[-1]]``) after each of two convs: the second
    conv's output length is followed back through the relu and the first folded crop (ONNX shape inference
    cannot see through the computed slice end), so both fold into causal padding (was: refused, 'depends on
    the input length', with a --length hint from_torch has not)."""
    torch.manual_seed(6)
    module = _CropToInput().eval()
    net = lipdsl.from_torch(module, (1, 32))
    assert net.save(tmp_path / "crop.lip")[0].read_text().count("padding causal") == 2
    _matches(module, (1, 32), net, 1e-4)


def test_from_torch_custom_module_with_batchnorm(tmp_path):
    torch.manual_seed(5)
    module = _random_bn(Fcn()).train()  # read in eval mode, and said so
    module.bn1.eval()  # (a submodule's own mode is restored too)
    net = lipdsl.from_torch(module, (1, 16))
    assert module.training and not module.bn1.training  # the user's module is left as it was
    assert all(m.training for name, m in module.named_modules() if name != "bn1")
    module.bn1.train()
    assert "# note: the module was in training mode" in net.save(tmp_path / "fcn.lip")[0].read_text()
    _matches(module.eval(), (1, 16), net, 1e-4)


def test_from_torch_reads_the_old_weight_norm():
    """``torch.nn.utils.weight_norm`` (the classic TCN's): its computed weight cannot be deep-copied, so the
    module is exported itself, its modes restored (was: torch's deepcopy RuntimeError as a traceback)."""
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (its deprecation)
                self.conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(4, 4, 3, padding=1))

        def forward(self, x):
            return torch.relu(self.conv(x) + x)

    torch.manual_seed(7)
    module = Block().train()
    net = lipdsl.from_torch(module, (4, 16))
    assert module.training and module.conv.training
    _matches(module.eval(), (4, 16), net, 1e-5)
    assert net.solve().verified


def test_from_torch_residual_module_is_a_residual_block():
    """relu(conv(x) + x): through ONNX, one residual block (identity shortcut) then the relu, computing what
    torch computes."""
    from lipdsl.lang import typed

    module = Residual().double().eval()
    net = lipdsl.from_torch(module, (2, 8))
    assert isinstance(net.typed.layers[0], typed.Residual)
    _matches(module, (2, 8), net, 1e-12)


class Down(nn.Module):
    """A ResNet-style downsampling block: conv s2 -> bn -> relu -> conv -> bn, plus a 1x1 stride-2 conv with
    batch norm (or a 2-wide max pool) on the shortcut, then relu."""

    def __init__(self, pool: bool):
        super().__init__()
        c = 2 if pool else 3
        self.conv1, self.bn1 = nn.Conv1d(2, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(c)
        self.conv2, self.bn2 = nn.Conv1d(c, c, 3, padding=1, bias=False), nn.BatchNorm1d(c)
        self.short = nn.MaxPool1d(2) if pool else nn.Sequential(nn.Conv1d(2, c, 1, stride=2, bias=False),
                                                                nn.BatchNorm1d(c))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.short(x))


@pytest.mark.parametrize("pool", [False, True])
def test_from_torch_downsampling_block(pool):
    """A strided residual block through ONNX: one block (batch norms folded), torch's outputs, a certified
    bound above the empirical lower bound."""
    from lipdsl.baselines.empirical import lower_bound
    from lipdsl.lang import typed

    torch.manual_seed(6)
    module = _random_bn(Down(pool)).double().eval()
    net = lipdsl.from_torch(module, (2, 16))
    assert isinstance(net.typed.layers[0], typed.Residual)
    _matches(module, (2, 16), net, 1e-9)
    result = solve_network(net.typed)
    assert result.certificate.verified
    assert lower_bound(net.typed, starts=2, time_budget=1.0).value <= result.certificate.lipschitz


TRAINED = ROOT / "specs" / "weights" / "trained"


@pytest.mark.parametrize("name", ["fcn_8_16_8", "tcn_plain16"])
def test_trained_models_from_torch_equal_their_onnx_import(name):
    import sys

    sys.path.insert(0, str(ROOT / "specs" / "train"))
    try:
        import train_ucr
    finally:
        sys.path.pop(0)
    model = train_ucr.MODELS[name][0]()
    model.load_state_dict(torch.load(TRAINED / f"{name}.pt", weights_only=True))
    net = lipdsl.from_torch(model.eval(), (1, 150))
    ref = lipdsl.from_onnx(TRAINED / f"{name}.torchscript.onnx")
    for a, b in zip(net.typed.layers, ref.typed.layers):
        assert type(a) is type(b)
        for attr in ("weight", "bias"):
            x, y = getattr(a, attr, None), getattr(b, attr, None)
            if x is not None:
                np.testing.assert_allclose(x, y, rtol=0, atol=2e-16)


@pytest.mark.parametrize("cls, expected", [("TCN2", "tcn2"), ("ResNet1D", "res_net1d"),
                                           ("MyHTTPNet", "my_http_net"), ("PlainTCN", "plain_tcn")])
def test_from_torch_names_the_network_after_its_class_in_snake_case(cls, expected):
    """A run of capitals is one word (``TCN2`` was named ``t_c_n2``)."""
    module = type(cls, (torch.nn.Module,), {"forward": lambda self, x: self.fc(x.flatten(1))})()
    module.fc = torch.nn.Linear(4, 2)
    assert lipdsl.from_torch(module.double().eval(), (1, 4)).name == expected


# -- weight norm in a state_dict (import --like) ----------------------------------------------------------


def test_trained_tcn_state_dict_imports_its_weight_norm(tmp_path, capsys):
    """specs/weights/trained/tcn_res16.pt holds g and v (parametrizations.weight.original0/1); the import
    computes g v / ||v|| as the baked tcn_res16.npz has it, so the spec is specs/tcn.lip's network."""
    out = tmp_path / "imp_tcn.lip"
    spec = ROOT / "specs" / "tcn.lip"
    assert main(["import", "--like", str(spec), str(TRAINED / "tcn_res16.pt"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} and {tmp_path / 'imp_tcn.npz'}")
    baked, imported = np.load(TRAINED / "tcn_res16.npz"), np.load(tmp_path / "imp_tcn.npz")
    assert set(baked.files) <= set(imported.files)
    for k in baked.files:
        np.testing.assert_allclose(imported[k], baked[k], rtol=1e-12, atol=0, err_msg=k)
    _, net = load_network(out)
    _, ref = load_network(spec)
    u = np.random.default_rng(9).standard_normal((1, 150))
    np.testing.assert_allclose(forward(net, u), forward(ref, u), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.solver
def test_trained_tcn_state_dict_gives_the_hand_written_bound(tmp_path):
    """The weight-normalised checkpoint's import, whose weights differ from the baked ones in their last bits
    (torch sums the norm in another order), certifies specs/tcn.lip's bound to 1e-9 in the CLI's form
    (``frequencies="auto"``; it agreed to 1.35e-8 while the storage recovery's final refit stopped at
    CVXOPT's looser tolerance)."""
    out = tmp_path / "imp_tcn.lip"
    spec = ROOT / "specs" / "tcn.lip"
    assert main(["import", "--like", str(spec), str(TRAINED / "tcn_res16.pt"), "-o", str(out)]) == 0
    bounds = [solve_network(load_network(path)[1], frequencies="auto").certificate for path in (spec, out)]
    assert all(cert.verified for cert in bounds)
    assert bounds[1].lipschitz == pytest.approx(bounds[0].lipschitz, rel=1e-9)


@pytest.mark.parametrize("api", ["parametrizations", "weight_norm"])
@pytest.mark.parametrize("dim", [0, 1, 2, None])
def test_state_dict_weight_norm_equals_torch(tmp_path, api, dim):
    """torch's own effective weight (a float64 module's ``.weight`` after its forward pre-hook) for both
    weight-norm APIs and every ``dim``, against the import of its state_dict."""
    torch.manual_seed(3)
    conv = nn.Conv1d(3, 4, 5).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm's deprecation
        if api == "parametrizations":
            conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=dim)
        else:
            conv = torch.nn.utils.weight_norm(conv, dim=dim)
    with torch.no_grad():  # move g away from ||v||, so that w is not just the initial weight
        for name, t in conv.named_parameters():
            if name.endswith(("original0", "weight_g")):
                t.mul_(torch.rand(t.shape, dtype=t.dtype) + 0.5)
        conv(torch.zeros(1, 3, 8, dtype=torch.float64))  # the old API computes .weight in a pre-hook
        expected = conv.weight.detach().numpy().copy()
    torch.save(nn.Sequential(conv).state_dict(), tmp_path / "conv.pt")  # keys 0.weight_g, ...
    (tmp_path / "arch.lip").write_text("input 3 x 8\nconv1d c: 3 -> 4, kernel 5, weight _0.weight\n")
    _, weights = import_state_dict(tmp_path / "conv.pt", tmp_path / "arch.lip", tmp_path / "net.lip")
    np.testing.assert_allclose(np.load(weights)["_0.weight"], expected, rtol=1e-12, atol=0)


SEQ_ARCH = ("network seq\ninput 2 x 8\nweights \"w.npz\"\n"
            "conv1d 2 -> 3, kernel 3, padding 1, weight _0.weight, bias _0.bias\nrelu\n"
            "conv1d 3 -> 4, kernel 3, padding 1, weight _2.weight, bias _2.bias\nrelu\nflatten\n"
            "dense 32 -> 2, weight _5.weight, bias _5.bias\n")


def seq_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"0.weight": (3, 2, 3), "0.bias": (3,), "2.weight": (4, 3, 3), "2.bias": (4,),
              "5.weight": (2, 32), "5.bias": (2,)}
    return {k: torch.from_numpy(rng.standard_normal(s)) for k, s in shapes.items()}


def import_seq(tmp_path, state: dict, capsys, arch: str = SEQ_ARCH):
    (tmp_path / "arch.lip").write_text(arch)
    torch.save(state, tmp_path / "c.pt")
    code = main(["import", str(tmp_path / "c.pt"), "--like", str(tmp_path / "arch.lip"),
                 "-o", str(tmp_path / "o.lip")])
    return code, capsys.readouterr().err


def test_state_dict_key_held_as_written_wins_as_in_an_npz(tmp_path, capsys):
    """A .pt holding '0.weight' and '_0.weight': the spec's _0.weight reads the literal one, as from an .npz
    (was: '0.weight', the literal dropped silently); import and sweep read the same network."""
    from lipdsl.app.sweep_items import Options, _network, expand

    state = seq_state()
    state["_0.weight"] = state["0.weight"] * 10
    code, err = import_seq(tmp_path, state, capsys)
    assert code == 0, err
    written = np.load(tmp_path / "o.npz")
    assert np.array_equal(written["_0.weight"], state["_0.weight"].numpy())
    np.savez(tmp_path / "c.npz", **{k: v.numpy() for k, v in state.items()})
    nets = [_network(item, Options())[1] for item in
            expand([tmp_path / "c.pt", tmp_path / "c.npz"], like=tmp_path / "arch.lip")]
    for net in nets:
        assert np.array_equal(net.layers[0].weight, state["_0.weight"].numpy())


def test_state_dict_ambiguous_keys_are_refused_naming_both(tmp_path, capsys):
    state = seq_state()
    state["0:weight"] = state.pop("0.weight")
    state["0-weight"] = state["0:weight"]
    state["_0.weight"] = state.pop("0:weight")  # held as written: wins, no ambiguity
    assert import_seq(tmp_path, state, capsys)[0] == 0
    state = seq_state()
    state["0_weight"] = state["0.weight"]  # (spelt '_0_weight': another key)
    state["x:b"], state["x-b"] = state["0.bias"], state["0.bias"]
    arch = SEQ_ARCH.replace("bias _0.bias", "bias x_b")
    code, err = import_seq(tmp_path, state, capsys, arch)
    assert code == 1
    assert f"{tmp_path / 'arch.lip'}:4:60: error: 'x_b' could mean any of the tensors 'x-b', 'x:b'" in err


def test_state_dict_integer_tensor_read_is_refused_naming_it(tmp_path, capsys):
    """An int64 bias: refused at the spec's reference, naming it (was: 'no tensor', did you mean another);
    an int64 tensor no layer reads (a batch norm's num_batches_tracked) is no error."""
    state = seq_state()
    state["0.bias"] = torch.tensor([1, 2, 3])
    code, err = import_seq(tmp_path, state, capsys)
    assert code == 1
    assert err.startswith(f"{tmp_path / 'arch.lip'}:4:60: error: '_0.bias' in the checkpoint 'c.pt' has "
                          "integer dtype int64")
    state = seq_state()
    state["bn.num_batches_tracked"] = torch.tensor(7)
    assert import_seq(tmp_path, state, capsys)[0] == 0


def test_state_dict_weight_norm_errors_are_at_the_reading_layer_and_only_if_read(tmp_path, capsys):
    """A pair missing its g says so; a degenerate pair no layer reads is no error; one a layer reads is
    refused at that layer's reference (was: no place)."""
    state = seq_state()
    v = state.pop("2.weight")
    state["2.parametrizations.weight.original1"] = v
    code, err = import_seq(tmp_path, state, capsys)
    assert code == 1
    assert err.startswith(f"{tmp_path / 'arch.lip'}:6:44: error: the checkpoint 'c.pt' holds "
                          "'2.parametrizations.weight.original1' of a weight-norm pair for '_2.weight', but "
                          "not its g")
    state = seq_state()
    state["9.weight_g"], state["9.weight_v"] = torch.ones(3, 1, 1), torch.zeros(3, 2, 3)  # unused, zero norm
    assert import_seq(tmp_path, state, capsys)[0] == 0
    state = seq_state()
    state.pop("2.weight")
    state["2.weight_g"], state["2.weight_v"] = torch.ones(4, 1, 1), torch.zeros(4, 3, 3)
    code, err = import_seq(tmp_path, state, capsys)
    assert code == 1 and err.startswith(f"{tmp_path / 'arch.lip'}:6:44: error: the checkpoint 'c.pt': "
                                        "weight-norm tensor '2.weight_v' (v) has norm 0")


def test_a_second_weights_file_in_the_architecture_is_refused_by_import_and_sweep(tmp_path, capsys):
    """import --like and sweep --like agree: an architecture with weights lines naming two files is refused
    at the second (was: both retargeted at the checkpoint without a word)."""
    from lipdsl.app.sweep_items import expand

    arch = SEQ_ARCH.replace("dense 32", 'weights "fc.npz"\ndense 32')
    code, err = import_seq(tmp_path, seq_state(), capsys, arch)
    assert code == 1
    assert err.startswith(f"{tmp_path / 'arch.lip'}:9:1: error: the architecture spec names a second weights "
                          "file 'fc.npz'")
    with pytest.raises(LipdslError, match="second weights file 'fc.npz'") as info:
        expand([tmp_path / "c.pt"], like=tmp_path / "arch.lip")
    assert info.value.span.line == 9
    same = SEQ_ARCH.replace("dense 32", 'weights "w.npz"\ndense 32')  # the same file again: retargeted
    assert import_seq(tmp_path, seq_state(), capsys, same)[0] == 0


def test_import_weights_option_not_npz_is_a_usage_error(tmp_path, capsys):
    """-w o4.txt: a usage error about -w (exit 2; was: an error at the --like spec's weights line)."""
    (tmp_path / "arch.lip").write_text(SEQ_ARCH)
    torch.save(seq_state(), tmp_path / "c.pt")
    code = main(["import", str(tmp_path / "c.pt"), "--like", str(tmp_path / "arch.lip"),
                 "-o", str(tmp_path / "o.lip"), "-w", str(tmp_path / "o4.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "-w/--weights" in err and "must be an .npz" in err and "arch.lip:" not in err


def test_input_shape_sizes_of_any_integral_type():
    """``(numpy.int64(2), numpy.int64(16))`` is the shape ``(2, 16)`` (it was refused); a bool, a float, zero
    or a string is refused with the accepted forms."""
    module = nn.Sequential(nn.Conv1d(2, 2, 3), nn.ReLU())
    net = lipdsl.from_torch(module, (np.int64(2), np.int64(16)))
    assert net.typed.input_shape == lipdsl.from_torch(module, (2, 16)).typed.input_shape
    assert str(net.typed.input_shape) == "2x16"
    for bad in [(True, 16), (2, 0), (2.0, 16), "ab"]:
        with pytest.raises(LipdslError, match=r"input_shape must be \(channels, length\)"):
            lipdsl.from_torch(module, bad)


def test_a_half_precision_module_is_refused_with_the_conversion():
    """A float16 module exported through ONNX failed the layer-by-layer check on rounding ("differs from
    the ONNX model ... 0.000655"); now it is refused naming its dtype, with ``module.float()`` as the way."""
    with pytest.raises(UnsupportedError, match="_CropToInput has float16 parameters") as info:
        lipdsl.from_torch(_CropToInput().half(), (1, 32))
    assert "module.float()" in info.value.hint
    assert lipdsl.from_torch(_CropToInput().half().float(), (1, 32)).solve().verified

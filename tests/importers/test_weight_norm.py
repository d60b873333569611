"""Weight norm in state_dicts (import --like) and where --like errors point; no torch needed.

The checkpoints are dicts of numpy arrays (what ``load_state_dict`` returns); the trained TCN's comes from
its baked ``specs/weights/trained/tcn_res16.npz``, which holds torch's float32 g and v (as float64) and the
effective weights g v / ||v|| computed from them in float64 by torch (specs/train/train_ucr.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import lipdsl.importers.pytorch as pytorch
from lipdsl.app.cli import cli
from lipdsl.errors import LipdslError, ShapeError, WeightError
from lipdsl.importers.pytorch import import_state_dict, spec_tensors
from lipdsl.importers.spec import staged
from lipdsl.importers.weight_norm import WeightNormError, weight_norm, weight_norm_key
from lipdsl.lang.load import load_network
from lipdsl.model.forward import forward
from repo_paths import SPECS

TCN_SPEC = SPECS / "tcn.lip"
TCN_NPZ = SPECS / "weights" / "trained" / "tcn_res16.npz"
RNG = np.random.default_rng(7)


def reference(g: np.ndarray, v: np.ndarray, dim: int | None) -> np.ndarray:
    """g v / ||v|| written out: one norm per index along ``dim``, or over all of v."""
    if dim is None:
        return g * v / np.sqrt((v**2).sum())
    norms = np.sqrt((np.moveaxis(v, dim, 0).reshape(v.shape[dim], -1) ** 2).sum(axis=1))
    shape = [1] * v.ndim
    shape[dim] = v.shape[dim]
    return g * v / norms.reshape(shape)


def g_of(v: np.ndarray, dim: int | None) -> np.ndarray:
    """A random g of the shape torch stores for ``weight_norm(module, dim=dim)``."""
    if dim is None:
        return np.asarray(RNG.uniform(0.5, 2.0))
    shape = [1] * v.ndim
    shape[dim] = v.shape[dim]
    return RNG.uniform(0.5, 2.0, size=shape) * RNG.choice([-1, 1], size=shape)


def tcn_checkpoint(form: str = "parametrizations") -> dict[str, np.ndarray]:
    """The trained TCN's state_dict as torch saved it: g and v, no effective weights (float64 copies)."""
    baked = np.load(TCN_NPZ)
    state = {}
    for k in baked.files:
        if k.endswith(".weight") and f"{k[:-7]}.parametrizations.weight.original0" in baked.files:
            continue  # an effective weight, added by the export: torch's state_dict has none
        name = k
        if form == "weight_norm":  # torch.nn.utils.weight_norm's names for the same tensors
            name = k.replace(".parametrizations.weight.original0", ".weight_g")
            name = name.replace(".parametrizations.weight.original1", ".weight_v")
        state[name] = baked[k]
    return state


# -- the names and the formula ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, expected",
    [
        ("network.0.conv1.parametrizations.weight.original0", ("network.0.conv1.weight", "g")),
        ("network.0.conv1.parametrizations.weight.original1", ("network.0.conv1.weight", "v")),
        ("conv1.weight_g", ("conv1.weight", "g")),
        ("conv1.weight_v", ("conv1.weight", "v")),
        ("parametrizations.weight.original0", ("weight", "g")),  # a single module's state_dict
        ("weight_v", ("weight", "v")),
        ("conv1.parametrizations.weight.original", None),  # one original: spectral norm, orthogonal ...
        ("conv1.parametrizations.weight.original2", None),
        ("conv1.weight", None),
        ("bn.running_var", None),
    ],
)
def test_weight_norm_key(key, expected):
    assert weight_norm_key(key) == expected


@pytest.mark.parametrize("dim", [0, 1, 2, None])
def test_weight_norm_equals_the_formula_for_every_dim(dim):
    v = RNG.standard_normal((4, 3, 5))
    g = g_of(v, dim)
    np.testing.assert_allclose(weight_norm(g, v), reference(g, v, dim), rtol=1e-14, atol=0)


def test_weight_norm_computes_in_float64_from_the_stored_values():
    v = RNG.standard_normal((4, 3, 5)).astype(np.float32)
    g = g_of(v, 0).astype(np.float32)
    w = weight_norm(g, v)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, reference(g.astype(np.float64), v.astype(np.float64), 0), rtol=1e-14)


def test_weight_norm_of_a_size_one_axis_is_the_whole_norm():
    """g of shape (1, 1, 1) for v of shape (1, 3, 5): dim=0 with one output channel, or dim=None as a
    (1, 1, 1) tensor; both are the norm over all of v."""
    v = RNG.standard_normal((1, 3, 5))
    g = np.full((1, 1, 1), 1.5)
    np.testing.assert_allclose(weight_norm(g, v), reference(g, v, 0), rtol=1e-14)
    np.testing.assert_allclose(weight_norm(g, v), reference(g, v, None), rtol=1e-14)


def test_weight_norm_of_huge_and_tiny_v_is_exact():
    """v is scaled by a power of two before squaring: no overflow, no underflow, the same w."""
    v = RNG.standard_normal((4, 3, 5))
    g = g_of(v, 0)
    for scale in (2.0**600, 2.0**-600):
        np.testing.assert_array_equal(weight_norm(g, v * scale), weight_norm(g, v))


@pytest.mark.parametrize(
    "g_shape, words",
    [
        ((4, 3, 1), "all of size 1 but one"),  # two axes: which one is dim?
        ((3, 1, 1), "do not fit"),  # axis 0 of v has 4
        ((4,), "do not fit"),  # not v's number of axes
        ((4, 1), "do not fit"),
    ],
)
def test_weight_norm_refuses_a_g_that_does_not_fit(g_shape, words):
    v = RNG.standard_normal((4, 3, 5))
    with pytest.raises(WeightNormError, match=words) as info:
        weight_norm(np.ones(g_shape), v, "c.weight_g", "c.weight_v")
    assert "'c.weight_g'" in info.value.message and str(v.shape) in info.value.message


@pytest.mark.parametrize(
    "which, value, words",
    [("g", np.nan, "'c.weight_g' holds NaN at index (2, 0, 0)"), ("v", np.inf, "'c.weight_v' holds Inf")],
)
def test_weight_norm_refuses_non_finite_tensors(which, value, words):
    v = RNG.standard_normal((4, 3, 5))
    g = g_of(v, 0)
    (g if which == "g" else v)[2, 0, 0] = value
    with pytest.raises(WeightNormError, match=words.replace("(", r"\(").replace(")", r"\)")):
        weight_norm(g, v, "c.weight_g", "c.weight_v")


def test_weight_norm_refuses_a_zero_norm_naming_the_channel():
    v = RNG.standard_normal((4, 3, 5))
    v[1] = 0.0
    with pytest.raises(WeightNormError, match=r"'c.weight_v' \(v\) has norm 0 at index \(1, 0, 0\)"):
        weight_norm(g_of(v, 0), v, "c.weight_g", "c.weight_v")
    with pytest.raises(WeightNormError, match="has norm 0: "):
        weight_norm(np.asarray(1.0), np.zeros((4, 3, 5)), "c.weight_g", "c.weight_v")


# -- state_dicts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["parametrizations", "weight_norm"])
@pytest.mark.parametrize("dim", [0, 2, None])
def test_spec_tensors_adds_the_effective_weight(form, dim):
    v = RNG.standard_normal((4, 3, 5)).astype(np.float32).astype(np.float64)
    g = g_of(v, dim)
    names = (
        ("0.parametrizations.weight.original0", "0.parametrizations.weight.original1")
        if form == "parametrizations"
        else ("0.weight_g", "0.weight_v")
    )
    keys = spec_tensors({names[0]: g, names[1]: v, "0.bias": np.zeros(4)}, refs("_0.weight"))
    np.testing.assert_allclose(keys["0.weight"], reference(g, v, dim), rtol=1e-14)
    assert {"0.bias", *names} < set(keys)  # the rest is kept, under the state_dict's names
    assert set(spec_tensors({names[0]: g, names[1]: v})) == set(names)  # a pair no spec reads: left alone


def refs(*keys: str) -> tuple:
    """References of a spec to these keys of its weights file."""
    from lipdsl.lang.ast import TensorRef
    from lipdsl.lang.source import Span

    return tuple(TensorRef(None, key, Span(1, 1, 1, 2)) for key in keys)


def test_spec_tensors_leaves_an_incomplete_pair_alone():
    keys = spec_tensors({"c.weight_g": np.ones((2, 1, 1)), "c.bias": np.zeros(2)})
    assert set(keys) == {"c.weight_g", "c.bias"}


@pytest.mark.parametrize(
    "extra",
    [{"c.weight": np.ones((2, 1, 3))}, {"c.weight_g": np.ones((2, 1, 1)), "c.weight_v": np.ones((2, 1, 3))}],
)
def test_spec_tensors_refuses_a_weight_given_twice(extra):
    state = {"c.parametrizations.weight.original0": np.ones((2, 1, 1)),
             "c.parametrizations.weight.original1": np.ones((2, 1, 3)), **extra}
    with pytest.raises(WeightNormError, match="two definitions of 'c.weight'"):
        spec_tensors(state, refs("c.weight"))
    spec_tensors(state)  # (not read: no error)


@pytest.mark.parametrize("form", ["parametrizations", "weight_norm"])
def test_trained_tcn_imports_like_its_baked_weights(tmp_path, form):
    """The TCN's state_dict (g, v) into specs/tcn.lip: the effective weights equal the ones baked by torch in
    float64 (to 1e-12), so the network is the one `lipdsl solve specs/tcn.lip` bounds."""
    spec, weights = import_state_dict(tcn_checkpoint(form), TCN_SPEC, tmp_path / "imp_tcn.lip")
    baked, imported = np.load(TCN_NPZ), np.load(weights)
    for k in baked.files:
        if k in imported.files:
            np.testing.assert_allclose(imported[k], baked[k], rtol=1e-12, atol=0, err_msg=k)
        else:
            assert form == "weight_norm" and ".parametrizations." in k
    _, net = load_network(spec)
    _, ref = load_network(TCN_SPEC)
    u = RNG.standard_normal((1, 150))
    np.testing.assert_allclose(forward(net, u), forward(ref, u), rtol=1e-12, atol=1e-12)


# -- errors point into the --like spec; nothing is left behind -----------------------------------------------


def test_missing_key_points_into_the_like_spec(tmp_path):
    state = tcn_checkpoint()
    del state["network.1.conv2.parametrizations.weight.original0"]  # no g: no network.1.conv2.weight
    with pytest.raises(WeightNormError) as info:
        import_state_dict(state, TCN_SPEC, tmp_path / "imp_tcn.lip")
    err = info.value
    lines = TCN_SPEC.read_text().split("\n")
    line = next(i for i, t in enumerate(lines, 1) if "weight network.1.conv2.weight" in t)
    col = lines[line - 1].index("network.1.conv2.weight") + 1
    assert err.source.path == str(TCN_SPEC)
    head, shown, caret, hint = err.render(err.source).split("\n")
    assert head == (f"{TCN_SPEC}:{line}:{col}: error: the state_dict holds "
                    "'network.1.conv2.parametrizations.weight.original1' of a weight-norm pair for "
                    "'network.1.conv2.weight', but not its g (the norm)")
    assert shown == f"{line:>5} | {lines[line - 1]}"
    assert caret == "      | " + " " * (col - 1) + "^" + "~" * (len("network.1.conv2.weight") - 1)
    assert hint.startswith("  hint: save the whole state_dict")
    assert list(tmp_path.iterdir()) == []


ARCH = """# a two-layer architecture
input 2 x 8
{weights}conv1d c: 2 -> 3, kernel 3, weight c.weight, bias c.bias
relu
flatten
dense d: 18 -> 1, weight d.weight
"""


def good_state():
    v = RNG.standard_normal((3, 2, 3))
    return {"c.weight_g": g_of(v, 0), "c.weight_v": v, "c.bias": np.zeros(3),
            "d.weight": RNG.standard_normal((1, 18))}


@pytest.mark.parametrize("weights", ['weights "old.npz"\n', ""])  # with a weights line, or one added
def test_wrong_shape_points_into_the_like_spec(tmp_path, weights):
    arch = tmp_path / "arch.lip"
    arch.write_text(ARCH.format(weights=weights), encoding="utf-8")
    state = good_state()
    state["d.weight"] = np.zeros((1, 17))
    with pytest.raises(ShapeError) as info:
        import_state_dict(state, arch, tmp_path / "out" / "net.lip")
    err = info.value
    line = 7 if weights else 6  # the dense layer's line in arch.lip
    assert err.source.path == str(arch)
    assert err.render(err.source).split("\n")[:3] == [
        f"{arch}:{line}:26: error: dense 'd' weight 'd.weight' in the state_dict has shape (1, 17), but "
        "the layer declares (out, in) = (1, 18)",
        f"{line:>5} | dense d: 18 -> 1, weight d.weight",
        "      | " + " " * 25 + "^~~~~~~~",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.lip"]  # out/ was made, and removed


OWN = 'input 2\ndense a: 2 -> 2, weight a.weight, bias "extra.npy"\n'


def test_the_architectures_own_files_stay_inside_the_written_specs_folder(tmp_path):
    """``bias "extra.npy"`` beside ``arch/arch.lip``, imported to ``out/net.lip``: it would be
    ``../arch/extra.npy`` there, outside the written spec's directory: refused at the architecture's line,
    nothing written; with ``allow_outside`` the spec names it so, and reads it."""
    (tmp_path / "arch").mkdir()
    arch = tmp_path / "arch" / "arch.lip"
    arch.write_text(OWN)
    np.save(tmp_path / "arch" / "extra.npy", np.array([1.0, 2.0]))
    with pytest.raises(WeightError) as info:
        import_state_dict({"a.weight": np.eye(2)}, arch, tmp_path / "out" / "net.lip")
    err = info.value
    assert err.render(err.source).split("\n")[:3] == [
        f"{arch}:2:40: error: weight file 'extra.npy' (beside the architecture spec) would be "
        "'../arch/extra.npy' from the spec to write, outside that spec's directory",
        "    2 | dense a: 2 -> 2, weight a.weight, bias \"extra.npy\"",
        "      | " + " " * 39 + "^~~~~~~~~~~",
    ]
    assert "write the spec into the architecture spec's folder" in err.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch"]
    with pytest.MonkeyPatch.context() as mp:  # import --like's torch.load, without torch: an .npz here
        mp.setattr(pytorch, "load_state_dict", lambda f, shown=None: dict(np.load(f)))
        with open(tmp_path / "arch" / "ck.pt", "wb") as f:
            np.savez(f, **{"a.weight": np.eye(2)})
        out = CliRunner().invoke(cli, ["import", str(tmp_path / "arch" / "ck.pt"), "--like", str(arch), "-o",
                                       str(tmp_path / "out" / "net.lip")])
    assert out.exit_code == 1 and "would be '../arch/extra.npy'" in out.output
    assert "--allow-outside" not in out.output and "Traceback" not in out.output  # import has no such option
    assert not (tmp_path / "out").exists()
    spec, _ = import_state_dict({"a.weight": np.eye(2)}, arch, tmp_path / "out" / "net.lip",
                                allow_outside=True)
    assert 'bias "../arch/extra.npy"' in spec.read_text()
    assert list(load_network(spec, allow_outside=True)[1].layers[0].bias) == [1.0, 2.0]


def test_errors_at_a_moved_file_name_it_as_the_architecture_does(tmp_path):
    """A file the architecture names, moved to its name from the written spec's folder: an error there
    names it as the architecture writes it, at its line."""
    (tmp_path / "arch").mkdir()
    arch = tmp_path / "arch" / "arch.lip"
    arch.write_text(OWN)
    np.save(tmp_path / "arch" / "extra.npy", np.array([1.0, np.nan]))
    with pytest.raises(WeightError) as info:
        import_state_dict({"a.weight": np.eye(2)}, arch, tmp_path / "net.lip")
    err = info.value
    assert err.render(err.source).split("\n")[:3] == [
        f"{arch}:2:40: error: 'extra.npy' holds NaN at index (1,)",
        "    2 | dense a: 2 -> 2, weight a.weight, bias \"extra.npy\"",
        "      | " + " " * 39 + "^~~~~~~~~~~",
    ]


def test_failed_import_keeps_existing_outputs(tmp_path):
    arch = tmp_path / "arch.lip"
    arch.write_text(ARCH.format(weights=""), encoding="utf-8")
    (tmp_path / "net.lip").write_text("precious spec")
    (tmp_path / "net.npz").write_bytes(b"precious weights")
    state = good_state()
    del state["c.bias"]
    with pytest.raises(WeightError, match="no tensor 'c.bias' in the state_dict"):
        import_state_dict(state, arch, tmp_path / "net.lip")
    assert (tmp_path / "net.lip").read_text() == "precious spec"
    assert (tmp_path / "net.npz").read_bytes() == b"precious weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.lip", "net.lip", "net.npz"]
    spec, weights = import_state_dict(good_state(), arch, tmp_path / "net.lip")  # a good one replaces them
    load_network(spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.lip", "net.lip", "net.npz"]


def test_bad_weight_norm_names_the_checkpoint_key_and_writes_nothing(tmp_path):
    arch = tmp_path / "arch.lip"
    arch.write_text(ARCH.format(weights=""), encoding="utf-8")
    state = good_state()
    state["c.weight_v"][2] = 0.0
    with pytest.raises(WeightNormError) as info:
        import_state_dict(state, arch, tmp_path / "net.lip")
    assert info.value.render().startswith(
        "error: the state_dict: weight-norm tensor 'c.weight_v' (v) has norm 0 at index (2, 0, 0)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.lip"]


def test_staged_writes_whole_files_or_none(tmp_path):
    a, b = tmp_path / "a.lip", tmp_path / "sub" / "b.npz"
    a.write_text("old")
    with pytest.raises(RuntimeError):
        with staged(a, b) as (ta, tb):
            assert ta.parent == a.parent and ta.suffix == ".lip" and tb.suffix == ".npz"
            ta.write_text("new")
            raise RuntimeError("the check failed")
    assert a.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.lip"]
    with staged(a, b) as (ta, tb):
        ta.write_text("new")
        tb.write_bytes(b"w")
    assert a.read_text() == "new" and b.read_bytes() == b"w"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.lip", "b.npz", "sub"]


def test_staged_names_the_target_it_cannot_write(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LipdslError, match=f"cannot write {tmp_path / 'file' / 'x.lip'}"):
        with staged(tmp_path / "file" / "x.lip"):
            pass


UNREAD_ARCH = ("network r\ninput 2 x 8\nweights \"w.npz\"\n"
               "conv1d c: 2 -> 3, kernel 3, padding 1, weight c.weight, bias c.bias\nrelu\n"
               "global_avgpool\ndense f: 3 -> 2, weight f.weight\n")


def _unread_state(rng) -> dict:
    """A conv + batch norm + dense checkpoint; UNREAD_ARCH leaves the batch norm out."""
    return {"c.weight": rng.standard_normal((3, 2, 3)), "c.bias": rng.standard_normal(3),
            "bn.weight": rng.uniform(0.5, 2, 3), "bn.bias": rng.standard_normal(3),
            "bn.running_mean": rng.standard_normal(3), "bn.running_var": rng.uniform(0.5, 2, 3),
            "f.weight": rng.standard_normal((2, 3)), "f.bias": rng.standard_normal(2)}


def test_a_checkpoint_layer_the_spec_leaves_out_is_warned_of(tmp_path):
    """import --like with an architecture that leaves out the model's batch norm: its bound would be of
    another network, so the tensors no layer reads are named in a warning (biases, running means and a
    tensor registered twice are not: they change no bound, or are read under the other name); the CLI
    prints it, sweep puts it in the row's warnings."""
    from lipdsl.app import sweep as sw

    rng = np.random.default_rng(4)
    state = _unread_state(rng)
    state["net.0.weight"] = state["c.weight"].copy()  # (a parameter registered twice, as a TCN's net.0)
    arch = tmp_path / "arch.lip"
    arch.write_text(UNREAD_ARCH)
    said = []
    import_state_dict(state, arch, tmp_path / "o.lip", on_warning=said.append)
    assert len(said) == 1
    assert said[0].startswith("the state_dict holds 2 tensors that the architecture spec never reads "
                              "('bn.weight', 'bn.running_var'): if they belong to layers of the model")
    with pytest.warns(UserWarning, match="never reads"):
        import_state_dict(state, arch, tmp_path / "o2.lip")
    del state["bn.weight"], state["bn.running_var"]  # (what is left needs no warning)
    said.clear()
    import_state_dict(state, arch, tmp_path / "o3.lip", on_warning=said.append)
    assert said == []
    np.savez(tmp_path / "ck.npz", **_unread_state(rng))
    row, = sw.sweep([tmp_path / "ck.npz"], like=arch, jobs=0, cache=False, method="naive")
    assert row["status"] == "exact norm" and "'bn.weight', 'bn.running_var'" in row["warnings"][0]


def test_an_npz_checkpoint_imports_without_torch(tmp_path, monkeypatch):
    """import --like with an .npz of a state_dict's tensors reads it with numpy (no pickles), as sweep
    --like does: the same spec as from the dict (was: 'this needs PyTorch', or torch's zip error)."""
    monkeypatch.setattr(pytorch, "_require_torch", lambda: pytest.fail("torch was asked for"))
    state = _unread_state(np.random.default_rng(5))
    np.savez(tmp_path / "ck.npz", **state)
    arch = tmp_path / "arch.lip"
    arch.write_text(UNREAD_ARCH.replace("relu\n", "batchnorm 3, weights bn\nrelu\n"))
    res = CliRunner().invoke(cli, ["import", str(tmp_path / "ck.npz"), "--like", str(arch), "-o",
                                   str(tmp_path / "a.lip")])
    assert res.exit_code == 0, res.output
    import_state_dict(state, arch, tmp_path / "b.lip")
    _, a = load_network(tmp_path / "a.lip")
    _, b = load_network(tmp_path / "b.lip")
    assert all(np.array_equal(x.weight, y.weight) for x, y in zip(a.layers, b.layers) if hasattr(x, "weight"))


def test_an_npz_checkpoint_is_read_as_weight_files_are(tmp_path):
    """import --like reads an .npz checkpoint's tensors through the weight files' member reader: a header
    claiming 1.5 TiB is refused before numpy allocates it (was: numpy's allocation error as a traceback), and
    so is a member that is no .npy array; exit 1 with the reason."""
    import io
    import struct
    import zipfile

    def npy_claiming(shape):
        header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
        header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16

    arch = tmp_path / "arch.lip"
    arch.write_text("input 2\ndense fc: 2 -> 1, weight fc.weight\n")
    for name, member, reason in [("liar", npy_claiming((200_000_000_000,)), "declares shape (200000000000,)"),
                                 ("raw", b"not an array", "is not a .npy array")]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("fc.weight.npy", member)
        (tmp_path / f"{name}.npz").write_bytes(buf.getvalue())
        res = CliRunner().invoke(cli, ["import", str(tmp_path / f"{name}.npz"), "--like", str(arch), "-o",
                                       str(tmp_path / "out.lip")])
        assert res.exit_code == 1 and "Traceback" not in res.output
        said = " ".join(res.output.split())
        assert f"error: tensor 'fc.weight' in '{tmp_path / name}.npz' {reason}" in said
        assert not (tmp_path / "out.lip").exists()

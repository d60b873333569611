"""Sweep: items as bytes -> rows (in-memory front end, cache keys, local and Dask executors, bad items)."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest

import lipdsl
import lipdsl.pipeline
from lipdsl.app import sweep as sw
from lipdsl.app import sweep_items
from lipdsl.pipeline import solve_network
from lipdsl.errors import LipdslError, WeightError
from lipdsl.lang.load import check_source, load_network
from lipdsl.lang.source import Source
from sweeping import ECG_SPEC, DaskCluster, ecg_checkpoints

pytestmark = pytest.mark.solver

SPEC = """network n
input 1 x 16
weights "w/net.npz"
conv1d c1: 1 -> 2, kernel 3, padding causal, weight conv.weight
relu
flatten
dense d: 32 -> 3, weight fc.weight, bias "extra.npy"
"""


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _huge_header() -> bytes:
    """A .npy whose header claims 10^5 x 10^5 doubles (80 GB) over 8 bytes of data."""
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**5, 10**5)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + bytes(8)


@pytest.fixture
def tensors():
    rng = np.random.default_rng(1)
    return {"conv.weight": rng.standard_normal((2, 1, 3)), "fc.weight": rng.standard_normal((3, 32))}


# -- the front end from bytes --------------------------------------------------------------------------------


def test_check_from_bytes_equals_check_from_disk(tmp_path, tensors):
    bias = np.arange(3.0)
    (tmp_path / "w").mkdir()
    np.savez(tmp_path / "w" / "net.npz", **tensors)
    np.save(tmp_path / "extra.npy", bias)
    (tmp_path / "n.lip").write_text(SPEC)
    _, disk = load_network(tmp_path / "n.lip")
    files = {"w/net.npz": (tmp_path / "w" / "net.npz").read_bytes(),
             "extra.npy": (tmp_path / "extra.npy").read_bytes()}
    mem = check_source(Source("elsewhere/n.lip", SPEC), files=files)  # no such directory: nothing read
    for a, b in zip(disk.layers, mem.layers):
        for attr in ("weight", "bias"):
            x, y = getattr(a, attr, None), getattr(b, attr, None)
            assert (x is None) == (y is None) and (x is None or np.array_equal(x, y))
    assert np.array_equal(mem.layers[-1].bias, bias)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f, t: f.pop("extra.npy"), "weight file 'extra.npy' not found"),
        (lambda f, t: f.update({"w/net.npz": _npz(**{**t, "fc.weight": np.full((3, 32), np.nan)})}),
         "holds NaN at index (0, 0)"),
        (lambda f, t: f.update({"extra.npy": _npy(np.array([object()] * 3))}), "does not unpickle weights"),
        (lambda f, t: f.update({"extra.npy": _huge_header()}), "the file holds less"),
        (lambda f, t: f.update({"w/net.npz": b"PK\x03\x04 not a zip"}), "cannot read weight file"),
        (lambda f, t: f.update({"w/net.npz": _npz(conv=t["conv.weight"])}), "no tensor 'conv.weight'"),
    ],
)
def test_check_from_bytes_keeps_the_checks(tensors, change, message):
    files = {"w/net.npz": _npz(**tensors), "extra.npy": _npy(np.arange(3.0))}
    change(files, tensors)
    with pytest.raises(WeightError, match=".*") as info:
        check_source(Source("n.lip", SPEC), files=files)
    assert message in info.value.message


def test_check_from_bytes_keeps_the_path_rules(tensors):
    text = SPEC.replace('weights "w/net.npz"', 'weights "../net.npz"')
    with pytest.raises(WeightError, match="outside the spec's directory"):
        check_source(Source("n.lip", text), files={"../net.npz": _npz(**tensors)})


# -- items and keys ------------------------------------------------------------------------------------------


def test_expand_reads_specs_with_their_weight_files_and_reports_unreadable_inputs(tmp_path, tensors):
    (tmp_path / "w").mkdir()
    np.savez(tmp_path / "w" / "net.npz", **tensors)
    np.save(tmp_path / "extra.npy", np.arange(3.0))
    (tmp_path / "n.lip").write_text(SPEC)
    spec, missing, bare, other = sw.expand(
        [tmp_path / "n.lip", tmp_path / "gone.lip", tmp_path / "w" / "net.npz", tmp_path / "x.txt"])
    assert spec.kind == "spec" and spec.error is None and spec.text == SPEC
    assert dict(spec.files) == {"w/net.npz": (tmp_path / "w" / "net.npz").read_bytes(),
                                "extra.npy": (tmp_path / "extra.npy").read_bytes()}
    assert "cannot read spec" in missing.error
    assert "pass --like" in bare.error
    assert "not a .lip spec" in other.error
    like = sw.expand([tmp_path / "w" / "net.npz"], like=ECG_SPEC)[0]
    assert like.kind == "spec" and 'weights "net.npz"' in like.text and dict(like.files) == {
        "net.npz": (tmp_path / "w" / "net.npz").read_bytes()}
    # an architecture's own tensor files travel with each checkpoint
    np.savez(tmp_path / "ckpt.npz", **tensors)
    own = sw.expand([tmp_path / "ckpt.npz"], like=tmp_path / "n.lip")[0]
    assert 'weights "ckpt.npz"' in own.text and "w/net.npz" not in own.text
    assert dict(own.files)["extra.npy"] == (tmp_path / "extra.npy").read_bytes() and len(own.files) == 2
    res = sw.sweep([tmp_path / "ckpt.npz"], like=tmp_path / "n.lip", jobs=0, cache=False)
    assert res.bounds == [solve_network(load_network(tmp_path / "n.lip")[1]).certificate.lipschitz]


def test_files_named_inside_residual_blocks_travel_with_the_item(tmp_path):
    """A ``"file.npz":key`` used only inside a residual block (main path or shortcut) is shipped too: the
    worker, which reads nothing from disk, finds it."""
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "net.npz", **{"c.weight": rng.standard_normal((2, 1, 3))})
    np.savez(tmp_path / "blk.npz", m=rng.standard_normal((2, 2, 3)), s=rng.standard_normal((2, 2, 1)))
    (tmp_path / "r.lip").write_text('input 1 x 8\nweights "net.npz"\nconv1d 1 -> 2, kernel 3, padding 1, '
                                    'weight c.weight\nrelu\nresidual b1:\n  conv1d 2 -> 2, kernel 3, '
                                    'padding 1, weight "blk.npz":m\n  relu\nshortcut\n  conv1d 2 -> 2, '
                                    'kernel 1, weight "blk.npz":s\nend\n')
    item, = sw.expand([tmp_path / "r.lip"])
    assert [name for name, _ in item.files] == ["net.npz", "blk.npz"]
    res = sw.sweep([tmp_path / "r.lip"], jobs=0, cache=False, method="naive")
    assert res[0]["status"] == "exact norm", res[0].get("error")


def test_onnx_items_carry_their_external_data(tmp_path):
    """An ONNX model whose weights are in a data file beside it (torch.onnx.export's default) travels as one
    self-contained model, bounded as the same model with its weights inside; a missing data file is the
    item's error. (The checks of external data: tests/importers/test_onnx_file.py.)"""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "c.weight"], ["a"], pads=[1, 1], kernel_shape=[3]),
         helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Flatten", ["b"], ["f"]),
         helper.make_node("Gemm", ["f", "d.weight"], ["y"], transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(rng.standard_normal((2, 1, 3)), "c.weight"),
         numpy_helper.from_array(rng.standard_normal((2, 16)), "d.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "inside.onnx"))
    for folder, name in (("m", "ext"), ("gone", "nodata")):  # (onnx.save moves a model's tensors out)
        (tmp_path / folder).mkdir()
        copy = onnx.ModelProto.FromString(model.SerializeToString())
        onnx.save(copy, str(tmp_path / folder / f"{name}.onnx"), save_as_external_data=True,
                  location=f"{name}.onnx.data", size_threshold=0)
    (tmp_path / "gone" / "nodata.onnx.data").unlink()
    inside, ext, nodata = sw.expand([tmp_path / "inside.onnx", tmp_path / "m" / "ext.onnx",
                                     tmp_path / "gone" / "nodata.onnx"])
    assert inside.files == (("inside.onnx", (tmp_path / "inside.onnx").read_bytes()),)
    assert ext.error is None and onnx.load_model_from_string(ext.files[0][1]).graph.initializer[0].raw_data
    assert "'nodata.onnx.data', which is not in the model's folder" in nodata.error and not nodata.files
    res = sw.sweep([tmp_path / "inside.onnx", tmp_path / "m" / "ext.onnx"], jobs=0, cache=False,
                   method="naive")
    assert [r["status"] for r in res] == ["exact norm"] * 2 and res.bounds[0] == res.bounds[1]


def test_names_are_stems_unless_they_clash(tmp_path):
    paths = [tmp_path / "a" / "m.npz", tmp_path / "b" / "m.npz", tmp_path / "c.npz"]
    assert sw._names([str(p) for p in paths]) == [str(paths[0]), str(paths[1]), "c"]


def test_cache_key_follows_the_content(tmp_path):
    ckpt = ecg_checkpoints(tmp_path, 4)
    a, b, a_again = sw.expand([ckpt[0], ckpt[3], ckpt[0]], like=ECG_SPEC)
    opts = sw.Options()
    assert a.key(opts) == a_again.key(opts)
    assert a.key(opts) != b.key(opts)  # weight bytes
    assert a.key(opts) != a.key(sw.Options(lift=2))  # options
    moved = sw.Item(a.name, a.path, a.kind, a.text + "\n", a.spec_path, a.files)
    assert a.key(opts) != moved.key(opts)  # spec text
    renamed = sw.Item("other", "other.npz", a.kind, a.text, a.spec_path, a.files)
    assert a.key(opts) == renamed.key(opts)  # the name is not content


# -- running -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return ecg_checkpoints(tmp_path_factory.mktemp("ckpt"), 6)


@pytest.fixture(scope="module")
def reference(checkpoints):
    """Per-model ``solve`` bounds (``lipdsl solve`` of the spec the sweep item stands for)."""
    out = []
    for path in checkpoints:
        text = ECG_SPEC.read_text().replace('"weights/ecg_CNN_23_03_08_11_52.npz"', f'"{path.name}"')
        spec = path.with_suffix(".lip")
        spec.write_text(text)
        out.append(solve_network(load_network(spec)[1]).certificate.lipschitz)
    return out


def test_sweep_equals_solve_per_model_in_process_and_in_workers(checkpoints, reference):
    serial = sw.sweep(checkpoints, like=ECG_SPEC, jobs=0, cache=False)
    local = sw.sweep(checkpoints, like=ECG_SPEC, jobs=2, cache=False)
    assert serial.exit_code == local.exit_code == 0
    assert serial.bounds == local.bounds == reference  # bit for bit: same arithmetic, one BLAS thread
    assert [r["name"] for r in local] == [p.stem for p in checkpoints]
    assert all(r["status"] == "certified" and r["certified"] and not r["cached"] for r in local)
    assert local.solved == len(checkpoints)


def test_bad_items_are_reported_in_their_rows_and_do_not_stop_the_others(tmp_path, checkpoints, reference):
    nan = tmp_path / "nan.npz"
    with np.load(checkpoints[0]) as z:
        np.savez(nan, **{**{k: z[k] for k in z.files}, "fc1.weight": np.full((60, 96), np.inf)})
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, conv1=np.zeros((2, 1, 3)))
    inputs = [checkpoints[0], nan, tmp_path / "missing.npz", wrong, checkpoints[1]]
    res = sw.sweep(inputs, like=ECG_SPEC, jobs=2, cache=False)
    status = [r["status"] for r in res]
    assert status == ["certified", "error", "error", "error", "certified"]
    assert res.bounds[0] == reference[0] and res.bounds[4] == reference[1]
    assert "holds Inf at index (0, 0)" in res[1]["error"] and "ecg.lip:" in res[1]["error"]
    assert "cannot read weight file" in res[2]["error"]
    assert "no tensor 'conv1.weight' in 'wrong.npz'" in res[3]["error"]
    assert res.exit_code == 1
    failed = sw.sweep(checkpoints[:2], like=ECG_SPEC, jobs=0, cache=False, max_lmi=20)
    assert [r["status"] for r in failed] == ["failed", "failed"] and "--max-lmi 20" in failed[0]["error"]
    assert failed.exit_code == 3


def test_second_identical_sweep_solves_nothing(tmp_path, checkpoints, monkeypatch):
    calls = []
    real = lipdsl.pipeline.solve_network

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lipdsl.pipeline, "solve_network", counting)
    first = sw.sweep(checkpoints, like=ECG_SPEC, jobs=0, cache=tmp_path / "cache")
    assert len(calls) == len(checkpoints) and first.solved == len(checkpoints) and first.cached == 0
    again = sw.sweep(checkpoints, like=ECG_SPEC, jobs=0, cache=tmp_path / "cache")
    assert len(calls) == len(checkpoints)  # not one more solve
    assert again.solved == 0 and again.cached == len(checkpoints)
    strip = [{k: v for k, v in r.items() if k != "cached"} for r in first]
    assert [{k: v for k, v in r.items() if k != "cached"} for r in again] == strip
    other = sw.sweep(checkpoints[:2], like=ECG_SPEC, jobs=0, cache=tmp_path / "cache", lift=2)
    assert other.solved == 2 and len(calls) == len(checkpoints) + 2  # other options: other keys
    sw.sweep(checkpoints[:1], like=ECG_SPEC, jobs=0, cache=None)
    assert len(calls) == len(checkpoints) + 3
    twice = sw.sweep([checkpoints[1], checkpoints[2], checkpoints[1]], like=ECG_SPEC, jobs=0, cache=None)
    assert len(calls) == len(checkpoints) + 5 and twice.solved == 2  # the same content is solved once
    assert [r["name"] for r in twice] == [str(checkpoints[1]), "ckpt_02", str(checkpoints[1])]
    assert twice.bounds == [first.bounds[1], first.bounds[2], first.bounds[1]]


def test_package_api_is_lazy_and_returns_a_table(checkpoints, reference, tmp_path):
    res = lipdsl.sweep([str(p) for p in checkpoints[:2]], like=str(ECG_SPEC), jobs=0, cache=False)
    assert res.bounds == reference[:2]
    text = res.to_csv(tmp_path / "out.csv")
    lines = text.splitlines()
    assert lines[0].split(",") == list(sw.CSV_COLUMNS) and len(lines) == 3
    assert (tmp_path / "out.csv").read_text() == text
    assert float(lines[1].split(",")[4]) == reference[0]


def test_a_local_worker_killed_mid_sweep_loses_nothing(tmp_path, reference, checkpoints):
    killed = []

    def kill_workers(row, done, total):
        if not killed:
            for child in multiprocessing.active_children():
                if child.name == "lipdsl-sweep-worker":
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)

    res = sw.sweep(checkpoints, like=ECG_SPEC, jobs=2, cache=False, on_row=kill_workers)
    assert killed
    assert len(res) == len(checkpoints)
    assert [r["status"] for r in res] == ["certified"] * len(checkpoints)  # retried on new workers
    assert res.bounds == reference


def test_a_local_worker_that_keeps_dying_is_reported(tmp_path, checkpoints, monkeypatch):
    monkeypatch.setattr(sw, "RETRIES", 0)

    def kill_workers(row, done, total):
        for child in multiprocessing.active_children():
            if child.name == "lipdsl-sweep-worker":
                with contextlib.suppress(ProcessLookupError):  # (it may have died since it was listed)
                    os.kill(child.pid, signal.SIGKILL)

    res = sw.sweep(checkpoints, like=ECG_SPEC, jobs=2, cache=False, on_row=kill_workers)
    assert len(res) == len(checkpoints)
    statuses = {r["status"] for r in res}
    assert statuses <= {"certified", "lost"} and "lost" in statuses
    assert all("worker process died" in r["error"] for r in res if r["status"] == "lost")
    assert res.exit_code == 3


# -- Dask ----------------------------------------------------------------------------------------------------


def test_dask_sweep_equals_the_local_one_and_survives_a_killed_worker(tmp_path, checkpoints, reference):
    distributed = pytest.importorskip("distributed")
    many = checkpoints + ecg_checkpoints(tmp_path, 8, seed=5)[6:]  # 8 items
    with DaskCluster(tmp_path, n_workers=2) as cluster:
        with distributed.Client(cluster.address, timeout=60) as client:
            big = tmp_path / "big.npz"  # 4 MB: scattered to the cluster rather than sent in the task
            with np.load(checkpoints[0]) as z:
                np.savez(big, unused=np.ones(2**19), **{k: z[k] for k in z.files})
            seen = []
            res = sw.sweep(checkpoints + [big], like=ECG_SPEC, client=client, cache=False,
                           on_progress=lambda name, k: seen.append((name, k)))
            assert [r["status"] for r in res] == ["certified"] * (len(checkpoints) + 1)
            assert seen and {n for n, _ in seen} <= set(res.names) and min(k for _, k in seen) == 1
            assert res.bounds == reference + reference[:1]  # identical to the local executor and to solve
            killed = []

            def kill_one(row, done, total):
                if not killed:
                    cluster.kill_worker(0)
                    killed.append(done)

            res = sw.sweep(many, like=ECG_SPEC, client=client, cache=False, on_row=kill_one)
            assert killed and len(res) == len(many)
            assert {r["status"] for r in res} <= {"certified", "lost"}
            assert all("lost" in r["error"] or "died" in r["error"] for r in res if r["status"] == "lost")
            local = sw.sweep(many, like=ECG_SPEC, jobs=0, cache=False)
            assert [b for b, r in zip(res.bounds, res) if r["status"] == "certified"] == [
                b for b, r in zip(local.bounds, res) if r["status"] == "certified"]
            assert sum(r["status"] == "certified" for r in res) == len(many)  # one worker left: rescheduled
            # --timeout on a worker's thread: the item runs in a child process whose main thread has the alarm
            timed = sw.sweep(checkpoints[:1], like=ECG_SPEC, client=client, cache=False, timeout=120)
            assert timed.bounds == reference[:1]
            short = sw.sweep(checkpoints[:1], like=ECG_SPEC, client=client, cache=False, timeout=1e-4)
            assert short[0]["status"] == "failed" and "time limit" in short[0]["error"]


# -- PyTorch state_dicts -------------------------------------------------------------------------------------


def test_state_dict_items_are_read_on_the_worker(tmp_path, checkpoints, reference):
    """``--like arch.lip ckpt.pt``: the .pt bytes go to the worker, which loads them with
    ``torch.load(weights_only=True)``; without torch the row says what to install."""
    try:
        import torch
    except ImportError:
        torch = None
    pt = tmp_path / "ckpt.pt"
    if torch is None:
        pt.write_bytes(b"\x80\x02}q\x00.")  # an empty pickled dict; never unpickled without torch
        res = sw.sweep([pt], like=ECG_SPEC, jobs=0, cache=False)
        assert res[0]["status"] == "error" and "this needs PyTorch" in res[0]["error"]
        assert "lipdsl[torch]" in res[0]["error"]
        return
    with np.load(checkpoints[3]) as z:
        torch.save({k: torch.from_numpy(z[k]) for k in z.files}, pt)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    res = sw.sweep([pt, pickled], like=ECG_SPEC, jobs=0, cache=False)
    assert res[0]["status"] == "certified" and res[0]["lipschitz"] == reference[3]
    assert res[1]["status"] == "error" and "weights_only=True" in res[1]["error"]


def test_state_dict_items_keep_the_files_the_architecture_names(tmp_path, tensors, monkeypatch):
    """``--like arch.lip ckpt.pt`` where arch.lip also takes a tensor from a file of its own (``bias
    "extra.npy"``): the state_dict fills the default weight keys, the file keeps its tensor, as with
    ``import --like`` (was a ValueError from unpacking the item's files)."""
    import lipdsl.importers.pytorch as pytorch

    # the worker's torch.load, without torch: the .pt here holds an .npz of the tensors
    monkeypatch.setattr(pytorch, "load_state_dict", lambda f, shown=None: dict(np.load(f)))
    (tmp_path / "w").mkdir()
    np.savez(tmp_path / "w" / "net.npz", **tensors)
    np.save(tmp_path / "extra.npy", np.arange(3.0))
    (tmp_path / "n.lip").write_text(SPEC)
    (tmp_path / "ckpt.pt").write_bytes(_npz(**{k: 2 * v for k, v in tensors.items()}))
    item, = sw.expand([tmp_path / "ckpt.pt"], like=tmp_path / "n.lip")
    assert item.kind == "state_dict" and [name for name, _ in item.files] == ["ckpt.npz", "extra.npy"]
    res = sw.sweep([tmp_path / "ckpt.pt"], like=tmp_path / "n.lip", jobs=0, cache=False, method="naive")
    np.savez(tmp_path / "w" / "net.npz", **{k: 2 * v for k, v in tensors.items()})
    solo = sw.sweep([tmp_path / "n.lip"], jobs=0, cache=False, method="naive")
    assert res[0]["status"] == "exact norm", res[0].get("error")
    assert res.bounds == solo.bounds


ARCH = """input 2
dense a: 2 -> 2, weight a.weight, bias a.bias, weight a.weight
"""


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_like_errors_point_at_the_architectures_own_lines(tmp_path, suffix, monkeypatch):
    """An architecture with no ``weights`` line (one is added before its first layer): an error is reported
    at the architecture's line, as ``import --like`` reports it (was: arch.lip:3:48 in a two-line file, the
    line of the text with the added line)."""
    import lipdsl.importers.pytorch as pytorch

    monkeypatch.setattr(pytorch, "load_state_dict", lambda f, shown=None: dict(np.load(f)))
    (tmp_path / "arch.lip").write_text(ARCH)
    (tmp_path / f"w{suffix}").write_bytes(_npz(**{"a.weight": np.eye(2), "a.bias": np.zeros(2)}))
    res = sw.sweep([tmp_path / f"w{suffix}"], like=tmp_path / "arch.lip", jobs=0, cache=False)
    assert res[0]["status"] == "error"
    assert res[0]["error"].split("\n")[:3] == [
        f"{tmp_path / 'arch.lip'}:2:48: error: option 'weight' given twice",
        "    2 | dense a: 2 -> 2, weight a.weight, bias a.bias, weight a.weight",
        "      | " + " " * 47 + "^" + "~" * 14,
    ]


def test_like_errors_in_the_weights_name_its_item(tmp_path, monkeypatch):
    """A key the item lacks: the architecture's line, the layer's column, the item named (a .pt item's
    tensors are the checkpoint's, not those of the .npz it becomes on the worker)."""
    import lipdsl.importers.pytorch as pytorch

    monkeypatch.setattr(pytorch, "load_state_dict", lambda f, shown=None: dict(np.load(f)))
    (tmp_path / "arch.lip").write_text('# two layers\ninput 2\ndense a: 2 -> 2, weight a.weight\n'
                                       'dense b: 2 -> 1, weight b.weight\n')
    for suffix in (".npz", ".pt"):
        (tmp_path / f"w{suffix}").write_bytes(_npz(**{"a.weight": np.eye(2)}))
    npz, pt = sw.sweep([tmp_path / "w.npz", tmp_path / "w.pt"], like=tmp_path / "arch.lip", jobs=0,
                       cache=False)
    head = f"{tmp_path / 'arch.lip'}:4:25: error: no tensor 'b.weight' in "
    assert npz["error"].startswith(head + "'w.npz'\n    4 | dense b: 2 -> 1, weight b.weight\n")
    assert pt["error"].startswith(head + "the checkpoint 'w.pt'\n    4 | dense b: 2 -> 1, weight b.weight\n")


def test_import_and_sweep_read_the_architectures_own_files_beside_it(tmp_path, monkeypatch):
    """``bias "extra.npy"`` in ``arch/arch.lip`` is ``arch/extra.npy`` for both ``import --like`` (whose
    written spec, in another folder, names it from there) and ``sweep --like`` (was: import read the
    ``extra.npy`` beside the spec it writes)."""
    from lipdsl.importers.pytorch import import_state_dict

    (tmp_path / "arch").mkdir()
    arch = tmp_path / "arch" / "arch.lip"
    arch.write_text('input 2\ndense a: 2 -> 2, weight a.weight, bias "extra.npy"\n')
    np.save(tmp_path / "arch" / "extra.npy", np.array([1.0, 2.0]))
    np.save(tmp_path / "extra.npy", np.array([9.0, 9.0]))  # beside the spec written: not the one meant
    np.savez(tmp_path / "ckpt.npz", **{"a.weight": np.eye(2)})
    spec, _ = import_state_dict({"a.weight": np.eye(2)}, arch, tmp_path / "net.lip")
    assert 'bias "arch/extra.npy"' in spec.read_text()
    item, = sw.expand([tmp_path / "ckpt.npz"], like=arch)
    _, swept, _ = sweep_items._network(item, sw.Options())
    assert list(load_network(spec)[1].layers[0].bias) == list(swept.layers[0].bias) == [1.0, 2.0]


def test_running_items_report_their_solver_iterations(checkpoints, reference, monkeypatch):
    # In this process with the throttle off, every KKT factorisation is reported, in order: CVXOPT factors
    # once for its start and once per iteration, and once more when it stops on a singular KKT matrix
    # (claimed 'unknown'). Which solve ends so is rounding's call (ckpt_01 did after 16 iterations with the
    # packages CI installed until 2026-12-05, and does not with numpy 2.4.6 / scipy 1.17.1), so here ckpt_01's
    # 18th factorisation fails as a singular one would.
    import lipdsl.solvers.cvxopt_conelp as conelp

    structured_kkt, solves = conelp.structured_kkt, []  # factorisations so far, per solve

    def singular_in_the_second_solve(sdp, nonneg_idx):
        kkt, this = structured_kkt(sdp, nonneg_idx), len(solves)
        solves.append(0)

        def factor(W):
            solves[this] += 1
            if this == 1 and solves[this] == 18:
                raise ArithmeticError("singular KKT matrix")
            return kkt(W)

        return factor

    monkeypatch.setattr(conelp, "structured_kkt", singular_in_the_second_solve)
    every: dict[str, list[int]] = {}
    monkeypatch.setattr(sw, "PROGRESS_EVERY", 0.0)
    res = sw.sweep(checkpoints[:3], like=ECG_SPEC, jobs=0, cache=False,
                   on_progress=lambda name, k: every.setdefault(name, []).append(k))
    # (the others end 'optimal' or, where rounding decides so, 'unknown': both are counted below)
    assert res[1]["claimed_status"] == "unknown" and res[1]["iterations"] == 16
    assert res[1]["status"] == "certified"
    assert "optimal" in {r["claimed_status"] for r in res}  # both ends are exercised
    assert [res.bounds[0], res.bounds[2]] == [reference[0], reference[2]]
    assert reference[1] <= res.bounds[1] <= reference[1] * (1 + 1e-5)  # (the last iterate but one)
    for row in res:
        factorisations = row["iterations"] + (1 if row["claimed_status"] == "optimal" else 2)
        assert every[row["name"]] == list(range(1, factorisations + 1)), row["name"]
    monkeypatch.setattr(conelp, "structured_kkt", structured_kkt)
    # From worker processes, throttled (PROGRESS_EVERY): which messages arrive depends on how fast the solve
    # runs (a loaded machine sends more), but the first always does, and each is one of those factorisations.
    seen: dict[str, list[int]] = {}
    res = sw.sweep(checkpoints[:3], like=ECG_SPEC, jobs=2, cache=False,
                   on_progress=lambda name, k: seen.setdefault(name, []).append(k))
    assert res.bounds == reference[:3]
    assert set(seen) == {p.stem for p in checkpoints[:3]}
    for name, ks in seen.items():
        assert ks[0] == 1 and ks == sorted(set(ks)) and set(ks) <= set(every[name]), (name, ks)
    counted: list[int] = []
    from lipdsl.solvers.solve import on_iteration

    with on_iteration(counted.append):
        solved = solve_network(load_network(ECG_SPEC)[1])
    # the start, then each iteration (and the failed one after an 'unknown' ending)
    ending = 1 if solved.solution.claimed_status == "optimal" else 2
    assert counted == list(range(1, solved.solution.iterations + ending + 1))


def test_progress_sends_the_first_iteration_then_one_every_progress_every_seconds(monkeypatch):
    """The worker's throttle on a fake clock: iteration 1 (of every solve) always, then the first iteration
    at least ``PROGRESS_EVERY`` seconds after the last one sent."""
    now = [100.0]
    monkeypatch.setattr(sw, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(sw, "PROGRESS_EVERY", 0.5)
    sent: list[int] = []
    hook = sw._reporting(sent.append)
    for k, t in [(1, 0.0), (2, 0.1), (3, 0.4), (4, 0.5), (5, 0.9), (6, 1.2), (1, 1.3), (2, 1.4), (3, 1.9)]:
        now[0] = 100.0 + t
        hook(k)
    assert sent == [1, 4, 6, 1, 3]


def test_baseline_methods_go_through_the_method_dispatcher(checkpoints, reference):
    from lipdsl.baselines.unrolled import naive_hinf

    res = sw.sweep(checkpoints[:2], like=ECG_SPEC, jobs=0, cache=False, method="naive-hinf")
    assert [r["status"] for r in res] == ["exact norm", "exact norm"] and res.exit_code == 0
    net = load_network(checkpoints[0].with_suffix(".lip"))[1]  # written by the reference fixture
    assert res.bounds[0] == naive_hinf(net, None)
    assert res[0]["method"] == "naive-hinf" and res[0]["note"]
    with pytest.raises(LipdslError, match="unknown method 'lipsdp'"):
        sw.sweep(checkpoints[:1], like=ECG_SPEC, jobs=0, cache=False, method="lipsdp")


def test_sweep_notes_carry_the_warnings_of_a_bound():
    """A bound with warnings (frequency form: large repair, above the H-infinity product) is never listed
    without them; an error row keeps its message, a quiet bound adds nothing."""
    from lipdsl.app.report import sweep_notes

    rows = [{"name": "a", "path": "a.lip", "lipschitz": 3.0, "warnings": ["the certificate repair raised"]},
            {"name": "b", "path": "b.lip", "lipschitz": 2.0, "warnings": []},
            {"name": "c", "path": "c.lip", "lipschitz": 1.0},
            {"name": "d", "path": "d.lip", "lipschitz": None, "error": "d.lip:1:1: error: x"}]
    assert sweep_notes(rows) == ["a (a.lip): warning: the certificate repair raised",
                                 "d (d.lip): d.lip:1:1: error: x"]

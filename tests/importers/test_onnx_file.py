"""Reading ONNX files (lipdsl/importers/onnx_file.py): external data beside the model read in, data elsewhere
refused before a byte of it is read; without torch (models written with onnx.save)."""

from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lipdsl.errors import LipdslError, UnsupportedError  # noqa: E402
from lipdsl.importers import onnx_file  # noqa: E402
from lipdsl.importers.importer import import_onnx  # noqa: E402



def _model():
    """conv 2 -> 4 (k3, pads 1) -> relu -> flatten -> gemm 4*8 -> 3, float32 as exporters write it (the same
    weights at every call)."""
    rng = np.random.default_rng(5)
    inits = {
        "conv.weight": rng.standard_normal((4, 2, 3)),
        "conv.bias": rng.standard_normal(4),
        "fc.weight": rng.standard_normal((3, 32)),
        "fc.bias": rng.standard_normal(3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["a"], pads=[1, 1], kernel_shape=[3]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Flatten", ["b"], ["c"]),
        helper.make_node("Gemm", ["c", "fc.weight", "fc.bias"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save_external(folder, location="m.onnx.data", name="m.onnx"):
    """The model saved as torch.onnx.export saves it: every tensor in one data file beside the model."""
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return path


def _relocate(path, location):
    """Point every external tensor of the model at ``path`` to ``location`` (as a hostile file would)."""
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(proto.SerializeToString())


def _same_import(a, b):
    assert [L.kind for L in a.layers] == [L.kind for L in b.layers]
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k])


def test_external_data_beside_the_model_is_read(tmp_path):
    """The data file in the model's folder (or a folder below it) gives the import of the inline model."""
    inline = tmp_path / "inline.onnx"
    onnx.save(_model(), str(inline))
    want = import_onnx(inline)
    for location in ("m.onnx.data", "data/m.bin"):
        path = _save_external(tmp_path / location.replace("/", "_"), location)
        assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == 1
        _same_import(import_onnx(path), want)


def test_model_bytes_are_self_contained(tmp_path):
    """sweep's items: a model with external data becomes one self-contained model; one without is its file."""
    path = _save_external(tmp_path)
    data = onnx_file.model_bytes(path)
    _same_import(import_onnx(data), import_onnx(path))
    inline = tmp_path / "inline.onnx"
    onnx.save(_model(), str(inline))
    assert onnx_file.model_bytes(inline) == inline.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    assert onnx_file.model_bytes(bad) == b"not a protobuf"  # (the import on the worker says what is wrong)


def test_external_data_given_as_bytes_is_refused_with_what_to_do(tmp_path):
    path = _save_external(tmp_path)
    with pytest.raises(UnsupportedError, match="'m.onnx.data', which lipdsl reads only for a model given by "
                       "its path") as info:
        import_onnx(path.read_bytes())
    assert "external_data=False" in info.value.hint and "path" in info.value.hint


@pytest.mark.parametrize("location, words", [
    ("../outside.data", "a path out of the model's folder"),
    ("sub/../../outside.data", "a path out of the model's folder"),
    ("ABSOLUTE", "an absolute path"),
    ("link.data", "leads out of the model's folder (a symbolic link)"),
    ("sub", "not a regular file"),
    ("missing.data", "not in the model's folder"),
])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location, words):
    folder = tmp_path / "model"
    path = _save_external(folder)
    outside = tmp_path / "outside.data"
    os.replace(folder / "m.onnx.data", outside)
    (folder / "sub").mkdir()
    (folder / "link.data").symlink_to(outside)
    _relocate(path, str(outside) if location == "ABSOLUTE" else location)
    with pytest.raises(LipdslError) as info:
        import_onnx(path)
    assert words in info.value.message and "initializer 'conv.weight' keeps its data in" in info.value.message
    if isinstance(info.value, UnsupportedError):
        assert "external_data=False" in info.value.hint


def test_external_data_that_does_not_fit_the_tensor_is_refused(tmp_path):
    path = _save_external(tmp_path)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:-8])  # the last tensor's range now ends after the file
    with pytest.raises(UnsupportedError, match="'fc.bias' keeps its data in 'm.onnx.data' at bytes"):
        import_onnx(path)
    proto = onnx.load(str(path), load_external_data=False)
    for e in proto.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = "8"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(UnsupportedError, match=r"'conv.weight' has dims \[4, 2, 3\] \(96 bytes\) but 8 "):
        import_onnx(path)


def test_external_data_counts_towards_the_size_cap_before_it_is_read(tmp_path, monkeypatch):
    path = _save_external(tmp_path)
    monkeypatch.setattr(onnx_file, "MAX_FILE_BYTES", path.stat().st_size + 100)
    read = []
    monkeypatch.setattr("onnx.external_data_helper.load_external_data_for_tensor",
                        lambda *a: read.append(a))
    with pytest.raises(LipdslError, match="the model and its external data have more than"):
        import_onnx(path)
    assert read == []


def test_a_location_with_a_nul_or_thousands_of_characters_is_an_error_not_a_traceback(tmp_path):
    """A NUL in the location made os.path raise ValueError ('embedded null byte'), a traceback from
    `lipdsl import` and `lipdsl sweep`; a location of 5,000 characters was printed whole."""
    path = _save_external(tmp_path)
    _relocate(path, "m.onnx\0.data")
    with pytest.raises(UnsupportedError, match="a name with a NUL character, which no file has"):
        onnx_file.load_model(path)
    _relocate(path, "a" * 5000)
    with pytest.raises(LipdslError, match=r"\(5000 characters\)") as info:
        onnx_file.load_model(path)
    assert len(info.value.message) < 300

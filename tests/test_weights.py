"""Hostile weight files: nothing is unpickled, sizes are checked before numpy allocates, bad dtypes and
non-finite entries are refused with the tensor's name and index, paths stay inside the spec's directory."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipdsl import check as check_module
from lipdsl.check import check
from lipdsl.cli import main
from lipdsl.errors import ShapeError, SpecError, WeightError
from lipdsl.parse import parse
from lipdsl.source import Source

MARKER = Path("/tmp/lipdsl-unpickled-marker")


class Evil:
    """Unpickling this would create MARKER."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def net_of(text: str, directory: Path, **kw):
    src = Source(str(directory / "spec.lip"), text)
    return check(parse(src), src, **kw)


def refused(directory: Path, text: str, match: str) -> WeightError:
    with pytest.raises(WeightError, match=match) as info:
        net_of("input 2\n" + text, directory)
    # the error points at the statement that names the tensor: the last layer line of the spec
    lines = ("input 2\n" + text).splitlines()
    layer_line = max(i for i, line in enumerate(lines, 1) if line.strip())
    assert info.value.span is not None and info.value.span.line == layer_line
    return info.value


def test_pickled_object_arrays_are_never_unpickled(tmp_path):
    MARKER.unlink(missing_ok=True)
    np.save(tmp_path / "evil.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "evil.npz", w=np.array([Evil(), Evil()], dtype=object))
    err = refused(tmp_path, 'dense 2 -> 1, weight "evil.npy"\n', "holds Python objects")
    assert "does not unpickle" in err.message
    refused(tmp_path, 'dense 2 -> 1, weight "evil.npz":w\n', "holds Python objects")
    assert not MARKER.exists()


@pytest.mark.parametrize(
    "dtype,match",
    [
        (np.complex128, "dtype complex128; weights must be real"),
        (np.int32, "integer dtype int32"),
        (np.bool_, "dtype bool; weights must be real"),
        ("<U3", "dtype <U3; weights must be real"),
        ([("a", "f8"), ("b", "f8")], "weights must be real"),
    ],
)
def test_non_float_dtypes_are_refused(tmp_path, dtype, match):
    np.savez(tmp_path / "w.npz", w=np.zeros((1, 2), dtype=dtype))
    refused(tmp_path, 'dense 2 -> 1, weight "w.npz":w\n', match)


def test_float16_and_float32_become_float64(tmp_path):
    np.savez(tmp_path / "w.npz", w=np.ones((1, 2), dtype=np.float16), b=np.ones(1, dtype=np.float32))
    net = net_of('input 2\ndense 2 -> 1, weight "w.npz":w, bias "w.npz":b\n', tmp_path)
    assert net.layers[0].weight.dtype == np.float64 and net.layers[0].bias.dtype == np.float64


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_entries_name_the_tensor_and_index(tmp_path, value, word):
    w = np.ones((3, 2))
    w[2, 1] = value
    w[2, 0] = np.nan
    np.savez(tmp_path / "w.npz", **{"fc1.weight": w})
    err = refused(
        tmp_path,
        'weights "w.npz"\ndense 2 -> 3, weight fc1.weight\n',
        r"'fc1.weight' in 'w.npz' holds NaN at index \(2, 0\) \(and 1 more\)",
    )
    assert "finite" in err.hint
    np.save(tmp_path / "b.npy", np.array([0.0, value]))
    refused(
        tmp_path,
        'dense 2 -> 2, weight [[1, 0], [0, 1]], bias "b.npy"\n',
        rf"'b.npy' holds {word} at index \(1,\)",
    )


def test_inline_infinity_is_refused_with_its_position(tmp_path):
    with pytest.raises(SpecError, match="too large for float64") as info:
        net_of("input 2\ndense 2 -> 1, weight [[1, 1e400]]\n", tmp_path)
    assert (info.value.span.line, info.value.span.col) == (2, 27)


def test_file_size_limit(tmp_path, monkeypatch):
    np.savez(tmp_path / "w.npz", w=np.ones((1, 2)))
    np.save(tmp_path / "w.npy", np.ones((1, 2)))
    monkeypatch.setattr(check_module, "MAX_WEIGHT_BYTES", 64)
    refused(
        tmp_path,
        'dense 2 -> 1, weight "w.npy"\n',
        r"weight file 'w.npy' has \d+ bytes, more than lipdsl reads",
    )
    refused(tmp_path, 'dense 2 -> 1, weight "w.npz":w\n', r"weight file 'w.npz' has \d+ bytes")


def test_compressed_tensor_that_inflates_is_refused_before_reading(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "w.npz", w=np.zeros((1, 2)), big=np.zeros(100_000))
    monkeypatch.setattr(check_module, "MAX_WEIGHT_BYTES", 10_000)
    net_of('input 2\ndense 2 -> 1, weight "w.npz":w\n', tmp_path)  # the small tensor still loads
    refused(tmp_path, 'dense 2 -> 1, weight "w.npz":big\n', "tensor 'big' in 'w.npz' inflates to 781.4 KiB")


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A .npy whose header claims ``shape`` (float64) but that holds 16 bytes of data."""
    header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16


def test_header_claiming_a_huge_shape_is_refused_without_allocating(tmp_path):
    (tmp_path / "liar.npy").write_bytes(_npy_claiming((10**6, 10**6)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("w.npy", _npy_claiming((10**12,)))
    (tmp_path / "liar.npz").write_bytes(buf.getvalue())
    refused(
        tmp_path, 'dense 2 -> 1, weight "liar.npy"\n', r"declares shape \(1000000, 1000000\).*file holds less"
    )
    refused(tmp_path, 'dense 2 -> 1, weight "liar.npz":w\n', r"declares shape \(1000000000000,\)")


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04garbage", b"\x93NUMPY\x01\x00\xff\xff{", b"\x00" * 100, b"\x93NUMPY\x09\x00"]
)
def test_corrupt_files_are_weight_errors(tmp_path, content):
    (tmp_path / "w.npz").write_bytes(content)
    (tmp_path / "w.npy").write_bytes(content)
    refused(tmp_path, 'dense 2 -> 1, weight "w.npz":w\n', "cannot read|declares|Python objects")
    refused(tmp_path, 'dense 2 -> 1, weight "w.npy"\n', "cannot read|declares|Python objects")


def test_corrupt_deflate_stream_is_a_weight_error(tmp_path):
    np.savez_compressed(tmp_path / "w.npz", w=np.random.default_rng(0).standard_normal((40, 40)))
    data = bytearray((tmp_path / "w.npz").read_bytes())
    data[200:260] = b"\xff" * 60  # inside the deflate stream of w.npy
    (tmp_path / "w.npz").write_bytes(bytes(data))
    refused(tmp_path, 'dense 2 -> 1, weight "w.npz":w\n', "cannot read")


def test_escapes_are_refused_with_the_reason_unless_allowed(tmp_path, capsys):
    inner = tmp_path / "spec"
    inner.mkdir()
    np.savez(tmp_path / "w.npz", w=np.ones((1, 2)))
    (inner / "up.lip").write_text('input 2\ndense 2 -> 1, weight "../w.npz":w\n')
    (inner / "abs.lip").write_text(f'input 2\ndense 2 -> 1, weight "{tmp_path / "w.npz"}":w\n')
    (inner / "home.lip").write_text('input 2\ndense 2 -> 1, weight "~/w.npz":w\n')
    for name, what in [
        ("up", "outside the spec's directory"),
        ("abs", "absolute path"),
        ("home", "absolute path"),
    ]:
        assert main(["check", str(inner / f"{name}.lip")]) == 1
        err = capsys.readouterr().err
        assert what in err and "--allow-outside" in err and "it may read any file you can" in err
        assert f"{name}.lip:2:" in err
    assert main(["check", "--allow-outside", str(inner / "up.lip")]) == 0
    assert main(["check", "--allow-outside", str(inner / "abs.lip")]) == 0


def _valid_files() -> dict[str, bytes]:
    out = {}
    for name, save in [("w.npz", np.savez), ("c.npz", np.savez_compressed)]:
        buf = io.BytesIO()
        save(buf, w=np.arange(2.0).reshape(1, 2), b=np.ones(1))
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.arange(2.0).reshape(1, 2))
    out["w.npy"] = buf.getvalue()
    return out


VALID_FILES = _valid_files()


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(
    name=st.sampled_from(sorted(VALID_FILES)),
    flips=st.lists(
        st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=4)), min_size=1, max_size=4
    ),
    cut=st.integers(0, 10**6),
)
def test_corrupted_weight_files_load_or_give_a_weight_error(tmp_path_factory, name, flips, cut):
    data = bytearray(VALID_FILES[name])
    for at, chunk in flips:
        at %= len(data)
        data[at : at + len(chunk)] = chunk
    data = bytes(data[: max(1, cut % (len(data) + 1))]) if cut % 3 == 0 else bytes(data)
    directory = tmp_path_factory.mktemp("corrupt")
    (directory / name).write_bytes(data)
    ref = f'"{name}"' if name.endswith(".npy") else f'"{name}":w'
    try:
        net_of(f"input 2\ndense 2 -> 1, weight {ref}\n", directory)
    except (WeightError, ShapeError) as err:
        assert err.span is not None and err.span.line == 2  # the dense layer that names the file

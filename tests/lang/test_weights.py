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

from lipdsl.lang import weights as weights_module
from lipdsl.lang.check import check
from lipdsl.app.cli import main
from lipdsl.errors import ShapeError, SpecError, WeightError
from lipdsl.lang.parse import parse
from lipdsl.lang.source import Source

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
    monkeypatch.setattr(weights_module, "MAX_WEIGHT_BYTES", 64)
    refused(
        tmp_path,
        'dense 2 -> 1, weight "w.npy"\n',
        r"weight file 'w.npy' has \d+ bytes, more than lipdsl reads",
    )
    refused(tmp_path, 'dense 2 -> 1, weight "w.npz":w\n', r"weight file 'w.npz' has \d+ bytes")


def test_compressed_tensor_that_inflates_is_refused_before_reading(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "w.npz", w=np.zeros((1, 2)), big=np.zeros(100_000))
    monkeypatch.setattr(weights_module, "MAX_WEIGHT_BYTES", 10_000)
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


# -- issue 17: every member checked, file types, links, caps -----------------------------------------------

def _npy_bytes(shape, version=(1, 0), dtype="<f8", payload=None) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    fmt = "<H" if version == (1, 0) else "<I"
    pre = 10 if version == (1, 0) else 12
    pad = (-(pre + len(header) + 1)) % 64
    size = struct.pack(fmt, len(header) + pad + 1)
    head = b"\x93NUMPY" + bytes(version) + size + header + b" " * pad + b"\n"
    return head + (payload if payload is not None else b"\0" * 16)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["w", "w.npy", "w.bin", "w.npy.npy"]),
       version=st.sampled_from([(1, 0), (2, 0), (3, 0)]),
       size=st.integers(min_value=10**6, max_value=10**15),
       compressed=st.booleans())
def test_every_npz_member_is_capped_and_checked_whatever_its_name(tmp_path_factory, name, version, size,
                                                                  compressed):
    """A member named with or without .npy, any header version, claiming a huge shape: refused before numpy
    allocates it (the file holds 16 bytes of data)."""
    d = tmp_path_factory.mktemp("m")
    with zipfile.ZipFile(d / "w.npz", "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as z:
        z.writestr(name, _npy_bytes((size,), version))
    key = name.removesuffix(".npy")
    err = refused(d, f'dense a: 2 -> 1, weight "w.npz":{key}\n',
                  "declares shape|inflates|not a .npy|no tensor")
    assert "b'" not in err.message


@pytest.mark.parametrize("data", [b"\0" * 4096, b"raw bytes, not an array", b"PK\x03\x04junk"])
def test_raw_npz_member_is_refused_not_returned_as_bytes(tmp_path, data):
    with zipfile.ZipFile(tmp_path / "w.npz", "w") as z:
        z.writestr("a", data)
    refused(tmp_path, 'dense a: 2 -> 1, weight "w.npz":a\n', "is not a .npy array")


def test_npy_format_3_header_is_checked_and_read(tmp_path):
    (tmp_path / "big.npy").write_bytes(_npy_bytes((10**11,), (3, 0)))
    refused(tmp_path, 'dense a: 2 -> 1, weight "big.npy"\n', "declares shape")
    (tmp_path / "ok.npy").write_bytes(_npy_bytes((1, 2), (3, 0), payload=np.ones(2).tobytes()))
    net = net_of('input 2\ndense a: 2 -> 1, weight "ok.npy"\n', tmp_path)
    assert net.layers[0].weight.tolist() == [[1.0, 1.0]]


def test_symlink_out_of_the_spec_folder_is_refused_and_never_echoed(tmp_path):
    outside = tmp_path / "outside"
    inside = tmp_path / "spec"
    outside.mkdir()
    inside.mkdir()
    secret = outside / "secret.npy"
    secret.write_bytes(b"root:x:0:0:SECRET-BYTES\n")
    (inside / "w.npy").symlink_to(secret)
    (inside / "sub").symlink_to(outside, target_is_directory=True)
    for ref in ('"w.npy"', '"sub/secret.npy"'):
        err = refused(inside, f"dense a: 2 -> 1, weight {ref}\n", "symbolic link to a file outside")
        assert "SECRET" not in err.message + (err.hint or "")
    with pytest.raises(WeightError) as info:  # allowed: read, but its bytes are not echoed
        net_of('input 2\ndense a: 2 -> 1, weight "w.npy"\n', inside, allow_outside=True)
    assert "SECRET" not in info.value.message and "root" not in info.value.message


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_special_files_are_named_as_what_they_are_and_never_read(tmp_path, kind):
    import os

    if kind == "fifo":
        os.mkfifo(tmp_path / "w.npz")
        target, words = '"w.npz":a', "named pipe"
    elif kind == "directory":
        (tmp_path / "w.npz").mkdir()
        target, words = '"w.npz":a', "directory"
    else:
        (tmp_path / "w.npy").symlink_to("/dev/zero")
        target, words = '"w.npy"', "device|outside"
    refused(tmp_path, f"dense a: 2 -> 1, weight {target}\n", words)


def test_long_weight_names_are_a_clean_error(tmp_path):
    refused(tmp_path, f'dense a: 2 -> 1, weight "{"x" * 300}.npz":a\n', "too long")


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "npz", "npy", "long", "binary"])
def test_spec_file_types_are_refused_without_reading(tmp_path, capsys, kind):
    import os

    path = tmp_path / "net.lip"
    if kind == "fifo":
        os.mkfifo(path)  # a FIFO with no writer: open(O_NONBLOCK) returns at once, it is never read
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")
    elif kind == "npz":
        path = tmp_path / "w.npz"
        np.savez(path, a=np.ones(3))
    elif kind == "npy":
        path = tmp_path / "w.npy"
        np.save(path, np.ones(3))
    elif kind == "binary":
        path.write_bytes(b"input 2\n\0\0\0")
    else:
        path = tmp_path / ("n" * 300 + ".lip")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    words = {"fifo": "named pipe", "directory": "directory", "device": "device", "npz": "not a lipdsl spec",
             "npy": "not a lipdsl spec", "long": "too long", "binary": "binary"}[kind]
    assert words in err and "Traceback" not in err
    assert "\0" not in err and "PK" not in err.split("error:")[1]


def test_a_long_missing_key_is_shortened_in_the_message(tmp_path):
    """A key of thousands of characters is not echoed whole: its ends and its length (the source line under
    the message, itself cut to the terminal, shows where it is)."""
    np.savez(tmp_path / "w.npz", a=np.ones((1, 2)))
    key = "layer." * 1000 + "weight"
    err = refused(tmp_path, f'weights "w.npz"\ndense 2 -> 1, weight {key}\n', "no tensor")
    assert len(err.message) < 200 and f"({len(key)} characters)" in err.message  # (errors.shorten)
    assert "'layer.layer." in err.message and "layer.weight (" in err.message


# -- keys the key syntax cannot spell (a top-level nn.Sequential's 0.weight) ---------------------------------
def _sequential_npz(directory: Path) -> None:
    np.savez(directory / "seq.npz", **{"0.weight": np.eye(2)[:, :, None], "1.weight": np.ones(2),
                                       "1.bias": np.zeros(2), "1.running_mean": np.zeros(2),
                                       "1.running_var": np.full(2, 4.0)})


def test_digit_keys_are_read_by_the_spelling_import_writes(tmp_path):
    """`_0.weight` reads the file's `0.weight` (from the current weights file, from "file.npz":, and as a
    batch norm's prefix `_1`), as `lipdsl import` and `sweep --like` spell it."""
    _sequential_npz(tmp_path)
    net = net_of('input 2 x 4\nweights "seq.npz"\nconv1d 2 -> 2, kernel 1, weight _0.weight\n'
                 'batchnorm 2, weights _1\nconv1d 2 -> 2, kernel 1, weight "seq.npz":_0.weight\n', tmp_path)
    conv, bn, conv2 = net.layers
    assert np.array_equal(conv.weight, np.eye(2)[:, :, None]) and np.array_equal(conv2.weight, conv.weight)
    assert np.allclose(bn.scale, 1 / np.sqrt(4.0 + 1e-5))


def test_an_exact_key_wins_and_a_spelling_of_two_keys_is_refused(tmp_path):
    np.savez(tmp_path / "two.npz", **{"0.w": np.ones((1, 2)), "_0.w": np.full((1, 2), 2.0),
                                      "a-b": np.ones((1, 2)), "a:b": np.ones((1, 2))})
    net = net_of('input 2\nweights "two.npz"\ndense 2 -> 1, weight _0.w\n', tmp_path)
    assert net.layers[0].weight[0, 0] == 2.0
    err = refused(tmp_path, 'weights "two.npz"\ndense 2 -> 1, weight a_b\n', "could mean any of")
    assert "'a-b', 'a:b'" in err.message


def test_missing_digit_key_suggests_a_spelling_the_parser_accepts(tmp_path):
    """The did-you-mean and the listing name keys as a spec writes them; the suggestion parses and reads."""
    _sequential_npz(tmp_path)
    err = refused(tmp_path, 'weights "seq.npz"\ndense 2 -> 2, weight _0.weigth\n', "no tensor '_0.weigth'")
    assert err.hint.startswith("did you mean '_0.weight'? it holds: _0.weight, _1.bias,")
    assert "the file's '0.weight' is '_0.weight'" in err.hint
    err = refused(tmp_path, 'weights "seq.npz"\ndense 2 -> 2, weight "seq.npz"\n', "say which one")
    assert err.hint.startswith('write "seq.npz":KEY with KEY one of: _0.weight, _1.bias')
    net_of('input 2 x 4\nweights "seq.npz"\nconv1d 2 -> 2, kernel 1, weight _0.weight\n', tmp_path)


# -- the files a spec names (what sweep ships to its workers) ----------------------------------------------
def test_weight_files_include_those_named_inside_residual_blocks():
    """``weight_files`` walks blocks' main paths and shortcuts (batch norm prefixes too), in order, once
    each."""
    text = ('input 2 x 8\nweights "net.npz"\nconv1d 2 -> 2, kernel 1, weight c.weight, bias "b.npy"\n'
            'residual b1:\n  conv1d 2 -> 2, kernel 1, weight "main.npz":m.weight\n'
            '  batchnorm 2, weights "bn.npz":bn1\n  relu\n'
            'shortcut\n  conv1d 2 -> 2, kernel 1, weight "short.npz":s.weight\nend\n'
            'residual\n  conv1d 2 -> 2, kernel 1, weight "main.npz":m2.weight\nend\n'
            'weights "tail.npz"\nconv1d 2 -> 2, kernel 1, weight t.weight\n')
    tree = parse(Source("spec.lip", text))
    assert weights_module.weight_files(tree) == ("net.npz", "b.npy", "main.npz", "bn.npz", "short.npz",
                                                 "tail.npz")


def test_a_quoted_key_is_a_missing_file_with_a_hint_on_how_keys_are_written(tmp_path):
    """``weight "0.weight"`` names a file; when there is none and the name reads as a key (no folder, no
    suffix of a tensor or model file, or a key of the current weights file), the hint says how to write it."""
    _sequential_npz(tmp_path)
    np.savez(tmp_path / "odd.npz", **{"w.npy": np.ones((1, 2))})
    for text, hint in [
        ('dense 2 -> 2, weight "0.weight"\n',
         "a quoted name is a weights file; the key '0.weight' is written _0.weight"),
        ('weights "seq.npz"\ndense 2 -> 2, weight "fc.weight"\n', "the key 'fc.weight' is written fc.weight "
                                                                 "(without quotes)"),
        ('weights "odd.npz"\ndense 2 -> 1, weight "w.npy"\n', "the key 'w.npy' is written w.npy"),
        ('dense 2 -> 2, weight "w.npy"\n', "paths are relative to the spec's directory"),
        ('dense 2 -> 2, weight "sub/0.weight"\n', "paths are relative to the spec's directory"),
        ('dense 2 -> 2, weight "net.pt"\n', "paths are relative to the spec's directory"),
        ('dense 2 -> 2, weight "0.weight":w\n', "paths are relative to the spec's directory"),
    ]:
        err = refused(tmp_path, text, "weight file .* not found")
        assert hint in err.hint, text


def test_key_matches_a_key_held_as_written_wins_else_the_keys_spelt_so():
    """The one lookup of file keys (.npz and state_dict alike): as written wins; else those spelt so."""
    km = weights_module.key_matches
    assert km("_0.weight", ["0.weight", "_0.weight"]) == ("_0.weight",)
    assert km("_0.weight", ["0.weight"]) == ("0.weight",)
    assert km("a_b", ["a-b", "a:b"]) == ("a-b", "a:b")  # ambiguous: refused by the reader
    assert km("x", ["y"]) == ()
    spelt = weights_module.spelt_tensors({"0.weight": 1, "_0.weight": 2, "a-b": 3, "a:b": 4, "c": 5})
    assert spelt == {"_0.weight": 2, "c": 5}  # (a_b: ambiguous, left out)


def test_key_matches_with_an_index_equals_the_scan_over_every_key():
    """The index built once per file answers as the definition does (a scan with spelt_key per key), on
    random keys with many spelt alike (0.w / _0.w / 0-w / 0:w ...) and keys not held at all."""
    import random

    rng = random.Random(7)
    alphabet = ["0", "a", "_", ".", "-", ":", "/", "b1"]

    def scan(key, keys):  # the definition: a key held as written wins; else every key spelt so, sorted
        return (key,) if key in keys else tuple(sorted(k for k in keys if weights_module.spelt_key(k) == key))

    for _ in range(60):
        keys = list({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(40)})
        index = weights_module.KeyIndex(keys)
        asked = keys + [weights_module.spelt_key(k) for k in keys] + ["zz", "_0", "a_b", "t"]
        for key in asked:
            assert weights_module.key_matches(key, index) == scan(key, keys), (key, keys)
            assert weights_module.key_matches(key, keys) == scan(key, keys)
        tensors = {k: i for i, k in enumerate(keys)}
        expected = {}
        for written in dict.fromkeys(map(weights_module.spelt_key, keys)):
            if len(scan(written, keys)) == 1:
                expected[written] = tensors[scan(written, keys)[0]]
        assert weights_module.spelt_tensors(tensors) == expected
    assert weights_module.key_matches("_0.w", ["0.w", "0.w"]) == ("0.w", "0.w")  # listed twice: ambiguous


def test_a_batchnorm_prefix_without_weight_and_bias_is_affine_false(tmp_path):
    """``BatchNorm1d(affine=False)`` saves only running_mean and running_var: ``weights PREFIX`` reads them
    with weight 1 and bias 0 (was: "no tensor 'bn.weight'", with a did-you-mean of another tensor). One of
    the two without the other is still missing."""
    mean, var = np.array([0.5, -1.0]), np.array([4.0, 0.25])
    np.savez(tmp_path / "w.npz", **{"bn.running_mean": mean, "bn.running_var": var})
    net = net_of('input 2\nweights "w.npz"\nbatchnorm bn: 2, weights bn\n', tmp_path)
    bn = net.layers[0]
    np.testing.assert_allclose(bn.scale, 1 / np.sqrt(var + 1e-5), rtol=1e-15)
    np.testing.assert_allclose(bn.shift, -mean / np.sqrt(var + 1e-5), rtol=1e-15)
    np.savez(tmp_path / "w.npz", **{"bn.running_mean": mean, "bn.running_var": var, "bn.weight": 2 * mean})
    refused(tmp_path, 'weights "w.npz"\nbatchnorm bn: 2, weights bn\n', "no tensor 'bn.bias' in 'w.npz'")


@pytest.mark.parametrize("name, hint", [
    ("x.pt", "a model file is read by 'lipdsl import x.pt --like {spec} -o net.lip' (spec + .npz)"),
    ("x.onnx", "a model file is read by 'lipdsl import x.onnx -o net.lip' (spec + .npz)"),
    ("x.txt", "save tensors with numpy.savez (named) or numpy.save (one tensor)"),
])
def test_a_model_file_as_weights_points_to_import(tmp_path, name, hint):
    """A state_dict or ONNX file named as a weight file: the hint is the import command that reads it (it
    was numpy.savez for every file that is not .npz or .npy)."""
    (tmp_path / name).write_bytes(b"model bytes")
    err = refused(tmp_path, f'dense 2 -> 1, weight "{name}"\n', f"'{name}' is neither .npz nor .npy")
    assert err.hint == hint.format(spec=tmp_path / "spec.lip")

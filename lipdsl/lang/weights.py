"""Read weight files safely: a spec's reference to a file tensor -> a finite, read-only float64 array.

What a spec's weight file may do is bounded here: paths stay inside the spec's directory (symbolic links
followed) unless ``allow_outside``; only regular ``.npz``/``.npy`` files are opened, of at most
``MAX_WEIGHT_BYTES``, from disk or from memory (``memory_key`` of the names the spec writes,
``weight_files``); nothing is unpickled (``allow_pickle=False``, object dtypes refused); a ``.npy`` header is
read and its declared size checked before numpy allocates it, and an ``.npz`` member before it is inflated;
non-real dtypes and NaN/Inf entries are refused, naming the tensor and the index.
"""

from __future__ import annotations

import errno
import io
import math
import os
import posixpath
import re
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from lipdsl.errors import OutsideError, WeightError, did_you_mean, shorten
from lipdsl.lang import ast
from lipdsl.lang.source import Source, Span, file_kind

__all__ = ["KeyIndex", "WeightFiles", "key_matches", "leaves_directory", "memory_key", "spelt_key",
           "spelt_tensors", "tensor_refs", "weight_files", "MAX_WEIGHT_BYTES"]

#: Largest weight file, and largest uncompressed tensor inside an .npz (a small zip can inflate to any size).
MAX_WEIGHT_BYTES = 1 << 30

#: What a weight file may be: named tensors (``numpy.savez``) or one tensor (``numpy.save``).
WEIGHT_SUFFIXES = (".npz", ".npy")
#: Suffixes that make a quoted name a file, not a misquoted tensor key: weight files, checkpoints, models.
_FILE_SUFFIXES = WEIGHT_SUFFIXES + (".pt", ".pth", ".bin", ".ckpt", ".onnx", ".h5", ".safetensors")


def memory_key(rel: str) -> str:
    """Key of weight file ``rel`` (as the spec writes it) in ``check``'s ``files``: ``a/./b.npz`` ->
    ``a/b.npz``."""
    return posixpath.normpath(rel.replace(os.sep, "/"))


def spelt_key(name: str) -> str:
    """How a spec writes the file key ``name``: ``name`` itself when the key syntax allows it, else with each
    character other than letters, digits, ``_`` and ``.`` as ``_``, empty dot-segments dropped and a ``_``
    before a leading digit (the grammar's KEY starts with a letter or ``_``).

    A spec's key that a file does not hold names the file key spelt so (``WeightFiles.read``), and
    ``lipdsl import`` writes keys so: one spelling everywhere.

    >>> spelt_key("conv1.weight"), spelt_key("0.weight"), spelt_key("onnx::Conv_7"), spelt_key("/0/Conv.bias")
    ('conv1.weight', '_0.weight', 'onnx__Conv_7', '_0_Conv.bias')
    """
    text = re.sub(r"[^A-Za-z0-9_.]", "_", name)
    text = ".".join(seg for seg in text.split(".") if seg) or "t"
    return text if re.match(r"[A-Za-z_]", text) else "_" + text


def leaves_directory(rel: str) -> bool:
    """Whether the relative name ``rel`` leads out of the spec's directory (``../w.npz``, ``a/../../w.npz``),
    as written (symbolic links aside)."""
    return posixpath.normpath(rel.replace(os.sep, "/")).split("/")[0] == ".."


def tensor_refs(net: ast.Network) -> tuple[ast.TensorRef, ...]:
    """Every layer option naming a stored tensor (``weight conv1.weight``, ``bias "extra.npy"``,
    ``"f.npz":key``; inside residual blocks too), in order."""
    return tuple(ref for st in net.body for ref in _refs(st))


def weight_files(net: ast.Network) -> tuple[str, ...]:
    """Every weight file ``net`` names (``weights "f.npz"`` lines, ``"f.npz":key`` references, those inside
    residual blocks too), in order."""
    names: list[str] = []
    for st in net.body:
        if isinstance(st, ast.Weights):
            names.append(st.path)
        names += [ref.file for ref in _refs(st) if ref.file is not None]
    return tuple(dict.fromkeys(names))


def _refs(st: ast.Statement) -> list[ast.TensorRef]:
    """The tensor references of statement ``st``: a layer, or a residual block and its layers."""
    if isinstance(st, (ast.Input, ast.Let, ast.Weights)):
        return []
    return [opt.value for layer in ast.layer_nodes((st,)) for opt in layer.options
            if isinstance(opt.value, ast.TensorRef)]


@dataclass
class WeightFiles:
    """The weight files of one spec, each opened once: from disk (relative to ``source.directory``) or from
    ``memory``; ``close`` closes them all."""

    source: Source
    allow_outside: bool
    memory: Mapping[str, bytes] | None = None  # weight files in memory (memory_key(rel) -> bytes), no disk
    files: dict[str, Any] = field(default_factory=dict)  # resolved path -> NpzFile or ndarray
    handles: list = field(default_factory=list)  # open files behind the NpzFiles
    indexes: dict[int, KeyIndex] = field(default_factory=dict)  # id of an NpzFile in files -> its keys
    read_keys: dict[tuple[str, str], None] = field(default_factory=dict)  # (file as named, key) read, ordered

    def key_index(self, data: Any) -> KeyIndex:
        """The ``KeyIndex`` of the ``NpzFile`` ``data`` (one of ``files``, which keeps it, and its id, alive),
        built on its first lookup."""
        index = self.indexes.get(id(data))
        if index is None:
            index = self.indexes[id(data)] = KeyIndex(data.files)
        return index

    @staticmethod
    def display_path(rel: str) -> str:
        """Paths are shown as the spec writes them (relative to the spec), whatever the working directory."""
        return rel

    def resolve(self, rel: str, span: Span) -> Path:
        """The file ``rel`` names, relative to the spec's directory, refusing escapes unless allowed."""
        if not self.allow_outside:
            if os.path.isabs(rel) or rel.startswith("~"):
                raise OutsideError(f"weight file {rel!r} is an absolute path", span,
                                   remedy="give paths relative to the spec")
            if leaves_directory(rel):
                raise OutsideError(f"weight file {rel!r} is outside the spec's directory", span,
                                   remedy="copy the file next to the spec")
        path = (
            self.source.directory / os.path.expanduser(rel)
            if rel.startswith("~")
            else self.source.directory / rel
        )
        if not self.allow_outside:
            # a symbolic link (the file or a folder on the way) may lead anywhere: check where it ends
            try:
                real = path.resolve()
                inside = real.is_relative_to(self.source.directory.resolve())
            except (OSError, RuntimeError, ValueError):  # a link loop, a name too long
                inside = True  # reported by open() as what it is
            if not inside:
                raise OutsideError(f"weight file {rel!r} is a symbolic link to a file outside the spec's "
                                   "directory", span, remedy="copy the file next to the spec")
        return path

    def open(self, rel: str, span: Span, missing: Callable[[], str | None] | None = None) -> Any:
        """The file ``rel`` names, opened once (an ``NpzFile`` or an ndarray); ``missing``: a hint for a file
        that is not there, in place of the usual one (called only then)."""
        path = self.resolve(rel, span)
        key = str(path)
        if key in self.files:
            return self.files[key]
        shown = self.display_path(rel)

        def not_found() -> WeightError:
            return WeightError(f"weight file {shown!r} not found", span,
                               hint=(missing and missing()) or "paths are relative to the spec's directory")

        data = None if self.memory is None else self.memory.get(memory_key(rel))
        if self.memory is not None and data is None:
            raise not_found()
        if data is None:  # on disk: what the path names, before anything is opened
            try:
                st = os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:
                    raise WeightError(f"weight file name {shorten(shown)!r} is too long",
                                      span, hint="check the path") from None
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise not_found() from None
                raise WeightError(f"cannot read weight file {shown!r}: {exc.strerror or exc}", span) from None
            kind = file_kind(st.st_mode)
            if kind is not None:
                raise WeightError(f"weight file {shown!r} is {kind}, not a file", span,
                                  hint="give the path of a .npz or .npy file")
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            like = f"--like {self.source.path} "  # (a state_dict fills this spec's weight keys)
            importing = {".pt": like, ".pth": like, ".ckpt": like, ".onnx": ""}.get(path.suffix.lower())
            raise WeightError(
                f"weight file {shown!r} is neither .npz nor .npy",
                span,
                hint="save tensors with numpy.savez (named) or numpy.save (one tensor)" if importing is None
                else f"a model file is read by 'lipdsl import {shown} {importing}-o net.lip' (spec + .npz)",
            )
        size = path.stat().st_size if data is None else len(data)
        if size > MAX_WEIGHT_BYTES:
            raise WeightError(
                f"weight file {shown!r} has {_bytes(size)}, "
                f"more than lipdsl reads ({_bytes(MAX_WEIGHT_BYTES)})",
                span,
                hint="a network this large is beyond the SDP solvers anyway; "
                "check that this is the right file",
            )
        try:
            if data is None:
                # O_NONBLOCK and fstat: the file read is the regular file checked above (no FIFO swapped in)
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
                handle = os.fdopen(fd, "rb")  # ours, not numpy's: numpy leaks its handle on a corrupt .npz
            else:
                handle = io.BytesIO(data)
            try:
                if data is None and file_kind(os.fstat(handle.fileno()).st_mode) is not None:
                    raise OSError(errno.EINVAL, "not a regular file")
                if path.suffix.lower() == ".npy":
                    _check_header(handle, size, f"weight file {shown!r}", span)
                    handle.seek(0)
                loaded = np.load(handle, allow_pickle=False)
            except BaseException:
                handle.close()
                raise
            if isinstance(loaded, np.ndarray):
                handle.close()
            else:
                self.handles.append(handle)
        except _READ_ERRORS as exc:
            raise WeightError(f"cannot read weight file {shown!r}: {_reason(exc)}", span) from None
        self.files[key] = loaded
        return loaded

    def close(self) -> None:
        for f in self.files.values():
            if hasattr(f, "close"):
                f.close()
        for handle in self.handles:
            handle.close()

    def holds(self, src: ast.TensorRef, default: tuple[str, Span] | None) -> bool:
        """Whether the ``.npz`` that ``src`` names (``default``: the current ``weights`` file) has a tensor
        of key ``src.key`` (``key_matches``); False for a ``.npy`` or without a file. A file that cannot be
        opened raises, as ``read`` would."""
        if src.key is None or (src.file is None and default is None):
            return False
        data = self.open(*((src.file, src.span) if src.file is not None else default))
        return not isinstance(data, np.ndarray) and bool(key_matches(src.key, self.key_index(data)))

    def read(self, src: ast.TensorRef, default: tuple[str, Span] | None) -> tuple[np.ndarray, str]:
        """A tensor from a file, by key (``default``: the current ``weights`` file and where it is declared)
        -> (finite, read-only float64 values; a label naming the tensor in messages)."""
        if src.file is None:
            if default is None:
                raise WeightError(
                    f"no weights file to take {shorten(src.key)!r} from",
                    src.span,
                    hint="declare one before this layer, as in 'weights \"net.npz\"', "
                    f'or write "net.npz":{src.key}',
                )
            rel = default[0]
            data = self.open(rel, default[1])
        else:
            rel = src.file
            data = self.open(rel, src.span,
                             missing=None if src.key is not None else lambda: self._quoted_key(rel, default))
        shown = self.display_path(rel)
        if isinstance(data, np.ndarray):
            if src.key is not None:
                raise WeightError(
                    f"{shown!r} is a .npy file holding one tensor; it has no key {shorten(src.key)!r}",
                    src.span,
                    hint=f'write "{rel}" alone',
                )
            array, label = data, repr(shown)
        else:
            if src.key is None:
                raise WeightError(
                    f"{shown!r} holds several tensors; say which one",
                    src.span,
                    hint=f'write "{rel}":KEY with KEY one of: ' + _listing(self.key_index(data).spelt),
                )
            key = _file_key(src, self.key_index(data), shown)
            self.read_keys[(rel, key)] = None
            array = read_npz_member(data.zip, key, f"tensor {src.key!r} in {shown!r}", src.span,
                                    failed=f"cannot read {src.key!r} from {shown!r}")
            label = f"{src.key!r} in {shown!r}"
        if (
            not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer))
            or array.dtype == np.bool_
        ):
            raise WeightError(
                f"{label} has dtype {array.dtype}; weights must be real numbers",
                src.span,
                hint="save it as float64, e.g. numpy.asarray(w, dtype=numpy.float64)",
            )
        if np.issubdtype(array.dtype, np.integer):
            raise WeightError(
                f"{label} has integer dtype {array.dtype}; weights must be floating point",
                src.span,
                hint="save it as float64, e.g. w.astype(numpy.float64)",
            )
        values = np.array(array, dtype=np.float64)
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            where = tuple(int(i) for i in bad[0])
            what = "NaN" if np.isnan(values[where]) else "Inf"
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise WeightError(
                f"{label} holds {what} at index {where}{more}",
                src.span,
                hint="lipdsl bounds finite weights only; check how the tensor was saved",
            )
        values.setflags(write=False)
        return values, label

    def _quoted_key(self, rel: str, default: tuple[str, Span] | None) -> str | None:
        """The hint for a quoted name that names no file but reads as a tensor key (``weight "0.weight"``:
        no folder and no suffix of a tensor or model file, or a key of the current weights file), else
        None."""
        keys: set[str] = set()
        if default is not None:
            try:
                data = self.open(*default)
            except WeightError:  # reported where that file is declared
                data = None
            if data is not None and not isinstance(data, np.ndarray):
                keys = set(data.files) | set(map(spelt_key, data.files))
        named_file = "/" in rel or os.sep in rel or Path(rel).suffix.lower() in _FILE_SUFFIXES
        if named_file and rel not in keys:
            return None
        written = spelt_key(rel)
        return f"a quoted name is a weights file; the key {shorten(rel)!r} is written {shorten(written)}" + (
            " (without quotes)" if written == rel else "")


# What numpy/zipfile raise on a corrupt or hostile file (zlib.error: a broken deflate stream;
# NotImplementedError: an unsupported zip compression method; SyntaxError and TokenError: numpy parses
# the .npy header, a Python dict literal, with ast.literal_eval after tokenizing it).
_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    SyntaxError,
    tokenize.TokenError,
)


def read_npz_member(archive: zipfile.ZipFile, key: str, what: str, span: Span | None, *,
                    failed: str) -> np.ndarray:
    """The tensor ``key`` of an ``.npz`` archive, as stored (no pickles): the member ``KEY.npy`` or ``KEY``
    (numpy maps a key to either, whatever the name; read here, since numpy would return a raw member's
    bytes), refused beyond ``MAX_WEIGHT_BYTES`` inflated, when it is not a .npy array, or when its header
    declares more than the member holds (``_check_header``, before numpy allocates it).

    ``what`` names the tensor in messages, ``failed`` starts the message of an unreadable one.

    Raises
    ------
    WeightError
        At ``span``.
    """
    try:
        names = archive.namelist()
        member = archive.getinfo(key + ".npy" if key + ".npy" in names else key)
        if member.file_size > MAX_WEIGHT_BYTES:
            raise WeightError(
                f"{what} inflates to {_bytes(member.file_size)}, more than "
                f"lipdsl reads ({_bytes(MAX_WEIGHT_BYTES)})",
                span,
                hint="check that this is the right file (a compressed .npz can hide a huge tensor)",
            )
        with archive.open(member) as f:
            if f.read(6) != b"\x93NUMPY":
                raise WeightError(
                    f"{what} is not a .npy array (member {shorten(member.filename)!r} holds other data)",
                    span,
                    hint="save tensors with numpy.savez (named) or numpy.save (one tensor)",
                )
        with archive.open(member) as f:
            _check_header(f, member.file_size, what, span)
        with archive.open(member) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise WeightError(f"{failed}: {_reason(exc)}", span) from None


def _check_header(f, available: int, what: str, span: Span) -> None:
    """Read a .npy header and refuse, before numpy allocates it, a tensor that is not real or is too large.

    numpy allocates ``prod(shape) * itemsize`` bytes as the header says, whatever the file really holds.
    """
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    elif version == (3, 0):  # a UTF-8 header: numpy has no public reader for it
        shape, dtype = _read_header_3_0(f, what, span)
    else:
        raise WeightError(f"cannot read {what}: .npy format version {version[0]}.{version[1]} is unknown",
                          span, hint="save it again with numpy.save")
    nbytes = math.prod(shape) * dtype.itemsize
    if dtype.hasobject:
        raise WeightError(
            f"{what} holds Python objects (dtype {dtype}); lipdsl does not unpickle weights",
            span,
            hint="save a float array: numpy.save(path, numpy.asarray(w, dtype=numpy.float64))",
        )
    if nbytes > available or nbytes > MAX_WEIGHT_BYTES:
        raise WeightError(
            f"{what} declares shape {tuple(shape)} of {dtype} ({_bytes(nbytes)}), but "
            + (
                "the file holds less"
                if nbytes > available
                else f"lipdsl reads at most {_bytes(MAX_WEIGHT_BYTES)}"
            ),
            span,
            hint="the file is truncated or not what it claims; save it again with numpy.save",
        )


def _read_header_3_0(f, what: str, span: Span) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a format 3.0 .npy header: a uint32 length, then a UTF-8 dict literal (at most
    64 KiB, as numpy reads it with ``max_header_size``)."""
    import ast as pyast
    import struct

    raw = f.read(4)
    (length,) = struct.unpack("<I", raw) if len(raw) == 4 else (None,)
    if length is None or length > 65536:
        raise WeightError(f"{what} has a malformed .npy 3.0 header", span,
                          hint="save it again with numpy.save")
    text = f.read(length).decode("utf-8", errors="replace")
    try:
        d = pyast.literal_eval(text)
        shape = tuple(int(n) for n in d["shape"])
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        if any(n < 0 for n in shape):
            raise ValueError("negative dimension")
    except Exception:  # whatever the dict holds: a clean error
        raise WeightError(f"{what} has a malformed .npy 3.0 header", span,
                          hint="save it again with numpy.save") from None
    return shape, dtype


def _reason(exc: BaseException) -> str:
    """Why a read failed, in words, without echoing the file's bytes (numpy's "expected b'\\x93NUMPY', got
    b'...'" would show the first bytes of whatever file a link points to)."""
    text = str(exc)
    if "magic string" in text or "b'" in text or 'b"' in text:
        return "not a NumPy .npy/.npz file"
    return shorten(text)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"



class KeyIndex:
    """The keys of one file (or state_dict) for ``key_matches``: the keys held and, built in one pass, the
    keys under each spelling (``spelt_key``), so that a lookup is a dict access, not a scan of every key."""

    __slots__ = ("held", "spelt")

    def __init__(self, keys: Iterable[str]):
        keys = tuple(keys)  # (a key listed twice stays twice: ambiguous, as the scan over the keys had it)
        self.held = frozenset(keys)
        spelt: dict[str, list[str]] = {}
        for k in keys:
            spelt.setdefault(spelt_key(k), []).append(k)
        self.spelt = {written: tuple(sorted(ks)) for written, ks in spelt.items()}


def key_matches(key: str, keys: Iterable[str] | KeyIndex) -> tuple[str, ...]:
    """The file keys a spec's ``key`` may read among ``keys``: ``(key,)`` when the file holds it as written
    (it always wins), else every key spelt so (``spelt_key``: the file's ``0.weight`` for ``_0.weight``),
    sorted; one is the key read, several are ambiguous (refused), none is a missing tensor.

    The one lookup of file keys: ``WeightFiles.read`` (an ``.npz``), ``spelt_tensors`` and the PyTorch
    importer's (a state_dict) use it. Pass a ``KeyIndex`` of the keys to look up many keys in one file.
    """
    index = keys if isinstance(keys, KeyIndex) else KeyIndex(keys)
    if key in index.held:
        return (key,)
    return index.spelt.get(key, ())


def spelt_tensors(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """``tensors`` under the keys a spec writes (``spelt_key``), each the tensor a spec's key reads from a
    file holding ``tensors`` (``key_matches``): a key held as written wins over others spelt alike; keys
    that are ambiguous (several spelt alike, none as written) are left out (a spec reading one is refused).
    """
    index = KeyIndex(tensors)
    out: dict[str, Any] = {}
    for written in dict.fromkeys(map(spelt_key, tensors)):
        matches = key_matches(written, index)
        if len(matches) == 1:
            out[written] = tensors[matches[0]]
    return out


def _file_key(src: ast.TensorRef, index: KeyIndex, shown: str) -> str:
    """The key of the file holding ``src.key`` (``key_matches``); WeightError when there is none, or
    several."""
    matches = list(key_matches(src.key, index))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise WeightError(
            f"{shorten(src.key)!r} could mean any of the tensors " + ", ".join(map(repr, matches[:4]))
            + (", ..." if len(matches) > 4 else "") + f" in {shown!r}",
            src.span,
            hint="their names differ only in characters a key cannot hold; save them under distinct names",
        )
    written = sorted(index.spelt)  # (the spellings of the file's keys)
    renamed = min(((k, w) for w, ks in index.spelt.items() for k in ks if k != w), default=None)
    note = "" if renamed is None else \
        f" (as a spec writes them: the file's {shorten(renamed[0])!r} is {shorten(renamed[1])!r})"
    raise WeightError(
        f"no tensor {shorten(src.key)!r} in {shown!r}",
        src.span,
        hint=did_you_mean(src.key, written) + "it holds: " + _listing(written) + note,
    )


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")

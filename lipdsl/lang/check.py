"""Check shapes and load weights: ast.Network -> typed.Network (PyTorch's shape rules, float64 weights)."""

from __future__ import annotations

import difflib
import errno
import io
import math
import os
import posixpath
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lipdsl.lang import activations as _activation_table
from lipdsl.lang import ast, typed
from lipdsl.errors import ShapeError, SpecError, WeightError
from lipdsl.lang.syntax_errors import LAYER_KEYWORDS, suggest_keyword
from lipdsl.lang.source import Source, Span, file_kind
from lipdsl.lang.typed import Shape

__all__ = ["check", "memory_key", "weight_files", "conv1d_length", "pool_length", "conv1d_padding",
           "ACTIVATIONS"]

# Built-in activations (their names, parameters and slope bounds): lipdsl.lang.activations, the one table.
ACTIVATIONS = _activation_table.ACTIVATIONS
#: Largest weight file, and largest uncompressed tensor inside an .npz (a small zip can inflate to any size).
MAX_WEIGHT_BYTES = 1 << 30
_FUNCTIONS = ("sqrt", "exp", "log", "sin", "cos", "tan", "tanh", "atan", "abs")
_RESERVED = ("pi", "e") + _FUNCTIONS
_OPTIONS = {
    "conv1d": ("kernel", "stride", "dilation", "padding", "weight", "bias"),
    "dense": ("weight", "bias"),
    "pool": ("kernel", "stride"),
    "global_avgpool": (),
    "flatten": (),
    "activation": ("slope",),
    "batchnorm": ("weights", "weight", "bias", "running_mean", "running_var", "eps"),
}


def conv1d_padding(mode: str | int, kernel: int, dilation: int) -> tuple[int, int]:
    """(pad_left, pad_right) of a Conv1d: an int pads both sides; 'same' as PyTorch; 'causal' left only.

    ``same``: total = dilation*(kernel-1), left = total // 2, right = total - left (PyTorch's split).
    ``causal``: left = dilation*(kernel-1), right = 0.
    """
    reach = dilation * (kernel - 1)
    if mode == "valid":
        return 0, 0
    if mode == "same":
        return reach // 2, reach - reach // 2
    if mode == "causal":
        return reach, 0
    return int(mode), int(mode)


def conv1d_length(length: int, kernel: int, stride: int, dilation: int, pad_left: int, pad_right: int) -> int:
    """PyTorch Conv1d: ``L_out = floor((L + pl + pr - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (length + pad_left + pad_right - dilation * (kernel - 1) - 1) // stride + 1


def pool_length(length: int, kernel: int, stride: int) -> int:
    """PyTorch Avg/MaxPool1d, no padding, floor mode: ``L_out = floor((L - kernel) / stride) + 1``."""
    return (length - kernel) // stride + 1


def shapes_at(net: typed.Network, length: int | None):
    """``(layer, channels, samples)`` after each layer of ``net`` for inputs of ``length`` samples (the spec's
    own length if it has one; ``samples`` is None once the signal is a vector: after a flatten, a global
    average pool or a dense layer). For size estimates made before anything is lowered or allocated."""
    shp = net.input_shape
    c, n = shp.channels, (None if shp.flat else (shp.length or length or 1))
    for L in net.layers:
        if isinstance(L, typed.Conv1d):
            n = conv1d_length(n, L.kernel, L.stride, L.dilation, L.pad_left, L.pad_right)
            c = L.c_out
        elif isinstance(L, typed.Pool):
            n = pool_length(n, L.kernel, L.stride)
        elif isinstance(L, typed.GlobalAvgPool):
            n = None
        elif isinstance(L, typed.Flatten):
            c, n = c * (n or 1), None
        elif isinstance(L, typed.Dense):
            c, n = L.n_out, None
        yield L, c, n


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


@dataclass
class _Loaded:
    """A tensor ready for a layer: float64 values, exact values if written with expressions, a label."""

    values: np.ndarray
    expr: Any
    label: str
    span: Span


@dataclass
class _Checker:
    source: Source
    allow_outside: bool
    env: dict[str, Any] = field(default_factory=dict)  # let name -> int | float | sympy
    env_lines: dict[str, int] = field(default_factory=dict)
    weights: tuple[str, Span] | None = None  # current default weights file
    files: dict[str, Any] = field(default_factory=dict)  # resolved path -> NpzFile or ndarray
    handles: list = field(default_factory=list)  # open files behind the NpzFiles
    memory: Mapping[str, bytes] | None = None  # weight files in memory (memory_key(rel) -> bytes), no disk
    cache: dict = field(default_factory=dict)  # bare-name tensor entry (sympy) -> (float, exact)

    # -- expressions -------------------------------------------------------------------------------
    def value(self, e: ast.Expr, what: str) -> Any:
        """The value of ``e`` with let names substituted: int/float, or a sympy number."""
        if e.is_number:
            if isinstance(e.value, float) and not math.isfinite(e.value):
                raise SpecError(f"{what}: the number is too large for float64", e.span)
            return e.value
        import sympy

        for n in e.names:
            if n.call:
                if n.id not in _FUNCTIONS:
                    raise SpecError(
                        f"unknown function {n.id!r}",
                        n.span,
                        hint=_did_you_mean(n.id, _FUNCTIONS) + "functions: " + ", ".join(_FUNCTIONS),
                    )
            elif n.id not in self.env:
                hint = _did_you_mean(n.id, self.env) + f"define it first, as in 'let {n.id} = 1/8'"
                raise SpecError(f"unknown name {n.id!r}", n.span, hint=hint)
        subs = {sympy.Symbol(n.id): ast.exact(self.env[n.id]) for n in e.names if not n.call}
        if not subs:
            return e.value
        try:
            return ast.substitute(e.value, subs)
        except ast.TooLarge as exc:
            raise SpecError(
                f"{what}: number too large to compute exactly: {exc}",
                e.span,
                hint="values must fit in float64 (about 1.8e308); lipdsl computes expressions exactly first",
            ) from None

    def number(self, e: ast.Expr, what: str) -> tuple[float, Any]:
        """(float value, exact sympy value or None when ``e`` is a plain number) of a real expression."""
        v = self.value(e, what)
        if isinstance(v, float):
            return v, None
        if isinstance(v, int):
            try:
                return float(v), None
            except OverflowError:
                raise SpecError(f"{what}: the number is too large for float64", e.span) from None
        return self.to_float(v, e.span, what), v

    @staticmethod
    def to_float(v: Any, span: Span, what: str) -> float:
        from sympy.core.evalf import PrecisionExhausted

        try:
            # strict: raise rather than return digits lost to cancellation
            f = float(v.evalf(20, strict=True) if hasattr(v, "evalf") else v)
        except (TypeError, ValueError, OverflowError):
            raise SpecError(f"{what} is not a real number: {_short(v)}", span) from None
        except PrecisionExhausted:
            raise SpecError(
                f"{what} cannot be evaluated to 20 significant digits: {_short(v)}",
                span,
                hint="write it in a simpler form (it may be an exact zero sympy cannot recognise)",
            ) from None
        if not math.isfinite(f):
            raise SpecError(
                f"{what} is not finite: {_short(v)}", span, hint="check for a division by zero or an overflow"
            )
        if f == 0 and getattr(v, "is_zero", None) is False:
            raise SpecError(
                f"{what} underflows to 0 in float64: {_short(v)}",
                span,
                hint="values must be 0 or at least about 5e-324 in magnitude; rescale the weights (the "
                "bound scales with them)",
            )
        return f

    def integer(self, e: ast.Expr, what: str, minimum: int) -> int:
        """An integer-valued expression, at least ``minimum``."""
        v = self.value(e, what)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        elif not isinstance(v, int):
            if getattr(v, "is_Integer", False):
                v = int(v)
            else:
                shown = v if isinstance(v, float) else self.to_float(v, e.span, what)
                raise SpecError(f"{what} must be an integer, got {shown:g}", e.span)
        if v < minimum:
            raise SpecError(f"{what} must be at least {minimum}, got {v}", e.span)
        return v

    # -- tensors -----------------------------------------------------------------------------------
    @staticmethod
    def display_path(rel: str) -> str:
        """Paths are shown as the spec writes them (relative to the spec), whatever the working directory."""
        return rel

    def resolve(self, rel: str, span: Span) -> Path:
        """The file ``rel`` names, relative to the spec's directory, refusing escapes unless allowed."""
        if not self.allow_outside:
            if os.path.isabs(rel) or rel.startswith("~"):
                raise WeightError(
                    f"weight file {rel!r} is an absolute path",
                    span,
                    hint="give paths relative to the spec, or pass --allow-outside if you trust "
                    "this spec (it may read any file you can)",
                )
            if os.path.normpath(rel).split(os.sep)[0] == "..":
                raise WeightError(
                    f"weight file {rel!r} is outside the spec's directory",
                    span,
                    hint="copy the file next to the spec, or pass --allow-outside if you trust "
                    "this spec (it may read any file you can)",
                )
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
                raise WeightError(
                    f"weight file {rel!r} is a symbolic link to a file outside the spec's directory",
                    span,
                    hint="copy the file next to the spec, or pass --allow-outside if you trust "
                    "this spec (it may read any file you can)",
                )
        return path

    def open(self, rel: str, span: Span) -> Any:
        path = self.resolve(rel, span)
        key = str(path)
        if key in self.files:
            return self.files[key]
        shown = self.display_path(rel)
        data = None if self.memory is None else self.memory.get(memory_key(rel))
        if self.memory is not None and data is None:
            raise WeightError(
                f"weight file {shown!r} not found", span, hint="paths are relative to the spec's directory"
            )
        if data is None:  # on disk: what the path names, before anything is opened
            try:
                st = os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:
                    raise WeightError(f"weight file name {_short(shown)!r} is too long",
                                      span, hint="check the path") from None
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise WeightError(f"weight file {shown!r} not found", span,
                                      hint="paths are relative to the spec's directory") from None
                raise WeightError(f"cannot read weight file {shown!r}: {exc.strerror or exc}", span) from None
            kind = file_kind(st.st_mode)
            if kind is not None:
                raise WeightError(f"weight file {shown!r} is {kind}, not a file", span,
                                  hint="give the path of a .npz or .npy file")
        if path.suffix.lower() not in (".npz", ".npy"):
            raise WeightError(
                f"weight file {shown!r} is neither .npz nor .npy",
                span,
                hint="save tensors with numpy.savez (named) or numpy.save (one tensor)",
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

    def tensor(self, src: ast.TensorSource, role: str) -> _Loaded:
        """Load a weight or bias: from a file (by key) or inline; float64, finite."""
        if isinstance(src, ast.Tensor):
            return self.inline(src, role)
        if src.file is None:
            if self.weights is None:
                raise WeightError(
                    f"no weights file to take {src.key!r} from",
                    src.span,
                    hint="declare one before this layer, as in 'weights \"net.npz\"', "
                    f'or write "net.npz":{src.key}',
                )
            rel = self.weights[0]
            data = self.open(rel, self.weights[1])
        else:
            rel = src.file
            data = self.open(rel, src.span)
        shown = self.display_path(rel)
        if isinstance(data, np.ndarray):
            if src.key is not None:
                raise WeightError(
                    f"{shown!r} is a .npy file holding one tensor; it has no key {src.key!r}",
                    src.span,
                    hint=f'write "{rel}" alone',
                )
            array, label = data, repr(shown)
        else:
            if src.key is None:
                raise WeightError(
                    f"{shown!r} holds several tensors; say which one",
                    src.span,
                    hint=f'write "{rel}":KEY with KEY one of: ' + _listing(data.files),
                )
            if src.key not in data.files:
                raise WeightError(
                    f"no tensor {src.key!r} in {shown!r}",
                    src.span,
                    hint=_did_you_mean(src.key, data.files) + "it holds: " + _listing(data.files),
                )
            try:
                # numpy maps KEY to the member KEY.npy or KEY (any name): read it ourselves, whatever its
                # name, through the size cap and the header check (numpy would return a raw member's bytes)
                names = data.zip.namelist()
                member = data.zip.getinfo(src.key + ".npy" if src.key + ".npy" in names else src.key)
                what = f"tensor {src.key!r} in {shown!r}"
                if member.file_size > MAX_WEIGHT_BYTES:
                    raise WeightError(
                        f"{what} inflates to {_bytes(member.file_size)}, more than "
                        f"lipdsl reads ({_bytes(MAX_WEIGHT_BYTES)})",
                        src.span,
                        hint="check that this is the right file (a compressed .npz can hide a huge tensor)",
                    )
                with data.zip.open(member) as f:
                    if f.read(6) != b"\x93NUMPY":
                        raise WeightError(
                            f"{what} is not a .npy array "
                            f"(member {_short(member.filename)!r} holds other data)",
                            src.span,
                            hint="save tensors with numpy.savez (named) or numpy.save (one tensor)",
                        )
                with data.zip.open(member) as f:
                    _check_header(f, member.file_size, what, src.span)
                with data.zip.open(member) as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
            except _READ_ERRORS as exc:
                raise WeightError(f"cannot read {src.key!r} from {shown!r}: {_reason(exc)}",
                                  src.span) from None
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
        return _Loaded(values, None, label, src.span)

    def inline(self, t: ast.Tensor, role: str) -> _Loaded:
        if t.values is not None:  # plain numbers, already float64 (the parser's fast path)
            bad = np.argwhere(~np.isfinite(t.values))
            if bad.size:
                raise SpecError(
                    f"inline {role} entry at index {tuple(int(i) for i in bad[0])}: the number is too large "
                    "for float64",
                    t.span,
                )
            return _Loaded(t.values, None, f"the inline {role}", t.span)
        shape = self.inline_shape(t)
        entries: list[ast.Expr] = []

        def walk(node):
            for item in node.items:
                if isinstance(item, ast.Tensor):
                    walk(item)
                else:
                    entries.append(item)

        walk(t)
        floats, exact = [], []
        for e in entries:
            # a bare name (or its negation) has one value for the whole spec (let names are defined once,
            # before use): evaluated once, not once per entry (a 1 MB tensor of names)
            bare = len(e.names) == 1 and not e.names[0].call and e.depth <= 2 and not e.is_number
            if bare and e.value in self.cache:
                f, x = self.cache[e.value]
            else:
                f, x = self.number(e, f"inline {role} entry")
                if bare:
                    self.cache[e.value] = (f, x)
            floats.append(f)
            exact.append(x)
        values = np.array(floats, dtype=np.float64).reshape(shape)
        values.setflags(write=False)
        expr = None
        if any(x is not None for x in exact):
            import sympy

            flat = [ast.exact(e) if x is None else x for e, x in zip(entries, exact, strict=True)]
            expr = sympy.ImmutableDenseNDimArray(flat, shape)
        return _Loaded(values, expr, f"the inline {role}", t.span)

    def inline_shape(self, t: ast.Tensor) -> tuple[int, ...]:
        if not t.items:
            return (0,)
        kinds = {isinstance(i, ast.Tensor) for i in t.items}
        if len(kinds) == 2:
            raise ShapeError(
                "inline tensor mixes numbers and lists at the same depth",
                t.span,
                hint="every row of a nested list needs the same shape",
            )
        if kinds == {False}:
            return (len(t.items),)
        first = self.inline_shape(t.items[0])
        for row in t.items[1:]:
            shape = self.inline_shape(row)
            if shape != first:
                raise ShapeError(
                    f"ragged inline tensor: this row has shape {_fmt(shape)}, the first has {_fmt(first)}",
                    row.span,
                    hint="every row of a nested list needs the same shape",
                )
        return (len(t.items),) + first


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
    return _short(text)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _short(v: Any) -> str:
    """``str(v)``, shortened for messages (an exact value may have thousands of digits)."""
    text = str(v)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-28:]} ({len(text)} characters)"


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")


def _kind(layer) -> str:
    if isinstance(layer, ast.Conv1d):
        return "conv1d"
    if isinstance(layer, ast.Dense):
        return "dense"
    if isinstance(layer, ast.Pool):
        return f"{layer.op}pool"
    if isinstance(layer, ast.GlobalAvgPool):
        return "global_avgpool"
    if isinstance(layer, ast.Flatten):
        return "flatten"
    if isinstance(layer, ast.BatchNorm):
        return "batchnorm"
    if isinstance(layer, ast.Residual):
        return "residual"
    return layer.function


#: Prefix of auto-generated layer names (``conv1``, ``gap1``, ...); the importer writes the same names.
AUTO_PREFIX = {
    "conv1d": "conv",
    "dense": "dense",
    "avgpool": "avgpool",
    "maxpool": "maxpool",
    "global_avgpool": "gap",
    "flatten": "flatten",
    "batchnorm": "bn",
    "residual": "block",
}


def _layer_nodes(layers) -> list:
    """Layer nodes in naming order: a residual block, then its main path, then its shortcut."""
    out = []
    for layer in layers:
        out.append(layer)
        if isinstance(layer, ast.Residual):
            out += _layer_nodes(layer.main) + _layer_nodes(layer.shortcut or ())
    return out


def _names(layers) -> list[str]:
    """Layer names: as written, else ``<kind><n>`` (conv1, dense2, relu1, avgpool1...) skipping taken ones.

    ``n`` counts the layers of that kind so far, named or not, so inserting a named layer does not rename
    the unnamed ones before it.
    """
    taken: dict[str, Span] = {}
    for layer in layers:
        if layer.name is not None:
            if layer.name in taken:
                raise SpecError(
                    f"duplicate layer name {layer.name!r}",
                    layer.span,
                    hint=f"{layer.name!r} is already the name of the layer at line "
                    f"{taken[layer.name].line}; layer names must be unique",
                )
            taken[layer.name] = layer.span
    counts: dict[str, int] = {}
    out = []
    for layer in layers:
        kind = _kind(layer)
        prefix = AUTO_PREFIX.get(kind, kind)
        counts[prefix] = counts.get(prefix, 0) + 1
        if layer.name is not None:
            out.append(layer.name)
            continue
        n = counts[prefix]
        while f"{prefix}{n}" in taken:
            n += 1
        taken[f"{prefix}{n}"] = layer.span
        out.append(f"{prefix}{n}")
    return out


def _options(layer, kind: str, family: str) -> dict[str, ast.Option]:
    got: dict[str, ast.Option] = {}
    allowed = _OPTIONS[family]
    for opt in layer.options:
        if opt.key not in allowed:
            takes = ("takes " + ", ".join(allowed)) if allowed else "takes no options"
            raise SpecError(f"{kind} takes no {opt.key!r} option", opt.span, hint=f"{kind} {takes}")
        if opt.key in got:
            raise SpecError(
                f"option {opt.key!r} given twice",
                opt.span,
                hint=f"the first is at column {got[opt.key].span.col}",
            )
        got[opt.key] = opt
    return got


def _producer(prev: str | None) -> str:
    return f"{prev!r} produces" if prev else "the input is"


def memory_key(rel: str) -> str:
    """Key of weight file ``rel`` (as the spec writes it) in ``check``'s ``files``: ``a/./b.npz`` ->
    ``a/b.npz``."""
    return posixpath.normpath(rel.replace(os.sep, "/"))


def weight_files(net: ast.Network) -> tuple[str, ...]:
    """Every weight file ``net`` names (``weights "f.npz"`` lines, ``"f.npz":key`` references), in order."""
    names: list[str] = []
    for st in net.body:
        if isinstance(st, ast.Weights):
            names.append(st.path)
        for opt in getattr(st, "options", ()) or ():
            if isinstance(opt.value, ast.TensorRef) and opt.value.file is not None:
                names.append(opt.value.file)
    return tuple(dict.fromkeys(names))


def check(
    net: ast.Network,
    source: Source,
    *,
    allow_outside: bool = False,
    files: Mapping[str, bytes] | None = None,
) -> typed.Network:
    """Infer and check every layer's shape, load the weights, and resolve activations' slopes.

    Shapes follow PyTorch: Conv1d ``L_out = floor((L + pl + pr - d*(k-1) - 1)/s) + 1``, pooling
    ``floor((L - k)/s) + 1``, channel-major flatten, Linear ``(out, in)``.

    Parameters
    ----------
    net : ast.Network
        The parsed spec.
    source : Source
        Its text and path; weight paths are relative to ``source.directory``.
    allow_outside : bool
        Allow weight files given by absolute paths or outside the spec's directory (``..``).
    files : mapping of str to bytes, optional
        The weight files' contents in memory, keyed by ``memory_key`` of the names the spec writes
        (``weight_files``): nothing is read from disk, with the same checks (path rules, size limits,
        ``allow_pickle=False``, finite values); a name not in ``files`` is "not found".

    Returns
    -------
    typed.Network
        Every layer with its input/output Shape, float64 weights and slope bounds.

    Raises
    ------
    ShapeError
        Sizes that do not fit together (channels, lengths, weight shapes).
    WeightError
        A missing, unreadable, unsafe or non-finite weight file or tensor.
    SpecError
        Unknown names, duplicate layer names, bad slopes or options.
    """
    ck = _Checker(source, allow_outside, memory=files)
    try:
        return _check(ck, net, source)
    finally:
        ck.close()


def _check(ck: _Checker, net: ast.Network, source: Source) -> typed.Network:
    layer_nodes = [s for s in net.body if not isinstance(s, (ast.Input, ast.Let, ast.Weights))]
    names = iter(_names(_layer_nodes(layer_nodes)))
    shape: Shape | None = None
    input_shape: Shape | None = None
    prev: str | None = None
    layers: list[typed.Layer] = []
    for st in net.body:
        if isinstance(st, ast.Let):
            if st.name in _RESERVED:
                raise SpecError(
                    f"{st.name!r} is a built-in name and cannot be redefined",
                    st.name_span,
                    hint="pick another name",
                )
            if st.name in ck.env:
                raise SpecError(
                    f"{st.name!r} is already defined",
                    st.name_span,
                    hint=f"it was defined at line {ck.env_lines[st.name]}; pick another name",
                )
            v = ck.value(st.value, f"let {st.name}")
            if not isinstance(v, (int, float)):
                ck.to_float(v, st.value.span, f"let {st.name}")  # refuse complex/infinite values early
            ck.env[st.name] = v
            ck.env_lines[st.name] = st.span.line
            continue
        if isinstance(st, ast.Weights):
            ck.weights = (st.path, st.path_span or st.span)
            ck.open(st.path, st.path_span or st.span)  # report a missing file where it is declared
            continue
        if isinstance(st, ast.Input):
            channels = ck.integer(st.channels, "input size" if st.flat else "input channels", 1)
            if st.flat:
                shape = Shape(channels, None, flat=True)
            elif st.any_length:
                shape = Shape(channels, None)
            else:
                shape = Shape(channels, ck.integer(st.length, "input length", 1))
            input_shape = shape
            continue
        assert shape is not None  # parse() refuses layers before the input
        name = next(names)
        layer = _residual(ck, st, name, names, shape, prev) if isinstance(st, ast.Residual) else \
            _layer(ck, st, name, shape, prev)
        layers.append(layer)
        shape = layer.out_shape
        prev = name
    if not layers:
        raise SpecError("the network has no layers", net.input.span, hint="add layers after the input line")
    title = net.name or (Path(source.path).stem if source.path not in ("<string>", "<stdin>") else "network")
    return typed.Network(title, input_shape, tuple(layers), net.span, source.path)


def _layer(ck: _Checker, st, name: str, shape: Shape, prev: str | None) -> typed.Layer:
    if isinstance(st, ast.Conv1d):
        return _conv1d(ck, st, name, shape, prev)
    if isinstance(st, ast.Dense):
        return _dense(ck, st, name, shape, prev)
    if isinstance(st, ast.Pool):
        return _pool(ck, st, name, shape)
    if isinstance(st, ast.GlobalAvgPool):
        _options(st, "global_avgpool", "global_avgpool")
        _need_signal(shape, "global_avgpool", name, st.span, prev)
        return typed.GlobalAvgPool(name, st.span, shape, Shape(shape.channels, None, flat=True))
    if isinstance(st, ast.Flatten):
        _options(st, "flatten", "flatten")
        if shape.flat:
            raise ShapeError(
                f"flatten {name!r}: the input is already a flat vector of {shape.channels}",
                st.span,
                hint="remove this line",
            )
        if shape.length is None:
            raise ShapeError(
                f"flatten {name!r} needs a known length, but the input is declared with any length ('x *')",
                st.span,
                hint="use global_avgpool to turn any-length signals into vectors, or declare a length",
            )
        return typed.Flatten(name, st.span, shape, Shape(shape.channels * shape.length, None, flat=True))
    if isinstance(st, ast.BatchNorm):
        return _batchnorm(ck, st, name, shape, prev)
    if isinstance(st, ast.Residual):
        raise SpecError("residual blocks do not nest", st.span, hint="close the outer block with 'end' first")
    return _activation(ck, st, name, shape)


def _branch(ck: _Checker, nodes, names, shape: Shape, prev: str | None) -> tuple[list, Shape, str | None]:
    """Check one branch of a residual block: its layers in order, from ``shape``."""
    layers = []
    for st in nodes:
        layer = _layer(ck, st, next(names), shape, prev)
        layers.append(layer)
        shape, prev = layer.out_shape, layer.name
    return layers, shape, prev


def _residual(ck: _Checker, st: ast.Residual, name: str, names, shape: Shape,
              prev: str | None) -> typed.Residual:
    """``main(x) + shortcut(x)``: both branches from ``shape``, to the same shape (else a ShapeError)."""
    main, out, last = _branch(ck, st.main, names, shape, prev)
    short, out_s, _ = _branch(ck, st.shortcut or (), names, shape, prev)
    if out != out_s:
        where = st.shortcut_span if st.shortcut else st.span
        what = f"the shortcut produces {out_s}" if st.shortcut else f"the identity shortcut passes {out_s} on"
        hint = (f"the shortcut needs a layer to {out.channels} channels, e.g. 'conv1d {out_s.channels} -> "
                f"{out.channels}, kernel 1, weight KEY' in a 'shortcut' section"
                if not st.shortcut else "both branches must end in the same channels x samples")
        raise ShapeError(f"residual block {name!r}: the main path produces {out} (after {last!r}), "
                         f"but {what}", where, hint=hint)
    if shape.length is None and not shape.flat:  # any length: the branches must change it the same way
        for n in (64, 65):
            a, b = _probe_length(main, n), _probe_length(short, n)
            if a != b:
                raise ShapeError(
                    f"residual block {name!r}: for an input of {n} samples the main path gives {a} and the "
                    f"shortcut {b}", st.shortcut_span if st.shortcut else st.span,
                    hint="both branches must keep the same length (e.g. padding same or causal in both)")
    if out.flat or shape.flat:
        raise ShapeError(f"residual block {name!r} needs signals (channels x samples), not flat vectors",
                         st.span, hint="put the block before flatten/global_avgpool")
    return typed.Residual(name, st.span, tuple(main), tuple(short), shape, out)


def _probe_length(layers, n: int | None) -> int | None:
    """The length after ``layers`` for an input of ``n`` samples (None once a layer has no output)."""
    for layer in layers:
        if n is None or n < 1:
            return None
        if isinstance(layer, typed.Conv1d):
            n = conv1d_length(n, layer.kernel, layer.stride, layer.dilation, layer.pad_left, layer.pad_right)
        elif isinstance(layer, typed.Pool):
            n = pool_length(n, layer.kernel, layer.stride) if n >= layer.kernel else None
    return n


def _batchnorm(ck: _Checker, st: ast.BatchNorm, name: str, shape: Shape, prev: str | None) -> typed.BatchNorm:
    """``scale = weight / sqrt(running_var + eps)``, ``shift = bias - scale * running_mean`` per channel."""
    opts = _options(st, "batchnorm", "batchnorm")
    c = ck.integer(st.channels, "channels", 1)
    if c != shape.channels:
        raise ShapeError(f"batchnorm {name!r} expects {_plural(c, 'channel')}, but {_producer(prev)} "
                         f"{shape.channels}", st.channels.span, hint=f"write batchnorm {shape.channels}")
    eps = ck.number(opts["eps"].value, "eps")[0] if "eps" in opts else 1e-5
    if not eps > 0:
        raise SpecError(f"batchnorm {name!r}: eps must be positive, got {eps:g}", opts["eps"].span,
                        hint="PyTorch's default is eps 1e-5")
    prefix = opts.get("weights")
    if prefix is not None and not (isinstance(prefix.value, ast.TensorRef) and prefix.value.key):
        raise SpecError(f"batchnorm {name!r}: 'weights' takes the key prefix of the BatchNorm1d module, "
                        "as in 'weights layer1.bn1'", prefix.span,
                        hint="or give running_mean, running_var, weight and bias one by one")
    tensors = {}
    for role, default in (("weight", 1.0), ("bias", 0.0), ("running_mean", None), ("running_var", None)):
        if role in opts:
            src = opts[role].value
        elif prefix is not None:
            ref = prefix.value
            src = ast.TensorRef(ref.file, f"{ref.key}.{role}", ref.span)
        elif default is not None:
            tensors[role] = np.full(c, default)
            continue
        else:
            raise SpecError(f"batchnorm {name!r} needs its {role}", st.span,
                            hint=f"add ', weights PREFIX' (the module's state_dict prefix, e.g. bn1) or "
                            f"', {role} KEY'")
        t = ck.tensor(src, role)
        _expect_shape(t, (c,), f"batchnorm {name!r} {role}", "(channels,)", {0: "channels"})
        tensors[role] = t.values
    var = tensors["running_var"]
    if np.any(var + eps <= 0):
        i = int(np.flatnonzero(var + eps <= 0)[0])
        raise WeightError(f"batchnorm {name!r}: running_var + eps must be positive, got {var[i] + eps:g} at "
                          f"channel {i}", (opts.get("running_var") or prefix or opts.get("eps")).span)
    scale = tensors["weight"] / np.sqrt(var + eps)
    shift = tensors["bias"] - scale * tensors["running_mean"]
    return typed.BatchNorm(name, st.span, c, scale, shift, float(eps), shape, shape)


def _need_signal(shape: Shape, kind: str, name: str, span: Span, prev: str | None) -> None:
    if shape.flat:
        raise ShapeError(
            f"{kind} {name!r} needs a signal (channels x samples), but {_producer(prev)} a flat "
            f"vector of {shape.channels}",
            span,
            hint="put flatten/global_avgpool after the convolutional part, not before it",
        )


def _conv1d(ck: _Checker, st: ast.Conv1d, name: str, shape: Shape, prev: str | None) -> typed.Conv1d:
    opts = _options(st, "conv1d", "conv1d")
    _need_signal(shape, "conv1d", name, st.span, prev)
    c_in = ck.integer(st.c_in, "input channels", 1)
    c_out = ck.integer(st.c_out, "output channels", 1)
    if c_in != shape.channels:
        raise ShapeError(
            f"conv1d {name!r} expects {_plural(c_in, 'input channel')}, but {_producer(prev)} "
            f"{shape.channels}",
            st.c_in.span,
            hint=f"write {shape.channels} -> {c_out}",
        )
    if "kernel" not in opts:
        raise SpecError(
            f"conv1d {name!r} needs a kernel size", st.span, hint="add ', kernel 3' (for example)"
        )
    kernel = ck.integer(opts["kernel"].value, "kernel", 1)
    stride = ck.integer(opts["stride"].value, "stride", 1) if "stride" in opts else 1
    dilation = ck.integer(opts["dilation"].value, "dilation", 1) if "dilation" in opts else 1
    padding: str | int = 0
    if "padding" in opts:
        p = opts["padding"].value
        if isinstance(p, str):
            padding = p
        else:
            if (
                len(p.names) == 1
                and not p.names[0].call
                and p.names[0].id not in ck.env
                and p.names[0].span == p.span
            ):
                raise SpecError(
                    f"padding must be an integer, valid, same or causal, got {p.names[0].id!r}",
                    p.span,
                    hint=_did_you_mean(p.names[0].id, ("valid", "same", "causal")).strip() or None,
                )
            padding = ck.integer(p, "padding", 0)
        if padding == "same" and stride != 1:
            raise ShapeError(
                f"conv1d {name!r}: padding same needs stride 1, got stride {stride}",
                opts["padding"].span,
                hint="PyTorch refuses 'same' for strided convolutions; give the padding as a number",
            )
    pad_left, pad_right = conv1d_padding(padding, kernel, dilation)
    length = None
    if shape.length is not None:
        length = conv1d_length(shape.length, kernel, stride, dilation, pad_left, pad_right)
        if length < 1:
            reach = dilation * (kernel - 1) + 1
            raise ShapeError(
                f"conv1d {name!r} has no output: its kernel spans {reach} samples, but the padded "
                f"input has {shape.length + pad_left + pad_right}",
                st.span,
                hint="use a smaller kernel or dilation, or more padding",
            )
    if "weight" not in opts:
        raise SpecError(
            f"conv1d {name!r} needs a weight",
            st.span,
            hint="add ', weight KEY' (a key of the weights file) or an inline [[[...]]] tensor",
        )
    w = ck.tensor(opts["weight"].value, "weight")
    _expect_shape(
        w,
        (c_out, c_in, kernel),
        f"conv1d {name!r} weight",
        "(c_out, c_in, kernel)",
        {0: "output channels", 1: "input channels", 2: "kernel"},
    )
    b = _bias(ck, opts, c_out, f"conv1d {name!r}")
    return typed.Conv1d(
        name,
        st.span,
        c_in,
        c_out,
        kernel,
        stride,
        dilation,
        pad_left,
        pad_right,
        str(padding),
        w.values,
        b,
        shape,
        Shape(c_out, length),
        w.expr,
    )


def _dense(ck: _Checker, st: ast.Dense, name: str, shape: Shape, prev: str | None) -> typed.Dense:
    opts = _options(st, "dense", "dense")
    n_in = ck.integer(st.n_in, "input size", 1)
    n_out = ck.integer(st.n_out, "output size", 1)
    if not shape.flat:
        if shape.length is None:
            hint = f"add 'global_avgpool' before it ({shape.channels} values)"
        else:
            hint = (
                f"add 'flatten' before it ({shape.size} values, channel-major) or 'global_avgpool' "
                f"({shape.channels} values)"
            )
        raise ShapeError(
            f"dense {name!r} needs a vector, but {_producer(prev)} a {shape} signal", st.span, hint=hint
        )
    if n_in != shape.channels:
        raise ShapeError(
            f"dense {name!r} expects {_plural(n_in, 'input')}, but {_producer(prev)} {shape.channels}",
            st.n_in.span,
            hint=f"write {shape.channels} -> {n_out}",
        )
    if "weight" not in opts:
        raise SpecError(
            f"dense {name!r} needs a weight",
            st.span,
            hint="add ', weight KEY' (a key of the weights file) or an inline [[...]] tensor",
        )
    w = ck.tensor(opts["weight"].value, "weight")
    _expect_shape(
        w, (n_out, n_in), f"dense {name!r} weight", "(out, in)", {0: "output size", 1: "input size"}
    )
    b = _bias(ck, opts, n_out, f"dense {name!r}")
    return typed.Dense(name, st.span, n_in, n_out, w.values, b, shape, Shape(n_out, None, flat=True), w.expr)


def _bias(ck: _Checker, opts, n: int, what: str) -> np.ndarray | None:
    if "bias" not in opts:
        return None
    b = ck.tensor(opts["bias"].value, "bias")
    _expect_shape(b, (n,), f"{what} bias", "(out,)", {0: "output size"})
    return b.values


def _expect_shape(t: _Loaded, want: tuple[int, ...], what: str, layout: str, axes: dict[int, str]) -> None:
    got = t.values.shape
    if got == want:
        return
    hint = None
    if len(got) == len(want):
        diffs = [i for i in range(len(want)) if got[i] != want[i]]
        hint = "; ".join(f"the {axes[i]} would be {got[i]}" for i in diffs) + " if the tensor is right"
    elif len(got) + 1 == len(want) or len(got) == len(want) + 1:
        hint = f"PyTorch layout is {layout}"
    raise ShapeError(
        f"{what} {t.label} has shape {_fmt(got)}, but the layer declares {layout} = {_fmt(want)}",
        t.span,
        hint=hint,
    )


def _pool(ck: _Checker, st: ast.Pool, name: str, shape: Shape) -> typed.Pool:
    kind = f"{st.op}pool"
    opts = _options(st, kind, "pool")
    if st.kernel is not None and "kernel" in opts:
        raise SpecError(
            f"{kind} {name!r}: the kernel is given twice",
            opts["kernel"].span,
            hint=f"write '{kind} {_expr_text(st.kernel)}' or '{kind} kernel {_expr_text(st.kernel)}'",
        )
    kernel_expr = st.kernel if st.kernel is not None else (opts["kernel"].value if "kernel" in opts else None)
    if kernel_expr is None:
        raise SpecError(
            f"{kind} {name!r} needs a kernel size", st.span, hint=f"write '{kind} 2' (for example)"
        )
    _need_signal(shape, kind, name, st.span, None)
    kernel = ck.integer(kernel_expr, "kernel", 1)
    stride = (
        ck.integer(opts["stride"].value, "stride", 1) if "stride" in opts else kernel
    )  # PyTorch's default
    length = None
    if shape.length is not None:
        if shape.length < kernel:
            raise ShapeError(
                f"{kind} {name!r} has no output: kernel {kernel} is longer than the input's "
                f"{shape.length} samples",
                st.span,
                hint="use a smaller kernel",
            )
        length = pool_length(shape.length, kernel, stride)
    return typed.Pool(name, st.span, st.op, kernel, stride, shape, Shape(shape.channels, length))


def _unknown_activation(fn: str, st: ast.Activation) -> SpecError:
    """An unknown name in a layer's place: a misspelled or PyTorch-style layer keyword, or an activation."""
    guess = suggest_keyword(fn)
    if guess in LAYER_KEYWORDS:
        return SpecError(
            f"unknown layer {fn!r} -- did you mean {guess!r}?",
            st.function_span,
            hint=f"lipdsl's layers: {', '.join(LAYER_KEYWORDS)} (docs/language.md)",
        )
    if guess is not None:
        return SpecError(
            f"unknown activation {fn!r} -- did you mean {guess!r}?",
            st.function_span,
            hint=f"for another function, give the bounds of its slope: '{fn} slope [alpha, beta]'",
        )
    return SpecError(
        f"unknown layer or activation {fn!r}",
        st.function_span,
        hint=f"layers: {', '.join(LAYER_KEYWORDS)}; for an activation lipdsl does not know, give the "
        f"bounds of its slope: '{fn} slope [alpha, beta]'",
    )


def _expr_text(e: ast.Expr) -> str:
    return str(e.value)


def _activation(ck: _Checker, st: ast.Activation, name: str, shape: Shape) -> typed.Activation:
    fn = st.function
    opts = _options(st, fn, "activation")
    builtin = ACTIVATIONS.get(fn)
    parameter = None
    param_exact = None
    if st.parameter is not None:
        if builtin is not None and builtin.parameter == "none":
            raise SpecError(f"{fn} takes no parameter", st.parameter.span, hint=f"write '{fn}'")
        parameter, param_exact = ck.number(st.parameter, f"{fn} parameter")
    elif builtin is not None and builtin.parameter == "required":
        raise SpecError(
            f"{fn} needs its parameter", st.function_span, hint=f"write '{fn}(0.01)' (for example)"
        )
    elif builtin is not None and builtin.parameter == "optional":
        parameter = float(builtin.default)

    alpha_expr = beta_expr = None
    if "slope" in opts:
        lo, hi = opts["slope"].value
        alpha, alpha_expr = ck.number(lo, "slope alpha")
        beta, beta_expr = ck.number(hi, "slope beta")
        if alpha > beta:
            raise SpecError(
                f"slope [alpha, beta] needs alpha <= beta, got [{alpha:g}, {beta:g}]",
                opts["slope"].span,
                hint=f"swap them: slope [{beta:g}, {alpha:g}]",
            )
    elif builtin is None:
        raise _unknown_activation(fn, st)
    else:
        if fn == "elu" and parameter < 0:
            raise SpecError(
                f"elu needs alpha >= 0, got {parameter:g}",
                st.parameter.span,
                hint="for a negative alpha give the slope: 'elu(a) slope [alpha, beta]'",
            )
        alpha, beta = builtin.bounds(parameter)
        if param_exact is not None and builtin.exact is not None:
            alpha_expr, beta_expr = builtin.exact(param_exact)
    return typed.Activation(name, st.span, fn, alpha, beta, shape, shape, parameter, alpha_expr, beta_expr)

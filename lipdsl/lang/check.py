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

from lipdsl.errors import ShapeError, SpecError, WeightError
from lipdsl.lang import activations as _activation_table
from lipdsl.lang import ast, typed
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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


@dataclass
class Loaded:
    """A tensor ready for a layer: float64 values, exact values if written with expressions, a label."""

    values: np.ndarray
    expr: Any
    label: str
    span: Span


@dataclass
class Checker:
    source: Source
    allow_outside: bool
    env: dict[str, Any] = field(default_factory=dict)  # let name -> int | float | sympy
    env_lines: dict[str, int] = field(default_factory=dict)
    weights: tuple[str, Span] | None = None  # current default weights file
    files: dict[str, Any] = field(default_factory=dict)  # resolved path -> NpzFile or ndarray
    handles: list = field(default_factory=list)  # open files behind the NpzFiles
    memory: Mapping[str, bytes] | None = None  # weight files in memory (memory_key(rel) -> bytes), no disk
    cache: dict = field(default_factory=dict)  # bare-name tensor entry (sympy) -> (float, exact)
    bare: dict = field(default_factory=dict)  # (name, negated) of a NameTable entry -> (float, exact)
    fractions: dict = field(default_factory=dict)  # let name -> its rational value as a Fraction

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
                        hint=did_you_mean(n.id, _FUNCTIONS) + "functions: " + ", ".join(_FUNCTIONS),
                    )
            elif n.id not in self.env:
                hint = did_you_mean(n.id, self.env) + f"define it first, as in 'let {n.id} = 1/8'"
                raise SpecError(f"unknown name {n.id!r}", n.span, hint=hint)
        value = e.value
        if isinstance(value, ast.Deferred):  # + - * / of numbers and names (the parser's fast let reader)
            fast = value.rational(self.env, self.fractions)
            if fast is not None:
                return fast
            value = value.sympy()
        subs = {sympy.Symbol(n.id): ast.exact(self.env[n.id]) for n in e.names if not n.call}
        if not subs:
            return value
        try:
            return ast.substitute(value, subs)
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

    def tensor(self, src: ast.TensorSource, role: str) -> Loaded:
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
                    hint=did_you_mean(src.key, data.files) + "it holds: " + _listing(data.files),
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
        return Loaded(values, None, label, src.span)

    def inline(self, t: ast.Tensor, role: str) -> Loaded:
        if t.values is not None:  # plain numbers, already float64 (the parser's fast path)
            bad = np.argwhere(~np.isfinite(t.values))
            if bad.size:
                raise SpecError(
                    f"inline {role} entry at index {tuple(int(i) for i in bad[0])}: the number is too large "
                    "for float64",
                    t.span,
                )
            return Loaded(t.values, None, f"the inline {role}", t.span)
        if t.table is not None:  # plain numbers and bare names (the parser's NAMES fast path)
            return self.inline_names(t, role)
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
        return Loaded(values, expr, f"the inline {role}", t.span)

    def inline_names(self, t: ast.Tensor, role: str) -> Loaded:
        """``inline`` of a ``NameTable`` tensor: each distinct (signed) name is evaluated once, in the order
        of first use (so the first failing entry is the one reported, as entry by entry), and the entries
        are filled in with numpy; the exact values (``ExactArray``) are built only if read."""
        table = t.table
        floats, exact = [], []
        for (id_, negated), (span, name_span) in zip(table.symbols, table.first, strict=True):
            f, x = self.bare_name(id_, negated, span, name_span, f"inline {role} entry")
            floats.append(f)
            exact.append(x)
        values = table.numbers.copy()
        named = table.codes >= 0
        values[named] = np.asarray(floats, dtype=np.float64)[table.codes[named]]
        values.setflags(write=False)
        expr = ast.ExactArray(table.shape, table.codes, tuple(exact), table.exact_numbers)
        return Loaded(values, expr, f"the inline {role}", t.span)

    def bare_name(self, id_: str, negated: bool, span: Span, name_span: Span, what: str) -> tuple[float, Any]:
        """(float value, exact value) of a tensor entry that is a bare name, negated or not (cached per spec).

        A name bound to a plain number (``let a = 0.1``; an integer float64 holds exactly) needs no sympy:
        its float is the number, its exact value the number as written (``ast.exact``, built on demand);
        anything else (``let a = 1/3``, ``pi``, an unknown name) is evaluated as ``number`` does, with its
        errors at the name's first use."""
        key = (id_, negated)
        hit = self.bare.get(key)
        if hit is not None:
            return hit
        v = None if id_ in ("pi", "e") else self.env.get(id_)
        if type(v) is float or (type(v) is int and abs(v) <= 2**53):
            v = -v if negated else v
            hit = (float(v) or 0.0, v)  # (a zero is +0.0, as its exact value, 0, evaluates)
        else:
            f, x = self.number(ast.bare_name(id_, "-" if negated else "", span, name_span), what)
            hit = (f, f if x is None else x)
        self.bare[key] = hit
        return hit

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
                    f"ragged inline tensor: this row has shape {format_shape(shape)}, "
                    f"the first has {format_shape(first)}",
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


def format_shape(shape: tuple[int, ...]) -> str:
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


def layer_options(layer, kind: str, family: str) -> dict[str, ast.Option]:
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


def producer(prev: str | None) -> str:
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
    ck = Checker(source, allow_outside, memory=files)
    try:
        return _check(ck, net, source)
    finally:
        ck.close()


def _check(ck: Checker, net: ast.Network, source: Source) -> typed.Network:
    from lipdsl.lang.layers import check_layer, check_residual  # (layers builds on this module)

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
        layer = check_residual(ck, st, name, names, shape, prev) if isinstance(st, ast.Residual) else \
            check_layer(ck, st, name, shape, prev)
        layers.append(layer)
        shape = layer.out_shape
        prev = name
    if not layers:
        raise SpecError("the network has no layers", net.input.span, hint="add layers after the input line")
    title = net.name or (Path(source.path).stem if source.path not in ("<string>", "<stdin>") else "network")
    return typed.Network(title, input_shape, tuple(layers), net.span, source.path)



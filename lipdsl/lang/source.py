"""Read spec text: path -> Source(path, text); Span locates a piece of it (1-based, end exclusive)."""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: Largest spec read (a 1D CNN's spec with inline weights is kilobytes; weights belong in .npz files).
MAX_SPEC_BYTES = 4 << 20


def file_kind(mode: int) -> str | None:
    """What a non-regular file is in words ('a directory', 'a named pipe (FIFO)', ...); None if regular."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else OSError with a plain-words strerror.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` before anything is read: a FIFO never blocks, a
    device such as /dev/zero is never read, and the file checked is the one read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise OSError(exc.errno, "the file name is too long") from None
        raise
    try:
        st = os.fstat(fd)
        kind = file_kind(st.st_mode)
        if kind is not None:
            raise OSError(errno.EINVAL, f"it is {kind}, not a file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"the {what} has {st.st_size:,} bytes, more than lipdsl reads "
                          f"({limit:,})")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise OSError(errno.EFBIG, f"the {what} has more than {limit:,} bytes (lipdsl's limit)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def binary_kind(data: bytes) -> str | None:
    """What binary data is in words ('a zip archive (NumPy .npz weights?)', ...): data with a NUL byte,
    which no text file lipdsl reads (a spec, a certificate) holds; None for anything else."""
    if b"\0" not in data:
        return None
    return ("a zip archive (NumPy .npz weights?)" if data.startswith(b"PK")
            else "a NumPy .npy array" if data.startswith(b"\x93NUMPY") else "a binary file")


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file: 1-based line/column, end exclusive (Lark's convention)."""

    line: int
    col: int
    end_line: int
    end_col: int

    @classmethod
    def of(cls, meta) -> "Span":
        """Span of a Lark ``Meta`` (or Token) with ``propagate_positions=True``."""
        return cls(meta.line, meta.column, meta.end_line, meta.end_column)


@dataclass(frozen=True, slots=True)
class Source:
    """The text of a spec and where it came from (``path`` is what error messages print)."""

    path: str
    text: str

    def __post_init__(self) -> None:
        # The text as the parser and the error display both see it: a leading byte-order mark (Notepad's
        # UTF-8) dropped, and every line ending, \r\n or an old Mac's lone \r, made \n (Python's universal
        # newlines). Lark counts lines by \n only, so the line and column it reports are the line shown.
        text = self.text
        if text.startswith("\ufeff"):
            text = text[1:]
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text is not self.text:
            object.__setattr__(self, "text", text)

    @classmethod
    def read(cls, path: str | Path) -> "Source":
        """Read a spec file as UTF-8 (a leading byte-order mark dropped, line endings made \n); undecodable
        bytes become U+FFFD so the parser can point at them.

        Raises
        ------
        OSError
            With a plain-words ``strerror``: not a regular file (directory, named pipe, device, socket: never
            read, and a FIFO never blocks), more than ``MAX_SPEC_BYTES``, or binary data (a NUL byte, e.g. an
            ``.npz`` of weights given as the spec).
        """
        data = read_regular(path, MAX_SPEC_BYTES, "spec")
        kind = binary_kind(data)
        if kind is not None:
            raise OSError(errno.EINVAL, f"it is {kind}, not a lipdsl spec (a text file such as net.lip)")
        return cls(str(path), data.decode("utf-8", errors="replace"))

    @property
    def directory(self) -> Path:
        """Directory that relative weight paths are resolved against."""
        return Path(self.path).resolve().parent if self.path not in ("<string>", "<stdin>") else Path.cwd()

    def line(self, number: int) -> str:
        """Source line ``number`` (1-based) without its newline, or '' if out of range."""
        # Lark counts lines by "\n" only; str.splitlines() would also split on \x0c, \x85, \u2028, ...
        lines = self.text.split("\n")
        return lines[number - 1] if 1 <= number <= len(lines) else ""

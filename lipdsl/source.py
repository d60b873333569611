"""Read spec text: path -> Source(path, text); Span locates a piece of it (1-based, end exclusive)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    @classmethod
    def read(cls, path: str | Path) -> "Source":
        """Read a spec file as UTF-8; undecodable bytes become U+FFFD so the parser can point at them."""
        data = Path(path).read_bytes()
        return cls(str(path), data.decode("utf-8", errors="replace"))

    @property
    def directory(self) -> Path:
        """Directory that relative weight paths are resolved against."""
        return Path(self.path).resolve().parent if self.path not in ("<string>", "<stdin>") else Path.cwd()

    def line(self, number: int) -> str:
        """Source line ``number`` (1-based) without its newline, or '' if out of range."""
        # Lark counts lines by "\n" only; str.splitlines() would also split on \x0c, \x85, \u2028, ...
        lines = self.text.split("\n")
        return lines[number - 1].rstrip("\r") if 1 <= number <= len(lines) else ""

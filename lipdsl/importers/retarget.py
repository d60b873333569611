"""Point an architecture spec at a weights file: (Source, ast.Network, file name) -> Retargeted (the new
spec's text, and the errors of its check pointed back into the architecture's lines)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lipdsl.errors import LipdslError
from lipdsl.lang import ast
from lipdsl.lang.source import Source, Span


@dataclass(frozen=True)
class Retargeted:
    """The architecture spec ``arch`` with every ``weights "..."`` line (at lines ``found``) naming
    ``weights`` instead, or one such line put before line ``first`` (its first layer) when it has none;
    ``header`` lines before it all.

    ``import --like`` and ``sweep --like`` both build the spec they check so, and report its errors at the
    lines of ``arch`` (``locate``).
    """

    arch: Source
    weights: str
    found: tuple[int, ...]
    first: int
    header: tuple[str, ...] = ()

    @classmethod
    def of(cls, arch: Source, tree: ast.Network, weights: str, *, header: tuple[str, ...] = ()) -> Retargeted:
        """``arch`` (parsed: ``tree``) retargeted at ``weights``."""
        found = tuple(st.span.line for st in tree.body if isinstance(st, ast.Weights))
        first = next((st.span.line for st in tree.body
                      if not isinstance(st, (ast.Input, ast.Let, ast.Weights))), len(_lines(arch.text)) + 1)
        return cls(arch, weights, found, first, header)

    def renamed(self, weights: str) -> Retargeted:
        """The same spec naming another weights file."""
        return replace(self, weights=weights)

    @property
    def inserted(self) -> int | None:
        """The line of ``arch`` the new ``weights`` line is put before; None if there is none."""
        return None if self.found else self.first

    @property
    def text(self) -> str:
        """The new spec's text."""
        lines = _lines(self.arch.text)
        for line in self.found:
            lines[line - 1] = f'weights "{self.weights}"'
        if self.inserted is not None:
            lines.insert(self.inserted - 1, f'weights "{self.weights}"')
        return "\n".join([*self.header, *lines]) + "\n"

    def locate(self, err: LipdslError, *, checkpoint: str | None = None,
               written: str | None = None) -> LipdslError:
        """``err``, raised by the check of ``text``, pointed into ``arch`` (``err.source`` set to it): at the
        same place, or the whole line where that line was rewritten, or no line for an added ``weights``
        line.

        Its message and hint name what ``arch`` means, not the name put in: a tensor ``in`` the weights file
        as one of ``checkpoint`` (e.g. ``"the checkpoint 'a.pt'"``), the weights file itself as ``written``
        (the file to be written).
        """
        def line(g: int) -> int | None:  # the line of arch that line g of the new spec comes from
            j = g - len(self.header)
            if j < 1 or j == self.inserted:
                return None
            return j - 1 if self.inserted is not None and j > self.inserted else j

        def text(s: str | None) -> str | None:
            if s is None:
                return None
            if checkpoint is not None:
                s = s.replace(f" in {self.weights!r}", f" in {checkpoint}")
            if written is not None:
                s = s.replace(repr(self.weights), repr(written))
            return s

        span = err.span
        if span is not None:
            first, last = line(span.line), line(span.end_line)
            if first is None:
                span = None
            elif first in self.found:  # a whole new line: its columns are not arch's
                span = Span(first, 1, first, len(self.arch.line(first)) + 1)
            else:
                span = Span(first, span.col, last or first,
                            span.end_col if last else len(self.arch.line(first)) + 1)
        err.message = text(err.message) or ""
        err.args = (err.message,)
        err.hint = text(err.hint)
        err.span = span
        err.source = self.arch
        return err


def _lines(text: str) -> list[str]:
    """Lark's lines of ``text``: split at ``\\n`` only (``splitlines`` would also split at U+2028, ``\\x0c``,
    ``\\x85``...), without the empty one after a final newline."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines

"""Point an architecture spec at a weights file: (Source, ast.Network, file name) -> Retargeted (the new
spec's text, and the errors of its check pointed back into the architecture's lines)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from lipdsl.errors import LipdslError, OutsideError, SpecError
from lipdsl.lang import ast
from lipdsl.lang.source import Source, Span
from lipdsl.lang.weights import leaves_directory, tensor_refs


@dataclass(frozen=True)
class Retargeted:
    """The architecture spec ``arch`` with every ``weights "..."`` line (at lines ``found``) naming
    ``weights`` instead, or one such line put before line ``first`` (its first layer) when it has none; the
    files it names itself (``bias "extra.npy"``, ``"f.npz":key``) ``moved``: (line, column of the quoted
    name, the name ``arch`` writes, the name from the new spec's folder); ``header`` lines before it all.

    ``import --like`` and ``sweep --like`` both build the spec they check so, and report its errors at the
    lines of ``arch`` (``locate``).
    """

    arch: Source
    weights: str
    found: tuple[int, ...]
    first: int
    moved: tuple[tuple[int, int, str, str], ...] = ()
    header: tuple[str, ...] = ()

    @classmethod
    def of(cls, arch: Source, tree: ast.Network, weights: str, *, folder: str | os.PathLike | None = None,
           allow_outside: bool = False, header: tuple[str, ...] = ()) -> Retargeted:
        """``arch`` (parsed: ``tree``) retargeted at ``weights``, for a spec in ``folder`` (default: beside
        ``arch``).

        The files ``arch`` names itself are files beside ``arch``: from another ``folder`` their relative
        names are rewritten to lead there.

        Raises
        ------
        SpecError
            ``arch`` has ``weights`` lines naming two different files: which of them the checkpoint replaces
            would be a guess (every line naming the first file is retargeted).
        OutsideError
            Such a name would leave ``folder`` (without ``allow_outside``), e.g. ``extra.npy`` beside
            ``arch/arch.lip`` read from a spec in ``out/``: ``../arch/extra.npy``.
        """
        lines = [st for st in tree.body if isinstance(st, ast.Weights)]
        other = next((st for st in lines if st.path != lines[0].path), None)
        if other is not None:  # (retargeting it would silently replace that file's tensors too)
            raise SpecError(
                f"the architecture spec names a second weights file {other.path!r} (its first is "
                f"{lines[0].path!r}): --like puts the checkpoint in place of one weights file, and which "
                "one is ambiguous",
                other.span,
                hint=f'write "{other.path}":KEY for the tensors that file keeps, or remove this line to take '
                "them from the checkpoint")
        found = tuple(st.span.line for st in lines)
        first = next((st.span.line for st in tree.body
                      if not isinstance(st, (ast.Input, ast.Let, ast.Weights))), len(_lines(arch.text)) + 1)
        moved = []
        home = arch.directory
        there = home if folder is None else Path(folder).resolve()
        if there != home:
            for ref in tensor_refs(tree):
                rel = ref.file
                if rel is None or os.path.isabs(rel) or rel.startswith("~") or (
                        not allow_outside and leaves_directory(rel)):
                    continue  # an absolute name reads the same file from anywhere; one leaving arch's
                    # folder is refused by the check, at arch's own words
                new = os.path.relpath(home / rel, there).replace(os.sep, "/")
                if not allow_outside and leaves_directory(new):
                    raise OutsideError(
                        f"weight file {rel!r} (beside the architecture spec) would be {new!r} from the spec "
                        "to write, outside that spec's directory", ref.span,
                        remedy=f"write the spec into the architecture spec's folder, or put the architecture "
                        f"spec and {rel!r} in the folder of the spec to write")
                quoted = arch.line(ref.span.line)[ref.span.col - 1:]
                assert quoted.startswith(f'"{rel}"'), quoted  # the reference starts with the quoted name
                moved.append((ref.span.line, ref.span.col, rel, new))
        return cls(arch, weights, found, first, tuple(moved), header)

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
        for line, col, rel, new in sorted(self.moved, reverse=True):  # right to left: columns stay valid
            t = lines[line - 1]
            lines[line - 1] = t[: col - 1] + f'"{new}"' + t[col - 1 + len(rel) + 2:]
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

        Its message and hint name what ``arch`` writes, not the names put in: the files it names itself
        (``moved``), a tensor ``in`` the weights file as one of ``checkpoint`` (e.g. ``"the checkpoint
        'a.pt'"``), the weights file itself as ``written`` (the file to be written).
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
            for _, _, rel, new in self.moved:
                s = s.replace(repr(new), repr(rel))
            return s

        def col(ln: int, c: int) -> int:  # the column of arch's line ln that column c of the new one is at
            shift = 0
            for _, start, rel, new in sorted(m for m in self.moved if m[0] == ln):
                at = start + shift  # where the quoted name starts in the new line
                if c < at:
                    break
                if c < at + len(new) + 2:  # inside it: its start
                    return start
                shift += len(new) - len(rel)
            return c - shift

        span = err.span
        if span is not None:
            first, last = line(span.line), line(span.end_line)
            if first is None:
                span = None
            elif first in self.found:  # a whole new line: its columns are not arch's
                span = Span(first, 1, first, len(self.arch.line(first)) + 1)
            elif last is None:
                span = Span(first, col(first, span.col), first, len(self.arch.line(first)) + 1)
            else:
                span = Span(first, col(first, span.col), last, col(last, span.end_col))
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

"""Errors a user can cause, with an optional Span and hint; ``render`` gives ``path:line:col: error: ...``."""

from __future__ import annotations

import difflib
from typing import Any

from lipdsl.lang.source import Source, Span


class LipdslError(Exception):
    """A user-facing error. Raised with a Span where one exists; rendered once, by the CLI."""

    exit_code = 1
    source: Source | None = None  # set by lipdsl.lang.load.load_network so callers can render(err.source)

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def render(self, source: Source | None = None) -> str:
        """``path:line:col: error: message``, the source line, a caret line and an optional hint."""
        if source is None:
            head = f"error: {self.message}"
            return head + (f"\n  hint: {self.hint}" if self.hint else "")
        if self.span is None:
            out = [f"{source.path}: error: {self.message}"]
        else:
            out = [f"{source.path}:{self.span.line}:{self.span.col}: error: {self.message}"]
            text = source.line(self.span.line)
            if len(text) > 200:  # keep pathological lines readable
                start = max(0, self.span.col - 80)
                text, col = text[start : start + 160], self.span.col - start
            else:
                col = self.span.col
            gutter = f"{self.span.line:>5} | "
            out.append(gutter + text)
            width = (
                (self.span.end_col - self.span.col)
                if self.span.end_line == self.span.line
                else len(text) - col + 1
            )
            width = max(1, min(width, max(1, len(text) - col + 1)))
            out.append(" " * (len(gutter) - 2) + "| " + " " * (col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class ParseError(LipdslError):
    """The text is not valid lipdsl syntax."""


class ShapeError(LipdslError, ValueError):
    """Shapes, channels or weights do not fit together."""


class SpecError(LipdslError):
    """The spec is well-formed but says something invalid: an unknown name, a duplicate layer, a bad slope."""


class WeightError(LipdslError):
    """A weight file or tensor is missing, unsafe, or holds non-finite numbers."""


class OutsideError(WeightError):
    """A weight file outside the spec's directory, refused: the hint is ``remedy`` (a fix that needs no
    permission), then the option that allows such files, as the caller spells it (``allow``)."""

    def __init__(self, message: str, span: Span | None, remedy: str, option: str | None = "--allow-outside"):
        super().__init__(message, span)
        self.remedy = remedy
        self.allow(option)

    def allow(self, option: str | None) -> None:
        """Name ``option`` in the hint as the way to allow the file; None for a caller without one (``lipdsl
        import``): the hint is the remedy alone."""
        self.hint = self.remedy if option is None else \
            f"{self.remedy}, or pass {option} if you trust this spec (it may read any file you can)"


class LoweringError(LipdslError):
    """A layer cannot be realized as a state-space system."""


class UnsupportedError(LipdslError):
    """The network uses a construct the chosen method cannot bound soundly."""


class SolveError(LipdslError):
    """The solver failed, or is not installed; no bound is reported."""

    exit_code = 3


class CertificateError(LipdslError):
    """The solver's point could not be certified; no bound is reported."""

    exit_code = 3


class LimitError(LipdslError):
    """The problem exceeds a resource limit (``--max-lmi``); refused before anything large is allocated."""

    exit_code = 3


class TimeLimitError(SolveError):
    """The command's time limit (``--timeout``) passed; no bound is reported. Deliberately not an
    ArithmeticError or ValueError, which solvers catch and retry on."""


def did_you_mean(word: str, choices) -> str:
    """``"did you mean 'x'? "`` for the choice closest to ``word`` (difflib), else ``""``: a hint's start."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def shorten(v: Any) -> str:
    """``str(v)``, shortened for messages (an exact value may have thousands of digits)."""
    text = str(v)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-28:]} ({len(text)} characters)"

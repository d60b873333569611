"""Error rendering: every specs/bad/*.lip gives exit 1 and exactly its golden .err (location, caret, hint)."""

from __future__ import annotations


import pytest

from lipdsl.app.cli import main
from lipdsl.errors import LipdslError
from lipdsl.lang.source import Source, Span
from repo_paths import ROOT

BAD = sorted((ROOT / "specs" / "bad").glob("*.lip"))


def test_there_are_enough_bad_specs():
    assert len(BAD) >= 10
    for spec in BAD:
        assert spec.with_suffix(".err").is_file(), f"{spec.name} has no golden .err"


@pytest.mark.parametrize("spec", BAD, ids=lambda s: s.name)
def test_bad_spec_matches_golden(spec, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # messages name the spec as given: a path relative to the repository
    code = main(["check", spec.relative_to(ROOT).as_posix()])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    assert err == spec.with_suffix(".err").read_text(encoding="utf-8")
    first = err.splitlines()[0]
    assert first.startswith(f"specs/bad/{spec.name}:") and ": error: " in first


def test_render_format():
    src = Source("x.lip", "input 2\nconv1d c2 in=8\n")
    err = LipdslError("something is wrong", Span(2, 8, 2, 10), hint="fix it")
    assert err.render(src) == (
        "x.lip:2:8: error: something is wrong\n    2 | conv1d c2 in=8\n      |        ^~\n  hint: fix it"
    )


def test_caret_line_counts_newlines_as_lark_does():
    """A form feed or U+2028 inside a line must not shift the quoted source line (Lark counts only \\n)."""
    from lipdsl.errors import LipdslError
    from lipdsl.lang.source import Source, Span

    src = Source("x.lip", "network a\x0c# comment\u2028more\ninput 1 x 4\nbogus line\n")
    text = LipdslError("bad", Span(3, 1, 3, 6)).render(src)
    assert "    3 | bogus line" in text

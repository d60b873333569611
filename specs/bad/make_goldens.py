"""Rewrite the golden ``*.err`` next to every ``*.lip`` here: run from the repository root, then review
the diff.

    python specs/bad/make_goldens.py
"""
import contextlib
import io
import sys
from pathlib import Path

from lipdsl.app.cli import main

for spec in sorted(Path("specs/bad").glob("*.lip")):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["check", spec.as_posix()])
    if code != 1:
        sys.exit(f"{spec}: exit code {code}, expected 1")
    spec.with_suffix(".err").write_text(err.getvalue(), encoding="utf-8")
    print(f"wrote {spec.with_suffix('.err')}")

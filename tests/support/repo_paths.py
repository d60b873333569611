"""Where things are, for the tests and bench scripts: the repository root, the shipped specs, the tests'
own data and golden files, and the shared cases beside the repository (``../shared``, absent in a clone)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
SPECS = ROOT / "specs"
DATA = TESTS / "data"
GOLDEN = TESTS / "golden"
SHARED = ROOT.parent / "shared"

"""Shared test set-up: single-threaded BLAS (as the CLI runs), the helper modules of ``tests/support`` on
``sys.path``, and fixtures that several stages' tests use (the specs folder, the ECG spec's certified bound,
a CLI runner).

The tests sit in one folder per room of the package (``tests/lang``, ``tests/model``, ...), end-to-end
tests in ``tests/e2e``; pytest imports them with ``--import-mode=importlib`` (pyproject.toml), so two
folders may hold files of the same name, and test modules cannot import each other.
"""

import os
import sys
from pathlib import Path

import pytest

# The CLI's subprocesses inherit these; the LMIs are small and BLAS threads would only contend.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# The shared helpers (nets, cert_cases, fuzzing, sweeping, repo_paths) are imported by their own names.
_SUPPORT = str(Path(__file__).resolve().parent / "support")
if _SUPPORT not in sys.path:
    sys.path.insert(0, _SUPPORT)

from repo_paths import SPECS  # noqa: E402


@pytest.fixture(scope="session")
def specs() -> Path:
    """The shipped specs folder."""
    return SPECS


@pytest.fixture(scope="session")
def ecg_spec_bound() -> float:
    """The certified bound of ``specs/ecg.lip`` as the pipeline gives it (imports are compared against it)."""
    from lipdsl.pipeline import solve_network
    from lipdsl.lang.load import load_network

    _, net = load_network(SPECS / "ecg.lip")
    cert = solve_network(net).certificate
    assert cert.verified
    return cert.lipschitz


@pytest.fixture
def cli():
    """Run the ``lipdsl`` command in-process: ``cli("solve", path, "--json")`` -> click's Result."""
    from click.testing import CliRunner

    from lipdsl.app.cli import cli as command

    def run(*args: str, env: dict | None = None):
        return CliRunner(env=env).invoke(command, [str(a) for a in args], catch_exceptions=False)

    return run

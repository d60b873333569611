"""Shared test set-up: single-threaded BLAS (as the CLI runs), the repository's paths, and fixtures that
several stages' tests use (the ECG spec's certified bound, a CLI runner)."""

import os
from pathlib import Path

import pytest

# The CLI's subprocesses inherit these; the LMIs are small and BLAS threads would only contend.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


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

"""Real trained models in frequency mode (issue 22): the trace term that makes the optimum unique, the
SDPA chatter kept off the terminal, and (slow) the trained FCN/TCN cases that used to stop 'unknown'."""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
import pytest

from lipdsl.sdp import problem as sdp_module
from lipdsl.pipeline import solve_network
from lipdsl.lang.check import check
from lipdsl.lang.load import load_network
from lipdsl.model.lower import lower
from lipdsl.lang.parse import parse
from lipdsl.sdp.build import build_sdp
from lipdsl.sdp.problem import FREQUENCY_TRACE
from lipdsl.solvers.sdpa import _quiet_fds, read_sdpa, write_sdpa
from lipdsl.lang.source import Source
from repo_paths import ROOT

SPECS = ROOT / "specs"


def _net(channels=6, kernel=5, depth=3, seed=0):
    """A random fully convolutional net with GAP and a dense head (wide enough for the frequency form)."""
    rng = np.random.default_rng(seed)
    lines = ["input 1 x 32"]
    c = 1
    for _ in range(depth):
        w = rng.standard_normal((channels, c, kernel)) / np.sqrt(c * kernel)
        lines.append(f"conv1d {c} -> {channels}, kernel {kernel}, padding causal, weight {w.tolist()}")
        lines.append("relu")
        c = channels
    lines += [
        "global_avgpool",
        f"dense {channels} -> 2, weight {rng.standard_normal((2, channels)).tolist()}",
    ]
    source = Source("net.lip", "\n".join(lines) + "\n")
    return check(parse(source), source)


def test_solver_objective_adds_the_trace_term_in_frequency_mode_only():
    low = lower(_net())
    exact = build_sdp(low)
    np.testing.assert_array_equal(exact.solver_objective(), exact.objective())
    gridded = build_sdp(low, frequencies=9)
    assert gridded.storage
    c, c0 = gridded.solver_objective(), gridded.objective()
    weights = [v for v in gridded.variables if v.role == "X" and v.offset < gridded.n]
    assert weights
    total = sum(v.n for v in weights)
    extra = c - c0
    assert extra.sum() == pytest.approx(FREQUENCY_TRACE)  # eps * (number of diagonal entries)
    for v in weights:  # exactly the diagonal entries of each X
        diag = np.zeros(v.dim)
        diag[[i * v.n - i * (i - 1) // 2 for i in range(v.n)]] = FREQUENCY_TRACE / total
        np.testing.assert_allclose(extra[v.slice], diag, rtol=1e-15)
        np.testing.assert_allclose(v.value(extra), np.eye(v.n) * FREQUENCY_TRACE / total, rtol=1e-15)
    assert c[gridded.rho.offset] == 1.0


def test_sdpa_export_keeps_rho_as_the_objective(tmp_path):
    gridded = build_sdp(lower(_net()), frequencies=9)
    write_sdpa(gridded, tmp_path / "p.dat-s")
    data = read_sdpa(tmp_path / "p.dat-s")
    c = np.asarray(data.c).ravel()
    assert c[gridded.rho.offset] == 1.0 and np.count_nonzero(c) == 1


@pytest.mark.solver
def test_trace_term_costs_little_against_the_exact_objective(monkeypatch):
    """The certified bound with the trace term is within 1e-3 of the one without (both certified)."""
    net = _net(channels=6, kernel=5)
    with_term = solve_network(net, frequencies=9, accept_unconverged=True).certificate
    monkeypatch.setattr(sdp_module, "FREQUENCY_TRACE", 0.0)
    without = solve_network(net, frequencies=9, accept_unconverged=True).certificate
    assert with_term.verified and without.verified
    assert abs(with_term.lipschitz / without.lipschitz - 1) <= 1e-3


def test_quiet_fds_keeps_c_level_output_off_the_terminal(capfd):
    libc = ctypes.CDLL(None)
    with _quiet_fds(True) as quiet:
        os.write(1, b"raw stdout\n")
        os.write(2, b"raw stderr\n")
        libc.printf(b"buffered C stdout %d\n", 7)  # stays in the C library's buffer until flushed
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert "raw stdout" in quiet.text and "raw stderr" in quiet.text and "buffered C stdout 7" in quiet.text
    os.write(1, b"after\n")
    assert capfd.readouterr().out == "after\n"  # fd 1 is the terminal's again


def test_quiet_fds_from_threads_restores_the_descriptors(capfd):
    before = (os.fstat(1).st_ino, os.fstat(2).st_ino)

    def work():
        with _quiet_fds(True):
            os.write(1, b"x\n")
            os.write(2, b"y\n")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (os.fstat(1).st_ino, os.fstat(2).st_ino) == before
    assert capfd.readouterr() == ("", "")


# -- issue 22's real-model cases: certified without --accept-unconverged (minutes each on 2 cores) -----------


@pytest.mark.slow
@pytest.mark.parametrize("frequencies", [17, 33])
def test_trained_plain_tcn_certifies_in_frequency_mode(frequencies):
    _, net = load_network(SPECS / "tcn_plain.lip")
    result = solve_network(
        net, frequencies=frequencies
    )  # SolveError if it stops short (no accept_unconverged)
    assert result.certificate.verified


@pytest.mark.slow
def test_trained_fcn_32_64_32_certifies_in_frequency_mode():
    pytest.importorskip("onnx")
    from lipdsl.importers.importer import import_onnx

    net = import_onnx(SPECS / "weights" / "trained" / "fcn_32_64_32.torchscript.onnx").to_network()
    result = solve_network(net, frequencies=17)  # SolveError if it stops short (no accept_unconverged)
    assert result.certificate.verified

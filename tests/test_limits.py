"""Resource limits and solver failures: every failure path exits 3 with the solver's words and a hint, and
`lipdsl solve` never exits 0 without printing a certified bound."""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import lipdsl.api
from lipdsl.api import problem_size, solve_network
from lipdsl.cli import cli
from lipdsl.errors import LimitError
from lipdsl.load import load_network
from lipdsl.sdp import Factored, Lmi

SPECS = Path(__file__).resolve().parents[1] / "specs"
ECG = str(SPECS / "ecg.lip")
REFERENCE = 109.12299234900972


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "net.lip"
    path.write_text(text)
    return str(path)


# -- resource limits (no solver needed) -------------------------------------------------------------------


def test_problem_size_matches_the_built_sdp():
    from lipdsl.lower import lower
    from lipdsl.sdp import build_sdp

    _, net = load_network(ECG)
    size = problem_size(net)
    sdp = build_sdp(lower(net), inverse=False)
    assert size.largest_lmi == max(lmi.size for lmi in sdp.lmis) == 156
    # the inverse forms (sdp module docstring) only shrink it: the estimate is an upper one
    assert max(lmi.size for lmi in build_sdp(lower(net)).lmis) == 65
    # the estimate ignores the substituted last output weight, so it may only over-count
    assert size.variables >= sdp.n


def test_max_lmi_refuses_before_allocating(tmp_path):
    spec = write(
        tmp_path,
        "input 1 x 4\nconv1d c: 1 -> 1, kernel 2, dilation 10^12, padding causal, weight [[[1, 1]]]\nrelu\n",
    )
    t0 = time.perf_counter()
    res = run("solve", spec)
    assert time.perf_counter() - t0 < 5
    assert res.exit_code == 3 and res.stdout == ""
    assert (
        "would have 1000000000002 rows (1000000000000 states + 1 inputs + 1 outputs), more than "
        "--max-lmi 4000" in res.stderr
    )
    assert "net.lip:2:1: error:" in res.stderr and "hint: raise --max-lmi" in res.stderr


def test_max_lmi_option_and_variable_limit(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((64, 64, 9)))
    spec = write(
        tmp_path, 'input 64 x 32\nconv1d c: 64 -> 64, kernel 9, padding causal, weight "w.npy"\nrelu\n'
    )
    res = run("solve", "--max-lmi", "100", spec)
    assert res.exit_code == 3 and "would have 640 rows (512 states + 64 inputs + 64 outputs)" in res.stderr
    res = run("solve", spec)  # 640 rows pass --max-lmi, but P alone has 512*513/2 variables
    assert res.exit_code == 3 and "the SDP would have 131393 variables, more than 20000" in res.stderr
    with pytest.raises(LimitError):
        solve_network(load_network(spec)[1], max_variables=1000)


# -- solver failures --------------------------------------------------------------------------------------


@pytest.mark.solver
def test_timeout_stops_the_solver_and_restores_the_alarm(monkeypatch):
    import cvxopt.solvers

    real = cvxopt.solvers.conelp

    def slow(*args, **kwargs):  # a solver that would run for a minute
        time.sleep(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(cvxopt.solvers, "conelp", slow)
    before = signal.getsignal(signal.SIGALRM)
    t0 = time.perf_counter()
    res = run("solve", "--timeout", "0.5", ECG)
    assert time.perf_counter() - t0 < 10
    assert res.exit_code == 3 and res.stdout == ""
    assert "cvxopt did not finish within the time limit of 0.5 s" in res.stderr and "hint:" in res.stderr
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.solver
def test_timeout_that_is_not_reached_changes_nothing():
    res = run("solve", "--json", "--timeout", "300", ECG)
    assert res.exit_code == 0 and json.loads(res.stdout)["certified"] is True


@pytest.mark.solver
def test_max_iterations_exits_3_unless_the_loose_bound_is_accepted():
    res = run("solve", "--max-iterations", "1", ECG)
    assert res.exit_code == 3 and res.stdout == ""
    assert "cvxopt stopped after 1 iterations without converging (status 'unknown')" in res.stderr
    assert "--accept-unconverged" in res.stderr
    res = run("solve", "--json", "--max-iterations", "1", "--accept-unconverged", ECG)
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    # sound: an early iterate, repaired, still bounds the true constant from above
    assert out["certified"] and out["claimed_status"] == "unknown" and out["lipschitz"] >= REFERENCE


@pytest.mark.solver
def test_impossible_lmi_is_reported_infeasible(monkeypatch):
    real = lipdsl.api.build_sdp

    def impossible(low, **options):
        sdp = real(low, **options)
        empty = sp.csc_matrix((1, 0))
        lmi = Lmi(
            "impossible",
            None,
            (("x", 1),),
            np.array([[-1.0]]),
            sp.csc_matrix((1, sdp.n)),
            Factored(empty, empty, np.zeros(0), np.zeros(0, dtype=np.int64)),
        )
        return replace(sdp, lmis=sdp.lmis + (lmi,))

    monkeypatch.setattr(lipdsl.api, "build_sdp", impossible)
    res = run("solve", str(SPECS / "lipsdp_random.lip"))
    assert res.exit_code == 3 and res.stdout == ""
    assert "CVXOPT reports the SDP primal infeasible (no multipliers satisfy the LMIs)" in res.stderr
    assert "hint: try another solver" in res.stderr


@pytest.mark.solver
def test_numerical_failure_before_the_first_iterate(monkeypatch):
    import cvxopt.solvers

    def singular(*args, **kwargs):
        raise ArithmeticError("singular KKT matrix")

    monkeypatch.setattr(cvxopt.solvers, "conelp", singular)
    res = run("solve", ECG)
    assert res.exit_code == 3 and res.stdout == ""
    assert (
        "CVXOPT failed before its first iterate: singular KKT matrix" in res.stderr and "hint:" in res.stderr
    )


@pytest.mark.solver
def test_solver_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "sdpap", None)  # import sdpap -> ImportError
    res = run("solve", "--solver", "sdpa", ECG)
    assert res.exit_code == 3 and res.stdout == ""
    assert "sdpa-python is not installed" in res.stderr and "hint: pip install sdpa-python" in res.stderr


@pytest.mark.solver
@pytest.mark.parametrize(
    "args",
    [
        ["--max-iterations", "1"],
        ["--max-iterations", "3"],
        ["--max-iterations", "8"],
        ["--tol", "1e-2"],
        [],
        ["--solver", "mosek"],  # known, not installed: exit 3 (an unknown name is a usage error, 2)
        ["--max-lmi", "10"],
        ["--timeout", "0.001"],
    ],
)
def test_exit_0_only_with_a_certified_bound_on_stdout(args):
    for spec in (ECG, str(SPECS / "lipsdp_random.lip")):
        res = run("solve", *args, spec)
        assert res.exit_code in (0, 3), res.output
        if res.exit_code == 0:
            assert "(certified)" in res.stdout
        else:
            assert "Lipschitz upper bound" not in res.stdout and "(certified)" not in res.stdout


def test_max_lmi_counts_the_lmis_after_merging_linear_layers(tmp_path):
    """An overlapping average pool before flatten -> dense is folded into the dense layer (its LMI reads the
    unpooled signal: 4 x 32 = 128 inputs where the typed estimate counts the pooled 4 x 15 = 60): the limit
    is checked again on the lowered systems, before the SDP is built, with the layer's position."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", c=rng.normal(size=(4, 4, 5)), fc=rng.normal(size=(3, 60)))
    spec = write(
        tmp_path,
        'input 4 x 32\nweights "w.npz"\nconv1d c: 4 -> 4, kernel 5, padding causal, weight c\nrelu\n'
        "avgpool kernel 4, stride 2\nflatten\ndense fc: 60 -> 3, weight fc\n",
    )
    _, net = load_network(spec)
    assert problem_size(net).largest_lmi < 100
    res = run("solve", "--max-lmi", "100", spec)
    assert res.exit_code == 3 and res.stdout == ""
    assert "the LMI of 'fc' would have 128 rows (0 states + 128 inputs) after merging" in res.stderr
    assert "net.lip:7:1: error:" in res.stderr and "hint: raise --max-lmi" in res.stderr
    res = run("solve", "--max-lmi", "128", spec)
    assert res.exit_code == 0 and "(certified)" in res.stdout


def test_variable_limit_counts_the_merged_storage(tmp_path):
    """Two linear causal convs merged into one FIR: its P has (2 (k-1) c)^2/2 variables, about twice the two
    separate P together; the variable limit is checked on the lowered systems too."""
    from lipdsl.api import lowered_size
    from lipdsl.lower import lower

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", a=rng.normal(size=(4, 4, 5)), b=rng.normal(size=(4, 4, 5)))
    spec = write(
        tmp_path,
        'input 4 x 32\nweights "w.npz"\nconv1d a: 4 -> 4, kernel 5, padding causal, weight a\n'
        "conv1d b: 4 -> 4, kernel 5, padding causal, weight b\nrelu\n",
    )
    _, net = load_network(spec)
    estimate, merged = problem_size(net), lowered_size(lower(net))
    assert merged.variables > estimate.variables
    limit = (estimate.variables + merged.variables) // 2
    with pytest.raises(LimitError, match="variables after merging linear layers"):
        solve_network(net, max_variables=limit)
    assert solve_network(net, max_variables=merged.variables).certificate.verified

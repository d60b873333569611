"""The solver registry (``lipdsl.solvers.registry``) and the ``hkm`` backend on the dissipative SDP: the same
certified bounds as CVXOPT, the CLI's and the API's solver names from the one registry."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import lipdsl
from lipdsl.app.cli import cli
from lipdsl.errors import LipdslError, TimeLimitError
from lipdsl.lang.load import load_network
from lipdsl.pipeline import solve_network
from lipdsl.solvers import registry
from lipdsl.solvers.solution import on_iteration
from lipdsl.solvers.solve import solve
from nets import Builder, random_cnn
from repo_paths import ROOT

ECG = ROOT / "specs" / "ecg.lip"
ECG_REFERENCE = 109.12299234900972


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_registry_names_backends_and_hints():
    assert registry.names()[:4] == ("cvxopt", "cvxopt-generic", "hkm", "sdpa")
    for name, backend in registry.SOLVERS.items():
        assert backend.name == name and backend.summary and backend.install
        module, function = backend.run.split(":")
        assert (ROOT / "lipdsl" / "solvers" / f"{module}.py").is_file(), backend.run
    assert callable(registry.lookup("hkm").function())
    assert registry.lookup("qics").picos == "qics"
    assert registry.lookup("picos-cvxopt").picos == "cvxopt"  # any PICOS solver by its PICOS name
    assert registry.structured("cvxopt") and registry.structured("hkm")
    assert not registry.structured("cvxopt-generic") and not registry.structured("picos-cvxopt")


@pytest.mark.parametrize("bad, close", [("hkn", "hkm"), ("cvxpot", "cvxopt"), ("nothing-like-it", None)])
def test_unknown_solver_names_are_refused_with_a_suggestion(bad, close):
    with pytest.raises(LipdslError) as err:
        registry.lookup(bad)
    assert f"unknown solver {bad!r}" in err.value.message
    assert (f"did you mean {close!r}?" in err.value.message) == (close is not None)
    assert "hkm" in err.value.hint


@pytest.mark.solver
def test_ecg_with_hkm_certifies_the_reference_bound():
    _, net = load_network(ECG)
    result = solve_network(net, solver="hkm")
    sol, cert = result.solution, result.certificate
    assert sol.solver == "hkm" and sol.claimed_status == "optimal" and sol.iterations > 0
    # 'optimal' means both within the pipeline's default tol (1e-7)
    assert 0 <= sol.relative_gap <= 1e-7 and 0 <= sol.residual <= 1e-7
    assert cert.verified
    assert abs(cert.lipschitz - ECG_REFERENCE) / ECG_REFERENCE <= 1e-6


@pytest.mark.solver
@pytest.mark.parametrize("seed", [0, 3, 5, 7])
def test_hkm_agrees_with_cvxopt_on_random_cnns(seed):
    net = random_cnn(np.random.default_rng(seed))
    ref = solve_network(net, solver="cvxopt").certificate
    got = solve_network(net, solver="hkm")
    assert got.solution.solver == "hkm" and got.certificate.verified and ref.verified
    assert abs(got.certificate.lipschitz - ref.lipschitz) <= 1e-5 * ref.lipschitz


@pytest.mark.solver
def test_hkm_minimises_the_frequency_forms_objective():
    """A --frequencies net: hkm minimises ``Sdp.solver_objective`` (rho plus the trace term) as CVXOPT does,
    the storage is recovered from its point and both certify the same bound."""
    rng = np.random.default_rng(7)
    b = Builder(1, 16)
    b.conv(rng.normal(size=(4, 1, 3)) / 2, padding="causal").act("relu")
    b.conv(rng.normal(size=(4, 4, 5)) / 4, padding="causal").act("tanh").gap()
    b.dense(rng.normal(size=(2, 4)))
    net = b.build()
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp

    sdp = build_sdp(lower(net), frequencies=9)
    c = sdp.solver_objective()
    assert sdp.storage and np.count_nonzero(c) > 1  # the frequency form, with its trace term
    points = [solve(sdp, s, tol=1e-7) for s in ("cvxopt", "hkm")]
    assert points[1].claimed_status == "optimal"
    value = [c @ p.x for p in points]
    assert abs(value[1] - value[0]) <= 1e-6 * abs(value[0])  # hkm minimises the same objective
    ref = solve_network(net, solver="cvxopt", frequencies=9, tol=1e-7)  # (1e-5 apart: beyond the form's 1e-4)
    got = solve_network(net, solver="hkm", frequencies=9, tol=1e-7)
    assert got.certificate.verified and ref.certificate.verified
    assert abs(got.certificate.lipschitz - ref.certificate.lipschitz) <= 1e-5 * ref.certificate.lipschitz


@pytest.mark.solver
def test_hkm_reports_iterations_and_keeps_the_deadline():
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp

    _, net = load_network(ECG)
    sdp = build_sdp(lower(net))
    seen = []
    with on_iteration(seen.append):
        sol = solve(sdp, "hkm", tol=1e-7)
    assert seen == list(range(1, len(seen) + 1)) and len(seen) == sol.iterations + 1
    with pytest.raises(TimeLimitError):
        solve(sdp, "hkm", timeout=1e-9)


@pytest.mark.solver
def test_cli_solve_with_hkm():
    res = run("solve", "--json", "--solver", "hkm", str(ECG))
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["solver"] == "hkm" and out["certified"] and out["claimed_status"] == "optimal"
    assert abs(out["lipschitz"] - ECG_REFERENCE) / ECG_REFERENCE <= 1e-6
    res = run("solve", "--solver", "hkm", str(ECG))
    assert res.exit_code == 0 and "hkm" in res.output and "109.12299" in res.output


def test_cli_unknown_solver_is_a_usage_error_with_a_suggestion():
    res = run("solve", "--solver", "hkn", str(ECG))
    assert res.exit_code == 2
    assert "unknown solver 'hkn'" in res.output and "did you mean 'hkm'?" in res.output
    res = run("compare", "--solver", "cvxop", str(ECG))
    assert res.exit_code == 2 and "did you mean 'cvxopt'?" in res.output
    help_text = CliRunner().invoke(cli, ["solve", "--help"], terminal_width=400).output
    assert all(name in help_text for name in registry.names())


def test_api_refuses_unknown_solver_names():
    net = lipdsl.load(ECG)
    with pytest.raises(LipdslError, match="did you mean 'hkm'"):
        net.solve(solver="hkn")
    with pytest.raises(LipdslError, match="did you mean 'sdpa'"):
        net.compare("sdpaa", methods=("naive",), lower=False)

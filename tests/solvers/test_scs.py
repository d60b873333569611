"""The SCS backend (lipdsl.solvers.scs_backend): SCS's scaled vectorisation and complex cones checked
against SCS itself and numpy's eigenvalues, the same optima as CVXOPT on small SDPs, certified bounds, and
an infeasible SDP refused (no bound, exit 3)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from lipdsl.errors import SolveError
from lipdsl.model.lower import lower
from lipdsl.pipeline import solve_network
from lipdsl.sdp.build import build_sdp
from lipdsl.sdp.problem import LmiBuilder, Variable, embedded_hermitian
from lipdsl.solvers import registry, scs_backend
from lipdsl.solvers.solve import solve
from nets import Builder, random_cnn
from repo_paths import ROOT

scs = pytest.importorskip("scs")

ECG = ROOT / "specs" / "ecg.lip"


def _embedding(M: np.ndarray) -> np.ndarray:
    """The real embedding of ``sdp.build``: ``[[Re, -Im], [Im, Re]]`` per entry, rows interleaved."""
    return np.kron(M.real, np.eye(2)) + np.kron(M.imag, np.array([[0.0, -1.0], [1.0, 0.0]]))


def _hermitian(rng, h):
    Z = rng.normal(size=(h, h)) + 1j * rng.normal(size=(h, h))
    return (Z + Z.conj().T) / 2


def _min_shift(b, cone, identity):
    """``t* = min t  s.t.  b + t svec(I) in cone``: minus the smallest eigenvalue, as SCS reads ``b``."""
    sol = scs.SCS({"A": sp.csc_matrix(-identity[:, None]), "b": b, "c": np.ones(1)}, cone, eps_abs=1e-10,
                  eps_rel=1e-10, verbose=False).solve()
    assert sol["info"]["status"] == "solved"
    return float(sol["x"][0])


def test_svec_round_trip_is_scs_convention():
    """``svec_map`` gives SCS's lower-triangle, column-major, sqrt2-scaled vector: it unpacks back to the
    matrix, keeps the inner product, and SCS reads the smallest eigenvalue from it."""
    rng = np.random.default_rng(0)
    m = 5
    A = rng.normal(size=(m, m))
    S = A @ A.T - 2.0 * np.eye(m)  # (some negative eigenvalues: the shift is not trivially 0)
    T = scs_backend.svec_map(m)
    v = T @ S.reshape(-1, order="F")
    expected = [S[j, j] if i == j else math.sqrt(2) * S[i, j] for j in range(m) for i in range(j, m)]
    np.testing.assert_allclose(v, expected, rtol=1e-14)
    U = rng.normal(size=(m, m))
    U = U + U.T
    assert v @ (T @ U.reshape(-1, order="F")) == pytest.approx(np.trace(S @ U), rel=1e-12)
    t = _min_shift(v, {"s": [m]}, T @ np.eye(m).reshape(-1, order="F"))
    assert t == pytest.approx(-np.linalg.eigvalsh(S)[0], abs=1e-6)


def test_complex_cone_has_the_real_embeddings_eigenvalues():
    """``hvec_map`` of the real embedding is SCS's complex vector of ``M``: SCS's smallest eigenvalue of it
    equals numpy's for ``M``, and the embedding's eigenvalues are ``M``'s, each twice."""
    rng = np.random.default_rng(1)
    h = 4
    M = _hermitian(rng, h)
    E = _embedding(M)
    assert embedded_hermitian(E, sp.csc_matrix((4 * h * h, 0)))
    v = scs_backend.hvec_map(h) @ E.reshape(-1, order="F")
    expected = []
    for j in range(h):
        expected.append(M[j, j].real)
        for i in range(j + 1, h):
            expected += [math.sqrt(2) * M[i, j].real, math.sqrt(2) * M[i, j].imag]
    np.testing.assert_allclose(v, expected, rtol=1e-14, atol=1e-15)
    lam = np.linalg.eigvalsh(M)
    np.testing.assert_allclose(np.linalg.eigvalsh(E), np.repeat(lam, 2), atol=1e-12)
    identity = scs_backend.hvec_map(h) @ np.eye(2 * h).reshape(-1, order="F")
    assert _min_shift(v, {"cs": [h]}, identity) == pytest.approx(-lam[0], abs=1e-6)
    assert not embedded_hermitian(np.diag(np.arange(2.0 * h)),
                                              sp.csc_matrix((4 * h * h, 0)))


def _frequency_net(channels=4):
    rng = np.random.default_rng(7)
    b = Builder(1, 16)
    b.conv(rng.normal(size=(channels, 1, 3)) / 2, padding="causal").act("relu")
    b.conv(rng.normal(size=(channels, channels, 5)) / channels, padding="causal").act("relu").gap()
    b.dense(rng.normal(size=(2, channels)))
    return b.build()


def test_frequency_lmis_become_complex_cones():
    sdp = build_sdp(lower(_frequency_net()), frequencies=9)
    data = scs_backend.cone_data(sdp)
    freq = [lmi for lmi in sdp.lmis if "(w=" in lmi.name]
    inner = [lmi for lmi in freq if not ("(w=0)" in lmi.name or "(w=3.142)" in lmi.name)]
    assert data.kinds.count("cs") == len(inner) == 7 and data.cone["cs"] == [lmi.size // 2 for lmi in inner]
    real = scs_backend.cone_data(sdp, complex_cones=False)
    assert real.kinds.count("cs") == 0 and len(real.cone["s"]) == len(sdp.lmis)
    # both describe the same LMIs: at a random point each cone's smallest eigenvalue is the LMI's
    x = np.random.default_rng(2).normal(size=sdp.n)
    s = data.b - data.A @ x
    at = data.cone["l"] + sum(m * (m + 1) // 2 for m in data.cone["s"])
    lmi, h = inner[0], inner[0].size // 2
    v = s[at : at + h * h]
    M = np.zeros((h, h), complex)
    k = 0
    for j in range(h):
        M[j, j] = v[k]
        k += 1
        for i in range(j + 1, h):
            M[i, j] = (v[k] + 1j * v[k + 1]) / math.sqrt(2)
            M[j, i] = np.conj(M[i, j])
            k += 2
    np.testing.assert_allclose(np.repeat(np.linalg.eigvalsh(M), 2), np.linalg.eigvalsh(lmi.value(x)),
                               atol=1e-10 * max(1.0, np.abs(lmi.value(x)).max()))


@pytest.mark.solver
@pytest.mark.parametrize("frequencies", [None, 9])
def test_scs_agrees_with_cvxopt_on_small_sdps(frequencies):
    """SCS minimises the same objective as CVXOPT within its tolerance, on an exact and a frequency SDP."""
    net = random_cnn(np.random.default_rng(3)) if frequencies is None else _frequency_net()
    sdp = build_sdp(lower(net), frequencies=frequencies)
    c = sdp.solver_objective()
    ref = solve(sdp, "cvxopt", tol=1e-8)
    got = solve(sdp, "scs", tol=1e-9)  # (SCS's eps 1e-6)
    assert got.solver == "scs" and got.claimed_status == "optimal" and got.iterations > 0
    assert abs(c @ got.x - c @ ref.x) <= 1e-4 * abs(c @ ref.x)


@pytest.mark.solver
def test_scs_bound_is_certified_and_close_to_cvxopt():
    net = _frequency_net()
    ref = solve_network(net, solver="cvxopt", frequencies=9).certificate
    got = solve_network(net, solver="scs", frequencies=9)
    assert got.solution.solver == "scs" and got.certificate.verified and ref.verified
    # (both are certified bounds from different points: SCS's may even come out a little lower)
    assert abs(got.certificate.lipschitz - ref.lipschitz) <= 1e-3 * ref.lipschitz


def _infeasible_sdp():
    """``[[x, 1], [1, -x]] >= 0``: ``-x^2 - 1 >= 0`` has no solution."""
    x = Variable("rho", "rho", None, 1, "scalar", 0)
    b = LmiBuilder(2, [1])
    b.units(0, [0, 1], [0, 1], [0.5, -0.5])
    b.F0[0, 1] = b.F0[1, 0] = 1.0
    lmi = b.build("LMI[bad]", None, [("x", 2)])
    return SimpleNamespace(n=1, lmis=(lmi,), nonneg=(x,), rho=x, objective=lambda: np.ones(1))


def test_infeasible_sdp_is_a_solve_error():
    with pytest.raises(SolveError, match="SCS reports the SDP infeasible"):
        scs_backend.solve_sdp(_infeasible_sdp(), tol=1e-7, max_iterations=100, verbose=False)


def test_cli_prints_no_bound_and_exits_3_when_scs_says_infeasible(monkeypatch, cli):
    """Whatever SCS says 'infeasible' about, the command reports the failure, no bound, exit 3."""

    class Infeasible:
        def __init__(self, data, cone, **settings):
            pass

        def solve(self):
            return {"x": None, "info": {"status": "infeasible (inaccurate)", "status_val": -7, "iter": 40}}

    monkeypatch.setattr(scs, "SCS", Infeasible)
    res = cli("solve", ECG, "--solver", "scs")
    assert res.exit_code == 3
    assert "infeasible" in res.output and "upper bound" not in res.output


def test_registry_has_one_scs():
    assert registry.lookup("scs").run == "scs_backend:solve_sdp"
    assert registry.first_order("scs") and not registry.first_order("cvxopt")
    assert registry.lookup("picos-scs").picos == "scs"  # SCS through PICOS, by its PICOS name


def test_settings_follow_tol_iterations_and_deadline():
    from lipdsl import limits

    opts = scs_backend.settings(1e-7, 100, False)
    assert opts["eps_abs"] == opts["eps_rel"] == pytest.approx(1e-7 * scs_backend.TOL_FACTOR)
    assert "time_limit_secs" not in opts and opts["max_iters"] == 100 * scs_backend.ADMM_PER_ITERATION
    with limits.Deadline.after(100).active():
        opts = scs_backend.settings(1e-9, 10, False, normalize=False)
    assert opts["eps_abs"] == pytest.approx(1e-9 * scs_backend.TOL_FACTOR) and opts["normalize"] is False
    assert 70 <= opts["time_limit_secs"] <= 80


def test_first_order_memory_model_has_no_newton_matrix():
    """SCS forms no n x n Newton matrix: 50k variables cost what their columns of ``A`` cost, and the
    variable limit (which stands for that matrix) does not refuse them."""
    from lipdsl import limits

    orders = [384] * 34
    scs_bytes = limits.solver_bytes(50_000, orders, "scs")
    assert scs_bytes < limits.solver_bytes(50_000, orders, "cvxopt") / 10
    assert scs_bytes < 2 * limits.GIB


def test_missing_scs_exits_3_with_the_install_hint(monkeypatch, cli):
    import sys

    monkeypatch.setitem(sys.modules, "scs", None)  # (import scs raises ImportError)
    res = cli("solve", ECG, "--solver", "scs")
    assert res.exit_code == 3
    assert "not installed" in res.output and "pip install scs" in res.output and "certified" not in res.output


def test_stopped_at_max_iters_is_not_claimed_optimal():
    """SCS stopped by its iteration limit says "solved (inaccurate - reached max_iters)": claimed
    'solved_inaccurate', which the pipeline does not count as converged."""
    from lipdsl.solvers.solution import converged

    sdp = build_sdp(lower(_frequency_net()), frequencies=9)
    sol = scs_backend.solve_sdp(sdp, tol=1e-9, max_iterations=1, verbose=False, max_iters=5)
    assert sol.claimed_status == "solved_inaccurate" and sol.iterations == 5
    assert not converged(sol.claimed_status)
    assert "reached max_iters" in sol.log[0]

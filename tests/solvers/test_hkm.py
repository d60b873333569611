"""The HKM interior-point method (lipdsl.solvers.hkm): the same optima as CVXOPT on LipSDP problems; honest
status."""
import numpy as np
import pytest

from lipdsl.baselines import lipsdp as baselines
from lipdsl.solvers.hkm import _Block, _max_step, solve_hkm
from lipdsl.solvers.solve import solve

from nets import Builder, dense_net, lipsdp_net, random_cnn


def _problem(net, mode="neuron", chordal=None):
    mats, slopes, out, scale = baselines._lipsdp_data(net, None)
    return baselines.lipsdp_problem(mats, slopes, out, mode, chordal), scale


@pytest.mark.parametrize("wide", [False, True])
def test_gram_is_the_schur_complement_of_the_definition(wide):
    """H_kl = <F_k, Z F_l S^-1> from the sparse Gram products (and, for a variable with many terms such as
    rho on a wide input, from A(Z F_k S^-1)) equals the definition, for random Z, S > 0."""
    rng = np.random.default_rng(0)
    net = dense_net([rng.standard_normal((3, 40)), rng.standard_normal((2, 3))]) if wide else \
        random_cnn(rng, activation="relu")
    problem, _ = _problem(net, chordal=False)
    lmi = problem.lmis[0]
    block = _Block(lmi, problem.n)
    assert (len(block.dense) > 0) == wide
    m = lmi.size
    A, B = rng.standard_normal((m, m)), rng.standard_normal((m, m))
    Z, S = A @ A.T + np.eye(m), B @ B.T + np.eye(m)
    T = np.linalg.inv(S)
    F = [lmi.G[:, k].toarray().reshape(m, m, order="F") for k in range(problem.n)]
    H = np.array([[np.sum(Fk * (Z @ Fl @ T)) for Fl in F] for Fk in F])
    # the block's H is formed on its variables; the rest of H is zero
    outside = np.setdiff1d(np.arange(problem.n), block.vars)
    assert not H[outside].any() and not H[:, outside].any()
    np.testing.assert_allclose(block.gram(Z, T), H[np.ix_(block.vars, block.vars)], rtol=1e-9,
                               atol=1e-9 * np.abs(H).max())


def test_gram_in_chunks_equals_whole(monkeypatch):
    rng = np.random.default_rng(1)
    problem, _ = _problem(random_cnn(rng, activation="relu"), chordal=False)
    block = _Block(problem.lmis[0], problem.n)
    m = block.m
    Z, T = np.eye(m) + 0.1 * np.ones((m, m)), np.diag(np.arange(1.0, m + 1))
    whole = block.gram(Z, T)
    monkeypatch.setattr("lipdsl.solvers.hkm.GRAM_CHUNK_ENTRIES", 7 * len(block.coef))
    np.testing.assert_allclose(block.gram(Z, T), whole, rtol=1e-12, atol=1e-12)


def test_max_step_is_the_boundary():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((6, 6))
    S = A @ A.T + np.eye(6)
    D = rng.standard_normal((6, 6))
    D = D + D.T
    a = _max_step(np.linalg.cholesky(S), D)
    assert np.linalg.eigvalsh(S + a * D)[0] == pytest.approx(0.0, abs=1e-9)
    assert np.linalg.eigvalsh(S + 0.999 * a * D)[0] > 0
    assert _max_step(np.linalg.cholesky(S), D @ D) == np.inf


@pytest.mark.solver
@pytest.mark.parametrize("chordal", [False, True])
def test_same_optimum_as_cvxopt_on_random_cnns(chordal):
    """Both modes, whole and chordally split: HKM and CVXOPT land on the same certified LipSDP bound."""
    rng = np.random.default_rng(11)
    for i in range(3):
        net = random_cnn(rng, activation="relu")
        for mode in ("neuron", "layer"):
            hkm = baselines.lipsdp(net, mode, chordal=chordal)
            ref = baselines.lipsdp(net, mode, chordal=chordal, solver="cvxopt")
            assert hkm.status == "verified" and hkm.max_eig <= 0, (i, mode)
            assert hkm.bound == pytest.approx(ref.bound, rel=1e-6), (i, mode)


@pytest.mark.solver
def test_reference_values_and_status():
    """LipSDP's own random-weights net: neuron 36.4822 and layer 39.839 (its paper), claimed optimal."""
    net = lipsdp_net("random_weights")
    if net is None:
        pytest.skip("shared/cases/lipsdp not found")
    for mode, value in (("neuron", 36.4822), ("layer", 39.839)):
        problem, scale = _problem(net, mode)
        sol = solve_hkm(problem, tol=1e-7)
        assert sol.claimed_status == "optimal" and sol.relative_gap <= 1e-7 and sol.residual <= 1e-7
        assert scale * np.sqrt(sol.rho) == pytest.approx(value, rel=1e-4)
        ref = solve(problem, "cvxopt", tol=1e-8)
        assert sol.rho == pytest.approx(ref.rho, rel=1e-6)


@pytest.mark.solver
def test_stopped_early_is_unknown_and_still_a_point():
    """Out of iterations: status 'unknown', the best iterate so far, and the certificate still judges it."""
    rng = np.random.default_rng(3)
    b = Builder(1, 16)
    b.conv(rng.standard_normal((3, 1, 3)), padding="causal").act("relu")
    net = b.conv(rng.standard_normal((2, 3, 3)), padding="causal").build()
    problem, _ = _problem(net)
    sol = solve_hkm(problem, max_iterations=4, verbose=False)
    assert sol.claimed_status == "unknown" and sol.iterations <= 4 and sol.relative_gap > 1e-7
    assert len(sol.log) >= 4 and "gap" in sol.log[0]
    full = solve_hkm(problem)
    assert full.claimed_status == "optimal" and full.rho <= sol.rho * (1 + 1e-9) + 1e-12

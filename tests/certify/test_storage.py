"""kyp: frequency-domain LMIs for conv layers, storage matrices P from Riccati equations, then certify."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from nets import Builder, random_cnn

from lipdsl.pipeline import problem_size, solve_network
from lipdsl.certify.recheck import Point, certify
from lipdsl.app.cli import cli
import scipy.linalg

from lipdsl.certify import refit
from lipdsl.certify import storage as kyp
from lipdsl.certify.storage import phi_min_eigenvalue, recover_storage, riccati_doubling, riccati_residual
from lipdsl.model.lower import lower
from lipdsl.sdp.build import build_sdp, frequency_grid, frequency_response
from lipdsl.solvers.solve import solve
from repo_paths import SPECS


def conv_net(seed, *, channels=3, kernel=4, act="relu", linear_middle=False, head="gap", padding="same"):
    rng = np.random.default_rng(seed)
    b = Builder(1, 16)
    b.conv(rng.normal(size=(channels, 1, kernel)) / 2, padding="causal").act(act)
    b.conv(rng.normal(size=(channels, channels, kernel)) / channels, padding=padding, dilation=2)
    if not linear_middle:
        b.act(act)
    b.conv(rng.normal(size=(channels, channels, kernel)) / channels, padding="causal").act(act)
    if head == "gap":
        b.gap()
        b.dense(rng.normal(size=(2, channels)))
    else:
        b.pool("avg", 2).flatten()
        b.dense(rng.normal(size=(5, b.shape.size))).act("relu").dense(rng.normal(size=(2, 5)))
    return b.build()


@pytest.mark.parametrize("lift", [1, 2])
def test_frequency_response_is_the_dft_of_the_impulse_response(lift):
    net = conv_net(0, padding="causal", head="flatten")  # (lifting: causal padding, no GAP)
    for sys in lower(net, lift=lift).systems:
        if not sys.ss.nx:
            continue
        T = 64
        impulses = []
        for j in range(sys.ss.nu):
            u = np.zeros((sys.ss.nu, T))
            u[j, 0] = 1.0
            impulses.append(sys.ss.simulate(u))  # (ny, T)
        h = np.stack(impulses, axis=1)  # (ny, nu, T): the impulse response dies within nx + 1 steps
        omegas = frequency_grid(9)
        dft = np.einsum("abt,kt->kab", h, np.exp(-1j * np.outer(omegas, np.arange(T))))
        assert np.allclose(frequency_response(sys.ss, omegas), dft, atol=1e-12)


def _solve_both(net, frequencies):
    low = lower(net)
    exact = build_sdp(low)
    c_exact = certify(exact, solve(exact))
    gridded = build_sdp(low, frequencies=frequencies)
    sol = solve(gridded)
    full = recover_storage(gridded, sol)
    return exact, c_exact, gridded, sol, full, certify(gridded, full)


@pytest.mark.solver
@pytest.mark.parametrize("kwargs", [{}, {"act": "tanh"}, {"linear_middle": True}, {"head": "flatten"}])
def test_frequency_form_is_certified_and_close_to_the_exact_sdp(kwargs):
    """The gridded solve is a relaxation (its value <= the exact optimum); after the Riccati recovery the
    certified bound is >= the exact one and within 1 % of it on 65 frequencies."""
    exact, c_exact, gridded, sol, full, cert = _solve_both(conv_net(1, **kwargs), 65)
    assert gridded.storage and gridded.n < exact.n
    assert c_exact.verified and cert.verified
    assert cert.lipschitz_solver <= c_exact.lipschitz * (1 + 1e-6)
    assert c_exact.lipschitz * (1 - 1e-7) <= cert.lipschitz <= 1.01 * c_exact.lipschitz


@pytest.mark.solver
def test_riccati_storage_makes_every_conv_lmi_psd_before_the_certificate_repair():
    _, _, gridded, _, full, cert = _solve_both(conv_net(2), 33)
    point = Point(gridded, full.x)
    for link in gridded.links:
        if link.P not in gridded.storage:  # (an exact LMI upstream: certify repairs its raised X_out)
            continue
        M = point.matrix(link)
        assert np.linalg.eigvalsh(M)[0] >= -1e-5 * np.linalg.norm(M, 2), link.lmi.name  # Riccati accuracy
    rho_recovered = full.x[gridded.rho.offset]
    assert cert.verified and cert.rho - rho_recovered <= 1e-4 * rho_recovered  # certify: Riccati accuracy


@pytest.mark.solver
def test_recovery_closes_the_gaps_between_the_grid_frequencies():
    """On few frequencies Phi dips below zero between them; the recovery raises X_in until it holds on
    the fine grid (so the certificate costs more, but still holds)."""
    net = conv_net(3, kernel=5)
    low = lower(net)
    gridded = build_sdp(low, frequencies=5)
    sol = solve(gridded)
    point = Point(gridded, np.concatenate([sol.x, np.zeros(gridded.n_total - gridded.n)]))
    fine = frequency_grid(512)
    link = next(lk for lk in gridded.links if lk.P in gridded.storage)
    lam = point.vars[link.lam.name]
    H = frequency_response(link.system.ss, fine)
    before = phi_min_eigenvalue(link.system, lam, point.weight(link.w_in), point.weight(link.w_out), H)
    assert before < 0
    cert = certify(gridded, recover_storage(gridded, sol))
    assert cert.verified and cert.lipschitz > cert.lipschitz_solver


@pytest.mark.solver
def test_recovery_on_two_threads_is_the_inline_recovery(monkeypatch):
    """Step 2's eigenvalue checks split over the frequencies on two threads give the same point, bit for
    bit (each part's minimum is exact; the parts are combined with min/max)."""
    import lipdsl.solvers.cvxopt_kkt as solve_mod

    gridded = build_sdp(lower(conv_net(4, channels=4, kernel=5)), frequencies=9)
    sol = solve(gridded)
    points = []
    for threads in (1, 2):
        monkeypatch.setattr(solve_mod, "KKT_THREADS", threads)
        points.append(recover_storage(gridded, sol).x)
    assert np.array_equal(points[0], points[1])


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(6))
def test_random_cnns_in_frequency_form_stay_above_the_exact_bound(seed):
    net = random_cnn(np.random.default_rng(100 + seed))
    exact = solve_network(net)
    freq = solve_network(net, frequencies=33)
    assert exact.certificate.verified and freq.certificate.verified
    assert freq.certificate.lipschitz >= exact.certificate.lipschitz * (1 - 1e-7)


def test_layers_needing_p_psd_keep_the_exact_lmi():
    """leaky ReLU (alpha * beta > 0) needs P >= 0, which the Riccati solution does not promise."""
    sdp = build_sdp(lower(conv_net(4, act="leaky_relu")), frequencies=9)
    assert not sdp.storage and all(link.P is not None for link in sdp.links if link.system.ss.nx)


def test_problem_size_counts_no_storage_in_frequency_form():
    net = conv_net(5, channels=16, kernel=9)
    exact, freq = problem_size(net), problem_size(net, frequencies=17)
    assert freq.variables < exact.variables / 10
    assert freq.largest_lmi == 2 * (16 + 16) and "frequency" in freq.detail


@pytest.mark.solver
def test_cli_solve_with_frequencies(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", c1=rng.normal(size=(4, 1, 5)) / 3, c2=rng.normal(size=(4, 4, 5)) / 4,
             fc=rng.normal(size=(2, 4)))
    spec = tmp_path / "net.lip"
    spec.write_text('input 1 x 32\nweights "w.npz"\nconv1d c1: 1 -> 4, kernel 5, padding causal, weight c1\n'
                    "relu\nconv1d c2: 4 -> 4, kernel 5, padding causal, weight c2\nrelu\nglobal_avgpool\n"
                    "dense fc: 4 -> 2, weight fc\n")
    args = ["solve", "--json", "--frequencies", "33", str(spec)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    exact = json.loads(CliRunner().invoke(cli, ["solve", "--json", str(spec)]).output)
    assert out["certified"] and "storage" in out["seconds"]
    assert exact["lipschitz"] * (1 - 1e-7) <= out["lipschitz"] <= 1.02 * exact["lipschitz"]
    assert any("frequency domain" in note for note in out["notes"])


def test_near_optimal_is_judged_by_gap_and_residuals():
    from lipdsl.solvers.solve import Solution

    base = dict(claimed_status="unknown", rho=1.0, x=None, solver="cvxopt", seconds=0.0)
    assert Solution(**base, relative_gap=3e-7, residual=6e-8).near_optimal(1e-6)
    assert not Solution(**base, relative_gap=3e-5, residual=6e-8).near_optimal(1e-6)
    assert not Solution(**base, relative_gap=3e-7, residual=2e-6).near_optimal(1e-6)
    assert not Solution(**base).near_optimal(1e-6)  # a solver that reports neither


@pytest.mark.solver
def test_singular_kkt_ending_at_tolerance_is_not_refused_in_frequency_form():
    """CVXOPT ends features.lip (K = 9) on a singular KKT matrix at relative gap ~3e-7: the bound is
    reported although the frequency-grid repair raises it by more than the unconverged-inflation limit."""

    spec = SPECS / "features.lip"
    args = ["solve", "--json", "--frequencies", "9", str(spec)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    from lipdsl.lang.load import load_network

    exact = solve_network(load_network(spec)[1]).certificate.lipschitz
    assert out["certified"] and out["lipschitz"] >= exact * (1 - 1e-7)


def _fir_riccati_data(rng, c=3, taps=4):
    """A DARE of the FIR kind (block shift A, input into the first block) with a cross term, well posed."""
    nx = c * (taps - 1)
    A = np.eye(nx, k=-c)
    B = np.zeros((nx, 2 * c))
    B[:c, :c] = np.eye(c)
    G = rng.normal(size=(nx + 2 * c, nx + 2 * c))
    M = G @ G.T + np.eye(nx + 2 * c)
    return A, B, M[:nx, :nx], M[nx:, nx:], M[:nx, nx:]


@pytest.mark.parametrize("seed", range(4))
def test_riccati_doubling_matches_the_qz_solution(seed):
    A, B, Q, R, S = _fir_riccati_data(np.random.default_rng(seed))
    X = riccati_doubling(A, B, Q, R, S)
    X_qz = scipy.linalg.solve_discrete_are(A, B, Q, R, s=S)
    assert np.allclose(X, X_qz, rtol=1e-9, atol=1e-9 * np.abs(X_qz).max())
    assert riccati_residual(A, B, Q, R, S, X) < 1e-12
    K = np.linalg.solve(R + B.T @ X @ B, B.T @ X @ A + S.T)  # the stabilizing solution: closed loop stable
    assert np.abs(np.linalg.eigvals(A - B @ K)).max() < 1


@pytest.mark.solver
def test_storage_falls_back_to_qz_when_the_doubling_does_not_converge(monkeypatch):
    """With no doubling step its 'solution' is the first iterate, far from the Riccati solution: the residual
    check sends every system to QZ, and the certificate is the default one (these systems are small, so
    QZ ran there too) and within Riccati accuracy of doubling alone."""
    net = conv_net(2)
    gridded = build_sdp(lower(net), frequencies=33)
    sol = solve(gridded)
    qz_too = certify(gridded, recover_storage(gridded, sol))
    calls = []
    qz = scipy.linalg.solve_discrete_are
    monkeypatch.setattr(kyp, "QZ_STATES", 0)
    reference = certify(gridded, recover_storage(gridded, sol))  # doubling only (residual ~1e-7 here)
    monkeypatch.setattr(kyp, "DOUBLING_STEPS", 0)

    def spy(*args, **kwargs):
        calls.append(1)
        return qz(*args, **kwargs)

    monkeypatch.setattr(kyp.scipy.linalg, "solve_discrete_are", spy)
    cert = certify(gridded, recover_storage(gridded, sol))
    assert len(calls) >= len(gridded.storage)  # every gridded system went to QZ
    assert cert.verified and reference.verified and qz_too.verified
    # (the default keeps, per small system, whichever of doubling and QZ has the smaller residual)
    assert cert.lipschitz == pytest.approx(qz_too.lipschitz, rel=1e-4)  # Riccati accuracy
    assert cert.lipschitz == pytest.approx(reference.lipschitz, rel=1e-4)


@pytest.mark.solver
def test_refitting_the_first_system_lowers_the_certified_bound(monkeypatch):
    """The first conv layer (one input channel: its exact LMI) re-solved for the repaired downstream
    weights: a smaller rho, certified, and still above the exact SDP's bound. (With isotropic raises only
    and 5 frequencies, where the first system's input shift is large enough for the refit to matter: 1.7 %
    here, 0.006 % on 9.)"""
    monkeypatch.setattr(kyp, "RAISE_DIRECTIONS", (None,))
    exact, c_exact, gridded, sol, full, cert = _solve_both(conv_net(1, channels=4, kernel=5), 5)
    assert gridded.links[0].P not in gridded.storage  # (the first system keeps its exact LMI)
    monkeypatch.setattr(kyp, "refit_first_system", lambda sdp, point, warm=None, final=False: False)
    without = certify(gridded, recover_storage(gridded, sol))
    assert cert.verified and without.verified
    assert cert.lipschitz < without.lipschitz * (1 - 1e-4)
    assert cert.lipschitz >= c_exact.lipschitz * (1 - 1e-7)


def _dilated_net(seed, channels=3, layers=3):
    """Causal convs with dilations 1, 2, 4: the frequency responses the grid misses most."""
    rng = np.random.default_rng(seed)
    b = Builder(channels, 32)
    for j in range(layers):
        b.conv(rng.normal(size=(channels, channels, 3)) / np.sqrt(3 * channels), padding="causal",
               dilation=2**j).act("relu")
    b.gap()
    b.dense(rng.normal(size=(2, channels)))
    return b.build()


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(3))
def test_relative_raises_are_never_looser_than_isotropic_ones(seed, monkeypatch):
    """Step 2's raise direction (``X += e (X + delta ||X|| I)``, chosen per chain) against the isotropic
    ``X += e I`` alone: certified both ways, never looser, and above the exact SDP's bound."""
    exact, c_exact, gridded, sol, full, cert = _solve_both(_dilated_net(seed), 9)
    monkeypatch.setattr(kyp, "RAISE_DIRECTIONS", (None,))
    isotropic = certify(gridded, recover_storage(gridded, sol))
    assert cert.verified and isotropic.verified
    assert cert.lipschitz <= isotropic.lipschitz * (1 + 1e-6)
    assert cert.lipschitz >= c_exact.lipschitz * (1 - 1e-7)


@pytest.mark.solver
def test_a_storage_that_leaves_the_lmi_short_is_recomputed_with_a_larger_margin(monkeypatch):
    """A Riccati solution whose LMI is not strictly positive (a stalled doubling near a singular Phi) is
    recomputed with ten times the margin; certify then has almost nothing to repair."""
    exact, c_exact, gridded, sol, full, cert = _solve_both(_dilated_net(0), 9)
    margins = []
    real = kyp.storage_matrix

    def spy(sys, lam, X_in, X_out, inner=(), shrink=0.0):
        margins.append(np.linalg.norm(X_in, 2))
        P = real(sys, lam, X_in, X_out, inner, shrink)
        return P if len(margins) > 1 else P + 1e-3 * np.linalg.norm(P, 2) * np.eye(len(P))  # spoil the first

    monkeypatch.setattr(kyp, "storage_matrix", spy)
    spoiled = certify(gridded, recover_storage(gridded, sol))
    assert len(margins) > len(gridded.storage)  # the spoiled one was recomputed
    assert spoiled.verified
    assert spoiled.lipschitz <= cert.lipschitz * (1 + 1e-3)


@pytest.mark.parametrize("act,slope", [("leaky_relu", "[0.01, 1]"), ("relu", None)])
def test_frequencies_say_which_layers_kept_their_exact_lmi(act, slope):
    """--frequencies cannot grid a layer whose slope has alpha * beta > 0 (it needs P >= 0): a note says
    which layer, why, and what helps (a looser slope [0, beta] claim); nothing is said when all are
    gridded."""
    sdp = build_sdp(lower(conv_net(4, act=act)), frequencies=9)
    kept = [n for n in sdp.notes if "kept its exact LMI" in n]
    if slope is None:
        assert not kept and sdp.storage
        return
    gridable = [link.system for link in sdp.links
                if link.system.ss.nx and link.system.ss.nx >= link.system.ss.nu + link.system.ss.ny]
    assert gridable and len(kept) == len(gridable)
    for sys, note in zip(gridable, kept):
        assert note.startswith(sys.name) and f"slope {slope}" in note and "P >= 0" in note
        assert "'slope [0, 1]' after leaky_relu" in note
    assert not any("kept its exact LMI" in n for n in build_sdp(lower(conv_net(4, act=act))).notes)


def _long_kernel_net(seed, channels=3, layers=3, kernel=9):
    """Causal convs of kernel 9 (``Phi``'s entries trigonometric polynomials of degree 8): what a grid of 5
    frequencies misses most, now that dilated layers are gridded on their own period."""
    rng = np.random.default_rng(seed)
    b = Builder(channels, 32)
    for _ in range(layers):
        b.conv(rng.normal(size=(channels, channels, kernel)) / np.sqrt(kernel * channels), padding="causal")
        b.act("relu")
    b.gap()
    b.dense(rng.normal(size=(2, channels)))
    return b.build()


def _deep_tcn(seed, ch=8, k=3, depth=5):
    rng = np.random.default_rng(seed)
    b = Builder(1, 64)
    b.conv(rng.normal(size=(ch, 1, k)) / 2, padding="causal").act("relu")
    for d in range(depth):
        b.conv(rng.normal(size=(ch, ch, k)) / np.sqrt(ch * k) * 1.5, padding="causal", dilation=2 ** d)
        b.act("relu")
    b.gap()
    b.dense(rng.normal(size=(2, ch)))
    return b.build()


def _text(result):
    from rich.console import Console

    from lipdsl.app.report import print_text

    import io

    buf = io.StringIO()
    print_text(result, Console(file=buf, width=400, color_system=None))
    return buf.getvalue().splitlines()


@pytest.mark.solver
def test_frequency_form_reports_a_large_repair_and_a_bound_above_the_hinf_product_first(monkeypatch):
    """A deep dilated net on 3 frequencies spread over [0, pi] (as they were before dilated layers got their
    own period: ``tap_spacing`` 1): the grid misses the tight frequencies, the repair is ~10x and the
    certified bound lands above the product of H-infinity gains; both are said on the lines after the bound,
    and in the JSON (hinf_product, above_hinf_product, warnings)."""
    import dataclasses

    import lipdsl.pipeline
    import lipdsl.sdp.build
    from lipdsl.app.report import to_json
    from lipdsl.baselines.unrolled import naive_hinf

    monkeypatch.setattr(lipdsl.pipeline, "REFINE_ROUNDS", 0)  # (the grid as given: its repair shows)
    monkeypatch.setattr(lipdsl.sdp.build, "tap_spacing", lambda taps: 1)
    net = _deep_tcn(1)
    result = solve_network(net, frequencies=3)
    cert = result.certificate
    assert cert.verified and cert.inflation > 1.0
    assert result.hinf_product == naive_hinf(net)
    out = to_json(result)
    assert out["frequencies"] == 3 and out["hinf_product"] == result.hinf_product
    assert out["above_hinf_product"] is (cert.lipschitz > result.hinf_product) is True
    assert len(out["warnings"]) == 2 and "repair" in out["warnings"][0]
    assert "--frequencies 5" in out["warnings"][0]
    assert "the grid refined where they dip (--refine-rounds" in out["warnings"][0]  # (none by default here)
    assert "naive-hinf" in out["warnings"][1]
    lines = _text(result)
    assert lines[0].startswith("Lipschitz upper bound") and "(certified)" in lines[0]
    assert lines[1].startswith("  warning: the certificate repair") and f"{cert.inflation:.1%}" in lines[1]
    assert lines[2].startswith("  warning: this bound is above") and "--method naive-hinf" in lines[2]
    # a small repair below the product: no warning at all, and the exact SDP never gets the fields
    small = dataclasses.replace(cert, lipschitz_solver=cert.lipschitz / 1.005)
    quiet = dataclasses.replace(result, hinf_product=10 * cert.lipschitz, certificate=small)
    assert to_json(quiet)["warnings"] == [] and to_json(quiet)["above_hinf_product"] is False
    assert not any("warning" in line for line in _text(quiet))
    # after a refinement the systems' grids differ in size: the warning names the range and the rounds
    grids = dict(result.sdp.grids)
    first = next(iter(grids))
    grids[first] = np.linspace(0, np.pi, 7)
    refined = dataclasses.replace(result, sdp=dataclasses.replace(result.sdp, grids=grids))
    assert ("the grids, refined to 3-7 frequencies, miss where the LMIs are tight; more refinement rounds "
            "(--refine-rounds N), more frequencies (--frequencies 5)") in to_json(refined)["warnings"][0]
    alike = dataclasses.replace(result, sdp=dataclasses.replace(
        result.sdp, grids={name: np.linspace(0, np.pi, 7) for name in grids}))  # (every grid refined to 7)
    assert "the grids, refined to 7 frequencies, miss where the LMIs are tight; more refinement rounds" in (
        to_json(alike)["warnings"][0])
    exact = solve_network(conv_net(4))
    assert exact.hinf_product is None and to_json(exact)["warnings"] == []
    assert to_json(exact)["frequencies"] is None and to_json(exact)["above_hinf_product"] is None


@pytest.mark.solver
def test_the_grid_is_refined_where_the_lmis_dip_between_its_frequencies():
    """Frequency mode on a coarse grid (kernels 9). ``refine_rounds=2`` (``--refine-rounds 2``) on 5
    frequencies: the recovery would cost more than 1 % (``storage.REFINE_REPAIR``), so each system's grid
    gets the frequencies where its Phi dips at the solver's point and the SDP is solved again; the bound
    drops, stays above the exact SDP's, and a note says so; 1 stops after one round, 0 skips it. The default
    refines only while the repair exceeds ``AUTO_REFINE_REPAIR`` (5 %): once (69 % on 5 frequencies, 1.5 %
    after one round), and its warning names ``--refine-rounds N``."""
    from lipdsl.pipeline import AUTO_REFINE_REPAIR

    net = _long_kernel_net(1)
    exact = solve_network(net, frequencies=None).certificate.lipschitz
    refined = solve_network(net, frequencies=5, refine_rounds=2)
    assert refined.certificate.verified and any("grid refined 2 time(s)" in n for n in refined.sdp.notes)
    assert any(len(g) > 5 for g in refined.sdp.grids.values())
    assert refined.frequencies == 5  # (the K asked for; the note and sdp.grids have the refined counts)
    once = solve_network(net, frequencies=5, refine_rounds=1)
    assert once.certificate.verified and any("grid refined 1 time(s)" in n for n in once.sdp.notes)
    plain = solve_network(net, frequencies=5, refine_rounds=0)
    assert plain.certificate.verified and not any("grid refined" in n for n in plain.sdp.notes)
    assert exact * (1 - 1e-6) <= refined.certificate.lipschitz < plain.certificate.lipschitz
    assert once.certificate.lipschitz < plain.certificate.lipschitz

    default = solve_network(net, frequencies=5)
    assert any("grid refined 1 time(s)" in n for n in default.sdp.notes)
    assert default.certificate.lipschitz == pytest.approx(once.certificate.lipschitz, rel=1e-9)
    assert 0.01 < default.certificate.inflation <= AUTO_REFINE_REPAIR < plain.certificate.inflation
    assert "more refinement rounds (--refine-rounds N)" in default.warnings[0]
    assert refined.certificate.lipschitz < default.certificate.lipschitz


def test_refine_rounds_is_checked(tmp_path):
    """``--refine-rounds`` takes 0..10 (exit 2 otherwise); the API refuses a negative or non-integer value."""
    import lipdsl
    from lipdsl.errors import LipdslError

    bad = CliRunner().invoke(cli, ["solve", str(SPECS / "ecg.lip"), "--refine-rounds", "-1"])
    assert bad.exit_code == 2 and "--refine-rounds" in bad.output
    for value in (-1, 1.5, "two"):
        with pytest.raises(LipdslError, match="refine_rounds must be an integer >= 0"):
            lipdsl.load(SPECS / "ecg.lip").solve(refine_rounds=value)


@pytest.mark.parametrize("seed", range(6))
def test_block_phi_is_the_blocks_supply_in_the_frequency_domain(seed, tmp_path):
    """``xi* Phi(w) xi`` for ``xi = (u, w_1 .. w_q[, w_out])`` is, by definition, ``u* X_in u`` minus the
    output weight minus each activation's slope supply ``2 Re (b v - w)* L (w - a v)`` (>= 0 on its
    graph), ``v = H(w) (u, w_1 .. w_q)``:
    the batched ``block_phi`` against that sum, written out term by term (every slope, random multipliers)."""
    import dataclasses

    from nets import random_residual

    rng = np.random.default_rng(seed)
    blocks = []
    while not blocks:  # (a block with no activation inside lowers to a plain linear system)
        blocks = [s for s in lower(random_residual(rng, tmp_path, n=None)).systems if s.internal]
    for sys in blocks:
        for slope in (None, (0.0, 1.0), (-0.5, 2.0)):
            s = dataclasses.replace(sys, slope=slope, internal=tuple(
                dataclasses.replace(a, alpha=-0.3, beta=1.5) for a in sys.internal))
            inner = [rng.uniform(0.1, 2, a.n) for a in s.internal]
            lam = rng.uniform(0.1, 2, s.n_out) if slope else None
            A, B = rng.normal(size=(2, s.n_in, s.n_in)), rng.normal(size=(s.n_out, s.n_out))
            X_in, X_out = A[0] @ A[0].T, B @ B.T
            H = frequency_response(s.ss, frequency_grid(5))
            Phi = kyp.block_phi(s, lam, inner, X_in, X_out, H)
            for Hw, Pw in zip(H, Phi):
                assert np.allclose(Pw, Pw.conj().T, atol=1e-12)
                xi = rng.normal(size=len(Pw)) + 1j * rng.normal(size=len(Pw))
                u, rest = xi[: s.n_in], xi[s.n_in:]
                w = rest[: s.n_internal]
                v = Hw @ np.concatenate([u, w])
                value = u.conj() @ X_in @ u
                pairs = [(a.alpha, a.beta, lj) for a, lj in zip(s.internal, inner)]
                at = 0
                for a, b, lj in pairs:
                    vj, wj = v[at : at + len(lj)], w[at : at + len(lj)]
                    value -= 2 * ((b * vj - wj).conj() @ (lj * (wj - a * vj))).real
                    at += len(lj)
                y = v[at:]
                if slope is None:
                    value -= y.conj() @ X_out @ y
                else:
                    w_out = rest[s.n_internal:]
                    value -= 2 * ((slope[1] * y - w_out).conj() @ (lam * (w_out - slope[0] * y))).real
                    value -= w_out.conj() @ X_out @ w_out
                assert np.isclose(xi.conj() @ Pw @ xi, value, rtol=1e-10, atol=1e-9)


def test_a_stopped_solve_counts_as_solved_only_near_the_optimum():
    """``pipeline.solved``: converged, or stopped (CVXOPT's singular-KKT ending) with relative gap and
    residuals <= 1e-4; a solve stopped farther off is not."""
    from lipdsl.pipeline import solved
    from lipdsl.solvers.solution import Solution

    base = dict(rho=1.0, x=np.zeros(1), solver="cvxopt", seconds=0.0, iterations=31)
    assert solved(Solution("optimal", **base), 1e-7)
    assert solved(Solution("unknown", **base, relative_gap=2.8e-5, residual=2.2e-5), 1e-7)
    assert not solved(Solution("unknown", **base, relative_gap=2e-3, residual=2.2e-5), 1e-7)
    assert not solved(Solution("unknown", **base, relative_gap=2e-5, residual=3e-4), 1e-7)
    assert not solved(Solution("unknown", **base), 1e-7)


def test_a_refined_re_solve_that_stops_short_is_dropped(monkeypatch):
    """When the re-solve on the refined grid stops far from its optimum while the first solve converged,
    ``_refine`` keeps the first solve (and its grid), certifies it, and a note says why."""
    import lipdsl.pipeline as pipeline
    from dataclasses import replace

    real = pipeline.solve
    calls = []

    def second_stops_short(sdp, *args, **kwargs):
        sol = real(sdp, *args, **kwargs)
        calls.append(sol)
        return sol if len(calls) == 1 else replace(sol, claimed_status="unknown", relative_gap=1e-2)

    monkeypatch.setattr(pipeline, "solve", second_stops_short)
    result = solve_network(_long_kernel_net(1), frequencies=5)
    assert len(calls) == 2 and result.certificate.verified
    assert result.solution.claimed_status == "optimal"
    assert all(len(g) == 5 for g in result.sdp.grids.values())
    assert not any("grid refined" in n for n in result.sdp.notes)
    assert any("stopped without converging" in n and "the last converged solve" in n
               for n in result.sdp.notes)


@pytest.mark.solver
def test_refined_re_solves_start_from_the_last_point(monkeypatch):
    """``_refine`` hands each re-solve the last solution (CVXOPT: ``Backend.warm_start``), and the refined
    bound is the one a cold re-solve certifies (1e-6), in fewer iterations."""
    import dataclasses

    import lipdsl.pipeline as pipeline
    import lipdsl.solvers.registry as registry

    real, warms = pipeline.solve, []

    def recording(sdp, *args, **kwargs):
        warms.append(kwargs.get("warm"))
        return real(sdp, *args, **kwargs)

    monkeypatch.setattr(pipeline, "solve", recording)
    net = _long_kernel_net(1)
    # (at the exact form's tolerance: the two must agree to 1e-6, beyond the frequency form's default 1e-4)
    warm = solve_network(net, frequencies=5, refine_rounds=2, tol=1e-7)
    assert warms[0] is None and all(w is not None and w.x is not None for w in warms[1:]) and len(warms) == 3
    monkeypatch.setitem(registry.SOLVERS, "cvxopt",
                        dataclasses.replace(registry.SOLVERS["cvxopt"], warm_start=False))
    cold = solve_network(net, frequencies=5, refine_rounds=2, tol=1e-7)
    assert warm.certificate.verified and cold.certificate.verified
    assert warm.certificate.lipschitz == pytest.approx(cold.certificate.lipschitz, rel=1e-6)
    assert warm.solution.iterations < cold.solution.iterations


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(3))
def test_dilated_layers_on_their_own_period_certify_near_the_exact_sdp(seed, monkeypatch):
    """Dilations 1, 2, 4 on 5 frequencies and no refinement: each layer gridded on [0, pi / d]
    (``tap_spacing``) certifies within 3.5 % of the exact SDP's bound (0.2-3 %); the same 5 frequencies on
    [0, pi] for every layer (as before) repeat the dilated layers' values and cost 20-65 %."""
    import lipdsl.sdp.build

    net = _dilated_net(seed)
    exact = solve_network(net, frequencies=None).certificate
    own = solve_network(net, frequencies=5, refine_rounds=0).certificate
    monkeypatch.setattr(lipdsl.sdp.build, "tap_spacing", lambda taps: 1)
    spread = solve_network(net, frequencies=5, refine_rounds=0).certificate
    assert exact.verified and own.verified and spread.verified
    assert exact.lipschitz * (1 - 1e-7) <= own.lipschitz <= exact.lipschitz * 1.035
    assert own.lipschitz < spread.lipschitz / 1.1


@pytest.mark.solver
@pytest.mark.parametrize("structured_min", [0, 10**9])
def test_a_warm_refit_reaches_the_cold_refits_rho(structured_min, monkeypatch):
    """``refit_first_system(..., warm)``: the refits of one recovery share the coefficients of the first LMI
    and start from the last refit's solution; for another output weight (raised by 5 %) the warm refit's
    rho is the cold one's (1e-6) and CVXOPT is called with a start (with the structured KKT solver, and
    with the dense fallback)."""
    import copy

    import cvxopt.solvers

    monkeypatch.setattr(refit, "REFIT_STRUCTURED_MIN", structured_min)
    exact, c_exact, gridded, sol, full, cert = _solve_both(conv_net(1, channels=4, kernel=5), 5)
    point = kyp._solver_point(gridded, sol)
    warm = {}
    assert refit.refit_first_system(gridded, copy.deepcopy(point), warm) and warm["F"] is not None
    raised = copy.deepcopy(point)
    raised.scale_weight(gridded.links[0].w_out, 1.05)
    cold = copy.deepcopy(raised)
    refit.refit_first_system(gridded, cold)
    starts, real = [], cvxopt.solvers.conelp
    monkeypatch.setattr(cvxopt.solvers, "conelp",
                        lambda *a, **k: starts.append("primalstart" in k) or real(*a, **k))
    again = copy.deepcopy(raised)
    refit.refit_first_system(gridded, again, warm)
    assert starts[0] and again.rho == pytest.approx(cold.rho, rel=1e-6)


@pytest.mark.solver
def test_the_recovery_reuses_what_the_refinement_check_computed(monkeypatch):
    """When ``refined_grids`` finds nothing to refine, the recovery of the same point reuses its responses
    and its trials (``RecoveryCache``): with one direction tried (its repair clearly on one side of the
    threshold) one raise chain fewer, with all of them (close to the line, within ``REFINE_SURE`` times it)
    only the final chain is left; no frequency response is recomputed and the certified bound is the same
    (1e-7); a cache from another point is not used."""
    import copy

    from lipdsl.certify import reductions

    exact, c_exact, gridded, sol, full, cert = _solve_both(conv_net(1, channels=4, kernel=5), 9)
    chains, responses = [], []
    real_chain, real_response = kyp._raise_chain, kyp.frequency_response
    monkeypatch.setattr(kyp, "_raise_chain", lambda *a, **k: chains.append(1) or real_chain(*a, **k))
    monkeypatch.setattr(kyp, "frequency_response",
                        lambda *a, **k: responses.append(1) or real_response(*a, **k))
    start = reductions.chain(gridded, storage=False).invert(sol)
    cold = kyp.recover_point(gridded, copy.deepcopy(start))
    directions = len(kyp.RAISE_DIRECTIONS)
    assert len(chains) == directions + 1
    bound = certify(gridded, sol, point=cold).lipschitz

    for repair, sure, left in ((1.0, 1.0, directions), (1e-9, np.inf, 1)):
        monkeypatch.setattr(kyp, "REFINE_SURE", sure)
        cache = kyp.RecoveryCache(gridded)
        assert kyp.refined_grids(gridded, sol, threshold=np.inf, repair=repair, cache=cache) is None
        chains.clear(), responses.clear()
        warm = kyp.recover_point(gridded, copy.deepcopy(start), cache=cache)
        assert (len(chains), len(responses)) == (left, 0)
        assert certify(gridded, sol, point=warm).lipschitz == pytest.approx(bound, rel=1e-7)

    other = copy.deepcopy(start)
    other.rho *= 1.01
    chains.clear()
    kyp.recover_point(gridded, other, cache=cache)
    assert len(chains) == directions + 1


def _residual_in_frequency_form(tmp_path):
    """A random residual net whose block (with an activation inside) is gridded, its SDP and solution."""
    from nets import random_residual

    rng = np.random.default_rng(11)
    while True:
        gridded = build_sdp(lower(random_residual(rng, tmp_path)), frequencies=7)
        if any(link.system.internal and link.P in gridded.storage for link in gridded.links):
            return gridded, solve(gridded)


@pytest.mark.solver
@pytest.mark.parametrize("case", ["conv", "residual"])
def test_trying_the_last_peaks_first_recovers_the_point_of_full_evaluations(case, tmp_path, monkeypatch):
    """Step 2 keeps the multiplier shift that needs the least input shift (``PeakFirst``): a candidate whose
    grid's last peaks alone need as much as the best so far is dropped without a full evaluation. The
    recovered point is the one full evaluations of every candidate give, bit for bit, with fewer of them
    (plain conv layers and a residual block)."""
    if case == "conv":
        gridded = build_sdp(lower(conv_net(2, channels=4, kernel=5)), frequencies=7)
        sol = solve(gridded)
    else:
        gridded, sol = _residual_in_frequency_form(tmp_path)
    full, real = [], kyp._over_frequencies
    monkeypatch.setattr(kyp, "_over_frequencies", lambda *a: full.append(1) or real(*a))
    fast = recover_storage(gridded, sol).x
    with_peaks = len(full)

    def every_frequency(self, shifts, H, above=np.inf):
        return max(0.0, float(kyp._over_frequencies(shifts, H, self.threads, np.concatenate).max()))

    monkeypatch.setattr(kyp.PeakFirst, "__call__", every_frequency)
    full.clear()
    assert np.array_equal(recover_storage(gridded, sol).x, fast)
    assert with_peaks < len(full)


@pytest.mark.solver
def test_the_structured_refit_is_the_dense_refit(monkeypatch):
    """The first system's refit with lipdsl's structured KKT solver (``REFIT_STRUCTURED_MIN`` variables or
    more: each coefficient a few entries, ``_factored``) reaches the dense CVXOPT refit's rho (1e-6), and the
    recovered point certifies the same bound (1e-6); with the structured solve failing, the dense one
    still runs."""
    import copy

    gridded = build_sdp(lower(conv_net(1, channels=4, kernel=5)), frequencies=5)
    sol = solve(gridded)
    point = kyp._solver_point(gridded, sol)
    rhos, bounds = [], []
    for structured_min in (0, 10**9):
        monkeypatch.setattr(refit, "REFIT_STRUCTURED_MIN", structured_min)
        fitted = copy.deepcopy(point)
        assert refit.refit_first_system(gridded, fitted)
        rhos.append(fitted.rho)
        bounds.append(certify(gridded, recover_storage(gridded, sol)).lipschitz)
    assert rhos[0] == pytest.approx(rhos[1], rel=1e-6)
    assert bounds[0] == pytest.approx(bounds[1], rel=1e-6)
    monkeypatch.setattr(refit, "REFIT_STRUCTURED_MIN", 0)
    monkeypatch.setattr(refit, "_refit_structured", lambda problem, starts: None)
    fallback = copy.deepcopy(point)
    assert refit.refit_first_system(gridded, fallback)
    assert fallback.rho == pytest.approx(rhos[1], rel=1e-9)


@pytest.mark.solver
def test_the_final_refit_does_not_depend_on_where_the_looser_refits_stopped(monkeypatch):
    """The recovery's last refit, the one ``certify`` checks, is solved on to ``REFIT_FINAL_TOL`` by CVXOPT's
    'qr' KKT solver from where the structured solve stopped (``refit._polish``): with every refit stopped
    early (``REFIT_TOL`` 1e-2) the certified bound is the default one to 1e-9; without the polish (a refit
    above ``REFIT_POLISH_MAX_WORK``) it is not: the early stop costs 1e-6 or more, and the residual TCN's
    bound moved by 1e-8 with the weights' last bits."""
    gridded = build_sdp(lower(conv_net(1, channels=4, kernel=5)), frequencies=5)
    sol = solve(gridded)
    monkeypatch.setattr(refit, "REFIT_STRUCTURED_MIN", 0)
    default = certify(gridded, recover_storage(gridded, sol)).lipschitz
    monkeypatch.setattr(refit, "REFIT_TOL", 1e-2)
    monkeypatch.setattr(refit, "REFIT_NEAR_OPTIMAL", 1e-1)
    early = certify(gridded, recover_storage(gridded, sol))
    assert early.verified and early.lipschitz == pytest.approx(default, rel=1e-9)
    monkeypatch.setattr(refit, "REFIT_POLISH_MAX_WORK", 0)  # (a refit too large to polish keeps its solve)
    unpolished = certify(gridded, recover_storage(gridded, sol)).lipschitz
    assert unpolished > default * (1 + 1e-6)


def test_raise_directions_within_the_tie_go_to_the_first(monkeypatch):
    """``recover_point`` keeps the first of ``RAISE_DIRECTIONS`` whose trial ends within ``DIRECTION_TIE`` of
    the least ``rho`` (closer trials are a toss-up: their refits stop at relative gaps up to 1e-6): a later
    direction lower by less than that is not chosen, one lower by more is."""
    import types

    gridded = build_sdp(lower(conv_net(1, channels=4, kernel=5)), frequencies=5)
    start = kyp._solver_point(gridded, solve(gridded))
    first, later = kyp.RAISE_DIRECTIONS[0], kyp.RAISE_DIRECTIONS[-1]
    chosen = []
    monkeypatch.setattr(kyp, "_raise_chain", lambda sdp, point, fine, responses, margin, delta, storage:
                        chosen.append(delta))
    monkeypatch.setattr(kyp, "refit_first_system", lambda *args, **kwargs: False)
    for lower_by, expected in ((0.5, first), (2.0, later)):
        rhos = {d: 1.0 for d in kyp.RAISE_DIRECTIONS}
        rhos[later] = 1.0 - lower_by * kyp.DIRECTION_TIE

        def trial(self, start, delta, margin, warm=None, rhos=rhos):
            return types.SimpleNamespace(rho=rhos[delta])

        monkeypatch.setattr(kyp.RecoveryCache, "trial", trial)
        chosen.clear()
        kyp.recover_point(gridded, start)
        assert chosen == [expected]


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(2))
def test_dilated_storage_is_the_undilated_one_spread_over_its_chains(seed, monkeypatch):
    """``storage_matrix`` on the dilated layers (dilations 2 and 4, 3 channels: 12 and 24 states) solves
    their undilated systems (6 states each) and spreads them over the chains: each LMI is at least its
    ``shrink`` (``M(P) >= shrink I``, the direct solution's promise, to 1e-6 of it) and the certified bound
    is the one of the Riccati equation of the whole delay line (``undilated`` off) to 1e-9. (The two P differ
    by ~2e-4 relative: near the optimum ``Phi`` is nearly singular and the Riccati solution sensitive.)"""
    from lipdsl.certify import riccati
    from lipdsl.certify.recheck import system_matrix

    net = _dilated_net(seed)
    real, solved = kyp.storage_matrix, []

    def recording(sys, lam, X_in, X_out, inner=(), shrink=0.0):
        P = real(sys, lam, X_in, X_out, inner, shrink)
        solved.append((sys, lam, X_in, X_out, shrink, P, riccati.undilated(sys)))
        return P

    monkeypatch.setattr(kyp, "storage_matrix", recording)
    spread = solve_network(net, frequencies=5, refine_rounds=0)
    dilated = [call for call in solved if call[-1] is not None]
    assert sorted({call[0].ss.nx for call in dilated}) == [12, 24]
    assert all(call[-1][0].ss.nx == 6 for call in dilated)  # (the undilated systems: 2 stages of 3)
    for sys, lam, X_in, X_out, shrink, P, _ in dilated:
        assert np.linalg.eigvalsh(system_matrix(sys, P, lam, X_in, X_out)).min() >= shrink * (1 - 1e-6)
    monkeypatch.setattr(riccati, "undilated", lambda sys: None)
    whole = solve_network(net, frequencies=5, refine_rounds=0)
    assert spread.certificate.verified and whole.certificate.verified
    assert spread.certificate.lipschitz == pytest.approx(whole.certificate.lipschitz, rel=1e-9)


def test_undilated_reads_the_delay_line_of_a_dilated_conv_only():
    """``riccati.undilated``: a dilation-3 conv (k = 3: 6 stages of 2 inputs) has the undilated kernel's
    realization (2 stages: taps at lags 3 and 6) with its chains (lag mod 3) and stages; an undilated conv, a
    state space that is not a delay line and a residual block are left alone (None)."""
    import dataclasses

    from lipdsl.certify.riccati import undilated
    from lipdsl.model import lowered
    from lipdsl.model.realize import conv_state_space

    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 2, 3))
    sys = lowered.System("c", ("c",), "conv", conv_state_space(W, dilation=3), 1.0, (0.0, 1.0), "relu")
    small, stage, chain = undilated(sys)
    plain = conv_state_space(W)
    assert np.array_equal(small.ss.C, plain.C) and np.array_equal(small.ss.A, plain.A)
    assert np.array_equal(small.ss.D, plain.D)
    assert stage.tolist() == [0, 0, 0, 1, 1, 1] and chain.tolist() == [2, 1, 0, 2, 1, 0]  # lags 6, 5, .., 1
    assert undilated(dataclasses.replace(sys, ss=plain)) is None
    rotated = dataclasses.replace(sys.ss, A=sys.ss.A.T.copy())
    assert undilated(dataclasses.replace(sys, ss=rotated)) is None
    block = dataclasses.replace(sys, internal=(lowered.Internal("a", 2, 0.0, 1.0),))
    assert undilated(block) is None


@pytest.mark.parametrize("seed", range(6))
def test_largest_shift_is_the_clamped_maximum_of_the_shifts(seed):
    """``largest_shift`` (Cholesky tests at the level so far, eigenvalues only where one fails) gives
    ``max(0, max_w s(w))`` of the full evaluation (``_shifts``): Hermitian stacks whose shift peaks at one
    frequency between the sampled ones, near the end, at several, nowhere (all definite: 0), and for a
    missing complement ``inf``; fewer eigenvalue calls than batches."""
    rng = np.random.default_rng(seed)
    n, count = 6, 300
    A = rng.normal(size=(count, n, n)) + 1j * rng.normal(size=(count, n, n))
    schur = A @ np.conj(A.transpose(0, 2, 1)) / n + 0.5 * np.eye(n)  # definite: every s < 0
    dips = {0: [], 1: [3], 2: [count - 2], 3: [17, 150, 151, 299], 4: [1, 8], 5: [101]}[seed]
    for j, at in enumerate(dips):
        schur[at] -= (2.0 + j) * np.eye(n)
    full = max(0.0, float(kyp._shifts(schur, count).max()))
    assert kyp.largest_shift(schur) == pytest.approx(full, rel=1e-12, abs=1e-15)
    if not dips:
        assert kyp.largest_shift(schur) == 0.0
    assert kyp.largest_shift(None) == np.inf


def test_largest_shift_takes_eigenvalues_only_where_a_batch_fails(monkeypatch):
    """Of ten batches, only the one holding the peak needs eigenvalues (besides the sample that sets the
    first level): the others pass their Cholesky test."""
    n, count = 4, 10 * kyp.CHOLESKY_BATCH
    schur = np.tile(np.eye(n, dtype=complex), (count, 1, 1))
    schur[5 * kyp.CHOLESKY_BATCH + 3] -= 3 * np.eye(n)  # s = 2 there, -1 elsewhere; not a sampled frequency
    calls, real = [], kyp._shifts
    monkeypatch.setattr(kyp, "_shifts", lambda s, c: calls.append(len(s)) or real(s, c))
    assert kyp.largest_shift(schur) == pytest.approx(2.0)
    assert calls == [count // kyp.SHIFT_SAMPLE, kyp.CHOLESKY_BATCH]

"""The pipeline end to end (spec or network -> certified bound): the authors' ECG bounds, LipSDP's exact
values, input compression, and a soundness sandwich on random CNNs."""

import json
import math

import numpy as np
import pytest

from lipdsl.pipeline import solve_network
from lipdsl.baselines.unrolled import naive_hinf
from lipdsl.baselines.lipsdp import lipsdp
from lipdsl.baselines.empirical import lower_bound
from lipdsl.lang.load import load_network
from nets import dense_net, ecg, ecg_from_npz, random_small_cnn
from repo_paths import DATA, ROOT, SHARED

pytestmark = pytest.mark.solver
SHARED_ECG = SHARED / "cases" / "ecg"
REFERENCE = json.loads((DATA / "ecg" / "reference.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_ecg_reference_bounds(name):
    """The authors' MOSEK bounds (shared/cases/ecg/reference.json) to relative error <= 1e-6, certified."""
    result = solve_network(ecg(name))
    cert = result.certificate
    ref = REFERENCE[name]["lipschitz_reference"]
    assert cert.verified
    assert abs(cert.lipschitz - ref) / ref <= 1e-6
    low = REFERENCE[name]["empirical_lower_reference"]
    assert low is None or low <= cert.lipschitz


def test_ecg_spec_matches_the_hand_built_network():
    _, net = load_network(ROOT / "specs" / "ecg.lip")
    spec = solve_network(net).certificate
    assert spec.verified and abs(spec.lipschitz - 109.12299234900972) / 109.12299234900972 <= 1e-6


@pytest.mark.skipif(not SHARED_ECG.is_dir(), reason="shared/cases/ecg is not beside this clone")
@pytest.mark.parametrize("index", [0, 17, 33, 58])
def test_sampled_shared_ecg_models_certify(index):
    """A sample of the 59 ECG models (the benchmark runs all): certified and below the H-infinity product."""
    files = sorted(SHARED_ECG.glob("*.npz"))
    net = ecg_from_npz(files[index], biases=False)
    cert = solve_network(net).certificate
    assert cert.verified
    assert cert.lipschitz <= naive_hinf(net) * (1 + 1e-9)


def test_lipsdp_random_weights_is_exact():
    """LipSDP's random net: all weights >= 0, so the exact constant 36.48222959637795 must come out."""
    _, net = load_network(ROOT / "specs" / "lipsdp_random.lip")
    cert = solve_network(net).certificate
    assert cert.verified
    assert abs(cert.lipschitz - 36.48222959637795) / 36.48222959637795 <= 1e-5


@pytest.mark.parametrize("seed", range(4))
def test_dense_nets_equal_lipsdp_neuron(seed):
    """For pure dense nets the layer-wise SDP is LipSDP-Neuron (the paper's Remark 12)."""
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(2, 9, size=int(rng.integers(3, 5)))]
    net = dense_net(
        [rng.normal(size=(sizes[i + 1], sizes[i])) for i in range(len(sizes) - 1)],
        activation=str(rng.choice(["relu", "tanh"])),
    )
    ours = solve_network(net).certificate
    theirs = lipsdp(net, "neuron")
    assert ours.verified
    assert abs(ours.lipschitz - theirs.bound) / theirs.bound <= 1e-5


def test_single_dense_layer_is_its_spectral_norm():
    W = np.random.default_rng(5).normal(size=(4, 7))
    cert = solve_network(dense_net([W])).certificate
    assert cert.verified and math.isclose(cert.lipschitz, np.linalg.norm(W, 2), rel_tol=1e-6)


@pytest.mark.parametrize("seed", range(50))
def test_soundness_sandwich(seed):
    """empirical lower bound <= lipdsl bound <= product of the length-independent gains, every time."""
    net = random_small_cnn(np.random.default_rng(1000 + seed))
    cert = solve_network(net).certificate
    assert cert.verified
    low = lower_bound(net, starts=6, steps=10, seed=seed, time_budget=2.0).value
    high = naive_hinf(net)
    assert low <= cert.lipschitz * (1 + 1e-9), (low, cert.lipschitz)
    assert cert.lipschitz <= high * (1 + 1e-7), (cert.lipschitz, high)


def test_lipsdp_mnist_with_input_compression():
    """784-50-10: the first LMI shrinks from 834 to 100 rows (exact); LipSDP-Neuron's 24.3663 comes out."""
    _, net = load_network(ROOT / "specs" / "lipsdp_mnist.lip")
    result = solve_network(net)
    assert [lmi.size for lmi in result.sdp.lmis] == [100]
    assert result.certificate.verified
    assert abs(result.certificate.lipschitz - 24.3663) / 24.3663 <= 1e-5
    assert result.certificate.lipschitz >= 24.026455365561503  # ||W2 W1||_2, reachable


@pytest.mark.parametrize("seed", range(3))
def test_input_compression_is_exact(seed):
    from lipdsl.certify.recheck import certify
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp
    from lipdsl.solvers.solve import solve

    rng = np.random.default_rng(seed)
    W1 = rng.normal(size=(3, 9)) if seed != 2 else np.outer(rng.normal(size=3), rng.normal(size=9))  # rank 1
    net = dense_net([W1, rng.normal(size=(4, 3)), rng.normal(size=(2, 4))], activation="tanh")
    bounds = []
    for compress in (True, False):
        sdp = build_sdp(lower(net, compress=compress))
        cert = certify(sdp, solve(sdp))
        assert cert.verified
        bounds.append(cert.lipschitz)
    assert abs(bounds[0] - bounds[1]) <= 1e-6 * bounds[1]


def _has_max_pool(net) -> bool:
    return any(getattr(layer, "op", "") == "max" for layer in net.layers)


# LipSDP refuses max pooling (not slope-restricted): take the first 20 generated nets without it
NO_MAX_SEEDS = [
    s for s in range(1000, 1100) if not _has_max_pool(random_small_cnn(np.random.default_rng(s)))
][:20]


@pytest.mark.parametrize("seed", NO_MAX_SEEDS)
def test_lipsdp_neuron_on_the_unrolled_net_is_at_most_ours(seed):
    """LipSDP-Neuron (one LMI on the Toeplitz-unrolled net, a multiplier per neuron) is at least as tight."""
    net = random_small_cnn(np.random.default_rng(seed))
    ours = solve_network(net).certificate.lipschitz
    theirs = lipsdp(net, "neuron").bound
    assert theirs <= ours * (1 + 1e-6), (theirs, ours)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subspace_weights_are_certified_between_full_weights_and_diagonal(seed):
    """``weight_rank=r``: certified, never below the full-X bound of the same form (a restriction of its
    SDP) nor the empirical lower bound, and at most the diagonal-X bound (r = 0 is diagonal X) up to the
    storage recovery's repair."""
    from lipdsl.certify.recheck import certify
    from lipdsl.certify.storage import recover_storage
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp
    from lipdsl.solvers.solve import solve
    from nets import wide_gap_net

    net = wide_gap_net(seed, channels=8)
    full = solve_network(net, frequencies=9, weight_rank=None)
    sub = solve_network(net, frequencies=9, weight_rank=2)
    assert full.certificate.verified and sub.certificate.verified
    assert "rank-2 subspace" in sub.form
    assert sub.sdp.n < full.sdp.n
    assert sub.certificate.lipschitz_solver >= full.certificate.lipschitz_solver * (1 - 1e-6)
    low = lower(net)
    diag_sdp = build_sdp(low, frequencies=9, weights="diagonal")
    diag = certify(diag_sdp, recover_storage(diag_sdp, solve(diag_sdp, "cvxopt")))
    assert diag.verified
    assert sub.certificate.lipschitz_solver <= diag.lipschitz_solver * (1 + 1e-6)
    assert sub.certificate.lipschitz >= lower_bound(net, starts=8, seed=seed, time_budget=5.0).value



def test_the_default_form_takes_fewer_frequencies_for_wide_layers():
    """``choose_form``: 17 frequencies while the frequency LMIs stay below 192 rows (the plain TCN: 64),
    then fewer as they grow (``AUTO_WIDE_FREQUENCIES``, each LMI O(rows^3) an iteration): 9 from 192 rows
    (FCN 32/64/32: 192; ResNet-1D's blocks: 256), 7 from 384 (FCN 64/128/64); the sentence says why; an
    explicit K is kept."""
    import lipdsl
    from lipdsl.pipeline import AUTO_WIDE_FREQUENCIES, choose_form, problem_size
    from repo_paths import SPECS

    plain, narrow, resnet, wide = (lipdsl.load(SPECS / f"{name}.lip").typed
                                   for name in ("tcn_plain", "fcn_32_64_32", "resnet1d", "fcn_64_128_64"))
    rows = [problem_size(net, 1, 17).largest_lmi for net in (plain, narrow, resnet, wide)]
    assert rows == [64, 192, 256, 384]
    assert [step[0] for step in AUTO_WIDE_FREQUENCIES][-2:] == [384, 192]
    assert choose_form(plain)[0] == 17 and "not 17" not in choose_form(plain)[1]
    for net, k, m in ((narrow, 9, 192), (resnet, 9, 256), (wide, 7, 384)):
        chosen, why = choose_form(net)
        assert chosen == k
        assert f"on {k} frequencies, chosen automatically ({k}, not 17: LMIs of {m} rows" in why
    assert choose_form(wide, frequencies=17)[0] == 17


def test_the_frequency_form_solves_to_its_own_tolerance_by_default(monkeypatch):
    """``tol=None`` (the default): ``FREQUENCY_TOL`` for an interior-point solve of the frequency form, said
    in ``form``, in fewer iterations than 1e-7 and a certified bound at most that tolerance above 1e-7's (the
    grid's repair is larger than what it gives up); the exact form, an explicit ``tol`` and a first-order
    solver keep theirs."""
    import lipdsl.pipeline as pipeline
    from lipdsl.pipeline import solve_tolerance
    from lipdsl.solvers.registry import EXACT_TOL, FREQUENCY_TOL
    from nets import wide_gap_net

    asked = []
    real = pipeline.solve

    def recording(sdp, solver, **kwargs):
        asked.append(kwargs["tol"])
        return real(sdp, solver, **kwargs)

    monkeypatch.setattr(pipeline, "solve", recording)
    net = wide_gap_net(0, channels=8)
    default = solve_network(net, frequencies=9, refine_rounds=0)
    fine = solve_network(net, frequencies=9, refine_rounds=0, tol=1e-7)
    exact = solve_network(net, frequencies=None)
    assert asked == [FREQUENCY_TOL, 1e-7, EXACT_TOL]
    assert "solver tolerance 1e-4: the grid's repair is larger" in default.form
    assert "tolerance" not in fine.form and "tolerance" not in exact.form
    assert default.certificate.verified and fine.certificate.verified
    assert default.solution.iterations < fine.solution.iterations
    assert default.certificate.lipschitz <= fine.certificate.lipschitz * (1 + FREQUENCY_TOL)
    assert solve_tolerance(default.sdp, "scs", None) == (EXACT_TOL, "")
    assert solve_tolerance(default.sdp, "cvxopt", 1e-6) == (1e-6, "")

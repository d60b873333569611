"""Degenerate networks (zero, single-layer, dead, 1x1, huge, tiny): correct bounds or clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lipdsl.pipeline import solve_network
from lipdsl.app.cli import cli
from lipdsl.baselines.empirical import lower_bound
from nets import Builder, case_file, ecg_network

pytestmark = pytest.mark.solver
RNG = np.random.default_rng(7)


def bound(net) -> float:
    cert = solve_network(net).certificate
    assert cert.verified, cert.reason
    return cert.lipschitz


def test_all_zero_weights_certify_a_zero_bound():
    w1, w3 = RNG.standard_normal((4, 3)), RNG.standard_normal((2, 4))
    nets = [
        Builder(3, flat=True).dense(np.zeros((2, 3))).act().dense(np.zeros((1, 2))).build(),
        Builder(1, 8)
        .conv(np.zeros((2, 1, 3)), padding="causal")
        .act()
        .flatten()
        .dense(np.zeros((1, 16)))
        .build(),
        Builder(3, flat=True).dense(w1).act().dense(np.zeros((4, 4))).act().dense(w3).build(),  # zero middle
        Builder(3, flat=True)
        .dense(w1)
        .act("relu", slope=(0.0, 0.0))
        .dense(w3)
        .build(),  # constant activation
    ]
    for net in nets:
        result = solve_network(net)
        assert result.certificate.verified and result.certificate.lipschitz == 0.0
        assert (
            result.solution.claimed_status == "closed-form"
            and "the network is constant" in result.sdp.notes[0]
        )


def test_zero_network_from_the_command_line(tmp_path):
    spec = tmp_path / "z.lip"
    spec.write_text("input 2\ndense 2 -> 2, weight [[0, 0], [0, 0]]\nrelu\ndense 2 -> 1, weight [[1, 1]]\n")
    res = CliRunner().invoke(cli, ["solve", str(spec)])
    assert res.exit_code == 0 and "Lipschitz upper bound of z: 0 (certified)" in res.output
    assert "all-zero weights" in res.output


@pytest.mark.parametrize(
    "build,expected",
    [
        (lambda: Builder(3, flat=True).dense(np.array([[3.0, 0, 0], [0, 4.0, 0]])).build(), 4.0),  # ||W||_2
        (lambda: Builder(3, flat=True).act().build(), 1.0),  # ReLU alone: its slope bound
        (lambda: Builder(3, flat=True).act("sigmoid").build(), 0.25),
        # a lone conv (no flatten): the length-independent bound is the H-infinity norm |1 + 2 + 3|
        (lambda: Builder(1, 8).conv(np.array([[[1.0, 2.0, 3.0]]]), padding="causal").build(), 6.0),
        (lambda: Builder(1, 8).conv(np.array([[[1.0, 2.0, 3.0]]]), padding="causal").act().build(), 6.0),
    ],
)
def test_single_layer_networks(build, expected):
    assert bound(build()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "build,expected",
    [
        (lambda: Builder(2, 8).pool("avg", 2).build(), np.sqrt(1 / 2)),  # exact for non-overlapping windows
        (lambda: Builder(2, 8).pool("max", 2).build(), 1.0),
        (lambda: Builder(2, 8).flatten().build(), 1.0),
        (lambda: Builder(2, 9).gap().build(), 1 / 3),
    ],
)
def test_pool_or_flatten_alone_has_a_closed_form_bound(build, expected):
    net = build()
    result = solve_network(net)
    assert result.certificate.verified and result.certificate.lipschitz == pytest.approx(expected, rel=1e-15)
    assert lower_bound(net, starts=2, time_budget=2).value <= result.certificate.lipschitz * (1 + 1e-12)


def test_overlapping_average_pool_alone_is_its_fir_gain():
    """avgpool k3 s2 is an FIR on blocks of 2 samples, y[t] = (u[2t-2] + u[2t-1] + u[2t]) / 3 per channel:
    its gain max_w |[1 + e^-iw, 1]| / 3 = sqrt(5)/3 (at w = 0), below the old factor sqrt(2/3)."""
    net = Builder(2, 8).pool("avg", 3, 2).build()
    result = solve_network(net)
    assert result.certificate.verified
    assert result.certificate.lipschitz == pytest.approx(np.sqrt(5) / 3, rel=1e-6)
    assert result.certificate.lipschitz < np.sqrt(2 / 3)
    assert lower_bound(net, starts=2, time_budget=2).value <= result.certificate.lipschitz * (1 + 1e-12)


def test_dead_relu_network_bound_ignores_biases_and_stays_above_the_lower_bound():
    w1, w2 = RNG.standard_normal((5, 3)), RNG.standard_normal((2, 5))
    dead = Builder(3, flat=True).dense(w1, bias=-1e3 * np.ones(5)).act().dense(w2).build()
    alive = Builder(3, flat=True).dense(w1).act().dense(w2).build()
    assert bound(dead) == pytest.approx(bound(alive), rel=1e-9)
    low = lower_bound(dead, starts=4, time_budget=5).value
    assert low <= bound(dead)


def test_one_channel_one_sample_input_dense_head():
    # 1 x 1 input, k=1 conv, then a dense head on the flattened single sample: L = |2 * 3| = 6
    net = Builder(1, 1).conv(np.array([[[2.0]]])).act().flatten().dense(np.array([[-3.0]])).build()
    # the last LMI is 1 x 1 and exactly tight (X = W'W): the repair's margin must be taken relative to the
    # terms' size, not to ||M|| ~ 0, or the rounding of X - W'W defeats it (it did before this test)
    assert bound(net) == pytest.approx(6.0, rel=1e-6)
    two = Builder(1, 2).conv(np.array([[[2.0]]])).act().flatten().dense(np.array([[-3.0, 1.0]])).build()
    assert bound(two) == pytest.approx(2 * np.sqrt(10), rel=1e-6)


@pytest.mark.parametrize("scale", [1e12, 1e-12])
def test_huge_and_tiny_weights_scale_the_bound_exactly(scale):
    w1, w2 = RNG.standard_normal((4, 3)), RNG.standard_normal((2, 4))
    c1, head = RNG.standard_normal((2, 1, 3)), RNG.standard_normal((2, 12))
    nets = [
        lambda s: Builder(3, flat=True).dense(s * w1).act().dense(w2).build(),
        lambda s: Builder(1, 6).conv(s * c1, padding="causal").act().flatten().dense(s * head).build(),
    ]
    for i, make in enumerate(nets):
        ref = bound(make(1.0))
        factor = scale if i == 0 else scale * scale
        assert bound(make(scale)) == pytest.approx(factor * ref, rel=1e-6)


@pytest.mark.parametrize("model", ["CNN_L2_23_03_08_06_34", "CNN_L2_23_03_08_06_44"])
def test_ecg_models_with_tiny_bounds_certify_above_the_empirical_lower_bound(model):
    if case_file("ecg", f"{model}.npz") is None:
        pytest.skip("shared ECG cases not available")
    net = ecg_network(model)
    result = solve_network(net)
    cert = result.certificate
    assert cert.verified and 0 < cert.lipschitz < 1e-20
    low = lower_bound(net, starts=4, time_budget=10).value
    assert 0 < low <= cert.lipschitz

"""Empirical lower bound: reproducible, a true Jacobian norm, and tight where the answer is known."""
import numpy as np
import pytest

from lipdsl.baselines.unrolled import naive
from lipdsl.baselines.empirical import lower_bound
from lipdsl.errors import LipdslError
from lipdsl.model.forward import jacobian

from nets import Builder, lipsdp_net, random_cnn

RANDOM_WEIGHTS_EXACT = 36.48222959637795


def test_value_is_the_jacobian_norm_at_the_witness_and_reproducible():
    net = random_cnn(np.random.default_rng(1), activation="tanh")
    a = lower_bound(net, starts=3, steps=8, seed=7)
    b = lower_bound(net, starts=3, steps=8, seed=7)
    assert a.value == b.value and np.array_equal(a.argmax_input, b.argmax_input)
    assert a.value == pytest.approx(np.linalg.norm(jacobian(net, a.argmax_input), 2), rel=1e-12)
    assert a.argmax_input.shape == (net.input_shape.channels, net.input_shape.length)
    assert a.starts == 3 and a.evaluations > 3
    assert a.value <= naive(net)


def test_random_weights_finds_the_exact_constant():
    net = lipsdp_net("random_weights")
    if net is None:
        pytest.skip("shared reference cases not available")
    assert lower_bound(net, starts=8, steps=10).value == pytest.approx(RANDOM_WEIGHTS_EXACT, rel=1e-9)


def test_mnist_lower_bound():
    net = lipsdp_net("mnist_weights")
    if net is None:
        pytest.skip("shared reference cases not available")
    lb = lower_bound(net, starts=16)
    assert 24.0 <= lb.value <= 24.3663  # <= LipSDP-Neuron


def test_any_length_and_progress():
    net = Builder(2, None).conv(np.ones((3, 2, 3)), padding="causal").act("relu").build()
    calls = []
    lb = lower_bound(net, starts=2, steps=3, progress=lambda *a: calls.append(a))
    assert lb.argmax_input.shape == (2, 64) and lb.length == 64
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]
    assert lower_bound(net, starts=1, steps=2, length=10).argmax_input.shape == (2, 10)


def test_time_budget_stops_early():
    net = random_cnn(np.random.default_rng(2))
    lb = lower_bound(net, starts=10000, time_budget=0.5)
    assert lb.starts < 10000 and lb.seconds < 5


def test_custom_activation_refused():
    net = Builder(4, flat=True).dense(np.eye(4)).act("mystep", slope=(0.0, 1.0)).build()
    with pytest.raises(LipdslError, match="known function"):
        lower_bound(net)


def test_surrogates_follow_the_true_derivative():
    """The smoothed ReLU / leaky ReLU / hardtanh tend to the true function and derivative as tau -> 0."""
    from lipdsl.model.forward import _activation_functions, _surrogate_functions

    z = np.array([-2.0, -0.5, 0.3, 0.9, 1.7])
    for fn, p in [("relu", None), ("leaky_relu", 0.2), ("hardtanh", None)]:
        layer = Builder(5, flat=True).act(fn, p).build().layers[0]
        phi, dphi = _activation_functions(layer)
        sphi, sdphi = _surrogate_functions(layer, 1e-4)
        np.testing.assert_allclose(sphi(z), phi(z), atol=1e-3)
        np.testing.assert_allclose(sdphi(z), dphi(z), atol=1e-3)

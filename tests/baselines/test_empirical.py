"""Empirical lower bound: reproducible, a true Jacobian norm, and tight where the answer is known."""
import numpy as np
import pytest

from lipdsl.baselines.unrolled import naive
from lipdsl.baselines.empirical import lower_bound, padded_inputs, search_cost
from lipdsl.errors import LimitError, LipdslError
from lipdsl.model.forward import jacobian

from nets import Builder, lipsdp_net, random_cnn
from repo_paths import SPECS

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


def test_the_jacobian_ascent_refines_the_pair_ascents_witness(monkeypatch):
    """The smoothed Jacobian ascent after the pair ascent (``_ascent``: small steps from the best input,
    ``tau`` annealed from 0.2 to 0.0005) raises the trained strided ResNet's lower bound by 8 % (311.33 ->
    337.15 here); without it, or with the old large steps (0.2 ``||u||``), the pair ascent's witness stays
    the best."""
    from lipdsl.baselines import empirical
    from lipdsl.lang.load import load_network

    _, net = load_network(SPECS / "resnet1d_strided.lip")
    default = (empirical.ASCENT_ITERATIONS, empirical.ASCENT_ETA, empirical.ASCENT_TAU)
    found = {}
    for label, setting in (("none", (0,) + default[1:]), ("old steps", (30, 0.2, (0.05, 5e-4))),
                           ("default", default)):
        for name, value in zip(("ASCENT_ITERATIONS", "ASCENT_ETA", "ASCENT_TAU"), setting):
            monkeypatch.setattr(empirical, name, value)
        found[label] = lower_bound(net, starts=4, steps=3, seed=0, time_budget=60)
    assert found["none"].search != "jacobian-ascent" and found["old steps"].value == found["none"].value
    assert found["default"].search == "jacobian-ascent"
    assert found["default"].value >= 1.05 * found["none"].value
    assert found["default"].value == pytest.approx(
        np.linalg.norm(jacobian(net, found["default"].argmax_input), 2), rel=1e-12)


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


# ---------------------------------------------------------------------------------------- the pair search


@pytest.mark.parametrize("seed", range(6))
def test_never_above_the_certified_bound(seed):
    """Soundness sandwich on random small nets: lower bound (pair search included) <= certified bound."""
    from lipdsl.pipeline import solve_network

    net = random_cnn(np.random.default_rng(300 + seed), activation=["relu", "tanh"][seed % 2])
    cert = solve_network(net).certificate
    assert cert.verified
    lb = lower_bound(net, starts=6, steps=5, seed=seed, time_budget=1.5)
    assert 0 < lb.value <= cert.lipschitz * (1 + 1e-9), (lb.value, cert.lipschitz)


def test_every_recorded_value_is_reproduced_by_single_input_passes():
    """The batched pair ascent's quotients and Jacobian norms equal independent single-input recomputations
    (forward passes for ||f(x) - f(y)|| / ||x - y||, the dense Jacobian and its LAPACK norm)."""
    from lipdsl.baselines.empirical import _pair_ascent
    from lipdsl.model.forward import forward

    net = random_cnn(np.random.default_rng(5), activation="relu")
    rng = np.random.default_rng(0)
    shape = (net.input_shape.channels, net.input_shape.length)
    records = []
    _pair_ascent(net, rng.standard_normal((4, int(np.prod(shape)))), 12, rng, lambda: False,
                 lambda kind, x, y, v: records.append((kind, x.copy(), None if y is None else y.copy(), v)))
    kinds = {r[0] for r in records}
    assert kinds == {"difference", "jacobian"}
    for kind, x, y, v in records[::5]:
        if kind == "jacobian":
            assert v == pytest.approx(np.linalg.norm(jacobian(net, x.reshape(shape)), 2), rel=1e-10)
        else:
            q = np.linalg.norm(forward(net, x.reshape(shape)) - forward(net, y.reshape(shape)))
            assert v == pytest.approx(q / np.linalg.norm(x - y), rel=1e-10)


def test_reported_witness_is_reproduced():
    net = random_cnn(np.random.default_rng(11), activation="relu")
    lb = lower_bound(net, starts=4, steps=5, seed=3, time_budget=2.0)
    assert lb.search in ("random", "pair-ascent", "pair-refine", "segment", "jacobian-ascent")
    if lb.witness == "jacobian":
        assert lb.second_input is None
        witnessed = np.linalg.norm(jacobian(net, lb.argmax_input), 2)
    else:
        from lipdsl.model.forward import forward

        u, v = lb.argmax_input, lb.second_input
        witnessed = np.linalg.norm(forward(net, u) - forward(net, v)) / np.linalg.norm(u - v)
    # the witness's value less its rounding margin (lower_bound's docstring)
    assert lb.value <= witnessed and lb.value == pytest.approx(witnessed, rel=1e-9)


def test_relu_layer_of_full_row_rank_reaches_its_norm():
    """relu(W x + b) with W of full row rank: every pattern is reachable, the all-active one gives
    L = ||W||_2 (no other pattern does better); the search finds it within 1 % (random inputs activate
    about half)."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((6, 10))
    net = Builder(10, flat=True).dense(W, rng.standard_normal(6)).act("relu").build()
    exact = np.linalg.norm(W, 2)
    value = lower_bound(net, starts=8, steps=5, time_budget=3.0).value
    assert 0.99 * exact <= value <= exact * (1 + 1e-12)


def test_relu_conv_layer_reaches_its_toeplitz_norm():
    """relu(conv(x) + b), one output channel, valid padding: the Toeplitz map T (rows w shifted, built here
    independently) has full row rank, so L = ||T||_2; the search gets within 1 %."""
    rng = np.random.default_rng(8)
    N, w = 24, rng.standard_normal(5)
    T = np.zeros((N - 4, N))
    for t in range(N - 4):
        T[t, t:t + 5] = w  # PyTorch's cross-correlation
    net = (Builder(1, N).conv(w.reshape(1, 1, 5), bias=0.3 * rng.standard_normal(1)).act("relu")
           .flatten().build())
    exact = np.linalg.norm(T, 2)
    value = lower_bound(net, starts=8, steps=5, time_budget=3.0).value
    assert 0.99 * exact <= value <= exact * (1 + 1e-12)


def test_linear_dense_layer_is_exact():
    W = np.random.default_rng(2).standard_normal((3, 7))
    net = Builder(7, flat=True).dense(W).build()
    assert lower_bound(net, starts=2, steps=2).value == pytest.approx(np.linalg.norm(W, 2), rel=1e-12)


def _dilated(tmp_path, dilation, residual=False, length="8"):
    from lipdsl.lang.load import load_network

    conv = ("conv1d c: 2 -> 2, kernel 3, dilation " + dilation + ", padding causal, "
            "weight [[[0.5,0.2,-0.1],[0.1,-0.3,0.2]],[[0.0,0.4,0.1],[0.2,0.1,-0.5]]]\n")
    body = f"residual r:\n{conv}relu\nend\n" if residual else conv
    spec = tmp_path / "dil.lip"
    spec.write_text(f"network t\ninput 2 x {length}\n{body}")
    return load_network(str(spec))[1]


@pytest.mark.parametrize("dilation", ["10^10", "10^18", "10^30", "10^400"])
def test_a_dilation_whose_padding_exceeds_the_memory_is_refused_at_its_conv(tmp_path, dilation):
    """The forward pass pads as PyTorch does (dilation * (kernel - 1) zeros): ``np.pad`` raised
    MemoryError, 'array is too big' or a TypeError; now a LimitError at the conv's line, before allocating."""
    net = _dilated(tmp_path, dilation)
    padded = r"the padded input of conv1d 'c' \(2 x \d.* samples: padding"
    with pytest.raises(LimitError, match=padded) as err:
        lower_bound(net, starts=2, time_budget=2)
    assert err.value.span.line == 3 and "reduce the dilation or padding of 'c'" in err.value.hint


def test_padding_inside_a_residual_block_is_counted_at_the_given_length(tmp_path):
    net = _dilated(tmp_path, "10^9", residual=True, length="*")
    assert [(L.name, n) for L, n in padded_inputs(net, 16)] == [("c", 16 + 2 * 10**9)]
    with pytest.raises(LimitError, match=r"inputs of shape 2 x 16: the padded input of conv1d 'c'") as err:
        lower_bound(net, starts=2, length=16, time_budget=2)
    assert err.value.span.line == 4


def test_search_cost_counts_the_padding():
    """Padding adds to the memory estimate: 40 zeros of causal padding per sample cost more than none."""
    W = np.ones((2, 2, 3))
    plain = Builder(2, 8).conv(W, padding=1).build()
    dilated = Builder(2, 8).conv(W, padding="causal", dilation=20).build()
    assert [n for _, n in padded_inputs(dilated, None)] == [48]
    assert search_cost(dilated, (2, 8), 4, 8)[0] > search_cost(plain, (2, 8), 4, 8)[0]


def test_a_moderate_dilation_still_gives_the_bound(tmp_path):
    """Dilation 1000 (2000 zeros of padding): fits, and only the last tap reads the input (a 1x1 conv)."""
    net = _dilated(tmp_path, "1000")
    W = np.array([[-0.1, 0.2], [0.1, -0.5]])  # W[:, :, 2]
    assert lower_bound(net, starts=2, time_budget=2).value == pytest.approx(np.linalg.norm(W, 2), rel=1e-9)

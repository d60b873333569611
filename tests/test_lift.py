"""Lifting (--lift L): the block realization is the same map, and the bound tightens soundly with L."""

import numpy as np
import pytest

from lipdsl.api import solve_network
from lipdsl.baselines import lipsdp, naive_hinf
from lipdsl.empirical import lower_bound
from lipdsl.errors import UnsupportedError
from lipdsl.lower import conv_state_space, lift_state_space, lower
from nets import Builder
from test_sdp import ecg


@pytest.mark.parametrize("b", [1, 2, 3, 5])
def test_lifted_realization_is_the_same_map(b):
    rng = np.random.default_rng(b)
    W = rng.normal(size=(3, 2, 4))
    ss = conv_state_space(W, dilation=2)
    lifted = lift_state_space(ss, b)
    u = rng.normal(size=(2, 6 * b))
    v = ss.simulate(u)
    # blocks of b samples, sample-major: [u[tau b]; ...; u[tau b + b - 1]]
    ut = u.T.reshape(6, b * 2).T
    vt = lifted.simulate(ut)
    assert np.allclose(vt, v.T.reshape(6, b * 3).T)
    assert lifted.nx == ss.nx


def causal_cnn(seed, pools=True):
    rng = np.random.default_rng(seed)
    b = Builder(1, 16)
    b.conv(rng.normal(size=(2, 1, 3)), padding="causal").act("relu")
    if pools:
        b.pool("avg", 2)
    b.conv(rng.normal(size=(2, 2, 3)), padding="causal").act("tanh")
    if pools:
        b.pool("avg", 2)
    return b.flatten().dense(rng.normal(size=(3, b.shape.size))).build()


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(6))
def test_bound_is_sound_and_non_increasing_along_lift(seed):
    """lower <= lipsdp-neuron <= dissipative(L) <= naive-hinf, non-increasing along L = 1, 2, 4, 8."""
    net = causal_cnn(seed, pools=seed % 2 == 0)
    bounds = []
    for L in (1, 2, 4, 8):
        cert = solve_network(net, lift=L).certificate
        assert cert.verified
        bounds.append(cert.lipschitz)
    neuron = lipsdp(net, "neuron").bound
    low = lower_bound(net, starts=6, steps=10, seed=seed, time_budget=2.0).value
    assert low <= neuron * (1 + 1e-7)
    for a, b in zip(bounds, bounds[1:]):
        assert b <= a * (1 + 1e-6), bounds
    assert neuron <= bounds[-1] * (1 + 1e-6), (neuron, bounds)
    assert bounds[0] <= naive_hinf(net) * (1 + 1e-7)


@pytest.mark.solver
def test_ecg_lift_4_is_tighter_and_above_the_authors_lower_bound():
    net = ecg("CNN_23_03_08_12_42")  # authors' sampled lower bound 24.80, their SDP bound 109.578
    one = solve_network(net).certificate.lipschitz
    four = solve_network(net, lift=4).certificate
    assert four.verified and 24.7964604607472 <= four.lipschitz <= one * (1 + 1e-7)


def test_unaligned_layers_are_refused_with_a_hint():
    rng = np.random.default_rng(0)
    net = (
        Builder(1, 16)
        .conv(rng.normal(size=(2, 1, 3)), padding="same")
        .act("relu")
        .flatten()
        .dense(rng.normal(size=(2, 32)))
        .build()
    )
    with pytest.raises(UnsupportedError, match="causal padding") as info:
        lower(net, lift=2)
    assert "--lift 1" in info.value.hint
    lower(net, lift=1)  # the paper's realization handles it


def lift_friendly_cnn(rng: np.random.Generator):
    """Causal convs (dilation, stride 2), average pools with kernel = stride, mixed slopes, flatten, dense."""
    acts = ["relu", "tanh", "sigmoid", "leaky_relu"]
    b = Builder(int(rng.integers(1, 3)), 16)
    for _ in range(int(rng.integers(1, 3))):
        c_out = int(rng.integers(1, 4))
        stride = int(rng.choice([1, 1, 2])) if b.shape.length >= 8 else 1
        b.conv(rng.normal(size=(c_out, b.shape.channels, int(rng.integers(1, 4)))), padding="causal",
               dilation=int(rng.choice([1, 2])), stride=stride)
        act = str(rng.choice(acts))
        b.act(act, 0.1 if act == "leaky_relu" else None)
        if rng.random() < 0.5 and b.shape.length >= 8:
            b.pool("avg", 2)
    b.flatten()
    if rng.random() < 0.5:
        b.dense(rng.normal(size=(int(rng.integers(2, 6)), b.shape.channels))).act("relu")
    return b.dense(rng.normal(size=(int(rng.integers(1, 3)), b.shape.channels))).build()


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(40))
def test_mixed_nets_every_lift_is_sandwiched(seed):
    """40 nets: lower <= LipSDP-Neuron <= dissipative(L) <= H-inf product, and non-increasing along L."""
    net = lift_friendly_cnn(np.random.default_rng(500 + seed))
    bounds = []
    for L in (1, 2, 4):
        cert = solve_network(net, lift=L).certificate
        assert cert.verified
        bounds.append(cert.lipschitz)
    for a, b in zip(bounds, bounds[1:]):
        assert b <= a * (1 + 1e-6), bounds
    neuron = lipsdp(net, "neuron").bound
    assert neuron <= bounds[-1] * (1 + 1e-6), (neuron, bounds)
    assert bounds[0] <= naive_hinf(net) * (1 + 1e-7)
    low = lower_bound(net, starts=4, steps=8, seed=seed, time_budget=1.0).value
    assert low <= neuron * (1 + 1e-7)

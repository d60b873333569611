"""Lifting (--lift L): the block realization is the same map, and the bound tightens soundly with L."""

import numpy as np
import pytest

from lipdsl.pipeline import solve_network
from lipdsl.baselines.unrolled import naive_hinf
from lipdsl.baselines.lipsdp import lipsdp
from lipdsl.baselines.empirical import lower_bound
from lipdsl.errors import UnsupportedError
from lipdsl.model.lower import conv_state_space, lower
from lipdsl.model.lift import lift_state_space
from nets import Builder
from nets import ecg


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
    """Right padding on a signal whose length the block does not divide (its zeros would share a block with
    samples), and a global average pool over such a length, are refused; with 16 samples they are lifted."""
    rng = np.random.default_rng(0)
    for n, ok in ((15, False), (16, True)):
        net = (
            Builder(1, n)
            .conv(rng.normal(size=(2, 1, 3)), padding="same")
            .act("relu")
            .flatten()
            .dense(rng.normal(size=(2, 2 * n)))
            .build()
        )
        gap = Builder(1, n).conv(rng.normal(size=(2, 1, 3)), padding="causal").act("relu").gap().build()
        if ok:
            lower(net, lift=2), lower(gap, lift=2)
            continue
        with pytest.raises(UnsupportedError, match="right padding") as info:
            lower(net, lift=2)
        assert "--lift 1" in info.value.hint
        with pytest.raises(UnsupportedError, match="global average pool"):
            lower(gap, lift=2)
        lower(net, lift=1), lower(gap, lift=1)  # the paper's realization handles both


def lift_friendly_cnn(rng: np.random.Generator):
    """Convs (causal or "same", dilation, stride 2; sometimes linear: no activation after), mixed slopes,
    pools with kernel = stride (average or max), flatten or global average pool, dense. Returns the net and
    whether it has a max pool (LipSDP refuses those)."""
    acts = ["relu", "tanh", "sigmoid", "leaky_relu"]
    b = Builder(int(rng.integers(1, 3)), 16)
    has_max = False
    for _ in range(int(rng.integers(1, 3))):
        c_out = int(rng.integers(1, 4))
        stride = int(rng.choice([1, 1, 2])) if b.shape.length >= 8 else 1
        padding = "same" if stride == 1 and rng.random() < 0.3 else "causal"
        b.conv(rng.normal(size=(c_out, b.shape.channels, int(rng.integers(1, 4)))), padding=padding,
               dilation=int(rng.choice([1, 2])), stride=stride)
        if rng.random() < 0.8:
            act = str(rng.choice(acts))
            b.act(act, 0.1 if act == "leaky_relu" else None)
        if rng.random() < 0.5 and b.shape.length >= 8:
            op = "max" if rng.random() < 0.3 else "avg"
            has_max |= op == "max"
            b.pool(op, 2)
    if rng.random() < 0.25:
        b.gap()
    else:
        b.flatten()
    if rng.random() < 0.5:
        b.dense(rng.normal(size=(int(rng.integers(2, 6)), b.shape.size))).act("relu")
    return b.dense(rng.normal(size=(int(rng.integers(1, 3)), b.shape.size))).build(), has_max


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(40))
def test_mixed_nets_every_lift_is_sandwiched(seed):
    """40 nets: lower <= LipSDP-Neuron <= dissipative(L) <= H-inf product, and non-increasing along
    L = 1, 2, 4, 8 (LipSDP skipped for max pools: lower <= dissipative(L) then)."""
    net, has_max = lift_friendly_cnn(np.random.default_rng(500 + seed))
    bounds = []
    for L in (1, 2, 4, 8):
        cert = solve_network(net, lift=L).certificate
        assert cert.verified
        bounds.append(cert.lipschitz)
    for a, b in zip(bounds, bounds[1:]):
        assert b <= a * (1 + 1e-6), bounds
    low = lower_bound(net, starts=4, steps=8, seed=seed, time_budget=1.0).value
    assert bounds[0] <= naive_hinf(net) * (1 + 1e-7)
    if has_max:
        assert low <= bounds[-1] * (1 + 1e-7)
        return
    neuron = lipsdp(net, "neuron").bound
    assert neuron <= bounds[-1] * (1 + 1e-6), (neuron, bounds)
    assert low <= neuron * (1 + 1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_causal_conv_runs_merge_exactly(seed):
    """merge_causal_convs: the composed causal conv is the two convs in turn; with biases the difference is
    an offset that does not depend on the input (the Lipschitz constant is the same)."""
    from lipdsl.model.forward import conv1d
    from lipdsl.model.lower import merge_causal_convs

    rng = np.random.default_rng(seed)
    b = Builder(2, 20)
    for c_in, c_out, k_min in ((2, 3, 1), (3, 2, 2)):
        b.conv(rng.normal(size=(c_out, c_in, int(rng.integers(k_min, 4)))), padding="causal",
               dilation=int(rng.integers(1, 3)), bias=rng.normal(size=c_out))
    net = b.act("relu").flatten().dense(rng.normal(size=(1, 40))).build()
    merged, notes = merge_causal_convs(list(net.layers))
    assert len(merged) == len(net.layers) - 1 and "merged" in next(iter(notes.values()))
    m = merged[0]
    assert m.bias is None
    x = rng.normal(size=(5, 2, 20))
    outs = []
    for biased in (False, True):
        y = x
        for L in net.layers[:2]:
            y = conv1d(y, L.weight, L.stride, L.dilation, L.pad_left, L.pad_right)
            y = y + L.bias[:, None] if biased else y
        outs.append(y - conv1d(x, m.weight, m.stride, m.dilation, m.pad_left, m.pad_right))
    np.testing.assert_allclose(outs[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(outs[1], np.broadcast_to(outs[1][0], outs[1].shape), atol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_padded_conv_on_blocks_is_the_network_layer_delayed(seed):
    """delayed_lifted_conv: output blocks from m0 on are the PyTorch conv (any padding, stride dividing b)."""
    from lipdsl.model.forward import conv1d
    from lipdsl.model.lift import delayed_lifted_conv

    rng = np.random.default_rng(seed)
    b = int(rng.choice([2, 4]))
    k, d, s = int(rng.integers(1, 5)), int(rng.integers(1, 3)), int(rng.choice([1, 2]))
    span = d * (k - 1)
    pad = str(rng.choice(["same", "valid", "2"]))
    n = 16
    net = Builder(2, n).conv(rng.normal(size=(3, 2, k)), stride=s if pad != "same" else 1, dilation=d,
                             padding=2 if pad == "2" else pad).build()
    conv = net.layers[0]
    ss, m0, D = delayed_lifted_conv(conv, b)
    assert ss.nx == (span + D) * 2
    x = rng.normal(size=(2, n))
    ref = conv1d(x[None], conv.weight, conv.stride, d, conv.pad_left, conv.pad_right)[0]
    blocks = np.hstack([x, np.zeros((2, 4 * b))])  # sample-major blocks: row r*c + ch
    T = blocks.shape[1] // b
    y = ss.simulate(blocks.T.reshape(T, b * 2).T)
    bo = b // conv.stride
    out = y.T.reshape(T * bo, 3).T  # back to (channels, samples)
    assert np.allclose(out[:, m0 * bo : m0 * bo + ref.shape[1]], ref, atol=1e-12)


def newly_liftable_cnn(rng):
    """A CNN with the layers --lift now accepts while a block holds > 1 sample: 'same'/'valid'/int padding
    (lengths that 8 divides), max pools with kernel = stride, and a global average pool at the end (or a
    flatten)."""
    acts = ["relu", "tanh", "leaky_relu"]
    b = Builder(int(rng.integers(1, 3)), 16)
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(1, 4))
        pad = str(rng.choice(["same", "valid", "causal", "1"]))
        if pad in ("valid", "1") and b.shape.length < 8:
            pad = "same"
        b.conv(rng.normal(size=(int(rng.integers(1, 4)), b.shape.channels, k)) / np.sqrt(k),
               padding=1 if pad == "1" else pad)
        act = str(rng.choice(acts))
        b.act(act, 0.1 if act == "leaky_relu" else None)
        if rng.random() < 0.5 and b.shape.length >= 8 and b.shape.length % 2 == 0:
            b.pool("max" if rng.random() < 0.7 else "avg", 2)
    if b.shape.length % 4 == 0 and rng.random() < 0.5:
        b.gap()
    b.flatten()
    return b.dense(rng.normal(size=(int(rng.integers(1, 3)), b.shape.channels))).build()


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(16))
def test_padding_max_pool_and_gap_lift_soundly(seed):
    """lower <= LipSDP-Neuron (no max pools) <= dissipative(L), non-increasing along the lifts it admits."""
    net = newly_liftable_cnn(np.random.default_rng(900 + seed))
    bounds = []
    for L in (1, 2, 4, 8):
        try:
            cert = solve_network(net, lift=L).certificate
        except UnsupportedError:
            break
        assert cert.verified
        bounds.append(cert.lipschitz)
    assert len(bounds) >= 2
    for a, b in zip(bounds, bounds[1:]):
        assert b <= a * (1 + 1e-6), bounds
    assert bounds[0] <= naive_hinf(net) * (1 + 1e-7)
    low = lower_bound(net, starts=4, steps=8, seed=seed, time_budget=1.0).value
    assert low <= bounds[-1] * (1 + 1e-7)
    if not any(layer.kind == "pool" and layer.op == "max" for layer in net.layers):  # (LipSDP: no max pools)
        neuron = lipsdp(net, "neuron").bound
        assert low <= neuron * (1 + 1e-7) and neuron <= bounds[-1] * (1 + 1e-6), (low, neuron, bounds)


def flatten_activation_cnn(rng):
    """Causal convs (sometimes average pools), then flatten -> activation (issue 17: 136 of 400 such nets
    crashed with --lift, 103 were reported primal infeasible), optional hidden dense layer, dense output."""
    b = Builder(int(rng.integers(1, 3)), int(rng.choice([4, 6, 7, 8, 12])))
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(1, 4))
        b.conv(rng.standard_normal((int(rng.integers(1, 4)), b.shape.channels, k)) / np.sqrt(k),
               padding="causal")
        b.act(str(rng.choice(["relu", "tanh"])))
        if rng.random() < 0.3 and b.shape.length % 2 == 0:
            b.pool("avg", 2)
    b.flatten().act(str(rng.choice(["relu", "tanh", "sigmoid"])))
    if rng.random() < 0.5:
        b.dense(rng.standard_normal((int(rng.integers(2, 5)), b.shape.size))).act("relu")
    return b.dense(rng.standard_normal((int(rng.integers(1, 3)), b.shape.size))).build()


@pytest.mark.solver
@pytest.mark.parametrize("chunk", [0] + [pytest.param(c, marks=pytest.mark.slow) for c in range(1, 4)])
def test_flatten_then_activation_lifts_soundly(chunk):
    """100 generated nets with flatten -> activation (25 in the default suite, the other 75 ``slow``: 8 s per
    25): --lift 2/4 certified, never above --lift 1, never below the empirical lower bound (the lifted
    activation acts on the flattened signal in block order)."""
    for seed in range(25 * chunk, 25 * chunk + 25):
        rng = np.random.default_rng(9000 + seed)
        net = flatten_activation_cnn(rng)
        base = solve_network(net).certificate
        lifted = solve_network(net, lift=int(rng.choice([2, 4]))).certificate
        assert base.verified and lifted.verified, seed
        assert lifted.lipschitz <= base.lipschitz * (1 + 1e-6), seed
        low = lower_bound(net, starts=2, steps=5, seed=seed, time_budget=0.3).value
        assert low <= lifted.lipschitz * (1 + 1e-7), seed


def test_lifting_a_long_kernel_uses_the_shift_structure():
    """Issue 17 (fuzzed sizes): `show --lowering --lift 4` on a conv of kernel 3000 and 2 channels ran 155 s
    in dense products of 6000 x 6000 powers of A. The lifted system of a long FIR (sparse path) equals the
    formula's dense evaluation, and the long one takes seconds."""
    import time

    from lipdsl.model.lift import lift_state_space
    from lipdsl.model.lower import conv_state_space

    rng = np.random.default_rng(5)
    ss = conv_state_space(rng.standard_normal((2, 3, 40)), 1)
    assert ss.nx > 64
    for b in (1, 3, 4):
        got = lift_state_space(ss, b)
        P = [np.linalg.matrix_power(ss.A, i) for i in range(b + 1)]
        np.testing.assert_allclose(got.A, P[b], atol=1e-12)
        np.testing.assert_allclose(got.B, np.hstack([P[b - 1 - j] @ ss.B for j in range(b)]), atol=1e-12)
        np.testing.assert_allclose(got.C, np.vstack([ss.C @ P[i] for i in range(b)]), atol=1e-12)
        D = np.zeros((ss.ny * b, ss.nu * b))
        for i in range(b):
            for j in range(i + 1):
                D[i * ss.ny:(i + 1) * ss.ny, j * ss.nu:(j + 1) * ss.nu] = \
                    ss.D if i == j else ss.C @ P[i - 1 - j] @ ss.B
        np.testing.assert_allclose(got.D, D, atol=1e-12)
    long = conv_state_space(rng.standard_normal((2, 2, 3000)), 1)
    t0 = time.process_time()
    lift_state_space(long, 4)
    assert time.process_time() - t0 < 20

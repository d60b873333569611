"""lower: the state-space realization reproduces PyTorch's conv1d for every padding, stride and dilation."""

import numpy as np
import pytest

from lipdsl.model.forward import conv1d, forward
from lipdsl.model.lower import (
    avgpool_fir,
    conv_avgpool_fir,
    conv_state_space,
    fold_avgpool_into_dense,
    lower,
    symbolic_state_space,
)
from nets import Builder


def brute_conv(x, W, stride, dilation, pl, pr):
    """PyTorch Conv1d by its definition: y[t] = sum_j W[:,:,j] x[s t + d j - pl] (zero outside)."""
    c_out, c_in, k = W.shape
    n = x.shape[1]
    n_out = (n + pl + pr - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((c_out, n_out))
    for t in range(n_out):
        for j in range(k):
            s = stride * t + dilation * j - pl
            if 0 <= s < n:
                y[:, t] += W[:, :, j] @ x[:, s]
    return y


def realized_conv(x, W, stride, dilation, pl, pr):
    """The causal realization run on x followed by zeros, then the samples PyTorch keeps."""
    k = W.shape[2]
    ss = conv_state_space(W, dilation)
    span = dilation * (k - 1)
    z = ss.simulate(np.hstack([x, np.zeros((x.shape[0], pr + span))]))
    n_out = (x.shape[1] + pl + pr - span - 1) // stride + 1
    # z[tau] = sum_j W[:,:,j] x[tau - span + d j]  =>  y[t] = z[s t + span - pl]
    idx = stride * np.arange(n_out) + span - pl
    out = np.zeros((W.shape[0], n_out))
    ok = idx >= 0
    out[:, ok] = z[:, idx[ok]]
    return out


@pytest.mark.parametrize("seed", range(30))
def test_realization_equals_conv1d(seed):
    rng = np.random.default_rng(seed)
    c_in, c_out, k = rng.integers(1, 4), rng.integers(1, 4), int(rng.integers(1, 6))
    stride, dilation = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    n = int(rng.integers(dilation * (k - 1) + 1, 40))
    padding = rng.choice(["valid", "causal", "same", "int"])
    span = dilation * (k - 1)
    if padding == "same":
        stride = 1
        pl, pr = span // 2, span - span // 2
    elif padding == "causal":
        pl, pr = span, 0
    elif padding == "int":
        pl = pr = int(rng.integers(0, span + 1))
    else:
        pl = pr = 0
    W = rng.normal(size=(c_out, c_in, k))
    x = rng.normal(size=(c_in, n))
    ref = brute_conv(x, W, stride, dilation, pl, pr)
    assert np.allclose(realized_conv(x, W, stride, dilation, pl, pr), ref, atol=1e-12)
    assert np.allclose(
        conv1d(x[None], W, stride=stride, dilation=dilation, pad_left=pl, pad_right=pr)[0], ref, atol=1e-12
    )


def test_state_dimension_is_independent_of_length():
    W = np.ones((4, 3, 5))
    ss = conv_state_space(W)
    assert (ss.nx, ss.nu, ss.ny) == (12, 3, 4)
    # A is the nilpotent block up-shift: A^(k-1) = 0
    assert np.allclose(np.linalg.matrix_power(ss.A, 4), 0)


def test_symbolic_matches_numeric():
    import sympy

    rng = np.random.default_rng(1)
    W = rng.normal(size=(2, 3, 3))
    net = Builder(3, 10).conv(W, padding="causal", dilation=2).build()
    A, B, C, D = symbolic_state_space(net.layers[0])
    subs = {
        sympy.Symbol(f"w_{{{o},{i},{j}}}"): W[o, i, j] for o in range(2) for i in range(3) for j in range(3)
    }
    ss = conv_state_space(W, dilation=2)
    for sym, num in zip((A, B, C, D), (ss.A, ss.B, ss.C, ss.D)):
        assert np.allclose(np.array(sym.subs(subs), dtype=float), num)


def test_lower_groups_layers_and_scales():
    rng = np.random.default_rng(2)
    W1, W2 = rng.normal(size=(3, 1, 3)), rng.normal(size=(4, 6))
    net = Builder(1, 4).conv(W1, padding="causal").act("relu").pool("avg", 2).flatten().dense(W2).build()
    low = lower(net)
    kinds = [type(s).__name__ for s in low.steps]
    assert kinds == ["System", "Pool", "Flatten", "System"]
    s1, s2 = low.systems
    assert s1.slope == (0.0, 1.0) and s2.slope is None
    assert np.isclose(low.factor, s1.scale * s2.scale / np.sqrt(2))
    assert np.isclose(np.linalg.norm(np.hstack([s1.ss.C, s1.ss.D]), 2), 1.0)


def blocked(x, S, extra=4):
    """``x`` (c, n) followed by zeros, as blocks of S samples, channel-major: row ch*S + r, column tau."""
    c, n = x.shape
    nb = -(-n // S) + extra
    xp = np.hstack([x, np.zeros((c, nb * S - n))])
    return xp.reshape(c, nb, S).transpose(0, 2, 1).reshape(c * S, nb)


def brute_avgpool(x, k, s):
    """PyTorch AvgPool1d (no padding, floor): y[:, t] = mean of x[:, s t .. s t + k - 1]."""
    n_out = (x.shape[1] - k) // s + 1
    return np.stack([x[:, s * t : s * t + k].mean(axis=1) for t in range(n_out)], axis=1)


@pytest.mark.parametrize("c,k,s", [(1, 3, 2), (2, 3, 2), (2, 4, 2), (3, 5, 2), (1, 7, 3), (2, 3, 1),
                                   (1, 5, 4)])
def test_overlapping_avgpool_fir_reproduces_pooling(c, k, s):
    """avgpool_fir on blocks of s samples: its outputs from m0 = ceil(k/s) - 1 on are PyTorch's pool."""
    x = np.random.default_rng(k * 10 + s).normal(size=(c, 23))
    ref = brute_avgpool(x, k, s)
    ss = avgpool_fir(c, k, s)
    m0 = -(-k // s) - 1
    assert ss.nu == c * s and ss.ny == c and ss.nx == m0 * c * s
    y = ss.simulate(blocked(x, s))
    assert np.allclose(y[:, m0 : m0 + ref.shape[1]], ref, atol=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_conv_then_avgpool_is_one_strided_fir(seed):
    """conv (any padding, stride, dilation) then an overlapping average pool = conv_avgpool_fir on blocks of
    s_conv * s_pool samples, outputs delayed by m0 blocks (strided_fir's docstring)."""
    rng = np.random.default_rng(seed)
    c_in, c_out, k1 = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 5))
    stride, dilation = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    span = dilation * (k1 - 1)
    pl = pr = int(rng.integers(0, span + 3))  # also more padding than the kernel's reach
    kp = int(rng.integers(2, 6))
    sp_ = int(rng.integers(1, kp))
    n = 30
    W = rng.normal(size=(c_out, c_in, k1))
    x = rng.normal(size=(c_in, n))
    z = brute_conv(x, W, stride, dilation, pl, pr)
    if z.shape[1] < kp:
        pytest.skip("too short for the pool")
    ref = brute_avgpool(z, kp, sp_)
    net = Builder(c_in, n).conv(W, stride=stride, dilation=dilation, padding=pl).pool("avg", kp, sp_).build()
    ss = conv_avgpool_fir(*net.layers)
    S = stride * sp_
    delay = dilation * (k1 - 1) - pl + stride * (kp - 1)
    m0 = max(0, -(-(delay - S + 1) // S))
    y = ss.simulate(blocked(x, S, extra=8))
    assert np.allclose(y[:, m0 : m0 + ref.shape[1]], ref, atol=1e-12)


def test_avgpool_before_flatten_dense_is_folded_exactly():
    """avgpool k3 s2 -> flatten -> dense W equals flatten -> dense W (I_c (x) T) on every input."""
    rng = np.random.default_rng(3)
    net = Builder(2, 11).pool("avg", 3, 2).flatten().dense(rng.normal(size=(3, 10))).build()
    flat, dense = fold_avgpool_into_dense(*net.layers)
    assert flat.in_shape == net.layers[0].in_shape and dense.n_in == 22
    x = rng.normal(size=(2, 11))
    assert np.allclose(dense.weight @ x.reshape(-1), forward(net, x), atol=1e-12)


def test_lowering_of_overlapping_pools_names_each_construct():
    """Alone (FIR system, X (x) I_s), after a linear conv (merged, with the activation), before a flatten
    (folded into the dense); pools with stride = kernel keep the exact factor; pool_fir=False: the factor."""
    rng = np.random.default_rng(4)
    net = (Builder(1, 40).conv(rng.normal(size=(2, 1, 3)), padding="causal").act("relu")
           .pool("avg", 3, 2)                                       # alone -> FIR system
           .conv(rng.normal(size=(2, 2, 2)), padding="causal")      # linear conv -> merged with the pool
           .pool("avg", 4, 2).act("tanh")
           .pool("avg", 2)                                          # kernel = stride: the factor 1/sqrt(2)
           .pool("avg", 3, 2).flatten()                             # folded into the dense
           .dense(rng.normal(size=(2, 2))).build())
    low = lower(net)
    kinds = [(type(st).__name__, getattr(st, "kind", getattr(st, "op", ""))) for st in low.steps]
    assert kinds == [("System", "conv"), ("System", "pool"), ("System", "conv"), ("Pool", "avg"),
                     ("Pool", "merged"), ("Flatten", ""), ("System", "dense")]
    pool_sys, merged = low.steps[1], low.steps[2]
    assert pool_sys.block_in == 2 and pool_sys.slope is None and "X (x) I_2" in pool_sys.note
    assert merged.block_in == 2 and merged.slope == (0.0, 1.0)
    assert merged.layers == ("conv4", "avgpool5", "tanh6")
    assert "folded into dense" in low.steps[4].note and low.steps[6].ss.nu == 2 * 4
    old = lower(net, pool_fir=False)
    assert [st.note for st in old.steps if type(st).__name__ == "Pool"] == [
        "avg pool k3 s2: factor sqrt(2/3)", "avg pool k4 s2: factor sqrt(2/4)",
        "avg pool k2 s2: factor sqrt(1/2)", "avg pool k3 s2: factor sqrt(2/3)"]


def random_linear_chain(rng):
    """2-3 linear convs (random padding, stride, dilation), sometimes an average pool between."""
    c, n = int(rng.integers(1, 3)), int(rng.integers(12, 30))
    b = Builder(c, n)
    for _ in range(int(rng.integers(2, 4))):
        if rng.random() < 0.3 and b.shape.length >= 4:
            k = int(rng.integers(2, 4))
            b.pool("avg", k, int(rng.integers(1, k + 1)))
            continue
        k, d, st = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
        pad = str(rng.choice(["valid", "causal", "same", "1"]))
        span = d * (k - 1)
        pl, pr = {"valid": (0, 0), "causal": (span, 0), "same": (span // 2, span - span // 2),
                  "1": (1, 1)}[pad]
        if b.shape.length + pl + pr - span < 2:
            continue
        b.conv(rng.normal(size=(int(rng.integers(1, 4)), b.shape.channels, k)),
               stride=1 if pad == "same" else st, dilation=d, padding=1 if pad == "1" else pad)
    return b.build()


def test_linear_conv_chains_merge_into_one_exact_fir():
    """Adjacent linear convs / average pools: the merged system's outputs, from some m0 on, are the network's
    (PyTorch semantics, paddings included); chains whose padding zeros the composition cannot reproduce
    (e.g. 'same' after 'same') are not merged."""
    from lipdsl.model.lower import linear_chain_system

    merged = refused = 0
    for seed in range(120):
        rng = np.random.default_rng(seed)
        net = random_linear_chain(rng)
        if len(net.layers) < 2 or net.layers[0].kind != "conv1d":
            continue
        res = linear_chain_system(list(net.layers), 0, False)
        if res is None:
            refused += 1
            continue
        (sys,), consumed, _ = res
        sub = type(net)(net.name, net.input_shape, net.layers[:consumed])
        x = rng.normal(size=(net.input_shape.channels, net.input_shape.length))
        ref = forward(sub, x)
        y = sys.ss.simulate(blocked(x, sys.block_in, extra=40))
        assert any(np.allclose(y[:, m : m + ref.shape[1]], ref, atol=1e-10) for m in range(30)), seed
        assert sys.layers == tuple(layer.name for layer in net.layers[:consumed])
        merged += 1
    assert merged >= 30 and refused >= 5


def test_linear_runs_fold_into_the_dense_and_dense_layers_merge():
    """conv (same) -> avgpool -> flatten -> dense: one dense W T on the unconvolved signal; two linear dense
    layers: W2 W1; both exact on random inputs, and named by show --lowering's notes."""
    from lipdsl.model.lower import fold_linear_into_dense, merge_dense_layers

    rng = np.random.default_rng(5)
    net = (Builder(2, 10).conv(rng.normal(size=(3, 2, 3)), padding="same").pool("avg", 2).flatten()
           .dense(rng.normal(size=(4, 15))).dense(rng.normal(size=(2, 4))).build())
    layers = list(net.layers)
    name, op, gain, diagonal, note = fold_linear_into_dense(layers, 0)
    assert name == "conv1+avgpool2" and op == "merged" and "folded into dense 'fc4'" in note
    layers, notes = merge_dense_layers(layers)
    assert [layer.kind for layer in layers] == ["flatten", "dense"] and layers[1].weight.shape == (2, 20)
    assert "fc4+fc5" in notes
    x = rng.normal(size=(2, 10))
    assert np.allclose(layers[1].weight @ x.reshape(-1), forward(net, x), atol=1e-12)
    low = lower(net)
    assert [type(st).__name__ for st in low.steps] == ["Pool", "Flatten", "System"]
    assert low.steps[2].layers == ("fc4+fc5",) and "W = W2 W1" in low.steps[2].note
    assert len(lower(net, merge_linear=False).systems) == 3


def test_conv_conv_merge_is_named_and_capped():
    """causal conv -> causal conv -> relu: one system; a wide conv into a 1-channel one keeps two systems when
    the merged LMI would exceed MERGE_GROWTH times the separate ones."""
    from lipdsl.model.lower import MERGE_GROWTH

    rng = np.random.default_rng(6)
    net = (Builder(1, 16).conv(rng.normal(size=(4, 1, 3)), padding="causal")
           .conv(rng.normal(size=(2, 4, 3)), padding="causal").act("relu").flatten()
           .dense(rng.normal(size=(2, 32))).act("relu").dense(rng.normal(size=(1, 2))).build())
    low = lower(net)
    first = low.steps[0]
    assert first.layers == ("conv1", "conv2", "relu3") and "merged: one FIR with 5 taps" in first.note
    assert first.ss.nx + first.ss.nu == 5 and first.slope == (0.0, 1.0)
    wide = (Builder(8, 16).conv(rng.normal(size=(1, 8, 5)), padding="causal", stride=2)
            .conv(rng.normal(size=(1, 1, 5)), padding="causal", stride=2).act("relu").build())
    low = lower(wide)
    assert len(low.systems) == 2  # merged: 8 channels x 4-sample blocks x 5 blocks > MERGE_GROWTH x (40 + 5)
    assert MERGE_GROWTH == 2


def test_a_merge_saving_no_rows_does_not_say_n_rows_instead_of_n():
    """c (k3, s2) then d (k1): the merged FIR has as many rows as the two separate LMIs."""
    net = (Builder(1, 9).conv(np.array([[[1.0, 2.0, 3.0]]]), stride=2, padding=1)
           .conv(np.array([[[2.0]]])).act("relu").build())
    note = lower(net).steps[0].note
    assert "merged" in note and "4 rows, as many as separately" in note
    assert "4 rows instead of 4" not in note


def test_a_too_short_input_names_the_layer_inside_a_residual_block():
    """The lengths through a residual block come from ``check.length_after``, layer by layer: an input too
    short for the block's second conv is refused at that conv's line."""
    from lipdsl.app.api import parse
    from lipdsl.errors import LoweringError

    net = parse(
        "network r\ninput 1 x *\nresidual blk:\n"
        "  conv1d c1: 1 -> 1, kernel 3, weight [[[1, 0, 1]]]\n  relu\n"
        "  conv1d c2: 1 -> 1, kernel 5, weight [[[1, 0, 0, 0, 1]]]\n"
        "shortcut\n  conv1d s: 1 -> 1, kernel 7, weight [[[1, 0, 0, 0, 0, 0, 1]]]\nend\nglobal_avgpool\n"
    ).typed
    assert lower(net, min_length=7).steps
    with pytest.raises(LoweringError, match="an input of length 5 is too short for layer 'c2'") as info:
        lower(net, min_length=5)
    assert info.value.span.line == 6

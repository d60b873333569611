"""lower: the state-space realization reproduces PyTorch's conv1d for every padding, stride and dilation."""

import numpy as np
import pytest

from lipdsl.forward import conv1d
from lipdsl.lower import conv_state_space, lower, symbolic_state_space
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

"""forward/jacobian against brute-force loops and finite differences."""
import numpy as np
import pytest

from lipdsl.lang import typed
from lipdsl.errors import LipdslError
from lipdsl.model.forward import conv1d, conv1d_transpose, forward, jacobian, linearize

from nets import Builder, dense_net, ecg_network, random_cnn


def conv_loop(x, w, b, stride, dilation, pl, pr):
    """Textbook cross-correlation, one scalar at a time: y[o,t] = b[o] + sum_ij w[o,i,j] xp[i, s t + d j]."""
    c_in, n = x.shape
    c_out, _, k = w.shape
    xp = np.zeros((c_in, n + pl + pr))
    xp[:, pl:pl + n] = x
    n_out = (n + pl + pr - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((c_out, n_out))
    for o in range(c_out):
        for t in range(n_out):
            s = b[o]
            for i in range(c_in):
                for j in range(k):
                    s += w[o, i, j] * xp[i, stride * t + dilation * j]
            y[o, t] = s
    return y


@pytest.mark.parametrize("k,stride,dilation,pl,pr", [
    (1, 1, 1, 0, 0), (3, 1, 1, 2, 0), (3, 2, 1, 1, 1), (4, 1, 2, 3, 3), (3, 3, 2, 0, 0), (3, 1, 2, 4, 0),
    (5, 2, 1, 2, 2),
    (2, 1, 1, 1, 0)])
def test_conv_matches_loop(k, stride, dilation, pl, pr):
    rng = np.random.default_rng(k * 100 + stride * 10 + dilation)
    x = rng.standard_normal((2, 11))
    w = rng.standard_normal((3, 2, k))
    b = rng.standard_normal(3)
    padding = "causal" if pl != pr else pl
    net = Builder(2, 11).conv(w, stride=stride, dilation=dilation, padding=padding, bias=b).build()
    assert (net.layers[0].pad_left, net.layers[0].pad_right) == (pl, pr)
    y = forward(net, x)
    ref = conv_loop(x, w, b, stride, dilation, pl, pr)
    assert y.shape == ref.shape == (net.layers[0].out_shape.channels, net.layers[0].out_shape.length)
    np.testing.assert_allclose(y, ref, atol=1e-12)


def test_conv_transpose_is_adjoint():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 3))
    for stride, dilation, pl, pr in [(1, 1, 2, 0), (2, 2, 1, 3), (3, 1, 0, 0)]:
        x = rng.standard_normal((4, 2, 13))
        y = conv1d(x, w, stride, dilation, pl, pr)
        g = rng.standard_normal(y.shape)
        xt = conv1d_transpose(g, w, 13, stride, dilation, pl, pr)
        np.testing.assert_allclose(np.sum(y * g), np.sum(x * xt), rtol=1e-12)


def test_pools_flatten_gap():
    x = np.arange(14.0).reshape(2, 7) ** 1.5 * np.array([[1.0], [-1.0]])
    net = Builder(2, 7).pool("max", 3, 2).build()
    ref = np.array([[max(x[c, 2 * t:2 * t + 3]) for t in range(3)] for c in range(2)])
    np.testing.assert_allclose(forward(net, x), ref)
    net = Builder(2, 7).pool("avg", 2).build()
    np.testing.assert_allclose(forward(net, x), x[:, :6].reshape(2, 3, 2).mean(axis=2))
    net = Builder(2, 7).flatten().build()
    np.testing.assert_array_equal(forward(net, x), x.reshape(-1))  # channel-major: ch*N + t
    net = Builder(2, 7).gap().build()
    np.testing.assert_allclose(forward(net, x), x.mean(axis=1))
    np.testing.assert_array_equal(forward(Builder(2, 7).flatten().build(), x.reshape(-1)), x.reshape(-1))


def test_activations():
    z = np.linspace(-3, 3, 13)
    for fn, p, ref in [("relu", None, np.maximum(z, 0)), ("tanh", None, np.tanh(z)),
                       ("sigmoid", None, 1 / (1 + np.exp(-z))),
                       ("leaky_relu", 0.2, np.where(z > 0, z, 0.2 * z)),
                       ("elu", 0.5, np.where(z > 0, z, 0.5 * (np.exp(z) - 1))),
                       ("softplus", None, np.log1p(np.exp(z))), ("hardtanh", None, np.clip(z, -1, 1))]:
        net = Builder(13, flat=True).act(fn, p).build()
        np.testing.assert_allclose(forward(net, z), ref, atol=1e-14)


def test_custom_activation_refused():
    net = Builder(3, flat=True).act("mystep", slope=(0.0, 2.0)).build()
    with pytest.raises(LipdslError, match="needs a known function"):
        forward(net, np.ones(3))


def smooth_cnn(rng, act):
    return (Builder(2, 9).conv(rng.standard_normal((3, 2, 3)), padding="causal", bias=rng.standard_normal(3))
            .act(act).pool("avg", 3, 2)
            .conv(rng.standard_normal((2, 3, 2)), stride=2, dilation=1, padding=1)
            .act(act, 0.3 if act == "elu" else None)
            .flatten().dense(rng.standard_normal((4, 6)), rng.standard_normal(4)).act(act)
            .dense(rng.standard_normal((3, 4)))
            .build())


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "elu", "softplus"])
def test_jacobian_matches_finite_differences(act):
    rng = np.random.default_rng(3)
    net = smooth_cnn(rng, act)
    u = rng.standard_normal((2, 9))
    J = jacobian(net, u)
    h = 1e-6
    fd = np.stack([(forward(net, u.reshape(-1) + h * e) - forward(net, u.reshape(-1) - h * e)) / (2 * h)
                   for e in np.eye(18)], axis=1)
    assert J.shape == (3, 18)
    np.testing.assert_allclose(J, fd, atol=1e-7)


def test_jacobian_piecewise_linear_exact():
    """ReLU + max pool: inside a linear region f(u + e) - f(u) = J e exactly for small e."""
    rng = np.random.default_rng(4)
    net = (Builder(1, 12).conv(rng.standard_normal((3, 1, 3)), padding="same", bias=rng.standard_normal(3))
           .act("relu").pool("max", 3, 2).conv(rng.standard_normal((2, 3, 2)), dilation=2)
           .act("leaky_relu", 0.1)
           .flatten().dense(rng.standard_normal((4, 2 * 3))).build())
    u = rng.standard_normal(12)
    J = jacobian(net, u)
    for _ in range(5):
        e = 1e-7 * rng.standard_normal(12)
        np.testing.assert_allclose(forward(net, u + e) - forward(net, u), J @ e, atol=1e-13)


def test_jvp_vjp_agree_and_batch():
    rng = np.random.default_rng(5)
    net = random_cnn(rng)
    n_in = net.input_shape.size
    u = rng.standard_normal(n_in)
    lin = linearize(net, u)
    J1 = lin.jvp(np.eye(n_in)).T
    J2 = lin.vjp(np.eye(lin.n_out))
    np.testing.assert_allclose(J1, J2, atol=1e-12)
    U = rng.standard_normal((4, n_in))
    Y = linearize(net, U, batch=True).output
    for i in range(4):
        np.testing.assert_allclose(Y[i], forward(net, U[i]), atol=1e-12)


def test_dense_jacobian_is_weight_product():
    rng = np.random.default_rng(6)
    W = [np.abs(rng.standard_normal((5, 3))), np.abs(rng.standard_normal((2, 5)))]
    net = dense_net(W)
    np.testing.assert_allclose(jacobian(net, np.ones(3)), W[1] @ W[0], atol=1e-12)


def test_any_length_input():
    rng = np.random.default_rng(7)
    net = Builder(2, None).conv(rng.standard_normal((3, 2, 3)), padding="causal").act("tanh").build()
    assert forward(net, rng.standard_normal((2, 5))).shape == (3, 5)
    assert jacobian(net, rng.standard_normal(2 * 8)).shape == (24, 16)


def test_ecg_output_shape():
    net = ecg_network()
    if net is None:
        pytest.skip("shared ECG cases not available")
    y = forward(net, np.random.default_rng(0).standard_normal((1, 128)))
    assert y.shape == (5,) and np.all(np.isfinite(y))
    assert isinstance(net.layers[-1], typed.Dense)

"""Evaluate a network in numpy: typed.Network, input u -> output y and Jacobian J (PyTorch semantics)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from lipdsl.lang import typed
from lipdsl.lang.activations import ACTIVATIONS, functions
from lipdsl.errors import LipdslError

#: Activations whose function (not only its slope bound) is known; ``forward`` refuses any other name.
KNOWN_ACTIVATIONS = tuple(ACTIVATIONS)


# --------------------------------------------------------------------------- layer maps on a batch
# Every array carries a leading batch axis: signals are (B, c, N), flat vectors (B, n).


def conv1d(x: np.ndarray, weight: np.ndarray, stride: int = 1, dilation: int = 1,
           pad_left: int = 0, pad_right: int = 0) -> np.ndarray:
    """PyTorch Conv1d without bias on a batch: ``y[b, o, t] = sum_{i, j} W[o, i, j] xp[b, i, s*t + d*j]``.

    ``xp`` is ``x`` with ``pad_left`` zeros before and ``pad_right`` zeros after each channel; the output has
    ``floor((N + pad_left + pad_right - d*(k-1) - 1) / s) + 1`` samples.

    Parameters
    ----------
    x : ndarray, shape (B, c_in, N)
    weight : ndarray, shape (c_out, c_in, k)

    Returns
    -------
    ndarray, shape (B, c_out, N_out)
    """
    c_out, c_in, k = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad_left, pad_right)))
    n_out = (xp.shape[-1] - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((x.shape[0], c_out, max(n_out, 0)))
    if n_out <= 0:
        return y
    for j in range(k):
        start = dilation * j
        window = xp[:, :, start:start + stride * (n_out - 1) + 1:stride]  # (B, c_in, n_out)
        y += np.matmul(weight[:, :, j], window)  # (c_out, c_in) @ (B, c_in, n_out): batched BLAS
    return y


def conv1d_transpose(g: np.ndarray, weight: np.ndarray, n_in: int, stride: int = 1, dilation: int = 1,
                     pad_left: int = 0, pad_right: int = 0) -> np.ndarray:
    """Adjoint of :func:`conv1d` (the vector-Jacobian product): ``<conv1d(x), g> = <x, conv1d_transpose(g)>``.

    Parameters
    ----------
    g : ndarray, shape (B, c_out, N_out)
    n_in : int
        Length ``N`` of the convolution's input.

    Returns
    -------
    ndarray, shape (B, c_in, N)
    """
    c_out, c_in, k = weight.shape
    n_out = g.shape[-1]
    gp = np.zeros((g.shape[0], c_in, n_in + pad_left + pad_right))
    for j in range(k):
        start = dilation * j
        stop = start + stride * (n_out - 1) + 1
        gp[:, :, start:stop:stride] += np.matmul(weight[:, :, j].T, g)
    return gp[:, :, pad_left:pad_left + n_in]


def _pool_windows(n: int, kernel: int, stride: int) -> np.ndarray:
    """Index array ``idx[t, j] = stride*t + j`` of the floor-mode pooling windows (no padding); with one
    window the stride is never multiplied (a stride beyond int64 is no overflow)."""
    n_out = (n - kernel) // stride + 1
    return (stride if n_out > 1 else 0) * np.arange(max(n_out, 0))[:, None] + np.arange(kernel)[None, :]


# --------------------------------------------------------------------------- activations


def _activation_functions(layer: typed.Activation) -> tuple[Callable, Callable]:
    """``(phi, dphi)`` of a known activation (lipdsl.lang.activations); a name with only a slope has none."""
    fn = layer.function
    if fn == "linear":
        fn = "identity"
    if fn in ACTIVATIONS:
        return functions(fn, layer.parameter)
    raise LipdslError(
        f"activation {layer.name!r} ('{fn}') is known only by its slope bound "
        f"[{layer.alpha:g}, {layer.beta:g}]; the empirical lower bound needs a known function",
        span=layer.span,
        hint=f"use one of {', '.join(KNOWN_ACTIVATIONS)}, or compute only upper bounds")


def _surrogate_functions(layer: typed.Activation, tau: float) -> tuple[Callable, Callable] | None:
    """Smooth stand-in for a piecewise-linear activation, for ascent only (``None`` if already smooth).

    ``phi_tau(z) = a z + (1 - a) tau softplus(z / tau)`` with ``a`` the slope for ``z < 0``, so that
    ``phi_tau'(z) = a + (1 - a) sigmoid(z / tau)`` tends to the true derivative as ``tau -> 0``.
    """
    def softplus(z):
        return np.logaddexp(0.0, z)

    def sig(z):
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    if layer.function == "hardtanh":  # clip(z, -1, 1) = relu(z + 1) - relu(z - 1) - 1, each part smoothed
        return ((lambda z: tau * (softplus((z + 1) / tau) - softplus((z - 1) / tau)) - 1.0),
                (lambda z: sig((z + 1) / tau) - sig((z - 1) / tau)))
    if layer.function == "relu":
        a = 0.0
    elif layer.function == "leaky_relu":
        a = 0.01 if layer.parameter is None else float(layer.parameter)
    else:
        return None
    return ((lambda z: a * z + (1.0 - a) * tau * softplus(z / tau)),
            (lambda z: a + (1.0 - a) * sig(z / tau)))


# --------------------------------------------------------------------------- linearization


@dataclass
class _Step:
    """One layer of a recorded forward pass: what its JVP/VJP needs."""

    layer: typed.Layer
    in_shape: tuple[int, ...]  # per-sample shape of the layer's input
    data: object = None  # activation derivative, or max-pool argmax indices
    rms: float = 0.0  # root mean square of an activation's input (sets the surrogate's temperature)


@dataclass
class Linearization:
    """A forward pass at a batch of inputs with its Jacobian-vector and vector-Jacobian products.

    ``jvp(T)`` maps input tangents ``T`` (B, n_in) to ``J T`` (B, n_out) and ``vjp(G)`` maps output
    cotangents ``G`` (B, n_out) to ``J^T G`` (B, n_in), where ``J`` is the Jacobian at each sample of the
    batch (tangents are applied row by row to the recorded samples, or broadcast when the recorded batch has
    one sample).
    """

    steps: list
    output: np.ndarray  # (B, *out_shape)
    input_shape: tuple[int, ...]

    @property
    def n_in(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def n_out(self) -> int:
        return int(np.prod(self.output.shape[1:]))

    def jvp(self, t: np.ndarray) -> np.ndarray:
        """``J t`` for tangents ``t`` of shape (B, n_in); returns (B, n_out)."""
        x = t.reshape((t.shape[0],) + self.input_shape)
        for st in self.steps:
            x = _linear_step(st, x, transpose=False)
        return x.reshape(x.shape[0], -1)

    def vjp(self, g: np.ndarray) -> np.ndarray:
        """``J^T g`` for cotangents ``g`` of shape (B, n_out); returns (B, n_in)."""
        x = g.reshape((g.shape[0],) + self.output.shape[1:])
        for st in reversed(self.steps):
            x = _linear_step(st, x, transpose=True)
        return x.reshape(x.shape[0], -1)

    @property
    def activation_steps(self) -> list:
        """The steps of every activation, residual blocks' included, in ``typed.flat_layers`` order."""
        def walk(steps):
            for st in steps:
                if isinstance(st.layer, typed.Residual):
                    yield from walk(st.data[0])
                    yield from walk(st.data[1])
                elif isinstance(st.layer, typed.Activation):
                    yield st
        return list(walk(self.steps))

    def matrix(self) -> np.ndarray:
        """The dense Jacobian (n_out x n_in) of a single-sample linearization (the cheaper of JVP, VJP)."""
        if self.n_in <= self.n_out:
            return self.jvp(np.eye(self.n_in)).T
        return self.vjp(np.eye(self.n_out))


def _linear_step(st: _Step, x: np.ndarray, transpose: bool) -> np.ndarray:
    """Apply one layer's Jacobian (or its transpose) to a batch of tangents ``x``."""
    L = st.layer
    if isinstance(L, typed.Residual):
        main, short = st.data
        y, z = x, x
        for sub in (reversed(main) if transpose else main):
            y = _linear_step(sub, y, transpose)
        for sub in (reversed(short) if transpose else short):
            z = _linear_step(sub, z, transpose)
        return y + z
    if isinstance(L, typed.BatchNorm):
        return x * L.scale.reshape((1, -1) if x.ndim == 2 else (1, -1, 1))
    if isinstance(L, typed.Conv1d):
        args = (L.stride, L.dilation, L.pad_left, L.pad_right)
        if transpose:
            return conv1d_transpose(x, L.weight, st.in_shape[-1], *args)
        return conv1d(x, L.weight, *args)
    if isinstance(L, typed.Dense):
        if transpose:
            return (x @ L.weight).reshape((x.shape[0],) + st.in_shape)
        return x.reshape(x.shape[0], -1) @ L.weight.T
    if isinstance(L, typed.Activation):
        return x * st.data
    if isinstance(L, typed.Flatten):
        return x.reshape((x.shape[0],) + st.in_shape) if transpose else x.reshape(x.shape[0], -1)
    if isinstance(L, typed.GlobalAvgPool):
        n = st.in_shape[-1]
        if transpose:
            return np.repeat(x[:, :, None] / n, n, axis=2)
        return x.mean(axis=2)
    if isinstance(L, typed.Pool):
        idx = _pool_windows(st.in_shape[-1], L.kernel, L.stride)
        if L.op == "avg":
            if transpose:
                out = np.zeros((x.shape[0],) + st.in_shape)
                for j in range(L.kernel):
                    out[:, :, idx[:, j]] += x / L.kernel
                return out
            return x[:, :, idx].mean(axis=3)
        arg = st.data  # (B or 1, c, n_out): input index of each window's maximum
        if transpose:
            out = np.zeros((x.shape[0],) + st.in_shape)
            b, c, t = np.meshgrid(np.arange(x.shape[0]), np.arange(x.shape[1]), np.arange(x.shape[2]),
                                  indexing="ij")
            np.add.at(out, (b, c, np.broadcast_to(arg, x.shape)), x)
            return out
        return np.take_along_axis(x, np.broadcast_to(arg, x.shape[:2] + arg.shape[2:]), axis=2)
    raise TypeError(f"unknown layer type {type(L).__name__}")  # pragma: no cover


def _input_batch(net: typed.Network, u: np.ndarray, batch: bool) -> np.ndarray:
    """Bring ``u`` to (B, c, N) for a signal input or (B, n) for a flat one."""
    u = np.asarray(u, dtype=float)
    if not batch:
        u = u[None]
    shp = net.input_shape
    if shp.flat:
        if u[0].size != shp.channels:
            raise LipdslError(f"expected an input of {shp.channels} entries, got shape {u.shape[1:]}")
        return u.reshape(u.shape[0], shp.channels)
    c = shp.channels
    if u.ndim == 2:  # flat signals, channel-major
        if u.shape[1] % c:
            raise LipdslError(f"expected {c} channels, got a flat input of {u.shape[1]} entries")
        u = u.reshape(u.shape[0], c, u.shape[1] // c)
    if u.ndim != 3 or u.shape[1] != c:
        raise LipdslError(f"expected an input of shape ({c}, N), got {u.shape[1:]}")
    if shp.length is not None and u.shape[2] != shp.length:
        raise LipdslError(f"expected an input of shape ({c}, {shp.length}), got {u.shape[1:]}")
    return u


def linearize(net: typed.Network, u: np.ndarray, *, batch: bool = False,
              surrogate_tau: float | Sequence[float] | None = None) -> Linearization:
    """Run the forward pass and record what the Jacobian needs.

    Parameters
    ----------
    net : typed.Network
    u : ndarray
        One input, ``(c, N)`` or flat ``(c*N,)`` (channel-major); with ``batch=True`` a leading batch axis.
    surrogate_tau : float or sequence of float, optional
        If given, ReLU and leaky ReLU are replaced by the smooth ``phi_tau`` of :func:`_surrogate_functions`
        (used by the lower-bound search to follow a gradient through activation patterns); a sequence gives
        one ``tau`` per activation layer, in order.
    """
    x = _input_batch(net, u, batch)
    input_shape = x.shape[1:]
    steps, x = _run(net.layers, x, surrogate_tau, [0])
    return Linearization(steps, x, input_shape)


def _run(layers, x: np.ndarray, surrogate_tau, n_act: list) -> tuple[list, np.ndarray]:
    """The forward pass through ``layers`` from ``x``, recording each step (``n_act[0]`` counts the
    activations met so far, residual blocks' included, in ``typed.flat_layers`` order)."""
    steps = []
    for L in layers:
        st = _Step(L, x.shape[1:])
        if isinstance(L, typed.Residual):
            main, y = _run(L.main, x, surrogate_tau, n_act)
            short, z = _run(L.shortcut, x, surrogate_tau, n_act)
            st.data = (main, short)
            x = y + z
        elif isinstance(L, typed.BatchNorm):
            shape = (1, -1) if x.ndim == 2 else (1, -1, 1)
            x = x * L.scale.reshape(shape) + L.shift.reshape(shape)
        elif isinstance(L, typed.Conv1d):
            if x.ndim != 3:
                raise LipdslError(f"conv1d {L.name!r} needs a signal input, got a flat vector", span=L.span)
            x = conv1d(x, L.weight, L.stride, L.dilation, L.pad_left, L.pad_right)
            if L.bias is not None:
                x = x + L.bias[None, :, None]
        elif isinstance(L, typed.Dense):
            x = x.reshape(x.shape[0], -1) @ L.weight.T
            if L.bias is not None:
                x = x + L.bias[None, :]
        elif isinstance(L, typed.Activation):
            st.rms = float(np.sqrt(np.mean(x * x)))
            fns = None
            if surrogate_tau is not None:
                tau = surrogate_tau if np.isscalar(surrogate_tau) else surrogate_tau[n_act[0]]
                fns = _surrogate_functions(L, max(float(tau), 1e-300))
            n_act[0] += 1
            phi, dphi = fns if fns is not None else _activation_functions(L)
            st.data = dphi(x)
            x = phi(x)
        elif isinstance(L, typed.Flatten):
            x = x.reshape(x.shape[0], -1)
        elif isinstance(L, typed.GlobalAvgPool):
            x = x.mean(axis=2)
        elif isinstance(L, typed.Pool):
            idx = _pool_windows(x.shape[-1], L.kernel, L.stride)
            win = x[:, :, idx]  # (B, c, n_out, k)
            if L.op == "avg":
                x = win.mean(axis=3)
            elif L.op == "max":
                j = np.argmax(win, axis=3)  # first maximum, as PyTorch
                st.data = idx[np.arange(idx.shape[0])[None, None, :], j]
                x = np.take_along_axis(win, j[..., None], axis=3)[..., 0]
            else:
                raise LipdslError(f"unknown pooling {L.op!r}", span=L.span)
        else:  # pragma: no cover
            raise TypeError(f"unknown layer type {type(L).__name__}")
        steps.append(st)
    return steps, x


def forward(net: typed.Network, u: np.ndarray) -> np.ndarray:
    """``y = f(u)``: the network's output for one input ``u`` of shape ``(c, N)`` or flat ``(c*N,)``.

    Returns a flat vector for a flat output and a ``(c, N_out)`` array for a signal output.

    Raises
    ------
    LipdslError
        For an activation known only by its slope bound, or an input of the wrong shape.
    """
    return linearize(net, u).output[0]


def jacobian(net: typed.Network, u: np.ndarray) -> np.ndarray:
    """``J = df/du`` at ``u`` as a dense ``(n_out, n_in)`` matrix (both sides flattened channel-major).

    Computed from exact Jacobian-vector (or vector-Jacobian) products of every layer; for piecewise-linear
    nets it is the Jacobian of the linear region containing ``u`` (ties: ReLU'(0) = 0, first maximum).
    """
    return linearize(net, u).matrix()

"""The checked network: what ``check`` produces and later stages consume (shapes known, weights numeric).

Conventions (PyTorch's): conv weights are ``(c_out, c_in, k)`` cross-correlations, dense weights
``(out, in)``,
flatten is channel-major (index ``ch * N + t``). A ``Shape`` with ``length=None`` is a signal of any length
(``input 3 x *``); a flat vector has ``flat=True`` and ``channels`` = its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import numpy as np

from lipdsl.lang.source import Span


@dataclass(frozen=True, slots=True)
class Shape:
    """``channels x length`` signal, or a flat vector of ``channels`` entries when ``flat``."""

    channels: int
    length: int | None = None
    flat: bool = False

    @property
    def size(self) -> int | None:
        """Number of scalars, or None for a signal of unspecified length."""
        if self.flat:
            return self.channels
        return None if self.length is None else self.channels * self.length

    def __str__(self) -> str:
        if self.flat:
            return str(self.channels)
        return f"{self.channels}x{'*' if self.length is None else self.length}"


@dataclass(frozen=True, slots=True)
class Conv1d:
    """``y[t] = b + sum_j W[:, :, j] x[stride*t + dilation*j - pad_left]`` (PyTorch Conv1d)."""

    name: str
    span: Span | None
    c_in: int
    c_out: int
    kernel: int
    stride: int
    dilation: int
    pad_left: int
    pad_right: int
    padding: str  # as written: "causal", "same", "valid" or the integer
    weight: np.ndarray  # (c_out, c_in, kernel), float64
    bias: np.ndarray | None
    in_shape: Shape
    out_shape: Shape
    weight_expr: Any = None  # sympy ImmutableDenseNDimArray when the spec wrote expressions, else None
    kind: str = field(default="conv1d", init=False)


@dataclass(frozen=True, slots=True)
class Dense:
    """``y = W x + b`` with ``W`` of shape ``(n_out, n_in)`` (PyTorch Linear)."""

    name: str
    span: Span | None
    n_in: int
    n_out: int
    weight: np.ndarray  # (n_out, n_in), float64
    bias: np.ndarray | None
    in_shape: Shape
    out_shape: Shape
    weight_expr: Any = None
    kind: str = field(default="dense", init=False)


@dataclass(frozen=True, slots=True)
class Activation:
    """Elementwise ``phi`` with slope in ``[alpha, beta]``: ``alpha <= (phi(a)-phi(b))/(a-b) <= beta``."""

    name: str
    span: Span | None
    function: str  # relu, tanh, sigmoid, leaky_relu, or a user-given name
    alpha: float
    beta: float
    in_shape: Shape
    out_shape: Shape
    parameter: float | None = None  # e.g. the negative slope of leaky_relu
    alpha_expr: Any = None  # sympy expressions as written, for display
    beta_expr: Any = None
    kind: str = field(default="activation", init=False)


@dataclass(frozen=True, slots=True)
class Pool:
    """Average or max pooling over ``kernel`` samples every ``stride`` samples (no padding, floor mode)."""

    name: str
    span: Span | None
    op: str  # "avg" or "max"
    kernel: int
    stride: int
    in_shape: Shape
    out_shape: Shape
    kind: str = field(default="pool", init=False)


@dataclass(frozen=True, slots=True)
class GlobalAvgPool:
    """Mean over time of each channel: ``c x N -> c`` (flat)."""

    name: str
    span: Span | None
    in_shape: Shape
    out_shape: Shape
    kind: str = field(default="global_avgpool", init=False)


@dataclass(frozen=True, slots=True)
class Flatten:
    """``c x N -> c*N``, channel-major (torch.flatten): index ``ch * N + t``."""

    name: str
    span: Span | None
    in_shape: Shape
    out_shape: Shape
    kind: str = field(default="flatten", init=False)


@dataclass(frozen=True, slots=True)
class BatchNorm:
    """Eval-mode batch norm per channel: ``y = scale * x + shift`` (PyTorch BatchNorm1d with running stats),

        scale = weight / sqrt(running_var + eps),   shift = bias - scale * running_mean.

    ``scale`` is that quotient rounded in floating point (``batchnorm_scale``); ``weight`` and
    ``running_var`` are the spec's own values (None: ``scale`` itself defines the layer), which the
    certificate checker uses to bound the rounding (``lipdsl.certify.batchnorm``).
    """

    name: str
    span: Span | None
    channels: int
    scale: np.ndarray  # (channels,)
    shift: np.ndarray  # (channels,)
    eps: float
    in_shape: Shape
    out_shape: Shape
    weight: np.ndarray | None = None  # (channels,) the spec's weight (gamma)
    running_var: np.ndarray | None = None  # (channels,)
    kind: str = field(default="batchnorm", init=False)


@dataclass(frozen=True, slots=True)
class Residual:
    """``y = main(x) + shortcut(x)``: two chains of layers from the same input, summed.

    ``shortcut`` is empty for the identity. Both branches map ``in_shape`` to ``out_shape``.
    """

    name: str
    span: Span | None
    main: tuple["Layer", ...]
    shortcut: tuple["Layer", ...]
    in_shape: Shape
    out_shape: Shape
    kind: str = field(default="residual", init=False)


Layer = Union[Conv1d, Dense, Activation, Pool, GlobalAvgPool, Flatten, BatchNorm, Residual]


def branch_stride(layers) -> int:
    """How much a chain of layers (a residual block's branch) downsamples: the product of its convs' and
    pools' strides. Both branches of a block must agree (``check``): the block is realized in lifted time,
    that many samples per step."""
    return math.prod(layer.stride for layer in layers if isinstance(layer, (Conv1d, Pool)))


def batchnorm_scale(weight: np.ndarray, running_var: np.ndarray, eps: float) -> np.ndarray:
    """``weight / sqrt(running_var + eps)`` in floating point (``BatchNorm.scale``; the exact value is
    irrational in general: ``lipdsl.certify.batchnorm`` bounds the difference)."""
    return weight / np.sqrt(running_var + eps)


def walk(layers, block: Residual | None = None,
         branch: str | None = None) -> Iterator[tuple[Residual | None, str | None, Layer]]:
    """``(block, branch, layer)`` for every layer, the layers of residual blocks included (main path, then
    shortcut), in order: ``block`` is the residual block holding ``layer`` and ``branch`` ``"main"`` or
    ``"shortcut"`` (both None at the top level). The blocks themselves are not yielded."""
    for layer in layers:
        if isinstance(layer, Residual):
            yield from walk(layer.main, layer, "main")
            yield from walk(layer.shortcut, layer, "shortcut")
        else:
            yield block, branch, layer


def flat_layers(layers) -> list:
    """Every layer, the layers of residual blocks included (main path, then shortcut), in order."""
    return [layer for _, _, layer in walk(layers)]


@dataclass(frozen=True, slots=True)
class Network:
    """A checked network: input shape, layers in order (each with in/out shapes), and where it came from."""

    name: str
    input_shape: Shape
    layers: tuple[Layer, ...]
    span: Span | None = None
    source_path: str | None = None
    input_span: Span | None = None  # the input's length in the 'input' line (the line for 'input N', 'C x *')
    #: the stored tensors the layers read: (weight file as the spec names it, key in that file), in order
    tensors_read: tuple[tuple[str, str], ...] = ()

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].out_shape if self.layers else self.input_shape

    @property
    def residual(self) -> bool:
        """True when the network has residual blocks (a graph, not a chain of layers)."""
        return any(isinstance(layer, Residual) for layer in self.layers)

    @property
    def any_length(self) -> bool:
        """True for a fully convolutional net declared with ``input c x *``."""
        return not self.input_shape.flat and self.input_shape.length is None

"""The lowered network: what ``lower`` produces and ``sdp``/``certify`` consume (state space + steps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from lipdsl.lang import typed


@dataclass(frozen=True, slots=True)
class StateSpace:
    """Discrete-time system ``x[t+1] = A x[t] + B u[t]``, ``v[t] = C x[t] + D u[t]`` (numpy, float64).

    A dense layer is the static case ``nx = 0`` (``v = D u``).
    """

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray

    @property
    def nx(self) -> int:
        return self.A.shape[0]

    @property
    def nu(self) -> int:
        return self.D.shape[1]

    @property
    def ny(self) -> int:
        return self.D.shape[0]

    def simulate(self, u: np.ndarray) -> np.ndarray:
        """Outputs ``v[0..T-1]`` for inputs ``u`` of shape ``(nu, T)``, from ``x[0] = 0``."""
        x = np.zeros(self.nx)
        out = np.empty((self.ny, u.shape[1]))
        for t in range(u.shape[1]):
            out[:, t] = self.C @ x + self.D @ u[:, t]
            x = self.A @ x + self.B @ u[:, t]
        return out


@dataclass(frozen=True, slots=True)
class Internal:
    """An activation inside a residual block: ``n`` outputs ``v`` of the block's system feed it, and its
    ``n`` outputs ``w = phi(v)``, slope in ``[alpha, beta]``, are inputs of the same system (feedforward).
    ``scale``: ``lower`` divided ``v`` and ``w`` by it (``residual_system``; 1 when unscaled), which the
    certificate file undoes (``Lambda^ = Lambda / scale^2``, its register's rows and columns of ``P`` too)."""

    name: str
    n: int
    alpha: float
    beta: float
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class System:
    """One LMI: a linear map (conv filter, dense matrix, or identity before a lone activation), then ``phi``.

    ``ss`` is realized from the weights divided by ``scale`` (an exact rescaling, undone in the bound);
    ``slope`` is ``(alpha, beta)`` of the activation that follows, or None when the map is linear.
    ``block_in``: the system reads its input signal in blocks of that many samples, channel-major (input
    ``ch * block_in + r`` is sample ``block_in * tau + r`` of channel ``ch``), so its input weight is
    ``X (x) I_block_in`` (an average pool with stride < kernel, realized at the pooled rate).
    """

    name: str
    layers: tuple[str, ...]
    kind: str  # "conv", "dense", "activation" or "pool"
    ss: StateSpace
    scale: float
    slope: tuple[float, float] | None
    activation: str | None
    note: str = ""
    block_in: int = 1
    internal: tuple[Internal, ...] = ()  # a residual block: its activations (docs/method.md, residual blocks)

    @property
    def n_internal(self) -> int:
        """Inputs (and outputs) that are internal activations' signals: ``ss.nu = n_in + n_internal``."""
        return sum(a.n for a in self.internal)

    @property
    def n_in(self) -> int:
        """Size of the signal entering the system (the supply's input): ``ss.nu`` minus internal inputs."""
        return self.ss.nu - self.n_internal

    @property
    def n_out(self) -> int:
        """Size of the signal leaving the system: ``ss.ny`` minus the internal activations' inputs."""
        return self.ss.ny - self.n_internal


@dataclass(frozen=True, slots=True)
class Pool:
    """A pooling layer between systems: the supply weight passes through, the bound gains ``gain``.

    ``diagonal``: the weight ``X`` before it must be diagonal (max pooling is 1-Lipschitz per channel only).
    ``tied``: the weight before it is ``X (x) I_tied`` (``X`` diagonal, the next system's input weight): a
    lifted max pool whose windows of ``tied`` samples are consecutive outputs of the system before it.
    """

    name: str
    op: str  # "avg", "max", "global_avg", or "merged" (an exact linear map folded into the next system)
    gain: float
    diagonal: bool
    note: str = ""
    tied: int = 1


@dataclass(frozen=True, slots=True)
class Flatten:
    """``c x N -> c*N`` channel-major: the next system sees ``X (x) I_N``."""

    name: str
    channels: int
    length: int


Step = Union[System, Pool, Flatten]


@dataclass(frozen=True, slots=True)
class Network:
    """Steps in order; the bound is ``sqrt(rho) * factor``, ``factor`` = scales x pooling gains."""

    name: str
    steps: tuple[Step, ...]
    factor: float
    typed: typed.Network

    @property
    def systems(self) -> tuple[System, ...]:
        return tuple(s for s in self.steps if isinstance(s, System))

    @property
    def length_bound(self) -> bool:
        """Whether the bound holds only for inputs of at least the lowering's ``min_length`` samples: an
        any-length net with a global average pool (its factor ``1/sqrt(N)`` is taken at that length)."""
        return self.typed.any_length and any(getattr(s, "op", None) == "global_avg" for s in self.steps)

    def validity(self, min_length: int | None) -> str:
        """For which inputs the bound holds, in words (the "valid for ..." of ``solve`` and ``verify``):
        the spec's input shape, every length ``N >= min_length`` (``length_bound``; ``min_length`` as
        lowered), or every length."""
        if not self.typed.any_length:
            return f"inputs of shape {self.typed.input_shape}"
        if self.length_bound:
            return f"every input length N >= {min_length}"
        return "every input length N (fully convolutional)"

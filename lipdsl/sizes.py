"""Size the SDP before building it: typed.Network (or lowered.Network) -> ProblemSize (the LMIs' orders,
the decision variables, the state-space sizes), for the limits, the automatic choice of form and ``show
--lowering``."""

from __future__ import annotations

from dataclasses import dataclass

from lipdsl import limits
from lipdsl.lang import typed
from lipdsl.model.lowered import Network as LoweredNetwork
from lipdsl.sdp.build import in_frequency_form


@dataclass(frozen=True)
class SubspaceWeights:
    """``X = diag(d) + V S V'`` with ``rank`` columns in ``V`` for every weight X of order at least
    ``max(min_order, 2 rank)``; the others full (``choose_weights``, ``sdp.build.weight_bases``)."""

    rank: int
    min_order: int = 0

    def applies(self, order: int) -> bool:
        return order >= max(self.min_order, 2 * self.rank)


@dataclass(frozen=True)
class ProblemSize:
    """Sizes of the SDP that ``build_sdp`` would build, computed from the typed network without lowering."""

    largest_lmi: int
    largest_system: str
    detail: str  # e.g. "2048 states + 256 inputs + 16 outputs"
    variables: int
    #: the orders of all LMIs the solver sees (a frequency-form system: one per frequency)
    lmi_orders: tuple[int, ...] = ()
    #: ``(nx, nu, ny)`` of every system (for the lowering's and the frequency responses' memory)
    systems: tuple[tuple[int, int, int], ...] = ()
    frequencies: int | None = None

    def memory(self, solver: str = "cvxopt") -> float:
        """Estimated peak bytes of lowering, building and solving this SDP (``limits``' fitted model)."""
        orders = self.lmi_orders or (self.largest_lmi,)
        total = limits.solver_bytes(self.variables, orders, solver) + limits.lowering_bytes(self.systems)
        if self.frequencies is not None:
            total += limits.frequency_bytes(self.systems, self.frequencies)
        return total

    @property
    def gib(self) -> float:
        """Estimated peak memory of the solve (``memory``) in GiB."""
        return self.memory() / limits.GIB


def problem_size(net: typed.Network, lift: int = 1, frequencies: int | None = None,
                 weights: SubspaceWeights | None = None) -> ProblemSize:
    """Orders of the LMIs and the variable count, mirroring ``lower``'s grouping (map + activation).

    A conv layer (c_in -> c_out, kernel k, dilation d) has ``nx = d (k-1) c_in`` states; its LMI has
    ``nx + c_in`` rows plus ``c_out`` when an activation follows; a dense layer ``n_in + n_out``. Variables:
    ``nx (nx+1)/2`` per P, one lambda per activated output, an output weight X (``ny (ny+1)/2``) between
    layers. With ``lift = b`` signals carry ``b`` samples per step (an upper estimate: strides shrink b).
    These are the direct forms; the inverse forms of ``sdp`` (a flatten head) can only be smaller. With
    ``frequencies`` the P of conv layers with ``nx >= n_u + n_y`` (and no ``P >= 0`` constraint) are not
    solver variables and their LMIs are the frequency-domain ones (``2 (n_u + n_y)`` rows), as in ``sdp``.
    ``weights``: each weight X it applies to is ``diag(d) + V S V'`` (``n + r(r+1)/2`` variables).
    """
    layers = list(net.layers)
    systems = []  # (name, nx, nu, ny, slope or None) of each map + activation
    b = lift if not net.input_shape.flat else 1
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, (typed.Flatten, typed.GlobalAvgPool)):
            b = 1
        if isinstance(layer, typed.Residual):
            act = i + 1 < len(layers) and isinstance(layers[i + 1], typed.Activation)
            nx, n_internal, block_lift = _block_states(layer)
            c_out = layer.out_shape.channels
            slope = (layers[i + 1].alpha, layers[i + 1].beta) if act else None
            systems.append((layer.name, nx, block_lift * layer.in_shape.channels + n_internal,
                            n_internal + c_out, slope, c_out))
            i += 2 if act else 1
            continue
        if isinstance(layer, (typed.Conv1d, typed.Dense, typed.Activation)):
            if isinstance(layer, typed.Conv1d):
                reach = layer.dilation * (layer.kernel - 1)
                nx, nu, ny = -(-reach // b) * b * layer.c_in, layer.c_in * b, layer.c_out * b
            elif isinstance(layer, typed.Dense):
                nx, nu, ny = 0, layer.n_in, layer.n_out
            else:
                c = layer.in_shape.channels * (1 if layer.in_shape.flat else b)
                nx, nu, ny = 0, c, c
            act = isinstance(layer, typed.Activation)
            while not act and i + 1 < len(layers) and isinstance(layers[i + 1], typed.BatchNorm):
                i += 1  # (folded into the conv or dense layer before it)
            if not act and i + 1 < len(layers) and isinstance(layers[i + 1], typed.Activation):
                act, i = True, i + 1
            systems.append((layer.name, nx, nu, ny, (layers[i].alpha, layers[i].beta) if act else None))
        i += 1
    return _size(systems, frequencies, weights)


def _block_states(block: typed.Residual) -> tuple[int, int, int]:
    """States, internal activation channels and lift of a residual block's stacked realization
    (``lower.residual_system``), estimated: each conv's ``d (k-1) c_in`` shift states (rounded up to whole
    blocks of ``b`` samples while its input carries ``b`` samples per step); one multiplier per channel and
    sample of each internal activation, of each window "activation" before a conv with a non-causal padding
    that follows a conv, and of the ``k - 1`` ReLUs of a max pool (method.md §3, residual blocks; a strided
    block is lifted by the product of its strides, ``L``). Not modelled: convs composed into one filter and
    the taps that align the branches (a few states; ``lowered_size`` counts them exactly)."""
    lift = typed.branch_stride(block.main)
    states = internal = 0
    for layers in (block.main, block.shortcut):
        previous, b = None, lift
        for layer in layers:
            if isinstance(layer, typed.Conv1d):
                states += -(-layer.dilation * (layer.kernel - 1) // b) * b * layer.c_in
                if isinstance(previous, typed.Conv1d) and layer.padding != "causal":
                    internal += b * layer.c_in
                b = max(b // layer.stride, 1)
            elif isinstance(layer, typed.Pool):
                c = layer.in_shape.channels
                states += -(-(layer.kernel - 1) // b) * b * c
                b = max(b // layer.stride, 1)
                if layer.op == "max":  # (their outputs: usually one block late to align with the main path)
                    internal += (layer.kernel - 1) * b * c
                    states += (layer.kernel - 1) * b * c
            elif isinstance(layer, typed.Activation):
                internal += b * layer.in_shape.channels
            if not isinstance(layer, typed.BatchNorm):
                previous = layer
    return states, internal, lift


def lowered_size(low: LoweredNetwork, frequencies: int | None = None,
                 weights: SubspaceWeights | None = None) -> ProblemSize:
    """``problem_size`` counted on the lowered systems: after ``lower``'s merges and folds (a linear conv
    composed with the next conv or pool, an overlapping pool folded into the dense layer after a flatten),
    which can make an LMI up to ``MERGE_GROWTH`` times the separate rows and its ``P`` up to four times the
    variables -- ``problem_size`` does not model them. The same direct forms and variables as there."""
    return _size([(s.name, s.ss.nx, s.ss.nu, s.ss.ny, s.slope, s.n_out) for s in low.systems], frequencies,
                 weights)


def _size(systems: list[tuple], frequencies: int | None, weights: SubspaceWeights | None = None
          ) -> ProblemSize:
    """The largest LMI and the variable count of ``(name, nx, nu, ny, slope[, n_out])`` systems
    (``problem_size``; ``n_out``: the outputs that leave a residual block, ``ny`` less its internal
    activations' signals, which always carry a multiplier)."""
    best = (0, "", "")
    variables = 1
    outputs = []
    orders = []
    shapes = tuple((nx, nu, ny) for _, nx, nu, ny, *_ in systems)
    for name, nx, nu, ny, slope, *rest in systems:
        n_out = rest[0] if rest else ny
        internal = ny - n_out
        act = slope is not None
        size = nx + nu + (n_out if act else 0)
        detail = f"{nx} states + {nu} inputs" + (f" + {n_out} outputs" if act else "")
        copies = 1
        if frequencies is not None and in_frequency_form(nx, nu, ny, slope):
            size = 2 * (nu + (n_out if act else 0))
            detail = f"frequency LMI: 2 x ({nu} inputs" + (f" + {n_out} outputs)" if act else ")")
            nx = 0
            copies = frequencies
        if size > best[0]:
            best = (size, name, detail)
        orders += [size] * copies
        variables += nx * (nx + 1) // 2 + internal + (n_out if act else 0)
        outputs.append(n_out)
    variables += sum(ny + weights.rank * (weights.rank + 1) // 2 if weights and weights.applies(ny)
                     else ny * (ny + 1) // 2 for ny in outputs[:-1])
    return ProblemSize(best[0], best[1], best[2], variables, tuple(orders), shapes, frequencies)

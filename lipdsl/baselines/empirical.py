"""Empirical lower bound: typed.Network -> LowerBound (max of ||J(u)||_2 over sampled and ascended inputs)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lipdsl import limits

from lipdsl.lang import typed
from lipdsl.lang.check import length_after, require_length, shapes_at
from lipdsl.errors import CertificateError, shorten
from lipdsl.model.forward import _activation_functions, jacobian, linearize

#: Input length used for nets declared ``input c x *`` when no ``length`` is given.
DEFAULT_LENGTH = 64


@dataclass(frozen=True)
class LowerBound:
    """``value <= ||J(argmax_input)||_2 <= L``: a Lipschitz lower bound witnessed by one input (the computed
    norm less its rounding margin, ``lower_bound``)."""

    value: float
    argmax_input: np.ndarray  # (c, N) or flat, as the network takes it
    evaluations: int  # exact Jacobian norms computed
    seconds: float
    starts: int  # starts completed (fewer than asked if the time budget ran out)
    length: int | None = None
    search: str = "random"  # found by: "random", "pair-ascent", "pair-refine", "segment", "jacobian-ascent"
    witness: str = "jacobian"  # "jacobian": value = ||J(argmax_input)||_2; "difference": the quotient below
    second_input: np.ndarray | None = None  # with "difference": value <= ||f(u) - f(v)|| / ||u - v||, v this


def _input_shape(net: typed.Network, length: int | None) -> tuple[int, ...]:
    shp = net.input_shape
    if shp.flat:
        return (shp.channels,)
    require_length(net, length)
    if shp.length is not None:
        return (shp.channels, shp.length)
    return (shp.channels, int(length or DEFAULT_LENGTH))


def search_cost(net: typed.Network, shape: tuple[int, ...], starts: int,
                oversample: int) -> tuple[float, float]:
    """Peak bytes of ``lower_bound`` at input ``shape``, and the floating-point operations of one Jacobian.

    Bytes: the scored inputs (``oversample * starts`` of ``n_in``), the tangents pushed through the widest
    layer to form a Jacobian (``min(n_in, n_out)`` of them, forward and backward), and the dense Jacobian
    with its SVD (``n_out x n_in``, a few copies); the batched passes of ``2 CHUNK`` inputs (every layer's
    output recorded, a few copies for the products) and their Jacobians (at most ``JACOBIAN_ENTRIES``
    entries at once). Operations: ``min(n_in, n_out)`` tangents through every conv (``2 c_out c_in k N_out``
    each) and dense layer, and the SVD."""
    n_in = int(np.prod(shape, dtype=float))
    length = None if len(shape) == 1 else shape[1]
    widest = stored = float(n_in)
    per_tangent = 0.0
    c, n = shape[0], length
    for L, c, n in shapes_at(net, length):
        if isinstance(L, typed.Conv1d):
            per_tangent += 2.0 * L.c_out * L.c_in * L.kernel * limits.as_float(max(n, 0))
        elif isinstance(L, typed.Dense):
            per_tangent += 2.0 * L.n_in * L.n_out
        widest = max(widest, float(c) * limits.as_float(n or 1))
        stored += float(c) * limits.as_float(n or 1)
    for L, samples in padded_inputs(net, length):  # (np.pad's copy in the forward pass, and its adjoint's)
        padded = limits.as_float(L.c_in) * limits.as_float(samples)
        widest = max(widest, padded)
        stored += padded
    n_out = float(c) * limits.as_float(n or 1)
    batch = min(n_in, n_out)
    memory = limits.BASE_BYTES + 8.0 * (oversample * starts * n_in + 4.0 * batch * widest
                                        + 4.0 * n_in * n_out + 2 * CHUNK * 3.0 * stored
                                        + 2.0 * min(JACOBIAN_ENTRIES, 2 * CHUNK * n_in * n_out))
    return memory, batch * per_tangent + 4.0 * n_in * n_out * batch


def padded_inputs(net: typed.Network, length: int | None) -> list[tuple[typed.Conv1d, int]]:
    """``(conv, samples)`` for every conv1d of ``net`` (residual blocks' included): the length of its padded
    input, ``N_in + pad_left + pad_right``, at input length ``length`` (exact; it may exceed int64). The
    forward pass builds that ``c_in x samples`` array (``forward.conv1d`` pads as PyTorch does: a dilation
    ``d`` with causal or same padding adds ``d (k - 1)`` zeros) and its adjoint another."""
    out = []

    def walk(layers, n):
        for L in layers:
            if isinstance(L, typed.Residual):
                walk(L.shortcut, n)
                walk(L.main, n)
            elif isinstance(L, typed.Conv1d):
                out.append((L, (n or 0) + L.pad_left + L.pad_right))
            n = length_after(L, n)

    shp = net.input_shape
    walk(net.layers, None if shp.flat else (shp.length or length or 1))
    return out


def _require_padding(net: typed.Network, shape: tuple[int, ...], what: str) -> None:
    """``LimitError`` at the conv1d whose padded input alone (``padded_inputs``; held for the
    ``min(n_in, n_out)`` tangents of a Jacobian and the batched passes, as ``search_cost`` counts it) exceeds
    the memory at input ``shape``: a huge dilation or padding, refused at its line before ``np.pad``
    allocates it (``what``: the search, for the message)."""
    length = None if len(shape) == 1 else shape[1]
    *_, (_, c, n) = [(None, shape[0], length)] + list(shapes_at(net, length))
    batch = min(float(np.prod(shape, dtype=float)), float(c) * limits.as_float(n or 1))
    for L, samples in padded_inputs(net, length):
        entries = limits.as_float(L.c_in) * limits.as_float(samples)
        limits.require_memory(
            limits.BASE_BYTES + 8.0 * (4.0 * batch + 2 * CHUNK * 3.0) * entries,
            f"{what}: the padded input of conv1d {L.name!r} ({L.c_in} x {shorten(samples)} samples: padding "
            f"{shorten(L.pad_left)} + {shorten(L.pad_right)} for dilation {shorten(L.dilation)}, kernel "
            f"{L.kernel})",
            hint=f"reduce the dilation or padding of {L.name!r} (the forward pass holds its padded input, as "
            "PyTorch does)", span=L.span)


def _finite(J: np.ndarray) -> np.ndarray:
    """``J`` (Jacobians), or a CertificateError when one overflowed float64: the network's gain at that input
    is beyond 1.8e308 (e.g. two layers of weight 1e300), and no norm of it is a number."""
    if not np.isfinite(J).all():
        raise CertificateError(
            "the network's Jacobian overflows float64 (entries beyond 1.8e308) at the inputs searched: "
            "no finite lower bound can be computed",
            hint="rescale the weights (the Lipschitz constant scales with them)")
    return J


def _top_triple(J: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(sigma, v, w)`` with ``J w = sigma v``, the largest singular value and its unit vectors."""
    U, S, Vt = np.linalg.svd(_finite(J), full_matrices=False)
    return float(S[0]), U[:, 0], Vt[0]


def _sigma(net, u) -> float:
    """Exact ``||J(u)||_2`` of the true network."""
    return float(np.linalg.norm(_finite(linearize(net, u).matrix()), 2))


def _sigmas(net, U: np.ndarray) -> np.ndarray:
    """``||J(u_b)||_2`` for a batch ``U`` (B, n_in) of inputs: batched forward passes and ``min(n_in, n_out)``
    batched products with the basis vectors (sub-batches of at most ``JACOBIAN_ENTRIES`` Jacobian entries)."""
    lin = linearize(net, U[:1], batch=True)
    size = max(1, int(JACOBIAN_ENTRIES // (lin.n_in * lin.n_out)))
    if U.shape[0] > size:
        return np.concatenate([_sigmas(net, U[i:i + size]) for i in range(0, U.shape[0], size)])
    lin = linearize(net, U, batch=True)
    B, m, n = U.shape[0], lin.n_out, lin.n_in
    if m <= n:
        J = np.stack([lin.vjp(np.repeat(np.eye(m)[k:k + 1], B, axis=0)) for k in range(m)], axis=1)
    else:
        J = np.stack([lin.jvp(np.repeat(np.eye(n)[k:k + 1], B, axis=0)) for k in range(n)], axis=2)
    return np.linalg.norm(_finite(J), 2, axis=(1, 2))


def _quotient(net, x: np.ndarray, y: np.ndarray) -> float:
    """``||f(x) - f(y)||_2 / ||x - y||_2`` from two single-input forward passes (0 if ``x == y``)."""
    d = float(np.linalg.norm(x - y))
    if d == 0.0:
        return 0.0
    return float(np.linalg.norm(linearize(net, x).output - linearize(net, y).output)) / d


def _depth(net: typed.Network) -> int:
    """Layers a forward pass goes through, those of residual blocks too: the rounding steps of one pass."""
    return len(typed.flat_layers(net.layers))


def _jacobian_margin(net: typed.Network) -> float:
    """Relative rounding allowance of ``||J(u)||_2`` as computed (``jacobian`` then LAPACK's norm): each
    layer's product rounds once per entry (about ``eps`` relative each, accumulated over the ``depth``
    layers), and the norm's SVD is backward stable to a few ``eps``: ``8 (depth + 2) eps``."""
    return 8.0 * (_depth(net) + 2) * float(np.finfo(np.float64).eps)


def _quotient_margin(net: typed.Network, fx: np.ndarray, fy: np.ndarray) -> float:
    """Relative rounding allowance of ``||f(x) - f(y)||_2 / ||x - y||_2`` as computed: each forward pass is
    off by about ``eps`` relative per layer (``4 (depth + 1) eps`` allowed), and the difference of two
    close outputs amplifies that by its cancellation ``(||f(x)|| + ||f(y)||) / ||f(x) - f(y)||``; a few
    ``eps`` more for the two norms and the division."""
    eps = float(np.finfo(np.float64).eps)
    diff = float(np.linalg.norm(fx - fy))
    if diff == 0.0:
        return 0.0  # a quotient of 0 is reported as 0 (no margin below it)
    cancellation = (float(np.linalg.norm(fx)) + float(np.linalg.norm(fy))) / diff
    return 4.0 * (_depth(net) + 1) * eps * cancellation + 4.0 * eps


def _rounded_down(value: float, margin: float) -> float:
    """``value (1 - margin)`` rounded towards zero: a computed witness less its rounding allowance, so that
    it is not above ``L`` because of rounding (``value`` exact ``L`` on a linear net, e.g.)."""
    if not value > 0.0:
        return value
    low = value - value * margin
    return max(0.0, float(np.nextafter(low, 0.0)))


def _candidates(net, shape, count: int, rng) -> np.ndarray:
    """``count`` starting inputs (rows, channel-major), a quarter of each family: white Gaussian noise, random
    walks (low frequencies, like recorded signals), sinusoids of random frequency and phase per channel, and
    smoothed noise; each scaled to a log-uniform RMS in ``[0.1, 10]`` (biases matter at small scales, the
    net is nearly positively homogeneous at large ones). Flat inputs are Gaussian."""
    n = int(np.prod(shape))
    U = rng.standard_normal((count, n))
    if len(shape) == 2:
        c, N = shape
        fam = np.arange(count) % 4
        walks = np.cumsum(rng.standard_normal((count, c, N)), axis=2)
        t = np.arange(N)
        freq = rng.uniform(0.0, 0.5, (count, c, 1))
        phase = rng.uniform(0.0, 2 * np.pi, (count, c, 1))
        sines = np.cos(2 * np.pi * freq * t + phase)
        kernel = np.ones(min(5, N)) / min(5, N)
        smooth = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 2,
                                     rng.standard_normal((count, c, N)))
        for k, arr in ((1, walks), (2, sines), (3, smooth)):
            U[fam == k] = arr.reshape(count, n)[fam == k]
    rms = np.sqrt(np.mean(U * U, axis=1, keepdims=True)) + 1e-300
    return U / rms * 10.0 ** rng.uniform(-1, 1, (count, 1))


#: The pair ascent: Adam step sizes (per pair, log-uniform in this range, times the input's RMS), the first
#: separation ``||y - x|| / ||x||``, and its iterations per ``steps``.
PAIR_LR = (0.02, 0.1)
PAIR_SEP = 0.1
PAIR_ITERATIONS = 100
#: Inputs per batch (scoring and pair ascent).
CHUNK = 32
#: Largest number of Jacobian entries held at once by the batched norms.
JACOBIAN_ENTRIES = 2e7
#: Refine rounds after the starts (``None``: ``max(1, starts // 4)``).
REFINE_ROUNDS = None
#: The smoothed Jacobian ascent (``_ascent``) after the pair ascent: ``ASCENT_ITERATIONS * steps`` steps at
#: most, from a step of ``ASCENT_ETA ||u||``, the surrogate's ``tau`` annealed over ``ASCENT_TAU``; it gets
#: the budget after ``PAIR_SHARE`` of it.
ASCENT_ITERATIONS = 30
ASCENT_ETA = 0.002
ASCENT_TAU = (0.2, 0.0005)
PAIR_SHARE = 0.85


def _pair_ascent(net, X: np.ndarray, steps: int, rng, stop, record, lr=PAIR_LR, sep: float = PAIR_SEP,
                 patience: int = 50):
    """Adam ascent of ``R(x, y) = ||f(x) - f(y)|| / ||x - y||`` on a batch of pairs ``(x, y = x + d)``.

    ``R <= L`` for every pair, and unlike ``||J(x)||`` (piecewise constant for ReLU nets) it changes with both
    points: ``dR/dx = (J(y) - J(x))^T g / ||d||`` and ``dR/dd = J(y)^T g / ||d|| - R d / ||d||^2`` with
    ``g = (f(y) - f(x)) / ||f(y) - f(x)||``, from one batched forward pass and one VJP over the ``2B``
    points. Steps are ``lr`` times the input's RMS per entry; ``||d||`` is kept above ``1e-4 (||x|| + 1)`` so
    that the quotient is not rounding noise. ``record(kind, x, y, value)`` gets every pair's quotient, and the
    exact Jacobian norms at both ends every 10 steps and at the end. The ascent ends after ``steps``
    iterations, when ``stop()``, or when the pairs' mean best quotient has grown less than 0.1 % in the last
    ``patience`` iterations.
    """
    B, n = X.shape
    X = X.copy()
    lr = 10.0 ** rng.uniform(np.log10(lr[0]), np.log10(lr[1]), (B, 1))
    D = rng.standard_normal((B, n))
    D *= sep * np.linalg.norm(X, axis=1, keepdims=True) / np.linalg.norm(D, axis=1, keepdims=True)
    moments = [np.zeros_like(X) for _ in range(4)]
    b1, b2 = 0.9, 0.999

    def ends():
        for u, s in zip(np.concatenate([X, X + D]), _sigmas(net, np.concatenate([X, X + D]))):
            record("jacobian", u, None, float(s))

    pair_best, best_x = np.zeros(B), X.copy()
    history = []
    for it in range(steps):
        if stop() or (it >= patience and history[-1] <= history[-patience] * (1 + 1e-3)):
            break
        lin = linearize(net, np.concatenate([X, X + D]), batch=True)
        F = lin.output.reshape(2 * B, -1)
        r = F[B:] - F[:B]
        nr = np.linalg.norm(r, axis=1, keepdims=True)
        nd = np.linalg.norm(D, axis=1, keepdims=True)
        R = nr[:, 0] / nd[:, 0]
        for b in range(B):
            record("difference", X[b], X[b] + D[b], float(R[b]))
        up = np.isfinite(R) & (R > pair_best)
        pair_best[up], best_x[up] = R[up], X[up]
        history.append(float(pair_best.mean()))
        g = r / np.maximum(nr, 1e-300)
        G = lin.vjp(np.concatenate([g, g]))
        grads = ((G[B:] - G[:B]) / nd, G[B:] / nd - R[:, None] * D / nd ** 2)
        scale = lr * np.sqrt(np.mean(X * X, axis=1, keepdims=True)) + 1e-12
        for k, (P, gr) in enumerate(zip((X, D), grads)):
            m, v = moments[2 * k], moments[2 * k + 1]
            m *= b1
            m += (1 - b1) * gr
            v *= b2
            v += (1 - b2) * gr * gr
            P += scale * (m / (1 - b1 ** (it + 1))) / (np.sqrt(v / (1 - b2 ** (it + 1))) + 1e-300)
        floor = 1e-4 * (np.linalg.norm(X, axis=1, keepdims=True) + 1.0)
        nd = np.linalg.norm(D, axis=1, keepdims=True)
        D *= np.maximum(1.0, floor / np.maximum(nd, 1e-300))
        if it % 10 == 9 and not stop():
            ends()
    if not stop():
        ends()
    return pair_best, best_x


def _ascent(net, u, steps, tau_range, deadline, record):
    """Ascend ``sigma_max(J_tau(u))`` of the smooth surrogate, recording the exact norm at every iterate.

    ``d sigma/du = grad_u (v^T J_tau(u) w) = (J_tau(u + h w)^T v - J_tau(u - h w)^T v) / (2h) + O(h^2)``
    for the top singular pair ``(v, w)`` (exact derivative of a simple singular value). Steps are a fraction
    ``eta`` (first ``ASCENT_ETA``) of ``||u||``: times 1.1 after a step that raised the surrogate's value
    (at most 0.2), halved after one that lowered it. ``tau`` (relative to each activation input's RMS) is
    annealed geometrically from ``tau_range[0]`` to ``tau_range[1]`` over the ``steps`` steps, or, when the
    steps so far project past ``deadline``, over the time to it where that is further along (the annealing
    ends when time does; an ascent the deadline does not cut short is reproducible).

    The ascent starts from the search's best input, a local refinement: steps of 0.2 ``||u||`` (the old
    fixed start) left ResNet-1D's 207.4 where it was; 0.002 with this annealing reaches 257.6 in a 60 s
    search (docs/method.md, the empirical lower bound).
    """
    eta = ASCENT_ETA
    prev = -np.inf
    t_start = time.perf_counter()
    span = max(deadline - t_start, 1e-9)

    def stop() -> bool:  # (checked between the Jacobians of a step: each may take seconds on long inputs)
        return time.perf_counter() > deadline or limits.current().expired

    for it in range(steps):
        if stop():
            return
        along, elapsed = it / max(steps - 1, 1), time.perf_counter() - t_start
        if it and elapsed / it * steps > span:  # (the deadline comes first: anneal by the time instead)
            along = min(1.0, max(along, elapsed / span))
        rel = tau_range[0] * (tau_range[1] / tau_range[0]) ** along
        base = linearize(net, u)
        record(u, float(np.linalg.norm(base.matrix(), 2)))
        if stop():
            return
        taus = [rel * max(st.rms, 1e-12) for st in base.activation_steps]
        lin = linearize(net, u, surrogate_tau=taus)
        s, v, w = _top_triple(lin.matrix())
        if stop():
            return
        eta = eta / 2 if s < prev else min(eta * 1.1, 0.2)
        prev = s
        norm_u = np.linalg.norm(u) + 1e-12
        h = 1e-4 * rel * norm_u
        pair = linearize(net, np.stack([u + h * w, u - h * w]), batch=True, surrogate_tau=taus)
        gv = pair.vjp(np.stack([v, v]))
        g = (gv[0] - gv[1]) / (2 * h)
        gn = np.linalg.norm(g)
        if not np.isfinite(gn) or gn == 0:
            return
        u = u + eta * norm_u * g / gn
    if not stop():
        record(u, _sigma(net, u))


def lower_bound(
    net: typed.Network,
    *,
    starts: int = 32,
    seed: int = 0,
    time_budget: float = 20.0,
    length: int | None = None,
    steps: int = 30,
    oversample: int = 8,
    progress: Callable[[int, int, float], None] | None = None,
) -> LowerBound:
    """A lower bound on the ℓ2 Lipschitz constant ``L``: the largest of ``||J(u)||_2`` (``<= L`` wherever
    ``f`` is differentiable) and ``||f(x) - f(y)||_2 / ||x - y||_2`` (``<= L`` always) over the inputs
    searched.

    1. Scoring (at most a tenth of the budget): ``oversample * starts`` inputs of four families (white noise,
       random walks, sinusoids, smoothed noise; RMS log-uniform in ``[0.1, 10]``), exact Jacobian norms.
    2. Pair ascent (until 85 % of the budget, an equal share per batch of ``CHUNK`` starts, at least a
       twentieth of the phase, so that a batch is not begun for a few iterations): from the best
       ``starts`` inputs, Adam ascent of the difference quotient over both points (``_pair_ascent``). For
       piecewise-linear nets ``||J||`` is locally constant, the quotient is not: it smooths over the
       activation patterns between the two points, and a pair whose quotient is ``q`` has a region of
       Jacobian norm ``>= q`` on its segment. Each batch ends after ``100 * steps`` iterations or when it
       stops improving; then ``max(1, starts // 4)`` rounds from the best ``CHUNK`` inputs found so far, each
       with new partners and step sizes and an equal share of the time left (``pair-refine``).
    3. If the best quotient beats every Jacobian norm, the Jacobian on 33 points of its segment; then the
       smoothed ascent of ``sigma_max(J(u))`` (``_ascent``, ``ASCENT_ITERATIONS * steps`` steps at most)
       from the best input, with the rest of the budget.

    Every Jacobian norm found is exact at its input; the reported value is recomputed at the end from
    single-input passes (``jacobian`` and its LAPACK norm, or two forward passes), less a rounding margin
    and rounded down, so that rounding does not put it above ``L``: ``||J(u)||_2 (1 - 8 (depth + 2) eps)``
    (``_jacobian_margin``), or for the quotient ``q (1 - 4 (depth + 1) eps c - 4 eps)`` with ``c = (||f(x)||
    + ||f(y)||) / ||f(x) - f(y)||`` the cancellation of the difference (``_quotient_margin``: two close
    points lose digits). It is the Jacobian witness unless the quotient so reduced is larger (then
    ``witness == "difference"`` and ``second_input`` is ``y``). The inputs are reported, so the witness's
    value can be recomputed; it is the reported value within that margin.

    Parameters
    ----------
    starts : int
        Number of random starts (fewer are done if ``time_budget`` seconds run out; at least one is done).
    seed : int
        Seed of ``numpy.random.default_rng``; the result is reproducible for a given seed when the budget
        does not cut the search short.
    length : int, optional
        Input length for a network declared ``input c x *`` (default ``DEFAULT_LENGTH``).
    progress : callable, optional
        Called as ``progress(starts_done, starts, best_value)`` after every start.

    Raises
    ------
    LipdslError
        If an activation has no known function (only a slope bound), or the spec contradicts ``length``
        (``check.require_length``); ``WeightError`` at the batch norm's line if its fold leaves float64's
        range (``residual.require_foldable``, as ``check`` and ``solve``); ``CertificateError`` if a Jacobian
        overflows float64.
    """
    from lipdsl.model.residual import require_foldable

    t0 = time.perf_counter()
    require_foldable(net)  # (refused before any search, as check and solve refuse it)
    for L in typed.flat_layers(net.layers):
        if isinstance(L, typed.Activation):
            _activation_functions(L)  # raises for activations known only by their slope
    shape = _input_shape(net, length)
    memory, flops = search_cost(net, shape, starts, oversample)
    what = f"the lower bound's search on inputs of shape {' x '.join(map(str, shape))}"
    fitting = [s for s in (16, 8, 4, 2, 1) if s < starts
               and search_cost(net, shape, s, oversample)[0] <= limits.available_memory()]
    if net.any_length:
        hint = "give a shorter --length (each Jacobian is a dense outputs x inputs matrix)"
    elif fitting:
        hint = f"give fewer --starts (e.g. --starts {fitting[0]}: {oversample} inputs are kept per start)"
    else:
        hint = "the input is too large for dense Jacobians; the upper-bound methods do not need them"
    _require_padding(net, shape, what)
    limits.require_memory(memory, f"{what} ({starts} starts)", hint=hint, span=net.span)
    with limits.current().earlier(time_budget + limits.SEARCH_GRACE).active():
        limits.require_time(flops, f"one Jacobian in {what}", span=net.span,
                            hint="give a shorter --length" if net.any_length else
                            "the input is too large for dense Jacobians; the upper-bound methods do not need "
                            "them (or give a larger --time-budget)")
    # the search stops itself at its budget, also inside the first ascent (the CLI's hard deadline is
    # SEARCH_GRACE later: time for the step in progress)
    hard = limits.current().earlier(time_budget)
    # (an overflow is no warning here: Jacobians are checked to be finite, quotients that are not are ignored)
    with hard.active(), np.errstate(over="ignore", invalid="ignore"):
        rng = np.random.default_rng(seed)
        deadline = t0 + time_budget
        found = {"jacobian": None, "difference": None}  # kind -> (value, x, y, search)
        count = [0]
        search = ["random"]

        def record(kind, x, y, value):
            count[0] += kind == "jacobian"
            if np.isfinite(value) and (found[kind] is None or value > found[kind][0]):
                found[kind] = (value, x.copy(), None if y is None else y.copy(), search[0])

        def best() -> float:
            return max((v[0] for v in found.values() if v is not None), default=0.0)

        def stop_at(when):
            return lambda: time.perf_counter() > when or hard.expired

        # Phase 1 (at most a tenth of the budget): score `oversample * starts` inputs of several families.
        pool, scores = [], []
        chunk = CHUNK
        for j in range(0, oversample * starts, chunk):
            if j > 0 and (time.perf_counter() > t0 + time_budget / 10 or hard.expired):
                break
            U = _candidates(net, shape, min(chunk, oversample * starts - j), rng)
            for u, s in zip(U, _sigmas(net, U)):
                pool.append(u)
                scores.append(float(s))
                record("jacobian", u, None, float(s))
        order = np.argsort(scores, kind="stable")[::-1]
        # Phase 2 (until 85 % of the budget): ascend the difference quotient from the best inputs, in batches.
        search[0] = "pair-ascent"
        done = 0
        ends = []
        pair_start, pair_end = time.perf_counter(), t0 + PAIR_SHARE * time_budget
        while done < starts:
            if done > 0 and time.perf_counter() > pair_end:
                break
            size = min(chunk, starts - done)
            X = np.stack([pool[order[(done + b) % len(order)]] for b in range(size)])
            now = time.perf_counter()  # each batch gets an equal share of the time left, at least 1/20 of
            share = now + max((pair_end - now) / -(-(starts - done) // chunk), (pair_end - pair_start) / 20)
            got = _pair_ascent(net, X, PAIR_ITERATIONS * steps, rng, stop_at(share), record, PAIR_LR,
                               PAIR_SEP)
            ends.append(got)
            done += size
            if progress is not None:
                for i in range(done - size, done):
                    progress(i + 1, starts, best())
        # Phase 2b: rounds from the best `chunk` inputs of the ascents so far (new partners and step sizes).
        search[0] = "pair-refine"
        rounds = max(1, starts // 4) if REFINE_ROUNDS is None else REFINE_ROUNDS
        for r in range(rounds):
            if done < starts or time.perf_counter() >= pair_end:
                break
            values = np.concatenate([e[0] for e in ends])
            xs = np.concatenate([e[1] for e in ends])
            top = np.argsort(values, kind="stable")[::-1][:chunk]
            now = time.perf_counter()
            until = stop_at(now + (pair_end - now) / (rounds - r))
            ends.append(_pair_ascent(net, xs[top], PAIR_ITERATIONS * steps, rng, until, record, PAIR_LR,
                                     PAIR_SEP))
        # Phase 3: where the best quotient beats every Jacobian found, a region on its segment has a larger
        # Jacobian (f(y) - f(x) is the integral of J along it): sample the segment; then ascend the Jacobian
        # norm itself from the best input (the smoothed ascent; exact for smooth activations).
        search[0] = "segment"
        if found["difference"] is not None and found["difference"][0] > found["jacobian"][0] \
                and time.perf_counter() < deadline:
            _, x, y, _ = found["difference"]
            ts = np.linspace(0.0, 1.0, 33)[:, None]
            for u, s in zip(x + ts * (y - x), _sigmas(net, x + ts * (y - x))):
                record("jacobian", u, None, float(s))
        search[0] = "jacobian-ascent"
        _ascent(net, found["jacobian"][1], ASCENT_ITERATIONS * steps, ASCENT_TAU, deadline,
                lambda u, s: record("jacobian", u, None, s))
        # The report: both witnesses recomputed independently (single-input passes, dense Jacobian, LAPACK
        # norm), each less its rounding margin; the Jacobian is preferred unless the quotient beats it so.
        _, x, _, how = found["jacobian"]
        value = _rounded_down(float(np.linalg.norm(_finite(jacobian(net, x)), 2)), _jacobian_margin(net))
        y = None
        if found["difference"] is not None:
            _, xd, yd, how_d = found["difference"]
            fx, fy = linearize(net, xd).output, linearize(net, yd).output
            q = _quotient(net, xd, yd)
            q_down = _rounded_down(q, _quotient_margin(net, fx, fy))
            if q_down > value:
                value, x, y, how = q_down, xd, yd, how_d
        return LowerBound(
            value,
            x.reshape(shape),
            count[0],
            time.perf_counter() - t0,
            done,
            None if net.input_shape.flat else shape[-1],
            search=how,
            witness="jacobian" if y is None else "difference",
            second_input=None if y is None else y.reshape(shape),
        )

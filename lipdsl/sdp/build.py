"""Build the dissipativity SDP: lowered.Network -> Sdp (LMIs as F0 + sum_k x_k F_k, sparse; PICOS on demand).

For a system ``(A, B, C, D)`` followed by an activation with slope in ``[alpha, beta]``, input weight ``X_in``
and output weight ``X_out`` (method.md §4-5, the paper's Corollary 10 with general slopes)::

    M = [[P - A'PA + 2ab C'LC,   -A'PB + 2ab C'LD,        -(a+b) C'L],
         [      .,               X_in - B'PB + 2ab D'LD,  -(a+b) D'L],
         [      .,                     .,                  2L - X_out]]  >= 0,   L = diag(lambda) >= 0,

which makes ``sum_t |dw_t|^2_{X_out} <= sum_t |du_t|^2_{X_in}`` along any two trajectories from rest. A linear
system (no activation) uses
``[[P - A'PA - C'X_out C, -A'PB - C'X_out D], [., X_in - B'PB - D'X_out D]] >= 0``.
The chain starts with ``X_in = rho I`` and ends with ``X_out = I``; a flatten makes the next input weight
``X (x) I_N`` (channel-major); pooling keeps ``X`` (diagonal before max pooling, ``X >= 0`` explicitly where
no later LMI implies it); a system that reads its input in blocks of ``S`` samples (an overlapping average
pool, ``System.block_in``) sees ``X (x) I_S``. When the last layer is a linear dense map after an
activation, its constraint ``X_{l-1} >= W'W`` is tight at the optimum, so ``X_{l-1} := W'W`` is
substituted (method.md §8).
When the network ends in ``flatten -> linear dense W`` (m outputs from c x N), the constraint
``X (x) I_N - W'W >= 0`` (cN rows) is solved in the inverse ``Y = X^-1`` instead: it is equivalent to
``I_m - sum_t W_t Y W_t' >= 0`` (m rows; ``W_t`` the columns of time t), and the previous system's
``-X`` becomes the Schur form ``[[., 0], [., 2L, I], [0, I, Y]] >= 0`` (``[[Q, E'], [E, Y]] >= 0`` for a
linear system) - exact, and an LMI of cN rows turns into one of m. ``certify`` maps ``Y`` back to ``X``.
When it ends in ``flatten -> dense W + activation [0, b]`` with a constant output weight ``E = F'F``
(``W_2'W_2`` substituted, or ``I``), its LMI ``[[X (x) I_N, -b W'L], [-b L W, 2L - E]] >= 0`` (cN + n rows)
is, for ``X > 0`` and ``L > 0`` (Schur complement on ``X (x) I_N``, congruence with ``M = L^-1``, Schur
complement again), equivalent to

    [[2M - b^2 sum_t W_t Y W_t',  M F'],
     [F M,                        I_r ]]  >= 0,     Y = X^-1,  M = L^-1  (n + r rows),

linear in ``(Y, M)``; used when it is smaller (ECG: 156 rows -> 60 + 5, plus 3 Schur rows upstream).
Only ``alpha = 0``: a nonzero ``alpha`` adds ``2ab W'LW`` to the flattened block, which has no such form.
The bound is ``L = sqrt(rho) * factor`` (scales and pooling gains). ``P >= 0`` is implied by the (1,1)
block when ``A`` is nilpotent and ``alpha*beta <= 0``, so it is added only when ``alpha*beta > 0``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from lipdsl import limits
from lipdsl.errors import UnsupportedError
from lipdsl.model import lowered
from lipdsl.sdp.problem import Link, Lmi, LmiBuilder, Sdp, Variable, Weight, place_block, selector



def system_lmi_terms(
    b: LmiBuilder, sys: lowered.System, P, lam, w_in: Weight, w_out: Weight, inverse_out: bool = False,
    repeat: int = 1, inner: tuple = (),
):
    """Add the terms of one system's LMI (module docstring) to ``b``; coordinates (state, input, output).

    ``inverse_out``: ``w_out`` holds ``Y = X_out^-1``; ``-X_out`` is written in Schur form with ``ny`` more
    rows (after the output rows, or after the input rows for a linear system). ``repeat``: each multiplier
    serves ``repeat`` consecutive outputs (the real and imaginary parts of a frequency LMI). ``inner``: the
    multipliers of a residual block's internal activations (``System.internal``): coordinates (state,
    input, internal activations' outputs, output), each internal pair ``(v_j, w_j)`` adding the
    activation's term as the output pair does (docs/method.md, residual blocks).
    """
    ss = sys.ss
    nx, nu = ss.nx, ss.nu
    ny = sys.n_out
    m = b.m
    xs, us, ws = 0, nx, nx + nu
    if nx:
        E2 = place_block(np.hstack([ss.A, ss.B]), 0, m)  # x+ = [A B](x,u)
        b.congruence(P, selector(nx, xs, m), +1.0)
        b.congruence(P, E2, -1.0)
    b.weight(w_in, us, +1.0)
    CD = np.hstack([ss.C, ss.D])
    r = 0  # a residual block's internal activations: w_j = phi_j(v_j), v_j = rows r.. of [C D] (feedforward)
    for act, lam_j in zip(sys.internal, inner):
        Pv, Pw = place_block(CD[r : r + act.n], 0, m), selector(act.n, nx + sys.n_in + r, m)
        if act.alpha * act.beta != 0:
            b.diag_bilinear(lam_j, Pv, Pv, act.alpha * act.beta, repeat)
        b.diag_bilinear(lam_j, Pv, Pw, -(act.alpha + act.beta), repeat)
        b.diag_bilinear(lam_j, Pw, Pw, 1.0, repeat)
        r += act.n
    CD = CD[r:]
    Psi_v = place_block(CD, 0, m)  # v = C x + D u (the system's output rows)
    if sys.slope is not None:
        alpha, beta = sys.slope
        Psi_w = selector(ny, ws, m)
        if alpha * beta != 0:
            b.diag_bilinear(lam, Psi_v, Psi_v, alpha * beta, repeat)  # 2ab C'LC etc. (symmetrised)
        b.diag_bilinear(lam, Psi_v, Psi_w, -(alpha + beta), repeat)
        b.diag_bilinear(lam, Psi_w, Psi_w, 1.0, repeat)  # 2 L
        if inverse_out:  # [[2L, I], [I, Y]]: 2L - Y^-1 by a Schur complement
            zs = ws + ny
            b.F0[ws + np.arange(ny), zs + np.arange(ny)] = 1.0
            b.F0[zs + np.arange(ny), ws + np.arange(ny)] = 1.0
            b.weight(w_out, zs, +1.0)
        else:
            b.weight(w_out, ws, -1.0)
    elif inverse_out:  # [[Q, E'], [E, Y]]: Q - E' Y^-1 E by a Schur complement
        zs = nx + nu
        b.F0[: nx + nu, zs : zs + ny] += CD.T
        b.F0[zs : zs + ny, : nx + nu] += CD
        b.weight(w_out, zs, +1.0)
    else:
        # - [C D]' X_out [C D]
        if w_out.kind == "const":
            b.F0[: nx + nu, : nx + nu] -= CD.T @ w_out.constant @ CD
        else:  # X (x) I_k: sum_t T_t' X T_t with T_t the rows i*k + t (channel-major)
            k = w_out.kron
            for t in range(k):
                b.congruence(w_out.variable, Psi_v[t::k], -1.0)


def fir_taps(ss: lowered.StateSpace) -> list[np.ndarray]:
    """The impulse response ``[D, C B, C A B, ...]`` of a system with a nilpotent ``A`` (every tap)."""
    taps = [ss.D]
    AjB = ss.B
    for _ in range(ss.nx):
        limits.checkpoint("frequency response")
        if not AjB.any():
            return taps
        taps.append(ss.C @ AjB)
        AjB = ss.A @ AjB
    if AjB.any():
        raise ValueError("the state matrix is not nilpotent")  # pragma: no cover - FIR realizations are
    return taps


def tap_spacing(taps: list[np.ndarray]) -> int:
    """The largest ``g`` dividing every ``m`` with ``h_m != 0`` (1 when only ``h_0`` is nonzero).

    Then ``H(e^{iw}) = sum_j h_(gj) e^{-igwj} = H~(e^{igw})`` is ``2 pi / g``-periodic, and so is every
    frequency-domain LMI of the system, which depends on ``w`` only through ``H``: ``Phi(w) >= 0`` for all
    ``w`` iff ``Phi~(theta) >= 0`` for ``theta = g w`` in ``[0, pi]`` (``H~`` has real taps: ``Phi~(-theta)``
    is the conjugate of ``Phi~(theta)``). A conv with dilation ``d`` and a causal padding (a TCN's layers and
    residual blocks) has ``g = d``: its frequencies belong in ``[0, pi / d]``, where ``[0, pi]`` would repeat
    ``Phi`` ``d`` times and leave ``d`` times wider gaps between the distinct values."""
    g = 0
    for m, tap in enumerate(taps):
        if m and np.any(tap):
            g = math.gcd(g, m)
    return max(g, 1)


def frequency_response(ss: lowered.StateSpace, omegas: np.ndarray, taps: list | None = None) -> np.ndarray:
    """``H(e^{iw}) = D + sum_j C A^j B e^{-iw(j+1)}`` at each ``w`` (``A`` nilpotent: a finite sum);
    ``taps``: ``fir_taps(ss)`` when the caller has them."""
    limits.require_time(2.0 * ss.nx**3 * max(ss.nu, 1) + 8.0 * len(omegas) * ss.nx * ss.nu * ss.ny,
                        f"the frequency response of a system with {ss.nx} states",
                        hint="the frequency form needs the filter's taps C A^j B: use smaller kernels or "
                        "dilations (states = dilation*(kernel-1)*c_in)")
    taps = fir_taps(ss) if taps is None else taps
    phase = np.exp(-1j * np.outer(omegas, np.arange(len(taps))))  # (K, J)
    taps = np.array(taps, dtype=complex)
    return (phase @ taps.reshape(len(taps), -1)).reshape((len(omegas),) + taps.shape[1:])  # one product


def _repeat_weight(w: Weight, r: int) -> Weight:
    """``W (x) I_r`` (the real embedding of a real weight when ``r = 2``)."""
    if r == 1:
        return w
    if w.kind == "rho":
        return Weight("rho", w.n * r, w.variable)
    if w.kind == "var":
        return Weight("var", w.n * r, w.variable, kron=w.kron * r)
    return Weight("const", w.n * r, constant=np.kron(w.constant, np.eye(r)))


def frequency_lmi_terms(b: LmiBuilder, sys: lowered.System, H: np.ndarray, lam, w_in: Weight, w_out: Weight,
                        inverse_out: bool = False, inner: tuple = ()):
    """The frequency-domain LMI of a system at one frequency (module docstring, KYP lemma).

    ``H`` is ``H(e^{iw})``; a complex one enters through its real embedding ``[[Re H, -Im H], [Im H, Re H]]``
    with rows and columns interleaved (index ``2 i + part``), so the weights become ``X (x) I_2`` and each
    multiplier serves two rows.
    """
    if np.iscomplexobj(H):
        D = np.kron(H.real, np.eye(2)) + np.kron(H.imag, np.array([[0.0, -1.0], [1.0, 0.0]]))
        r = 2
    else:
        D, r = H, 1
    internal = tuple(lowered.Internal(a.name, a.n * r, a.alpha, a.beta) for a in sys.internal)  # r rows each
    static = lowered.System(sys.name, sys.layers, "frequency",
                            lowered.StateSpace(np.zeros((0, 0)), np.zeros((0, D.shape[1])),
                                               np.zeros((D.shape[0], 0)), D),
                            sys.scale, sys.slope, sys.activation, internal=internal)
    system_lmi_terms(b, static, None, lam, _repeat_weight(w_in, r), _repeat_weight(w_out, r), inverse_out, r,
                     inner=inner)


#: ``build_sdp(frequencies=K)`` on a net where no system takes the frequency form (``in_frequency_form``).
NO_FREQUENCY_FORM = ("--frequencies {k}: every LMI is exact, as no system takes the frequency form (that "
                     "needs a state, at least as many states as inputs and outputs together, and no P >= 0)")


def in_frequency_form(nx: int, nu: int, ny: int, slope: tuple[float, float] | None) -> bool:
    """Whether ``build_sdp(frequencies=K)`` imposes a system's LMI in the frequency domain: it has a state,
    at least as many states as inputs and outputs together (a small P, e.g. of a first layer with one
    input channel, is cheaper than K frequency LMIs), and no ``P >= 0`` constraint (``alpha * beta > 0``)."""
    return nx > 0 and nx >= nu + ny and not (slope is not None and slope[0] * slope[1] > 0)


def exact_lmi_note(sys: lowered.System) -> str:
    """Why ``--frequencies`` left a system's LMI exact (``P`` among the solver's variables): a slope with
    ``alpha * beta > 0`` needs ``P >= 0``, which the frequency-domain form does not impose; and what helps."""
    slopes = ([(sys.activation or "activation", sys.slope)] if sys.slope is not None
              and sys.slope[0] * sys.slope[1] > 0 else [])
    slopes += [(a.name, (a.alpha, a.beta)) for a in sys.internal if a.alpha * a.beta > 0]
    which = ", ".join(f"{name} slope [{a:g}, {b:g}]" for name, (a, b) in slopes)
    fix = ", ".join(f"'slope [0, {b:g}]' after {name}" if a > 0 else f"'slope [{a:g}, 0]' after {name}"
                    for name, (a, b) in slopes)
    return (f"{sys.name} kept its exact LMI ({sys.ss.nx} states, P in the SDP) under --frequencies: "
            f"alpha*beta > 0 ({which}) needs P >= 0, which has no frequency-domain form here; hint: "
            f"{fix} in the spec (a sound, looser claim) lets --frequencies grid it, or drop --frequencies")


def weight_bases(net: lowered.Network, rank: int, min_order: int = 0) -> dict[str, np.ndarray]:
    """For ``build_sdp(weights="subspace")``: for each system whose output feeds the next system directly,
    an orthonormal basis ``V`` (n x ``rank``) of the directions its output weight ``X = diag(d) + V S V'``
    may couple: the top eigenvectors of the next system's tap Gram ``sum_j T_j' T_j`` (``T_0 = D``,
    ``T_j = C A^(j-1) B`` on its first n inputs; on its first ``n L`` inputs, summed over the ``L`` samples of
    a block, for a system that reads blocks of ``L = block_in`` samples), i.e. of
    ``(1/pi) int_0^pi H(e^iw)' H(e^iw) dw`` -- the input directions that the next layer amplifies most,
    where a diagonal ``X`` is loosest.
    Systems with a pool or flatten in between, with ``2 rank > n`` or ``n < min_order``, get none (a full
    ``X``)."""
    steps = list(net.steps)
    systems = [i for i, s in enumerate(steps) if isinstance(s, lowered.System)]
    bases = {}
    for i, j in zip(systems, systems[1:]):
        producer, consumer = steps[i], steps[j]
        n, L = producer.n_out, consumer.block_in
        if j != i + 1 or 2 * rank > n or n < min_order or consumer.ss.nu < n * L:
            continue
        # a consumer reading blocks of L samples (input ch * L + r) sees X (x) I_L: the Gram of channel
        # directions sums over the L samples of a block
        gram = sum(np.einsum("oar,obr->ab", *2 * [tap[:, : n * L].reshape(-1, n, L)])
                   for tap in fir_taps(consumer.ss))
        V = np.linalg.eigh(gram)[1][:, ::-1][:, :rank].copy()
        if not _redundant(V):
            bases[producer.name] = V
    return bases


def _redundant(V: np.ndarray) -> bool:
    """Whether ``diag(d) + V S V'`` has more parameters than matrices: some ``S != 0`` makes ``V S V'``
    diagonal (e.g. a column of ``V`` that is a unit vector ``e_i``, as a next layer that does not mix
    channels gives), which leaves the SDP's Newton system singular. Tested as a kernel of
    ``S -> offdiag(V S V')`` (its matrix: ``n(n-1)/2 x r(r+1)/2``)."""
    n, r = V.shape
    iu = np.triu_indices(n, 1)
    cols = []
    for a, b in zip(*np.triu_indices(r)):
        F = np.outer(V[:, a], V[:, b])
        cols.append((F + F.T)[iu])
    M = np.array(cols).T
    if M.size == 0:
        return True
    s = np.linalg.svd(M, compute_uv=False)
    return bool(s[-1] <= 1e-8 * max(s[0], 1e-300)) or M.shape[0] < M.shape[1]


def frequency_grid(count: int) -> np.ndarray:
    """``count`` frequencies ``pi j / (count - 1)``, ``j = 0 .. count-1`` (both ends included)."""
    return np.pi * np.arange(count) / max(count - 1, 1)


def final_inverse_terms(b: LmiBuilder, sys: lowered.System, w_in: Weight):
    """``I_m - sum_t W_t Y W_t' >= 0``: the final ``X (x) I_N - W'W >= 0`` in ``Y = X^-1`` (module doc)."""
    W = sys.ss.D
    c, N = w_in.variable.n, w_in.kron
    b.F0[np.arange(W.shape[0]), np.arange(W.shape[0])] += 1.0
    for t in range(N):
        Wt = W[:, np.arange(c) * N + t]  # channel-major: column ch*N + t
        b.congruence(w_in.variable, sp.csr_matrix(Wt.T), -1.0)


def final_inverse_activation_terms(b: LmiBuilder, sys: lowered.System, w_in: Weight, mu: Variable,
                                   F: np.ndarray):
    """``[[2M - beta^2 sum_t W_t Y W_t', M F'], [F M, I_r]] >= 0``, ``M = Lambda^-1`` (module docstring).

    The last activation layer ``w = phi(W u)``, slope ``[0, beta]``, input weight ``X (x) I_N`` (``Y = X^-1``)
    and constant output weight ``E = F'F``; coordinates (outputs, the r rows of ``F``).
    """
    W = sys.ss.D
    ny, m = W.shape[0], b.m
    beta = sys.slope[1]
    c, N = w_in.variable.n, w_in.kron
    out = selector(ny, 0, m)
    b.diag_bilinear(mu, out, out, 1.0)  # 2M
    b.diag_bilinear(mu, out, place_block(F.T, ny, m), 1.0)  # M F' and F M
    b.F0[ny + np.arange(F.shape[0]), ny + np.arange(F.shape[0])] += 1.0
    for t in range(N):
        Wt = W[:, np.arange(c) * N + t]  # channel-major: column ch*N + t
        b.congruence(w_in.variable, place_block(Wt.T, 0, m), -(beta**2))


def _factor(E: np.ndarray) -> np.ndarray:
    """``F`` with ``F'F = E`` and as few rows as ``rank(E)`` (``E`` symmetric positive semidefinite)."""
    w, V = np.linalg.eigh((E + E.T) / 2)
    keep = w > w.max(initial=0.0) * E.shape[0] * np.finfo(float).eps
    return (V[:, keep] * np.sqrt(w[keep])).T


def build_sdp(net: lowered.Network, *, inverse: bool = True, frequencies: int | None = None,
              weights: str = "full", grids: dict | None = None, bases: dict | None = None) -> Sdp:
    """The layer-wise dissipativity SDP of ``net`` (see the module docstring for the LMIs).

    ``frequencies``: replace the LMI of each conv system with at least as many states as inputs and
    outputs together by its frequency-domain form on that many frequencies (no ``P`` among the solver's
    variables; ``P`` is recovered afterwards, see ``lipdsl.certify.storage``). ``grids``: system name ->
    its own frequencies instead (``storage.refined_grids``). ``weights="diagonal"``: every weight ``X``
    between systems diagonal (an experiment: fewer variables, a looser bound). ``weights="subspace"``: every
    such ``X`` is ``diag(d) + V S V'`` with ``V = bases[system name]`` (n x r, orthonormal columns; a system
    missing from ``bases`` keeps a full ``X``).
    """
    steps = list(net.steps)
    systems = [i for i, s in enumerate(steps) if isinstance(s, lowered.System)]
    if not systems:
        raise UnsupportedError(f"network {net.name!r} has no conv, dense or activation layer to bound")
    variables: list[Variable] = []
    count = [0]

    def new_var(name, role, system, n, structure, basis=None) -> Variable:
        v = Variable(name, role, system, n, structure, count[0], basis)
        count[0] += v.dim
        variables.append(v)
        return v

    rho = new_var("rho", "rho", None, 1, "scalar")
    notes: list[str] = []

    # Substitute X_{l-1} := W'W when the network ends in a linear dense layer after an activation.
    eliminated: np.ndarray | None = None
    eliminated_factor: np.ndarray | None = None
    last = steps[systems[-1]]
    if (
        len(systems) >= 2
        and last.kind == "dense"
        and last.slope is None
        and steps[systems[-2]].slope is not None
    ):
        between = steps[systems[-2] + 1 : systems[-1]]
        if all(isinstance(s, lowered.Pool) and s.op != "max" for s in between):
            eliminated = last.ss.D.T @ last.ss.D
            eliminated_factor = last.ss.D if last.ss.D.shape[0] <= last.ss.D.shape[1] else _factor(eliminated)
            notes.append(f"{last.name}: X_(l-1) := W'W substituted (tight at the optimum)")
            steps = steps[: systems[-1]] + steps[systems[-1] + 1 :]
            systems = systems[:-1]

    # Solve in Y = X^-1 when the network ends in flatten -> linear dense with fewer outputs than inputs.
    invert_at = None
    head_factor: np.ndarray | None = None  # F (E = F'F) when the last activation layer is solved in M, Y
    if inverse and len(systems) >= 2 and not steps[systems[-2]].internal:  # (no Schur form for blocks yet)
        final = steps[systems[-1]]
        kron = int(np.prod([st.length for st in steps[systems[-2] + 1 : systems[-1]]
                            if isinstance(st, lowered.Flatten)] or [1]))
        if final.kind == "dense" and final.slope is None and kron > 1 and final.ss.ny < final.ss.nu:
            invert_at = len(systems) - 2
            notes.append(f"{final.name}: X (x) I_{kron} - W'W >= 0 solved as I - W (Y (x) I) W' >= 0, "
                         f"Y = X^-1 ({final.ss.nu} -> {final.ss.ny} rows)")
        elif (final.kind == "dense" and final.slope is not None and final.slope[0] == 0 and final.slope[1] > 0
              and kron > 1 and final.ss.nx == 0):
            F = eliminated_factor if eliminated is not None else np.eye(final.ss.ny)
            before_rows = final.ss.nu + final.ss.ny
            after_rows = final.ss.ny + F.shape[0] + steps[systems[-2]].ss.ny  # (+ the Schur rows upstream)
            if after_rows < before_rows:
                invert_at, head_factor = len(systems) - 2, F
                notes.append(f"{final.name}: [[X (x) I_{kron}, -W'L], [-LW, 2L - E]] >= 0 solved in "
                             f"Y = X^-1, M = L^-1 as [[2M - W (Y (x) I) W', M F'], [F M, I]] >= 0 "
                             f"({before_rows} -> {final.ss.ny + F.shape[0]} rows)")

    nonneg: list[Variable] = [rho]
    links: list[Link] = []
    lmis: list[Lmi] = []
    psd_weights: list[Variable] = []
    prev_out: Weight | None = None
    # Walk: input weight of each system = output weight of the previous one, through pools/flattens.
    for pos, i in enumerate(systems):
        sys: lowered.System = steps[i]
        before = steps[(systems[pos - 1] + 1) if pos else 0 : i]
        kron = sys.block_in  # input in blocks of samples (an overlapping average pool): X (x) I_block_in
        for s in before:
            if isinstance(s, lowered.Flatten):
                kron *= s.length
        if pos == 0:
            w_in = Weight("rho", sys.n_in, rho)
        else:
            assert prev_out is not None
            if prev_out.kind == "var":
                w_in = Weight("var", sys.n_in, prev_out.variable, kron=kron)
            else:
                w_in = Weight("const", sys.n_in, constant=np.kron(prev_out.constant, np.eye(kron)))
        after = steps[i + 1 : systems[pos + 1]] if pos + 1 < len(systems) else steps[i + 1 :]
        diagonal = any(isinstance(s, lowered.Pool) and s.diagonal for s in after)
        pooled = any(isinstance(s, lowered.Pool) and s.op != "merged" for s in after)
        ny = sys.n_out
        if pos + 1 < len(systems):
            inverted = pos == invert_at
            # a lifted max pool: X (x) I_tied on the system's outputs, X on the next system's inputs
            tied = max((s.tied for s in after if isinstance(s, lowered.Pool)), default=1)
            basis = (bases or {}).get(sys.name) if weights == "subspace" and not inverted else None
            if diagonal or weights == "diagonal":
                structure = "diagonal"
            elif basis is not None and 2 * basis.shape[1] <= ny // tied:  # (else diag + V S V' is redundant)
                structure = "subspace"
            else:
                structure, basis = "symmetric", None
            X = new_var(f"{'Y' if inverted else 'X'}[{sys.name}]", "Xinv" if inverted else "X", sys.name,
                        ny // tied, structure, basis)
            w_out = Weight("var", ny, X, kron=tied)
            if diagonal or weights == "diagonal":
                nonneg.append(X)
            consumer: lowered.System = steps[systems[pos + 1]]
            implied = inverted or (consumer.slope is not None and consumer.slope[0] * consumer.slope[1] <= 0)
            if pooled and not diagonal and not implied:  # (Y > 0, hence X > 0, is forced by its Schur LMI)
                psd_weights.append(X)
        elif eliminated is not None:
            w_out = Weight("const", ny, constant=eliminated)
        else:
            w_out = Weight("const", ny, constant=np.eye(ny))
        needs_P_psd = sys.ss.nx > 0 and ((sys.slope is not None and sys.slope[0] * sys.slope[1] > 0)
                                         or any(a.alpha * a.beta > 0 for a in sys.internal))
        gridded = (frequencies is not None and in_frequency_form(sys.ss.nx, sys.ss.nu, sys.ss.ny, sys.slope)
                   and not any(a.alpha * a.beta > 0 for a in sys.internal))
        if (frequencies is not None and not gridded and sys.ss.nx >= sys.ss.nu + sys.ss.ny > 0 and sys.ss.nx
                and needs_P_psd):
            notes.append(exact_lmi_note(sys))
        P = None
        if sys.ss.nx and not gridded:
            P = new_var(f"P[{sys.name}]", "P", sys.name, sys.ss.nx, "symmetric")
        lam = None
        if sys.slope is not None and head_factor is not None and pos == len(systems) - 1:
            lam = new_var(f"M[{sys.name}]", "lambdainv", sys.name, ny, "vector")  # M = Lambda^-1
            nonneg.append(lam)
        elif sys.slope is not None:
            lam = new_var(f"lambda[{sys.name}]", "lambda", sys.name, ny, "vector")
            nonneg.append(lam)
        inner = []
        for act in sys.internal:  # a residual block's internal activations: one multiplier vector each
            inner.append(new_var(f"lambda[{sys.name}/{act.name}]", "lambda", sys.name, act.n, "vector"))
            nonneg.append(inner[-1])
        links.append(Link(sys, None, P, lam, w_in, w_out, needs_P_psd, tuple(inner)))  # lmi filled below
        prev_out = w_out

    if weights == "subspace":  # the weights that took the subspace form (not: a redundant basis, a pool)
        weight_vars = [v for v in variables if v.role in ("X", "Xinv")]
        sub = [f"after {v.system} ({v.n} ch, rank {v.rank})" for v in weight_vars
               if v.structure == "subspace"]
        full = [f"after {v.system} ({v.n} ch)" for v in weight_vars if v.structure != "subspace"]
        notes.append("weights X = diag + V S V' on a subspace: " + (", ".join(sub) or "none")
                     + ("; full or diagonal X: " + ", ".join(full) if full else ""))
    n_ref = [count[0]]  # the solver's variables; the storage P of gridded systems come after them
    storage: list[Variable] = []
    for j, link in enumerate(links):
        if frequencies is not None and link.system.ss.nx and link.P is None:
            sys = link.system
            P = new_var(f"P[{sys.name}]", "P", sys.name, sys.ss.nx, "symmetric")
            storage.append(P)
            links[j] = Link(sys, None, P, link.lam, link.w_in, link.w_out, False, link.inner)
    omegas = frequency_grid(frequencies) if frequencies is not None else np.zeros(0)
    if storage:
        notes.append(f"{', '.join(v.system for v in storage)}: LMI imposed in the frequency domain on "
                     f"{frequencies} frequencies (KYP lemma); P from a Riccati equation afterwards, then "
                     "certified")
    elif frequencies is not None:
        notes.append(NO_FREQUENCY_FORM.format(k=frequencies))
    final_links = []
    used_grids: dict[str, np.ndarray] = {}
    spacings: dict[str, int] = {}
    for link in links:
        sys = link.system
        nx, nu, ny = sys.ss.nx, sys.ss.nu, sys.n_out
        inverse_out = link.w_out.kind == "var" and link.w_out.variable.role == "Xinv"
        if link.lam is not None and link.lam.role == "lambdainv":  # the last activation layer in M, Y
            blocks = [("outputs", ny), ("F rows", head_factor.shape[0])]
            b = LmiBuilder(ny + head_factor.shape[0], n_ref)
            final_inverse_activation_terms(b, sys, link.w_in, link.lam, head_factor)
        elif link.w_in.kind == "var" and link.w_in.variable.role == "Xinv":  # I - W (Y (x) I) W' >= 0
            b = LmiBuilder(ny, n_ref)
            final_inverse_terms(b, sys, link.w_in)
            blocks = [("outputs", ny)]
        else:
            outputs = [("output", ny)] if sys.slope is not None else []
            extra = [("Y = X_out^-1", ny)] if inverse_out else []
            inputs = [("input", nu)] if not sys.internal else [("input", sys.n_in)] + [
                (f"w[{a.name}]", a.n) for a in sys.internal]
            blocks = [("state", nx)] + inputs + outputs + extra
            b = LmiBuilder(sum(size for _, size in blocks), n_ref)
            if link.P not in storage:
                system_lmi_terms(b, sys, link.P, link.lam, link.w_in, link.w_out, inverse_out,
                                 inner=link.inner)
            else:  # the frequency-domain LMIs; the link keeps the empty ``b`` as a stand-in of its LMI
                taps = fir_taps(sys.ss)
                g = spacings[sys.name] = tap_spacing(taps)  # a dilated system: its grid on [0, pi/g]
                grid = np.asarray((grids or {}).get(sys.name, omegas / g), dtype=float)
                used_grids[sys.name] = grid
                H = frequency_response(sys.ss, grid, taps)
                for w, Hw in zip(grid, H):
                    limits.checkpoint("building the SDP")
                    real = w == 0 or abs(g * w - np.pi) <= 1e-12 * np.pi  # H real there (up to rounding)
                    r = 1 if real else 2
                    fblocks = [(lbl, r * s) for lbl, s in blocks[1:]]  # (input, output, Y rows) x r
                    fb = LmiBuilder(sum(size for _, size in fblocks), n_ref)
                    frequency_lmi_terms(fb, sys, Hw.real if real else Hw, link.lam, link.w_in, link.w_out,
                                        inverse_out, link.inner)
                    name = f"LMI[{sys.name}](w={w:.4g})"
                    lmis.append(fb.build(name, sys.name, [x for x in fblocks if x[1]]))
        lmi = b.build(f"LMI[{sys.name}]", sys.name, [(lbl, s) for lbl, s in blocks if s])
        if link.P not in storage:
            lmis.append(lmi)
        final_links.append(Link(sys, lmi, link.P, link.lam, link.w_in, link.w_out, link.needs_P_psd,
                                link.inner))
        if link.needs_P_psd:
            bp = LmiBuilder(nx, n_ref)
            bp.congruence(link.P, selector(nx, 0, nx), 1.0)
            lmis.append(bp.build(f"P[{sys.name}]>=0", sys.name, [("state", nx)]))
    for X in psd_weights:
        bx = LmiBuilder(X.n, n_ref)
        bx.congruence(X, selector(X.n, 0, X.n), 1.0)
        lmis.append(bx.build(f"{X.name}>=0", X.system, [("weight", X.n)]))
    periodic = [f"{name} on [0, pi/{g}]" for name, g in spacings.items() if g > 1]
    if periodic:
        notes.append("frequencies of dilated systems on their response's period (every tap a multiple of d "
                     "samples apart: H repeats every 2 pi/d): " + ", ".join(periodic))
    return Sdp(
        net,
        tuple(variables),
        tuple(lmis),
        tuple(nonneg),
        rho,
        net.factor,
        tuple(final_links),
        tuple(psd_weights),
        tuple(notes),
        tuple(storage),
        used_grids,
        spacings,
        frequencies if storage else None,
    )

"""sdp: LMIs are symmetric, have the expected sizes, and the sparse assembly equals the closed-form blocks."""


import numpy as np
import pytest

from lipdsl.certify.recheck import Point
from lipdsl.model.lower import lower
from lipdsl.sdp.build import build_sdp
from nets import Builder, ecg, mixed_net, random_head, wide_gap_net

def test_ecg_lmi_sizes_and_variables():
    sdp = build_sdp(lower(ecg()), inverse=False)
    # conv1: 2 states + 1 input + 2 outputs; conv2: 4 + 2 + 3; dense: 96 (3 x 32 flattened) + 60
    assert [lmi.size for lmi in sdp.lmis] == [5, 9, 156]
    # rho, P1 (3), lambda1 (2), X1 (3), P2 (10), lambda2 (3), X2 (6), lambda3 (60); X3 = W4'W4 eliminated
    assert sdp.n == 1 + 3 + 2 + 3 + 10 + 3 + 6 + 60
    assert any("substituted" in note for note in sdp.notes)


def test_ecg_head_is_solved_in_inverse_multipliers():
    """flatten -> dense(60)+ReLU -> dense(5): the 156-row LMI becomes 60 + 5 rows in Y = X2^-1, M = L^-1;
    conv2's LMI gets 3 Schur rows; the variables are the same in number."""
    sdp = build_sdp(lower(ecg()))
    assert [lmi.size for lmi in sdp.lmis] == [5, 9 + 3, 60 + 5]
    assert sdp.n == 1 + 3 + 2 + 3 + 10 + 3 + 6 + 60
    roles = [v.role for v in sdp.variables]
    assert roles.count("lambdainv") == 1 and roles.count("Xinv") == 1 and roles[-1] == "lambdainv"


@pytest.mark.parametrize("build", [ecg, lambda: mixed_net(0), lambda: mixed_net(1)])
def test_assembly_equals_closed_form(build):
    sdp = build_sdp(lower(build()), inverse=False)  # (the inverse forms are other matrices: tested below)
    rng = np.random.default_rng(0)
    x = rng.normal(size=sdp.n)
    point = Point(sdp, x)
    for v in sdp.nonneg:  # Point clips these at zero: compare at a point where that is a no-op
        x[v.slice] = np.abs(x[v.slice])
    point = Point(sdp, x)
    for link in sdp.links:
        F = link.lmi.value(x)
        raw = link.lmi.F0 + (link.lmi.G @ x).reshape(link.lmi.size, link.lmi.size, order="F")
        assert np.allclose(raw, raw.T), "every F_k must be symmetric"
        assert np.allclose(F, point.matrix(link), atol=1e-10)


def test_factored_form_reproduces_G():
    sdp = build_sdp(lower(mixed_net(2)))
    for lmi in sdp.lmis:
        f = lmi.factored
        m = lmi.size
        for k in range(sdp.n):
            sel = f.col == k
            U, V = f.U[:, sel].toarray(), f.V[:, sel].toarray()
            Fk = (U * f.coef[sel]) @ V.T
            Fk = Fk + Fk.T
            assert np.allclose(Fk.reshape(-1, order="F"), lmi.G[:, k].toarray().ravel())
        assert m == lmi.F0.shape[0]


def test_max_pool_makes_weight_diagonal_and_mixed_slopes_add_psd_constraints():
    sdp = build_sdp(lower(mixed_net(3)))
    X1 = [v for v in sdp.variables if v.role == "X"][0]
    assert X1.structure == "diagonal" and X1 in sdp.nonneg
    # sigmoid has alpha*beta = 0, so P >= 0 is implied; leaky ReLU (0.1, 1) needs P >= 0 explicitly
    assert [link.needs_P_psd for link in sdp.links] == [True, False, False]
    assert any(lmi.name.startswith("P[") for lmi in sdp.lmis)


def flatten_head_net(seed, pool="avg"):
    rng = np.random.default_rng(seed)
    b = Builder(1, 16).conv(rng.normal(size=(3, 1, 3)), padding="causal").act("relu").pool(pool, 2)
    return b.flatten().dense(rng.normal(size=(2, b.shape.size))).build()


def activation_head_net(seed, pool="avg", final=True, slope=None):
    """conv -> ReLU -> pool -> flatten -> dense+activation [-> dense]: the head solved in Y and M."""
    rng = np.random.default_rng(seed)
    b = Builder(1, 24).conv(rng.normal(size=(3, 1, 3)), padding="causal").act("relu").pool(pool, 2)
    b = b.conv(rng.normal(size=(2, 3, 2)), padding="same").act("relu").flatten()
    b = b.dense(rng.normal(size=(6, b.shape.size)))
    b = b.act("relu") if slope is None else b.act("custom", slope=slope)
    return (b.dense(rng.normal(size=(2, 6))) if final else b).build()


@pytest.mark.solver
@pytest.mark.parametrize("seed, pool, final, slope", [(0, "avg", True, None), (1, "max", True, None),
                                                      (2, "avg", False, None), (3, "avg", True, (0.0, 2.5))])
def test_inverse_multiplier_form_of_the_activation_head_is_exact(seed, pool, final, slope):
    """[[X (x) I, -bW'L], [-bLW, 2L - F'F]] >= 0 solved as [[2M - b^2 W (Y (x) I) W', M F'], [F M, I]] >= 0:
    smaller, and the same certified bound as the direct form; certify maps Y, M back to X, L."""
    from lipdsl.certify.recheck import certify
    from lipdsl.solvers.solve import solve

    low = lower(activation_head_net(seed, pool, final, slope))
    small, big = build_sdp(low), build_sdp(low, inverse=False)
    assert any(v.role == "lambdainv" for v in small.variables)
    assert small.lmis[-1].size < big.lmis[-1].size
    bounds = [certify(s, solve(s)) for s in (small, big)]
    assert all(c.verified for c in bounds)
    assert abs(bounds[0].lipschitz - bounds[1].lipschitz) <= 1e-6 * bounds[1].lipschitz


def test_inverse_multiplier_form_needs_a_zero_lower_slope():
    """tanh-like [0, 1] qualifies; leaky ReLU (alpha > 0) keeps the direct form (its W'LW term)."""
    low = lower(activation_head_net(4, slope=(0.1, 1.0)))
    assert not any(v.role == "lambdainv" for v in build_sdp(low).variables)


@pytest.mark.solver
@pytest.mark.parametrize("seed, pool", [(0, "avg"), (1, "max"), (2, "avg")])
def test_inverse_weight_form_is_exact_and_small(seed, pool):
    """flatten -> linear dense solved in Y = X^-1: a 2-row LMI instead of 24, the same certified bound."""
    from lipdsl.certify.recheck import certify
    from lipdsl.solvers.solve import solve

    net = flatten_head_net(seed, pool)
    low = lower(net)
    small, big = build_sdp(low), build_sdp(low, inverse=False)
    assert [lmi.size for lmi in small.lmis][-1] == 2 and 24 in [lmi.size for lmi in big.lmis]
    assert any(v.role == "Xinv" for v in small.variables)
    bounds = [certify(s, solve(s)) for s in (small, big)]
    assert all(c.verified for c in bounds)
    assert abs(bounds[0].lipschitz - bounds[1].lipschitz) <= 1e-6 * bounds[1].lipschitz


@pytest.mark.solver
@pytest.mark.parametrize("seed", [0, 1])
def test_linear_conv_feeding_a_flatten(seed):
    """conv -> ReLU -> conv (no activation) -> flatten -> dense: the linear layer's output weight is
    X (x) I_N, written as sum_t T_t' X T_t; the bound lies between LipSDP-Neuron and the H-inf product."""
    from lipdsl.pipeline import solve_network
    from lipdsl.baselines.unrolled import naive_hinf
    from lipdsl.baselines.lipsdp import lipsdp

    rng = np.random.default_rng(seed)
    b = Builder(1, 12).conv(rng.normal(size=(3, 1, 3)), padding="causal").act("relu")
    b = b.conv(rng.normal(size=(2, 3, 3)) / 2, padding="same").flatten()
    net = b.dense(rng.normal(size=(4, b.shape.size)) / 4).act("relu").dense(rng.normal(size=(2, 4))).build()
    # merge_linear=False: keep the linear conv's own LMI (by default it is folded into the dense)
    cert = solve_network(net, merge_linear=False).certificate
    folded = solve_network(net).certificate
    assert cert.verified and folded.verified
    assert lipsdp(net, "neuron").bound * (1 - 1e-6) <= cert.lipschitz <= naive_hinf(net) * (1 + 1e-9)
    assert folded.lipschitz <= cert.lipschitz * (1 + 1e-6)


def overlap_net(seed):
    """Overlapping average pools in every form: alone, after a linear conv (merged), before a flatten."""
    rng = np.random.default_rng(seed)
    return (Builder(2, 30).conv(rng.normal(size=(3, 2, 3)), padding="causal").act("relu")
            .pool("avg", 3, 2)
            .conv(rng.normal(size=(2, 3, 2)), padding="same").pool("avg", 4, 2).act("tanh")
            .pool("avg", 3, 2).flatten()
            .dense(rng.normal(size=(3, 4))).act("relu").dense(rng.normal(size=(2, 3)))
            .build())


@pytest.mark.parametrize("seed", [0, 1])
def test_overlapping_pool_systems_see_x_kron_identity(seed):
    """A system on blocks of S samples gets the previous output weight as X (x) I_S (channel-major), and
    its sparse assembly equals the closed-form LMI."""
    sdp = build_sdp(lower(overlap_net(seed)), inverse=False)
    blocked = [link for link in sdp.links if link.system.block_in > 1]
    assert [(link.system.kind, link.w_in.kron, link.w_in.n) for link in blocked] == [("pool", 2, 6),
                                                                                     ("conv", 2, 6)]
    assert blocked[0].w_in.variable is sdp.links[0].w_out.variable
    rng = np.random.default_rng(seed)
    x = rng.normal(size=sdp.n)
    for v in sdp.nonneg:
        x[v.slice] = np.abs(x[v.slice])
    point = Point(sdp, x)
    for link in sdp.links:
        assert np.allclose(link.lmi.value(x), point.matrix(link), atol=1e-10)


def random_overlap_cnn(rng):
    """Small CNNs with overlapping average pools (kernel 3-5, stride 1..k-1) after activations, after linear
    convs, before activations, a flatten or a global average pool; ReLU or tanh."""
    act = str(rng.choice(["relu", "tanh"]))
    b = Builder(int(rng.integers(1, 3)), int(rng.integers(12, 20)))
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(1, 4))
        padding = str(rng.choice(["valid", "causal", "same"]))
        stride = 1 if padding == "same" else int(rng.choice([1, 1, 2]))
        if b.shape.length - (k - 1) * (padding == "valid") < 4:
            continue
        W = rng.normal(size=(int(rng.integers(1, 4)), b.shape.channels, k))
        b.conv(W, stride=stride, padding=padding)
        linear = rng.random() < 0.3
        if not linear:
            b.act(act)
        kp = int(rng.integers(3, 6))
        if b.shape.length >= kp:
            b.pool("avg", kp, int(rng.integers(1, kp)))
            if linear or rng.random() < 0.3:
                b.act(act)
    return random_head(b, rng, act, p_gap=0.2, max_outputs=3)


def _bound(net, **options):
    from lipdsl.certify.recheck import certify
    from lipdsl.solvers.solve import solve

    sdp = build_sdp(lower(net, **options))
    cert = certify(sdp, solve(sdp))
    assert cert.verified
    return cert.lipschitz


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(16))
def test_fir_pooling_is_sandwiched_and_never_looser_than_the_factor(seed):
    """lower <= LipSDP-Neuron <= FIR-pooled bound <= factor-pooled bound (1e-6) <= H-inf product."""
    _assert_sandwiched(random_overlap_cnn(np.random.default_rng(300 + seed)), seed, pool_fir=False)


def _assert_sandwiched(net, seed, **looser):
    """lower <= LipSDP-Neuron <= the default bound <= the bound with ``looser`` options (1e-6) <= H-inf."""
    from lipdsl.baselines.unrolled import naive_hinf
    from lipdsl.baselines.lipsdp import lipsdp
    from lipdsl.baselines.empirical import lower_bound

    new, old = _bound(net), _bound(net, **looser)
    assert new <= old * (1 + 1e-6), (new, old)
    assert old <= naive_hinf(net) * (1 + 1e-7)
    neuron = lipsdp(net, "neuron").bound
    assert neuron <= new * (1 + 1e-6), (neuron, new)
    low = lower_bound(net, starts=4, steps=10, seed=seed, time_budget=2.0).value
    assert low <= neuron * (1 + 1e-7), (low, neuron)


def linear_merge_net(rng):
    """A small CNN with linear layers next to each other: conv -> conv (no activation), sometimes a pool in
    the run, an activation, then flatten -> dense -> dense (sometimes linear) -> dense."""
    c, n = int(rng.integers(1, 3)), int(rng.integers(8, 14))
    b = Builder(c, n)
    for _ in range(2):
        pad = str(rng.choice(["causal", "valid", "causal"]))
        k = int(rng.integers(2, 4))
        if b.shape.length < k + 1:
            break
        b.conv(rng.normal(size=(int(rng.integers(1, 4)), b.shape.channels, k)) / np.sqrt(k), padding=pad,
               stride=int(rng.choice([1, 1, 2])))
    if rng.random() < 0.3 and b.shape.length >= 4:
        b.pool("avg", 2)
    b.act(str(rng.choice(["relu", "tanh"])))
    b.flatten()
    h = int(rng.integers(2, 6))
    b.dense(rng.normal(size=(h, b.shape.channels)) / np.sqrt(b.shape.channels))
    if rng.random() < 0.5:
        b.act("relu")
    b.dense(rng.normal(size=(3, h)) / np.sqrt(h)).act("relu")
    return b.dense(rng.normal(size=(int(rng.integers(1, 3)), 3))).build()


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(12))
def test_merged_linear_layers_are_sandwiched_and_never_looser(seed):
    """lower <= LipSDP-Neuron <= merged <= separate linear LMIs (1e-6) <= H-inf product."""
    net = linear_merge_net(np.random.default_rng(700 + seed))
    assert len(lower(net).systems) <= len(lower(net, merge_linear=False).systems)
    _assert_sandwiched(net, seed, merge_linear=False)


@pytest.mark.parametrize("structure", ["symmetric", "diagonal", "rho"])
@pytest.mark.parametrize("kron", [1, 3])
def test_weight_blocks_are_x_kron_identity_at_their_offset(structure, kron):
    """``LmiBuilder.weight`` adds ``coef * (X (x) I_N)`` on the diagonal block at ``offset`` (channel-major
    rows ``ch * N + t``), for every variable structure, as the dense matrix built from the values."""
    import scipy.sparse as sp

    from lipdsl.sdp.problem import Variable, Weight, LmiBuilder

    rng = np.random.default_rng(0)
    c, offset, m, var_offset = 4, 5, 20, 7
    if structure == "rho":
        var, X = Variable("rho", "rho", None, 1, "scalar", var_offset), None
        values = rng.normal(size=1)
        X = values[0] * np.eye(c * kron)
        w = Weight("rho", c * kron, var)
    else:
        var = Variable("X", "weight", None, c, structure, var_offset)
        values = rng.normal(size=var.dim)
        if structure == "diagonal":
            X = np.diag(values)
        else:
            X = np.zeros((c, c))
            X[np.triu_indices(c)] = values
            X = X + np.triu(X, 1).T
        X = np.kron(X, np.eye(kron))
        w = Weight("var", c * kron, var, kron=kron)
    b = LmiBuilder(m, [var_offset + var.dim])
    b.weight(w, offset, -2.0)
    lmi = b.build("test", None, [])
    x = np.zeros(var_offset + var.dim)
    x[var_offset:] = values
    F = (sp.csc_matrix(lmi.G) @ x).reshape(m, m, order="F")
    expected = np.zeros((m, m))
    expected[offset : offset + c * kron, offset : offset + c * kron] = -2.0 * X
    assert np.allclose(F, expected, atol=1e-14)


def _orthonormal(rng, n, r):
    return np.linalg.qr(rng.normal(size=(n, r)))[0]


@pytest.mark.parametrize("kron", [1, 2])
def test_subspace_weight_is_diag_plus_v_s_vt_and_packs_back(kron):
    """A ``subspace`` variable is ``diag(d) + V S V'``: ``LmiBuilder.weight`` and ``congruence`` add exactly
    that (kron'ed) through ``G_rest`` plus its ``LowRank`` term; ``Lmi.G`` (formed on demand) agrees with
    ``Lmi.apply``; ``pack`` inverts ``value``, also after the storage recovery's raise ``a X + t I``."""
    import scipy.sparse as sp

    from lipdsl.sdp.problem import LmiBuilder, Variable, Weight

    rng = np.random.default_rng(1)
    c, r, offset, m, var_offset = 6, 2, 3, 20, 4
    var = Variable("X", "X", None, c, "subspace", var_offset, _orthonormal(rng, c, r))
    assert var.dim == c + r * (r + 1) // 2
    values = rng.normal(size=var.dim)
    x = np.zeros(var_offset + var.dim)
    x[var_offset:] = values
    X = var.value(x)
    d, S = values[:c], np.zeros((r, r))
    S[np.triu_indices(r)] = values[c:]
    S = S + np.triu(S, 1).T
    assert np.allclose(X, np.diag(d) + var.basis @ S @ var.basis.T)
    assert np.allclose(var.pack(X), values)
    assert np.allclose(var.value(np.concatenate([np.zeros(var_offset), var.pack(3 * X + 0.5 * np.eye(c))])),
                       3 * X + 0.5 * np.eye(c))

    b = LmiBuilder(m, [len(x)])
    b.weight(Weight("var", c * kron, var, kron=kron), offset, -2.0)
    T = sp.csr_matrix(rng.normal(size=(c, m)) * (rng.random((c, m)) < 0.3))
    b.congruence(var, T, 0.5)
    lmi = b.build("test", None, [])
    expected = np.zeros((m, m))
    expected[offset : offset + c * kron, offset : offset + c * kron] = -2.0 * np.kron(X, np.eye(kron))
    expected += 0.5 * T.T @ X @ T
    assert np.allclose(lmi.apply(x), expected)
    assert np.allclose((lmi.G @ x).reshape(m, m, order="F"), expected)
    assert lmi.lowrank and not lmi.G_rest[:, lmi.lowrank[0].columns].nnz  # (dense columns left out)
    Z = rng.normal(size=(m, m))
    Z = Z + Z.T
    for term in lmi.lowrank:  # <F_k, Z> from the adjoint = from the dense columns
        dense = np.asarray(term.U.shape[0] and (lmi.G[:, term.columns].T @ Z.reshape(-1, order="F"))).ravel()
        assert np.allclose(sum(t.adjoint(Z) for t in lmi.lowrank if t.variable is term.variable), dense)


def test_weight_bases_are_the_next_layers_loudest_input_directions():
    """``weight_bases``: orthonormal, of the asked rank, spanning the top eigenvectors of the next system's
    tap Gram; none where a rank-r part would not be smaller than a full X."""
    from lipdsl.sdp.build import weight_bases

    low = lower(wide_gap_net(3, channels=8))
    bases = weight_bases(low, 2)
    systems = low.systems
    assert bases, "an 8-channel conv layer followed by another gets a basis"
    for V in bases.values():
        assert V.shape[1] == 2 and np.allclose(V.T @ V, np.eye(2))
    assert not weight_bases(low, 5)  # 2 * 5 > 8 channels: full X instead
    for producer, consumer in zip(systems, systems[1:]):
        if producer.name not in bases:
            continue
        ss = consumer.ss  # the top eigenvector of sum_j T_j'T_j lies in the span of the basis
        taps = [ss.D] + [ss.C @ np.linalg.matrix_power(ss.A, j) @ ss.B for j in range(ss.nx)]
        gram = sum(t.T @ t for t in taps)
        top = np.linalg.eigh(gram)[1][:, -1]
        V = bases[producer.name]
        assert np.linalg.norm(V @ (V.T @ top)) == pytest.approx(1.0, abs=1e-9)



def test_weight_bases_skip_a_redundant_subspace():
    """A next layer that does not mix channels has a diagonal tap Gram: its eigenvectors are unit vectors
    ``e_i``, and ``diag(d) + V S V'`` would count ``X_ii`` twice (a singular Newton system: CVXOPT stopped
    unconverged on specs/haar_exact.lip with --weight-rank 1). Such a weight keeps a full X."""
    from lipdsl.sdp.build import _redundant, weight_bases

    b = Builder(1, 16)
    b.conv(np.ones((4, 1, 3)) / 3, padding="same")
    b.act("relu")
    weight = np.zeros((4, 4, 3))
    for i in range(4):
        weight[i, i] = [1.0, -2.0 * (i + 1), 0.5]  # channel i reads channel i only
    b.conv(weight, padding="same")
    b.act("relu")
    b.gap()
    b.dense(np.ones((1, 4)))
    assert not weight_bases(lower(b.build()), 1)
    rng = np.random.default_rng(0)
    assert not _redundant(np.linalg.qr(rng.normal(size=(6, 2)))[0])
    assert _redundant(np.eye(6)[:, :2])


def test_solve_with_a_weight_rank_on_a_net_that_does_not_mix_channels(specs):
    """End to end: specs/haar_exact.lip with ``weight_rank=1`` certifies its exact constant (it raised a
    TypeError building the 'stopped without converging' message before)."""
    from lipdsl.lang.load import load_network
    from lipdsl.pipeline import solve_network

    _, net = load_network(specs / "haar_exact.lip")
    cert = solve_network(net, weight_rank=1).certificate
    assert cert.verified and cert.lipschitz == pytest.approx(1.0, rel=1e-6)


def test_subspace_note_names_the_weights_that_took_it():
    """The SDP's notes say which weights are on a subspace and which stayed full (the form line only says
    what was asked)."""
    from lipdsl.sdp.build import weight_bases

    low = lower(wide_gap_net(3, channels=8))
    sdp = build_sdp(low, frequencies=5, weights="subspace", bases=weight_bases(low, 2))
    note = next(n for n in sdp.notes if n.startswith("weights X = diag + V S V' on a subspace"))
    assert note.count("rank 2") == 2 and "full" not in note
    sdp = build_sdp(low, frequencies=5, weights="subspace", bases={})
    note = next(n for n in sdp.notes if n.startswith("weights X = diag + V S V' on a subspace"))
    assert "subspace: none; full or diagonal X:" in note


def test_frequency_lmis_are_marked_hermitian_with_subspace_weights_too():
    """``Lmi.hermitian`` (the solvers work on such LMIs in complex arithmetic): the LMIs at the inner
    frequencies are real embeddings of Hermitian matrices, with full or subspace weights (whose ``V S V'``
    terms, one per parity, are tested together); at w = 0 and pi they are real LMIs of half the order, and
    an LMI with one entry off the embedding is not marked."""
    import dataclasses

    from lipdsl.sdp.build import weight_bases

    low = lower(wide_gap_net(3, channels=8))
    for bases in ({}, weight_bases(low, 2)):
        sdp = build_sdp(low, frequencies=5, weights="subspace", bases=bases)
        gridded = [lmi for lmi in sdp.lmis if "(w=" in lmi.name]
        assert any(lmi.lowrank for lmi in gridded) == bool(bases)
        for lmi in gridded:
            inner = not (lmi.name.endswith("(w=0)") or lmi.name.endswith("(w=3.142)"))
            assert lmi.hermitian == inner, lmi.name
        lmi = next(lmi for lmi in gridded if lmi.hermitian)
        F0 = lmi.F0.copy()
        F0[0, 3] += 1e-3
        F0[3, 0] += 1e-3
        assert not dataclasses.replace(lmi, F0=F0).hermitian
        if bases:  # a subspace term alone (one parity's rows) is not an embedding
            assert not dataclasses.replace(lmi, lowrank=lmi.lowrank[:1]).hermitian


def test_weight_bases_sum_the_gram_over_a_block_of_samples():
    """A conv with an overlapping average pool after it (one system) reads blocks of ``L = 2`` samples
    (input ``ch * L + r``) and its input weight is ``X (x) I_L``: the basis is the top eigenvectors of the
    channel Gram summed over the ``L`` samples of a block, ``G_ab = sum_j sum_r T_j[:, a L + r]'
    T_j[:, b L + r]`` (written out here as loops; the first ``n`` inputs alone, which it took before, are
    other directions)."""
    from lipdsl.model import lowered
    from lipdsl.sdp.build import fir_taps, weight_bases

    rng = np.random.default_rng(4)
    c = 8
    b = Builder(1, 32)
    b.conv(rng.normal(size=(c, 1, 3)), padding="causal").act("relu")
    b.conv(rng.normal(size=(c, c, 3)) * np.linspace(0.2, 2.0, c)[None, :, None], padding="causal")
    b.pool("avg", kernel=3, stride=2).act("relu")  # one system with the conv before it: blocks of 2 samples
    b.gap().dense(rng.normal(size=(2, c)))
    low = lower(b.build())
    systems = [s for s in low.steps if isinstance(s, lowered.System)]
    producer, consumer = systems[0], systems[1]
    L = consumer.block_in
    assert L == 2
    gram = np.zeros((c, c))
    for T in fir_taps(consumer.ss):
        for a in range(c):
            for bb in range(c):
                gram[a, bb] += sum(T[:, a * L + r] @ T[:, bb * L + r] for r in range(L))
    top = np.linalg.eigh(gram)[1][:, ::-1][:, :2]
    V = weight_bases(low, 2)[producer.name]
    assert np.allclose(np.abs(V.T @ top), np.eye(2), atol=1e-8)  # the same directions (up to sign)
    first = sum(T[:, :c].T @ T[:, :c] for T in fir_taps(consumer.ss))  # the first n inputs alone
    assert not np.allclose(np.abs(np.linalg.eigh(first)[1][:, ::-1][:, :2].T @ top), np.eye(2), atol=1e-3)
    sdp = build_sdp(low, frequencies=5, weights="subspace", bases=weight_bases(low, 2))
    assert any(lmi.lowrank for lmi in sdp.lmis)


@pytest.mark.parametrize("dilation,padding", [(1, "causal"), (2, "causal"), (4, "causal"), (3, "same")])
def test_a_dilated_conv_is_gridded_on_its_own_period(dilation, padding):
    """A conv with dilation d has taps at multiples of d only (``tap_spacing`` = d, 'same' padding too): its
    response repeats every 2 pi / d, so its K frequencies are ``pi j / ((K - 1) d)``; at the last one, pi / d,
    H is real (up to rounding) and its LMI is not doubled by the real embedding."""
    from lipdsl.sdp.build import fir_taps, frequency_grid, frequency_response, tap_spacing

    rng = np.random.default_rng(dilation)
    b = Builder(3, 32)
    b.conv(rng.normal(size=(3, 3, 3)), padding="causal").act("relu")
    b.conv(rng.normal(size=(3, 3, 3)), padding=padding, dilation=dilation).act("relu")
    b.gap()
    b.dense(rng.normal(size=(2, 3)))
    low = lower(b.build())
    sdp = build_sdp(low, frequencies=5)
    sys = low.systems[1]
    assert tap_spacing(fir_taps(sys.ss)) == dilation == sdp.spacings[sys.name]
    assert any(f"{sys.name} on [0, pi/{dilation}]" in note for note in sdp.notes) == (dilation > 1)
    assert np.allclose(sdp.grids[sys.name], frequency_grid(5) / dilation)
    w = np.linspace(0, np.pi, 7)
    H, shifted = frequency_response(sys.ss, w), frequency_response(sys.ss, w + 2 * np.pi / dilation)
    assert np.allclose(H, shifted, atol=1e-12)
    last = [lmi for lmi in sdp.lmis if lmi.name.startswith(f"LMI[{sys.name}](w=")][-1]
    assert last.size == sys.ss.nu + sys.n_out  # real there: one copy
    assert tap_spacing([np.ones((2, 2))]) == 1 and tap_spacing([np.ones(1), np.zeros(1), np.ones(1)]) == 2


def test_a_residual_tcn_blocks_spacing_is_its_dilation():
    """``specs/tcn.lip``: residual blocks of two causal convs with dilation d and a 1x1 (or identity)
    shortcut, every path's taps at multiples of d: each gridded block is on [0, pi / d] (dilations 2, 4; the
    first block, one input channel, keeps its exact LMI)."""
    import lipdsl
    from repo_paths import SPECS

    low = lower(lipdsl.load(SPECS / "tcn.lip").typed)
    sdp = build_sdp(low, frequencies=5)
    blocks = [s for s in low.systems if s.internal and s.name in sdp.grids]  # (the first keeps its P)
    assert [sdp.spacings[s.name] for s in blocks] == [2, 4]
    for s in blocks:
        assert sdp.grids[s.name][-1] == pytest.approx(np.pi / sdp.spacings[s.name])

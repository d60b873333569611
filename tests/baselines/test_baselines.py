"""Baselines against known optima (LipSDP's example nets), oracles (forward Jacobian) and each other."""
import math

import numpy as np
import pytest
import scipy.sparse as sp

from lipdsl.baselines.unrolled import hinf_norm, naive, naive_hinf, spectral_norm, unroll, unroll_graph

from lipdsl.baselines.lipsdp import lipsdp
from lipdsl.baselines.empirical import lower_bound
from lipdsl.errors import SolveError, UnsupportedError
from lipdsl.model.forward import forward, jacobian

from lipdsl.lang import activations, typed
from lipdsl.pipeline import solve_network

from nets import Builder, Spec, dense_net, ecg_network, lipsdp_net, random_cnn, random_residual

RANDOM_WEIGHTS_EXACT = 36.48222959637795


def need(net):
    if net is None:
        pytest.skip("shared reference cases (../shared/cases) not available")
    return net


def test_unroll_linear_net_equals_jacobian():
    """A net without activations unrolls to one matrix: the forward pass's Jacobian (independent oracle)."""
    rng = np.random.default_rng(0)
    for padding, stride, dilation in [("causal", 1, 1), ("same", 1, 2), (1, 2, 1), ("valid", 3, 2)]:
        net = (Builder(2, 13)
               .conv(rng.standard_normal((3, 2, 3)), padding=padding, stride=stride, dilation=dilation)
               .pool("avg", 3, 2).conv(rng.standard_normal((2, 3, 2)), padding="causal").flatten()
               .dense(rng.standard_normal((4, net_len(2, 13, padding, stride, dilation)))).build())
        steps = unroll(net)
        assert len(steps) == 1 and steps[0].slope is None
        J = jacobian(net, rng.standard_normal(26))
        np.testing.assert_allclose(steps[0].matrix.toarray(), J, atol=1e-12)


@pytest.mark.parametrize("padding, stride, dilation", [
    (5, 1, 1), (4, 3, 1), (0, 1, 4), ("causal", 2, 5), ("same", 1, 7), (9, 4, 6), (2, 20, 1), (30, 1, 1)])
def test_unrolled_conv_matrix_is_the_jacobian_where_taps_land_on_padding(padding, stride, dilation):
    """Paddings wider than the kernel, strides longer than the input and dilations whose taps mostly read
    padding: the tap-by-tap unrolled matrix is the forward pass's Jacobian."""
    rng = np.random.default_rng(3)
    net = Builder(2, 9).conv(rng.standard_normal((3, 2, 3)), padding=padding, stride=stride,
                             dilation=dilation).build()
    (step,) = unroll(net)
    J = jacobian(net, rng.standard_normal(18))
    np.testing.assert_array_equal(step.matrix.toarray(), J)


@pytest.mark.parametrize("stride, dilation",
                         [(10**19, 1), (10**30, 1), (1, 10**19), (1, 10**30), (3, 10**25)])
def test_huge_strides_and_dilations_unroll_exactly_without_overflow(stride, dilation):
    """A stride or dilation beyond int64 (the fuzzer's stride 10^19, dilation 10^30: an OverflowError in
    ``compare``) unrolls exactly: only the taps that land on the input are kept. Causal padding with a huge
    dilation leaves the last tap alone (a 1x1 conv); a huge stride keeps the first output sample."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((3, 2, 3))
    net = Builder(2, 8).conv(W, padding="causal" if dilation > 1 else "valid", stride=stride,
                             dilation=dilation).build()
    (step,) = unroll(net)
    if dilation > 1:  # y[:, t] = W[:, :, 2] x[:, t] at every t < 8 that the stride keeps
        ref = Builder(2, 8).conv(W[:, :, 2:], stride=stride).build()
    else:  # one output sample: y[:, 0] = sum_j W[:, :, j] x[:, j]
        ref = Builder(2, 8).conv(W).build()
    expected = unroll(ref)[0].matrix.toarray()
    if dilation == 1:
        expected = expected[::6]  # (the first of the 6 valid samples of each output channel)
    np.testing.assert_array_equal(step.matrix.toarray(), expected)
    assert naive(net) == pytest.approx(np.linalg.norm(expected, 2), rel=1e-12)


@pytest.mark.parametrize("op", ["avg", "max"])
def test_pools_with_a_stride_beyond_int64_unroll_and_evaluate(op):
    """One pooling window (stride 10^19 on 8 samples): the unrolled map, the forward pass and the naive
    bound, with no OverflowError."""
    net = Builder(2, 8).pool(op, 2, 10**19).build()
    u = np.arange(16.0)
    y = forward(net, u)
    assert y.shape == (2, 1)
    np.testing.assert_array_equal(y[:, 0], [0.5, 8.5] if op == "avg" else [1.0, 9.0])
    if op == "avg":
        (step,) = unroll(net)
        np.testing.assert_array_equal(step.matrix.toarray() @ u, y[:, 0])
    else:
        assert len(unroll_graph(net).hidden) == 1  # (its kernel - 1 ReLUs pick the window's samples)
    assert naive(net) == pytest.approx(math.sqrt(0.5) if op == "avg" else 1.0)


def net_len(c, n, padding, stride, dilation):
    b = Builder(c, n).conv(np.ones((3, c, 3)), padding=padding, stride=stride, dilation=dilation)
    b.pool("avg", 3, 2)
    return 2 * b.conv(np.ones((2, 3, 2)), padding="causal").shape.length


def test_unroll_steps_and_maxpool_marker():
    rng = np.random.default_rng(1)
    net = (Builder(1, 10).conv(rng.standard_normal((2, 1, 3)), padding="same").act("relu").pool("max", 2)
           .act("tanh").gap().dense(rng.standard_normal((3, 2))).build())
    steps = unroll(net)
    assert [s.maxpool for s in steps] == [None, (2, 2), None, None]
    assert steps[0].shape == (20, 10) and steps[0].slope == (0.0, 1.0)
    assert steps[2].shape == (10, 10) and abs(steps[2].matrix - sp.identity(10)).sum() == 0  # act after pool
    assert steps[3].shape == (3, 10) and steps[3].slope is None


def test_any_length_needs_length():
    net = Builder(1, None).conv(np.ones((2, 1, 3)), padding="causal").act("relu").gap().build()
    with pytest.raises(UnsupportedError, match="takes inputs of any length") as err:
        unroll(net)
    assert "--length" in err.value.hint
    with pytest.raises(UnsupportedError, match=r"global average pool 'gap3' scales by 1/sqrt\(N\)") as err:
        naive_hinf(net)
    assert "--length" in err.value.hint
    assert unroll(net, length=8)[0].shape == (16, 8)
    assert naive_hinf(net, length=16) == pytest.approx(hinf_norm(np.ones((2, 1, 3))) / 4)


def test_hinf_norm_is_a_tight_upper_bound():
    rng = np.random.default_rng(2)
    w = np.linspace(0, np.pi, 100001)
    # (6 x 5 x 9: most intervals keep the one-SVD bound)
    for shape in [(1, 1, 4), (3, 2, 5), (4, 4, 2), (2, 3, 7), (6, 5, 9)]:
        W = rng.standard_normal(shape)
        G = np.einsum("mj,jab->mab", np.exp(-1j * np.outer(w, np.arange(shape[2]))), np.moveaxis(W, 2, 0))
        grid = np.linalg.svd(G, compute_uv=False)[:, 0].max()
        h = hinf_norm(W)
        assert grid <= h <= grid * (1 + 1e-7)
        # dilation and delays do not change the H-infinity norm
        Wd = np.zeros(shape[:2] + (2 * shape[2] + 1,))
        Wd[:, :, 1::2] = W
        assert hinf_norm(Wd) == pytest.approx(h, rel=1e-8)
    W = np.zeros((2, 2, 3))
    W[:, :, 2] = [[3.0, 0.0], [0.0, 1.0]]  # a pure delay
    assert hinf_norm(W) == 3.0


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e-310, 1e200, 1e300])
def test_norms_of_tiny_and_huge_weights_scale_exactly(scale):
    """Issue 17 (fuzzed soundness corners): taps of 1e-200 gave an H-infinity norm of 1.4e-210, and of 1e-160
    one of 1.99999e-160 for a true 2e-160 (squares underflowing); 1e200 gave inf. Every norm is
    ``scale x`` the norm of the unscaled weights, and never below it."""
    rng = np.random.default_rng(7)
    for shape in [(1, 1, 2), (2, 3, 4), (1, 2, 5), (3, 1, 3)]:
        W = rng.standard_normal(shape)
        exact = hinf_norm(W) * scale
        got = hinf_norm(W * scale)
        assert got >= exact * (1 - 1e-12)
        assert got == pytest.approx(exact, rel=1e-9 if scale > 1e-300 else 1e-6)
        M = W[:, :, 0]
        got = spectral_norm(M * scale)
        assert got >= spectral_norm(M) * scale * (1 - 1e-12)
        assert got == pytest.approx(spectral_norm(M) * scale, rel=1e-6)
    assert hinf_norm(np.array([[[1e-200, 1e-200]]])) >= 2e-200


def test_naive_products_of_tiny_weights_stay_above_the_jacobian():
    """``--method naive-hinf`` printed 2.03e-210 for a net whose Jacobian has norm 2.4e-200."""
    net = Builder(1, 4).conv(np.full((1, 1, 2), 1e-200), padding="causal").act("relu") \
        .flatten().dense(np.array([[1e-200, 1e-300, 1.0, 1.0]])).build()
    J = max(np.linalg.norm(jacobian(net, u), 2) for u in np.random.default_rng(0).standard_normal((20, 1, 4)))
    assert J > 1e-200
    assert naive_hinf(net) >= J and naive(net) >= J


def _scaled_net(scale: float, extra: float | None = None):
    b = Builder(1, 2).conv(np.array([[[2.041]], [[-2.556]], [[0.418]]]), padding="causal") \
        .act("leaky_relu", 0.1).pool("avg", 2).flatten().dense(np.array([[1.0, 0.5, -0.3]]) * scale)
    if extra is not None:
        b = b.dense(np.array([[extra]]))
    return b.build()


@pytest.mark.parametrize("scale", [1e-320, 1e-200, 1e300])
def test_lipsdp_of_tiny_and_huge_weights(scale):
    """Issue 17 (fuzzed soundness corners): an output layer of 1e-320 made LipSDP divide by a subnormal norm
    (inf entries, then a LinAlgError traceback), one of 1e300 overflowed ``bound ** 2`` (OverflowError)."""
    ref = lipsdp(_scaled_net(1.0)).bound
    got = lipsdp(_scaled_net(scale)).bound
    assert got >= ref * scale * (1 - 1e-9) or scale < 1e-300
    assert got == pytest.approx(ref * scale, rel=1e-6 if scale > 1e-300 else 1e-2)


def test_products_that_overflow_are_refused_not_printed_as_inf():
    """Two layers of 1e300: the merged map overflows. naive gave a ValueError traceback, LipSDP too, and
    naive-hinf printed 'inf (exact norm product)' with exit 0; now each fails with a message (exit 3)."""
    from lipdsl.errors import CertificateError
    from lipdsl.methods import run_method

    net = _scaled_net(1e300, 1e300)
    for method in ("naive", "naive-hinf", "lipsdp-neuron"):
        r = run_method(net, method)
        assert r.bound is None and "overflows float64" in r.note, (method, r)
    with pytest.raises(CertificateError):
        lipsdp(net)


def test_spectral_norm_dense_and_sparse():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 7))
    ref = np.linalg.svd(A, compute_uv=False)[0]
    assert spectral_norm(A) == pytest.approx(ref, rel=1e-13)
    assert spectral_norm(sp.csr_matrix(A.T)) == pytest.approx(ref, rel=1e-13)


def test_maxpool_and_pool_factors():
    net = Builder(1, 9).pool("max", 3, 2).flatten().build()
    assert naive(net) == pytest.approx(math.sqrt(2))
    assert naive_hinf(net) == pytest.approx(math.sqrt(2))
    net = Builder(1, 9).pool("avg", 3, 2).flatten().build()
    assert naive(net) <= naive_hinf(net) == pytest.approx(math.sqrt(2 / 3))
    net = Builder(2, 8).gap().build()
    assert naive(net) == pytest.approx(naive_hinf(net)) == pytest.approx(1 / math.sqrt(8))


def test_lipsdp_refuses_maxpool():
    net = Builder(1, 8).conv(np.ones((2, 1, 3)), padding="same").act("relu").pool("max", 2).flatten() \
        .dense(np.ones((1, 8))).build()
    with pytest.raises(UnsupportedError, match="max pool"):
        lipsdp(net)


@pytest.mark.solver
def test_single_dense_layer_all_equal():
    W = np.random.default_rng(4).standard_normal((3, 5))
    net = dense_net([W])
    ref = np.linalg.norm(W, 2)
    for value in [naive(net), naive_hinf(net), lipsdp(net).bound, lipsdp(net, "layer").bound,
                  lower_bound(net, starts=2, steps=3).value]:
        assert value == pytest.approx(ref, rel=1e-12)


@pytest.mark.solver
def test_random_weights_reference():
    net = need(lipsdp_net("random_weights"))
    neuron, layer = lipsdp(net, "neuron"), lipsdp(net, "layer")
    assert neuron.status == "verified" and neuron.max_eig <= 0 and neuron.claimed_status == "optimal"
    assert RANDOM_WEIGHTS_EXACT <= neuron.bound <= RANDOM_WEIGHTS_EXACT * (1 + 1e-5)
    assert layer.bound == pytest.approx(39.839, rel=1e-4)
    assert naive(net) == pytest.approx(43.3056, rel=1e-5)
    assert naive_hinf(net) == pytest.approx(43.3056, rel=1e-5)


@pytest.mark.solver
def test_mnist_reference():
    net = need(lipsdp_net("mnist_weights"))
    assert naive(net) == pytest.approx(31.5035, rel=1e-5)
    neuron = lipsdp(net, "neuron")  # 100x100 after the exact input reduction (834x834 without)
    assert neuron.lmi_size == 100
    assert neuron.bound == pytest.approx(24.3663, rel=1e-4)
    assert lipsdp(net, "layer").bound == pytest.approx(26.2560, rel=1e-4)


@pytest.mark.slow
@pytest.mark.solver
def test_mnist_neuron_unreduced():
    """The full 834x834 LMI (LipSDP's own form) gives the same optimum as the reduced one."""
    net = need(lipsdp_net("mnist_weights"))
    assert lipsdp(net, "neuron", reduce_input=False).bound == pytest.approx(24.3663, rel=1e-4)


@pytest.mark.solver
def test_general_slopes_exact_on_positive_weights():
    """Leaky ReLU / ELU with non-negative weights: the all-active region is reachable, L = ||W3 W2 W1||."""
    rng = np.random.default_rng(5)
    W = [np.abs(rng.standard_normal(s)) for s in [(6, 3), (5, 6), (2, 5)]]
    exact = np.linalg.norm(W[2] @ W[1] @ W[0], 2)
    net = dense_net(W, activation="leaky_relu")
    bound = lipsdp(net).bound
    assert exact <= bound <= exact * (1 + 1e-6)
    assert lower_bound(net, starts=4, steps=5).value == pytest.approx(exact, rel=1e-9)
    b = Builder(3, flat=True).dense(W[0]).act("sigmoid").dense(W[1]).act("elu", 0.5).dense(W[2]).build()
    lo, ne = lower_bound(b, starts=4, steps=10).value, lipsdp(b).bound
    la, nv = lipsdp(b, "layer").bound, naive(b)
    assert lo <= ne <= la * (1 + 1e-7) and la <= nv * (1 + 1e-7)


@pytest.mark.solver
def test_ordering_on_random_cnns():
    """lower <= LipSDP-Neuron <= LipSDP-Layer <= naive <= naive-hinf on 20 random small CNNs."""
    rng = np.random.default_rng(2024)
    for i in range(20):
        net = random_cnn(rng)
        lo = lower_bound(net, starts=4, steps=15, seed=i).value
        ne = lipsdp(net, "neuron")
        la = lipsdp(net, "layer")
        nv, nh = naive(net), naive_hinf(net)
        assert ne.max_eig <= 0 and la.max_eig <= 0
        assert lo <= ne.bound, i
        assert ne.bound <= la.bound * (1 + 1e-7), i
        assert la.bound <= nv * (1 + 1e-7), i
        assert nv <= nh * (1 + 1e-9), i


def test_ecg_naive():
    net = need(ecg_network(biases=False))
    nv, nh = naive(net), naive_hinf(net)
    assert nv <= nh * (1 + 1e-9)
    assert nh < 1.01 * nv  # N = 128 is long: the Toeplitz norms are close to the H-infinity norms


@pytest.mark.solver
def test_structured_path_equals_picos_on_random_cnns():
    """The default path (lipdsl's CVXOPT driver, Gram KKT, chordal split if forced) gives PICOS's optimum."""
    rng = np.random.default_rng(77)
    for i in range(4):
        net = random_cnn(rng, activation="relu")
        for mode in ("neuron", "layer"):
            ref = lipsdp(net, mode, solver="picos-cvxopt")
            for chordal in (False, True):
                fast = lipsdp(net, mode, chordal=chordal)
                assert fast.status == "verified" and fast.max_eig <= 0, (i, mode, chordal)
                assert fast.bound == pytest.approx(ref.bound, rel=1e-6), (i, mode, chordal)


@pytest.mark.solver
def test_chordal_split_of_a_fully_conv_net():
    """A fully convolutional net splits into several clique LMIs; the certified bound is the unsplit one's."""
    rng = np.random.default_rng(3)
    b = Builder(1, 24)
    for c_in, c_out in [(1, 3), (3, 4)]:
        b.conv(rng.standard_normal((c_out, c_in, 3)), padding="causal").act("relu")
    net = b.conv(rng.standard_normal((2, 4, 3)), padding="causal").build()
    split, whole = lipsdp(net, chordal=True), lipsdp(net, chordal=False)
    assert len(split.blocks) >= 2 and max(split.blocks) < split.lmi_size and whole.blocks == (whole.lmi_size,)
    assert split.bound == pytest.approx(whole.bound, rel=1e-6)


def test_chordal_split_is_exact_algebra():
    """sum_k P_k' A_k(x) P_k = A(x) for any x (the separators' Z cancel), and every clique is in the chain."""
    from lipdsl.sdp import chordal
    from lipdsl.baselines.lipsdp import _lipsdp_data, _lipsdp_terms

    rng = np.random.default_rng(5)
    b = Builder(2, 20).conv(rng.standard_normal((3, 2, 3)), padding="causal").act("relu")
    net = b.conv(rng.standard_normal((2, 3, 2)), padding="causal").act("relu").flatten() \
        .dense(rng.standard_normal((3, 40))).build()
    mats, slopes, out, _ = _lipsdp_data(net, None)
    N, F0, terms, n_vars, lifted = _lipsdp_terms(mats, slopes, out, "neuron")
    assert lifted  # 3 x 40 output map: lifted into 3 rows
    A = chordal.pattern(N, F0, terms)
    chain = chordal.chain_cliques(A, n_vars, widths=[20])
    chain, blocks, n_total = chordal.decompose(N, F0, terms, n_vars, chain)
    assert len(blocks) >= 2 and n_total == n_vars + chain.overlap_variables()
    x = rng.standard_normal(n_total)

    def value(F0, terms, size):
        M = F0.copy()
        for col, ai, av, bi, bv, c in terms:
            u, v = np.zeros(size), np.zeros(size)
            np.add.at(u, ai, av)
            np.add.at(v, bi, bv)
            M += x[col] * c * (np.outer(u, v) + np.outer(v, u))
        return M

    total = np.zeros((N, N))
    for rows, F0k, tk in blocks:
        total[np.ix_(rows, rows)] += value(F0k, tk, len(rows))
    np.testing.assert_allclose(total, value(F0, terms, N), atol=1e-12)


@pytest.mark.solver
def test_lipsdp_goes_through_the_one_solver_driver():
    """Every backend of ``solve.solve`` gives LipSDP's optimum (PICOS by name, CVXOPT's generic KKT)."""
    net = random_cnn(np.random.default_rng(77), activation="relu")
    ref = lipsdp(net, "neuron").bound
    for solver in ("cvxopt", "cvxopt-generic", "picos-cvxopt"):
        assert lipsdp(net, "neuron", solver=solver).bound == pytest.approx(ref, rel=1e-6), solver
    with pytest.raises(SolveError, match="not available for LipSDP"):
        lipsdp(net, "neuron", solver="sdpa")


# --------------------------------------------------------------------------- residual nets (unrolled graph)
def _bias_free_residual(rng, tmp_path, *, act="tanh", linear=False, head="gap"):
    """A residual net without biases or batch norm shifts: a stem conv (+ activation), a block with an
    identity shortcut, a block with a 1x1 conv shortcut (channels change), then a head; no activations
    at all when ``linear``."""
    s = Spec(2, 9)
    s.conv(rng, 2, 3, 3, padding="causal")
    if not linear:
        s.lines.append(act)
    for b, (c_in, c_out, pad) in enumerate([(3, 3, "same"), (3, 4, "causal")]):
        s.lines.append(f"residual blk{b}:")
        s.conv(rng, c_in, c_out, 3, padding=pad, indent="  ")
        if not linear:
            s.lines.append(f"  {act}")
        s.conv(rng, c_out, c_out, 2, padding="causal", dilation=2, indent="  ")
        if c_out != c_in:
            s.lines.append("shortcut")
            s.conv(rng, c_in, c_out, 1, padding=0, indent="  ")
        s.lines.append("end")
        if not linear:
            s.lines.append(act)
    if head == "gap":
        s.lines += ["global_avgpool", f"dense 4 -> 2, weight {s.key(rng.normal(size=(2, 4)))}"]
    else:
        s.lines += ["flatten", f"dense 36 -> 2, weight {s.key(rng.normal(size=(2, 36)) / 6)}"]
    return s.load(tmp_path)


def _graph_forward(net, g, x):
    """The network evaluated through its unrolled graph: ``w_k = phi_k(M_k z)``, ``y = M_out z``."""
    acts = {L.name: L for L in typed.flat_layers(net.layers) if isinstance(L, typed.Activation)}
    z = x.ravel()
    for U in g.hidden:
        A = acts[U.name]
        phi, _ = activations.functions(A.function, A.parameter)
        z = np.concatenate([z, phi(U.matrix @ z)])
    return g.out @ z


@pytest.mark.parametrize("act,head", [("tanh", "gap"), ("relu", "flatten"), ("leaky_relu(0.1)", "gap")])
def test_unrolled_graph_reproduces_residual_nets(act, head, tmp_path):
    """The graph (identity and 1x1 conv shortcuts, same and causal padding, dilation) is the network: its
    forward pass equals lipdsl's (PyTorch semantics) on random inputs; M_k reads only earlier blocks."""
    rng = np.random.default_rng(3)
    net = _bias_free_residual(rng, tmp_path, act=act, head=head)
    g = unroll_graph(net)
    width = g.n0
    for U in g.hidden:
        assert U.matrix.shape[1] == width  # strictly lower block-triangular
        width += U.matrix.shape[0]
    assert g.out.shape[1] == width
    for _ in range(3):
        x = rng.normal(size=(2, 9))
        np.testing.assert_allclose(_graph_forward(net, g, x), forward(net, x), rtol=1e-12, atol=1e-12)


def test_unrolled_graph_of_a_chain_is_the_chain():
    """On a sequential net the graph's matrices are ``unroll``'s, each on the block before it."""
    net = random_cnn(np.random.default_rng(5), activation="tanh")
    if any(isinstance(L, typed.Pool) and L.op == "max" for L in net.layers):
        pytest.skip("max pool")
    g, steps = unroll_graph(net), unroll(net)
    for U, S in zip(g.hidden, steps):
        at = U.matrix.shape[1] - S.matrix.shape[1]  # the offset of the block before it
        assert U.slope == S.slope
        np.testing.assert_allclose(U.matrix[:, at:].toarray(), S.matrix.toarray(), atol=1e-14)
        assert abs(U.matrix[:, :at]).sum() == 0
    last = steps[-1].matrix if steps[-1].slope is None else sp.identity(g.out.shape[0])
    at = g.out.shape[1] - last.shape[1]
    np.testing.assert_allclose(g.out[:, at:].toarray(), last.toarray(), atol=1e-14)


@pytest.mark.solver
@pytest.mark.parametrize("seed", range(6))
def test_lipsdp_on_residual_nets_ordering(seed, tmp_path):
    """On random residual nets (identity, batch-norm-only and 1x1 conv (+ batch norm) shortcuts, batch norm,
    ReLU/tanh/leaky ReLU): lower <= LipSDP-Neuron <= LipSDP-Layer, Neuron <= naive, and Neuron <= the
    dissipative bound (its certificate, summed over time and blocks, is a LipSDP-Neuron certificate with
    multipliers shared over time), as for the sequential nets (tests/test_solve.py); the LMI holds at the
    verified point."""
    rng = np.random.default_rng(seed)
    net = random_residual(rng, tmp_path)
    lo = lower_bound(net, starts=4, steps=15, seed=seed).value
    ne, la = lipsdp(net, "neuron"), lipsdp(net, "layer")
    assert ne.status == la.status == "verified" and ne.max_eig <= 0 and la.max_eig <= 0
    ours = solve_network(net).certificate.lipschitz
    assert lo <= ne.bound * (1 + 1e-9), (lo, ne.bound)
    assert ne.bound <= la.bound * (1 + 1e-7), (ne.bound, la.bound)
    assert ne.bound <= naive(net) * (1 + 1e-7)
    assert ne.bound <= ours * (1 + 1e-6), (ne.bound, ours)


@pytest.mark.solver
def test_lipsdp_residual_split_and_solvers_agree(tmp_path):
    """The graph LMI split into cliques (chordal), unsplit, and through PICOS: one optimum."""
    net = _bias_free_residual(np.random.default_rng(8), tmp_path, act="relu")
    for mode in ("neuron", "layer"):
        ref = lipsdp(net, mode, solver="picos-cvxopt").bound
        for chordal in (False, True):
            assert lipsdp(net, mode, chordal=chordal).bound == pytest.approx(ref, rel=1e-6), (mode, chordal)


@pytest.mark.parametrize("seed", range(3))
def test_lipsdp_of_a_linear_residual_net_is_its_norm(seed, tmp_path):
    """No activation anywhere (identity and conv shortcuts, batch norm): LipSDP is the exact norm of the
    network's (constant) Jacobian, computed by the forward-mode Jacobian."""
    rng = np.random.default_rng(40 + seed)
    s = Spec(2, 10)
    s.conv(rng, 2, 3, 3, padding="same")
    s.lines.append("residual b0:")
    s.conv(rng, 3, 3, 3, padding="causal", indent="  ")
    s.bn(rng, 3, indent="  ")
    s.conv(rng, 3, 3, 3, padding="same", dilation=2, indent="  ")
    s.lines.append("end")
    s.lines.append("residual b1:")
    s.conv(rng, 3, 4, 3, padding="same", indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 3, 4, 1, padding=0, indent="  ")
    s.bn(rng, 4, indent="  ")
    s.lines.append("end")
    if seed % 2:
        s.lines += ["global_avgpool", f"dense 4 -> 3, weight {s.key(rng.normal(size=(3, 4)))}"]
    net = s.load(tmp_path)
    exact = np.linalg.norm(jacobian(net, rng.normal(size=(2, 10))).reshape(-1, 20), 2)
    for mode in ("neuron", "layer"):
        assert lipsdp(net, mode).bound == pytest.approx(exact, rel=1e-9)


@pytest.mark.solver
def test_a_stalled_hkm_run_is_solved_again_by_cvxopt(monkeypatch):
    """An HKM run that stops far from the optimum (relative gap > HKM_STALLED_GAP) is redone by CVXOPT."""
    import dataclasses

    from lipdsl.baselines import lipsdp as baselines
    from lipdsl.solvers import hkm

    net = random_cnn(np.random.default_rng(77), activation="relu")
    ref = lipsdp(net, "neuron", solver="cvxopt").bound
    real = hkm.solve_hkm

    def stalled(problem, **kw):  # the starting point, as if no step had been taken
        sol = real(problem, **kw)
        return dataclasses.replace(sol, claimed_status="unknown", relative_gap=1.9,
                                   x=np.full_like(sol.x, 1.0), rho=1e3)

    monkeypatch.setattr(hkm, "solve_hkm", stalled)
    got = baselines.lipsdp(net, "neuron")
    assert got.bound == pytest.approx(ref, rel=1e-6) and got.claimed_status == "optimal"

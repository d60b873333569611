"""The CVXOPT backend's structured KKT solver and cone operations (lipdsl.solvers.cvxopt_kkt,
cvxopt_cones): the same Newton steps and bounds as CVXOPT's general path, threads only when BLAS is pinned,
CVXOPT's own functions restored."""

import numpy as np
import pytest

from nets import Builder, ecg, random_small_cnn

pytestmark = pytest.mark.solver


def _kkt_nets():
    """A --frequencies net (8 channels: each frequency LMI has >= UNIT_MIN unit terms), a small random
    CNN whose flatten LMI has 79 unit terms, the ECG net."""
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp

    rng = np.random.default_rng(7)
    b = Builder(1, 16)
    b.conv(rng.normal(size=(8, 1, 3)) / 2, padding="causal").act("relu")
    b.conv(rng.normal(size=(8, 8, 5)) / 8, padding="causal").act("relu")
    b.conv(rng.normal(size=(8, 8, 5)) / 8, padding="causal").act("tanh").gap()
    b.dense(rng.normal(size=(3, 8)))
    freq = build_sdp(lower(b.build()), frequencies=9)
    flat = build_sdp(lower(random_small_cnn(np.random.default_rng(1006))))
    return {"frequencies": freq, "flatten": flat, "ecg": build_sdp(lower(ecg("CNN_23_03_08_11_52")))}


@pytest.mark.parametrize("unit_min", [None, 1])
@pytest.mark.parametrize("case", ["frequencies", "flatten", "ecg"])
def test_unit_term_kkt_equals_the_general_path(case, unit_min, monkeypatch):
    """The unit-term path of the structured KKT solver (entries of S = rti rti', blocks of one structure
    formed together) solves the same Newton systems as the general factored path to rounding, and the
    whole solve takes the same iterations to the same bound. ``unit_min=1`` puts every block's unit terms
    on the new path (dense columns, mixed and single-term groups included). (Small random CNNs mostly end on
    CVXOPT's singular KKT matrix, where rounding decides the last iterations: their final points are not
    compared.) The solves keep CVXOPT's refinement of every KKT solve: with the gated one
    (``test_gated_refinement_solves_as_cvxopts_refinement``) rounding, not the path, decides more endings."""
    import cvxopt

    import lipdsl.solvers.cvxopt_kkt as kkt_mod
    import lipdsl.solvers.cvxopt_conelp as conelp
    import lipdsl.solvers.solve as solve_mod

    monkeypatch.setattr(conelp, "GATED_REFINEMENT", False)

    if unit_min is not None:
        monkeypatch.setattr(kkt_mod, "UNIT_MIN", unit_min)
    sdp = _kkt_nets()[case]
    reference = conelp.structured_kkt
    worst, calls = [0.0], [0]

    def both(sdp_, nonneg_idx):
        new, old = reference(sdp_, nonneg_idx), reference(sdp_, nonneg_idx, unit_terms=False)

        def factor(W):
            s_new, s_old = new(W), old(W)

            def solve(x, y, z):
                xo, yo, zo = cvxopt.matrix(x), cvxopt.matrix(y), cvxopt.matrix(z)
                s_old(xo, yo, zo)
                s_new(x, y, z)
                for a, b in ((x, xo), (z, zo)):
                    a, b = np.array(a), np.array(b)
                    worst[0] = max(worst[0], np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))
                calls[0] += 1

            return solve

        return factor

    monkeypatch.setattr(conelp, "structured_kkt", both)
    # (five iterations: the flatten net's next Newton matrix is ill-conditioned enough for the paths' rounding
    # to differ by 1.2e-9 with numpy 2.4.6 / scipy 1.17.1, against <= 4e-13 before it)
    solve_mod.solve(sdp, max_iterations=5)
    assert calls[0] > 6 and worst[0] <= 1e-9, worst
    if case == "flatten":
        return
    monkeypatch.setattr(conelp, "structured_kkt", reference)
    new = solve_mod.solve(sdp)
    monkeypatch.setattr(conelp, "structured_kkt", lambda s, i: reference(s, i, unit_terms=False))
    old = solve_mod.solve(sdp)
    assert new.claimed_status == old.claimed_status
    if new.claimed_status == "optimal":  # (where CVXOPT gives up on a singular KKT matrix is rounding's call)
        assert abs(new.iterations - old.iterations) <= 1
    assert abs(new.rho - old.rho) <= 1e-9 * abs(old.rho)


@pytest.mark.parametrize("case", ["frequencies", "ecg"])
def test_threaded_kkt_blocks_give_the_sequential_solve(case, monkeypatch):
    """The structured KKT solver's block loops on two threads (forced here; by default only for large
    problems): the same iterations and optimum as inline, and bit for bit the same point on every run
    (each thread sums its own share of the blocks, and the shares are added in a fixed order)."""
    import lipdsl.solvers.cvxopt_kkt as kkt_mod
    import lipdsl.solvers.solve as solve_mod

    sdp = _kkt_nets()[case]
    monkeypatch.setattr(kkt_mod, "KKT_THREADS", 1)
    inline = solve_mod.solve(sdp)
    monkeypatch.setattr(kkt_mod, "KKT_THREADS", 2)
    monkeypatch.setattr(kkt_mod, "THREAD_MIN_ENTRIES", 0)
    first, second = solve_mod.solve(sdp), solve_mod.solve(sdp)
    assert np.array_equal(first.x, second.x)
    assert first.claimed_status == inline.claimed_status
    if inline.claimed_status == "optimal":  # (where CVXOPT gives up on a singular KKT matrix: rounding)
        assert abs(first.iterations - inline.iterations) <= 1
    assert abs(first.rho - inline.rho) <= 1e-9 * abs(inline.rho)


def _cone_point(rng, dims):
    """A random interior point of R+^l x S+^m1 x ... in CVXOPT's storage, and a random direction."""
    def block(m):
        A = rng.normal(size=(m, m))
        return (A @ A.T + m * np.eye(m)).ravel(order="F")

    point = np.concatenate([rng.random(dims["l"]) + 0.5] + [block(m) for m in dims["s"]])
    return point, rng.normal(size=len(point))


def _cone_ops(threads=2):
    from cvxopt import misc

    import lipdsl.solvers.cvxopt_kkt as kkt_mod
    from lipdsl.solvers.cvxopt_cones import REPLACED, ConeOps

    return ConeOps({name: getattr(misc, name) for name in REPLACED},
                   lambda fn, items: kkt_mod.thread_map(fn, items, threads),
                   lambda sizes: kkt_mod.split_by_cost(np.asarray(sizes, dtype=float) ** 3, threads))


def _both_update_scaling(ops, W, lmbda, ls: np.ndarray, lz: np.ndarray):
    """CVXOPT's ``update_scaling`` and ``ops``' on copies of ``W``, ``lmbda`` and the factors ``ls``, ``lz``:
    ``(W, lambda, s)`` after each (CVXOPT's first)."""
    import cvxopt
    from cvxopt import misc

    out = []
    for update in (misc.update_scaling, ops.update_scaling):
        W_copy = {key: [+m for m in v] if isinstance(v, list) else +v for key, v in W.items()}
        lam, s, z = +lmbda, cvxopt.matrix(ls), cvxopt.matrix(lz)
        update(W_copy, lam, s, z)
        out += [W_copy, lam, s]
    return tuple(out)


@pytest.mark.parametrize("threads", [1, 2])
def test_cone_ops_equal_cvxopts(threads):
    """lipdsl.solvers.cvxopt_cones' scale, max_step and update_scaling (blocks shared among threads) against
    CVXOPT's own
    on a point with an 'l' part and 's' blocks of orders 1-7: the same step, eigenvalues, eigenvectors (up to
    sign), and the same scaling (``r`` up to the signs of its columns, which the SVD leaves free)."""
    import cvxopt
    from cvxopt import misc

    rng = np.random.default_rng(3)
    dims = {"l": 3, "q": [], "s": [4, 7, 7, 1, 5]}
    ops = _cone_ops(threads)
    s, z = (cvxopt.matrix(_cone_point(rng, dims)[0]) for _ in range(2))
    lmbda = cvxopt.matrix(0.0, (dims["l"] + sum(dims["s"]) + 1, 1))
    W = misc.compute_scaling(s, z, lmbda, dims, mnl=0)  # (as conelp: with an empty 'dnl')
    for trans in "NT":
        for inverse in "NI":
            x = _cone_point(rng, dims)[1]
            a, b = cvxopt.matrix(x), cvxopt.matrix(x)
            misc.scale(a, W, trans=trans, inverse=inverse)
            ops.scale(b, W, trans=trans, inverse=inverse)
            assert np.allclose(np.array(a), np.array(b), rtol=0, atol=1e-12)  # (upper triangles included)
    for with_sigma in (False, True):
        x = _cone_point(rng, dims)[1]
        a, b = cvxopt.matrix(x), cvxopt.matrix(x)
        if with_sigma:
            sa, sb = (cvxopt.matrix(0.0, (sum(dims["s"]), 1)) for _ in range(2))
            ta, tb = misc.max_step(a, dims, 0, sigma=sa), ops.max_step(b, dims, 0, sigma=sb)
            assert np.allclose(np.array(sa), np.array(sb), rtol=0, atol=1e-12)
            assert np.allclose(np.abs(np.array(a)), np.abs(np.array(b)), rtol=0, atol=1e-10)
        else:
            ta, tb = misc.max_step(a, dims), ops.max_step(b, dims)
        assert abs(ta - tb) <= 1e-12 * max(1.0, abs(ta))

    def lower_triangular_factors():
        return np.concatenate([rng.random(dims["l"]) + 0.5]
                              + [(np.tril(rng.normal(size=(m, m))) + 3 * np.eye(m)).ravel(order="F")
                                 for m in dims["s"]])

    theirs, la, sa, ours, lb, sb = _both_update_scaling(ops, W, lmbda, lower_triangular_factors(),
                                                        lower_triangular_factors())
    assert np.allclose(np.array(la), np.array(lb), rtol=1e-13, atol=0)
    for key in ("d", "di"):
        assert np.allclose(np.array(theirs[key]), np.array(ours[key]), rtol=1e-14, atol=0)
    for r_a, r_b, rti_b in zip(theirs["r"], ours["r"], ours["rti"]):
        r_a, r_b = np.array(r_a), np.array(r_b)
        signs = np.linalg.solve(r_a, r_b)
        assert np.allclose(np.abs(signs), np.eye(len(r_a)), atol=1e-10)
        assert np.allclose(np.array(rti_b), np.linalg.inv(r_b).T, atol=1e-10)
    assert np.allclose(np.abs(np.array(sa)), np.abs(np.array(sb)), atol=1e-10)  # U, left in s


def _embedded(M):
    from lipdsl.solvers.cvxopt_cones import embed

    E = np.zeros((2 * M.shape[0], 2 * M.shape[1]))
    embed(M, E)
    return E


def _hermitian_point(rng, dims, hermitian):
    """``_cone_point`` with the marked 's' blocks real embeddings of random Hermitian positive definite
    matrices (and the direction's marked blocks embeddings of Hermitian matrices)."""
    def block(m, definite):
        A = rng.normal(size=(m // 2, m // 2)) + 1j * rng.normal(size=(m // 2, m // 2))
        M = A @ A.conj().T + m * np.eye(m // 2) if definite else A + A.conj().T
        return _embedded(M).ravel(order="F")

    point, direction = _cone_point(rng, dims)
    at = dims["l"]
    for m, marked in zip(dims["s"], hermitian):
        if marked:
            point[at : at + m * m], direction[at : at + m * m] = block(m, True), block(m, False)
        at += m * m
    return point, direction


@pytest.mark.parametrize("threads", [1, 2])
def test_hermitian_cone_ops_equal_cvxopts_on_embeddings(threads, monkeypatch):
    """On 's' blocks that are real embeddings of Hermitian matrices, the complex-arithmetic operations
    (``hermitian_blocks``) give CVXOPT's results: the same lambda and scaling ``W`` (as ``r r'``, which the
    SVD's free rotations of a doubled singular value leave unchanged), with ``r`` an embedding; the same
    scaled blocks, steps and eigenvalues, eigenvectors that diagonalise the block; an unmarked block beside
    them as before."""
    import cvxopt
    from cvxopt import misc

    from lipdsl.solvers import cvxopt_cones
    from lipdsl.solvers.cvxopt_cones import hermitian_blocks, to_complex

    monkeypatch.setattr(cvxopt_cones, "HERMITIAN_SCALE_MIN_ORDER", 6)  # (the blocks of order 6 and 8)
    rng = np.random.default_rng(5)
    dims = {"l": 2, "q": [], "s": [6, 5, 8, 2]}
    marks = [True, False, True, True]
    ops = _cone_ops(threads)

    def lower(v):  # each 's' block's lower triangle (what CVXOPT's storage defines)
        v, out, at = np.asarray(v).ravel(), [np.asarray(v).ravel()[: dims["l"]]], dims["l"]
        for m in dims["s"]:
            out.append(np.tril(v[at : at + m * m].reshape(m, m, order="F")).ravel())
            at += m * m
        return np.concatenate(out)

    def embedding(E):
        return np.allclose(_embedded(to_complex(E)), E, rtol=0, atol=1e-12)

    def same_scaling(W_a, lambda_a, W_b, lambda_b):  # CVXOPT's (a) and ours (b)
        np.testing.assert_allclose(np.array(lambda_b), np.array(lambda_a), rtol=1e-12)
        for k, marked in enumerate(marks):
            r_a, r_b = np.array(W_a["r"][k]), np.array(W_b["r"][k])
            np.testing.assert_allclose(r_b @ r_b.T, r_a @ r_a.T, rtol=0,
                                       atol=1e-10 * np.abs(r_a @ r_a.T).max())
            np.testing.assert_allclose(np.array(W_b["rti"][k]), np.linalg.inv(r_b).T, atol=1e-9)
            assert not marked or embedding(r_b)

    s, z = (cvxopt.matrix(_hermitian_point(rng, dims, marks)[0]) for _ in range(2))
    la, lb = (cvxopt.matrix(0.0, (dims["l"] + sum(dims["s"]) + 1, 1)) for _ in range(2))
    theirs = misc.compute_scaling(s, z, la, dims, mnl=0)
    with hermitian_blocks(marks):
        ours = ops.compute_scaling(s, z, lb, dims, mnl=0)
    same_scaling(theirs, la, ours, lb)
    for trans in "NT":
        for inverse in "NI":
            x = _hermitian_point(rng, dims, marks)[1]
            a, b = cvxopt.matrix(x), cvxopt.matrix(x)
            misc.scale(a, ours, trans=trans, inverse=inverse)  # CVXOPT's, with the same W
            with hermitian_blocks(marks):
                ops.scale(b, ours, trans=trans, inverse=inverse)
            np.testing.assert_allclose(lower(b), lower(a), rtol=0, atol=1e-10)
    for with_sigma in (False, True):
        x = _hermitian_point(rng, dims, marks)[1]
        a, b = cvxopt.matrix(x), cvxopt.matrix(x)
        if with_sigma:
            sa, sb = (cvxopt.matrix(0.0, (sum(dims["s"]), 1)) for _ in range(2))
            ta = misc.max_step(a, dims, 0, sigma=sa)
            with hermitian_blocks(marks):
                tb = ops.max_step(b, dims, 0, sigma=sb)
            np.testing.assert_allclose(np.array(sb), np.array(sa), rtol=0, atol=1e-10)
            at, at_eig = dims["l"], 0
            for m in dims["s"]:  # Q diag(w) Q' is the block again, Q orthogonal
                X = np.asarray(x)[at : at + m * m].reshape(m, m, order="F")
                Q = np.array(b)[at : at + m * m, 0].reshape(m, m, order="F")
                w = np.array(sb)[at_eig : at_eig + m, 0]
                np.testing.assert_allclose(Q @ np.diag(w) @ Q.T, np.tril(X) + np.tril(X, -1).T, atol=1e-10)
                np.testing.assert_allclose(Q.T @ Q, np.eye(m), atol=1e-12)
                at, at_eig = at + m * m, at_eig + m
        else:
            ta = misc.max_step(a, dims)
            with hermitian_blocks(marks):
                tb = ops.max_step(b, dims)
        assert abs(ta - tb) <= 1e-12 * max(1.0, abs(ta))

    def factors():  # as conelp hands them over: embeddings on the marked blocks, generic elsewhere
        out = [rng.random(dims["l"]) + 0.5]
        for m, marked in zip(dims["s"], marks):
            if marked:
                h = m // 2
                A = rng.normal(size=(h, h)) + 1j * rng.normal(size=(h, h))
                out.append(_embedded(A + 3 * np.eye(h)).ravel(order="F"))
            else:
                out.append((rng.normal(size=(m, m)) + 3 * np.eye(m)).ravel(order="F"))
        return np.concatenate(out)

    with hermitian_blocks(marks):
        W_a, la, _, W_b, lb, _ = _both_update_scaling(ops, ours, lb, factors(), factors())
    same_scaling(W_a, la, W_b, lb)


def test_a_frequency_sdp_solves_the_same_with_hermitian_cone_ops(monkeypatch):
    """The frequency-form net of ``_kkt_nets`` (9 frequencies): the LMIs at the 7 inner frequencies of its
    two gridded layers are marked Hermitian (at w = 0 and pi ``H`` is real, and the first layer's LMI is
    exact), and the solve with the cone operations in complex arithmetic (the scaling too, at every order)
    ends where the real one does, in as many iterations."""
    from lipdsl.sdp import problem
    from lipdsl.solvers.solve import solve

    from lipdsl.solvers import cvxopt_cones

    sdp = _kkt_nets()["frequencies"]
    marked = [lmi.hermitian for lmi in sdp.lmis]
    assert marked == [lmi.size == 32 for lmi in sdp.lmis] and sum(marked) == 14
    monkeypatch.setattr(cvxopt_cones, "HERMITIAN_SCALE_MIN_ORDER", 0)
    herm = solve(sdp, "cvxopt", tol=1e-7, max_iterations=100, verbose=False)
    monkeypatch.setattr(problem.Lmi, "hermitian", property(lambda self: False))
    real = solve(sdp, "cvxopt", tol=1e-7, max_iterations=100, verbose=False)
    assert herm.claimed_status == real.claimed_status == "optimal"
    assert herm.iterations == real.iterations
    assert abs(herm.rho - real.rho) <= 1e-8 * abs(real.rho)


def test_cone_ops_leave_other_cones_to_cvxopt_and_restore_its_functions():
    """A second-order cone or several columns go to CVXOPT's own functions; ``installed`` puts CVXOPT's back
    when the last (nested) solve ends."""
    import cvxopt
    from cvxopt import misc

    from lipdsl.solvers.cvxopt_cones import installed

    originals = (misc.scale, misc.max_step, misc.update_scaling)
    calls = []
    ops = _cone_ops()
    def recorder(name):
        return lambda *args, **kwargs: calls.append(name) or 0.0

    ops.originals = {name: recorder(name) for name in ("scale", "max_step", "update_scaling")}
    x = cvxopt.matrix(np.ones(7))
    with_q = {"d": x, "di": x, "v": [x], "beta": [1.0], "r": [], "rti": []}
    ops.max_step(x, {"l": 3, "q": [4], "s": []})
    ops.max_step(cvxopt.matrix(np.ones((4, 2))), {"l": 4, "q": [], "s": []})
    ops.update_scaling(with_q, x, x, x)
    ops.scale(x, with_q)
    ops.scale(cvxopt.matrix(np.ones((4, 2))), {**with_q, "v": []})
    assert calls == ["max_step", "max_step", "update_scaling", "scale", "scale"]
    with installed(ops.run, ops.shares):
        with installed(ops.run, ops.shares):
            assert misc.max_step is not originals[0]
        assert misc.update_scaling is not originals[1]
    assert (misc.scale, misc.max_step, misc.update_scaling) == originals


def test_kkt_threads_only_when_blas_is_pinned_to_one_thread(monkeypatch):
    """Two KKT threads on top of a multi-threaded BLAS oversubscribe the cores: by default the block loops
    run on threads only when BLAS is pinned to one thread (``limits.blas_threads``, as ``solve_network`` and
    the CLI do), as threadpoolctl sees it -- whatever the environment variables say."""
    from threadpoolctl import threadpool_limits

    import lipdsl.solvers.cvxopt_kkt as solve_mod
    from lipdsl.limits import blas_threads

    monkeypatch.setattr(solve_mod, "KKT_THREADS", None)
    monkeypatch.setattr(solve_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # ignored: only the libraries' own setting counts
    with threadpool_limits(limits=4, user_api="blas"):
        assert solve_mod.kkt_threads() == 1
        with blas_threads():
            assert solve_mod.kkt_threads() == 2
        assert solve_mod.kkt_threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    with threadpool_limits(limits=1, user_api="blas"):
        assert solve_mod.kkt_threads() == 2
    monkeypatch.setattr(solve_mod, "KKT_THREADS", 3)
    assert solve_mod.kkt_threads() == 3


def _deep_chain(seed: int, layers: int = 8, channels: int = 4):
    rng = np.random.default_rng(seed)
    b = Builder(channels, 16)
    for _ in range(layers):
        b.conv(rng.normal(size=(channels, channels, 3)) / np.sqrt(3 * channels), padding="causal").act("relu")
    b.gap()
    b.dense(rng.normal(size=(2, channels)))
    return b.build()


@pytest.mark.parametrize("seed", range(2))
def test_chain_newton_matrix_gives_the_dense_solution(seed, monkeypatch):
    """A deep chain's Newton matrix is block tridiagonal (each LMI holds two layers' variables): the
    partition has a part per layer, no LMI's variables straddle two boundaries, and the factor by parts gives
    the same iterates as the dense one (one part)."""
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp
    from lipdsl.solvers import cvxopt_kkt
    from lipdsl.solvers.solve import solve

    sdp = build_sdp(lower(_deep_chain(seed)))
    spans = [np.unique(lmi.factored.col) for lmi in sdp.lmis]
    assert cvxopt_kkt.newton_chain(spans, sdp.n).tolist() == [0, sdp.n]  # (small: below CHAIN_MIN)
    monkeypatch.setattr(cvxopt_kkt, "CHAIN_MIN", 1)
    bounds = cvxopt_kkt.newton_chain(spans, sdp.n)
    assert bounds[0] == 0 and bounds[-1] == sdp.n and np.all(np.diff(bounds) > 0)
    assert len(bounds) - 1 >= len(sdp.lmis) - 1  # (one part per layer)
    for v in spans:
        assert np.count_nonzero((v.min() < bounds) & (bounds <= v.max())) <= 1
    real = cvxopt_kkt.newton_chain
    monkeypatch.setattr(cvxopt_kkt, "newton_chain", lambda variables, n: np.array([0, n]))  # (dense)
    dense = solve(sdp)
    parts = []
    monkeypatch.setattr(cvxopt_kkt, "newton_chain", lambda *a: parts.append(real(*a)) or parts[-1])
    chained = solve(sdp)
    assert len(parts[0]) == len(bounds)  # (the chain path ran)
    assert chained.iterations == dense.iterations
    assert chained.rho == pytest.approx(dense.rho, rel=1e-9)


def test_chain_cholesky_solves_a_block_tridiagonal_system():
    """``ChainCholesky`` on a random positive definite block-tridiagonal matrix (parts of 1, 7, 5, 9): its
    solve is ``numpy.linalg.solve``'s to 1e-12 and it reads nothing outside the blocks (garbage there); an
    indefinite matrix raises ``LinAlgError``, a NaN ``ValueError``."""
    from lipdsl.solvers.cvxopt_kkt import ChainCholesky, chain_zero

    rng = np.random.default_rng(0)
    bounds = np.array([0, 1, 8, 13, 22])
    n = bounds[-1]
    part = np.searchsorted(bounds, np.arange(n), side="right") - 1
    near = np.abs(part[:, None] - part[None, :]) <= 1
    A = rng.normal(size=(n, n)) * near
    H = A @ A.T * (np.abs(part[:, None] - part[None, :]) <= 1) + n * np.eye(n)
    garbage = np.where(near, H, rng.normal(size=(n, n)))
    r = rng.normal(size=n)
    x = ChainCholesky(garbage, bounds).solve(r)
    assert np.allclose(x, np.linalg.solve(H, r), rtol=1e-12, atol=1e-12)
    chain_zero(garbage, bounds)
    assert not garbage[near].any() and garbage[~near].all()  # (only the blocks zeroed)
    with pytest.raises(np.linalg.LinAlgError):
        ChainCholesky(H - 2 * n * np.eye(n), bounds)
    H[9, 8] = np.nan
    with pytest.raises(ValueError):
        ChainCholesky(H, bounds)


def test_subspace_weights_solve_the_same_with_the_operator_and_with_g():
    """The default backend applies a subspace weight's dense ``F_k`` as products (``LowRank``), CVXOPT's
    generic one multiplies the whole ``G``: the same SDP, the same optimum."""
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp, weight_bases
    from lipdsl.solvers.solve import solve
    from nets import wide_gap_net

    low = lower(wide_gap_net(4, channels=8))
    sdp = build_sdp(low, frequencies=9, weights="subspace", bases=weight_bases(low, 2))
    assert any(lmi.lowrank for lmi in sdp.lmis)
    a, b = solve(sdp, "cvxopt", tol=1e-8), solve(sdp, "cvxopt-generic", tol=1e-8)
    assert a.rho == pytest.approx(b.rho, rel=1e-6)



def test_warm_start_is_inside_the_cones_and_solves_to_the_same_point():
    """``warm_start`` from the 5-frequency solution of the ``_kkt_nets`` net for its 9-frequency SDP (whose
    LMIs include the 5 earlier ones by name): ``x`` as it was, every slack and dual block strictly inside its
    cone; started there, CVXOPT reaches the cold solve's ``rho`` (1e-7) in fewer iterations."""
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp
    from lipdsl.solvers.cvxopt_conelp import warm_start
    from lipdsl.solvers.solution import nonneg_indices
    from lipdsl.solvers.solve import solve

    rng = np.random.default_rng(7)
    b = Builder(1, 16)
    b.conv(rng.normal(size=(8, 1, 3)) / 2, padding="causal").act("relu")
    b.conv(rng.normal(size=(8, 8, 5)) / 8, padding="causal", dilation=2).act("relu")
    b.conv(rng.normal(size=(8, 8, 5)) / 8, padding="causal", dilation=4).act("relu").gap()
    b.dense(rng.normal(size=(3, 8)))
    low = lower(b.build())
    coarse, fine = build_sdp(low, frequencies=5), build_sdp(low, frequencies=9)
    first = solve(coarse, tol=1e-7)
    assert first.duals is not None and {lmi.name for lmi in coarse.lmis} <= set(first.duals)
    assert {lmi.name for lmi in coarse.lmis} < {lmi.name for lmi in fine.lmis}
    nn = nonneg_indices(fine)
    start = warm_start(fine, first, nn)
    assert np.array_equal(np.array(start["primalstart"]["x"]).ravel(), first.x)
    for key, part in (("primalstart", "s"), ("dualstart", "z")):
        v, at = np.array(start[key][part]).ravel(), len(nn)
        assert np.all(v[:at] > 0)
        for lmi in fine.lmis:
            m = lmi.size
            assert np.linalg.eigvalsh(v[at : at + m * m].reshape(m, m, order="F"))[0] > 0, (key, lmi.name)
            at += m * m
    cold, warm = solve(fine, tol=1e-7), solve(fine, tol=1e-7, warm=first)
    assert warm.rho == pytest.approx(cold.rho, rel=1e-7)
    assert warm.iterations < cold.iterations


def _captured_scalings(sdp, count: int):
    """The Nesterov-Todd scalings ``W`` of the first ``count`` iterations of a structured solve of ``sdp``,
    with what the refinement needs: ``(scalings, structured kkt factory, G operator, dims)``."""
    import copy

    import lipdsl.solvers.cvxopt_conelp as conelp
    from lipdsl.solvers.solve import solve

    scalings = []
    reference = conelp.structured_kkt

    def capture(sdp_, nonneg_idx):
        kkt = reference(sdp_, nonneg_idx)

        def factor(W):
            scalings.append({key: [+m for m in v] if isinstance(v, list) else +v for key, v in W.items()})
            return kkt(W)

        return factor

    original = conelp.structured_kkt
    conelp.structured_kkt = capture
    try:
        solve(sdp, max_iterations=count)
    finally:
        conelp.structured_kkt = original
    c, G_all, h, dims, nonneg_idx = conelp.cone_data(sdp, rest=True)
    G = conelp._operator(G_all, dims, sdp.lmis)
    return copy.deepcopy(scalings[:count]), reference(sdp, nonneg_idx), G, dims


def test_one_refinement_step_corrects_an_inexact_kkt_solve():
    """``refined``'s residual is the KKT system's: around a solve made inexact on purpose (its ``x`` off by a
    relative 1e-6, as a factorisation of a badly conditioned Newton matrix would leave it), one step brings
    both ``x`` and ``z`` back to the exact solve's to ~1e-6 squared; with the gate above the residual
    (``above=inf``) nothing is refined, and each factorisation logs one residual (its first solve's)."""
    import cvxopt

    from lipdsl.solvers.cvxopt_kkt import refined

    sdp = _kkt_nets()["frequencies"]
    scalings, kkt, G, dims = _captured_scalings(sdp, 4)
    rng = np.random.default_rng(0)
    lower = np.concatenate([np.ones(dims["l"])]
                           + [np.tril(np.ones((m, m))).ravel(order="F") for m in dims["s"]])

    def noisy(W):
        solve = kkt(W)

        def inexact(x, y, z):
            solve(x, y, z)
            ux = np.array(x).ravel()
            x[:] = cvxopt.matrix(ux * (1 + 1e-6 * rng.uniform(-1, 1, len(ux))))

        return inexact

    def error(W, factory, bx, bz):
        exact = [cvxopt.matrix(bx), cvxopt.matrix(0.0, (0, 1)), cvxopt.matrix(bz)]
        kkt(W)(*exact)
        trial = [cvxopt.matrix(bx), cvxopt.matrix(0.0, (0, 1)), cvxopt.matrix(bz)]
        factory(W)(*trial)
        return max(np.abs(mask * (np.array(trial[i]) - np.array(exact[i])).ravel()).max()
                   / np.abs(np.array(exact[i])).max() for i, mask in ((0, 1.0), (2, lower)))

    log_on, log_off = [], []
    for W in scalings:
        bx, bz = rng.normal(size=sdp.n), lower * rng.normal(size=len(lower))
        plain = error(W, noisy, bx, bz)
        assert 1e-8 < plain < 1e-5
        assert error(W, refined(noisy, G, dims, above=0.0, log=log_on), bx, bz) < 1e-9
        assert error(W, refined(noisy, G, dims, above=np.inf, log=log_off), bx, bz) > 1e-8
    assert len(log_on) == len(log_off) == len(scalings)
    assert np.allclose(log_on, log_off, rtol=1e-6) and min(log_on) > 1e-9, log_on


@pytest.mark.parametrize("case", ["frequencies", "ecg"])
def test_gated_refinement_solves_as_cvxopts_refinement(case, monkeypatch):
    """Refining only the iterations whose first KKT solve needs it (``cvxopt_kkt.refined``) instead of every
    solve (CVXOPT's ``refinement``): the same optimum (1e-9), in no more iterations (+1), and 'optimal' where
    CVXOPT's is. (On the frequency net CVXOPT's refinement ends on a singular KKT matrix after 21 iterations,
    'unknown'; the gated one claims 'optimal' after 17.)"""
    import lipdsl.solvers.cvxopt_conelp as conelp
    import lipdsl.solvers.solve as solve_mod

    sdp = _kkt_nets()[case]
    gated = solve_mod.solve(sdp)
    monkeypatch.setattr(conelp, "GATED_REFINEMENT", False)
    every = solve_mod.solve(sdp)
    assert gated.claimed_status == "optimal" or every.claimed_status != "optimal"
    assert gated.iterations <= every.iterations + 1
    assert abs(gated.rho - every.rho) <= 1e-9 * abs(every.rho)


STALLING = """input 3 x 16
residual
  conv1d 3 -> 3, kernel 1, stride 2, weight [[[1.207], [0.191], [0.614]], [[0.46], [0.178], [1.0]], [[0.136], [-0.804], [0.315]]]
  conv1d 3 -> 3, kernel 1, weight [[[0.257], [1.358], [-1.424]], [[0.085], [-1.182], [-1.223]], [[0.918], [-2.492], [0.339]]]
shortcut
  conv1d 3 -> 3, kernel 1, stride 2, weight [[[-0.169], [-0.109], [0.289]], [[-1.66], [-0.378], [-0.911]], [[0.141], [-0.52], [1.436]]]
end
avgpool 2, stride 1
global_avgpool
dense 3 -> 2, weight [[-1.137, 2.302, -1.84], [-0.942, -1.065, 0.973]]
"""  # noqa: E501  (a linear strided block of 1x1 convs, found by a fuzzer: the structured KKT solver stalls)


def test_a_stalled_structured_solve_is_solved_again_with_chol(monkeypatch):
    """On this small SDP the structured KKT solver ends on a singular KKT matrix at relative gap 2e-3 (the
    certificate 1.003 times the solver's value: refused as unconverged); CVXOPT's 'chol' gets to 7e-5, and
    that point is certified, with a solver note saying so. Without the retry it is the SolveError."""
    import lipdsl
    from lipdsl.errors import SolveError
    from lipdsl.solvers import cvxopt_conelp

    net = lipdsl.parse(STALLING)
    bound = net.solve()
    assert bound.verified and 3.405 < bound.lipschitz < 3.54  # (3.4052: the linear map's norm, from lower)
    (note,) = bound.details["solver_notes"]
    assert note.startswith("the structured KKT solver stalled after ") and "'chol'" in note
    monkeypatch.setattr(cvxopt_conelp, "GENERIC_RETRY_WORK", 0)
    with pytest.raises(SolveError, match="without converging"):
        net.solve()

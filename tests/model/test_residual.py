"""Residual blocks and batch norm through every stage: spec -> check -> forward -> lower -> SDP -> certify.

Generated networks (spec text + .npz weights), checked against independent references:
- forward pass and Jacobian: the two branches evaluated as separate sequential networks, finite differences;
- soundness: empirical lower bound (Jacobian norms) <= certified bound <= naive product (per block
  ``||main|| + ||shortcut||``, conv gains as H-infinity norms);
- exactness on linear blocks: the bound equals the H-infinity norm of the block's transfer matrix, computed
  from the block's impulse response (forward pass on a long signal) and ``baselines.hinf_norm``.
"""

from __future__ import annotations

import numpy as np
import pytest

from lipdsl.lang import typed
from lipdsl.baselines.unrolled import hinf_norm, naive, naive_hinf
from lipdsl.certify.recheck import certify
from lipdsl.errors import LoweringError, ShapeError, UnsupportedError, WeightError
from lipdsl.certify.storage import recover_storage
from lipdsl.model.forward import forward, jacobian
from lipdsl.lang.load import check_source
from lipdsl.model.lower import lower
from lipdsl.model.residual import fold_batchnorm
from lipdsl.sdp.build import build_sdp
from lipdsl.solvers.solve import solve
from lipdsl.lang.source import Source
from repo_paths import SPECS

from bounds import certified, sandwiched
from nets import Spec, random_residual

# ------------------------------------------------------------------------------------------- language
def test_parse_and_check_block_structure(tmp_path):
    s = Spec(2, 20)
    rng = np.random.default_rng(0)
    s.lines.append("residual b1:")
    s.conv(rng, 2, 4, 3, indent="  ")
    s.bn(rng, 4, indent="  ")
    s.lines.append("  relu")
    s.conv(rng, 4, 4, 3, indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 2, 4, 1, padding=0, indent="  ")
    s.lines += ["end", "relu"]
    net = s.load(tmp_path)
    block = net.layers[0]
    assert isinstance(block, typed.Residual) and block.name == "b1"
    assert [L.kind for L in block.main] == ["conv1d", "batchnorm", "activation", "conv1d"]
    assert [L.kind for L in block.shortcut] == ["conv1d"]
    assert block.in_shape == typed.Shape(2, 20) and block.out_shape == typed.Shape(4, 20)
    assert [L.name for L in block.main] == ["conv1", "bn1", "relu1", "conv2"]
    assert block.shortcut[0].name == "conv3"
    assert net.layers[1].name == "relu2"


def test_branch_shapes_must_agree(tmp_path):
    s = Spec(2, 20)
    rng = np.random.default_rng(0)
    s.lines.append("residual b1:")
    s.conv(rng, 2, 4, 3, indent="  ")
    s.lines.append("end")
    with pytest.raises(ShapeError) as err:
        s.load(tmp_path)
    assert "main path produces 4x20" in err.value.message
    assert "identity shortcut passes 2x20" in err.value.message
    assert err.value.span.line == 3 and "kernel 1" in err.value.hint


def test_batchnorm_forward_matches_definition(tmp_path):
    rng = np.random.default_rng(1)
    s = Spec(3, 10)
    s.bn(rng, 3)
    net = s.load(tmp_path)
    u = rng.normal(size=(3, 10))
    w = s.w
    p = "bn1"
    want = (u - w[f"{p}.running_mean"][:, None]) / np.sqrt(w[f"{p}.running_var"][:, None] + 1e-5) \
        * w[f"{p}.weight"][:, None] + w[f"{p}.bias"][:, None]
    assert np.allclose(forward(net, u), want, atol=1e-13)


@pytest.mark.parametrize("seed", range(6))
def test_forward_is_main_plus_shortcut_and_jacobian_matches_differences(seed, tmp_path):
    rng = np.random.default_rng(seed)
    net = random_residual(rng, tmp_path, n=None)
    block = next(L for L in net.layers if isinstance(L, typed.Residual))
    i = net.layers.index(block)
    u = rng.normal(size=(net.input_shape.channels, 17))
    x = forward(typed.Network("pre", net.input_shape, net.layers[:i]), u) if i else u
    main = forward(typed.Network("m", typed.Shape(x.shape[0], None), block.main), x)
    short = x
    if block.shortcut:
        short = forward(typed.Network("s", typed.Shape(x.shape[0], None), block.shortcut), x)
    whole = forward(typed.Network("b", typed.Shape(x.shape[0], None), (block,)), x)
    assert np.allclose(whole, main + short, atol=1e-12)
    J = jacobian(net, u)
    h, E = 1e-6, np.eye(u.size)
    fd = np.stack([(forward(net, u + h * E[k].reshape(u.shape)) - forward(net, u - h * E[k].reshape(u.shape)))
                   .ravel() / (2 * h) for k in range(u.size)], 1)
    assert np.abs(J - fd).max() < 1e-6 * max(1.0, np.abs(J).max())


def test_fold_batchnorm_keeps_the_jacobian(tmp_path):
    rng = np.random.default_rng(3)
    net = random_residual(rng, tmp_path)
    folded = typed.Network(net.name, net.input_shape, tuple(fold_batchnorm(net.layers)))
    assert not any(isinstance(L, typed.BatchNorm) for L in typed.flat_layers(folded.layers))
    u = rng.normal(size=(net.input_shape.channels, net.input_shape.length))
    assert np.allclose(jacobian(net, u), jacobian(folded, u), atol=1e-12)


FOLD_RANGE = {  # layers around a batch norm whose fold leaves float64's range (weight, scale 1e-200 or 1e200)
    "conv then bn": ("input 2 x 8", "conv1d 2 -> 2, kernel 1, weight [[[{w}],[0]],[[0],[{w}]]]", "BN"),
    "dense then bn": ("input 2", "dense 2 -> 2, weight [[{w},0],[0,{w}]]", "BN"),
    "bn then conv": ("input 2 x 4", "BN", "conv1d 2 -> 2, kernel 1, weight [[[{w}],[0]],[[0],[{w}]]]"),
    "bn then bn": ("input 2 x 8", "BN", "BN"),
}


@pytest.mark.parametrize("size", ["1e-200", "1e200"])
@pytest.mark.parametrize("case", FOLD_RANGE)
def test_a_fold_that_leaves_the_float_range_is_refused_at_the_batch_norm(case, size):
    """``fold_batchnorm`` multiplies a batch norm's scale into its neighbour; where a product of nonzero
    weights underflows (to 0: the network would have bound 0, no bound of the spec's nonzero map) or
    overflows, it refuses with a ``WeightError`` at the batch norm's line, naming both layers."""
    head, first, second = FOLD_RANGE[case]
    bn = f"batchnorm 2, running_mean [0,0], running_var [1,1], weight [{size}, {size}]"
    lines = ["network t", head] + [bn if x == "BN" else x.format(w=size) for x in (first, second)]
    net = check_source(Source("t.lip", "\n".join(lines) + "\n"))
    with pytest.raises(WeightError) as err:
        fold_batchnorm(net.layers)
    assert err.value.span.line == (3 if case == "bn then conv" else 4)  # (the batch norm folded)
    assert "leaves float64's range" in err.value.message
    assert ("below 2.2e-308" if size == "1e-200" else "not finite") in err.value.message
    with pytest.raises(WeightError):
        lower(net)
    half = [x.replace(size, "1e-100" if size == "1e-200" else "1e100") for x in lines]
    kept = fold_batchnorm(check_source(Source("t.lip", "\n".join(half) + "\n")).layers)
    assert all(np.all(np.abs(L.weight[L.weight != 0]) >= 1e-201) for L in kept)  # (1e-100 x 1e-100 is fine)


# ------------------------------------------------------------------------------------------- lowering
def test_block_system_reproduces_the_block(tmp_path):
    """A linear causal block: the lowered system simulates the block (batch norm's shift aside: no biases)."""
    rng = np.random.default_rng(7)
    s = Spec(2, None)
    s.lines.append("residual b:")
    s.conv(rng, 2, 3, 3, padding="causal", dilation=2, indent="  ")
    s.bn(rng, 3, indent="  ")
    s.conv(rng, 3, 3, 2, padding="causal", indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 2, 3, 1, padding=0, indent="  ")
    s.lines.append("end")
    net = s.load(tmp_path)
    low = lower(net, scale=False)
    sys = next(s for s in low.systems if s.kind == "block")
    block = next(L for L in net.layers if isinstance(L, typed.Residual))
    assert sys.internal == () and sys.n_in == block.in_shape.channels
    x = rng.normal(size=(block.in_shape.channels, 25))
    b = typed.Network("b", typed.Shape(block.in_shape.channels, None), (block,))
    want = forward(b, x) - forward(b, np.zeros_like(x))  # (the batch norm's shift is a bias)
    got = sys.ss.simulate(x)
    assert np.allclose(got, want, atol=1e-12)


def test_internal_activations_are_feedforward(tmp_path):
    rng = np.random.default_rng(11)
    net = random_residual(rng, tmp_path)
    for sys in lower(net).systems:
        if not sys.internal:
            continue
        D = sys.ss.D
        r, c = 0, sys.n_in
        for a in sys.internal:  # v_j reads w_i for i < j only: no algebraic loop
            assert not D[r : r + a.n, c:].any()
            r += a.n
            c += a.n


# ------------------------------------------------------------------------------------------- bounds
def _sound(seed: int, tmp_path) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    net = random_residual(rng, tmp_path)
    return sandwiched(net, rng, naive_hinf(net), seed)


@pytest.mark.parametrize("seed", range(8))
def test_lower_le_bound_le_naive(seed, tmp_path):
    _sound(seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8, 40))
def test_lower_le_bound_le_naive_many(seed, tmp_path):
    _sound(seed, tmp_path)


def _block_hinf(net: typed.Network, c: int) -> float:
    """H-infinity norm of a linear fully convolutional net, from its impulse responses in the middle of a long
    signal (every tap, non-causal ones included) and ``hinf_norm`` (a guaranteed bound within 1e-9)."""
    n = 161
    mid = n // 2
    taps = []
    zero = forward(net, np.zeros((c, n)))  # (batch norm's shift)
    for i in range(c):
        u = np.zeros((c, n))
        u[i, mid] = 1.0
        taps.append(forward(net, u) - zero)
    H = np.stack(taps, 1)  # (c_out, c_in, n): response at time t to an impulse at mid
    nz = np.flatnonzero(np.abs(H).sum(axis=(0, 1)) > 0)
    assert nz[0] > 0 and nz[-1] < n - 1  # the response lies inside the signal
    return hinf_norm(H[:, :, nz[0] : nz[-1] + 1][:, :, ::-1], rtol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_linear_block_bound_is_its_hinf_norm(seed, tmp_path):
    rng = np.random.default_rng(100 + seed)
    s = Spec(int(rng.integers(1, 4)), None)
    c = s.lines[0].split()[1]
    c = int(c)
    c_out = c if seed % 2 == 0 else c + 1
    s.lines.append("residual b:")
    cin = c
    for _ in range(int(rng.integers(1, 4))):
        s.conv(rng, cin, c_out, int(rng.integers(1, 4)), padding="causal", dilation=int(rng.integers(1, 3)),
               indent="  ")
        if rng.random() < 0.5:
            s.bn(rng, c_out, indent="  ")
        cin = c_out
    if c_out != c or seed % 4 == 1:
        s.lines.append("shortcut")
        s.conv(rng, c, c_out, int(rng.integers(1, 3)), padding="causal", indent="  ")
    s.lines.append("end")
    net = s.load(tmp_path)
    ref = _block_hinf(net, c)
    got = certified(net)
    assert got >= ref * (1 - 1e-9), (got, ref)
    assert got <= ref * (1 + 1e-6), (got, ref)


@pytest.mark.parametrize("padding,shortcut", [("same", 0), ("1", 0), ("3", 2)])
def test_linear_same_padding_single_conv_branches_exact(padding, shortcut, tmp_path):
    """One non-causal conv per branch needs no window: the bound is the H-infinity norm too, also for a
    padding beyond the kernel's reach (3 > kernel - 1: both branches early, the shortcut by its padding)."""
    rng = np.random.default_rng(5)
    s = Spec(2, None)
    s.lines.append("residual b:")
    s.conv(rng, 2, 3, 3, padding=padding, indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 2, 3, 1, padding=shortcut, indent="  ")
    s.lines.append("end")
    net = s.load(tmp_path)
    ref = _block_hinf(net, 2)
    got = certified(net)
    assert ref * (1 - 1e-9) <= got <= ref * (1 + 1e-6)


# a conv padded beyond its kernel's reach (its first outputs read only zeros), in a chain of convs (windows),
# before stride-1 pools (the big_pad spec of a user trial), in a strided block (lifted), before an activation
WIDE_PADDING = {
    "chain": (2, ["  conv 2 2 3 3", "  conv 2 2 3 4", "shortcut", "  conv 2 2 1 5"]),
    "pools": (1, ["  conv 1 1 3 3", "  avgpool 3, stride 1", "  avgpool 3, stride 1"]),
    "strided": (2, ["  conv 2 2 3 3 2", "shortcut", "  conv 2 2 1 2 2"]),
    "relu": (2, ["  conv 2 2 3 3", "  relu", "  conv 2 2 3 4", "shortcut", "  conv 2 2 1 5"]),
}


@pytest.mark.parametrize("case", list(WIDE_PADDING))
def test_padding_beyond_the_kernel_inside_a_block(case, tmp_path):
    """A conv whose padding exceeds ``dilation*(kernel-1)`` (docs/method.md, alignment: ``delta < 0``, the
    branch early) is bounded inside a block as at the top level: the certified bound is at least the
    exact norm of a linear block (the spectral norm of its map at the spec's length; its Jacobian) and at
    least the largest Jacobian norm found with an activation; ``lipdsl check`` and the lowering agree."""
    rng = np.random.default_rng(7)
    c, body = WIDE_PADDING[case]
    s = Spec(c, 12)
    s.lines.append("residual b:")
    for line in body:
        word = line.split()
        if word[0] != "conv":
            s.lines.append(line)
            continue
        stride = int(word[5]) if len(word) > 5 else 1
        s.conv(rng, int(word[1]), int(word[2]), int(word[3]), padding=word[4], stride=stride, indent="  ")
    s.lines.append("end")
    net = s.load(tmp_path)
    assert any(layer.pad_left > layer.dilation * (layer.kernel - 1)
               for layer in typed.flat_layers(net.layers) if isinstance(layer, typed.Conv1d))
    got = certified(net)
    x = rng.normal(size=(c, 12))
    if case == "relu":
        lo = max(np.linalg.norm(jacobian(net, rng.normal(size=(c, 12))), 2) for _ in range(12))
        assert lo <= got * (1 + 1e-9), (lo, got)
    else:
        exact = np.linalg.norm(jacobian(net, x), 2)
        assert exact <= got * (1 + 1e-9), (exact, got)
        assert got <= exact * 1.1, (exact, got)  # (windows and a finite length: close, not equal)


def test_zero_shortcut_at_least_as_tight_as_the_chain(tmp_path):
    """A block whose shortcut is zero is the sequential chain in one LMI: never looser than the chain."""
    rng = np.random.default_rng(2)
    w1, w2 = rng.normal(size=(3, 2, 3)), rng.normal(size=(2, 3, 3))
    s = Spec(2, None)
    k1, k2, k0 = s.key(w1), s.key(w2), s.key(np.zeros((2, 2, 1)))
    s.lines += ["residual b:", f"  conv1d 2 -> 3, kernel 3, padding causal, weight {k1}", "  tanh",
                f"  conv1d 3 -> 2, kernel 3, padding causal, weight {k2}", "shortcut",
                f"  conv1d 2 -> 2, kernel 1, weight {k0}", "end"]
    block = s.load(tmp_path)
    text = "\n".join(s.lines[:2] + [f"conv1d 2 -> 3, kernel 3, padding causal, weight {k1}", "tanh",
                                    f"conv1d 3 -> 2, kernel 3, padding causal, weight {k2}"]) + "\n"
    chain = check_source(Source(str(tmp_path / "chain.lip"), text))
    b, c = certified(block), certified(chain)
    assert b <= c * (1 + 1e-6)


def test_naive_products_of_a_residual_block():
    """naive-hinf of ``relu(main(x) + S x) -> GAP -> dense``: (prod of main's gains + ||S||) / sqrt(N) ||W||,
    batch norm as the diagonal it is (here after the shortcut conv: folded into it)."""
    rng = np.random.default_rng(0)
    w1, w2, ws, W = rng.normal(size=(3, 2, 3)), rng.normal(size=(3, 3, 2)), rng.normal(size=(3, 2, 1)), \
        rng.normal(size=(2, 3))
    scale = np.array([0.5, 2.0, 1.0])
    sig, flat = typed.Shape(2, 16), typed.Shape(3, 16)

    def conv(name, w, shp, pad):
        k = w.shape[2]
        return typed.Conv1d(name, None, w.shape[1], w.shape[0], k, 1, 1, pad, k - 1 - pad, "x", w, None, shp,
                            flat)

    act = typed.Activation("r", None, "relu", 0.0, 1.0, flat, flat)
    block = typed.Residual("b", None, (conv("c1", w1, sig, 1), act, conv("c2", w2, flat, 1)),
                           (conv("s", ws, sig, 0), typed.BatchNorm("bn", None, 3, scale, np.zeros(3), 1e-5,
                                                                   flat, flat)), sig, flat)
    vec = typed.Shape(3, None, True)
    net = typed.Network("n", sig, (block, act, typed.GlobalAvgPool("g", None, flat, vec),
                                   typed.Dense("d", None, 3, 2, W, None, vec, typed.Shape(2, None, True))))
    short = hinf_norm(ws * scale[:, None, None])
    want = (hinf_norm(w1) * hinf_norm(w2) + short) / 4.0 * np.linalg.norm(W, 2)
    assert naive_hinf(net) == pytest.approx(want, rel=1e-9)
    assert naive(net) <= naive_hinf(net) * (1 + 1e-9)


# ------------------------------------------------------------------------------------------- refusals
def test_refusals_name_the_layer(tmp_path):
    """Branches of the same length that downsample by other factors (4 and 2) are refused by check, at the
    shortcut line (check accepted them and solve refused them); --lift and the sequential unrolling refuse a
    block at its line."""
    from lipdsl.errors import ShapeError

    rng = np.random.default_rng(0)
    s = Spec(2, 16)
    s.lines.append("residual b:")
    s.conv(rng, 2, 2, 1, padding=0, stride=4, indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 2, 2, 9, padding=0, stride=2, indent="  ")
    s.lines.append("end")
    with pytest.raises(ShapeError, match="both branches give 2x4, but they downsample by different") as err:
        s.load(tmp_path)
    assert err.value.span.line == 5 and "main path downsamples by 4 and the shortcut by 2" in err.value.hint
    s = Spec(2, 16)  # (both branches downsample by 4)
    s.lines.append("residual b:")
    s.conv(rng, 2, 2, 1, padding=0, stride=4, indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 2, 2, 1, padding=0, stride=4, indent="  ")
    s.lines.append("end")
    net = s.load(tmp_path)
    with pytest.raises(LoweringError, match="--lift 2 is not supported with residual blocks") as err:
        lower(net, lift=2)
    assert err.value.span.line == 3  # the block's 'residual b:' line
    from lipdsl.baselines.unrolled import unroll

    with pytest.raises(UnsupportedError, match="residual block 'b': the unrolled network is a graph") as err:
        unroll(net)
    assert err.value.span.line == 3 and "unroll_graph" in err.value.hint  # (LipSDP takes the graph form)


@pytest.mark.parametrize("seed", range(4))
def test_frequency_form_of_blocks(seed, tmp_path):
    """``--frequencies``: blocks with at least as many states as inputs and outputs are gridded (KYP), their P
    recovered from a Riccati equation; the certified bound lies between the exact SDP's and 5 % above it
    (33 frequencies: at 17 a block with 14 taps in a branch lost 7 %, the grid missing the dips of Phi)."""
    rng = np.random.default_rng(200 + seed)
    s = Spec(2, 24)
    s.conv(rng, 2, 4, 3, padding="causal")
    s.lines += ["relu", "residual b:"]
    s.conv(rng, 4, 4, 5, padding="same" if seed % 2 else "causal", dilation=1 + seed % 3, indent="  ")
    s.bn(rng, 4, indent="  ")
    s.lines.append("  relu")
    s.conv(rng, 4, 4, 3, padding="same" if seed % 2 else "causal", indent="  ")
    s.lines += ["end", "relu", "global_avgpool", f"dense 4 -> 2, weight {s.key(rng.normal(size=(2, 4)))}"]
    net = s.load(tmp_path)
    sdp = build_sdp(lower(net), frequencies=33)
    assert any(v.system.startswith("b") for v in sdp.storage)  # the block's P is left to the recovery
    exact = certified(net)
    gridded = certified(net, frequencies=33)
    assert exact * (1 - 1e-6) <= gridded <= exact * 1.05


@pytest.mark.parametrize("seed", range(12))
def test_problem_size_counts_a_block_as_lowered(seed, tmp_path):
    """The size model counts a residual block's stacked states and internal multipliers, close to the
    lowered count (it is what the limits and ``--frequencies auto`` decide on before lowering; it counted no
    block at all), and exactly on the shipped ResNet and TCN."""
    from lipdsl.pipeline import lowered_size, problem_size

    net = random_residual(np.random.default_rng(seed), tmp_path)
    low = lower(net)
    for k in (None, 9):
        estimate, lowered = problem_size(net, frequencies=k).variables, lowered_size(low, k).variables
        assert 0.7 * lowered <= estimate <= 1.3 * lowered


@pytest.mark.parametrize("spec,exact,gridded", [("resnet1d", 139885, 1433), ("tcn", 42300, 1148)])
def test_problem_size_of_the_shipped_residual_specs(spec, exact, gridded):

    from lipdsl.lang.load import load_network
    from lipdsl.pipeline import lowered_size, problem_size

    _, net = load_network(SPECS / f"{spec}.lip")
    low = lower(net)
    assert problem_size(net).variables == lowered_size(low).variables == exact
    assert problem_size(net, frequencies=17).variables == lowered_size(low, 17).variables == gridded


def _tcn_like(rng, tmp_path):
    """A first block on one input channel (its exact LMI: fewer states than inputs and outputs), then two
    dilated blocks the frequency form grids."""
    s = Spec(1, 24)
    s.lines.append("residual b0:")
    s.conv(rng, 1, 4, 3, padding="causal", indent="  ")
    s.lines.append("  relu")
    s.conv(rng, 4, 4, 3, padding="causal", indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 1, 4, 1, padding=0, indent="  ")
    s.lines += ["end", "relu"]
    for b, d in ((1, 2), (2, 4)):
        s.lines.append(f"residual b{b}:")
        s.conv(rng, 4, 4, 3, padding="causal", dilation=d, indent="  ")
        s.lines.append("  relu")
        s.conv(rng, 4, 4, 3, padding="causal", dilation=d, indent="  ")
        s.lines += ["end", "relu"]
    s.lines += ["global_avgpool", f"dense 4 -> 2, weight {s.key(rng.normal(size=(2, 4)))}"]
    return s.load(tmp_path)


@pytest.mark.parametrize("seed", range(1))
def test_a_first_block_with_its_exact_lmi_is_refitted_for_its_raised_output(seed, tmp_path, monkeypatch):
    """The recovery raises the output weight of a first block that kept its exact LMI; its P, multipliers
    and rho are then re-solved for it (``refit_first_system``) instead of left to certify's repair by
    isotropic raises (the trained residual TCN, K = 17: repair 6.1 % -> 0.9 %)."""
    from lipdsl.certify import storage

    net = _tcn_like(np.random.default_rng(300 + seed), tmp_path)
    sdp = build_sdp(lower(net), frequencies=9)
    assert sdp.links[0].P not in sdp.storage and sdp.links[0].system.internal
    assert all(link.P in sdp.storage for link in sdp.links[1:] if link.system.internal)
    sol = solve(sdp)
    refits = []
    real = storage.refit_first_system
    monkeypatch.setattr(storage, "refit_first_system", lambda s, p, w=None, final=False:
                        refits.append(real(s, p, w, final=final)) or refits[-1])
    cert = certify(sdp, recover_storage(sdp, sol))
    assert cert.verified and refits[-1]
    monkeypatch.setattr(storage, "refit_first_system", lambda s, p, w=None, final=False: False)
    without = certify(sdp, recover_storage(sdp, sol))
    assert without.verified and cert.lipschitz < without.lipschitz * (1 - 1e-4)
    assert cert.lipschitz >= certified(net) * (1 - 1e-6)  # (the exact SDP's bound)

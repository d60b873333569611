"""Strided residual blocks (a strided conv, an average or max pool inside a branch), lowered in lifted time.

Checked against independent references:
- the lowered block system, run on the block input in blocks of L samples (with the ReLUs of a max pool and
  of a fast-rate activation closed around it), reproduces the network's block output (``forward``);
- soundness on random strided residual nets: empirical lower bound <= certified bound <= naive products;
- exactness on linear strided blocks: the bound equals the H-infinity norm of the lifted (polyphase) transfer
  matrix (from the block's impulse responses at each phase and ``hinf_norm``), and is never below the norm
  of the unrolled linear map at a fixed length (which it approaches as the length grows).
"""

from __future__ import annotations

import numpy as np
import pytest

from lipdsl.baselines.unrolled import hinf_norm, naive, naive_hinf, spectral_norm, unroll_graph
from lipdsl.lang import typed
from lipdsl.model.forward import forward, jacobian
from lipdsl.model.lower import lower
from lipdsl.sdp.build import build_sdp

from bounds import certified, jacobian_lower, sandwiched
from nets import ACTS, Spec


def random_strided_residual(rng: np.random.Generator, tmp_path, *, n: int = 16, act: str | None = None,
                            pool: str | None = None) -> typed.Network:
    """A stem conv (+ activation), one or two blocks that downsample by 2 (the first conv of the main path
    strided, padding 1 or causal, batch norm sometimes, an activation before it sometimes (pre-activation,
    at the fast rate); shortcut a 1x1 stride-2 conv (+ batch norm), or ``pool`` ('avg'/'max', 2 or 3 wide)),
    an activation after a block sometimes, then global average pool or flatten, and a dense head."""
    act = act or ACTS[int(rng.integers(len(ACTS)))]
    c0, c = int(rng.integers(1, 3)), int(rng.integers(2, 4))
    s = Spec(c0, n)
    s.conv(rng, c0, c, int(rng.integers(1, 4)), padding="causal")
    s.lines.append(act)
    length = n
    for b in range(int(rng.integers(1, 3))):
        c_out = c if pool else c + int(rng.integers(0, 2))
        causal = rng.random() < 0.5
        s.lines.append(f"residual blk{b}:")
        if rng.random() < 0.4:
            s.lines.append(f"  {act}")  # at the fast rate: 2 c lifted activations
        k = int(rng.integers(2, 4)) if pool or causal else 3  # (pool: kernel k, stride 2, valid conv)
        s.conv(rng, c, c_out, k, padding="causal" if causal else 0 if pool else 1, stride=2, indent="  ")
        if rng.random() < 0.5:
            s.bn(rng, c_out, indent="  ")
        s.lines.append(f"  {act}")
        if rng.random() < 0.6:
            s.conv(rng, c_out, c_out, int(rng.integers(1, 4)), padding="causal" if causal else "same",
                   indent="  ")
        s.lines.append("shortcut")
        if pool:
            s.lines.append(f"  {pool}pool {1 if causal else k}, stride 2")  # (the main path's length)
        else:
            s.conv(rng, c, c_out, 1, padding=0, stride=2, indent="  ")
            if rng.random() < 0.5:
                s.bn(rng, c_out, indent="  ")
        s.lines.append("end")
        if rng.random() < 0.7:
            s.lines.append(act)
        c, length = c_out, s.load(tmp_path).output_shape.length
    if rng.random() < 0.5:
        s.lines += ["global_avgpool", f"dense {c} -> 2, weight {s.key(rng.normal(size=(2, c)))}"]
    else:
        size = c * length
        w = s.key(rng.normal(size=(2, size)) / np.sqrt(size))
        s.lines += ["flatten", f"dense {size} -> 2, weight {w}"]
    return s.load(tmp_path)


def _block_system(net: typed.Network):
    low = lower(net, scale=False)
    return next(s for s in low.systems if s.kind == "block")


def _closed_loop(sys, u: np.ndarray) -> np.ndarray:
    """The block system run on lifted inputs ``u`` (n_in x T) with a ReLU on every internal activation."""
    ss, out, x = sys.ss, [], np.zeros(sys.ss.nx)
    for t in range(u.shape[1]):
        z = np.zeros(ss.nu)
        z[: sys.n_in] = u[:, t]
        r = 0
        for a in sys.internal:
            assert a.name.startswith("relu") or ".max" in a.name, a.name
            v = ss.C[r : r + a.n] @ x + ss.D[r : r + a.n] @ z
            z[sys.n_in + r : sys.n_in + r + a.n] = np.maximum(v, 0.0)
            r += a.n
        out.append(ss.C[r:] @ x + ss.D[r:] @ z)
        x = ss.A @ x + ss.B @ z
    return np.array(out).T


BLOCKS = {  # block lines (after "residual b:"), input channels, input length
    "conv k3 p1 s2 + 1x1 s2": (["conv 2 3 3 1 2", "shortcut", "conv 2 3 1 0 2"], 2, 16),
    "conv k5 p2 s2 + k3 p1 s2": (["conv 2 3 5 2 2", "shortcut", "conv 2 3 3 1 2"], 2, 16),
    "causal s1, s2 dilated, s2 + 1x1 s4": (["conv 2 3 3 causal 1", "conv 3 3 3 causal 2 2",
                                            "conv 3 3 2 causal 2",
                                            "shortcut", "conv 2 3 1 0 4"], 2, 16),
    "conv + avgpool 2": (["conv 2 2 3 1 2", "shortcut", "avgpool 2"], 2, 16),
    "conv + avgpool 3 s2": (["conv 2 2 3 0 2", "shortcut", "avgpool 3, stride 2"], 2, 17),
    "relu at the fast rate, conv + maxpool 2": (["conv 2 2 3 causal 1", "relu", "conv 2 2 2 0 2", "shortcut",
                                                 "maxpool 2"], 2, 16),
    "conv + maxpool 3 s2": (["conv 2 2 3 0 2", "shortcut", "maxpool 3, stride 2"], 2, 17),
}


def _spec_block(rng, lines, c, n) -> Spec:
    s = Spec(c, n)
    s.lines.append("residual b:")
    for line in lines:
        if line.startswith("conv "):
            _, ci, co, k, pad, stride, *d = line.split()
            s.conv(rng, int(ci), int(co), int(k), padding=pad, stride=int(stride),
                   dilation=int(d[0]) if d else 1, indent="  ")
        else:
            s.lines.append(line if line == "shortcut" else "  " + line)
    s.lines.append("end")
    return s


@pytest.mark.parametrize("name", list(BLOCKS))
def test_lifted_block_system_reproduces_the_block(name, tmp_path):
    rng = np.random.default_rng(3)
    lines, c, n = BLOCKS[name]
    net = _spec_block(rng, lines, c, n).load(tmp_path)
    sys = _block_system(net)
    L = sys.block_in
    assert L > 1 and sys.n_in == L * c
    x = rng.normal(size=(c, n))
    want = forward(net, x)  # (no biases)
    T = -(-n // L) + 4
    padded = np.zeros((c, T * L))
    padded[:, :n] = x
    u = padded.reshape(c, T, L).transpose(0, 2, 1).reshape(c * L, T)  # row ch L + r: sample L tau + r
    got = _closed_loop(sys, u) if sys.internal else sys.ss.simulate(u)
    m = want.shape[1]
    delays = [d for d in range(T - m + 1) if np.allclose(got[:, d : d + m], want, atol=1e-10)]
    assert delays, (got, want)  # every output of the block, in order, after the branches' common delay


def _lifted_hinf(net: typed.Network, c: int, L: int) -> float:
    """H-infinity norm of a linear strided block in lifted time: its polyphase impulse responses (an impulse
    at phase r of a block in the middle of a long signal) as block taps, then ``hinf_norm``."""
    n = 40 * L
    mid = n // (2 * L)
    zero = forward(net, np.zeros((c, n)))
    cols = []
    for ch in range(c):
        for r in range(L):
            u = np.zeros((c, n))
            u[ch, L * mid + r] = 1.0
            cols.append(forward(net, u) - zero)
    H = np.stack(cols, 1)  # (c_out, c L, output time)
    nz = np.flatnonzero(np.abs(H).sum(axis=(0, 1)) > 0)
    assert nz[0] > 0 and nz[-1] < H.shape[2] - 1
    return hinf_norm(H[:, :, nz[0] : nz[-1] + 1][:, :, ::-1], rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_linear_strided_block_bound_is_its_lifted_hinf_norm(seed, tmp_path):
    """A linear strided block alone: the bound is the lifted H-infinity norm (1e-6), never below the
    unrolled map's norm at a fixed length, which approaches it."""
    rng = np.random.default_rng(300 + seed)
    c = int(rng.integers(1, 4))
    c_out = c + int(rng.integers(0, 2))
    s = Spec(c, None)
    s.lines.append("residual b:")
    causal = seed % 2 == 0
    k = int(rng.integers(1, 4)) if causal else 3 + 2 * (seed % 3 == 1)
    s.conv(rng, c, c_out, k, padding="causal" if causal else k // 2, stride=2, indent="  ")
    if seed % 3 == 0:
        s.bn(rng, c_out, indent="  ")
    if causal:  # (a second conv after a non-causal one would need a window: not exact)
        s.conv(rng, c_out, c_out, int(rng.integers(1, 4)), padding="causal", indent="  ")
    s.lines.append("shortcut")
    if causal or seed % 3 != 1:
        s.conv(rng, c, c_out, 1, padding=0, stride=2, indent="  ")
    else:
        s.conv(rng, c, c_out, 3, padding=1, stride=2, indent="  ")
    if seed % 3 == 2:
        s.bn(rng, c_out, indent="  ")
    s.lines.append("end")
    net = s.load(tmp_path)
    ref = _lifted_hinf(net, c, 2)
    got = certified(net)
    fixed = spectral_norm(unroll_graph(net, 24).out.toarray())
    assert fixed <= ref * (1 + 1e-9)
    assert got >= ref * (1 - 1e-9), (got, ref)
    assert got <= ref * (1 + 1e-6), (got, ref)


def _sound(seed: int, tmp_path, **kw) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    net = random_strided_residual(rng, tmp_path, **kw)
    assert any(s.block_in > 1 for s in lower(net).systems if s.kind == "block")
    return sandwiched(net, rng, min(naive(net), naive_hinf(net)), seed)


@pytest.mark.parametrize("seed", range(10))
def test_strided_conv_shortcut_lower_le_bound_le_naive(seed, tmp_path):
    _sound(seed, tmp_path)


@pytest.mark.parametrize("seed,pool", [(s, p) for s in range(3) for p in ("avg", "max")])
def test_pooled_shortcut_lower_le_bound_le_naive(seed, pool, tmp_path):
    _sound(50 + seed, tmp_path, pool=pool)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 40))
def test_strided_blocks_sound_many(seed, tmp_path):
    _sound(seed, tmp_path, pool=(None, "avg", "max")[seed % 3])


def test_forward_jacobian_of_a_strided_block_by_finite_differences(tmp_path):
    rng = np.random.default_rng(8)
    net = random_strided_residual(rng, tmp_path, act="tanh", pool="max")
    x = rng.normal(size=(net.input_shape.channels, net.input_shape.length))
    J = jacobian(net, x)
    h = 1e-6
    for i in rng.choice(x.size, 5, replace=False):
        dx = np.zeros(x.size)
        dx[i] = h
        fd = (forward(net, x + dx.reshape(x.shape)) - forward(net, x - dx.reshape(x.shape))).ravel() / (2 * h)
        assert np.allclose(J[:, i], fd, atol=1e-5)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_unrolled_graph_of_a_strided_block_is_the_block(name, tmp_path):
    """The unrolled graph of a strided block (a max pool as ReLUs, m_j = m_(j-1) + relu(x_j - m_(j-1))) has
    the network's forward pass (no biases: ReLU activations only)."""
    rng = np.random.default_rng(4)
    lines, c, n = BLOCKS[name]
    net = _spec_block(rng, lines, c, n).load(tmp_path)
    g = unroll_graph(net)
    assert ("maxpool" in name) == any(".max" in U.name for U in g.hidden)
    for _ in range(3):
        x = rng.normal(size=(c, n))
        z = x.ravel()
        for U in g.hidden:
            assert U.slope == (0.0, 1.0)
            z = np.concatenate([z, np.maximum(U.matrix @ z, 0.0)])
        np.testing.assert_allclose(g.out @ z, forward(net, x).ravel(), rtol=1e-12, atol=1e-12)


def test_lipsdp_on_strided_residual_nets(tmp_path):
    """LipSDP on the unrolled graph of strided nets (conv, average and max pool shortcuts):
    lower <= LipSDP-Neuron <= naive, and the dissipative bound is not below LipSDP-Neuron by more than the
    solver's tolerance (LipSDP-Neuron on the whole unrolled graph is the tighter relaxation)."""
    from lipdsl.baselines.lipsdp import lipsdp

    for seed, pool in ((1, None), (2, "avg"), (3, "max"), (5, "max")):
        rng = np.random.default_rng(seed)
        net = random_strided_residual(rng, tmp_path, n=12, pool=pool)
        lo = jacobian_lower(net, rng)
        neuron = lipsdp(net).bound
        assert lo <= neuron * (1 + 1e-7) <= naive(net) * (1 + 1e-6), (seed, lo, neuron)
        assert neuron <= certified(net) * (1 + 1e-5), seed


def test_problem_size_of_strided_blocks(tmp_path):
    """The size model counts a strided block's lifted input and activations (within a factor of 2)."""
    from lipdsl.pipeline import lowered_size, problem_size

    for seed in range(6):
        pool = (None, "avg", "max")[seed % 3]
        net = random_strided_residual(np.random.default_rng(seed), tmp_path, pool=pool)
        estimate, lowered = problem_size(net).variables, lowered_size(lower(net)).variables
        assert 0.5 * lowered <= estimate <= 2 * lowered, (seed, estimate, lowered)


def test_frequency_form_of_a_strided_block(tmp_path):
    """``--frequencies``: a lifted block is an LTI system like any other (40 states, 12 lifted inputs):
    gridded, the bound certified and within 5 % of the exact SDP's."""
    rng = np.random.default_rng(9)
    s = Spec(2, 24)
    s.conv(rng, 2, 4, 3, padding="causal")
    s.lines += ["relu", "residual b:"]
    s.conv(rng, 4, 4, 5, padding=2, stride=2, indent="  ")
    s.lines.append("  relu")
    s.conv(rng, 4, 4, 5, padding="same", indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 4, 4, 1, padding=0, stride=2, indent="  ")
    s.lines += ["end", "relu", "global_avgpool", f"dense 4 -> 2, weight {s.key(rng.normal(size=(2, 4)))}"]
    net = s.load(tmp_path)
    sdp = build_sdp(lower(net), frequencies=33)
    assert [v.system for v in sdp.storage] == ["b+relu3"]  # the lifted block: gridded, its P recovered
    exact = certified(net)
    gridded = certified(net, frequencies=33)
    assert exact * (1 - 1e-6) <= gridded <= exact * 1.05, (exact, gridded, [v.system for v in sdp.storage])


def test_certificate_of_a_linear_strided_block_verifies(tmp_path):
    """A strided block without internal activations exports a certificate, and the independent checker
    proves it (float and exact): its input weight is X (x) I_2 (System.block_in), as in the solve."""
    from lipdsl.app.cli import main

    rng = np.random.default_rng(2)
    s = Spec(2, 16)
    s.conv(rng, 2, 3, 3, padding="causal")
    s.lines += ["relu", "residual b:"]
    s.conv(rng, 3, 3, 3, padding=1, stride=2, indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 3, 3, 1, padding=0, stride=2, indent="  ")
    s.lines += ["end", "relu", "flatten", f"dense 24 -> 2, weight {s.key(rng.normal(size=(2, 24)))}"]
    s.load(tmp_path)
    spec, cert = str(tmp_path / "net.lip"), str(tmp_path / "cert.json")
    assert main(["solve", spec, "--certificate", cert]) == 0
    assert main(["verify", spec, cert]) == 0
    assert main(["verify", spec, cert, "--exact"]) == 0

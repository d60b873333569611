"""Batch-norm scales in the checker: the proved relative bound ``|s*/s - 1| <= delta`` (and its failure for a
wrong scale), and ``tau`` bounding how far the LMI moves when the scales take any value within it."""

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from nets import Spec

from lipdsl.certify.batchnorm import DELTAS, ScaleCover, scale_delta, scale_fails
from lipdsl.certify.exact import backend
from lipdsl.certify.realization import exact_realization
from lipdsl.certify.realization_block import _registers, block_taps, exact_block_realization
from lipdsl.certify.verify_block import scale_tau
from lipdsl.certify.verify_exact import _exact_lmi
from lipdsl.certify.verify_links import Link, internal_slopes, slope_bounds
from lipdsl.lang import typed
from lipdsl.model import lowered
from lipdsl.model.lower import lower


def _bn(rng, c: int, scale=None) -> typed.BatchNorm:
    w = rng.normal(size=c) * 10.0 ** rng.uniform(-3, 3, c)
    w[0] = 0.0  # (a zero weight: s = 0 exactly)
    v = 10.0 ** rng.uniform(-6, 4, c)
    v[1] = 0.0  # (running_var 0: eps alone)
    eps = float(rng.choice([1e-5, 1e-3, 0.1]))
    s = typed.batchnorm_scale(w, v, eps) if scale is None else scale
    shape = typed.Shape(c, 8)
    return typed.BatchNorm("bn", None, c, s, np.zeros(c), eps, shape, shape, w, v)


@pytest.mark.parametrize("seed", range(5))
def test_the_double_scale_is_within_2_to_the_minus_50(seed):
    bn = _bn(np.random.default_rng(seed), 200)
    assert scale_fails(bn, DELTAS[0]) == -1
    assert scale_delta(bn) == Fraction(1, 2**50)


def test_a_wrong_scale_is_not_within_the_bound():
    rng = np.random.default_rng(7)
    bn = _bn(rng, 20)
    wrong = bn.scale.copy()
    wrong[5] *= 1 + 1e-10  # 2^-33.2 relative: 2^-30 holds, 2^-35 does not
    bad = replace(bn, scale=wrong)
    assert scale_fails(bad, DELTAS[0]) == 5
    assert scale_fails(bad, Fraction(1, 2**35)) == 5
    assert scale_fails(bad, Fraction(1, 2**30)) == -1
    assert scale_delta(bad) == Fraction(1, 2**30)
    flipped = bn.scale.copy()
    flipped[3] = -flipped[3]  # the wrong sign: no delta < 1 holds
    assert scale_delta(replace(bn, scale=flipped)) is None
    nonzero = bn.scale.copy()
    nonzero[0] = 1e-300  # weight 0 needs scale 0
    assert scale_fails(replace(bn, scale=nonzero), DELTAS[-1]) == 0


def test_a_scale_without_raw_parameters_defines_the_layer():
    bn = replace(_bn(np.random.default_rng(1), 4), weight=None, running_var=None)
    assert scale_delta(bn) == 0 and scale_fails(bn, Fraction(0)) == -1


# --------------------------------------------------------------------------- tau bounds the LMI's change
def _seq(tmp_path, rng):
    s = Spec(2, 10)
    s.conv(rng, 2, 3, 3, padding="causal")
    s.bn(rng, 3)
    s.lines.append("tanh")
    s.lines += ["global_avgpool", f"dense 3 -> 2, weight {s.key(rng.normal(size=(2, 3)))}"]
    return s.load(tmp_path)


def _block(tmp_path, rng):
    s = Spec(2, 10)
    s.lines.append("residual b:")
    s.conv(rng, 2, 3, 2, padding="causal", indent="  ")
    s.bn(rng, 3, indent="  ")
    s.lines.append("  relu")
    s.bn(rng, 3, indent="  ")
    s.conv(rng, 3, 3, 2, padding="causal", indent="  ")
    s.lines += ["shortcut"]
    s.conv(rng, 2, 3, 1, padding=0, indent="  ")
    s.bn(rng, 3, indent="  ")
    s.lines += ["end", "leaky_relu(1/10)", "global_avgpool",
                f"dense 3 -> 2, weight {s.key(rng.normal(size=(2, 3)))}"]
    return s.load(tmp_path)


def _moved(layers, rng, delta):
    """The layers with every batch norm's scale times ``1 +- delta`` (a random sign per channel)."""
    out = []
    for layer in layers:
        if isinstance(layer, typed.BatchNorm):
            r = 1 + delta * rng.choice([-1.0, 1.0], layer.channels)
            layer = replace(layer, scale=layer.scale * r, weight=None, running_var=None)
        elif isinstance(layer, typed.Residual):
            layer = replace(layer, main=tuple(_moved(layer.main, rng, delta)),
                            shortcut=tuple(_moved(layer.shortcut, rng, delta)))
        out.append(layer)
    return out


@pytest.mark.parametrize("kind", ["sequential", "block"])
def test_tau_bounds_the_lmi_change_for_any_scales_within_delta(tmp_path, kind):
    rng = np.random.default_rng(3)
    net = (_seq if kind == "sequential" else _block)(tmp_path, rng)
    low = lower(net, scale=False)
    i, sys = next((i, s) for i, s in enumerate(low.steps) if isinstance(s, lowered.System))
    if kind == "block":
        rebuilt = exact_block_realization(sys, net)
        mats, cover = rebuilt.mats, rebuilt.cover
        inner = tuple(rng.uniform(0.1, 2.0, a.n) for a in sys.internal)
        inner_q, inner_f = internal_slopes(sys, net, rebuilt.widened)
    else:
        mats, cover = exact_realization(sys, low, net, i)
        inner, inner_q, inner_f = (), (), ()
    assert cover is not None and cover.delta == Fraction(1, 2**50)
    delta = 1e-3  # a visible change: the bound is the same formula at any delta
    cover = ScaleCover(cover.layers, Fraction(delta), cover.count, cover.C_abs, cover.D_abs)
    nx = sys.ss.nx
    G = rng.normal(size=(nx, nx))
    P = G @ G.T
    slopes = slope_bounds(sys, net)
    n_out = sys.n_out
    H = rng.normal(size=(n_out, n_out))
    X_out = H @ H.T
    link = Link(sys, P, rng.uniform(0.1, 2.0, n_out), ("rho",), ("X", sys.name, 1), False, True,
                slopes[0], slopes[1], None, mats, None, inner, inner_q, inner_f, cover)
    be = backend("flint")
    X_in = be.mat(2.0 * np.eye(sys.n_in))

    def lmi(m):
        M = _exact_lmi(be, replace(link, mats=m), X_in, be.mat(X_out))
        return np.array([[float(v) for v in row] for row in be.rows(M)])

    M0 = lmi(mats)
    tau_q = scale_tau(link, np.abs(X_out), exact=True)
    tau_f = scale_tau(link, np.abs(X_out), exact=False)
    assert 0 < tau_q <= tau_f * (1 + 1e-9)
    worst = 0.0
    for _ in range(20):
        moved = replace(net, layers=tuple(_moved(net.layers, rng, delta)))
        if kind == "block":
            block = moved.layers[0]
            h = block_taps(block, sys, set())
            m = (mats[0], mats[1], _registers(h, mats[0], mats[1], sys.ss.ny), h[0])
        else:
            m = exact_realization(sys, low, moved, i)[0]
        worst = max(worst, float(np.linalg.norm(lmi(m) - M0, 2)))
    assert 0 < worst <= tau_q
    assert tau_q < 1000 * worst  # (and not uselessly loose)

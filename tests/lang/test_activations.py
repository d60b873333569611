"""The activation table (lipdsl.lang.activations): slope bounds hold and are tight, functions and derivatives
agree, every consumer (check, importer, forward) reads the same table."""

import math

import mpmath as mp
import numpy as np
import pytest

from lipdsl.lang import activations
from lipdsl.lang.activations import ACTIVATIONS, functions, slope

PARAMS = {"leaky_relu": 0.1, "elu": 1.5}
# step 1e-5 where the extreme slopes of the smooth functions lie, coarser out to +-60 (where the sectors of
# tanh, sigmoid, elu, softplus are approached), 1e-9 next to the kinks (0, +-1, +-3)
GRID = np.unique(np.concatenate(
    [np.linspace(-60.0, -12.0, 4801), np.linspace(-12.0, 12.0, 2_400_001), np.linspace(12.0, 60.0, 4801)]
    + [k + np.linspace(-1e-5, 1e-5, 20_001) for k in (-3.0, -1.0, 0.0, 1.0, 3.0)]))
GRID = GRID[np.concatenate([[True], np.diff(GRID) > 5e-10])]  # no near-duplicates from the merged grids


@pytest.mark.parametrize("name", sorted({a.name for a in ACTIVATIONS.values()}))
def test_bounds_hold_and_are_tight_on_a_dense_grid(name):
    """Every difference quotient of neighbouring grid points (step 1e-5) and of far-apart random pairs lies
    in [alpha, beta]; the grid's extreme quotients come within 1e-6 of alpha and beta."""
    p = PARAMS.get(name)
    alpha, beta = slope(name, p)
    phi, _ = functions(name, p)
    y = phi(GRID)
    q = np.diff(y) / np.diff(GRID)
    # the quotients' own rounding: |y| eps over the step (next to x = 3, step 1e-9: about 1e-6)
    tol = 4e-16 * (np.abs(y[1:]) + np.abs(y[:-1]) + np.abs(GRID[1:])) / np.diff(GRID) + 1e-12
    assert np.all(q >= alpha - tol) and np.all(q <= beta + tol)
    assert q.min() - alpha <= 1e-6 and beta - q.max() <= 1e-6
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-30, 30, 100_000), rng.uniform(-30, 30, 100_000)
    keep = np.abs(a - b) > 1e-3
    qq = (phi(a[keep]) - phi(b[keep])) / (a[keep] - b[keep])
    assert qq.min() >= alpha - 1e-9 and qq.max() <= beta + 1e-9


@pytest.mark.parametrize("name", sorted({a.name for a in ACTIVATIONS.values()}))
def test_derivative_matches_finite_differences(name):
    p = PARAMS.get(name)
    phi, dphi = functions(name, p)
    z = np.linspace(-8, 8, 1601) + 1e-3  # away from kinks at 0, +-1, +-3
    h = 1e-6
    fd = (phi(z + h) - phi(z - h)) / (2 * h)
    np.testing.assert_allclose(dphi(z), fd, atol=1e-6)


def _extreme_slopes(f, starts):
    mp.mp.dps = 50
    d1 = lambda x: mp.diff(f, x)  # noqa: E731
    d2 = lambda x: mp.diff(f, x, 2)  # noqa: E731
    values = [d1(mp.findroot(d2, x0)) for x0 in starts]
    return min(values), max(values)


SMOOTH = {
    "silu": (lambda x: x / (1 + mp.e ** (-x)), (-2.4, 2.4)),
    "gelu": (lambda x: x * (1 + mp.erf(x / mp.sqrt(2))) / 2, (-1.4, 1.4)),
    "gelu_tanh": (lambda x: x * (1 + mp.tanh(mp.sqrt(2 / mp.pi) * (x + mp.mpf("0.044715") * x**3))) / 2,
                  (-1.4, 1.4)),
    "mish": (lambda x: x * mp.tanh(mp.log1p(mp.e**x)), (-2.3, 1.5)),
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_constants_bracket_the_50_digit_extremes(name):
    """alpha <= min phi' and beta >= max phi' (computed at 50 digits where phi'' = 0), within 1e-15."""
    f, starts = SMOOTH[name]
    lo, hi = _extreme_slopes(f, starts)
    alpha, beta = slope(name)
    assert mp.mpf(alpha) <= lo and mp.mpf(beta) >= hi
    assert float(lo - alpha) < 1e-15 and float(beta - hi) < 1e-15


def test_gelu_closed_form_is_the_table_value():
    import sympy

    a, b = activations.slope_exact("gelu")
    assert float(b) == pytest.approx(slope("gelu")[1], abs=1e-15)
    assert sympy.simplify(a + b - 1) == 0
    assert activations.slope_exact("hardswish") == (sympy.Rational(-1, 2), sympy.Rational(3, 2))


def test_aliases_and_consumers_share_the_table():
    from lipdsl.lang.load import check_source
    from lipdsl.lang.source import Source

    assert ACTIVATIONS["swish"] is ACTIVATIONS["silu"]
    for name in ("relu", "sigmoid", "silu", "gelu", "mish", "hardswish", "swish"):
        net = check_source(Source("<string>", f"input 3\n{name}\n"))
        assert (net.layers[0].alpha, net.layers[0].beta) == slope(name)
    # (importers write activation names into a spec that check reads: they take the slopes from here too)
    leaky = check_source(Source("<string>", "input 3\nleaky_relu(0.2)\n")).layers[0]
    assert (leaky.alpha, leaky.beta) == slope("leaky_relu", 0.2) == (0.2, 1.0)


@pytest.mark.solver
@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_tanh", "mish", "hardswish"])
def test_new_activations_are_solved_and_sandwiched(name):
    """A small conv net with each new activation: certified, above the empirical lower bound (which needs
    the function), below the naive product."""
    from lipdsl.pipeline import solve_network
    from lipdsl.baselines.unrolled import naive
    from lipdsl.baselines.empirical import lower_bound
    from nets import Builder

    rng = np.random.default_rng(1)
    net = (Builder(2, 12).conv(rng.normal(size=(3, 2, 3)), padding="causal").act(name)
           .flatten().dense(rng.normal(size=(2, 36))).build())
    cert = solve_network(net).certificate
    assert cert.verified
    low = lower_bound(net, starts=4, steps=20, seed=0, time_budget=2.0).value
    assert low <= cert.lipschitz <= naive(net) * (1 + 1e-9)
    assert math.isfinite(low) and low > 0

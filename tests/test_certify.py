"""certify: the repaired point proves a bound that is never below the true optimum; bad points are refused."""

import math
from dataclasses import replace

import numpy as np
import pytest

from lipdsl.certify import _Point, certify
from lipdsl.lower import lower
from lipdsl.sdp import build_sdp
from lipdsl.solve import Solution, solve
from test_sdp import ecg, mixed_net

pytestmark = pytest.mark.solver


@pytest.fixture(scope="module")
def solved():
    sdp = build_sdp(lower(ecg()))
    return sdp, solve(sdp)


def test_certified_bound_passes(solved):
    sdp, sol = solved
    cert = certify(sdp, sol)
    assert cert.verified and all(c.ok for c in cert.checks)
    assert cert.lipschitz >= cert.lipschitz_solver
    assert cert.inflation < 1e-7


def test_lowered_rho_is_not_accepted_as_is(solved):
    sdp, sol = solved
    x = sol.x.copy()
    x[sdp.rho.offset] *= 1 - 1e-3
    point = _Point(sdp, x)
    assert np.linalg.eigvalsh(point.matrix(sdp.links[0]))[0] < 0  # the LMI fails at the lowered rho
    cert = certify(sdp, replace(sol, x=x, rho=float(x[sdp.rho.offset])))
    # the repair may only raise rho: the certified bound stays at or above the optimum
    assert cert.verified and cert.lipschitz >= math.sqrt(sol.rho) * sdp.factor * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_any_point_certifies_only_upper_bounds(seed, solved):
    sdp, sol = solved
    rng = np.random.default_rng(seed)
    x = sol.x + rng.normal(scale=1e-2, size=sol.x.shape) * np.abs(sol.x).max()
    cert = certify(sdp, replace(sol, x=x, rho=float(x[sdp.rho.offset])))
    if cert.verified:
        assert cert.lipschitz >= math.sqrt(sol.rho) * sdp.factor * (1 - 1e-8)


def test_no_point_or_nan_is_not_certified(solved):
    sdp, sol = solved
    assert not certify(sdp, Solution("unknown", None, None, "cvxopt", 0.0)).verified
    x = sol.x.copy()
    x[3] = np.nan
    cert = certify(sdp, replace(sol, x=x))
    assert not cert.verified and cert.lipschitz is None


def test_mixed_constructs_certify():
    sdp = build_sdp(lower(mixed_net(4)))
    cert = certify(sdp, solve(sdp))
    assert cert.verified

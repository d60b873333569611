"""Every shipped spec solves, certifies, and lands inside the bracket its header comment promises."""

import re

import pytest

from lipdsl.pipeline import solve_network
from lipdsl.lang.load import load_network
from repo_paths import SPECS

pytestmark = pytest.mark.solver
LENGTH = {"gap": 64}  # any-length specs with global average pooling: the length their header assumes
#: specs too wide for the exact LMIs, solved as their header says (frequency-domain form, a sound bound also
#: when CVXOPT stops 'unknown'; slow: 0.5-2.5 min of CPU each)
FREQUENCIES = {"resnet1d": 17, "tcn": 17, "tcn_plain": 33, "fcn_32_64_32": 17}
#: specs whose solve takes minutes even in frequency form: measured by bench/wide.py, not here
BENCH_ONLY = {"lipsdp_mnist", "fcn_64_128_64"}


def header_bracket(text: str) -> tuple[float, float]:
    """The ``Expected bound`` of a spec header: 'in [a, b]', 'exactly x' or 'exact ... constant is x'."""
    head = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    m = re.search(r"Expected bound[^:]*: in \[([0-9.e+-]+), ([0-9.e+-]+)\]", head)
    if m:
        return float(m.group(1)), float(m.group(2))
    m = re.search(r"Expected bound[^:]*: (?:exactly|the exact Lipschitz constant is) ([0-9.e+-]+)", head)
    assert m, "every spec's header states its expected bound"
    value = float(m.group(1))
    return value * (1 - 1e-5), value * (1 + 1e-5)


NAMES = sorted(p.stem for p in SPECS.glob("*.lip") if p.stem not in BENCH_ONLY)


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s in FREQUENCIES else s
                                  for s in NAMES])
def test_spec_certifies_inside_its_bracket(spec):
    path = SPECS / f"{spec}.lip"
    lo, hi = header_bracket(path.read_text())
    _, net = load_network(path)
    cert = solve_network(net, min_length=LENGTH.get(spec), frequencies=FREQUENCIES.get(spec),
                         ).certificate
    assert cert.verified
    assert lo <= cert.lipschitz <= hi * (1 + 1e-9), (lo, cert.lipschitz, hi)

"""Every bound the commands and the Python API print rounds to its safe side (``rigorous.format_up`` /
``format_down``): an upper bound one ulp above 2 never prints as 2, nor a lower bound just below 2; JSON keeps
the full floats."""

import io
from types import SimpleNamespace

import numpy as np
from rich.console import Console

from lipdsl.app import api, render, report
from lipdsl.methods import Comparison, MethodResult

UPPER = 2.0000000000000004  # one ulp above 2: ".10g" printed "2", below the certified bound
LOWER = 1.99999999999  # ".10g" printed "2", above the value found


def text_of(table) -> str:
    out = Console(width=200, record=True, file=io.StringIO())
    out.print(table)
    return out.export_text()


def test_api_comparison_prints_upper_bounds_up_and_the_lower_bound_down():
    bound = api.Bound("net", "dissipative", UPPER, True, 0.1)
    lower = api.LowerBound("net", LOWER, np.zeros(2), seed=0, starts=1, evaluations=1, seconds=0.1)
    text = str(api.Comparison("net", (bound,), lower))
    assert "2.000000001" in text and "1.999999999" in text
    assert " 2 " not in text
    assert str(bound).startswith("net (dissipative): L <= 2.000000001")
    assert api.Comparison("net", (bound,), lower).to_json()["bounds"][0]["lipschitz"] == UPPER  # full float


def test_sweep_table_rounds_bound_up_and_lower_down():
    row = {"name": "a", "lipschitz": UPPER, "lower_bound": LOWER, "status": "certified", "iterations": 3,
           "item_seconds": 0.5}
    cells = [c.strip() for c in text_of(report.sweep_table([row], lower=True)).splitlines()[3].split("│")]
    assert cells[1:4] == ["a", "2.000000001", "1.99999"]


def test_lower_command_text_rounds_down():
    result = SimpleNamespace(value=LOWER, witness="jacobian", search="random", starts=1, evaluations=1,
                             length=None, seconds=0.1)
    text = render.lower_bound_text(SimpleNamespace(name="net", any_length=False), result, seed=0)
    assert text.startswith("net: lipschitz >= 1.999999999  (empirical")


def test_compare_table_rounds_bound_up_and_lower_down(capsys):
    net = SimpleNamespace(name="net", input_shape="1x8", output_shape="1")
    c = Comparison(net, (MethodResult("dissipative", UPPER, 0.1, "certified"),), lower=LOWER,
                   lower_detail={"seconds": 0.1, "starts": 1, "seed": 0})
    render.print_comparison(c)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in capsys.readouterr().out.splitlines() if line.startswith("│")}
    assert rows == {"lower (empirical)": "1.99999", "dissipative": "2.00001"}


def test_verify_prints_the_claimed_bound_rounded_up():
    verdict = SimpleNamespace(ok=True, mode="float", network="net", bound_text="2.000000001", claimed=UPPER,
                              valid_for="", length_bound=False, checks=(), rho_raise=0, notes=(),
                              realization_note=None, seconds=0.1)
    out = Console(width=200, record=True, file=io.StringIO())
    report.print_verdict(verdict, out, out)
    assert "<= 2.000000001 (floating point with rounding bounds; claimed 2.000000001)" in out.export_text()

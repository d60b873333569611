"""`lipdsl compare --timeout T` and `lipdsl lower --time-budget T`: one clock per command.

The methods' budget (compare) or the search's (lower) and the command's hard deadline (``within``: the budget
+ ``limits.SEARCH_GRACE`` + 1 s, exit 3 with no table) start together when the command starts, so time spent
reading the spec counts against the budget and the budget always ends ``SEARCH_GRACE`` before the hard
deadline. (They used to be two clocks: the budget started after the spec was parsed, and a slow parse pushed
its end past the hard deadline, which killed the command: exit 3, no table.)

The slow steps are made slow deterministically (a sleep in ``load_network``, a method that runs until its
deadline), not by loading the machine, and ``SEARCH_GRACE`` is shortened to keep the tests short: a parse
longer than ``SEARCH_GRACE + 1`` s is what exposed the two clocks.

Also: `lipdsl compare` on networks whose bound needs no SDP reports the closed-form bound as `solve` does.
"""

import json
import time

import pytest
from click.testing import CliRunner

import lipdsl.baselines.empirical
import lipdsl.lang.load
import lipdsl.methods
from lipdsl import limits
from lipdsl.app.cli import cli
from lipdsl.rigorous import format_up
from nets import CLOSED_FORM_SPECS, closed_form_spec
from repo_paths import SPECS

ECG = str(SPECS / "ecg.lip")
TIMEOUT = 3.0  # --timeout / --time-budget
PARSE = 2.0  # seconds reading the spec takes
GRACE = 0.5  # limits.SEARCH_GRACE: the hard deadline, at TIMEOUT + GRACE + 1 s, is before TIMEOUT + PARSE


@pytest.fixture
def slow_parse(monkeypatch):
    """Reading the spec takes ``PARSE`` s; the hard deadline comes ``GRACE`` s after the budget."""
    monkeypatch.setattr(limits, "SEARCH_GRACE", GRACE)
    real = lipdsl.lang.load.load_network

    def load_network(*args, **kwargs):
        time.sleep(PARSE)
        return real(*args, **kwargs)

    monkeypatch.setattr(lipdsl.lang.load, "load_network", load_network)


def run(*args):
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("as_json", [True, False])
def test_compare_budget_counts_the_parse_and_the_table_is_printed(slow_parse, monkeypatch, as_json):
    """naive-hinf (cheap, run first) finishes in the second left after the parse; lipsdp-neuron (here: a
    method that runs until its deadline, in the background pool on two cores) is reported as failed at T s
    from the command's start, the lower bound as not run, and the table comes before the hard deadline."""
    real = lipdsl.methods.run_method
    seen = []

    def run_method(net, method, **kwargs):
        if method != "lipsdp-neuron":
            return real(net, method, **kwargs)
        seen.append(limits.current())
        end = time.monotonic() + 60
        while time.monotonic() < end:
            limits.checkpoint(method)
            time.sleep(0.02)
        raise AssertionError("no deadline reached the slow method")

    monkeypatch.setattr(lipdsl.methods, "run_method", run_method)
    t0 = time.monotonic()
    res, seconds = run("compare", "--methods", "naive-hinf,lipsdp-neuron", "--lower-starts", "2",
                       "--timeout", str(TIMEOUT), *(["--json"] if as_json else []), ECG)
    assert res.exit_code == 0, res.output  # (before: exit 3 at T + GRACE + 1 s, "lipdsl compare did not ...")
    assert seconds < TIMEOUT + GRACE + 1  # (the documented bound is T + SEARCH_GRACE)
    budget = seen[0]  # the deadline the methods ran under: T s from the command's start, not the parse's end
    assert budget.seconds == TIMEOUT and budget.started - t0 < PARSE / 2
    note = f"did not finish within the time limit of {TIMEOUT:g} s"
    if as_json:
        out = json.loads(res.stdout)
        by = {m["method"]: m for m in out["methods"]}
        assert by["naive-hinf"]["status"] == "exact norm" and by["naive-hinf"]["bound"] > 0
        assert by["lipsdp-neuron"]["status"] == "failed" and by["lipsdp-neuron"]["bound"] is None
        assert note in by["lipsdp-neuron"]["note"]
        # (its time is what it ran until the limit, after the parse: it was 0.0)
        assert TIMEOUT - PARSE - 0.5 < by["lipsdp-neuron"]["seconds"] <= TIMEOUT
        assert f"the time limit of {TIMEOUT:g} s has passed" in out["lower_bound_error"]
    else:
        assert "Lipschitz bounds" in res.stdout and "exact norm" in res.stdout
        assert f"lipsdp-neuron: failed: lipsdp-neuron {note}" in res.stdout
        assert "lower: not run" in res.stdout


def test_lower_budget_counts_the_parse(slow_parse, monkeypatch):
    """The search is given what is left of --time-budget after the parse (here it uses all of it), and the
    report comes before the hard deadline."""
    real = lipdsl.baselines.empirical.lower_bound
    given = []

    def lower_bound(net, *, time_budget, **kwargs):
        given.append(time_budget)
        time.sleep(time_budget)  # a search that uses its whole budget
        return real(net, time_budget=0.0, **kwargs)  # (then one start: a real result to report)

    monkeypatch.setattr(lipdsl.baselines.empirical, "lower_bound", lower_bound)
    res, seconds = run("lower", "--time-budget", str(TIMEOUT), "--starts", "2", "--json", ECG)
    assert res.exit_code == 0, res.output  # (before: exit 3, "the lower bound's search did not finish ...")
    assert json.loads(res.stdout)["lower_bound"] > 0
    assert given and TIMEOUT - PARSE - 0.5 < given[0] <= TIMEOUT - PARSE
    assert seconds < TIMEOUT + GRACE + 1


@pytest.mark.parametrize("name", sorted(CLOSED_FORM_SPECS))
def test_compare_reports_a_closed_form_bound_as_solve_does(name, tmp_path):
    """Zero weights, a batch norm of weight [0, 0], a residual block whose branches cancel: the dissipative
    row is solve's bound, certified, with solve's closed-form note (it was a traceback, ``max() arg is an
    empty sequence``), in the JSON and in the text report, and the other methods still run."""
    spec = str(closed_form_spec(tmp_path, name))
    solved = json.loads(run("solve", "--json", spec)[0].stdout)
    (why,) = solved["notes"]
    assert solved["claimed_status"] == "closed-form" and why.startswith("closed form, no SDP: ")
    res, _ = run("compare", "--json", "--lower-starts", "0", spec)
    assert res.exit_code == 0, res.output
    rows = {m["method"]: m for m in json.loads(res.stdout)["methods"]}
    d = rows["dissipative"]
    assert (d["status"], d["bound"], d["lmi_rows"]) == ("certified", solved["lipschitz"], None)
    assert d["note"] == f"valid for inputs of shape 2x8; {why}"
    assert all(r["bound"] is not None for r in rows.values()), rows
    text, _ = run("compare", "--lower-starts", "0", "--methods", "dissipative,naive-hinf", spec)
    assert text.exit_code == 0, text.output
    assert f"dissipative: valid for inputs of shape 2x8; {why}" in text.stdout
    row = next(line for line in text.stdout.splitlines() if "│ dissipative " in line).split("│")
    assert row[2].strip() == format_up(solved["lipschitz"], 6) and row[-2].strip() == "certified"


CONV = ("network t\ninput 2 x 8\nconv1d c: 2 -> 2, kernel 3, {opt}, "
        "weight [[[0.5,0.2,-0.1],[0.1,-0.3,0.2]],[[0.0,0.4,0.1],[0.2,0.1,-0.5]]]\n")


@pytest.mark.parametrize("opt", ["dilation 10^10, padding causal", "dilation 10^30, padding causal",
                                 "stride 10^19", "stride 10^30"])
def test_compare_with_huge_dilations_and_strides_reports_each_row(tmp_path, opt):
    """The fuzzer's tracebacks (the lower bound's np.pad; an OverflowError unrolling a stride or dilation
    beyond int64): each method gets its row and a failing one says why, as solve would. The unrolled
    baselines keep only the taps that land on the input, so they give the exact map's bounds."""
    spec = tmp_path / "big.lip"
    spec.write_text(CONV.format(opt=opt))
    res = CliRunner().invoke(cli, ["compare", "--json", "--lower-starts", "2", "--time-budget", "2",
                                   str(spec)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    rows = {m["method"]: m for m in out["methods"]}
    assert rows["naive-hinf"]["status"] == "exact norm"
    for m in ("naive", "lipsdp-neuron", "lipsdp-layer"):
        assert rows[m]["bound"] is not None, rows[m]
    if "dilation" in opt:
        assert rows["dissipative"]["status"] == "failed" and "of memory" in rows["dissipative"]["note"]
        assert out["lower_bound"] is None
        assert "the padded input of conv1d 'c' (2 x 2" in out["lower_bound_error"]
        assert rows["naive"]["bound"] == pytest.approx(0.5541381265149109, rel=1e-9)  # the last tap alone
    else:
        assert rows["dissipative"]["status"] == "certified" and out["lower_bound"]["value"] > 0
        assert not out["ordering_violations"]

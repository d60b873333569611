"""`lipdsl compare`, `solve --method`: known optima (LipSDP's random net), orderings, refusals, JSON."""
import json

import numpy as np
import pytest
from lipdsl.methods import MAXPOOL_REFUSAL, METHODS, check_ordering, compare, run_method
from lipdsl.lang.load import load_network

from nets import CLOSED_FORM_SPECS, Builder, closed_form_spec, deep_tcn_spec
from repo_paths import SPECS

RANDOM = str(SPECS / "lipsdp_random.lip")


@pytest.fixture(scope="module")
def random_comparison():
    _, net = load_network(RANDOM)
    return compare(net, lower_starts=4, time_budget=5)


@pytest.mark.solver
def test_lipsdp_random_known_values_and_ordering(random_comparison):
    c = random_comparison
    assert c.get("naive").bound == pytest.approx(43.3056, rel=1e-4)
    assert c.get("naive-hinf").bound == pytest.approx(43.3056, rel=1e-4)  # dense only: the same product
    assert c.get("lipsdp-neuron").bound == pytest.approx(36.4822, rel=1e-4)
    assert c.get("lipsdp-layer").bound == pytest.approx(39.839, rel=1e-4)
    assert c.get("dissipative").bound == pytest.approx(36.48, rel=1e-3)
    assert [c.get(m).status for m in ("dissipative", "lipsdp-neuron", "naive")] == \
        ["certified", "verified LMI", "exact norm"]
    # lower <= neuron <= dissipative <= naive-hinf (relative rounding of the two verified LMIs allowed)
    b = {m: c.get(m).bound for m in ("lipsdp-neuron", "dissipative", "naive-hinf")}
    assert c.lower <= b["lipsdp-neuron"] * (1 + 1e-9)
    assert b["lipsdp-neuron"] <= b["dissipative"] * (1 + 1e-6) and b["dissipative"] <= b["naive-hinf"]
    assert check_ordering(c) == []


@pytest.mark.solver
def test_lipsdp_in_threads_gives_the_sequential_results():
    """LipSDP-Neuron and -Layer run in two threads by default; one worker gives the same numbers and order."""
    _, net = load_network(RANDOM)
    seq = compare(net, lower_starts=0, workers=1)
    labels = []
    par = compare(net, lower_starts=0, workers=2, progress=labels.append)
    assert [r.method for r in par.results] == [r.method for r in seq.results] == list(METHODS)
    for a, b in zip(seq.results, par.results):
        assert (a.bound, a.status) == (b.bound, b.status), a.method
    assert any("in the background" in label for label in labels)


@pytest.mark.solver
def test_ordering_on_a_small_cnn():
    """A conv net unrolled for N = 8: lower <= neuron <= layer <= naive and neuron <= dissipative <= hinf."""
    rng = np.random.default_rng(3)
    net = (Builder(1, 8).conv(rng.standard_normal((2, 1, 3)), padding="causal").act("relu")
           .conv(rng.standard_normal((3, 2, 3)), padding="causal").act("relu").pool("avg", 2).flatten()
           .dense(rng.standard_normal((2, 12))).build())
    c = compare(net, lower_starts=4, time_budget=5)
    assert all(r.ok for r in c.results), c.results
    assert check_ordering(c) == []
    assert c.lower <= c.get("lipsdp-neuron").bound <= c.get("lipsdp-layer").bound * (1 + 1e-6)


def test_maxpool_refused_for_lipsdp_with_no_number():
    rng = np.random.default_rng(0)
    net = (Builder(1, 8).conv(rng.standard_normal((2, 1, 3)), padding="causal").act("relu").pool("max", 2)
           .flatten().dense(rng.standard_normal((2, 8))).build())
    for m in ("lipsdp-neuron", "lipsdp-layer"):
        r = run_method(net, m)
        assert r.bound is None and f"{r.status}: {r.note}" == MAXPOOL_REFUSAL
    assert run_method(net, "naive").ok


def test_size_guard_skips_large_lipsdp():
    rng = np.random.default_rng(0)
    net = (Builder(1, 150).conv(rng.standard_normal((4, 1, 3)), padding="causal").act("relu")
           .conv(rng.standard_normal((4, 4, 3)), padding="causal").act("relu").flatten()
           .dense(rng.standard_normal((2, 600))).build())
    r = run_method(net, "lipsdp-neuron")
    assert r.status == "skipped" and r.bound is None and r.lmi_rows == 1350 and "--force" in r.note


@pytest.mark.parametrize("name", sorted(CLOSED_FORM_SPECS))
def test_dissipative_closed_form_bound_is_solves_with_its_note(name, tmp_path):
    """A bound that needs no SDP (zero weights, a zero merged map): the dissipative method's row is the
    pipeline's bound, certified, with its closed-form reason in the note and no LMI rows (run_method took
    the max of the certificate's LMI sizes: a ValueError on an empty list, which crashed compare and
    sweep)."""
    from lipdsl.pipeline import solve_network

    _, net = load_network(closed_form_spec(tmp_path, name))
    solved = solve_network(net)
    (why,) = solved.sdp.notes
    assert solved.closed_form and solved.certificate.verified and why.startswith("closed form, no SDP: ")
    r = run_method(net, "dissipative")
    assert (r.status, r.bound, r.lmi_rows) == ("certified", solved.certificate.lipschitz, None)
    assert r.note == f"valid for inputs of shape 2x8; {why}" and r.result.closed_form
    c = compare(net, methods=("dissipative", "naive-hinf"), lower_starts=0)
    assert c.get("dissipative").bound == r.bound and check_ordering(c) == []


@pytest.mark.slow
@pytest.mark.solver
def test_compare_ecg_json_has_lipsdp_bounds(cli):
    """ECG (a 641-row LipSDP LMI, unsplit: its dense layer joins every clique): both LipSDP bounds, certified
    and ordered, and LipSDP-Neuron at its optimum (about half a minute on one core with the HKM method)."""
    res = cli("compare", "--json", "--lower-starts", "2", "--time-budget", "3", str(SPECS / "ecg.lip"))
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    b = {m["method"]: m for m in data["methods"]}
    assert all(b[m]["status"] == "verified LMI" for m in ("lipsdp-neuron", "lipsdp-layer"))
    assert b["lipsdp-neuron"]["bound"] <= b["lipsdp-layer"]["bound"] <= b["naive"]["bound"]
    assert b["lipsdp-neuron"]["bound"] <= b["dissipative"]["bound"] and data["ordering_violations"] == []
    assert b["lipsdp-neuron"]["bound"] == pytest.approx(99.32564, rel=1e-6)  # CVXOPT's and SDPA's optimum
    assert b["lipsdp-layer"]["bound"] == pytest.approx(112.96692, rel=1e-6)


def test_compare_cli_text_refusal_and_table(cli):
    res = cli("compare", "--lower-starts", "0", "--methods", "naive,lipsdp-neuron,naive-hinf",
              str(SPECS / "features.lip"))
    assert res.exit_code == 0, res.output
    assert "lipsdp-neuron: refused: max pooling is not slope-restricted" in res.output
    assert "naive-hinf" in res.output and "exact norm" in res.output


@pytest.mark.solver
def test_compare_cli_json_shape(cli):
    res = cli("compare", "--json", "--lower-starts", "2", "--time-budget", "3", RANDOM)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["network"] == "lipsdp_random" and data["ordering_violations"] == []
    assert [m["method"] for m in data["methods"]] == \
        ["dissipative", "lipsdp-neuron", "lipsdp-layer", "naive", "naive-hinf"]
    assert set(data["methods"][0]) == {"method", "bound", "status", "note", "ratio_lower",
                                       "ratio_dissipative", "seconds", "length", "lmi_rows", "frequencies",
                                       "hinf_product", "above_hinf_product", "warnings"}
    assert all(m["frequencies"] is None and m["warnings"] == [] for m in data["methods"])  # exact SDP
    assert data["methods"][0]["ratio_dissipative"] == 1.0
    assert data["lower_bound"]["value"] == pytest.approx(36.4822, rel=1e-4)


def test_compare_cli_unknown_method_is_a_usage_error(cli):
    res = cli("compare", "--methods", "naive,lipsdp-network", RANDOM)
    assert res.exit_code == 2 and "lipsdp-network" in res.output


@pytest.mark.solver
@pytest.mark.parametrize("method, code, text", [
    ("naive", 0, "43.30557372 (exact norm product)"),
    ("naive-hinf", 0, "(exact norm product)"),
    ("lipsdp-layer", 0, "39.8386"),
    ("lipsdp-neuron", 0, "(verified LMI)"),
])
def test_solve_method_exit_codes(method, code, text, cli):
    res = cli("solve", "--method", method, RANDOM)
    assert res.exit_code == code, res.output
    assert text in res.output


def test_solve_method_refused_exits_3_without_a_number(cli):
    res = cli("solve", "--method", "lipsdp-neuron", "--json", str(SPECS / "features.lip"))
    assert res.exit_code == 3
    data = json.loads(res.output)
    assert data["lipschitz"] is None and data["status"] == "refused"


def test_plot_writes_a_png(tmp_path, cli):
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    res = cli("compare", "--lower-starts", "0", "--methods", "naive,naive-hinf", "--plot", str(out), RANDOM)
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.solver
def test_compare_frequencies_reports_solves_fields_and_warnings(cli, tmp_path, monkeypatch):
    """`compare --frequencies 3` on a deep dilated TCN: the dissipative row carries what `solve
    --frequencies 3 --json` reports (frequencies, hinf_product, above_hinf_product, the same warnings: a
    ~10x repair and a bound above the H-infinity product), in the JSON and as warning lines of the text
    report."""
    import lipdsl.pipeline
    import lipdsl.sdp.build

    monkeypatch.setattr(lipdsl.pipeline, "REFINE_ROUNDS", 0)  # (the grid as given: its repair shows)
    # (its dilated layers' 3 frequencies spread over [0, pi], as before they were gridded on their own period)
    monkeypatch.setattr(lipdsl.sdp.build, "tap_spacing", lambda taps: 1)
    spec = deep_tcn_spec(tmp_path)
    args = ("--frequencies", "3", "--methods", "dissipative,naive-hinf", "--lower-starts", "0", str(spec))
    res = cli("compare", "--json", *args)
    assert res.exit_code == 0, res.output
    rows = {m["method"]: m for m in json.loads(res.output)["methods"]}
    d, hinf = rows["dissipative"], rows["naive-hinf"]
    solved = json.loads(cli("solve", "--json", "--frequencies", "3", str(spec)).output)
    assert d["frequencies"] == solved["frequencies"] == 3
    assert d["bound"] == solved["lipschitz"] and d["hinf_product"] == solved["hinf_product"] == hinf["bound"]
    assert d["above_hinf_product"] is solved["above_hinf_product"] is True
    assert d["warnings"] == solved["warnings"] and len(d["warnings"]) == 2
    assert "repair" in d["warnings"][0] and "--frequencies 5" in d["warnings"][0]
    assert "naive-hinf" in d["warnings"][1] and "frequency form on 3 frequencies" in d["note"]
    assert hinf["frequencies"] is None and hinf["warnings"] == [] and hinf["above_hinf_product"] is None
    text = cli("compare", *args)
    assert text.exit_code == 0, text.output
    lines = [line.strip() for line in text.output.splitlines()]
    warned = [line for line in lines if "warning:" in line]
    assert warned == [f"dissipative: warning: {w}" for w in d["warnings"]]


@pytest.mark.solver
def test_compare_residual_net_has_lipsdp_on_the_unrolled_graph(cli, tmp_path):
    """A residual net (1x1 conv shortcut, batch norm, identity shortcut): LipSDP-Neuron/-Layer run on the
    unrolled graph, verified, and every ordering of ``check_ordering`` holds; the size guard counts the
    graph's rows (the input and every activation)."""
    from nets import Spec

    rng = np.random.default_rng(11)
    s = Spec(1, 12)
    s.lines.append("residual b0:")
    s.conv(rng, 1, 3, 3, padding="same", indent="  ")
    s.bn(rng, 3, indent="  ")
    s.lines.append("  relu")
    s.conv(rng, 3, 3, 3, padding="same", indent="  ")
    s.lines.append("shortcut")
    s.conv(rng, 1, 3, 1, padding=0, indent="  ")
    s.lines += ["end", "relu", "residual b1:"]
    s.conv(rng, 3, 3, 3, padding="causal", indent="  ")
    s.lines += ["  tanh", "end", "global_avgpool", f"dense 3 -> 2, weight {s.key(rng.normal(size=(2, 3)))}"]
    net = s.load(tmp_path)
    res = cli("compare", "--json", "--lower-starts", "2", "--time-budget", "3", str(tmp_path / "net.lip"))
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    b = {m["method"]: m for m in data["methods"]}
    assert all(b[m]["status"] == "verified LMI" for m in ("lipsdp-neuron", "lipsdp-layer"))
    assert data["ordering_violations"] == []
    assert b["lipsdp-neuron"]["lmi_rows"] == 12 + 36 + 36 + 36  # the input, two relus and a tanh of 3 x 12
    r = run_method(net, "lipsdp-neuron", max_rows=100)
    assert r.status == "skipped" and "120 rows" in r.note

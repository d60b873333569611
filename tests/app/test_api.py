"""Python API (lipdsl.app.api): doctests on the shipped specs, cheap `import lipdsl`, load/parse names."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import lipdsl
import lipdsl.lang.weights
import lipdsl.app.api
import lipdsl.pipeline
import lipdsl.sdp.build
from lipdsl import errors as lipdsl_errors
from repo_paths import ROOT



@pytest.mark.solver
@pytest.mark.parametrize("module", [lipdsl.app.api, lipdsl.lang.weights], ids=lambda m: m.__name__)
def test_doctests(module, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples use the shipped specs/
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False, report=True)
    assert result.attempted > 0 and result.failed == 0


def test_import_lipdsl_is_cheap():
    code = (
        "import sys, lipdsl; heavy = [m for m in ('sympy', 'picos', 'scipy', 'lark', 'cvxopt', 'torch', "
        "'onnx') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_load_and_parse_are_functions_and_modules():
    net = lipdsl.load(ROOT / "specs" / "ecg.lip")
    assert isinstance(net, lipdsl.Network) and net.name == "ecg"
    from lipdsl.lang.load import load_network  # the pipeline module is still there

    assert load_network(ROOT / "specs" / "ecg.lip")[1].name == "ecg"
    import lipdsl.lang.parse as parse_module

    assert parse_module.__file__.endswith("parse.py")
    assert lipdsl.parse("input 2\nrelu\n").typed.output_shape.channels == 2
    assert set(lipdsl.__all__) <= set(dir(lipdsl))


def test_result_to_json_without_solver():
    bound = lipdsl.parse("input 2\ndense d: 2 -> 2, weight [[3, 0], [0, 4]]\n").solve("naive")
    assert bound.to_json()["lipschitz"] == pytest.approx(4.0)
    with pytest.raises(lipdsl.errors.LipdslError, match="unknown method"):
        lipdsl.parse("input 2\nrelu\n").solve("magic")


def test_one_method_registry_and_spelling():
    """The API, `solve --method` and `compare --methods` take the same names, and only those."""
    import click

    from lipdsl.app.cli import cli
    from lipdsl.methods import METHODS

    solve_choices = next(p for p in cli.commands["solve"].params if p.name == "method").type
    assert isinstance(solve_choices, click.Choice) and tuple(solve_choices.choices) == METHODS
    net = lipdsl.parse("input 2\ndense d: 2 -> 2, weight [[3, 0], [0, 4]]\n")
    assert net.solve("naive-hinf").lipschitz == pytest.approx(4.0)
    with pytest.raises(lipdsl_errors.LipdslError, match="unknown method 'naive_hinf'") as info:
        net.solve("naive_hinf")
    assert "did you mean 'naive-hinf'" in info.value.hint
# -- issue 17: argument validation ---------------------------------------------------------------------------

def _tiny():
    import lipdsl

    return lipdsl.parse("input 1 x 8\nconv1d c: 1 -> 1, kernel 2, padding causal, weight [[[1, -1]]]\nrelu\n"
                        "flatten\ndense d: 8 -> 1, weight [[1, 1, 1, 1, 1, 1, 1, 1]]\n")


BAD_SOLVE = [{"lift": 0}, {"lift": -1}, {"lift": 2.5}, {"lift": True}, {"lift": "2"},
             {"margin": float("nan")}, {"margin": -1.0}, {"margin": float("inf")}, {"tol": 0.0},
             {"tol": float("nan")},
             {"max_iterations": 0}, {"frequencies": 1}, {"frequencies": 2}, {"frequencies": 4.5},
             {"length": -1}, {"length": 0}, {"length": 2.5}, {"length": "8"}]


@pytest.mark.parametrize("kw", BAD_SOLVE, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_bad_solve_arguments_are_lipdsl_errors(kw):
    from lipdsl.errors import LipdslError

    name = next(iter(kw))
    with pytest.raises(LipdslError, match=name):
        _tiny().solve(**kw)


@pytest.mark.parametrize("kw", [{"starts": 0}, {"starts": -3}, {"starts": 1.5}, {"seed": -1},
                                {"time_budget": float("nan")}, {"time_budget": 0}, {"length": -1}])
def test_bad_lower_bound_arguments_are_lipdsl_errors(kw):
    from lipdsl.errors import LipdslError

    with pytest.raises(LipdslError, match=next(iter(kw))):
        _tiny().lower_bound(**kw)


def test_integral_floats_are_accepted():
    assert _tiny().solve(lift=2.0).verified


@pytest.mark.parametrize("argv, code", [
    (["solve", "specs/ecg.lip", "--solver", "foo"], 2),
    (["solve", "specs/ecg.lip", "--solver", "cvxop"], 2),
    (["compare", "specs/ecg.lip", "--solver", "nope"], 2),
    (["show", "specs/ecg.lip", "--latex"], 2),
    (["show", "specs/ecg.lip", "--length", "5"], 2),
    (["show", "specs/ecg.lip", "--lift", "2"], 2),
])
def test_usage_errors_exit_2(argv, code, capsys):
    from lipdsl.app.cli import main

    assert main(argv) == code
    assert "Traceback" not in capsys.readouterr().err


def test_default_solve_output_puts_the_bound_first_and_the_table_behind_v(capsys):
    from lipdsl.app.cli import main

    assert main(["solve", "specs/ecg.lip"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("Lipschitz upper bound of ecg: ") and lines[0].endswith("(certified)")
    assert "min eig" not in out and "-v for the per-LMI table" in out
    assert all(len(line) <= 200 for line in lines)
    assert any(len(line) > 80 for line in lines)  # piped: not wrapped at 80 columns mid-sentence
    assert main(["solve", "specs/ecg.lip", "-v"]) == 0
    assert "min eig" in capsys.readouterr().out


@pytest.mark.solver
def test_bound_carries_the_frequency_mode_fields_and_warnings(tmp_path, monkeypatch):
    """`load(spec).solve(frequencies=3)` on a deep dilated TCN: the Bound has solve --json's frequencies,
    hinf_product, above_hinf_product and warnings (a ~10x repair, a bound above the H-infinity product) as
    fields, in to_json, repr and str; Network.compare(frequencies=3) prints them; an exact solve has none."""
    from nets import deep_tcn_spec

    monkeypatch.setattr(lipdsl.pipeline, "REFINE_ROUNDS", 0)  # (the grid as given: its repair shows)
    # (its dilated layers' 3 frequencies spread over [0, pi], as before they were gridded on their own period)
    monkeypatch.setattr(lipdsl.sdp.build, "tap_spacing", lambda taps: 1)
    net = lipdsl.load(deep_tcn_spec(tmp_path))
    b = net.solve(frequencies=3)
    assert b.verified and b.frequencies == 3 and b.above_hinf_product is True
    assert b.hinf_product == net.solve("naive-hinf").lipschitz < b.lipschitz
    assert len(b.warnings) == 2 and "repair" in b.warnings[0] and "--frequencies 5" in b.warnings[0]
    assert "naive-hinf" in b.warnings[1]
    for key in ("frequencies", "hinf_product", "above_hinf_product"):  # the one place: solve --json's fields
        assert b.to_json()[key] == b.details[key] == getattr(b, key)
    assert b.to_json()["warnings"] == b.details["warnings"] == list(b.warnings)
    assert "frequencies=3" in repr(b) and repr(b.warnings) in repr(b)
    assert str(b).splitlines()[1:] == [f"  warning: {w}" for w in b.warnings]
    cmp = net.compare(methods=("dissipative", "naive-hinf"), lower=False, frequencies=3)
    assert cmp.bounds[0].warnings == b.warnings and cmp.bounds[1].warnings == ()
    assert sum("warning:" in line for line in str(cmp).splitlines()) == 2
    exact = lipdsl.parse("input 2\ndense d: 2 -> 2, weight [[3, 0], [0, 1]]\nrelu\n").solve()
    assert exact.frequencies is None and exact.warnings == () and exact.above_hinf_product is None
    assert "frequencies" not in repr(exact) and "warning" not in str(exact)


def test_compare_is_the_cli_comparison():
    """``Network.compare`` runs ``lipdsl compare``'s runner with its defaults (every method; 16 starts, 10 s
    of lower-bound search); a LipSDP above the row guard or the memory guard stays in the comparison without a
    bound and with its reason, and ``solve`` on it is a LimitError naming ``force=True`` (it was an
    AttributeError, and compare raised the memory guard's error)."""
    import inspect

    from lipdsl.app.cli import cli
    from lipdsl.methods import METHODS

    params = inspect.signature(lipdsl.Network.compare).parameters
    options = {p.name: p.default for p in cli.commands["compare"].params}
    assert params["methods"].default == METHODS and options["methods"] == ",".join(METHODS)
    assert params["lower_starts"].default == options["lower_starts"] == 16
    assert params["time_budget"].default == options["time_budget"] == 10.0
    net = lipdsl.load("specs/fcn.lip")  # (LipSDP unrolls it to 4,950 rows > 1,000)
    rows = "lipsdp-neuron: the unrolled LMI has 4950 rows"
    with pytest.raises(lipdsl_errors.LimitError, match=rows) as info:
        net.solve("lipsdp-neuron")
    assert "force=True" in info.value.hint
    cmp = net.compare(methods=("naive-hinf", "lipsdp-layer"), lower_starts=2, time_budget=0.5)
    hinf, layer = cmp.bounds
    assert hinf.verified and layer.lipschitz is None and not layer.verified
    assert layer.claimed_status == layer.details["status"] == "skipped"
    assert "4950 rows" in layer.details["note"]
    assert "skipped" in str(cmp).splitlines()[2]
    assert 0 < cmp.lower.value <= hinf.lipschitz and cmp.lower.argmax_input.shape == (1, 150)
    assert cmp.lower.starts == 2
    big = lipdsl.load("specs/tcn.lip").compare(methods=("lipsdp-neuron",), lower=False)
    assert big.lower is None and big.bounds[0].claimed_status == "failed"
    assert "GiB of memory" in big.bounds[0].details["note"]


def test_the_outside_hint_names_the_api_parameter(tmp_path):
    """A weight file outside the spec's directory, from Python: the hint names ``allow_outside=True`` (was:
    the CLI's ``--allow-outside``, which Python has not)."""
    import numpy as np

    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "w.npy", np.eye(2))
    text = 'input 2\ndense a: 2 -> 2, weight "../w.npy"\n'
    (tmp_path / "sub" / "n.lip").write_text(text)
    calls = [lambda: lipdsl.load(tmp_path / "sub" / "n.lip"),
             lambda: lipdsl.parse(text, path=str(tmp_path / "sub" / "n.lip")),
             lambda: lipdsl.verify(tmp_path / "sub" / "n.lip", tmp_path / "no.cert.json")]
    for call in calls:
        with pytest.raises(lipdsl_errors.OutsideError) as info:
            call()
        assert info.value.hint == ("copy the file next to the spec, or pass allow_outside=True if you trust "
                                   "this spec (it may read any file you can)")
    assert lipdsl.load(tmp_path / "sub" / "n.lip", allow_outside=True).typed.layers[0].weight.shape == (2, 2)

"""Python API (lipdsl.network): doctests on the shipped specs, cheap `import lipdsl`, load/parse names."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import pytest

import lipdsl
import lipdsl.importer
import lipdsl.network
from lipdsl import errors as lipdsl_errors

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.solver
@pytest.mark.parametrize("module", [lipdsl.network, lipdsl.importer], ids=lambda m: m.__name__)
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
    from lipdsl.load import load_network  # the pipeline module is still there

    assert load_network(ROOT / "specs" / "ecg.lip")[1].name == "ecg"
    import lipdsl.parse as parse_module

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

    from lipdsl.cli import cli
    from lipdsl.compare import METHODS

    solve_choices = next(p for p in cli.commands["solve"].params if p.name == "method").type
    assert isinstance(solve_choices, click.Choice) and tuple(solve_choices.choices) == METHODS
    net = lipdsl.parse("input 2\ndense d: 2 -> 2, weight [[3, 0], [0, 4]]\n")
    assert net.solve("naive-hinf").lipschitz == pytest.approx(4.0)
    with pytest.raises(lipdsl_errors.LipdslError, match="unknown method 'naive_hinf'") as info:
        net.solve("naive_hinf")
    assert "did you mean 'naive-hinf'" in info.value.hint

"""The CLI's shared option types (lipdsl/app/options.py): what they accept, and their exact texts."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from lipdsl.app.cli import cli
from lipdsl.app.options import Frequencies, WeightRank
from repo_paths import SPECS

ECG = str(SPECS / "ecg.lip")


@pytest.mark.parametrize("make,keywords", [(Frequencies, ("auto", "none")), (WeightRank, ("auto", "full"))])
def test_keywords_and_numbers_are_converted(make, keywords):
    kind = make()
    for word in keywords:
        assert kind.convert(word, None, None) == word
        assert kind.convert(f" {word.upper()} ", None, None) == word
    assert kind.convert(None, None, None) is None
    assert kind.convert("17", None, None) == 17 and kind.convert(17, None, None) == 17


@pytest.mark.parametrize("option,value,message", [
    ("--frequencies", "many", "'many' is not 'auto', 'none' or a whole number of frequencies"),
    ("--frequencies", "3.5", "'3.5' is not 'auto', 'none' or a whole number of frequencies"),
    ("--frequencies", "full", "'full' is not 'auto', 'none' or a whole number of frequencies"),
    ("--frequencies", "2", "2 is too few frequencies (at least 3: 0, pi/2, pi)"),
    ("--frequencies", "-4", "-4 is too few frequencies (at least 3: 0, pi/2, pi)"),
    ("--weight-rank", "low", "'low' is not 'auto', 'full' or a whole number (the subspace's rank)"),
    ("--weight-rank", "none", "'none' is not 'auto', 'full' or a whole number (the subspace's rank)"),
    ("--weight-rank", "0", "0 is not a rank (at least 1; 'full' for full weights)"),
])
def test_bad_values_are_usage_errors_with_their_texts(option, value, message):
    res = CliRunner().invoke(cli, ["solve", option, value, ECG])
    assert res.exit_code == 2 and res.stdout == ""
    assert f"Invalid value for '{option}': {message}" in res.stderr, res.stderr


def test_metavars_in_the_help():  # (click prints a type's name in capitals)
    assert Frequencies().name == "auto|none|K" and WeightRank().name == "auto|full|R"
    out = CliRunner().invoke(cli, ["solve", "--help"], terminal_width=200).output
    assert "--frequencies AUTO|NONE|K" in out and "--weight-rank AUTO|FULL|R" in out
    for command in (["compare"], ["sweep"]):
        out = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200).output
        assert "--frequencies AUTO|NONE|K" in out, command
    with pytest.raises(click.BadParameter, match="2 is too few frequencies"):
        Frequencies().convert("2", None, None)

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


def test_the_outside_hint_names_allow_outside_only_where_the_command_has_it(tmp_path, monkeypatch):
    """A weight file outside the spec's directory: ``check`` (which has ``--allow-outside``) suggests it,
    ``import`` (which has not) gives the remedy alone (was: ``--allow-outside`` there too, a usage error)."""
    import numpy as np

    import lipdsl.importers.pytorch as pytorch

    # import --like's torch.load, without torch: the .pt here holds an .npz of the tensors
    monkeypatch.setattr(pytorch, "load_state_dict", lambda f, shown=None: dict(np.load(f)))
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "b.npy", np.zeros(2))
    np.savez(tmp_path / "sub" / "w.npz", **{"a.weight": np.eye(2)})
    with open(tmp_path / "ck.pt", "wb") as f:
        np.savez(f, **{"a.weight": np.eye(2)})
    arch = tmp_path / "sub" / "arch.lip"
    arch.write_text('input 2\nweights "w.npz"\ndense a: 2 -> 2, weight a.weight, bias "../b.npy"\n')
    runner = CliRunner()
    checked = runner.invoke(cli, ["check", str(arch)])
    assert checked.exit_code == 1 and "outside the spec's directory" in checked.output
    assert "hint: copy the file next to the spec, or pass --allow-outside if you trust" in checked.output
    imported = runner.invoke(cli, ["import", str(tmp_path / "ck.pt"), "--like", str(arch),
                                   "-o", str(tmp_path / "sub" / "out.lip")])
    assert imported.exit_code == 1 and "outside the spec's directory" in imported.output
    assert imported.output.rstrip().endswith("hint: copy the file next to the spec")
    assert "--allow-outside" not in imported.output and "Traceback" not in imported.output
    assert not (tmp_path / "sub" / "out.lip").exists()

"""CLI front end: `lipdsl check` / `lipdsl show` exit codes, summary, --json shapes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lipdsl.app.cli import main
from repo_paths import ROOT

GOOD = sorted((ROOT / "specs").glob("*.lip"))


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("spec", GOOD, ids=lambda s: s.name)
def test_check_good_specs(spec, capsys):
    code, out, err = run(["check", str(spec)], capsys)
    assert code == 0, err
    assert out.startswith("OK network ") and err == ""


def test_show_json_ecg(capsys):
    code, out, _ = run(["show", str(ROOT / "specs" / "ecg.lip"), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    shapes = [data["input"]] + [layer["out"] for layer in data["layers"]]
    assert shapes == [[1, 128], [2, 128], [2, 128], [2, 64], [3, 64], [3, 64], [3, 32], [96], [60], [60], [5]]
    distinct = [s for i, s in enumerate(shapes) if i == 0 or s != shapes[i - 1]]
    assert distinct == [[1, 128], [2, 128], [2, 64], [3, 64], [3, 32], [96], [60], [5]]
    assert data["layers"][0]["kind"] == "conv1d" and data["layers"][0]["pad_left"] == 2
    assert data["params"] == 2 * 3 + 2 + 3 * 2 * 3 + 3 + 96 * 60 + 60 + 60 * 5 + 5


def test_show_table(capsys):
    code, out, _ = run(["show", str(ROOT / "specs" / "features.lip")], capsys)
    assert code == 0
    for word in ("conv_a", "maxpool1", "swish", "3x6", "18", "slope"):
        assert word in out


def test_show_json_any_length(capsys):
    code, out, _ = run(["show", str(ROOT / "specs" / "tcn_any_length.lip"), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["any_length"] and data["input"] == [2, None]


@pytest.mark.parametrize(
    "argv,code",
    [
        (["check"], 2),
        (["check", "a", "b"], 2),
        (["show", "--bogus", "x.lip"], 2),
        (["nosuchcommand"], 2),
        (["check", "does/not/exist.lip"], 1),
        (["check", "specs"], 1),
        (["show", "does/not/exist.lip"], 1),
    ],
)
def test_exit_codes(argv, code, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    got, out, err = run(argv, capsys)
    assert got == code
    assert "Traceback" not in err


def test_unreadable_and_binary_specs(tmp_path, capsys):
    binary = tmp_path / "bin.lip"
    binary.write_bytes(b"\x00\xff\xfe input 1\n\x89PNG")
    code, _, err = run(["check", str(binary)], capsys)
    assert code == 1 and "error:" in err and "Traceback" not in err
    empty = tmp_path / "empty.lip"
    empty.write_text("")
    code, _, err = run(["check", str(empty)], capsys)
    assert code == 1 and "no 'input' line" in err


def test_console_script_from_elsewhere(tmp_path):
    """The installed ``lipdsl`` command, run outside the repository, on an absolute spec path."""
    exe = Path(sys.executable).with_name("lipdsl")
    if not exe.exists():
        pytest.skip("lipdsl console script not installed next to this python")
    done = subprocess.run(
        [str(exe), "check", str(ROOT / "specs" / "ecg.lip")], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [str(exe), "check", str(ROOT / "specs" / "bad" / "channels.lip")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_show_draws_residual_blocks(capsys):
    code, out, _ = run(["show", str(ROOT / "specs" / "resnet1d.lip"), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    blocks = [layer for layer in data["layers"] if layer["kind"] == "residual"]
    assert [b["name"] for b in blocks] == ["block1", "block2", "block3"]
    assert [x["kind"] for x in blocks[0]["main"]] == ["conv1d", "batchnorm", "activation"] * 2 + ["conv1d",
                                                                                                  "batchnorm"]
    assert [x["kind"] for x in blocks[0]["shortcut"]] == ["conv1d", "batchnorm"]
    assert blocks[2]["shortcut"] == []
    assert data["params"] == 32306  # as PyTorch counts them (batch norm: weight and bias)
    code, out, _ = run(["show", str(ROOT / "specs" / "resnet1d.lip")], capsys)
    assert code == 0 and "block3" in out and "shortcut" in out

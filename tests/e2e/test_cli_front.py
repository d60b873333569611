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


def test_check_refuses_a_batch_norm_fold_out_of_the_float_range(tmp_path, capsys):
    """A conv of weight 1e-200 and a batch norm of scale 1e-200 fold to zero weights (a bound of 0 for a
    nonzero map): ``check`` refuses the spec at the batch norm's line, as ``solve`` and ``lower`` do."""
    spec = tmp_path / "t.lip"
    spec.write_text("network t\ninput 2 x 8\n"
                    "conv1d c: 2 -> 2, kernel 1, weight [[[1e-200],[0]],[[0],[1e-200]]]\n"
                    "batchnorm bn: 2, running_mean [0,0], running_var [1,1], weight [1e-200, 1e-200]\n")
    code, out, err = run(["check", str(spec)], capsys)
    assert code == 1 and out == ""
    assert f"{spec}:4:" in err and "leaves float64's range" in err and "^" in err
    spec.write_text(spec.read_text().replace("1e-200", "1e-100"))
    assert run(["check", str(spec)], capsys)[0] == 0


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
    conv, relu, short = blocks[0]["main"][0], blocks[0]["main"][2], blocks[0]["shortcut"][0]
    assert (conv["kernel"], conv["stride"], conv["dilation"], conv["padding"], conv["pad_left"],
            conv["pad_right"], conv["bias"]) == (8, 1, 1, "same", 3, 4, True)
    assert (short["kernel"], short["padding"], short["pad_left"], short["pad_right"]) == (1, "0", 0, 0)
    assert (relu["function"], relu["parameter"], relu["slope"]) == ("relu", None, [0.0, 1.0])
    assert data["params"] == 32306  # as PyTorch counts them (batch norm: weight and bias)
    code, out, _ = run(["show", str(ROOT / "specs" / "resnet1d.lip")], capsys)
    assert code == 0 and "block3" in out and "shortcut" in out


def test_show_json_describes_a_layer_in_a_block_as_at_the_top_level(tmp_path, capsys):
    """``show --json``: a conv, an activation, a pool and a batch norm inside a residual block (main path and
    shortcut) carry the same fields and values as the same layers at the top level (one serializer)."""
    conv = ("conv1d {}: 2 -> 2, kernel 3, dilation 2, padding causal, weight [[[1, 0, 2], [0, 1, 0]], "
            "[[0, 0, 1], [1, 1, 1]]], bias [1, -1]")
    layers = [conv, "leaky_relu(1/10) {}", "batchnorm {}: 2, running_mean [0, 1], running_var [1, 4], "
              "eps 0.01", "maxpool {}: 2, stride 2", "avgpool {}: 2"]
    spec = tmp_path / "t.lip"
    main = ["  " + x.format(f"in{i}") for i, x in enumerate(layers[:4])]  # (the avgpool: the shortcut)
    spec.write_text("\n".join(["input 2 x 32"] + [x.format(f"top{i}") for i, x in enumerate(layers)]
                              + ["residual b:"] + main + ["shortcut", "  " + layers[4].format("in4"), "end"])
                    + "\n")
    code, out, err = run(["show", str(spec), "--json"], capsys)
    assert code == 0, err
    top = json.loads(out)["layers"]
    block = top.pop()
    inner = block["main"] + block["shortcut"]
    assert [x["kind"] for x in inner] == [x["kind"] for x in top] == ["conv1d", "activation", "batchnorm",
                                                                     "pool", "pool"]

    def fields(entry):  # (the name, line and shapes differ)
        return {k: v for k, v in entry.items() if k not in ("name", "line", "in", "out")}

    assert [fields(x) for x in inner] == [fields(x) for x in top]
    assert fields(top[0]) == {"kind": "conv1d", "params": 14, "kernel": 3, "stride": 1, "dilation": 2,
                              "padding": "causal", "pad_left": 4, "pad_right": 0, "bias": True}
    assert fields(top[1])["function"] == "leaky_relu" and fields(top[1])["slope"] == [0.1, 1.0]
    assert fields(top[2])["eps"] == 0.01 and fields(top[3])["op"] == "max" and fields(top[4])["stride"] == 2


@pytest.mark.parametrize("command", ["show", "export"])
def test_show_and_export_stop_at_their_timeout(command, tmp_path, capsys, monkeypatch):
    """``--timeout`` bounds show and export as it bounds solve: a lowering that outlasts it is abandoned,
    exit 3 with the time-limit message and its hint, nothing printed or written."""
    import threading
    import time

    import lipdsl.model.lower
    import lipdsl.pipeline

    release = threading.Event()

    def stuck(*args, **kwargs):  # a lowering far longer than the budget; ends (unused) once the test is done
        release.wait(60)
        raise RuntimeError("abandoned")

    monkeypatch.setattr(lipdsl.model.lower, "lower", stuck)  # show --lowering
    monkeypatch.setattr(lipdsl.pipeline, "lower", stuck)  # export (pipeline.lower_within_limits)
    written = tmp_path / "ecg.dat-s"
    argv = ["show", "--lowering"] if command == "show" else ["export", "-o", str(written)]
    t0 = time.monotonic()
    try:
        code, out, err = run([*argv, "--timeout", "0.5", str(ROOT / "specs" / "ecg.lip")], capsys)
        assert code == 3 and out == "" and not written.exists(), err
        assert f"lipdsl {command} did not finish within the time limit of 0.5 s" in err and "hint:" in err
        assert time.monotonic() - t0 < 30  # (0.5 s and the spec's parse; the lowering would take 60 s)
    finally:
        release.set()


def test_show_and_export_under_a_timeout_print_what_they_print_without_one(tmp_path, capsys):
    spec = str(ROOT / "specs" / "ecg.lip")
    for argv in (["show"], ["show", "--json"], ["show", "--lowering"], ["show", "--state-space"]):
        plain = run([*argv, spec], capsys)
        assert plain[0] == 0 and run([*argv, "--timeout", "60", spec], capsys) == plain, argv
    code, out, _ = run(["export", "-o", str(tmp_path / "a.dat-s"), spec], capsys)
    timed = run(["export", "-o", str(tmp_path / "b.dat-s"), "--timeout", "60", spec], capsys)
    assert code == 0 and timed == (0, out.replace("a.dat-s", "b.dat-s"), "")
    assert (tmp_path / "a.dat-s").read_text() == (tmp_path / "b.dat-s").read_text()


# -- --length on a spec of fixed length: the same in every command that takes it ---------------------------
FIXED = ("network t\ninput 2 x 8\nconv1d c: 2 -> 2, kernel 2, stride 2, "
         "weight [[[0.5, 0.2], [0.1, -0.3]], [[0.4, 0.1], [0.2, -0.5]]]\nrelu\n")


@pytest.mark.parametrize("command", [
    ["show", "--lowering"], ["solve"], ["solve", "--json"], ["solve", "--method", "naive"],
    ["export", "-o", "x"], ["lower", "--starts", "1"],
    ["compare", "--methods", "naive", "--lower-starts", "0"],
], ids=lambda c: " ".join(c[:3]))
def test_a_length_the_spec_contradicts_is_an_error_at_its_input_line(command, capsys, tmp_path, monkeypatch):
    """issue B.7: `lower` refused it (caret on line 1), `solve` ignored it with a note, `show --lowering`
    silently: now every command refuses it, before any work, at the length in the input line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.lip").write_text(FIXED)
    code, out, err = run([*command, "--length", "9", "t.lip"], capsys)
    assert code == 1 and out == "" and not (tmp_path / "x").exists()
    assert err == ("t.lip:2:11: error: --length 9 contradicts the input line: 't' takes inputs of length 8\n"
                   "    2 | input 2 x 8\n      |           ^\n"
                   "  hint: leave out --length, or declare 'input 2 x *' for inputs of any length\n")


@pytest.mark.parametrize("command", [["show", "--lowering"], ["lower", "--starts", "1", "--json"]])
def test_the_specs_own_length_is_fine_and_a_vector_input_takes_none(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.lip").write_text(FIXED)
    code, _, err = run([*command, "--length", "8", "t.lip"], capsys)
    assert code == 0, err
    (tmp_path / "v.lip").write_text("input 2\ndense 2 -> 1, weight [[1, 1]]\n")
    code, out, err = run([*command, "--length", "8", "v.lip"], capsys)
    assert code == 1 and out == "" and err.startswith(
        "v.lip:1:1: error: --length 8 does not apply to 'v': its input is a vector of 2 values")


def test_sweep_rows_of_a_contradicted_length_are_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.lip").write_text(FIXED)
    code, out, _ = run(["sweep", "--no-cache", "--json", "--length", "9", "t.lip"], capsys)
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and row["status"] == "error"
    assert row["error"].startswith("t.lip:2:11: error: --length 9 contradicts the input line")


def test_version_is_the_packages_one_place(capsys):
    """``lipdsl --version`` prints ``lipdsl.__version__``, which pyproject reads too (hatch's dynamic
    version): no package metadata needed, so it also works from a source checkout."""
    import re

    import lipdsl

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lipdsl, version {lipdsl.__version__}"
    project = (ROOT / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^dynamic = \["version"\]', project, re.M)
    assert not re.search(r"^version =", project, re.M)

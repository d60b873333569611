"""`lipdsl sweep` end to end: table, JSON, CSV, plot, exit codes, cache reruns, Ctrl-C, `--scheduler`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lipdsl.app.cli import cli

from lipdsl.rigorous import format_up
from nets import CLOSED_FORM_SPECS, closed_form_spec
from sweeping import ECG_SPEC, ROOT, DaskCluster, _env, ecg_checkpoints

pytestmark = pytest.mark.solver


def lipdsl(*args):
    """``lipdsl ARGS`` in this process (the worker processes' forkserver is started once for all tests)."""
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    res.returncode = res.exit_code
    return res


def lipdsl_process(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``lipdsl ARGS`` as its own process."""
    return subprocess.run([sys.executable, "-m", "lipdsl", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return ecg_checkpoints(tmp_path_factory.mktemp("ckpt"), 6)


def test_table_then_rerun_from_the_cache_prints_the_same_table(tmp_path, ckpt):
    cache = tmp_path / "cache"
    first = lipdsl("sweep", "--like", ECG_SPEC, *ckpt, "--jobs", "2", "--cache", cache)
    assert first.returncode == 0, first.stderr
    for p in ckpt:
        assert p.stem in first.stdout
    assert first.stdout.count("certified") == len(ckpt)
    assert f"{len(ckpt)} items: {len(ckpt)} certified; {len(ckpt)} run, 0 from the cache" in first.stderr
    assert len(list(cache.glob("*.json"))) == len(ckpt)
    again = lipdsl("sweep", "--like", ECG_SPEC, *ckpt, "--jobs", "2", "--cache", cache)
    assert again.returncode == 0
    assert again.stdout == first.stdout
    assert f"0 run, {len(ckpt)} from the cache" in again.stderr
    rows = [json.loads(line) for line in
            lipdsl("sweep", "--like", ECG_SPEC, *ckpt, "--cache", cache, "--json").stdout.splitlines()]
    assert [r["name"] for r in rows] == [p.stem for p in ckpt] and all(r["cached"] for r in rows)


def test_default_cache_is_beside_the_first_input_and_no_cache_ignores_it(tmp_path, ckpt):
    inputs = ecg_checkpoints(tmp_path, 2)
    res = lipdsl("sweep", "--like", ECG_SPEC, *inputs, "--jobs", "1")
    assert res.returncode == 0 and len(list((tmp_path / ".lipdsl-cache").glob("*.json"))) == 2
    res = lipdsl("sweep", "--like", ECG_SPEC, *inputs, "--no-cache", "--jobs", "1")
    assert "2 run, 0 from the cache" in res.stderr


def test_json_has_solve_keys_plus_name_and_status(tmp_path, ckpt):
    res = lipdsl("sweep", "--like", ECG_SPEC, *ckpt[:2], "--json", "--no-cache")
    assert res.returncode == 0
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    solo = json.loads(lipdsl("solve", "--json", ROOT / "specs" / "ecg.lip").stdout)
    assert len(rows) == 2
    for r in rows:
        assert set(solo) - {"seconds"} <= set(r) and {"name", "path", "status", "item_seconds"} <= set(r)
        assert r["status"] == "certified" and r["certified"] is True
    assert rows[0]["lipschitz"] == solo["lipschitz"]  # ckpt_00 is the spec's own checkpoint


def test_csv_and_plot(tmp_path, ckpt):
    png = tmp_path / "bounds.png"
    res = lipdsl("sweep", "--like", ECG_SPEC, *ckpt[:3], "--csv", "--no-cache", "--plot", png, "--lower",
                 "--lower-starts", "2", "--time-budget", "1")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("name,path,method,status,lipschitz,lower_bound,")
    assert len(lines) == 4
    for line in lines[1:]:
        cells = line.split(",")
        assert cells[3] == "certified" and 0 < float(cells[5]) <= float(cells[4])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exit_codes_and_bad_rows(tmp_path, ckpt):
    good = lipdsl("sweep", "--like", ECG_SPEC, *ckpt[:2], "--no-cache")
    assert good.returncode == 0
    bad = tmp_path / "bad.npz"
    with np.load(ckpt[0]) as z:
        np.savez(bad, **{**{k: z[k] for k in z.files}, "conv2.weight": np.zeros((3, 3, 3))})
    res = lipdsl("sweep", "--like", ECG_SPEC, ckpt[0], bad, tmp_path / "none.pt", "--no-cache")
    assert res.returncode == 1
    assert res.stdout.count("certified") == 1 and res.stdout.count("error") >= 2
    assert ("ecg.lip:14:53: error: conv1d 'c2' weight 'conv2.weight' in 'bad.npz' has shape (3, 3, 3), but "
            "the layer declares (c_out, c_in, kernel) = (3, 2, 3)") in res.stdout
    assert "14 | conv1d c2: 2 -> 3, kernel 3" in res.stdout
    assert "|" + " " * 53 + "^~~~~~~~~~~~\n" in res.stdout  # the caret under 'conv2.weight'
    assert "cannot read weight file" in res.stdout and "none.pt" in res.stdout
    failed = lipdsl("sweep", "--like", ECG_SPEC, *ckpt[:2], "--no-cache", "--max-lmi", "20")
    assert failed.returncode == 3 and "failed" in failed.stdout and "--max-lmi 20" in failed.stdout
    usage = lipdsl("sweep", "--like", ECG_SPEC, ckpt[0], "--json", "--csv")
    assert usage.returncode == 2 and "exclusive" in usage.stderr
    assert lipdsl("sweep").returncode == 2
    arch = lipdsl("sweep", "--like", tmp_path / "nope.lip", ckpt[0])
    assert arch.returncode == 1 and "cannot read architecture spec" in arch.stderr


def test_closed_form_bounds_are_rows_as_solve_gives_them(tmp_path):
    """Zero weights, a batch norm of weight [0, 0], a residual block whose branches cancel: each row is
    solve's closed-form bound and notes, certified (they were ``crashed``: ``max() arg is an empty
    sequence``), and the table prints the bound rounded up, as solve does (2.0000000000000004, not 2)."""
    specs = [closed_form_spec(tmp_path, name) for name in sorted(CLOSED_FORM_SPECS)]
    res = lipdsl("sweep", *specs, "--jobs", "1", "--no-cache", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["name"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert list(rows) == [p.stem for p in specs]
    for spec in specs:
        solved = json.loads(lipdsl("solve", "--json", spec).stdout)
        row = rows[spec.stem]
        assert (row["status"], row["lipschitz"], row["claimed_status"]) == \
            ("certified", solved["lipschitz"], "closed-form")
        assert row["notes"] == solved["notes"] and row["notes"][0].startswith("closed form, no SDP: ")
    table = lipdsl("sweep", *specs, "--jobs", "1", "--no-cache")
    assert table.returncode == 0 and "3 items: 3 certified" in table.stderr
    cells = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in table.stdout.splitlines() if line.startswith("│")}
    assert cells == {p.stem: format_up(rows[p.stem]["lipschitz"]) for p in specs}
    assert cells["cancelling_residual"] == "2.000000001"


def _ecg_onnx(npz: Path, path: Path) -> Path:
    """The ECG net of ``specs/ecg.lip`` as an ONNX graph (causal pads (2, 0), Gemm with transB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    with np.load(npz) as z:
        inits = [numpy_helper.from_array(z[k].astype(np.float64), k) for k in z.files]
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "conv1.weight", "conv1.bias"], ["a"], pads=[2, 0], kernel_shape=[3]),
        node("Relu", ["a"], ["b"]),
        node("AveragePool", ["b"], ["c"], kernel_shape=[2], strides=[2]),
        node("Conv", ["c", "conv2.weight", "conv2.bias"], ["d"], pads=[2, 0], kernel_shape=[3]),
        node("Relu", ["d"], ["e"]),
        node("AveragePool", ["e"], ["f"], kernel_shape=[2], strides=[2]),
        node("Flatten", ["f"], ["g"]),
        node("Gemm", ["g", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        node("Relu", ["h"], ["i"]),
        node("Gemm", ["i", "fc2.weight", "fc2.bias"], ["y"], transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 1, 128])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    graph = helper.make_graph(nodes, "ecg", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_sweep_of_specs_and_onnx(tmp_path, ckpt):
    pytest.importorskip("onnx")
    specs = [ROOT / "specs" / "ecg.lip", ROOT / "specs" / "tcn_any_length.lip"]
    model = _ecg_onnx(ckpt[0], tmp_path / "ecg_model.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    # (--length 128: the ECG nets' own length, which they take; another would make their rows errors)
    res = lipdsl("sweep", *specs, model, broken, "--no-cache", "--json", "--length", "128")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["status"] for r in rows] == ["certified", "certified", "certified", "error"], res.stdout
    assert "cannot read 'broken' as an ONNX model" in rows[3]["error"] and rows[3]["path"] == str(broken)
    solo = json.loads(lipdsl("solve", "--json", "--length", "128", specs[1]).stdout)
    assert rows[1]["lipschitz"] == solo["lipschitz"]
    assert abs(rows[2]["lipschitz"] - rows[0]["lipschitz"]) <= 1e-9 * rows[0]["lipschitz"]  # same network
    assert res.returncode == 1


def test_one_length_over_fixed_and_any_length_specs(tmp_path):
    """``--length`` is every item's: a spec of another fixed length is an error row that names the spec, its
    input line and why (the rule of every command), the any-length spec is bounded, the exit code is 1."""
    anylen = tmp_path / "any.lip"
    anylen.write_text("network any\ninput 1 x *\nconv1d 1 -> 1, kernel 2, weight [[[1, 1]]]\nrelu\n")
    ecg = ROOT / "specs" / "ecg.lip"
    res = lipdsl("sweep", ecg, anylen, "--length", "64", "--jobs", "1", "--no-cache", "--json")
    fixed, free = (json.loads(line) for line in res.stdout.splitlines())
    assert fixed["status"] == "error" and fixed["path"] == str(ecg) and fixed["lipschitz"] is None
    assert fixed["error"].startswith(f"{ecg}:8:11: error: --length 64 contradicts the input line: 'ecg' "
                                     "takes inputs of length 128\n    8 | input 1 x 128")
    assert "a sweep's --length applies to every item" in fixed["error"]
    assert free["status"] == "certified" and res.returncode == 1
    table = lipdsl("sweep", ecg, anylen, "--length", "64", "--jobs", "1", "--no-cache")
    assert f"ecg ({ecg}): {ecg}:8:11: error: --length 64 contradicts" in table.stdout + table.stderr


def test_ctrl_c_stops_cleanly_and_keeps_what_finished(tmp_path):
    inputs = ecg_checkpoints(tmp_path, 10, seed=3)
    cache = tmp_path / "cache"
    # (the default SIGINT disposition: a test run started in the background by a non-interactive shell has
    # SIGINT ignored, and the child would inherit that and never see the Ctrl-C)
    proc = subprocess.Popen([sys.executable, "-m", "lipdsl", "sweep", "--like", str(ECG_SPEC),
                             *map(str, inputs), "--jobs", "1", "--cache", str(cache), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(list(cache.glob("*.json"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no item finished in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(inputs)
    done = [r for r in rows if r["status"] == "certified"]
    assert 2 <= len(done) < len(inputs)
    assert {r["status"] for r in rows} == {"certified", "not run"}
    cached = len(list(cache.glob("*.json")))
    assert cached >= len(done)
    rerun = lipdsl_process("sweep", "--like", ECG_SPEC, *inputs, "--jobs", "2", "--cache", cache, "--json")
    assert rerun.returncode == 0
    assert f"{len(inputs) - cached} run, {cached} from the cache" in rerun.stderr
    again = {r["name"]: r["lipschitz"] for r in map(json.loads, rerun.stdout.splitlines())}
    assert all(again[r["name"]] == r["lipschitz"] for r in done)
    assert not [p for p in cache.iterdir() if p.suffix == ".tmp"]


def test_scheduler_address_gives_the_local_results(tmp_path, ckpt):
    pytest.importorskip("distributed")
    local = lipdsl("sweep", "--like", ECG_SPEC, *ckpt, "--jobs", "2", "--no-cache", "--json")
    with DaskCluster(tmp_path, n_workers=2) as cluster:
        remote = lipdsl_process("sweep", "--like", ECG_SPEC, *ckpt, "--scheduler", cluster.address,
                                "--no-cache", "--json")
    assert remote.returncode == local.returncode == 0, remote.stderr
    a = [json.loads(line) for line in local.stdout.splitlines()]
    b = [json.loads(line) for line in remote.stdout.splitlines()]
    assert len(b) == len(ckpt) >= 6
    assert [(r["name"], r["lipschitz"], r["iterations"]) for r in a] == [
        (r["name"], r["lipschitz"], r["iterations"]) for r in b]


@pytest.mark.slow  # the connection attempt takes its 15 s timeout
def test_scheduler_errors_are_clean(tmp_path, ckpt):
    pytest.importorskip("distributed")
    res = lipdsl_process("sweep", "--like", ECG_SPEC, ckpt[0], "--scheduler", "tcp://127.0.0.1:9",
                         timeout=120)
    assert res.returncode == 1 and "cannot connect to the Dask scheduler" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow  # starts a LocalCluster of two worker processes
def test_scheduler_local_starts_an_embedded_cluster(ckpt):
    pytest.importorskip("distributed")
    res = lipdsl_process("sweep", "--like", ECG_SPEC, *ckpt[:2], "--scheduler", "local", "--jobs", "2",
                         "--no-cache", "--json")
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["status"] for line in res.stdout.splitlines()] == ["certified"] * 2

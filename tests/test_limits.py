"""Resource limits and solver failures: every failure path exits 3 with the solver's words and a hint, and
`lipdsl solve` never exits 0 without printing a certified bound."""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import lipdsl.pipeline
from lipdsl.pipeline import problem_size, solve_network
from lipdsl.app.cli import cli
from lipdsl.errors import LimitError
from lipdsl.lang.load import load_network
from lipdsl.sdp.problem import Factored, Lmi
from repo_paths import ROOT, SPECS

ECG = str(SPECS / "ecg.lip")
REFERENCE = 109.12299234900972


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write(tmp_path, text: str, name: str = "net.lip") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- resource limits (no solver needed) -------------------------------------------------------------------


def test_problem_size_matches_the_built_sdp():
    from lipdsl.model.lower import lower
    from lipdsl.sdp.build import build_sdp

    _, net = load_network(ECG)
    size = problem_size(net)
    sdp = build_sdp(lower(net), inverse=False)
    assert size.largest_lmi == max(lmi.size for lmi in sdp.lmis) == 156
    # the inverse forms (sdp module docstring) only shrink it: the estimate is an upper one
    assert max(lmi.size for lmi in build_sdp(lower(net)).lmis) == 65
    # the estimate ignores the substituted last output weight, so it may only over-count
    assert size.variables >= sdp.n


def test_max_lmi_refuses_before_allocating(tmp_path):
    spec = write(
        tmp_path,
        "input 1 x 4\nconv1d c: 1 -> 1, kernel 2, dilation 10^12, padding causal, weight [[[1, 1]]]\nrelu\n",
    )
    t0 = time.perf_counter()
    res = run("solve", "--frequencies", "none", spec)
    assert time.perf_counter() - t0 < 5
    assert res.exit_code == 3 and res.stdout == ""
    assert (
        "would have 1000000000002 rows (1000000000000 states + 1 inputs + 1 outputs), more than "
        "--max-lmi 4000" in res.stderr
    )
    assert "net.lip:2:1: error:" in res.stderr and "hint: raise --max-lmi" in res.stderr
    res = run("solve", spec)  # (the automatic form: frequency-domain, but the lowering alone is too big)
    assert time.perf_counter() - t0 < 10
    assert res.exit_code == 3 and res.stdout == "" and "net.lip:2:1: error:" in res.stderr
    assert "Traceback" not in res.stderr


def test_max_lmi_option_and_variable_limit(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((64, 64, 9)))
    spec = write(
        tmp_path, 'input 64 x 32\nconv1d c: 64 -> 64, kernel 9, padding causal, weight "w.npy"\nrelu\n'
    )
    res = run("solve", "--max-lmi", "100", "--frequencies", "none", spec)
    assert res.exit_code == 3 and "would have 640 rows (512 states + 64 inputs + 64 outputs)" in res.stderr
    res = run("solve", "--frequencies", "none", spec)  # 640 rows pass, but P alone has 512*513/2 variables
    assert res.exit_code == 3 and "the SDP would have 131393 variables, more than 20000" in res.stderr
    with pytest.raises(LimitError, match="variables, more than 1000"):
        solve_network(load_network(spec)[1], max_variables=1000)


# -- solver failures --------------------------------------------------------------------------------------


@pytest.mark.solver
def test_timeout_stops_the_solver_and_restores_the_alarm(monkeypatch):
    import cvxopt.solvers

    real = cvxopt.solvers.conelp

    def slow(*args, **kwargs):  # a solver that would run for a minute
        time.sleep(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(cvxopt.solvers, "conelp", slow)
    before = signal.getsignal(signal.SIGALRM)
    t0 = time.perf_counter()
    res = run("solve", "--timeout", "3", ECG)  # (the whole command: parsing and lowering count too)
    assert time.perf_counter() - t0 < 3 + 2
    assert res.exit_code == 3 and res.stdout == ""
    assert "cvxopt did not finish within the time limit of 3 s" in res.stderr and "hint:" in res.stderr
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.solver
def test_timeout_that_is_not_reached_changes_nothing():
    res = run("solve", "--json", "--timeout", "300", ECG)
    assert res.exit_code == 0 and json.loads(res.stdout)["certified"] is True


@pytest.mark.solver
def test_max_iterations_exits_3_unless_the_loose_bound_is_accepted():
    res = run("solve", "--max-iterations", "1", ECG)
    assert res.exit_code == 3 and res.stdout == ""
    assert "cvxopt stopped after 1 iterations without converging (status 'unknown')" in res.stderr
    assert "--accept-unconverged" in res.stderr
    res = run("solve", "--json", "--max-iterations", "1", "--accept-unconverged", ECG)
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    # sound: an early iterate, repaired, still bounds the true constant from above
    assert out["certified"] and out["claimed_status"] == "unknown" and out["lipschitz"] >= REFERENCE


@pytest.mark.solver
def test_impossible_lmi_is_reported_infeasible(monkeypatch):
    real = lipdsl.pipeline.build_sdp

    def impossible(low, **options):
        sdp = real(low, **options)
        empty = sp.csc_matrix((1, 0))
        lmi = Lmi(
            "impossible",
            None,
            (("x", 1),),
            np.array([[-1.0]]),
            sp.csc_matrix((1, sdp.n)),
            Factored(empty, empty, np.zeros(0), np.zeros(0, dtype=np.int64)),
        )
        return replace(sdp, lmis=sdp.lmis + (lmi,))

    monkeypatch.setattr(lipdsl.pipeline, "build_sdp", impossible)
    res = run("solve", str(SPECS / "lipsdp_random.lip"))
    assert res.exit_code == 3 and res.stdout == ""
    assert "CVXOPT reports the SDP primal infeasible (no multipliers satisfy the LMIs)" in res.stderr
    assert "hint: try another solver" in res.stderr


@pytest.mark.solver
def test_numerical_failure_before_the_first_iterate(monkeypatch):
    import cvxopt.solvers

    def singular(*args, **kwargs):
        raise ArithmeticError("singular KKT matrix")

    monkeypatch.setattr(cvxopt.solvers, "conelp", singular)
    res = run("solve", ECG)
    assert res.exit_code == 3 and res.stdout == ""
    assert (
        "CVXOPT failed before its first iterate: singular KKT matrix" in res.stderr and "hint:" in res.stderr
    )


@pytest.mark.solver
def test_solver_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "sdpap", None)  # import sdpap -> ImportError
    res = run("solve", "--solver", "sdpa", ECG)
    assert res.exit_code == 3 and res.stdout == ""
    assert "sdpa-python is not installed" in res.stderr and "hint: pip install sdpa-python" in res.stderr


@pytest.mark.solver
@pytest.mark.parametrize(
    "args",
    [
        ["--max-iterations", "1"],
        ["--max-iterations", "3"],
        ["--max-iterations", "8"],
        ["--tol", "1e-2"],
        [],
        ["--solver", "mosek"],  # known, not installed: exit 3 (an unknown name is a usage error, 2)
        ["--max-lmi", "10"],
        ["--timeout", "0.001"],
    ],
)
def test_exit_0_only_with_a_certified_bound_on_stdout(args):
    for spec in (ECG, str(SPECS / "lipsdp_random.lip")):
        res = run("solve", *args, spec)
        assert res.exit_code in (0, 3), res.output
        if res.exit_code == 0:
            assert "(certified)" in res.stdout
        else:
            assert "Lipschitz upper bound" not in res.stdout and "(certified)" not in res.stdout


def test_max_lmi_counts_the_lmis_after_merging_linear_layers(tmp_path):
    """An overlapping average pool before flatten -> dense is folded into the dense layer (its LMI reads the
    unpooled signal: 4 x 32 = 128 inputs where the typed estimate counts the pooled 4 x 15 = 60): the limit
    is checked again on the lowered systems, before the SDP is built, with the layer's position."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", c=rng.normal(size=(4, 4, 5)), fc=rng.normal(size=(3, 60)))
    spec = write(
        tmp_path,
        'input 4 x 32\nweights "w.npz"\nconv1d c: 4 -> 4, kernel 5, padding causal, weight c\nrelu\n'
        "avgpool kernel 4, stride 2\nflatten\ndense fc: 60 -> 3, weight fc\n",
    )
    _, net = load_network(spec)
    assert problem_size(net).largest_lmi < 100
    res = run("solve", "--max-lmi", "100", spec)
    assert res.exit_code == 3 and res.stdout == ""
    assert "the LMI of 'fc' would have 128 rows (0 states + 128 inputs) after merging" in res.stderr
    assert "net.lip:7:1: error:" in res.stderr and "hint: raise --max-lmi" in res.stderr
    res = run("solve", "--max-lmi", "128", spec)
    assert res.exit_code == 0 and "(certified)" in res.stdout


def test_variable_limit_counts_the_merged_storage(tmp_path):
    """Two linear causal convs merged into one FIR: its P has (2 (k-1) c)^2/2 variables, about twice the two
    separate P together; the variable limit is checked on the lowered systems too."""
    from lipdsl.pipeline import lowered_size
    from lipdsl.model.lower import lower

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", a=rng.normal(size=(4, 4, 5)), b=rng.normal(size=(4, 4, 5)))
    spec = write(
        tmp_path,
        'input 4 x 32\nweights "w.npz"\nconv1d a: 4 -> 4, kernel 5, padding causal, weight a\n'
        "conv1d b: 4 -> 4, kernel 5, padding causal, weight b\nrelu\n",
    )
    _, net = load_network(spec)
    estimate, merged = problem_size(net), lowered_size(lower(net))
    assert merged.variables > estimate.variables
    limit = (estimate.variables + merged.variables) // 2
    with pytest.raises(LimitError, match="variables after merging linear layers"):
        solve_network(net, max_variables=limit)
    assert solve_network(net, max_variables=merged.variables).certificate.verified


# -- the command's deadline (lipdsl.limits.Deadline) ------------------------------------------------------

import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

from lipdsl import limits  # noqa: E402
from lipdsl.errors import LipdslError, TimeLimitError  # noqa: E402


def lipdsl_process(*args, timeout: float = 120):
    """``lipdsl ARGS`` in a fresh process (an abandoned solver thread dies with it): (result, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "lipdsl", *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    return res, time.monotonic() - t0


def lipdsl_cpu(*args, before: str = "", timeout: float = 120):
    """``lipdsl ARGS`` in a fresh process, after the Python statements ``before``: (result, the CPU seconds
    the process used, user + system over all its threads, from ``os.wait4``). Unlike wall-clock time, CPU
    time does not grow when other processes load the machine: a bound on it measures the command's work (a
    command that ignored its deadline would run the whole solve), not how busy the machine was."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"import sys\n{before}\nfrom lipdsl.app.cli import main\nsys.exit(main(sys.argv[1:]))"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, env=env)
        end = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > end:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise subprocess.TimeoutExpired(proc.args, timeout)
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    cpu = usage.ru_utime + usage.ru_stime
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), cpu


def slow_net(tmp_path, channels: int = 4, kernel: int = 23) -> str:
    """One causal conv c -> c (its P has ((k-1) c)^2 / 2 variables: 3,900 at c = 4, k = 23, about 20 s
    per interior-point iteration on one core), then ReLU, global average pooling and a dense head."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "slow.npz", conv=rng.normal(size=(channels, channels, kernel)) / kernel,
             fc=rng.normal(size=(5, channels)))
    return write(tmp_path, f'input {channels} x 32\nweights "slow.npz"\nconv1d c: {channels} -> {channels}, '
                           f"kernel {kernel}, padding causal, weight conv\nrelu\nglobal_avgpool\n"
                           f"dense fc: {channels} -> 5, weight fc\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "abc"])
def test_timeouts_that_are_not_finite_positive_are_usage_errors(value, tmp_path):
    for args in (["solve", "--timeout", value], ["compare", "--timeout", value], ["show", "--timeout", value],
                 ["export", "-o", str(tmp_path / "x.dat-s"), "--timeout", value]):
        res = run(*args, ECG)
        assert res.exit_code == 2 and res.stdout == "", (args, res.output)
        assert "Invalid value for '--timeout'" in res.stderr
    if value != "0":  # a search budget may be 0 (one evaluation), never negative or unbounded
        for command in ("lower", "compare"):
            res = run(command, "--time-budget", value, ECG)
            assert res.exit_code == 2 and "Invalid value for '--time-budget'" in res.stderr


@pytest.mark.parametrize("value", [-1, -0.5, 0, math.nan, math.inf, -math.inf, "ten", True])
def test_api_timeouts_are_checked_and_install_nothing(value):
    _, net = load_network(ECG)
    handler, timer = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    with pytest.raises(LipdslError, match="timeout must be"):
        solve_network(net, timeout=value)
    with pytest.raises(LipdslError, match="timeout must be"):
        lipdsl.load(ECG).solve("naive", timeout=value)
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == timer
    assert limits.current() is limits.NEVER


def test_deadline_arithmetic():
    d = limits.Deadline(0.2)
    assert 0.1 < d.remaining() <= 0.2 and not d.expired
    d.check("x")
    assert d.earlier(10) is d and d.earlier(None) is d and d.earlier(0.05).seconds == 0.05
    assert limits.NEVER.remaining() == math.inf and not limits.NEVER.expired
    time.sleep(0.25)
    assert d.expired and d.remaining() == 0.0
    with pytest.raises(TimeLimitError, match="x did not finish within the time limit of 0.2 s"):
        d.check("x")
    with d.active():
        assert limits.current() is d
        with pytest.raises(TimeLimitError):
            limits.checkpoint("y")
    assert limits.current() is limits.NEVER
    limits.checkpoint("z")  # no deadline: never raises


def test_run_within_abandons_a_long_call_and_passes_exceptions_through():
    t0 = time.monotonic()
    with pytest.raises(TimeLimitError, match="sleeper did not finish"):
        limits.run_within(lambda: time.sleep(5), limits.Deadline(0.3), "sleeper")
    assert time.monotonic() - t0 < 2
    with pytest.raises(ZeroDivisionError):
        limits.run_within(lambda: 1 / 0, limits.Deadline(5), "divider")
    with pytest.raises(SystemExit):
        limits.run_within(lambda: sys.exit(3), limits.Deadline(5), "exiter")
    assert limits.run_within(lambda: limits.current().seconds, limits.Deadline(7), "reader") is None  # no
    d = limits.Deadline(7)
    with d.active():  # the worker runs in a copy of the caller's context: it sees the active deadline
        assert limits.run_within(lambda: limits.current(), d, "reader") is d


@pytest.mark.solver
def test_timeout_works_off_the_main_thread_and_keeps_the_applications_timer(monkeypatch):
    import cvxopt.solvers

    real = cvxopt.solvers.conelp

    def slow(*args, **kwargs):  # stays in "C" for a minute: only abandoning it stops it
        time.sleep(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(cvxopt.solvers, "conelp", slow)
    rang = []
    previous = signal.signal(signal.SIGALRM, lambda *a: rang.append(1))
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        _, net = load_network(ECG)
        box = {}

        def work():
            try:
                solve_network(net, timeout=0.5)
            except LipdslError as err:
                box["err"] = err

        t0 = time.monotonic()
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(10)
        assert not worker.is_alive() and time.monotonic() - t0 < 5
        assert isinstance(box["err"], TimeLimitError) and box["err"].exit_code == 3
        assert "cvxopt did not finish within the time limit of 0.5 s" in box["err"].message
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < remaining <= 100 and not rang  # the application's timer runs on, untouched
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.solver
def test_timeout_bounds_a_solve_that_needs_minutes(tmp_path):
    res, seconds = lipdsl_process("solve", "--timeout", "3", slow_net(tmp_path))
    assert res.returncode == 3 and res.stdout == "", res.stderr
    assert "did not finish within the time limit of 3 s" in res.stderr and "hint:" in res.stderr
    assert seconds < 3 + 8  # (start-up: 1-2 s, more on a loaded machine; a full solve takes minutes)


@pytest.mark.solver
def test_timeout_bounds_the_frequency_response_of_a_long_kernel(tmp_path):
    """A kernel-3000 conv on two channels: 6,000 states whose frequency response alone takes minutes."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "k.npz", conv=rng.normal(size=(2, 2, 3000)) / 50, fc=rng.normal(size=(2, 2)))
    spec = write(tmp_path, 'input 2 x 4000\nweights "k.npz"\nconv1d c: 2 -> 2, kernel 3000, padding causal, '
                           "weight conv\nrelu\nglobal_avgpool\ndense fc: 2 -> 2, weight fc\n")
    res, seconds = lipdsl_process("solve", "--frequencies", "5", "--timeout", "4", spec)
    assert res.returncode == 3 and res.stdout == ""
    assert ("did not finish within the time limit of 4 s" in res.stderr
            or "the frequency response of a system with 5998 states would take at least" in res.stderr)
    assert seconds < 4 + 8


@pytest.mark.solver
@pytest.mark.parametrize("method", ["lipsdp-neuron", "lipsdp-layer"])
def test_timeout_applies_to_the_lipsdp_methods(tmp_path, method):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", a=rng.normal(size=(8, 2, 5)) / 4, b=rng.normal(size=(8, 8, 5)) / 8,
             fc=rng.normal(size=(3, 8)))
    spec = write(tmp_path, 'input 2 x 200\nweights "f.npz"\n'
                           "conv1d a: 2 -> 8, kernel 5, padding causal, weight a\nrelu\n"
                           "conv1d b: 8 -> 8, kernel 5, padding causal, weight b\nrelu\nglobal_avgpool\n"
                           "dense fc: 8 -> 3, weight fc\n")  # LipSDP: an LMI of ~3,600 rows
    # Bounds on the CPU time, not the wall-clock time, each command used: on a loaded machine start-up,
    # parsing and the solver's last GIL-holding C call (CVXOPT's, seconds long under load: the deadline is
    # noticed only after it) stretch the wall time by 10 s and more, not the work done. A full LipSDP solve of
    # this net takes over 140 s of CPU; within its budget a command does at most its threads' budget of solver
    # work, plus start-up and that last call (measured: 4.0 s CPU for solve, 6.5 s for compare, on an idle
    # machine; 0.6 s and 1.8 s with ten busy processes on two cores, where the same runs took 7 s and 18 s).
    res, cpu = lipdsl_cpu("solve", "--method", method, "--force", "--timeout", "3", spec)
    assert res.returncode == 3 and "did not finish within the time limit of 3 s" in res.stdout + res.stderr
    assert "Lipschitz upper bound" not in res.stdout
    assert cpu < 3 + 15, cpu
    # compare's hard deadline (``within``: --timeout + SEARCH_GRACE + 1 s) exists for a search stuck in one
    # call; it and the methods' budget start together, with the command (tests/e2e/test_cli_compare.py).
    # Under heavy load the waiting thread can notice the budget's end seconds late (the worker holds the GIL
    # in some C calls) and the hard deadline may cut the whole command (exit 3, no table). This test is about
    # the methods' budget: the hard deadline is moved out of the way.
    res, cpu = lipdsl_cpu("compare", "--methods", f"naive-hinf,{method}", "--force", "--timeout", "6",
                          "--lower-starts", "2", "--json", spec,
                          before="import lipdsl.limits\nlipdsl.limits.SEARCH_GRACE = 600.0")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    by = {m["method"]: m for m in out["methods"]}
    assert by["naive-hinf"]["status"] == "exact norm" and by[method]["bound"] is None
    assert by[method]["status"] == "failed" and "time limit of 6 s" in by[method]["note"]
    assert "time limit" in out["lower_bound_error"]
    assert cpu < 2 * 6 + 15, cpu  # (naive-hinf and LipSDP run on two threads during the 6 s)


# -- memory: the model, and refusals before allocating ----------------------------------------------------


def measured_peak(spec: str, frequencies: int | None = None, iterations: int = 2) -> tuple[int, float]:
    """(peak RSS in bytes, the model's estimate) of ``solve_network`` on ``spec`` in a fresh process."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import memory
    finally:
        sys.path.pop(0)
    row = memory.measure(Path(spec), frequencies, iterations)
    return row["peak"], row["model"]


@pytest.mark.solver
def test_memory_model_bounds_a_measured_peak(tmp_path):
    peak, model = measured_peak(slow_net(tmp_path, channels=4, kernel=13))  # 1,200 variables
    assert peak <= model <= 3 * peak


@pytest.mark.slow
@pytest.mark.solver
@pytest.mark.parametrize("channels, kernel, frequencies", [(4, 17, None), (4, 23, None), (16, 9, 33),
                                                           (32, 9, 33)])
def test_memory_model_bounds_measured_peaks(tmp_path, channels, kernel, frequencies):
    """docs/performance.md: the model is above every measured peak, and within a factor 2.5 of it."""
    peak, model = measured_peak(slow_net(tmp_path, channels, kernel), frequencies)
    assert peak <= model <= 2.5 * peak


def test_the_model_grows_like_the_newton_matrix():
    n = 19277  # issue 22: peaked at 13.3 GB where the old guard said ~3 GB
    assert limits.solver_bytes(n, [200, 200]) > 13.3e9
    assert limits.solver_bytes(2 * n, [200]) > 3.9 * limits.solver_bytes(n, [200]) - 4 * limits.BASE_BYTES
    # CVXOPT's generic KKT solver also holds the scaled G: (sum m^2) x n
    assert limits.solver_bytes(1000, [500] * 4, "cvxopt-generic") > 8 * 1000 * 4 * 500**2


def conv_spec(tmp_path, channels: int, kernel: int, length: int = 64) -> str:
    np.save(tmp_path / "w.npy", np.random.default_rng(0).normal(size=(channels, channels, kernel)) / kernel)
    return write(tmp_path, f"input {channels} x {length}\n"
                           f"conv1d c: {channels} -> {channels}, kernel {kernel}, "
                           'padding causal, weight "w.npy"\nrelu\n')


@pytest.mark.parametrize("channels, kernel", [(8, 9), (12, 7), (16, 5), (6, 17)])
def test_memory_refusal_comes_before_allocating_with_a_true_hint(tmp_path, monkeypatch, channels, kernel):
    """On a machine too small for the exact SDP but large enough for its frequency form, the hint says
    --frequencies 33; when --frequencies was given, it never repeats it."""
    _, net = load_network(conv_spec(tmp_path, channels, kernel))
    exact, freq = problem_size(net), problem_size(net, frequencies=33)
    assert freq.memory() < exact.memory()
    monkeypatch.setattr(limits, "available_memory", lambda: int((exact.memory() + freq.memory()) / 2))
    allocated = []
    monkeypatch.setattr(lipdsl.pipeline, "lower", lambda *a, **k: allocated.append(1))
    with pytest.raises(LimitError) as info:
        solve_network(net)
    assert not allocated
    err = info.value
    assert "would need about" in err.message and "are available" in err.message
    assert err.hint.startswith("solve with --frequencies 33")
    monkeypatch.setattr(limits, "available_memory", lambda: int(freq.memory() / 2))
    with pytest.raises(LimitError) as info:
        solve_network(net, frequencies=33)
    assert "--frequencies 33" not in info.value.hint
    assert "--frequencies 9" in info.value.hint or "run on a machine with about" in info.value.hint
    res = run("solve", "--frequencies", "33", str(tmp_path / "net.lip"))
    assert res.exit_code == 3 and res.stdout == "" and "--frequencies 33 (" not in res.stderr
    assert "error:" in res.stderr and "hint:" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("block", [True, False])
def test_memory_hint_names_the_dilation_when_it_makes_a_conv_large(tmp_path, block):
    """A conv of dilation 10^6 inside a block: the hint said "reduce the channels or kernel sizes of 'r'"."""
    conv = ("conv1d c1: 2 -> 2, kernel 3, dilation 1000000, padding causal, "
            "weight [[[0.5, 0.2, -0.1], [0.1, -0.3, 0.2]], [[0.0, 0.4, 0.1], [0.2, 0.1, -0.5]]]\n")
    spec = write(tmp_path, "input 2 x *\n" + ("residual r\n" + conv + "end\n" if block else conv))
    _, net = load_network(spec)
    with pytest.raises(LimitError) as info:  # (the frequency form: the memory of the state spaces)
        solve_network(net, frequencies=33, max_lmi=None, max_variables=None)
    assert "would need about" in info.value.message
    where = "'r' (its conv 'c1' has" if block else "'c1' (it has"
    assert f"reduce the dilation, channels or kernel sizes of {where} dilation 1000000: " \
           "dilation*(kernel-1)*c_in = 1000000*2*2 = 4,000,000 states" in info.value.hint


def test_variable_limit_hint_is_true(tmp_path, monkeypatch):
    """issue 22: the guard said "solve with --frequencies 33" even when --frequencies 33 was given."""
    np.save(tmp_path / "w.npy", np.zeros((64, 64, 9)))
    spec = write(tmp_path, "input 64 x 32\n"
                           'conv1d c: 64 -> 64, kernel 9, padding causal, weight "w.npy"\nrelu\n')
    res = run("solve", "--frequencies", "none", spec)
    assert res.exit_code == 3 and "more than 20000" in res.stderr
    assert "hint: solve with --frequencies 33" in res.stderr  # (true: its frequency form has 65 variables)
    _, net = load_network(spec)
    with pytest.raises(LimitError) as info:
        solve_network(net, frequencies=33, max_variables=10)
    assert "--frequencies" not in info.value.hint
    assert "reduce the channels or kernel sizes of 'c'" in info.value.hint
    f9, f33 = problem_size(net, frequencies=9).memory(), problem_size(net, frequencies=33).memory()
    monkeypatch.setattr(limits, "available_memory", lambda: int((f9 + f33) / 2))
    with pytest.raises(LimitError) as info:
        solve_network(net, frequencies=33)
    assert "would need about" in info.value.message
    assert info.value.hint == "use fewer frequencies (--frequencies 9 instead of 33)"


HUGE = [60_000, 1_000_000, 1_000_000_000]


def huge_input(tmp_path, length: int) -> str:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "h.npz", conv=rng.normal(size=(4, 1, 5)), fc=rng.normal(size=(2, 4)))
    return write(tmp_path, f'input 1 x {length}\nweights "h.npz"\n'
                           "conv1d c: 1 -> 4, kernel 5, padding causal, "
                           "weight conv\nrelu\nglobal_avgpool\ndense d: 4 -> 2, weight fc\n")


@pytest.mark.parametrize("length", [10**9, 3 * 10**8])
@pytest.mark.parametrize("args", [["lower", "--time-budget", "5"], ["solve", "--method", "naive"],
                                  ["solve", "--method", "lipsdp-neuron", "--force"]])
def test_inputs_beyond_the_machine_are_refused_cleanly(tmp_path, length, args):
    t0 = time.monotonic()
    res = run(*args, huge_input(tmp_path, length))
    assert time.monotonic() - t0 < 10
    assert res.exit_code == 3, res.output
    text = res.stdout + res.stderr
    assert "would need about" in text and "of memory" in text and "Traceback" not in text
    assert "Lipschitz upper bound" not in res.stdout


@pytest.mark.parametrize("length", [10**9, 60_000])
def test_length_independent_methods_ignore_the_input_length(tmp_path, length):
    spec = huge_input(tmp_path, length)
    res = run("solve", "--method", "naive-hinf", spec)
    assert res.exit_code == 0 and "(exact norm product)" in res.stdout
    res = run("show", "--lowering", spec)
    assert res.exit_code == 0


@pytest.mark.parametrize("kernel", [10**6, 3 * 10**5])
@pytest.mark.parametrize("args", [["solve"], ["solve", "--frequencies", "9"], ["show", "--lowering"],
                                  ["show", "--state-space"], ["solve", "--method", "naive-hinf"],
                                  ["solve", "--method", "naive"], ["lower", "--time-budget", "1"]])
def test_kernels_beyond_the_machine_are_refused_cleanly(tmp_path, kernel, args):
    np.save(tmp_path / "k.npy", np.random.default_rng(0).normal(size=(1, 1, kernel)) / kernel)
    spec = write(tmp_path, f'input 1 x {kernel}\nconv1d c: 1 -> 1, kernel {kernel}, padding causal, '
                           'weight "k.npy"\nrelu\nglobal_avgpool\ndense d: 1 -> 1, weight [[1]]\n')
    t0 = time.monotonic()
    res = run(*args, spec)
    assert time.monotonic() - t0 < 20
    assert res.exit_code == 3, res.output
    text = res.stdout + res.stderr
    assert "Traceback" not in text and "Lipschitz upper bound" not in res.stdout
    assert any(words in text for words in ("of memory", "would take at least", "more than --max-lmi",
                                           "prints at most 64"))


# -- no process-wide side effects ------------------------------------------------------------------------


def process_state() -> dict:
    """What lipdsl must leave as it found it: the environment, CVXOPT's cone functions, PICOS' settings,
    the BLAS thread counts, fd 1, signal handling, and lipdsl's worker threads."""
    import cvxopt.misc
    import picos
    from threadpoolctl import threadpool_info

    stat = os.fstat(1)
    return {
        "environ": dict(os.environ),
        "misc": {name: getattr(cvxopt.misc, name) for name in ("scale", "max_step", "update_scaling")},
        "picos": {k: getattr(picos.settings, k) for k in dir(picos.settings) if k.isupper()},
        "blas": [(p["filepath"], p["num_threads"]) for p in threadpool_info()],
        "fd1": (stat.st_dev, stat.st_ino),
        "sigalrm": signal.getsignal(signal.SIGALRM),
        "itimer": signal.getitimer(signal.ITIMER_REAL),
        "deadline": limits.current(),
    }


def lipdsl_threads(existing: frozenset = frozenset()) -> list[str]:
    """lipdsl's threads other than ``existing`` (e.g. solvers abandoned at a deadline by earlier tests, which
    end at their next checkpoint), after waiting up to 5 s: pools are shut down without waiting for them."""
    deadline = time.monotonic() + 5
    while True:
        names = [t.name for t in threading.enumerate() if t.name.startswith("lipdsl") and t not in existing]
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


def current_lipdsl_threads() -> frozenset:
    return frozenset(t for t in threading.enumerate() if t.name.startswith("lipdsl"))


def test_importing_the_cli_leaves_the_environment_alone():
    code = ("import os, sys; before = dict(os.environ); "
            "import lipdsl.app.cli, lipdsl.limits, lipdsl.solvers.solve; "
            "sys.exit(0 if dict(os.environ) == before else 1)")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_importing_the_cli_leaves_cvxopt_and_picos_alone():
    """Importing every lipdsl module a command loads (the CLI, the solver registry and backends, certify)
    changes neither CVXOPT's cone functions nor PICOS' settings (only a running solve may, and restores)."""
    code = (
        "import sys, cvxopt.misc, picos\n"
        "names = ('scale', 'max_step', 'update_scaling')\n"
        "misc = {n: getattr(cvxopt.misc, n) for n in names}\n"
        "settings = {k: getattr(picos.settings, k) for k in dir(picos.settings) if k.isupper()}\n"
        "import lipdsl.app.cli, lipdsl.app.api, lipdsl.pipeline, lipdsl.solvers.solve\n"
        "import lipdsl.solvers.cvxopt_conelp, lipdsl.solvers.cvxopt_cones, lipdsl.solvers.picos_backend\n"
        "import lipdsl.certify.recheck, lipdsl.certify.reductions, lipdsl.certify.storage\n"
        "same = misc == {n: getattr(cvxopt.misc, n) for n in names} and settings == "
        "{k: getattr(picos.settings, k) for k in dir(picos.settings) if k.isupper()}\n"
        "sys.exit(0 if same else 1)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


@pytest.mark.solver
def test_solves_leave_the_process_as_they_found_it(monkeypatch):
    import picos
    from threadpoolctl import threadpool_limits

    import lipdsl.solvers.cvxopt_conelp

    existing = current_lipdsl_threads()
    with threadpool_limits(limits=2, user_api="blas"):  # an application that wants two BLAS threads
        before = process_state()
        net = lipdsl.load(ECG)
        assert net.solve().verified
        assert process_state() == before and not lipdsl_threads(existing)
        # the threaded path: CVXOPT's cone functions replaced during the solve, KKT worker pools
        monkeypatch.setattr(lipdsl.solvers.cvxopt_kkt, "THREAD_MIN_ENTRIES", 0)
        monkeypatch.setattr(lipdsl.solvers.cvxopt_kkt, "KKT_THREADS", 2)
        seen = []
        real = lipdsl.solvers.cvxopt_kkt.thread_map
        monkeypatch.setattr(lipdsl.solvers.cvxopt_conelp, "thread_map",
                            lambda *a, **k: seen.append(1) or real(*a, **k))
        assert net.solve(timeout=300).verified and seen
        assert process_state() == before and not lipdsl_threads(existing)
        # sdpa in its child process; PICOS' settings around a PICOS back-end
        picos.settings.NONFREE_SOLVERS = True  # the application's choice
        before = process_state()
        try:
            assert net.solve(solver="sdpa").verified
            tiny = lipdsl.parse("input 2\ndense a: 2 -> 3, weight [[1, 2], [0, 1], [-1, 1]]\nrelu\n"
                                "dense b: 3 -> 1, weight [[1, -1, 2]]\n")
            assert tiny.solve("lipsdp-neuron", "picos-cvxopt").verified
            assert process_state() == before and not lipdsl_threads(existing)
        finally:
            picos.settings.NONFREE_SOLVERS = before["picos"]["NONFREE_SOLVERS"]


@pytest.mark.solver
def test_concurrent_sdpa_solves_leave_fd_1_alone():
    """issue 17: concurrent solver="sdpa" calls left fd 1 pointing at stderr (SDPA now runs in a child)."""
    net = lipdsl.load(ECG)
    before = process_state()
    results = []
    workers = [threading.Thread(target=lambda: results.append(net.solve(solver="sdpa").lipschitz))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert len(results) == 3 and all(abs(r - REFERENCE) < 1e-5 * REFERENCE for r in results)
    assert process_state() == before


def test_fd_redirection_of_in_process_sdpa_is_restored_on_failure():
    """The in-process SDPA path (the child of solve_with_sdpa) sends fds 1 and 2 to a temporary file and
    restores both on every path."""
    from lipdsl.solvers.sdpa import _quiet_fds

    before = (os.fstat(1), os.fstat(2))
    with pytest.raises(RuntimeError):
        with _quiet_fds(True):
            assert os.fstat(1).st_ino == os.fstat(2).st_ino != before[0].st_ino
            raise RuntimeError("a failing solve")
    after = (os.fstat(1), os.fstat(2))
    assert [(a.st_dev, a.st_ino) for a in after] == [(b.st_dev, b.st_ino) for b in before]


@pytest.mark.solver
def test_solve_picks_the_frequency_form_by_itself_when_the_exact_lmis_are_large(tmp_path):
    """issue 20: the default ``--frequencies auto`` solves a wide conv layer (exact LMIs: more than
    AUTO_VARIABLES variables) in the frequency domain, says so, and keeps the exact LMIs of a small net."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "w.npy", rng.normal(size=(16, 16, 9)) / 12)
    spec = write(tmp_path, 'input 16 x 32\nconv1d c: 16 -> 16, kernel 9, padding causal, weight "w.npy"\n'
                           "relu\n")
    exact = problem_size(load_network(spec)[1]).variables
    assert exact > lipdsl.pipeline.AUTO_VARIABLES
    res = run("solve", "--json", spec)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["certified"] and out["frequencies"] == lipdsl.pipeline.AUTO_FREQUENCIES
    assert "chosen automatically" in out["form"] and f"{exact:,}" in out["form"]
    text = run("solve", spec).stdout
    assert "form: frequency-domain LMIs" in text and "--frequencies none" in text
    small = write(tmp_path, "input 1 x 8\nconv1d c: 1 -> 2, kernel 3, padding causal, "
                            "weight [[[1, 2, 1]], [[1, -1, 0]]]\nrelu\n", name="small.lip")
    out = json.loads(run("solve", "--json", small).stdout)
    assert out["frequencies"] is None and out["form"].startswith("exact LMIs")


def test_sizes_beyond_float64_are_refused_not_overflowed(tmp_path):
    """A dilation of 10^400 makes sizes no float holds: the memory model saturates at inf (``as_float``)
    and solve refuses at the conv's line (it raised OverflowError in ``lowering_bytes``)."""
    from lipdsl import limits

    assert limits.as_float(10**400) == np.inf and limits.as_float(-(10**400)) == -np.inf
    assert limits.as_float(7) == 7.0
    assert limits.lowering_bytes([(10**400, 2, 2)]) == np.inf
    assert limits.about_bytes(np.inf) == "more than 1e+300 GiB" and limits.about_bytes(2**30) == "about 1 GiB"
    with pytest.raises(LimitError, match="would need more than 1e\\+300 GiB of memory"):
        limits.require_memory(np.inf, "this")
    spec = tmp_path / "dil.lip"
    spec.write_text("network t\ninput 2 x 8\nconv1d c: 2 -> 2, kernel 3, dilation 10^400, padding causal, "
                    "weight [[[0.5,0.2,-0.1],[0.1,-0.3,0.2]],[[0.0,0.4,0.1],[0.2,0.1,-0.5]]]\n")
    res = CliRunner().invoke(cli, ["solve", str(spec)])
    assert res.exit_code == 3 and isinstance(res.exception, SystemExit), res.output
    assert "dil.lip:3:1: error:" in res.output and "more than 1e+300 GiB of memory" in res.output

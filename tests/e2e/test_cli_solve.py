"""`lipdsl solve` end to end: report, JSON, exit codes (0 certified, 1 input error, 3 failed/uncertified)."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

import lipdsl.pipeline
from lipdsl.app.cli import cli
from repo_paths import SPECS

pytestmark = pytest.mark.solver


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_solve_ecg_text_report():
    res = run("solve", str(SPECS / "ecg.lip"))
    assert res.exit_code == 0, res.output
    assert "109.12299" in res.output and "(certified)" in res.output
    assert "LMIs checked" in res.output and "c1+relu1" not in res.output  # the table is behind -v
    assert "time:" in res.output
    res = run("solve", "-v", str(SPECS / "ecg.lip"))
    assert "LMI" in res.output and "c1+relu1" in res.output
    # the table's rows: the solver's LMI and the certified one where they differ (the head's inverse form:
    # 65 rows solved, the 156-row LMI certified), as the summary line without -v counts them
    head = next(line for line in res.output.splitlines() if "f1+relu3" in line)
    assert "65 -> 156" in head


def test_solve_json_is_one_object_with_the_certificate():
    res = run("solve", "--json", str(SPECS / "ecg.lip"))
    assert res.exit_code == 0
    out = json.loads(res.output)
    assert out["certified"] is True
    assert abs(out["lipschitz"] - 109.12299234900972) / 109.12299234900972 <= 1e-6
    assert out["lipschitz"] >= out["lipschitz_solver"]
    assert [lmi["size"] for lmi in out["lmis"]] == [5, 9, 156]
    assert out["sdp"]["lmi_sizes"] == [5, 12, 65]  # solved with the head in Y = X^-1, M = Lambda^-1
    assert set(out["seconds"]) == {"parse+check", "lower", "sdp", "solve", "certify"}
    assert all(lmi["ok"] for lmi in out["lmis"])


def test_fully_convolutional_bound_holds_for_every_length():
    res = run("solve", "--json", str(SPECS / "tcn_any_length.lip"))
    assert res.exit_code == 0
    assert json.loads(res.output)["valid_for"].startswith("every input length N")


def test_global_average_pool_over_any_length_needs_a_length():
    res = run("solve", str(SPECS / "gap.lip"))
    assert res.exit_code == 1
    assert "gap.lip:" in res.output and "--length" in res.output and "Traceback" not in res.output
    res = run("solve", "--json", "--length", "64", str(SPECS / "gap.lip"))
    assert res.exit_code == 0
    assert json.loads(res.output)["valid_for"] == "every input length N >= 64"


def test_missing_solver_exits_3_without_a_bound():
    """An unknown solver name is a usage error (2); a known one that is not installed exits 3."""
    import picos

    from lipdsl.app.cli import SOLVERS
    from lipdsl.solvers.registry import SOLVERS as REGISTRY

    assert SOLVERS == tuple(REGISTRY)  # the CLI takes the registry's names
    res = run("solve", "--solver", "no-such-solver", str(SPECS / "lipsdp_random.lip"))
    assert res.exit_code == 2 and "unknown solver" in res.output
    installed = picos.available_solvers()
    missing = [s for s in SOLVERS if REGISTRY[s].picos and s not in installed]
    if not missing:
        pytest.skip("every known solver is installed")
    res = run("solve", "--solver", missing[0], str(SPECS / "lipsdp_random.lip"))
    assert res.exit_code == 3
    assert "not installed" in res.output and "certified" not in res.output


def test_uncertified_point_exits_3_and_prints_no_bound(monkeypatch):
    real = lipdsl.pipeline.certify

    def refuse(sdp, solution, **kw):
        cert = real(sdp, solution, **kw)
        return replace(cert, verified=False, lipschitz=None, rho=None, reason="forced failure (test)")

    monkeypatch.setattr(lipdsl.pipeline, "certify", refuse)
    res = run("solve", "--json", str(SPECS / "lipsdp_random.lip"))
    assert res.exit_code == 3
    out = json.loads(res.output)
    assert out["lipschitz"] is None and out["certified"] is False
    res = run("solve", str(SPECS / "lipsdp_random.lip"))
    assert res.exit_code == 3 and "no certified bound" in res.output and "36.48" not in res.output


def test_bad_spec_is_an_input_error():
    res = run("solve", str(SPECS / "bad" / "channels.lip"))
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output


def test_show_state_space_pretty_and_latex():
    res = run("show", "--state-space", str(SPECS / "ecg.lip"))
    assert res.exit_code == 0
    assert "conv1d c1: 1 -> 2, kernel 3: causal realization, 2 states" in res.output
    assert "w_{0,0,2}" in res.output  # D = W[:, :, k-1]
    res = run("show", "--state-space", "--latex", str(SPECS / "haar_exact.lip"))
    assert res.exit_code == 0 and r"\frac{1}{2}" in res.output  # the spec's own expressions, kept exact


def test_show_state_space_includes_the_convs_of_residual_blocks(tmp_path):
    """The TCN's convs are all inside residual blocks: each block is named on a line of its own (its
    structure as `show` gives it), then its convs' realizations, main path then shortcut, each header naming
    the block and branch (it used to say the network has no conv1d layer); the display limit covers them."""
    res = run("show", "--state-space", str(SPECS / "tcn.lip"))
    assert res.exit_code == 0, res.output
    assert "no conv1d layer" not in res.output
    heads = [line for line in res.output.splitlines() if line.startswith(("residual ", "conv1d "))]
    assert heads == [
        "residual block0 (y = main(x) + shortcut(x); main: conv1 -> relu1 -> conv2 -> relu2; shortcut: "
        "conv3): its convs' realizations follow; the SDP takes the block as one system (lipdsl show "
        "--lowering)",
        "conv1d conv1 (residual 'block0', main path): 1 -> 16, kernel 3: causal realization, 2 states "
        "(independent of the signal length)",
        "conv1d conv2 (residual 'block0', main path): 16 -> 16, kernel 3: causal realization, 32 states "
        "(independent of the signal length)",
        "conv1d conv3 (residual 'block0', shortcut): 1 -> 16, kernel 1: causal realization, 0 states "
        "(independent of the signal length)",
        "residual block1 (y = main(x) + shortcut(x); main: conv4 -> relu4 -> conv5 -> relu5; shortcut: "
        "identity): its convs' realizations follow; the SDP takes the block as one system (lipdsl show "
        "--lowering)",
        "conv1d conv4 (residual 'block1', main path): 16 -> 16, kernel 3, dilation 2: causal realization, "
        "64 states (independent of the signal length)",
        "conv1d conv5 (residual 'block1', main path): 16 -> 16, kernel 3, dilation 2: causal realization, "
        "64 states (independent of the signal length)",
        "residual block2 (y = main(x) + shortcut(x); main: conv6 -> relu7 -> conv7 -> relu8; shortcut: "
        "identity): its convs' realizations follow; the SDP takes the block as one system (lipdsl show "
        "--lowering)",
        "conv1d conv6 (residual 'block2', main path): 16 -> 16, kernel 3, dilation 4: causal realization, "
        "128 states (independent of the signal length)",
        "conv1d conv7 (residual 'block2', main path): 16 -> 16, kernel 3, dilation 4: causal realization, "
        "128 states (independent of the signal length)",
    ]
    assert res.output.count("(block form: W_j = W[:, :, j]") == 5  # (conv1, conv3 small: entry by entry)
    spec = tmp_path / "dilated.lip"  # a block's conv of 100 state blocks: refused, as a top-level one is
    spec.write_text("input 1 x 300\nresidual r:\n  conv1d 1 -> 1, kernel 2, dilation 100, padding causal, "
                    "weight [[[1, 2]]]\nend\n")
    res = run("show", "--state-space", str(spec))
    assert res.exit_code == 3 and "conv1d 'conv1' has 100 state blocks" in res.output
    assert "dilated.lip:3:3: error:" in res.output


def test_show_state_space_gives_a_kernel_1_conv_as_d_only(tmp_path):
    """A kernel-1 conv has no state: one line says so and only D is shown, entry by entry when narrow, else
    named by its taps (it was a 16 x 8 matrix of w_{o,i,0} that wrapped, after three 'empty' lines); a conv
    wider than ENTRY_COLUMNS columns is in block form."""
    import numpy as np

    from lipdsl.app.render import ENTRY_COLUMNS

    np.save(tmp_path / "w.npy", np.arange(128.0).reshape(16, 8, 1))
    spec = tmp_path / "k1.lip"
    spec.write_text('input 8 x 6\nconv1d wide: 8 -> 16, kernel 1, weight "w.npy"\n')
    res = run("show", "--state-space", str(spec))
    assert res.exit_code == 0, res.output
    no_state = "  no state (kernel 1): v[t] = D u[t] with D = W[:, :, 0] (16 x 8, PyTorch layout); "
    assert res.output.splitlines()[1:] == [no_state + "A, B and C are empty"]
    spec.write_text("input 2 x 6\nconv1d narrow: 2 -> 2, kernel 1, weight [[[1], [2]], [[3], [sqrt(2)]]]\n"
                    "conv1d c3: 2 -> 2, kernel 3, weight [[[1, 2, 3], [0, 1, 0]], [[1, 0, 0], [0, 0, 1]]]\n"
                    "conv1d c4: 2 -> 1, kernel 4, weight [[[1, 2, 3, 4], [0, 1, 0, 1]]]\n")
    res = run("show", "--state-space", str(spec))
    assert res.exit_code == 0, res.output
    narrow = res.output.split("conv1d c3", 1)[0].splitlines()
    assert narrow[1].startswith("  no state (kernel 1): v[t] = D u[t] with D = W[:, :, 0] (2 x 2,")
    assert narrow[2] == "  D =" and "√2" in narrow[-1] and len(narrow) == 3 + 3  # D's three pretty lines
    c3 = res.output.split("conv1d c3", 1)[1].split("conv1d c4", 1)[0]
    assert 4 + 2 <= ENTRY_COLUMNS and "block form" not in c3  # 4 states + 2 inputs: entry by entry
    c4 = res.output.split("conv1d c4", 1)[1]
    assert "(block form: W_j = W[:, :, j]" in c4  # 6 states + 2 inputs = 8 columns


@pytest.mark.parametrize("kernel, stride, dilation, padding", [
    (3, 2, 1, "1"), (3, 3, 2, "causal"), (2, 2, 1, "valid"), (1, 2, 1, "0"), (2, 3, 1, "4")])
def test_show_state_space_gives_the_stride_and_the_samples_kept(tmp_path, kernel, stride, dilation, padding):
    """A strided conv's header gives its stride, and a line says how it is handled (it showed the stride-1
    realization with no note): the layer keeps y[t] = v[s t + delta] of the realization's output v, which
    is checked here against a direct PyTorch-semantics convolution (the oracle)."""
    import re

    import numpy as np

    rng = np.random.default_rng(kernel * 10 + stride)
    w = rng.standard_normal(kernel).round(3)
    n = 12
    spec = tmp_path / "s.lip"
    spec.write_text(f"network s\ninput 1 x {n}\nconv1d c1: 1 -> 1, kernel {kernel}, stride {stride}, "
                    f"dilation {dilation}, padding {padding}, weight [[{w.tolist()}]]\nrelu\n")
    res = run("show", "--state-space", str(spec))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(f"conv1d c1: 1 -> 1, kernel {kernel}, stride {stride}"
                               f"{f', dilation {dilation}' if dilation > 1 else ''}: causal realization")
    note = lines[2]
    assert note.startswith(f"  stride {stride}: this realization runs at the input's rate (as for stride 1); "
                           "the layer's output is every ")
    assert "The SDP bounds all of v (dropping samples only lowers the left side" in note
    found = re.search(r"y\[t\] = v\[(\d+)t(?: ([+-]) (\d+))?\]", note)
    s, delta = int(found[1]), (int(found[3]) if found[3] else 0) * (-1 if found[2] == "-" else 1)
    assert s == stride
    u = rng.standard_normal(n)
    ke = dilation * (kernel - 1) + 1
    we = np.zeros(ke)
    we[::dilation] = w

    def v(m):  # the causal realization's output on u followed by zeros: sum_j W_e[j] u[m - (k_e - 1) + j]
        return sum(we[j] * u[m - ke + 1 + j] for j in range(ke) if 0 <= m - ke + 1 + j < n)

    pads = {"causal": (ke - 1, 0), "valid": (0, 0)}
    left, right = pads[padding] if padding in pads else (int(padding),) * 2
    x = np.concatenate([np.zeros(left), u, np.zeros(right)])
    direct = [sum(w[j] * x[stride * t + dilation * j] for j in range(kernel))
              for t in range((len(x) - ke) // stride + 1)]
    assert np.allclose(direct, [v(stride * t + delta) for t in range(len(direct))])


def test_show_state_space_says_a_strided_block_is_lifted():
    """resnet1d_strided: each downsampling block's line says it is realized in lifted time, reading its input
    2 samples per step (the lowering's block_in), and its strided convs' lines that the block computes the
    kept samples exactly."""
    from lipdsl.lang.load import load_network
    from lipdsl.model.lower import lower

    res = run("show", "--state-space", str(SPECS / "resnet1d_strided.lip"))
    assert res.exit_code == 0, res.output
    blocks = [line for line in res.output.splitlines() if line.startswith("residual ")]
    _, net = load_network(SPECS / "resnet1d_strided.lip")
    lifted = {st.block_in for st in lower(net).systems if st.kind == "block"}
    assert lifted == {2} and len(blocks) == 2
    assert all(line.endswith("the SDP takes the block as one system in lifted time, reading its input 2 "
                             "samples per step (docs/method.md, \"Strided blocks\"; lipdsl show --lowering)")
               for line in blocks)
    assert ("conv1d conv2 (residual 'down1', main path): 8 -> 8, kernel 3, stride 2: causal realization, 16 "
            "states (independent of the signal length)\n") in res.output
    assert ("  stride 2: this realization runs at the input's rate (as for stride 1); the layer's output is "
            "every 2nd sample, y[t] = v[2t + 1], which the lifted realization of residual 'down1' computes "
            "exactly (and no sample in between)\n") in res.output
    assert "y[t] = v[2t], which the lifted realization of residual 'down2'" in res.output  # conv6, 1x1
    assert "conv1d conv3 (residual 'down1', main path): 8 -> 8, kernel 3: causal" in res.output  # stride 1


@pytest.mark.solver
def test_show_lowering_gives_the_rows_the_solver_sees():
    """ECG: c2's direct LMI has 9 rows, the solver's 12 (Y = X_out^-1 appended), f1's 156 -> 65 (inverse
    head), f2 eliminated; the solver column is exactly `solve --json`'s sdp.lmi_sizes, in order."""
    import re

    res = CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["show", "--lowering", str(SPECS / "ecg.lip")])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in res.output.splitlines() if line.startswith("│")}
    assert rows["c2+relu2"][3] == "9 (4+2+3)" and rows["c2+relu2"][4] == "12 (4+2+3+3Y)"
    assert rows["f1+relu3"][3].startswith("156") and rows["f1+relu3"][4] == "65 (60+5F)"
    assert rows["f2"][4] == "none (eliminated)" and rows["avgpool1"][4] == "-"
    shown = [int(m.group(1)) for r in rows.values() if (m := re.match(r"(\d+) \(", r[4]))]
    solved = json.loads(CliRunner().invoke(cli, ["solve", "--json", str(SPECS / "ecg.lip")]).output)
    assert shown == solved["sdp"]["lmi_sizes"] == [5, 12, 65]
    assert "note: f2: X_(l-1) := W'W substituted" in res.output
    assert "lipdsl solve's form (--frequencies auto, --weight-rank auto): exact LMIs" in res.output
    assert solved["form"].startswith("exact LMIs")


def test_show_lowering_names_the_form_solve_picks():
    """issue 20: a net whose exact LMIs are large is solved in the frequency form by default, and
    `show --lowering` says so in the words `solve` uses."""
    spec = str(SPECS / "tcn_plain.lip")
    res = CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["show", "--lowering", spec])
    assert res.exit_code == 0, res.output
    expected = ("lipdsl solve's form (--frequencies auto, --weight-rank auto): frequency-domain LMIs for "
                "the wide conv layers on 17 frequencies, chosen automatically: 916 variables instead of the "
                "exact LMIs' 22,116")
    assert expected in res.output
    assert "subspace" not in res.output  # (916 variables: full weights X)


def test_show_lowering_and_solve_name_the_subspace_weights_of_a_wide_net():
    """issue 20: FCN 64/128/64 (trained) has 12,000+ variables even in frequency form with full X: `show
    --lowering` says solve would use rank-16 subspace weights; `--weight-rank` refuses bad values (exit 2)."""
    spec = str(SPECS / "fcn_64_128_64.lip")
    res = CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["show", "--lowering", spec])
    assert res.exit_code == 0, res.output
    assert "weights X of 64+ channels = diag + rank-16 subspace, chosen automatically" in res.output
    for bad in ("0", "-2", "lots"):
        res = CliRunner().invoke(cli, ["solve", spec, "--weight-rank", bad])
        assert res.exit_code == 2 and "--weight-rank" in res.output, res.output


def test_show_lowering_names_each_construct():
    res = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["show", "--lowering", str(SPECS / "features.lip")])
    assert res.exit_code == 0
    for words in (
        "max pool k2 s2: factor sqrt(1), diagonal X",
        "FIR k=3 and avg pool k4 s2 merged: one FIR on blocks of 2 samples",
        "stride 2 as sub-sampling",
        "flatten 3x6",
        "swish slope [-0.1, 1.1]",
    ):
        assert words in res.output


def test_solve_progress_goes_to_a_terminal_only(monkeypatch):
    """Piped (CliRunner: no terminal), solve prints exactly the report, nothing on stderr; with stderr on a
    terminal a status line names the stages and the solver's iterations there, and stdout is the same
    report (times aside)."""
    import io
    import re

    from rich.console import Console

    import lipdsl.app.progress as progress_module
    from lipdsl.pipeline import solve_network
    from lipdsl.lang.load import load_network

    def report(text):  # the report without its timings
        return [line for line in text.splitlines() if not line.strip().startswith("time:")]

    piped = CliRunner().invoke(cli, ["solve", str(SPECS / "ecg.lip")], catch_exceptions=False)
    assert piped.exit_code == 0 and piped.stderr == "" and piped.output.startswith("Lipschitz upper bound")
    assert "lipdsl solve:" not in piped.output

    tty = io.StringIO()
    real = progress_module.console

    def fake(stderr=False):
        return Console(file=tty, force_terminal=True, width=120) if stderr else real(stderr)

    monkeypatch.setattr(progress_module, "console", fake)
    shown = CliRunner().invoke(cli, ["solve", str(SPECS / "ecg.lip")], catch_exceptions=False)
    assert shown.exit_code == 0 and report(shown.output) == report(piped.output)
    assert "lipdsl solve:" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.getvalue())
    tty.truncate(0)
    as_json = CliRunner().invoke(cli, ["solve", "--json", str(SPECS / "ecg.lip")], catch_exceptions=False)
    assert json.loads(as_json.output)["certified"] and tty.getvalue() == ""  # --json: no display

    stages, iterations = [], []
    from lipdsl.solvers.solve import on_iteration

    with on_iteration(iterations.append):
        solve_network(load_network(SPECS / "ecg.lip")[1], progress=stages.append)
    assert stages == ["lowering", "building the SDP", "solving", "certifying"]
    assert iterations[:3] == [1, 2, 3]


def test_frequencies_on_a_net_without_a_gridded_system_says_every_lmi_is_exact():
    """--frequencies 5 on resnet1d_strided (no system with at least as many states as inputs and outputs):
    the text has a note and --json's form says the LMIs are exact (form claimed "frequency-domain LMIs ...
    on 5 frequencies" with frequencies null); the bound is the exact LMIs'."""
    from lipdsl.sdp.build import NO_FREQUENCY_FORM

    spec = str(SPECS / "resnet1d_strided.lip")
    said = NO_FREQUENCY_FORM.format(k=5)
    res = run("solve", spec, "--frequencies", "5")
    assert res.exit_code == 0 and f"note: {said}" in " ".join(res.output.split())
    out = json.loads(run("solve", spec, "--frequencies", "5", "--json").output)
    exact = json.loads(run("solve", spec, "--frequencies", "none", "--json").output)
    assert out["form"] == said and out["frequencies"] is None and out["lipschitz"] == exact["lipschitz"]


@pytest.mark.parametrize("solver", ["cvxopt", "cvxopt-generic", "hkm"])
def test_each_builtin_solver_runs_in_a_fresh_process(solver):
    """`python -m lipdsl solve --solver S` in a new interpreter, where nothing else has imported a module the
    solver needs (cvxopt-generic used cvxopt.misc without importing it: an AttributeError traceback from the
    CLI on every spec, unseen in this process, where another test had imported it)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "lipdsl", "solve", str(SPECS / "ecg.lip"), "--solver", solver]
    res = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Lipschitz upper bound of ecg: 109.12299") and "(certified)" in res.stdout

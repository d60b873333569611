"""`lipdsl lower` end to end: text and JSON output, seed reproducibility, errors through fail()."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from lipdsl.app.cli import cli
from lipdsl.model.forward import forward, jacobian
from lipdsl.lang.load import load_network
from repo_paths import SPECS



def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_lower_text_report():
    res = run("lower", "--starts", "4", str(SPECS / "lipsdp_random.lip"))
    assert res.exit_code == 0, res.output
    assert "lipschitz >= 36.482229" in res.output and "seed 0" in res.output


def test_lower_json_witness_is_checkable():
    res = run("lower", "--json", "--starts", "3", "--seed", "5", str(SPECS / "ecg.lip"))
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    _, net = load_network(str(SPECS / "ecg.lip"))
    u = np.array(data["argmax_input"])
    assert u.shape == (1, 128) and data["seed"] == 5 and data["starts"] == 3
    if data["witness"] == "jacobian":
        witnessed = np.linalg.norm(jacobian(net, u), 2)
        assert data["second_input"] is None
    else:  # a difference quotient at two inputs
        v = np.array(data["second_input"])
        witnessed = np.linalg.norm(forward(net, u) - forward(net, v)) / np.linalg.norm(u - v)
    # the witness's value less its rounding margin (a few eps per layer; more for a quotient's cancellation)
    assert data["lower_bound"] <= witnessed and data["lower_bound"] == pytest.approx(witnessed, rel=1e-9)
    assert data["search"] in ("random", "pair-ascent", "segment", "jacobian-ascent")
    again = json.loads(run("lower", "--json", "--starts", "3", "--seed", "5", str(SPECS / "ecg.lip")).output)
    assert again["lower_bound"] == data["lower_bound"]


def test_lower_any_length_uses_the_given_length():
    res = run("lower", "--json", "--starts", "2", "--length", "16", str(SPECS / "tcn_any_length.lip"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["length"] == 16


def test_lower_refuses_activation_without_function(tmp_path):
    spec = tmp_path / "squash.lip"
    spec.write_text("input 2 x 8\nconv1d c: 2 -> 2, kernel 1, weight [[[1], [0]], [[0], [1]]]\n"
                    "squash slope [-0.1, 1.1]\n")
    res = run("lower", str(spec))
    assert res.exit_code == 1
    assert "squash.lip:3:1: error:" in res.output and "needs a known function" in res.output


def test_lower_evaluates_swish_now_in_the_table():
    res = run("lower", str(SPECS / "features.lip"), "--starts", "2", "--time-budget", "2")
    assert res.exit_code == 0, res.output
    assert "lipschitz >=" in res.output


DILATED = ("network t\ninput 2 x 8\nconv1d c: 2 -> 2, kernel 3, {opt}, "
           "weight [[[0.5,0.2,-0.1],[0.1,-0.3,0.2]],[[0.0,0.4,0.1],[0.2,0.1,-0.5]]]\n")


@pytest.mark.parametrize("dilation", ["10^10", "10^18", "10^30"])
def test_lower_refuses_a_huge_dilation_at_its_line(tmp_path, dilation):
    """The fuzzer's tracebacks (numpy's MemoryError, 'array is too big', a pad_width TypeError) are now the
    memory error solve gives, at the conv's line with a caret, exit 3."""
    spec = tmp_path / "dil.lip"
    spec.write_text(DILATED.format(opt=f"dilation {dilation}, padding causal"))
    res = CliRunner().invoke(cli, ["lower", "--starts", "2", "--time-budget", "2", str(spec)])
    assert res.exit_code == 3 and isinstance(res.exception, SystemExit), res.output
    assert "dil.lip:3:1: error: the lower bound's search on inputs of shape 2 x 8: the padded input of " \
           "conv1d 'c' (2 x 2" in res.output
    assert "would need about" in res.output and "\n      | ^~~~" in res.output
    assert "hint: reduce the dilation or padding of 'c'" in res.output
    assert "Traceback" not in res.output


def test_lower_with_a_stride_beyond_int64(tmp_path):
    spec = tmp_path / "stride.lip"
    spec.write_text(DILATED.format(opt="stride 10^19"))
    res = run("lower", "--json", "--starts", "2", "--time-budget", "2", str(spec))
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["lower_bound"] > 0


FOLD_OUT_OF_RANGE = {  # a conv and a batch norm whose fold leaves float64's range (check: refused at line 4)
    "over": "network t\ninput 1 x 4\nconv1d 1 -> 1, kernel 1, weight [[[1e200]]]\n"
            "batchnorm 1, running_mean [0], running_var [1], weight [1e200]\nrelu\n",
    "under": "network t\ninput 1 x 4\nconv1d 1 -> 1, kernel 1, weight [[[1e-200]]]\n"
             "batchnorm 1, running_mean [0], running_var [1], weight [1e-200]\nrelu\n",
}


@pytest.mark.parametrize("kind", sorted(FOLD_OUT_OF_RANGE))
@pytest.mark.parametrize("command", [("lower", "--time-budget", "1"),
                                     ("compare", "--time-budget", "1", "--methods", "naive"),
                                     ("solve", "--method", "naive"), ("solve", "--method", "naive-hinf"),
                                     ("solve", "--method", "lipsdp-neuron"), ("solve",)])
def test_a_fold_out_of_range_is_refused_by_every_command_at_its_line(tmp_path, kind, command):
    """lower, compare and every solve method refuse what check refuses (exit 1 at the batch norm's line),
    before any search (was: an SVD traceback, 'lipschitz >= 0', or exit 3 without a place)."""
    spec = tmp_path / "t.lip"
    spec.write_text(FOLD_OUT_OF_RANGE[kind])
    res = run(*command, str(spec))
    assert res.exit_code == 1, res.output
    assert f"{spec}:4:1: error: folding batchnorm" in res.output and "^~~" in res.output
    assert "lipschitz >=" not in res.output and "Traceback" not in res.output


def test_the_api_refuses_a_fold_out_of_range(tmp_path):
    import lipdsl
    from lipdsl.errors import WeightError

    spec = tmp_path / "t.lip"
    spec.write_text(FOLD_OUT_OF_RANGE["over"])
    net = lipdsl.load(str(spec))
    for call in (lambda: net.lower_bound(starts=1, time_budget=1), lambda: net.compare(methods=("naive",)),
                 lambda: net.solve("naive")):
        with pytest.raises(WeightError, match="folding batchnorm") as info:
            call()
        assert info.value.span.line == 4


def test_lower_of_an_overflowing_network_is_a_clear_error(tmp_path):
    """Two convs of weight 1e300: every Jacobian overflows; the error says so (was: SVD did not converge)."""
    spec = tmp_path / "t.lip"
    spec.write_text("network t\ninput 1 x 4\nconv1d 1 -> 1, kernel 1, weight [[[1e300]]]\nrelu\n"
                    "conv1d 1 -> 1, kernel 1, weight [[[1e300]]]\nrelu\n")
    res = run("lower", "--time-budget", "1", str(spec))
    assert res.exit_code == 3, res.output
    assert "error: the network's Jacobian overflows float64" in res.output and "Traceback" not in res.output


EXACT = {  # linear (or ReLU on a positive path) nets whose Lipschitz constant is a float, exactly
    "dense [[1.2345649]]; relu; dense [[1]]": ("input 1\ndense 1 -> 1, weight [[1.2345649]]\nrelu\n"
                                                "dense 1 -> 1, weight [[1]]\n", 1.2345649),
    "dense [[1.23456789012345]]": ("input 1\ndense 1 -> 1, weight [[1.23456789012345]]\nrelu\n"
                                   "dense 1 -> 1, weight [[1]]\n", 1.23456789012345),
    "dense [[3, 4]]": ("input 2\ndense 2 -> 1, weight [[3, 4]]\n", 5.0),
    "two denses, norm 0.1 * 5": ("input 2\ndense 2 -> 2, weight [[0.1, 0], [0, 0.1]]\n"
                                 "dense 2 -> 1, weight [[3, 4]]\n", 0.5),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_the_reported_lower_bound_is_not_above_an_exact_lipschitz_constant(tmp_path, name):
    """lower --json, compare --json and the API report a value <= L (as floats), within 1e-9 of it (was:
    1.2345649000009795 for L = 1.2345649, a difference quotient of two close points, rounded up)."""
    import lipdsl

    text, L = EXACT[name]
    spec = tmp_path / "t.lip"
    spec.write_text("network t\n" + text)
    got = [json.loads(run("lower", "--json", "--time-budget", "2", str(spec)).output)["lower_bound"],
           json.loads(run("compare", "--json", "--methods", "naive", "--time-budget", "2",
                          str(spec)).output)["lower_bound"]["value"],
           lipdsl.load(str(spec)).lower_bound(starts=4, time_budget=2).value]
    for value in got:
        assert value <= L and value == pytest.approx(L, rel=1e-9)


def test_a_difference_quotient_with_cancellation_is_reported_below_it():
    """The UA's two close points on ``dense [[1.2345649]]; relu; dense [[1]]``: their quotient rounds to
    1.2345649000009795 > L; less its cancellation margin it is <= L, and within 1e-9 of it."""
    from lipdsl.baselines.empirical import _quotient, _quotient_margin, _rounded_down
    from lipdsl.lang.load import check_source
    from lipdsl.lang.source import Source
    from lipdsl.model.forward import linearize

    L = 1.2345649
    net = check_source(Source("b.lip", "network b\n" + EXACT["dense [[1.2345649]]; relu; dense [[1]]"][0]))
    x, y = np.array([0.9247340023353766]), np.array([0.9249264757356102])
    q = _quotient(net, x, y)
    assert q > L  # the rounding the margin is for
    down = _rounded_down(q, _quotient_margin(net, linearize(net, x).output, linearize(net, y).output))
    assert down <= L and down == pytest.approx(L, rel=1e-9)

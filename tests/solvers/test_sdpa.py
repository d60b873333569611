"""sdpa: golden .dat-s (2-layer net), every export valid and equal to our LMIs, round trip via sdpa-python."""
import io
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from lipdsl.pipeline import solve_network
from lipdsl.certify.recheck import certify
from lipdsl.app.cli import cli
from lipdsl.lang.load import load_network
from lipdsl.model.lower import lower
from lipdsl.sdp.build import build_sdp
from lipdsl.solvers.sdpa import BOUND_LINE, SdpaFormatError, read_sdpa, solve_sdpa_file, write_sdpa
from lipdsl.solvers.solve import Solution
from nets import Builder
from nets import ecg, mixed_net
from repo_paths import GOLDEN as GOLDEN_DIR
from repo_paths import SPECS

GOLDEN = GOLDEN_DIR / "tiny.dat-s"
# every good spec but the 784-50-10 MNIST net (slow); gap.lip is any-length with a global average pool
ROUND_TRIP = ["ecg", "lipsdp_random", "haar_exact", "tcn_any_length", "features", "gap", "avgpool_overlap"]
LENGTH = {"gap": 64}


def tiny_net():
    """conv1d 1 -> 1, k = 2 (valid), ReLU, flatten (1 x 2 -> 2), dense 2 -> 1: small enough to read by eye."""
    return (Builder(1, 3, name="tiny").conv([[[0.6, 0.8]]], padding="valid").act("relu").flatten()
            .dense([[1.0, -1.0]]).build())


def spec_sdp(name):
    _, net = load_network(SPECS / f"{name}.lip")
    return net, build_sdp(lower(net, min_length=LENGTH.get(name)))


def export(sdp, tmp_path, name="net"):
    path = tmp_path / f"{name}.dat-s"
    write_sdpa(sdp, path, spec_name=f"{name}.lip")
    return path


# -- golden file ------------------------------------------------------------------------------------------

def test_golden_tiny(tmp_path):
    """The tiny net's file equals tests/golden/tiny.dat-s (text exactly, values to 1e-12 across BLAS builds).

    Regenerate with ``LIPDSL_UPDATE_GOLDEN=1 pytest tests/solvers/test_sdpa.py -k golden``.
    """
    out = io.StringIO()
    write_sdpa(build_sdp(lower(tiny_net())), out, spec_name="tests/solvers/test_sdpa.py::tiny_net")
    text = out.getvalue()
    if os.environ.get("LIPDSL_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    path = tmp_path / "tiny.dat-s"
    path.write_text(text)
    got, want = read_sdpa(path), read_sdpa(GOLDEN)
    assert got.comments == want.comments
    assert (got.m, got.blocks) == (want.m, want.blocks) == (4, (4, 1, -2))
    assert np.array_equal(got.entries, want.entries)
    assert np.allclose(got.values, want.values, rtol=1e-12, atol=0)
    assert np.array_equal(got.c, [1.0, 0.0, 0.0, 0.0])
    assert text.count("\n* bound = sqrt(objective) * ") == 1


def test_golden_tiny_means_what_the_comments_say():
    """The golden file's matrices, read by hand: block 1 is the conv LMI, 2 the dense one, 3 is x >= 0.

    The network ends in flatten -> linear dense, so the SDP is solved in Y = X^-1 (sdp module docstring):
    x1 = rho, x2 = Y, x3 = P, x4 = lambda.
    """
    d = read_sdpa(GOLDEN)
    assert d.factor == pytest.approx(math.sqrt(2))  # ||conv|| = 1, ||W|| = sqrt 2
    # block 1 rows (state, input, output, Y): x4 = lambda gives -(alpha+beta) C'L, -(alpha+beta) D'L with
    # C = 0.6, D = 0.8 (taps reversed), and 2L; the Schur coupling [[2L, I], [I, Y]] is constant
    assert np.allclose(d.matrix(4, 1), [[0, 0, -0.6, 0], [0, 0, -0.8, 0], [-0.6, -0.8, 2, 0], [0, 0, 0, 0]])
    assert np.allclose(d.matrix(2, 1), np.diag([0, 0, 0, 1]))
    assert np.allclose(d.matrix(0, 1)[2, 3], -1.0)  # SDPA's F_0 = -(our constant): the I coupling
    # dense layer: X (x) I_2 - W'W/2 >= 0 becomes 1 - Y (W/sqrt 2 has columns +-1/sqrt 2) >= 0
    assert np.allclose(d.matrix(0, 2), [[-1.0]]) and np.allclose(d.matrix(2, 2), [[-1.0]])
    assert np.allclose(d.matrix(1, 3), np.diag([1, 0])) and np.allclose(d.matrix(4, 3), np.diag([0, 1]))


# -- validity: every exported file, read strictly, is the SDP we solve ------------------------------------

def _check_file(sdp, path):
    d = read_sdpa(path)
    assert d.m == sdp.n
    n_l = sum(v.dim for v in sdp.nonneg)
    assert d.blocks == tuple(lmi.size for lmi in sdp.lmis) + (-n_l,)
    assert np.array_equal(d.c, sdp.objective())
    assert d.factor == sdp.factor  # repr round-trips exactly
    assert sum(bool(BOUND_LINE.match(line)) for line in d.comments) == 1
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.normal(size=sdp.n)
        for b, lmi in enumerate(sdp.lmis, start=1):
            assert np.allclose(d.slack(x, b), lmi.value(x), rtol=1e-12, atol=1e-12), lmi.name
        idx = np.concatenate([np.arange(v.offset, v.offset + v.dim) for v in sdp.nonneg])
        assert np.allclose(np.diag(d.slack(x, len(d.blocks))), x[idx])
    return d


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_every_spec_exports_valid_sdpa_equal_to_the_lmis(name, tmp_path):
    _, sdp = spec_sdp(name)
    d = _check_file(sdp, export(sdp, tmp_path, name))
    # each F_k's nonzeros: about those of the LMIs' upper triangles, no dense blow-up
    upper = sum(((abs(lmi.G) @ np.ones(sdp.n)).reshape(lmi.size, lmi.size) != 0).sum() for lmi in sdp.lmis)
    assert d.nonzeros <= sum(lmi.G.nnz for lmi in sdp.lmis) + upper + sdp.n


@pytest.mark.parametrize("build", [tiny_net, ecg, lambda: mixed_net(0), lambda: mixed_net(3)])
def test_built_nets_export_valid_sdpa(build, tmp_path):
    sdp = build_sdp(lower(build()))
    _check_file(sdp, export(sdp, tmp_path))


BAD = [  # (what, edit of the tiny file's lines) -> read_sdpa must refuse
    ("lower triangle", lambda L: L + ["4 1 3 1 -0.6"], "below the diagonal"),
    ("duplicate", lambda L: L + [L[-1]], "duplicate entry"),
    ("block out of range", lambda L: L + ["1 4 1 1 1.0"], "block number 4"),
    ("matrix out of range", lambda L: L + ["5 1 1 1 1.0"], "matrix number 5"),
    ("index outside block", lambda L: L + ["1 2 1 3 1.0"], "outside block 2"),
    ("LP off-diagonal", lambda L: L + ["1 3 1 2 1.0"], "off the diagonal"),
    ("not finite", lambda L: L + ["1 1 1 2 nan"], "non-finite"),
    ("short entry", lambda L: L + ["1 2 1"], "expected 'matno blkno i j value'"),
    ("short c", lambda L: [s if s != "1.0 0.0 0.0 0.0" else "1.0 0.0" for s in L], "expected 4 values in c"),
    ("bad header", lambda L: [s if s != "3 = nBLOCK" else "three = nBLOCK" for s in L], "integer"),
]


@pytest.mark.parametrize("what, edit, message", BAD, ids=[b[0] for b in BAD])
def test_read_sdpa_refuses_invalid_files(what, edit, message, tmp_path):
    lines = GOLDEN.read_text().splitlines()
    path = tmp_path / "bad.dat-s"
    path.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(SdpaFormatError, match=message):
        read_sdpa(path)


# -- round trip: the exported file solved by sdpa-python gives lipdsl's bound -------------------------------

@pytest.mark.solver
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_sdpa_python_matches_lipdsl(name, tmp_path):
    net, sdp = spec_sdp(name)
    path = export(sdp, tmp_path, name)
    res = solve_sdpa_file(path, tol=1e-9)
    bound_sdpa = math.sqrt(res.objective) * read_sdpa(path).factor
    ours = solve_network(net, min_length=LENGTH.get(name), tol=1e-9)
    assert ours.certificate.verified
    assert bound_sdpa == pytest.approx(ours.certificate.lipschitz, rel=1e-6)
    # SDPA's point is lipdsl's x: it certifies too, to the same bound
    cert = certify(sdp, Solution(res.status, float(res.x[sdp.rho.offset]), res.x, "sdpa", res.seconds))
    assert cert.verified and cert.lipschitz == pytest.approx(ours.certificate.lipschitz, rel=1e-6)


@pytest.mark.solver
def test_solve_network_with_sdpa_backend():
    _, net = load_network(SPECS / "lipsdp_random.lip")
    res = solve_network(net, solver="sdpa")
    assert res.solution.solver == "sdpa" and res.certificate.verified
    assert res.certificate.lipschitz == pytest.approx(36.4822, rel=1e-5)  # LipSDP-Neuron = exact here


@pytest.mark.solver
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LIPDSL_SLOW"), reason="784-50-10 net: set LIPDSL_SLOW=1 to run it")
def test_round_trip_mnist(tmp_path):
    net, sdp = spec_sdp("lipsdp_mnist")
    path = export(sdp, tmp_path, "mnist")
    _check_file(sdp, path)
    res = solve_sdpa_file(path, tol=1e-9)
    ours = solve_network(net, tol=1e-9)
    assert math.sqrt(res.objective) * sdp.factor == pytest.approx(ours.certificate.lipschitz, rel=1e-6)


# -- CLI ----------------------------------------------------------------------------------------------------

def test_cli_export_writes_and_reports_size(tmp_path):
    out = tmp_path / "ecg.dat-s"
    res = CliRunner().invoke(cli, ["export", str(SPECS / "ecg.lip"), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and "m = 88 variables" in res.output and "(5 12 65 -66)" in res.output
    d = read_sdpa(out)
    assert f"bound = sqrt(objective) * {d.factor!r}" in res.output
    assert any("ecg.lip" in line for line in d.comments[:1])


def test_cli_export_errors(tmp_path):
    res = CliRunner().invoke(cli, ["export", str(SPECS / "gap.lip"), "-o", str(tmp_path / "g.dat-s")])
    assert res.exit_code == 1 and "--length" in res.output
    res = CliRunner().invoke(cli, ["export", str(SPECS / "gap.lip"), "--length", "64", "-o",
                                   str(tmp_path / "g.dat-s")])
    assert res.exit_code == 0
    res = CliRunner().invoke(cli, ["export", str(SPECS / "ecg.lip"), "-o", str(tmp_path / "no" / "x.dat-s")])
    assert res.exit_code == 1 and "cannot write" in res.output


@pytest.mark.solver
def test_cli_export_lift_matches_solve_lift(tmp_path):
    """`export --lift 2` writes the lifted SDP that `solve --lift 2` solves."""
    out = tmp_path / "tcn.dat-s"
    spec = SPECS / "tcn_any_length.lip"
    args = ["export", str(spec), "--lift", "2", "-o", str(out)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    _, net = load_network(spec)
    sdp = build_sdp(lower(net, lift=2))
    d = _check_file(sdp, out)
    ours = solve_network(net, lift=2, tol=1e-9)
    assert math.sqrt(solve_sdpa_file(out, tol=1e-9).objective) * d.factor == pytest.approx(
        ours.certificate.lipschitz, rel=1e-6)


def test_export_has_solve_limits_and_lift(tmp_path, cli):
    """Export goes through the same lowering entry as solve: the size limits refuse before allocating, and
    the Python API's export takes ``lift`` as the CLI's does."""
    import lipdsl
    import lipdsl.pipeline
    from lipdsl.errors import LimitError

    spec = SPECS / "ecg.lip"
    net = lipdsl.load(str(spec))
    plain = net.export_sdpa(tmp_path / "a.dat-s")
    lifted = net.export_sdpa(tmp_path / "b.dat-s", lift=2)
    res = cli("export", spec, "--lift", "2", "-o", tmp_path / "c.dat-s")
    assert res.exit_code == 0
    assert (tmp_path / "b.dat-s").read_text() == (tmp_path / "c.dat-s").read_text().replace(
        f" from {spec}", f" from {net.typed.source_path}")
    assert lifted.m > plain.m
    with pytest.raises(LimitError, match="more than --max-lmi 10"):
        lipdsl.pipeline.lower_within_limits(net.typed, max_lmi=10)

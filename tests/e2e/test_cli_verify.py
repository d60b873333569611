"""`lipdsl solve --certificate / --exact` and `lipdsl verify` end to end: files, reports, exit codes."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from lipdsl.app.cli import cli
from repo_paths import GOLDEN, SPECS

pytestmark = pytest.mark.solver
ECG_REFERENCE = 109.12299234900972


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def ecg_cert(tmp_path_factory):
    path = tmp_path_factory.mktemp("cert") / "ecg.cert.json"
    res = run("solve", SPECS / "ecg.lip", "--certificate", path)
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "(certified)" in res.stdout
    assert f"certificate written to {path}" in " ".join(res.stdout.split())
    return path


def test_solve_writes_a_certificate_that_verifies(ecg_cert):
    doc = json.loads(ecg_cert.read_text())
    assert doc["schema"] == "lipdsl-certificate/2"
    res = run("verify", SPECS / "ecg.lip", ecg_cert)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("verified: Lipschitz constant of ecg <= 109.1229929")
    assert "floating point with rounding bounds" in res.stdout
    assert res.stdout.count("ok   ") == 6 and "FAIL" not in res.stdout


def test_verify_exact_json(ecg_cert):
    res = run("verify", SPECS / "ecg.lip", ecg_cert, "--exact", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] is True and out["mode"] == "exact" and out["realization_exact"] is True
    assert abs(out["lipschitz"] - ECG_REFERENCE) <= 1e-6 and out["lipschitz"] >= ECG_REFERENCE
    assert out["bound"] == "109.1229929"
    assert [c["size"] for c in out["checks"]][:3] == [5, 9, 156]


def test_solve_exact_reports_proved(tmp_path):
    res = run("solve", SPECS / "ecg.lip", "--exact")
    assert res.exit_code == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert "certified, proved: L <= 109.1229929 in exact arithmetic" in " ".join(res.stdout.split())
    assert "109.1229929 (certified" in first  # rounded up, as every printed bound
    res = run("solve", SPECS / "tcn_any_length.lip", "--exact", "--json",
              "--certificate", tmp_path / "t.json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["proof"]["ok"] is True and out["proof"]["mode"] == "exact"
    assert (tmp_path / "t.json").exists()


def test_tampered_multiplier_exits_3_naming_the_lmi(ecg_cert, tmp_path):
    doc = json.loads(ecg_cert.read_text())
    lam = doc["lmis"][1]["lambda"]
    lam[2] = float(repr(lam[2]).replace(repr(lam[2])[0], str((int(repr(lam[2])[0]) + 1) % 10), 1))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    for extra in ([], ["--exact"]):
        res = run("verify", SPECS / "ecg.lip", bad, *extra)
        assert res.exit_code == 3
        assert "error: the certificate of ecg does not verify" in res.stderr
        assert "LMI[c2+relu2] (layers c2, relu2) fails" in res.stderr
        assert "FAIL LMI[c2+relu2]" in res.stdout


def test_wrong_schema_is_an_input_error_with_golden_text(ecg_cert, tmp_path):
    doc = json.loads(ecg_cert.read_text())
    doc["schema"] = "lipdsl-certificate/0"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        Path("old.json").write_text(json.dumps(doc))
        res = run("verify", SPECS / "ecg.lip", "old.json")
    finally:
        os.chdir(cwd)
    assert res.exit_code == 1
    assert res.stdout == ""
    assert res.stderr == (GOLDEN / "verify_schema.err").read_text()


def test_other_weights_exit_3(ecg_cert):
    """Another network's certificate: said plainly, with the tensors each side lacks (was "weight tensor
    'c1.weight' ... (SHA-256 absent... vs ...)"); exit 3 as documented ("belongs to other weights")."""
    res = run("verify", SPECS / "tcn_any_length.lip", ecg_cert)
    assert res.exit_code == 3 and res.stdout == ""
    assert res.stderr.startswith(  # (the certificate's error: its file first, as every error)
        f"{ecg_cert}: error: the certificate was made for a different network ('ecg', the spec is ")
    assert ("the certificate's weight tensors 'c1.weight', 'c2.weight', 'f1.weight' and 1 more are not in "
            "the spec") in res.stderr
    assert "hint: verify it against the spec it was written for" in res.stderr


def test_a_nan_in_the_certificate_file_is_named(ecg_cert, tmp_path):
    """JSON's NaN read back from the file: the entry is named, the shape is not blamed (the message was
    "expected a finite 4 x 4 matrix, got shape (4, 4)")."""
    doc = json.loads(ecg_cert.read_text())
    doc["lmis"][1]["P"][2][3] = float("nan")
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(doc))
    assert "NaN" in bad.read_text()
    res = run("verify", SPECS / "ecg.lip", bad)
    assert res.exit_code == 3 and res.stdout == ""
    assert res.stderr.splitlines()[0] == \
        f"{bad}: error: P of LMI[c2+relu2]: P[2,3] is nan, expected a finite number"
    assert "shape" not in res.stderr


def test_constant_network_cannot_be_exported(tmp_path):
    spec = tmp_path / "zero.lip"
    spec.write_text("network zero\ninput 1 x 8\n"
                    "conv1d c1: 1 -> 1, kernel 2, padding causal, weight [[[0, 0]]]\nrelu\n")
    res = run("solve", spec, "--certificate", tmp_path / "zero.json")
    assert res.exit_code == 3
    assert "cannot export a certificate for this closed-form bound yet" in res.stderr
    assert "hint:" in res.stderr
    assert not (tmp_path / "zero.json").exists()
    assert res.stdout == ""


def test_certificate_options_need_the_dissipative_method():
    res = run("solve", SPECS / "ecg.lip", "--method", "naive", "--exact")
    assert res.exit_code == 2
    assert "--certificate and --exact apply to --method dissipative only" in res.stderr


def test_pooling_only_network_has_a_certificate_too(tmp_path):
    spec = tmp_path / "pool.lip"
    spec.write_text("network pool\ninput 2 x 8\navgpool 2\nflatten\n")
    res = run("solve", spec, "--exact", "--certificate", tmp_path / "pool.json")
    assert res.exit_code == 0, res.stderr
    assert "proved: L <= 0.7071067812" in res.stdout
    res = run("verify", spec, tmp_path / "pool.json", "--exact")
    assert res.exit_code == 0 and "<= 0.7071067812" in res.stdout


RESIDUAL = (
    "network res\ninput 2 x 16\n"
    "conv1d c1: 2 -> 3, kernel 2, padding causal, weight [[[0.5, -0.25], [0.75, 0.5]], [[-0.5, 0.25], "
    "[0.125, 1]], [[0.25, 0.5], [-0.75, 0.25]]]\n"
    "residual blk:\n"
    "  conv1d c2: 3 -> 3, kernel 3, padding same, weight [[[0.3, -0.2, 0.1], [0.2, 0.1, -0.1], "
    "[0.0, 0.2, 0.1]], [[0.1, 0.2, -0.3], [-0.2, 0.1, 0.3], [0.1, 0.0, 0.2]], "
    "[[0.2, 0.1, 0.0], [0.1, -0.3, 0.2], [0.3, 0.1, -0.1]]]\n"
    "  batchnorm bn: 3, running_mean [0.1, -0.2, 0.3], running_var [0.5, 2, 1.5], weight [1.5, 0.75, 1.25]\n"
    "  leaky_relu(1/10)\n"
    "  conv1d c3: 3 -> 3, kernel 1, weight [[[0.5], [0.25], [-0.5]], [[0.25], [-0.75], [0.5]], "
    "[[0.125], [0.5], [0.25]]]\n"
    "end\nrelu\nglobal_avgpool\n"
    "dense f: 3 -> 2, weight [[1, -0.5, 0.25], [0.5, 0.75, -1]]\n"
)


def test_residual_network_certificate_round_trip_and_tampering(tmp_path):
    spec = tmp_path / "res.lip"
    spec.write_text(RESIDUAL)
    cert = tmp_path / "res.json"
    res = run("solve", spec, "--exact", "--certificate", cert)
    assert res.exit_code == 0, res.stderr
    assert "proved: L <=" in " ".join(res.stdout.split())
    doc = json.loads(cert.read_text())
    block = next(e for e in doc["lmis"] if e["system"] == "blk+relu1")
    assert [i["activation"] for i in block["internal"]] == ["leaky_relu1"]
    for extra in ([], ["--exact"]):
        res = run("verify", spec, cert, *extra)
        assert res.exit_code == 0, res.stderr
        assert res.stdout.startswith("verified: Lipschitz constant of res <= ")
        assert "ok   LMI[blk+relu1] (layers blk, c2+bn, leaky_relu1, c3, relu1)" in res.stdout
        assert "[realization:" not in res.stdout  # the block's realization is the weights' exact map
        # the batch norm's exact scale w / sqrt(v + eps) (irrational) is covered by tau
        assert ("note: LMI[blk+relu1]: batch norm scale w/sqrt(v+eps) of bn covered to relative 2^-50 (tau = "
                in " ".join(res.stdout.split()))
    res = run("verify", spec, cert, "--exact", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["realization_exact"] and len(out["notes"]) == 1
    assert "covered to relative 2^-50" in out["notes"][0]
    block["internal"][0]["lambda"][1] *= 0.25
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    for extra in ([], ["--exact"]):
        res = run("verify", spec, bad, *extra)
        assert res.exit_code == 3
        assert "error: the certificate of res does not verify" in res.stderr
        assert "LMI[blk+relu1] (layers blk, c2+bn, leaky_relu1, c3, relu1) fails" in res.stderr


def test_a_lift_from_the_certificates_options_is_not_blamed_on_the_command_line(tmp_path):
    """``options.lift = 2`` edited into a residual net's certificate: the refusal says the lift comes from the
    certificate (the message was "--lift 2 is not supported ...", an option the user never passed), exit 3 as
    for any certificate that does not belong to the spec."""
    spec = tmp_path / "res.lip"
    spec.write_text(RESIDUAL)
    cert = tmp_path / "res.json"
    assert run("solve", spec, "--certificate", cert).exit_code == 0
    doc = json.loads(cert.read_text())
    doc["options"]["lift"] = 2
    cert.write_text(json.dumps(doc))
    res = run("verify", spec, cert)
    assert res.exit_code == 3 and res.stdout == ""
    assert res.stderr.splitlines()[0] == (
        f"{cert}: error: the certificate's options.lift = 2 (the lift comes from the certificate; verify "
        "has no --lift option) cannot be used with this spec: lift 2 is not supported with residual blocks "
        "or batch norm yet")
    assert "--lift 1" not in res.stderr and "hint: lipdsl solve writes no such certificate" in res.stderr


def test_verify_states_the_certificates_length_condition(tmp_path):
    """An any-length net with a global average pool: verify prints and emits the condition N >= min_length
    taken from the certificate, also when the certificate was edited to a larger min_length (a smaller bound
    that holds for fewer inputs)."""
    cert = tmp_path / "gap.json"
    res = run("solve", SPECS / "gap.lip", "--length", "32", "--certificate", cert)
    assert res.exit_code == 0, res.stderr
    assert "valid for every input length N >= 32" in res.stdout
    res = run("verify", SPECS / "gap.lip", cert)
    assert res.exit_code == 0, res.stderr
    assert ("  valid for every input length N >= 32 (min_length from the certificate's options)\n"
            in res.stdout)
    doc = json.loads(cert.read_text())
    doc["options"]["min_length"] = 100
    edited = tmp_path / "gap100.json"
    edited.write_text(json.dumps(doc))
    res = run("verify", SPECS / "gap.lip", edited)
    assert res.exit_code == 0, res.stderr
    assert "valid for every input length N >= 100 (min_length from the certificate's options)" in res.stdout
    out = json.loads(run("verify", "--json", SPECS / "gap.lip", edited).stdout)
    assert out["ok"] and out["valid_for"] == "every input length N >= 100" and out["min_length"] == 100


def test_verify_of_a_fixed_shape_net_states_its_shape(ecg_cert):
    res = run("verify", SPECS / "ecg.lip", ecg_cert)
    assert res.exit_code == 0
    assert "  valid for inputs of shape 1x128\n" in res.stdout
    assert "from the certificate" not in res.stdout
    assert json.loads(run("verify", "--json", SPECS / "ecg.lip", ecg_cert).stdout)["valid_for"] == \
        "inputs of shape 1x128"


def test_a_fixed_length_certificate_verifies_whatever_min_length_it_records(tmp_path):
    """`solve --length` used to ignore a length on a fixed-length spec and record it in the certificate;
    such certificates still verify (only the spec's length enters the lowering), for the spec's shape."""
    spec = tmp_path / "t.lip"
    spec.write_text("input 2 x 8\nconv1d c: 2 -> 2, kernel 2, weight [[[0.5, 0.2], [0.1, -0.3]], "
                    "[[0.4, 0.1], [0.2, -0.5]]]\nrelu\n")
    cert = tmp_path / "t.json"
    res = run("solve", spec, "--length", "8", "--certificate", cert)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(cert.read_text())
    doc["options"]["min_length"] = 64
    cert.write_text(json.dumps(doc))
    res = run("verify", spec, cert)
    assert res.exit_code == 0, res.stderr
    assert "valid for inputs of shape 2x8" in res.stdout and "N >= 64" not in res.stdout


SHORTCUT = (
    "network sc\ninput 2 x 8\n"
    "conv1d c1: 2 -> 3, kernel 2, padding causal, weight [[[0.5, -0.25], [0.75, 0.5]], [[-0.5, 0.25], "
    "[0.125, 1]], [[0.25, 0.5], [-0.75, 0.25]]]\n"
    "batchnorm bn0: 3, running_mean [0, 0.5, 0], running_var [1, 0.25, 4], weight [1, 2, 0.5], "
    "bias [1, 2, 3]\n"
    "relu\n"
    "residual blk:\n"
    "  conv1d c2: 3 -> 3, kernel 2, padding causal, weight [[[0.3, -0.2], [0.2, 0.1], [0.0, 0.2]], "
    "[[0.1, 0.2], [-0.2, 0.1], [0.1, 0.0]], [[0.2, 0.1], [0.1, -0.3], [0.3, 0.1]]]\n"
    "  batchnorm bn: 3, running_mean [0.1, -0.2, 0.3], running_var [0.5, 2, 1.5], weight [1.5, 0.75, 1.25]\n"
    "  relu\n"
    "shortcut\n"
    "  conv1d s: 3 -> 3, kernel 1, weight [[[0.5], [0.25], [-0.5]], [[0.25], [-0.75], [0.5]], "
    "[[0.125], [0.5], [0.25]]]\n"
    "end\nrelu\nglobal_avgpool\n"
    "dense f: 3 -> 2, weight [[1, -0.5, 0.25], [0.5, 0.75, -1]], bias [1, -1]\n"
)


@pytest.fixture(scope="module")
def shortcut_cert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shortcut")
    (folder / "sc.lip").write_text(SHORTCUT)
    res = run("solve", folder / "sc.lip", "--certificate", folder / "sc.json")
    assert res.exit_code == 0, res.stderr
    return folder / "sc.lip", folder / "sc.json"


@pytest.mark.parametrize("old, new, tensor", [
    ("[[[0.3, -0.2]", "[[[0.3, -0.25]", "blk/main/c2.weight"),
    ("running_var [0.5, 2, 1.5]", "running_var [0.5, 2, 1.25]", "blk/main/bn.running_var"),
    ("[[0.125], [0.5], [0.25]]]", "[[0.125], [0.5], [0.375]]]", "blk/shortcut/s.weight"),
    ("weight [1, 2, 0.5]", "weight [1, 2, 0.75]", "bn0.weight"),
    ("bias [1, 2, 3]", "bias [1, 2, 3], eps 0.001", "bn0.eps"),
])
def test_other_weights_inside_a_block_or_a_batch_norm_exit_3_naming_the_tensor(shortcut_cert, tmp_path,
                                                                               monkeypatch, old, new, tensor):
    """A block's conv, its shortcut's conv, a batch norm's running_var, weight or eps changed in the spec:
    "made for other weights", naming the tensor, before any LMI is built (was: the LMI check's "does not
    verify", or verified for the spec's weights without a word)."""
    spec, cert = shortcut_cert
    assert run("verify", spec, cert).exit_code == 0
    other = tmp_path / "sc.lip"
    assert SHORTCUT.count(old) == 1
    other.write_text(SHORTCUT.replace(old, new))

    def no_lmi(*args, **kwargs):
        raise AssertionError("an LMI was built")

    monkeypatch.setattr("lipdsl.model.lower.lower", no_lmi)
    res = run("verify", other, cert)
    assert res.exit_code == 3 and res.stdout == ""
    what = "value" if tensor.endswith(".eps") else "weight tensor"  # (eps is a number)
    assert res.stderr.startswith(f"{cert}: error: the certificate was made for other weights: {what} "
                                 f"'{tensor}' of the spec does not match the certificate's (SHA-256 ")
    assert "hint: verify it against the weights it was written for" in res.stderr


def _verdict(spec, cert) -> dict:
    """``lipdsl verify --json``'s verdict of a certificate that verifies, without its timing."""
    res = run("verify", "--json", spec, cert)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out.pop("ok") is True
    out.pop("seconds")
    return out


def test_biases_are_not_fingerprinted(shortcut_cert, tmp_path):
    """Biases, and a batch norm's bias and running_mean, only add a constant to a layer's output: no LMI
    contains them and the certificate holds for any of them (docs/certificate.md, "Weight digests")."""
    spec, cert = shortcut_cert
    assert set(json.loads(cert.read_text())["weights"]) == {
        "c1.weight", "bn0.weight", "bn0.running_var", "bn0.eps", "blk/main/c2.weight", "blk/main/bn.weight",
        "blk/main/bn.running_var", "blk/main/bn.eps", "blk/shortcut/s.weight", "f.weight"}
    other = tmp_path / "sc.lip"
    other.write_text(SHORTCUT.replace("bias [1, 2, 3]", "bias [-1, 0, 5]")
                     .replace("bias [1, -1]", "bias [7, 0]")
                     .replace("running_mean [0.1, -0.2, 0.3]", "running_mean [2, 2, 2]"))
    assert _verdict(other, cert) == _verdict(spec, cert)


def test_a_schema_1_certificate_still_verifies(shortcut_cert, tmp_path):
    """A certificate written before every tensor was fingerprinted (schema lipdsl-certificate/1: the top-level
    conv and dense weights only) verifies as before; the same weights under schema /2 are refused."""
    spec, cert = shortcut_cert
    doc = json.loads(cert.read_text())
    doc["weights"] = {k: doc["weights"][k] for k in ("c1.weight", "f.weight")}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    res = run("verify", spec, old)
    assert res.exit_code == 3
    assert ("error: the certificate was made for a different network: the spec's weight tensors and values "
            "'bn0.weight', 'bn0.running_var', 'bn0.eps' and 5 more are not in the certificate") in res.stderr
    doc["schema"] = "lipdsl-certificate/1"
    old.write_text(json.dumps(doc))
    assert _verdict(spec, old) == _verdict(spec, cert)

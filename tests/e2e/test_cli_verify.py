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


def _edited(cert: Path, folder: Path, name: str, edit) -> Path:
    """A copy of certificate ``cert`` with ``edit(doc)`` applied, as ``folder/name``."""
    doc = json.loads(cert.read_text())
    edit(doc)
    out = folder / name
    out.write_text(json.dumps(doc))
    return out


def _set(path: tuple, value):
    """An edit setting ``doc[path[0]][path[1]]... = value``."""
    def edit(doc):
        *head, last = path
        for key in head:
            doc = doc[key]
        doc[last] = value
    return edit


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
    assert out["certificate_file"] == str(tmp_path / "t.json") and "certificate_error" not in out


def test_a_proof_on_rounded_realizations_says_so(tmp_path):
    """resnet1d_strided's strided blocks are checked on lower.py's rounded realization: `solve --exact`
    qualifies its "proved" and names those LMIs in a proof note, as `verify --exact` does in its note (solve
    claimed a plain "proved ... in exact arithmetic"); the ECG net's proof has neither."""
    cert = tmp_path / "s2.json"
    res = run("solve", SPECS / "resnet1d_strided.lip", "--exact", "--certificate", cert)
    assert res.exit_code == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "in exact arithmetic on rounded realizations, see the proof note)" in text
    uncovered = ("LMI[down1+relu3], LMI[down2+relu5]: checked with lower.py's floating-point realization")
    assert f"proof note: {uncovered}" in text and "rounded to double are not covered" in text
    res = run("verify", SPECS / "resnet1d_strided.lip", cert, "--exact")
    assert res.exit_code == 0 and f"note: {uncovered}" in " ".join(res.stdout.split())
    res = run("solve", SPECS / "ecg.lip", "--exact")
    assert "rounded realizations" not in res.stdout and "lower.py's floating-point" not in res.stdout


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
    assert res.stdout.startswith("Lipschitz upper bound of zero: 0 (certified)\n")  # then the error


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
        # the batch norm's exact scale w / sqrt(v + eps) (irrational) is covered by tau: said once, on the
        # block's line, not again as a note
        text = " ".join(res.stdout.split())
        cover = "batch norm scale w/sqrt(v+eps) of bn covered to relative 2^-50 (tau = "
        assert text.count(cover) == 1
        assert text.index("ok LMI[blk+relu1]") < text.index(cover) < text.index("time ")
        assert "note: LMI[blk+relu1]" not in text
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
    bad = _edited(cert, tmp_path, "lift2.json", _set(("options", "lift"), 2))
    res = run("verify", spec, bad)
    assert res.exit_code == 3 and res.stdout == ""
    assert res.stderr.splitlines()[0] == (
        f"{bad}: error: the certificate's options.lift = 2 (the lift comes from the certificate; verify "
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
    res = run("verify", spec, _edited(cert, tmp_path, "t64.json", _set(("options", "min_length"), 64)))
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
    ours, theirs = _verdict(spec, old), _verdict(spec, cert)
    # (what a /1 file does not pin is said: docs/certificate.md claimed the LMI check caught it, but the
    # LMIs are built from the spec's weights and hold for them)
    assert ours["notes"].pop(0) == (
        "this lipdsl-certificate/1 file fingerprints the top-level conv and dense weights only: weight "
        "tensors and values 'bn0.weight', 'bn0.running_var', 'bn0.eps' and 5 more of the residual blocks and "
        "batch norms are not pinned by it; the bound verified holds for the spec's values (re-create the "
        "certificate to pin them: lipdsl solve SPEC --certificate FILE)")
    assert ours == theirs
    changed = tmp_path / "sc.lip"  # (one weight in the block: verifies, with the note)
    changed.write_text(SHORTCUT.replace("[[[0.3, -0.2]", "[[[0.3, -0.20000000000000004]"))
    res = run("verify", changed, old)
    assert res.exit_code == 0 and "note: this lipdsl-certificate/1 file fingerprints" in res.stdout


@pytest.mark.parametrize("edit, message", [
    (_set(("rho",), 10**400), "rho is an integer beyond the range of a double (about 1.8e308)"),
    (_set(("lipschitz",), 10**400), "the claimed bound lipschitz is an integer beyond the range of a double"),
    (_set(("lmis", 0, "lambda", 0), 10**400), "lambda of LMI[c1+relu1]: an entry is an integer beyond"),
    (_set(("lmis", 1, "P", 0, 0), 10**400), "P of LMI[c2+relu2]: an entry is an integer beyond"),
    (_set(("rho",), "1.0"), "field 'rho' is a string, expected a number"),
    (_set(("rho",), True), "field 'rho' is true, expected a number"),
    (lambda d: d.pop("X"), "field 'X' is missing, expected an object"),
    (_set(("weights",), []), "field 'weights' is a list, expected an object"),
    (_set(("options", "min_length"), True), "options.min_length = true is not valid: expected an integer"),
    (_set(("options", "min_length"), 0), "options.min_length = 0 is not valid"),
    (_set(("options", "min_length"), -5), "options.min_length = -5 is not valid"),
    (_set(("options", "lift"), "2"), "options.lift = \"2\" is not valid: expected an integer >= 1"),
    (_set(("options", "merge_linear"), "no"), "options.merge_linear = \"no\" is not valid: expected true or"),
])
def test_malformed_values_exit_3_in_the_house_format(ecg_cert, tmp_path, edit, message):
    """Huge JSON integers (were OverflowError tracebacks), mistyped or missing fields (were exit 1 as
    "error: FILE: field ... is missing or not a float"), ``true`` as min_length and ``"2"`` as lift (were
    read as 1 and 2), min_length 0 or -5 (was blamed on the spec with "give a larger --length"): each is the
    certificate's malformed value, exit 3, ``cert.json: error: ...``; ``lipdsl.verify`` raises a
    CertificateError for it."""
    import lipdsl
    from lipdsl.errors import CertificateError

    bad = _edited(ecg_cert, tmp_path, "bad.json", edit)
    for extra in ([], ["--exact"], ["--json"]):
        res = run("verify", SPECS / "ecg.lip", bad, *extra)
        assert res.exit_code == 3 and res.stdout == "", res.stderr
        first = res.stderr.splitlines()[0]
        assert first.startswith(f"{bad}: error: ") and message in first, first
        assert "Traceback" not in res.stderr
    with pytest.raises(CertificateError) as info:
        lipdsl.verify(SPECS / "ecg.lip", bad)
    assert message in info.value.message
    assert info.value.render(info.value.source).startswith(f"{bad}: error: ")


def test_a_huge_multiplier_fails_the_exact_check_with_its_pivot_named(ecg_cert, tmp_path):
    """lambda = 1e308 with --exact: the failing pivot is printed exactly (float() of it: OverflowError)."""
    bad = _edited(ecg_cert, tmp_path, "big.json", _set(("lmis", 0, "lambda", 0), 1e308))
    res = run("verify", SPECS / "ecg.lip", bad, "--exact")
    assert res.exit_code == 3, res.stderr
    assert "LMI[c1+relu1] (layers c1, relu1) fails: exact LDL': pivot" in res.stderr
    assert "e+6" in res.stderr.split("pivot")[1].split("<=")[0]  # (about -1e616: beyond any double)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "not a JSON certificate: not UTF-8 text (UTF-16?): byte 0xff at offset 0"),
    (b"PK\x03\x04\x00\x00", "not a JSON certificate: it is a zip archive (NumPy .npz weights?)"),
    (b"[" * 3000, "not a JSON certificate: arrays or objects nested too deeply to read"),
    (b" " * 5000, "cannot read certificate: the certificate has 5,000 bytes, more than lipdsl reads (4,096)"),
])
def test_unreadable_certificates_exit_1_in_the_house_format(tmp_path, monkeypatch, content, message):
    """A non-UTF-8 file or an .npz (were UnicodeDecodeError), deep nesting (was RecursionError), a file larger
    than certificate.MAX_CERTIFICATE_BYTES (had no limit): exit 1, ``cert.json: error: ...``."""
    monkeypatch.setattr("lipdsl.certify.certificate.MAX_CERTIFICATE_BYTES", 4096)
    bad = tmp_path / "c.json"
    bad.write_bytes(content)
    res = run("verify", SPECS / "ecg.lip", bad)
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.splitlines()[0] == f"{bad}: error: {message}"


def test_a_certificate_with_a_byte_order_mark_verifies_and_a_too_long_integer_is_refused(ecg_cert, tmp_path):
    """A UTF-8 BOM is dropped as in specs (was "Unexpected UTF-8 BOM"); an integer of more digits than Python
    converts is the certificate's malformed value (was a ValueError from json)."""
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + ecg_cert.read_bytes())
    assert run("verify", SPECS / "ecg.lip", bom).exit_code == 0
    long = tmp_path / "long.json"
    long.write_text(ecg_cert.read_text().replace('"rho": ', '"rho": ' + "9" * 5000 + ", \"x\": ", 1))
    res = run("verify", SPECS / "ecg.lip", long)
    assert res.exit_code == 3 and res.stderr.startswith(
        f"{long}: error: it holds an integer beyond the range of a double (about 1.8e308): one of more than ")


ANY_LENGTH = ("network short\ninput 1 x *\nconv1d c1: 1 -> 2, kernel 3, weight [[[0.5, -0.25, 0.75]], "
              "[[0.25, 0.5, -0.5]]]\nrelu\nglobal_avgpool\ndense f: 2 -> 1, weight [[1, -0.5]]\n")


def test_a_min_length_too_short_for_the_spec_is_the_certificates(tmp_path):
    """options.min_length = 2 for a net whose valid conv needs 3 samples: refused as the certificate's option
    (was "spec.lip:3:1: ... too short" with the hint "give a larger --length", exit 1)."""
    spec = tmp_path / "valid.lip"
    spec.write_text(ANY_LENGTH)
    cert = tmp_path / "valid.json"
    assert run("solve", spec, "--length", "8", "--certificate", cert).exit_code == 0
    bad = _edited(cert, tmp_path, "short.json", _set(("options", "min_length"), 2))
    res = run("verify", spec, bad)
    assert res.exit_code == 3 and res.stdout == ""
    assert res.stderr.splitlines()[0] == (
        f"{bad}: error: the certificate's options.min_length = 2 (the min_length comes from the certificate; "
        "verify has no --length option) cannot be used with this spec: an input of length 2 is too short for "
        "layer 'c1'")
    assert "give a larger --length" not in res.stderr


def test_verify_names_the_spec_and_notes_another_name_in_the_certificate(ecg_cert, tmp_path):
    """The spec is what is verified: its name is printed (was the certificate's), and a certificate naming
    another network says so in a note (text and --json)."""
    renamed = tmp_path / "ecg.lip"
    renamed.write_text((SPECS / "ecg.lip").read_text().replace("network ecg", "network mine", 1))
    for folder in ("weights",):
        if (SPECS / folder).exists():
            (tmp_path / folder).symlink_to(SPECS / folder)
    res = run("verify", renamed, ecg_cert, "--allow-outside")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("verified: Lipschitz constant of mine <= 109.1229929")
    assert "note: the certificate names the network 'ecg'; the spec verified is 'mine'" in res.stdout
    other = _edited(ecg_cert, tmp_path, "other.json", _set(("network",), "other"))
    out = json.loads(run("verify", "--json", SPECS / "ecg.lip", other).stdout)
    assert out["network"] == "ecg" and out["ok"]
    assert out["notes"][0].startswith("the certificate names the network 'other'; the spec verified is 'ecg'")


def test_a_certificate_of_a_tiny_net_is_refused_with_the_reason(tmp_path):
    """Two convs of weight 1e-300: the bound is certified, but the certificate's unscaled rho^ (about
    1e-1200) is no double: solve --certificate says so (was "the certificate does not verify ... please
    report this") and writes nothing."""
    spec = tmp_path / "small.lip"
    spec.write_text("input 1 x 4\nconv1d 1 -> 1, kernel 1, weight [[[1e-300]]]\nrelu\n"
                    "conv1d 1 -> 1, kernel 1, weight [[[1e-300]]]\nrelu\n")
    assert run("solve", spec).exit_code == 0
    res = run("solve", spec, "--certificate", tmp_path / "small.json")
    assert res.exit_code == 3
    assert res.stderr.startswith(
        "error: cannot write a certificate for this bound: a certificate holds the point for the unscaled "
        "weights (docs/certificate.md), and rho^ = rho * prod s_i^2 is about 1e-1200, outside the normal "
        "range of doubles")
    assert "please report" not in res.stderr and not (tmp_path / "small.json").exists()


def test_a_refused_certificate_comes_after_the_certified_bound(tmp_path):
    """solve --certificate prints the bound it certified (as plain solve does), then the certificate's error
    on stderr, exit 3 (it exited 3 with the error alone); --json prints the result, without
    certificate_file, with certificate_error, and the error on stderr."""
    spec = tmp_path / "small.lip"
    spec.write_text("input 1 x 4\nconv1d 1 -> 1, kernel 1, weight [[[1e-300]]]\nrelu\n"
                    "conv1d 1 -> 1, kernel 1, weight [[[1e-300]]]\nrelu\n")
    plain = run("solve", spec)
    assert plain.exit_code == 0
    res = run("solve", spec, "--certificate", tmp_path / "small.json")
    assert res.exit_code == 3 and not (tmp_path / "small.json").exists()
    bound = plain.stdout.splitlines()[0]
    assert bound.startswith("Lipschitz upper bound of small: ") and bound.endswith("(certified)")
    assert res.stdout.splitlines()[0] == bound and "certificate written" not in res.stdout
    assert res.stderr.startswith("error: cannot write a certificate for this bound")
    out = json.loads(run("solve", "--json", spec).stdout)
    res = run("solve", "--json", spec, "--certificate", tmp_path / "small.json")
    assert res.exit_code == 3 and res.stderr.startswith("error: cannot write a certificate for this bound")
    got = json.loads(res.stdout)
    assert got["lipschitz"] == out["lipschitz"] and "certificate_file" not in got
    assert got["certificate_error"].startswith("cannot write a certificate for this bound")

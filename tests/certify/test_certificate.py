"""Certificate files: api.Result -> JSON document (schema, values in original unscaled form, round trip)."""

import json
import math

import numpy as np
import pytest
from cert_cases import CONSTRUCTS, ECG_REFERENCE, case_id, solved
from hypothesis import given, settings
from hypothesis import strategies as st

import lipdsl
from lipdsl.certify import certificate
from lipdsl.errors import CertificateError, LipdslError
from lipdsl.certify.verify import verify
from lipdsl.lang import typed

pytestmark = pytest.mark.solver


def test_ecg_document_fields():
    net, result, doc = solved("ecg.lip")
    assert doc["schema"] == "lipdsl-certificate/2" == certificate.SCHEMA
    assert doc["lipdsl_version"] == lipdsl.__version__
    assert doc["network"] == "ecg"
    assert doc["options"]["lift"] == 1 and doc["options"]["min_length"] is None
    assert set(doc["weights"]) == {"c1.weight", "c2.weight", "f1.weight", "f2.weight"}
    w = next(layer.weight for layer in net.layers if layer.name == "f1")
    assert doc["weights"]["f1.weight"]["sha256"] == certificate.weight_digest(w)
    assert doc["weights"]["f1.weight"]["shape"] == [60, 96]
    assert [e["system"] for e in doc["lmis"]] == ["c1+relu1", "c2+relu2", "f1+relu3"]
    assert [e["output_weight"] for e in doc["lmis"]] == ["X", "X", "eliminated"]
    assert [e["input_weight"] for e in doc["lmis"]] == ["rho", "X", "X"]
    assert np.array(doc["lmis"][0]["P"]).shape == (2, 2) and doc["lmis"][2]["P"] is None
    assert len(doc["lmis"][2]["lambda"]) == 60
    assert np.array(doc["X"]["c2+relu2"]["matrix"]).shape == (3, 3)
    # the unscaled point gives the same bound: L = sqrt(rho^ * prod(gain^2))
    L = math.sqrt(doc["rho"] * doc["pool_gain_squared"])
    assert L == pytest.approx(result.certificate.lipschitz, rel=1e-12)
    assert doc["lipschitz"] == result.certificate.lipschitz
    assert ECG_REFERENCE <= doc["lipschitz"] <= ECG_REFERENCE + 1e-6


def test_unscaled_values_are_the_scaled_point_times_the_scale_products():
    # P^_i = T_{i-1} P_i, Lambda^_i = T_i Lambda_i, X^_i = T_i X_i (certificate module docstring)
    _, result, doc = solved("ecg.lip")
    s = [sys.scale for sys in result.lowered.systems]
    point = result.certificate.point
    T1 = s[1] ** 2 * s[2] ** 2 * s[3] ** 2  # after c1
    np.testing.assert_allclose(doc["lmis"][0]["lambda"], point["lambda[c1+relu1]"] * T1, rtol=1e-14)
    np.testing.assert_allclose(doc["lmis"][0]["P"], point["P[c1+relu1]"] * T1 * s[0] ** 2, rtol=1e-14)
    np.testing.assert_allclose(doc["X"]["c1+relu1"]["matrix"], point["X[c1+relu1]"] * T1, rtol=1e-13)
    assert doc["rho"] == pytest.approx(point["rho"] * math.prod(x**2 for x in s), rel=1e-14)


def test_written_file_round_trips_exactly(tmp_path):
    _, result, doc = solved("ecg.lip")
    path = tmp_path / "ecg.cert.json"
    written = certificate.write(result, path, options=doc["options"])
    back = certificate.read(path).data
    assert back == written  # floats written by repr: every value comes back bit for bit
    assert back["lmis"][2]["lambda"] == doc["lmis"][2]["lambda"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=12),
       st.sampled_from(["<f4", "<f8"]))
def test_weight_digest_sees_data_dtype_and_shape(values, dtype):
    a = np.array(values, dtype=dtype)
    d = certificate.weight_digest(a)
    assert d == certificate.weight_digest(a.copy())
    assert d != certificate.weight_digest(a.astype("<f8" if dtype == "<f4" else "<f4"))
    assert d != certificate.weight_digest(a.reshape(1, -1))
    b = a.copy()
    b[0] = 1.0 if b[0] != 1.0 else 2.0  # one value changed
    assert d != certificate.weight_digest(b)


def test_a_batch_norm_built_without_its_statistics_is_fingerprinted_by_its_scale():
    """(A batch norm built in Python from its scale alone: the scale defines the layer.)"""
    shape = typed.Shape(2, 4)
    bn = typed.BatchNorm("bn", None, 2, np.array([0.5, 2.0]), np.zeros(2), 1e-5, shape, shape)
    net = typed.Network("n", shape, (typed.Residual("blk", None, (bn,), (), shape, shape),))
    tensors = certificate.weight_tensors(net)
    assert list(tensors) == ["blk/main/bn.scale"] and np.array_equal(tensors["blk/main/bn.scale"], bn.scale)
    assert certificate.weight_tensors(net, top_level=True) == {}  # (schema lipdsl-certificate/1's)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema="lipdsl-certificate/3"), "certificate schema 'lipdsl-certificate/3' is not "
                                                        "supported"),
    (lambda d: d.update(lipdsl_version="0.0.1"), "written by lipdsl '0.0.1'"),
    (lambda d: d.pop("schema"), "not a lipdsl certificate"),
])
def test_wrong_schema_or_version_is_a_clear_input_error(tmp_path, mutate, message):
    _, _, doc = solved("ecg.lip")
    mutate(doc)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(certificate.CertificateFileError) as info:
        certificate.read(path)
    assert message in str(info.value)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("rho"), "field 'rho' is missing, expected a number"),
    (lambda d: d.update(lmis="none"), "field 'lmis' is a string, expected a list"),
    (lambda d: d.update(lipschitz=False), "field 'lipschitz' is false, expected a number"),
])
def test_a_missing_or_mistyped_field_is_a_malformed_certificate(tmp_path, mutate, message):
    """(Were CertificateFileError, exit 1: docs/certificate.md lists malformed values under exit 3.)"""
    _, _, doc = solved("ecg.lip")
    mutate(doc)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CertificateError) as info:
        certificate.read(path)
    assert str(info.value) == message and info.value.exit_code == 3


def test_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{ not json")
    with pytest.raises(LipdslError, match="not a JSON certificate"):
        certificate.read(path)
    with pytest.raises(LipdslError, match="cannot read certificate"):
        certificate.read(tmp_path / "missing.json")


def test_uncertified_result_writes_nothing(tmp_path):
    from dataclasses import replace

    _, result, _ = solved("ecg.lip")
    bad = replace(result, certificate=replace(result.certificate, verified=False, lipschitz=None))
    with pytest.raises(CertificateError, match="not certified"):
        certificate.write(bad, tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("case", CONSTRUCTS, ids=case_id)
def test_every_construct_writes_a_certificate_that_verifies(case):
    spec, opts = case
    net, result, doc = solved(spec, **opts)
    assert json.loads(json.dumps(doc)) == doc
    v = verify(net, doc)
    assert v.ok, v.reason
    # the verified bound is the certified one, rounded up to 10 digits
    L = result.certificate.lipschitz
    assert L * (1 - 1e-12) <= v.lipschitz <= L * (1 + 2e-9)
    assert {e["system"] for e in doc["lmis"]} <= {s.name for s in result.lowered.systems}

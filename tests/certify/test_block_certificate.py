"""Certificates of residual networks: solve -> certificate (internal multipliers, unscaled P) -> verify, in
floating point and exactly; tampering named; the checker's own block realization."""

import copy
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from nets import Spec, random_residual

from lipdsl.certify import certificate
from lipdsl.certify.realization_block import exact_block_realization
from lipdsl.certify.verify import verify
from lipdsl.errors import CertificateError
from lipdsl.lang import typed
from lipdsl.model import lowered
from lipdsl.model.lower import lower
from lipdsl.pipeline import solve_network

pytestmark = pytest.mark.solver


def _doc(net, min_length=None):
    result = solve_network(net, min_length=min_length)
    assert result.certificate.verified, result.certificate.reason
    doc = certificate.build(result, options=certificate.solve_options(min_length, 1, True, None, "cvxopt"))
    return result, doc


def _net(tmp_path, body: list[str], c_out: int, *, c=2, n=12, seed=0):
    """A net from spec lines (``conv c_in c_out k [padding]``, ``bn c``, or spec text), then a global
    average pool and a dense layer on ``c_out`` channels."""
    rng = np.random.default_rng(seed)
    s = Spec(c, n)
    for line in body:
        word = line.split()
        indent = "  " if line.startswith("  ") else ""
        if word[0] == "conv":
            padding = word[4] if len(word) > 4 else "causal"
            s.conv(rng, int(word[1]), int(word[2]), int(word[3]), padding=padding, indent=indent)
        elif word[0] == "bn":
            s.bn(rng, int(word[1]), indent=indent)
        else:
            s.lines.append(line)
    s.lines += ["global_avgpool", f"dense {c_out} -> 2, weight {s.key(rng.normal(size=(2, c_out)))}"]
    return s.load(tmp_path)


# identity and conv shortcuts, batch norm in blocks, masked paddings (and paddings beyond the kernel), a
# linear block, an activation inside
BLOCKS = {
    "identity": (["conv 2 3 2", "residual b:", "  conv 3 3 3", "  relu", "  conv 3 3 2", "end", "relu"], 3),
    "conv_shortcut": (["residual b:", "  conv 2 3 3", "  tanh", "  conv 3 3 1", "shortcut", "  conv 2 3 1 0",
                       "end", "tanh"], 3),
    "batchnorm": (["residual b:", "  conv 2 3 3", "  bn 3", "  relu", "  conv 3 3 3", "  bn 3", "shortcut",
                   "  conv 2 3 1 0", "  bn 3", "end", "relu"], 3),
    "bn_shortcut": (["conv 2 3 1", "residual b:", "  conv 3 3 2", "  leaky_relu(1/10)", "shortcut", "  bn 3",
                     "end", "leaky_relu(1/10)"], 3),
    "same_padding": (["residual b:", "  conv 2 2 3 same", "  leaky_relu(0.1)", "  conv 2 2 3 same",
                      "  conv 2 2 3 same", "end", "relu"], 2),
    "linear_block": (["residual b:", "  conv 2 2 3", "  conv 2 2 2", "end", "relu"], 2),
    # paddings beyond the kernel (both branches early, the shortcut most: a negative alignment delay)
    "wide_padding": (["residual b:", "  conv 2 2 3 3", "  tanh", "  conv 2 2 3 4", "shortcut",
                      "  conv 2 2 1 5", "end", "relu"], 2),
    "two_blocks": (["residual b1:", "  conv 2 2 2", "  relu", "  conv 2 2 2", "end", "relu", "residual b2:",
                    "  conv 2 3 2", "  relu", "shortcut", "  conv 2 3 1 0", "end"], 3),
}


@pytest.fixture(scope="module")
def solved_blocks(tmp_path_factory):
    out = {}
    for name, (body, c_out) in BLOCKS.items():
        net = _net(tmp_path_factory.mktemp(name), body, c_out)
        out[name] = (net, *_doc(net))
    return out


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_certificate_round_trip(solved_blocks, name):
    net, result, doc = solved_blocks[name]
    blocks = [s for s in result.lowered.systems if s.kind == "block"]
    assert blocks
    for exact in (False, True):
        v = verify(net, copy.deepcopy(doc), exact=exact)
        assert v.ok, v.reason
        assert v.realization_exact  # every block's C, D recomputed exactly from the weights
        assert v.lipschitz >= result.certificate.lipschitz * (1 - 1e-9)
        assert v.lipschitz <= result.certificate.lipschitz * (1 + 1e-8)
        names = [c.name for c in v.checks]
        assert all(any(n.startswith(f"LMI[{b.name}]") for n in names) for b in blocks)
    for b in blocks:
        entry = next(e for e in doc["lmis"] if e["system"] == b.name)
        assert [i["activation"] for i in entry.get("internal", [])] == [a.name for a in b.internal]
        assert len(entry["P"]) == b.ss.nx


def test_masked_padding_widens_and_windows(solved_blocks):
    _, result, doc = solved_blocks["same_padding"]
    block = next(s for s in result.lowered.systems if s.kind == "block")
    kinds = [(a.name, a.alpha, a.beta) for a in block.internal]
    assert kinds[0] == ("leaky_relu1", 0.0, 1.0)  # leaky ReLU before a masked conv: [0, 1]
    assert kinds[1][0].endswith(".window") and kinds[1][1:] == (0.0, 1.0)
    step = next(s for s in doc["steps"] if s.get("name") == block.name)
    assert [i["slope"] for i in step["internal"]] == [[0.0, 1.0], [0.0, 1.0]]


def test_scaled_internal_signals_are_mapped_back(solved_blocks):
    # lower divides each internal signal by s_j != 1; the file holds the unscaled multipliers and P
    _, result, doc = solved_blocks["batchnorm"]
    block = next(s for s in result.lowered.systems if s.kind == "block")
    assert any(abs(a.scale - 1) > 1e-3 for a in block.internal)
    unscaled = next(s for s in lower(result.network, scale=False).systems if s.kind == "block")
    assert all(a.scale == 1.0 for a in unscaled.internal)


@pytest.mark.parametrize("seed", range(6))
def test_random_residual_nets_round_trip(tmp_path, seed):
    net = random_residual(np.random.default_rng(100 + seed), tmp_path, n=None if seed == 5 else 14)
    result, doc = _doc(net, min_length=8 if seed == 5 else None)
    for exact in (False, True):
        v = verify(net, doc, exact=exact)
        assert v.ok, v.reason
        assert v.realization_exact


def _entry(doc, name):
    return next(e for e in doc["lmis"] if e["system"].startswith(name))


def test_tampered_internal_multiplier_is_named(solved_blocks):
    net, _, doc = solved_blocks["batchnorm"]
    bad = copy.deepcopy(doc)
    lam = _entry(bad, "b")["internal"][0]["lambda"]
    k = int(np.argmax(lam))
    lam[k] *= 0.5
    for exact in (False, True):
        v = verify(net, bad, exact=exact)
        assert not v.ok
        assert v.reason.startswith("LMI[b+relu2] (layers b, ") and " fails: " in v.reason
        assert ("exact LDL': pivot" if exact else "smallest eigenvalue") in v.reason


def test_tampered_storage_and_weight_are_refused(solved_blocks):
    net, _, doc = solved_blocks["two_blocks"]
    bad = copy.deepcopy(doc)
    P = np.array(_entry(bad, "b1")["P"])
    P[0, 0] *= 0.5
    _entry(bad, "b1")["P"] = P.tolist()
    v = verify(net, bad)
    assert not v.ok and v.reason.startswith("LMI[b1+relu")
    bad = copy.deepcopy(doc)
    X = np.array(bad["X"][_entry(bad, "b1")["system"]]["matrix"])
    bad["X"][_entry(bad, "b1")["system"]]["matrix"] = (X * 2).tolist()  # the output weight of b1
    v = verify(net, bad)  # b1's output weight: one of the two LMIs that read it fails, and is named
    assert not v.ok and v.reason.startswith(("LMI[b1+relu", "LMI[b2] (layers b2, "))


def test_malformed_internal_multipliers_are_refused(solved_blocks):
    net, _, doc = solved_blocks["identity"]
    bad = copy.deepcopy(doc)
    _entry(bad, "b")["internal"][0]["lambda"][0] = -1.0
    with pytest.raises(CertificateError, match=r"'relu1' in LMI\[b\+relu2\]: multiplier lambda\[0\] = -1.0"):
        verify(net, bad)
    bad = copy.deepcopy(doc)
    del _entry(bad, "b")["internal"]
    with pytest.raises(CertificateError, match=r"LMI\[b\+relu2\] is a residual block with 1 internal"):
        verify(net, bad)
    bad = copy.deepcopy(doc)
    _entry(bad, "b")["internal"][0]["activation"] = "relu9"
    with pytest.raises(CertificateError, match="expected the multipliers of 'relu1', got 'relu9'"):
        verify(net, bad)
    bad = copy.deepcopy(doc)
    step = next(s for s in bad["steps"] if s.get("name") == "b+relu2")
    step["internal"][0]["slope"] = [0.0, 0.5]
    with pytest.raises(CertificateError, match="step 'b\\+relu2' of the spec"):
        verify(net, bad)


def test_checker_rebuilds_the_block_realization(solved_blocks):
    # lower's realization of each block is rebuilt from the weights; a wrong entry is not accepted as exact
    for name, (net, _, _) in solved_blocks.items():
        for sys in lower(net, scale=False).systems:
            if sys.kind != "block":
                continue
            rebuilt = exact_block_realization(sys, net)
            assert rebuilt is not None, name
            C = sys.ss.C.copy()
            if C.size:
                C[np.unravel_index(np.argmax(np.abs(C)), C.shape)] *= 1 + 1e-6
                wrong = replace(sys, ss=lowered.StateSpace(sys.ss.A, sys.ss.B, C, sys.ss.D))
                assert exact_block_realization(wrong, net) is None, name


def test_old_files_without_blocks_still_read(solved_blocks):
    # (blocks only added optional keys: a certificate without blocks has none of them)
    net, _, doc = solved_blocks["identity"]
    assert doc["schema"] == certificate.SCHEMA
    assert all("internal" not in s for s in doc["steps"] if s.get("kind") != "block")
    assert all("internal" not in e for e in doc["lmis"] if not e["system"].startswith("b"))


@pytest.mark.slow
def test_trained_tcn_certificate_round_trip():
    # specs/tcn.lip: three TemporalBlocks (conv shortcut, causal, dilations 1, 2, 4); ~1.5 CPU min to solve
    from lipdsl.lang.load import load_network
    from repo_paths import SPECS

    _, net = load_network(SPECS / "tcn.lip")
    # (lipdsl solve's default form; CVXOPT stops short of converging here, its point is certified anyway)
    result = solve_network(net, frequencies="auto", accept_unconverged=True)
    assert result.certificate.verified
    doc = certificate.build(result, options=certificate.solve_options(None, 1, True, result.frequencies,
                                                                      "cvxopt"))
    for exact in (False, True):
        v = verify(net, doc, exact=exact)
        assert v.ok and v.realization_exact, v.reason
        assert [c.size for c in v.checks][:3] == [83, 192, 320]


def test_block_exact_with_sympy_backend(solved_blocks):
    net, _, doc = solved_blocks["batchnorm"]
    v = verify(net, doc, exact=True, backend_name="sympy")
    assert v.ok and v.backend == "sympy", v.reason


# --------------------------------------------------------------------------- batch norm's exact scales
def test_batch_norm_scales_are_covered_with_tau(solved_blocks):
    net, _, doc = solved_blocks["batchnorm"]
    for exact in (False, True):
        v = verify(net, copy.deepcopy(doc), exact=exact)
        assert v.ok and v.realization_exact, v.reason
        block = next(c for c in v.checks if c.name.startswith("LMI[b+relu2]"))
        note = "batch norm scale w/sqrt(v+eps) of bn1, bn2, bn3 covered to relative 2^-50 (tau = "
        assert note in block.detail
        assert ("tau" in block.detail.split("Cholesky")[1]) if not exact else "exact LDL'" in block.detail
        assert v.notes == (block.detail[block.detail.index("batch norm"):].join(["LMI[b+relu2]: ", ""]),)
        assert v.to_json()["notes"] == list(v.notes)


@pytest.mark.parametrize("name", [n for n in BLOCKS if "bn" not in " ".join(BLOCKS[n][0])])
def test_nets_without_batch_norm_have_no_tau(solved_blocks, name):
    net, _, doc = solved_blocks[name]
    for exact in (False, True):
        v = verify(net, copy.deepcopy(doc), exact=exact)
        assert v.ok and v.notes == () and "notes" not in v.to_json()
        assert not any("batch norm" in c.detail or "tau" in c.detail for c in v.checks)


def _block_margin(net, doc):
    """The block LMI's smallest eigenvalue at the certificate's point and its tau at delta = 2^-50."""
    from lipdsl.certify.exact import backend
    from lipdsl.certify.verify_block import scale_tau
    from lipdsl.certify.verify_exact import _exact_lmi, _scaled_identity
    from lipdsl.certify.verify_links import lmi_chain

    low = lower(net, scale=False)
    links, _ = lmi_chain(doc, low, net)
    link = links[0]
    assert link.sys.kind == "block" and link.w_in == ("rho",) and link.cover is not None
    assert link.w_out[0] == "WtW"  # (the dense layer after it is eliminated: X_out = W'W)
    be = backend("flint")
    D = be.mat(next(s for s in low.systems if s.name == link.w_out[1]).ss.D)
    X_out = be.T(D) * D
    M = _exact_lmi(be, link, _scaled_identity(be, link.sys.n_in, be.q(doc["rho"])), X_out)
    low_eig = np.linalg.eigvalsh(np.array([[float(v) for v in row] for row in be.rows(M)]))[0]
    return low_eig, scale_tau(link, abs(be.fractions(X_out)), exact=True)


def test_tau_is_used_a_margin_below_it_is_not_proved(solved_blocks, monkeypatch):
    # (the block is the first LMI, where exact mode may raise rho by up to 2^-40 of itself; a larger delta
    # moves tau past the margin without that raise's help, which shrinking rho would not)
    from fractions import Fraction

    from lipdsl.certify import batchnorm

    net, _, doc = solved_blocks["batchnorm"]
    low_eig, tau50 = _block_margin(net, doc)
    assert 0 < tau50 < low_eig  # the LMI's own margin holds tau at 2^-50
    # tau grows like delta: a delta whose tau is 1/16 of the margin proves, one 64 times it does not
    k = int(np.floor(np.log2(low_eig / tau50)))
    ok_delta, bad_delta = Fraction(1, 2 ** (50 - k + 4)), Fraction(1, 2 ** (50 - k - 6))
    for delta, proved in ((ok_delta, True), (bad_delta, False)):
        monkeypatch.setattr(batchnorm, "DELTAS", (delta,))
        for exact in (False, True):
            v = verify(net, copy.deepcopy(doc), exact=exact)
            assert v.ok is proved, (delta, exact, v.reason)
            if not proved:
                assert v.reason.startswith("LMI[b+relu2] (layers b, ") and " fails: " in v.reason
                assert "tau" in v.reason


def _no_lmi(*args, **kwargs):
    raise AssertionError("an LMI was built: the fingerprints should have refused the certificate first")


# a tensor of the "batchnorm" net's weights file -> its name in the certificate (lipdsl show's rows: the
# block's main path conv1, bn1, conv2, bn2, shortcut conv3, bn3)
CHANGED = [("t1", "b/main/conv1.weight"), ("bn4.running_var", "b/main/bn2.running_var"),
           ("bn2.weight", "b/main/bn1.weight"), ("t5", "b/shortcut/conv3.weight"),
           ("bn6.running_var", "b/shortcut/bn3.running_var")]


@pytest.mark.parametrize("key, tensor", CHANGED)
def test_block_and_batch_norm_tensors_are_fingerprinted(solved_blocks, tmp_path, monkeypatch, key, tensor):
    """One ulp of one tensor inside a residual block (main path, batch norm, shortcut): the certificate is
    refused as made for other weights, naming the tensor, before any LMI is built (was: only top-level conv
    and dense weights were fingerprinted, and the LMI check had to find it)."""
    net, _, doc = solved_blocks["batchnorm"]
    for name in ("net.lip", "w.npz"):
        shutil.copy(Path(net.source_path).parent / name, tmp_path / name)
    assert verify(tmp_path / "net.lip", copy.deepcopy(doc)).ok
    arrays = dict(np.load(tmp_path / "w.npz"))
    arrays[key].flat[1] = np.nextafter(arrays[key].flat[1], np.inf)
    np.savez(tmp_path / "w.npz", **arrays)
    monkeypatch.setattr("lipdsl.model.lower.lower", _no_lmi)
    monkeypatch.setattr("lipdsl.certify.verify.lmi_chain", _no_lmi)
    with pytest.raises(CertificateError, match=rf"^the certificate was made for other weights: weight tensor "
                       rf"'{re.escape(tensor)}' of the spec does not match the certificate's \(SHA-256 "
                       r"[0-9a-f]{16}\.\.\. vs [0-9a-f]{16}\.\.\.\)$") as info:
        verify(tmp_path / "net.lip", copy.deepcopy(doc))
    assert info.value.exit_code == 3


def test_a_batch_norms_eps_is_named_a_value(solved_blocks, monkeypatch):
    """A certificate whose digest of a batch norm's eps differs: refused as made for other weights, the eps
    named a value, not a weight tensor (it is a number of the spec)."""
    net, _, doc = solved_blocks["batchnorm"]
    monkeypatch.setattr("lipdsl.model.lower.lower", _no_lmi)
    bad = copy.deepcopy(doc)
    bad["weights"]["b/main/bn2.eps"]["sha256"] = certificate.weight_digest(np.float64(1e-3))
    with pytest.raises(CertificateError, match=r"^the certificate was made for other weights: value "
                       r"'b/main/bn2.eps' of the spec does not match the certificate's \(SHA-256 "):
        verify(net, bad)
    del bad["weights"]["b/main/bn2.eps"], bad["weights"]["b/main/bn2.weight"]
    with pytest.raises(CertificateError, match=r"the spec's weight tensors and values 'b/main/bn2.weight' "
                       r"and 'b/main/bn2.eps' are not in the certificate$"):
        verify(net, bad)


def test_every_tensor_of_the_map_is_in_the_certificate(solved_blocks):
    net, _, doc = solved_blocks["batchnorm"]
    bn = [f"b/{branch}/bn{i}.{t}" for branch, i in (("main", 1), ("main", 2), ("shortcut", 3))
          for t in ("weight", "running_var", "eps")]
    assert set(doc["weights"]) == {"b/main/conv1.weight", "b/main/conv2.weight", "b/shortcut/conv3.weight",
                                   "dense1.weight", *bn}
    layers = {layer.name: layer for layer in typed.flat_layers(net.layers)}
    assert doc["weights"]["b/shortcut/conv3.weight"]["sha256"] == \
        certificate.weight_digest(layers["conv3"].weight)
    assert doc["weights"]["b/main/bn2.running_var"]["sha256"] == \
        certificate.weight_digest(layers["bn2"].running_var)
    assert doc["weights"]["b/main/bn2.eps"] == {"sha256": certificate.weight_digest(np.float64(1e-5)),
                                                "dtype": "<f8", "shape": []}


def test_a_tensor_missing_from_the_certificate_is_named(solved_blocks, monkeypatch):
    net, _, doc = solved_blocks["batchnorm"]
    monkeypatch.setattr("lipdsl.model.lower.lower", _no_lmi)
    bad = copy.deepcopy(doc)
    del bad["weights"]["b/shortcut/bn3.eps"]
    with pytest.raises(CertificateError, match=r"^the certificate was made for a different network: the "
                       r"spec's value 'b/shortcut/bn3.eps' is not in the certificate$"):
        verify(net, bad)
    bad["weights"] = {"dense1.weight": doc["weights"]["dense1.weight"]}  # schema /2 with /1's weights
    with pytest.raises(CertificateError, match=r"the spec's weight tensors and values 'b/main/conv1.weight', "
                       r"'b/main/bn1.weight', 'b/main/bn1.running_var' and 9 more are not in the "
                       r"certificate$"):
        verify(net, bad)


def test_schema_1_certificates_still_verify(solved_blocks):
    """A certificate of schema lipdsl-certificate/1 (top-level conv and dense weights fingerprinted, the
    only difference) verifies as before: its block tensors are checked by the LMIs alone."""
    net, _, doc = solved_blocks["batchnorm"]
    old = copy.deepcopy(doc)
    old["schema"] = "lipdsl-certificate/1"
    old["weights"] = {"dense1.weight": doc["weights"]["dense1.weight"]}  # what the earlier lipdsl wrote
    v = verify(net, old)
    assert v.ok, v.reason
    assert v.bound_text == verify(net, copy.deepcopy(doc)).bound_text
    old["weights"]["dense1.weight"] = doc["weights"]["b/main/conv1.weight"]
    with pytest.raises(CertificateError, match="other weights: weight tensor 'dense1.weight' of the spec"):
        verify(net, old)

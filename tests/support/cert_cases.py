"""Shared by the certificate tests: solved networks and their certificate documents, cached per case."""

from __future__ import annotations

import copy
import functools

from lipdsl.certify import certificate
from lipdsl.pipeline import solve_network
from lipdsl.lang.load import load_network
from repo_paths import SPECS

ECG_REFERENCE = 109.12299234900972  # the authors' MOSEK bound for CNN_23_03_08_11_52

#: (spec, options) covering every construct: pooling (avg, max), overlapping pools as FIR, merges,
#: lifting, --frequencies, global average pooling, any-length inputs, a compressed dense first layer.
CONSTRUCTS = [
    ("ecg.lip", {}),
    ("avgpool_overlap.lip", {}),
    ("features.lip", {}),
    ("gap.lip", {"min_length": 32}),
    ("haar_exact.lip", {}),
    ("linear_merge.lip", {}),
    ("lipsdp_mnist.lip", {}),
    ("lipsdp_random.lip", {}),
    ("tcn_any_length.lip", {}),
    ("ecg.lip", {"lift": 2}),
    ("features.lip", {"lift": 2}),
    ("gap.lip", {"min_length": 32, "frequencies": 9}),
    ("tcn_any_length.lip", {"frequencies": 9}),
]


def case_id(case) -> str:
    spec, opts = case
    return spec.removesuffix(".lip") + "".join(f"-{k}={v}" for k, v in opts.items())


@functools.lru_cache(maxsize=None)
def _solved(spec: str, items: tuple):
    opts = dict(items)
    _, net = load_network(SPECS / spec)
    result = solve_network(net, **opts)
    doc = certificate.build(result, options=certificate.solve_options(
        opts.get("min_length"), opts.get("lift", 1), True, opts.get("frequencies"), "cvxopt"))
    return net, result, doc


def solved(spec: str, **opts):
    """``(typed network, api.Result, certificate document)``; the document is a fresh copy each call."""
    net, result, doc = _solved(spec, tuple(sorted(opts.items())))
    return net, result, copy.deepcopy(doc)

"""Fuzzed front end: generated specs are accepted; mutated ones give success or a positioned LipdslError.

A few hundred cases here (bench/fuzz.py runs >= 10,000). Any exception other than LipdslError fails the test.
"""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings

from fuzzing import CLASSES, SLOW_CLASSES, fixture_dir, hostile_specs, run_case, run_class_case, valid_specs

pytestmark = pytest.mark.fuzz
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=150, **SETTINGS)
@given(text=valid_specs())
def test_generated_specs_are_valid(text, tmp_path_factory):
    directory = fixture_dir(tmp_path_factory.getbasetemp() / "valid")
    out = run_case(text.encode("utf-8"), directory)
    assert out.kind == "ok", f"{out.detail}\n--- spec ---\n{text}"


@settings(max_examples=250, **SETTINGS)
@given(data=hostile_specs())
def test_mutated_specs_never_trace_back(data, tmp_path_factory):
    directory = fixture_dir(tmp_path_factory.getbasetemp() / "hostile")
    t0 = time.perf_counter()
    out = run_case(data, directory)
    assert out.kind in ("ok", "error") or (out.kind == "error-no-position" and not data.strip()), out.detail
    assert time.perf_counter() - t0 < 10, "a mutated spec took over 10 s"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_hostile_classes_never_trace_back(name, tmp_path_factory):
    """Issue 17's classes (weight-file members, paths and file types, let bombs, keyword typos, API
    arguments, statement bombs, import --like templates; and, 8 cases each, the classes that run commands:
    sizes beyond the machine, soundness corners, --lift, ONNX graphs): each case ends in success or a
    LipdslError, never "wrong" (a broken promise: see
    tests/support/fuzzing.py), within 10 s (30 s for those)."""
    if name == "onnx":
        pytest.importorskip("onnx")
    directory = tmp_path_factory.mktemp("classes")
    slow = name in SLOW_CLASSES

    @settings(max_examples=8 if slow else 40, **SETTINGS)
    @given(case=CLASSES[name]())
    def run(case):
        t0 = time.perf_counter()
        out = run_class_case(case, directory)
        assert out.kind in ("ok", "error", "error-no-position"), out.detail
        assert time.perf_counter() - t0 < (30 if slow else 10), f"{name}: a case took too long: {case!r}"

    run()

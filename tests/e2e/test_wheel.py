"""Packaging: the wheel ships the grammar; installed into a fresh venv, `lipdsl check` works outside the repo.

Slow (~1 min: builds a wheel, installs its dependencies from the package index); part of the default
suite because it is the proof that a non-editable install works. ``LIPDSL_SKIP_WHEEL=1`` (or
``-m "not wheel"``) skips it, e.g. offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile

import pytest
from repo_paths import ROOT


pytestmark = pytest.mark.wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, request):
    if os.environ.get("LIPDSL_SKIP_WHEEL"):
        pytest.skip("LIPDSL_SKIP_WHEEL is set")
    out = tmp_path_factory.mktemp("dist")
    # No build isolation when hatchling is already importable: offline and fast; else let pip fetch it.
    try:
        import hatchling  # noqa: F401

        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("lipdsl-*.whl")
    return whl


def test_wheel_contains_the_grammar(wheel):
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("lipdsl/grammar/lipdsl.lark").decode("utf-8")
    assert shipped == (ROOT / "grammar" / "lipdsl.lark").read_text(encoding="utf-8")


def test_installed_wheel_checks_specs_outside_the_repo(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for spec in sorted((ROOT / "specs").glob("*.lip")):
        done = subprocess.run(
            [str(bindir / "lipdsl"), "check", str(spec)], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("OK network")
    where = subprocess.run(
        [str(bindir / "python"), "-c", "import lipdsl.lang.parse as p; print(p.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(env_dir) in where  # the installed copy, not the repository
    # and the whole pipeline runs from the installed copy: a certified bound, exit 0
    import json

    done = subprocess.run(
        [str(bindir / "lipdsl"), "solve", "--json", str(ROOT / "specs" / "ecg.lip")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["certified"] and abs(report["lipschitz"] - 109.12299234900972) <= 1e-6 * 109.12299234900972

"""Record and compare certified bounds: every shipped spec (several option sets) and the 59 ECG models.

    python bench/regression.py record out.json [--cases ../shared/cases/ecg] [--skip SPEC.lip ...] [--slow]
    python bench/regression.py compare before.json after.json [--rtol 1e-9]

Each case is one whole `lipdsl solve --json` process, so the CLI's options, exit codes and JSON keys are
exercised as a user meets them. `compare` prints, per case, the relative difference of the certified bounds
and any change of exit code or of the JSON's key set, and exits 1 if any bound moved by more than --rtol
(a refactoring that claims "behaviour unchanged" is measured with this, before and after, on one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (spec, extra options): every shipped spec as a user runs it, plus the constructs behind options.
SPEC_CASES = [
    ("ecg.lip", []),
    ("ecg.lip", ["--lift", "2"]),
    ("ecg.lip", ["--method", "naive"]),
    ("ecg.lip", ["--method", "naive-hinf"]),
    ("ecg.lip", ["--method", "lipsdp-layer"]),
    ("avgpool_overlap.lip", []),
    ("fcn.lip", []),
    ("features.lip", []),
    ("gap.lip", []),
    ("gap.lip", ["--length", "64"]),
    ("gap.lip", ["--length", "64", "--frequencies", "9"]),
    ("haar_exact.lip", []),
    ("linear_merge.lip", []),
    ("lipsdp_mnist.lip", []),
    ("lipsdp_random.lip", []),
    ("lipsdp_random.lip", ["--method", "lipsdp-neuron"]),
    ("tcn_any_length.lip", []),
    ("tcn_any_length.lip", ["--frequencies", "9"]),
]

# The wide trained specs, solved as tests/test_specs.py solves them (frequency form; minutes each on a loaded
# machine): only with --slow.
SLOW_CASES = [
    ("fcn_32_64_32.lip", ["--frequencies", "17", "--accept-unconverged"]),
    ("resnet1d.lip", ["--frequencies", "17", "--accept-unconverged"]),
    ("tcn.lip", ["--frequencies", "17", "--accept-unconverged"]),
    ("tcn_plain.lip", ["--frequencies", "33", "--accept-unconverged"]),
]


def _run(spec: Path, options: list[str]) -> dict:
    cmd = [sys.executable, "-m", "lipdsl", "solve", "--json", str(spec), *options]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    try:
        report = json.loads(done.stdout) if done.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    return {
        "exit": done.returncode,
        "lipschitz": report.get("lipschitz"),
        "keys": sorted(report),
        "seconds": round(seconds, 1),
    }


def _show(name: str, r: dict) -> None:
    print(f"{name:45} exit {r['exit']}  {r['lipschitz']!r}  {r['seconds']} s", flush=True)


def record(out: Path, cases_dir: Path, skip: set[str] = frozenset(), slow: bool = False) -> None:
    results: dict[str, dict] = {}
    for spec, options in SPEC_CASES + (SLOW_CASES if slow else []):
        if spec in skip:
            continue
        name = " ".join([spec, *options])
        results[name] = _run(ROOT / "specs" / spec, options)
        _show(name, results[name])
    template = (ROOT / "specs" / "ecg.lip").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        for npz in sorted(cases_dir.glob("*.npz")):
            shutil.copy(npz, Path(tmp) / npz.name)
            spec = Path(tmp) / f"{npz.stem}.lip"
            spec.write_text(
                template.replace('"weights/ecg_CNN_23_03_08_11_52.npz"', f'"{npz.name}"'), encoding="utf-8"
            )
            name = f"ecg/{npz.stem}"
            results[name] = _run(spec, [])
            _show(name, results[name])
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def compare(before: Path, after: Path, rtol: float) -> int:
    old = json.loads(before.read_text())
    new = json.loads(after.read_text())
    worst, bad = 0.0, []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            bad.append(f"{name}: only in {'after' if a is None else 'before'}")
            continue
        if a["exit"] != b["exit"] or a["keys"] != b["keys"]:
            bad.append(f"{name}: exit {a['exit']} -> {b['exit']}, keys changed: {a['keys'] != b['keys']}")
        if a["lipschitz"] is not None and b["lipschitz"] is not None:
            rel = abs(b["lipschitz"] - a["lipschitz"]) / max(abs(a["lipschitz"]), 1e-300)
            worst = max(worst, rel)
            if rel > rtol:
                bad.append(f"{name}: {a['lipschitz']!r} -> {b['lipschitz']!r} (rel {rel:.1e})")
        elif a["lipschitz"] != b["lipschitz"]:
            bad.append(f"{name}: {a['lipschitz']!r} -> {b['lipschitz']!r}")
    print(f"{len(old)} cases before, {len(new)} after; largest relative change of a bound {worst:.1e}")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


def main() -> int:
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--cases", type=Path, default=ROOT.parent / "shared" / "cases" / "ecg")
    rec.add_argument("--skip", nargs="*", default=[], help="spec files to leave out (e.g. lipsdp_mnist.lip)")
    rec.add_argument("--slow", action="store_true", help="also the wide trained specs (SLOW_CASES)")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--rtol", type=float, default=1e-9)
    args = ap.parse_args()
    if args.command == "record":
        record(args.out, args.cases, set(args.skip), args.slow)
        return 0
    return compare(args.before, args.after, args.rtol)


if __name__ == "__main__":
    raise SystemExit(main())

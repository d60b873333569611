"""Fuzz the front end: >= 10,000 generated and mutated specs through parse + check; count the outcomes.

    nice python bench/fuzz.py [--cases 10000] [--class-cases 1000] [--slow-class-cases 200] [--classes ...]
                              [--valid-share 0.1] [--timeout 10]

Every case must end in success or a LipdslError rendered as ``path:line:col: error: ...``. Then
``--class-cases`` cases of each hostile class of issue 17 (weight-file members, paths and file types, ``let``
bombs, keyword typos, Python API arguments; commands on sizes beyond the machine, soundness corners, --lift,
ONNX graphs, import --like templates, statement bombs: ``tests/support/fuzzing.CLASSES``), counted per class;
a "wrong" outcome is a broken promise without a traceback (see tests/support/fuzzing.py). Prints the counts
(ok / LipdslError with a position / LipdslError without one / traceback / hang), the slowest case, the first
few tracebacks in full, and the parse+check time of 1 MB specs. A hang is a case still running after
``--timeout`` seconds (SIGALRM). Writes the failing inputs to bench/out/fuzz-failures/ for replay.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzzing import CLASSES, SLOW_CLASSES, fixture_dir, hostile_specs, run_case, run_class_case, valid_specs  # noqa: E402


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def one_mb_specs() -> dict[str, str]:
    """Specs of about 1 MB: inline weights (the realistic case) and many short layers (the worst case)."""
    rng = np.random.default_rng(0)
    n = 300
    rows = ",\n ".join("[" + ", ".join(f"{v:.6f}" for v in rng.standard_normal(n)) + "]" for _ in range(n))
    weights = f"input {n}\ndense d: {n} -> {n}, weight [{rows}]\nrelu\n"
    layers = "input 4 x 128\n" + "relu\n" * (1_000_000 // 5)
    comment = "input 1\n# " + "x" * 1_000_000 + "\nrelu\n"
    n_let = 1_000_000 // 3
    entries = ", ".join(["a"] * n_let)
    lets = f"let a = 1/3\ninput {n_let}\ndense d: {n_let} -> 1, weight [[{entries}]]\n"
    return {"inline weights (300x300)": weights, "200,000 'relu' lines": layers, "one 1 MB comment": comment,
            "1 MB tensor of let names": lets}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--valid-share", type=float, default=0.1, help="share of unmutated generated specs")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-1mb", action="store_true")
    ap.add_argument("--class-cases", type=int, default=1000, help="cases of each hostile class (issue 17)")
    ap.add_argument("--slow-class-cases", type=int, default=200,
                    help=f"cases of the classes that run commands or solvers ({', '.join(SLOW_CLASSES)})")
    ap.add_argument("--classes", nargs="*", default=None, help="run only these classes (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each 1 MB spec (best is shown)")
    args = ap.parse_args()

    directory = fixture_dir(Path(tempfile.mkdtemp(prefix="lipdsl-fuzz-")))
    failures = ROOT / "bench" / "out" / "fuzz-failures"
    counts: collections.Counter[str] = collections.Counter()
    slowest = (0.0, b"", "")
    shown = 0
    signal.signal(signal.SIGALRM, _alarm)
    t_start = time.perf_counter()

    @settings(
        max_examples=args.cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def body(data):
        nonlocal slowest, shown
        if data.draw(st.floats(0, 1)) < args.valid_share:
            spec = data.draw(valid_specs()).encode("utf-8")
        else:
            spec = data.draw(hostile_specs())
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            kind = run_case(spec, directory).kind
        except Hang:
            kind = "hang"
        except Exception:  # noqa: BLE001 - the harness counts bugs; it does not hide them (printed below)
            kind = "traceback"
            if shown < 5:
                shown += 1
                print("--- traceback on", repr(spec[:300]), file=sys.stderr)
                traceback.print_exc()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t0
        counts[kind] += 1
        if kind in ("hang", "traceback"):
            failures.mkdir(parents=True, exist_ok=True)
            (failures / f"{kind}-{sum(counts.values())}.lip").write_bytes(spec)
        if dt > slowest[0]:
            slowest = (dt, spec, kind)
        done = sum(counts.values())
        if done % 1000 == 0:
            print(f"  {done} cases, {time.perf_counter() - t_start:.0f} s: {dict(counts)}", flush=True)

    import random

    random.seed(args.seed)
    body()
    total = sum(counts.values())
    print(f"\n{total} cases in {time.perf_counter() - t_start:.0f} s")
    for kind in ("ok", "error", "error-no-position", "traceback", "hang"):
        print(f"  {kind:18} {counts.get(kind, 0)}")
    dt, spec, kind = slowest
    print(f"slowest case: {dt:.3f} s ({kind}), {len(spec)} bytes: {spec[:160]!r}")

    class_counts: dict[str, collections.Counter] = {}

    def class_runner(name, strategy, cc):
        @settings(max_examples=args.slow_class_cases if name in SLOW_CLASSES else args.class_cases,
                  deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy())
        def run_class(case):
            nonlocal shown
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            try:
                out = run_class_case(case, directory)
                kind = out.kind
                if kind == "wrong" and shown < 20:
                    shown += 1
                    print(f"--- wrong in class {name!r}: {out.detail[:400]} on", repr(case)[:300],
                          file=sys.stderr)
            except Hang:
                kind = "hang"
            except Exception:  # noqa: BLE001 - counted and shown, as above
                kind = "traceback"
                if shown < 10:
                    shown += 1
                    print(f"--- traceback in class {name!r} on", repr(case)[:300], file=sys.stderr)
                    traceback.print_exc()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            cc[kind] += 1

        return run_class

    for name, strategy in CLASSES.items():
        if args.classes is not None and name not in args.classes:
            continue
        cc: collections.Counter[str] = collections.Counter()
        t_class = time.perf_counter()
        class_runner(name, strategy, cc)()
        class_counts[name] = cc
        print(f"  class {name!r}: {sum(cc.values())} cases in {time.perf_counter() - t_class:.0f} s: "
              f"{dict(cc)}", flush=True)
    for cc in class_counts.values():
        counts.update({k: v for k, v in cc.items() if k in ("traceback", "hang", "wrong")})
    print(f"\nall classes: {total + sum(sum(cc.values()) for cc in class_counts.values())} cases, "
          f"{counts.get('traceback', 0)} tracebacks, {counts.get('hang', 0)} hangs, "
          f"{counts.get('wrong', 0)} wrong (a broken promise without a traceback)")

    if not args.skip_1mb:
        from lipdsl.errors import LipdslError
        from lipdsl.lang.load import check_source
        from lipdsl.lang.parse import parse
        from lipdsl.lang.source import Source

        print(f"\nparse + check of 1 MB specs (best of {args.repeat}):")
        for label, text in one_mb_specs().items():
            best = best_parse = float("inf")
            refused = ""
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                t1 = None
                try:
                    parse(Source("<1mb>", text))
                    t1 = time.perf_counter()
                    check_source(Source("<1mb>", text))  # parses again, then checks
                except LipdslError as err:  # refused (e.g. the statement limit): how fast is what counts
                    refused = f" (refused: {err.message})"
                end = time.perf_counter()
                best_parse = min(best_parse, (t1 or end) - t0)
                best = min(best, end - (t1 or t0))
            print(f"  {label:28} {len(text) / 1e6:.2f} MB: parse {best_parse:.2f} s, parse+check {best:.2f} s"
                  f"{refused}")
    return 0 if not any(counts.get(k, 0) for k in ("traceback", "hang", "wrong")) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the ECG models: certified bounds of all 59 authors' networks and the speed of `lipdsl solve`.

    python bench/ecg.py [--cases ../shared/cases/ecg] [--repeat 5] [--out bench/out]

Prints (1) every model's certified bound, its relative error against the authors' MOSEK value where one is
given, the solver stage time, and (2) the whole-process time of `lipdsl solve specs/ecg.lip` (median of
``--repeat`` runs) with its stage times, and (3) the ratio of our structured CVXOPT KKT solver against
CVXOPT's generic one ('chol'), run in this same process on the same SDPs (the baseline). Writes CSV files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from lipdsl.pipeline import solve_network  # noqa: E402
from nets import ecg_from_npz as ecg_net  # noqa: E402
from _table import write_csv  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=str(ROOT.parent / "shared" / "cases" / "ecg"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=int, default=3, help="models also solved with CVXOPT's generic KKT")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    cases = Path(args.cases)
    files = (
        sorted(cases.glob("*.npz"))
        if cases.is_dir()
        else sorted((ROOT / "tests" / "data" / "ecg").glob("*.npz"))
    )
    ref_file = (cases if cases.is_dir() else ROOT / "tests" / "data" / "ecg") / "reference.json"
    refs = json.loads(ref_file.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    print(
        f"{'model':28} {'bound':>14} {'cert':>5} {'rel.err vs MOSEK':>17} {'iters':>5} {'solve s':>8} "
        f"{'total s':>8}"
    )
    for f in files:
        t0 = time.perf_counter()
        r = solve_network(ecg_net(f))
        total = time.perf_counter() - t0
        c = r.certificate
        ref = refs.get(f.stem, {}).get("lipschitz_reference")
        err = None if ref is None or c.lipschitz is None else abs(c.lipschitz - ref) / ref
        rows.append(
            {
                "model": f.stem,
                "bound": c.lipschitz,
                "certified": c.verified,
                "reference": ref,
                "rel_error": err,
                "iterations": r.solution.iterations,
                "status": r.solution.claimed_status,
                "solve_s": r.seconds["solve"],
                "pipeline_s": total,
            }
        )
        print(
            f"{f.stem:28} {c.lipschitz if c.lipschitz is not None else float('nan'):14.8g} "
            f"{'yes' if c.verified else 'NO':>5} {'' if err is None else f'{err:.1e}':>17} "
            f"{r.solution.iterations:5d} {r.seconds['solve']:8.3f} {total:8.3f}"
        )
    write_csv(out / "ecg_models.csv", list(rows[0]), rows)
    solve_times = [row["solve_s"] for row in rows]
    max_err = max((r["rel_error"] for r in rows if r["rel_error"] is not None), default=0.0)
    print(
        f"\n{len(rows)} models: {sum(r['certified'] for r in rows)} certified; solver stage median "
        f"{statistics.median(solve_times):.3f} s, max {max(solve_times):.3f} s; "
        f"max rel. error vs MOSEK {max_err:.1e}"
    )

    # baseline in the same process: CVXOPT's own 'chol' KKT solver on the same SDPs
    print("\nstructured KKT vs CVXOPT generic KKT (same SDP, same process):")
    for f in files[: args.baseline]:
        net = ecg_net(f)
        ours = solve_network(net)
        generic = solve_network(net, solver="cvxopt-generic")
        print(
            f"  {f.stem:28} ours {ours.seconds['solve']:.3f} s ({ours.solution.iterations} it), generic "
            f"{generic.seconds['solve']:.3f} s ({generic.solution.iterations} it): ratio "
            f"{ours.seconds['solve'] / generic.seconds['solve']:.2f}; bounds agree to "
            f"{abs(ours.certificate.lipschitz / generic.certificate.lipschitz - 1):.1e}"
        )

    # whole process, as a user runs it
    exe = [sys.executable, "-m", "lipdsl", "solve", "--json", str(ROOT / "specs" / "ecg.lip")]
    walls, stages = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        done = subprocess.run(exe, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t0)
        stages.append(json.loads(done.stdout)["seconds"])
    med = statistics.median(walls)
    stage_med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    print(
        f"\n`lipdsl solve specs/ecg.lip` whole process: median {med:.3f} s over {args.repeat} runs "
        f"(min {min(walls):.3f}); stages (median): "
        + ", ".join(f"{k} {v:.3f} s" for k, v in stage_med.items())
    )
    print(
        f"targets: whole process <= 1.5 s -> ratio {med / 1.5:.2f}; solver stage <= 0.3 s -> ratio "
        f"{stage_med['solve'] / 0.3:.2f}"
    )
    write_csv(out / "ecg_cli.csv", ["run", "wall_s"] + list(stages[0]),
              [{"run": i, "wall_s": wall, **s} for i, (wall, s) in enumerate(zip(walls, stages))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
